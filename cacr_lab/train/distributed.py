"""Several processes, one run: the torchrun setup, DDP wrapping, the global batch's negatives.

Under ``torchrun`` each process trains on its share of every batch (:func:`rank_share`) and
:func:`gather_views` collects the embeddings of all ranks, so every query meets the B - 1
negatives of the global batch and the loss equals the one-process loss. Only rank 0 evaluates
and writes the run directory; the others write to a :class:`_NullWriter`. Launched without
torchrun, :meth:`DistInfo.from_env` says world_size 1 and none of this is used.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.utils.data import DistributedSampler

from cacr_lab.train.steps import embed_views, resolve_device


class MultiViewEncoder(nn.Module):
    """Wraps an encoder so that ``(V, B, ...)`` views -> ``(V, B, D)`` is one module call.

    All V views then go through one forward of the wrapped module, so DDP sees one forward per
    backward (the MoCo key encoder uses the same wrapper to embed the views alike).
    """

    def __init__(self, encoder: nn.Module, view_batching: str = "separate"):
        super().__init__()
        self.encoder, self.view_batching = encoder, view_batching

    def forward(self, views: torch.Tensor) -> torch.Tensor:
        return embed_views(self.encoder, views, self.view_batching)


@dataclass
class DistInfo:
    """This process's place in a torchrun job (world_size 1 when not launched by torchrun)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @classmethod
    def from_env(cls) -> DistInfo:
        """Read torchrun's variables and join the process group (NCCL on GPUs, else gloo)."""
        import torch.distributed as dist

        world = int(os.environ.get("WORLD_SIZE", "1"))
        if world <= 1:
            return cls()
        if not dist.is_initialized():
            dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
        return cls(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", 0)))

    def device(self, requested: str) -> torch.device:
        dev = resolve_device(requested)
        if self.world_size > 1 and dev.type == "cuda":
            torch.cuda.set_device(self.local_rank)
            return torch.device("cuda", self.local_rank)
        return dev


def wrap_ddp(module: nn.Module, device: torch.device, *, sync_bn: bool) -> nn.Module:
    """``module`` as DistributedDataParallel, its BatchNorms synchronised first when asked."""
    if sync_bn:
        if device.type != "cuda":
            raise ValueError("sync_bn needs CUDA devices (SyncBatchNorm has no CPU path)")
        module = nn.SyncBatchNorm.convert_sync_batchnorm(module)
    ids = [device.index] if device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(module, device_ids=ids)


def rank_share(n: int, dist: DistInfo, *, seed: int, epoch: int) -> torch.Tensor:
    """This rank's share (about n / world_size indices, disjoint from the other ranks') of
    ``epoch``'s seeded permutation of ``range(n)``, as torch's DistributedSampler deals it."""
    sampler = DistributedSampler(
        range(n),
        num_replicas=dist.world_size,
        rank=dist.rank,
        shuffle=True,
        seed=seed,
        drop_last=True,
    )
    sampler.set_epoch(epoch)
    return torch.tensor(list(sampler))


def gather_views(z: torch.Tensor) -> torch.Tensor:
    """``(V, b, D)`` on each of W ranks -> ``(V, W*b, D)``, rank-major along the batch.

    Gradients flow back to every rank's slice (the backward of all_gather sums the ranks'
    gradients). Every rank computes the same global loss, so each slice receives W times its
    gradient; DDP's averaging over W ranks then gives exactly the one-process gradient.
    """
    from torch.distributed.nn.functional import all_gather

    return torch.cat(all_gather(z.contiguous()), dim=1)


class _NullWriter:
    """What ranks other than 0 write to: nothing."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def __getattr__(self, name: str) -> Any:
        return lambda *a, **k: None
