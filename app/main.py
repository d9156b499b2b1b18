"""cacr_lab's live lab: start contrastive runs, watch them learn, compare them.

    make run                       # = streamlit run app/main.py, bound to 127.0.0.1

The page never trains and never imports the training loop. Start launches
``python -m cacr_lab train ...`` as a process of its own that writes a run folder under the runs
root (``runs/`` in the current directory, or ``$CACR_LAB_RUNS``); the page only reads run folders,
through :mod:`cacr_lab.runs`, and draws them with :mod:`cacr_lab.figures`, the figures the
notebooks show. So a run outlives a page reload, shows in every browser tab, and runs started from
the CLI or a notebook appear as well.

Refreshing: the run list is a fragment that polls the runs folder; the panels of the watched run
and the comparison are fragments that re-run every second only while a run they show is running.
When a run appears, starts or ends, the run list asks for one full rerun, which switches the
panels' refresh on or off. A running run's metrics are tailed (only new lines are parsed); a
figure is rebuilt only when its data changed, a UMAP once per snapshot.
"""

import os
import sys
import threading
from collections.abc import Callable
from pathlib import Path

import numpy as np
import plotly.graph_objects as go
import streamlit as st

from cacr_lab import figures, runs
from cacr_lab.losses import COSTS, LOSSES, OPTION_HELP, WEIGHT_GRADS, WEIGHTINGS
from cacr_lab.train import TrainConfig, paper_loss_options

LIVE_EVERY = "1s"  # refresh while a run is starting or running
POLL_EVERY = "4s"  # refresh of the run list while nothing runs (runs started elsewhere)
# The trainer runs a little below the page's priority: on a 2-core laptop the page stays
# responsive, and training still gets every idle cycle.
TRAINER_NICE = 5
CHOICES = {"weighting": WEIGHTINGS, "weight_grad": WEIGHT_GRADS, "cost": COSTS}
DATASET_LABELS = {
    "digits": "digits (embedded, 8×8 → 16×16)",
    "cifar10": "CIFAR-10",
    "cifar100": "CIFAR-100",
    "stl10": "STL-10",
    "folder": "image folder…",
}
# torchvision's folder of each dataset under the data root: a dataset is offered once present.
TORCHVISION_FOLDERS = {
    "cifar10": "cifar-10-batches-py",
    "cifar100": "cifar-100-python",
    "stl10": "stl10_binary",
}
DATA_ROOT = "data"  # TrainConfig's default data_root
STATE_ICONS = {
    "starting": ":green[:material/hourglass_top:]",
    "running": ":green[:material/play_circle:]",
    "finished": ":blue[:material/check_circle:]",
    "stopped": ":gray[:material/stop_circle:]",
    "failed": ":red[:material/error:]",
    "stale": ":orange[:material/warning:]",
    "unknown": ":orange[:material/help:]",
}
PLOT = {"width": "stretch", "config": {"displaylogo": False}}


# --------------------------------------------------------------------------------------------
# State, caches and reading runs
# --------------------------------------------------------------------------------------------


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


def runs_root() -> Path:
    return Path(os.environ.get("CACR_LAB_RUNS", "runs"))


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


@st.cache_data(max_entries=128, show_spinner=False)
def umap_of(path: str, mtime_ns: int) -> np.ndarray:
    """2-D UMAP of a snapshot's embedding sample, computed once per snapshot file."""
    umap_warm_up().join()
    return figures.compute_umap(read_snapshot(path, mtime_ns).embeddings, seed=0)


@st.cache_resource(max_entries=256, show_spinner=False)
def cached_figure(kind: str, version: tuple, _make: Callable[[], go.Figure]) -> go.Figure:
    """``_make()``, built once per (kind, data version): a refresh without new data is free."""
    return _make()


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


# --------------------------------------------------------------------------------------------
# Sidebar: a new run
# --------------------------------------------------------------------------------------------


def available_datasets() -> list[str]:
    """digits always; torchvision sets whose files are under the data root; an image folder."""
    found = [n for n, f in TORCHVISION_FOLDERS.items() if (Path(DATA_ROOT) / f).is_dir()]
    return ["digits", *found, "folder"]


def dataset_input() -> str:
    choice = st.selectbox(
        "Dataset",
        available_datasets(),
        format_func=DATASET_LABELS.get,
        key="dataset",
        help=f"CIFAR-10/100 and STL-10 appear once their torchvision files are under "
        f"{DATA_ROOT}/ (see the README).",
    )
    if choice != "folder":
        return choice
    path = st.text_input("Image folder (PATH/<class>/<image>)", key="folder_path")
    return f"folder:{path}"


