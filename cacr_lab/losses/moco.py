"""CACR's large-scale form, MoCo-style: momentum-encoder keys and a queue of past keys.

``moco_cacr_loss`` is the method ``moco`` of the registry; with one positive key per query it is
MoCo v3's loss (see its docstring).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from .base import LossOutput, _check_positive, _check_views, _no_autocast


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
        logits = _moco_logits(q, k, queue, temperature)  # (V, V, B, B + Q)
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
        neg_logits = _negative_logits(logits, keep)  # (V, B, K, N)
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


def _moco_logits(q: Tensor, k: Tensor, queue: Tensor | None, temperature: float) -> Tensor:
    """(V, V, B, B + Q) logits -d2 / (2T) of every query view against every key view's B keys,
    then the Q queued keys (the same for every key view); q, k: (V, B, D), queue (Q, D)."""
    V, B, _ = q.shape
    sims = torch.einsum("vbd,wcd->vwbc", q, k)  # (V, V, B, B): query view, key view
    logits = (sims - 1.0) / temperature  # = -d2 / (2T)
    if queue is not None and queue.shape[0] > 0:
        qsims = torch.einsum("vbd,qd->vbq", q, queue.detach().to(q.dtype))  # (V, B, Q)
        logits_q = ((qsims - 1.0) / temperature).unsqueeze(1).expand(V, V, B, -1)
        logits = torch.cat([logits, logits_q], dim=-1)  # (V, V, B, B + Q)
    return logits


def _negative_logits(logits: Tensor, keep: Tensor) -> Tensor:
    """(V, V, B, B + Q) logits -> (V, B, K, B - 1 + Q): for each query and each of its K = V - 1
    key views (``keep``: (V, V), w != v), the logits of its negatives (the batch's other keys,
    then the queue)."""
    V, _, B, _ = logits.shape
    idx = torch.arange(B, device=logits.device)
    neg_logits = logits[keep].view(V, V - 1, B, -1)
    neg_mask = torch.ones(B, neg_logits.shape[-1], dtype=torch.bool, device=logits.device)
    neg_mask[idx, idx] = False
    return neg_logits[..., neg_mask].view(V, V - 1, B, -1).permute(0, 2, 1, 3)
