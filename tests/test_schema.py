"""The evaluation record (schema version 2) and canonical attack identities: exact round trips,
version handling, the upgrade of version-less documents, derived values, and one column per
attack however it is spelled."""

import json
import subprocess
import sys

import pytest
import torch

from attacks.evaluate import AttackResult, Report, build_report
from attacks.identity import canonical_columns, column_of, identify
from attacks.schema import (
    SCHEMA_VERSION,
    Accuracy,
    AttackRecord,
    CurvePoint,
    EvaluationRecord,
    SchemaError,
    Source,
    TrainingRecord,
    as_record,
    wilson_interval,
)
from attacks.suite import create_attack
from tests.integration.cluster import ROOT
from trainables.config import TrialConfig


def attack(label, robust, *, column=None, name="pgd", settings=None, seconds=1.5):
    robust = tuple(bool(v) for v in robust)
    return AttackRecord(label, name, column or label, True, settings or {"steps": 10}, robust,
                        Accuracy.of(robust), seconds, ("a flag",), {"count": {"x": 2}})


def record(**changes) -> EvaluationRecord:
    values = dict(
        n=4, epsilon=0.1, norm="linf", eval_seed=3,
        clean_correct=(True, True, True, False),
        attacks=(attack("pgd-100-ce", [1, 1, 0, 0], column="pgd100_ce"),
                 attack("square:queries=1000", [1, 0, 1, 0], column="square_queries1000",
                        name="square")),
        flags=("black-box square stronger than white-box attacks",), trusted=False,
        check_settings={"black_box_margin": 0.01}, dataset="mnist",
        epsilon_curve=(CurvePoint(0.05, Accuracy(0.75, 0.3, 0.95, 4)),),
        margins={"effective_margin": (0.1, 0.2, 0.3, -0.1)},
        indicators=({"name": "unbounded", "fired": False, "value": 1.0, "threshold": 0.99,
                     "n": 4, "seconds": 0.5, "message": ""},),
        eot=True, eot_samples=20, plan={"attacks": ["pgd-100-ce"], "eot_samples": 20},
        source=Source("run-1", "/ck/1", "abc123"),
        training=TrainingRecord(seed=7, epochs=5, batch_size=128, lr=0.1, schedule="cosine",
                                lr_milestones=(3, 4), lr_gamma=0.1, momentum=0.9,
                                weight_decay=5e-4, data_checksum="train-sum"))
    return EvaluationRecord(**{**values, **changes})


def test_record_round_trips_exactly_through_json():
    original = record()
    document = json.loads(json.dumps(original.to_dict()))
    assert document["schema_version"] == SCHEMA_VERSION == 2
    assert EvaluationRecord.from_dict(document) == original
    assert EvaluationRecord.from_dict(document).to_dict() == document
    assert list(document["attacks"]) == ["pgd-100-ce", "square:queries=1000"]  # ordered
    assert document["eval_seed"] == 3 and "seed" not in document
    assert document["training"]["lr_milestones"] == [3, 4]
    assert as_record(document) == original and as_record(original) is original
    bare = record(training=None, plan=None, source=Source(), indicators=(), eot=False,
                  eot_samples=1)
    assert EvaluationRecord.from_dict(json.loads(json.dumps(bare.to_dict()))) == bare


def test_derived_values():
    chosen = record()
    assert chosen.worst_case == (True, False, False, False)
    assert chosen.worst_case_accuracy == Accuracy(0.25, *wilson_interval(1, 4), 4)
    assert chosen.clean.accuracy == 0.75 and chosen.clean.n == 4
    document = chosen.to_dict()
    assert document["worst_case_accuracy"] == 0.25 and document["clean_accuracy"] == 0.75
    assert chosen.attack("pgd100_ce") is chosen.attack("pgd-100-ce") is chosen.attacks[0]
    assert chosen.robust("square_queries1000") == (True, False, True, False)
    assert chosen.robust("clean") == chosen.clean_correct
    with pytest.raises(KeyError, match="pgd100_ce, square_queries1000"):
        chosen.attack("fab")
    # Wilson (1927) with z = 1.96: 8/10 → (0.4902, 0.9433)
    assert wilson_interval(8, 10) == pytest.approx((0.4902, 0.9433), abs=1e-4)


