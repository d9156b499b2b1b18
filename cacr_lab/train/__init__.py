"""Pre-training: ``train(TrainConfig(...), "runs/NAME")`` writes a run directory.

The training story is told in :mod:`cacr_lab.train.trainer`; the package, top to bottom:

- ``trainer``      :func:`train`, :class:`Trainer` (data -> model -> optimiser -> loop -> log)
- ``guards``       :class:`NonFiniteLossError` and the finite guard, the stop handling
                   (SIGTERM, Ctrl-C: :func:`stop_requests`), one-line error texts
- ``resume``       :func:`resume_config` (what a resumed run continues with), the checks before
                   a resume touches anything, the evaluation a kill cut off
- ``steps``        what every step is made of: :func:`resolve_device`, :func:`lr_at_epoch`,
                   :func:`embed_views`, the seeded generators
- ``distributed``  torchrun: :class:`DistInfo`, :class:`MultiViewEncoder` (the module DDP wraps),
                   :func:`gather_views` (the global batch's negatives)
- ``moco``         method moco's pieces: the predictor, the momentum encoder and its schedule,
                   the local crops (:class:`MocoBranch`, :func:`momentum_at`)
- ``checkpoint``   what a checkpoint holds, writing and reading it: :func:`load_encoder`,
                   :func:`load_checkpoint_config`, :func:`finished_with`, :class:`CheckpointError`

``TrainConfig`` and ``paper_loss_options`` live in :mod:`cacr_lab.config`; they are re-exported
here so that ``from cacr_lab.train import TrainConfig`` keeps working.
"""

from __future__ import annotations

from cacr_lab.config import TrainConfig, paper_loss_options
from cacr_lab.train.checkpoint import (
    CheckpointError,
    finished_with,
    load_checkpoint_config,
    load_encoder,
)
from cacr_lab.train.distributed import DistInfo, MultiViewEncoder, gather_views
from cacr_lab.train.guards import NonFiniteLossError, error_line, stop_requests
from cacr_lab.train.resume import resume_config
from cacr_lab.train.steps import embed_views, lr_at_epoch, resolve_device
from cacr_lab.train.trainer import Trainer, train

__all__ = [
    "CheckpointError",
    "DistInfo",
    "MultiViewEncoder",
    "NonFiniteLossError",
    "TrainConfig",
    "Trainer",
    "embed_views",
    "error_line",
    "finished_with",
    "gather_views",
    "load_checkpoint_config",
    "load_encoder",
    "lr_at_epoch",
    "paper_loss_options",
    "resolve_device",
    "resume_config",
    "stop_requests",
    "train",
]
