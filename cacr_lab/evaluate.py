"""Evaluating a representation: features, kNN, linear probes, and geometry diagnostics.

Read top to bottom:

1. `extract_features` / `embed`: run a frozen encoder over in-memory data (no augmentation).
2. `knn_accuracy`: weighted kNN on cosine similarity (the cheap number logged during training);
   `knn_k_for`: the k that follows the data (``TrainConfig.knn_k = 0``).
3. `linear_probe` (fast: logistic regression on stored features) and `linear_probe_paper` (the
   reference protocol of docs/method.md §8: a linear layer trained on augmented views).
4. `per_class_accuracy`: for the imbalanced experiments of docs/method.md §9.
5. `alignment_uniformity` (Wang & Isola 2020) and `weight_stats` (how peaked the CACR weights
   pi_pos / pi_neg are) for the dashboard.

All accuracies are fractions in [0, 1].
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset

from .data import ImageData, center_view, probe_transforms
from .losses import alignment, uniformity

__all__ = [
    "PROBE_PROTOCOLS",
    "ProbeResult",
    "alignment_uniformity",
    "embed",
    "extract_features",
    "knn_accuracy",
    "knn_evaluation",
    "knn_k_for",
    "linear_probe",
    "linear_probe_paper",
    "per_class_accuracy",
    "weight_stats",
]

PROBE_PROTOCOLS = ("fast", "paper")


# --------------------------------------------------------------------------------------------
# Features
# --------------------------------------------------------------------------------------------


def _model_device(model: nn.Module) -> torch.device:
    param = next(model.parameters(), None)
    return param.device if param is not None else torch.device("cpu")


@torch.no_grad()
def _run_frozen(
    model: nn.Module,
    fn: Callable[[torch.Tensor], torch.Tensor],
    images: torch.Tensor,
    mean: Sequence[float],
    std: Sequence[float],
    batch_size: int,
    device: str | torch.device | None,
    image_size: int | None,
) -> torch.Tensor:
    """Apply ``fn`` (``model.features`` or ``model``) batch by batch in eval mode."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size!r}")
    points = images.dim() == 2 and images.is_floating_point()
    if not points and not (images.dim() == 4 and images.dtype == torch.uint8):
        raise ValueError(
            f"images must be (N, C, H, W) uint8 or (N, D) float points, got shape "
            f"{tuple(images.shape)} dtype {images.dtype}"
        )
    device = torch.device(device) if device is not None else _model_device(model)
    size = image_size or getattr(model, "input_size", None)
    if not points:
        mean_t = torch.tensor(list(mean), device=device).view(1, -1, 1, 1)
        std_t = torch.tensor(list(std), device=device).view(1, -1, 1, 1)
    was_training = model.training
    model.eval()  # BN running statistics, no dropout: a deterministic function of the input
    try:
        outputs = []
        for start in range(0, images.shape[0], batch_size):
            x = images[start : start + batch_size].to(device, non_blocking=True)
            if points:
                x = x.float()
            else:
                if size is not None:
                    x = center_view(x, size)
                x = (x.float() / 255.0 - mean_t) / std_t
            outputs.append(fn(x).float())
    finally:
        model.train(was_training)  # callers mid-training get their mode back
    if not outputs:
        raise ValueError("images is empty: nothing to extract features from")
    return torch.cat(outputs)


def extract_features(
    model: nn.Module,
    images: torch.Tensor,
    *,
    mean: Sequence[float],
    std: Sequence[float],
    batch_size: int = 512,
    device: str | torch.device | None = None,
    image_size: int | None = None,
) -> torch.Tensor:
    """Evaluation features ``model.features(x)`` of un-augmented data.

    Args:
        model: an encoder of `cacr_lab.models` (anything with ``features``).
        images: ``(N, C, H, W) uint8`` images, or ``(N, D) float`` toy points (used as they are).
        mean, std: per-channel normalisation statistics in [0, 1] units (`DataSplits.mean`).
        batch_size: images per forward pass.
        device: where to run; ``None`` = the model's device (the model itself is not moved).
        image_size: encoder input side; default ``model.input_size``. Images of another size get
            `cacr_lab.data.center_view` (resize + centre crop, e.g. STL-10's 96 px -> 64 px).

    Returns:
        ``(N, F) float32`` on ``device`` (F = ``model.feature_dim``), so that `knn_accuracy` and
        `linear_probe` run there too; ``.cpu()`` it for NumPy. The model's train/eval mode is
        restored afterwards.
    """
    return _run_frozen(model, model.features, images, mean, std, batch_size, device, image_size)