def test_record_checks_its_shape():
    with pytest.raises(ValueError, match="3 robust flags for n = 4"):
        record(attacks=(attack("pgd", [1, 0, 1]),))
    with pytest.raises(ValueError, match="share a column .*pgd100_ce"):
        record(attacks=(attack("pgd-100-ce", [1] * 4, column="pgd100_ce"),
                        attack("pgd:steps=100", [1] * 4, column="pgd100_ce")))
    with pytest.raises(ValueError, match="mode"):
        record(mode="quick")


@pytest.mark.parametrize("version,message", [(3, "newer than this code reads"),
                                             (0, "unknown"), ("2", "unknown"),
                                             (True, "unknown")])
def test_unknown_or_newer_versions_are_refused(version, message):
    document = {**record().to_dict(), "schema_version": version}
    with pytest.raises(SchemaError, match=message):
        EvaluationRecord.from_dict(document)


def version_1_document() -> dict:
    """A report.json as the evaluation pool wrote it before schema versions."""
    return {
        "n": 4, "epsilon": 0.1, "norm": "linf", "seed": 5, "clean_accuracy": 0.75,
        "clean": {"accuracy": 0.75, "ci_low": 0.3, "ci_high": 0.95, "n": 4},
        "worst_case_accuracy": 0.25, "worst_case": {}, "flags": [], "trusted": True,
        "check_settings": {"black_box_margin": 0.01},
        "attacks": {
            "aa-standard": {"accuracy": 0.5, "ci_low": 0.1, "ci_high": 0.9, "n": 4,
                            "name": "autoattack", "white_box": True, "seconds": 2.0,
                            "settings": {"epsilon": 0.1, "version": "standard"}, "flags": [],
                            "details": {}, "robust": [True, True, False, True]},
            "square:queries=1000": {"accuracy": 0.5, "ci_low": 0.1, "ci_high": 0.9, "n": 4,
                                    "name": "square", "white_box": False, "seconds": 1.0,
                                    "settings": {"epsilon": 0.1, "square_queries": 1000,
                                                 "parts": ["square"], "version": "standard",
                                                 "norm": "linf", "seed": 5},
                                    "flags": [], "details": {},
                                    "robust": [True, False, True, False]}},
        "epsilon_curve": [{"epsilon": 0.05, "accuracy": 0.75, "ci_low": 0.3, "ci_high": 0.95,
                           "n": 4}],
        "margins": {"effective_margin": [0.1, 0.2, 0.3, -0.1]},
        "clean_correct": [True, True, True, False],
        "plan": {"attacks": ["aa-standard", "square:queries=1000"]}, "source_run": "run-9",
        "checkpoint": "/ck/9", "data_checksum": "abc"}


def test_version_1_documents_are_upgraded():
    upgraded = EvaluationRecord.from_dict(version_1_document())
    assert upgraded.schema_version == 2 and upgraded.eval_seed == 5
    assert upgraded.source == Source("run-9", "/ck/9", "abc")
    assert upgraded.plan == {"attacks": ["aa-standard", "square:queries=1000"]}
    assert upgraded.training is None and not upgraded.eot and upgraded.eot_samples == 1
    # the columns its row's metrics were written under; accuracy over clean-correct points
    assert upgraded.columns == ("aa-standard", "square_queries_1000")
    assert upgraded.attack("aa-standard").accuracy.accuracy == 0.5
    assert upgraded.attack("square:queries=1000").accuracy == Accuracy.of([1, 0, 1, 0])
    assert upgraded.epsilon_curve == (CurvePoint(0.05, Accuracy(0.75, 0.3, 0.95, 4)),)
    assert upgraded.worst_case == (True, False, False, False)
    again = EvaluationRecord.from_dict(json.loads(json.dumps(upgraded.to_dict())))
    assert again == upgraded
    canonical = canonical_columns(upgraded)
    assert canonical.columns == ("autoattack", "square_queries1000")
    # a hand-written minimal document: per-example flags only
    minimal = EvaluationRecord.from_dict({
        "n": 2, "epsilon": 0.1, "norm": "linf", "clean_correct": [True, True],
        "attacks": {"pgd:steps=5": {"robust": [True, False]}}})
    assert minimal.attacks[0].name == "pgd" and minimal.robust("pgd:steps=5") == (True, False)


