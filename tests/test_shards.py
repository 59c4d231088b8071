"""Sharded, resumable evaluation without Ray, and the checkpoint CLI."""

import json

import pytest
import torch

from attacks.evaluate import evaluate_model
from attacks.evaluate_cli import main as evaluate_cli
from attacks.shards import CHECKS, INDICATORS, Plan, Progress, run_unit, slug
from trainables.checkpoints import save_checkpoint
from trainables.config import TrialConfig

ATTACKS = ("pgd:steps=5", "square:queries=50")


def plan(**changes) -> Plan:
    settings = dict(attacks=ATTACKS, epsilon=0.05, norm="linf", seed=0, n_examples=40,
                    shard_size=16)
    return Plan(**{**settings, **changes})


def test_plan_units_cover_every_point_once_per_attack():
    chosen = plan()
    assert chosen.shards() == [(0, 16), (16, 32), (32, 40)]
    units = chosen.units()
    assert [u.attack for u in units[:2]] == [CHECKS, INDICATORS] and len(units) == 2 + 3 * 2
    assert len(plan(indicators=None).units()) == 1 + 3 * 2
    for attack in ATTACKS:
        covered = [i for u in units if u.attack == attack for i in range(u.start, u.stop)]
        assert covered == list(range(40))
    assert len({u.filename for u in units}) == len(units)


def test_plan_key_tracks_every_setting_and_round_trips():
    assert plan().key == plan().key
    for change in ({"seed": 1}, {"epsilon": 0.1}, {"shard_size": 8}, {"batch_size": 64},
                   {"attacks": ATTACKS[:1]}, {"eot_samples": 20}, {"indicators": None}):
        assert plan(**change).key != plan().key
    for chosen in (plan(), plan(indicators=None, eot_samples=5)):
        assert Plan.from_dict(json.loads(json.dumps(chosen.to_dict()))) == chosen
    with pytest.raises(ValueError, match="at least one attack"):
        plan(attacks=())
    with pytest.raises(ValueError, match="repeat"):
        plan(attacks=("pgd", "pgd"))
    with pytest.raises(ValueError, match="positive"):
        plan(n_examples=0)
    assert slug("square:queries=500") == "square_queries_500"


def test_progress_resumes_and_merges_to_the_per_shard_evaluation(tmp_path, trained_mlp,
                                                                 mnist_test_slice):
    x, y = (t[:40] for t in mnist_test_slice)
    chosen = plan()
    progress = Progress(tmp_path, "run-1", chosen)
    units = progress.pending()
    for unit in units[:4]:
        progress.save(unit, run_unit(trained_mlp, x, y, unit, chosen))
    with pytest.raises(RuntimeError, match="not finished"):
        progress.merge()
    resumed = Progress(tmp_path, "run-1", chosen)  # e.g. after a crash
    assert resumed.pending() == units[4:]
    for unit in resumed.pending():
        resumed.save(unit, run_unit(trained_mlp, x, y, unit, chosen))
    report = resumed.merge()
    assert resumed.complete() and resumed.spent_seconds() > 0
    for label in ATTACKS:
        expected = torch.cat([evaluate_model(trained_mlp, x[a:b], y[a:b], attacks=[label],
                                             epsilon=0.05, checks=False).attacks[label].robust
                              for a, b in chosen.shards()])
        assert torch.equal(report.attacks[label].robust, expected)
    assert torch.equal(report.clean, trained_mlp(x).argmax(1) == y)
    assert report.flags == []
    assert Progress(tmp_path, "run-1", plan(seed=1)).pending() == plan(seed=1).units()


def test_evaluate_cli_on_a_checkpoint(tmp_path, trained_mlp, capsys):
    config = TrialConfig.from_dict({"dataset": "mnist", "model": "mlp", "epsilon": 0.05,
                                    "model_params": {"hidden": 256, "layers": 2}})
    folder = save_checkpoint(tmp_path / "ckpt", model=trained_mlp, config=config)
    out = tmp_path / "report.json"
    points = tmp_path / "adversarial.safetensors"
    evaluate_cli([str(folder), "--attacks", "pgd-20", "fgsm", "--n-examples", "30",
                  "--json", str(out), "--points", str(points)])
    report = json.loads(out.read_text())
    assert report["n"] == 30 and report["epsilon"] == 0.05 and report["dataset"] == "mnist"
    transfer = [i for i in report["indicators"] if i["name"] == "transfer"]
    assert transfer and transfer[0]["n"] > 0  # a surrogate was trained for it
    from attacks.targets import load_points
    from attacks.verify import load_points_file, verify_points

    kept, metadata = load_points_file(points)
    assert metadata["data_checksum"] == report["source"]["data_checksum"]
    x, y = load_points("mnist", 30, "cpu")
    found = verify_points(trained_mlp, x, y, kept, epsilon=0.05, norm="linf",
                          reported_robust=round(report["worst_case_accuracy"] * 30))
    assert found.ok
    assert set(report["attacks"]) == {"pgd-20", "fgsm"}
    assert len(report["attacks"]["fgsm"]["robust"]) == 30
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["worst_case_accuracy"] == report["worst_case_accuracy"]
    assert "robust" not in summary["attacks"]["pgd-20"]
    with pytest.raises(SystemExit, match="not a checkpoint directory"):
        evaluate_cli([str(tmp_path), "--n-examples", "5"])


