"""What the HTML report says about each row: its name, its intervals, its MLflow link, which
differences between the best rows are real, and the margins of SMD and AMR, from the training
run that measured them to the page."""

import json
import math

import pandas as pd
import pytest
import torch
from boards import AMR_VALIDATION, NAMES, SMD_TRAINING, N, flags, smd_state, write_board
from mlflow.tracking import MlflowClient

from attacks.evaluate import build_report
from attacks.margins import amr_margin_lower_bound, amr_margin_summary
from dashboards.cli import report as report_command
from dashboards.leaderboard import interval_text, knob_texts, load, row_names, to_html
from dashboards.report import (
    MLFLOW_UI,
    STATE_MARGINS,
    amr_statistics,
    mcnemar_matrix,
    rank_columns,
    render,
    run_url,
)
from trainables.config import TrialConfig
from trainables.engine import MARGIN_HISTOGRAM, TrainingRun, state_margins, write_state_margins


@pytest.fixture(scope="module")
def board(tmp_path_factory):
    root = tmp_path_factory.mktemp("board")
    return write_board(root), root


@pytest.fixture(scope="module")
def page(board):
    uri, root = board
    index = render(uri, root / "report")
    return index.read_text(encoding="utf-8")


# -- names ---------------------------------------------------------------------------------------
def frame_of(*rows: dict) -> pd.DataFrame:
    return pd.DataFrame([{"run_id": f"{i:x}" * 32, **row} for i, row in enumerate(rows)])


def test_rows_are_named_by_defense_and_the_knobs_that_tell_them_apart():
    frame = frame_of(
        {"defense": "trades", "knob.beta": "6.0"},
        {"defense": "trades", "knob.beta": "1.0"},
        {"defense": "emr", "knob.lambda_emr": "0.3", "knob.temperature": "2.0",
         "knob.emr_base": "trades"},
        {"defense": "emr", "knob.lambda_emr": "0.8663279761354559", "knob.temperature": "2.0",
         "knob.emr_base": "mail_trades"},
        {"defense": "pgd_at"}, {"defense": "pgd_at"}, {"defense": "mart", "knob.beta": "5.0"})
    names = list(row_names(frame).values())
    assert names[:4] == ["TRADES β=6", "TRADES β=1", "EMR λ=0.3, base=trades",
                         "EMR λ=0.87, base=mail_trades"]  # t is the same: not distinguishing
    assert names[4:6] == ["PGD-AT (44444444)", "PGD-AT (55555555)"]  # only their run ids differ
    assert names[6] == "MART"  # the only MART row: its β tells it from no other
    assert len(set(names)) == len(names)


def test_run_ids_break_ties_with_as_many_characters_as_it_takes():
    frame = pd.DataFrame({"run_id": ["abcdef0123", "abcdef0199", "ffff"],
                          "defense": ["pgd_at", "pgd_at", "trades"]})
    assert list(row_names(frame).values()) == ["PGD-AT (abcdef012)", "PGD-AT (abcdef019)",
                                               "TRADES"]


def test_knob_values_get_the_digits_that_keep_them_apart():
    assert knob_texts(["0.8663", "0.8671", "6.0", "None"]) == ["0.866", "0.867", "6", "None"]
    assert knob_texts(["2.0", "0.18255254802399"]) == ["2", "0.18"]
    assert knob_texts(["trades", "mail_trades"]) == ["trades", "mail_trades"]


def test_the_boards_rows_are_named_and_named_alike_everywhere(board, page):
    uri, _ = board
    frame = load(uri)
    names = row_names(frame)
    by_defense = dict(zip(frame["run_id"], frame["defense"], strict=True))
    expected = {n for n in NAMES if n != "PGD-AT"}
    assert expected <= set(names.values())
    twins = [name for run_id, name in names.items() if by_defense[run_id] == "pgd_at"]
    assert sorted(twins) == sorted(f"PGD-AT ({r[:8]})" for r, d in by_defense.items()
                                   if d == "pgd_at")
    for name in names.values():  # the table, the matrix, the margins: one name for one row
        assert f"<td class='name'>{name}</td>" in page


# -- the table -----------------------------------------------------------------------------------
def test_every_accuracy_shows_its_interval():
    assert interval_text(0.513, 0.457, 0.569) == "51.3 [45.7, 56.9]"
    assert interval_text(math.nan, math.nan, math.nan) == "—"


