"""The loss family: CACR and the contrastive baselines it is compared with.

Every loss takes ``views``: a tensor ``(V, B, D)`` or a sequence of V tensors ``(B, D)``,
L2-normalised embeddings of V augmented views of the same B images (view v of image i is
``views[v, i]``). Every loss returns a :class:`LossOutput` whose ``loss`` is a differentiable
scalar and whose named parts (``attraction`` / ``repulsion``, or ``alignment`` / ``uniformity``)
add up to it, so that the trainer, the notebooks and the dashboard read the same fields.

Distances are squared Euclidean distances on the unit sphere computed from one Gram matrix,
``d2 = 2 - 2 * z_a . z_b`` in [0, 4], never from a (B, B, D) difference tensor. All distances and
softmaxes run in float32 (or float64 when the input is float64) with autocast switched off, so
the losses are stable under bf16/fp16 autocast.

Temperature conventions differ between the two families and the docstrings say which is which:
CACR's ``tau_pos`` / ``tau_neg`` *multiply* d2 (inverse temperatures), InfoNCE's ``temperature``
*divides* the cosine similarity.
"""

from __future__ import annotations

import functools
import inspect
import math
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

__all__ = [
    "LOSSES",
    "LossOutput",
    "OPTION_HELP",
    "align_uniform_loss",
    "alignment",
    "cacr_loss",
    "debiased_loss",
    "hard_negative_loss",
    "info_nce_loss",
    "loss_options",
    "moco_cacr_loss",
    "pair_indices",
    "uniformity",
]

WEIGHTINGS = ("full", "without_w1", "without_w2", "none")
WEIGHT_GRADS = ("attached", "detached")
COSTS = ("euclidean", "rbf")

# Names of the scalar parts a LossOutput may carry; each present part is logged by the trainer.
PART_NAMES = ("attraction", "repulsion", "alignment", "uniformity")


class _Deferred:
    """A ``LossOutput`` field that may also be given as a zero-argument function, called the
    first time the field is read (its value then kept): CACR's (P, B, B-1) diagnostics."""

    def __set_name__(self, owner: type, name: str) -> None:
        self.slot = f"_deferred_{name}"

    def __get__(self, obj: object, objtype: type | None = None) -> Tensor | None:
        if obj is None:
            return None  # the dataclass default
        value = obj.__dict__[self.slot]
        if callable(value):
            value = obj.__dict__[self.slot] = value()
        return value

    def __set__(self, obj: object, value: Tensor | Callable[[], Tensor] | None) -> None:
        obj.__dict__[self.slot] = value


@dataclass
class LossOutput:
    """What every loss returns.

    ``loss`` is the differentiable scalar to minimise. The scalar parts present for a method add
    up to ``loss`` (CACR, InfoNCE, HN-CL, DCL: ``attraction + repulsion``; AU-CL: ``alignment +
    unif_weight * uniformity``). The weight tensors are *detached* diagnostics (for figures):

    - ``pos_weights``, ``pos_d2``: (V, B, K) for CACR, pi_pos of each query over its K = V - 1
      positives (the other views of the same image in increasing view order) and the matching d2.
    - ``neg_weights``, ``neg_d2``: for CACR (P, B, B-1) with P = V(V-1)/2 view pairs in the order
      of ``itertools.combinations(range(V), 2)``: pi_neg of query i of view v over the samples
      j != i of view w (``symmetric=True``: (V, B, V(B-1)), all other images in all views). For
      InfoNCE-style losses the implicit softmax weights over negatives, (P, 2B, 2B-2).
      CACR's default path computes them when they are first read (a training step never does).
    """

    loss: Tensor
    attraction: Tensor | None = None
    repulsion: Tensor | None = None
    alignment: Tensor | None = None
    uniformity: Tensor | None = None
    pos_weights: Tensor | None = None
    pos_d2: Tensor | None = None
    neg_weights: Tensor | None = _Deferred()  # type: ignore[assignment]
    neg_d2: Tensor | None = _Deferred()  # type: ignore[assignment]

    def parts(self) -> dict[str, Tensor]:
        """The scalar parts that are present, detached, keyed by name."""
        return {n: getattr(self, n).detach() for n in PART_NAMES if getattr(self, n) is not None}

    def detach(self) -> LossOutput:
        """A copy with every tensor detached (for logging without keeping the graph); fields
        not read yet stay unread (they are detached when computed)."""
        kw = {}
        for f in fields(self):
            slot = f"_deferred_{f.name}"
            v = self.__dict__[slot] if slot in self.__dict__ else getattr(self, f.name)
            kw[f.name] = v.detach() if isinstance(v, Tensor) else v
        return LossOutput(**kw)