def test_epsilon_curve_and_margin_units_merge(tmp_path, trained_mlp, mnist_test_slice):
    from attacks.margins import effective_margin

    x, y = (t[:40] for t in mnist_test_slice)
    chosen = plan(epsilon_curve=(0.02, 0.1), curve_attack="pgd:steps=5", margins=True)
    assert Plan.from_dict(json.loads(json.dumps(chosen.to_dict()))) == chosen
    assert len(chosen.units()) == 2 + 3 * (2 + 2 + 1)
    progress = Progress(tmp_path, "run-2", chosen)
    for unit in progress.pending():
        progress.save(unit, run_unit(trained_mlp, x, y, unit, chosen))
    report = progress.merge()
    curve = report.to_dict()["epsilon_curve"]
    assert [p["epsilon"] for p in curve] == [0.02, 0.1]
    for point in curve:
        expected = torch.cat([evaluate_model(
            trained_mlp, x[a:b], y[a:b], attacks=["pgd:steps=5"], epsilon=point["epsilon"],
            checks=False).attacks["pgd:steps=5"].robust for a, b in chosen.shards()])
        assert point["accuracy"] == pytest.approx(expected.float().mean().item())
    assert curve[0]["accuracy"] >= curve[1]["accuracy"]
    assert len(report.margins["effective_margin"]) == 40
    assert report.margins["effective_margin"] == pytest.approx(
        effective_margin(trained_mlp, x, y).tolist(), rel=1e-5)
    assert all(0 <= m <= 5.0 for m in report.margins["average_margin"])


def test_two_spellings_of_one_attack_are_refused():
    with pytest.raises(ValueError, match="same attack.*pgd100_ce"):
        plan(attacks=("pgd-100-ce", "pgd:loss=ce,steps=100"))
    from attacks.pool_config import PoolConfig

    with pytest.raises(ValueError, match="same attack"):
        PoolConfig(attacks=("aa-standard", "autoattack"))


def test_unit_costs_rank_the_dearest_work_first():
    """The pool hands out units by their estimated model passes: per point, an attack's declared
    cost, the cascade the sum of its attacks', the probes a constant; times the unit's points."""
    from attacks.evaluate import build_attack
    from attacks.shards import PROBE_PASSES

    chosen = plan(attacks=("pgd:steps=5", "spsa-light"))
    per_point = {spec: build_attack(spec, epsilon=0.05, norm="linf", seed=0)[1].cost
                 for spec in chosen.attacks}
    units = {(u.attack, u.shard): u for u in chosen.units()}
    assert chosen.unit_cost(units["pgd:steps=5", 0]) == 16 * per_point["pgd:steps=5"] == 16 * 16
    assert chosen.unit_cost(units["spsa-light", 2]) == 8 * per_point["spsa-light"]
    assert chosen.unit_cost(units[CHECKS, 0]) == 16 * PROBE_PASSES[CHECKS]
    cascade = plan(attacks=("pgd:steps=5", "spsa-light"), mode="cascade")
    (unit, *_) = [u for u in cascade.units() if u.attack == "cascade"]
    assert cascade.unit_cost(unit) == 16 * sum(per_point.values())
    ranked = sorted(chosen.units(), key=chosen.unit_cost, reverse=True)
    assert ranked[0].attack == "spsa-light" and ranked[-1] == units["pgd:steps=5", 2]


def test_the_transfer_surrogate_is_trained_once_per_node(tmp_path, monkeypatch):
    """The first evaluator to need an architecture's surrogate trains and keeps it; the next
    loads the same weights instead of training again."""
    from attacks import pool

    config = TrialConfig.from_dict({"model_params": {"hidden": 16, "layers": 1}})
    trained = []
    real = pool.train_surrogate

    def counting(*args, **kwargs):
        trained.append(args)
        return real(*args, **{**kwargs, "subset": 200, "epochs": 1})

    monkeypatch.setattr(pool, "train_surrogate", counting)
    first = pool.shared_surrogate(tmp_path, config, 0, "cpu")
    second = pool.shared_surrogate(tmp_path, config, 0, "cpu")
    assert len(trained) == 1 and second is not first and not second.training
    for key, value in first.state_dict().items():
        assert torch.equal(second.state_dict()[key], value)
    pool.shared_surrogate(tmp_path, config, 1, "cpu")  # another seed is another surrogate
    assert len(trained) == 2
