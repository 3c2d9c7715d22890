"""Datasets: the packed CIFAR-10 copy (decode, cache, corruption), roots, synthetic data, ImageFolder."""

from __future__ import annotations

import io
import numpy as np
import pytest
import torch
from PIL import Image

from stopgrad.ssl_models import DataConfig, DataError, load_cifar10_npz, load_image_data, synthetic_data


def _small_npz(src, dst, n_train=200, n_test=100):
    """A packed file in the same format holding the first images of each split (real JPEG bytes)."""
    with np.load(src) as z:
        out = {"classes": z["classes"]}
        for split, n in (("train", n_train), ("test", n_test)):
            off = z[f"{split}_offsets"][: n + 1]
            out[f"{split}_offsets"] = off
            out[f"{split}_jpeg"] = z[f"{split}_jpeg"][: off[-1]]
            out[f"{split}_labels"] = z[f"{split}_labels"][:n]
    np.savez_compressed(dst, **out)
    return dst


def test_npz_shapes_labels_and_first_image(cifar, data_root):
    assert cifar.train_images.shape == (50000, 3, 32, 32) and cifar.train_images.dtype == torch.uint8
    assert cifar.test_images.shape == (10000, 3, 32, 32)
    assert torch.equal(torch.bincount(cifar.train_labels), torch.full((10,), 5000))
    assert torch.equal(torch.bincount(cifar.test_labels), torch.full((10,), 1000))
    assert cifar.classes[0] == "airplane" and cifar.classes[-1] == "truck"
    with np.load(data_root / "cifar10-jpeg.npz") as z:
        raw, off = z["test_jpeg"], z["test_offsets"]
        im = np.asarray(Image.open(io.BytesIO(raw[off[7] : off[8]].tobytes())).convert("RGB"))
        assert int(z["test_labels"][7]) == int(cifar.test_labels[7])
    assert np.array_equal(cifar.test_images[7].permute(1, 2, 0).numpy(), im)


def test_decoded_arrays_are_cached(tmp_path, data_root, cifar):
    src = _small_npz(data_root / "cifar10-jpeg.npz", tmp_path / "cifar10-jpeg.npz")
    cache = tmp_path / "cache"
    first = load_cifar10_npz(src, cache=cache)
    files = list(cache.glob("cifar10-jpeg-*.npz"))
    assert len(files) == 1 and str(src.stat().st_size) in files[0].name
    assert torch.equal(first.train_images, cifar.train_images[:200])
    assert torch.equal(first.test_labels, cifar.test_labels[:100])
    # poison the cache entry's images: a second load must come from the cache (and so be poisoned)
    with np.load(files[0]) as z:
        arrays = {k: z[k] for k in z.files}
    arrays["x_test"][0] = 0
    np.savez(files[0], **arrays)
    second = load_cifar10_npz(src, cache=cache)
    assert int(second.test_images[0].sum()) == 0
    # a truncated cache file is rebuilt from the source
    files[0].write_bytes(b"garbage")
    third = load_cifar10_npz(src, cache=cache)
    assert torch.equal(third.test_images, cifar.test_images[:100])
    # another file (other size and hash) gets its own cache entry
    _small_npz(data_root / "cifar10-jpeg.npz", tmp_path / "other.npz", 100, 50)
    assert load_cifar10_npz(tmp_path / "other.npz", cache=cache).train_images.shape[0] == 100
    assert len(list(cache.glob("cifar10-jpeg-*.npz"))) == 2


def test_corrupt_npz_is_a_one_line_data_error(tmp_path, data_root):
    bad = tmp_path / "cifar10-jpeg.npz"
    bad.write_bytes((data_root / "cifar10-jpeg.npz").read_bytes()[:100_000])
    with pytest.raises(DataError, match="corrupt") as err:
        load_cifar10_npz(bad, cache=tmp_path / "cache")
    assert "\n" not in str(err.value)
    with pytest.raises(DataError, match="corrupt"):
        load_image_data(DataConfig(name="cifar10"), tmp_path)


def test_corrupt_jpeg_names_the_image(tmp_path, data_root):
    _small_npz(data_root / "cifar10-jpeg.npz", tmp_path / "small.npz")
    with np.load(tmp_path / "small.npz") as z:
        arrays = {k: z[k] for k in z.files}
    off = arrays["test_offsets"]
    arrays["test_jpeg"][off[3] : off[4]] = 0  # wipe image 3 of the test split
    np.savez(tmp_path / "cifar10-jpeg.npz", **arrays)
    with pytest.raises(DataError, match="test image 3"):
        load_cifar10_npz(tmp_path / "cifar10-jpeg.npz", cache=tmp_path / "cache")


def test_roots_and_sizes(tmp_path, data_root, monkeypatch):
    monkeypatch.delenv("STOPGRAD_DATA", raising=False)
    with pytest.raises(DataError, match="no data root"):
        load_image_data(DataConfig(name="cifar10"))
    with pytest.raises(DataError, match="is not a folder"):
        load_image_data(DataConfig(name="cifar10"), tmp_path / "nowhere")
    with pytest.raises(DataError, match="neither cifar10-jpeg.npz nor a torchvision"):
        load_image_data(DataConfig(name="cifar10"), tmp_path)
    monkeypatch.setenv("STOPGRAD_DATA", str(data_root))
    d = load_image_data(DataConfig(name="cifar10", train_subset=300, test_subset=100))
    assert d.train_images.shape[0] == 300 and d.test_images.shape[0] == 100
    with pytest.raises(DataError, match="batch_size = 512 is larger than the training set"):
        load_image_data(DataConfig(name="cifar10", train_subset=300), min_train=512)


def test_torchvision_missing_dataset_says_how_to_download(tmp_path):
    with pytest.raises(DataError, match="download"):
        load_image_data(DataConfig(name="cifar100"), tmp_path)


def test_synthetic_is_deterministic_and_class_structured():
    a = synthetic_data(200, 4, 16, seed=3)
    b = synthetic_data(200, 4, 16, seed=3)
    assert torch.equal(a.train_images, b.train_images) and a.train_images.shape == (200, 3, 16, 16)
    assert not torch.equal(a.train_images, synthetic_data(200, 4, 16, seed=4).train_images)
    # nearest class mean of raw pixels separates the classes better than chance
    x = a.train_images.float().flatten(1)
    means = torch.stack([x[a.train_labels == c].mean(0) for c in range(4)])
    pred = torch.cdist(a.test_images.float().flatten(1), means).argmin(1)
    assert (pred == a.test_labels).double().mean() > 0.3


def test_imagefolder_tree(tmp_path):
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for c in ("cat", "dog"):
            d = tmp_path / split / c
            d.mkdir(parents=True)
            for i in range(3):
                Image.fromarray(rng.integers(0, 255, (40, 50, 3), dtype=np.uint8)).save(d / f"{i}.png")
    data = load_image_data(DataConfig(name="imagefolder", image_size=24), tmp_path)
    assert data.train_images.shape == (6, 3, 24, 24) and data.classes == ("cat", "dog")
    assert data.test_labels.tolist() == [0, 0, 0, 1, 1, 1]
