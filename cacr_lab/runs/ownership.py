"""Who owns a run folder: its signature, its lock, and the identity of the process writing it.

The format is specified in :mod:`cacr_lab.runs.format`; this module holds the three checks that
keep two processes, or a process and a user's files, from harming each other:

- :func:`run_format_of`: whether a folder is a run of this lab (``config.json``'s ``run_format``;
  version 1 runs by the keys every writer adds), never by a file name anyone may use;
  :func:`check_replaceable` says why ``--overwrite`` must not delete a folder.
- :class:`RunLock`: an exclusive ``flock`` on ``.lock``, taken atomically by the one writer and
  released by the kernel however the process ends.
- :func:`process_token` and :func:`process_alive`: a pid plus the process's start time, so a
  later process that got the same pid is neither shown as the run nor sent its Stop signal.
"""

import contextlib
import json
import os
from pathlib import Path
from typing import Any

from cacr_lab.runs.format import (
    _TMP_PREFIX,
    CONFIG_FILE,
    FORMAT_KEY,
    LOCK_FILE,
    RUN_ENTRIES,
    _command_output,
    _loads,
    _pid_alive,
)

try:  # POSIX; elsewhere the lock is not taken (the pid check still guards live runs)
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]


# --------------------------------------------------------------------------------------------
# The signature
# --------------------------------------------------------------------------------------------


def run_format_of(path: str | os.PathLike) -> int | None:
    """The run-format version of the folder ``path``, or None if it is no run of this lab.

    Version 2 and later carry ``run_format`` in ``config.json``; a version 1 run is recognised by
    ``code_version.cacr_lab`` and ``created``, which its writer added to every config.
    """
    try:
        config = _loads((Path(path) / CONFIG_FILE).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        return None
    if not isinstance(config, dict):
        return None
    version = config.get(FORMAT_KEY)
    if isinstance(version, int) and not isinstance(version, bool) and version >= 2:
        return version
    code = config.get("code_version")
    if isinstance(code, dict) and "cacr_lab" in code and isinstance(config.get("created"), str):
        return 1
    return None


def foreign_entries(path: str | os.PathLike) -> list[str]:
    """Names in the folder ``path`` that no run writes (sorted; folders end with ``/``)."""
    return sorted(
        p.name + ("/" if p.is_dir() else "")
        for p in Path(path).iterdir()
        if p.name not in RUN_ENTRIES and not p.name.startswith(_TMP_PREFIX)
    )


def _listing(names: list[str], most: int = 6) -> str:
    shown = ", ".join(names[:most])
    return shown + (f" and {len(names) - most} more" if len(names) > most else "")


def check_replaceable(path: str | os.PathLike) -> None:
    """Raise FileExistsError, naming what is there, unless ``path`` is a run folder holding
    nothing but a run's files: what ``--overwrite`` may delete."""
    path = Path(path)
    if run_format_of(path) is None:
        config = path / CONFIG_FILE
        why = (
            f"its {CONFIG_FILE} is not a cacr_lab run config (no {FORMAT_KEY!r} signature)"
            if config.is_file()
            else f"it has no {CONFIG_FILE}"
        )
        found = sorted(p.name + ("/" if p.is_dir() else "") for p in path.iterdir())
        raise FileExistsError(
            f"refusing to delete {path}: {why}, so it is not a run folder "
            f"(it holds {_listing(found) or 'nothing'})"
        )
    foreign = foreign_entries(path)
    if foreign:
        raise FileExistsError(
            f"refusing to delete {path}: besides the run's files it holds {_listing(foreign)}; "
            "move them out first"
        )


# --------------------------------------------------------------------------------------------
# The identity of a process
# --------------------------------------------------------------------------------------------

_HAS_PROC = Path("/proc/self/stat").is_file()


def _boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()[:8]
    except OSError:
        return "?"


def process_token(pid: Any) -> str | None:
    """A token of the process ``pid`` that a later process with the same pid will not have.

    Linux: ``"<boot id>:<start time in clock ticks>"`` from ``/proc``; elsewhere the start time
    ``ps`` reports. None when there is no such process (or nothing to tell it by).
    """
    if not isinstance(pid, int) or isinstance(pid, bool) or pid <= 0:
        return None
    if _HAS_PROC:
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            return None
        fields = stat.rsplit(")", 1)[-1].split()
        return f"{_boot_id()}:{fields[19]}" if len(fields) > 19 else None  # field 22: starttime
    out = _command_output(["ps", "-o", "lstart=", "-p", str(pid)])  # macOS, BSD
    started = " ".join((out or "").split())
    return f"ps:{started}" if started else None


def process_alive(pid: Any, token: Any) -> bool:
    """True if the process ``pid`` lives and is the one ``token`` names.

    A status written before tokens existed (``token`` None) falls back to the pid alone.
    """
    if not _pid_alive(pid):
        return False
    return token is None or process_token(pid) == token


# --------------------------------------------------------------------------------------------
# The lock
# --------------------------------------------------------------------------------------------


class RunLock:
    """Exclusive ownership of a run folder: ``flock`` on its ``.lock`` file.

    :meth:`acquire` takes it atomically or raises FileExistsError naming the holder; the kernel
    drops it when the descriptor closes (:meth:`release`) or the process ends in any way. Two
    locks of one folder exclude each other also within one process.
    """

    def __init__(self, folder: str | os.PathLike) -> None:
        self.folder = Path(folder)
        self.path = self.folder / LOCK_FILE
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self) -> "RunLock":
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        if fcntl is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                os.close(fd)
                raise FileExistsError(
                    f"run folder {self.folder} is in use by another process{self._holder()}; "
                    "wait for it to end, or stop it"
                ) from None
        self._fd = fd
        pid = os.getpid()
        note = json.dumps({"pid": pid, "pid_start": process_token(pid)}).encode()
        with contextlib.suppress(OSError):  # who holds it, for the message above; optional
            os.ftruncate(fd, 0)
            os.pwrite(fd, note, 0)
        return self

    def _holder(self) -> str:
        try:
            note = json.loads(self.path.read_text() or "{}")
        except (OSError, ValueError):
            return ""
        pid = note.get("pid") if isinstance(note, dict) else None
        return f" (pid {pid})" if isinstance(pid, int) and not isinstance(pid, bool) else ""

    def release(self) -> None:
        """Idempotent; the ``.lock`` file stays (deleting it would let two owners lock two)."""
        if self._fd is not None:
            fd, self._fd = self._fd, None
            with contextlib.suppress(OSError):
                os.close(fd)
