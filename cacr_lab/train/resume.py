"""Resuming a run: the config it continues with, the checks made before anything is written, and
the evaluation that a kill may have cut off.

A resumed run continues its stored config (the one in its last checkpoint). Only ``epochs`` may
grow (and ``max_steps``, which caps them), which extends the run; where it runs (``device``,
``data_root``, ``download``) may differ; anything else would make the run a different one and
is refused, naming each option. Every check here reads only, so a refused resume leaves the
run folder exactly as it was.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from cacr_lab.config import TrainConfig
from cacr_lab.runs import last_checkpoint, load_run, read_status, run_format_of
from cacr_lab.train.checkpoint import read_checkpoint

EXTENDABLE = ("epochs", "max_steps")  # may grow on resume: the run is extended
WHERE_IT_RUNS = ("device", "data_root", "download")  # may differ: the same run, elsewhere


def _checkpoint_of(run_dir: Path, device: torch.device | str = "cpu") -> dict[str, Any]:
    """The last checkpoint of the run in ``run_dir``, or the error that says why there is none."""
    if not run_dir.is_dir() or run_format_of(run_dir) is None:
        raise ValueError(f"cannot resume: not a run directory: {run_dir}")
    path = last_checkpoint(run_dir)
    if path is None:
        raise FileNotFoundError(
            f"nothing to resume: no checkpoint in {run_dir} (the run ended before its first "
            "checkpoint); start it again with --overwrite"
        )
    return read_checkpoint(path, device)


def _flat(config: TrainConfig) -> dict[str, Any]:
    """``config.to_dict()`` after a JSON round trip, loss options as ``loss_options.NAME``."""
    d = json.loads(json.dumps(config.to_dict()))
    options = d.pop("loss_options")
    return d | {f"loss_options.{k}": v for k, v in options.items()}


def config_changes(stored: TrainConfig, new: TrainConfig) -> list[str]:
    """What in ``new`` would make a resumed run of ``stored`` another run ([] if nothing)."""
    old_d, new_d = _flat(stored), _flat(new)
    problems = []
    for key in sorted(old_d.keys() | new_d.keys()):
        was, now = old_d.get(key), new_d.get(key)
        if was == now or key in WHERE_IT_RUNS:
            continue
        if key == "epochs" and now > was:
            continue
        if key == "max_steps" and was is not None and (now is None or now > was):
            continue
        hint = " -- a resumed run may only be extended" if key in EXTENDABLE else ""
        problems.append(f"{key} {now!r} (the run has {was!r}{hint})")
    return problems


def resume_config(run_dir: str | Path, changes: Mapping[str, Any] | None = None) -> TrainConfig:
    """The config the run in ``run_dir`` continues with: its stored config plus ``changes``.

    ``changes`` holds TrainConfig fields (``loss_options`` are merged into the stored ones),
    e.g. ``{"epochs": 40}`` to extend the run. ValueError names every change that would make it
    another run; FileNotFoundError when there is no checkpoint to resume from.
    """
    run_dir = Path(run_dir)
    stored = TrainConfig.from_dict(_checkpoint_of(run_dir)["config"])
    changes = dict(changes or {})
    base = stored.to_dict()
    if "loss_options" in changes:
        changes["loss_options"] = base["loss_options"] | dict(changes["loss_options"])
    config = TrainConfig.from_dict(base | changes)
    _refuse_changes(run_dir, stored, config)
    return config


def _refuse_changes(run_dir: Path, stored: TrainConfig, config: TrainConfig) -> None:
    problems = config_changes(stored, config)
    if problems:
        raise ValueError(
            f"cannot resume {run_dir} with changed options: {'; '.join(problems)}. A resumed "
            "run continues its stored config (only --epochs may grow); start a new run to "
            "change anything else"
        )


def _total_steps(config: TrainConfig, state: Mapping[str, Any]) -> int:
    per_epoch = int(state["run_config"]["steps_per_epoch"])
    cap = config.max_steps if config.max_steps is not None else math.inf
    return int(min(config.epochs * per_epoch, cap))


def nothing_left(run_dir: str | Path, config: TrainConfig) -> str | None:
    """A note if the run in ``run_dir`` is finished and ``config`` adds no steps, else None."""
    run_dir = Path(run_dir)
    if read_status(run_dir).get("state") != "finished":
        return None
    state = _checkpoint_of(run_dir)
    total = _total_steps(config, state)
    if state["step"] < total:
        return None
    return (
        f"{run_dir} is finished (step {state['step']} of {total}): nothing to resume; "
        f"give a larger --epochs (now {config.epochs}) to extend it"
    )


def check_resume(
    run_dir: str | Path, config: TrainConfig, device: torch.device | str = "cpu"
) -> dict[str, Any]:
    """Every check of a resume, before anything is written; returns the checkpoint's state.

    Refuses a folder that is no run, a run without a checkpoint, a damaged checkpoint, a
    ``config`` that changes the run (:func:`config_changes`), and a finished run that ``config``
    does not extend.
    """
    run_dir = Path(run_dir)
    state = _checkpoint_of(run_dir, device)
    _refuse_changes(run_dir, TrainConfig.from_dict(state["config"]), config)
    note = nothing_left(run_dir, config)
    if note is not None:
        raise ValueError(f"cannot resume: {note}")
    return state


def evaluation_due(
    step: int,
    epoch: int,
    steps_per_epoch: int,
    total_steps: int,
    eval_every: int,
    every_steps: int = 0,
) -> bool:
    """Whether an evaluation (and snapshot) belongs at ``step``: at the start, and after every
    ``eval_every``-th complete epoch but the last (the final evaluation follows it); with
    ``every_steps`` > 0, after every ``every_steps``-th step instead (mid-epoch too).

    >>> [evaluation_due(s, s // 10, 10, 30, 1) for s in (0, 5, 10, 20, 30)]
    [True, False, True, True, False]
    >>> [evaluation_due(s, s // 10, 10, 30, 1, every_steps=5) for s in (0, 3, 5, 10, 25, 30)]
    [True, False, True, True, True, False]
    """
    if step == 0:
        return True
    if every_steps:
        return step % every_steps == 0 and step < total_steps
    return (
        step % steps_per_epoch == 0
        and step < total_steps
        and bool(eval_every)
        and epoch % eval_every == 0
    )


def has_eval_at(run_dir: str | Path, step: int, *, final: bool = False) -> bool:
    """Whether the run's metrics hold an evaluation record at ``step`` (``final``: one with the
    linear probe's accuracy). Its snapshot is written before it, so it is there too."""
    return any(
        r.get("step") == step and (not final or r.get("probe_acc") is not None)
        for r in load_run(run_dir).eval_records()
    )
