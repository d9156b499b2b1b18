"""Class-imbalanced pre-training sets (docs/method.md §9).

`imbalance_indices` picks a seeded class-imbalanced subset of a label vector (profiles in
`IMBALANCE_PROFILES`), `make_imbalanced` applies it to an `ImageData`, and `class_counts` counts
the samples per class (the trainer logs it; the notebooks plot it). Reads only `datasets`
(`ImageData` and its per-class index helper).
"""

from __future__ import annotations

import math

import torch

from .datasets import UNLABELED, ImageData, _indices_by_class

__all__ = ["IMBALANCE_PROFILES", "class_counts", "imbalance_indices", "make_imbalanced"]

IMBALANCE_PROFILES = ("none", "linear", "exponential")


def class_counts(labels: torch.Tensor, num_classes: int) -> list[int]:
    """Number of samples per class; ``labels: (N,) int64`` in ``[0, num_classes)``, or
    `UNLABELED` (-1) for an image without a class, which no class counts (STL-10's pre-training
    set: the counts sum to its 5,000 labelled images, not to its 105,000).

    >>> class_counts(torch.tensor([0, 2, 2, -1]), 4)
    [1, 0, 2, 0]
    """
    labels = labels[labels != UNLABELED]
    if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= num_classes):
        raise ValueError(
            f"labels must lie in [0, {num_classes}) (or be {UNLABELED}, unlabeled), got range "
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
    """Sorted indices of a class-imbalanced subset (docs/method.md §9).

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

    A profile needs a class for every image: labels with unlabeled images (`UNLABELED`, e.g.
    STL-10's train+unlabeled pre-training set) are refused with a ValueError, since a per-class
    profile says nothing about images without a class (no profile keeps everything, as always).

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
    n_unlabeled = int((labels == UNLABELED).sum())
    if n_unlabeled:
        raise ValueError(
            f"imbalance profile {profile!r} needs a class for every image, but {n_unlabeled} of "
            f"{len(labels)} are unlabeled (label {UNLABELED}, e.g. STL-10's train+unlabeled "
            "pre-training set): a class-imbalanced subset is not defined for them; use a "
            "labelled dataset (cifar10, cifar100, folder:PATH) or no profile"
        )
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