def option_input(method: str, name: str, default: object) -> object:
    """One loss option's widget, with the paper's default; returns the value (unvalidated)."""
    key, help_ = f"opt_{method}_{name}_{default}", OPTION_HELP.get(name)
    if name in CHOICES:
        return st.selectbox(
            name, CHOICES[name], index=CHOICES[name].index(default), key=key, help=help_
        )
    if isinstance(default, bool):
        return st.checkbox(name, value=default, key=key, help=help_)
    if default is None or isinstance(default, str):  # an optional number: empty means off
        text = st.text_input(
            name, value="" if default is None else default, key=key, help=f"{help_} — empty: off"
        )
        return text.strip() or None
    return st.number_input(name, value=float(default), step=0.1, format="%.4g", key=key, help=help_)


def device_choices() -> list[str]:
    import torch

    n = torch.cuda.device_count() if torch.cuda.is_available() else 0
    return ["auto", "cpu", *(["cuda"] if n else []), *(f"cuda:{i}" for i in range(n * (n > 1)))]


def new_run_form() -> tuple[dict, str]:
    """Draw the new-run widgets; return (TrainConfig keyword arguments, run name as typed)."""
    st.header("New run")
    dataset = dataset_input()
    method = st.selectbox(
        "Method", list(LOSSES), key="method", help="cacr, or a baseline of the paper's tables"
    )
    defaults = paper_loss_options(method, dataset)
    with st.expander(f"{method} options (paper defaults)", expanded=True):
        loss_options = {n: option_input(method, n, d) for n, d in defaults.items()}
    positives = st.number_input(
        "Positives per image K (V = K + 1 views)", value=4, step=1, key="positives"
    )
    batch_size = st.number_input("Batch size", value=128, step=16, key="batch_size")
    epochs = st.number_input("Epochs", value=20, step=1, key="epochs")
    imbalance = st.selectbox(
        "Imbalance profile",
        ["none", "linear", "exponential"],
        key="imbalance",
        help="pre-training set only (REFERENCE.md §7)",
    )
    seed = st.number_input("Seed", value=0, step=1, key="seed")
    device = st.selectbox("Device", device_choices(), key="device")
    with st.expander("Logging"):
        log_every = st.number_input(
            "Log every N steps",
            value=1 if dataset == "digits" else 10,
            step=1,
            key=f"log_every_{dataset}",
        )
        eval_every = st.number_input(
            "Evaluate + snapshot every N epochs", value=1, step=1, key="eval_every"
        )
    name = st.text_input("Run name (empty: method-dataset-time)", key="run_name")
    kwargs = dict(
        dataset=dataset,
        method=method,
        loss_options=loss_options,
        positives=int(positives),
        batch_size=int(batch_size),
        epochs=int(epochs),
        imbalance=imbalance,
        seed=int(seed),
        device=device,
        log_every=int(log_every),
        eval_every=int(eval_every),
    )
    return kwargs, name


def number(text: object, name: str) -> object:
    """A text option as a float (None and non-text pass through), or ValueError quoting it."""
    if not isinstance(text, str):
        return text
    try:
        return float(text)
    except ValueError:
        raise ValueError(f"{name} must be a number or empty, got {text!r}") from None


def validated(kwargs: dict, name: str, root: Path) -> tuple[TrainConfig, Path]:
    """The library's own checks (TrainConfig, run-name rules); ValueError with its message."""
    options = {k: v if k in CHOICES else number(v, k) for k, v in kwargs["loss_options"].items()}
    config = TrainConfig(**(kwargs | {"loss_options": options}))
    slug = "folder" if config.dataset.startswith("folder:") else config.dataset
    name = name.strip() or runs.new_run_name(config.method, slug)
    path = runs.run_path(root, name)  # sanitised: never a path outside the runs folder
    if path.exists():
        raise ValueError(f"a run named {path.name!r} already exists; choose another name")
    return config, path


def train_command(config: TrainConfig, run_dir: Path) -> list[str]:
    """The CLI call that trains ``config`` into ``run_dir`` (flags of ``cacr-lab train``)."""
    argv = [sys.executable, "-m", "cacr_lab", "train", "--run-dir", str(run_dir), "--no-progress"]
    flags = {
        "dataset": config.dataset,
        "method": config.method,
        "positives": config.positives,
        "batch-size": config.batch_size,
        "epochs": config.epochs,
        "imbalance": config.imbalance or "none",
        "seed": config.seed,
        "device": config.device,
        "log-every": config.log_every,
        "eval-every": config.eval_every,
        "data-root": config.data_root,
    }
    flags |= {k.replace("_", "-"): v for k, v in config.loss_options.items() if v is not None}
    for flag, value in flags.items():
        argv += [f"--{flag}", str(value).lower() if isinstance(value, bool) else str(value)]
    return argv


