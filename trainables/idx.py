"""The idx file format of MNIST-style datasets (big-endian header, raw uint8 payload)."""

from __future__ import annotations

import gzip
import os
import shutil
import struct
from pathlib import Path

import numpy as np

MNIST_STEMS = ("train-images-idx3", "train-labels-idx1", "t10k-images-idx3", "t10k-labels-idx1")
_UBYTE = 0x08


def encode(array: np.ndarray) -> bytes:
    """uint8 array of any rank → idx bytes."""
    array = np.ascontiguousarray(array, dtype=np.uint8)
    header = struct.pack(">BBBB", 0, 0, _UBYTE, array.ndim)
    header += struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.tobytes()


def decode(data: bytes) -> np.ndarray:
    zero, kind, ndim = struct.unpack(">HBB", data[:4])
    if zero != 0 or kind != _UBYTE:
        raise ValueError("not an unsigned-byte idx file")
    shape = struct.unpack(f">{ndim}I", data[4:4 + 4 * ndim])
    payload = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if payload.size != int(np.prod(shape)):
        raise ValueError(f"idx payload holds {payload.size} bytes, header says {shape}")
    return payload.reshape(shape)


def read(path: str | os.PathLike) -> np.ndarray:
    return decode(Path(path).read_bytes())


def write_atomic(path: Path, data: bytes) -> None:
    """Write to a temporary sibling, then rename: readers never see half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def gunzip_into(source_dir: Path, target_dir: Path, names: list[str]) -> None:
    """Decompress ``source_dir/NAME.gz`` to ``target_dir/NAME`` for each name."""
    target_dir.mkdir(parents=True, exist_ok=True)
    for name in names:
        tmp = target_dir / f"{name}.tmp{os.getpid()}"
        with gzip.open(source_dir / f"{name}.gz", "rb") as src, open(tmp, "wb") as dst:
            shutil.copyfileobj(src, dst)
        os.replace(tmp, target_dir / name)
