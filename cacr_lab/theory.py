"""The toy geometry behind notebook 01: weights and forces of CACR and InfoNCE on a few points.

A *force* is minus the gradient of a loss with respect to a point, projected on the tangent
plane of the sphere at that point (an encoder's output is L2-normalised, so only the tangent part
moves it). Two ways to get them, and a test (``tests/test_theory.py``) that they agree:

- :func:`loss_forces`: autograd through the real losses of :mod:`cacr_lab.losses` on a toy batch
  (V views of B images), one force field per loss part. By construction the loss's forces.
- :func:`query_forces`: one query, its positives and its negatives, in closed form. With
  E = sum_j pi_j d_j (the weighted mean distance, d = ||x - x_j||^2 = 2 - 2 x.x_j)::

      CACR, attached weights:  dE/dd_j = pi_j (1 + s tau (d_j - E))   s = +1 positives, -1 negatives
      CACR, detached weights:  dE/dd_j = pi_j
      grad_{x_j} d_j = -2 x,   grad_x d_j = -2 x_j

  so point j feels the force ``2 c_j P_j(x)``, with P_j the projection on its tangent plane and
  c_j = dL/dd_j: c_j > 0 pulls it towards the query, c_j < 0 pushes it away.
  :func:`closed_form_forces` sums :func:`query_forces` over the queries of a batch with the
  reference pairing of ``cacr_loss``; it equals :func:`loss_forces` for ``"cacr"``.

And the limits and identities of docs/method.md §4, as numbers: :func:`limit_rows`,
:func:`infonce_without_positive`, :func:`infonce_relation_gap`.

>>> toy = toy_query(n_pos=3, n_neg=5, seed=0)
>>> detached = query_forces(toy, tau_neg=0.9, weight_grad="detached")
>>> bool((detached.neg_coef < 0).all())  # detached weights push every negative away
True
>>> attached = query_forces(toy, tau_neg=0.9)  # the paper's small-scale form
>>> bool((attached.neg_coef > 0).any())  # ...attached ones pull the far negatives in
True
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from cacr_lab.data import toy_sphere
from cacr_lab.losses import LOSSES, cacr_loss, pair_indices

__all__ = [
    "QueryForces",
    "ToyQuery",
    "closed_form_forces",
    "distance_coefficients",
    "infonce_relation_gap",
    "infonce_without_positive",
    "limit_rows",
    "loss_forces",
    "query_forces",
    "tangent",
    "toy_query",
    "toy_views",
]

WEIGHTINGS = ("full", "without_w1", "without_w2", "none")
WEIGHT_GRADS = ("attached", "detached")


# --------------------------------------------------------------------------------------------
# Toy configurations
# --------------------------------------------------------------------------------------------


@dataclass
class ToyQuery:
    """One query with its positives and negatives, float64 unit vectors.

    ``query`` (D,), ``positives`` (K, D), ``negatives`` (N, D).
    """

    query: Tensor
    positives: Tensor
    negatives: Tensor


def toy_query(
    n_pos: int = 4, n_neg: int = 12, dim: int = 2, pos_spread: float = 0.4, seed: int = 0
) -> ToyQuery:
    """A query at (1, 0, ...), positives scattered around it, negatives anywhere on the sphere.

    Positives are ``normalise(query + pos_spread * N(0, I))``; negatives are uniform on the
    sphere S^(dim-1) (on the circle for ``dim=2``). Deterministic per ``seed``.
    """
    if n_pos < 1 or n_neg < 1 or dim < 2:
        raise ValueError(f"need n_pos >= 1, n_neg >= 1, dim >= 2; got {n_pos}, {n_neg}, {dim}")
    if pos_spread < 0:
        raise ValueError(f"pos_spread must be >= 0, got {pos_spread!r}")
    g = torch.Generator().manual_seed(seed)
    query = torch.zeros(dim, dtype=torch.float64)
    query[0] = 1.0
    noise = torch.randn(n_pos, dim, generator=g, dtype=torch.float64)
    positives = F.normalize(query + pos_spread * noise, dim=-1)
    negatives = F.normalize(torch.randn(n_neg, dim, generator=g, dtype=torch.float64), dim=-1)
    return ToyQuery(query, positives, negatives)


def toy_views(
    n_images: int = 6, n_views: int = 3, dim: int = 2, spread: float = 0.25, seed: int = 0
) -> Tensor:
    """A toy batch: ``(V, B, D)`` float64 unit vectors, V = ``n_views`` views of B = ``n_images``.

    Image i's views scatter around a random centre on the sphere (``cacr_lab.data.toy_sphere``
    with one class per image), so view v of image i is ``views[v, i]``, as the losses expect.
    """
    data = toy_sphere(n_per_class=n_views, n_classes=n_images, dim=dim, spread=spread, seed=seed)
    # toy_sphere groups points by class: (B * V, D) -> (B, V, D) -> (V, B, D).
    z = F.normalize(data.images.double(), dim=-1)  # unit norm to float64 precision
    return z.view(n_images, n_views, dim).transpose(0, 1).contiguous()


def tangent(points: Tensor, vectors: Tensor) -> Tensor:
    """The part of ``vectors`` tangent to the unit sphere at ``points`` (both (..., D)).

    >>> tangent(torch.tensor([1.0, 0.0]), torch.tensor([3.0, 2.0]))
    tensor([0., 2.])
    """
    return vectors - (vectors * points).sum(-1, keepdim=True) * points


# --------------------------------------------------------------------------------------------
# Forces by autograd through the real losses
# --------------------------------------------------------------------------------------------


def loss_forces(views: Tensor, method: str = "cacr", **options) -> dict[str, np.ndarray]:
    """Force of each part of a registered loss on every point of a toy batch, by autograd.

    Args:
        views: (V, B, D) unit vectors (e.g. :func:`toy_views`); computed in float64.
        method: a key of ``cacr_lab.losses.LOSSES`` (``"cacr"``, ``"infonce"``, ...).
        options: keyword options of that loss (``tau_pos=...``, ``temperature=...``).

    Returns:
        ``{"loss": (V, B, D), <part>: (V, B, D), ...}``: minus the gradient of the loss and of each
        of its scalar parts (``attraction``/``repulsion`` for cacr and infonce), projected on the
        sphere's tangent plane at each point. The parts' forces add up to the loss's.
    """
    if method not in LOSSES:
        raise ValueError(f"unknown method {method!r}; choose one of {', '.join(LOSSES)}")
    z = views.detach().double().clone().requires_grad_(True)
    out = LOSSES[method](z, **options)
    named = {"loss": out.loss}
    named.update({n: getattr(out, n) for n in out.parts()})
    forces = {}
    for name, value in named.items():
        (grad,) = torch.autograd.grad(value, z, retain_graph=True)
        forces[name] = (-tangent(z.detach(), grad)).numpy()
    return forces


# --------------------------------------------------------------------------------------------
# Forces in closed form, one query at a time
# --------------------------------------------------------------------------------------------


def distance_coefficients(
    d2: Tensor, tau: float, kind: str = "neg", weight_grad: str = "attached"
) -> Tensor:
    """dE/dd_j for E = sum_j pi_j d_j, pi = softmax(s tau d) (s = +1 for "pos", -1 for "neg").

    ``d2`` (..., n) are the squared distances of one query's set (last dim). Attached weights:
    ``pi_j (1 + s tau (d_j - E))``; detached: ``pi_j``; ``tau = 0`` gives uniform weights 1/n.
    The attached coefficient of a negative turns negative for d_j > E + 1/tau: differentiating
    through the weights *pulls far negatives in* (moving them closer raises their weight, which
    raises E). Detached weights push every negative away.

    >>> distance_coefficients(torch.tensor([0.0, 4.0]), 0.0)
    tensor([0.5000, 0.5000])
    """
    if kind not in ("pos", "neg"):
        raise ValueError(f"kind must be 'pos' or 'neg', got {kind!r}")
    if weight_grad not in WEIGHT_GRADS:
        raise ValueError(f"weight_grad must be one of {WEIGHT_GRADS}, got {weight_grad!r}")
    if not math.isfinite(tau) or tau < 0:
        raise ValueError(f"tau must be a finite number >= 0, got {tau!r}")
    sign = 1.0 if kind == "pos" else -1.0
    pi = torch.softmax(sign * tau * d2, dim=-1)
    if weight_grad == "detached":
        return pi
    e = (pi * d2).sum(-1, keepdim=True)
    return pi * (1.0 + sign * tau * (d2 - e))


@dataclass
class QueryForces:
    """Weights and forces of one query (see :func:`query_forces`); float64 tensors.

    ``pos_weights``/``pos_d2``/``pos_coef`` (K,), ``neg_weights``/``neg_d2``/``neg_coef`` (N,):
    the weights, squared distances and coefficients c = dL/dd (> 0 pulls the point towards the
    query, < 0 pushes it away). ``query_force`` (D,) is the total force on the query,
    ``pos_forces`` (K, D) and ``neg_forces`` (N, D) the forces on its positives and negatives.
    """

    pos_weights: Tensor
    pos_d2: Tensor
    pos_coef: Tensor
    neg_weights: Tensor
    neg_d2: Tensor
    neg_coef: Tensor
    query_force: Tensor
    pos_forces: Tensor
    neg_forces: Tensor


def _forces_from_coef(x: Tensor, pts: Tensor, coef: Tensor) -> tuple[Tensor, Tensor]:
    """(force on x (D,), forces on pts (n, D)) for dL/dd_j = coef_j, d_j = 2 - 2 x.p_j."""
    grad_x = -2.0 * (coef.unsqueeze(-1) * pts).sum(0)  # sum_j c_j * grad_x d_j
    grad_p = -2.0 * coef.unsqueeze(-1) * x  # c_j * grad_{p_j} d_j
    return -tangent(x, grad_x), -tangent(pts, grad_p)


def query_forces(
    toy: ToyQuery,
    tau_pos: float = 1.0,
    tau_neg: float = 0.9,
    alpha: float = 1.0,
    beta: float = 1.0,
    weighting: str = "full",
    weight_grad: str = "attached",
    *,
    method: str = "cacr",
    temperature: float = 0.5,
) -> QueryForces:
    """Closed-form weights and forces of one query's loss (no autograd).

    ``method="cacr"`` (docs/method.md §2, one query)::

        L = alpha sum_k pi_pos(k) d_k^+  -  beta sum_j pi_neg(j) d_j^-
        c_k^+ = alpha dE^+/dd_k,   c_j^- = -beta dE^-/dd_j     (see distance_coefficients)

    ``weighting`` as in ``cacr_loss`` (``without_w1``: uniform pi_pos, ...). ``method="infonce"``:
    the query's InfoNCE term for each positive k, averaged over the K positives, with
    s = x.x' = 1 - d/2 and temperature T dividing s::

        L = mean_k [ -s_k/T + log(exp(s_k/T) + sum_j exp(s_j/T)) ]
        c_k^+ = (1 - w_k^(k)) / (2 T K),   c_j^- = -mean_k w_j^(k) / (2 T)

    with w^(k) the softmax over {positive k} + negatives; ``pos_weights`` are then 1/K and
    ``neg_weights`` the implicit weights mean_k w_j^(k) renormalised over the negatives.
    """
    x, pos, neg = toy.query.double(), toy.positives.double(), toy.negatives.double()
    d_pos = 2.0 - 2.0 * pos @ x  # (K,)
    d_neg = 2.0 - 2.0 * neg @ x  # (N,)
    K = d_pos.shape[0]
    if method == "cacr":
        if weighting not in WEIGHTINGS:
            raise ValueError(f"weighting must be one of {WEIGHTINGS}, got {weighting!r}")
        t_pos = tau_pos if weighting in ("full", "without_w2") else 0.0
        t_neg = tau_neg if weighting in ("full", "without_w1") else 0.0
        pos_w = torch.softmax(t_pos * d_pos, -1)
        neg_w = torch.softmax(-t_neg * d_neg, -1)
        pos_coef = alpha * distance_coefficients(d_pos, t_pos, "pos", weight_grad)
        neg_coef = -beta * distance_coefficients(d_neg, t_neg, "neg", weight_grad)
    elif method == "infonce":
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature!r}")
        s_pos, s_neg = 1.0 - d_pos / 2, 1.0 - d_neg / 2
        # (K, 1 + N): for positive k, softmax over [its own logit, the N negatives].
        logits = torch.cat([s_pos.unsqueeze(1), s_neg.expand(K, -1)], dim=1) / temperature
        w = torch.softmax(logits, -1)
        pos_coef = (1.0 - w[:, 0]) / (2 * temperature * K)
        neg_coef = -w[:, 1:].mean(0) / (2 * temperature)
        pos_w = torch.full_like(d_pos, 1.0 / K)
        neg_w = w[:, 1:].mean(0) / w[:, 1:].mean(0).sum()
    else:
        raise ValueError(f"method must be 'cacr' or 'infonce', got {method!r}")
    fq_pos, f_pos = _forces_from_coef(x, pos, pos_coef)
    fq_neg, f_neg = _forces_from_coef(x, neg, neg_coef)
    return QueryForces(
        pos_w, d_pos, pos_coef, neg_w, d_neg, neg_coef, fq_pos + fq_neg, f_pos, f_neg
    )


def closed_form_forces(
    views: Tensor,
    tau_pos: float = 1.0,
    tau_neg: float = 0.9,
    alpha: float = 1.0,
    beta: float = 1.0,
    weighting: str = "full",
    weight_grad: str = "attached",
) -> dict[str, np.ndarray]:
    """CACR's forces on a toy batch, as the sum of :func:`query_forces` over its queries.

    Same pairing and averaging as ``cacr_loss``: attraction, every (view v, image i) is a query
    with the K other views of image i as positives, / (V B); repulsion, for every view pair
    v < w, query (v, i) against the images j != i of view w, / (P B). A loop over queries
    (toy sizes only). Returns ``{"attraction", "repulsion", "loss"}`` each (V, B, D), equal to
    ``loss_forces(views, "cacr", ...)``.
    """
    z = views.detach().double()
    V, B, D = z.shape
    P = V * (V - 1) // 2
    opts = dict(tau_pos=tau_pos, tau_neg=tau_neg, weighting=weighting, weight_grad=weight_grad)
    attraction = torch.zeros_like(z)
    repulsion = torch.zeros_like(z)
    for v in range(V):
        others = [w for w in range(V) if w != v]
        for i in range(B):
            # Attraction: the negatives play no part; one dummy keeps the shapes valid.
            f = query_forces(
                ToyQuery(z[v, i], z[others, i], z[v, i : i + 1]), **opts, alpha=alpha, beta=0.0
            )
            attraction[v, i] += f.query_force / (V * B)
            attraction[others, i] += f.pos_forces / (V * B)
    vi, wi = pair_indices(V)
    for v, w in zip(vi.tolist(), wi.tolist()):
        for i in range(B):
            js = [j for j in range(B) if j != i]
            f = query_forces(
                ToyQuery(z[v, i], z[w, i : i + 1], z[w, js]), **opts, alpha=0.0, beta=beta
            )
            repulsion[v, i] += f.query_force / (P * B)
            repulsion[w, js] += f.neg_forces / (P * B)
    return {
        "loss": (attraction + repulsion).numpy(),
        "attraction": attraction.numpy(),
        "repulsion": repulsion.numpy(),
    }


# --------------------------------------------------------------------------------------------
# docs/method.md §4, as numbers
# --------------------------------------------------------------------------------------------


def limit_rows(views: Tensor, taus: list[float]) -> list[dict[str, float]]:
    """How CACR's weights behave as tau grows, one row per tau (tau_pos = tau_neg = tau).

    From ``cacr_loss(views, tau, tau).pos_weights / neg_weights`` over all queries of the batch:
    ``pos_max_dev`` / ``neg_max_dev`` = max |n pi - 1| over queries (0 = uniform, the tau -> 0
    limit); ``pos_farthest_weight`` = mean weight of each query's farthest positive and
    ``neg_nearest_weight`` of its nearest negative (-> 1 as tau -> inf: all weight on one point).
    """
    rows = []
    for tau in taus:
        out = cacr_loss(views.double(), tau_pos=tau, tau_neg=tau)
        row = {"tau": float(tau)}
        for side, pick in (("pos", "farthest"), ("neg", "nearest")):
            w = getattr(out, f"{side}_weights").flatten(0, -2)  # (queries, set size)
            d2 = getattr(out, f"{side}_d2").flatten(0, -2)
            target = d2.argmax(-1) if side == "pos" else d2.argmin(-1)
            row[f"{side}_max_dev"] = float((w * w.shape[-1] - 1).abs().max())
            row[f"{side}_{pick}_weight"] = float(w.gather(-1, target.unsqueeze(-1)).mean())
        rows.append(row)
    return rows


def infonce_without_positive(
    views: Tensor, temperature: float, *, keep_positive: bool = False
) -> Tensor:
    """InfoNCE in CACR's pairing: for each view pair v < w, query (v, i) against view w.

    ``mean over pairs and i of  -s_ii/T + log sum_{j != i} exp(s_ij / T)``, s_ij = z_v,i . z_w,j:
    the positive is *not* in the denominator (``keep_positive=True`` puts it back, j over all B:
    the usual one-directional InfoNCE). ``views`` (V, B, D) unit vectors.
    """
    V, B, _ = views.shape
    vi, wi = pair_indices(V, views.device)
    s = torch.bmm(views[vi], views[wi].transpose(1, 2)) / temperature  # (P, B, B)
    pos = torch.diagonal(s, dim1=-2, dim2=-1)  # (P, B)
    if not keep_positive:
        s = s.masked_fill(torch.eye(B, dtype=torch.bool, device=views.device), float("-inf"))
    return (-pos + torch.logsumexp(s, dim=-1)).mean()


def infonce_relation_gap(
    views: Tensor,
    temperature: float = 0.5,
    *,
    weight_grad: str = "detached",
    keep_positive: bool = False,
) -> dict[str, float]:
    """docs/method.md §4: CACR with detached weights, K = 1, alpha = beta = 1 and
    tau_neg = 1/(2T) has the gradient of 2T x InfoNCE with the positive removed.

    Compares ``grad cacr_loss(views, tau_neg=1/(2T), weight_grad=weight_grad)`` with
    ``2T grad infonce_without_positive(views, T, keep_positive=keep_positive)`` for ``views``
    (2, B, D) (V = 2, so K = 1). Returns ``{"max_abs_diff", "max_abs_grad"}``: the largest
    entry of the difference and of the CACR gradient. The identity holds (diff ~ 1e-16) only
    for detached weights without the positive in the denominator.
    """
    if views.shape[0] != 2:
        raise ValueError(f"the identity is for K = 1, i.e. V = 2 views; got V={views.shape[0]}")
    z = views.detach().double().clone().requires_grad_(True)
    out = cacr_loss(z, tau_pos=1.0, tau_neg=1.0 / (2 * temperature), weight_grad=weight_grad)
    (g_cacr,) = torch.autograd.grad(out.loss, z)
    info = infonce_without_positive(z, temperature, keep_positive=keep_positive)
    (g_info,) = torch.autograd.grad(2 * temperature * info, z)
    return {
        "max_abs_diff": float((g_cacr - g_info).abs().max()),
        "max_abs_grad": float(g_cacr.abs().max()),
    }