def test_table_cells_links_and_caption(board):
    uri, _ = board
    frame = load(uri)
    links = {r: run_url(MLFLOW_UI, "7", r) for r in frame["run_id"]}
    table = to_html(frame, links=links)
    for _, row in frame.iterrows():
        for column in ("clean", "autoattack", "pgd100_ce", "worst_case"):
            text = interval_text(row[column], row[f"{column}_ci_low"], row[f"{column}_ci_high"])
            value, interval = text.split(" ", 1)
            assert f"{value} <span class='ci'>{interval}</span>" in table
        assert (f"href='http://127.0.0.1:5000/#/experiments/7/runs/{row['run_id']}'>"
                f"{row['run_id'][:8]}</a>") in table
    assert "All rows: model mlp, dataset mnist, threat model linf ε=0.1, no EOT, n = 50 points" \
        in table
    trusted = to_html(frame[~frame["flagged"]])
    assert "<th>flags</th>" in table and "<th>flags</th>" not in trusted


# -- comparisons ---------------------------------------------------------------------------------
def record(clean: int, robust: int, n: int = N):
    from attacks.evaluate import AttackResult

    result = AttackResult("aa-standard", "autoattack", True, {}, flags(robust, n), 1.0)
    return build_report(flags(clean, n), [result], epsilon=0.1, norm="linf",
                        seed=0).to_record()


def test_mcnemar_matrix_tests_every_pair_once_each_way():
    a, b, c = record(45, 34), record(45, 25), record(45, 20, n=40)
    cells = mcnemar_matrix([(a, "autoattack"), (b, "autoattack"), (c, "autoattack"),
                            (None, "autoattack")])
    assert cells[0][0] is None and cells[1][1] is None
    assert (cells[0][1].only_a, cells[0][1].only_b) == (9, 0)
    assert cells[0][1].p_value == pytest.approx(2 / 2 ** 9) and cells[0][1].significant()
    assert cells[1][0].difference == pytest.approx(-cells[0][1].difference)
    assert cells[1][0].p_value == cells[0][1].p_value
    assert "differ in n" in cells[0][2] and cells[0][3] == "no per-example data"
    mixed = mcnemar_matrix([(a, "autoattack"), (b, "worst_case")])
    assert mixed[0][1].robust_a == 34  # worst case where the rank columns differ


def test_the_report_compares_the_five_best_trusted_rows(board, page):
    uri, _ = board
    frame = load(uri)
    names = row_names(frame)
    top = [names[r] for r in frame[~frame["flagged"]]["run_id"][:5]]
    assert set(rank_columns(frame).values()) == {"autoattack"}
    matrix = page.split("<table class='mcnemar'>")[1].split("</table>")[0]
    assert [h.split("</th>")[0] for h in matrix.split("<th class='name'>")[1:6]] == top
    assert "broken" not in matrix and "AMR" not in matrix  # flagged; sixth and below
    # EMR λ=0.5 (34/50) vs SMD (25/50): prefixes, so 9 discordant points, p = 2/2^9
    assert "data-p='0.00390625' data-difference='0.18'" in matrix
    assert matrix.count("class='significant'") == 2 * 3  # EMR λ=0.5 vs TRADES, EMR λ=0.3, SMD
    assert "Best vs runner-up: EMR λ=0.5 68.00% vs PGD-AT" in page
    assert "exact McNemar p = 0.125 (not significant at 0.05)" in page


# -- margins, from training to the page ---------------------------------------------------------
TINY = dict(dataset="mnist", model="mlp", model_params={"hidden": 32, "layers": 1},
            train_subset=128, val_subset=64, test_subset=64, batch_size=64, lr=0.05,
            attack_steps=2, eval_steps=2, epochs=2, margin_every=1, margin_subset=16)


def test_amr_runs_log_their_average_and_minimum_margin_without_touching_training():
    measured = TrainingRun(TrialConfig.from_dict({**TINY, "defense": "amr"}))
    quiet = TrainingRun(TrialConfig.from_dict({**TINY, "defense": "amr", "margin_every": 0}))
    first = measured.run_epoch()
    quiet.run_epoch()
    x, y = measured.val_set.tensors()
    expected = amr_margin_summary(measured.model, x[:16], y[:16], samples=20,
                                  generator=torch.Generator().manual_seed(measured.config.seed))
    assert first["val_average_margin"] == pytest.approx(expected["average_margin"])
    assert first["val_minimum_margin"] == pytest.approx(expected["minimum_margin"])
    assert "val_effective_margin_mean" in first
    measured.run_epoch(), quiet.run_epoch()
    for a, b in zip(measured.model.parameters(), quiet.model.parameters(), strict=True):
        assert torch.equal(a, b)  # the margin's random points come from a generator of their own
    pgd = TrainingRun(TrialConfig.from_dict({**TINY, "defense": "pgd_at", "epochs": 1}))
    assert "val_average_margin" not in pgd.run_epoch()


