"""The trainer: config -> data -> model -> optimiser -> loop -> log and checkpoint.

``train(TrainConfig(...), "runs/NAME")`` pre-trains an encoder with any loss of
:data:`cacr_lab.losses.LOSSES` and writes a run directory (format: :mod:`cacr_lab.runs`) that the
CLI, the notebooks and the dashboard read. What happens, in order:

1. The dataset is loaded into memory (:func:`cacr_lab.data.load_dataset`); the pre-training set
   is ``DataSplits.pretraining_set`` (the train split; STL-10: train+unlabeled), made imbalanced
   when asked (docs/method.md §9). Evaluation always uses the balanced, labelled train split as
   the kNN bank / probe training set and the held-out split as the test set.
2. Every step draws a batch, makes V = K + 1 views of it with the batched augmentation on the
   training device (:class:`cacr_lab.data.BatchAugment`), embeds each view (``view_batching``),
   and takes an SGD step on the loss. The data order and the views are drawn from generators
   seeded by (seed, epoch) and (seed, step), so a run is reproducible on CPU and a resumed run
   continues exactly where an uninterrupted one would be.
3. Every ``log_every`` steps a train record is logged (the only host sync of the loop on a GPU);
   every ``eval_every`` epochs (or ``eval_every_steps`` steps; and before the first step) an
   evaluation record (kNN accuracy, alignment, uniformity, weight statistics) and a snapshot
   (embedding sample, weight sample) are written; ``last.pt`` after every epoch and
   ``epoch_NNNN.pt`` every ``checkpoint_every``.
4. At the end a fast linear probe gives the final accuracy and per-class accuracy.

A non-finite loss or gradient stops the run before the step, with an error naming the step and
the last finite values; no checkpoint is written from non-finite weights. SIGTERM / Ctrl-C stop
the run cleanly: a checkpoint at the current step, state "stopped"; resuming it gives what an
uninterrupted run gives. A resume re-does an evaluation that a kill cut off.

This module tells the story (:class:`Trainer`, :func:`train`); the pieces it uses live beside it:
:mod:`cacr_lab.train.steps` (device, learning rate, seeded draws, embedding the views),
:mod:`cacr_lab.train.distributed` (torchrun, DDP), :mod:`cacr_lab.train.checkpoint`,
:mod:`cacr_lab.train.guards` (finite checks, stop requests) and :mod:`cacr_lab.train.resume`.
"""

from __future__ import annotations

import functools
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

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
    knn_evaluation,
    linear_probe,
    weight_stats,
)
from cacr_lab.losses import LOSSES, LossOutput
from cacr_lab.models import build_encoder, default_encoder
from cacr_lab.runs import RunWriter
from cacr_lab.train import guards, lens
from cacr_lab.train.checkpoint import checkpoint_state, finished_with, write_checkpoint
from cacr_lab.train.distributed import (
    DistInfo,
    MultiViewEncoder,
    _NullWriter,
    gather_views,
    rank_share,
    wrap_ddp,
)
from cacr_lab.train.moco import MocoBranch, MultiCrop
from cacr_lab.train.resume import check_resume, evaluation_due, has_eval_at, nothing_left
from cacr_lab.train.steps import _seeded, embed_views, lr_at_epoch


class _StopRequested(Exception):
    pass


@dataclass
class _Probe:
    """A fixed held-out batch for diagnostics: eval views, and the snapshot sample."""

    views: torch.Tensor  # (V, b, ...) augmented views of b test images
    snap_images: torch.Tensor  # (n, ...) test images whose embeddings snapshots store
    snap_labels: torch.Tensor  # (n,)
    index: torch.Tensor  # (n,) their indices in the test split (snapshots name them)


