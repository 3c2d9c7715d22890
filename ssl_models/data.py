"""Image datasets held whole in memory as uint8 tensors (and moved whole to the GPU for training).

Sources:

* ``cifar10`` from the packed offline copy ``cifar10-jpeg.npz`` (decoded once with Pillow; the decoded
  arrays are cached in the user cache folder, keyed by the file's size and SHA-256), or from a
  torchvision root (``cifar-10-batches-py``; downloaded only when ``download = true``).
* ``cifar100``, ``stl10`` through torchvision from a local root (download only when asked).
* ``imagefolder``: ``ROOT/train/<class>/*`` and ``ROOT/val/<class>/*`` (or ``test``), resized to
  ``image_size`` (shorter side, then centre crop). For trees that fit in memory.
* ``synthetic``: class-conditional gratings drawn from a seed, for tests without files.

The data root comes from ``--data-root``, the config's ``data.root`` or the environment variable
``STOPGRAD_DATA``; the cache folder from ``STOPGRAD_CACHE`` (default ``$XDG_CACHE_HOME/stopgrad`` or
``~/.cache/stopgrad``).
"""

from __future__ import annotations

import hashlib
import io
import os
import warnings
import zipfile
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from stopgrad.analysis import atomic_path

from .config import DataConfig
from .errors import DataError

__all__ = [
    "ImageData",
    "NPZ_NAME",
    "cache_dir",
    "load_cifar10_npz",
    "load_image_data",
    "resolve_data_root",
    "synthetic_data",
]

NPZ_NAME = "cifar10-jpeg.npz"
_NPZ_KEYS = ("train_jpeg", "train_offsets", "train_labels", "test_jpeg", "test_offsets", "test_labels", "classes")
_STATS = {
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
    "stl10": ((0.4467, 0.4398, 0.4066), (0.2603, 0.2566, 0.2713)),
}
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")


@dataclass
class ImageData:
    """A dataset in memory. Images are uint8 (N, 3, H, W), labels int64 (N,).

    ``train_*`` is what SSL trains on (labels may be -1 for unlabelled images); ``bank_*`` the labelled
    split used as the kNN bank and for the linear probe's training set (the train split itself unless a
    dataset has unlabelled extras, as STL-10); ``test_*`` the held-out split.
    """

    name: str
    train_images: torch.Tensor
    train_labels: torch.Tensor
    test_images: torch.Tensor
    test_labels: torch.Tensor
    classes: tuple[str, ...]
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    source: str = ""
    bank_images: torch.Tensor | None = None
    bank_labels: torch.Tensor | None = None

    def __post_init__(self):
        if self.bank_images is None:
            self.bank_images, self.bank_labels = self.train_images, self.train_labels

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def image_size(self) -> tuple[int, int]:
        return int(self.train_images.shape[2]), int(self.train_images.shape[3])

    def to(self, device) -> ImageData:
        """A copy whose tensors live on ``device`` (a shared bank is moved once)."""
        same_bank = self.bank_images is self.train_images
        moved = replace(
            self,
            train_images=self.train_images.to(device),
            train_labels=self.train_labels.to(device),
            test_images=self.test_images.to(device),
            test_labels=self.test_labels.to(device),
            bank_images=None,
            bank_labels=None,
        )
        if not same_bank:
            moved.bank_images = self.bank_images.to(device)
            moved.bank_labels = self.bank_labels.to(device)
        else:
            moved.bank_images, moved.bank_labels = moved.train_images, moved.train_labels
        return moved


# ------------------------------------------------------------------------------------------- locations
def resolve_data_root(cli_root: str | os.PathLike | None = None, cfg_root: str = "") -> Path:
    """The data folder: ``--data-root`` > config ``data.root`` > $STOPGRAD_DATA. Raises DataError if none
    is given or the folder does not exist."""
    for origin, value in (("--data-root", cli_root), ("data.root", cfg_root),
                          ("STOPGRAD_DATA", os.environ.get("STOPGRAD_DATA", ""))):
        if value:
            path = Path(value).expanduser()
            if not path.is_dir():
                raise DataError(f"data root {str(path)!r} (from {origin}) is not a folder")
            return path
    raise DataError("no data root: pass --data-root PATH, set data.root in the config, "
                    "or set the environment variable STOPGRAD_DATA")


