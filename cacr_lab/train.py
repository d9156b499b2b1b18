"""The trainer: config -> data -> model -> optimiser -> loop -> log and checkpoint.

``train(TrainConfig(...), "runs/NAME")`` pre-trains an encoder with any loss of
:data:`cacr_lab.losses.LOSSES` and writes a run directory (format: :mod:`cacr_lab.runs`) that the
CLI, the notebooks and the dashboard read. What happens, in order:

1. The dataset is loaded into memory (:func:`cacr_lab.data.load_dataset`); the pre-training set
   is the train split, made imbalanced when asked (REFERENCE.md section 7). Evaluation always
   uses the balanced train split as the kNN bank / probe training set and the held-out split as
   the test set.
2. Every step draws a batch, makes V = K + 1 views of it with the batched augmentation on the
   training device (:class:`cacr_lab.data.BatchAugment`), embeds each view (``view_batching``),
   and takes an SGD step on the loss. The data order and the views are drawn from generators
   seeded by (seed, epoch) and (seed, step), so a run is reproducible on CPU and a resumed run
   continues exactly where an uninterrupted one would be.
3. Every ``log_every`` steps a train record is logged (the only host sync of the loop on a GPU);
   every ``eval_every`` epochs (and before the first step) an evaluation record (kNN accuracy,
   alignment, uniformity, weight statistics) and a snapshot (embedding sample, weight sample)
   are written; ``last.pt`` after every epoch and ``epoch_NNNN.pt`` every ``checkpoint_every``.
4. At the end a fast linear probe gives the final accuracy and per-class accuracy.

A non-finite loss stops the run with an error naming the step and the last finite values; the
last good checkpoint stays. SIGTERM / Ctrl-C stop the run cleanly (state "stopped").
"""

from __future__ import annotations

import copy
import functools
import json
import math
import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DistributedSampler

