"""The two tabs of the page: the live panels of one run, and the comparison of several.

Each tab is a fragment that re-reads its runs (through :mod:`state`) and re-runs every second
only while a run it shows is running. The figures are :mod:`cacr_lab.figures`' -- the ones the
notebooks show -- built once per data version, so a refresh without new data redraws nothing; a
damaged run gives a warning in its panel and leaves the rest of the page working.
"""

from pathlib import Path

import numpy as np
import plotly.graph_objects as go
import streamlit as st

from cacr_lab import figures, runs

# isort: split
from lens import lens_compare, lens_panel
from state import (
    LIVE_EVERY,
    PLOT,
    cached_figure,
    dismiss,
    file_key,
    newest_snapshot,
    pending,
    plot,
    read_one,
    umap_of,
)

# --------------------------------------------------------------------------------------------
# Panels of one run
# --------------------------------------------------------------------------------------------


def versions(run: runs.Run) -> tuple[tuple, tuple]:
    """Data versions of a run's train-record and eval-record figures."""
    base = (str(run.path), str(run.config.get("created")))
    return (*base, len(run.train_records())), (*base, len(run.eval_records()))


def class_names(run: runs.Run) -> list[str] | None:
    names = run.config.get("classes")
    return [str(c) for c in names] if isinstance(names, list) and names else None


# Design width (px) of a chart in a half column: the titles are wrapped to fit it.
HALF = figures.DESIGN_WIDTHS["half"]

# Under the weight statistics: why pi_pos hardly moves while pi_neg sharpens.
POS_NOTE = (
    "pi_pos hardly leaves 1 (ESS ≈ 0.99 all run): a query's K positives are the other views of "
    "its own image, all at nearly the same distance, so there is little for tau_pos to sharpen. "
    "pi_neg is where the weighting acts: it sharpens as the classes form. InfoNCE records no "
    "pi_pos (one positive per view pair)."
)
# Above the compared losses: why each method has its own y-axis.
UNITS_NOTE = (
    "Each method's loss has its own panel and y-axis: CACR's parts are weighted squared "
    "distances (attraction in [0, 4], repulsion in [−4, 0]); InfoNCE's are −s⁺/T and a "
    "log-sum-exp, in nats. The values are not comparable across methods: compare the shapes."
)


def weights_title(run: runs.Run, snap: runs.Snapshot) -> str:
    title = f"Conditional weights at step {snap.step} (epoch {snap.epoch})"
    if run.method == "infonce":
        return f"{title}<br><sup>InfoNCE's implicit softmax weights</sup>"
    if run.method != "cacr":
        return f"{title}<br><sup>{run.method}'s implicit weights</sup>"
    return title


def umap_figure(run: runs.Run, shown: tuple) -> go.Figure:
    snap_path, xy, labels, step, epoch = shown
    names = class_names(run)
    if names is not None and len(names) <= int(labels.max(initial=0)):
        names = None
    # Two lines, the first wrapped to a half column: a long title was cut there.
    title = (
        f"{figures.wrap(f'UMAP of the embedding sample · {run.name}', HALF - 40)}"
        f"<br><sup>step {step} (epoch {epoch})</sup>"
    )
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
            lambda: figures.weight_histograms(snap, weights_title(run, snap), method=run.method),
        )
    left, right = st.columns(2)
    umap_slot = left.container()
    if snap is not None and (snap.pos_d2 is not None or snap.neg_d2 is not None):
        plot(
            right,
            "Weight vs distance",
            f"wd_{k}",
            snap_version,
            lambda: figures.weight_vs_distance(snap, method=run.method),
        )
    plot(
        st, "Weight statistics", f"wstats_{k}", eval_v, lambda: figures.weight_stats_over_time(run)
    )
    st.caption(POS_NOTE)
    plot(st, "Evaluation", f"eval_{k}", eval_v, lambda: figures.eval_curves(run))
    if run.config.get("imbalance") not in (None, "none"):
        plot(st, "Per-class accuracy", f"perclass_{k}", eval_v, lambda: per_class(run))
    lens_panel(run, snap, eval_v)  # which images the weights pull and push (app/lens.py)
    umap_panel(umap_slot, run, snap, f"umap_{k}")  # last: it may take a moment


def what_to_watch() -> None:
    """The theory picture to read the live panels by, shown while there is no run to watch.

    Drawn on the first page also so that the browser has plotly.js loaded and compiled before
    Start: loading it with the first live chart, on a CPU busy training, delayed that chart by
    seconds."""
    st.markdown(
        "**What to watch for.** CACR weights each negative by how close it is: "
        "n · pi_neg = n · softmax(−tau_neg · d²), relative to uniform (1). A small tau_neg "
        "(0.1) is nearly uniform; a large one pushes hardest on the nearest negatives. InfoNCE "
        "weights its negatives the same way with tau_neg = 1 / (2T)."
    )
    # Only values the form accepts (tau_neg > 0): 0.9 is the paper's CIFAR-10 value.
    fig = cached_figure(
        "what_to_watch",
        (),
        lambda: figures.weights_vs_distance_curves(
            np.linspace(0.0, 4.0, 200), [0.1, 0.9, 2.0], "neg", infonce_temperature=0.5
        ),
    )
    st.plotly_chart(fig, key="what_to_watch", **PLOT)


def watch_view(root: Path, found: list[runs.Run]) -> None:
    names = [r.name for r in reversed(found)]
    waiting = pending(root, set(names))
    starting = [n for n, (state, _) in waiting.items() if state == "starting"]
    failed = [n for n in waiting if n not in starting]  # last: never the default choice
    options = [*starting, *names, *failed]
    if not options:
        what_to_watch()
        return
    if st.session_state.watch not in options:
        st.session_state.watch = options[0]
    name = st.selectbox("Watch run", options, key="watch")
    run = next((r for r in found if r.name == name), None)
    every = LIVE_EVERY if name in starting or (run is not None and runs.is_running(run)) else None
    st.fragment(run_every=every)(watched)(root, name)


def watched(root: Path, name: str) -> None:
    """Fragment: the panels of the watched run, re-read from its folder on every refresh; a
    start that failed shows its error and can be dismissed."""
    path = root / name
    if not (path / runs.CONFIG_FILE).is_file():
        state, text = pending(root, set()).get(name, ("starting", ""))
        if state != "failed":
            st.info(f"{name}: waiting for the trainer to write its run folder…")
            return
        st.error(f"{name}: {text}")
        if st.button("Dismiss", key=f"dismiss_watch_{name}"):
            dismiss(path)
            st.rerun(scope="app")
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
    if len({r.method for r in chosen}) > 1:
        st.caption(UNITS_NOTE)
    plot(st, "Loss curves", "cmp_loss", train_v, lambda: figures.loss_curves(chosen))
    plot(
        st,
        "Weight statistics",
        "cmp_wstats",
        eval_v,
        lambda: figures.weight_stats_over_time(chosen),
    )
    st.caption(POS_NOTE)
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
    lens_compare(chosen, eval_v)  # the false-negative share, one query per run (app/lens.py)
    # Two per row: in thirds of the page the titles and legends took most of each chart.
    for first in range(0, len(chosen), 2):
        for col, run in zip(st.columns(2), chosen[first : first + 2]):
            umap_panel(col, run, newest_snapshot(run), f"cmp_umap_{run.name}")
