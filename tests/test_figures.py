"""Figures: each builder draws what a run directory holds, named as the run's config names it."""

import numpy as np
import plotly.graph_objects as go
import pytest

from cacr_lab.figures import (
    METHOD_COLORS,
    WEIGHT_STATS,
    class_color,
    compare_rows,
    compare_table,
    compute_umap,
    embedding_scatter,
    eval_curves,
    loss_curves,
    method_color,
    part_name,
    per_class_bars,
    weight_histograms,
    weight_stats_over_time,
    weight_vs_distance,
    weights_vs_distance_curves,
)
from cacr_lab.figures.style import panels
from cacr_lab.runs import RunWriter, latest_snapshot, load_run

CLASS_COUNTS = [10, 20, 30]
Q, K, N, TAU_POS, TAU_NEG = 8, 4, 20, 1.0, 0.9


def _unit(rng, *shape):
    x = rng.normal(size=(*shape, 16))
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def _softmax(logits):
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def _d2(queries, points):
    """(Q, M) squared distances between query i and its own M points (Q, M, 16)."""
    return 2.0 - 2.0 * np.einsum("qd,qmd->qm", queries, points)


def _weight_stats(step):
    """Eval-record weight statistics as the trainer logs them (uniform = 1; sharpening)."""
    pos_frac, neg_frac = 0.9, 1.0 - step / 100
    return {
        "pos_ess_frac": pos_frac,
        "pos_ess": pos_frac * K,
        "pos_max_weight": 0.3,
        "neg_ess_frac": neg_frac,
        "neg_ess": neg_frac * N,
        "neg_entropy_norm": 0.99,
        "neg_max_weight": 0.05 + step / 1000,
        "neg_wd_corr": -0.8,
    }


def _write_run(path, method, parts, rng, with_weights, steps=20, sides=("pos", "neg")):
    config = {"method": method, "dataset": "digits", "seed": 0, "epochs": 2}
    with RunWriter(path, config, class_counts=CLASS_COUNTS) as w:
        for step in range(1, steps + 1):
            part_values = {p: float(rng.normal()) for p in parts}
            w.log(
                {
                    "kind": "train",
                    "epoch": step // 10,
                    "step": step,
                    "loss": sum(part_values.values()),
                    "lr": 0.1,
                    **part_values,
                }
            )
            if step % 5 == 0:
                w.log(
                    {
                        "kind": "eval",
                        "epoch": step // 10,
                        "step": step,
                        "knn_acc": 0.3 + step / 100,
                        "alignment": 1.0 - step / 40,
                        "uniformity": -1.0 - step / 40,
                        "per_class_acc": [0.2, 0.5, 0.8],
                        **_weight_stats(step),
                    }
                )
        w.log({"kind": "eval", "epoch": 2, "step": steps, "probe_acc": 0.77})
        queries = _unit(rng, Q)
        pos_d2, neg_d2 = _d2(queries, _unit(rng, Q, K)), _d2(queries, _unit(rng, Q, N))
        arrays = {}
        if with_weights:
            arrays = {
                "pos_weights": _softmax(TAU_POS * pos_d2),
                "pos_d2": pos_d2,
                "neg_weights": _softmax(-TAU_NEG * neg_d2),
                "neg_d2": neg_d2,
            }
            arrays = {k: v for k, v in arrays.items() if k[:3] in sides}
        w.snapshot(steps, 2, _unit(rng, 60), np.arange(60) % 3, **arrays)
    return load_run(path)


@pytest.fixture(scope="module")
def cacr_run(tmp_path_factory):
    rng = np.random.default_rng(0)
    return _write_run(
        tmp_path_factory.mktemp("runs") / "c1",
        "cacr",
        ["attraction", "repulsion"],
        rng,
        with_weights=True,
    )


@pytest.fixture(scope="module")
def au_run(tmp_path_factory):
    rng = np.random.default_rng(1)
    return _write_run(
        tmp_path_factory.mktemp("runs") / "a1",
        "au",
        ["alignment", "uniformity"],
        rng,
        with_weights=False,
    )