from cacr_lab._version import __version__
from cacr_lab.config import TrainConfig
from cacr_lab.data import (
    DataSplits,
    ImageData,
    batch_augment_for,
    class_counts,
    load_dataset,
    make_imbalanced,
)
from cacr_lab.evaluate import (
    alignment_uniformity,
    embed,
    extract_features,
    knn_accuracy,
    linear_probe,
    per_class_accuracy,
    weight_stats,
)
from cacr_lab.losses import LOSSES, LossOutput
from cacr_lab.models import build_encoder, default_encoder
from cacr_lab.runs import (
    CONFIG_FILE,
    RunWriter,
    atomic_write,
    checkpoint_path,
    last_checkpoint,
    load_run,
)


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or inf; the message names the step and the last finite values."""


class _StopRequested(Exception):
    pass


# --------------------------------------------------------------------------------------------
# Pieces of the run
# --------------------------------------------------------------------------------------------


def resolve_device(device: str) -> torch.device:
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
    g = torch.Generator(device=device)
    g.manual_seed(hash((seed, *salt)) & 0x7FFF_FFFF_FFFF)
    return g


class MultiViewEncoder(nn.Module):
    """Wraps an encoder so that ``(V, B, ...)`` views -> ``(V, B, D)`` is one module call."""

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


@dataclass
class _Probe:
    """A fixed held-out batch for diagnostics: eval views, and the snapshot sample."""

    views: torch.Tensor  # (V, b, ...) augmented views of b test images
    snap_images: torch.Tensor  # (n, ...) test images whose embeddings snapshots store
    snap_labels: torch.Tensor  # (n,)


class Trainer:
    """One pre-training run. Use :func:`train`; the class only keeps the loop readable."""

    def __init__(
        self,
        config: TrainConfig,
        run_dir: str | Path,
        *,
        overwrite: bool = False,
        resume: bool = False,
        progress: bool = True,
        splits: DataSplits | None = None,
    ):
        self.config, self.run_dir, self.progress = config, Path(run_dir), progress
        torch.manual_seed(config.seed)
        torch.backends.cudnn.benchmark = True  # fixed shapes every step: let cuDNN pick kernels
        self.dist = DistInfo.from_env()
        self.device = self.dist.device(config.device)
        if config.batch_size % self.dist.world_size:
            raise ValueError(
                f"batch_size {config.batch_size} (the global batch) must be divisible by the "
                f"{self.dist.world_size} processes"
            )
        self.local_batch = config.batch_size // self.dist.world_size

        # data
        self.splits = splits or load_dataset(
            config.dataset,
            root=config.data_root,
            download=config.download,
            seed=config.seed,
            progress=progress,
        )
        groups = 10 if config.dataset == "cifar100" else None
        self.pretrain: ImageData = make_imbalanced(
            self.splits.train, config.imbalance, seed=config.imbalance_seed, groups=groups
        )
        if len(self.pretrain) < config.batch_size:
            raise ValueError(
                f"batch_size {config.batch_size} is larger than the pre-training set "
                f"({len(self.pretrain)} images); use a smaller --batch-size"
            )
        self.counts = class_counts(self.pretrain.labels, self.pretrain.num_classes)
        self.augment = batch_augment_for(
            config.dataset, self.splits.image_size, self.splits.mean, self.splits.std
        )
        self.images = self.pretrain.images.to(self.device)  # uint8 on the device: no loader
        self.steps_per_epoch = len(self.epoch_order(0)) // self.local_batch
        self.total_steps = config.epochs * self.steps_per_epoch
        if config.max_steps is not None:
            self.total_steps = min(self.total_steps, config.max_steps)
        self.probe = self._make_probe()

        # model and optimiser
        name = config.encoder or default_encoder(config.dataset)
        in_ch = self.splits.in_channels  # 0 for toy points (the MLP reads image_size as D)
        self.model = build_encoder(
            name, in_channels=in_ch, image_size=self.splits.image_size, feat_dim=config.feat_dim
        ).to(self.device)
        self.image_like = self.pretrain.images.dim() == 4
        if config.channels_last and self.image_like:
            self.model = self.model.to(memory_format=torch.channels_last)
        encoder: nn.Module = torch.compile(self.model) if config.compile else self.model
        # All V views go through one module call, so DDP sees one forward per backward.
        self.forward_model: nn.Module = MultiViewEncoder(encoder, config.view_batching)
        if self.dist.world_size > 1:
            if config.sync_bn:
                if self.device.type != "cuda":
                    raise ValueError("sync_bn needs CUDA devices (SyncBatchNorm has no CPU path)")
                self.forward_model = nn.SyncBatchNorm.convert_sync_batchnorm(self.forward_model)
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.forward_model = nn.parallel.DistributedDataParallel(
                self.forward_model, device_ids=ids
            )
        self.loss_fn = LOSSES[config.method]
        self.loss_kwargs = config.resolved_loss_options()
        self.amp = config.amp and self.device.type == "cuda"
        # MoCo-style form: a momentum copy of the encoder makes the keys; a queue keeps old ones.
        self.key_model: nn.Module | None = None
        self.queue = torch.empty(0, config.feat_dim, device=self.device)
        if config.method == "moco":
            self.key_model = MultiViewEncoder(copy.deepcopy(self.model), config.view_batching)
            self.key_model.requires_grad_(False)

        # run directory
        self.run_config = config.to_dict() | {
            "encoder": name,
            "in_channels": in_ch,
            "image_size": self.splits.image_size,
            "n_views": config.n_views,
            "steps_per_epoch": self.steps_per_epoch,
            "total_steps": self.total_steps,
            "pretrain_size": len(self.pretrain),
            "classes": self.pretrain.classes,
            "device_resolved": str(self.device),
        }
        # Only rank 0 writes the run directory; the others log nowhere.
        writer_cls = RunWriter if self.dist.rank == 0 else _NullWriter
        self.writer = writer_cls(
            self.run_dir,
            self.run_config,
            overwrite=overwrite,
            resume=resume,
            class_counts=self.counts,
        )
        self.step, self.epoch = 0, 0
        if resume:
            self._load_checkpoint()
        self._stop = False
        self.last_finite: dict[str, float] = {}

    @functools.cached_property
    def optimizer(self) -> torch.optim.Optimizer:
        """SGD, made on first use: a torch optimiser's first call imports torch._dynamo (~1.5 s
        on a 2-core CPU), and the step-0 snapshot need not wait for it (the dashboard shows it
        as the first picture of a run)."""
        return torch.optim.SGD(
            self.model.parameters(),
            lr=lr_at_epoch(self.config, 0),
            momentum=self.config.momentum,
            weight_decay=self.config.weight_decay,
        )

    # -- data ---------------------------------------------------------------------------------

    def _make_probe(self) -> _Probe:
        test = self.splits.test
        g = _seeded(self.config.seed, 7)
        n = min(self.config.snapshot_size, len(test))
        idx = torch.randperm(len(test), generator=g)[:n]
        b = min(self.config.batch_size, len(test))
        views = self.augment(test.images[idx[:b]], self.config.n_views, generator=_seeded(0, 8))
        return _Probe(views.to(self.device), test.images[idx].to(self.device), test.labels[idx])

    def batch_views(self, step: int, order: torch.Tensor) -> torch.Tensor:
        """The (V, B, ...) views of the batch at ``step`` (position in the epoch's ``order``)."""
        b = self.local_batch
        i = step % self.steps_per_epoch
        idx = order[i * b : (i + 1) * b].to(self.device)
        g = _seeded(self.config.seed, 1, step, self.dist.rank, device=self.device)
        views = self.augment(self.images[idx], self.config.n_views, generator=g)
        if self.config.channels_last and self.image_like:
            # (V, B, C, H, W) stored as (V, B, H, W, C): every views[v] is channels_last.
            views = views.permute(0, 1, 3, 4, 2).contiguous().permute(0, 1, 4, 2, 3)
        return views

    def epoch_order(self, epoch: int) -> torch.Tensor:
        """This process's sample order for ``epoch``: a seeded permutation, or, with several
        processes, this rank's share of it as torch's DistributedSampler deals it."""
        n = len(self.pretrain)
        if self.dist.world_size > 1:
            sampler = DistributedSampler(
                range(n),
                num_replicas=self.dist.world_size,
                rank=self.dist.rank,
                shuffle=True,
                seed=self.config.seed,
                drop_last=True,
            )
            sampler.set_epoch(epoch)
            return torch.tensor(list(sampler))
        return torch.randperm(n, generator=_seeded(self.config.seed, 2, epoch))

    # -- one step -----------------------------------------------------------------------------

    def loss_of(self, views: torch.Tensor, check: bool = False) -> LossOutput:
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.amp):
            z = self.forward_model(views)
            if self.key_model is not None:
                with torch.no_grad():
                    keys = self.key_model(views)
        if self.dist.world_size > 1:
            z = gather_views(z)  # every query meets the B - 1 negatives of the global batch
            if self.key_model is not None:
                keys = gather_views(keys)
        if self.key_model is None:
            return self.loss_fn(z, **self.loss_kwargs, check_inputs=check)
        out = self.loss_fn(z, **self.loss_kwargs, keys=keys, queue=self.queue, check_inputs=check)
        self._last_keys = keys.detach()
        return out

    def train_step(self, views: torch.Tensor) -> LossOutput:
        self.model.train()
        out = self.loss_of(views)
        self.optimizer.zero_grad(set_to_none=True)
        out.loss.backward()
        self.optimizer.step()
        if self.key_model is not None:
            self._momentum_update()
        return out

    @torch.no_grad()
    def _momentum_update(self) -> None:
        """EMA of the online encoder into the key encoder; newest keys into the queue."""
        m = self.config.moco_momentum
        for pk, pq in zip(self.key_model.encoder.parameters(), self.model.parameters()):
            pk.mul_(m).add_(pq.detach(), alpha=1 - m)
        for bk, bq in zip(self.key_model.encoder.buffers(), self.model.buffers()):
            bk.copy_(bq)
        if self.config.moco_queue:
            newest = self._last_keys.flatten(0, 1).float()
            self.queue = torch.cat([newest, self.queue])[: self.config.moco_queue]

    # -- evaluation ---------------------------------------------------------------------------

    @torch.no_grad()
    def evaluate(self, final: bool = False) -> dict[str, Any]:
        """kNN accuracy, alignment/uniformity, weight statistics; a snapshot; probe if final."""
        cfg, sp = self.config, self.splits
        self.model.eval()
        kw = dict(mean=sp.mean, std=sp.std, device=self.device, image_size=sp.image_size)
        train_f = extract_features(self.model, sp.train.images, **kw)
        test_f = extract_features(self.model, sp.test.images, **kw)
        knn = knn_accuracy(
            train_f,
            sp.train.labels,
            test_f,
            sp.test.labels,
            k=cfg.knn_k,
            temperature=cfg.knn_temperature,
            num_classes=sp.train.num_classes,
            return_predictions=True,
        )
        acc, preds = knn if isinstance(knn, tuple) else (knn, None)
        record: dict[str, Any] = {
            "kind": "eval",
            "epoch": self.epoch,
            "step": self.step,
            "knn_acc": float(acc),
        }
        if preds is not None:
            record["knn_per_class_acc"] = per_class_accuracy(
                preds, sp.test.labels, sp.train.num_classes
            )
        # Diagnostics on a fixed held-out batch, in the model's eval mode (no BN batch stats).
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.amp):
            z_probe = embed_views(self.model, self.probe.views, cfg.view_batching)
        out = self.loss_fn(z_probe, **self.loss_kwargs, check_inputs=False).detach()
        z = embed_views(self.model, self.probe.views[:2], "separate")
        record.update(alignment_uniformity(z[0].float(), z[1].float()))
        record["eval_loss"] = float(out.loss)
        for prefix, w, d2 in (
            ("pos_", out.pos_weights, out.pos_d2),
            ("neg_", out.neg_weights, out.neg_d2),
        ):
            if w is not None:
                record.update({prefix + k: v for k, v in weight_stats(w, d2).items()})
        if final:
            probe = linear_probe(train_f, sp.train.labels, test_f, sp.test.labels)
            record["probe_acc"] = float(probe.accuracy)
            record["per_class_acc"] = [float(a) for a in probe.per_class]
        # Snapshot: embeddings of a fixed sample + the weights of a few queries.
        emb = embed(self.model, self.probe.snap_images, **kw)
        q = cfg.snapshot_queries
        arrays = {}
        for key in ("pos_weights", "pos_d2", "neg_weights", "neg_d2"):
            t = getattr(out, key)
            if t is not None:
                arrays[key] = t.reshape(-1, t.shape[-1])[:q].float().cpu()
        self.writer.snapshot(
            self.step, self.epoch, emb.float().cpu(), self.probe.snap_labels, **arrays
        )
        self.writer.log(record)
        return record

    # -- checkpoints --------------------------------------------------------------------------

    def _state(self) -> dict[str, Any]:
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "epoch": self.epoch,
            "step": self.step,
            "config": self.config.to_dict(),
            "run_config": self.run_config,
            "key_model": None if self.key_model is None else self.key_model.state_dict(),
            "queue": self.queue,
            "code_version": __version__,
        }

    def maybe_evaluate(self, final: bool = False) -> dict[str, Any]:
        """Evaluate on rank 0 only (the others go on; DDP's next all-reduce waits for it)."""
        return self.evaluate(final) if self.dist.rank == 0 else {"knn_acc": 0.0, "probe_acc": 0.0}

    def save_checkpoint(self) -> None:
        if self.dist.rank != 0:
            return
        state = self._state()
        path = checkpoint_path(self.run_dir)
        # atomic: a kill mid-write leaves the previous last.pt intact
        atomic_write(path, lambda f: torch.save(state, f))
        if self.epoch % self.config.checkpoint_every == 0 or self.epoch == self.config.epochs:
            atomic_write(checkpoint_path(self.run_dir, self.epoch), lambda f: torch.save(state, f))

    def _load_checkpoint(self) -> None:
        path = last_checkpoint(self.run_dir)
        if path is None:
            raise FileNotFoundError(f"nothing to resume: no checkpoint in {self.run_dir}")
        state = torch.load(path, map_location=self.device, weights_only=True)
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.epoch, self.step = int(state["epoch"]), int(state["step"])
        if self.key_model is not None:
            self.key_model.load_state_dict(state["key_model"])
            self.queue = state["queue"].to(self.device)
        self.writer.truncate_after(self.step)

    # -- the loop -----------------------------------------------------------------------------

    def _request_stop(self, *_: Any) -> None:
        self._stop = True

    def _check_finite(self, out: LossOutput) -> dict[str, float]:
        values = {"loss": float(out.loss.detach())} | {k: float(v) for k, v in out.parts().items()}
        if not all(math.isfinite(v) for v in values.values()):
            last = ", ".join(f"{k}={v:.4g}" for k, v in self.last_finite.items()) or "none yet"
            raise NonFiniteLossError(
                f"non-finite loss at step {self.step} (epoch {self.epoch}): "
                f"{', '.join(f'{k}={v}' for k, v in values.items())}; last finite values: {last}. "
                "Try a lower learning rate or temperature."
            )
        self.last_finite = values | {"step": self.step}
        return values

    def run(self) -> Path:
        cfg = self.config
        old_handler = signal.signal(signal.SIGTERM, self._request_stop) if _main_thread() else None
        bar = None
        try:
            self.writer.set_status(
                "running", step=self.step, epoch=self.epoch, total_steps=self.total_steps
            )
            if self.step == 0:
                self.maybe_evaluate()  # the picture at init: weights start near uniform
            if self.progress and self.dist.rank == 0:
                from tqdm.auto import tqdm

                bar = tqdm(
                    total=self.total_steps,
                    initial=self.step,
                    unit="step",
                    desc=f"{cfg.method} on {cfg.dataset}",
                    dynamic_ncols=True,
                )
            t0, seen = time.perf_counter(), 0
            while self.step < self.total_steps:
                for group in self.optimizer.param_groups:
                    group["lr"] = lr_at_epoch(cfg, self.epoch)
                # On the device once per epoch: indexing it then needs no host-GPU copy per step.
                order = self.epoch_order(self.epoch).to(self.device)
                start = self.step % self.steps_per_epoch
                for _ in range(start, self.steps_per_epoch):
                    if self._stop:
                        raise _StopRequested
                    out = self.train_step(self.batch_views(self.step, order))
                    self.step += 1
                    seen += cfg.batch_size
                    # On CPU a .item() per step is free; on a GPU only log steps sync the host.
                    if self.device.type == "cpu" or self.step % cfg.log_every == 0:
                        values = self._check_finite(out)
                    if self.step % cfg.log_every == 0 or self.step == self.total_steps:
                        rate = seen / max(time.perf_counter() - t0, 1e-9)
                        eta = (self.total_steps - self.step) * cfg.batch_size / max(rate, 1e-9)
                        self.writer.log(
                            {
                                "kind": "train",
                                "epoch": self.epoch,
                                "step": self.step,
                                **values,
                                "lr": self.optimizer.param_groups[0]["lr"],
                                "images_per_sec": rate,
                            }
                        )
                        self.writer.set_status(
                            "running",
                            step=self.step,
                            epoch=self.epoch,
                            total_steps=self.total_steps,
                            images_per_sec=rate,
                            eta_sec=eta,
                        )
                        if bar is not None:
                            bar.set_postfix(loss=f"{values['loss']:.4f}", img_s=f"{rate:.0f}")
                    if bar is not None:
                        bar.update(1)
                    if self.step >= self.total_steps:
                        break
                if self.step % self.steps_per_epoch == 0:
                    self.epoch += 1
                    self.save_checkpoint()
                    if (
                        cfg.eval_every
                        and self.epoch % cfg.eval_every == 0
                        and self.step < self.total_steps
                    ):
                        self.maybe_evaluate()
            final = self.maybe_evaluate(final=True)
            if self.step % self.steps_per_epoch:  # stopped mid-epoch by max_steps
                self.save_checkpoint()
            self.writer.set_status(
                "finished", step=self.step, epoch=self.epoch, total_steps=self.total_steps
            )
            if bar is not None:
                bar.close()
                print(
                    f"kNN {final['knn_acc']:.3f}  probe {final['probe_acc']:.3f}  -> {self.run_dir}"
                )
            return self.run_dir
        except (_StopRequested, KeyboardInterrupt):
            self.writer.set_status(
                "stopped", step=self.step, epoch=self.epoch, total_steps=self.total_steps
            )
            return self.run_dir
        except Exception as exc:
            self.writer.set_status(
                "failed",
                step=self.step,
                epoch=self.epoch,
                total_steps=self.total_steps,
                error=str(exc),
            )
            raise
        finally:
            if bar is not None:
                bar.close()
            if old_handler is not None:
                signal.signal(signal.SIGTERM, old_handler)
            self.writer.close()


