"""The leaderboard DataFrame, its exports and the HTML report, over a real sqlite MLflow store
holding rows written the way the evaluation pool writes them."""

import json
import math
import struct

import pandas as pd
import pytest
from boards import ROWS, N, flags, write_board
from mlflow.tracking import MlflowClient

from attacks.evaluate import AttackResult, build_report
from attacks.pool import record_row
from attacks.schema import EvaluationRecord
from attacks.shards import Plan
from attacks.suite import create_attack
from dashboards.leaderboard import (
    accuracy_columns,
    load,
    paper_epsilon,
    rank,
    robustbench_entry,
    row_report,
    to_html,
    to_markdown,
)
from dashboards.queue import Candidate, record_evaluation
from dashboards.report import render
from trainables.config import TrialConfig


@pytest.fixture(scope="module")
def board(tmp_path_factory):
    root = tmp_path_factory.mktemp("board")
    return write_board(root), root


def test_rows_ranked_by_autoattack_with_flagged_rows_set_apart(board):
    uri, _ = board
    frame = load(uri)
    assert list(frame["defense"]) == ["emr", "pgd_at", "trades", "emr", "smd", "pgd_at", "amr",
                                      "broken"]
    assert list(frame["rank"][:7]) == [1, 2, 3, 4, 5, 6, 7] and frame["rank"].isna().iloc[-1]
    row = frame.iloc[0]
    assert row["autoattack"] == pytest.approx(34 / N) and row["clean"] == pytest.approx(45 / N)
    assert row["autoattack_ci_low"] < row["autoattack"] < row["autoattack_ci_high"]
    assert row["knob.lambda_emr"] == "0.5" and row["n"] == N
    assert row["device_hours"] == pytest.approx((3600 + 31) / 3600)
    assert frame.iloc[-1]["flagged"] and "gradient masking" in frame.iloc[-1]["flags"]
    assert list(load(uri, sweep="s1")["defense"]) == ["emr", "pgd_at"]
    assert list(load(uri, defense="trades")["defense"]) == ["trades"]
    assert len(load(uri, threat_model="linf ε=0.1")) == len(ROWS)
    assert load(uri, dataset="cifar10").empty


def test_rank_falls_back_to_the_worst_case():
    frame = pd.DataFrame({"autoattack": [math.nan, 0.5], "worst_case": [0.6, 0.4],
                          "clean": [0.9, 0.9], "flagged": [False, False]})
    assert list(rank(frame)["worst_case"]) == [0.6, 0.4]


def test_exports(board, tmp_path):
    uri, _ = board
    frame = load(uri)
    markdown = to_markdown(frame).splitlines()
    assert markdown[0].startswith("| rank | defense") and len(markdown) == 2 + len(ROWS)
    assert "| 1 | emr |" in markdown[2] and "68.00" in markdown[2]
    assert "<table" in to_html(frame) and "broken" in to_html(frame)
    assert "68.0 <span class='ci'>[54.2, 79.2]</span>" in to_html(frame)  # EMR: 34/50
    frame.to_csv(tmp_path / "board.csv", index=False)
    assert len(pd.read_csv(tmp_path / "board.csv")) == len(ROWS)
    entry = robustbench_entry(frame.iloc[0], name="EMR (MLP)", venue="demo")
    assert entry["clean_acc"] == "90.00" and entry["autoattack_acc"] == "68.00"
    assert entry["eps"] == "0.1" and entry["dataset"] == "mnist" and not entry["unreliable"]
    assert robustbench_entry(frame.iloc[-1])["unreliable"]
    json.dumps(entry)


