"""Who is who in a snapshot, and how much of pi_neg falls on the query's own class.

The trainer's evaluation computes the loss on a fixed held-out probe batch (B images of the
test split, V augmented views each). This module turns that loss output into

- :func:`fn_share_record`: the eval record's false-negative shares (docs/method.md §8.1) --
  the share of each query's negative-weight mass on negatives of its own class, averaged over
  the queries, for the run's own weights (``fn_share``), for InfoNCE's implicit weights over
  the same negatives (``fn_share_infonce``) and for uniform weights (``fn_share_uniform``,
  the mean of (n_c - 1) / (B - 1));
- :func:`snapshot_arrays`: the snapshot's weight arrays of Q queries and, new in snapshot
  version 2, who their positives and negatives are (held-out indices, labels) with the pixels
  to draw them (:mod:`cacr_lab.runs.format` is the spec).

Where a query's negatives are: every loss lays its weights out as rows of queries and columns
of negatives (:func:`query_rows`); row r is image r mod B of the probe batch, and its N
negatives are m = N / (B - 1) blocks (one per view they come from) of the other images j != i
in batch order (:func:`negative_positions`). Nothing here draws random numbers: the trainer's
generators, and so a seeded run, are untouched.

>>> w = torch.tensor([[0.7, 0.2, 0.1]])  # one query of class 0 among B = 4 images
>>> labels = torch.tensor([0, 0, 1, 1])  # its negatives: images 1, 2, 3
>>> round(float(false_negative_shares(w, labels[negative_positions(1, 3, 4)], labels[:1])), 3)
0.7
>>> round(uniform_share(labels), 4)  # (2 - 1) / (4 - 1)
0.3333
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

import torch
from torch import Tensor

from cacr_lab.data import center_view
from cacr_lab.losses import LossOutput, loss_options

# Queries whose views' pixels a snapshot stores (the "query under the lens" panel offers them):
# 16 keeps a CIFAR snapshot under ~1 MB (docs: runs/format.py).
LENS_QUERIES = 16
# Methods whose `temperature` is InfoNCE's own; the others are compared with InfoNCE's default.
INFONCE_FAMILY = ("infonce", "hard-negative", "debiased")


class Probe(Protocol):
    """What the trainer's held-out probe holds (``trainer._Probe``)."""

    views: Tensor  # (V, B, ...) normalised augmented views of the first B sample images
    snap_images: Tensor  # (n, ...) uint8 sample images, n >= B, the first B the probe batch
    snap_labels: Tensor  # (n,)
    index: Tensor  # (n,) their indices in the held-out split


def infonce_temperature(method: str, loss_kwargs: Mapping[str, Any]) -> float:
    """The T of the InfoNCE weights a run is compared with: its own for the InfoNCE family,
    else InfoNCE's default (0.5, SimCLR's)."""
    if method in INFONCE_FAMILY and "temperature" in loss_kwargs:
        return float(loss_kwargs["temperature"])
    return float(loss_options("infonce")["temperature"])


def query_rows(t: Tensor) -> Tensor:
    """A weight (or d²) tensor as (R, N) rows of queries, row r being image r mod B.

    Every loss's (..., B, N) layout flattens so (CACR (P, B, B-1), symmetric (V, B, V(B-1)),
    InfoNCE (P, 2B, 2B-2), CMC (V(V-1), B, B-1)); moco's (A, B, K, B-1), one row per query view
    k, is put k before B first, so that its first B rows are anchor 0's, query view 1's.
    """
    if t.dim() == 4:
        t = t.permute(0, 2, 1, 3)
    return t.reshape(-1, t.shape[-1])


def negative_positions(rows: int, n: int, batch: int, device: Any = None) -> Tensor:
    """(rows, n) batch positions of the negatives of query rows 0..rows-1 (:func:`query_rows`):
    row r is image i = r mod ``batch``, its ``n`` columns m = n / (batch - 1) blocks of the
    images j != i in order. ValueError for a set size that is no such layout."""
    if batch < 2 or n % (batch - 1):
        raise ValueError(f"{n} negatives per query is no multiple of B - 1 = {batch - 1}")
    i = torch.arange(rows, device=device).remainder(batch).unsqueeze(1)  # (rows, 1)
    k = torch.arange(n, device=device).remainder(batch - 1).unsqueeze(0)  # (1, n)
    return k + (k >= i).long()  # skip the query's own image


