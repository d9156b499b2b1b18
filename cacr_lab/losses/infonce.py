"""The InfoNCE family: NT-Xent (SimCLR), CMC-style multi-view, HN-CL and DCL.

All of them score, for every view pair v < w, each of its 2B queries against its positive (the
other view of the same image) and its 2B - 2 negatives (both views of every other image); with
V > 2 views they average over the V(V-1)/2 pairs. Their ``temperature`` *divides* the cosine
similarity. Shared logits helpers first (``_pair_logits``, ``_pair_similarities``,
``_negatives``), then ``info_nce_loss``, then ``_debiased_hard``, the core of
``hard_negative_loss`` and ``debiased_loss``.
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
    _check_tau_plus,
    _check_views,
    _no_autocast,
    _off_diagonal,
    _pair_views,
)


def _pair_logits(z: Tensor, temperature: float) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """For every view pair (v, w), the NT-Xent logits of its 2B queries.

    Returns ``pos`` (P, 2B): the positive's logit s+/T; ``neg`` (P, 2B, 2B-2): the logits of the
    2B - 2 negatives (both views, every other image); ``neg_d2`` (P, 2B, 2B-2) their squared
    distances; and ``n_neg`` = 2B - 2.
    """
    B = z.shape[1]
    sim, _, _ = _pair_similarities(z)
    neg_sim, pos_sim = _negatives(sim, B)
    return pos_sim / temperature, neg_sim / temperature, 2.0 - 2.0 * neg_sim, 2 * B - 2


def _pair_similarities(z: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """(sim, zv, zw): for every view pair, the (P, 2B, 2B) cosine similarities of its 2B rows
    (rows 0..B-1 view v, B..2B-1 view w), and the pairs' views zv, zw (P, B, D)."""
    zv, zw = _pair_views(z)
    zz = torch.cat([zv, zw], dim=1)  # (P, 2B, D)
    return torch.bmm(zz, zz.transpose(1, 2)), zv, zw


def _negatives(sim: Tensor, B: int) -> tuple[Tensor, Tensor]:
    """(P, 2B, 2B) pair scores -> the negatives' (P, 2B, 2B-2), column order kept, and the
    positives' (P, 2B). Row r's positive is the other view of the same image, (r + B) mod 2B.

    In the 2 x 2 blocks of B x B (view v / view w), row i of either half drops column i of each
    block (itself, its partner): the off-diagonals of two blocks side by side, no gather.
    """
    vv, vw, wv, ww = sim[:, :B, :B], sim[:, :B, B:], sim[:, B:, :B], sim[:, B:, B:]
    neg = torch.cat(
        [
            torch.cat([_off_diagonal(vv), _off_diagonal(vw)], dim=-1),
            torch.cat([_off_diagonal(wv), _off_diagonal(ww)], dim=-1),
        ],
        dim=1,
    )
    pos = torch.cat([vw.diagonal(dim1=-2, dim2=-1), wv.diagonal(dim1=-2, dim2=-1)], dim=-1)
    return neg, pos


def info_nce_loss(
    views: Tensor | Sequence[Tensor], temperature: float = 0.5, *, check_inputs: bool = True
) -> LossOutput:
    r"""InfoNCE / NT-Xent (SimCLR; Chen et al., "A Simple Framework for Contrastive Learning of
    Visual Representations", ICML 2020, arXiv:2002.05709), multi-view as in CMC (Tian et al.,
    arXiv:1906.05849).

    For V = 2 this is the standard NT-Xent: each of the 2B queries has one positive (its other
    view) and 2B - 2 negatives (both views of every other image), with s = cosine similarity:

        loss = mean_q  -s+/T + log( exp(s+/T) + sum_j exp(s_j/T) )

    For V > 2: the NT-Xent of every view pair (v < w), averaged over the V(V-1)/2 pairs.
    ``temperature`` T *divides* the similarity. Parts: ``attraction`` = mean -s+/T and
    ``repulsion`` = the mean log-sum-exp term (loss = attraction + repulsion). The implicit
    weights over negatives, softmax_j(s_j / T) = softmax_j(-d2_j / (2T)), are returned as
    ``neg_weights`` (P, 2B, 2B-2) with ``neg_d2``, to set beside CACR's pi_neg.

    Args:
        views: (V, B, D), or V tensors (B, D); L2-normalised along D.
        temperature: T > 0. SimCLR: 0.5 (CIFAR); 0.1-0.2 (ImageNet).

    >>> z = torch.nn.functional.normalize(torch.randn(2, 4, 8), dim=-1)
    >>> tuple(info_nce_loss(z).neg_weights.shape)
    (1, 8, 6)
    """
    _check_positive(temperature=temperature)
    z = _check_views(views, check_inputs)
    V, B, _ = z.shape
    with _no_autocast(z.device):
        sim, zv, zw = _pair_similarities(z)
        logits = sim.div_(temperature)  # (P, 2B, 2B)
        # The log-sum-exp runs over every j != q (the positive and the 2B - 2 negatives): mask
        # the query itself instead of gathering the negatives (a gather's backward is slow).
        logits.diagonal(dim1=-2, dim2=-1).fill_(float("-inf"))
        s_pos = (zv * zw).sum(-1) / temperature  # (P, B): s+/T, the same both ways
        pos = torch.cat([s_pos, s_pos], dim=-1)  # (P, 2B)
        attraction = -pos.mean()
        repulsion = torch.logsumexp(logits, dim=-1).mean()
        with torch.no_grad():  # the implicit weights, for figures only
            neg, _ = _negatives(logits.detach(), B)
            neg_w = torch.softmax(neg, dim=-1)
            neg_d2 = 2.0 - 2.0 * temperature * neg
    return LossOutput(
        loss=attraction + repulsion,
        attraction=attraction,
        repulsion=repulsion,
        neg_weights=neg_w.detach(),
        neg_d2=neg_d2.detach(),
    )


