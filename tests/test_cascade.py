"""The cascade evaluation: order, the full evaluation's worst case on a real adversarially
trained model, the cascade counts, the mode on the record and the row, units of the pool."""

import json

import pytest
import torch

from attacks.cascade import cascade_order, run_cascade
from attacks.evaluate import build_attack, clean_flags, evaluate_model
from attacks.pool_config import DEFAULT_ATTACKS, PoolConfig
from attacks.rows import row_metrics, row_params, row_tags
from attacks.schema import EvaluationRecord
from attacks.shards import CASCADE, CHECKS, INDICATORS, Plan, Progress, run_unit
from attacks.spsa import spsa

EPSILON = 0.1  # adversarial_mlp's training radius
# AutoAttack, PGD-100 CE, PGD with the CW loss, Square and SPSA, at small sizes
ATTACKS = ["autoattack:square_queries=100", "pgd-100-ce", "pgd:steps=20,loss=cw",
           "square:queries=100", "spsa:steps=8,samples=32"]


def built(specs, epsilon=EPSILON):
    return [build_attack(spec, epsilon=epsilon, norm="linf", seed=0) for spec in specs]


@pytest.fixture(scope="module")
def points(mnist_test_slice):
    x, y = mnist_test_slice
    return x[:40], y[:40]


@pytest.fixture(scope="module")
def both(adversarial_mlp, points):
    """The full and the cascade evaluation of the same points with the same seed; batches of
    16 so that the cascade's batches differ from the full evaluation's."""
    x, y = points
    return {mode: evaluate_model(adversarial_mlp, x, y, attacks=ATTACKS, epsilon=EPSILON,
                                 seed=0, batch_size=16, indicators=None, mode=mode)
            for mode in ("full", "cascade")}


def test_attacks_run_from_cheapest_to_dearest_autoattack_last():
    order = [label for label, _ in cascade_order(built(DEFAULT_ATTACKS))]
    assert order == ["pgd-100-ce", "pgd-100-cw", "spsa-light", "square:queries=5000",
                     "aa-standard"]
    assert [label for label, _ in cascade_order(built(["pgd-100-cw", "pgd-100-ce"]))] == \
        ["pgd-100-cw", "pgd-100-ce"]  # ties keep the given order
    costs = [attack.cost for _, attack in cascade_order(built(ATTACKS))]
    assert costs == sorted(costs) and costs[-1] == built(ATTACKS[:1])[0][1].cost


def test_worst_case_and_flags_are_the_full_evaluations(both):
    full, cascade = both["full"], both["cascade"]
    assert full.mode == "full" and cascade.mode == "cascade"
    assert torch.equal(cascade.clean, full.clean)
    assert torch.equal(cascade.worst_case, full.worst_case)
    assert 0 < cascade.worst_case.sum() < cascade.clean.sum()  # a case with something to skip
    assert cascade.flags == full.flags
    spsa_label = ATTACKS[-1]
    skipped = cascade.attacks[spsa_label]
    assert skipped.attacked < int(cascade.clean.sum())  # SPSA skipped what PGD broke
    for label, result in cascade.attacks.items():
        own = full.attacks[label].robust
        if result.attacked == int(cascade.clean.sum()):  # ran on every point: its own flags
            assert torch.equal(result.robust, own), label
    # where SPSA ran, it decided as in the full evaluation; elsewhere a white-box attack had won
    white = torch.stack([r.robust for r in full.attacks.values() if r.white_box]).all(0)
    ran = cascade.clean & white
    assert int(ran.sum()) == skipped.attacked
    assert torch.equal(skipped.robust[ran], full.attacks[spsa_label].robust[ran])
    assert not skipped.robust[~ran].any()
    # the kept adversarial points break exactly the examples outside the worst case
    kept = cascade.adversarial
    assert sorted(kept.index.tolist()) == (cascade.clean & ~cascade.worst_case).nonzero()\
        .flatten().tolist()


def test_cascade_counts_in_the_record_and_the_row(both):
    cascade = both["cascade"]
    clean = int(cascade.clean.sum())
    order = [label for label, _ in cascade_order(built(ATTACKS))]
    assert list(cascade.attacks) == order  # recorded in the order they ran
    for result in cascade.attacks.values():
        assert 0 <= result.broken <= result.attacked <= clean
        assert result.broken == result.attacked - int((result.robust & cascade.clean).sum())
    record = cascade.to_record()
    assert EvaluationRecord.from_dict(json.loads(json.dumps(record.to_dict()))) == record
    assert record.mode == "cascade" and record.to_dict()["mode"] == "cascade"
    spsa_record = record.attack(ATTACKS[-1])
    assert not record.complete(spsa_record)
    assert record.to_dict()["attacks"][ATTACKS[-1]]["attacked"] == spsa_record.attacked
    with pytest.raises(ValueError, match="cascade on .* clean-correct points"):
        record.robust(spsa_record.column)
    metrics = row_metrics(record)
    assert f"{spsa_record.column}_accuracy" not in metrics
    assert f"{spsa_record.column}_ci_low" not in metrics
    assert metrics[f"{spsa_record.column}_attacked"] == spsa_record.attacked
    for attack in record.attacks:
        assert metrics[f"{attack.column}_broken"] == attack.broken
        if record.complete(attack):
            assert metrics[f"{attack.column}_accuracy"] == attack.accuracy.accuracy
    autoattack = record.attack(ATTACKS[0])  # ran on every point: its own column, as in full
    assert metrics[f"{autoattack.column}_accuracy"] == \
        both["full"].to_record().attack(ATTACKS[0]).accuracy.accuracy
    assert metrics["worst_case_accuracy"] == both["full"].to_record().worst_case_accuracy.accuracy
    plan = Plan(attacks=tuple(ATTACKS), epsilon=EPSILON, norm="linf", seed=0, n_examples=40,
                shard_size=40, mode="cascade")
    assert row_params({}, plan)["eval_mode"] == "cascade"
    tags = row_tags(record, source_experiment="0", source_tags={}, seconds=1.0, plan=plan)
    assert tags["eval_mode"] == "cascade"
    full = both["full"].to_record()
    assert full.mode == "full" and "attacked" not in full.to_dict()["attacks"][ATTACKS[-1]]
    assert f"{full.attack(ATTACKS[-1]).column}_accuracy" in row_metrics(full)


