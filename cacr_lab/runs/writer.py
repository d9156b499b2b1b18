"""Writing a run directory: :class:`RunWriter` (the trainer's) and :func:`write_evaluation`.

The format is specified in :mod:`cacr_lab.runs.format`; this module writes it and nothing else.
No torch import: tensors are converted by duck typing (``.detach()``), so the dashboard's
``import cacr_lab.runs`` stays light.
"""

import contextlib
import json
import os
import re
import shutil
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from cacr_lab._version import __version__
from cacr_lab.runs.format import (
    _STATUS_FIELDS,
    _TMP_PREFIX,
    CONFIG_FILE,
    EVALUATION_FILE,
    FORMAT_KEY,
    FORMAT_VERSION,
    LENS_ARRAYS,
    LOCK_FILE,
    LOG_FILE,
    METRICS_FILE,
    SNAPSHOT_ARRAYS,
    SNAPSHOT_DIR,
    SNAPSHOT_VERSION,
    STATES,
    STATUS_FILE,
    _command_output,
    _dumps,
    _jsonable,
    _now_iso,
    _parse_lines,
    _read_json_or_empty,
    _snapshot_step,
    atomic_write,
    checkpoint_dir,
    io_error,
    snapshot_path,
)
from cacr_lab.runs.ownership import (
    RunLock,
    check_replaceable,
    process_alive,
    process_token,
    run_format_of,
)
from cacr_lab.runs.reader import list_snapshots


