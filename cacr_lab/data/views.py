"""Views: the per-dataset view recipes and the per-image pipelines built from them.

Each image is augmented into V = K + 1 views (docs/method.md §7). `VIEW_RECIPES` is the one
table of how: per dataset family the crop scale and aspect ratio, flip, colour jitter and
grayscale rates (CIFAR, STL-10, folders), the affine and pixel noise (digits), the toy jitter,
and the linear evaluation's train crop and test resize. Everything that makes a view reads it:

- `view_transform`: a per-image torchvision pipeline, used through `MultiViewDataset` and a
  DataLoader;
- `batch_augment_for` (in `augment`): the batched `BatchAugment` drawing from the same
  distributions on whatever device the batch lives on, the fast path for in-memory data;
- `probe_transforms` and `center_view`: the linear evaluation's train and test views.

The crop size S is not in the table: it is the ``image_size`` every builder takes, i.e.
`DataSplits.image_size` (the loader's default per dataset, e.g. 64 for STL-10's 96 px images).
Normalisation uses the train split's per-channel mean and std (`DataSplits.mean`, ``.std``) for
every image family; toy points are unit vectors and are not normalised.

Imports `datasets` (names and `ImageData`) only; `augment` builds on this module.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

from .datasets import DATASETS, ImageData

if TYPE_CHECKING:  # imported where used: importing torchvision pulls in torch._dynamo (~1.5 s
    # on a 2-core CPU), which the batched digits/toy path never needs, and a trainer started
    # from the dashboard should show its first snapshot within seconds.
    from torchvision.transforms import v2

__all__ = [
    "VIEW_RECIPES",
    "MultiViewDataset",
    "SphereJitter",
    "ViewRecipe",
    "center_view",
    "probe_transforms",
    "view_recipe",
    "view_transform",
]


# --------------------------------------------------------------------------------------------
# The recipe table
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ViewRecipe:
    """How one dataset family's views are made; fields its ``kind`` does not use are None."""

    # "crop" (crop, flip, colour), "affine" (digits) or "sphere" (toy points): which pipeline
    # `view_transform` builds and which `BatchAugment` kind `batch_augment_for` picks.
    kind: str
    # kind="crop": RandomResizedCrop's area fraction and aspect-ratio range, horizontal flip
    # rate, ColorJitter strengths (brightness, contrast, saturation, hue; applied to every view,
    # no RandomApply) and RandomGrayscale rate.
    crop_scale: tuple[float, float] | None = None
    crop_ratio: tuple[float, float] | None = None
    flip_p: float | None = None
    jitter: tuple[float, float, float, float] | None = None
    grayscale_p: float | None = None
    # kind="affine": RandomAffine's rotation range (+- degrees), translation (fraction of the
    # side, whole pixels) and scale range (bilinear, zero fill); std of the additive Gaussian
    # pixel noise in [0, 1] units, clipped to [0, 1].
    degrees: float | None = None
    translate: float | None = None
    affine_scale: tuple[float, float] | None = None
    noise_sigma: float | None = None
    # kind="sphere": std of the Gaussian jitter added to a point before re-normalising.
    sphere_sigma: float | None = None
    # Linear evaluation (`probe_transforms`): the train crop's area fraction (with a flip at
    # ``flip_p``; digits train on the view affine without noise), and the test view's resize of
    # the shorter side to ``round(S * eval_resize)`` before the centre crop (`center_view`).
    probe_crop_scale: tuple[float, float] | None = None
    eval_resize: float | None = None