@pytest.fixture(scope="module")
def infonce_run(tmp_path_factory):
    """InfoNCE as the trainer records it: -s+/T under "attraction" (< 0), the log-sum-exp
    under "repulsion" (> 0), and implicit weights over negatives only."""
    rng = np.random.default_rng(2)
    return _write_run(
        tmp_path_factory.mktemp("runs") / "i1",
        "infonce",
        ["attraction", "repulsion"],
        rng,
        with_weights=True,
        sides=("neg",),
    )


@pytest.fixture(scope="module")
def snapshot(cacr_run):
    return latest_snapshot(cacr_run.path)


@pytest.fixture(scope="module")
def infonce_snapshot(infonce_run):
    return latest_snapshot(infonce_run.path)


def _names(fig):
    return [t.name for t in fig.data]


def _rng():
    return np.random.default_rng(0)


def _notes(fig):
    """The messages a figure shows in panels with nothing to draw."""
    return [a for a in fig.layout.annotations if a.name == "note"]


def _inside(note, xaxis, yaxis) -> bool:
    """Whether a paper-referenced annotation lies inside the panel of these axes, and is
    centred there (plotly's "auto" anchor put a note at paper x < 1/3 off to the right)."""
    assert note.xref == "paper" and note.yref == "paper"
    assert note.xanchor == "center" and note.yanchor == "middle"
    (x0, x1), (y0, y1) = xaxis.domain or (0, 1), yaxis.domain or (0, 1)
    return x0 < note.x < x1 and y0 < note.y < y1


def _panels_without_data_or_message(fig) -> list[str]:
    """The x-axis refs of panels that show neither a trace nor a note inside their domain."""
    used = {t.xaxis or "x" for t in fig.data}
    bare = []
    for xref, (x0, x1), (y0, y1) in panels(fig):
        noted = any(x0 < a.x < x1 and y0 < a.y < y1 for a in _notes(fig))
        if xref not in used and not noted:
            bare.append(xref)
    return bare


# --------------------------------------------------------------------------------------------
# Curves
# --------------------------------------------------------------------------------------------


def test_loss_curves_one_run_draws_loss_and_its_parts(cacr_run):
    fig = loss_curves(cacr_run)
    assert isinstance(fig, go.Figure)
    assert _names(fig) == ["cacr · c1 · loss", "cacr · c1 · attraction", "cacr · c1 · repulsion"]
    assert [t.line.dash for t in fig.data] == ["solid", "dash", "dot"]
    # each part in its own shade of the method's colour: loss in the colour itself
    assert fig.data[0].line.color == method_color("cacr")
    assert len({t.line.color for t in fig.data}) == 3
    np.testing.assert_array_equal(fig.data[0].x, np.arange(1, 21))
    assert fig.layout.title.text and fig.layout.xaxis.title.text == "step"
    assert "d²" in fig.layout.annotations[0].text  # the panel names its unit


def test_every_registered_method_has_its_own_colour():
    # Imported here: the rest of this file, like cacr_lab.figures, runs without torch.
    from cacr_lab.losses import LOSSES

    assert sorted(set(LOSSES) - set(METHOD_COLORS)) == [], "methods left to hashed colours"
    assert sorted(set(METHOD_COLORS) - set(LOSSES)) == [], "colours of no registered method"
    assert len(set(METHOD_COLORS.values())) == len(METHOD_COLORS)
    assert all(method_color(m) == METHOD_COLORS[m] for m in LOSSES)


def test_loss_curves_overlays_runs_with_their_own_parts(cacr_run, au_run):
    fig = loss_curves([cacr_run, au_run])
    assert _names(fig)[3:] == ["au · a1 · loss", "au · a1 · alignment", "au · a1 · uniformity"]
    assert {t.line.color for t in fig.data[:3]} != {t.line.color for t in fig.data[3:]}