class RunWriter:
    """The only code that writes a run directory (the format: :mod:`cacr_lab.runs.format`).

    Args:
        run_dir: the run folder; created if missing.
        config: every option of the run; must be JSON-able (numpy/torch scalars, tuples, Paths
            and dataclasses are converted).
        overwrite: delete an existing run at ``run_dir`` first. Refuses a folder that is not a
            run (:func:`~cacr_lab.runs.ownership.check_replaceable`: no signature, or files no
            run writes) and a run whose process is still alive.
        resume: continue an existing run: keep metrics and snapshots (call
            :meth:`truncate_after` with the checkpoint's step to drop what came later).
        class_counts: images per class in the pre-training set (else ``config["class_counts"]``).
        fsync: ``os.fsync`` after every metrics line and status write (safer, slower).

    The writer owns the folder from the start to :meth:`close`: it holds the folder's lock
    (:class:`~cacr_lab.runs.ownership.RunLock`), so a second writer is refused, and every check
    runs before it writes anything. Used as a context manager the status ends as ``finished`` on a
    clean exit (if still ``running``), ``stopped`` on KeyboardInterrupt and ``failed`` with the
    error otherwise. A write that fails (disk full, read-only folder) raises an OSError naming
    the file.
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
        self._lock = RunLock(self.path)
        old_config = self._claim_folder(overwrite=overwrite, resume=resume)
        try:
            self._start(config, class_counts, old_config, resume=resume)
        except BaseException:
            self.close()  # a writer that failed to start owns nothing
            raise

    def _start(
        self,
        config: Mapping[str, Any],
        class_counts: Sequence[int] | None,
        old_config: dict,
        *,
        resume: bool,
    ) -> None:
        """Write the config (with the signature), open the metrics, status "running"."""
        self.config = _full_config(config, class_counts, old_config, resume=resume)
        atomic_write(
            self.path / CONFIG_FILE,
            (_dumps(self.config, indent=2) + "\n").encode(),
            fsync=self.fsync,
        )
        self._time_offset = 0.0  # seconds already trained before this process (resume)
        if resume:
            self._rewrite_metrics(lambda rec: True)  # also drops a half-written last line
        self._t0 = time.monotonic()
        self._file = self._open_metrics()
        self.status: dict[str, Any] = {
            "state": "running",
            "pid": os.getpid(),
            "pid_start": process_token(os.getpid()),
            "step": 0,
            "epoch": 0,
            "total_steps": 0,
            "images_per_sec": None,
            "eta_sec": None,
            "error": None,
        }
        self.set_status("running")

    def _open_metrics(self) -> Any:
        path = self.path / METRICS_FILE
        try:
            return open(path, "a", encoding="utf-8")
        except OSError as err:
            raise io_error(err, path) from None

    def _claim_folder(self, *, overwrite: bool, resume: bool) -> dict:
        """Check the folder, lock it, check again under the lock, then clear it (overwrite) and
        create ``snapshots/`` and ``checkpoints/``; return the old config (resume).

        Every refusal comes before anything is written: the first check runs before the lock
        file is created, the second (another writer may have claimed the folder meanwhile) holds
        the lock. A folder created here for the lock is removed again if the claim fails.
        """
        self._check_claim(overwrite=overwrite, resume=resume)
        try:
            self.path.mkdir(parents=True)
            created = True
        except FileExistsError:
            created = False
        self._lock.acquire()  # refused: another writer owns the folder, which stays as it is
        try:
            existing = self._check_claim(overwrite=overwrite, resume=resume)
            old_config = _read_json_or_empty(self.path / CONFIG_FILE) if resume else {}
            if existing and overwrite:
                for entry in self.path.iterdir():
                    if entry.name == LOCK_FILE:
                        continue
                    if entry.is_dir() and not entry.is_symlink():
                        shutil.rmtree(entry)
                    else:
                        entry.unlink()
            (self.path / SNAPSHOT_DIR).mkdir(exist_ok=True)
            checkpoint_dir(self.path).mkdir(exist_ok=True)
            for tmp in self.path.rglob(f"{_TMP_PREFIX}*"):  # leftovers of a crash mid-write
                tmp.unlink(missing_ok=True)
        except BaseException:
            if created:  # leave no trace of a claim that failed (still holding the lock)
                shutil.rmtree(self.path, ignore_errors=True)
            self._lock.release()
            raise
        return old_config

    def _check_claim(self, *, overwrite: bool, resume: bool) -> bool:
        """Refuse what this writer must not take (nothing is written here); return whether the
        folder holds something that an overwrite replaces."""
        if self.path.exists() and not self.path.is_dir():
            raise FileExistsError(f"{self.path} exists and is not a folder")
        if not self.path.is_dir():
            if resume:
                raise ValueError(f"cannot resume: not a run directory: {self.path}")
            return False
        # A lone train.log is the output of the process that is creating this run (start_process).
        existing = any(p.name not in (LOG_FILE, LOCK_FILE) for p in self.path.iterdir())
        if resume:
            if run_format_of(self.path) is None:
                raise ValueError(f"cannot resume: not a run directory: {self.path}")
            self._refuse_if_alive("resume")
        elif existing and not overwrite:
            raise FileExistsError(
                f"run directory {self.path} already exists and is not empty; "
                "use --overwrite to replace it or --resume to continue it"
            )
        elif existing:
            check_replaceable(self.path)
            self._refuse_if_alive("overwrite")
        return existing

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
        try:
            self._file.write(_dumps(rec) + "\n")
            self._file.flush()  # a live reader sees every step as soon as it is logged
            if self.fsync:
                os.fsync(self._file.fileno())
        except OSError as err:
            raise io_error(err, self.path / METRICS_FILE) from None

    def truncate_after(self, step: int) -> int:
        """Drop records and snapshots with step > ``step`` (after resuming from a checkpoint).

        Returns the number of metrics records dropped. ``time`` of later records continues from
        the last kept record.
        """
        if not isinstance(step, int) or step < 0:
            raise ValueError(f"step must be an int >= 0, got {step!r}")
        self._close_metrics()
        dropped = self._rewrite_metrics(lambda rec: not _int_gt(rec.get("step"), step))
        for snap in list_snapshots(self.path):
            if _snapshot_step(snap) > step:
                snap.unlink()
        self._t0 = time.monotonic()
        self._file = self._open_metrics()
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
                (Q, N), and the "who is who" arrays of :data:`LENS_ARRAYS` (shapes and dtypes:
                :mod:`cacr_lab.runs.format`); numpy arrays or torch tensors.
        """
        if not isinstance(step, (int, np.integer)) or step < 0:
            raise ValueError(f"step must be an int >= 0, got {step!r}")
        allowed = SNAPSHOT_ARRAYS + LENS_ARRAYS
        unknown = sorted(set(arrays) - set(allowed))
        if unknown:
            raise ValueError(f"unknown snapshot arrays {unknown}; allowed: {allowed}")
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
            "version": np.int64(SNAPSHOT_VERSION),
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
        data.update(_lens_arrays(arrays, data.get("neg_weights")))

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
        if "pid" in fields and "pid_start" not in fields:  # the identity of that process
            fields["pid_start"] = process_token(fields["pid"])
        self.status.update(_jsonable(fields), state=state, updated=_now_iso())
        atomic_write(
            self.path / STATUS_FILE, (_dumps(self.status) + "\n").encode(), fsync=self.fsync
        )
        return dict(self.status)

    def end(self, state: str, **fields: Any) -> bool:
        """The last status of a run, written even when the disk is full: atomically if possible,
        else in place (the old file's blocks are reused). Never raises an OSError; returns
        False when the status could not be written at all (a read-only folder)."""
        try:
            self.set_status(state, **fields)
            return True
        except OSError:
            pass
        try:
            with open(self.path / STATUS_FILE, "r+b") as f:
                data = (_dumps(self.status) + "\n").encode()
                f.write(data)
                f.truncate(len(data))
            return True
        except OSError:
            return False

    # -- lifecycle ---------------------------------------------------------------------------

    def _close_metrics(self) -> None:
        if self._file is not None:
            file, self._file = self._file, None
            with contextlib.suppress(OSError):  # a full disk fails the final flush again
                file.close()

    def close(self) -> None:
        """Close the metrics file and release the folder's lock (idempotent). The status is left
        as it is."""
        self._close_metrics()
        self._lock.release()

    def __enter__(self) -> "RunWriter":
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> bool:
        try:
            if exc_type is None:
                if self.status["state"] == "running":
                    self.set_status("finished", eta_sec=0.0)
            elif issubclass(exc_type, KeyboardInterrupt):
                self.end("stopped", error="interrupted")
            else:
                self.end("failed", error=f"{exc_type.__name__}: {exc}")
        finally:
            self.close()
        return False  # never swallow the exception

    def _refuse_if_alive(self, action: str) -> None:
        status = _read_json_or_empty(self.path / STATUS_FILE)
        pid = status.get("pid")
        if (
            status.get("state") == "running"
            and pid != os.getpid()
            and process_alive(pid, status.get("pid_start"))
        ):
            raise FileExistsError(
                f"cannot {action} {self.path}: it is in use by process {pid}, still running"
            )