def start(config: TrainConfig, path: Path) -> None:
    """Launch the trainer, watch its run, and redraw the page with the run-name field cleared.

    Handled in the script run the click causes (not in an on_click callback), so the options
    used are exactly those the browser sent with the click.
    """
    proc = runs.start_process(path, train_command(config, path), nice=TRAINER_NICE)
    launched()[str(path)] = proc
    st.session_state.update(watch=path.name, live=True, clear_name=True)
    st.rerun()


def sidebar(root: Path) -> None:
    """The new-run form, its validation message, and Start."""
    if st.session_state.clear_name:  # before the field exists in this run
        st.session_state.update(run_name="", clear_name=False)
    with st.sidebar:
        kwargs, name = new_run_form()
        try:
            config, path = validated(kwargs, name, root)
        except ValueError as err:
            st.error(f"Cannot start: {err}")
            config = path = None
        disabled = config is None
        if st.button("Start", type="primary", disabled=disabled, key="start", width="stretch"):
            start(config, path)
        st.caption(f"Runs folder: `{root.resolve()}`")


# --------------------------------------------------------------------------------------------
# Run list: a status line per run, Stop
# --------------------------------------------------------------------------------------------


def status_row(icon_state: str, text: str, stop_key: str | None) -> bool:
    """One status line with an optional Stop button; True when Stop was pressed."""
    left, right = st.columns([0.88, 0.12], vertical_alignment="center")
    left.markdown(f"{STATE_ICONS.get(icon_state, STATE_ICONS['unknown'])} {text}")
    return stop_key is not None and right.button("Stop", key=stop_key)


def run_list(root: Path) -> None:
    """Fragment: every run (newest first), a warning per damaged run, Stop for running ones."""
    found, waiting, states = overview(root)
    if states != st.session_state.seen:  # a run appeared, started or ended: redraw the page
        st.session_state.seen = states
        st.rerun()
    if not found and not waiting:
        st.info(
            "No runs yet: choose options in the sidebar and press **Start**, or train from "
            "the CLI (`python -m cacr_lab train`) — runs appear here."
        )
        return
    for name, (state, text) in waiting.items():
        stop_key = f"stop_{name}" if state == "starting" else None
        if status_row(state, f"**{name}** · {text}", stop_key):
            launched()[str((root / name).resolve())].terminate()
    for run in reversed(found):
        state = runs.run_state(run)
        text = f"**{run.name}** · `{run.method}` · {runs.describe_status(run)}"
        if status_row(state, text, f"stop_{run.name}" if state == "running" else None):
            runs.stop_run(run.path)
            st.toast(f"Stop requested for {run.name}")
        for warning in run.warnings:
            st.warning(f"{run.name}: {warning}", icon=":material/warning:")


# --------------------------------------------------------------------------------------------
# Panels of one run
# --------------------------------------------------------------------------------------------


def plot(container, what: str, key: str, version: tuple, make: Callable[[], go.Figure]) -> None:
    """Draw the (cached) figure ``make()`` in ``container``; bad data gives a warning only."""
    try:
        fig = cached_figure(key, version, make)
    except Exception as err:  # noqa: BLE001 -- a damaged run must leave the rest of the page
        container.warning(f"{what}: cannot draw this run's data ({type(err).__name__}: {err})")
        return
    container.plotly_chart(fig, key=key, **PLOT)


def versions(run: runs.Run) -> tuple[tuple, tuple]:
    """Data versions of a run's train-record and eval-record figures."""
    base = (str(run.path), str(run.config.get("created")))
    return (*base, len(run.train_records())), (*base, len(run.eval_records()))


def newest_snapshot(run: runs.Run) -> runs.Snapshot | None:
    for path in reversed(runs.list_snapshots(run.path)):
        try:
            return read_snapshot(*file_key(path))
        except ValueError:
            continue  # damaged: fall back to the previous one
    return None


def class_names(run: runs.Run) -> list[str] | None:
    names = run.config.get("classes")
    return [str(c) for c in names] if isinstance(names, list) and names else None


def weights_title(run: runs.Run, snap: runs.Snapshot) -> str:
    if run.method == "infonce":
        kind = " · InfoNCE's implicit softmax weights"
    elif run.method != "cacr":
        kind = f" · {run.method}'s implicit weights"
    else:
        kind = ""
    return f"Conditional weights at step {snap.step} (epoch {snap.epoch}){kind}"