def test_two_methods_get_their_own_panel_and_y_axis(cacr_run, infonce_run):
    """CACR's parts are d² in [0, 4] / [-4, 0]; InfoNCE's ~ -2 and ~6 nats: on one y-axis the
    CACR curve was flat. Each method has a panel titled with its terms and unit."""
    fig = loss_curves([cacr_run, infonce_run])
    axes = {(t.name.split(" · ")[0], t.yaxis) for t in fig.data}
    assert axes == {("cacr", "y"), ("infonce", "y2")}
    titles = [a.text for a in fig.layout.annotations if a.name != "note"]
    assert "cacr" in titles[0] and "d²" in titles[0]
    assert "infonce" in titles[1] and "nats" in titles[1]
    # InfoNCE's logged parts have the opposite signs of CACR's: named by their terms
    assert _names(fig)[3:] == [
        "infonce · i1 · loss",
        "infonce · i1 · −s⁺/T",
        "infonce · i1 · log-sum-exp",
    ]
    assert (
        part_name("infonce", "attraction") == "−s⁺/T"
        and part_name("cacr", "repulsion") == "repulsion"
    )
    # one step axis for both panels, its title on the bottom one
    assert fig.layout.xaxis.matches == "x2" and fig.layout.xaxis2.title.text == "step"


def test_a_method_without_records_yet_gets_a_note_in_its_own_panel(cacr_run, tmp_path):
    RunWriter(tmp_path / "new", {"method": "infonce"}).close()
    fig = loss_curves([cacr_run, load_run(tmp_path / "new")])
    (note,) = _notes(fig)
    assert _inside(note, fig.layout.xaxis2, fig.layout.yaxis2) and "nothing recorded" in note.text
    assert _panels_without_data_or_message(fig) == []
    assert fig.layout.xaxis.showticklabels is True  # the steps still read on cacr's panel


def test_two_runs_of_one_method_get_distinct_shades(cacr_run):
    fig = loss_curves([cacr_run, cacr_run])
    assert fig.data[0].line.color != fig.data[3].line.color
    # ... and every series of the figure its own (colour, dash) pair
    assert len({(t.line.color, t.line.dash) for t in fig.data}) == 6


def test_a_series_of_one_point_is_drawn_as_a_marker(tmp_path):
    """A run stopped after one step: a line through one point drew an empty chart."""
    run = _write_run(tmp_path / "s1", "cacr", ["attraction", "repulsion"], _rng(), True, steps=1)
    fig = loss_curves(run)
    assert [t.mode for t in fig.data] == ["markers"] * 3
    assert [t.marker.symbol for t in fig.data] == ["circle", "triangle-up", "triangle-down"]
    assert all(
        t.mode == "lines"
        for t in loss_curves(
            _write_run(tmp_path / "s2", "cacr", ["attraction"], _rng(), True, steps=2)
        ).data
    )


def test_eval_curves(cacr_run, au_run):
    fig = eval_curves([cacr_run, au_run])
    names = _names(fig)
    assert names[:4] == [
        "cacr · c1 · knn_acc",
        "cacr · c1 · probe_acc",
        "cacr · c1 · alignment",
        "cacr · c1 · uniformity",
    ]
    assert len(names) == 8
    knn = fig.data[0]
    np.testing.assert_array_equal(knn.x, [5, 10, 15, 20])
    np.testing.assert_allclose(knn.y, [0.35, 0.4, 0.45, 0.5])


def test_the_probe_is_drawn_as_the_title_says(cacr_run):
    """The probe is one point at the end: a diamond, as the panel title says (it said
    "dashed" over a lone dot), in its own shade of the run's colour."""
    fig = eval_curves(cacr_run)
    knn, probe = fig.data[0], fig.data[1]
    title = fig.layout.annotations[0].text
    assert probe.mode == "markers" and probe.marker.symbol == "diamond" and "◆" in title
    assert "lines" in knn.mode and knn.marker.symbol == "circle" and "●" in title
    assert knn.line.color == method_color("cacr") and probe.marker.color != knn.line.color


