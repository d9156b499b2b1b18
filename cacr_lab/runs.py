"""The run directory: one writer (:class:`RunWriter`), one reader (:func:`load_run`).

This docstring is the specification of the format. No other module of cacr_lab knows file names
inside a run; the trainer writes through :class:`RunWriter`, the dashboard and the notebooks read
through :func:`load_run`, :func:`list_runs`, :class:`MetricsTail` and :func:`load_snapshot`.

Layout of a run folder ``<root>/<name>/``::

    config.json          every option of the run, written once (rewritten on resume)
    metrics.jsonl        one JSON object per line, appended and flushed per logging step
    status.json          live state of the process, replaced atomically
    snapshots/           snap_{step:08d}.npz, replaced atomically
    checkpoints/         last.pt and epoch_{N:04d}.pt, written by the trainer
    train.log            stdout/stderr of a run started by :func:`start_process` (the dashboard)

``config.json``
    The trainer's options as a (flat-ish) JSON object -- ``method`` (the loss registry key,
    e.g. ``"cacr"``), loss options, ``dataset``, ``encoder``, ``epochs``, ``batch_size``,
    ``seed``, ... -- plus keys added by the writer:

    - ``code_version``: ``{"cacr_lab": __version__, "git_commit": str | null}``;
    - ``class_counts``: list[int], images per class in the pre-training set (null if unknown);
    - ``created``: ISO-8601 local time with UTC offset, e.g. ``"2026-11-27T22:35:01+01:00"``;
    - ``resumed`` (only after a resume): list of ISO times at which the run was resumed.

``metrics.jsonl``
    UTF-8, one JSON object per line, each line ends with ``\\n``. Strict JSON: a non-finite float
    (NaN, inf) is written as ``null``. Every record has ``kind`` (str), ``step`` (int, optimiser
    steps since the start of training) and ``time`` (float, seconds since training started; it
    continues across a resume). Known kinds:

    - ``"train"``: ``epoch``, ``loss``, the loss parts (``attraction``, ``repulsion`` for cacr;
      ``alignment``, ``uniformity`` or others for baselines), ``lr``, ``images_per_sec``.
    - ``"eval"``: ``epoch``, ``knn_acc``, ``alignment``, ``uniformity``, optional ``probe_acc``,
      ``per_class_acc`` (list[float], index = class), and weight statistics prefixed ``pos_`` and
      ``neg_``: ``*_ess_frac`` (effective sample size / set size), ``*_entropy_norm`` (entropy /
      log set size), ``*_max_weight``, ``*_wd_corr`` (correlation of weight and d²).

    A reader skips an unterminated last line (the writer may be in the middle of it) and skips a
    corrupt complete line with a warning.

``status.json``
    ``{"state": "running" | "finished" | "failed" | "stopped", "pid": int, "step": int,
    "epoch": int, "total_steps": int, "images_per_sec": float | null, "eta_sec": float | null,
    "error": str | null, "updated": ISO time}``. Readers additionally report ``"stale"`` for a run
    whose status says running but whose process is gone, and ``"unknown"`` when the file is
    missing or unreadable.

``snapshots/snap_{step:08d}.npz``
    Written to a temporary file ``.tmp-*`` in the same folder, then ``os.replace``-d into place, so
    a reader never sees half a snapshot. Arrays:

    - ``embeddings`` (n, D) float32: L2-normalised embeddings of a fixed sample of held-out images;
    - ``labels`` (n,) int64: their classes;
    - optional, for a sample of Q queries: ``pos_weights`` and ``pos_d2`` (Q, K), ``neg_weights``
      and ``neg_d2`` (Q, N) float32 -- the conditional weights pi_pos / pi_neg (each row sums to
      1) and the squared distances they were computed from;
    - scalars ``step`` and ``epoch`` (int64).

``checkpoints/``
    Owned by the trainer; this module only names the paths (:func:`checkpoint_dir`,
    :func:`checkpoint_path`, :func:`last_checkpoint`).

Example (the whole round trip):

>>> import tempfile, numpy as np
>>> root = Path(tempfile.mkdtemp())
>>> with RunWriter(root / "demo", {"method": "cacr", "seed": 0}, class_counts=[5, 5]) as w:
...     w.log({"kind": "train", "epoch": 0, "step": 1, "loss": float("nan")})
...     _ = w.snapshot(1, 0, np.eye(2, 3), np.array([0, 1]))
>>> run = load_run(root / "demo")
>>> run.config["method"], run.status["state"], run.metrics[0]["loss"]
('cacr', 'finished', None)
>>> latest_snapshot(root / "demo").embeddings.shape
(2, 3)
"""

