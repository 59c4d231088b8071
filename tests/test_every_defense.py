"""Every registered defense trains one epoch through the CLI and its state survives a checkpoint."""

import json

import pytest
import torch

from trainables import train
from trainables.checkpoints import load_training_state, load_weights
from trainables.config import TrialConfig
from trainables.defenses import list_defenses
from trainables.engine import TrainingRun

CNN_DEFENSES = {"he", "m_he"}  # cosine heads are exercised on TRADES' MNIST CNN


def tensors_equal(a, b) -> bool:
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and torch.equal(a, b)
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(tensors_equal(a[k], b[k]) for k in a)
    if isinstance(a, list | tuple):
        return len(a) == len(b) and all(tensors_equal(x, y) for x, y in zip(a, b, strict=True))
    return a == b


@pytest.mark.parametrize("name", list_defenses())
def test_defense_trains_an_epoch_and_resumes(name, tmp_path, capsys):
    model = ["--set", "model=small_cnn"] if name in CNN_DEFENSES else [
        "--set", "model_params={hidden: 64, layers: 2}"]
    config = tmp_path / "cfg.yaml"
    config.write_text(f"dataset: mnist\nmodel: mlp\ndefense: {name}\nepochs: 1\n"
                      "batch_size: 64\nlr: 0.02\nattack_steps: 2\neval_steps: 2\n"
                      f"train_subset: 256\nval_subset: 64\ntest_subset: 64\n"
                      f"output_dir: {tmp_path}\n")
    code = train.main(["--config", str(config), "--run-name", "run", "--quiet", *model])
    assert code == 0
    final = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert 0 <= final["robust_accuracy"] <= final["clean_accuracy"] <= 1
    checkpoint = tmp_path / "run" / "checkpoint"
    saved = load_training_state(checkpoint)
    assert saved["epoch"] == 1
    resumed = TrainingRun(TrialConfig.from_dict(json.loads((checkpoint / "config.json")
                                                           .read_text())))
    resumed.load_state_dict({**saved, "model": load_weights(checkpoint)})
    state = resumed.defense_state
    if saved["defense_state"] is None:
        assert state is None or not hasattr(state, "state_dict")
    else:
        assert tensors_equal(state.state_dict(), saved["defense_state"])