def test_weight_stats_over_time(cacr_run):
    fig = weight_stats_over_time(cacr_run)
    # pos: ess_frac, max_weight; neg: ess_frac, entropy_norm, max_weight
    assert _names(fig) == ["cacr · c1 · pi_pos"] * 2 + ["cacr · c1 · pi_neg"] * 3
    assert [t.showlegend for t in fig.data] == [True, False, True, False, False]
    np.testing.assert_allclose(fig.data[2].y, [0.95, 0.9, 0.85, 0.8])
    # the largest weight × set size (K = 4, N = 20): 1 = uniform, like the other panels
    np.testing.assert_allclose(fig.data[1].y, [0.3 * K] * 4)
    np.testing.assert_allclose(fig.data[4].y, [(0.05 + s / 1000) * N for s in (5, 10, 15, 20)])
    titles = [a.text for a in fig.layout.annotations]
    assert titles == list(WEIGHT_STATS.values()) and "largest weight × set size" in titles
    # corr(weight, d²) is ±1 by construction (the weights are a function of d²): not drawn
    assert not any("corr" in t for t in titles)
    assert [t.line.dash for t in fig.data] == ["solid"] * 2 + ["dash"] * 3


def test_curves_reject_bad_input(cacr_run):
    for builder in (loss_curves, eval_curves, weight_stats_over_time, compare_rows):
        with pytest.raises(ValueError, match="no runs"):
            builder([])
        with pytest.raises(ValueError, match="str"):
            builder("runs/c1")


def test_a_run_without_records_gives_an_annotated_empty_figure(tmp_path):
    RunWriter(tmp_path / "empty", {"method": "cacr"}).close()
    fig = loss_curves(load_run(tmp_path / "empty"))
    assert len(fig.data) == 0
    (note,) = _notes(fig)
    assert "nothing recorded" in note.text
    assert _inside(note, fig.layout.xaxis, fig.layout.yaxis)
    assert fig.layout.xaxis.visible is False and fig.layout.yaxis.visible is False


def test_a_fresh_run_notes_every_empty_panel_of_the_concentration_grid(tmp_path):
    """At a run's start: one note per panel (it was one, floating between the panels, over a
    grid of empty axes)."""
    RunWriter(tmp_path / "fresh", {"method": "cacr"}).close()
    run = load_run(tmp_path / "fresh")
    for fig in (weight_stats_over_time(run), eval_curves(run)):
        notes = _notes(fig)
        assert len(notes) == 3
        for note, (xref, xdomain, ydomain) in zip(notes, panels(fig), strict=True):
            assert xdomain[0] < note.x < xdomain[1] and ydomain[0] < note.y < ydomain[1]
            assert fig.layout["xaxis" + xref[1:]].visible is False


# --------------------------------------------------------------------------------------------
# Snapshot pictures
# --------------------------------------------------------------------------------------------


