"""Loading: every dataset of the lab as two in-memory splits.

`load_dataset` returns a `DataSplits` of two in-memory `ImageData` (``train`` and a held-out
``test``), for STL-10 a third (``pretrain``: train+unlabeled), plus the per-channel
normalisation statistics. Images are kept as ``uint8`` tensors
``(N, C, H, W)`` so that 50,000 CIFAR images take 150 MB and a whole batch can be augmented on the
GPU. Names (`DATASETS`):

- ``digits``: scikit-learn's bundled 8x8 digits (offline; the lab's default), upsampled to 16x16.
- ``cifar10``, ``cifar100``, ``stl10``: torchvision datasets (``download=True`` needs network).
  STL-10 pre-trains on ``train+unlabeled`` (5,000 + 100,000 images, as the authors' code does);
  its unlabeled images carry the label `UNLABELED` (-1).
- ``folder:PATH``: an ImageFolder-style tree, in one of two layouts: split,
  ``PATH/train/<class>/<image>`` and ``PATH/test/<class>/<image>`` (trains on ``train/``,
  evaluates on ``test/``; the two class lists must be equal), or flat, ``PATH/<class>/<image>``
  (a seeded stratified ``val_fraction`` of it is held out for evaluation).
- ``toy``: clusters on a low-dimensional unit sphere (``images`` are ``(N, D)`` unit vectors).

The bottom of the data package: it imports nothing from `views`, `augment` or `imbalance`.
"""

from __future__ import annotations

import base64
import importlib.util
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

__all__ = [
    "DATASETS",
    "IMAGE_EXTENSIONS",
    "UNLABELED",
    "DataSplits",
    "ImageData",
    "load_dataset",
    "stratified_split",
    "toy_sphere",
]

# Names accepted by `load_dataset`; "folder:PATH" takes any path after the colon.
DATASETS = ("digits", "cifar10", "cifar100", "stl10", "folder:PATH", "toy")

# File suffixes read by the `folder:` loader (lower case).
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm")

# The label of an image without a class (torchvision's convention for STL-10's unlabeled split).
# Only a pre-training set (`DataSplits.pretrain`) holds such images; train and test never do.
UNLABELED = -1

# `DataSplits.eval_split` of a dataset with an official test split (torchvision's).
OFFICIAL_TEST = "official test split"
# ... and of a `folder:` tree with train/ and test/ class trees.
TEST_TREE = "test/ tree"


# --------------------------------------------------------------------------------------------
# Containers
# --------------------------------------------------------------------------------------------


@dataclass
class ImageData:
    """One split of a dataset, held in memory.

    Attributes:
        images: ``(N, C, H, W) uint8`` for image datasets; ``(N, D) float32`` unit vectors for
            ``toy``.
        labels: ``(N,) int64`` class indices into ``classes``; `UNLABELED` (-1) for an image
            without a class (only in `DataSplits.pretrain`).
        classes: class names, index = label.
        name: dataset name as given to `load_dataset` (e.g. ``"cifar10"``, ``"folder:/data/x"``).
    """

    images: torch.Tensor
    labels: torch.Tensor
    classes: list[str]
    name: str

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def subset(self, indices: torch.Tensor) -> ImageData:
        """The samples at ``indices`` (``(M,) int64``), same classes and name."""
        return ImageData(self.images[indices], self.labels[indices], list(self.classes), self.name)