PGD_100_CE = ("pgd-100-ce", "pgd:steps=100,loss=ce", "pgd:loss=ce,steps=100", "pgd:steps=100",
              "pgd")


@pytest.mark.parametrize("spec,column", [
    *[(spec, "pgd100_ce") for spec in PGD_100_CE],
    ("pgd-100-cw", "pgd100_cw"), ("pgd-20", "pgd20_ce"), ("l2-pgd:steps=50", "l2_pgd50_ce"),
    ("aa-standard", "autoattack"), ("autoattack", "autoattack"),
    ("autoattack:version=standard,square_queries=5000", "autoattack"),
    ("autoattack:version=rand", "autoattack_rand"),
    ("autoattack:square_queries=300", "autoattack_square_queries300"),
    ("square", "square"), ("square:queries=5000", "square"),
    ("square:queries=1000", "square_queries1000"),
    ("spsa-light", "spsa_lma_at"), ("spsa:preset=lma-at", "spsa_lma_at"),
    ("spsa-strong", "spsa"), ("spsa:preset=strong", "spsa"), ("spsa", "spsa"),
    ("spsa:preset=lma-at,steps=40", "spsa_lma_at_steps40"),
    ("spsa:preset=lma-at,samples=100", "spsa_lma_at"),
    ("pgd:restarts=5", "pgd100_ce_restarts5"),
    ("pgd:random_start=gaussian", "pgd100_ce_random_start_gaussian"),
    ("fgsm", "fgsm"), ("apgd-ce", "apgd_ce"), ("fab-t", "fab_t"),
    ("pgd:eot_samples=20", "pgd100_ce_eot20"), ("pgd:eot_samples=1", "pgd100_ce"),
    ("pgd:bpda=true,eot_samples=5,steps=40", "pgd40_ce_eot5_bpda"),
    ("pgd:bpda=false", "pgd100_ce"),
])
def test_column_of_a_spec(spec, column):
    assert column_of(spec) == column


def test_column_ignores_threat_model_seed_and_derived_defaults():
    for epsilon, seed in ((0.3, 0), (8 / 255, 4)):
        steps20 = create_attack("pgd:steps=20", defaults={"epsilon": epsilon, "seed": seed})
        assert column_of("pgd:steps=20", "pgd", steps20.settings) == "pgd20_ce"
        derived = f"pgd:steps=20,step_size={2.5 * epsilon / 20!r}"
        explicit = create_attack(derived, defaults={"epsilon": epsilon, "seed": seed})
        assert explicit.settings == steps20.settings
        assert column_of(derived, "pgd", explicit.settings) == "pgd20_ce"
    other = create_attack("pgd:steps=20,step_size=0.01", epsilon=0.3)
    assert column_of("pgd:steps=20,step_size=0.01", "pgd", other.settings) == \
        "pgd20_ce_step_size0.01"
    assert identify("pgd:loss=cw,steps=100").spec == "pgd:loss=cw,steps=100"
    # the adaptive attack targets the row's own defense: one column across defenses
    for defense, knobs in (("trades", {"beta": 3.0}), ("emr", None)):
        adaptive = create_attack("adaptive", epsilon=0.1, defense=defense,
                                 defense_params=knobs)
        assert column_of("adaptive", "adaptive", adaptive.settings) == "adaptive"
    # a partial record (settings a test wrote by hand) still finds its identity
    assert column_of("pgd-100-ce", "pgd", {"steps": 100}) == "pgd100_ce"
    assert column_of("aa-standard", "autoattack", {"epsilon": 0.1}) == "autoattack"


def realistic(spec: str, robust, epsilon: float = 0.1) -> AttackResult:
    built = create_attack(spec, defaults={"epsilon": epsilon, "seed": 0})
    return AttackResult(spec, built.name, built.white_box, built.settings,
                        torch.tensor(robust, dtype=torch.bool), 1.0)