def _png_size(path):
    header = path.read_bytes()[:24]
    assert header[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", header[16:24])


def test_report_page_and_every_figure(board, tmp_path):
    uri, _ = board
    index = render(uri, tmp_path / "report")
    page = index.read_text()
    images = [part.split("'")[0] for part in page.split("<img src='")[1:]]
    assert {"pareto.png", "epsilon_curve.png", "effective_margin.png", "average_margin.png",
            "smd_margins.png", "cost.png"} <= set(images)
    for name in images:
        width, height = _png_size(index.parent / name)
        assert width > 100 and height > 50
    assert "exact McNemar p =" in page and "EMR λ=0.5" in page
    assert (index.parent / "leaderboard.md").read_text().startswith("| rank")


def test_rows_and_sweeps_compared_on_paired_flags(board):
    from dashboards.leaderboard import compare_rows, compare_sweeps

    uri, _ = board
    frame = load(uri).drop_duplicates("defense").set_index("defense")  # each defense's best
    # tests.boards: robust flags are prefixes, so EMR (34/50) ⊇ PGD-AT (30/50): 4 discordant
    result = compare_rows(uri, frame.loc["emr", "run_id"], frame.loc["pgd_at", "run_id"],
                          attack="autoattack")
    assert (result.only_a, result.only_b) == (4, 0)
    assert result.p_value == pytest.approx(2 / 16)
    by_label = compare_rows(uri, frame.loc["emr", "run_id"], frame.loc["pgd_at", "run_id"],
                            attack="aa-standard")
    assert by_label == result
    best_a, best_b, result = compare_sweeps(uri, "s1", "s2")
    assert (best_a, best_b) == (frame.loc["emr", "run_id"], frame.loc["trades", "run_id"])
    assert (result.only_a, result.only_b) == (6, 0)  # worst case: 34 vs 28 (broken is flagged)


# -- rows written with the schema: derived columns, EOT, versions, reproducibility ------------
def result(spec: str, count: int, epsilon: float = 0.1) -> AttackResult:
    """An attack result with the settings the suite records for ``spec``."""
    built = create_attack(spec, defaults={"epsilon": epsilon, "seed": 0})
    return AttackResult(spec, built.name, built.white_box, built.settings, flags(count), 1.0)


def write_row(uri, root, i: int, specs: dict[str, int], *, clean: int = 45,
              eot_samples: int = 0, epsilon: float = 0.1, defense: str = "pgd_at") -> None:
    report = build_report(flags(clean), [result(s, k, epsilon) for s, k in specs.items()],
                          epsilon=epsilon, norm="linf", seed=0)
    plan = Plan(attacks=tuple(specs), epsilon=epsilon, norm="linf", seed=0, n_examples=N,
                shard_size=N)
    if eot_samples:
        report.eot_samples = eot_samples
    config = TrialConfig(defense=defense, seed=100 + i, epochs=7, lr=0.05, batch_size=64,
                         schedule="cosine", lr_milestones=[3, 5]).to_dict()
    candidate = Candidate(f"source{i}", "1", f"trial{i}", {
        "defense": defense, "sweep": "s", "dataset": "mnist", "model": "mlp",
        "data_checksum": f"train{i}"}, {}, 0.5)
    record_row(uri, "leaderboard", report=report, plan=plan, config=config,
               candidate=candidate, checkpoint=f"/ck/{i}", data_checksum="points",
               seconds=10.0, train_seconds=100.0, artifact_location=(root / "art").as_uri())


@pytest.fixture(scope="module")
def spelled(tmp_path_factory):
    root = tmp_path_factory.mktemp("spelled")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    spellings = [{"pgd-100-ce": 30, "aa-standard": 25, "square:queries=1000": 33},
                 {"pgd:steps=100,loss=ce": 31, "autoattack": 26, "spsa-light": 40},
                 {"pgd:loss=ce,steps=100": 32, "autoattack:version=standard": 27}]
    for i, specs in enumerate(spellings):
        write_row(uri, root, i, specs)
    return uri


def test_spellings_of_one_attack_land_in_one_column(spelled):
    frame = load(spelled).set_index("run_id", drop=False)
    assert list(frame["pgd100_ce"]) == pytest.approx([32 / N, 31 / N, 30 / N])
    assert list(frame["autoattack"]) == pytest.approx([27 / N, 26 / N, 25 / N])  # the ranking
    assert accuracy_columns(frame) == ["clean", "autoattack", "pgd100_ce", "pgd100_cw",
                                       "square", "spsa", "spsa_lma_at", "square_queries1000",
                                       "worst_case"]
    assert not [c for c in frame.columns if c.startswith("pgd") and c[:9] not in (
        "pgd100_ce", "pgd100_cw")]
    assert frame["square_queries1000"].notna().sum() == 1
    assert frame["spsa_lma_at"].notna().sum() == 1 and frame["spsa"].isna().all()
    header = to_markdown(frame).splitlines()[0]
    assert "| clean | autoattack | pgd100_ce |" in header
    assert header.index("square_queries1000") < header.index("worst_case") < header.index("eot")
    assert "| spsa |" not in header  # a column no row fills is not shown


def test_rows_carry_a_complete_reproducibility_record(spelled):
    frame = load(spelled)
    row = frame.iloc[0]
    run = MlflowClient(spelled).get_run(row["run_id"])
    params, tags = run.data.params, run.data.tags
    assert params["eval_seed"] == "0" and "seed" not in params
    assert (params["train_seed"], params["epochs"], params["lr"], params["batch_size"]) == (
        "102", "7", "0.05", "64")
    assert (params["lr_schedule"], params["lr_milestones"]) == ("cosine", "[3, 5]")
    assert params["train_data_checksum"] == "train2" and params["extra_data"] == "False"
    assert (tags["report_schema"], tags["eot"], tags["data_checksum"]) == ("2", "false",
                                                                           "points")
    assert row["eval_seed"] == "0" and row["train_seed"] == "102" and not row["eot"]
    record = row_report(spelled, row["run_id"])
    assert isinstance(record, EvaluationRecord) and record.schema_version == 2
    assert record.training.seed == 102 and record.training.lr_milestones == (3, 5)
    assert record.training.data_checksum == "train2" and record.source.source_run == "source2"
    assert record.columns == ("pgd100_ce", "autoattack")
    assert record.plan["attacks"] == ["pgd:loss=ce,steps=100", "autoattack:version=standard"]


def test_eot_rows_rank_by_autoattack_rand(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    write_row(uri, tmp_path, 0, {"aa-standard": 30, "pgd-100-ce": 31}, defense="pgd_at")
    write_row(uri, tmp_path, 1, {"autoattack:version=rand": 35, "pgd:eot_samples=20": 36},
              eot_samples=20, defense="trades", epsilon=8 / 255)
    frame = load(uri)
    assert list(frame["defense"]) == ["trades", "pgd_at"]
    eot = frame.iloc[0]
    assert eot["eot"] and eot["eot_samples"] == 20 and math.isnan(eot["autoattack"])
    assert eot["autoattack_rand"] == pytest.approx(35 / N)
    assert eot["pgd100_ce_eot20"] == pytest.approx(36 / N)
    assert not frame.iloc[1]["eot"] and frame.iloc[1]["eot_samples"] == 1
    assert "| true |" in to_markdown(frame).splitlines()[2]
    entry = robustbench_entry(eot)
    assert entry["autoattack_acc"] == "70.00" and entry["number_forward_passes"] == 20
    assert entry["eps"] == "8/255" and entry["additional_data"] is False
    assert entry["architecture"] == "mlp" and entry["clean_acc"] == "90.00"
    plain = robustbench_entry(frame.iloc[1])
    assert plain["number_forward_passes"] == 1 and plain["autoattack_acc"] == "60.00"
    assert robustbench_entry({**dict(frame.iloc[1]), "extra_data": True})["additional_data"]


@pytest.mark.parametrize("epsilon,written", [(8 / 255, "8/255"), (2 / 255, "2/255"),
                                             (16 / 255, "16/255"), (0.1, "0.1"), (0.3, "0.3"),
                                             (0.2, "0.2"), (1.0, "1"), (0.5, "0.5"),
                                             (0.031, "0.031")])
def test_epsilon_as_papers_write_it(epsilon, written):
    assert paper_epsilon(epsilon) == written


def test_rows_of_report_schema_1_are_still_read(tmp_path):
    """A row as the pool wrote it before report schemas: ``seed``, label-slug metrics."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    metrics = {}
    for prefix, value in (("clean", 0.9), ("worst_case", 0.5), ("aa-standard", 0.6),
                          ("autoattack", 0.6), ("pgd-100-ce", 0.7), ("spsa-light", 0.8),
                          ("spsa", 0.8)):
        metrics.update({f"{prefix}_accuracy": value, f"{prefix}_ci_low": value - 0.1,
                        f"{prefix}_ci_high": value + 0.1, f"{prefix}_n": N})
    record_evaluation(uri, "leaderboard", identity={"source_run": "old"}, run_name="old",
                      params={"dataset": "mnist", "model": "mlp", "defense": "trades",
                              "epsilon": "0.1", "norm": "linf", "seed": "4"},
                      metrics=metrics, tags={"flagged": "false", "flags": "none"},
                      artifacts_dir=None)
    row = load(uri).iloc[0]
    assert (row["autoattack"], row["pgd100_ce"], row["spsa"]) == (0.6, 0.7, 0.8)
    assert row["eval_seed"] == "4" and not row["eot"] and row["rank"] == 1
    assert "aa-standard" not in row.index and "spsa-light" not in row.index
