"""Per-class clean and worst-case accuracy: exact counts from labels and per-example flags, the
evaluation that records the labels, the record that carries them (and reads documents without
them), the row metrics that stay out of the leaderboard's columns, the command line's table and
the report's per-class table."""

import json
import math
from fractions import Fraction

import pandas as pd
import pytest
import torch

from attacks.evaluate import AttackResult, Report, build_report, evaluate_model
from attacks.rows import CLASS_METRICS_UP_TO, class_metrics, row_metrics
from attacks.schema import (
    Accuracy,
    AttackRecord,
    ClassAccuracy,
    EvaluationRecord,
    class_accuracies,
    wilson_interval,
)
from dashboards.leaderboard import metric_columns

# six points of three classes: clean, worst case and one attack's flags (and-ed with clean)
LABELS = (0, 0, 1, 1, 1, 2)
CLEAN = (True, True, True, False, True, False)
WORST = (True, False, True, False, False, False)
PGD = (True, False, True, False, True, False)


def test_class_counts_from_known_flags():
    classes = class_accuracies(LABELS, CLEAN, WORST, {"pgd100_ce": PGD})
    assert classes == (ClassAccuracy(0, 2, 2, 1, {"pgd100_ce": 1}),
                       ClassAccuracy(1, 3, 2, 1, {"pgd100_ce": 2}),
                       ClassAccuracy(2, 1, 0, 0, {"pgd100_ce": 0}))
    one = classes[1]
    assert one.clean_accuracy == Accuracy(2 / 3, *wilson_interval(2, 3), 3)
    assert one.worst_case_accuracy == Accuracy(1 / 3, *wilson_interval(1, 3), 3)
    assert one.attack_accuracy("pgd100_ce") == Accuracy.of([True, False, True])
    assert one.to_dict() == {"label": 1, "n": 3, "clean_correct": 2, "worst_case_correct": 1,
                             "attacks_correct": {"pgd100_ce": 2},
                             "clean": one.clean_accuracy.to_dict(),
                             "worst_case": one.worst_case_accuracy.to_dict()}
    # classes come out in ascending order whatever order the points are in
    assert [c.label for c in class_accuracies((7, 3, 7, 0), (1, 1, 0, 1), (0, 1, 0, 1))] == \
        [0, 3, 7]
    assert class_accuracies((), (), ()) == ()
    with pytest.raises(ValueError, match="5 worst-case flags for 6 labels"):
        class_accuracies(LABELS, CLEAN, WORST[:5])
    with pytest.raises(ValueError, match="2 pgd flags for 6 labels"):
        class_accuracies(LABELS, CLEAN, WORST, {"pgd": (True, False)})


def record(**changes) -> EvaluationRecord:
    attacks = (AttackRecord("pgd-100-ce", "pgd", "pgd100_ce", True, {"steps": 100},
                            (True, False, True, True, True, False),
                            Accuracy.of(PGD), 1.0),
               AttackRecord("fgsm", "fgsm", "fgsm", True, {},
                            (True, True, True, False, False, True),
                            Accuracy.of([1, 1, 1, 0, 0, 0]), 0.5))
    values = dict(n=6, epsilon=0.1, norm="linf", eval_seed=0, clean_correct=CLEAN,
                  attacks=attacks, dataset="mnist", labels=LABELS)
    return EvaluationRecord(**{**values, **changes})


def test_the_record_carries_labels_and_gives_per_class_counts():
    chosen = record()
    assert chosen.worst_case == WORST
    assert chosen.per_class == class_accuracies(
        LABELS, CLEAN, WORST, {"pgd100_ce": PGD, "fgsm": (True, True, True, False, False, False)})
    document = json.loads(json.dumps(chosen.to_dict()))
    assert document["labels"] == list(LABELS)
    assert document["per_class"] == [c.to_dict() for c in chosen.per_class]
    assert [(c["label"], c["n"], c["clean_correct"], c["worst_case_correct"])
            for c in document["per_class"]] == [(0, 2, 2, 1), (1, 3, 2, 1), (2, 1, 0, 0)]
    again = EvaluationRecord.from_dict(document)
    assert again == chosen and again.to_dict() == document
    with pytest.raises(ValueError, match="5 labels for n = 6 points"):
        record(labels=LABELS[:5])


def test_a_version_2_document_without_labels_still_loads():
    document = json.loads(json.dumps(record().to_dict()))
    del document["labels"], document["per_class"]  # as written before labels were recorded
    assert document["schema_version"] == 2
    old = EvaluationRecord.from_dict(document)
    assert old == record(labels=()) and old.labels == () and old.per_class == ()
    assert old.to_dict()["per_class"] == [] and old.to_dict()["labels"] == []
    assert class_metrics(old) == {}