import dataclasses
import json
import math
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
import zipfile
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from cacr_lab._version import __version__

CONFIG_FILE = "config.json"
METRICS_FILE = "metrics.jsonl"
STATUS_FILE = "status.json"
SNAPSHOT_DIR = "snapshots"
CHECKPOINT_DIR = "checkpoints"
LOG_FILE = "train.log"

STATES = ("running", "finished", "failed", "stopped")
# Optional snapshot arrays; each pair shares one (Q, set size) shape.
SNAPSHOT_ARRAYS = ("pos_weights", "pos_d2", "neg_weights", "neg_d2")
_STATUS_FIELDS = ("pid", "step", "epoch", "total_steps", "images_per_sec", "eta_sec", "error")
_SNAPSHOT_RE = re.compile(r"^snap_(\d{8,})\.npz$")
_RUN_NAME_RE = re.compile(r"^[A-Za-z0-9._-]+$")
_TMP_PREFIX = ".tmp-"  # leading dot: never matches snap_*.npz, hidden in file browsers
MAX_RUN_NAME = 64


# --------------------------------------------------------------------------------------------
# Small helpers shared by writer and reader
# --------------------------------------------------------------------------------------------


def _now_iso() -> str:
    """Local time with UTC offset, to the second: sortable and unambiguous."""
    return datetime.now().astimezone().isoformat(timespec="seconds")


def _jsonable(value: Any) -> Any:
    """Convert ``value`` to plain JSON types; non-finite floats become None (strict JSON)."""
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return _jsonable(dataclasses.asdict(value))
    if hasattr(value, "detach") and hasattr(value, "tolist"):  # a torch tensor, without torch
        return _jsonable(value.detach().cpu().tolist())
    if isinstance(value, (np.generic, np.ndarray)):
        return _jsonable(value.tolist())
    raise ValueError(f"cannot store {type(value).__name__} value {value!r} as JSON")


def _dumps(obj: Any, **kwargs: Any) -> str:
    # allow_nan=False turns a NaN that slipped past _jsonable into an error, never a token.
    return json.dumps(_jsonable(obj), allow_nan=False, **kwargs)


def _loads(text: str | bytes) -> Any:
    # Tolerate NaN/Infinity tokens from other writers, mapping them to None like our own writer.
    return json.loads(text, parse_constant=lambda _token: None)


def _to_numpy(x: Any, dtype: Any) -> np.ndarray:
    """numpy array of ``dtype`` from a numpy array, list or torch tensor (any device)."""
    if hasattr(x, "detach"):  # torch: go through float32 so bfloat16 / half also convert
        x = x.detach().cpu()
        x = x.float().numpy() if x.is_floating_point() else x.numpy()
    return np.asarray(x, dtype=dtype)


def atomic_write(
    path: str | os.PathLike, data: bytes | Callable[[BinaryIO], None], *, fsync: bool = False
) -> None:
    """Write a file so that readers see the old or the new one, never a part.

    ``data`` is the bytes, or a function that writes into an open binary file (``np.savez``,
    ``torch.save``). It goes to a hidden temp file next to ``path``, which is then renamed over it;
    on any error the temp file is removed and the previous file stays.
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=_TMP_PREFIX, suffix=path.suffix)
    try:
        with os.fdopen(fd, "wb") as f:
            if callable(data):
                data(f)
            else:
                f.write(data)
            f.flush()
            if fsync:
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _pid_alive(pid: Any) -> bool:
    """True if a process with this pid exists on this machine and is not a zombie."""
    if not isinstance(pid, int) or isinstance(pid, bool) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)  # signal 0: existence check only
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by someone else
    except OSError:
        return False
    # A finished child that its parent (e.g. the app) has not reaped yet still answers kill(0).
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat.rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True  # no /proc (macOS): trust kill(0)


def _git_commit() -> str | None:
    """HEAD of the checkout cacr_lab is imported from, or None (no git, not a repo, no commit)."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=Path(__file__).resolve().parent,
            capture_output=True,
            text=True,
            timeout=5,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    commit = out.stdout.strip()
    return commit if out.returncode == 0 and re.fullmatch(r"[0-9a-f]{40,64}", commit) else None


# --------------------------------------------------------------------------------------------
# Names and paths
# --------------------------------------------------------------------------------------------


