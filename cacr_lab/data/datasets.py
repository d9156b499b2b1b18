"""Datasets, augmented views and imbalanced subsets for the CACR lab.

Three things live here, in the order a training run needs them:

1. **Loading** (`load_dataset`): every dataset comes back as a `DataSplits` of two in-memory
   `ImageData` (``train`` and a held-out ``test``) plus the per-channel normalisation statistics.
   Images are kept as ``uint8`` tensors ``(N, C, H, W)`` so that 50,000 CIFAR images take 150 MB
   and a whole batch can be augmented on the GPU. Names:

   - ``digits``: scikit-learn's bundled 8x8 digits (offline; the lab's default), upsampled to 16x16.
   - ``cifar10``, ``cifar100``, ``stl10``: torchvision datasets (``download=True`` needs network).
   - ``folder:PATH``: any ImageFolder-style tree ``PATH/<class>/<image>``.
   - ``toy``: clusters on a low-dimensional unit sphere (``images`` are ``(N, D)`` unit vectors).

2. **Views** (REFERENCE.md section 6): each image is augmented into V = K + 1 views. There are two
   implementations of the same distributions: `view_transform` (a per-image torchvision pipeline,
   used through `MultiViewDataset` and a DataLoader) and `BatchAugment` (batched tensor ops on
   whatever device the batch lives on, the fast path for in-memory data).

3. **Imbalanced pre-training sets** (REFERENCE.md section 7): `imbalance_indices`,
   `make_imbalanced` and `class_counts`.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

if TYPE_CHECKING:  # imported where used: importing torchvision pulls in torch._dynamo (~1.5 s
    # on a 2-core CPU), which the batched digits/toy path never needs, and a trainer started
    # from the dashboard should show its first snapshot within seconds.
    from torchvision.transforms import v2

__all__ = [
    "DATASETS",
    "IMBALANCE_PROFILES",
    "BatchAugment",
    "DataSplits",
    "ImageData",
    "MultiViewDataset",
    "SphereJitter",
    "batch_augment_for",
    "center_view",
    "class_counts",
    "imbalance_indices",
    "load_dataset",
    "make_imbalanced",
    "probe_transforms",
    "toy_sphere",
    "view_transform",
]

# Names accepted by `load_dataset`; "folder:PATH" takes any path after the colon.
DATASETS = ("digits", "cifar10", "cifar100", "stl10", "folder:PATH", "toy")
IMBALANCE_PROFILES = ("none", "linear", "exponential")

# File suffixes read by the `folder:` loader (lower case).
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm")

# Luma weights used by torchvision's rgb_to_grayscale (ITU-R 601-2).
_GRAY_WEIGHTS = (0.2989, 0.587, 0.114)


# --------------------------------------------------------------------------------------------
# Containers
# --------------------------------------------------------------------------------------------


@dataclass
class ImageData:
    """One split of a dataset, held in memory.

    Attributes:
        images: ``(N, C, H, W) uint8`` for image datasets; ``(N, D) float32`` unit vectors for
            ``toy``.
        labels: ``(N,) int64`` class indices into ``classes``.
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
        train: the pre-training / probe-training split.
        test: the held-out evaluation split (the official test set where the dataset has one,
            else a seeded stratified validation split).
        mean, std: per-channel normalisation statistics in [0, 1] units, computed on ``train``
            (``(0.0,)`` / ``(1.0,)`` for ``toy``, which is not normalised).
        image_size: side length the encoder sees (STL-10: 64, the crop size, while the stored
            images stay 96x96); the point dimension D for ``toy``.
        in_channels: 1 for digits, 3 for colour images, 0 for ``toy`` (points, not images).
    """

    train: ImageData
    test: ImageData
    mean: tuple[float, ...]
    std: tuple[float, ...]
    image_size: int
    in_channels: int


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
        seed: seeds the validation split of ``folder:`` and the points of ``toy``. The digits
            split is fixed (``random_state=0``) so every run evaluates on the same images.
        val_fraction: fraction held out as ``test`` where there is no official test split
            (``folder:``, ``toy``); in (0, 1).
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
    """Per-channel mean and std of ``images: (N, C, H, W) uint8`` in [0, 1] units."""
    total = torch.zeros(images.shape[1], dtype=torch.float64)
    total_sq = torch.zeros_like(total)
    # Chunked so 50k images never become one 600 MB float64 tensor.
    for start in range(0, images.shape[0], 4096):
        chunk = images[start : start + 4096].to(torch.float64) / 255.0
        total += chunk.sum(dim=(0, 2, 3))
        total_sq += chunk.square().sum(dim=(0, 2, 3))
    count = images.shape[0] * images.shape[2] * images.shape[3]
    mean = total / count
    std = (total_sq / count - mean.square()).clamp_min(1e-12).sqrt()
    return tuple(mean.tolist()), tuple(std.tolist())


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


def _splits(train: ImageData, test: ImageData, image_size: int) -> DataSplits:
    mean, std = _channel_stats(train.images)
    return DataSplits(train, test, mean, std, image_size, int(train.images.shape[1]))


def _load_digits(image_size: int) -> DataSplits:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    bunch = load_digits()
    # Pixel values are 0..16; map them onto the usual 0..255 range of uint8 images.
    pixels = np.rint(bunch.images * (255.0 / 16.0)).clip(0, 255).astype(np.uint8)
    images = _resize_uint8(torch.from_numpy(pixels).unsqueeze(1), image_size)
    labels = torch.from_numpy(bunch.target.astype(np.int64))
    # Fixed split (not `seed`): every run, whatever its seed, is evaluated on the same images.
    train_idx, test_idx = train_test_split(
        np.arange(len(labels)), test_size=0.25, stratify=bunch.target, random_state=0
    )
    classes = [str(int(c)) for c in bunch.target_names]
    data = ImageData(images, labels, classes, "digits")
    return _splits(
        data.subset(torch.from_numpy(np.sort(train_idx))),
        data.subset(torch.from_numpy(np.sort(test_idx))),
        image_size,
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
        # Stored at 96 px; the views are 64 px crops (REFERENCE.md section 6).
        size = image_size or 64
    else:
        size = image_size or 32
        train.images, test.images = (
            _resize_uint8(train.images, size),
            _resize_uint8(test.images, size),
        )
    return _splits(train, test, size)


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
    from tqdm.auto import tqdm

    if not path.is_dir():
        raise ValueError(f"{name}: image folder {path} does not exist or is not a directory")
    classes = sorted(p.name for p in path.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise ValueError(f"{name}: {path} has no class subfolders (expected {path}/<class>/<img>)")
    files: list[Path] = []
    labels: list[int] = []
    for label, cls in enumerate(classes):
        found = sorted(
            p
            for p in (path / cls).rglob("*")
            if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS
        )
        if not found:
            raise ValueError(
                f"{name}: class folder {path / cls} holds no images "
                f"(suffixes {', '.join(IMAGE_EXTENSIONS)})"
            )
        files += found
        labels += [label] * len(found)

    # A plain loop: decoding 32x32 JPEGs is ~50 us each, and threads only add GIL contention.
    images = torch.empty(len(files), 3, image_size, image_size, dtype=torch.uint8)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The image decoding", category=DeprecationWarning)
        for i, file in enumerate(
            tqdm(
                files,
                desc=f"decoding {path.name}",
                disable=not progress,
                mininterval=0.5,
                unit="img",
            )
        ):
            images[i] = _fit_square(_decode_image(file), image_size)

    data = ImageData(images, torch.tensor(labels, dtype=torch.int64), classes, name)
    train_idx, test_idx = stratified_split(data.labels, val_fraction, seed)
    return _splits(data.subset(train_idx), data.subset(test_idx), image_size)


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
    return DataSplits(data.subset(train_idx), data.subset(test_idx), (0.0,), (1.0,), dim, 0)


# --------------------------------------------------------------------------------------------
# Views: per-image pipeline
# --------------------------------------------------------------------------------------------


def _family(dataset_name: str) -> str:
    """Which augmentation family a dataset uses: "cifar", "stl", "digits" or "toy"."""
    if dataset_name in ("cifar10", "cifar100") or dataset_name.startswith("folder"):
        return "cifar"
    if dataset_name in ("stl10", "digits", "toy"):
        return {"stl10": "stl", "digits": "digits", "toy": "toy"}[dataset_name]
    raise ValueError(f"unknown dataset {dataset_name!r}; valid: {', '.join(DATASETS)}")


class SphereJitter(nn.Module):
    """View of a point on the sphere: ``normalise(x + sigma * N(0, I))``; x: ``(..., D)``."""

    def __init__(self, sigma: float = 0.1):
        super().__init__()
        self.sigma = sigma

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(x + self.sigma * torch.randn_like(x), dim=-1)


# Digits: a flipped 2 is not a 2, so no flips; small rotations and shifts keep strokes legible.
_DIGITS_AFFINE = dict(degrees=10.0, translate=(0.1, 0.1), scale=(0.9, 1.1))
_DIGITS_NOISE = 0.05  # std of additive Gaussian pixel noise, in [0, 1] units
_TOY_SIGMA = 0.1  # std of the jitter added to toy points before re-normalising


def view_transform(
    dataset_name: str, image_size: int, mean: Sequence[float], std: Sequence[float]
) -> v2.Compose:
    """Per-image view pipeline: ``uint8 (C, H, W)`` in, normalised ``float32 (C, S, S)`` out.

    CIFAR / folders follow REFERENCE.md section 6 literally: RandomResizedCrop(S, scale 0.2-1),
    horizontal flip, ColorJitter(0.4, 0.4, 0.4, 0.4) applied to every view (no RandomApply),
    RandomGrayscale(0.2), normalise. STL-10 is the same with crop scale 0.08-1. Digits: bilinear
    RandomAffine(10 deg, translate 0.1, scale 0.9-1.1) + Gaussian noise (std 0.05) + normalise,
    no flips. Toy: Gaussian jitter (std 0.1) re-normalised onto the sphere, on ``(D,)`` points.
    """
    from torchvision.transforms import v2

    family = _family(dataset_name)
    if family == "toy":
        return v2.Compose([SphereJitter(_TOY_SIGMA)])
    tail = [v2.ToDtype(torch.float32, scale=True), v2.Normalize(list(mean), list(std))]
    if family == "digits":
        return v2.Compose(
            [
                v2.RandomAffine(**_DIGITS_AFFINE, interpolation=v2.InterpolationMode.BILINEAR),
                v2.ToDtype(torch.float32, scale=True),
                v2.GaussianNoise(sigma=_DIGITS_NOISE, clip=True),
                v2.Normalize(list(mean), list(std)),
            ]
        )
    scale = (0.08, 1.0) if family == "stl" else (0.2, 1.0)
    return v2.Compose(
        [
            v2.RandomResizedCrop(image_size, scale=scale, antialias=True),
            v2.RandomHorizontalFlip(),
            v2.ColorJitter(0.4, 0.4, 0.4, 0.4),
            v2.RandomGrayscale(0.2),
            *tail,
        ]
    )


# Evaluation views: resize to 70/64 of the crop size, then centre-crop (REFERENCE.md section 6,
# "Resize(70), CenterCrop(64)" for STL-10); images already at the crop size are left alone.
_EVAL_RESIZE = 70 / 64


def center_view(images: torch.Tensor, image_size: int) -> torch.Tensor:
    """Deterministic evaluation view: ``(..., C, H, W) uint8`` -> ``(..., C, S, S) uint8``.

    Images already ``image_size`` pixels square are returned as they are; larger or smaller ones
    are resized (shorter side to ``round(image_size * 70 / 64)``) and centre-cropped, the test
    transform of the reference linear evaluation.
    """
    if images.shape[-2:] == (image_size, image_size):
        return images
    from torchvision.transforms import v2

    images = v2.functional.resize(images, [round(image_size * _EVAL_RESIZE)], antialias=True)
    return v2.functional.center_crop(images, [image_size, image_size])


def probe_transforms(
    dataset_name: str, image_size: int, mean: Sequence[float], std: Sequence[float]
) -> tuple[v2.Compose, v2.Compose]:
    """Per-image ``(train, test)`` transforms of the paper's linear evaluation.

    Train: RandomResizedCrop(S) with torchvision's default scale 0.08-1 and a horizontal flip
    (digits: the view affine without noise, no flip); test: `center_view`. Both take ``uint8
    (C, H, W)`` and return normalised ``float32 (C, S, S)``; for ``toy`` both are the identity.
    """
    from torchvision.transforms import v2

    family = _family(dataset_name)
    if family == "toy":
        return v2.Compose([nn.Identity()]), v2.Compose([nn.Identity()])
    tail = [v2.ToDtype(torch.float32, scale=True), v2.Normalize(list(mean), list(std))]
    if family == "digits":
        train = [v2.RandomAffine(**_DIGITS_AFFINE, interpolation=v2.InterpolationMode.BILINEAR)]
    else:
        train = [v2.RandomResizedCrop(image_size, antialias=True), v2.RandomHorizontalFlip()]
    return v2.Compose([*train, *tail]), v2.Compose([_CenterView(image_size), *tail])


class _CenterView(nn.Module):
    """`center_view` as a (picklable) transform for one ``(C, H, W) uint8`` image."""

    def __init__(self, image_size: int):
        super().__init__()
        self.image_size = image_size

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return center_view(image, self.image_size)


class MultiViewDataset(Dataset):
    """Map-style dataset of ``n_views`` independent augmentations of each sample.

    ``dataset[i]`` is ``(views, label)`` with ``views: (V, C, S, S) float32`` (``(V, D)`` for
    toy points) and ``label: int``.
    """

    def __init__(self, data: ImageData, transform, n_views: int):
        if int(n_views) != n_views or n_views < 1:
            raise ValueError(f"n_views must be an integer >= 1, got {n_views!r}")
        self.data, self.transform, self.n_views = data, transform, int(n_views)

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        image = self.data.images[index]
        views = torch.stack([self.transform(image) for _ in range(self.n_views)])
        return views, int(self.data.labels[index])


# --------------------------------------------------------------------------------------------
# Views: batched path
# --------------------------------------------------------------------------------------------


def _uniform(
    n: int,
    low: float,
    high: float,
    like: torch.Tensor,
    generator: torch.Generator | None,
    cols: int | None = None,
) -> torch.Tensor:
    """``(n,)`` (or ``(n, cols)``) float32 samples of U(low, high) on ``like``'s device."""
    shape = (n,) if cols is None else (n, cols)
    u = torch.rand(shape, generator=generator, device=like.device)
    return low + (high - low) * u


