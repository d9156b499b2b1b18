"""The ``moco`` method's training pieces (docs/method.md §6): predictor, momentum encoder, crops.

The authors' ImageNet code is MoCo v3's architecture with CACR's loss
(:func:`cacr_lab.losses.moco_cacr_loss`):

- **online branch** (:class:`OnlineBranch`): encoder -> projection -> predictor, L2-normalised,
  gives the predictions q of every view (global views and local crops), with gradient. Our
  encoders end in their projection head and L2-normalise it, so the predictor reads the unit
  projection (MoCo v3's reads the projector's BatchNorm output: both scale-free inputs to a
  Linear + BatchNorm layer). The predictor is MoCo v3's two-layer MLP, ``Linear(D, H, no bias)
  - BN - ReLU - Linear(H, D, no bias)``, with H = ``predictor_hidden``: MoCo v3 takes 4096 for
  D = 256; for our small encoders H = max(the encoder's feature width, 2 D): 4096 for
  SmallAlexNet (its fc7 width, MoCo v3's value), 512 for ResNet-18, 256 for the small CNN
  (D = 128), 64 for the toy MLP.
- **momentum encoder** (``MocoBranch.key_model``): a copy of encoder + projection, never
  trained, moved after every optimiser step to ``m * key + (1 - m) * online`` (parameters only;
  its BatchNorm statistics are its own, as in MoCo v3), with m from ``moco_momentum`` and
  ``moco_momentum_schedule`` (:func:`momentum_at`). It gives the keys of the global views, and in
  ``full`` multi-crop mode of the local crops too. Under DDP the predictions and the keys of all
  ranks are gathered (:func:`cacr_lab.train.distributed.gather_views`): the global batch is the
  negatives, and every rank computes the same global loss.
- **local crops** (``moco_local_crops`` > 0, :func:`local_crop_augment`): the dataset's crop
  recipe at half the global side (32 px images -> 16 px, STL-10's 64 px crops -> 32 px; the
  authors' 96 px of 224, 0.43) and area scale 0.05-0.4 (the authors' / DINO's local scale), the
  same flip and colour jitter; drawn after the global views from the step's generator, so
  resumed runs stay bit-exact.

A checkpoint carries :meth:`MocoBranch.state_dict` (the predictor and the key model).
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from cacr_lab.config import TrainConfig
from cacr_lab.data import BatchAugment
from cacr_lab.losses import LossOutput, moco_cacr_loss
from cacr_lab.train.distributed import MultiViewEncoder, gather_views
from cacr_lab.train.steps import embed_views

LOCAL_CROP_SCALE = (0.05, 0.4)  # area fraction of a local crop (authors' / DINO's default)


def local_crop_size(image_size: int) -> int:
    """The side of a local crop: half the global crop's, at least 8 px.

    >>> local_crop_size(32), local_crop_size(64)
    (16, 32)
    """
    return max(8, image_size // 2)


def local_crop_augment(augment: BatchAugment) -> BatchAugment:
    """The global views' crop augmentation at the local crops' size and area scale."""
    local = copy.copy(augment)
    local.image_size, local.crop_scale = local_crop_size(augment.image_size), LOCAL_CROP_SCALE
    return local


def predictor_hidden(encoder: nn.Module) -> int:
    """The predictor's hidden width: max(the encoder's feature width, 2 * its output width)."""
    return max(int(encoder.feature_dim), 2 * int(encoder.feat_dim))


def build_predictor(dim: int, hidden: int) -> nn.Sequential:
    """MoCo v3's predictor: ``Linear(dim, hidden) - BN - ReLU - Linear(hidden, dim)``, no biases,
    no BatchNorm at the end. ``(B, dim) -> (B, dim)``, not normalised."""
    return nn.Sequential(
        nn.Linear(dim, hidden, bias=False),
        nn.BatchNorm1d(hidden),
        nn.ReLU(inplace=True),
        nn.Linear(hidden, dim, bias=False),
    )


def momentum_at(config: TrainConfig, step: int, total_steps: int) -> float:
    """The EMA rate of the key encoder's update that produces the keys of ``step``.

    "constant": ``moco_momentum``; "cosine" (MoCo v3's ``--moco-m-cos``): from ``moco_momentum``
    at step 0 up to 1 at ``total_steps`` on a half-cosine, 1 - (1 - m) (1 + cos(pi t / T)) / 2.

    >>> cfg = TrainConfig(method="moco", moco_momentum=0.996, moco_momentum_schedule="cosine")
    >>> [round(momentum_at(cfg, s, 100), 4) for s in (0, 50, 100)]
    [0.996, 0.998, 1.0]
    """
    m = config.moco_momentum
    if config.moco_momentum_schedule == "constant":
        return m
    return 1.0 - (1.0 - m) * 0.5 * (1.0 + math.cos(math.pi * step / total_steps))


@dataclass
class MultiCrop:
    """A step's views with local crops: ``views`` (G, B, C, S, S) global crops, ``local``
    (L, B, C, s, s) local crops of the same B images."""

    views: torch.Tensor
    local: torch.Tensor


class OnlineBranch(nn.Module):
    """encoder -> predictor -> L2 norm: ``(G, B, ...)`` views and optional ``(L, B, ...)`` local
    crops -> ``(G + L, B, D)`` predictions, in one module call (so DDP sees one forward)."""

    def __init__(self, encoder: nn.Module, predictor: nn.Module, view_batching: str):
        super().__init__()
        self.encoder, self.predictor, self.view_batching = encoder, predictor, view_batching

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.predictor(self.encoder(x)), dim=1)

    def forward(self, views: torch.Tensor, local: torch.Tensor | None = None) -> torch.Tensor:
        q = embed_views(self.predict, views, self.view_batching)
        if local is None:
            return q
        return torch.cat([q, embed_views(self.predict, local, self.view_batching)])


class MocoBranch:
    """The moco method's state beside the encoder: predictor, key model, local crops, schedule.

    ``model`` is the (uncompiled) encoder the trainer optimises; ``augment`` its global views'
    augmentation; ``total_steps`` the length of the momentum schedule (epochs * steps/epoch).
    """

    def __init__(
        self,
        model: nn.Module,
        config: TrainConfig,
        augment: BatchAugment,
        total_steps: int,
        *,
        sync_bn: bool = False,
    ):
        self.config, self.total_steps = config, total_steps
        self.loss_kwargs = config.resolved_loss_options()
        device = next(model.parameters()).device
        self.predictor = build_predictor(model.feat_dim, predictor_hidden(model)).to(device)
        key_model = MultiViewEncoder(copy.deepcopy(model), config.view_batching)
        if sync_bn:  # MoCo v3 converts the momentum encoder as well
            key_model = nn.SyncBatchNorm.convert_sync_batchnorm(key_model)
        self.key_model = key_model.requires_grad_(False)
        self.n_local = config.moco_local_crops
        self.local_augment = local_crop_augment(augment) if self.n_local else None

    def describe(self) -> dict[str, Any]:
        """What a run's config.json records about the branch (sizes the config does not hold)."""
        d: dict[str, Any] = {"moco_predictor_hidden": self.predictor[0].out_features}
        if self.local_augment is not None:
            d |= {
                "moco_local_crop_size": self.local_augment.image_size,
                "moco_local_crop_scale": list(LOCAL_CROP_SCALE),
            }
        return d

    def online(self, encoder: nn.Module) -> OnlineBranch:
        """The module the loop calls (``encoder`` may be the compiled one); DDP wraps it."""
        return OnlineBranch(encoder, self.predictor, self.config.view_batching)

    def local_views(
        self, images: torch.Tensor, generator: torch.Generator | None
    ) -> torch.Tensor | None:
        """``(L, B, C, s, s)`` local crops of ``images`` (drawn after the global views from the
        same ``generator``); None without local crops."""
        if self.local_augment is None:
            return None
        return self.local_augment(images, self.n_local, generator=generator)

    def train(self, mode: bool = True) -> None:
        self.predictor.train(mode)
        self.key_model.train(mode)

    def loss(
        self,
        online: nn.Module,
        views: torch.Tensor | MultiCrop,
        *,
        amp: bool,
        gather: bool,
        check: bool = False,
    ) -> LossOutput:
        """The loss of a step's ``views``: predictions from ``online`` (the module the loop
        calls), keys from the key model; both gathered over the ranks when ``gather``."""
        glob, local = (views.views, views.local) if isinstance(views, MultiCrop) else (views, None)
        with torch.autocast(glob.device.type, dtype=torch.bfloat16, enabled=amp):
            q = online(glob, local)  # (G + L, b, D)
            with torch.no_grad():
                k = self.key_model(glob)  # (G, b, D)
                if local is not None and self.config.moco_multicrop == "full":
                    k = torch.cat([k, self.key_model(local)])  # (G + L, b, D)
        if gather:
            q, k = gather_views(q), gather_views(k)  # (., W*b, D): the global batch
        return moco_cacr_loss(
            q,
            **self.loss_kwargs,
            keys=k,
            multicrop=self.config.moco_multicrop,
            check_inputs=check,
        )

    @torch.no_grad()
    def probe_loss(self, model: nn.Module, views: torch.Tensor, *, amp: bool) -> LossOutput:
        """The loss on the held-out probe views (global only), everything in eval mode."""
        self.train(False)
        try:
            online = OnlineBranch(model, self.predictor, self.config.view_batching)
            out = self.loss(online, views, amp=amp, gather=False)
        finally:
            self.train(True)
        return out.detach()

    @torch.no_grad()
    def update(self, model: nn.Module, step: int) -> None:
        """EMA of ``model``'s parameters into the key model, at the momentum of ``step``."""
        m = momentum_at(self.config, step, self.total_steps)
        for pk, pq in zip(self.key_model.encoder.parameters(), model.parameters()):
            pk.mul_(m).add_(pq.detach(), alpha=1.0 - m)

    def state_dict(self) -> dict[str, Any]:
        return {"predictor": self.predictor.state_dict(), "key_model": self.key_model.state_dict()}

    def load_state_dict(self, state: dict[str, Any] | None) -> None:
        """Restore from a checkpoint's ``moco`` entry; ValueError for a checkpoint without one
        (a moco run of an older cacr_lab, which had no predictor)."""
        if not state or "predictor" not in state:
            raise ValueError(
                "this checkpoint has no moco predictor / key model (written by an older cacr_lab "
                "with a queue instead); start the moco run afresh"
            )
        self.predictor.load_state_dict(state["predictor"])
        self.key_model.load_state_dict(state["key_model"])