def umap_figure(run: runs.Run, shown: tuple) -> go.Figure:
    snap_path, xy, labels, step, epoch = shown
    names = class_names(run)
    if names is not None and len(names) <= int(labels.max(initial=0)):
        names = None
    title = f"UMAP of the embedding sample · {run.name} · step {step} (epoch {epoch})"
    return cached_figure(
        f"umap_{run.name}",
        (snap_path, run.name),
        lambda: figures.embedding_scatter(xy, labels, names, title=title),
    )


def umap_panel(container, run: runs.Run, snap: runs.Snapshot | None, key: str) -> None:
    """The latest snapshot's UMAP; the previous one stays up while the next is computed."""
    if snap is None:
        container.info("UMAP: waiting for the first snapshot…")
        return
    chart, note = container.empty(), container.empty()
    shown = st.session_state.umap_shown.get(run.name)
    if shown is not None and shown[0] != str(snap.path):
        chart.plotly_chart(umap_figure(run, shown), key=f"{key}_previous", **PLOT)
        note.caption(f"computing the UMAP of step {snap.step}…")
    try:
        xy = umap_of(*file_key(snap.path))
    except Exception as err:  # noqa: BLE001
        note.warning(f"UMAP: cannot compute ({type(err).__name__}: {err})")
        return
    shown = (str(snap.path), xy, snap.labels, snap.step, snap.epoch)
    st.session_state.umap_shown[run.name] = shown
    note.empty()
    chart.plotly_chart(umap_figure(run, shown), key=key, **PLOT)


def per_class(run: runs.Run) -> go.Figure:
    """Per-class accuracy of an imbalanced run: the final linear probe once it exists, the kNN
    accuracy of the latest evaluation while the run goes on."""
    names, evals = class_names(run), run.eval_records()
    if runs.last_value(evals, "per_class_acc") is not None:
        return figures.per_class_bars(run, class_names=names)
    knn = runs.last_value(evals, "knn_per_class_acc")
    if knn is None:
        raise ValueError("no per-class accuracy recorded yet")
    step = runs.last_value(evals, "step")
    return figures.per_class_bars(
        {f"{figures.run_label(run)} · kNN at step {step}": knn},
        class_names=names,
        class_counts=run.config.get("class_counts"),
    )


def run_panels(run: runs.Run) -> None:
    """The four live panels of one run: 1 loss, 2 weights, 3 UMAP, 4 evaluation."""
    snap = newest_snapshot(run)
    snap_version = file_key(snap.path) if snap is not None else None
    train_v, eval_v = versions(run)
    k = run.name  # stable keys: a refresh updates each chart in place
    st.markdown(
        f"**{run.name}** · `{run.method}` on `{run.config.get('dataset', '?')}` · "
        f"{runs.describe_status(run)}"
    )
    left, right = st.columns(2)
    plot(left, "Loss curves", f"loss_{k}", train_v, lambda: figures.loss_curves(run))
    if snap is None:
        right.info("Weights: waiting for the first snapshot…")
    elif snap.pos_weights is None and snap.neg_weights is None:
        right.info(f"Weights: this {run.method} run records no conditional weights.")
    else:
        plot(
            right,
            "Weight histograms",
            f"hist_{k}",
            snap_version,
            lambda: figures.weight_histograms(snap, weights_title(run, snap)),
        )
    left, right = st.columns(2)
    umap_slot = left.container()
    if snap is not None and (snap.pos_d2 is not None or snap.neg_d2 is not None):
        plot(
            right,
            "Weight vs distance",
            f"wd_{k}",
            snap_version,
            lambda: figures.weight_vs_distance(snap),
        )
    plot(
        st, "Weight statistics", f"wstats_{k}", eval_v, lambda: figures.weight_stats_over_time(run)
    )
    plot(st, "Evaluation", f"eval_{k}", eval_v, lambda: figures.eval_curves(run))
    if run.config.get("imbalance") not in (None, "none"):
        plot(st, "Per-class accuracy", f"perclass_{k}", eval_v, lambda: per_class(run))
    umap_panel(umap_slot, run, snap, f"umap_{k}")  # last: it may take a moment