def cache_dir() -> Path:
    """$STOPGRAD_CACHE, else $XDG_CACHE_HOME/stopgrad, else ~/.cache/stopgrad."""
    if os.environ.get("STOPGRAD_CACHE"):
        return Path(os.environ["STOPGRAD_CACHE"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "stopgrad"


# ------------------------------------------------------------------------------------ the packed npz
def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()


def _decode_split(jpeg: np.ndarray, offsets: np.ndarray, path: Path, split: str) -> np.ndarray:
    from PIL import Image

    n = offsets.shape[0] - 1
    out = np.empty((n, 3, 32, 32), dtype=np.uint8)
    buf = jpeg.tobytes()
    for i in range(n):
        try:
            with Image.open(io.BytesIO(buf[offsets[i] : offsets[i + 1]])) as im:
                arr = np.asarray(im.convert("RGB"))
        except Exception as exc:
            raise DataError(f"{path}: {split} image {i} is not a readable JPEG ({type(exc).__name__}: {exc})") from None
        if arr.shape != (32, 32, 3):
            raise DataError(f"{path}: {split} image {i} has shape {arr.shape}; expected (32, 32, 3)")
        out[i] = arr.transpose(2, 0, 1)
    return out


def _read_npz(path: Path) -> dict[str, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as z:
            missing = [k for k in _NPZ_KEYS if k not in z.files]
            if missing:
                raise DataError(f"{path}: not the packed CIFAR-10 file (missing arrays: {', '.join(missing)})")
            arrays = {k: z[k] for k in _NPZ_KEYS}
    except DataError:
        raise
    except (zipfile.BadZipFile, ValueError, OSError, EOFError, KeyError) as exc:
        raise DataError(f"{path}: corrupt or unreadable npz file ({type(exc).__name__}: {exc})") from None
    for split in ("train", "test"):
        off, jpg, lab = arrays[f"{split}_offsets"], arrays[f"{split}_jpeg"], arrays[f"{split}_labels"]
        if off.ndim != 1 or off.shape[0] != lab.shape[0] + 1 or off[0] != 0 or off[-1] != jpg.shape[0] \
                or np.any(np.diff(off) <= 0):
            raise DataError(f"{path}: {split}_offsets do not index {split}_jpeg (corrupt file)")
        if lab.size and (lab.min() < 0 or lab.max() >= len(arrays["classes"])):
            raise DataError(f"{path}: {split}_labels outside 0..{len(arrays['classes']) - 1} (corrupt file)")
    return arrays


def _atomic_save_npz(path: Path, **arrays) -> None:
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        np.savez(fh, **arrays)


def load_cifar10_npz(path: str | os.PathLike, cache: str | os.PathLike | None = None,
                     use_cache: bool = True) -> ImageData:
    """Load the packed CIFAR-10 JPEG copy, decoding it once and caching the uint8 arrays.

    The cache file is ``CACHE/cifar10-jpeg-<size>-<sha256[:16]>.npz``; an unreadable cache is rebuilt, an
    unwritable cache folder only costs the decode next time. Raises DataError for a missing or corrupt file.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    size = path.stat().st_size
    digest = _sha256(path)
    cache_file = Path(cache or cache_dir()) / f"cifar10-jpeg-{size}-{digest[:16]}.npz"
    arrays = None
    if use_cache and cache_file.is_file():
        try:
            with np.load(cache_file, allow_pickle=False) as z:
                arrays = {k: z[k] for k in ("x_train", "y_train", "x_test", "y_test", "classes")}
        except Exception:  # a truncated or foreign cache file: decode again
            arrays = None
    if arrays is None:
        raw = _read_npz(path)
        arrays = {
            "x_train": _decode_split(raw["train_jpeg"], raw["train_offsets"], path, "train"),
            "y_train": raw["train_labels"].astype(np.int64),
            "x_test": _decode_split(raw["test_jpeg"], raw["test_offsets"], path, "test"),
            "y_test": raw["test_labels"].astype(np.int64),
            "classes": np.asarray([str(c) for c in raw["classes"]]),
        }
        if use_cache:
            try:
                _atomic_save_npz(cache_file, **arrays)
            except OSError as exc:
                warnings.warn(f"could not write the decoded-data cache {cache_file}: {exc}", stacklevel=2)
    mean, std = _STATS["cifar10"]
    return ImageData(
        "cifar10",
        torch.from_numpy(arrays["x_train"]),
        torch.from_numpy(arrays["y_train"].astype(np.int64)),
        torch.from_numpy(arrays["x_test"]),
        torch.from_numpy(arrays["y_test"].astype(np.int64)),
        tuple(str(c) for c in arrays["classes"]),
        mean,
        std,
        source=str(path),
    )


def npz_split_sizes(path: str | os.PathLike) -> tuple[int, int]:
    """(train, test) image counts of the packed file, read without decoding (for early checks)."""
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as z:
            return int(z["train_labels"].shape[0]), int(z["test_labels"].shape[0])
    except (zipfile.BadZipFile, ValueError, OSError, EOFError, KeyError) as exc:
        raise DataError(f"{path}: corrupt or unreadable npz file ({type(exc).__name__}: {exc})") from None


# ------------------------------------------------------------------------------------------ torchvision
def _tv_cifar(name: str, root: Path, download: bool) -> ImageData:
    import torchvision

    cls = torchvision.datasets.CIFAR10 if name == "cifar10" else torchvision.datasets.CIFAR100
    try:
        tr = cls(str(root), train=True, download=download)
        te = cls(str(root), train=False, download=download)
    except RuntimeError as exc:
        raise DataError(f"{name} not found under {root} ({exc}); set data.download = true to download it, "
                        f"or point the data root at a folder with {NPZ_NAME}" if name == "cifar10" else
                        f"{name} not found under {root} ({exc}); set data.download = true to download it") from None
    except Exception as exc:  # a corrupt pickle
        raise DataError(f"{name} under {root} is unreadable ({type(exc).__name__}: {exc})") from None
    mean, std = _STATS[name]

    def images(d):
        return torch.from_numpy(np.ascontiguousarray(d.data.transpose(0, 3, 1, 2)))

    return ImageData(name, images(tr), torch.as_tensor(tr.targets, dtype=torch.int64), images(te),
                     torch.as_tensor(te.targets, dtype=torch.int64), tuple(tr.classes), mean, std, source=str(root))


def _tv_stl10(root: Path, download: bool, unlabeled: bool) -> ImageData:
    import torchvision

    try:
        tr = torchvision.datasets.STL10(str(root), split="train", download=download)
        te = torchvision.datasets.STL10(str(root), split="test", download=download)
        ul = torchvision.datasets.STL10(str(root), split="unlabeled", download=download) if unlabeled else None
    except RuntimeError as exc:
        raise DataError(f"stl10 not found under {root} ({exc}); set data.download = true to download it") from None
    mean, std = _STATS["stl10"]
    bank_x = torch.from_numpy(tr.data)
    bank_y = torch.as_tensor(tr.labels, dtype=torch.int64)
    if ul is not None:
        train_x = torch.cat([bank_x, torch.from_numpy(ul.data)])
        train_y = torch.cat([bank_y, torch.full((len(ul.data),), -1, dtype=torch.int64)])
    else:
        train_x, train_y = bank_x, bank_y
    return ImageData("stl10", train_x, train_y, torch.from_numpy(te.data),
                     torch.as_tensor(te.labels, dtype=torch.int64), tuple(tr.classes), mean, std,
                     source=str(root), bank_images=bank_x, bank_labels=bank_y)


def _load_folder(folder: Path, size: int, classes: list[str] | None = None):
    from PIL import Image

    if classes is None:
        classes = sorted(p.name for p in folder.iterdir() if p.is_dir())
    if not classes:
        raise DataError(f"{folder}: no class folders")
    exts = {".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".webp", ".tif", ".tiff"}
    xs, ys = [], []
    for c, name in enumerate(classes):
        d = folder / name
        if not d.is_dir():
            continue
        for f in sorted(d.iterdir()):
            if f.suffix.lower() not in exts:
                continue
            try:
                with Image.open(f) as im:
                    im = im.convert("RGB")
                    w, h = im.size
                    s = size / min(w, h)
                    im = im.resize((max(size, round(w * s)), max(size, round(h * s))), Image.BILINEAR)
                    w, h = im.size
                    left, top = (w - size) // 2, (h - size) // 2
                    arr = np.asarray(im.crop((left, top, left + size, top + size)))
            except Exception as exc:
                raise DataError(f"{f}: not a readable image ({type(exc).__name__}: {exc})") from None
            xs.append(arr.transpose(2, 0, 1))
            ys.append(c)
    if not xs:
        raise DataError(f"{folder}: no images found")
    return torch.from_numpy(np.stack(xs)), torch.as_tensor(ys, dtype=torch.int64), classes


def _imagefolder(root: Path, size: int) -> ImageData:
    train_dir = root / "train"
    test_dir = next((root / n for n in ("val", "test") if (root / n).is_dir()), None)
    if not train_dir.is_dir() or test_dir is None:
        raise DataError(f"{root}: an ImageFolder root needs train/ and val/ (or test/) class folders")
    xtr, ytr, classes = _load_folder(train_dir, size)
    xte, yte, _ = _load_folder(test_dir, size, classes)
    x = xtr.float() / 255
    mean = tuple(float(v) for v in x.mean(dim=(0, 2, 3)))
    std = tuple(float(v) for v in x.std(dim=(0, 2, 3)).clamp(min=1e-3))
    return ImageData("imagefolder", xtr, ytr, xte, yte, tuple(classes), mean, std, source=str(root))


# -------------------------------------------------------------------------------------------- synthetic
def synthetic_data(n: int = 1024, classes: int = 10, size: int = 32, seed: int = 0) -> ImageData:
    """Class-conditional images: an oriented colour grating per class with random phase, frequency
    jitter, contrast and noise. Deterministic in ``seed``; ``n`` images per split."""
    g = torch.Generator().manual_seed(seed)

    def split(count: int) -> tuple[torch.Tensor, torch.Tensor]:
        y = torch.arange(count) % classes
        angle = (y.float() / classes * torch.pi).view(-1, 1, 1)
        freq = (0.25 + 0.05 * torch.rand(count, 1, 1, generator=g))
        phase = 2 * torch.pi * torch.rand(count, 1, 1, generator=g)
        t = torch.arange(size).float()
        yy, xx = torch.meshgrid(t, t, indexing="ij")
        wave = torch.sin(freq * (torch.cos(angle) * xx + torch.sin(angle) * yy) + phase)  # (n, S, S)
        hue = y.float() / classes * 2 * torch.pi
        colour = torch.stack([torch.cos(hue), torch.cos(hue + 2.094), torch.cos(hue + 4.189)], 1)  # (n, 3)
        amp = 0.25 + 0.15 * torch.rand(count, 1, 1, 1, generator=g)
        img = 0.5 + amp * wave.unsqueeze(1) * (0.6 + 0.4 * colour.view(-1, 3, 1, 1))
        img = img + 0.05 * torch.randn(count, 3, size, size, generator=g)
        return (img.clamp(0, 1) * 255).round().to(torch.uint8), y.to(torch.int64)

    xtr, ytr = split(n)
    xte, yte = split(n)
    x = xtr.float() / 255
    mean = tuple(float(v) for v in x.mean(dim=(0, 2, 3)))
    std = tuple(float(v) for v in x.std(dim=(0, 2, 3)))
    return ImageData("synthetic", xtr, ytr, xte, yte, tuple(f"class{i}" for i in range(classes)), mean, std,
                     source=f"synthetic(seed={seed})")


# ------------------------------------------------------------------------------------------- dispatch
def _subset(data: ImageData, train: int, test: int) -> ImageData:
    out = data
    if train:
        shared = out.bank_images is out.train_images
        out = replace(out, train_images=out.train_images[:train], train_labels=out.train_labels[:train],
                      bank_images=None if shared else out.bank_images, bank_labels=None if shared else out.bank_labels)
        if not shared:
            out.bank_images, out.bank_labels = out.bank_images[:train], out.bank_labels[:train]
    if test:
        out = replace(out, test_images=out.test_images[:test], test_labels=out.test_labels[:test])
    return out


def _resize(data: ImageData, size: int) -> ImageData:
    import torch.nn.functional as F

    def rs(x):
        if x.shape[-1] == size and x.shape[-2] == size:
            return x
        y = F.interpolate(x.float(), size=(size, size), mode="bilinear", antialias=True, align_corners=False)
        return y.round().clamp(0, 255).to(torch.uint8)

    shared = data.bank_images is data.train_images
    out = replace(data, train_images=rs(data.train_images), test_images=rs(data.test_images),
                  bank_images=None, bank_labels=None)
    if not shared:
        out.bank_images, out.bank_labels = rs(data.bank_images), data.bank_labels
    return out


def load_image_data(cfg: DataConfig, root: str | os.PathLike | None = None, *, min_train: int = 0,
                    seed: int = 0) -> ImageData:
    """Load the dataset ``cfg`` describes (root as in :func:`resolve_data_root`; synthetic needs none).

    ``min_train``: the smallest acceptable number of training images (the batch size); checked before
    any decoding where the source allows it. Raises DataError with one line naming the problem.
    """
    if cfg.name == "synthetic":
        data = synthetic_data(cfg.synthetic_size, cfg.synthetic_classes, cfg.image_size or 32, seed)
    else:
        path = resolve_data_root(root, cfg.root)
        if cfg.name == "cifar10":
            npz = path / NPZ_NAME if path.is_dir() else path
            use_npz = cfg.source == "npz" or (cfg.source == "auto" and npz.is_file())
            if cfg.source == "npz" and not npz.is_file():
                raise DataError(f"{npz}: no such file (data.source = 'npz')")
            if use_npz:
                n_train, _ = npz_split_sizes(npz)
                _check_size(cfg, n_train, min_train, npz)
                data = load_cifar10_npz(npz)
            else:
                if not (path / "cifar-10-batches-py").is_dir() and not cfg.download:
                    raise DataError(f"data root {str(path)!r} holds neither {NPZ_NAME} nor a torchvision "
                                    "CIFAR-10 folder (cifar-10-batches-py); set data.download = true to download it")
                data = _tv_cifar("cifar10", path, cfg.download)
        elif cfg.name == "cifar100":
            data = _tv_cifar("cifar100", path, cfg.download)
        elif cfg.name == "stl10":
            data = _tv_stl10(path, cfg.download, cfg.stl10_unlabeled)
        else:
            data = _imagefolder(path, cfg.image_size)
    data = _subset(data, cfg.train_subset, cfg.test_subset)
    if cfg.image_size and cfg.name != "imagefolder":
        data = _resize(data, cfg.image_size)
    _check_size(cfg, data.train_images.shape[0], min_train, data.source)
    return data


def _check_size(cfg: DataConfig, n_train: int, min_train: int, where) -> None:
    n = min(n_train, cfg.train_subset) if cfg.train_subset else n_train
    if min_train and n < min_train:
        raise DataError(f"train.batch_size = {min_train} is larger than the training set ({n} images "
                        f"of {cfg.name} from {where}{', data.train_subset = ' + str(cfg.train_subset) if cfg.train_subset else ''})")
