"""The leaderboard DataFrame, its exports and the HTML report, over a real sqlite MLflow store
holding rows written the way the evaluation pool writes them."""

import json
import math
import struct

import pandas as pd
import pytest
from boards import ROWS, N, write_board

from dashboards.leaderboard import load, rank, robustbench_entry, to_html, to_markdown
from dashboards.report import render


@pytest.fixture(scope="module")
def board(tmp_path_factory):
    root = tmp_path_factory.mktemp("board")
    return write_board(root), root


def test_rows_ranked_by_autoattack_with_flagged_rows_set_apart(board):
    uri, _ = board
    frame = load(uri)
    assert list(frame["defense"]) == ["emr", "pgd_at", "trades", "broken"]
    assert list(frame["rank"][:3]) == [1, 2, 3] and frame["rank"].isna().iloc[3]
    row = frame.iloc[0]
    assert row["autoattack"] == pytest.approx(34 / N) and row["clean"] == pytest.approx(45 / N)
    assert row["autoattack_ci_low"] < row["autoattack"] < row["autoattack_ci_high"]
    assert row["knob.lambda_emr"] == "0.5" and row["n"] == N
    assert row["device_hours"] == pytest.approx((3600 + 31) / 3600)
    assert frame.iloc[3]["flagged"] and "gradient masking" in frame.iloc[3]["flags"]
    assert list(load(uri, sweep="s1")["defense"]) == ["emr", "pgd_at"]
    assert list(load(uri, defense="trades")["defense"]) == ["trades"]
    assert len(load(uri, threat_model="linf ε=0.1")) == 4
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
    frame.to_csv(tmp_path / "board.csv", index=False)
    assert len(pd.read_csv(tmp_path / "board.csv")) == len(ROWS)
    entry = robustbench_entry(frame.iloc[0], name="EMR (MLP)", venue="demo")
    assert entry["clean_acc"] == "90.00" and entry["autoattack_acc"] == "68.00"
    assert entry["eps"] == "0.1" and entry["dataset"] == "mnist" and not entry["unreliable"]
    assert robustbench_entry(frame.iloc[3])["unreliable"]
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
            "cost.png"} <= set(images)
    for name in images:
        width, height = _png_size(index.parent / name)
        assert width > 100 and height > 50
    assert "exact McNemar p =" in page and "emr" in page
    assert (index.parent / "leaderboard.md").read_text().startswith("| rank")


def test_rows_and_sweeps_compared_on_paired_flags(board):
    from dashboards.leaderboard import compare_rows, compare_sweeps

    uri, _ = board
    frame = load(uri).set_index("defense")
    # tests.boards: robust flags are prefixes, so EMR (34/50) ⊇ PGD-AT (30/50): 4 discordant
    result = compare_rows(uri, frame.loc["emr", "run_id"], frame.loc["pgd_at", "run_id"],
                          attack="aa-standard")
    assert (result.only_a, result.only_b) == (4, 0)
    assert result.p_value == pytest.approx(2 / 16)
    best_a, best_b, result = compare_sweeps(uri, "s1", "s2")
    assert (best_a, best_b) == (frame.loc["emr", "run_id"], frame.loc["trades", "run_id"])
    assert (result.only_a, result.only_b) == (6, 0)  # worst case: 34 vs 28 (broken is flagged)