def false_negative_shares(weights: Tensor, neg_labels: Tensor, query_labels: Tensor) -> Tensor:
    """(R,) the weight mass of each query row on negatives of its own class.

    ``weights`` (R, N), each row summing to 1; ``neg_labels`` (R, N) the negatives' classes;
    ``query_labels`` (R,) the queries'.
    """
    same = neg_labels == query_labels.unsqueeze(1)
    return (weights.float() * same).sum(-1)


def uniform_share(labels: Tensor) -> float:
    """Uniform weights' false-negative share on a batch of ``labels`` (B,): the mean over its
    images of (n_c - 1) / (B - 1), n_c the images of the image's class."""
    b = labels.numel()
    counts = torch.bincount(labels.long())[labels.long()]
    return float(((counts - 1).double() / (b - 1)).mean())


def implicit_infonce_weights(neg_d2: Tensor, temperature: float) -> Tensor:
    """InfoNCE's implicit weights softmax_j(s_j / T) = softmax_j(-d²_j / (2T)) over the
    negatives of each row (s = 1 - d²/2; cacr_lab.theory.query_forces renormalises its
    per-positive softmax to the same weights)."""
    return torch.softmax(-neg_d2.float() / (2.0 * temperature), dim=-1)


def fn_share_record(out: LossOutput, probe: Probe, temperature: float) -> dict[str, float]:
    """The eval record's false-negative shares of the probe batch's loss ``out`` (the probe's
    first B labels are the batch's); ``temperature``: InfoNCE's (:func:`infonce_temperature`)."""
    labels = probe.snap_labels[: probe.views.shape[1]].to(out.loss.device)
    record = {"fn_share_uniform": uniform_share(labels)}
    if out.neg_weights is None:
        return record
    w = query_rows(out.neg_weights)
    pos = negative_positions(w.shape[0], w.shape[1], labels.numel(), w.device)
    q_labels = labels[torch.arange(w.shape[0], device=w.device) % labels.numel()]
    record["fn_share"] = float(false_negative_shares(w, labels[pos], q_labels).mean())
    if out.neg_d2 is not None:
        implicit = implicit_infonce_weights(query_rows(out.neg_d2), temperature)
        record["fn_share_infonce"] = float(
            false_negative_shares(implicit, labels[pos], q_labels).mean()
        )
    return record


def _as_uint8(views: Tensor, mean: Any, std: Any) -> Tensor:
    """Normalised views (..., C, S, S) back to uint8 pixels: (x * std + mean) * 255."""
    c = views.shape[-3]
    m = torch.tensor(mean, dtype=torch.float32).view(c, 1, 1)
    s = torch.tensor(std, dtype=torch.float32).view(c, 1, 1)
    x = views.float().cpu() * s + m
    return (x.clamp(0.0, 1.0) * 255.0).round().to(torch.uint8)


def snapshot_arrays(
    out: LossOutput, probe: Probe, q: int, temperature: float, splits: Any
) -> dict[str, Tensor]:
    """The weight arrays of the first ``q`` query rows of the probe batch's loss ``out`` and,
    where the loss weights negatives, who those queries' positives and negatives are (the
    snapshot's version 2 arrays); ``splits`` gives the image size, mean and std."""
    arrays = {}
    for key in ("pos_weights", "pos_d2", "neg_weights", "neg_d2"):
        t = getattr(out, key)
        if t is not None:
            arrays[key] = query_rows(t)[:q].float().cpu()
    if out.neg_weights is None or out.neg_d2 is None:
        return arrays
    views = probe.views
    v, b = views.shape[0], views.shape[1]
    w = arrays["neg_weights"]
    rows = torch.arange(w.shape[0])
    pos = negative_positions(len(rows), w.shape[1], b)
    index, labels = probe.index[:b].cpu(), probe.snap_labels[:b].cpu()
    arrays.update(
        query_index=index[rows % b],
        query_labels=labels[rows % b],
        pos_index=index[rows % b].unsqueeze(1).expand(-1, v - 1),
        pos_labels=labels[rows % b].unsqueeze(1).expand(-1, v - 1),
        neg_index=index[pos],
        neg_labels=labels[pos],
        infonce_weights=implicit_infonce_weights(arrays["neg_d2"], temperature),
        infonce_temperature=torch.tensor(temperature),
    )
    if views.dim() == 5:  # images, not toy points: the pixels to draw them
        n_lens = min(len(rows), b, LENS_QUERIES)
        arrays["images"] = center_view(probe.snap_images[:b].cpu(), splits.image_size)
        arrays["image_index"] = index
        lens = views[:, :n_lens].transpose(0, 1)  # (L, V, C, S, S)
        arrays["query_views"] = _as_uint8(lens, splits.mean, splits.std)
    return arrays