def _debiased_hard(z: Tensor, temperature: float, tau_plus: float, beta: float) -> LossOutput:
    """Shared core of HN-CL (beta > 0) and DCL (beta = 0), computed in log space.

    With pos = exp(s+/T), neg_j = exp(s_j/T), N = 2B - 2 and importance weights imp_j = neg_j^beta:

        Ng   = max( (-tau_plus * N * pos + N * sum_j imp_j neg_j / sum_j imp_j) / (1 - tau_plus),
                    N * exp(-1/T) )
        loss = mean_q  -log( pos / (pos + Ng) )

    Every exponential is taken relative to the row's largest logit so small T cannot overflow.
    """
    pos, neg, neg_d2, n_neg = _pair_logits(z, temperature)
    imp_logits = beta * neg  # log imp_j
    # N * sum_j q_j neg_j, in log space: log N + logsumexp(log q_j + neg_j).
    log_reweighted = math.log(n_neg) + torch.logsumexp(torch.log_softmax(imp_logits, -1) + neg, -1)
    m = torch.maximum(pos, log_reweighted).detach()  # (P, 2B) shift
    numerator = (torch.exp(log_reweighted - m) - tau_plus * n_neg * torch.exp(pos - m)) / (
        1 - tau_plus
    )
    log_floor = math.log(n_neg) - 1.0 / temperature
    # The clamp of the reference (Ng >= N e^{-1/T}), applied in log space.
    log_ng = torch.maximum(torch.log(numerator.clamp_min(1e-30)) + m, torch.full_like(m, log_floor))
    lse = torch.logaddexp(pos, log_ng)
    attraction = -pos.mean()
    repulsion = lse.mean()
    return LossOutput(
        loss=attraction + repulsion,
        attraction=attraction,
        repulsion=repulsion,
        # Effective weight of negative j in Ng: imp_j * neg_j / sum = softmax((1 + beta) s_j / T).
        neg_weights=torch.softmax((1.0 + beta) * neg, dim=-1).detach(),
        neg_d2=neg_d2.detach(),
    )


def hard_negative_loss(
    views: Tensor | Sequence[Tensor],
    temperature: float = 0.5,
    beta: float = 1.0,
    tau_plus: float = 0.1,
    *,
    check_inputs: bool = True,
) -> LossOutput:
    r"""HN-CL: hard negative sampling (Robinson et al., "Contrastive Learning with Hard Negative
    Samples", ICLR 2021, arXiv:2010.04592).

    NT-Xent whose negative term is importance-reweighted towards hard negatives
    (imp_j = exp(beta * s_j / T)) and debiased with the class prior tau_plus:

        Ng = max( (-tau_plus N pos + N sum_j imp_j neg_j / sum_j imp_j) / (1 - tau_plus),
                  N e^{-1/T} )
        loss = mean_q -log( pos / (pos + Ng) ),   pos = e^{s+/T}, neg_j = e^{s_j/T}, N = 2B - 2

    ``temperature`` divides the similarity. Multi-view: averaged over view pairs. ``neg_weights``
    are the effective weights imp_j neg_j / sum (P, 2B, 2B-2).

    Args:
        views: (V, B, D), or V tensors (B, D); L2-normalised along D.
        temperature: T > 0. Paper: 0.5.
        beta: concentration on hard negatives (>= 0; 0 gives DCL). Paper: 1.0 on CIFAR-10.
        tau_plus: class prior in [0, 1). Paper: 0.1.
    """
    _check_positive(temperature=temperature)
    _check_nonnegative(beta=beta)
    _check_tau_plus(tau_plus)
    z = _check_views(views, check_inputs)
    with _no_autocast(z.device):
        return _debiased_hard(z, temperature, tau_plus, beta)


def debiased_loss(
    views: Tensor | Sequence[Tensor],
    temperature: float = 0.5,
    tau_plus: float = 0.1,
    *,
    check_inputs: bool = True,
) -> LossOutput:
    r"""DCL: debiased contrastive loss (Chuang et al., "Debiased Contrastive Learning",
    NeurIPS 2020, arXiv:2007.00224) -- not the *decoupled* loss some libraries call DCL.

        Ng = max( (-tau_plus N pos + sum_j neg_j) / (1 - tau_plus), N e^{-1/T} )
        loss = mean_q -log( pos / (pos + Ng) ),   pos = e^{s+/T}, neg_j = e^{s_j/T}, N = 2B - 2

    ``temperature`` divides the similarity. Multi-view: averaged over view pairs.

    Args:
        views: (V, B, D), or V tensors (B, D); L2-normalised along D.
        temperature: T > 0. Paper: 0.5.
        tau_plus: class prior in [0, 1). Paper: 0.1.
    """
    _check_positive(temperature=temperature)
    _check_tau_plus(tau_plus)
    z = _check_views(views, check_inputs)
    with _no_autocast(z.device):
        return _debiased_hard(z, temperature, tau_plus, 0.0)
