"""The adaptive attack (PGD on a defense's own training objective) against every registered
defense, on a model trained on real MNIST: it runs, stays in the ε-ball and raises the
defense's objective above its value at the clean points."""

import copy

import pytest
import torch

from attacks.suite import create_attack
from trainables.defenses import create_defense, list_defenses
from trainables.defenses.base import AttackSettings

EPSILON = 0.1


@pytest.mark.parametrize("name", list_defenses())
def test_the_adaptive_attack_raises_every_defense_objective(name, trained_mlp, mnist_test_slice):
    x, y = mnist_test_slice[0][:32], mnist_test_slice[1][:32]
    defense = create_defense(name, attack=AttackSettings(epsilon=EPSILON, steps=10,
                                                         step_size=0.025))
    torch.manual_seed(0)
    model = defense.model_hook(copy.deepcopy(trained_mlp)).eval()
    attack = create_attack("adaptive", epsilon=EPSILON, defense=name, steps=10, seed=0)
    x_adv = attack(model, x, y)
    assert x_adv.shape == x.shape and not torch.equal(x_adv, x)
    assert (x_adv - x).abs().max() <= EPSILON + 1e-6
    assert x_adv.min() >= 0 and x_adv.max() <= 1

    def objective(point):
        state = defense.init_state(num_examples=len(x), batch_size=len(x), num_classes=10,
                                   epochs=1)
        ids = torch.arange(len(x))
        with torch.no_grad():
            return defense.adaptive_objective(model, x, y, state, ids=ids)(point).item()

    if attack.settings["objective"] == "training loss":
        assert objective(x_adv) > objective(x), name
