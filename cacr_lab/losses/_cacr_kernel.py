"""The fused CACR kernels: autograd Functions with closed-form backwards, and their scratch.

``cacr_loss`` (:mod:`cacr_lab.losses.cacr`) runs its default options through ``_CACR``
(attraction and weighted repulsion in one Function, reference pairing) and its other options
through ``_Attraction`` plus the plain-autograd repulsion. Read top to bottom:

1. The attraction: ``_attraction_parts`` (pi_pos, d, A from the pairs' positive distances),
   ``_attraction_pair_grad`` (its closed-form gradient), ``_sum_over_pairs`` (the adjoint of
   ``_pair_views``) and ``_Attraction``.
2. The repulsion's softmax sums: ``_exp_is_safe`` and ``_negative_sums``.
3. The CPU scratch lease: ``_lease_scratch`` / ``_return_scratch`` and the free list
   ``_FREE_SCRATCH`` (why: see ``_lease_scratch``).
4. ``_CACR`` and ``_cross_gram``.

``tests/test_losses.py`` checks both Functions against loop references and float64 gradcheck.
"""

from __future__ import annotations

import math
import weakref
from collections.abc import Callable

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from .base import _pair_tables, _pair_views, _softmax_weights

# --------------------------------------------------------------------------------------------
# Attraction
# --------------------------------------------------------------------------------------------


def _attraction_parts(
    d_pairs: Tensor, positives: Tensor, tau: float, weighted: bool
) -> tuple[Tensor, Tensor, Tensor]:
    """From the pairs' positive distances d_pairs (P, B): pi_pos and d (B, V, K), A (B, V).

    For query i of view v and its K positives, d_k = 2 - 2 z_vi . z_wi,
    pi_k = softmax_k(tau d_k) (or 1/K unweighted) and A_vi = sum_k pi_k d_k.
    Image-major, so that the softmax runs over a contiguous last dimension.
    """
    d = d_pairs.T[:, positives]  # (B, V, K)
    pi = _softmax_weights(tau * d, weighted, detach=False)
    return pi, d, (pi * d).sum(-1)


