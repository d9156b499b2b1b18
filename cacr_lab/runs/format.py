"""The run directory format: one writer (:class:`RunWriter`), one reader (:func:`load_run`).

This docstring is the specification of the format; this module holds what the rest of
``cacr_lab.runs`` builds on: the file names, the paths, the JSON helpers and :func:`atomic_write`.
No module outside ``cacr_lab.runs`` knows file names inside a run; the trainer writes through
:class:`RunWriter`, the dashboard and the notebooks read through :func:`load_run`,
:func:`list_runs`, :class:`MetricsTail` and :func:`load_snapshot`.

Layout of a run folder ``<root>/<name>/``::

    config.json          every option of the run, and the run's signature (rewritten on resume)
    metrics.jsonl        one JSON object per line, appended and flushed per logging step
    status.json          live state of the process, replaced atomically
    snapshots/           snap_{step:08d}.npz, replaced atomically
    checkpoints/         last.pt and epoch_{N:04d}.pt, written by the trainer
    train.log            stdout/stderr of a run started by :func:`start_process` (the dashboard)
    evaluation.json      results of ``cacr-lab eval``, keyed by protocol (only once evaluated)
    .lock                empty; its ``flock`` is held by the one process writing the run

Nothing else belongs in a run folder: ``--overwrite`` deletes a folder only when it carries the
signature and holds only these names (and leftover ``.tmp-*`` files), and names what else it found.

``config.json``
    The trainer's options as a (flat-ish) JSON object -- ``method`` (the loss registry key,
    e.g. ``"cacr"``), loss options, ``dataset``, ``encoder``, ``epochs``, ``batch_size``,
    ``seed``, ... -- plus keys added by the writer:

    - ``code_version``: ``{"cacr_lab": __version__, "git_commit": str | null}``;
    - ``class_counts``: list[int], images per class in the pre-training set (null if unknown);
    - ``created``: ISO-8601 local time with UTC offset, e.g. ``"2026-11-27T22:35:01+01:00"``;
    - ``resumed`` (only after a resume): list of ISO times at which the run was resumed;
    - ``run_format``: the format version (2), the folder's signature: a ``config.json`` without
      it is no run of this lab, whatever its name (version 1 runs are recognised by
      ``code_version.cacr_lab`` and ``created``, which every version writes).

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
      log set size), ``*_max_weight``, ``*_wd_corr`` (correlation of weight and d²); and the
      false-negative share of the held-out probe batch (B images; docs/method.md §8.1), each the
      mean over its queries of the weight mass on negatives of the query's own class:
      ``fn_share`` (the run's own negative weights: CACR's pi_neg, the InfoNCE family's implicit
      weights; absent for a method that weights no negatives), ``fn_share_infonce`` (InfoNCE's
      implicit weights softmax_j(-d²_j / (2T)) = softmax_j(s_j / T) over the same negatives; T
      the run's ``temperature`` for infonce / hard-negative / debiased, else InfoNCE's default
      0.5) and ``fn_share_uniform`` (uniform weights: the mean over queries of
      (n_c - 1) / (B - 1), n_c the images of the query's class in the batch).
      Optional (absent in records written before it existed; read it with
      :func:`eval_split_of`): ``eval_split`` (str), the evaluation split the accuracies were
      measured on, in words (``"official test split"``, ``"test/ tree"``, ``"held-out 10 % of
      the folder (stratified, seed 0)"``).

    A reader skips an unterminated last line (the writer may be in the middle of it) and skips a
    corrupt complete line with a warning.

``status.json``
    ``{"state": "running" | "finished" | "failed" | "stopped", "pid": int, "pid_start": str | null,
    "step": int, "epoch": int, "total_steps": int, "images_per_sec": float | null,
    "eta_sec": float | null, "error": str | null, "updated": ISO time}``. ``pid_start`` tells the
    process apart from a later one given the same pid (on Linux the boot id and the process's
    start time in clock ticks; :func:`cacr_lab.runs.ownership.process_token`): a run is alive, and
    may be sent a signal, only while a process with both its pid and its token exists. Readers
    additionally report ``"stale"`` for a run whose status says running but whose process is gone,
    and ``"unknown"`` when the file is missing or unreadable.

``snapshots/snap_{step:08d}.npz``
    Written to a temporary file ``.tmp-*`` in the same folder, then ``os.replace``-d into place, so
    a reader never sees half a snapshot. Arrays:

    - ``embeddings`` (n, D) float32: L2-normalised embeddings of a fixed sample of held-out images;
    - ``labels`` (n,) int64: their classes;
    - optional, for a sample of Q queries: ``pos_weights`` and ``pos_d2`` (Q, K), ``neg_weights``
      and ``neg_d2`` (Q, N) float32 -- the conditional weights pi_pos / pi_neg (each row sums to
      1) and the squared distances they were computed from;
    - scalars ``step`` and ``epoch`` (int64), and ``version`` (int64, the snapshot version:
      :data:`SNAPSHOT_VERSION`; a file without it is version 1);
    - version 2, optional ("who is who", for methods that weight negatives): for the same Q
      queries, indices into the held-out split the sample comes from (``DataSplits.test``, the
      split evaluations test on) and their labels -- ``query_index``, ``query_labels`` (Q,);
      ``pos_index``, ``pos_labels`` (Q, K) (a query's positives are the other views of its own
      image); ``neg_index``, ``neg_labels`` (Q, N), column for column as ``neg_weights`` (the
      InfoNCE family's 2B - 2 negatives hold every other image twice, one per view), all int32;
      ``infonce_weights`` (Q, N) float32, InfoNCE's implicit weights over the same negatives
      (as ``fn_share_infonce``) and the scalar ``infonce_temperature``; the pixels, uint8 at the
      size the run trains at (digits 16 px, CIFAR 32 px): ``images`` (B, C, S, S), every image
      of the probe batch un-augmented (the evaluation's centre view), with ``image_index`` (B,)
      int32, their held-out indices (each index above is one of them); ``query_views``
      (L, V, C, S, S), the first L = min(Q, B, 16) queries' V views as the loss saw them (view
      0 the query, views 1..K its positives in ``pos_weights``' order). Query q is image
      q mod B of the probe batch; rows q < B are view 0's queries (CACR, InfoNCE: against the
      first view pair; moco: anchor 0, first query view). The size of a snapshot with the
      default Q = 64, B = 128, K = 4, n = 512, D = 128: digits 492 KB (336 KB before version
      2), CIFAR 1.08 MB (336 KB before).

``evaluation.json``
    Written by :func:`write_evaluation`, replaced atomically: a JSON object keyed by protocol
    (``"fast"``, ``"paper"``), each value the result of that evaluation (``knn_acc``,
    ``probe_acc``, ``per_class_acc``, ``eval_split`` (optional, as in an eval record), ...), so
    evaluations under both protocols live side by side.

``checkpoints/``
    Owned by the trainer; this module only names the paths (:func:`checkpoint_dir`,
    :func:`checkpoint_path`, :func:`last_checkpoint`). ``last.pt`` is the newest state: after
    every epoch, and at the step where a run was stopped; ``epoch_NNNN.pt`` only after complete
    epochs. Both are written with :func:`atomic_write`, never from non-finite weights.

``.lock``
    Taken with ``flock`` (exclusive, non-blocking) by the writer before it changes anything and
    held until it closes; the kernel releases it however the process ends (kill -9 included), so a
    second writer of the same folder -- started at the same instant or later -- is refused while
    the first lives. The file itself is never deleted (that would let two owners lock two files).

Snapshot versions (the ``version`` array, independent of the folder's ``run_format``): 2 added
the "who is who" arrays above; a version 1 snapshot (no ``version``) loads with them as None.

Versions: 2 added ``run_format``, ``pid_start`` and ``.lock`` (and ``last.pt`` at a stop's step).
Version 1 folders (cacr_lab 0.1.0 before it) lack them; readers load them as before, a writer
resumes or overwrites them (recognised by ``code_version``), and their status, without a
``pid_start``, is trusted by its pid alone for display but never signalled.

Example (the whole round trip):

>>> import tempfile, numpy as np
>>> from cacr_lab.runs import RunWriter, latest_snapshot, load_run
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

import contextlib
import dataclasses
import json
import math
import os
import re
import subprocess
import tempfile
from collections.abc import Callable, Mapping
from datetime import datetime
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

CONFIG_FILE = "config.json"
METRICS_FILE = "metrics.jsonl"
STATUS_FILE = "status.json"
SNAPSHOT_DIR = "snapshots"
CHECKPOINT_DIR = "checkpoints"
LOG_FILE = "train.log"
EVALUATION_FILE = "evaluation.json"

LOCK_FILE = ".lock"
FORMAT_KEY = "run_format"  # config.json's signature: the format version
FORMAT_VERSION = 2
# Everything a run folder may hold (besides .tmp-* leftovers): what --overwrite may delete.
RUN_ENTRIES = frozenset(
    {
        CONFIG_FILE,
        METRICS_FILE,
        STATUS_FILE,
        SNAPSHOT_DIR,
        CHECKPOINT_DIR,
        LOG_FILE,
        EVALUATION_FILE,
        LOCK_FILE,
    }
)

STATES = ("running", "finished", "failed", "stopped")
# Optional snapshot arrays; each pair shares one (Q, set size) shape.
SNAPSHOT_ARRAYS = ("pos_weights", "pos_d2", "neg_weights", "neg_d2")
# Snapshot version 2: who each query's positives and negatives are, and their pixels.
SNAPSHOT_VERSION = 2
LENS_ARRAYS = (
    "query_index",
    "query_labels",
    "pos_index",
    "pos_labels",
    "neg_index",
    "neg_labels",
    "infonce_weights",
    "infonce_temperature",
    "images",
    "image_index",
    "query_views",
)
_STATUS_FIELDS = (
    "pid",
    "pid_start",
    "step",
    "epoch",
    "total_steps",
    "images_per_sec",
    "eta_sec",
    "error",
)
_SNAPSHOT_RE = re.compile(r"^snap_(\d{8,})\.npz$")
_RUN_NAME_RE = re.compile(r"^[A-Za-z0-9._-]+$")
_TMP_PREFIX = ".tmp-"  # leading dot: never matches snap_*.npz, hidden in file browsers
MAX_RUN_NAME = 64


# --------------------------------------------------------------------------------------------
# Small helpers shared by the writer, the reader and the process side
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


def atomic_write(
    path: str | os.PathLike, data: bytes | Callable[[BinaryIO], None], *, fsync: bool = False
) -> None:
    """Write a file so that readers see the old or the new one, never a part.

    ``data`` is the bytes, or a function that writes into an open binary file (``np.savez``,
    ``torch.save``). It goes to a hidden temp file next to ``path``, which is then renamed over it;
    on any error the temp file is removed and the previous file stays.
    An OSError (disk full, read-only or forbidden folder) is raised again naming ``path``, the
    file the caller asked for, not the temp file.
    """
    path = Path(path)
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=_TMP_PREFIX, suffix=path.suffix)
    except OSError as err:
        raise io_error(err, path) from None
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
    except BaseException as err:
        with contextlib.suppress(OSError):
            Path(tmp).unlink(missing_ok=True)
        if isinstance(err, OSError):
            raise io_error(err, path) from None
        raise


def io_error(err: OSError, path: str | os.PathLike) -> OSError:
    """``err`` (same errno, so the same subclass) naming ``path``: ``str()`` gives
    ``[Errno 28] No space left on device: 'runs/x/checkpoints/last.pt'``."""
    if err.errno is None:
        return err
    return OSError(err.errno, err.strerror or os.strerror(err.errno), os.fspath(path))


# The pid check lives here, not in process.py: the reader (stale runs) and the writer (refusing to
# replace a live run) need it too, and process.py builds on the reader.
def _command_output(args: list[str], cwd: Path | None = None) -> str | None:
    """A short command's stdout (5 s at most), or None when it cannot run or fails."""
    try:
        out = subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=5, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout if out.returncode == 0 else None


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


def _snapshot_step(path: Path) -> int:
    match = _SNAPSHOT_RE.match(path.name)
    return int(match.group(1)) if match else -1