class Trainer:
    """One pre-training run. Use :func:`train`; the class only keeps the loop readable.

    Built in the story's order (data -> model -> run directory, the optimiser on first use);
    :meth:`run` then goes epoch by epoch (:meth:`_run_epoch`), step by step (:meth:`_take_step`).
    """

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
        guards.check_device_memory(config, self.device)  # V x B against the GPU's memory
        if config.batch_size % self.dist.world_size:
            raise ValueError(
                f"batch_size {config.batch_size} (the global batch) must be divisible by the "
                f"{self.dist.world_size} processes"
            )
        self.local_batch = config.batch_size // self.dist.world_size
        self._load_data(splits)
        self._build_model()
        self.step, self.epoch, self.resumed = 0, 0, resume
        if resume:  # every check, and the weights, before the run folder is touched
            self._load_checkpoint(check_resume(self.run_dir, config, self.device))
        self._open_run_dir(overwrite=overwrite, resume=resume)
        if resume:
            try:
                self.writer.truncate_after(self.step)
            except BaseException as exc:
                self._set_status("failed", last=True, error=guards.error_line(exc))
                self.writer.close()
                raise
        self.guard = guards.FiniteGuard(check_every_step=self.device.type == "cpu")
        self._stop = guards.StopFlag()  # run() shares the flag of stop_requests()
        # What the loop keeps for its logs (set by run): the progress bar (rank 0, progress=True),
        # the throughput clock, the values of the last step whose loss was checked.
        self._bar: Any = None
        self._t0, self._seen = 0.0, 0
        self._values: dict[str, float] | None = None

    # -- construction: data, model, run directory ---------------------------------------------

    def _load_data(self, splits: DataSplits | None) -> None:
        """The splits, the pre-training set on the device, the step counts, the probe batch."""
        config = self.config
        self.splits = splits or load_dataset(
            config.dataset,
            root=config.data_root,
            download=config.download,
            seed=config.seed,
            progress=self.progress,
        )
        groups = 10 if config.dataset == "cifar100" else None
        self.pretrain: ImageData = make_imbalanced(
            self.splits.pretraining_set, config.imbalance, seed=config.imbalance_seed, groups=groups
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

    def _build_model(self) -> None:
        """The encoder, the module the loop calls (compiled, DDP-wrapped), the loss; for method
        moco also the predictor and the momentum encoder (:mod:`cacr_lab.train.moco`)."""
        config = self.config
        self.encoder_name = config.encoder or default_encoder(config.dataset)
        self.model = build_encoder(
            self.encoder_name,
            in_channels=self.splits.in_channels,  # 0 for toy points (the MLP reads image_size as D)
            image_size=self.splits.image_size,
            feat_dim=config.feat_dim,
        ).to(self.device)
        self.image_like = self.pretrain.images.dim() == 4
        if config.channels_last and self.image_like:
            self.model = self.model.to(memory_format=torch.channels_last)
        encoder: nn.Module = torch.compile(self.model) if config.compile else self.model
        self.moco: MocoBranch | None = None
        if config.method == "moco":  # online branch: encoder + predictor; keys: a momentum copy
            sync = config.sync_bn and self.dist.world_size > 1
            total = config.epochs * self.steps_per_epoch  # the momentum schedule's length
            self.moco = MocoBranch(self.model, config, self.augment, total, sync_bn=sync)
        # All V views go through one module call, so DDP sees one forward per backward.
        self.forward_model: nn.Module = (
            self.moco.online(encoder)
            if self.moco
            else MultiViewEncoder(encoder, config.view_batching)
        )
        if self.dist.world_size > 1:
            self.forward_model = wrap_ddp(self.forward_model, self.device, sync_bn=config.sync_bn)
        self.loss_fn = LOSSES[config.method]
        self.loss_kwargs = config.resolved_loss_options()
        self.amp = config.amp and self.device.type == "cuda"
        self._infonce_t = lens.infonce_temperature(config.method, self.loss_kwargs)

    def _open_run_dir(self, *, overwrite: bool, resume: bool) -> None:
        """The resolved config and the writer: rank 0 writes the run directory, the others not."""
        config = self.config
        self.run_config = config.to_dict() | {
            "encoder": self.encoder_name,
            "in_channels": self.splits.in_channels,
            "image_size": self.splits.image_size,
            "n_views": config.n_views,
            "steps_per_epoch": self.steps_per_epoch,
            "total_steps": self.total_steps,
            "pretrain_size": len(self.pretrain),
            "classes": self.pretrain.classes,
            "device_resolved": str(self.device),
            **(self.moco.describe() if self.moco else {}),
        }
        writer_cls = RunWriter if self.dist.rank == 0 else _NullWriter
        self.writer = writer_cls(
            self.run_dir,
            self.run_config,
            overwrite=overwrite,
            resume=resume,
            class_counts=self.counts,
        )

    @functools.cached_property
    def optimizer(self) -> torch.optim.Optimizer:
        """SGD, made on first use: a torch optimiser's first call imports torch._dynamo (~1.5 s
        on a 2-core CPU), and the step-0 snapshot need not wait for it (the dashboard shows it
        as the first picture of a run)."""
        predictor = self.moco.predictor.parameters() if self.moco else ()
        return torch.optim.SGD(
            [*self.model.parameters(), *predictor],
            lr=lr_at_epoch(self.config, 0),
            momentum=self.config.momentum,
            weight_decay=self.config.weight_decay,
        )

    # -- the data of a step -------------------------------------------------------------------

    def _make_probe(self) -> _Probe:
        test = self.splits.test
        g = _seeded(self.config.seed, 7)
        n = min(self.config.snapshot_size, len(test))
        idx = torch.randperm(len(test), generator=g)[:n]
        b = min(self.config.batch_size, len(test))
        views = self.augment(test.images[idx[:b]], self.config.n_views, generator=_seeded(0, 8))
        images = test.images[idx].to(self.device)
        return _Probe(views.to(self.device), images, test.labels[idx], idx)

    def batch_views(self, step: int, order: torch.Tensor) -> torch.Tensor | MultiCrop:
        """The (V, B, ...) views of the batch at ``step`` (position in the epoch's ``order``);
        with moco's local crops a :class:`MultiCrop` of them and the (L, B, ...) local crops."""
        b = self.local_batch
        i = step % self.steps_per_epoch
        idx = order[i * b : (i + 1) * b].to(self.device)
        g = _seeded(self.config.seed, 1, step, self.dist.rank, device=self.device)
        views = self._memory_format(
            self.augment(self.images[idx], self.config.n_views, generator=g)
        )
        local = self.moco.local_views(self.images[idx], g) if self.moco else None
        return views if local is None else MultiCrop(views, self._memory_format(local))

    def _memory_format(self, views: torch.Tensor) -> torch.Tensor:
        if self.config.channels_last and self.image_like:
            # (V, B, C, H, W) stored as (V, B, H, W, C): every views[v] is channels_last.
            views = views.permute(0, 1, 3, 4, 2).contiguous().permute(0, 1, 4, 2, 3)
        return views

    def epoch_order(self, epoch: int) -> torch.Tensor:
        """This process's sample order for ``epoch``: a seeded permutation, or, with several
        processes, this rank's share of it as torch's DistributedSampler deals it."""
        n = len(self.pretrain)
        if self.dist.world_size > 1:
            return rank_share(n, self.dist, seed=self.config.seed, epoch=epoch)
        return torch.randperm(n, generator=_seeded(self.config.seed, 2, epoch))

    # -- one step -----------------------------------------------------------------------------

    def loss_of(self, views: torch.Tensor | MultiCrop, check: bool = False) -> LossOutput:
        gather = self.dist.world_size > 1  # every query meets the negatives of the global batch
        if self.moco is not None:
            return self.moco.loss(
                self.forward_model, views, amp=self.amp, gather=gather, check=check
            )
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.amp):
            z = self.forward_model(views)
        z = gather_views(z) if gather else z
        return self.loss_fn(z, **self.loss_kwargs, check_inputs=check)

    def train_step(self, views: torch.Tensor | MultiCrop) -> LossOutput:
        self.model.train()
        if self.moco is not None:
            self.moco.train()
        out = self.loss_of(views)
        self.optimizer.zero_grad(set_to_none=True)
        out.loss.backward()
        # every parameter the step moves: the encoder's, and moco's predictor's
        params = (p for group in self.optimizer.param_groups for p in group["params"])
        self.guard.before_step(out, params, step=self.step + 1, epoch=self.epoch)
        self.optimizer.step()
        if self.moco is not None:  # the key encoder of the next step
            self.moco.update(self.model, self.step + 1)
        return out

    # -- evaluation ---------------------------------------------------------------------------

    def maybe_evaluate(self, final: bool = False) -> dict[str, Any]:
        """Evaluate on rank 0 only (the others go on; DDP's next all-reduce waits for it)."""
        return self.evaluate(final) if self.dist.rank == 0 else {"knn_acc": 0.0, "probe_acc": 0.0}

    @torch.no_grad()
    def evaluate(self, final: bool = False) -> dict[str, Any]:
        """kNN accuracy, alignment/uniformity, weight statistics; a snapshot; probe if final."""
        sp = self.splits
        self.model.eval()
        kw = dict(mean=sp.mean, std=sp.std, device=self.device, image_size=sp.image_size)
        train_f = extract_features(self.model, sp.train.images, **kw)
        test_f = extract_features(self.model, sp.test.images, **kw)
        record = self._knn_record(train_f, test_f)
        out = self._probe_diagnostics(record)
        if final:
            probe = linear_probe(train_f, sp.train.labels, test_f, sp.test.labels)
            record["probe_acc"] = float(probe.accuracy)
            record["per_class_acc"] = [float(a) for a in probe.per_class]
        self._snapshot(out, embed(self.model, self.probe.snap_images, **kw))
        self.writer.log(record)
        return record

    def _knn_record(self, train_f: torch.Tensor, test_f: torch.Tensor) -> dict[str, Any]:
        """The eval record's start: kNN of the test features among the train features."""
        cfg, sp = self.config, self.splits
        # knn_k = 0 follows the data: the same k for every run of a study.
        knn = knn_evaluation(
            train_f,
            sp.train.labels,
            test_f,
            sp.test.labels,
            k=cfg.knn_k,
            temperature=cfg.knn_temperature,
            num_classes=sp.train.num_classes,
        )
        # eval_split: what the accuracies were measured on, in words.
        return dict(kind="eval", epoch=self.epoch, step=self.step, eval_split=sp.eval_split, **knn)

    @torch.no_grad()
    def _probe_diagnostics(self, record: dict[str, Any]) -> LossOutput:
        """Adds the probe batch's alignment, uniformity, loss and weight statistics to
        ``record``; returns the loss output (its weights go into the snapshot)."""
        # Diagnostics on a fixed held-out batch, in the model's eval mode (no BN batch stats).
        if self.moco is not None:  # predictions and keys, as in training
            out = self.moco.probe_loss(self.model, self.probe.views, amp=self.amp)
        else:
            with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.amp):
                z_probe = embed_views(self.model, self.probe.views, self.config.view_batching)
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
        record.update(lens.fn_share_record(out, self.probe, self._infonce_t))  # docs §8.1
        return out

    def _snapshot(self, out: LossOutput, emb: torch.Tensor) -> None:
        """Snapshot: ``emb: (n, D)`` embeddings of the fixed sample + the weights of a few
        queries of the probe batch's loss ``out``."""
        q = self.config.snapshot_queries  # weights, and who is who (cacr_lab.train.lens)
        arrays = lens.snapshot_arrays(out, self.probe, q, self._infonce_t, self.splits)
        self.writer.snapshot(
            self.step, self.epoch, emb.float().cpu(), self.probe.snap_labels, **arrays
        )

    # -- checkpoints --------------------------------------------------------------------------

    def save_checkpoint(self) -> None:
        """``last.pt`` at the current step and, after every ``checkpoint_every``-th complete
        epoch and the last, ``epoch_NNNN.pt`` (rank 0 only); never from non-finite weights."""
        if self.dist.rank != 0:
            return
        self.guard.sync(step=self.step, epoch=self.epoch)
        self.guard.check_weights(self.model, step=self.step)
        state = checkpoint_state(
            model=self.model,
            optimizer=self.optimizer,
            epoch=self.epoch,
            step=self.step,
            config=self.config,
            run_config=self.run_config,
            moco=self.moco.state_dict() if self.moco else None,
        )
        complete = self.step > 0 and self.step % self.steps_per_epoch == 0
        keep = self.epoch % self.config.checkpoint_every == 0 or self.epoch == self.config.epochs
        write_checkpoint(self.run_dir, state, keep_epoch=complete and keep)

    def _load_checkpoint(self, state: dict[str, Any]) -> None:
        """The checkpoint's weights, optimiser state and position (``state``: checked by
        :func:`check_resume`); metrics after it are dropped once the writer is open."""
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.epoch, self.step = int(state["epoch"]), int(state["step"])
        if self.moco is not None:
            self.moco.load_state_dict(state.get("moco"))

    # -- the loop -----------------------------------------------------------------------------

    def _set_status(self, state: str, *, last: bool = False, **extra: Any) -> None:
        """``last``: the run's last status, written even on a full disk (never an OSError)."""
        write = self.writer.end if last else self.writer.set_status
        write(state, step=self.step, epoch=self.epoch, total_steps=self.total_steps, **extra)

    def run(self) -> Path:
        """Train to ``total_steps``; returns the run directory.

        The status follows the run: "running", then "finished"; "stopped" on SIGTERM or Ctrl-C,
        with a checkpoint at the current step (a second Ctrl-C interrupts at once, keeping the
        last checkpoint); "failed", with the error, on an exception, which is raised again.
        """
        with guards.stop_requests() as self._stop:
            try:
                self._start_run()
                while self.step < self.total_steps:
                    self._run_epoch()
                self._end_run()
                return self.run_dir
            except _StopRequested:
                return self._stopped()
            except KeyboardInterrupt:
                error = "interrupted mid-step: the last checkpoint stays"
                self._set_status("stopped", last=True, error=error)
                return self.run_dir
            except Exception as exc:
                self._set_status("failed", last=True, error=guards.error_line(exc))
                raise
            finally:
                if self._bar is not None:
                    self._bar.close()
                self.writer.close()

    def _stopped(self) -> Path:
        """A stop request between steps: checkpoint the current step, status "stopped"."""
        try:
            self.save_checkpoint()
        except Exception as exc:
            error = f"stop: no checkpoint written: {guards.error_line(exc)}"
            self._set_status("failed", last=True, error=error)
            raise
        self._set_status("stopped", last=True)
        return self.run_dir

    def _start_run(self) -> None:
        """Status "running", the evaluation at step 0, the progress bar, the throughput clock."""
        cfg = self.config
        self._set_status("running")
        if self._evaluation_due() and not (self.resumed and has_eval_at(self.run_dir, self.step)):
            self.maybe_evaluate()  # at init (weights start near uniform), or one a kill cut off
        if self.progress and self.dist.rank == 0:
            from tqdm.auto import tqdm

            self._bar = tqdm(
                total=self.total_steps,
                initial=self.step,
                unit="step",
                desc=f"{cfg.method} on {cfg.dataset}",
                dynamic_ncols=True,
            )
        self._t0, self._seen = time.perf_counter(), 0

    def _run_epoch(self) -> None:
        """The steps left in the current epoch (all of them unless resumed mid-epoch or cut
        short by ``max_steps``), then, if it was completed, its end (:meth:`_end_epoch`)."""
        for group in self.optimizer.param_groups:
            group["lr"] = lr_at_epoch(self.config, self.epoch)
        # On the device once per epoch: indexing it then needs no host-GPU copy per step.
        order = self.epoch_order(self.epoch).to(self.device)
        for _ in range(self.step % self.steps_per_epoch, self.steps_per_epoch):
            if self._stop.requested:
                raise _StopRequested
            self._take_step(order)
            if self.step >= self.total_steps:
                break
            if self.step % self.steps_per_epoch and self._evaluation_due():  # eval_every_steps
                self.maybe_evaluate()
        if self.step % self.steps_per_epoch == 0:
            self._end_epoch()

    def _take_step(self, order: torch.Tensor) -> None:
        """One SGD step on the batch at ``self.step`` of the epoch's ``order``; its train record
        every ``log_every`` steps and at the last step."""
        cfg = self.config
        out = self.train_step(self.batch_views(self.step, order))
        self.step += 1
        self._seen += cfg.batch_size
        log_now = self.step % cfg.log_every == 0 or self.step == self.total_steps
        # On CPU a .item() per step is free; on a GPU only the steps that log sync the host (the
        # last step too: its record must carry its own values, not those of the last log step).
        if self.device.type == "cpu" or log_now:
            self.guard.sync(step=self.step, epoch=self.epoch)
            self._values = self.guard.checked_values(out, step=self.step, epoch=self.epoch)
        if log_now:
            self._log_train(self._values)
        if self._bar is not None:
            self._bar.update(1)

    def _log_train(self, values: dict[str, float]) -> None:
        """A train record (``values``: the loss and its parts) and the status's speed and ETA."""
        cfg = self.config
        rate = self._seen / max(time.perf_counter() - self._t0, 1e-9)
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
        self._set_status("running", images_per_sec=rate, eta_sec=eta)
        if self._bar is not None:
            self._bar.set_postfix(loss=f"{values['loss']:.4f}", img_s=f"{rate:.0f}")

    def _end_epoch(self) -> None:
        """After a completed epoch: ``last.pt`` (and maybe ``epoch_NNNN.pt``), an evaluation
        every ``eval_every`` epochs unless this was the last step (the final one follows)."""
        self.epoch += 1
        self.save_checkpoint()
        if self._evaluation_due():
            self.maybe_evaluate()

    def _evaluation_due(self) -> bool:
        n, cfg = self.steps_per_epoch, self.config
        return evaluation_due(
            self.step, self.epoch, n, self.total_steps, cfg.eval_every, cfg.eval_every_steps
        )

    def _end_run(self) -> None:
        """The final evaluation (with the linear probe), a checkpoint if stopped mid-epoch by
        ``max_steps``, status "finished". A resume after a kill between the final evaluation
        and "finished" does not evaluate again."""
        done = self.resumed and has_eval_at(self.run_dir, self.step, final=True)
        final = None if done else self.maybe_evaluate(final=True)
        if self.step % self.steps_per_epoch:  # stopped mid-epoch by max_steps
            self.save_checkpoint()
        self._set_status("finished")
        if self._bar is not None and final is not None:
            self._bar.close()
            print(f"kNN {final['knn_acc']:.3f}  probe {final['probe_acc']:.3f}  -> {self.run_dir}")


