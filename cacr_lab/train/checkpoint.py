"""Checkpoints: what one holds, writing it atomically, and reading a run's last one back.

A checkpoint (``checkpoints/last.pt`` after every epoch, ``checkpoints/epoch_NNNN.pt`` kept every
``checkpoint_every`` epochs; paths: :mod:`cacr_lab.runs`) is the dict of
:func:`checkpoint_state`. The trainer resumes from it, :func:`load_encoder` rebuilds the
encoder from it, and :func:`load_checkpoint_config` gives the config a resumed run continues
with. :func:`finished_with` says whether a run directory already holds a finished run of a
config (the ``reuse`` of :func:`cacr_lab.train.train`), and :func:`config_differences` what
differs. A file that cannot be used raises :class:`CheckpointError`, one line naming the file.
"""

from __future__ import annotations

import io
import json
import pickle
from pathlib import Path
from typing import Any

import torch
from torch import nn

from cacr_lab._version import __version__
from cacr_lab.config import TrainConfig
from cacr_lab.models import build_encoder
from cacr_lab.runs import CONFIG_FILE, atomic_write, checkpoint_path, last_checkpoint, load_run


class CheckpointError(ValueError):
    """A checkpoint that cannot be used (truncated, foreign, incomplete); names the file."""


REQUIRED_KEYS = ("model", "optimizer", "epoch", "step", "config", "run_config")


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
    """``state`` to ``last.pt`` and, when ``keep_epoch``, to ``epoch_NNNN.pt`` of its epoch.

    Serialised in memory first, so a full disk fails in :func:`atomic_write` as an OSError
    naming the file (the temp file is removed, the previous checkpoint stays).
    """
    buffer = io.BytesIO()
    torch.save(state, buffer)
    data = buffer.getvalue()
    # atomic: a kill mid-write leaves the previous last.pt intact
    atomic_write(checkpoint_path(run_dir), data)
    if keep_epoch:
        atomic_write(checkpoint_path(run_dir, state["epoch"]), data)


def read_checkpoint(path: str | Path, device: torch.device | str = "cpu") -> dict[str, Any]:
    """The state in the checkpoint file ``path``, tensors on ``device``.

    Raises:
        CheckpointError: the file is damaged, foreign or incomplete (one line naming it).
        OSError: it cannot be read at all.
    """
    try:
        state = torch.load(path, map_location=device, weights_only=True)
    except OSError:
        raise
    except pickle.UnpicklingError:
        raise CheckpointError(
            f"damaged checkpoint {path}: it holds objects no cacr_lab checkpoint contains, so "
            "it was not loaded (replaced by another file?)"
        ) from None
    except Exception as err:  # noqa: BLE001 -- torch raises many types for a damaged file
        raise CheckpointError(
            f"damaged checkpoint {path}: not a complete torch checkpoint "
            f"({type(err).__name__}; truncated or overwritten?)"
        ) from None
    if not isinstance(state, dict):
        raise CheckpointError(f"damaged checkpoint {path}: holds a {type(state).__name__}")
    missing = [k for k in REQUIRED_KEYS if k not in state]
    if missing:
        raise CheckpointError(f"damaged checkpoint {path}: lacks {', '.join(missing)}")
    for key in ("epoch", "step"):
        if not isinstance(state[key], int) or state[key] < 0:
            raise CheckpointError(f"damaged checkpoint {path}: {key} is {state[key]!r}")
    return state


def load_last_checkpoint(
    run_dir: str | Path, device: torch.device | str = "cpu"
) -> dict[str, Any] | None:
    """The state of the run's last checkpoint, tensors on ``device``; None when it has none."""
    path = last_checkpoint(Path(run_dir))
    return None if path is None else read_checkpoint(path, device)


def finished_with(run_dir: str | Path, config: TrainConfig) -> bool:
    """True when ``run_dir`` holds a finished run trained with exactly ``config``
    (:func:`config_differences` finds none); a missing or unreadable run is not finished."""
    run = _readable_run(run_dir)
    return (
        run is not None
        and run.status.get("state") == "finished"
        and not _differing(run.config, config)
    )


def config_differences(run_dir: str | Path, config: TrainConfig) -> list[str] | None:
    """``"field: the run has X, now Y"`` for every field of ``config.to_dict()`` that the run in
    ``run_dir`` stored otherwise ([] if none); None when there is no readable run."""
    run = _readable_run(run_dir)
    return None if run is None else _differing(run.config, config)


def _readable_run(run_dir: str | Path) -> Any:
    if not (Path(run_dir) / CONFIG_FILE).is_file():
        return None
    try:
        return load_run(run_dir)
    except ValueError:
        return None


def _differing(stored: dict[str, Any], config: TrainConfig) -> list[str]:
    """Compared after the JSON round trip config.json went through (tuples come back as
    lists); a field the run did not store counts as None."""
    wanted = json.loads(json.dumps(config.to_dict()))
    return [
        f"{key}: the run has {repr(stored[key]) if key in stored else 'no such field'}, now {now!r}"
        for key, now in wanted.items()
        if stored.get(key) != now
    ]


def load_checkpoint_config(run_dir: str | Path) -> dict[str, Any] | None:
    """The config stored in the run's last checkpoint, or None when it has none."""
    state = load_last_checkpoint(run_dir)
    return None if state is None else state["config"]


def load_encoder(run_dir: str | Path, device: str = "cpu") -> tuple[nn.Module, dict[str, Any]]:
    """The encoder of a run's last checkpoint (eval mode) and the run's full config dict.

    Raises FileNotFoundError (no checkpoint) or :class:`CheckpointError` (one line naming it).
    """
    path = last_checkpoint(Path(run_dir))
    if path is None:
        raise FileNotFoundError(f"no checkpoint in {run_dir}: was the run started?")
    state = read_checkpoint(path, device)
    cfg = state["run_config"]
    try:
        model = build_encoder(
            cfg["encoder"],
            in_channels=cfg["in_channels"],
            image_size=cfg["image_size"],
            feat_dim=cfg["feat_dim"],
        )
        model.load_state_dict(state["model"])
    except (KeyError, TypeError, ValueError, RuntimeError) as err:
        cause = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise CheckpointError(
            f"damaged checkpoint {path}: its weights do not fit its config ({cause})"
        ) from None
    return model.to(device).eval(), cfg
