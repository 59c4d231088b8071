"""Runs grouped by configuration: the config_group name, the mean and sample standard deviation
over seeds, the fallback to a run's params, and where the groups are shown (the leaderboard
command, the report)."""

import io
import math

import pandas as pd
import pytest
from boards import N, write_board

from dashboards import cli
from dashboards.groups import GROUP, config_group, repeated, run_group, seed_groups, spread_text
from dashboards.groups import to_html as groups_html
from dashboards.groups import to_markdown as groups_markdown
from dashboards.leaderboard import load, over_seeds
from dashboards.report import render
from dashboards.runs import flatten

COLUMNS = ["clean", "pgd100_ce", "worst_case"]


def rows() -> pd.DataFrame:
    """Three seeds of configuration a, one of b, one row without a group."""
    return pd.DataFrame([
        {"run_id": "a0", GROUP: "a", "train_seed": "0", "clean": 0.90, "pgd100_ce": 0.50,
         "worst_case": 0.40, "flagged": False},
        {"run_id": "b0", GROUP: "b", "train_seed": "0", "clean": 0.80, "pgd100_ce": 0.30,
         "worst_case": 0.25, "flagged": True},
        {"run_id": "a1", GROUP: "a", "train_seed": "1", "clean": 0.92, "pgd100_ce": 0.56,
         "worst_case": 0.43, "flagged": False},
        {"run_id": "x0", GROUP: None, "train_seed": "7", "clean": 0.70, "pgd100_ce": 0.20,
         "worst_case": 0.10, "flagged": False},
        {"run_id": "a2", GROUP: "a", "train_seed": "2", "clean": 0.94, "pgd100_ce": math.nan,
         "worst_case": 0.46, "flagged": False},
    ])


def test_groups_give_the_mean_and_sample_std_over_their_seeds():
    a = seed_groups(rows(), COLUMNS).iloc[0]
    assert a["run_ids"] == ("a0", "a1", "a2")
    assert a[GROUP] == "a" and a["n"] == 3 and a["seeds"] == (0, 1, 2) and a["flagged"] == 0
    assert a["clean_mean"] == pytest.approx(0.92)
    assert a["clean_std"] == pytest.approx(0.02)  # sqrt(((-0.02)² + 0 + 0.02²) / 2)
    assert a["worst_case_mean"] == pytest.approx(0.43)
    assert a["worst_case_std"] == pytest.approx(0.03)
    # a column measured in two runs of three: over those two
    assert a["pgd100_ce_mean"] == pytest.approx(0.53)
    assert a["pgd100_ce_std"] == pytest.approx(math.sqrt(2 * 0.03 ** 2))


def test_a_single_run_is_a_group_with_no_spread_and_a_row_without_a_group_its_own():
    groups = seed_groups(rows(), COLUMNS)
    assert [tuple(r) for r in groups["run_ids"]] == [("a0", "a1", "a2"), ("b0",), ("x0",)]
    b, x = groups.iloc[1], groups.iloc[2]
    assert b["n"] == 1 and b["flagged"] == 1 and b["clean_mean"] == pytest.approx(0.80)
    assert all(math.isnan(b[f"{c}_std"]) for c in COLUMNS)
    assert pd.isna(x[GROUP]) and x["n"] == 1 and x["seeds"] == (7,)
    assert repeated(groups) and not repeated(groups.iloc[1:])
    assert seed_groups(rows().iloc[0:0], COLUMNS).empty


def test_training_rows_group_by_their_seed_column():
    frame = pd.DataFrame([{"run_id": "r1", GROUP: "g", "seed": 3, "val_robust_accuracy": 0.5},
                          {"run_id": "r2", GROUP: "g", "seed": 4, "val_robust_accuracy": 0.7}])
    (group,) = seed_groups(frame, ["val_robust_accuracy"]).to_dict("records")
    assert group["n"] == 2 and group["seeds"] == (3, 4)
    assert group["val_robust_accuracy_mean"] == pytest.approx(0.6)
    assert group["val_robust_accuracy_std"] == pytest.approx(math.sqrt(0.02))


