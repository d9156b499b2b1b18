"""CACR: Contrastive Attraction and Contrastive Repulsion (Zheng et al., TMLR 2023).

``cacr_loss`` validates its options, then takes one of two paths:

- the default options (euclidean cost, weighted repulsion, reference pairing): ``_cacr_fused``,
  the fused autograd Function ``_CACR`` of :mod:`cacr_lab.losses._cacr_kernel`, whose (P, B, B-1)
  diagnostics are computed on first read;
- every other option (uniform pi_neg, rbf cost, ``symmetric``): ``_cacr_generic``, the
  attraction's Function ``_Attraction`` and ``_repulsion_generic``, the repulsion written as the
  equations read (plain autograd).

``WEIGHTINGS``, ``WEIGHT_GRADS`` and ``COSTS`` are the choices of its options.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from ._cacr_kernel import _CACR, _Attraction
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
    _softmax_weights,
    check_choice,
)

WEIGHTINGS = ("full", "without_w1", "without_w2", "none")
WEIGHT_GRADS = ("attached", "detached")
COSTS = ("euclidean", "rbf")


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
    (docs/method.md §2); the defaults reproduce its numbers and gradients.

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
            sign of the positive term (pushing the positive away). It acts in every
            ``weighting``, also "none" and "without_w2" (R then uses uniform pi_neg), where the
            reference code silently ignores it: a deviation, since the correction does not
            depend on the weights (docs/method.md §3.3). Euclidean cost only.
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
    _check_cacr_options(
        tau_pos, tau_neg, alpha, beta, weighting, weight_grad, cost, rbf_t, debiased_tau_plus
    )
    z = _check_views(views, check_inputs)
    detach = weight_grad == "detached"
    weight_pos = weighting in ("full", "without_w2")
    weight_neg = weighting in ("full", "without_w1")
    if cost == "euclidean" and weight_neg and not symmetric:
        return _cacr_fused(
            z, tau_pos, tau_neg, alpha, beta, weight_pos, detach, rbf_t, debiased_tau_plus
        )
    return _cacr_generic(
        z,
        tau_pos,
        tau_neg,
        alpha,
        beta,
        weight_pos,
        weight_neg,
        detach,
        cost,
        rbf_t,
        debiased_tau_plus,
        symmetric,
    )


def _check_cacr_options(
    tau_pos: float,
    tau_neg: float,
    alpha: float,
    beta: float,
    weighting: str,
    weight_grad: str,
    cost: str,
    rbf_t: float,
    debiased_tau_plus: float | None,
) -> None:
    """``cacr_loss``'s option checks, in its argument order (ValueError names the bad value)."""
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


def _cacr_fused(
    z: Tensor,
    tau_pos: float,
    tau_neg: float,
    alpha: float,
    beta: float,
    weight_pos: bool,
    detach: bool,
    rbf_t: float,
    debiased_tau_plus: float | None,
) -> LossOutput:
    """The default (reference) pairing: attraction and repulsion fused, closed-form backward.

    z: (V, B, D), checked. The (P, B, B-1) ``neg_weights`` / ``neg_d2`` are computed on first
    read (``_first_read``).
    """
    with _no_autocast(z.device):
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
    return _cacr_output(attraction, repulsion, pi_pos, pos_d2, pi_neg, neg_d2)


def _cacr_generic(
    z: Tensor,
    tau_pos: float,
    tau_neg: float,
    alpha: float,
    beta: float,
    weight_pos: bool,
    weight_neg: bool,
    detach: bool,
    cost: str,
    rbf_t: float,
    debiased_tau_plus: float | None,
    symmetric: bool,
) -> LossOutput:
    """Every other option: ``_Attraction`` and the plain-autograd ``_repulsion_generic``.

    z: (V, B, D), checked. ``neg_weights`` / ``neg_d2``: (P, B, B-1), or (V, B, V(B-1)) when
    ``symmetric``.
    """
    with _no_autocast(z.device):
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
    return _cacr_output(attraction, repulsion, pi_pos, pos_d2, pi_neg, neg_d2)


def _cacr_output(
    attraction: Tensor,
    repulsion: Tensor,
    pi_pos: Tensor,
    pos_d2: Tensor,
    pi_neg: Tensor | Callable[[], Tensor],
    neg_d2: Tensor | Callable[[], Tensor],
) -> LossOutput:
    """The LossOutput of both paths: loss = attraction + repulsion, pi_pos / d2 detached."""
    return LossOutput(
        loss=attraction + repulsion,
        attraction=attraction,
        repulsion=repulsion,
        pos_weights=pi_pos.detach(),
        pos_d2=pos_d2.detach(),
        neg_weights=pi_neg,
        neg_d2=neg_d2,
    )


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