def test_unknown_modes_are_refused(trained_mlp, points):
    x, y = points
    with pytest.raises(ValueError, match="unknown evaluation mode 'quick'; known: full, casc"):
        evaluate_model(trained_mlp, x, y, attacks=["fgsm"], epsilon=0.1, mode="quick")
    with pytest.raises(ValueError, match="unknown evaluation mode"):
        Plan(attacks=("fgsm",), epsilon=0.1, norm="linf", seed=0, n_examples=4, shard_size=4,
             mode="quick")
    with pytest.raises(ValueError, match="--mode must be cascade or full"):
        PoolConfig(mode="quick")
    from attacks.evaluate_cli import parse_args

    with pytest.raises(SystemExit):
        parse_args(["some/checkpoint", "--mode", "quick"])
    assert PoolConfig().mode == "cascade"  # ranking runs the cascade unless told otherwise


def test_spsa_per_point_is_the_same_in_any_batch(adversarial_mlp, points):
    x, y = points
    settings = {"epsilon": EPSILON, "steps": 4, "samples": 16, "random_start": True,
                "max_batch": 24, "seed": 3, "per_point": True}
    whole = spsa(adversarial_mlp, x, y, **settings)
    for keep in (torch.arange(0, 40, 3), torch.tensor([7]), torch.arange(20, 40)):
        assert torch.equal(spsa(adversarial_mlp, x[keep], y[keep], **settings), whole[keep])
    with pytest.raises(ValueError, match="no generator"):
        spsa(adversarial_mlp, x, y, generator=torch.Generator(), **settings)


def test_a_random_forward_pass_skips_nothing(trained_mlp, points):
    x, y = points
    clean = clean_flags(trained_mlp, x, y)
    results, _ = run_cascade(trained_mlp, x, y, built(["pgd:steps=5", "spsa:steps=2,samples=8"]),
                             clean=clean, epsilon=EPSILON, norm="linf", eot_samples=4)
    assert [r.attacked for r in results] == [int(clean.sum())] * 2


def test_pool_units_run_the_cascade_per_shard_and_resume(tmp_path, adversarial_mlp, points):
    x, y = points
    specs = ("pgd:steps=10", "square:queries=50", "spsa:steps=4,samples=16")
    settings = dict(attacks=specs, epsilon=EPSILON, norm="linf", seed=0, n_examples=40,
                    shard_size=16)
    full, cascade = Plan(**settings), Plan(**settings, mode="cascade")
    assert "mode" not in full.to_dict() and full.key != cascade.key  # full keys as before
    assert Plan.from_dict(json.loads(json.dumps(cascade.to_dict()))) == cascade
    units = cascade.units()
    assert [u.attack for u in units] == [CHECKS, INDICATORS] + [CASCADE] * 3
    progress = Progress(tmp_path, "run", cascade)
    progress.save(units[2], run_unit(adversarial_mlp, x, y, units[2], cascade))
    resumed = Progress(tmp_path, "run", cascade)  # e.g. after a crash
    assert resumed.pending() == [units[0], units[1], units[3], units[4]]
    for unit in resumed.pending():
        resumed.save(unit, run_unit(adversarial_mlp, x, y, unit, cascade))
    report = resumed.merge()
    assert report.mode == "cascade"
    expected = [evaluate_model(adversarial_mlp, x[a:b], y[a:b], attacks=list(specs),
                               epsilon=EPSILON, checks=False, indicators=None, mode=mode)
                for a, b in cascade.shards() for mode in ("full", "cascade")]
    worst = torch.cat([r.worst_case for r in expected[::2]])
    assert torch.equal(report.worst_case, worst)  # the full evaluation's, shard by shard
    for label, result in report.attacks.items():
        parts = [r.attacks[label] for r in expected[1::2]]
        assert torch.equal(result.robust, torch.cat([p.robust for p in parts]))
        assert result.attacked == sum(p.attacked for p in parts)
        assert result.broken == sum(p.broken for p in parts)
    assert len(report.adversarial.index) == int((report.clean & ~report.worst_case).sum())
