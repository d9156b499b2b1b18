"""The run directory: one writer (:class:`RunWriter`), one reader (:func:`load_run`).

The trainer writes a run folder, everything else reads it; the format (layout, file names, every
field) is specified in the docstring of :mod:`cacr_lab.runs.format`. Map of the package, bottom to
top (each module imports only those above it in this list):

- ``format``: the spec, file names and constants, paths (:func:`run_path`,
  :func:`checkpoint_path`, ...), the JSON helpers and :func:`atomic_write`, the one atomic write;
- ``ownership``: whether a folder is a run (:func:`run_format_of`, :func:`check_replaceable`), its
  lock (:class:`RunLock`), the identity of its process (:func:`process_token`,
  :func:`process_alive`);
- ``reader``: :class:`Run`, :func:`load_run`, :func:`list_runs`, :class:`MetricsTail`,
  :class:`Snapshot` and :func:`latest_snapshot`, stored evaluations, cheap status reads;
- ``writer``: :class:`RunWriter` (the trainer's) and :func:`write_evaluation`;
- ``process``: the dashboard's side: :func:`start_process`, :func:`stop_run`,
  :func:`read_log`, :func:`describe_status`, :func:`discard_failed_start`.

Nothing here imports torch (tensors are recognised by duck typing), so the dashboard can read runs
without loading it. Import the names from ``cacr_lab.runs``; the submodules are the layout.
"""

from cacr_lab.runs.format import (
    CHECKPOINT_DIR,
    CONFIG_FILE,
    EVALUATION_FILE,
    FORMAT_VERSION,
    LENS_ARRAYS,
    LOCK_FILE,
    LOG_FILE,
    MAX_RUN_NAME,
    METRICS_FILE,
    SNAPSHOT_ARRAYS,
    SNAPSHOT_DIR,
    SNAPSHOT_VERSION,
    STATES,
    STATUS_FILE,
    atomic_write,
    checkpoint_dir,
    checkpoint_path,
    io_error,
    last_checkpoint,
    new_run_name,
    run_path,
    sanitize_run_name,
    snapshot_path,
)
from cacr_lab.runs.ownership import (
    RunLock,
    check_replaceable,
    process_alive,
    process_token,
    run_format_of,
)
from cacr_lab.runs.process import (
    describe_status,
    discard_failed_start,
    read_log,
    spare_cores,
    start_process,
    stop_run,
)
from cacr_lab.runs.reader import (
    MetricsTail,
    Run,
    Snapshot,
    eval_split_of,
    is_running,
    last_value,
    latest_snapshot,
    list_runs,
    list_snapshots,
    load_run,
    load_snapshot,
    read_evaluation,
    read_status,
    run_dirs,
    run_stamp,
    run_state,
    series,
)
from cacr_lab.runs.writer import RunWriter, write_evaluation

__all__ = [
    "CHECKPOINT_DIR",
    "CONFIG_FILE",
    "EVALUATION_FILE",
    "FORMAT_VERSION",
    "LENS_ARRAYS",
    "LOCK_FILE",
    "LOG_FILE",
    "MAX_RUN_NAME",
    "METRICS_FILE",
    "SNAPSHOT_ARRAYS",
    "SNAPSHOT_DIR",
    "SNAPSHOT_VERSION",
    "STATES",
    "STATUS_FILE",
    "MetricsTail",
    "Run",
    "RunLock",
    "RunWriter",
    "Snapshot",
    "atomic_write",
    "checkpoint_dir",
    "check_replaceable",
    "checkpoint_path",
    "describe_status",
    "discard_failed_start",
    "eval_split_of",
    "io_error",
    "is_running",
    "last_checkpoint",
    "last_value",
    "latest_snapshot",
    "list_runs",
    "list_snapshots",
    "load_run",
    "load_snapshot",
    "new_run_name",
    "process_alive",
    "process_token",
    "read_evaluation",
    "read_log",
    "read_status",
    "run_dirs",
    "run_format_of",
    "run_path",
    "run_stamp",
    "run_state",
    "sanitize_run_name",
    "series",
    "snapshot_path",
    "spare_cores",
    "start_process",
    "stop_run",
    "write_evaluation",
]
