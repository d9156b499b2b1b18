"""The InfoNCE family's kernel: log-sum-exps over the blocks of one Gram matrix, fused.

Every loss of :mod:`cacr_lab.losses.infonce` (InfoNCE, HN-CL, DCL, in both multi-view forms) is
a small function of per-query log-sum-exps over *blocks* of the similarity matrix of all V*B
embeddings: query i of view q against the B samples of view w,

    S_c[q, w, i] = log sum_{j in block (q, w), j unmasked} exp(c s(z_qi, z_wj) / T)

for one or two scales c (InfoNCE and DCL: c = 1; HN-CL: c = beta and 1 + beta), with the
diagonal of a block (j = i: the query itself or its positive) masked where the loss says so.
``block_log_sums`` returns them as (V, V, B) tensors; the losses combine them with the
positives' logits, a few (V, V, B) tensors in plain autograd.

``_BlockLogSums`` computes them with a closed-form backward, the way ``_CACR`` does
(:mod:`cacr_lab.losses._cacr_kernel`), because a plain autograd form pays ~10 passes over the
(2B, 2B) matrix (divide, mask, log-softmax, their backwards, the cross-entropy's one-hot) and
as many fresh multi-MB tensors, where the arithmetic needs four:

- forward: one batched matmul writes s / T of the blocks into a leased scratch buffer
  (``_lease_scratch``), the masked diagonals are set to -inf, exp(c s / T) is taken in place
  (no max-subtraction while ``_exp_is_safe``), and its row sums (and column sums) give S_c;
- backward: dS/d(s/T) = c exp(c s / T) / sum, so the gradient of a block is its exp buffer
  times a row (and a column) coefficient, in one or two passes, then two batched matmuls.

Blocks: a block (v, w) and its transpose (w, v) hold the same numbers, so where exp cannot
overflow each unordered pair is computed once and its *column* sums serve the queries of view
w ("columns"): V(V+1)/2 blocks for the "pairs" form (same-view blocks included), V(V-1)/2 for
"cmc". Where it can overflow (c / T beyond ~39 in float32, e.g. T = 0.01) every row is shifted
by its own maximum, which the columns cannot share: then every ordered block is computed,
row sums only. ``tests/test_losses.py`` and ``tests/test_losses_multiview.py`` check all of it
against loop references and float64 gradcheck; ``benchmarks/bench_loss.py`` times it against
the plain one-matrix forms.
"""

from __future__ import annotations

import functools

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from ._cacr_kernel import _exp_is_safe, _lease_scratch


@functools.lru_cache(maxsize=64)
def _block_tables(
    V: int, form: str, columns: bool, mask_all: bool, device: torch.device, dtype: torch.dtype
) -> tuple[Tensor, Tensor, Tensor]:
    """(select, masked, index) for the blocks of ``form`` ("pairs" or "cmc"), cached: shared,
    never to be modified.

    select (2K, V): one-hot rows picking each block's first view (rows :K) and second view
    (rows K:), so ``select @ z`` gathers them in one matmul and ``select.T @ grads`` sums the
    gradients back. masked (K, 1) bool: whose diagonal is masked (every block if ``mask_all``,
    else the same-view blocks). index (V * V,) long: where S[q, w] sits among the kernel's
    (2K, B) outputs (rows of block k at k, its columns at K + k); entries a form does not use
    (q == w for "cmc") point at row 0.
    """
    if columns:
        first = 0 if form == "pairs" else 1  # "pairs" keeps the same-view blocks (v, v)
        blocks = [(v, w) for v in range(V) for w in range(v + first, V)]
    else:
        blocks = [(v, w) for v in range(V) for w in range(V) if form == "pairs" or v != w]
    K = len(blocks)
    index = torch.zeros(V, V, dtype=torch.long)
    for k, (v, w) in enumerate(blocks):
        index[v, w] = k
        if columns and v != w:
            index[w, v] = K + k
    vi = torch.tensor([v for v, _ in blocks] + [w for _, w in blocks])
    select = torch.eye(V, dtype=dtype)[vi]
    masked = torch.tensor([[mask_all or v == w] for v, w in blocks])
    return select.to(device), masked.to(device), index.flatten().to(device)


def block_log_sums(
    z: Tensor, inv_t: float, scales: tuple[float, ...], form: str, mask_all: bool
) -> list[Tensor]:
    """S_c (V, V, B) for each scale c, [q, w, i] as in the module docstring.

    z: (V, B, D), checked, full precision. ``form``: "pairs" (S[q, q] and S[q, w], w != q) or
    "cmc" (S[q, w], w != q; S[q, q] is not computed and holds a placeholder). ``mask_all``:
    mask the diagonal of every block (the query's positive is no negative: HN-CL, DCL), else of
    the same-view blocks only (the query itself: InfoNCE).
    """
    V, B, _ = z.shape
    columns = all(_exp_is_safe(c * inv_t / 2.0, z.dtype) for c in scales)
    select, masked, index = _block_tables(V, form, columns, mask_all, z.device, z.dtype)
    sums = _BlockLogSums.apply(z, inv_t, scales, select, masked, columns)
    return [s.index_select(0, index).view(V, V, B) for s in sums]


