"""Shared fixtures: real MNIST slices and a small model trained on them."""

from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("ROBUST_SWEEPS_OFFLINE", "1")  # CIFAR/SVHN must not be fetched in tests
# One thread per process: tests share 2 cores with Ray workers, and oversubscribed intra-op
# threads spin (a tiny forward pass then costs 50x more).
torch.set_num_threads(1)


@pytest.fixture(scope="session")
def mnist_test_slice():
    """512 real MNIST test images (float [0, 1]) and labels."""
    from trainables.data import load_dataset

    return load_dataset("mnist", "test", subset=512).tensors()


@pytest.fixture(scope="session")
def trained_mlp():
    """A small MLP trained briefly on 6,000 real MNIST images (clean accuracy ≈ 0.9+)."""
    from trainables.data import iterate_batches, load_dataset
    from trainables.models import create_model

    torch.manual_seed(0)
    train = load_dataset("mnist", "train", subset=6000)
    model = create_model("mlp", in_channels=1, image_size=28, hidden=256, layers=2,
                         mean=(0.1307,), std=(0.3081,))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    for epoch in range(3):
        for x, y, _ in iterate_batches(train, 100, shuffle=True,
                                       generator=torch.Generator().manual_seed(epoch)):
            optimizer.zero_grad()
            torch.nn.functional.cross_entropy(model(x), y).backward()
            optimizer.step()
    return model.eval()


@pytest.fixture(scope="session")
def ray_cluster():
    """One local Ray cluster (2 CPUs) shared by the integration tests of a session."""
    import ray

    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False,
             configure_logging=False)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def adversarial_mlp():
    """``trained_mlp``'s architecture adversarially trained (PGD-AT, Madry et al. 2018, Eq. 2.1)
    on the same 6,000 real MNIST images: 6 epochs against L∞ PGD-10 at ε = 0.1 (step 0.025,
    uniform random start). About 93 % clean and 77 % PGD-50 robust accuracy; ~10 s on 1 thread."""
    from attacks.pgd import pgd
    from trainables.data import iterate_batches, load_dataset
    from trainables.models import create_model

    train = load_dataset("mnist", "train", subset=6000)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = create_model("mlp", in_channels=1, image_size=28, hidden=256, layers=2,
                             mean=(0.1307,), std=(0.3081,))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    attack = torch.Generator().manual_seed(0)
    for epoch in range(6):
        for x, y, _ in iterate_batches(train, 100, shuffle=True,
                                       generator=torch.Generator().manual_seed(epoch)):
            x_adv = pgd(model, x, y, epsilon=0.1, steps=10, step_size=0.025, generator=attack)
            model.train()
            optimizer.zero_grad()
            torch.nn.functional.cross_entropy(model(x_adv), y).backward()
            optimizer.step()
    return model.eval()
