"""What every loss shares: the output type, argument checks and the geometry of view pairs.

- :class:`LossOutput`, the one return type (its diagnostics may be computed on first read:
  ``_Deferred`` / ``_first_read``), and ``PART_NAMES``, the scalar parts the trainer logs.
- Argument checks: ``_check_views`` (shape, dtype, unit norm), ``check_choice`` (public: the
  config validates its own choices with it), ``_check_positive``, ``_check_nonnegative``,
  ``_check_tau_plus``.
- Pair geometry: ``pair_indices`` (the view pairs v < w in combinations order), ``_pair_tables``
  and ``_pair_views`` (all pairs' views in one matmul), ``_off_diagonal`` (drop j == i).
- Precision: ``_upcast`` (half precisions to fp32) and ``_no_autocast`` (distances in fp32 under
  autocast); ``_softmax_weights``, the softmax or uniform weights of CACR's two terms.

Every other module of :mod:`cacr_lab.losses` builds on this one; it imports only torch.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields

import torch
from torch import Tensor

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
      InfoNCE-style losses the implicit softmax weights over negatives, (P, 2B, 2B-2); with
      ``multiview="cmc"`` (V(V-1), B, B-1), the ordered pairs v != w, v-major.
      CACR's default path and the InfoNCE family compute them when they are first read (a
      training step never does).
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


# --------------------------------------------------------------------------------------------
# View pairs
# --------------------------------------------------------------------------------------------


def pair_indices(V: int, device: torch.device | str | None = None) -> tuple[Tensor, Tensor]:
    """View pairs (v, w), v < w, in the order of ``itertools.combinations(range(V), 2)``.

    >>> [tuple(t.tolist()) for t in pair_indices(3)]
    [(0, 0, 1), (1, 2, 2)]
    """
    iu = torch.triu_indices(V, V, offset=1, device=device)
    return iu[0], iu[1]


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


def _softmax_weights(logits: Tensor, weighted: bool, detach: bool) -> Tensor:
    """Softmax over the last dim, or uniform weights (a broadcast view, no memory) if unweighted."""
    if not weighted:
        n = logits.shape[-1]
        return logits.new_full((1,) * logits.dim(), 1.0 / n).expand_as(logits)
    w = torch.softmax(logits, dim=-1)
    return w.detach() if detach else w