def _attraction_pair_grad(
    pi: Tensor, d: Tensor, a: Tensor, positives: Tensor, tau: float, alpha: float, attached: bool
) -> Tensor:
    """d attraction / d d_pairs, (P, B), with attraction = alpha * mean over (v, i) of A_vi:

        dA_vi / dd_k = pi_k (1 + tau (d_k - A_vi))    (attached weights)
        dA_vi / dd_k = pi_k                            (detached or uniform weights)

    summed over the two queries (one per view of the pair) that share each distance.
    """
    B, V, K = pi.shape
    c = pi * (alpha / (V * B))
    if attached:
        c = c * (1.0 + tau * (d - a.unsqueeze(-1)))
    per_pair = c.new_zeros(B, V * (V - 1) // 2)
    return per_pair.index_add_(1, positives.flatten(), c.reshape(B, V * K)).T


def _sum_over_pairs(grads: Tensor, V: int) -> Tensor:
    """(V, B, D) gradient from the (2P, B, D) gradients of the ``_pair_views`` (first, second)."""
    n, B, D = grads.shape
    select = _pair_tables(V, grads.device, grads.dtype)[0]
    return (select.T @ grads.reshape(n, B * D)).view(V, B, D)


class _Attraction(torch.autograd.Function):
    """Contrastive attraction alone (for the repulsion options ``_CACR`` does not cover).

    The positive distances are the per-pair dot products of ``_pair_views``; the backward is
    closed-form (``_attraction_pair_grad``) instead of a dozen small autograd nodes, which cost
    more than the arithmetic.
    """

    @staticmethod
    def forward(ctx, z: Tensor, tau: float, alpha: float, weighted: bool, detach: bool):  # type: ignore[override]
        zv, zw = _pair_views(z)
        positives = _pair_tables(z.shape[0], z.device, z.dtype)[1]
        d_pairs = 2.0 - 2.0 * torch.linalg.vecdot(zv, zw)  # (P, B)
        pi, d, a = _attraction_parts(d_pairs, positives, tau, weighted)
        ctx.tau, ctx.alpha, ctx.attached = tau, alpha, weighted and not detach
        ctx.save_for_backward(zv, zw, pi, d, a, positives)
        pi_out, d_out = pi.transpose(0, 1), d.transpose(0, 1)  # (V, B, K)
        ctx.mark_non_differentiable(pi_out, d_out)
        ctx.set_materialize_grads(False)
        return alpha * a.mean(), pi_out, d_out

    @staticmethod
    def backward(ctx, grad_a: Tensor | None, _gw: Tensor | None, _gd: Tensor | None):  # type: ignore[override]
        if grad_a is None:
            return None, None, None, None, None
        zv, zw, pi, d, a, positives = ctx.saved_tensors
        coef = _attraction_pair_grad(pi, d, a, positives, ctx.tau, ctx.alpha, ctx.attached)
        coef = (coef * (-2.0 * grad_a)).unsqueeze(-1)  # dd/dG = -2
        V = pi.shape[1]  # pi: (B, V, K)
        return _sum_over_pairs(torch.cat([coef * zw, coef * zv]), V), None, None, None, None


# --------------------------------------------------------------------------------------------
# Repulsion's softmax sums, the scratch lease, the fused Function
# --------------------------------------------------------------------------------------------


def _exp_is_safe(tau: float, dtype: torch.dtype) -> bool:
    """Whether exp(2 tau G), |G| <= 1, stays far inside the normal range of ``dtype``.

    Then softmax needs no max-subtraction pass: its values lie in [e^-2tau, e^2tau], and a row
    sum of up to 1e9 of them cannot overflow (fp32: tau <= ~19; fp64: tau <= ~159).
    """
    return 2.0 * tau <= 0.45 * -math.log(torch.finfo(dtype).tiny)


def _negative_sums(g: Tensor, ex: Tensor, tau: float) -> tuple[Tensor | float, Tensor, Tensor]:
    """The softmax sums of every query over its negatives, from G' = 2 tau G in ``g``.

    g, ex: (P, B, B) buffers, g holding G' (diagonal: the positives). Afterwards ex holds
    exp(G' - m) off the diagonal and 0 on it, and g holds ex * (G' - m), with m the row shift
    (0 while ``_exp_is_safe``, else each query's largest G' over its negatives).
    Returns (m, s, t), s_i = sum_j ex_ij and t_i = sum_j ex_ij (G'_ij - m_i), (P, B) each:
    pi_ij = ex_ij / s_i, and sum_j pi_ij G'_ij = t_i / s_i + m_i.
    """
    diagonal = g.diagonal(dim1=-2, dim2=-1)
    shift: Tensor | float = 0.0
    if not _exp_is_safe(tau, g.dtype):  # softmax is shift-invariant; keep exp in range
        diagonal.fill_(-math.inf)  # the positive is no negative
        shift = g.amax(-1, keepdim=True)
        g.sub_(shift)
        shift = shift.squeeze(-1)
    diagonal.zero_()  # finite, so that ex * g stays 0 there
    torch.exp(g, out=ex).diagonal(dim1=-2, dim2=-1).zero_()
    s = ex.sum(-1)
    t = g.mul_(ex).sum(-1)
    return shift, s, t


# Free CPU scratch buffers of the fused CACR, by (numel, dtype); see ``_lease_scratch``.
_FREE_SCRATCH: dict[tuple[int, torch.dtype], Tensor] = {}
_SCRATCH_SIZES = 4  # e.g. the training batch, the last short batch and the evaluation batch


def _lease_scratch(owner: object, numel: int, like: Tensor) -> tuple[Tensor, Callable[[], None]]:
    """A flat buffer of ``numel`` elements for ``owner`` (an autograd ctx) alone, and the
    function that gives it back (at the latest, it goes back when ``owner`` is freed).

    Why: on CPU every fresh multi-MB tensor costs a page fault per 4 KiB on first touch
    (glibc does not reuse the freed aligned block for the next request of the same size),
    ~1 us each: at V = 5, B = 256 the fused loss's fresh buffers cost more than its
    arithmetic. A lease is exclusive: the buffer returns to the free list when the backward
    is done with it, or when its graph is dropped unused (at once under no_grad), so two live
    graphs never share one. On CUDA the caching allocator already reuses memory.
    """
    if like.device.type != "cpu":
        return like.new_empty(numel), lambda: None
    key = (numel, like.dtype)
    buf = _FREE_SCRATCH.pop(key, None)
    if buf is None:
        buf = like.new_empty(numel)
    return buf, weakref.finalize(owner, _return_scratch, key, buf)  # runs at most once


def _return_scratch(key: tuple[int, torch.dtype], buf: Tensor) -> None:
    _FREE_SCRATCH[key] = buf  # most recently used size last
    while len(_FREE_SCRATCH) > _SCRATCH_SIZES:  # forget the least recently used size
        _FREE_SCRATCH.pop(next(iter(_FREE_SCRATCH)), None)


class _CACR(torch.autograd.Function):
    """CACR with the reference pairing and weighted repulsion, fused, with a closed-form backward.

    Repulsion: for query i of view v against samples j != i of view w > v, with G_ij = z_vi . z_wj,
    d_ij = 2 - 2 G_ij, pi_ij = softmax_{j != i}(-tau d_ij) and E_i = sum_j pi_ij d_ij:

        R = -beta * mean over (pairs, i) of E_i
        dR / dG_ij = 2 beta / (P B) * pi_ij (1 + tau (E_i - d_ij))    (attached weights)
        dR / dG_ij = 2 beta / (P B) * pi_ij                            (detached weights)

    Attraction (``_attraction_parts``) reads its positive distances off the diagonals of the
    same cross-view Gram blocks: G_ii of pair (v, w) is z_vi . z_wi, and its gradient goes on
    those diagonals, so the backward's two matmuls carry both terms.

    Written for few passes over the (P, B, B) blocks and no fresh large buffers, since those,
    not the matmuls, dominated the plain autograd form (~20 passes, ~6 such tensors alive):
      - forward: one batched matmul writes G' = 2 tau G; exp(G') goes into a second block
        (``_negative_sums``; no max-subtraction while that cannot overflow), G' exp(G') over
        the first: two row sums give every query's softmax normaliser s_i and
        r_i = sum_j pi_ij G'_ij, so E_i = 2 - r_i / tau.
      - backward: dR/dG = (scale / s_i) exp(G') (G' + 1 - r_i) in two passes over the first
        block, the attraction's dA/dG on its diagonal, then two batched matmuls.
      - all of it lives in one leased scratch buffer (``_lease_scratch``), given back at the
        end of the backward; a second backward through a retained graph recomputes it.
    pi_neg and d2 themselves are not written: ``cacr_loss`` hands them out on first read.
    ``tests/test_losses.py`` checks values and gradients against the loop reference and
    gradcheck; ``benchmarks/bench_loss.py`` times it against the Gram-matmul floor.
    """

    @staticmethod
    def forward(  # type: ignore[override]
        ctx,
        z: Tensor,
        tau_pos: float,
        tau_neg: float,
        alpha: float,
        beta: float,
        weight_pos: bool,
        detach: bool,
    ):
        positives = _pair_tables(z.shape[0], z.device, z.dtype)[1]
        d_pairs, shift, s, t = _CACR.workspace(ctx, z, tau_neg)
        pi_pos, d_pos, a = _attraction_parts(d_pairs, positives, tau_pos, weight_pos)
        r = t / s  # (P, B): sum_j pi_ij (G'_ij - shift_i)
        e = 2.0 - (r + shift).mean() / tau_neg  # the mean of E_i = sum_j pi_ij (2 - G'_ij / tau)
        ctx.tau_pos, ctx.tau_neg, ctx.alpha, ctx.beta = tau_pos, tau_neg, alpha, beta
        ctx.attached_pos, ctx.detach = weight_pos and not detach, detach
        ctx.save_for_backward(z, pi_pos, d_pos, a, positives, s, r)
        pi_out, d_out = pi_pos.transpose(0, 1), d_pos.transpose(0, 1)  # (V, B, K)
        ctx.mark_non_differentiable(pi_out, d_out)
        ctx.set_materialize_grads(False)
        return alpha * a.mean(), -beta * e, pi_out, d_out

    @staticmethod
    def workspace(ctx, z: Tensor, tau: float) -> tuple[Tensor, Tensor | float, Tensor, Tensor]:
        """Lease the scratch and fill it: the pairs' views, G' and exp(G') (``_negative_sums``).

        Sets ctx.scratch = (g, ex, zv, zw, grads) and ctx.release; returns the pairs' positive
        distances (P, B) and the softmax sums (shift, s, t) of ``_negative_sums``.
        """
        V, B, D = z.shape
        P = V * (V - 1) // 2
        blocks, rows = 2 * P * B * B, 4 * P * B * D
        buf, ctx.release = _lease_scratch(ctx, blocks + rows, z)
        gram, pairs = buf.split([blocks, rows])
        g, ex = gram.view(2, P, B, B).unbind(0)
        views, grads = pairs.view(2, 2 * P, B, D).unbind(0)  # (first; second) view of each pair
        select = _pair_tables(V, z.device, z.dtype)[0]
        torch.mm(select, z.reshape(V, B * D), out=views.view(2 * P, B * D))  # ``_pair_views``
        zv, zw = views[:P], views[P:]
        _cross_gram(zv, zw, tau, g)  # (P, B, B): one batched matmul over all pairs
        d_pairs = 2.0 - g.diagonal(dim1=-2, dim2=-1) / tau  # (P, B), taken before reuse
        shift, s, t = _negative_sums(g, ex, tau)
        ctx.scratch = (g, ex, zv, zw, grads)
        return d_pairs, shift, s, t

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_a: Tensor | None, grad_r: Tensor | None, _gw, _gd):  # type: ignore[override]
        if grad_a is None and grad_r is None:
            return (None,) * 7
        z, pi_pos, d_pos, a, positives, s, r = ctx.saved_tensors
        tau = ctx.tau_neg
        if ctx.scratch is None:  # a retained graph's second backward: the first gave it back
            _CACR.workspace(ctx, z, tau)
        g, ex, zv, zw, grads = ctx.scratch
        P, B, _ = zv.shape
        # dL/dG for every pair block, built over the scratch: the repulsion off the diagonal,
        # the attraction (whose distances are the diagonal entries) on it.
        if grad_r is not None:
            if ctx.detach:  # dR/dG = scale pi = (scale / s) ex
                dg = ex
            else:  # dR/dG = scale pi (1 + tau (E - d)) = (scale / s) ex (G' - shift + 1 - r)
                dg = g.addcmul_(ex, (1.0 - r).unsqueeze(-1))  # the diagonal stays 0
            dg.mul_((grad_r * (2.0 * ctx.beta / (P * B)) / s).unsqueeze(-1))
        else:
            dg = g.zero_()
        if grad_a is not None:
            coef = _attraction_pair_grad(
                pi_pos, d_pos, a, positives, ctx.tau_pos, ctx.alpha, ctx.attached_pos
            )
            dg.diagonal(dim1=-2, dim2=-1).copy_(coef.mul_(-2.0 * grad_a))  # dd/dG = -2
        # dL/dz_v += dL/dG_vw z_w and dL/dz_w += dL/dG_vw^T z_v, summed over the pairs.
        torch.bmm(dg, zw, out=grads[:P])
        torch.bmm(dg.transpose(1, 2), zv, out=grads[P:])
        grad = _sum_over_pairs(grads, z.shape[0])  # a fresh tensor: the scratch can go back now
        ctx.scratch = None
        ctx.release()
        return (grad,) + (None,) * 6


def _cross_gram(zv: Tensor, zw: Tensor, tau: float, out: Tensor) -> Tensor:
    """out (P, B, B) <- G' = 2 tau zv zw^T, zv/zw (P, B, D): the scale rides in the matmul."""
    return torch.baddbmm(out, zv, zw.transpose(1, 2), beta=0.0, alpha=2.0 * tau, out=out)