def sanitize_run_name(name: str) -> str:
    """Validate a run name that may come from a web page; return it stripped of outer spaces.

    Allowed: letters, digits, ``-``, ``_``, ``.``; no leading dot; no ``..``; 1-64 characters.
    That keeps every accepted name a single plain folder inside the runs root.

    >>> sanitize_run_name(" cacr-digits-1 ")
    'cacr-digits-1'
    >>> sanitize_run_name("../x")
    Traceback (most recent call last):
    ...
    ValueError: invalid run name '../x': must not start with '.'
    """
    if not isinstance(name, str):
        raise ValueError(f"run name must be a string, got {type(name).__name__} {name!r}")
    stripped = name.strip()
    if not stripped:
        raise ValueError(f"invalid run name {name!r}: empty")
    if stripped.startswith("."):
        raise ValueError(f"invalid run name {name!r}: must not start with '.'")
    if ".." in stripped:
        raise ValueError(f"invalid run name {name!r}: must not contain '..'")
    if len(stripped) > MAX_RUN_NAME:
        raise ValueError(f"invalid run name {name!r}: {len(stripped)} > {MAX_RUN_NAME} characters")
    if not _RUN_NAME_RE.match(stripped):
        bad = sorted({c for c in stripped if not re.match(r"[A-Za-z0-9._-]", c)})
        raise ValueError(
            f"invalid run name {name!r}: characters {bad} not allowed "
            "(use letters, digits, '-', '_', '.')"
        )
    return stripped


def new_run_name(method: str, dataset: str, *, now: datetime | None = None) -> str:
    """A fresh run name ``{method}-{dataset}-{YYYYmmdd-HHMMSS}``, validated.

    >>> new_run_name("cacr", "digits", now=datetime(2026, 11, 27, 22, 35, 1))
    'cacr-digits-20261127-223501'
    """
    stamp = (now or datetime.now()).strftime("%Y%m%d-%H%M%S")
    return sanitize_run_name(f"{method}-{dataset}-{stamp}")


def run_path(root: str | os.PathLike, name: str) -> Path:
    """``root / name`` for an untrusted ``name``, checked to stay directly inside ``root``."""
    root = Path(root).resolve()
    path = (root / sanitize_run_name(name)).resolve()
    if path.parent != root:  # belt and braces: a symlinked name must not lead elsewhere
        raise ValueError(f"run name {name!r} resolves outside the runs folder {root}")
    return path


def checkpoint_dir(run_dir: str | os.PathLike) -> Path:
    """The folder the trainer writes checkpoints to (not created here)."""
    return Path(run_dir) / CHECKPOINT_DIR


def checkpoint_path(run_dir: str | os.PathLike, epoch: int | None = None) -> Path:
    """``checkpoints/last.pt``, or ``checkpoints/epoch_{epoch:04d}.pt`` when ``epoch`` is given."""
    if epoch is None:
        return checkpoint_dir(run_dir) / "last.pt"
    if not isinstance(epoch, int) or epoch < 0:
        raise ValueError(f"epoch must be an int >= 0, got {epoch!r}")
    return checkpoint_dir(run_dir) / f"epoch_{epoch:04d}.pt"


def last_checkpoint(run_dir: str | os.PathLike) -> Path | None:
    """``last.pt`` if present, else the highest ``epoch_*.pt``, else None."""
    last = checkpoint_path(run_dir)
    if last.is_file():
        return last
    epochs = sorted(checkpoint_dir(run_dir).glob("epoch_[0-9][0-9][0-9][0-9]*.pt"))
    return epochs[-1] if epochs else None


def snapshot_path(run_dir: str | os.PathLike, step: int) -> Path:
    """``snapshots/snap_{step:08d}.npz``."""
    return Path(run_dir) / SNAPSHOT_DIR / f"snap_{step:08d}.npz"


# --------------------------------------------------------------------------------------------
# Writer
# --------------------------------------------------------------------------------------------