def test_the_report_keeps_labels_through_its_record():
    clean = torch.tensor(CLEAN)
    results = [AttackResult("pgd-100-ce", "pgd", True, {"steps": 100}, torch.tensor(PGD), 1.0)]
    report = build_report(clean, results, epsilon=0.1, norm="linf", seed=0,
                          labels=torch.tensor(LABELS))
    written = report.to_record()
    assert written.labels == LABELS
    assert [(c.label, c.n, c.clean, c.worst_case) for c in written.per_class] == \
        [(0, 2, 2, 1), (1, 3, 2, 2), (2, 1, 0, 0)]
    assert torch.equal(Report.from_record(written).labels, torch.tensor(LABELS))
    assert build_report(clean, results, epsilon=0.1, norm="linf", seed=0).to_record().labels \
        == ()
    with pytest.raises(ValueError, match="2 labels for 6 points"):
        build_report(clean, results, epsilon=0.1, norm="linf", seed=0,
                     labels=torch.tensor([0, 1]))


def test_evaluate_model_gives_classes_that_add_up_to_the_whole(trained_mlp, mnist_test_slice):
    x, y = (t[:60] for t in mnist_test_slice)
    report = evaluate_model(trained_mlp, x, y, attacks=["fgsm", "pgd-20"], epsilon=0.1,
                            checks=False, indicators=None)
    assert torch.equal(report.labels, y)
    written = report.to_record()
    classes = written.per_class
    assert [c.label for c in classes] == sorted(set(y.tolist()))
    assert sum(c.n for c in classes) == written.n == 60
    clean, worst = written.clean, written.worst_case_accuracy
    assert 0 < worst.accuracy < clean.accuracy  # a non-trivial case
    assert sum(c.clean for c in classes) == sum(written.clean_correct)
    assert sum(c.worst_case for c in classes) == sum(written.worst_case)
    # the n-weighted mean of the per-class accuracies is the overall accuracy, exactly
    assert sum(Fraction(c.clean, c.n) * c.n for c in classes) / written.n == \
        Fraction(sum(written.clean_correct), written.n)
    assert math.fsum(c.n * c.clean_accuracy.accuracy for c in classes) / written.n == \
        pytest.approx(clean.accuracy, abs=1e-12)
    assert math.fsum(c.n * c.worst_case_accuracy.accuracy for c in classes) / written.n == \
        pytest.approx(worst.accuracy, abs=1e-12)
    for attack in written.attacks:
        assert sum(c.attacks[attack.column] for c in classes) == sum(written.robust(attack.column))
    for c in classes:
        assert c.worst_case <= min(c.attacks.values()) <= max(c.attacks.values()) <= c.clean


def test_row_metrics_per_class_stay_out_of_the_leaderboard_columns():
    metrics = row_metrics(record())
    assert metrics["class1_clean_accuracy"] == 2 / 3
    assert metrics["class1_worst_case_accuracy"] == 1 / 3
    assert metrics["class2_clean_accuracy"] == 0.0
    assert sorted(metric_columns(metrics)) == ["clean", "fgsm", "pgd100_ce", "worst_case"]
    many = CLASS_METRICS_UP_TO + 1  # more classes: per-class numbers only in the record
    wide = EvaluationRecord(n=many, epsilon=0.1, norm="linf", eval_seed=0,
                            clean_correct=(True,) * many, attacks=(),
                            labels=tuple(range(many)))
    assert len(wide.per_class) == many and class_metrics(wide) == {}
    assert not any(key.startswith("class") for key in row_metrics(wide))


def test_evaluate_cli_prints_the_per_class_table(tmp_path, trained_mlp, capsys):
    from attacks.evaluate_cli import class_table
    from attacks.evaluate_cli import main as evaluate_cli
    from trainables.checkpoints import save_checkpoint
    from trainables.config import TrialConfig

    config = TrialConfig.from_dict({"dataset": "mnist", "model": "mlp", "epsilon": 0.05,
                                    "model_params": {"hidden": 256, "layers": 2}})
    folder = save_checkpoint(tmp_path / "ckpt", model=trained_mlp, config=config)
    out = tmp_path / "report.json"
    evaluate_cli([str(folder), "--attacks", "fgsm", "--n-examples", "20", "--no-checks",
                  "--no-indicators", "--json", str(out)])
    written = json.loads(out.read_text())
    record_ = EvaluationRecord.from_dict(written)
    assert len(record_.labels) == 20 and sum(c.n for c in record_.per_class) == 20
    assert written["per_class"] == [c.to_dict() for c in record_.per_class]
    captured = capsys.readouterr()
    summary = json.loads(captured.out.strip().splitlines()[-1])
    assert summary["per_class"] == written["per_class"] and "labels" not in summary
    table = captured.err[captured.err.index("per class"):].splitlines()
    assert table[1].split() == ["class", "n", "clean", "%", "worst-case", "%"]
    assert len(table) == 2 + len(record_.per_class)
    for line, entry in zip(table[2:], record_.per_class, strict=True):
        cells = line.split()
        assert (int(cells[0]), int(cells[1])) == (entry.label, entry.n)
        assert cells[2] == f"{100 * entry.clean_accuracy.accuracy:.1f}"
        assert cells[5] == f"{100 * entry.worst_case_accuracy.accuracy:.1f}"
    assert class_table([]) == ""