# CIFAR-10/100 and folder: trees follow the authors' CIFAR recipe (docs/method.md §7.1, §8): the
# views and the probe's train crop both use RandomResizedCrop(S, scale 0.2-1); the eval resize is
# the reference's "Resize(70), CenterCrop(64)" for STL-10, scaled to any crop size (images
# already at the crop size are left alone, so only STL-10's 96 px images are resized in
# practice; the CIFAR code's "Resize(32), CenterCrop(32)" is that identity).
_CIFAR = ViewRecipe(
    kind="crop",
    crop_scale=(0.2, 1.0),
    crop_ratio=(3 / 4, 4 / 3),
    flip_p=0.5,
    jitter=(0.4, 0.4, 0.4, 0.4),
    grayscale_p=0.2,
    probe_crop_scale=(0.2, 1.0),
    eval_resize=70 / 64,
)

VIEW_RECIPES: dict[str, ViewRecipe] = {
    "cifar": _CIFAR,
    # STL-10: as CIFAR with crop scale 0.08-1 (64 px crops of 96 px images), for the views and
    # for the probe's train crop alike, as in the authors' STL-10 code (docs/method.md §7.2).
    "stl": dataclasses.replace(_CIFAR, crop_scale=(0.08, 1.0), probe_crop_scale=(0.08, 1.0)),
    # Digits: a flipped 2 is not a 2, so no flips; small rotations and shifts keep strokes
    # legible.
    "digits": ViewRecipe(
        kind="affine",
        degrees=10.0,
        translate=0.1,
        affine_scale=(0.9, 1.1),
        noise_sigma=0.05,
        eval_resize=70 / 64,
    ),
    "toy": ViewRecipe(kind="sphere", sphere_sigma=0.1),
}


def _family(dataset_name: str) -> str:
    """Which augmentation family a dataset uses: "cifar", "stl", "digits" or "toy"."""
    if dataset_name in ("cifar10", "cifar100") or dataset_name.startswith("folder"):
        return "cifar"
    if dataset_name in ("stl10", "digits", "toy"):
        return {"stl10": "stl", "digits": "digits", "toy": "toy"}[dataset_name]
    raise ValueError(f"unknown dataset {dataset_name!r}; valid: {', '.join(DATASETS)}")


def view_recipe(dataset_name: str) -> ViewRecipe:
    """The `VIEW_RECIPES` entry of ``dataset_name`` (a `load_dataset` name).

    >>> view_recipe("stl10").crop_scale, view_recipe("folder:/data/x").kind
    ((0.08, 1.0), 'crop')
    """
    return VIEW_RECIPES[_family(dataset_name)]


# --------------------------------------------------------------------------------------------
# Per-image pipelines
# --------------------------------------------------------------------------------------------


class SphereJitter(nn.Module):
    """View of a point on the sphere: ``normalise(x + sigma * N(0, I))``; x: ``(..., D)``."""

    def __init__(self, sigma: float = VIEW_RECIPES["toy"].sphere_sigma):
        super().__init__()
        self.sigma = sigma

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(x + self.sigma * torch.randn_like(x), dim=-1)


def _random_affine(recipe: ViewRecipe) -> v2.RandomAffine:
    """The digits recipe's bilinear RandomAffine (zero fill)."""
    from torchvision.transforms import v2

    return v2.RandomAffine(
        degrees=recipe.degrees,
        translate=(recipe.translate, recipe.translate),
        scale=recipe.affine_scale,
        interpolation=v2.InterpolationMode.BILINEAR,
    )