class RunWriter:
    """The only code that writes a run directory (see the module docstring for the format).

    Args:
        run_dir: the run folder; created if missing.
        config: every option of the run; must be JSON-able (numpy/torch scalars, tuples, Paths
            and dataclasses are converted).
        overwrite: delete an existing run at ``run_dir`` first. Refuses a folder without
            ``config.json`` (not a run) and a run whose process is still alive.
        resume: continue an existing run: keep metrics and snapshots (call
            :meth:`truncate_after` with the checkpoint's step to drop what came later).
        class_counts: images per class in the pre-training set (else ``config["class_counts"]``).
        fsync: ``os.fsync`` after every metrics line and status write (safer, slower).

    Used as a context manager the status ends as ``finished`` on a clean exit (if still
    ``running``), ``stopped`` on KeyboardInterrupt and ``failed`` with the error otherwise.
    """

    def __init__(
        self,
        run_dir: str | os.PathLike,
        config: Mapping[str, Any],
        *,
        overwrite: bool = False,
        resume: bool = False,
        class_counts: Sequence[int] | None = None,
        fsync: bool = False,
    ) -> None:
        if not isinstance(config, Mapping):
            raise ValueError(f"config must be a dict, got {type(config).__name__}")
        if overwrite and resume:
            raise ValueError("overwrite=True and resume=True contradict each other; pick one")
        self.path = Path(run_dir)
        self.fsync = fsync
        self._file = None
        if self.path.exists() and not self.path.is_dir():
            raise FileExistsError(f"{self.path} exists and is not a folder")

        # A lone train.log is the output of the process that is creating this run (start_process).
        existing = self.path.is_dir() and any(p.name != LOG_FILE for p in self.path.iterdir())
        is_run = (self.path / CONFIG_FILE).is_file()
        old_config: dict = {}
        if resume:
            if not is_run:
                raise ValueError(f"cannot resume: not a run directory: {self.path}")
            self._refuse_if_alive("resume")
            old_config = _read_json_or_empty(self.path / CONFIG_FILE)
        elif existing and not overwrite:
            raise FileExistsError(
                f"run directory {self.path} already exists and is not empty; "
                "use --overwrite to replace it or --resume to continue it"
            )
        elif existing:  # overwrite
            if not is_run:
                raise FileExistsError(
                    f"refusing to delete {self.path}: it has no {CONFIG_FILE}, "
                    "so it does not look like a run directory"
                )
            self._refuse_if_alive("overwrite")
            shutil.rmtree(self.path)

        (self.path / SNAPSHOT_DIR).mkdir(parents=True, exist_ok=True)
        checkpoint_dir(self.path).mkdir(exist_ok=True)
        for tmp in self.path.rglob(f"{_TMP_PREFIX}*"):  # leftovers of a crash mid-write
            tmp.unlink(missing_ok=True)

        counts = class_counts if class_counts is not None else config.get("class_counts")
        if counts is None:
            counts = old_config.get("class_counts")  # resume without repeating them
        if counts is not None:
            counts = [int(c) for c in _to_numpy(counts, np.int64).ravel()]
            if any(c < 0 for c in counts):
                raise ValueError(f"class_counts must be >= 0, got {counts}")
        self.config = _jsonable(dict(config))
        self.config["code_version"] = {
            "cacr_lab": __version__,
            "git_commit": _git_commit(),
        }
        self.config["class_counts"] = counts
        self.config["created"] = old_config.get("created", _now_iso())
        if resume:
            self.config["resumed"] = [*old_config.get("resumed", []), _now_iso()]
        atomic_write(
            self.path / CONFIG_FILE, (_dumps(self.config, indent=2) + "\n").encode(), fsync=fsync
        )

        self._time_offset = 0.0  # seconds already trained before this process (resume)
        if resume:
            self._rewrite_metrics(lambda rec: True)  # also drops a half-written last line
        self._t0 = time.monotonic()
        self._file = open(self.path / METRICS_FILE, "a", encoding="utf-8")
        self.status: dict[str, Any] = {
            "state": "running",
            "pid": os.getpid(),
            "step": 0,
            "epoch": 0,
            "total_steps": 0,
            "images_per_sec": None,
            "eta_sec": None,
            "error": None,
        }
        self.set_status("running")

    # -- metrics -----------------------------------------------------------------------------

    def elapsed(self) -> float:
        """Seconds of training so far, including time before a resume."""
        return self._time_offset + time.monotonic() - self._t0

    def log(self, record: Mapping[str, Any]) -> None:
        """Append one record (needs ``kind`` and ``step``; ``time`` is added if absent)."""
        if self._file is None:
            raise ValueError(f"RunWriter for {self.path} is closed")
        if not isinstance(record, Mapping):
            raise ValueError(f"record must be a dict, got {type(record).__name__}")
        kind = record.get("kind")
        if not isinstance(kind, str) or not kind:
            raise ValueError(f"record needs a 'kind' string ('train', 'eval'), got {kind!r}")
        step = _jsonable(record.get("step"))
        if not isinstance(step, int) or isinstance(step, bool) or step < 0:
            raise ValueError(f"record needs an int 'step' >= 0, got {record.get('step')!r}")
        rec = dict(record)
        rec.setdefault("time", self.elapsed())
        self._file.write(_dumps(rec) + "\n")
        self._file.flush()  # a live reader sees every step as soon as it is logged
        if self.fsync:
            os.fsync(self._file.fileno())

    def truncate_after(self, step: int) -> int:
        """Drop records and snapshots with step > ``step`` (after resuming from a checkpoint).

        Returns the number of metrics records dropped. ``time`` of later records continues from
        the last kept record.
        """
        if not isinstance(step, int) or step < 0:
            raise ValueError(f"step must be an int >= 0, got {step!r}")
        if self._file is not None:
            self._file.close()
        dropped = self._rewrite_metrics(lambda rec: not _int_gt(rec.get("step"), step))
        for snap in list_snapshots(self.path):
            if _snapshot_step(snap) > step:
                snap.unlink()
        self._t0 = time.monotonic()
        self._file = open(self.path / METRICS_FILE, "a", encoding="utf-8")
        return dropped

    def _rewrite_metrics(self, keep: Any) -> int:
        """Rewrite metrics.jsonl atomically with the complete, parseable records ``keep`` likes."""
        path = self.path / METRICS_FILE
        records, _ = _parse_lines(path.read_bytes() if path.exists() else b"")
        kept = [r for r in records if keep(r)]
        body = "".join(_dumps(r) + "\n" for r in kept)
        atomic_write(path, body.encode(), fsync=self.fsync)
        times = [r["time"] for r in kept if isinstance(r.get("time"), (int, float))]
        self._time_offset = float(max(times, default=0.0))
        return len(records) - len(kept)

    # -- snapshots ---------------------------------------------------------------------------

    def snapshot(self, step: int, epoch: int, embeddings: Any, labels: Any, **arrays: Any) -> Path:
        """Write ``snapshots/snap_{step:08d}.npz`` atomically and return its path.

        Args:
            embeddings: (n, D) normalised embeddings of the fixed held-out sample.
            labels: (n,) int classes.
            **arrays: optional ``pos_weights``/``pos_d2`` (Q, K), ``neg_weights``/``neg_d2``
                (Q, N); numpy arrays or torch tensors.
        """
        if not isinstance(step, (int, np.integer)) or step < 0:
            raise ValueError(f"step must be an int >= 0, got {step!r}")
        unknown = sorted(set(arrays) - set(SNAPSHOT_ARRAYS))
        if unknown:
            raise ValueError(f"unknown snapshot arrays {unknown}; allowed: {SNAPSHOT_ARRAYS}")
        emb = _to_numpy(embeddings, np.float32)
        lab = _to_numpy(labels, np.int64)
        if emb.ndim != 2 or lab.shape != (emb.shape[0],):
            raise ValueError(
                f"embeddings must be (n, D) and labels (n,), got {emb.shape} and {lab.shape}"
            )
        data: dict[str, np.ndarray] = {
            "embeddings": emb,
            "labels": lab,
            "step": np.int64(step),
            "epoch": np.int64(epoch),
        }
        for side in ("pos", "neg"):
            w, d2 = arrays.get(f"{side}_weights"), arrays.get(f"{side}_d2")
            w = None if w is None else _to_numpy(w, np.float32)
            d2 = None if d2 is None else _to_numpy(d2, np.float32)
            for name, a in ((f"{side}_weights", w), (f"{side}_d2", d2)):
                if a is not None:
                    if a.ndim != 2:
                        raise ValueError(f"{name} must be (Q, set size), got shape {a.shape}")
                    data[name] = a
            if w is not None and d2 is not None and w.shape != d2.shape:
                raise ValueError(f"{side}_weights {w.shape} and {side}_d2 {d2.shape} differ")

        path = snapshot_path(self.path, int(step))
        # a file object: savez does not append another ".npz"
        atomic_write(path, lambda f: np.savez(f, **data), fsync=self.fsync)
        return path

    # -- status ------------------------------------------------------------------------------

    def set_status(self, state: str, **fields: Any) -> dict[str, Any]:
        """Update and atomically rewrite ``status.json``; returns the new status.

        ``fields`` may be ``pid``, ``step``, ``epoch``, ``total_steps``, ``images_per_sec``,
        ``eta_sec``, ``error``; ``updated`` is set here.
        """
        if state not in STATES:
            raise ValueError(f"state must be one of {STATES}, got {state!r}")
        unknown = sorted(set(fields) - set(_STATUS_FIELDS))
        if unknown:
            raise ValueError(f"unknown status fields {unknown}; allowed: {_STATUS_FIELDS}")
        self.status.update(_jsonable(fields), state=state, updated=_now_iso())
        atomic_write(
            self.path / STATUS_FILE, (_dumps(self.status) + "\n").encode(), fsync=self.fsync
        )
        return dict(self.status)

    # -- lifecycle ---------------------------------------------------------------------------

    def close(self) -> None:
        """Close the metrics file (idempotent). The status is left as it is."""
        if self._file is not None:
            self._file.close()
            self._file = None

    def __enter__(self) -> "RunWriter":
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> bool:
        try:
            if exc_type is None:
                if self.status["state"] == "running":
                    self.set_status("finished", eta_sec=0.0)
            elif issubclass(exc_type, KeyboardInterrupt):
                self.set_status("stopped", error="interrupted")
            else:
                self.set_status("failed", error=f"{exc_type.__name__}: {exc}")
        finally:
            self.close()
        return False  # never swallow the exception

    def _refuse_if_alive(self, action: str) -> None:
        status = _read_json_or_empty(self.path / STATUS_FILE)
        pid = status.get("pid")
        if status.get("state") == "running" and pid != os.getpid() and _pid_alive(pid):
            raise FileExistsError(f"cannot {action} {self.path}: process {pid} is still running")


