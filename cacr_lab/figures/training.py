"""Figures of a run's records over training, and the runs side by side.

Curves over steps from ``metrics.jsonl`` (:func:`loss_curves`, :func:`eval_curves`,
:func:`weight_stats_over_time`), the final per-class accuracy (:func:`per_class_bars`), and the
summaries of several runs: :func:`compare_rows` (plain rows for a table widget),
:func:`compare_table` (the same as a plotly Table) and :func:`metric_bars` (a few final numbers
per run as grouped bars). Every builder takes :class:`~cacr_lab.runs.Run` objects (or plain rows)
and returns a ``plotly.graph_objects.Figure``; colours and line styles come from
:mod:`cacr_lab.figures.style`.
"""

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import plotly.colors as pc
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from cacr_lab.figures.style import (
    LOSS_UNITS,
    _as_runs,
    _finish,
    _run_colors,
    part_name,
    run_label,
    series_style,
)
from cacr_lab.runs import Run, last_value, run_state, series

# Known loss parts of train records, in legend order; any of them present is drawn.
LOSS_PARTS = ("attraction", "repulsion", "alignment", "uniformity")

# Weight statistics of eval records drawn over training: key suffix -> panel title. Prefixed with
# pos_ / neg_. Each is 1 for uniform weights: the ESS and the entropy fall as the weights
# sharpen, the largest weight x set size rises. (The records' wd_corr, the correlation of a
# weight with its d², is not drawn: the weights are a monotone function of d², so it is ±1 by
# construction and says nothing about training.)
WEIGHT_STATS = {
    "ess_frac": "ESS / set size",
    "entropy_norm": "entropy / log(set size)",
    "max_weight": "largest weight × set size",
}


# --------------------------------------------------------------------------------------------
# Curves over training
# --------------------------------------------------------------------------------------------


def _line(steps: np.ndarray, values: np.ndarray, color: str, key: str, **kw: Any) -> go.Scatter:
    """A series over steps in the style of ``key`` (:func:`series_style`); a series of one point
    is drawn as its marker (a line through one point draws nothing)."""
    return go.Scatter(
        x=steps,
        y=values,
        mode="lines" if steps.size > 1 else "markers",
        **series_style(color, key),
        **kw,
    )


def loss_curves(runs: Run | Sequence[Run], *, parts: Sequence[str] = LOSS_PARTS) -> go.Figure:
    """Training loss and its parts over steps: one panel (and y-axis) per method, one colour
    per run, one line style and shade per part.

    The losses of different methods have different units -- CACR's parts are weighted squared
    distances in [0, 4] and [-4, 0], InfoNCE's are -s+/T and a log-sum-exp in nats -- so each
    method gets its own panel, titled with its terms (:data:`LOSS_UNITS`), stacked on one step
    axis. Draws ``loss`` and every key of ``parts`` that a run's train records hold, so one
    trace per (run, key present), named ``"{run label} · {part}"`` with the part named as the
    method means it (:func:`part_name`: InfoNCE's logged "attraction" is its -s+/T term).
    """
    runs = _as_runs(runs)
    methods = list(dict.fromkeys(r.method for r in runs))
    fig = make_subplots(
        rows=len(methods),
        cols=1,
        shared_xaxes=True,
        vertical_spacing=0.22 / len(methods) if len(methods) > 1 else 0.0,
        subplot_titles=[LOSS_UNITS.get(m, f"{m} · loss and its parts") for m in methods],
    )
    for run, color in zip(runs, _run_colors(runs), strict=True):
        records = run.train_records()
        row = methods.index(run.method) + 1
        for key in ("loss", *parts):
            steps, values = series(records, key)
            if steps.size == 0:
                continue
            name = f"{run_label(run)} · {part_name(run.method, key)}"
            fig.add_trace(
                _line(steps, values, color, key, name=name, legendgroup=run.name),
                row=row,
                col=1,
            )
    # Step ticks on every panel: the bottom one is hidden while its method has no records yet.
    fig.update_xaxes(showticklabels=True)
    fig.update_xaxes(title_text="step", row=len(methods))
    fig.update_yaxes(title_text="loss (per part)")
    return _finish(fig, "Training loss and its parts", height=170 + 230 * len(methods))


def eval_curves(runs: Run | Sequence[Run]) -> go.Figure:
    """Evaluation over steps in three panels: kNN accuracy (line, circles) with the linear
    probe (diamonds: usually one, at the end of the run), alignment, uniformity. One trace per
    (run, metric present); a run's legend entry appears once per metric.
    """
    runs = _as_runs(runs)
    panels = (("knn_acc", "probe_acc"), ("alignment",), ("uniformity",))
    fig = make_subplots(
        rows=1,
        cols=3,
        horizontal_spacing=0.08,
        subplot_titles=(
            "accuracy: kNN ●, probe ◆",
            "alignment (lower: closer)",
            "uniformity (lower: spread)",
        ),
    )
    for run, color in zip(runs, _run_colors(runs), strict=True):
        records = run.eval_records()
        for col, keys in enumerate(panels, start=1):
            for key in keys:
                steps, values = series(records, key)
                if steps.size:
                    trace = _line(
                        steps,
                        values,
                        color,
                        key,
                        name=f"{run_label(run)} · {key}",
                        legendgroup=run.name,
                    )
                    if key == "probe_acc":  # a point or a few: markers, as the title says
                        trace.update(mode="markers", marker_size=11)
                    elif steps.size > 1:
                        trace.update(mode="lines+markers")
                    fig.add_trace(trace, row=1, col=col)
    fig.update_xaxes(title_text="step")
    fig.update_yaxes(title_text="accuracy", row=1, col=1)
    return _finish(fig, "Evaluation during training", height=420)


