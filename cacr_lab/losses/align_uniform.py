"""Alignment and uniformity (Wang & Isola, ICML 2020) and the AU-CL loss built from them.

``alignment`` and ``uniformity`` are the metrics of one pair of (N, D) embedding sets; they are
the one definition that :func:`cacr_lab.evaluate.alignment_uniformity` also uses (in float64,
over N in the thousands: hence the chunked, overflow-free ``_log_mean_exp_pairs``).
``align_uniform_loss`` is the training loss over V views, batched over view pairs and views.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from .base import (
    LossOutput,
    _check_nonnegative,
    _check_positive,
    _check_views,
    _no_autocast,
    _pair_views,
    _upcast,
)


def alignment(z1: Tensor, z2: Tensor, alpha: float = 2.0) -> Tensor:
    """Alignment metric E ||z1 - z2||^alpha over positive pairs (Wang & Isola, ICML 2020).

    Args:
        z1, z2: (N, D) L2-normalised embeddings of two views of the same N samples, N >= 1.
        alpha: exponent (> 0). Paper: 2.

    >>> z = torch.nn.functional.normalize(torch.randn(4, 3), dim=-1)
    >>> float(alignment(z, z))
    0.0
    """
    _check_positive(alpha=alpha)
    if z1.dim() != 2 or z1.shape != z2.shape:
        raise ValueError(
            f"z1 and z2 must both be (N, D) of the same shape; got {tuple(z1.shape)} "
            f"and {tuple(z2.shape)}"
        )
    if z1.shape[0] < 1:
        raise ValueError("alignment needs at least N=1 pair; got N=0")
    return (_upcast(z1) - _upcast(z2)).norm(dim=1).pow(alpha).mean()


def uniformity(z: Tensor, t: float = 2.0) -> Tensor:
    """Uniformity metric log E_{i<j} exp(-t ||z_i - z_j||^2) (Wang & Isola, ICML 2020).

    A log-mean-exp over the N(N-1)/2 pairs (``_log_mean_exp_pairs``): chunked over rows, so
    that N in the thousands fits in memory (evaluation runs it in float64 over held-out sets),
    and free of exp underflow at large t.

    Args:
        z: (N, D) L2-normalised embeddings, N >= 2 (with one sample there is no pair).
        t: kernel parameter (> 0). Paper: 2.

    >>> z = torch.tensor([[1.0, 0.0], [-1.0, 0.0]])
    >>> float(uniformity(z))  # one pair at d2 = 4: log exp(-2 * 4)
    -8.0
    """
    _check_positive(t=t)
    if z.dim() != 2:
        raise ValueError(f"z must be (N, D); got shape {tuple(z.shape)}")
    if z.shape[0] < 2:
        raise ValueError(f"uniformity needs at least N=2 samples; got N={z.shape[0]}")
    return _log_mean_exp_pairs(_upcast(z), t)


def _log_mean_exp_pairs(z: Tensor, t: float, chunk: int = 2048) -> Tensor:
    """``log mean_{i<j} exp(-t ||z_i - z_j||^2)`` for ``z: (N, D)``, N >= 2, chunked over rows.

    Each chunk of ``chunk`` rows holds its (chunk, N) squared distances and keeps the pairs
    j > i; the chunks' log-sum-exps are combined by one more log-sum-exp.
    """
    n = z.shape[0]
    parts = []
    for start in range(0, n - 1, chunk):
        rows = z[start : start + chunk]
        d2 = torch.cdist(rows, z).square()  # (c, N)
        col = torch.arange(n, device=z.device)
        upper = col.unsqueeze(0) > (start + torch.arange(rows.shape[0], device=z.device))[:, None]
        parts.append(torch.logsumexp((-t * d2)[upper], dim=0))
    return torch.logsumexp(torch.stack(parts), dim=0) - math.log(n * (n - 1) / 2)


def align_uniform_loss(
    views: Tensor | Sequence[Tensor],
    align_alpha: float = 2.0,
    unif_t: float = 2.0,
    unif_weight: float = 1.0,
    *,
    check_inputs: bool = True,
) -> LossOutput:
    r"""AU-CL: alignment + uniformity loss (Wang & Isola, "Understanding Contrastive
    Representation Learning through Alignment and Uniformity on the Hypersphere", ICML 2020,
    arXiv:2005.10242).

        alignment  = mean over view pairs v < w of  mean_i ||z_v,i - z_w,i||^align_alpha
        uniformity = mean over views v of  log mean_{i<j} exp(-unif_t ||z_v,i - z_v,j||^2)
        loss = alignment + unif_weight * uniformity

    Distances come from the Gram matrix (d2 = 2 - 2 z.z). For V = 2 and unif_weight = 1 this is
    the paper's ``align + (unif(x) + unif(y)) / 2``.

    Args:
        views: (V, B, D), or V tensors (B, D); L2-normalised along D.
        align_alpha: alignment exponent (> 0). Paper: 2.
        unif_t: uniformity kernel parameter t (> 0). Paper: 2.
        unif_weight: weight of the uniformity term (>= 0). Paper: 1.
    """
    _check_positive(align_alpha=align_alpha, unif_t=unif_t)
    _check_nonnegative(unif_weight=unif_weight)
    z = _check_views(views, check_inputs)
    V, B, _ = z.shape
    with _no_autocast(z.device):
        zv, zw = _pair_views(z)
        d2_pos = (2.0 - 2.0 * (zv * zw).sum(-1)).clamp_min(0)  # (P, B)
        # alpha = 2 needs no root; other exponents go through the distance itself.
        align = d2_pos.mean() if align_alpha == 2.0 else d2_pos.pow(align_alpha / 2).mean()
        # Uniformity of all V views from one batched Gram matmul: the metric ``uniformity``
        # per view (tests/test_losses.py checks that they agree), without its per-set loop.
        # -t d2 = 2t G - 2t; the pairs i < j and j > i hold the same numbers, so the mean over
        # i < j is the mean over all i != j: the diagonal masked, no gather of a triangle.
        g = torch.baddbmm(z.new_zeros(()), z, z.transpose(1, 2), beta=0.0, alpha=2.0 * unif_t)
        g.diagonal(dim1=-2, dim2=-1).fill_(float("-inf"))  # (V, B, B): 2t G, j != i
        lse = torch.logsumexp(g.view(V, B * B), dim=-1)  # (V,)
        unif = (lse - 2.0 * unif_t - math.log(B * (B - 1))).mean()  # log mean exp(-t d2)
    return LossOutput(
        loss=align + unif_weight * unif, alignment=align, uniformity=unif_weight * unif
    )