def _int_gt(value: Any, bound: int) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value > bound


# --------------------------------------------------------------------------------------------
# Reader
# --------------------------------------------------------------------------------------------


def _read_json_or_empty(path: Path) -> dict:
    try:
        data = _loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _parse_lines(data: bytes, first_line: int = 1) -> tuple[list[dict], list[str]]:
    """Records of the complete (newline-terminated) lines of ``data``, and warnings.

    An unterminated tail is ignored: it is a line the writer has not finished.
    """
    records: list[dict] = []
    warnings: list[str] = []
    complete = data[: data.rfind(b"\n") + 1]
    for number, line in enumerate(complete.splitlines(), start=first_line):
        if not line.strip():
            continue
        try:
            rec = _loads(line.decode("utf-8"))
        except (UnicodeDecodeError, ValueError) as err:
            warnings.append(f"{METRICS_FILE} line {number}: skipped corrupt line ({err})")
            continue
        if not isinstance(rec, dict):
            warnings.append(f"{METRICS_FILE} line {number}: skipped, not a JSON object")
            continue
        records.append(rec)
    return records, warnings


@dataclass
class Run:
    """One run directory as read from disk.

    ``status["state"]`` is as written, or ``"unknown"`` if status.json is missing or corrupt; use
    :func:`run_state` for the state that also checks the process (``"stale"``).
    """

    path: Path
    name: str
    config: dict
    status: dict
    metrics: list[dict]
    warnings: list[str] = field(default_factory=list)

    @property
    def method(self) -> str:
        """The loss registry key (``cacr``, ``infonce``, ...), ``"?"`` if the config lacks it."""
        return str(self.config.get("method", "?"))

    @property
    def created(self) -> float:
        """Creation time as a POSIX timestamp (config ``created``, else config.json mtime)."""
        try:
            return datetime.fromisoformat(self.config["created"]).timestamp()
        except (KeyError, TypeError, ValueError):
            try:
                return (self.path / CONFIG_FILE).stat().st_mtime
            except OSError:
                return 0.0

    def train_records(self) -> list[dict]:
        return [r for r in self.metrics if r.get("kind") == "train"]

    def eval_records(self) -> list[dict]:
        return [r for r in self.metrics if r.get("kind") == "eval"]