def _full_config(
    config: Mapping[str, Any],
    class_counts: Sequence[int] | None,
    old_config: Mapping[str, Any],
    *,
    resume: bool,
) -> dict[str, Any]:
    """``config`` as JSON plus the keys the writer adds (``code_version``, ``class_counts``,
    ``created``, ``resumed``); on resume ``created`` and missing class counts come from
    ``old_config``."""
    counts = class_counts if class_counts is not None else config.get("class_counts")
    if counts is None:
        counts = old_config.get("class_counts")  # resume without repeating them
    if counts is not None:
        counts = [int(c) for c in _to_numpy(counts, np.int64).ravel()]
        if any(c < 0 for c in counts):
            raise ValueError(f"class_counts must be >= 0, got {counts}")
    full = _jsonable(dict(config))
    full["code_version"] = {
        "cacr_lab": __version__,
        "git_commit": _git_commit(),
    }
    full["class_counts"] = counts
    full["created"] = old_config.get("created", _now_iso())
    full[FORMAT_KEY] = FORMAT_VERSION
    if resume:
        full["resumed"] = [*old_config.get("resumed", []), _now_iso()]
    return full


def _int_gt(value: Any, bound: int) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value > bound


# dtype and number of dimensions of each "who is who" array (the spec: runs/format.py).
_LENS_LAYOUT = {
    "query_index": (np.int32, 1),
    "query_labels": (np.int32, 1),
    "pos_index": (np.int32, 2),
    "pos_labels": (np.int32, 2),
    "neg_index": (np.int32, 2),
    "neg_labels": (np.int32, 2),
    "infonce_weights": (np.float32, 2),
    "infonce_temperature": (np.float32, 0),
    "images": (np.uint8, 4),
    "image_index": (np.int32, 1),
    "query_views": (np.uint8, 5),
}


