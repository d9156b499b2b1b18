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

Their ``temperature`` *divides* the cosine similarity. Every loss is computed from per-query
log-sum-exps over the blocks of one Gram matrix of all V*B embeddings
(:func:`cacr_lab.losses._infonce_kernel.block_log_sums`, a fused kernel with a closed-form
backward) and the positives' logits (``_positives``), reduced by ``_reduce``. The implicit
negative weights, diagnostics a training step never reads, are computed when first read, from
the logits helpers (``_pair_logits``, ``_pair_similarities``, ``_negatives`` for "pairs";
``_all_pair_logits``, ``_cmc_negatives`` for "cmc"). Then ``info_nce_loss``, then
``_debiased_hard``, the core of ``hard_negative_loss`` and ``debiased_loss``.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from ._infonce_kernel import block_log_sums
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
    pair_indices,
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
    """The loss's reduction of per-query terms (V, V, B), [q, w, i] = query i of view q paired
    with view w (entries q == w are ignored): "pairs" -> the mean over the V(V-1)B queries of
    all view pairs (each pair v < w has 2B: B of view v, B of view w); "cmc" -> the mean over
    the B queries, summed over the V(V-1) ordered pairs q != w."""
    V = per_query.shape[0]
    off = 1.0 - torch.eye(V, dtype=per_query.dtype, device=per_query.device)  # (V, V)
    total = (per_query.mean(-1) * off).sum()
    return total / (V * (V - 1)) if multiview == "pairs" else total


def _positives(z: Tensor, temperature: float) -> Tensor:
    """(V, V, B) positive logits s(z_qi, z_wi) / T, [q, w, i]: every view against every other
    view of the same image, from the P pairs' dot products (the diagonal q == w holds a
    placeholder, pair 0's)."""
    V, B, _ = z.shape
    zv, zw = _pair_views(z)
    pos = torch.linalg.vecdot(zv, zw) / temperature  # (P, B)
    return pos.index_select(0, _pair_index(V, z.device)).view(V, V, B)


@functools.lru_cache(maxsize=32)
def _pair_index(V: int, device: torch.device) -> Tensor:
    """(V * V,) long: the pair (combinations order) of views (q, w), q != w; 0 where q == w."""
    vi, wi = pair_indices(V)
    table = torch.zeros(V, V, dtype=torch.long)
    table[vi, wi] = table[wi, vi] = torch.arange(len(vi))
    return table.flatten().to(device)


def _pair_negative_sums(sums: Tensor) -> Tensor:
    """ "pairs": (V, V, B) block log-sums -> [q, p, i] the log-sum over both blocks of query i
    of view q in the pair (q, p): its own view's block (q, q) and the partner's (q, p)."""
    own = sums.diagonal(dim1=0, dim2=1).T  # (V, B): S[q, q, i]
    return torch.logaddexp(own.unsqueeze(1), sums)


def _pairs_softmax_weights(z: Tensor, temperature: float, scale: float) -> tuple[Tensor, Tensor]:
    """Diagnostics of the "pairs" form: the weights softmax_j(scale * s_j / T) over every
    query's 2B - 2 negatives and their d2, each (P, 2B, 2B-2)."""
    _, neg, neg_d2, _ = _pair_logits(z, temperature)
    return torch.softmax(scale * neg, dim=-1), neg_d2


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


def _cmc_softmax_weights(z: Tensor, temperature: float, scale: float) -> tuple[Tensor, Tensor]:
    """Diagnostics of the "cmc" form: the weights softmax_j(scale * s_j / T) over every
    query's B - 1 cross-view negatives and their d2, each (V(V-1), B, B-1)."""
    neg = _cmc_negatives(_off_diagonal(_all_pair_logits(z, temperature)))
    return torch.softmax(scale * neg, dim=-1), 2.0 - 2.0 * temperature * neg


def _lazy_weights(z: Tensor, temperature: float, scale: float, multiview: str):
    """``neg_weights`` and ``neg_d2`` of either form, computed on first read from the
    embeddings (detached), as ``LossOutput`` allows."""
    fn = _pairs_softmax_weights if multiview == "pairs" else _cmc_softmax_weights
    return _lazy_pair(fn, z.detach(), temperature, scale)


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
    "cmc", ordered pairs v-major (both computed when first read: a training step never does).

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
    with _no_autocast(z.device):
        if z.shape[0] == 2:  # the plain one-matrix form: at V = 2 the kernel's small ops cost more
            loss, attraction, repulsion = _two_view_parts(z, temperature, multiview)
            neg_w, neg_d2 = _lazy_weights(z, temperature, 1.0, multiview)
            return LossOutput(
                loss=loss,
                attraction=attraction,
                repulsion=repulsion,
                neg_weights=neg_w,
                neg_d2=neg_d2,
            )
        pos = _positives(z, temperature)  # (V, V, B)
        # The log-sum-exp of each query runs over every j != q: its own view's block with
        # itself masked ("pairs" only), and the partner view's block, its positive included.
        (sums,) = block_log_sums(z, 1.0 / temperature, (1.0,), multiview, mask_all=False)
        lse = _pair_negative_sums(sums) if multiview == "pairs" else sums
        attraction = -_reduce(pos, multiview)
        repulsion = _reduce(lse, multiview)
    neg_w, neg_d2 = _lazy_weights(z, temperature, 1.0, multiview)
    return LossOutput(
        loss=attraction + repulsion,
        attraction=attraction,
        repulsion=repulsion,
        neg_weights=neg_w,
        neg_d2=neg_d2,
    )