def test_one_attack_spelled_three_ways_is_one_column():
    spellings = ("pgd-100-ce", "pgd:steps=100,loss=ce", "pgd:loss=ce,steps=100")
    columns = {realistic(spec, [1, 0]).to_record().column for spec in spellings}
    assert columns == {"pgd100_ce"}
    clean = torch.tensor([True, True])
    report = build_report(clean, [realistic(spellings[0], [1, 0]),
                                  realistic(spellings[2], [1, 1])], epsilon=0.1, norm="linf",
                          seed=0)
    with pytest.raises(ValueError, match="share a column .*pgd100_ce"):
        report.to_record()


def test_torch_report_and_record_rebuild_each_other():
    clean = torch.tensor([True, True, False, True])
    results = [realistic("aa-standard", [1, 0, 0, 1]),
               realistic("square:queries=1000", [1, 1, 1, 0]),
               realistic("pgd:eot_samples=4,steps=10", [1, 0, 0, 0])]
    report = build_report(clean, results, epsilon=0.1, norm="linf", seed=2,
                          epsilon_curve=[{"epsilon": 0.2, "accuracy": 0.25, "ci_low": 0.05,
                                          "ci_high": 0.7, "n": 4}],
                          margins={"effective_margin": [0.1, 0.2, 0.3, 0.4]})
    report.eot_samples = 4
    training = TrainingRecord.from_config(TrialConfig(seed=11, epochs=3).to_dict(), "tsum")
    source = Source("run", "/ck", "points")
    made = report.to_record(plan={"eot_samples": 4}, source=source, training=training,
                            dataset="mnist")
    assert made.columns == ("autoattack", "square_queries1000", "pgd10_ce_eot4")
    assert [a.eot for a in made.attacks] == [False, False, True]
    assert made.eot and made.eot_samples == 4 and made.eval_seed == 2
    # the attack's accuracy counts only clean-correct points (the row's metrics do the same)
    assert made.attack("square_queries1000").accuracy.accuracy == 0.5
    assert made.worst_case == tuple(report.worst_case.tolist())
    assert training.seed == 11 and training.epochs == 3 and not training.extra_data
    assert training.lr == TrialConfig().lr and training.data_checksum == "tsum"
    rebuilt = Report.from_record(made)
    assert torch.equal(rebuilt.clean, report.clean) and rebuilt.seed == 2
    assert rebuilt.to_record(plan=made.plan, source=source, training=training,
                             dataset="mnist") == made
    assert Report.to_dict(report) == report.to_record().to_dict()
    # an attack entry as shard files hold it (no clean flags: over all points) reads back
    entry = results[1].to_dict()
    assert entry["column"] == "square_queries1000" and entry["accuracy"] == 0.75
    assert AttackResult.from_dict("square:queries=1000", entry).column == "square_queries1000"


def test_schema_loads_without_torch():
    code = ("import sys, attacks.schema, dashboards.compare; "
            "assert 'torch' not in sys.modules, 'torch loaded'")
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]


def test_evaluate_cli_writes_the_record(tmp_path, trained_mlp, capsys):
    from attacks.evaluate_cli import main as evaluate_cli
    from trainables.checkpoints import save_checkpoint

    config = TrialConfig.from_dict({"dataset": "mnist", "model": "mlp", "epsilon": 0.05,
                                    "seed": 5, "epochs": 2,
                                    "model_params": {"hidden": 256, "layers": 2}})
    folder = save_checkpoint(tmp_path / "ckpt", model=trained_mlp, config=config)
    out = tmp_path / "report.json"
    evaluate_cli([str(folder), "--attacks", "pgd-20", "spsa-light", "--n-examples", "12",
                  "--seed", "3", "--no-checks", "--json", str(out)])
    written = EvaluationRecord.from_dict(json.loads(out.read_text()))
    assert written.columns == ("pgd20_ce", "spsa_lma_at") and written.eval_seed == 3
    assert written.dataset == "mnist" and written.source.checkpoint == str(folder)
    assert len(written.source.data_checksum) == 16 and written.source.source_run is None
    assert (written.training.seed, written.training.epochs) == (5, 2)
    assert written.plan["attacks"] == ["pgd-20", "spsa-light"] and written.plan["seed"] == 3
    assert written.plan["epsilon"] == 0.05 and "device" not in written.plan
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["schema_version"] == 2 and "clean_correct" not in summary
    assert summary["attacks"]["pgd-20"]["column"] == "pgd20_ce"