@dataclass
class DataSplits:
    """What `load_dataset` returns.

    Attributes:
        train: the labelled training split: the kNN bank and the probe's training set, and the
            pre-training set unless ``pretrain`` is given.
        test: the held-out evaluation split (the official test set where the dataset has one,
            else a seeded stratified validation split).
        mean, std: per-channel normalisation statistics in [0, 1] units, computed on the
            pre-training set (`pretraining_set`) (``(0.0,)`` / ``(1.0,)`` for ``toy``, which is
            not normalised).
        image_size: side length the encoder sees (STL-10: 64, the crop size, while the stored
            images stay 96x96); the point dimension D for ``toy``.
        in_channels: 1 for digits, 3 for colour images, 0 for ``toy`` (points, not images).
        pretrain: the pre-training set where it is not ``train``, else None. STL-10: its
            ``train+unlabeled`` split, the 5,000 labelled train images first, then the 100,000
            unlabeled ones (label `UNLABELED`), as the authors' code pre-trains.
        eval_split: what ``test`` is, in words, for eval records and reports: ``"official test
            split"`` (torchvision datasets), ``"test/ tree"`` (a split ``folder:``),
            ``"held-out 10 % of the folder (stratified, seed 0)"`` (a flat ``folder:``), ...
    """

    train: ImageData
    test: ImageData
    mean: tuple[float, ...]
    std: tuple[float, ...]
    image_size: int
    in_channels: int
    pretrain: ImageData | None = None
    eval_split: str = "test split given by the caller"

    @property
    def pretraining_set(self) -> ImageData:
        """What pre-training draws from: ``pretrain`` if set, else ``train``."""
        return self.train if self.pretrain is None else self.pretrain


# --------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------


def load_dataset(
    name: str,
    *,
    root: str | Path = "data",
    download: bool = False,
    seed: int = 0,
    val_fraction: float = 0.1,
    image_size: int | None = None,
    progress: bool = True,
) -> DataSplits:
    """Load a dataset fully into memory as a train/test `DataSplits`.

    Args:
        name: one of ``digits``, ``cifar10``, ``cifar100``, ``stl10``, ``folder:PATH``, ``toy``.
        root: where torchvision datasets live (``download=True`` writes there).
        download: let torchvision download missing files (needs network access).
        seed: seeds the held-out split of a flat ``folder:`` tree and the points of ``toy``.
            The digits split is fixed (``random_state=0``) so every run evaluates on the same
            images; a ``folder:`` with ``train/`` and ``test/`` trees uses neither.
        val_fraction: fraction held out as ``test`` where there is no test split (a flat
            ``folder:`` tree, ``toy``); in (0, 1).
        image_size: side length to store images at (default: digits 16, CIFAR and folders 32,
            STL-10 keeps 96 px images and reports 64, the crop size); the dimension D for ``toy``
            (default 3).
        progress: show a tqdm bar while decoding a ``folder:`` tree.

    Raises:
        ValueError: unknown name, bad ``val_fraction`` / ``image_size``, or a bad folder.
        FileNotFoundError: torchvision dataset files missing (the message says how to fix it).

    Example:
        >>> splits = load_dataset("digits")
        >>> splits.train.images.shape[1:], splits.train.images.dtype, splits.image_size
        (torch.Size([1, 16, 16]), torch.uint8, 16)
    """
    if not isinstance(name, str):
        raise ValueError(f"dataset name must be a string, got {name!r}; valid: {DATASETS}")
    if not 0.0 < float(val_fraction) < 1.0:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction!r}")
    if image_size is not None and (
        isinstance(image_size, bool) or int(image_size) != image_size or image_size < 1
    ):
        raise ValueError(f"image_size must be a positive integer or None, got {image_size!r}")

    if name == "digits":
        return _load_digits(image_size or 16)
    if name in ("cifar10", "cifar100", "stl10"):
        return _load_torchvision(name, Path(root), download, image_size)
    if name.startswith("folder:"):
        path = name[len("folder:") :]
        if not path:
            raise ValueError(f"dataset name {name!r} needs a path after 'folder:'")
        return _load_folder(
            name, Path(path).expanduser(), image_size or 32, seed, val_fraction, progress
        )
    if name == "toy":
        return _load_toy(image_size or 3, seed, val_fraction)
    raise ValueError(f"unknown dataset {name!r}; valid: {', '.join(DATASETS)}")


