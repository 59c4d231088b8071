import pytest
import yaml

from trainables.config import ConfigError, TrialConfig, apply_overrides

ISSUE_YAML = """
dataset: mnist
model: mlp
defense: pgd_at
defense_params: {}
epsilon: 0.1
attack_steps: 10
attack_step_size: 0.01
epochs: 1
batch_size: 128
lr: 0.01
weight_decay: 0.001
train_subset: 10000
test_subset: 1000
seed: 0
"""


def test_the_documented_yaml_loads(tmp_path):
    path = tmp_path / "cfg.yaml"
    path.write_text(ISSUE_YAML)
    config = TrialConfig.from_yaml(path)
    assert (config.dataset, config.model, config.defense) == ("mnist", "mlp", "pgd_at")
    assert config.epsilon == 0.1 and config.weight_decay == 0.001 and config.train_subset == 10000


def test_round_trip_and_resolution():
    config = TrialConfig.from_dict({"dataset": "mnist", "defense": "trades"})
    assert TrialConfig.from_dict(config.to_dict()) == config
    resolved = config.resolved()
    assert resolved.epsilon == 0.1 and resolved.attack_step_size == 0.01  # MNIST threat model
    assert resolved.defense_params == {"beta": 6.0}
    cifar = TrialConfig.from_dict({"dataset": "cifar10"}).resolved()
    assert cifar.epsilon == pytest.approx(8 / 255)


@pytest.mark.parametrize("values, message", [
    ({"learning_rate": 0.1}, r"unknown config field\(s\) \['learning_rate'\]; allowed: .*'lr'"),
    ({"epochs": "ten"}, r"epochs must be int, got 'ten'"),
    ({"epochs": 0}, r"epochs must be >= 1"),
    ({"lr": -1.0}, r"lr must be > 0"),
    ({"momentum": 1.0}, r"momentum must lie in \[0, 1\)"),
    ({"schedule": "step"},
     r"schedule must be one of \['piecewise', 'cosine', 'constant', 'cyclic'\]"),
    ({"dataset": "imagenet"}, r"dataset must be one of \[.*'mnist'.*\]"),
    ({"model": "vgg"}, r"model must be one of \[.*'resnet18'.*\]"),
    ({"defense": "magic"}, r"defense must be one of \[.*'trades'.*\]"),
    ({"defense": "trades", "defense_params": {"gamma": 1}},
     r"unknown knob\(s\) \['gamma'\] for defense 'trades'; allowed: beta"),
    ({"defense": "trades", "defense_params": {"beta": -1}}, r"trades.beta must lie in"),
    ({"defense": "trades", "defense_params": {"beta": "six"}}, r"trades.beta must be float"),
    ({"lr_milestones": [30, 10]}, r"lr_milestones must be increasing"),
    ({"train_subset": 0}, r"train_subset must be >= 1"),
    ({"device": "tpu"}, r"device must be one of"),
    ({"attack_random_start": "random"}, r"attack_random_start must be one of"),
])
def test_errors_name_the_field_and_the_allowed_values(values, message):
    with pytest.raises(ConfigError, match=message):
        TrialConfig.from_dict(values)


def test_yaml_scientific_notation_and_int_to_float():
    config = TrialConfig.from_dict(yaml.safe_load("weight_decay: 5e-4\nlr: 1"))
    assert config.weight_decay == 5e-4 and isinstance(config.lr, float)


def test_overrides_are_typed_and_reach_into_dicts():
    values = apply_overrides({"defense": "trades", "defense_params": {"beta": 6.0}},
                             ["defense_params.beta=12", "epochs=3", "lr_milestones=[1, 2]"])
    assert values == {"defense": "trades", "defense_params": {"beta": 12}, "epochs": 3,
                      "lr_milestones": [1, 2]}
    assert TrialConfig.from_dict(values).defense_params == {"beta": 12.0}
    with pytest.raises(ConfigError, match="key=value"):
        apply_overrides({}, ["epochs"])


def test_bad_yaml_is_reported(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("epochs: [1,\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        TrialConfig.from_yaml(path)