def test_amr_statistics_of_the_pools_bounds_are_amr_margin_summary():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 3))
    x, y = torch.rand(40, 1, 3, 4), torch.randint(0, 3, (40,))
    bounds = amr_margin_lower_bound(model, x, generator=torch.Generator().manual_seed(0))
    correct = (model(x).argmax(1) == y).tolist()
    summary = amr_margin_summary(model, x, y, generator=torch.Generator().manual_seed(0))
    statistics = amr_statistics(bounds.tolist(), correct)
    assert statistics["average_margin"] == pytest.approx(summary["average_margin"])
    assert statistics["minimum_margin"] == pytest.approx(summary["minimum_margin"])
    assert 0 < sum(correct) < 40  # both signs of the minimum margin are exercised


def test_smd_runs_keep_their_margin_histogram_beside_the_checkpoint(tmp_path):
    run = TrainingRun(TrialConfig.from_dict({**TINY, "defense": "smd", "epochs": 1,
                                             "margin_every": 0}))
    assert state_margins(run.defense_state) is None  # before its first step
    run.run_epoch()
    document = state_margins(run.defense_state)
    margins = run.defense_state.margins()[run.defense_state.visited]
    assert document["n"] == 128 and sum(document["counts"]) == 128
    assert len(document["edges"]) == len(document["counts"]) + 1
    assert document["mean"] == pytest.approx(margins.mean().item())
    assert document["min"] >= document["edges"][0] and document["max"] <= document["edges"][-1]
    path = write_state_margins(run.defense_state, tmp_path)
    assert path.name == MARGIN_HISTOGRAM == STATE_MARGINS
    assert json.loads(path.read_text()) == document
    plain = TrainingRun(TrialConfig.from_dict({**TINY, "defense": "pgd_at", "epochs": 1}))
    assert write_state_margins(plain.defense_state, tmp_path / "none") is None


def test_smd_and_amr_margins_reach_mlflow_and_the_report(board, page):
    uri, root = board
    frame = load(uri).set_index("defense")
    client = MlflowClient(uri)
    smd_source, amr_source = frame.loc["smd", "source_run"], frame.loc["amr", "source_run"]
    published = [a.path for a in client.list_artifacts(smd_source, "best_checkpoint")]
    assert f"best_checkpoint/{MARGIN_HISTOGRAM}" in published
    assert {k: client.get_run(amr_source).data.metrics[k] for k in AMR_VALIDATION} == \
        AMR_VALIDATION
    assert sum(state_margins(smd_state())["counts"]) == SMD_TRAINING
    assert "<img src='smd_margins.png'" in page
    amr = page.split("<table class='amr'>")[1].split("</table>")[0]
    # tests.boards: bounds 0.02·i, the first 47 of 50 points correct → 0.49, −0.98
    assert "<td class='name'>AMR</td><td class='acc'>0.49</td><td class='acc'>-0.98</td>" \
           "<td class='acc'>0.8</td><td class='acc'>-0.25</td><td class='acc'>50</td>" in amr


def test_no_margin_rows_say_no_data(board, tmp_path):
    uri, _ = board
    page = render(uri, tmp_path / "report", defense="trades").read_text(encoding="utf-8")
    assert "SMD&#x27;s per-example margins" in page and "smd_margins.png" not in page
    assert "AMR's average and minimum margin: no data in this leaderboard" in page
    assert page.count("no data in this leaderboard") >= 2


def test_report_command_links_rows_to_the_mlflow_ui_it_is_given(board, tmp_path, capsys):
    uri, _ = board
    experiment = MlflowClient(uri).get_experiment_by_name("leaderboard").experiment_id
    run_id = load(uri)["run_id"].iloc[0]
    index = report_command(["--tracking-uri", uri, "--out", str(tmp_path / "r"),
                            "--mlflow-ui", "https://mlflow.example.org/"])
    page = index.read_text(encoding="utf-8")
    assert f"href='https://mlflow.example.org/#/experiments/{experiment}/runs/{run_id}'" in page
    assert MLFLOW_UI == "http://127.0.0.1:5000"  # what `mlflow ui` serves by default