def _first_read(fn: Callable[..., object], *args: object) -> Callable[[], object]:
    """A zero-argument function computing fn(*args) once, without grad or autocast, when called."""
    cache: list[object] = []

    def value() -> object:
        if not cache:
            device = next(a.device for a in args if isinstance(a, Tensor))
            with torch.no_grad(), _no_autocast(device):
                cache.append(fn(*args))
        return cache[0]

    return value


# --------------------------------------------------------------------------------------------
# Validation and small helpers
# --------------------------------------------------------------------------------------------


def _check_views(views: Tensor | Sequence[Tensor], check_values: bool = True) -> Tensor:
    """Stack/validate ``views`` into a (V, B, D) float tensor of at least float32.

    ``check_values`` looks at the numbers (finite, unit norm); it costs one host sync, which the
    trainer can skip on a GPU (it checks the loss for finiteness every few steps instead).
    """
    if isinstance(views, Tensor):
        z = views
    elif (
        isinstance(views, Sequence) and len(views) > 0 and all(isinstance(v, Tensor) for v in views)
    ):
        shapes = [tuple(v.shape) for v in views]
        if any(s != shapes[0] for s in shapes):
            raise ValueError(f"all views must have the same shape (B, D); got shapes {shapes}")
        if len(shapes[0]) != 2:
            raise ValueError(f"each view must be (B, D); got shape {shapes[0]}")
        z = torch.stack(list(views))
    else:
        raise ValueError(
            "views must be a (V, B, D) tensor or a non-empty sequence of (B, D) tensors; "
            f"got {type(views).__name__}"
        )
    if z.dim() != 3:
        raise ValueError(f"views must have shape (V, B, D); got shape {tuple(z.shape)}")
    V, B, D = z.shape
    if V < 2:
        raise ValueError(f"need at least V=2 views of each image (positives); got V={V}")
    if B < 2:
        raise ValueError(f"need a batch of at least B=2 images (negatives); got B={B}")
    if D < 1:
        raise ValueError(f"embedding dimension D must be >= 1; got D={D}")
    if not z.is_floating_point():
        raise ValueError(f"views must be a floating-point tensor; got dtype {z.dtype}")
    z = _upcast(z)
    if check_values:
        with torch.no_grad():
            finite = torch.isfinite(z).all()
            norms = z.norm(dim=-1)
            lo, hi, ok = norms.min(), norms.max(), finite
            lo, hi, ok = (t.item() for t in torch.stack([lo, hi, ok.to(lo.dtype)]))
        if not ok:
            raise ValueError("views contain non-finite values (NaN or inf)")
        # bf16 round-off leaves norms ~1e-2 away from 1; anything beyond is a real mistake.
        if abs(lo - 1.0) > 5e-2 or abs(hi - 1.0) > 5e-2:
            raise ValueError(
                f"views must be L2-normalised along D (norms range from {lo:.4g} to {hi:.4g}); "
                "pass torch.nn.functional.normalize(z, dim=-1)"
            )
    return z


def _upcast(z: Tensor) -> Tensor:
    """Half precisions to fp32; fp32 and fp64 (gradcheck) stay as they are."""
    return z.float() if z.dtype in (torch.float16, torch.bfloat16) else z


def _check_positive(**values: float) -> None:
    for name, v in values.items():
        if not isinstance(v, (int, float)) or isinstance(v, bool) or not math.isfinite(v) or v <= 0:
            raise ValueError(f"{name} must be a positive finite number; got {v!r}")


def _check_nonnegative(**values: float) -> None:
    for name, v in values.items():
        if not isinstance(v, (int, float)) or isinstance(v, bool) or not math.isfinite(v) or v < 0:
            raise ValueError(f"{name} must be a non-negative finite number; got {v!r}")


def check_choice(name: str, value: object, choices: Sequence[object]) -> None:
    """ValueError naming the bad value and the valid choices (``None`` shown as ``none``)."""
    if value not in choices:
        shown = ", ".join("none" if c is None else str(c) for c in choices)
        raise ValueError(f"unknown {name} {value!r}; choose one of {shown}")