def _two_view_parts(z: Tensor, temperature: float, multiview: str) -> tuple[Tensor, ...]:
    """(loss, attraction, repulsion) of `info_nce_loss` at V = 2, from one similarity matrix
    and a cross-entropy, as SimCLR computes it: "pairs" -> the (2B, 2B) matrix of both views,
    its diagonal (each query itself) masked, row r's positive at column (r + B) mod 2B; "cmc"
    -> the (B, B) cross-view matrix, its rows (view 0's queries) and its columns (view 1's),
    summed. The cross-entropy shifts by each row's maximum, so every temperature is safe.
    z: (2, B, D), full precision.

    The loss is the cross-entropy itself (the graph a step differentiates); the attraction
    -s+/T is read off the matrix (the positives' entries) and the repulsion is the rest. At
    V = 2 the fused kernel's ~40 small operations cost more than the passes over the matrix
    they save (``benchmarks/bench_loss.py`` times both forms).
    """
    B = z.shape[1]
    if multiview == "pairs":
        zz = z.reshape(2 * B, -1)  # rows 0..B-1 view 0, B..2B-1 view 1
        logits = (zz @ zz.T).div_(temperature)
        logits.fill_diagonal_(float("-inf"))
        loss = F.cross_entropy(logits, _partner_index(B, z.device))
        # s+/T of the B images (rows i and i + B share it): the off-diagonal block's diagonal
        attraction = -logits[:B, B:].diagonal().mean()
    else:
        logits = (z[0] @ z[1].T).div_(temperature)  # [i, j]: view 0's query i, view 1's j
        target = torch.arange(B, device=z.device)
        loss = F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)
        attraction = -2.0 * logits.diagonal().mean()
    return loss, attraction, loss - attraction


@functools.lru_cache(maxsize=16)
def _partner_index(B: int, device: torch.device) -> Tensor:
    """(2B,) long: row r's positive among the 2B rows of both views, (r + B) mod 2B."""
    return torch.arange(2 * B, device=device).roll(B)


def _debiased_hard(
    z: Tensor, temperature: float, tau_plus: float, beta: float, multiview: str
) -> LossOutput:
    """Shared core of HN-CL (beta > 0) and DCL (beta = 0), computed in log space.

    With pos = exp(s+/T), neg_j = exp(s_j/T), N negatives (2B - 2 for "pairs", B - 1 for "cmc")
    and importance weights imp_j = neg_j^beta:

        Ng   = max( (-tau_plus * N * pos + N * sum_j imp_j neg_j / sum_j imp_j) / (1 - tau_plus),
                    N * exp(-1/T) )
        loss = reduce over queries of  -log( pos / (pos + Ng) )

    reduced as ``_reduce`` says for ``multiview``. The sums over negatives come from
    ``block_log_sums`` (which shifts each row by its maximum where exp could overflow); the rest
    is taken in log space, relative to the larger of the two terms, so small T cannot overflow.
    """
    B = z.shape[1]
    pos = _positives(z, temperature)  # (V, V, B)
    n_neg = 2 * B - 2 if multiview == "pairs" else B - 1
    # Per query, log sum_j e^{c s_j / T} over its negatives (every block's diagonal masked: the
    # query and its positive are no negatives) for c = beta and 1 + beta (DCL: c = 1 alone).
    scales = (beta, 1.0 + beta) if beta > 0 else (1.0,)
    sums = block_log_sums(z, 1.0 / temperature, scales, multiview, mask_all=True)
    if multiview == "pairs":  # both views' negatives of the pair
        sums = [_pair_negative_sums(s) for s in sums]
    # N * sum_j q_j neg_j with q_j = imp_j / sum imp, in log space: log N + lse((1+beta) s / T)
    # - lse(beta s / T); for beta = 0, lse(s / T).
    log_reweighted = sums[0] if beta == 0 else math.log(n_neg) + sums[1] - sums[0]
    m = torch.maximum(pos, log_reweighted).detach()  # (V, V, B) shift
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
    neg_w, neg_d2 = _lazy_weights(z, temperature, 1.0 + beta, multiview)
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