def load_run(path: str | os.PathLike) -> Run:
    """Read a run folder. Corrupt parts become warnings; only a non-run folder raises.

    Raises:
        ValueError: ``path`` is not a folder with a config.json.
    """
    path = Path(path)
    if not (path / CONFIG_FILE).is_file():
        raise ValueError(f"not a run directory: {path} (no {CONFIG_FILE})")
    warnings: list[str] = []
    try:
        config = _loads((path / CONFIG_FILE).read_text(encoding="utf-8"))
        if not isinstance(config, dict):
            raise ValueError("not a JSON object")
    except (OSError, UnicodeDecodeError, ValueError) as err:
        warnings.append(f"{CONFIG_FILE} unreadable ({err}); showing the run without its options")
        config = {}
    try:
        status = _loads((path / STATUS_FILE).read_text(encoding="utf-8"))
        if not isinstance(status, dict) or "state" not in status:
            raise ValueError("not a status object")
    except FileNotFoundError:
        warnings.append(f"{STATUS_FILE} missing")
        status = {"state": "unknown"}
    except (OSError, UnicodeDecodeError, ValueError) as err:
        warnings.append(f"{STATUS_FILE} unreadable ({err})")
        status = {"state": "unknown"}
    try:
        metrics, metric_warnings = _parse_lines((path / METRICS_FILE).read_bytes())
        warnings += metric_warnings
    except FileNotFoundError:
        metrics = []
    except OSError as err:
        warnings.append(f"{METRICS_FILE} unreadable ({err})")
        metrics = []
    return Run(
        path=path, name=path.name, config=config, status=status, metrics=metrics, warnings=warnings
    )


