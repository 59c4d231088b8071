import os

import pytest
import torch

from trainables.checkpoints import (
    CheckpointError,
    load_checkpoint,
    load_training_state,
    safe_torch_load,
    save_checkpoint,
)
from trainables.config import TrialConfig
from trainables.engine import build_model

CONFIG = TrialConfig.from_dict({"dataset": "mnist", "model": "small_cnn", "defense": "trades",
                                "defense_params": {"beta": 3.0}, "seed": 4})


class RunsCode:
    def __reduce__(self):
        return (os.system, ("touch pwned-by-checkpoint",))


def test_round_trip_rebuilds_the_model_from_the_registry(tmp_path):
    torch.manual_seed(0)
    model = build_model(CONFIG).eval()
    state = {"epoch": 3, "optimizer": {"state": {}, "param_groups": []}, "defense_state": None}
    path = save_checkpoint(tmp_path / "ckpt", model=model, config=CONFIG,
                           metrics={"robust_accuracy": 0.5}, training_state=state)
    loaded = load_checkpoint(path)
    assert loaded.config == CONFIG.resolved()
    assert loaded.metrics == {"robust_accuracy": 0.5}
    assert not loaded.model.training
    x = torch.rand(5, 1, 28, 28)
    with torch.no_grad():
        assert torch.equal(model(x), loaded.model(x))
    assert load_training_state(path)["epoch"] == 3
    # saving again replaces the directory atomically, leaving no temporary siblings
    save_checkpoint(path, model=model, config=CONFIG, metrics={"robust_accuracy": 0.6})
    assert load_checkpoint(path).metrics["robust_accuracy"] == 0.6
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]


def test_a_code_running_pickle_is_refused(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = save_checkpoint(tmp_path / "ckpt", model=build_model(CONFIG), config=CONFIG)
    (path / "model.safetensors").unlink()
    torch.save({"weights": RunsCode()}, path / "model.pt")
    with pytest.raises(CheckpointError, match="would run code"):
        load_checkpoint(path)
    torch.save({"epoch": RunsCode()}, path / "training_state.pt")
    with pytest.raises(CheckpointError, match="would run code"):
        load_training_state(path)
    assert not (tmp_path / "pwned-by-checkpoint").exists()


def test_plain_state_dicts_load_with_weights_only(tmp_path):
    model = build_model(CONFIG)
    path = save_checkpoint(tmp_path / "ckpt", model=model, config=CONFIG)
    (path / "model.safetensors").unlink()
    torch.save(model.state_dict(), path / "model.pt")
    loaded = load_checkpoint(path)
    assert torch.equal(loaded.model.head.weight, model.head.weight)


def test_corrupt_or_missing_checkpoints_fail_clearly(tmp_path):
    with pytest.raises(CheckpointError, match="not a checkpoint directory"):
        load_checkpoint(tmp_path)
    path = save_checkpoint(tmp_path / "ckpt", model=build_model(CONFIG), config=CONFIG)
    (path / "model.safetensors").write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match="cannot read"):
        load_checkpoint(path)
    (path / "training_state.pt").write_bytes(b"garbage")
    with pytest.raises(CheckpointError):
        safe_torch_load(path / "training_state.pt")