def embed(
    model: nn.Module,
    images: torch.Tensor,
    *,
    mean: Sequence[float],
    std: Sequence[float],
    batch_size: int = 512,
    device: str | torch.device | None = None,
    image_size: int | None = None,
) -> torch.Tensor:
    """Like `extract_features` but returns the L2-normalised projection ``model(x)``:
    ``(N, feat_dim) float32`` unit vectors on ``device``."""
    return _run_frozen(model, model, images, mean, std, batch_size, device, image_size)


# --------------------------------------------------------------------------------------------
# kNN
# --------------------------------------------------------------------------------------------


def _check_pairs(
    train_feats: torch.Tensor,
    train_labels: torch.Tensor,
    test_feats: torch.Tensor,
    test_labels: torch.Tensor,
) -> None:
    if (
        train_feats.dim() != 2
        or test_feats.dim() != 2
        or train_feats.shape[1] != test_feats.shape[1]
    ):
        raise ValueError(
            f"features must be (N, F) with the same F, got {tuple(train_feats.shape)}"
            f" and {tuple(test_feats.shape)}"
        )
    for feats, labels, which in (
        (train_feats, train_labels, "train"),
        (test_feats, test_labels, "test"),
    ):
        if labels.shape != (feats.shape[0],):
            raise ValueError(
                f"{which}_labels must have shape ({feats.shape[0]},), got {tuple(labels.shape)}"
            )
    if train_feats.shape[0] == 0 or test_feats.shape[0] == 0:
        raise ValueError(
            f"need at least one train and one test sample, got "
            f"{train_feats.shape[0]} and {test_feats.shape[0]}"
        )


def _num_classes(num_classes: int | None, *labels: torch.Tensor) -> int:
    needed = max(int(lab.max()) for lab in labels) + 1
    if num_classes is None:
        return needed
    if num_classes < needed:
        raise ValueError(f"num_classes={num_classes} but labels go up to {needed - 1}")
    return num_classes


KNN_K_MAX = 200  # InstDisc's k, the convention of CIFAR kNN numbers