def what_to_watch() -> None:
    """The theory picture to read the live panels by, shown while there is no run to watch.

    Drawn on the first page also so that the browser has plotly.js loaded and compiled before
    Start: loading it with the first live chart, on a CPU busy training, delayed that chart by
    seconds."""
    st.markdown(
        "**What to watch for.** CACR weights each negative by how close it is: "
        "n · pi_neg = n · softmax(−tau_neg · d²), relative to uniform (1). Small tau_neg is "
        "nearly uniform; large tau_neg pushes hardest on the nearest negatives. InfoNCE "
        "weights its negatives the same way with tau_neg = 1 / (2T)."
    )
    fig = cached_figure(
        "what_to_watch",
        (),
        lambda: figures.weights_vs_distance_curves(
            np.linspace(0.0, 4.0, 200), [0.0, 0.9, 2.0], "neg", infonce_temperature=0.5
        ),
    )
    st.plotly_chart(fig, key="what_to_watch", **PLOT)


def watch_view(root: Path, found: list[runs.Run]) -> None:
    names = [r.name for r in reversed(found)]
    options = [*pending(root, set(names)), *names]
    if not options:
        what_to_watch()
        return
    if st.session_state.watch not in options:
        st.session_state.watch = options[0]
    name = st.selectbox("Watch run", options, key="watch")
    run = next((r for r in found if r.name == name), None)
    every = LIVE_EVERY if run is None or runs.is_running(run) else None
    st.fragment(run_every=every)(watched)(root, name)


def watched(root: Path, name: str) -> None:
    """Fragment: the panels of the watched run, re-read from its folder on every refresh."""
    path = root / name
    if not (path / runs.CONFIG_FILE).is_file():
        st.info(f"{name}: waiting for the trainer to write its run folder…")
        return
    run_panels(read_one(path))


# --------------------------------------------------------------------------------------------
# Compare
# --------------------------------------------------------------------------------------------


def compare_view(root: Path, found: list[runs.Run]) -> None:
    names = [r.name for r in reversed(found)]
    st.session_state.compare = [n for n in st.session_state.compare if n in names]
    chosen = st.multiselect(
        "Runs to compare", names, key="compare", help="e.g. cacr against infonce on the same data"
    )
    if len(chosen) < 2:
        st.info("Pick two or more runs to overlay their curves and weight statistics.")
        return
    live = any(runs.is_running(r) for r in found if r.name in chosen)
    st.fragment(run_every=LIVE_EVERY if live else None)(compared)(root, chosen)


def compared(root: Path, names: list[str]) -> None:
    """Fragment: the chosen runs overlaid, their UMAPs side by side."""
    chosen = [read_one(root / n) for n in names]
    train_v = tuple(versions(r)[0] for r in chosen)
    eval_v = tuple(versions(r)[1] for r in chosen)
    plot(st, "Loss curves", "cmp_loss", train_v, lambda: figures.loss_curves(chosen))
    plot(
        st,
        "Weight statistics",
        "cmp_wstats",
        eval_v,
        lambda: figures.weight_stats_over_time(chosen),
    )
    plot(st, "Evaluation", "cmp_eval", eval_v, lambda: figures.eval_curves(chosen))
    probed = [r for r in chosen if runs.last_value(r.eval_records(), "per_class_acc") is not None]
    if probed and any(r.config.get("imbalance") not in (None, "none") for r in chosen):
        plot(
            st,
            "Per-class accuracy",
            "cmp_perclass",
            eval_v,
            lambda: figures.per_class_bars(probed, class_names=class_names(probed[0])),
        )
    st.dataframe(figures.compare_rows(chosen), hide_index=True)
    for first in range(0, len(chosen), 3):
        for col, run in zip(st.columns(3), chosen[first : first + 3]):
            umap_panel(col, run, newest_snapshot(run), f"cmp_umap_{run.name}")


# --------------------------------------------------------------------------------------------
# The page
# --------------------------------------------------------------------------------------------


def main() -> None:
    st.set_page_config(page_title="cacr_lab", layout="wide")
    init_state()
    root = runs_root()
    st.title("cacr_lab · live lab")
    st.caption(
        "Contrastive Attraction and Contrastive Repulsion (Zheng et al., TMLR 2023): start a run, "
        "watch the conditional weights pi_pos and pi_neg sharpen, compare CACR with the baselines."
    )
    sidebar(root)
    found, _, states = overview(root)
    st.session_state.seen = states
    with st.expander("Runs", expanded=True):
        st.fragment(run_every=LIVE_EVERY if st.session_state.live else POLL_EVERY)(run_list)(root)
    live_tab, compare_tab = st.tabs(["Live run", "Compare runs"])
    with live_tab:
        watch_view(root, found)
    with compare_tab:
        compare_view(root, found)
    umap_warm_up()  # after the first drawing: compiling must not delay the page


main()
