"""What keeps a run's work safe: the finite guard, stop requests, and one-line error texts.

- :class:`FiniteGuard` checks the loss and the gradient of every step *before* the optimiser
  takes it (on CPU; on a GPU at every logging step and before every checkpoint, which are the
  loop's host syncs), so no step and no checkpoint is ever made from non-finite values.
- :func:`stop_requests` turns SIGTERM (``kill``, batch schedulers, the dashboard's Stop) and
  Ctrl-C into a flag that the loop reads between steps: the trainer then writes a checkpoint at
  the current step and ends "stopped". Nested uses share one flag, so a study of many runs
  (``cacr-lab compare``) stops as a whole. A second Ctrl-C interrupts at once.
- :func:`error_line` is the one line a user sees for an error (CLI, ``status.json``).
"""

from __future__ import annotations

import contextlib
import math
import signal
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import torch

from cacr_lab.config import TrainConfig, check_step_memory
from cacr_lab.losses import LossOutput


class StudyStopped(Exception):
    """A stop request (SIGTERM, Ctrl-C) ended a study of several runs as a whole; the message
    says how far it got and how to continue. ``signal``: the signal's number."""

    def __init__(self, message: str, signal: int) -> None:
        super().__init__(message)
        self.signal = signal


class NonFiniteLossError(RuntimeError):
    """The loss or the gradient became NaN or inf; the message names the step and the last
    finite values. The step was not taken (CPU) and no checkpoint holds non-finite weights."""


# --------------------------------------------------------------------------------------------
# Non-finite values
# --------------------------------------------------------------------------------------------


def _all_finite(tensors: Iterable[torch.Tensor]) -> torch.Tensor:
    """0-dim bool on the tensors' device: every element of every tensor is finite."""
    tensors = [t.detach() for t in tensors]
    if hasattr(torch.nn.utils, "get_total_norm"):  # torch >= 2.6: one fused pass
        return torch.isfinite(torch.nn.utils.get_total_norm(tensors, norm_type=math.inf))
    return torch.stack([torch.isfinite(t).all() for t in tensors]).all()


class FiniteGuard:
    """Refuses non-finite losses, gradients and weights, and remembers the last finite values.

    ``check_every_step`` (CPU): :meth:`before_step` raises before the optimiser step. Otherwise
    (GPU, where a per-step host sync costs throughput) it only records a device-side flag, and
    :meth:`sync` -- called on logging steps and before checkpoints -- raises for any step since
    the last sync.
    """

    def __init__(self, check_every_step: bool) -> None:
        self.check_every_step = check_every_step
        self.last_finite: dict[str, float] = {}
        self._ok: torch.Tensor | None = None  # GPU: all steps since the last sync were finite
        self._since = 0  # GPU: first step not yet synced

    def before_step(
        self, out: LossOutput, params: Iterable[torch.nn.Parameter], *, step: int, epoch: int
    ) -> None:
        """Call between ``backward()`` and ``optimizer.step()``; ``step`` is the step's number
        (1-based, the ``step`` its train record gets)."""
        grads = [p.grad for p in params if p.grad is not None]
        ok = _all_finite([out.loss, *grads])
        if not self.check_every_step:
            self._ok = ok if self._ok is None else self._ok & ok
            return
        if not bool(ok):
            values = self.values(out)
            if all(math.isfinite(v) for v in values.values()):
                what = (
                    f"non-finite gradient at step {step} (epoch {epoch}): the loss "
                    f"{values['loss']:.6g} is finite, the gradient is not (NaN or inf)"
                )
            else:
                what = f"non-finite loss at step {step} (epoch {epoch}): {_fmt(values, '')}"
            raise NonFiniteLossError(f"{what}; the step was not taken; {self._advice()}")

    def sync(self, *, step: int, epoch: int) -> None:
        """GPU: raise if a step since the last sync was non-finite (one host sync)."""
        if self._ok is not None and not bool(self._ok):
            raise NonFiniteLossError(
                f"non-finite loss or gradient between step {self._since} and step {step} "
                f"(epoch {epoch}); {self._advice()}"
            )
        self._ok, self._since = None, step + 1

    def values(self, out: LossOutput) -> dict[str, float]:
        """The loss and its parts as floats (one host sync)."""
        return {"loss": float(out.loss.detach())} | {k: float(v) for k, v in out.parts().items()}

    def checked_values(self, out: LossOutput, *, step: int, epoch: int) -> dict[str, float]:
        """:meth:`values`, raising on a non-finite one; the finite ones are remembered."""
        values = self.values(out)
        if not all(math.isfinite(v) for v in values.values()):
            raise NonFiniteLossError(
                f"non-finite loss at step {step} (epoch {epoch}): {_fmt(values, '')}; "
                f"{self._advice()}"
            )
        self.last_finite = values | {"step": step}
        return values

    def check_weights(self, model: torch.nn.Module, *, step: int) -> None:
        """Before a checkpoint: every parameter and buffer finite, else raise (nothing written)."""
        tensors = [t for t in [*model.parameters(), *model.buffers()] if t.is_floating_point()]
        if tensors and not bool(_all_finite(tensors)):
            raise NonFiniteLossError(
                f"non-finite weights at step {step}: no checkpoint written; {self._advice()}"
            )

    def _advice(self) -> str:
        last = _fmt(self.last_finite, "none yet")
        return (
            f"no checkpoint holds non-finite weights (the last one is intact); last finite "
            f"values: {last}. Try a lower learning rate or temperature."
        )


