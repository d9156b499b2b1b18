"""The InfoNCE family: NT-Xent (SimCLR), its multi-view forms, HN-CL and DCL.

With V > 2 views each loss takes one of two forms (``multiview``, `MULTIVIEW_FORMS`):

- ``"pairs"`` (default): for every unordered view pair v < w, the NT-Xent of its 2B queries,
  each against its positive (the other view of the same image) and its 2B - 2 negatives (both
  views of every other image, same-view negatives included), *averaged* over the V(V-1)/2 pairs.
  For V = 2 this is SimCLR's NT-Xent.
- ``"cmc"``: CMC's full graph (Tian et al., "Contrastive Multiview Coding", ECCV 2020,
  arXiv:1906.05849): for every ordered pair (v, w), v != w, the query from view v against the B
  samples of view w (its own positive and B - 1 cross-view negatives; no same-view negatives),
  *summed* over the V(V-1) ordered pairs. For V = 2 it is the two-direction cross-view loss,
  summed: not SimCLR's NT-Xent (no same-view negatives; twice the scale of an average).

Their ``temperature`` *divides* the cosine similarity. Shared logits helpers first
(``_pair_logits``, ``_pair_similarities``, ``_negatives`` for "pairs"; ``_all_pair_logits``,
``_reduce``, ``_cmc_negatives`` for "cmc"), then ``info_nce_loss``, then ``_debiased_hard``, the
core of ``hard_negative_loss`` and ``debiased_loss``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from .base import (
    LossOutput,
    _check_nonnegative,
    _check_positive,
    _check_tau_plus,
    _check_views,
    _first_read,
    _no_autocast,
    _off_diagonal,
    _pair_views,
    check_choice,
)

# The multi-view forms of the InfoNCE family (the ``multiview`` option): see the module docstring.
MULTIVIEW_FORMS = ("pairs", "cmc")


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


def _all_pair_logits(z: Tensor, temperature: float) -> Tensor:
    """(V, V, B, B) logits s/T of query i of view v against sample j of view w, [v, w, i, j]:
    one batched matmul of every view against every view (the v == w blocks included, since
    masking them out of the sum is cheaper than gathering the V(V-1) others)."""
    return torch.matmul(z.unsqueeze(1), z.transpose(1, 2).unsqueeze(0)).div_(temperature)


def _reduce(per_query: Tensor, multiview: str) -> Tensor:
    """The loss's reduction of per-query terms: "pairs" (P, 2B) -> mean over queries and pairs;
    "cmc" (V, V, B) -> mean over the B queries, summed over the ordered pairs v != w."""
    if multiview == "pairs":
        return per_query.mean()
    V = per_query.shape[0]
    off = 1.0 - torch.eye(V, dtype=per_query.dtype, device=per_query.device)  # (V, V)
    return (per_query.mean(-1) * off).sum()


def _cmc_negatives(neg: Tensor) -> Tensor:
    """(V, V, B, N) per-query values of every view pair -> (V(V-1), B, N) of the ordered pairs
    v != w, v-major (row v(V-1) + k: the k-th view w != v, increasing)."""
    V = neg.shape[0]
    return neg[~torch.eye(V, dtype=torch.bool, device=neg.device)]


def _lazy_pair(
    fn: Callable[..., tuple[Tensor, Tensor]], *args: object
) -> tuple[Callable, Callable]:
    """Two LossOutput fields computed together on first read (``_first_read``)."""
    both = _first_read(fn, *args)
    return (lambda: both()[0]), (lambda: both()[1])


def _cmc_softmax_weights(neg: Tensor, temperature: float, scale: float) -> tuple[Tensor, Tensor]:
    """Diagnostics of the "cmc" form from its detached (V, V, B, B-1) negative logits: the
    weights softmax_j(scale * s_j / T) and d2, each (V(V-1), B, B-1)."""
    neg = _cmc_negatives(neg)
    return torch.softmax(scale * neg, dim=-1), 2.0 - 2.0 * temperature * neg


def info_nce_loss(
    views: Tensor | Sequence[Tensor],
    temperature: float = 0.5,
    *,
    multiview: str = "pairs",
    check_inputs: bool = True,
) -> LossOutput:
    r"""InfoNCE / NT-Xent (SimCLR; Chen et al., "A Simple Framework for Contrastive Learning of
    Visual Representations", ICML 2020, arXiv:2002.05709) and CMC's multi-view form (Tian et
    al., "Contrastive Multiview Coding", ECCV 2020, arXiv:1906.05849).

    With s = cosine similarity and T = ``temperature`` (T *divides* s), ``multiview`` picks:

    - ``"pairs"`` (default): for every view pair v < w, SimCLR's NT-Xent: each of the pair's 2B
      queries has one positive (its other view) and 2B - 2 negatives (both views of every other
      image, same-view included); averaged over the V(V-1)/2 pairs. For V = 2 exactly NT-Xent:

          loss = mean_q  -s+/T + log( exp(s+/T) + sum_{j=1}^{2B-2} exp(s_j/T) )

    - ``"cmc"``: CMC's full graph: for every ordered pair (v, w), v != w, query i of view v
      against the B samples of view w (its positive and B - 1 cross-view negatives, no
      same-view ones), summed over the V(V-1) ordered pairs:

          loss = sum_{v != w} mean_i  -s(z_vi, z_wi)/T + log sum_{j=1}^{B} exp(s(z_vi, z_wj)/T)

      For V = 2 this is the two directions' cross-view InfoNCE, summed: *not* NT-Xent (no
      same-view negatives, and a sum where NT-Xent averages). The sum grows with V(V-1), and so
      does the gradient: at a fixed learning rate the step is V(V-1)/2 times the "pairs" one.

    Parts: ``attraction`` = the -s+/T terms and ``repulsion`` = the log-sum-exp terms, reduced
    alike (loss = attraction + repulsion). The implicit weights over the negatives,
    softmax_j(s_j / T) = softmax_j(-d2_j / (2T)), are returned as ``neg_weights`` with
    ``neg_d2``, to set beside CACR's pi_neg: (P, 2B, 2B-2) for "pairs"; (V(V-1), B, B-1) for
    "cmc", ordered pairs v-major (computed when first read).

    Args:
        views: (V, B, D), or V tensors (B, D); L2-normalised along D.
        temperature: T > 0. SimCLR: 0.5 (CIFAR); 0.1-0.2 (ImageNet). CMC: 0.07.
        multiview: "pairs" or "cmc" (`MULTIVIEW_FORMS`), as above.

    >>> z = torch.nn.functional.normalize(torch.randn(2, 4, 8), dim=-1)
    >>> tuple(info_nce_loss(z).neg_weights.shape)
    (1, 8, 6)
    >>> tuple(info_nce_loss(torch.cat([z, z[:1]]), multiview="cmc").neg_weights.shape)
    (6, 4, 3)
    """
    _check_positive(temperature=temperature)
    check_choice("multiview", multiview, MULTIVIEW_FORMS)
    z = _check_views(views, check_inputs)
    if multiview == "cmc":
        with _no_autocast(z.device):
            return _info_nce_cmc(z, temperature)
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


def _info_nce_cmc(z: Tensor, temperature: float) -> LossOutput:
    """``info_nce_loss(multiview="cmc")`` on checked views z: (V, B, D), in one (V, V, B, B)
    block: each row's log-sum-exp over the B samples of view w includes its positive, so no
    negative needs gathering; the v == w blocks are masked out of the sum."""
    logits = _all_pair_logits(z, temperature)  # (V, V, B, B)
    pos = logits.diagonal(dim1=-2, dim2=-1)  # (V, V, B): s(z_vi, z_wi) / T
    attraction = -_reduce(pos, "cmc")
    repulsion = _reduce(torch.logsumexp(logits, dim=-1), "cmc")
    neg_w, neg_d2 = _lazy_pair(
        _cmc_softmax_weights, _off_diagonal(logits.detach()), temperature, 1.0
    )
    return LossOutput(
        loss=attraction + repulsion,
        attraction=attraction,
        repulsion=repulsion,
        neg_weights=neg_w,
        neg_d2=neg_d2,
    )


def _debiased_hard(
    z: Tensor, temperature: float, tau_plus: float, beta: float, multiview: str
) -> LossOutput:
    """Shared core of HN-CL (beta > 0) and DCL (beta = 0), computed in log space.

    With pos = exp(s+/T), neg_j = exp(s_j/T), N negatives (2B - 2 for "pairs", B - 1 for "cmc")
    and importance weights imp_j = neg_j^beta:

        Ng   = max( (-tau_plus * N * pos + N * sum_j imp_j neg_j / sum_j imp_j) / (1 - tau_plus),
                    N * exp(-1/T) )
        loss = reduce over queries of  -log( pos / (pos + Ng) )

    reduced as ``_reduce`` says for ``multiview``. Every exponential is taken relative to the
    row's largest logit so small T cannot overflow.
    """
    if multiview == "pairs":
        pos, neg, neg_d2, n_neg = _pair_logits(z, temperature)  # (P, 2B), (P, 2B, 2B-2) x 2
    else:
        logits = _all_pair_logits(z, temperature)  # (V, V, B, B), v == w masked by _reduce
        pos = logits.diagonal(dim1=-2, dim2=-1)  # (V, V, B)
        neg, n_neg = _off_diagonal(logits), z.shape[1] - 1  # (V, V, B, B-1): cross-view only
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
    attraction = -_reduce(pos, multiview)
    repulsion = _reduce(lse, multiview)
    # Effective weight of negative j in Ng: imp_j * neg_j / sum = softmax((1 + beta) s_j / T).
    if multiview == "pairs":
        neg_w = torch.softmax((1.0 + beta) * neg, dim=-1).detach()
        neg_d2 = neg_d2.detach()
    else:
        neg_w, neg_d2 = _lazy_pair(_cmc_softmax_weights, neg.detach(), temperature, 1.0 + beta)
    return LossOutput(
        loss=attraction + repulsion,
        attraction=attraction,
        repulsion=repulsion,
        neg_weights=neg_w,
        neg_d2=neg_d2,
    )


def hard_negative_loss(
    views: Tensor | Sequence[Tensor],
    temperature: float = 0.5,
    beta: float = 1.0,
    tau_plus: float = 0.1,
    *,
    multiview: str = "pairs",
    check_inputs: bool = True,
) -> LossOutput:
    r"""HN-CL: hard negative sampling (Robinson et al., "Contrastive Learning with Hard Negative
    Samples", ICLR 2021, arXiv:2010.04592).

    NT-Xent whose negative term is importance-reweighted towards hard negatives
    (imp_j = exp(beta * s_j / T)) and debiased with the class prior tau_plus:

        Ng = max( (-tau_plus N pos + N sum_j imp_j neg_j / sum_j imp_j) / (1 - tau_plus),
                  N e^{-1/T} )
        loss = mean_q -log( pos / (pos + Ng) ),   pos = e^{s+/T}, neg_j = e^{s_j/T}

    ``temperature`` divides the similarity. ``multiview`` pairs the views as in
    `info_nce_loss`: "pairs" (default; per view pair v < w, 2B queries with N = 2B - 2 negatives
    of both views, averaged over pairs; for V = 2 the published loss) or "cmc" (per ordered
    pair v != w, B queries of view v with N = B - 1 cross-view negatives from view w, summed
    over the V(V-1) ordered pairs). ``neg_weights`` are the effective weights
    imp_j neg_j / sum: (P, 2B, 2B-2) for "pairs", (V(V-1), B, B-1) for "cmc".

    Args:
        views: (V, B, D), or V tensors (B, D); L2-normalised along D.
        temperature: T > 0. Paper: 0.5.
        beta: concentration on hard negatives (>= 0; 0 gives DCL). Paper: 1.0 on CIFAR-10.
        tau_plus: class prior in [0, 1). Paper: 0.1.
        multiview: "pairs" or "cmc" (`MULTIVIEW_FORMS`).
    """
    _check_positive(temperature=temperature)
    _check_nonnegative(beta=beta)
    _check_tau_plus(tau_plus)
    check_choice("multiview", multiview, MULTIVIEW_FORMS)
    z = _check_views(views, check_inputs)
    with _no_autocast(z.device):
        return _debiased_hard(z, temperature, tau_plus, beta, multiview)


def debiased_loss(
    views: Tensor | Sequence[Tensor],
    temperature: float = 0.5,
    tau_plus: float = 0.1,
    *,
    multiview: str = "pairs",
    check_inputs: bool = True,
) -> LossOutput:
    r"""DCL: debiased contrastive loss (Chuang et al., "Debiased Contrastive Learning",
    NeurIPS 2020, arXiv:2007.00224) -- not the *decoupled* loss some libraries call DCL.

        Ng = max( (-tau_plus N pos + sum_j neg_j) / (1 - tau_plus), N e^{-1/T} )
        loss = mean_q -log( pos / (pos + Ng) ),   pos = e^{s+/T}, neg_j = e^{s_j/T}

    ``temperature`` divides the similarity. ``multiview`` as in `hard_negative_loss`: "pairs"
    (N = 2B - 2, averaged over view pairs) or "cmc" (N = B - 1 cross-view negatives, summed
    over ordered pairs).

    Args:
        views: (V, B, D), or V tensors (B, D); L2-normalised along D.
        temperature: T > 0. Paper: 0.5.
        tau_plus: class prior in [0, 1). Paper: 0.1.
        multiview: "pairs" or "cmc" (`MULTIVIEW_FORMS`).
    """
    _check_positive(temperature=temperature)
    _check_tau_plus(tau_plus)
    check_choice("multiview", multiview, MULTIVIEW_FORMS)
    z = _check_views(views, check_inputs)
    with _no_autocast(z.device):
        return _debiased_hard(z, temperature, tau_plus, 0.0, multiview)