def _gray(x: torch.Tensor) -> torch.Tensor:
    """Luma of ``x: (N, C, H, W)`` float as ``(N, 1, H, W)`` (identity for one channel)."""
    if x.shape[1] == 1:
        return x
    r, g, b = x.unbind(1)
    return (_GRAY_WEIGHTS[0] * r + _GRAY_WEIGHTS[1] * g + _GRAY_WEIGHTS[2] * b).unsqueeze(1)


def _blend(x: torch.Tensor, other: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """``clamp(f * x + (1 - f) * other, 0, 1)`` with per-sample ``factor: (N,)``."""
    f = factor.view(-1, 1, 1, 1)
    return (f * x + (1 - f) * other).clamp_(0.0, 1.0)


def _rgb_to_hsv(x: torch.Tensor) -> torch.Tensor:
    """``(N, 3, H, W)`` RGB in [0, 1] to HSV in [0, 1] (same formulas as torchvision)."""
    r, g, b = x.unbind(1)
    maxc, _ = x.max(dim=1)
    minc, _ = x.min(dim=1)
    delta = maxc - minc
    flat = delta == 0  # grey pixels: hue and saturation are 0 (avoid dividing by zero)
    s = delta / torch.where(flat, torch.ones_like(maxc), maxc)
    d = torch.where(flat, torch.ones_like(delta), delta)
    rc, gc, bc = (maxc - r) / d, (maxc - g) / d, (maxc - b) / d
    h = torch.where(maxc == r, bc - gc, torch.where(maxc == g, 2.0 + rc - bc, 4.0 + gc - rc))
    h = torch.where(flat, torch.zeros_like(h), h)
    return torch.stack(((h / 6.0) % 1.0, s, maxc), dim=1)


def _hsv_to_rgb(x: torch.Tensor) -> torch.Tensor:
    """Inverse of `_rgb_to_hsv` on ``(N, 3, H, W)``.

    Channel c = V - V S clamp(min(k, 4 - k), 0, 1) with k = (n_c + 6 H) mod 6 and n = 5, 3, 1
    for R, G, B: the six-sector formula without a lookup table (no host-to-device copy).
    """
    h, s, v = x.unbind(1)
    n = torch.tensor([5.0, 3.0, 1.0], dtype=x.dtype).to(x.device, non_blocking=True)
    k = (n.view(1, 3, 1, 1) + 6.0 * h.unsqueeze(1)) % 6.0
    ramp = torch.minimum(k, 4.0 - k).clamp(0.0, 1.0)
    return (v.unsqueeze(1) * (1.0 - s.unsqueeze(1) * ramp)).clamp(0.0, 1.0)


def _adjust_hue(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    hsv = _rgb_to_hsv(x)
    hsv[:, 0] = (hsv[:, 0] + factor.view(-1, 1, 1)) % 1.0
    return _hsv_to_rgb(hsv)


class BatchAugment:
    """Batched views for in-memory tensors, on whatever device the batch is on.

    ``augment(images, n_views)`` maps ``images: (B, C, H, W) uint8`` to
    ``(V, B, C, S, S) float32`` normalised views (``(B, D)`` toy points to ``(V, B, D)``).
    Each sample draws its own parameters from the same distributions as `view_transform`:

    - ``kind="crop"`` (CIFAR, STL-10, folders): RandomResizedCrop with torchvision's sampling rule
      (10 tries, else the whole image), resampled with ``roi_align`` (bilinear, averaging several
      points per output pixel when shrinking, like antialiasing; unlike torchvision it samples the
      true pixels just outside the crop at its border instead of repeating the edge); flip with
      p = 0.5; ColorJitter brightness, contrast, saturation and hue in a random order per sample;
      grayscale with ``grayscale_p``; normalise.
    - ``kind="affine"`` (digits): rotation, integer translation and scale as
      ``RandomAffine`` (bilinear, zero fill), Gaussian pixel noise clipped to [0, 1], normalise;
      the views keep the input's size.
    - ``kind="sphere"`` (toy): Gaussian jitter re-normalised onto the sphere.

    ``generator`` (optional) must live on the images' device; pass one for reproducible views.
    Build the usual configuration with `batch_augment_for`.
    """

    KINDS = ("crop", "affine", "sphere")

    def __init__(
        self,
        kind: str,
        *,
        image_size: int,
        mean: Sequence[float] = (0.0,),
        std: Sequence[float] = (1.0,),
        crop_scale: tuple[float, float] = (0.2, 1.0),
        crop_ratio: tuple[float, float] = (3 / 4, 4 / 3),
        flip_p: float = 0.5,
        jitter: tuple[float, float, float, float] = (0.4, 0.4, 0.4, 0.4),
        grayscale_p: float = 0.2,
        degrees: float = 10.0,
        translate: float = 0.1,
        scale: tuple[float, float] = (0.9, 1.1),
        noise_sigma: float = _DIGITS_NOISE,
        sphere_sigma: float = _TOY_SIGMA,
    ):
        if kind not in self.KINDS:
            raise ValueError(f"unknown BatchAugment kind {kind!r}; valid: {self.KINDS}")
        self.kind, self.image_size = kind, int(image_size)
        self.mean, self.std = tuple(float(m) for m in mean), tuple(float(s) for s in std)
        self.crop_scale, self.crop_ratio, self.flip_p = crop_scale, crop_ratio, flip_p
        self.jitter, self.grayscale_p = jitter, grayscale_p
        self.degrees, self.translate, self.scale = degrees, translate, scale
        self.noise_sigma, self.sphere_sigma = noise_sigma, sphere_sigma

    def __repr__(self) -> str:
        return f"BatchAugment(kind={self.kind!r}, image_size={self.image_size})"

    def __call__(
        self, images: torch.Tensor, n_views: int, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        if int(n_views) != n_views or n_views < 1:
            raise ValueError(f"n_views must be an integer >= 1, got {n_views!r}")
        if self.kind == "sphere" and images.dim() != 2:
            raise ValueError(f"toy points must be (B, D), got shape {tuple(images.shape)}")
        if self.kind != "sphere" and (images.dim() != 4 or images.dtype != torch.uint8):
            raise ValueError(
                f"images must be (B, C, H, W) uint8, got shape "
                f"{tuple(images.shape)} dtype {images.dtype}"
            )
        batch = images.shape[0]
        # (V*B, ...): view v of sample b sits at row v*B + b, so a reshape gives (V, B, ...).
        x = images.repeat(n_views, *([1] * (images.dim() - 1))).float()
        if self.kind == "sphere":
            noise = torch.randn(x.shape, generator=generator, device=x.device)
            return F.normalize(x + self.sphere_sigma * noise, dim=-1).view(n_views, batch, -1)
        x = x.div_(255.0)
        if self.kind == "crop":
            x = self._crop_jitter(x, generator)
        else:
            x = self._affine_noise(x, generator)
        # non_blocking: a blocking host-to-device copy would wait for all queued GPU work.
        mean = torch.tensor(self.mean).to(x.device, non_blocking=True).view(1, -1, 1, 1)
        std = torch.tensor(self.std).to(x.device, non_blocking=True).view(1, -1, 1, 1)
        x = (x - mean) / std
        return x.view(n_views, batch, *x.shape[1:])

    # -- crop, flip, colour ------------------------------------------------------------------

    def crop_boxes(
        self,
        n: int,
        height: int,
        width: int,
        like: torch.Tensor,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """``(n, 4)`` float boxes ``(top, left, h, w)`` in pixels, RandomResizedCrop's rule."""
        area = height * width
        tries = 10
        target = area * _uniform(n, *self.crop_scale, like, generator, tries)
        log_r = _uniform(
            n, math.log(self.crop_ratio[0]), math.log(self.crop_ratio[1]), like, generator, tries
        )
        ratio = torch.exp(log_r)
        w = torch.round(torch.sqrt(target * ratio))
        h = torch.round(torch.sqrt(target / ratio))
        ok = (w > 0) & (w <= width) & (h > 0) & (h <= height)
        first = ok.float().argmax(dim=1, keepdim=True)  # first successful try per sample
        w, h = w.gather(1, first).squeeze(1), h.gather(1, first).squeeze(1)
        # No try fitted: torchvision falls back to a centre crop at the nearest allowed ratio.
        in_ratio = width / height
        if in_ratio < self.crop_ratio[0]:
            fw, fh = width, round(width / self.crop_ratio[0])
        elif in_ratio > self.crop_ratio[1]:
            fw, fh = round(height * self.crop_ratio[1]), height
        else:
            fw, fh = width, height
        none_ok = ~ok.any(dim=1)
        w = torch.where(none_ok, torch.full_like(w, fw), w)
        h = torch.where(none_ok, torch.full_like(h, fh), h)
        top = torch.floor(_uniform(n, 0.0, 1.0, like, generator) * (height - h + 1))
        left = torch.floor(_uniform(n, 0.0, 1.0, like, generator) * (width - w + 1))
        top = torch.where(none_ok, torch.div(height - h, 2, rounding_mode="floor"), top)
        left = torch.where(none_ok, torch.div(width - w, 2, rounding_mode="floor"), left)
        return torch.stack((top, left, h, w), dim=1)

    def _crop_jitter(self, x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        n, channels, height, width = x.shape
        top, left, h, w = self.crop_boxes(n, height, width, x, generator).unbind(1)
        rows = torch.arange(n, device=x.device, dtype=x.dtype)
        boxes = torch.stack((rows, left, top, left + w, top + h), dim=1)
        # aligned=True puts sample points at pixel centres, i.e. resize with align_corners=False.
        from torchvision.ops import roi_align  # lazy: importing torchvision.ops costs ~2 s

        x = roi_align(
            x,
            boxes,
            (self.image_size, self.image_size),
            spatial_scale=1.0,
            sampling_ratio=-1,
            aligned=True,
        )
        flip = torch.rand(n, generator=generator, device=x.device) < self.flip_p
        x = torch.where(flip.view(-1, 1, 1, 1), x.flip(-1), x)

        x = self._colour_jitter(x, generator)
        gray = torch.rand(n, generator=generator, device=x.device) < self.grayscale_p
        return torch.where(gray.view(-1, 1, 1, 1), _gray(x).expand_as(x), x)

    def _colour_jitter(self, x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        """ColorJitter with per-sample factors and a per-sample random order of the four ops.

        Brightness, contrast and saturation are all ``clamp(f * x + (1 - f) * other)`` with
        ``other`` = 0, the mean luma, or the luma image, so one blend per step applies whichever
        of the three each sample draws (f = 1 leaves a sample unchanged). The expensive hue op
        runs once on the whole batch, between the steps before and after each sample's hue
        step. No data-dependent indexing: nothing waits for the GPU.
        """
        n, channels = x.shape[:2]
        b, c, s, h = self.jitter
        factors = torch.stack(
            [
                _uniform(n, max(0.0, 1 - b), 1 + b, x, generator),
                _uniform(n, max(0.0, 1 - c), 1 + c, x, generator),
                _uniform(n, max(0.0, 1 - s), 1 + s, x, generator),
            ],
            dim=1,
        )  # (n, 3): brightness, contrast, saturation
        hue = _uniform(n, -h, h, x, generator)
        # (n, 4): op of each step; 0-2 blend ops as above, 3 = hue (torchvision's randperm).
        order = torch.argsort(torch.rand(n, 4, generator=generator, device=x.device), dim=1)
        hue_step = (order == 3).float().argmax(dim=1, keepdim=True)  # (n, 1)
        steps = torch.arange(4, device=x.device)

        def blend_steps(x: torch.Tensor, active: torch.Tensor, which: range) -> torch.Tensor:
            for step in which:  # active: (n, 4) marks the steps to apply in this pass
                op = order[:, step]
                use = active[:, step] & (op < 3)
                f = torch.where(use, factors.gather(1, op.clamp(max=2)[:, None]).squeeze(1), 1.0)
                gray = _gray(x)
                other = (
                    torch.where(use & (op == 1), 1.0, 0.0).view(-1, 1, 1, 1)
                    * gray.mean(dim=(1, 2, 3), keepdim=True)
                    + torch.where(use & (op == 2), 1.0, 0.0).view(-1, 1, 1, 1) * gray
                )
                x = _blend(x, other, f)
            return x

        x = blend_steps(x, steps < hue_step, range(3))  # step 3 is never before the hue step
        if channels == 3 and h > 0:  # hue does nothing to one-channel images
            x = _adjust_hue(x, hue)
        return blend_steps(x, steps > hue_step, range(1, 4))

    # -- digits: affine + noise ----------------------------------------------------------------

    def _affine_noise(self, x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        n, _, height, width = x.shape
        angle = torch.deg2rad(_uniform(n, -self.degrees, self.degrees, x, generator))
        # torchvision rounds the translation to whole pixels.
        tx = torch.round(_uniform(n, -self.translate * width, self.translate * width, x, generator))
        ty = torch.round(
            _uniform(n, -self.translate * height, self.translate * height, x, generator)
        )
        scale = _uniform(n, *self.scale, x, generator)
        theta = _affine_theta(angle, tx, ty, scale, height, width)
        grid = F.affine_grid(theta, list(x.shape), align_corners=False)
        x = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        noise = torch.randn(x.shape, generator=generator, device=x.device)
        return (x + self.noise_sigma * noise).clamp_(0.0, 1.0)


def _affine_theta(
    angle: torch.Tensor,
    tx: torch.Tensor,
    ty: torch.Tensor,
    scale: torch.Tensor,
    height: int,
    width: int,
) -> torch.Tensor:
    """``(N, 2, 3)`` `F.affine_grid` matrices for torchvision's ``affine`` convention.

    ``angle`` in radians (counter-clockwise on screen), ``tx, ty`` in pixels, ``scale`` > 0, all
    ``(N,)``, about the image centre. The grid maps output to input, so the matrix is the inverse
    ``R(-angle) / scale`` applied after undoing the translation, in [-1, 1] coordinates.
    """
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    # Pixel-space inverse rotation [[cos, sin], [-sin, cos]]; rescale the off-diagonal terms
    # because x and y are normalised by different lengths when the image is not square.
    a, b = cos, sin * height / width
    c, d = -sin * width / height, cos
    ux, uy = 2 * tx / width, 2 * ty / height  # translation in normalised units
    row0 = torch.stack((a, b, -(a * ux + b * uy)), dim=1)
    row1 = torch.stack((c, d, -(c * ux + d * uy)), dim=1)
    return torch.stack((row0, row1), dim=1)


def batch_augment_for(
    dataset_name: str, image_size: int, mean: Sequence[float], std: Sequence[float]
) -> BatchAugment:
    """The `BatchAugment` matching `view_transform` for ``dataset_name``."""
    family = _family(dataset_name)
    if family == "toy":
        return BatchAugment("sphere", image_size=image_size)
    if family == "digits":
        return BatchAugment("affine", image_size=image_size, mean=mean, std=std)
    scale = (0.08, 1.0) if family == "stl" else (0.2, 1.0)
    return BatchAugment("crop", image_size=image_size, mean=mean, std=std, crop_scale=scale)


# --------------------------------------------------------------------------------------------
# Imbalanced pre-training sets (REFERENCE.md section 7)
# --------------------------------------------------------------------------------------------


def class_counts(labels: torch.Tensor, num_classes: int) -> list[int]:
    """Number of samples per class; ``labels: (N,) int64`` in ``[0, num_classes)``.

    >>> class_counts(torch.tensor([0, 2, 2]), 4)
    [1, 0, 2, 0]
    """
    if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= num_classes):
        raise ValueError(
            f"labels must lie in [0, {num_classes}), got range "
            f"[{int(labels.min())}, {int(labels.max())}]"
        )
    return torch.bincount(labels.long(), minlength=num_classes).tolist()


def _keep_count(profile: str, i: int, levels: int, n: int) -> int:
    """How many of the ``n`` images of profile position ``i`` (of ``levels``) to keep."""
    if profile == "linear":
        return (i + 1) * n // levels  # exact integer floor((i + 1) / C * N_i)
    # Exponential keeps at least one image per class; the paper's profile leaves CIFAR-10
    # class 0 empty (floor(exp(-9) * 5000) = 0).
    return max(math.floor(math.exp((i + 1) - levels) * n), 1) if n > 0 else 0


def imbalance_indices(
    labels: torch.Tensor,
    profile: str | None,
    seed: int = 0,
    groups: int | None = None,
    num_classes: int | None = None,
) -> torch.Tensor:
    """Sorted indices of a class-imbalanced subset (REFERENCE.md section 7).

    Per class c (in order), the class's indices are shuffled with one ``torch.Generator`` seeded
    by ``seed`` and the first ``n_c`` kept, with ``i`` the class's position and ``C`` the number
    of classes:

    - ``"linear"``: ``n_c = floor((i + 1) / C * N_c)`` (exact integer arithmetic);
    - ``"exponential"``: ``n_c = floor(exp((i + 1) - C) * N_c)``, raised to at least 1: this keeps
      at least one image per class; the paper's profile leaves CIFAR-10 class 0 empty;
    - ``None`` / ``"none"``: keep everything.

    With ``groups=G`` the profile runs over G groups of consecutive classes (C must be a
    multiple of G): class c gets the value of group ``c // (C / G)`` and C becomes G (CIFAR-100
    uses ``groups=10``).

    Args:
        labels: ``(N,) int64`` class indices.
        num_classes: C; default ``labels.max() + 1`` (pass it when the last class may be absent).

    Returns:
        ``(M,) int64`` sorted indices into ``labels``.
    """
    if profile is None or profile == "none":
        return torch.arange(len(labels))
    if profile not in IMBALANCE_PROFILES:
        raise ValueError(
            f"unknown imbalance profile {profile!r}; valid: {', '.join(IMBALANCE_PROFILES)} or None"
        )
    if labels.numel() == 0:
        return torch.arange(0)
    needed = int(labels.max()) + 1
    if num_classes is None:
        num_classes = needed
    elif num_classes < needed:
        raise ValueError(f"num_classes={num_classes!r} but labels go up to {needed - 1}")
    levels, per_group = num_classes, 1
    if groups is not None:
        if int(groups) != groups or groups < 1 or num_classes % groups:
            raise ValueError(
                f"groups must be a positive divisor of the number of classes "
                f"({num_classes}), got {groups!r}"
            )
        levels, per_group = int(groups), num_classes // int(groups)
    gen = torch.Generator().manual_seed(seed)
    kept = []
    for c, idx in enumerate(_indices_by_class(labels, num_classes)):
        n_keep = _keep_count(profile, c // per_group, levels, len(idx))
        kept.append(idx[torch.randperm(len(idx), generator=gen)[:n_keep]])
    return torch.cat(kept).sort().values


def make_imbalanced(
    data: ImageData, profile: str | None, seed: int = 0, groups: int | None = None
) -> ImageData:
    """``data`` restricted to `imbalance_indices` (same classes and name)."""
    keep = imbalance_indices(
        data.labels, profile, seed=seed, groups=groups, num_classes=data.num_classes
    )
    return data.subset(keep)
