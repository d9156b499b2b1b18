"""CACR's large-scale form, the authors' ImageNet code (built on MoCo v3): predictions and keys.

``moco_cacr_loss`` is the method ``moco`` of the registry (docs/method.md §6). The online branch
(encoder -> projector -> predictor) gives the predictions q, a momentum copy of encoder and
projector gives the keys k (no gradient; the trainer's moco path builds both); the loss weighs,
for every anchor key, the predictions of the other views. With two views and the RBF cost it is
MoCo v3's symmetric loss divided by 2. ``MULTICROP`` holds the multi-crop modes.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from .base import (
    LossOutput,
    _check_positive,
    _check_views,
    _first_read,
    _no_autocast,
    _off_diagonal,
    check_choice,
)
from .cacr import COSTS

MULTICROP = ("light", "full")


def moco_cacr_loss(
    views: Tensor | Sequence[Tensor],
    temperature: float = 1.0,
    cost: str = "rbf",
    *,
    keys: Tensor | Sequence[Tensor] | None = None,
    multicrop: str = "light",
    check_inputs: bool = True,
) -> LossOutput:
    r"""CACR's large-scale form: the authors' ImageNet loss on MoCo v3's architecture.

    H. Zheng et al., "Contrastive Attraction and Contrastive Repulsion for Representation
    Learning", TMLR 2023, arXiv:2105.03746, ImageNet code; architecture of MoCo v3 (X. Chen,
    S. Xie, K. He, "An Empirical Study of Training Self-Supervised Vision Transformers", ICCV
    2021, arXiv:2104.02057). The temperature T *divides* (d2 in the weights, q.k in the logits).

    Every key view a < G is an **anchor**. Its positives are the predictions q_j of the other
    views j != a (local crops included), weighted per sample n by

        p_j = softmax_j( ||q_jn - k_an||^2 / T )          (no gradient; farther -> heavier)

    and its negatives are the keys k_am of the other samples m != n (the whole batch, i.e. the
    global batch when the trainer gathers the keys over the GPUs; no queue). With s = q.k:

        rbf:        loss_a = sum_j mean_n p_j * 2T * CE(s(q_jn, k_a.) / T, own key n)
                           = sum_j mean_n p_j * [ d2(q_jn, k_an) + 2T log sum_m exp(-d2_nm / 2T) ]
        euclidean:  c = 1 - s;  loss_a = sum_j mean_n p_j * (CA + CR),  CA = c(q_jn, k_an),
                    CR = -sum_{m != n} w_m c(q_jn, k_am),  w = softmax_m(-c / T) (no gradient)
        loss = mean over the anchors

    ``attraction`` is the p-weighted first term (rbf: d2 to the own key, including the positive's
    share of the cross-entropy; euclidean: CA), ``repulsion`` the second; they add up to
    ``loss``. With V = G = 2 and the rbf cost the loss is (ctr(q1, k2) + ctr(q2, k1)) / 2, MoCo
    v3's symmetric loss divided by 2 (ctr = cross-entropy * 2T).

    Reading of the euclidean "sum over n": the authors' code sums (``.sum()``) over each GPU's
    N = B / W queries where the rbf cost takes a mean; this function takes the mean for both, so
    the authors' euclidean loss is N times this one (the same direction, a gradient N times
    larger, which the learning rate absorbs).

    Args:
        views: (V, B, D), or V tensors (B, D): the predictions q (online branch), L2-normalised
            along D; views[:G] are the G views that have keys (the global crops), views[G:]
            local crops.
        temperature: T > 0 (authors: 1.0 for ResNet-50, 0.2 for ViT).
        cost: ``"rbf"`` (authors' default) or ``"euclidean"``.
        keys: (G, B, D), 2 <= G <= V, L2-normalised momentum-branch embeddings of views[:G]
            (detached here); default: the predictions themselves, detached (G = V).
        multicrop: ``"light"``: the anchors are the G keyed views, local crops only queries;
            ``"full"``: every view is an anchor, so keys must be given for all of them (G = V).
            With no local crops (G = V) both are the same.

    Returns a :class:`LossOutput`; with A = G anchors and K = V - 1 query views per anchor:
    ``pos_weights``, ``pos_d2``: (A, B, K), p over the views j != a (increasing j) and
    ||q_jn - k_an||^2; ``neg_weights``, ``neg_d2``: (A, B, K, B - 1), softmax_m(s / T) over the
    other samples' keys (the euclidean CR weights; for rbf the cross-entropy's weights on its
    negatives, renormalised without the positive) and their d2, computed on first read.

    >>> q = torch.nn.functional.normalize(torch.randn(4, 6, 8), dim=-1)  # 2 global + 2 local
    >>> out = moco_cacr_loss(q, keys=q[:2])
    >>> tuple(out.pos_weights.shape), tuple(out.neg_weights.shape)
    ((2, 6, 3), (2, 6, 3, 5))
    """
    _check_positive(temperature=temperature)
    check_choice("cost", cost, COSTS)
    check_choice("multicrop", multicrop, MULTICROP)
    q = _check_views(views, check_inputs)
    k = q.detach() if keys is None else _check_keys(keys, q, check_inputs)
    V, A = q.shape[0], k.shape[0]
    if multicrop == "full" and A != V:
        raise ValueError(
            f"multicrop='full' makes every view an anchor and needs keys for all V={V} views; "
            f"got keys for G={A} (multicrop='light' uses the global views' keys only)"
        )
    T = float(temperature)
    with _no_autocast(q.device):
        B, D = q.shape[1:]
        # (A, K, B, D): each anchor's query views j != a. A one-hot matmul, not q[index]: the
        # backward of an index with repeats accumulates in a thread-dependent order on CPU,
        # and resumed runs must be bit-exact.
        qa = (_other_views(A, V, q.device, q.dtype) @ q.reshape(V, B * D)).view(A, V - 1, B, D)
        sims = torch.einsum("ajbd,acd->ajbc", qa, k.to(q.dtype))  # (A, K, B, B)
        own = sims.diagonal(dim1=-2, dim2=-1)  # (A, K, B): q_jn . k_an
        d2_pos = 2.0 - 2.0 * own
        with torch.no_grad():
            p = torch.softmax(d2_pos / T, dim=1)  # (A, K, B): over the K views, per sample
        if cost == "rbf":
            attract = d2_pos
            repel = 2.0 * T * torch.logsumexp((sims - 1.0) / T, dim=-1)  # (A, K, B)
        else:
            attract = 1.0 - own
            neg_cost = _off_diagonal(1.0 - sims)  # (A, K, B, B-1): the other samples' keys
            with torch.no_grad():
                w = torch.softmax(-neg_cost / T, dim=-1)
            repel = -(w * neg_cost).sum(-1)  # (A, K, B)
        # sum over the K views, mean over the B samples, mean over the A anchors
        attraction = (p * attract).sum(1).mean()
        repulsion = (p * repel).sum(1).mean()
    return LossOutput(
        loss=attraction + repulsion,
        attraction=attraction,
        repulsion=repulsion,
        pos_weights=p.permute(0, 2, 1),
        pos_d2=d2_pos.detach().permute(0, 2, 1),
        neg_weights=_first_read(_negative_weights, sims.detach(), T),
        neg_d2=_first_read(_negative_d2, sims.detach()),
    )


def _check_keys(keys: Tensor | Sequence[Tensor], q: Tensor, check_values: bool) -> Tensor:
    """``keys`` as a detached (G, B, D) tensor of q's dtype family; ValueError names the shape."""
    try:
        k = _check_views(keys, check_values).detach()
    except ValueError as err:
        raise ValueError(f"keys: {err}") from None
    V, B, D = q.shape
    if k.shape[1:] != q.shape[1:] or k.shape[0] > V:
        raise ValueError(
            f"keys must be (G, {B}, {D}) with 2 <= G <= V={V} (the keys of views[:G]); "
            f"got shape {tuple(k.shape)}"
        )
    return k


def _other_views(A: int, V: int, device: torch.device, dtype: torch.dtype) -> Tensor:
    """(A * (V - 1), V) one-hot rows: for anchor a, the views j != a in increasing order.

    >>> _other_views(2, 4, torch.device("cpu"), torch.float32).argmax(1).view(2, 3).tolist()
    [[1, 2, 3], [0, 2, 3]]
    """
    j = torch.arange(V, device=device)
    keep = j.unsqueeze(0) != torch.arange(A, device=device).unsqueeze(1)  # (A, V)
    return torch.eye(V, device=device, dtype=dtype)[j.expand(A, V)[keep]]


def _negative_weights(sims: Tensor, T: float) -> Tensor:
    """(A, K, B, B) similarities -> (A, B, K, B-1): softmax(s / T) over the other samples' keys."""
    return torch.softmax(_off_diagonal(sims) / T, dim=-1).permute(0, 2, 1, 3)


def _negative_d2(sims: Tensor) -> Tensor:
    """(A, K, B, B) similarities -> (A, B, K, B-1): d2 to the other samples' keys."""
    return (2.0 - 2.0 * _off_diagonal(sims)).permute(0, 2, 1, 3)