def view_transform(
    dataset_name: str, image_size: int, mean: Sequence[float], std: Sequence[float]
) -> v2.Compose:
    """Per-image view pipeline: ``uint8 (C, H, W)`` in, normalised ``float32 (C, S, S)`` out.

    CIFAR / folders follow docs/method.md §7 literally: RandomResizedCrop(S, scale 0.2-1),
    horizontal flip, ColorJitter(0.4, 0.4, 0.4, 0.4) applied to every view (no RandomApply),
    RandomGrayscale(0.2), normalise. STL-10 is the same with crop scale 0.08-1. Digits: bilinear
    RandomAffine(10 deg, translate 0.1, scale 0.9-1.1) + Gaussian noise (std 0.05) + normalise,
    no flips. Toy: Gaussian jitter (std 0.1) re-normalised onto the sphere, on ``(D,)`` points.
    (The numbers are `VIEW_RECIPES`'.)
    """
    from torchvision.transforms import v2

    recipe = view_recipe(dataset_name)
    if recipe.kind == "sphere":
        return v2.Compose([SphereJitter(recipe.sphere_sigma)])
    tail = [v2.ToDtype(torch.float32, scale=True), v2.Normalize(list(mean), list(std))]
    if recipe.kind == "affine":
        return v2.Compose(
            [
                _random_affine(recipe),
                v2.ToDtype(torch.float32, scale=True),
                v2.GaussianNoise(sigma=recipe.noise_sigma, clip=True),
                v2.Normalize(list(mean), list(std)),
            ]
        )
    return v2.Compose(
        [
            v2.RandomResizedCrop(
                image_size, scale=recipe.crop_scale, ratio=recipe.crop_ratio, antialias=True
            ),
            v2.RandomHorizontalFlip(recipe.flip_p),
            v2.ColorJitter(*recipe.jitter),
            v2.RandomGrayscale(recipe.grayscale_p),
            *tail,
        ]
    )


def center_view(
    images: torch.Tensor, image_size: int, *, eval_resize: float | None = None
) -> torch.Tensor:
    """Deterministic evaluation view: ``(..., C, H, W) uint8`` -> ``(..., C, S, S) uint8``.

    Images already ``image_size`` pixels square are returned as they are; larger or smaller ones
    are resized (shorter side to ``round(image_size * 70 / 64)``) and centre-cropped, the test
    transform of the reference linear evaluation. ``eval_resize`` replaces the 70 / 64 (default:
    the STL-10 recipe's, which every image family shares).
    """
    if images.shape[-2:] == (image_size, image_size):
        return images
    from torchvision.transforms import v2

    if eval_resize is None:
        eval_resize = VIEW_RECIPES["stl"].eval_resize
    images = v2.functional.resize(images, [round(image_size * eval_resize)], antialias=True)
    return v2.functional.center_crop(images, [image_size, image_size])


def probe_transforms(
    dataset_name: str, image_size: int, mean: Sequence[float], std: Sequence[float]
) -> tuple[v2.Compose, v2.Compose]:
    """Per-image ``(train, test)`` transforms of the paper's linear evaluation.

    Train: RandomResizedCrop(S) at the recipe's ``probe_crop_scale`` (CIFAR and folders 0.2-1,
    STL-10 0.08-1, as in the authors' linear evaluation code) and a horizontal flip (digits: the
    view affine without noise, no flip); test: `center_view`. Both take ``uint8
    (C, H, W)`` and return normalised ``float32 (C, S, S)``; for ``toy`` both are the identity.
    """
    from torchvision.transforms import v2

    recipe = view_recipe(dataset_name)
    if recipe.kind == "sphere":
        return v2.Compose([nn.Identity()]), v2.Compose([nn.Identity()])
    tail = [v2.ToDtype(torch.float32, scale=True), v2.Normalize(list(mean), list(std))]
    if recipe.kind == "affine":
        train = [_random_affine(recipe)]
    else:
        train = [
            v2.RandomResizedCrop(
                image_size, scale=recipe.probe_crop_scale, ratio=recipe.crop_ratio, antialias=True
            ),
            v2.RandomHorizontalFlip(recipe.flip_p),
        ]
    test = _CenterView(image_size, recipe.eval_resize)
    return v2.Compose([*train, *tail]), v2.Compose([test, *tail])


class _CenterView(nn.Module):
    """`center_view` as a (picklable) transform for one ``(C, H, W) uint8`` image."""

    def __init__(self, image_size: int, eval_resize: float | None = None):
        super().__init__()
        self.image_size, self.eval_resize = image_size, eval_resize

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return center_view(image, self.image_size, eval_resize=self.eval_resize)


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