def _check_tau_plus(tau_plus: float, name: str = "tau_plus") -> None:
    if not isinstance(tau_plus, (int, float)) or not (0.0 <= tau_plus < 1.0):
        raise ValueError(f"{name} (class prior) must be in [0, 1); got {tau_plus!r}")


def pair_indices(V: int, device: torch.device | str | None = None) -> tuple[Tensor, Tensor]:
    """View pairs (v, w), v < w, in the order of ``itertools.combinations(range(V), 2)``.

    >>> [tuple(t.tolist()) for t in pair_indices(3)]
    [(0, 0, 1), (1, 2, 2)]
    """
    iu = torch.triu_indices(V, V, offset=1, device=device)
    return iu[0], iu[1]


def _pair_views(z: Tensor) -> tuple[Tensor, Tensor]:
    """(P, B, D) each: the first and the second view of every pair v < w, combinations order."""
    V, B, D = z.shape
    P = V * (V - 1) // 2
    both = (_pair_tables(V, z.device, z.dtype)[0] @ z.reshape(V, B * D)).view(2 * P, B, D)
    return both[:P], both[P:]


def _off_diagonal(x: Tensor) -> Tensor:
    """(..., n, n) -> (..., n, n-1): row i keeps the columns j != i, in order."""
    n = x.shape[-1]
    flat = x.flatten(-2)[..., 1:]
    return flat.unflatten(-1, (n - 1, n + 1))[..., :-1].reshape(*x.shape[:-2], n, n - 1)


def _no_autocast(device: torch.device):
    # Autocast would silently run the Gram matmul in bf16/fp16; distances need fp32.
    return torch.autocast(device_type=device.type, enabled=False)


# --------------------------------------------------------------------------------------------
# CACR
# --------------------------------------------------------------------------------------------


def _softmax_weights(logits: Tensor, weighted: bool, detach: bool) -> Tensor:
    """Softmax over the last dim, or uniform weights (a broadcast view, no memory) if unweighted."""
    if not weighted:
        n = logits.shape[-1]
        return logits.new_full((1,) * logits.dim(), 1.0 / n).expand_as(logits)
    w = torch.softmax(logits, dim=-1)
    return w.detach() if detach else w


def _repulsion_generic(
    z: Tensor,
    tau_neg: float,
    beta: float,
    weighted: bool,
    detach: bool,
    cost: str,
    rbf_t: float,
    tau_plus: float | None,
    symmetric: bool,
) -> tuple[Tensor, Tensor, Tensor]:
    """Repulsion for every option, written as the equations read (plain autograd).

    Returns (repulsion, pi_neg, neg_d2) with pi_neg/neg_d2 (P, B, B-1), or (V, B, V(B-1)) when
    ``symmetric``.
    """
    V, B, _ = z.shape
    if symmetric:
        flat = z.reshape(V * B, -1)
        d2_full = (2.0 - 2.0 * flat @ flat.T).view(V, B, V, B).permute(0, 2, 1, 3)  # (V, V', B, B)
        # Drop j == i in every view pair, then line up all other images of all views per query.
        neg_d2 = _off_diagonal(d2_full).permute(0, 2, 1, 3).reshape(V, B, V * (B - 1))
        # The query's mean positive distance: same image (the B-diagonal), other views.
        d2_same = torch.diagonal(d2_full, dim1=-2, dim2=-1).permute(2, 0, 1)  # (B, V, V)
        d2_pos_q = _off_diagonal(d2_same).mean(-1).T  # (V, B)
    else:
        zv, zw = _pair_views(z)
        d2_pairs = 2.0 - 2.0 * torch.bmm(zv, zw.transpose(1, 2))  # (P, B, B) cross-view
        neg_d2 = _off_diagonal(d2_pairs)  # (P, B, B-1): diagonal (the positive) removed
        d2_pos_q = torch.diagonal(d2_pairs, dim1=-2, dim2=-1)  # (P, B): the pair's positive
    pi_neg = _softmax_weights(-tau_neg * neg_d2, weighted, detach)
    if cost == "euclidean":
        per_query = -beta * (pi_neg * neg_d2).sum(-1)  # (P, B)
        if tau_plus is not None:
            per_query = (per_query + tau_plus * beta * d2_pos_q) / (1.0 - tau_plus)
        repulsion = per_query.mean()
    else:
        kernel = torch.exp(-rbf_t * neg_d2)
        # log of the weighted kernel mean, per view pair (or per query view when symmetric).
        repulsion = beta * torch.log((pi_neg * kernel).sum(-1).mean(-1)).mean()
    return repulsion, pi_neg, neg_d2