def _fmt(values: dict[str, float], empty: str) -> str:
    return ", ".join(f"{k}={v:.4g}" for k, v in values.items()) or empty


def check_device_memory(config: TrainConfig, device: torch.device) -> None:
    """On a GPU, refuse a config whose step needs more than the device has (before allocating;
    :class:`TrainConfig` checks CPU runs against the machine's memory itself)."""
    if device.type == "cuda":
        total = torch.cuda.get_device_properties(device).total_memory
        check_step_memory(config, total, f"the memory of {device}")


# --------------------------------------------------------------------------------------------
# Stop requests
# --------------------------------------------------------------------------------------------


@dataclass
class StopFlag:
    """Set by SIGTERM or Ctrl-C inside :func:`stop_requests`; ``signal`` is the first one."""

    signal: int | None = None

    @property
    def requested(self) -> bool:
        return self.signal is not None

    @property
    def name(self) -> str:
        return signal.Signals(self.signal).name if self.signal else "no signal"


_active: StopFlag | None = None


@contextlib.contextmanager
def stop_requests() -> Iterator[StopFlag]:
    """Within the block SIGTERM and SIGINT set the yielded flag instead of ending the process.

    Nested blocks yield the outermost flag, so a run inside a study stops the study too. A
    second SIGINT raises KeyboardInterrupt (to interrupt a step that hangs). Only the main
    thread can catch signals: elsewhere the flag is never set. SIGINT stays ignored where the
    process was started with it ignored (a background job).
    """
    global _active
    if _active is not None or threading.current_thread() is not threading.main_thread():
        yield _active or StopFlag()
        return
    flag = StopFlag()

    def handler(signum: int, _frame: object) -> None:
        if flag.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        flag.signal = flag.signal or signum

    signums = [signal.SIGTERM]
    if signal.getsignal(signal.SIGINT) is not signal.SIG_IGN:
        signums.append(signal.SIGINT)
    old = {s: signal.signal(s, handler) for s in signums}
    _active = flag
    try:
        yield flag
    finally:
        _active = None
        for s, h in old.items():
            signal.signal(s, h)


# --------------------------------------------------------------------------------------------
# Error texts
# --------------------------------------------------------------------------------------------


def error_line(exc: BaseException) -> str:
    """One line for the user: ``path: cause`` for a file-system error, else the message's first
    line (no exception chain, no traceback)."""
    if isinstance(exc, OSError) and exc.filename is not None and exc.strerror:
        return f"{exc.filename}: {exc.strerror}"
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0]