def list_runs(root: str | os.PathLike) -> list[Run]:
    """Every run folder directly inside ``root``, oldest first. A missing ``root`` gives []."""
    root = Path(root)
    if not root.exists():
        return []
    if not root.is_dir():
        raise ValueError(f"runs root is not a folder: {root}")
    runs = []
    for child in root.iterdir():
        if child.is_dir() and not child.name.startswith(".") and (child / CONFIG_FILE).is_file():
            runs.append(load_run(child))
    return sorted(runs, key=lambda r: (r.created, r.name))


def run_state(run: Run) -> str:
    """The status state, with ``"stale"`` for a "running" run whose process is gone."""
    state = str(run.status.get("state", "unknown"))
    if state == "running" and not _pid_alive(run.status.get("pid")):
        return "stale"
    return state


def is_running(run: Run) -> bool:
    """True only if the status says running and its process is alive on this machine."""
    return run_state(run) == "running"


def series(records: Iterable[Mapping[str, Any]], key: str) -> tuple[np.ndarray, np.ndarray]:
    """``(steps (m,) int64, values (m,) float64)`` of the records that have a numeric ``key``.

    Records without ``step`` or with a missing/None/non-numeric value are skipped.
    """
    steps, values = [], []
    for rec in records:
        step, value = rec.get("step"), rec.get(key)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        if isinstance(step, bool) or not isinstance(step, (int, float)):
            continue
        steps.append(int(step))
        values.append(float(value))
    return np.asarray(steps, dtype=np.int64), np.asarray(values, dtype=np.float64)


def last_value(records: Sequence[Mapping[str, Any]], key: str) -> Any:
    """The value of ``key`` in the last record that has it not None, else None."""
    for rec in reversed(records):
        if rec.get(key) is not None:
            return rec[key]
    return None


class MetricsTail:
    """Incremental reader of a growing metrics.jsonl, for a live dashboard.

    :meth:`read_new` returns the records of lines completed since the last call. If the file
    was replaced or shrank (resume, overwrite) it starts again from the top and sets
    ``restarted`` to True for that call, so the caller can drop what it had.
    """

    def __init__(self, path: str | os.PathLike) -> None:
        path = Path(path)
        # A run folder or the metrics file itself; the folder may not exist yet.
        self.path = path if path.suffix == ".jsonl" else path / METRICS_FILE
        self.offset = 0  # bytes of complete lines consumed
        self.lines = 0  # complete lines consumed (for warning line numbers)
        self.restarted = False
        self.warnings: list[str] = []
        self._inode: int | None = None

    def read_new(self) -> list[dict]:
        self.restarted = False
        try:
            with open(self.path, "rb") as f:
                st = os.fstat(f.fileno())
                replaced = self._inode is not None and st.st_ino != self._inode
                if replaced or st.st_size < self.offset:
                    self.offset, self.lines, self.restarted = 0, 0, True
                self._inode = st.st_ino
                f.seek(self.offset)
                data = f.read()
        except FileNotFoundError:
            return []
        complete = data[: data.rfind(b"\n") + 1]  # keep a half-written line for next time
        records, warnings = _parse_lines(complete, first_line=self.lines + 1)
        self.offset += len(complete)
        self.lines += complete.count(b"\n")
        self.warnings += warnings
        return records


# --------------------------------------------------------------------------------------------
# Snapshots
# --------------------------------------------------------------------------------------------


@dataclass
class Snapshot:
    """One snapshot file. Shapes: embeddings (n, D), labels (n,), weights/d2 (Q, K) or (Q, N)."""

    step: int
    epoch: int
    embeddings: np.ndarray
    labels: np.ndarray
    pos_weights: np.ndarray | None = None
    pos_d2: np.ndarray | None = None
    neg_weights: np.ndarray | None = None
    neg_d2: np.ndarray | None = None
    path: Path | None = None


def _snapshot_step(path: Path) -> int:
    match = _SNAPSHOT_RE.match(path.name)
    return int(match.group(1)) if match else -1


def list_snapshots(run_dir: str | os.PathLike) -> list[Path]:
    """Snapshot files of a run, sorted by step (temp files of a write in progress are ignored)."""
    folder = Path(run_dir) / SNAPSHOT_DIR
    if not folder.is_dir():
        return []
    return sorted((p for p in folder.iterdir() if _SNAPSHOT_RE.match(p.name)), key=_snapshot_step)


def load_snapshot(path: str | os.PathLike) -> Snapshot:
    """Read one snapshot; ValueError if it is unreadable or lacks embeddings/labels."""
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as npz:
            data = {k: npz[k] for k in npz.files}
    except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile) as err:
        raise ValueError(f"unreadable snapshot {path}: {err}") from err
    missing = [k for k in ("embeddings", "labels") if k not in data]
    if missing:
        raise ValueError(f"snapshot {path} lacks {missing}")
    step = int(data["step"]) if "step" in data else _snapshot_step(path)
    return Snapshot(
        step=step,
        epoch=int(data.get("epoch", -1)),
        embeddings=data["embeddings"],
        labels=data["labels"],
        path=path,
        **{k: data.get(k) for k in SNAPSHOT_ARRAYS},
    )


