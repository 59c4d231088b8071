import math

import pytest
import torch

from trainables import data
from trainables.config import TrialConfig
from trainables.defenses import create_defense
from trainables.defenses.base import AttackSettings
from trainables.engine import TrainingRun, evaluate, learning_rate, train_epoch

TINY = dict(dataset="mnist", model="mlp", model_params={"hidden": 64, "layers": 2},
            train_subset=512, val_subset=128, test_subset=128, batch_size=64, lr=0.05,
            attack_steps=2, eval_steps=3, epochs=2)


def test_piecewise_and_cosine_schedules():
    piecewise = TrialConfig.from_dict({"lr": 0.1, "epochs": 100, "lr_milestones": [60, 90]})
    assert [learning_rate(piecewise, e) for e in (0, 59, 60, 89, 90, 99)] == pytest.approx(
        [0.1, 0.1, 0.01, 0.01, 0.001, 0.001])
    cosine = TrialConfig.from_dict({"lr": 0.2, "epochs": 10, "schedule": "cosine"})
    assert learning_rate(cosine, 0) == pytest.approx(0.2)
    assert learning_rate(cosine, 5) == pytest.approx(0.1)
    assert learning_rate(cosine, 9) == pytest.approx(0.1 * (1 + math.cos(math.pi * 0.9)))
    constant = TrialConfig.from_dict({"lr": 0.3, "schedule": "constant", "epochs": 5})
    assert learning_rate(constant, 4) == 0.3


def test_training_improves_clean_and_robust_accuracy():
    run = TrainingRun(TrialConfig.from_dict({**TINY, "defense": "pgd_at", "epochs": 3,
                                             "train_subset": 2000, "val_subset": 500}))
    before = run.evaluate(run.val_set)
    history = [run.run_epoch() for _ in range(3)]
    after = history[-1]
    assert run.finished and after["epoch"] == 3
    assert after["val_clean_accuracy"] > before["clean_accuracy"] + 0.3
    assert after["val_robust_accuracy"] > before["robust_accuracy"]
    assert after["val_robust_accuracy"] <= after["val_clean_accuracy"]
    assert history[-1]["train_loss"] < history[0]["train_loss"]
    assert {"train_seconds", "images_per_second", "lr", "val_n"} <= set(after)


def test_effective_margin_is_reported_every_few_epochs():
    run = TrainingRun(TrialConfig.from_dict({**TINY, "defense": "standard", "epochs": 3,
                                             "margin_every": 2, "margin_subset": 64}))
    reports = [run.run_epoch() for _ in range(3)]
    assert "val_effective_margin_mean" not in reports[0]
    assert reports[1]["val_effective_margin_mean"] > 0  # correctly classified points only
    assert reports[1]["val_effective_margin_count"] <= 64
    assert "val_effective_margin_std" in reports[2]  # the last epoch always reports


def test_resume_continues_exactly(tmp_path):
    config = TrialConfig.from_dict({**TINY, "defense": "trades"})
    straight = TrainingRun(config)
    straight.run_epoch()
    straight.run_epoch()

    first = TrainingRun(config)
    first.run_epoch()
    torch.save(first.state_dict(), tmp_path / "state.pt")
    torch.manual_seed(123)  # whatever happened in between must not matter
    resumed = TrainingRun(config)
    resumed.load_state_dict(torch.load(tmp_path / "state.pt", weights_only=True))
    assert resumed.epoch == 1
    resumed.run_epoch()
    for (name, a), b in zip(straight.model.state_dict().items(),
                            resumed.model.state_dict().values(), strict=True):
        assert torch.equal(a, b), name


def test_evaluate_reports_clean_and_pgd_accuracy(trained_mlp):
    val = data.load_dataset("mnist", "val", subset=256)
    result = evaluate(trained_mlp, val, epsilon=0.1, steps=10, step_size=0.01)
    x, y = val.tensors()
    with torch.no_grad():
        clean = (trained_mlp(x).argmax(1) == y).float().mean().item()
    assert result["clean_accuracy"] == pytest.approx(clean)
    assert result["robust_accuracy"] < result["clean_accuracy"] and result["n"] == 256
    again = evaluate(trained_mlp, val, epsilon=0.1, steps=10, step_size=0.01)
    assert again["robust_accuracy"] == result["robust_accuracy"]


def test_a_diverging_loss_stops_training():
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(784, 10))
    with torch.no_grad():
        model[1].weight.fill_(float("nan"))
    defense = create_defense("standard", attack=AttackSettings(0.1, 1, 0.1))
    batches = [(torch.rand(4, 1, 28, 28), torch.zeros(4, dtype=torch.long), torch.arange(4))]
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(FloatingPointError, match="nan"):
        train_epoch(model, defense, batches, optimizer)


def test_train_epoch_runs_each_batch_replays_times_and_threads_the_state():
    calls = []

    class Counting(type(create_defense("standard", attack=AttackSettings(0.1, 1, 0.1)))):
        replays = 3

        def step(self, model, x, y, x_adv, state=None, *, ids=None):
            loss, metrics, _ = super().step(model, x, y, x_adv, state, ids=ids)
            calls.append(state)
            return loss, metrics, state + 1

    defense = Counting(params=None, attack=AttackSettings(0.1, 1, 0.1))
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(784, 10))
    batches = [(torch.rand(4, 1, 28, 28), torch.zeros(4, dtype=torch.long), torch.arange(4))] * 2
    metrics, state = train_epoch(model, defense, batches, torch.optim.SGD(model.parameters(), 0.1),
                                 state=0)
    assert calls == [0, 1, 2, 3, 4, 5] and state == 6
    assert 0 <= metrics["train_accuracy"] <= 1
