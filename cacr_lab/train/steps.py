"""What every training step is made of: device, learning rate, seeded draws, the views' embeddings.

Small pure pieces that the trainer (:mod:`cacr_lab.train.trainer`), the DDP wrapper
(:mod:`cacr_lab.train.distributed`) and the benchmarks share, so a benchmark's step is the
trainer's step.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from cacr_lab.config import TrainConfig


def resolve_device(device: str) -> torch.device:
    """``"auto"`` -> CUDA when there is one, else CPU; asking for CUDA where none is is an error."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} asked for, but CUDA is not available here")
    return torch.device(device)


def lr_at_epoch(config: TrainConfig, epoch: int) -> float:
    """Learning rate during ``epoch`` (0-based).

    step: the reference's x0.1 at epochs 155, 170, 185 of 200, scaled to ``config.epochs``;
    cosine: half a cosine from the base rate to 0.

    >>> cfg = TrainConfig(epochs=200, batch_size=256)
    >>> [round(lr_at_epoch(cfg, e), 6) for e in (0, 154, 155, 170, 185)]
    [0.12, 0.12, 0.012, 0.0012, 0.00012]
    """
    base = config.lr if config.lr is not None else 0.12 * config.batch_size / 256
    if config.schedule == "cosine":
        return base * 0.5 * (1 + math.cos(math.pi * epoch / config.epochs))
    milestones = [round(m * config.epochs / 200) for m in (155, 170, 185)]
    return base * 0.1 ** sum(epoch >= m for m in milestones)


def embed_views(model: nn.Module, views: torch.Tensor, view_batching: str) -> torch.Tensor:
    """``views: (V, B, ...)`` -> ``(V, B, D)`` normalised embeddings.

    "separate" runs one forward per view, as the reference does: BatchNorm statistics are then
    per view. "joint" runs all V*B images in one forward (faster on a GPU; BN statistics mix
    the views, which changes the training signal slightly).
    """
    if view_batching == "joint":
        z = model(views.flatten(0, 1))
        return z.view(views.shape[0], views.shape[1], -1)
    return torch.stack([model(v) for v in views])


def _seeded(seed: int, *salt: int, device: torch.device | str = "cpu") -> torch.Generator:
    """A generator seeded by ``(seed, *salt)``: (seed, 2, epoch) orders the data, (seed, 1, step,
    rank) draws a step's views, so a resumed run draws what an uninterrupted one would."""
    g = torch.Generator(device=device)
    g.manual_seed(hash((seed, *salt)) & 0x7FFF_FFFF_FFFF)
    return g
