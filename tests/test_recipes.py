"""Training recipes: weight averaging, schedules, optimisers, clipping, mixed precision,
augmentation, label smoothing, BatchNorm mode of the training attack, early stopping."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch import nn

from attacks.pgd import model_mode, training_attack_mode
from trainables import data
from trainables.averaging import WeightAverage, recompute_batchnorm
from trainables.checkpoints import WEIGHTS, load_checkpoint, resume, save_checkpoint
from trainables.config import ConfigError, TrialConfig
from trainables.defenses import AttackSettings, create_defense, preset
from trainables.engine import EarlyStopping, StepOptions, TrainingRun, train_epoch
from trainables.schedules import learning_rate

TINY = dict(dataset="mnist", model="mlp", model_params={"hidden": 32, "layers": 2},
            train_subset=256, val_subset=64, test_subset=64, batch_size=64, lr=0.05,
            attack_steps=2, eval_steps=2, epochs=2, defense="pgd_at", num_threads=1,
            device="cpu")


def weights(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# ------------------------------------------------------------------ weight averaging
def test_ema_follows_its_formula_and_leaves_training_alone(tmp_path):
    """Every step θ' ← d_n θ' + (1 − d_n) θ with d_n = min(d, (1 + n)/(10 + n)); the trained
    weights are bit for bit those of the same run without EMA; the average is what is
    validated, checkpointed and published, and differs from the trained weights."""
    plain = TrainingRun(TrialConfig.from_dict(TINY))  # runs draw from torch's global stream:
    for _ in range(2):  # one run after the other
        plain.run_epoch()
    averaged = TrainingRun(TrialConfig.from_dict({**TINY, "ema_decay": 0.9}))
    expected = weights(averaged.model)
    updates = 0

    def fold(n: int, batch_metrics: dict) -> None:  # after each batch's step, in step order
        nonlocal updates
        decay = min(0.9, (1 + updates) / (10 + updates))
        for key, value in averaged.model.state_dict().items():
            expected[key] = decay * expected[key] + (1 - decay) * value
        updates += 1

    for _ in range(2):
        metrics = averaged.run_epoch(fold)
    assert same(weights(plain.model), weights(averaged.model))
    assert averaged.average.updates == updates == metrics["averaged_updates"] == 8
    average = weights(averaged.average.module)
    for key in expected:
        torch.testing.assert_close(average[key], expected[key], rtol=1e-5, atol=1e-6)
    assert not same(average, weights(averaged.model))
    assert averaged.published_model is averaged.average.module
    path = save_checkpoint(tmp_path / "ckpt", model=averaged.published_model,
                           config=averaged.config, training_state=averaged.state_dict())
    assert same(load_file(str(path / WEIGHTS)), average)
    loaded = load_checkpoint(path)
    assert same(weights(loaded.model), average)


def test_the_published_checkpoint_of_a_run_is_the_average(tmp_path):
    from trainables.train import train

    run = TrainingRun(TrialConfig.from_dict({**TINY, "ema_decay": 0.99, "epochs": 1}))
    final = train(run, tmp_path / "checkpoint", quiet=True)
    published = load_file(str(tmp_path / "checkpoint" / WEIGHTS))
    assert same(published, weights(run.average.module))
    assert not same(published, weights(run.model))
    # the test accuracy reported is the average's
    model = load_checkpoint(tmp_path / "checkpoint").model
    x, y = data.load_dataset("mnist", "test", subset=64).tensors()
    with torch.no_grad():
        clean = (model(x).argmax(1) == y).float().mean().item()
    assert final["clean_accuracy"] == pytest.approx(clean)


def test_a_run_with_ema_resumes_exactly(tmp_path):
    config = TrialConfig.from_dict({**TINY, "ema_decay": 0.95})
    straight = TrainingRun(config)
    straight.run_epoch()
    straight.run_epoch()
    first = TrainingRun(config)
    first.run_epoch()
    save_checkpoint(tmp_path / "c", model=first.published_model, config=first.config,
                    training_state=first.state_dict())
    second = TrainingRun(config)
    resume(second, tmp_path / "c")
    second.run_epoch()
    assert same(weights(second.model), weights(straight.model))
    assert same(weights(second.average.module), weights(straight.average.module))
    assert second.average.updates == straight.average.updates


def test_swa_is_the_equal_average_of_the_epochs_after_its_start():
    run = TrainingRun(TrialConfig.from_dict({**TINY, "epochs": 4, "swa_start": 1}))
    snapshots = []
    for _ in range(4):
        run.run_epoch()
        if run.epoch > 1:
            snapshots.append(weights(run.model))
    assert run.average.updates == 3
    average = weights(run.average.module)
    for key in average:
        torch.testing.assert_close(average[key], sum(s[key] for s in snapshots) / 3)


def test_swa_batchnorm_statistics_are_recomputed_on_the_training_data():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3))
    average = WeightAverage(model, kind="swa")
    with torch.no_grad():
        model[0].weight.mul_(3.0)
    average.update(model)
    assert average.stale_batchnorm
    x = torch.randn(256, 4) + 2.0
    recompute_batchnorm(average.module, [(x[:128],), (x[128:],)], torch.device("cpu"))
    halves = average.module[0](x).detach().split(128)
    # the cumulative average of the two batches' statistics (unbiased variances, as BatchNorm)
    torch.testing.assert_close(average.module[1].running_mean,
                               (halves[0].mean(0) + halves[1].mean(0)) / 2)
    torch.testing.assert_close(average.module[1].running_var,
                               (halves[0].var(0) + halves[1].var(0)) / 2)
    assert average.module[1].momentum == model[1].momentum


# ------------------------------------------------------------------ schedules
def test_cyclic_schedule_is_fast_ats_triangle_per_iteration():
    """Wong et al. 2020: linear from 0 to the peak lr at half the run and back to 0, stepped per
    iteration as CyclicLR(base 0, max lr, step_size_up = step_size_down = iterations / 2)."""
    config = TrialConfig.from_dict({**TINY, "schedule": "cyclic", "lr": 0.2, "epochs": 3,
                                    "train_subset": 320})  # 5 iterations an epoch
    run = TrainingRun(config)
    seen = []
    original = run.optimizer.step

    def record(*args, **kwargs):
        seen.append(run.optimizer.param_groups[0]["lr"])
        return original(*args, **kwargs)

    run.optimizer.step = record
    while not run.finished:
        run.run_epoch()
    total = 15
    reference = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.2)
    cyclic = torch.optim.lr_scheduler.CyclicLR(reference, base_lr=0.0, max_lr=0.2,
                                               step_size_up=total / 2,
                                               step_size_down=total / 2, cycle_momentum=False)
    expected = []
    for _ in range(total):
        expected.append(reference.param_groups[0]["lr"])
        reference.step()
        cyclic.step()
    assert seen == pytest.approx(expected, abs=1e-12)
    assert seen == pytest.approx(np.interp(np.arange(total), [0, 7.5, 15], [0, 0.2, 0]))


def test_fast_at_presets_use_the_cyclic_schedule():
    for name in ("wong_cifar10", "he_cifar10"):
        assert preset("fast_at", name)["schedule"] == "cyclic"
    assert preset("he", "fast_at_he_cifar10")["schedule"] == "cyclic"


def test_linear_warmup_scales_any_schedule():
    config = TrialConfig.from_dict({**TINY, "schedule": "constant", "lr": 0.1,
                                    "warmup_epochs": 1.0, "epochs": 3})
    assert [learning_rate(config, t, 4) for t in (0, 0.25, 0.5, 0.75, 1, 2)] == pytest.approx(
        [0.025, 0.05, 0.075, 0.1, 0.1, 0.1])
    plain = TrialConfig.from_dict({**TINY, "lr_milestones": [1], "epochs": 3})
    assert [learning_rate(plain, t, 4) for t in (0, 0.75, 1, 2.5)] == pytest.approx(
        [0.05, 0.05, 0.005, 0.005])


# ------------------------------------------------------------------ optimisers, clipping
def test_adamw_is_built_with_decoupled_weight_decay():
    run = TrainingRun(TrialConfig.from_dict({**TINY, "optimizer": "adamw", "lr": 1e-3,
                                             "weight_decay": 0.05, "adam_beta2": 0.99}))
    assert isinstance(run.optimizer, torch.optim.AdamW)
    group = run.optimizer.param_groups[0]
    assert group["weight_decay"] == 0.05 and group["betas"] == (0.9, 0.99)
    before = weights(run.model)
    assert math.isfinite(run.run_epoch()["train_loss"])
    assert not same(before, weights(run.model))
    with pytest.raises(ConfigError, match="nesterov needs optimizer sgd"):
        TrialConfig.from_dict({**TINY, "optimizer": "adamw", "nesterov": True})


def test_gradient_clipping_bounds_the_step():
    torch.manual_seed(0)
    model = nn.Linear(10, 3)
    defense = create_defense("standard", attack=AttackSettings(0.1, 1, 0.1))
    x, y = torch.randn(32, 10) * 100, torch.randint(0, 3, (32,))
    before = torch.cat([p.detach().flatten() for p in model.parameters()])
    optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
    train_epoch(model, defense, [(x, y, torch.arange(32))], optimizer,
                options=StepOptions(grad_clip=0.5))
    after = torch.cat([p.detach().flatten() for p in model.parameters()])
    assert (after - before).norm().item() == pytest.approx(0.5, rel=1e-4)


def test_a_gradient_scaler_scales_and_skips_non_finite_steps():
    torch.manual_seed(0)
    defense = create_defense("standard", attack=AttackSettings(0.1, 1, 0.1))
    x, y = torch.randn(16, 10), torch.randint(0, 3, (16,))
    plain, scaled = nn.Linear(10, 3), nn.Linear(10, 3)
    scaled.load_state_dict(plain.state_dict())
    batches = [(x, y, torch.arange(16))]
    train_epoch(plain, defense, batches, torch.optim.SGD(plain.parameters(), lr=0.1))
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 10)
    train_epoch(scaled, defense, batches, torch.optim.SGD(scaled.parameters(), lr=0.1),
                options=StepOptions(scaler=scaler, grad_clip=100.0))
    for a, b in zip(plain.parameters(), scaled.parameters(), strict=True):
        torch.testing.assert_close(a, b)
    # a gradient that overflows once scaled: the step is skipped and the scale halves
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 100, growth_interval=1000)
    before = weights(scaled)
    train_epoch(scaled, defense, [(x * 1e20, y, torch.arange(16))],
                torch.optim.SGD(scaled.parameters(), lr=0.1), options=StepOptions(scaler=scaler))
    assert same(before, weights(scaled))
    assert scaler.get_scale() == 2.0 ** 99


def test_channels_last_trains_the_same_model():
    config = {**TINY, "model": "cnn4", "model_params": {}, "epochs": 1, "train_subset": 128}
    plain = TrainingRun(TrialConfig.from_dict(config)).run_epoch()
    nhwc_run = TrainingRun(TrialConfig.from_dict({**config, "channels_last": True}))
    nhwc = nhwc_run.run_epoch()
    assert nhwc["train_loss"] == pytest.approx(plain["train_loss"], rel=1e-4)
    weight = next(p for p in nhwc_run.model.parameters() if p.dim() == 4)
    assert weight.is_contiguous(memory_format=torch.channels_last)


def test_mixed_precision_options_are_validated():
    with pytest.raises(ConfigError, match="bf16 and fp16 exclude each other"):
        TrialConfig.from_dict({**TINY, "bf16": True, "fp16": True})
    run = TrainingRun(TrialConfig.from_dict({**TINY, "fp16": True}))
    assert run.scaler is None  # float16 autocast and its scaler run on CUDA only


# ------------------------------------------------------------------ data and losses
def test_augmentations_by_name():
    dataset = data.load_dataset("mnist", "train", subset=64, augment="crop")
    assert dataset.augmentation == "crop"
    x = dataset.images[:64].float().div(255)
    (shifted, *_), = data.iterate_batches(dataset, 64, generator=torch.Generator().manual_seed(1))
    assert not torch.equal(shifted, x)
    # a shift of at most two pixels, never a mirror: every image is a translate of its source
    for image, source in zip(shifted, x, strict=True):
        padded = F.pad(source, (2, 2, 2, 2))
        assert any(torch.equal(image, padded[:, r:r + 28, c:c + 28])
                   for r in range(5) for c in range(5))
    assert TrainingRun(TrialConfig.from_dict(TINY)).train_set.augmentation == "none"
    run = TrainingRun(TrialConfig.from_dict({**TINY, "augmentation": "crop"}))
    assert run.train_set.augmentation == "crop"
    assert run.val_set.augmentation == "none"
    with pytest.raises(ConfigError, match="augmentation must be one of"):
        TrialConfig.from_dict({**TINY, "augmentation": "mixup"})


def test_amr_presets_train_without_augmentation():
    for name in ("amr_mnist_mlp", "amr_cifar10_cnn"):
        assert preset("amr", name)["augmentation"] == "none"


def test_label_smoothing_on_pgd_at_follows_its_formula():
    """(1 − s)·CE(f(x'), y) + s·mean_k(−log p_k(x')) on a linear model."""
    torch.manual_seed(0)
    model = nn.Linear(6, 4)
    x, y = torch.rand(8, 6), torch.randint(0, 4, (8,))
    attack = AttackSettings(epsilon=0.1, steps=1, step_size=0.1)
    defense = create_defense("pgd_at", attack=attack, label_smoothing=0.2)
    x_adv = (x + 0.05).clamp(0, 1)
    loss, _ = defense.loss(model, x, y, x_adv)
    logp = torch.log_softmax(x_adv @ model.weight.T + model.bias, dim=1)
    expected = (0.8 * -logp.gather(1, y[:, None]).squeeze(1) + 0.2 * -logp.mean(1)).mean()
    torch.testing.assert_close(loss, expected)
    composed = TrialConfig.from_dict({**TINY, "defense": "he", "label_smoothing": 0.1})
    assert composed.build_defense().base.label_smoothing == 0.1
    with pytest.raises(ConfigError, match="label_smoothing applies to"):
        TrialConfig.from_dict({**TINY, "defense": "mart", "label_smoothing": 0.1})


def test_the_training_attack_runs_batchnorm_in_the_mode_asked():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(784, 16), nn.BatchNorm1d(16), nn.ReLU(),
                          nn.Linear(16, 10))
    defense = create_defense("pgd_at", attack=AttackSettings(0.1, 2, 0.05))
    x, y = torch.rand(32, 1, 28, 28), torch.randint(0, 10, (32,))
    before = model[2].running_mean.clone()
    with training_attack_mode("eval"):
        defense.perturb(model, x, y)
    assert torch.equal(model[2].running_mean, before)
    with training_attack_mode("train"):
        defense.perturb(model, x, y)
    assert not torch.equal(model[2].running_mean, before)
    assert model.training  # the mode is restored
    with model_mode(model, "eval"):  # outside the block, eval is eval
        assert not model.training
    with pytest.raises(ConfigError, match="attack_bn_mode must be one of"):
        TrialConfig.from_dict({**TINY, "attack_bn_mode": "frozen"})


# ------------------------------------------------------------------ early stopping
def test_early_stopping_counts_epochs_without_improvement():
    stopping = EarlyStopping(patience=2)
    values = [0.5, 0.6, 0.6, 0.55, 0.7]
    stops = [stopping.observe(epoch, v) for epoch, v in enumerate(values, start=1)]
    assert stops == [False, False, False, True, True]
    assert stopping.stopped_at == 4 and stopping.best_epoch == 2 and stopping.best == 0.6
    assert not any(EarlyStopping(patience=0).observe(e, 0.1) for e in range(1, 20))


def test_a_run_stops_when_validation_robust_accuracy_stalls():
    # a learning rate too small to move the weights: the first epoch's value is never beaten
    run = TrainingRun(TrialConfig.from_dict({**TINY, "lr": 1e-12, "epochs": 10,
                                             "patience": 2}))
    history = []
    while not run.finished:
        history.append(run.run_epoch())
    assert [m["epoch"] for m in history] == [1, 2, 3]
    assert history[-1]["stopped_early"] == 1 and "stopped_early" not in history[1]
    assert run.stopping.best_epoch == 1


def test_recipe_fields_are_range_checked():
    for values, message in [
            ({"ema_decay": 1.0}, r"ema_decay must lie in \[0, 1\)"),
            ({"ema_decay": 0.9, "swa_start": 0}, "ema_decay and swa_start exclude"),
            ({"swa_start": 2}, r"swa_start must lie in \[0, epochs - 1 = 1\]"),
            ({"cyclic_peak": 1.0}, r"cyclic_peak must lie in \(0, 1\)"),
            ({"warmup_epochs": 3.0}, r"warmup_epochs must lie in \[0, epochs=2\]"),
            ({"grad_clip": 0.0}, "grad_clip must be > 0"),
            ({"label_smoothing": 1.0}, r"label_smoothing must lie in \[0, 1\)"),
            ({"optimizer": "lion"}, "optimizer must be one of"),
            ({"patience": -1}, "patience must be >= 0")]:
        with pytest.raises(ConfigError, match=message):
            TrialConfig.from_dict({**TINY, **values})
    assert math.isclose(TrialConfig.from_dict({**TINY, "ema_decay": 0.999}).ema_decay, 0.999)


def test_a_compiled_model_trains_like_the_eager_one():
    config = {**TINY, "epochs": 1, "train_subset": 64, "val_subset": 32, "attack_steps": 1,
              "eval_steps": 1}
    eager = TrainingRun(TrialConfig.from_dict(config))
    expected = eager.run_epoch()
    compiled = TrainingRun(TrialConfig.from_dict({**config, "compile": True}))
    assert compiled.forward is not compiled.model  # torch.compile's module, same parameters
    metrics = compiled.run_epoch()
    assert metrics["train_loss"] == pytest.approx(expected["train_loss"], rel=1e-4)
    for a, b in zip(eager.model.parameters(), compiled.model.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_a_sweep_searches_training_options_beside_the_knobs():
    import optuna

    from sweeps.spec import SweepSpec
    from trainables.defenses import defense_class
    from trainables.recipe_space import with_recipe

    spec = SweepSpec(name="s", base=dict(TINY), search_recipe=("ema_decay", "label_smoothing"))
    spec.check()  # every corner of the combined space is a valid config
    space = with_recipe(defense_class("pgd_at").search_space, spec.search_recipe)
    trial = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0)).ask()
    overrides = space(trial)
    assert set(overrides) == {"weight_decay", "defense_params", "ema_decay", "label_smoothing"}
    assert overrides["ema_decay"] in (0.0, 0.99, 0.995, 0.999)
    assert 0.0 <= overrides["label_smoothing"] <= 0.2
    TrialConfig.from_dict({**TINY, **overrides})
    with pytest.raises(ConfigError, match="cannot be searched"):
        SweepSpec(name="s", base=dict(TINY), search_recipe=("momentum",))
    # a defense whose losses compute their own cross-entropy cannot search label smoothing
    with pytest.raises(ConfigError, match="label_smoothing applies to"):
        SweepSpec(name="s", base={**TINY, "defense": "mart"},
                  search_recipe=("label_smoothing",)).check()


def test_validation_by_the_best_iterate_on_the_cw_margin():
    """The sweeps' validation signal: a point counts as broken if any PGD iterate (from a seeded
    random start) is misclassified, so it never rates a model above the last iterate does."""
    from trainables.engine import evaluate

    run = TrainingRun(TrialConfig.from_dict({**TINY, "epochs": 1}))
    run.run_epoch()
    settings = dict(epsilon=0.1, steps=5, step_size=0.025, random_start="uniform")
    last = evaluate(run.model, run.val_set, loss="cw", keep="last",
                    generator=torch.Generator().manual_seed(3), **settings)
    best = evaluate(run.model, run.val_set, loss="cw", keep="best",
                    generator=torch.Generator().manual_seed(3), **settings)
    assert best["robust_accuracy"] <= last["robust_accuracy"]
    assert best["clean_accuracy"] == last["clean_accuracy"]
    configured = TrainingRun(TrialConfig.from_dict({**TINY, "eval_loss": "cw",
                                                    "eval_keep": "best"}))
    first = configured.evaluate(configured.val_set)["robust_accuracy"]
    assert configured.evaluate(configured.val_set)["robust_accuracy"] == first  # seeded
    with pytest.raises(ConfigError, match="eval_keep must be one of"):
        TrialConfig.from_dict({**TINY, "eval_keep": "mean"})
