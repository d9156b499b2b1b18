"""The "query under the lens" panel: which images a run's weights pull and push hardest.

Called once from each tab of :mod:`panels`: :func:`lens_panel` under one run's live panels,
:func:`lens_compare` under the compared runs (one query index for all of them: runs on the same
data and seed share their held-out probe batch, so the index picks the same image in each). Each
draws the false-negative share over training (``figures.false_negative_curves``) and a query of
the newest snapshot (``figures.query_lens``); a snapshot written before snapshot version 2 gets
a message in its own panel, not an error.
"""

import streamlit as st

from cacr_lab import figures, runs

# isort: split
from state import file_key, newest_snapshot, plot

OLD_SNAPSHOT = (
    "Query under the lens: this snapshot does not say who its queries' negatives are (written "
    "before snapshot version 2, or a method that weights no negatives). Runs trained now record it."
)
FN_NOTE = (
    "False negatives: of each query's negative weight, the share on images of its own class "
    "(docs/method.md §8.1). Uniform weights give (n_c − 1)/(B − 1); weights that favour near "
    "negatives give more as the classes form, since a query's nearest images are then its own "
    "class's."
)


def _class_names(run: runs.Run) -> list[str] | None:
    names = run.config.get("classes")
    return [str(c) for c in names] if isinstance(names, list) and names else None


def _pick_query(container, snap: runs.Snapshot, key: str) -> int:
    """A select box of the snapshot's lens queries, named by class; 0 when there is one."""
    n = figures.lens_queries(snap)
    labels = [int(v) for v in snap.query_labels[:n]]
    return container.selectbox(
        "Query under the lens",
        range(n),
        key=key,
        format_func=lambda q: f"query {q} · class {labels[q]}",
        help="one of the held-out probe batch's queries whose views the snapshot stores",
    )


def _query_figure(container, run: runs.Run, snap: runs.Snapshot | None, query: int, key: str):
    if snap is None:
        container.info("Query under the lens: waiting for the first snapshot…")
        return
    if figures.lens_queries(snap) == 0:
        container.info(OLD_SNAPSHOT)
        return
    query = min(query, figures.lens_queries(snap) - 1)
    plot(
        container,
        "Query under the lens",
        key,
        (*file_key(snap.path), query),
        lambda: figures.query_lens(snap, query, class_names=_class_names(run), method=run.method),
    )


def _has_fn(run: runs.Run) -> bool:
    return runs.last_value(run.eval_records(), "fn_share_uniform") is not None


def lens_panel(run: runs.Run, snap: runs.Snapshot | None, eval_version: tuple) -> None:
    """Under one run's panels: the false-negative share over training, a query under the lens."""
    st.markdown("**What the weights look at**")
    if _has_fn(run):
        plot(
            st,
            "False negatives",
            f"fn_{run.name}",
            eval_version,
            lambda: figures.false_negative_curves(run),
        )
        st.caption(FN_NOTE)
    query = 0
    if snap is not None and figures.lens_queries(snap):
        query = _pick_query(st, snap, f"lens_query_{run.name}")
    _query_figure(st, run, snap, query, f"lens_{run.name}")


def lens_compare(chosen: list[runs.Run], eval_version: tuple) -> None:
    """Under the compared runs: their false-negative shares together, then the same query of
    each run's newest snapshot, one under the other."""
    st.markdown("**What the weights look at**")
    with_fn = [r for r in chosen if _has_fn(r)]
    if with_fn:
        plot(
            st,
            "False negatives",
            "cmp_fn",
            eval_version,
            lambda: figures.false_negative_curves(with_fn),
        )
        st.caption(FN_NOTE)
    snaps = [newest_snapshot(r) for r in chosen]
    counts = [figures.lens_queries(s) for s in snaps if s is not None]
    query = 0
    if any(counts):
        first = next(s for s in snaps if s is not None and figures.lens_queries(s))
        query = _pick_query(st, first, "cmp_lens_query")
    for run, snap in zip(chosen, snaps, strict=True):  # full width: thumbnails stay legible
        st.markdown(f"`{run.method}` · {run.name}")
        _query_figure(st, run, snap, query, f"cmp_lens_{run.name}")
