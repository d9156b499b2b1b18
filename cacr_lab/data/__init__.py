"""Datasets, augmented views and imbalanced subsets for the CACR lab.

Four modules, in the order a training run needs them (each imports only the ones above it):

- `datasets`: loading. `load_dataset` returns a `DataSplits` of two in-memory `ImageData`
  (``train``, ``test``; STL-10 also ``pretrain``, train+unlabeled, whose unlabeled images carry
  the label `UNLABELED`) and the normalisation statistics; `DATASETS` names what it reads
  (digits, CIFAR-10/100, STL-10, ``folder:PATH``, toy points); `toy_sphere`, `stratified_split`.
- `views` (docs/method.md §7): `VIEW_RECIPES`, the one table of each dataset family's
  view recipe, and the per-image pipelines read from it: `view_transform` (through
  `MultiViewDataset`), `probe_transforms` and `center_view` for the linear evaluation.
- `augment`: `BatchAugment`, the same views made per sample in a few batched tensor ops on the
  batch's device (the trainer's fast path), configured by `batch_augment_for`.
- `imbalance` (docs/method.md §9): `imbalance_indices`, `make_imbalanced`,
  `class_counts`.

Every public name is re-exported here, so ``from cacr_lab.data import X`` works for all of them.
"""

from __future__ import annotations

from .augment import BatchAugment, batch_augment_for
from .datasets import (
    DATASETS,
    IMAGE_EXTENSIONS,
    UNLABELED,
    DataSplits,
    ImageData,
    load_dataset,
    stratified_split,
    toy_sphere,
)
from .imbalance import IMBALANCE_PROFILES, class_counts, imbalance_indices, make_imbalanced
from .views import (
    VIEW_RECIPES,
    MultiViewDataset,
    SphereJitter,
    ViewRecipe,
    center_view,
    probe_transforms,
    view_recipe,
    view_transform,
)

__all__ = [
    "DATASETS",
    "IMAGE_EXTENSIONS",
    "IMBALANCE_PROFILES",
    "UNLABELED",
    "VIEW_RECIPES",
    "BatchAugment",
    "DataSplits",
    "ImageData",
    "MultiViewDataset",
    "SphereJitter",
    "ViewRecipe",
    "batch_augment_for",
    "center_view",
    "class_counts",
    "imbalance_indices",
    "load_dataset",
    "make_imbalanced",
    "probe_transforms",
    "stratified_split",
    "toy_sphere",
    "view_recipe",
    "view_transform",
]