def _stat_series(records: Sequence[Mapping[str, Any]], side: str, stat: str):
    """(steps, values) of weight statistic ``stat`` of ``side`` over the eval records. The
    largest weight is multiplied by the set size (ess / ess_frac), as the other panels are
    relative to it: 1 = uniform whatever the set size."""
    if stat != "max_weight":
        return series(records, f"{side}_{stat}")
    scaled = []
    for rec in records:
        top, ess, frac = (rec.get(f"{side}_{k}") for k in ("max_weight", "ess", "ess_frac"))
        if all(isinstance(v, (int, float)) for v in (top, ess, frac)) and frac > 0:
            scaled.append({"step": rec.get("step"), "v": top * round(ess / frac)})
    return series(scaled, "v")


def weight_stats_over_time(runs: Run | Sequence[Run]) -> go.Figure:
    """How concentrated pi_pos (solid) and pi_neg (dashed) are over training, from eval records.

    Three panels (:data:`WEIGHT_STATS`), each 1 for uniform weights: ESS fraction and
    normalised entropy fall as the weights sharpen, the largest weight × set size rises. One
    trace per (run, side, statistic present); legend entries appear once per (run, side). A
    panel with no records yet says so.
    """
    runs = _as_runs(runs)
    fig = make_subplots(
        rows=1, cols=3, subplot_titles=list(WEIGHT_STATS.values()), horizontal_spacing=0.08
    )
    for run, color in zip(runs, _run_colors(runs), strict=True):
        records = run.eval_records()
        for side in ("pos", "neg"):
            shown = False
            for col, stat in enumerate(WEIGHT_STATS, start=1):
                steps, values = _stat_series(records, side, stat)
                if steps.size == 0:
                    continue
                trace = _line(
                    steps,
                    values,
                    color,
                    side,
                    name=f"{run_label(run)} · pi_{side}",
                    legendgroup=f"{run.name}/{side}",
                    showlegend=not shown,
                )
                fig.add_trace(trace, row=1, col=col)
                shown = True
    fig.update_xaxes(title_text="step")
    fig.update_yaxes(title_text="1 = uniform", row=1, col=1)
    return _finish(
        fig,
        "Concentration of the conditional weights<br><sup>1 = uniform · pi_pos solid, "
        "pi_neg dashed</sup>",
        height=400,
    )


# --------------------------------------------------------------------------------------------
# Per-class accuracy, summaries
# --------------------------------------------------------------------------------------------


def _per_class_entries(
    runs_or_dict: Run | Sequence[Run] | Mapping[str, Sequence[float]],
    class_counts: Sequence[int] | None,
) -> list[tuple[str, list[float], list[int] | None, str]]:
    """(legend name, per-class accuracies, images per class or None, colour) per run or dict
    entry, as :func:`per_class_bars` draws them; runs without ``per_class_acc`` are left out."""
    entries: list[tuple[str, list[float], list[int] | None, str]] = []  # name, acc, counts, colour
    if isinstance(runs_or_dict, Mapping):
        if not runs_or_dict:
            raise ValueError("no per-class accuracies given")
        palette = pc.qualitative.D3
        for i, (name, acc) in enumerate(runs_or_dict.items()):
            counts = None if class_counts is None else [int(c) for c in class_counts]
            entries.append((str(name), [float(a) for a in acc], counts, palette[i % 10]))
    else:
        runs = _as_runs(runs_or_dict)
        for run, color in zip(runs, _run_colors(runs), strict=True):
            acc = last_value(run.eval_records(), "per_class_acc")
            if acc is None:
                continue
            counts = run.config.get("class_counts") if class_counts is None else class_counts
            counts = None if counts is None else [int(c) for c in counts]
            entries.append(
                (run_label(run), [np.nan if a is None else float(a) for a in acc], counts, color)
            )
        if not entries:
            names = [r.name for r in runs]
            raise ValueError(f"no eval record with per_class_acc in runs {names}")
    return entries