@functools.lru_cache(maxsize=32)
def _pair_tables(V: int, device: torch.device, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    """(select, positives) for V views, cached: shared, never to be modified.

    select (2P, V): one-hot rows picking every pair's first view (rows :P) and second view
    (rows P:), combinations order. ``select @ z`` gathers all pairs' views in one matmul and
    ``select.T @ grads`` sums the pairs' gradients back onto the views (exact: one-hot);
    both run at about twice the speed of index_select / index_add here.
    positives (V, K): the pair behind query view v's k-th positive (the other views w != v,
    increasing); the distance of (v, w) is that of (w, v), so every pair is a positive of both.
    """
    vi, wi = pair_indices(V)
    select = torch.eye(V, dtype=dtype)[torch.cat([vi, wi])]
    table = torch.zeros(V, V, dtype=torch.long)
    table[vi, wi] = table[wi, vi] = torch.arange(len(vi))
    return select.to(device), _off_diagonal(table).to(device)


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


def cacr_loss(
    views: Tensor | Sequence[Tensor],
    tau_pos: float = 1.0,
    tau_neg: float = 1.0,
    alpha: float = 1.0,
    beta: float = 1.0,
    weighting: str = "full",
    *,
    weight_grad: str = "attached",
    cost: str = "euclidean",
    rbf_t: float = 2.0,
    debiased_tau_plus: float | None = None,
    symmetric: bool = False,
    check_inputs: bool = True,
) -> LossOutput:
    r"""CACR: Contrastive Attraction and Contrastive Repulsion.

    H. Zheng et al., "Contrastive Attraction and Contrastive Repulsion for Representation
    Learning", TMLR 2023, arXiv:2105.03746. Small-scale form of the reference code
    (REFERENCE.md section 2); the defaults reproduce its numbers and gradients.

    For a query x with positives x_k^+ (the K = V - 1 other views of its image) and negatives
    x_j^- (other images), with d2 the squared distance on the sphere:

        pi_pos(k|x) = softmax_k(+tau_pos * d2(x, x_k^+))      farther positive -> heavier
        pi_neg(j|x) = softmax_j(-tau_neg * d2(x, x_j^-))      closer negative  -> heavier
        attraction  = mean_x sum_k pi_pos(k|x) * alpha * d2(x, x_k^+)
        repulsion   = mean_x sum_j pi_neg(j|x) * (-beta * d2(x, x_j^-))
        loss        = attraction + repulsion

    ``tau_pos`` and ``tau_neg`` *multiply* d2 (inverse temperatures; tau -> 0 gives uniform
    weights, tau -> inf puts all weight on the farthest positive / nearest negative). Pairing
    as in the reference: attraction averages over all V*B queries; repulsion uses, for every
    unordered view pair v < w, query i of view v against the B - 1 samples j != i of view w.

    Args:
        views: (V, B, D), or V tensors (B, D); L2-normalised along D. V >= 2, B >= 2.
        tau_pos: inverse temperature of pi_pos (> 0). Paper: 1.0.
        tau_neg: inverse temperature of pi_neg (> 0). Paper: 0.9 (CIFAR-10), 2.0 (CIFAR-100,
            STL-10).
        alpha: scale of the attraction term (>= 0). Paper: 1.0.
        beta: scale of the repulsion term (>= 0). Paper: 1.0.
        weighting: the reference's ablation ``choice``: "full" (both weightings), "without_w1"
            (uniform pi_pos), "without_w2" (uniform pi_neg), "none" (both uniform).
        weight_grad: "attached" (default; the gradient flows through the softmax weights, as in
            the small-scale reference) or "detached" (weights under no-grad, as in the large-scale
            code: repulsion then has the gradient of (beta/tau_neg) log sum_j exp(-tau_neg d2_j)).
        cost: "euclidean" (d2, default) or "rbf": repulsion = beta * log(mean_i sum_j pi_neg k_ij)
            with k = exp(-rbf_t d2), averaged over view pairs; with uniform weights this is Wang &
            Isola's (cross-view) uniformity loss.
        rbf_t: kernel parameter t of the rbf cost (> 0). Default 2.0.
        debiased_tau_plus: if set (e.g. 0.1), the Chuang et al. 2020 debiasing of the repulsion
            per query: (R + tau_plus * beta * d2(x, x^+)) / (1 - tau_plus), R the weighted
            repulsion and x^+ the query's positive in the other view of the pair (symmetric: the
            mean over its K positives). This is the *correct* sign; the reference code flips the
            sign of the positive term (pushing the positive away). Euclidean cost only.
        symmetric: False (default, reference pairing). True: every query uses as negatives all
            views of all other images (both directions, same-view too; SimCLR-style 2B - 2 for
            V = 2); an improvement option, not the paper's pairing.
        check_inputs: check values (finite, unit norm); one host sync. Shapes are always checked.

    Returns:
        LossOutput with loss, attraction, repulsion, pos_weights/pos_d2 (V, B, K) and
        neg_weights/neg_d2 (P, B, B-1), or (V, B, V(B-1)) when ``symmetric``.

    >>> z = torch.nn.functional.normalize(torch.randn(5, 8, 16), dim=-1)
    >>> out = cacr_loss(z, tau_pos=1.0, tau_neg=0.9)
    >>> torch.allclose(out.loss, out.attraction + out.repulsion)
    True
    >>> tuple(out.pos_weights.shape), tuple(out.neg_weights.shape)
    ((5, 8, 4), (10, 8, 7))
    """
    _check_positive(tau_pos=tau_pos, tau_neg=tau_neg)
    _check_nonnegative(alpha=alpha, beta=beta)
    check_choice("weighting", weighting, WEIGHTINGS)
    check_choice("weight_grad", weight_grad, WEIGHT_GRADS)
    check_choice("cost", cost, COSTS)
    _check_positive(rbf_t=rbf_t)
    if debiased_tau_plus is not None:
        _check_tau_plus(debiased_tau_plus, "debiased_tau_plus")
        if cost != "euclidean":
            raise ValueError(
                f"debiased_tau_plus is defined for cost='euclidean' only; got cost={cost!r}"
            )
    z = _check_views(views, check_inputs)
    V, B, _ = z.shape
    detach = weight_grad == "detached"
    weight_pos = weighting in ("full", "without_w2")
    weight_neg = weighting in ("full", "without_w1")

    with _no_autocast(z.device):
        if cost == "euclidean" and weight_neg and not symmetric:
            # The default (reference) pairing: attraction and repulsion fused, closed-form backward.
            attraction, repulsion, pi_pos, pos_d2 = _CACR.apply(
                z, tau_pos, tau_neg, alpha, beta, weight_pos, detach
            )
            # pi_neg and d2 (P, B, B-1) are diagnostics a training step never reads: computed
            # on first read, from the same embeddings (two buffers and passes saved per step).
            neg = _first_read(
                _repulsion_generic,
                z.detach(),
                tau_neg,
                beta,
                True,
                False,
                "euclidean",
                rbf_t,
                None,
                False,
            )
            pi_neg, neg_d2 = (lambda: neg()[1]), (lambda: neg()[2])
            if debiased_tau_plus is not None:
                zv, zw = _pair_views(z)
                d2_pos_pairs = 2.0 - 2.0 * (zv * zw).sum(-1)  # (P, B): each pair's positive
                repulsion = (repulsion + debiased_tau_plus * beta * d2_pos_pairs.mean()) / (
                    1.0 - debiased_tau_plus
                )
        else:
            # --- attraction: each view is the query, the other K views its positives.
            attraction, pi_pos, pos_d2 = _Attraction.apply(z, tau_pos, alpha, weight_pos, detach)
            repulsion, pi_neg, neg_d2 = _repulsion_generic(
                z,
                tau_neg,
                beta,
                weight_neg,
                detach,
                cost,
                rbf_t,
                debiased_tau_plus,
                symmetric,
            )
            pi_neg, neg_d2 = pi_neg.detach(), neg_d2.detach()

    return LossOutput(
        loss=attraction + repulsion,
        attraction=attraction,
        repulsion=repulsion,
        pos_weights=pi_pos.detach(),
        pos_d2=pos_d2.detach(),
        neg_weights=pi_neg,
        neg_d2=neg_d2,
    )


# --------------------------------------------------------------------------------------------
# InfoNCE family: NT-Xent (SimCLR), CMC-style multi-view, HN-CL, DCL
# --------------------------------------------------------------------------------------------


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


# --------------------------------------------------------------------------------------------
# Alignment and uniformity (Wang & Isola 2020)
# --------------------------------------------------------------------------------------------


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

    Args:
        z: (N, D) L2-normalised embeddings, N >= 2 (with one sample there is no pair).
        t: kernel parameter (> 0). Paper: 2.
    """
    _check_positive(t=t)
    if z.dim() != 2:
        raise ValueError(f"z must be (N, D); got shape {tuple(z.shape)}")
    if z.shape[0] < 2:
        raise ValueError(f"uniformity needs at least N=2 samples; got N={z.shape[0]}")
    return torch.pdist(_upcast(z), p=2).pow(2).mul(-t).exp().mean().log()


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
        g = torch.bmm(z, z.transpose(1, 2))  # (V, B, B) within-view Gram
        iu = torch.triu_indices(B, B, offset=1, device=z.device)
        d2 = 2.0 - 2.0 * g[:, iu[0], iu[1]]  # (V, B(B-1)/2)
        unif = torch.logsumexp(-unif_t * d2, dim=-1) - math.log(d2.shape[-1])  # log mean exp
        unif = unif.mean()
    return LossOutput(
        loss=align + unif_weight * unif, alignment=align, uniformity=unif_weight * unif
    )


# --------------------------------------------------------------------------------------------
# MoCo-style large-scale form (momentum keys + queue)
# --------------------------------------------------------------------------------------------


def moco_cacr_loss(
    views: Tensor | Sequence[Tensor],
    temperature: float = 0.2,
    tau_pos: float = 1.0,
    *,
    keys: Tensor | None = None,
    queue: Tensor | None = None,
    check_inputs: bool = True,
) -> LossOutput:
    r"""CACR's large-scale (MoCo-style) form, REFERENCE.md section 3.

    Queries come from the online encoder, keys from a momentum encoder (no gradient), negatives
    are the other keys of the batch plus a queue of past keys. The temperature T *divides* d2
    and the positive stays in the denominator. For query q = views[v, i] and key view w != v:

        l(v, w, i) = d2(q, k_wi) / (2T) + log sum_{k in {k_wj}_j + queue} exp(-d2(q, k) / (2T))
        loss = 2T * sum_v mean_i sum_{w != v} pi_pos(w | v, i) * l(v, w, i)

    with the conditional attraction weights pi_pos = softmax_w(tau_pos * d2(q, k_wi)) computed
    without gradient (the large-scale code's choice). Since -d2/(2T) = (q.k - 1)/T, with one
    positive key per query (V = 2) this is exactly MoCo v3's loss ctr(q1, k2) + ctr(q2, k1)
    (Chen, Xie, He, "An Empirical Study of Training Self-Supervised Vision Transformers", ICCV
    2021, arXiv:2104.02057), queue or not.

    Args:
        views: (V, B, D), or V tensors (B, D): the queries, L2-normalised along D.
        temperature: T > 0 (MoCo v3: 0.2 for ResNet-50, 0.1 for ViT).
        tau_pos: inverse temperature of the weights over the K = V - 1 positive keys (> 0).
        keys: (V, B, D) L2-normalised momentum-encoder embeddings of the same views; default:
            the queries themselves, detached (a stop-gradient key branch).
        queue: (Q, D) L2-normalised past keys used as extra negatives; default: none.

    >>> z = torch.nn.functional.normalize(torch.randn(2, 4, 8), dim=-1)
    >>> tuple(moco_cacr_loss(z, queue=z[0]).neg_weights.shape)
    (2, 4, 1, 7)
    """
    _check_positive(temperature=temperature, tau_pos=tau_pos)
    q = _check_views(views, check_inputs)
    k = q.detach() if keys is None else _check_views(keys, check_inputs).detach()
    if k.shape != q.shape:
        raise ValueError(
            f"keys must have the queries' shape {tuple(q.shape)}; got {tuple(k.shape)}"
        )
    V, B, D = q.shape
    if queue is not None and (queue.dim() != 2 or queue.shape[1] != D):
        raise ValueError(f"queue must be (Q, {D}); got shape {tuple(queue.shape)}")
    with _no_autocast(q.device):
        sims = torch.einsum("vbd,wcd->vwbc", q, k)  # (V, V, B, B): query view, key view
        logits = (sims - 1.0) / temperature  # = -d2 / (2T)
        if queue is not None and queue.shape[0] > 0:
            qsims = torch.einsum("vbd,qd->vbq", q, queue.detach().to(q.dtype))  # (V, B, Q)
            logits_q = ((qsims - 1.0) / temperature).unsqueeze(1).expand(V, V, B, -1)
            logits = torch.cat([logits, logits_q], dim=-1)  # (V, V, B, B + Q)
        idx = torch.arange(B, device=q.device)
        pos = logits[:, :, idx, idx]  # (V, V, B)
        lse = torch.logsumexp(logits, dim=-1)  # (V, V, B): the positive stays in
        # Drop w == v (a query is not its own key's positive view): (V, K, B).
        keep = ~torch.eye(V, dtype=torch.bool, device=q.device)
        pos, lse = pos[keep].view(V, V - 1, B), lse[keep].view(V, V - 1, B)
        d2_pos = (-2.0 * temperature * pos).permute(0, 2, 1)  # (V, B, K)
        pi_pos = torch.softmax(tau_pos * d2_pos, dim=-1).detach()
        w = pi_pos.permute(0, 2, 1)  # (V, K, B)
        attraction = 2 * temperature * (w * -pos).sum(1).mean(-1).sum()
        repulsion = 2 * temperature * (w * lse).sum(1).mean(-1).sum()
        # Implicit weights over the negatives (other keys + queue) of each (query, key view).
        neg_logits = logits[keep].view(V, V - 1, B, -1)
        neg_mask = torch.ones(B, neg_logits.shape[-1], dtype=torch.bool, device=q.device)
        neg_mask[idx, idx] = False
        neg_logits = neg_logits[..., neg_mask].view(V, V - 1, B, -1).permute(0, 2, 1, 3)
        neg_w = torch.softmax(neg_logits, dim=-1)  # (V, B, K, N)
    return LossOutput(
        loss=attraction + repulsion,
        attraction=attraction,
        repulsion=repulsion,
        pos_weights=pi_pos,
        pos_d2=d2_pos.detach(),
        neg_weights=neg_w.detach(),
        neg_d2=(-2.0 * temperature * neg_logits).detach(),
    )


# --------------------------------------------------------------------------------------------
# Registry
# --------------------------------------------------------------------------------------------

LossFn = Callable[..., LossOutput]

# One name per method, used everywhere: registry key, CLI --method, config.json, figure legends.
LOSSES: dict[str, LossFn] = {
    "cacr": cacr_loss,
    "infonce": info_nce_loss,
    "align-uniform": align_uniform_loss,
    "hard-negative": hard_negative_loss,
    "debiased": debiased_loss,
    "moco": moco_cacr_loss,
}

# One line per option, shown by the CLI's --help and the dashboard's sidebar.
OPTION_HELP: dict[str, str] = {
    "tau_pos": "CACR inverse temperature multiplying d2 in pi_pos (paper 1.0)",
    "tau_neg": "CACR inverse temperature multiplying d2 in pi_neg (paper 0.9 CIFAR-10, 2.0 others)",
    "alpha": "CACR scale of the attraction term (paper 1.0)",
    "beta": "scale of CACR's repulsion / HN-CL's hardness concentration (paper 1.0)",
    "weighting": "CACR ablation: full | without_w1 | without_w2 | none",
    "weight_grad": "CACR: attached (reference) or detached softmax weights",
    "cost": "CACR repulsion cost: euclidean (reference) or rbf",
    "rbf_t": "CACR rbf kernel parameter t (default 2.0)",
    "debiased_tau_plus": "CACR Chuang et al. debiasing class prior (off by default; e.g. 0.1)",
    "symmetric": "CACR: negatives from all views in both directions (not the paper's pairing)",
    "temperature": "InfoNCE/MoCo temperature dividing the similarity (SimCLR 0.5, MoCo v3 0.2)",
    "tau_plus": "class prior of HN-CL / DCL (paper 0.1)",
    "align_alpha": "AU-CL alignment exponent (paper 2)",
    "unif_t": "AU-CL uniformity kernel t (paper 2)",
    "unif_weight": "AU-CL weight of the uniformity term (paper 1)",
}


def loss_options(method: str) -> dict[str, object]:
    """The tunable options of a registered loss with their defaults.

    >>> loss_options("infonce")
    {'temperature': 0.5}
    """
    if method not in LOSSES:
        raise ValueError(f"unknown method {method!r}; choose one of {', '.join(LOSSES)}")
    sig = inspect.signature(LOSSES[method])
    return {
        name: p.default
        for name, p in sig.parameters.items()
        if name not in ("views", "check_inputs", "keys", "queue")
        and p.default is not inspect.Parameter.empty
    }