def test_the_group_name_leaves_out_the_seeds_only():
    config = {"defense": "trades", "defense_params": {"beta": 6.0}, "lr": 0.1, "seed": 0}
    name = config_group(config)
    assert len(name) == 12 and int(name, 16) >= 0
    assert config_group({**config, "seed": 5}) == name
    assert config_group({**config, "defense_params": {"beta": 3.0}}) != name
    assert config_group({**config, "lr": 0.2}) != name
    # a trial's tag and the params its run logs (flattened, as text) name it alike
    assert config_group(flatten(config)) == name


def test_a_run_without_the_tag_is_grouped_by_its_params_without_seeds():
    params = {"defense": "pgd_at", "epsilon": "0.1", "train_seed": "0", "eval_seed": "0"}
    assert run_group({GROUP: "tagged"}, params) == "tagged"
    fallback = run_group({}, params)
    assert fallback == run_group({}, {**params, "train_seed": "1", "eval_seed": "9"})
    assert fallback != run_group({}, {**params, "epsilon": "0.2"})


def test_spread_and_tables():
    assert spread_text(0.5123, 0.0123) == "51.23 ± 1.23"
    assert spread_text(0.5, math.nan) == "50.00" and spread_text(math.nan, math.nan) == "—"
    groups = seed_groups(rows(), COLUMNS)
    markdown = groups_markdown(groups, COLUMNS)
    assert "| a | 3 | 0, 1, 2 | 92.00 ± 2.00 | 53.00 ± 4.24 | 43.00 ± 3.00 | a0, a1, a2 |" \
        in markdown
    assert "| — | 1 | 7 | 70.00 | 20.00 | 10.00 | x0 |" in markdown
    page = groups_html(groups, COLUMNS)
    assert page.count("<tr data-config-group=") == 3
    assert "<td class='acc' data-column='clean'>92.00 ± 2.00</td>" in page


@pytest.fixture(scope="module")
def board(tmp_path_factory):
    root = tmp_path_factory.mktemp("board")
    return write_board(root), root


def test_leaderboard_rows_without_the_tag_group_by_their_params(board):
    uri, _ = board
    frame = load(uri)
    assert frame[GROUP].notna().all()
    pgd_at = frame[frame["defense"] == "pgd_at"]  # one configuration, evaluated twice
    assert pgd_at[GROUP].nunique() == 1
    assert frame[GROUP].nunique() == len(frame) - 1
    groups = over_seeds(frame)
    (group,) = groups[groups["n"] == 2].to_dict("records")
    assert set(group["run_ids"]) == set(pgd_at["run_id"]) and group["name"] == "PGD-AT"
    assert group["clean_mean"] == pytest.approx((46 + 45) / 2 / N)
    assert group["autoattack_mean"] == pytest.approx((30 + 22) / 2 / N)
    assert group["autoattack_std"] == pytest.approx(math.sqrt(2 * (4 / N) ** 2))
    assert groups["name"].iloc[0] == "EMR λ=0.5"  # the best mean AutoAttack first


def test_the_leaderboard_command_and_the_report_show_the_groups(board, tmp_path, capsys):
    uri, _ = board
    text = cli.leaderboard(["--tracking-uri", uri, "--group-seeds"])
    table = text.split("Over seeds")[1]
    (line,) = [line for line in table.splitlines() if line.startswith("| PGD-AT |")]
    assert "| 2 | — | 91.00 ± 1.41 |" in line  # clean: 46 and 45 of 50, no seed recorded
    as_json = pd.read_json(io.StringIO(cli.leaderboard(["--tracking-uri", uri, "--group-seeds",
                                                        "--format", "json"])))
    assert sorted(as_json["n"]) == [1] * 6 + [2]
    capsys.readouterr()
    page = render(uri, tmp_path / "report", mlflow_ui=None).read_text()
    section = page.split("<h2>Over seeds</h2>")[1].split("<h2>")[0]
    assert section.count("<tr data-config-group=") == 7
    assert "<td class='acc' data-column='clean'>91.00 ± 1.41</td>" in section
    # one run per configuration (sweep s1: PGD-AT and EMR once each): no section
    assert "Over seeds" not in render(uri, tmp_path / "s1", mlflow_ui=None,
                                      sweep="s1").read_text()