def per_class_bars(
    runs_or_dict: Run | Sequence[Run] | Mapping[str, Sequence[float]],
    *,
    class_names: Sequence[str] | None = None,
    class_counts: Sequence[int] | None = None,
) -> go.Figure:
    """Per-class accuracy of one or more runs as grouped bars (the imbalanced-data picture).

    Runs: the last eval record's ``per_class_acc`` (runs without one are left out) and, when the
    config has ``class_counts``, the pre-training images per class in the hover and as a line on
    a secondary axis (one line per distinct count profile). A dict maps a legend name to
    accuracies, with ``class_counts`` given here. One Bar trace per run/entry.
    """
    entries = _per_class_entries(runs_or_dict, class_counts)
    n_classes = max(len(acc) for _, acc, _, _ in entries)
    if class_names is not None and len(class_names) < n_classes:
        raise ValueError(f"{len(class_names)} class_names for {n_classes} classes")
    names = [str(class_names[c]) if class_names else str(c) for c in range(n_classes)]
    fig = make_subplots(specs=[[{"secondary_y": True}]])
    profiles: dict[tuple[int, ...], list[str]] = {}
    for name, acc, counts, color in entries:
        hover = [f"{name}<br>class {names[c]}: %{{y:.3f}}" for c in range(len(acc))]
        if counts is not None:
            hover = [
                h + f"<br>{counts[c]} pre-training images" if c < len(counts) else h
                for c, h in enumerate(hover)
            ]
            profiles.setdefault(tuple(counts), []).append(name)
        fig.add_trace(
            go.Bar(
                x=names[: len(acc)],
                y=acc,
                name=name,
                marker_color=color,
                hovertemplate=[h + "<extra></extra>" for h in hover],
            ),
            secondary_y=False,
        )
    for counts, owners in profiles.items():
        fig.add_trace(
            go.Scatter(
                x=names[: len(counts)],
                y=list(counts),
                mode="lines+markers",
                name=f"images per class · {', '.join(owners)}",
                line={"color": "gray", "dash": "dot"},
                marker={"symbol": "diamond"},
            ),
            secondary_y=True,
        )
    fig.update_layout(barmode="group")
    fig.update_xaxes(title_text="class")
    fig.update_yaxes(title_text="accuracy", range=[0, 1], secondary_y=False)
    if profiles:
        fig.update_yaxes(
            title_text="pre-training images per class",
            secondary_y=True,
            showgrid=False,
            rangemode="tozero",
        )
    return _finish(fig, "Per-class accuracy", height=450)


def compare_rows(runs: Run | Sequence[Run]) -> list[dict[str, Any]]:
    """One dict per run: run, method, dataset, seed, epochs, state, step and the final
    knn_acc, probe_acc, alignment, uniformity (None where not recorded). For st.dataframe."""
    rows = []
    for run in _as_runs(runs):
        evals = run.eval_records()
        rows.append(
            {
                "run": run.name,
                "method": run.method,
                "dataset": run.config.get("dataset"),
                "seed": run.config.get("seed"),
                "epochs": run.config.get("epochs"),
                "state": run_state(run),
                "step": last_value(run.metrics, "step"),
                **{
                    k: last_value(evals, k)
                    for k in ("knn_acc", "probe_acc", "alignment", "uniformity")
                },
            }
        )
    return rows


def compare_table(runs: Run | Sequence[Run]) -> go.Figure:
    """:func:`compare_rows` as a plotly Table (one column per key, floats to 4 decimals)."""
    rows = compare_rows(runs)
    columns = list(rows[0])

    def fmt(v: Any) -> str:
        if v is None:
            return "–"
        return f"{v:.4f}" if isinstance(v, float) else str(v)

    fig = go.Figure(
        go.Table(
            header={"values": columns, "align": "left", "fill_color": "#E8E8E8"},
            cells={"values": [[fmt(r[c]) for r in rows] for c in columns], "align": "left"},
        )
    )
    return _finish(fig, "Runs compared (final evaluation)", height=120 + 30 * len(rows))


def metric_bars(
    rows: Sequence[Mapping[str, Any]],
    *,
    label: str = "run",
    metrics: Sequence[str] = ("knn_acc", "probe_acc"),
    title: str = "Final accuracy per run",
    y_title: str = "accuracy",
    y_range: Sequence[float] | None = None,
) -> go.Figure:
    """Grouped bars of a few final numbers per run (an ablation table as a picture).

    ``rows``: one mapping per run (e.g. :func:`compare_rows` with extra keys) holding ``label``
    (the bar's x) and the ``metrics`` (missing or None values are left out). One Bar trace per
    metric, named after it. ``y_range``: e.g. ``(0.9, 1.0)`` to zoom on small differences.
    """
    if not rows:
        raise ValueError("no rows given")
    missing = [i for i, r in enumerate(rows) if label not in r]
    if missing:
        raise ValueError(f"rows {missing} have no {label!r} key")
    fig = go.Figure()
    for i, metric in enumerate(metrics):
        kept = [r for r in rows if r.get(metric) is not None]
        if not kept:
            continue
        fig.add_trace(
            go.Bar(
                x=[str(r[label]) for r in kept],
                y=[float(r[metric]) for r in kept],
                name=metric,
                marker_color=pc.qualitative.D3[i % 10],
                hovertemplate="%{x}<br>" + metric + " %{y:.4f}<extra></extra>",
            )
        )
    fig.update_layout(barmode="group")
    fig.update_yaxes(title_text=y_title, range=list(y_range) if y_range is not None else None)
    return _finish(fig, title, height=450)