class _BlockLogSums(torch.autograd.Function):
    """log sum_j exp(c s_ij / T) over the rows (and, with ``columns``, the columns) of K blocks.

    Inputs: z (V, B, D); inv_t = 1 / T; scales (the c's); select (2K, V) and masked (K, 1) from
    ``_block_tables``. Outputs, one per scale: (2K, B) log-sums, rows of every block then its
    columns (``columns``), or (K, B), rows only (each row shifted by its maximum).
    """

    @staticmethod
    def forward(ctx, z, inv_t, scales, select, masked, columns):  # type: ignore[override]
        ctx.scales, ctx.inv_t, ctx.columns = scales, inv_t, columns
        outs, sums = _BlockLogSums.workspace(ctx, z, select, masked)
        ctx.save_for_backward(z, select, masked, *sums)
        ctx.set_materialize_grads(False)
        return tuple(outs)

    @staticmethod
    def workspace(ctx, z: Tensor, select: Tensor, masked: Tensor) -> tuple[list, list]:
        """Lease the scratch and fill it: the blocks' views, exp(c s / T) per scale.

        Sets ctx.scratch = (ex, zv, zw, grads) and ctx.release; returns the log-sums (the
        outputs) and the sums themselves, (2, K, B) or (1, K, B) each.
        """
        V, B, D = z.shape
        K, n = select.shape[0] // 2, len(ctx.scales)
        blocks, rows = K * B * B, 2 * K * B * D
        buf, ctx.release = _lease_scratch(ctx, (n + 1) * blocks + 2 * rows, z)
        gram, pairs = buf.split([(n + 1) * blocks, 2 * rows])
        ex = gram.view(n + 1, K, B, B)  # exp buffers, one per scale; the last: s / T, then dL
        views, grads = pairs.view(2, 2 * K, B, D).unbind(0)
        torch.mm(select, z.reshape(V, B * D), out=views.view(2 * K, B * D))
        zv, zw = views[:K], views[K:]
        g = ex[n]  # s / T of every block, (K, B, B): one batched matmul
        torch.baddbmm(g, zv, zw.transpose(1, 2), beta=0.0, alpha=ctx.inv_t, out=g)
        g.diagonal(dim1=-2, dim2=-1).masked_fill_(masked, float("-inf"))
        outs, sums = [], []
        for c, e in zip(ctx.scales, ex[:n]):
            if ctx.columns:  # no shift: exp(c s / T) stays inside the dtype's normal range
                torch.mul(g, c, out=e).exp_()
                s = torch.cat([e.sum(-1), e.sum(-2)])  # (2K, B): rows, then columns
                outs.append(s.log())
            else:  # every row shifted by its largest unmasked c s / T
                shift = g.amax(-1, keepdim=True).mul_(c)
                torch.mul(g, c, out=e).sub_(shift).exp_()
                s = e.sum(-1)
                outs.append(s.log().add_(shift.squeeze(-1)))
            sums.append(s.view(-1, K, B))
        ctx.scratch = (ex, zv, zw, grads)
        return outs, sums

    @staticmethod
    @once_differentiable
    def backward(ctx, *grad_outs):  # type: ignore[override]
        nothing = (None,) * 5
        if all(g is None for g in grad_outs):
            return (None, *nothing)
        z, select, masked, *sums = ctx.saved_tensors
        if ctx.scratch is None:  # a retained graph's second backward: the first gave it back
            _BlockLogSums.workspace(ctx, z, select, masked)
        ex, zv, zw, grads = ctx.scratch
        n = len(ctx.scales)
        dg = ex[n]  # d loss / d(s / T), written over the s / T buffer (no longer needed)
        first = True
        for c, e, s, go in zip(ctx.scales, ex[:n], sums, grad_outs):
            if go is None:
                continue
            coef = go.view(s.shape) * c / s  # d loss / d sum_j exp(...), per row (and column)
            for k, axis in enumerate((-1, -2)[: len(coef)]):
                if first:
                    torch.mul(e, coef[k].unsqueeze(axis), out=dg)
                    first = False
                else:
                    dg.addcmul_(e, coef[k].unsqueeze(axis))
        K = zv.shape[0]
        # d/dz_v of s_vw / T = dg z_w / T; d/dz_w = dg^T z_v / T; summed back onto the views.
        torch.baddbmm(grads[:K], dg, zw, beta=0.0, alpha=ctx.inv_t, out=grads[:K])
        torch.baddbmm(grads[K:], dg.transpose(1, 2), zv, beta=0.0, alpha=ctx.inv_t, out=grads[K:])
        V, B, D = z.shape
        grad = (select.T @ grads.view(2 * K, B * D)).view(V, B, D)
        ctx.scratch = None
        ctx.release()
        return (grad, *nothing)