def knn_k_for(requested: int, bank_labels: torch.Tensor) -> int:
    """The kNN k of an evaluation: ``requested`` if > 0, else the rule that follows the data.

    Rule (``requested == 0``, ``TrainConfig.knn_k``'s default): ``k = min(200, m // 2)``, at
    least 1, where ``m`` is the smallest class count in the kNN bank (``bank_labels: (N,) int64``,
    the labelled train split; absent classes are skipped). Why: a weighted kNN whose k reaches
    the size of a class must take neighbours from other classes even when every class is a
    perfect cluster, so k = 200 over ~135 digits per class smooths across classes; half the
    smallest class keeps a class's own images the majority of the votes it can get, and 200 is
    the CIFAR convention (InstDisc): 5,000 (or 4,500 after a held-out split) images per class
    give k = 200 on CIFAR-10, as published kNN numbers use. The bank is the balanced train split
    whatever the imbalance profile and the method, so every run of a study gets the same k.

    >>> knn_k_for(0, torch.arange(10).repeat_interleave(135)), knn_k_for(0, torch.arange(10).repeat(5000))
    (67, 200)
    >>> knn_k_for(20, torch.arange(10).repeat(5000))
    20
    """  # noqa: E501
    if isinstance(requested, bool) or int(requested) != requested or requested < 0:
        raise ValueError(f"knn k must be an integer >= 0 (0: follow the data); got {requested!r}")
    if requested > 0:
        return int(requested)
    counts = torch.bincount(bank_labels[bank_labels >= 0].long())
    counts = counts[counts > 0]
    smallest = int(counts.min()) if counts.numel() else 0
    return max(1, min(KNN_K_MAX, smallest // 2))


@torch.no_grad()
def knn_accuracy(
    train_feats: torch.Tensor,
    train_labels: torch.Tensor,
    test_feats: torch.Tensor,
    test_labels: torch.Tensor,
    *,
    k: int = 200,
    temperature: float = 0.07,
    num_classes: int | None = None,
    return_predictions: bool = False,
) -> float | tuple[float, torch.Tensor]:
    """Weighted kNN accuracy on cosine similarity (InstDisc, Wu et al. 2018).

    Each test point takes its k most similar training points (features L2-normalised here), each
    voting for its class with weight ``exp(similarity / temperature)``; the heaviest class wins.

    Args:
        train_feats: ``(N, F)``; train_labels: ``(N,) int64``.
        test_feats: ``(M, F)``; test_labels: ``(M,) int64``.
        k: neighbours (clipped to N). temperature: > 0, divides the similarity. The defaults
            are InstDisc's (k = 200, temperature 0.07), the convention of CIFAR kNN numbers.
        num_classes: default ``max label + 1``.
        return_predictions: also return the ``(M,) int64`` predicted classes.

    The test set is processed in chunks so that the similarity block stays near 16M entries
    (64 MB) whatever M is. Runs on ``train_feats``' device.

    Returns:
        accuracy in [0, 1], or ``(accuracy, predictions)``.
    """
    _check_pairs(train_feats, train_labels, test_feats, test_labels)
    if int(k) != k or k < 1:
        raise ValueError(f"k must be a positive integer, got {k!r}")
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature!r}")
    n_classes = _num_classes(num_classes, train_labels, test_labels)
    device = train_feats.device
    train = F.normalize(train_feats.float(), dim=1)
    train_labels = train_labels.to(device)
    k = min(int(k), train.shape[0])
    chunk = max(1, 2**24 // train.shape[0])
    predictions = []
    for start in range(0, test_feats.shape[0], chunk):
        query = F.normalize(test_feats[start : start + chunk].to(device).float(), dim=1)
        sims, idx = (query @ train.T).topk(k, dim=1)  # (c, k) nearest neighbours
        votes = torch.zeros(query.shape[0], n_classes, device=device)
        votes.scatter_add_(1, train_labels[idx], torch.exp(sims / temperature))
        predictions.append(votes.argmax(dim=1))
    preds = torch.cat(predictions).cpu()
    accuracy = float((preds == test_labels.cpu()).float().mean())
    return (accuracy, preds) if return_predictions else accuracy


def knn_evaluation(
    train_feats: torch.Tensor,
    train_labels: torch.Tensor,
    test_feats: torch.Tensor,
    test_labels: torch.Tensor,
    *,
    k: int = 0,
    temperature: float = 0.07,
    num_classes: int | None = None,
) -> dict[str, Any]:
    """The kNN part of an evaluation record: ``knn_acc``, the ``knn_k`` used (``k = 0``: the
    rule of `knn_k_for`, which follows the data) and ``knn_per_class_acc`` (list, index = class).

    Shapes as `knn_accuracy`. The trainer's eval records and `cacr-lab eval` both use it, so the
    two report the same number for the same features.
    """
    k = knn_k_for(k, train_labels)
    n_classes = _num_classes(num_classes, train_labels, test_labels)
    acc, preds = knn_accuracy(
        train_feats,
        train_labels,
        test_feats,
        test_labels,
        k=k,
        temperature=temperature,
        num_classes=n_classes,
        return_predictions=True,
    )
    return {
        "knn_acc": float(acc),
        "knn_k": k,
        "knn_per_class_acc": per_class_accuracy(preds, test_labels, n_classes),
    }


# --------------------------------------------------------------------------------------------
# Linear probes
# --------------------------------------------------------------------------------------------


@dataclass
class ProbeResult:
    """Outcome of a linear probe.

    Attributes:
        accuracy: test accuracy in [0, 1].
        per_class: accuracy of each class (`per_class_accuracy`: NaN for a class with no test
            sample), length = number of classes.
        predictions: ``(M,) int64`` predicted test classes.
    """

    accuracy: float
    per_class: list[float]
    predictions: torch.Tensor


def per_class_accuracy(
    predictions: torch.Tensor, labels: torch.Tensor, num_classes: int
) -> list[float]:
    """Accuracy within each true class; ``predictions, labels: (M,) int64``.

    The list has ``num_classes`` entries, index = class, so it lines up with the class names; a
    class absent from ``labels`` gets NaN (use ``math.isnan`` or ``numpy.nanmean`` to skip it).

    >>> per_class_accuracy(torch.tensor([0, 1, 1, 2]), torch.tensor([0, 1, 2, 2]), 4)
    [1.0, 1.0, 0.5, nan]
    """
    if predictions.shape != labels.shape:
        raise ValueError(
            f"predictions {tuple(predictions.shape)} and labels "
            f"{tuple(labels.shape)} must have the same shape"
        )
    labels, predictions = labels.cpu().long(), predictions.cpu().long()
    totals = torch.bincount(labels, minlength=num_classes).double()
    hits = torch.bincount(labels[predictions == labels], minlength=num_classes).double()
    if totals.numel() > num_classes:
        raise ValueError(f"labels go up to {totals.numel() - 1}, beyond num_classes={num_classes}")
    return [float(h / t) if t > 0 else math.nan for h, t in zip(hits, totals, strict=True)]


def linear_probe(
    train_feats: torch.Tensor,
    train_labels: torch.Tensor,
    test_feats: torch.Tensor,
    test_labels: torch.Tensor,
    *,
    protocol: str = "fast",
    num_classes: int | None = None,
    weight_decay: float = 1e-4,
    max_iter: int = 200,
) -> ProbeResult:
    """Fast linear probe: multinomial logistic regression on stored features.

    Features are standardised with the training mean and std, then a linear layer (weights and
    bias, zero start) is fitted with full-batch L-BFGS (strong-Wolfe line search) on the mean
    cross-entropy plus ``weight_decay / 2 * ||W||^2``. Why not scikit-learn: the same convex
    objective, but torch runs in float32 on the features' device (GPU when they are there), and
    a full batch with a zero start is deterministic. 50,000 x 4096 features take tens of seconds
    on a CPU, about a second on a GPU.

    Args:
        train_feats: ``(N, F)``; train_labels: ``(N,) int64``.
        test_feats: ``(M, F)``; test_labels: ``(M,) int64``.
        protocol: ``"fast"`` only; the paper's protocol needs the encoder and augmented images,
            see `linear_probe_paper`.
        num_classes: default ``max label + 1``.
        weight_decay: L2 penalty on the weights (not the bias).
        max_iter: L-BFGS iterations.
    """
    if protocol != "fast":
        if protocol == "paper":
            raise ValueError(
                "protocol='paper' trains on augmented images: call "
                "linear_probe_paper(model, train, test, ...) instead"
            )
        raise ValueError(f"unknown protocol {protocol!r}; valid: {PROBE_PROTOCOLS}")
    _check_pairs(train_feats, train_labels, test_feats, test_labels)
    if weight_decay < 0:
        raise ValueError(f"weight_decay must be >= 0, got {weight_decay!r}")
    if int(max_iter) != max_iter or max_iter < 1:
        raise ValueError(f"max_iter must be a positive integer, got {max_iter!r}")
    n_classes = _num_classes(num_classes, train_labels, test_labels)
    device = train_feats.device
    x = train_feats.float()
    mu, sigma = x.mean(dim=0), x.std(dim=0, correction=0).clamp_min(1e-6)  # finite for constants
    x = (x - mu) / sigma
    y = train_labels.to(device)

    weight = torch.zeros(x.shape[1], n_classes, device=device, requires_grad=True)
    bias = torch.zeros(n_classes, device=device, requires_grad=True)
    optimiser = torch.optim.LBFGS(
        [weight, bias],
        lr=1.0,
        max_iter=int(max_iter),
        history_size=20,
        line_search_fn="strong_wolfe",
    )

    def closure() -> torch.Tensor:
        optimiser.zero_grad()
        loss = F.cross_entropy(x @ weight + bias, y) + 0.5 * weight_decay * weight.square().sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        optimiser.step(closure)
    with torch.no_grad():
        test = (test_feats.to(device).float() - mu) / sigma
        preds = (test @ weight + bias).argmax(dim=1).cpu()
    labels = test_labels.cpu()
    return ProbeResult(
        float((preds == labels).float().mean()), per_class_accuracy(preds, labels, n_classes), preds
    )


class _TransformedImages(Dataset):
    """``(transform(images[i]), labels[i])`` pairs for a DataLoader."""

    def __init__(self, data: ImageData, transform: Callable[[torch.Tensor], torch.Tensor]):
        self.data, self.transform = data, transform

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self.transform(self.data.images[index]), int(self.data.labels[index])


def linear_probe_paper(
    model: nn.Module,
    train: ImageData,
    test: ImageData,
    *,
    train_transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
    test_transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    epochs: int = 100,
    batch_size: int = 128,
    lr: float = 1e-3,
    betas: tuple[float, float] = (0.5, 0.999),
    milestones: Sequence[int] | None = None,
    gamma: float = 0.2,
    device: str | torch.device | None = None,
    seed: int = 0,
    num_workers: int = 0,
) -> ProbeResult:
    """The reference linear evaluation (docs/method.md §8).

    The encoder is frozen (eval mode, no gradients); one ``Linear(feature_dim, C)`` layer is
    trained on ``model.features`` (fc7 for SmallAlexNet) of freshly augmented training images
    every epoch with Adam(lr 1e-3, betas (0.5, 0.999)), batch 128, for ``epochs`` epochs, the
    rate multiplied by ``gamma`` = 0.2 at each milestone (default 60 % and 80 % of ``epochs``:
    epochs 60 and 80 of 100). The *final* test accuracy is reported (the reference code reports
    the best over epochs, which selects on the test set).

    Args:
        model: encoder with ``features`` and ``feature_dim``; left on its device, in its mode.
        train, test: balanced `ImageData` (``images: (N, C, H, W) uint8``).
        train_transform, test_transform: per-image ``uint8 (C, H, W)`` -> normalised float
            transforms. ``None`` takes the paper's pair from `cacr_lab.data.probe_transforms`
            (for ``train.name``, at ``model.input_size`` or the stored size), which then needs
            ``mean`` and ``std`` (`DataSplits.mean` / ``.std``).
        device: ``None`` = the model's device.
        seed: seeds the shuffling, the augmentations and the layer's initialisation (the global
            RNG state is restored afterwards).
        num_workers: DataLoader worker processes for the augmentations.
    """
    if int(epochs) != epochs or epochs < 1:
        raise ValueError(f"epochs must be a positive integer, got {epochs!r}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size!r}")
    if milestones is None:
        milestones = (round(0.6 * epochs), round(0.8 * epochs))
    if train_transform is None or test_transform is None:
        if mean is None or std is None:
            raise ValueError(
                "linear_probe_paper builds the default transforms from mean and "
                "std: pass mean=splits.mean, std=splits.std, or both transforms"
            )
        size = getattr(model, "input_size", None) or int(train.images.shape[-1])
        default_train, default_test = probe_transforms(train.name, size, mean, std)
        train_transform = default_train if train_transform is None else train_transform
        test_transform = default_test if test_transform is None else test_transform
    device = torch.device(device) if device is not None else _model_device(model)
    n_classes = max(train.num_classes, test.num_classes)
    was_training = model.training
    model.eval()

    def batches(data: ImageData, transform, shuffle: bool, gen: torch.Generator | None):
        return DataLoader(
            _TransformedImages(data, transform),
            batch_size=batch_size,
            shuffle=shuffle,
            generator=gen,
            num_workers=num_workers,
            pin_memory=device.type == "cuda",
        )

    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            gen = torch.Generator().manual_seed(seed)
            head = nn.Linear(model.feature_dim, n_classes).to(device)
            optimiser = torch.optim.Adam(head.parameters(), lr=lr, betas=betas)
            schedule = torch.optim.lr_scheduler.MultiStepLR(optimiser, list(milestones), gamma)
            for _ in range(int(epochs)):
                for images, labels in batches(train, train_transform, True, gen):
                    with torch.no_grad():
                        feats = model.features(images.to(device, non_blocking=True))
                    loss = F.cross_entropy(head(feats), labels.to(device))
                    optimiser.zero_grad(set_to_none=True)
                    loss.backward()
                    optimiser.step()
                schedule.step()
            preds = []
            with torch.no_grad():
                for images, _ in batches(test, test_transform, False, None):
                    preds.append(head(model.features(images.to(device))).argmax(dim=1).cpu())
    finally:
        model.train(was_training)
    predictions = torch.cat(preds)
    labels = test.labels.cpu()
    return ProbeResult(
        float((predictions == labels).float().mean()),
        per_class_accuracy(predictions, labels, n_classes),
        predictions,
    )


# --------------------------------------------------------------------------------------------
# Geometry diagnostics
# --------------------------------------------------------------------------------------------


@torch.no_grad()
def alignment_uniformity(
    z1: torch.Tensor, z2: torch.Tensor, *, align_alpha: float = 2.0, unif_t: float = 2.0
) -> dict[str, float]:
    """Alignment and uniformity of Wang & Isola (ICML 2020, arXiv 2005.10242).

    Args:
        z1, z2: ``(N, D)`` L2-normalised embeddings of two views of the same N held-out images
            (row i of z1 and of z2 are a positive pair), N >= 2.
        align_alpha: exponent alpha of the alignment.
        unif_t: t of the Gaussian potential in the uniformity.

    Returns:
        ``{"alignment": mean_i ||z1_i - z2_i||^alpha,
        "uniformity": mean over z1 and z2 of log mean_{i<j} exp(-t ||z_i - z_j||^2)}``
        (lower is better for both; uniformity is at least -4t, reached only in the limit).
    """
    if z1.dim() != 2 or z1.shape != z2.shape:
        raise ValueError(
            f"z1 and z2 must both be (N, D) with the same shape, got "
            f"{tuple(z1.shape)} and {tuple(z2.shape)}"
        )
    if z1.shape[0] < 2:
        raise ValueError(f"need at least 2 samples for uniformity, got N={z1.shape[0]}")
    z1, z2 = z1.double(), z2.double()  # pairwise sums over N^2 terms: keep the precision
    # The losses' metrics are the one definition (uniformity: chunked over rows, for large N).
    align = alignment(z1, z2, align_alpha)
    unif = (float(uniformity(z1, unif_t)) + float(uniformity(z2, unif_t))) / 2
    return {"alignment": float(align), "uniformity": unif}


@torch.no_grad()
def weight_stats(weights: torch.Tensor, d2: torch.Tensor) -> dict[str, float]:
    """How peaked a set of conditional weights is (CACR's pi_pos / pi_neg), averaged over rows.

    Args:
        weights: ``(..., N)``, each row a distribution (non-negative, summing to 1).
        d2: ``(..., N)`` squared distances the weights were computed from.

    Returns (all floats):
        ``entropy``: mean of -sum w log w (nats); ``entropy_norm``: entropy / log N (1 for
        uniform weights; 1 by convention when N = 1); ``ess``: mean effective sample size
        1 / sum w^2 (N for uniform weights, 1 for one-hot); ``ess_frac``: ess / N;
        ``max_weight``: mean of the largest weight; ``wd_corr``: mean Pearson
        correlation between w and d2 within a row (positive for pi_pos, negative for pi_neg),
        over rows where both vary; 0.0 if no row does.

    >>> w = torch.full((2, 4), 0.25)
    >>> weight_stats(w, torch.rand(2, 4))["ess"]
    4.0
    """
    if weights.shape != d2.shape or weights.dim() < 1 or weights.shape[-1] < 1:
        raise ValueError(
            f"weights and d2 must have the same shape (..., N) with N >= 1, got "
            f"{tuple(weights.shape)} and {tuple(d2.shape)}"
        )
    n = weights.shape[-1]
    w = weights.reshape(-1, n).double()
    d = d2.reshape(-1, n).double()
    entropy = -torch.special.xlogy(w, w).sum(dim=1)  # 0 log 0 = 0
    ess = 1.0 / w.square().sum(dim=1)
    wc, dc = w - w.mean(dim=1, keepdim=True), d - d.mean(dim=1, keepdim=True)
    denom = wc.norm(dim=1) * dc.norm(dim=1)
    # Rows where w or d2 is constant (or equal up to round-off) have no defined correlation.
    scale = w.abs().amax(dim=1) * d.abs().amax(dim=1) * n
    varies = denom > 1e-9 * scale.clamp_min(1e-300)
    corr = (wc * dc).sum(dim=1)[varies] / denom[varies]
    mean_entropy = float(entropy.mean())
    return {
        "entropy": mean_entropy,
        "entropy_norm": mean_entropy / math.log(n) if n > 1 else 1.0,
        "ess": float(ess.mean()),
        "ess_frac": float(ess.mean()) / n,
        "max_weight": float(w.amax(dim=1).mean()),
        "wd_corr": float(corr.mean()) if corr.numel() else 0.0,
    }