def latest_snapshot(run_dir, *, load: Callable[[Path], Snapshot] = load_snapshot):
    """The newest readable snapshot of a run, or None if there is none."""
    for path in reversed(list_snapshots(run_dir)):
        try:
            return load(path)
        except ValueError:
            continue  # a foreign/damaged file: fall back to the previous snapshot
    return None


# --------------------------------------------------------------------------------------------
# Stored evaluations (``cacr-lab eval``)
# --------------------------------------------------------------------------------------------

EVALUATION_FILE = "evaluation.json"


def write_evaluation(run_dir: str | os.PathLike, result: Mapping[str, Any]) -> Path:
    """Store the result of ``cacr-lab eval`` as ``evaluation.json`` in the run (atomic).

    Results are keyed by protocol, so a fast and a paper evaluation live side by side.
    """
    path = Path(run_dir) / EVALUATION_FILE
    stored = _read_json_or_empty(path)
    stored[str(result.get("protocol", "fast"))] = _jsonable(dict(result))
    atomic_write(path, json.dumps(stored, indent=2, allow_nan=False).encode())
    return path


def read_evaluation(run_dir: str | os.PathLike) -> dict[str, Any]:
    """The stored evaluations of a run, keyed by protocol ({} when none)."""
    return _read_json_or_empty(Path(run_dir) / EVALUATION_FILE)


# --------------------------------------------------------------------------------------------
# Runs as processes (the dashboard): discover, describe, start, stop
# --------------------------------------------------------------------------------------------


def run_dirs(root: str | os.PathLike) -> list[Path]:
    """Run folders directly inside ``root`` (those with a config.json), sorted by name.

    Cheaper than :func:`list_runs` (nothing is read); a missing ``root`` gives [].
    """
    root = Path(root)
    if not root.is_dir():
        return []
    return sorted(
        p for p in root.iterdir() if not p.name.startswith(".") and (p / CONFIG_FILE).is_file()
    )


def read_status(run_dir: str | os.PathLike) -> dict[str, Any]:
    """status.json alone, as :func:`load_run` reads it (``{"state": "unknown"}`` when missing or
    unreadable): what a live view re-reads every second without re-parsing the metrics."""
    status = _read_json_or_empty(Path(run_dir) / STATUS_FILE)
    return status if "state" in status else {"state": "unknown"}


def run_stamp(run_dir: str | os.PathLike) -> tuple:
    """(mtime_ns, size) of config, status and metrics files: changes whenever the run does.

    A cache key for readers that keep a parsed :class:`Run` until its files change.
    """
    stamp = []
    for name in (CONFIG_FILE, STATUS_FILE, METRICS_FILE):
        try:
            st = (Path(run_dir) / name).stat()
            stamp.append((st.st_mtime_ns, st.st_size))
        except OSError:
            stamp.append(None)
    return tuple(stamp)


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


def start_process(
    run_dir: str | os.PathLike, argv: Sequence[str], *, nice: int = 0
) -> subprocess.Popen:
    """Start ``argv`` (a trainer writing ``run_dir``) in a session of its own, detached from
    the caller, with stdout and stderr appended to ``run_dir/train.log``.

    ``run_dir`` is created here (it must not hold a run yet); the trainer's :class:`RunWriter`
    accepts a folder whose only file is that log. ``nice`` > 0 lowers the process's CPU
    priority (POSIX ``nice``), so that a dashboard on the same few cores stays responsive; the
    trainer still gets every idle cycle. Returns the Popen (poll it to reap the process); stop
    the run with :func:`stop_run`.
    """
    if not isinstance(nice, int) or not 0 <= nice <= 19:
        raise ValueError(f"nice must be an int in [0, 19], got {nice!r}")
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
            start_new_session=True,  # a page reload or Ctrl-C of the server leaves it running
        )


def stop_run(run_dir: str | os.PathLike) -> bool:
    """Ask a running run to stop: SIGTERM to the pid in its status.json.

    The trainer catches SIGTERM, writes a checkpoint and sets the state ``"stopped"``. Returns
    False (and sends nothing) unless the status says running and that process is alive.
    """
    status = _read_json_or_empty(Path(run_dir) / STATUS_FILE)
    pid = status.get("pid")
    if status.get("state") != "running" or not _pid_alive(pid):
        return False
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return False
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