def train(
    config: TrainConfig,
    run_dir: str | Path,
    *,
    overwrite: bool = False,
    resume: bool = False,
    reuse: bool = False,
    progress: bool = True,
    splits: DataSplits | None = None,
) -> Path:
    """Pre-train an encoder as ``config`` says and write the run directory; returns its path.

    ``resume=True`` continues the run in ``run_dir`` from its last checkpoint; ``config`` must be
    its stored config, but for a larger ``epochs`` or ``max_steps`` (an extension) and where it
    runs (:func:`cacr_lab.train.resume.resume_config` builds it; anything else is refused before
    the folder is touched). A finished run that ``config`` does not extend is returned untouched.
    ``reuse=True`` returns ``run_dir`` untouched when it already holds a
    finished run of exactly ``config`` (:func:`finished_with`), so notebooks and
    ``cacr-lab compare`` can be re-run cheaply; otherwise it trains (an existing run is then
    replaced only with ``overwrite=True``). ``splits``: the dataset, already loaded as
    ``load_dataset`` would for ``config`` (a study loads a CIFAR folder once for many runs).

    >>> import tempfile
    >>> cfg = TrainConfig(dataset="digits", epochs=1, batch_size=64, max_steps=2)
    >>> path = train(cfg, tempfile.mkdtemp() + "/run", progress=False)
    >>> from cacr_lab.runs import load_run
    >>> load_run(path).status["state"]
    'finished'
    """
    if reuse and not resume and finished_with(run_dir, config):
        return Path(run_dir)
    if resume and nothing_left(run_dir, config) is not None:
        return Path(run_dir)
    kw = dict(overwrite=overwrite, resume=resume, progress=progress, splits=splits)
    return Trainer(config, run_dir, **kw).run()