def _channel_stats(images: torch.Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std of ``images: (N, C, H, W) uint8`` in [0, 1] units.

    From each channel's histogram of the 256 pixel values: exact integer counts, and ~15x
    faster than summing float copies (STL-10's 105,000 pre-training images in a few seconds).
    """
    counts = torch.zeros(images.shape[1], 256, dtype=torch.float64)
    for start in range(0, images.shape[0], 4096):  # chunked: one channel copy stays small
        chunk = images[start : start + 4096]
        for c in range(images.shape[1]):
            counts[c] += torch.bincount(chunk[:, c].reshape(-1), minlength=256).double()
    value = torch.arange(256, dtype=torch.float64) / 255.0
    total = counts.sum(dim=1)
    mean = (counts * value).sum(dim=1) / total
    var = (counts * value.square()).sum(dim=1) / total - mean.square()
    return tuple(mean.tolist()), tuple(var.clamp_min(1e-12).sqrt().tolist())


def _resize_uint8(images: torch.Tensor, size: int) -> torch.Tensor:
    """Resize ``(N, C, H, W) uint8`` to ``(N, C, size, size)`` (bilinear, antialiased)."""
    if images.shape[-2:] == (size, size):
        return images
    out = F.interpolate(
        images.float(),
        size=(size, size),
        mode="bilinear",
        align_corners=False,
        antialias=size < images.shape[-1],
    )
    return out.round_().clamp_(0, 255).to(torch.uint8)


def _splits(
    train: ImageData,
    test: ImageData,
    image_size: int,
    eval_split: str,
    pretrain: ImageData | None = None,
) -> DataSplits:
    mean, std = _channel_stats((train if pretrain is None else pretrain).images)
    channels = int(train.images.shape[1])
    return DataSplits(train, test, mean, std, image_size, channels, pretrain, eval_split)


def _held_out(fraction: float, of: str, seed: str) -> str:
    """The `DataSplits.eval_split` of a seeded stratified split.

    >>> _held_out(0.1, "the folder", "seed 3")
    'held-out 10 % of the folder (stratified, seed 3)'
    """
    return f"held-out {100 * fraction:g} % of {of} (stratified, {seed})"


# The fixed test quarter of digits (450 of 1797 images, stratified by class): scikit-learn's
# train_test_split(test_size=0.25, stratify=labels, random_state=0) as a bit mask, so that a
# trainer's start does not import scikit-learn (seconds on a busy laptop, before the first
# snapshot). tests/test_data.py checks it against scikit-learn.
_DIGITS_TEST_MASK = (
    "AAAEiDUmEEAAFkEBk0IFABoACAECJAAoBiweCBEIlgoAkBkSBCD4oAKBEOBACAqaMEQVJElCwKAK"
    "IDCAQATYIUCLgCAASIXEABBACKCQAAVIaAAwEAACDsQJABIkhACDuAE8IaacCgIEAA9IQAgEpBhJ"
    "AhJAYeUAgCRgTpQ3aoGSFgFUgABIQqCkGApQAKQLhWHmiBCASRJMgMAiBQaOAAEJ8gLBQTmIE8AJ"
    "GQAAFI4BAIQQoOEAMygpAMFEyMBoCgECkwKSAwkipkAsJgQhCKhggZjIoBQShhICEoE4pBUA"
)


def _digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's digits: ``(1797, 8, 8)`` pixels 0..16 and the labels, read from its data
    file without importing scikit-learn (``load_digits`` where the file is not found)."""
    spec = importlib.util.find_spec("sklearn")
    path = Path(spec.origin).parent / "datasets" / "data" / "digits.csv.gz" if spec else None
    if path is None or not path.is_file():
        from sklearn.datasets import load_digits

        bunch = load_digits()
        return bunch.images, bunch.target
    data = np.loadtxt(path, delimiter=",")
    return data[:, :-1].reshape(-1, 8, 8), data[:, -1].astype(np.int64)


def _load_digits(image_size: int) -> DataSplits:
    pixels, target = _digits_arrays()
    # Pixel values are 0..16; map them onto the usual 0..255 range of uint8 images.
    pixels = np.rint(pixels * (255.0 / 16.0)).clip(0, 255).astype(np.uint8)
    images = _resize_uint8(torch.from_numpy(pixels).unsqueeze(1), image_size)
    labels = torch.from_numpy(target.astype(np.int64))
    # Fixed split (not `seed`): every run, whatever its seed, is evaluated on the same images.
    bits = np.frombuffer(base64.b64decode("".join(_DIGITS_TEST_MASK)), dtype=np.uint8)
    test = np.unpackbits(bits)[: len(labels)].astype(bool)
    classes = [str(c) for c in range(10)]
    data = ImageData(images, labels, classes, "digits")
    return _splits(
        data.subset(torch.from_numpy(np.flatnonzero(~test))),
        data.subset(torch.from_numpy(np.flatnonzero(test))),
        image_size,
        _held_out(0.25, "digits", "fixed seed 0"),
    )


def _load_torchvision(name: str, root: Path, download: bool, image_size: int | None) -> DataSplits:
    from torchvision import datasets

    def read(split: str) -> ImageData:
        try:
            if name == "stl10":
                ds = datasets.STL10(str(root), split=split, download=download)
                images, labels = torch.from_numpy(ds.data), torch.from_numpy(ds.labels)
            else:
                cls = datasets.CIFAR10 if name == "cifar10" else datasets.CIFAR100
                ds = cls(str(root), train=split == "train", download=download)
                # CIFAR arrays are (N, H, W, C); the lab works in (N, C, H, W).
                images = torch.from_numpy(ds.data).permute(0, 3, 1, 2).contiguous()
                labels = torch.as_tensor(ds.targets)
        except (RuntimeError, OSError) as err:  # missing files, or no network for download
            how = "the download failed" if download else "the files are missing and download=False"
            cause = " ".join(str(err).split())  # keep the message on one line
            raise FileNotFoundError(
                f"{name}: {how} (searched {root.resolve()}; {type(err).__name__}: {cause}). Fix: "
                f"pass download=True on a machine with network access, put the torchvision "
                f"{name} files under {root.resolve()}, or load an image tree with 'folder:PATH'."
            ) from err
        return ImageData(images, labels.to(torch.int64), list(ds.classes), name)

    train, test = read("train"), read("test")
    if name == "stl10":
        # Pre-training on train+unlabeled, the labelled images first (torchvision's order for
        # split="train+unlabeled"); the kNN bank and the probe use the labelled train split.
        unlabeled = read("unlabeled")  # labels UNLABELED (-1)
        pretrain = ImageData(
            torch.cat([train.images, unlabeled.images]),
            torch.cat([train.labels, unlabeled.labels]),
            list(train.classes),
            name,
        )
        del unlabeled
        # Stored at 96 px; the views are 64 px crops (docs/method.md §7.2).
        return _splits(train, test, image_size or 64, OFFICIAL_TEST, pretrain)
    size = image_size or 32
    train.images, test.images = (
        _resize_uint8(train.images, size),
        _resize_uint8(test.images, size),
    )
    return _splits(train, test, size, OFFICIAL_TEST)


def _indices_by_class(labels: torch.Tensor, num_classes: int) -> list[torch.Tensor]:
    """For each class c < num_classes, the ascending indices ``i`` with ``labels[i] == c``."""
    # One stable sort instead of a full scan per class (CIFAR-100 has 100 classes).
    order = torch.argsort(labels, stable=True)
    counts = torch.bincount(labels, minlength=num_classes)[:num_classes]
    return list(torch.split(order[: int(counts.sum())], counts.tolist()))


def stratified_split(
    labels: torch.Tensor, fraction: float, seed: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Seeded per-class split of ``labels: (N,) int64`` into sorted (keep, held_out) indices.

    Each class with at least two samples holds out ``round(fraction * n_c)`` of them, at least
    one and never all, so every class appears on both sides whenever it can.
    """
    gen = torch.Generator().manual_seed(seed)
    keep, held = [], []
    for idx in _indices_by_class(labels, int(labels.max()) + 1 if labels.numel() else 0):
        idx = idx[torch.randperm(len(idx), generator=gen)]
        n_held = 0 if len(idx) < 2 else min(max(round(fraction * len(idx)), 1), len(idx) - 1)
        held.append(idx[:n_held])
        keep.append(idx[n_held:])
    return torch.cat(keep).sort().values, torch.cat(held).sort().values


def _decode_image(path: Path) -> torch.Tensor:
    """Read one image file as ``(3, H, W) uint8`` RGB; ValueError naming the file if unreadable."""
    try:
        # torchvision's decoders are ~2x faster than PIL on small JPEGs. They are deprecated
        # since torchvision 0.29 (the caller silences that warning); PIL takes over if they go.
        from torchvision.io import ImageReadMode, decode_image, read_file

        return decode_image(read_file(str(path)), mode=ImageReadMode.RGB)
    except Exception:  # any failure: try PIL, which names the file if it fails too
        pass
    try:  # also for formats torchvision cannot decode (BMP, TIFF, PPM)
        from PIL import Image

        with Image.open(path) as img:
            array = np.asarray(img.convert("RGB"))
        return torch.from_numpy(array.copy()).permute(2, 0, 1)
    except Exception as err:
        raise ValueError(f"cannot read image file {path}: {err}") from err


def _fit_square(image: torch.Tensor, size: int) -> torch.Tensor:
    """Resize the shorter side of ``(C, H, W) uint8`` to ``size``, then centre-crop a square."""
    if image.shape[-2:] == (size, size):
        return image
    from torchvision.transforms import v2

    image = v2.functional.resize(image, [size], antialias=True)
    return v2.functional.center_crop(image, [size, size])


def _load_folder(
    name: str, path: Path, image_size: int, seed: int, val_fraction: float, progress: bool
) -> DataSplits:
    """A split tree (``PATH/train/`` and ``PATH/test/`` class trees) or a flat class tree."""
    if not path.is_dir():
        raise ValueError(f"{name}: image folder {path} does not exist or is not a directory")
    trees = {part: path / part for part in ("train", "test") if (path / part).is_dir()}
    if len(trees) == 2:
        return _load_split_folder(name, trees["train"], trees["test"], image_size, progress)
    for part, tree in trees.items():  # one of the two, holding class folders: a half split tree
        if any(p.is_dir() for p in tree.iterdir()):
            other = "test" if part == "train" else "train"
            raise ValueError(
                f"{name}: {path} holds {part}/ class folders but no {other}/: a split tree needs "
                f"both {path}/train/<class>/<img> and {path}/test/<class>/<img> (rename or link "
                f"a val/ tree to test/); to hold out part of {part}/ instead, use folder:{tree}"
            )
    classes, files, labels = _class_files(name, path, min_images=2)
    data = ImageData(_decode_all(files, image_size, path.name, progress), labels, classes, name)
    train_idx, test_idx = stratified_split(data.labels, val_fraction, seed)
    held_out = _held_out(val_fraction, "the folder", f"seed {seed}")
    return _splits(data.subset(train_idx), data.subset(test_idx), image_size, held_out)


def _load_split_folder(
    name: str, train_dir: Path, test_dir: Path, image_size: int, progress: bool
) -> DataSplits:
    """Trains on ``train_dir``'s class tree, evaluates on ``test_dir``'s (same class names)."""
    train_classes, train_files, train_labels = _class_files(name, train_dir, min_images=1)
    test_classes, test_files, test_labels = _class_files(name, test_dir, min_images=1)
    if train_classes != test_classes:
        only = [
            f"in {a.name}/ but not in {b.name}/: {', '.join(sorted(set(ca) - set(cb)))}"
            for a, ca, b, cb in (
                (train_dir, train_classes, test_dir, test_classes),
                (test_dir, test_classes, train_dir, train_classes),
            )
            if set(ca) - set(cb)
        ]
        raise ValueError(
            f"{name}: the class folders of train/ and test/ must match; classes " + "; ".join(only)
        )
    desc = f"{train_dir.parent.name}/"
    train = ImageData(
        _decode_all(train_files, image_size, desc + "train", progress),
        train_labels,
        train_classes,
        name,
    )
    test = ImageData(
        _decode_all(test_files, image_size, desc + "test", progress),
        test_labels,
        test_classes,
        name,
    )
    return _splits(train, test, image_size, TEST_TREE)


def _class_files(
    name: str, root: Path, min_images: int
) -> tuple[list[str], list[Path], torch.Tensor]:
    """The class names (sorted subfolders of ``root``), the image files (sorted by class, then
    path) and their ``(N,) int64`` labels; ValueError if a class holds under ``min_images``."""
    classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise ValueError(f"{name}: {root} has no class subfolders (expected {root}/<class>/<img>)")
    files: list[Path] = []
    labels: list[int] = []
    for label, cls in enumerate(classes):
        found = sorted(
            p
            for p in (root / cls).rglob("*")
            if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS
        )
        if not found:
            raise ValueError(
                f"{name}: class folder {root / cls} holds no images "
                f"(suffixes {', '.join(IMAGE_EXTENSIONS)})"
            )
        if len(found) < min_images:  # checked before decoding anything
            raise ValueError(
                f"{name}: class folder {root / cls} holds only {len(found)} image; the held-out "
                f"split of a flat tree needs at least {min_images} images per class (or give "
                f"{root}/train/ and {root}/test/ class trees)"
            )
        files += found
        labels += [label] * len(found)
    return classes, files, torch.tensor(labels, dtype=torch.int64)


def _decode_all(files: list[Path], image_size: int, desc: str, progress: bool) -> torch.Tensor:
    """``(N, 3, image_size, image_size) uint8``: every file decoded and fitted to a square."""
    from tqdm.auto import tqdm

    # A plain loop: decoding 32x32 JPEGs is ~50 us each, and threads only add GIL contention.
    images = torch.empty(len(files), 3, image_size, image_size, dtype=torch.uint8)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The image decoding", category=DeprecationWarning)
        bar = tqdm(
            files, desc=f"decoding {desc}", disable=not progress, mininterval=0.5, unit="img"
        )
        for i, file in enumerate(bar):
            images[i] = _fit_square(_decode_image(file), image_size)
    return images


def toy_sphere(
    n_per_class: int = 100, n_classes: int = 4, dim: int = 3, spread: float = 0.3, seed: int = 0
) -> ImageData:
    """Clusters of points on the unit sphere S^(dim-1), for the theory notebook.

    Centres are random unit vectors; each point is ``normalise(centre + spread * N(0, I))``.

    Returns:
        `ImageData` with ``images: (n_classes * n_per_class, dim) float32`` unit vectors and
        ``labels: (N,) int64``, grouped by class.

    Example:
        >>> pts = toy_sphere(n_per_class=5, n_classes=2, dim=3)
        >>> pts.images.shape, bool(torch.allclose(pts.images.norm(dim=1), torch.ones(10)))
        (torch.Size([10, 3]), True)
    """
    for arg, value, low in (
        ("n_per_class", n_per_class, 1),
        ("n_classes", n_classes, 1),
        ("dim", dim, 2),
    ):
        if int(value) != value or value < low:
            raise ValueError(f"{arg} must be an integer >= {low}, got {value!r}")
    if spread < 0:
        raise ValueError(f"spread must be >= 0, got {spread!r}")
    gen = torch.Generator().manual_seed(seed)
    centres = F.normalize(torch.randn(n_classes, dim, generator=gen), dim=1)
    labels = torch.arange(n_classes).repeat_interleave(n_per_class)
    points = centres[labels] + spread * torch.randn(len(labels), dim, generator=gen)
    return ImageData(
        F.normalize(points, dim=1), labels, [f"cluster {c}" for c in range(n_classes)], "toy"
    )


def _load_toy(dim: int, seed: int, val_fraction: float) -> DataSplits:
    data = toy_sphere(n_per_class=250, dim=dim, seed=seed)
    train_idx, test_idx = stratified_split(data.labels, val_fraction, seed)
    return DataSplits(
        data.subset(train_idx),
        data.subset(test_idx),
        (0.0,),
        (1.0,),
        dim,
        0,
        eval_split=_held_out(val_fraction, "the points", f"seed {seed}"),
    )