def _main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


def train(
    config: TrainConfig,
    run_dir: str | Path,
    *,
    overwrite: bool = False,
    resume: bool = False,
    reuse: bool = False,
    progress: bool = True,
) -> Path:
    """Pre-train an encoder as ``config`` says and write the run directory; returns its path.

    ``resume=True`` continues the run in ``run_dir`` from its last checkpoint (the config stored
    there wins over ``config``'s values except ``epochs`` and ``max_steps``, so a finished run
    can be extended). ``reuse=True`` returns ``run_dir`` untouched when it already holds a
    finished run of exactly ``config`` (:func:`finished_with`), so notebooks and
    ``cacr-lab compare`` can be re-run cheaply; otherwise it trains (an existing run is then
    replaced only with ``overwrite=True``).

    >>> import tempfile
    >>> cfg = TrainConfig(dataset="digits", epochs=1, batch_size=64, max_steps=2)
    >>> path = train(cfg, tempfile.mkdtemp() + "/run", progress=False)
    >>> from cacr_lab.runs import load_run
    >>> load_run(path).status["state"]
    'finished'
    """
    if reuse and not resume and finished_with(run_dir, config):
        return Path(run_dir)
    if resume:
        stored = load_checkpoint_config(run_dir)
        if stored is not None:
            config = TrainConfig.from_dict(
                stored | {"epochs": config.epochs, "max_steps": config.max_steps}
            )
    return Trainer(config, run_dir, overwrite=overwrite, resume=resume, progress=progress).run()


