"""The page's state and its reading of run folders: session-state defaults, caches, the runs.

Everything here reads, except :func:`plot`, the one drawing helper the tabs share. The run list
(:mod:`sidebar`) and the panels (:mod:`panels`) get their runs from :func:`read_one` and
:func:`overview`, which read run folders through :mod:`cacr_lab.runs` only: a finished run is
read once per change of its files
(``st.cache_data``), a running run's metrics are tailed (only new lines are parsed), and heavy
objects -- the trainer processes, a figure, a UMAP -- are built once (``st.cache_resource``).
"""

import sys
import threading
from collections.abc import Callable
from pathlib import Path

import numpy as np
import plotly.graph_objects as go
import streamlit as st

from cacr_lab import figures, runs

LIVE_EVERY = "1s"  # refresh while a run is starting or running
POLL_EVERY = "4s"  # refresh of the run list while nothing runs (runs started elsewhere)


def init_state() -> None:
    """The page's UI state, in one place."""
    defaults = {
        "watch": None,  # name of the run whose panels are shown
        "compare": [],  # names of the runs compared
        "live": False,  # True while a run is starting or running: the panels refresh
        "seen": None,  # (name, active) of every run at the last full rerun
        "umap_shown": {},  # run name -> UMAP drawn last, kept up while the next is computed
        "tails": {},  # run folder -> (MetricsTail, records so far) of running runs
        "clear_name": False,  # empty the run-name field on the next run (after a Start)
    }
    for key, value in defaults.items():
        st.session_state.setdefault(key, value)


@st.cache_resource(show_spinner=False)
def launched() -> dict:
    """Trainer processes started by this server, by run folder (shared by all sessions)."""
    return {}


@st.cache_resource(show_spinner=False)
def umap_warm_up() -> threading.Thread:
    """Compile UMAP's numba code in the background once per server: the first UMAP is then fast."""

    def warm_up() -> None:
        seconds = figures.warm_up_umap()
        print(f"cacr_lab: UMAP warm-up took {seconds:.1f} s", file=sys.stderr, flush=True)

    thread = threading.Thread(target=warm_up, name="umap-warm-up", daemon=True)
    thread.start()
    return thread


@st.cache_data(max_entries=256, show_spinner=False)
def read_run(path: str, stamp: tuple) -> runs.Run:
    """A run folder as read from disk; ``stamp`` (file times and sizes) keys the cache."""
    return runs.load_run(path)


@st.cache_data(max_entries=64, show_spinner=False)
def read_snapshot(path: str, mtime_ns: int) -> runs.Snapshot:
    return runs.load_snapshot(path)


def newest_snapshot(run: runs.Run) -> runs.Snapshot | None:
    """The run's newest readable snapshot, read through the cache (a damaged one is skipped)."""
    return runs.latest_snapshot(run.path, load=lambda path: read_snapshot(*file_key(path)))


@st.cache_data(max_entries=128, show_spinner=False)
def umap_of(path: str, mtime_ns: int) -> np.ndarray:
    """2-D UMAP of a snapshot's embedding sample, computed once per snapshot file."""
    umap_warm_up().join()
    return figures.compute_umap(read_snapshot(path, mtime_ns).embeddings, seed=0)


@st.cache_resource(max_entries=256, show_spinner=False)
def cached_figure(kind: str, version: tuple, _make: Callable[[], go.Figure]) -> go.Figure:
    """``_make()``, built once per (kind, data version): a refresh without new data is free."""
    return _make()


PLOT = {"width": "stretch", "config": {"displaylogo": False}}  # every chart of the page


def plot(container, what: str, key: str, version: tuple, make: Callable[[], go.Figure]) -> None:
    """Draw the (cached) figure ``make()`` in ``container``; bad data gives a warning only."""
    try:
        fig = cached_figure(key, version, make)
    except Exception as err:  # noqa: BLE001 -- a damaged run must leave the rest of the page
        container.warning(f"{what}: cannot draw this run's data ({type(err).__name__}: {err})")
        return
    container.plotly_chart(fig, key=key, **PLOT)


def file_key(path: Path) -> tuple[str, int]:
    """(path, mtime_ns): the cache key of a file that is replaced, never edited in place."""
    try:
        return str(path), path.stat().st_mtime_ns
    except OSError:
        return str(path), 0


def read_live(path: Path, status: dict) -> runs.Run:
    """A running run: options read once, status re-read, metrics tailed (new lines only)."""
    header = read_run(str(path), file_key(path / runs.CONFIG_FILE))
    tail, records = st.session_state.tails.get(str(path), (None, []))
    if tail is None:
        tail = runs.MetricsTail(path)
    new = tail.read_new()
    records = ([] if tail.restarted else records) + new
    st.session_state.tails[str(path)] = (tail, records)
    warnings = [w for w in header.warnings if not w.startswith(runs.METRICS_FILE)]
    return runs.Run(path, path.name, header.config, status, records, warnings + tail.warnings)


def read_one(path: Path) -> runs.Run:
    status = runs.read_status(path)
    if status["state"] == "running":  # (or stale: then the tail simply stops growing)
        return read_live(path, status)
    st.session_state.tails.pop(str(path), None)
    return read_run(str(path), runs.run_stamp(path))


def all_runs(root: Path) -> list[runs.Run]:
    """Every run folder under ``root``, oldest first."""
    return sorted((read_one(p) for p in runs.run_dirs(root)), key=lambda r: (r.created, r.name))


def pending(root: Path, known: set[str]) -> dict[str, tuple[str, str]]:
    """Processes started from this page whose run folder has no config.json yet.

    Returns {name: (state, text)}: "starting" while the process lives, else "failed" with the
    end of its log (e.g. the CLI's one-line ``error: ...``).
    """
    out = {}
    for folder, proc in list(launched().items()):
        code = proc.poll()  # also reaps a finished process
        path = Path(folder)
        if path.parent != root.resolve() or path.name in known:
            continue
        if code is None:
            out[path.name] = ("starting", f"starting (process {proc.pid})…")
        else:
            log = runs.read_log(path, lines=3).replace("\n", " / ") or "(no output)"
            out[path.name] = ("failed", f"failed to start (exit code {code}): `{log}`")
    return out


def dismiss(path: Path) -> None:
    """Forget a start that failed: its process, and its folder if that holds no run."""
    launched().pop(str(path.resolve()), None)
    runs.discard_failed_start(path)
    if st.session_state.watch == path.name:
        st.session_state.watch = None


def overview(root: Path) -> tuple[list[runs.Run], dict, tuple]:
    """All runs, processes still starting, and (name, active) of each; sets the live flag.

    Active means starting or running: what decides whether a panel refreshes. (A run going from
    starting to running needs no full rerun; one that ends does.)
    """
    found = all_runs(root)
    waiting = pending(root, {r.name for r in found})
    states = [(r.name, runs.run_state(r)) for r in found]
    states += [(name, state) for name, (state, _) in waiting.items()]
    active = tuple(sorted((name, state in ("running", "starting")) for name, state in states))
    st.session_state.live = any(is_active for _, is_active in active)
    return found, waiting, active
