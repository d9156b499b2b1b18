"""Runs as processes (the dashboard's side): start, stop, the log, one line of status text, and
dismissing a start that failed.

A run started here is an ordinary trainer process writing its folder through
:class:`~cacr_lab.runs.RunWriter`; the dashboard never imports the training loop, it starts a
process, reads the folder (:mod:`cacr_lab.runs.reader`) and sends SIGTERM to stop it -- only to
the process that wrote the status: its pid and its start token must both match
(:func:`cacr_lab.runs.ownership.process_alive`), so a pid reused by another process is never
signalled.
"""

import math
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from cacr_lab.runs.format import (
    CONFIG_FILE,
    LOCK_FILE,
    LOG_FILE,
    STATUS_FILE,
    _read_json_or_empty,
)
from cacr_lab.runs.ownership import process_alive
from cacr_lab.runs.reader import Run, run_state


def _duration(seconds: Any) -> str:
    """``"42 s"``, ``"3 min 05 s"``, ``"2 h 07 min"``; ``"?"`` for None or a non-finite value."""
    if not isinstance(seconds, (int, float)) or not math.isfinite(seconds) or seconds < 0:
        return "?"
    s = round(seconds)
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60:02d} s"
    return f"{s // 3600} h {s % 3600 // 60:02d} min"


def describe_status(run: Run) -> str:
    """One human line for a run's state (the dashboard's status line).

    >>> r = Run(Path("r"), "r", {}, {"state": "finished", "step": 400, "total_steps": 400}, [])
    >>> describe_status(r)
    'finished · step 400/400'
    >>> r.status = {"state": "failed", "step": 37, "error": "non-finite loss at step 37"}
    >>> describe_status(r)
    'failed at step 37: non-finite loss at step 37'
    """
    s = run.status
    state = run_state(run)
    step, total = s.get("step"), s.get("total_steps")
    at = f"step {step}/{total}" if total else f"step {step}" if step is not None else ""
    if state == "running":
        rate = s.get("images_per_sec")
        parts = [
            "running",
            at,
            f"{rate:.0f} img/s" if isinstance(rate, (int, float)) else "",
            f"ETA {_duration(s.get('eta_sec'))}" if s.get("eta_sec") is not None else "",
        ]
        return " · ".join(p for p in parts if p)
    if state == "finished":
        return " · ".join(p for p in ("finished", at) if p)
    if state == "stopped":
        return f"stopped at {at}" if at else "stopped"
    if state == "failed":
        where = f" at {at}" if at else ""
        return f"failed{where}: {s.get('error') or 'no error text recorded'}"
    if state == "stale":
        return (
            f"stale: status says running, but process {s.get('pid')} is gone (killed?) · last {at}"
        )
    return f"unknown: {STATUS_FILE} missing or unreadable"


def _cpu_times() -> tuple[int, int] | None:
    """(busy, total) jiffies of all CPUs since boot, from /proc/stat; None where unreadable."""
    try:
        with open("/proc/stat") as f:
            fields = [int(x) for x in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    return sum(fields[:8]) - idle, sum(fields[:8])  # guest time is counted in user already


def spare_cores(interval: float = 0.3) -> int:
    """How many CPU cores were idle over the next ``interval`` seconds: ``os.cpu_count()``
    minus the cores in use (rounded), at least 1; every core where ``/proc/stat`` is unreadable
    (not Linux).

    Why: torch's CPU thread pool spins while it waits, so a trainer with one thread per core on
    cores another process is using slows *both* down several times over (measured on 2 cores
    next to a second 2-thread training: the classroom run 83 s with 2 threads, 29 s with 1,
    17 s alone). A trainer started with ``threads=spare_cores()`` takes the idle cores only.
    """
    cores = os.cpu_count() or 1
    first = _cpu_times()
    if first is None:
        return cores
    time.sleep(interval)
    second = _cpu_times()
    if second is None or second[1] <= first[1]:
        return cores
    busy = cores * (second[0] - first[0]) / (second[1] - first[1])
    return max(1, min(cores, cores - round(busy)))


def start_process(
    run_dir: str | os.PathLike,
    argv: Sequence[str],
    *,
    nice: int = 0,
    threads: int | None = None,
) -> subprocess.Popen:
    """Start ``argv`` (a trainer writing ``run_dir``) in a session of its own, detached from
    the caller, with stdout and stderr appended to ``run_dir/train.log``.

    ``run_dir`` is created here (it must not hold a run yet); the trainer's :class:`RunWriter`
    accepts a folder whose only file is that log. ``nice`` > 0 lowers the process's CPU
    priority (POSIX ``nice``), so that a dashboard on the same few cores stays responsive; the
    trainer still gets every idle cycle. ``threads``: the trainer's CPU threads
    (``OMP_NUM_THREADS``, read by torch when it loads; see :func:`spare_cores`); None keeps the
    caller's environment. Returns the Popen (poll it to reap the process); stop the run with
    :func:`stop_run`.
    """
    if not isinstance(nice, int) or not 0 <= nice <= 19:
        raise ValueError(f"nice must be an int in [0, 19], got {nice!r}")
    if threads is not None and (not isinstance(threads, int) or threads < 1):
        raise ValueError(f"threads must be a positive int or None, got {threads!r}")
    env = None if threads is None else os.environ | {"OMP_NUM_THREADS": str(threads)}
    run_dir = Path(run_dir)
    if (run_dir / CONFIG_FILE).exists():
        raise FileExistsError(f"{run_dir} already holds a run")
    argv = list(argv)
    if nice and shutil.which("nice"):
        argv = ["nice", "-n", str(nice), *argv]  # nice execs argv: the pid stays the trainer's
    run_dir.mkdir(parents=True, exist_ok=True)
    with open(run_dir / LOG_FILE, "ab") as log:
        return subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,  # a page reload or Ctrl-C of the server leaves it running
        )


def stop_run(run_dir: str | os.PathLike) -> bool:
    """Ask a running run to stop: SIGTERM to the process in its status.json.

    The trainer catches SIGTERM, writes a checkpoint at the current step and sets the state
    ``"stopped"``. Returns False (and sends nothing) unless the status says running and a process
    with both its ``pid`` and its ``pid_start`` token is alive (a status without a token, from an
    older version, is not trusted).
    """
    status = _read_json_or_empty(Path(run_dir) / STATUS_FILE)
    pid, token = status.get("pid"), status.get("pid_start")
    if status.get("state") != "running" or token is None or not process_alive(pid, token):
        return False
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return False
    return True


def discard_failed_start(run_dir: str | os.PathLike) -> bool:
    """Remove the folder of a start that failed before it wrote a run (:func:`start_process`
    made it: ``train.log`` and at most an empty claim). Never touches a run: returns False, and
    removes nothing, when the folder holds anything else."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        return False
    for entry in run_dir.iterdir():
        empty_dir = entry.is_dir() and not any(entry.iterdir())
        if entry.name not in (LOG_FILE, LOCK_FILE) and not empty_dir:
            return False
    shutil.rmtree(run_dir)
    return True


def read_log(run_dir: str | os.PathLike, lines: int = 20) -> str:
    """The last ``lines`` non-empty lines of ``train.log`` ("" when there is none)."""
    try:
        data = (Path(run_dir) / LOG_FILE).read_bytes()[-65536:]
    except OSError:
        return ""
    text = data.decode("utf-8", errors="replace").replace("\r", "\n")
    kept = [line for line in text.splitlines() if line.strip()]
    return "\n".join(kept[-lines:])
