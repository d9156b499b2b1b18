"""Checkpoints: what one holds, writing it atomically, and reading a run's last one back.

A checkpoint (``checkpoints/last.pt`` after every epoch, ``checkpoints/epoch_NNNN.pt`` kept every
``checkpoint_every`` epochs; paths: :mod:`cacr_lab.runs`) is the dict of
:func:`checkpoint_state`. The trainer resumes from it, :func:`load_encoder` rebuilds the
encoder from it, and :func:`load_checkpoint_config` gives the config a resumed run continues
with. :func:`finished_with` says whether a run directory already holds a finished run of a
config (the ``reuse`` of :func:`cacr_lab.train.train`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from cacr_lab._version import __version__
from cacr_lab.config import TrainConfig
from cacr_lab.models import build_encoder
from cacr_lab.runs import CONFIG_FILE, atomic_write, checkpoint_path, last_checkpoint, load_run


def checkpoint_state(
    *,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    epoch: int,
    step: int,
    config: TrainConfig,
    run_config: dict[str, Any],
    moco: dict[str, Any] | None,
) -> dict[str, Any]:
    """The dict a checkpoint holds: weights, optimiser state, position, configs, MoCo's state.

    ``config`` goes in as ``to_dict()`` (what a resumed run continues with), ``run_config`` is
    the resolved config of ``config.json``; ``moco`` is None except for method moco, where it is
    ``MocoBranch.state_dict()``: the predictor's and the momentum encoder's weights.
    """
    return {
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "epoch": epoch,
        "step": step,
        "config": config.to_dict(),
        "run_config": run_config,
        "moco": moco,
        "code_version": __version__,
    }


def write_checkpoint(run_dir: Path, state: dict[str, Any], *, keep_epoch: bool) -> None:
    """``state`` to ``last.pt`` and, when ``keep_epoch``, to ``epoch_NNNN.pt`` of its epoch."""
    # atomic: a kill mid-write leaves the previous last.pt intact
    atomic_write(checkpoint_path(run_dir), lambda f: torch.save(state, f))
    if keep_epoch:
        atomic_write(checkpoint_path(run_dir, state["epoch"]), lambda f: torch.save(state, f))


def load_last_checkpoint(
    run_dir: str | Path, device: torch.device | str = "cpu"
) -> dict[str, Any] | None:
    """The state of the run's last checkpoint, tensors on ``device``; None when it has none."""
    path = last_checkpoint(Path(run_dir))
    if path is None:
        return None
    return torch.load(path, map_location=device, weights_only=True)


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
    state = load_last_checkpoint(run_dir)
    return None if state is None else state["config"]


def load_encoder(run_dir: str | Path, device: str = "cpu") -> tuple[nn.Module, dict[str, Any]]:
    """The encoder of a run's last checkpoint (eval mode) and the run's full config dict."""
    state = load_last_checkpoint(run_dir, device)
    if state is None:
        raise FileNotFoundError(f"no checkpoint in {run_dir}: was the run started?")
    cfg = state["run_config"]
    model = build_encoder(
        cfg["encoder"],
        in_channels=cfg["in_channels"],
        image_size=cfg["image_size"],
        feat_dim=cfg["feat_dim"],
    )
    model.load_state_dict(state["model"])
    return model.to(device).eval(), cfg
