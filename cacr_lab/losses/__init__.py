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

The package, bottom to top (each module imports only those above it in this list, and torch):

- ``base``: :class:`LossOutput`, argument checks (``check_choice``), view-pair geometry
  (``pair_indices``) and the precision helpers every loss shares.
- ``_cacr_kernel``: CACR's fused autograd Functions (``_CACR``, ``_Attraction``) with
  closed-form backwards, and the CPU scratch buffers they lease.
- ``_infonce_kernel``: ``block_log_sums``, the InfoNCE family's per-query log-sum-exps over the
  view-pair blocks of one Gram matrix, fused, with a closed-form backward (``_BlockLogSums``).
- ``cacr``: :func:`cacr_loss`, its fused default path and its generic (plain autograd) path.
- ``infonce``: :func:`info_nce_loss`, :func:`hard_negative_loss`, :func:`debiased_loss`, each in
  two multi-view forms (``MULTIVIEW_FORMS``: per view pair, averaged; CMC's full graph, summed).
- ``align_uniform``: :func:`alignment`, :func:`uniformity` (also the evaluation's metrics) and
  :func:`align_uniform_loss`.
- ``moco``: :func:`moco_cacr_loss`, CACR's large-scale form (the authors' ImageNet code on
  MoCo v3: predictions, momentum keys, no queue) and its multi-crop modes ``MULTICROP``.
- ``registry``: ``LOSSES`` (method name -> loss), ``loss_options``, ``OPTION_HELP``,
  ``paper_loss_options`` and the option vocabularies (``WEIGHTINGS``, ``WEIGHT_GRADS``,
  ``COSTS``, ``MULTIVIEW_FORMS``, ``PART_NAMES``).
"""

from __future__ import annotations

from .align_uniform import align_uniform_loss, alignment, uniformity
from .base import PART_NAMES, LossOutput, check_choice, pair_indices
from .cacr import COSTS, WEIGHT_GRADS, WEIGHTINGS, cacr_loss
from .infonce import MULTIVIEW_FORMS, debiased_loss, hard_negative_loss, info_nce_loss
from .moco import MULTICROP, moco_cacr_loss
from .registry import LOSSES, OPTION_HELP, loss_options, paper_loss_options

__all__ = [
    "COSTS",
    "LOSSES",
    "LossOutput",
    "MULTICROP",
    "MULTIVIEW_FORMS",
    "OPTION_HELP",
    "PART_NAMES",
    "WEIGHTINGS",
    "WEIGHT_GRADS",
    "align_uniform_loss",
    "alignment",
    "cacr_loss",
    "check_choice",
    "debiased_loss",
    "hard_negative_loss",
    "info_nce_loss",
    "loss_options",
    "moco_cacr_loss",
    "paper_loss_options",
    "pair_indices",
    "uniformity",
]