# -- the report --------------------------------------------------------------------------------
def test_class_html_shows_each_rows_classes():
    from dashboards.report import class_html

    frame = pd.DataFrame({"run_id": ["a" * 32, "b" * 32, "c" * 32]})
    names = {"a" * 32: "PGD-AT", "b" * 32: "TRADES β=6", "c" * 32: "EMR"}
    reports = {"a" * 32: record(), "b" * 32: record(clean_correct=(True,) * 6)}  # c: none
    table = class_html(frame, reports, names)
    assert "PGD-AT" in table and "TRADES β=6" in table and "EMR" not in table
    assert table.count("<tr data-class=") == 3
    # one n column: both rows evaluated the same points
    assert "<tr data-class='1'><th>1</th><td class='acc'>3</td>" in table
    assert "66.7 <span class='ci'>" in table  # row a, class 1 clean: 2 of 3
    assert table.count("class='acc lowest'") == 2  # each row's weakest class
    fewer = record(n=3, clean_correct=CLEAN[:3], labels=LABELS[:3], attacks=())
    unshared = class_html(frame, {"a" * 32: record(), "b" * 32: fewer}, names)
    assert "<th>n</th><th>clean</th><th>worst case</th>" in unshared
    assert "<td>—</td><td>—</td><td>—</td>" in unshared  # row b has no class 2
    assert "no data" in class_html(frame, {"a" * 32: record(labels=())}, names)
    assert "TRADES β=6" not in class_html(frame, reports, names, top=1)


def test_the_report_renders_per_class_accuracy_from_the_pools_records(tmp_path):
    from boards import N, flags, synthetic_report
    from mlflow.tracking import MlflowClient

    from attacks.pool import record_row
    from attacks.shards import Plan
    from dashboards.leaderboard import load
    from dashboards.queue import Candidate
    from dashboards.report import render

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    plan = Plan(attacks=("aa-standard", "pgd-100-ce"), epsilon=0.1, norm="linf", seed=0,
                n_examples=N, shard_size=N)
    labels = torch.arange(N) % 5
    for i, (defense, clean, aa, pgd) in enumerate((("pgd_at", 46, 30, 32),
                                                   ("trades", 44, 28, 29))):
        report = synthetic_report(clean, aa, pgd)
        report.labels = labels
        candidate = Candidate(f"source{i}", "1", f"trial{i}",
                              {"defense": defense, "dataset": "mnist", "model": "mlp"}, {}, 0.5)
        record_row(uri, "leaderboard", report=report, plan=plan,
                   config={"dataset": "mnist", "model": "mlp", "defense": defense,
                           "epsilon": 0.1}, candidate=candidate, checkpoint=f"/ck/{i}",
                   data_checksum="abc", seconds=1.0, train_seconds=1.0,
                   artifact_location=(tmp_path / "art").as_uri())
    frame = load(uri)
    assert not any(str(c).startswith("class") for c in frame.columns)  # not leaderboard columns
    metrics = MlflowClient(uri).get_run(frame["run_id"][0]).data.metrics
    # the best row: clean on points 0..45, worst case (AutoAttack) on points 0..29
    expected_clean = [(flags(46) & (labels == c)).sum().item() / 10 for c in range(5)]
    assert [metrics[f"class{c}_clean_accuracy"] for c in range(5)] == expected_clean
    assert [metrics[f"class{c}_worst_case_accuracy"] for c in range(5)] == [0.6] * 5
    page = render(uri, tmp_path / "report", mlflow_ui=None).read_text(encoding="utf-8")
    section = page[page.index("<h2>Per class</h2>"):]
    section = section[:section.index("<h2>", 4)]
    assert "<table class='per-class'>" in section and section.count("<tr data-class=") == 5
    assert "PGD-AT" in section and "TRADES" in section
    # class 0 of the best row: 10 points, all clean-correct, 6 correct under every attack
    row = section[section.index("<tr data-class='0'>"):].split("</tr>")[0]
    assert "<td class='acc'>10</td>" in row
    assert f"100.0 <span class='ci'>[{100 * wilson_interval(10, 10)[0]:.1f}, 100.0]</span>" \
        in row
    assert "60.0 <span class='ci'>" in row
