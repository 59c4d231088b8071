"""``python -m trainables.train`` end to end on real MNIST, as a user runs it."""

import json
import os
import subprocess
import sys
from pathlib import Path

import torch

from trainables import data
from trainables.checkpoints import load_checkpoint
from trainables.engine import evaluate

ROOT = Path(__file__).resolve().parents[1]
QUICK = ["--set", "train_subset=1000", "--set", "test_subset=200", "--set", "val_subset=200",
         "--set", "model_params={hidden: 128, layers: 2}", "--quiet"]


def run_cli(*args, cwd):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "trainables.train", *args], cwd=cwd,
                          capture_output=True, text=True, env=env)


def test_documented_config_trains_and_reports_json(tmp_path):
    result = run_cli("--config", str(ROOT / "configs/mnist_mlp_pgd_at.yaml"),
                     "--set", f"output_dir={tmp_path}", *QUICK, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    final = json.loads(result.stdout.strip().splitlines()[-1])
    assert {"clean_accuracy", "robust_accuracy", "checkpoint"} <= set(final)
    assert final["robust_attack"] == "pgd-20" and final["test_examples"] == 200
    assert 0 <= final["robust_accuracy"] <= final["clean_accuracy"] <= 1
    assert "epoch 1/1" in result.stderr and "val clean" in result.stderr
    # the checkpoint loads from the registry and scores exactly as reported
    checkpoint = load_checkpoint(final["checkpoint"])
    config = checkpoint.config
    test = data.load_dataset("mnist", "test", subset=config.test_subset)
    scores = evaluate(checkpoint.model, test, epsilon=config.epsilon, steps=config.eval_steps,
                      step_size=config.eval_step_size)
    assert scores["clean_accuracy"] == final["clean_accuracy"]
    assert scores["robust_accuracy"] == final["robust_accuracy"]


def test_resume_continues_a_saved_run(tmp_path):
    first = run_cli("--config", str(ROOT / "configs/mnist_mlp_pgd_at.yaml"),
                    "--set", f"output_dir={tmp_path}", "--run-name", "r", *QUICK, cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    checkpoint = tmp_path / "r" / "checkpoint"
    first_epoch = json.loads(first.stdout.strip().splitlines()[-1])["history"][0]
    resumed = run_cli("--resume", str(checkpoint), "--set", "epochs=2", "--quiet", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    final = json.loads(resumed.stdout.strip().splitlines()[-1])
    assert final["epochs"] == 2 and "epoch 2/2" in resumed.stderr
    assert "epoch 1/2" not in resumed.stderr
    # the resumed run still reports the epoch trained before the restart
    assert [m["epoch"] for m in final["history"]] == [1, 2]
    assert final["history"][0] == first_epoch
    assert len(final["seconds_per_epoch"]) == 2
    assert torch.load(checkpoint / "training_state.pt", weights_only=True)["epoch"] == 2


def test_config_errors_exit_with_a_message(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("dataset: mnist\nepochs: 0\n")
    result = run_cli("--config", str(bad), cwd=tmp_path)
    assert result.returncode == 2
    assert "epochs must be >= 1" in result.stderr