def finished_with(run_dir: str | Path, config: TrainConfig) -> bool:
    """True when ``run_dir`` holds a finished run trained with exactly ``config``.

    Compares every field of ``config.to_dict()`` with the run's ``config.json`` after the same
    JSON round trip (tuples come back as lists); a missing or unreadable run is not finished.
    """
    if not (Path(run_dir) / CONFIG_FILE).is_file():
        return False
    try:
        run = load_run(run_dir)
    except ValueError:
        return False
    wanted = json.loads(json.dumps(config.to_dict()))
    return run.status.get("state") == "finished" and all(
        run.config.get(k) == v for k, v in wanted.items()
    )


def load_checkpoint_config(run_dir: str | Path) -> dict[str, Any] | None:
    """The config stored in the run's last checkpoint, or None when it has none."""
    path = last_checkpoint(Path(run_dir))
    if path is None:
        return None
    return torch.load(path, map_location="cpu", weights_only=True)["config"]


def load_encoder(run_dir: str | Path, device: str = "cpu") -> tuple[nn.Module, dict[str, Any]]:
    """The encoder of a run's last checkpoint (eval mode) and the run's full config dict."""
    path = last_checkpoint(Path(run_dir))
    if path is None:
        raise FileNotFoundError(f"no checkpoint in {run_dir}: was the run started?")
    state = torch.load(path, map_location=device, weights_only=True)
    cfg = state["run_config"]
    model = build_encoder(
        cfg["encoder"],
        in_channels=cfg["in_channels"],
        image_size=cfg["image_size"],
        feat_dim=cfg["feat_dim"],
    )
    model.load_state_dict(state["model"])
    return model.to(device).eval(), cfg