def _lens_arrays(arrays: Mapping[str, Any], neg_weights: np.ndarray | None) -> dict:
    """The "who is who" arrays of ``arrays`` as stored, checked: dtypes and dimensions as
    :data:`_LENS_LAYOUT` says; the (Q, N) ones shaped as ``neg_weights``; one row per query."""
    out = {}
    for name, (dtype, ndim) in _LENS_LAYOUT.items():
        if arrays.get(name) is None:
            continue
        a = _to_numpy(arrays[name], dtype)
        if a.ndim != ndim:
            raise ValueError(f"{name} must have {ndim} dimensions, got shape {a.shape}")
        out[name] = a
    if neg_weights is not None:
        for name in ("neg_index", "neg_labels", "infonce_weights"):
            if name in out and out[name].shape != neg_weights.shape:
                raise ValueError(f"{name} {out[name].shape} and neg_weights differ in shape")
    per_query = ("query_index", "query_labels", "pos_index", "pos_labels", "neg_index")
    rows = {name: out[name].shape[0] for name in (*per_query, "neg_labels") if name in out}
    if rows and neg_weights is not None:
        rows["neg_weights"] = neg_weights.shape[0]
    if len(set(rows.values())) > 1:
        raise ValueError(f"the query arrays disagree on the number of queries Q: {rows}")
    if "query_views" in out and len(out["query_views"]) > min(rows.values(), default=0):
        raise ValueError(f"query_views holds {len(out['query_views'])} queries, more than Q")
    if ("images" in out) != ("image_index" in out) or (
        "images" in out and len(out["images"]) != len(out["image_index"])
    ):
        raise ValueError("images (B, C, S, S) and image_index (B,) come together, one per image")
    return out


def _to_numpy(x: Any, dtype: Any) -> np.ndarray:
    """numpy array of ``dtype`` from a numpy array, list or torch tensor (any device)."""
    if hasattr(x, "detach"):  # torch: go through float32 so bfloat16 / half also convert
        x = x.detach().cpu()
        x = x.float().numpy() if x.is_floating_point() else x.numpy()
    return np.asarray(x, dtype=dtype)


def _git_commit() -> str | None:
    """HEAD of the checkout cacr_lab is imported from, or None (no git, not a repo, no commit)."""
    out = _command_output(["git", "rev-parse", "HEAD"], cwd=Path(__file__).resolve().parent)
    commit = (out or "").strip()
    return commit if re.fullmatch(r"[0-9a-f]{40,64}", commit) else None


# --------------------------------------------------------------------------------------------
# Stored evaluations (``cacr-lab eval``)
# --------------------------------------------------------------------------------------------


def write_evaluation(run_dir: str | os.PathLike, result: Mapping[str, Any]) -> Path:
    """Store the result of ``cacr-lab eval`` as ``evaluation.json`` in the run (atomic).

    Results are keyed by protocol, so a fast and a paper evaluation live side by side.
    """
    path = Path(run_dir) / EVALUATION_FILE
    stored = _read_json_or_empty(path)
    stored[str(result.get("protocol", "fast"))] = _jsonable(dict(result))
    atomic_write(path, json.dumps(stored, indent=2, allow_nan=False).encode())
    return path