def test_weight_histograms_show_weights_times_set_size(snapshot):
    fig = weight_histograms(snapshot)
    assert _names(fig) == ["pi_pos", "pi_neg"]
    for trace, w, size in (
        (fig.data[0], snapshot.pos_weights, K),
        (fig.data[1], snapshot.neg_weights, N),
    ):
        values = (w * size).ravel()
        x, y, width = np.asarray(trace.x), np.asarray(trace.y), np.asarray(trace.width)
        assert len(x) == 40 and np.isclose(y.sum(), 1.0)
        # every weight counted in the bin that holds it
        for v in values[:: max(1, len(values) // 50)]:
            hit = np.flatnonzero(np.abs(v - x) <= width / 2 + 1e-9)
            assert len(hit) >= 1 and y[hit].max() > 0
        assert x[0] - width[0] / 2 == pytest.approx(values.min())
        assert x[-1] + width[-1] / 2 == pytest.approx(values.max())
        # × set size: the mean over a query's set is exactly 1 (uniform), so the histogram's
        # mean is 1 up to half a bin
        assert abs((x * y).sum() - 1.0) <= width[0] / 2
    assert "1 = uniform" in fig.layout.xaxis.title.text
    assert "step 20" in fig.layout.title.text


def test_weight_histograms_need_weights(au_run):
    with pytest.raises(ValueError, match="step 20"):
        weight_histograms(latest_snapshot(au_run.path))


def test_weight_vs_distance_shows_cacr_direction(snapshot):
    fig = weight_vs_distance(snapshot, n_queries=3)
    assert _names(fig) == ["query 0", "query 1", "query 2"] * 2
    pos, neg = fig.data[0], fig.data[3]
    np.testing.assert_allclose(pos.x, snapshot.pos_d2[0])
    np.testing.assert_allclose(neg.y, snapshot.neg_weights[0] * N, rtol=1e-6)
    # far positives heavier, near negatives heavier
    assert np.corrcoef(pos.x, pos.y)[0, 1] > 0.9
    assert np.corrcoef(neg.x, neg.y)[0, 1] < -0.9
    assert len(weight_vs_distance(snapshot, n_queries=100).data) == 2 * Q
    with pytest.raises(ValueError, match="n_queries"):
        weight_vs_distance(snapshot, n_queries=0)


@pytest.mark.parametrize("builder", [weight_histograms, weight_vs_distance])
def test_infonce_weight_panels_say_that_pi_pos_is_not_recorded(builder, infonce_snapshot):
    """InfoNCE records no pi_pos: its panel says so inside itself, its title names no "None",
    and the note lands on the pi_pos panel, not on the pi_neg one."""
    fig = builder(infonce_snapshot, method="infonce")
    texts = [a.text for a in fig.layout.annotations] + [fig.layout.title.text]
    assert not any("None" in t for t in texts), texts
    (note,) = _notes(fig)
    assert "infonce" in note.text and "no positives" in note.text
    assert _inside(note, fig.layout.xaxis, fig.layout.yaxis)
    assert not _inside(note, fig.layout.xaxis2, fig.layout.yaxis2)
    assert fig.layout.xaxis.visible is False  # no empty axes under the note
    assert {t.xaxis for t in fig.data} == {"x2"} and _panels_without_data_or_message(fig) == []
    assert f"N = {N} negatives" in fig.layout.annotations[1].text


def test_a_snapshot_without_pi_pos_and_no_method_says_only_that(infonce_snapshot):
    (note,) = _notes(weight_histograms(infonce_snapshot))
    assert note.text == "not in this<br>snapshot"


@pytest.mark.parametrize("builder", [weight_histograms, weight_vs_distance])
def test_cacr_weight_panels_name_their_set_sizes(builder, snapshot):
    fig = builder(snapshot)
    titles = [a.text for a in fig.layout.annotations]
    assert titles == [f"K = {K} positives", f"N = {N} negatives"] and not _notes(fig)


def test_theory_log_axis_reads_powers_of_ten():
    """plotly's default SI labels read "1μ, 100μ" on notebook 01's log axes."""
    fig = weights_vs_distance_curves(D2, [5.0], kind="neg", log_y=True)
    assert fig.layout.yaxis.type == "log" and fig.layout.yaxis.exponentformat == "power"
    assert weights_vs_distance_curves(D2, [5.0]).layout.yaxis.exponentformat is None


def test_embedding_scatter_one_trace_per_class(snapshot):
    fig = embedding_scatter(snapshot.embeddings[:, :2], snapshot.labels, ["zero", "one", "two"])
    assert _names(fig) == ["zero", "one", "two"]
    assert [t.marker.color for t in fig.data] == [class_color(c, 3) for c in range(3)]
    assert sum(len(t.x) for t in fig.data) == 60
    with pytest.raises(ValueError, match=r"\(n, 2\)"):
        embedding_scatter(snapshot.embeddings, snapshot.labels)
    with pytest.raises(ValueError, match="class_names"):
        embedding_scatter(snapshot.embeddings[:, :2], snapshot.labels, ["zero"])


@pytest.mark.slow
def test_compute_umap_is_finite_and_deterministic(snapshot):
    xy = compute_umap(snapshot.embeddings, seed=0, n_neighbors=10)
    assert xy.shape == (60, 2) and xy.dtype == np.float32 and np.isfinite(xy).all()
    np.testing.assert_array_equal(xy, compute_umap(snapshot.embeddings, seed=0, n_neighbors=10))


def test_compute_umap_falls_back_to_pca_for_tiny_sets():
    x = np.random.default_rng(0).normal(size=(5, 16))
    xy = compute_umap(x, n_neighbors=15)
    assert xy.shape == (5, 2) and np.isfinite(xy).all()
    assert compute_umap(x[:1]).shape == (1, 2)
    with pytest.raises(ValueError, match="NaN"):
        compute_umap(np.full((3, 4), np.nan))
    with pytest.raises(ValueError, match=r"\(4,\)"):
        compute_umap(np.zeros(4))


# --------------------------------------------------------------------------------------------
# Per-class bars, summaries
# --------------------------------------------------------------------------------------------


def test_per_class_bars_from_runs_with_counts(cacr_run, au_run):
    fig = per_class_bars([cacr_run, au_run], class_names=["a", "b", "c"])
    bars = [t for t in fig.data if isinstance(t, go.Bar)]
    assert [t.name for t in bars] == ["cacr · c1", "au · a1"]
    assert list(bars[0].x) == ["a", "b", "c"] and list(bars[0].y) == [0.2, 0.5, 0.8]
    assert "30 pre-training images" in bars[0].hovertemplate[2]
    (counts,) = [t for t in fig.data if isinstance(t, go.Scatter)]  # one shared profile
    assert list(counts.y) == CLASS_COUNTS and counts.yaxis == "y2"


def test_per_class_bars_from_a_dict():
    fig = per_class_bars({"balanced": [0.9, 0.8], "exp": [0.5, 0.9]}, class_counts=[1, 100])
    assert _names(fig) == ["balanced", "exp", "images per class · balanced, exp"]
    with pytest.raises(ValueError, match="no per-class"):
        per_class_bars({})


def test_per_class_bars_needs_per_class_acc(tmp_path):
    RunWriter(tmp_path / "r", {"method": "cacr"}).close()
    with pytest.raises(ValueError, match="per_class_acc"):
        per_class_bars(load_run(tmp_path / "r"))


def test_compare_rows_and_table(cacr_run, au_run):
    rows = compare_rows([cacr_run, au_run])
    assert rows[0]["method"] == "cacr" and rows[0]["seed"] == 0
    assert rows[0]["knn_acc"] == pytest.approx(0.5) and rows[0]["probe_acc"] == 0.77
    assert rows[0]["state"] == "finished" and rows[0]["step"] == 20
    fig = compare_table([cacr_run, au_run])
    (table,) = fig.data
    assert list(table.header.values) == list(rows[0])
    assert list(table.cells.values[1]) == ["cacr", "au"]


# --------------------------------------------------------------------------------------------
# Theory curves
# --------------------------------------------------------------------------------------------

D2 = np.linspace(0.0, 4.0, 101)


def test_theory_curve_is_flat_at_one_as_tau_goes_to_zero():
    fig = weights_vs_distance_curves(D2, [0.0, 1e-9], kind="neg")
    for trace in fig.data:
        np.testing.assert_allclose(trace.y, 1.0, atol=1e-7)


@pytest.mark.parametrize("kind", ["pos", "neg"])
def test_theory_curves_follow_the_direction_of_cacr(kind):
    fig = weights_vs_distance_curves(D2, [0.5, 2.0, 50.0], kind=kind)
    assert _names(fig) == [f"cacr tau_{kind}={t}" for t in ("0.5", "2", "50")]
    for trace in fig.data:
        y = np.asarray(trace.y)
        assert np.isfinite(y).all() and np.mean(y) == pytest.approx(1.0)  # relative to uniform
        assert np.all(np.diff(y) > 0) if kind == "pos" else np.all(np.diff(y) < 0)


def test_infonce_implicit_weights_equal_cacr_with_tau_one_over_two_t():
    fig = weights_vs_distance_curves(D2, [2.5], kind="neg", infonce_temperature=0.2)
    assert _names(fig) == ["cacr tau_neg=2.5", "infonce T=0.2 (implicit)"]
    np.testing.assert_allclose(fig.data[1].y, fig.data[0].y, rtol=1e-12)


def test_theory_curves_reject_bad_input():
    with pytest.raises(ValueError, match="'both'"):
        weights_vs_distance_curves(D2, [1.0], kind="both")
    with pytest.raises(ValueError, match="d2"):
        weights_vs_distance_curves(np.array([0.0, 5.0]), [1.0])
    with pytest.raises(ValueError, match="-1"):
        weights_vs_distance_curves(D2, [-1.0])
    with pytest.raises(ValueError, match="kind='pos'"):
        weights_vs_distance_curves(D2, [1.0], kind="pos", infonce_temperature=0.5)


# --------------------------------------------------------------------------------------------
# A study's figures (cacr_lab.figures.study)
# --------------------------------------------------------------------------------------------


def test_interval_plot_draws_each_interval_around_its_mean_and_a_zero_line():
    from cacr_lab.figures import interval_plot

    rows = [
        {"label": "infonce · none · probe", "method": "infonce", "mean": 1.5, "lo": 0.5, "hi": 3.0},
        {"label": "debiased · none · probe", "method": "debiased", "mean": -0.2, "lo": None,
         "hi": None},
    ]  # fmt: skip
    fig = interval_plot(rows)
    first, second = fig.data
    assert first.x == (1.5,) and first.y == ("infonce · none · probe",)
    assert first.error_x.array == (1.5,) and first.error_x.arrayminus == (1.0,)
    assert first.marker.color == method_color("infonce")
    assert second.error_x.array == (0.0,)  # no interval (one seed): no bar
    assert any(s.x0 == 0.0 and s.x1 == 0.0 for s in fig.layout.shapes)  # the line at 0
    with pytest.raises(ValueError, match="row 0 has no lo, hi"):
        interval_plot([{"label": "x", "mean": 1.0}])


def test_rare_frequent_bars_one_panel_per_profile_rare_and_frequent_side_by_side():
    from cacr_lab.figures import rare_frequent_bars

    rows = [
        {"profile": p, "method": m, "half": h, "mean": 50.0 + i, "lo": 45.0 + i, "hi": 55.0 + i}
        for i, (p, m, h) in enumerate(
            (p, m, h)
            for p in ("linear", "exponential")
            for m in ("cacr", "infonce")
            for h in ("rare", "frequent")
        )
    ]
    fig = rare_frequent_bars(rows)
    assert [a.text for a in fig.layout.annotations][:2] == ["linear", "exponential"]
    assert [t.name for t in fig.data] == ["rare half", "frequent half"] * 2
    rare_linear = fig.data[0]
    assert rare_linear.x == ("cacr", "infonce") and rare_linear.y == (50.0, 52.0)
    assert rare_linear.error_y.array == (5.0, 5.0)


def test_study_accuracy_bars_one_bar_per_method_and_profile_in_its_colour():
    from cacr_lab.figures import study_accuracy_bars

    rows = [
        {"method": m, "profile": p, "mean": 90.0, "lo": 89.0, "hi": 91.0}
        for m in ("cacr", "infonce")
        for p in ("none", "exponential")
    ]
    fig = study_accuracy_bars(rows)
    assert [t.name for t in fig.data] == ["cacr", "infonce"]
    assert fig.data[0].x == ("none", "exponential")
    assert fig.data[1].marker.color == method_color("infonce")
