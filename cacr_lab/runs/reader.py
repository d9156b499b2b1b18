"""Reading a run directory: :func:`load_run`, :func:`list_runs`, :class:`MetricsTail`, snapshots.

The format is specified in :mod:`cacr_lab.runs.format`. Every reader here tolerates a run that is
being written (a half line, a snapshot not yet renamed into place) and a damaged one: corrupt
parts become warnings or are skipped, only a folder that is no run at all raises.
"""

import os
import zipfile
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np

from cacr_lab.runs.format import (
    _SNAPSHOT_RE,
    CONFIG_FILE,
    EVALUATION_FILE,
    LENS_ARRAYS,
    METRICS_FILE,
    SNAPSHOT_ARRAYS,
    SNAPSHOT_DIR,
    STATUS_FILE,
    _loads,
    _parse_lines,
    _read_json_or_empty,
    _snapshot_step,
)
from cacr_lab.runs.ownership import process_alive


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
    """The status state, with ``"stale"`` for a "running" run whose process is gone (or whose
    pid now belongs to another process: the status's ``pid_start`` token no longer matches)."""
    state = str(run.status.get("state", "unknown"))
    if state == "running" and not process_alive(run.status.get("pid"), run.status.get("pid_start")):
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
    # Snapshot version 2 (None in a version 1 file): who each query's positives and negatives
    # are, and their pixels; shapes and meaning in cacr_lab.runs.format.
    version: int = 1
    query_index: np.ndarray | None = None
    query_labels: np.ndarray | None = None
    pos_index: np.ndarray | None = None
    pos_labels: np.ndarray | None = None
    neg_index: np.ndarray | None = None
    neg_labels: np.ndarray | None = None
    infonce_weights: np.ndarray | None = None
    infonce_temperature: float | None = None
    images: np.ndarray | None = None
    image_index: np.ndarray | None = None
    query_views: np.ndarray | None = None

    @property
    def has_lens(self) -> bool:
        """Whether the snapshot says who its queries' negatives are (version 2 and a method
        that weights negatives): what the "query under the lens" panel needs."""
        return self.neg_weights is not None and self.neg_index is not None


def eval_split_of(record: Mapping[str, Any]) -> str:
    """The evaluation split an eval record (or a stored evaluation) names, in words; records
    written before the field existed (no ``eval_split``) say so.

    >>> eval_split_of({"eval_split": "test/ tree"}), eval_split_of({"knn_acc": 0.5})
    ('test/ tree', 'not recorded (run older than the field)')
    """
    split = record.get("eval_split")
    return split if isinstance(split, str) and split else "not recorded (run older than the field)"


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
        **{k: data.get(k) for k in SNAPSHOT_ARRAYS + LENS_ARRAYS if k != "infonce_temperature"},
        version=int(data.get("version", 1)),
        infonce_temperature=(
            float(data["infonce_temperature"]) if "infonce_temperature" in data else None
        ),
    )


def latest_snapshot(
    run_dir: str | os.PathLike, *, load: Callable[[Path], Snapshot] = load_snapshot
) -> Snapshot | None:
    """The newest readable snapshot of a run, or None if there is none.

    ``load`` reads one snapshot file, newest first, and raises ValueError for one it cannot read
    (the previous snapshot is tried next). The default is :func:`load_snapshot`; a caller that
    keeps snapshots in a cache (the dashboard) passes its cached reader instead.
    """
    for path in reversed(list_snapshots(run_dir)):
        try:
            return load(path)
        except ValueError:
            continue  # a foreign/damaged file: fall back to the previous snapshot
    return None


# --------------------------------------------------------------------------------------------
# Stored evaluations, and cheap reads for a live view
# --------------------------------------------------------------------------------------------


def read_evaluation(run_dir: str | os.PathLike) -> dict[str, Any]:
    """The stored evaluations of a run, keyed by protocol ({} when none)."""
    return _read_json_or_empty(Path(run_dir) / EVALUATION_FILE)


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
