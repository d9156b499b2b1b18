"""Figures: each builder draws what a run directory holds, named as the run's config names it."""

import numpy as np
import plotly.graph_objects as go
import pytest

from cacr_lab.figures import (
    METHOD_COLORS,
    class_color,
    compare_rows,
    compare_table,
    compute_umap,
    embedding_scatter,
    eval_curves,
    loss_curves,
    method_color,
    per_class_bars,
    weight_histograms,
    weight_stats_over_time,
    weight_vs_distance,
    weights_vs_distance_curves,
)
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


def _write_run(path, method, parts, rng, with_weights):
    config = {"method": method, "dataset": "digits", "seed": 0, "epochs": 2}
    with RunWriter(path, config, class_counts=CLASS_COUNTS) as w:
        for step in range(1, 21):
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
                        "pos_ess_frac": 0.9,
                        "neg_ess_frac": 1.0 - step / 100,
                        "neg_entropy_norm": 0.99,
                        "neg_wd_corr": -0.8,
                    }
                )
        w.log({"kind": "eval", "epoch": 2, "step": 20, "probe_acc": 0.77})
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
        w.snapshot(20, 2, _unit(rng, 60), np.arange(60) % 3, **arrays)
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
def snapshot(cacr_run):
    return latest_snapshot(cacr_run.path)


def _names(fig):
    return [t.name for t in fig.data]


# --------------------------------------------------------------------------------------------
# Curves
# --------------------------------------------------------------------------------------------


def test_loss_curves_one_run_draws_loss_and_its_parts(cacr_run):
    fig = loss_curves(cacr_run)
    assert isinstance(fig, go.Figure)
    assert _names(fig) == ["cacr · c1 · loss", "cacr · c1 · attraction", "cacr · c1 · repulsion"]
    assert [t.line.dash for t in fig.data] == ["solid", "dash", "dot"]
    assert all(t.line.color == method_color("cacr") for t in fig.data)
    np.testing.assert_array_equal(fig.data[0].x, np.arange(1, 21))
    assert fig.layout.title.text and fig.layout.xaxis.title.text == "step"


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


def test_two_runs_of_one_method_get_distinct_shades(cacr_run):
    fig = loss_curves([cacr_run, cacr_run])
    assert fig.data[0].line.color != fig.data[3].line.color


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


def test_weight_stats_over_time(cacr_run):
    fig = weight_stats_over_time(cacr_run)
    # pos: ess_frac only; neg: ess_frac, entropy_norm, wd_corr
    assert _names(fig) == ["cacr · c1 · pi_pos"] + ["cacr · c1 · pi_neg"] * 3
    assert [t.showlegend for t in fig.data] == [True, True, False, False]
    np.testing.assert_allclose(fig.data[1].y, [0.95, 0.9, 0.85, 0.8])


def test_curves_reject_bad_input(cacr_run):
    for builder in (loss_curves, eval_curves, weight_stats_over_time, compare_rows):
        with pytest.raises(ValueError, match="no runs"):
            builder([])
        with pytest.raises(ValueError, match="str"):
            builder("runs/c1")


def test_a_run_without_records_gives_an_annotated_empty_figure(tmp_path):
    RunWriter(tmp_path / "empty", {"method": "cacr"}).close()
    fig = loss_curves(load_run(tmp_path / "empty"))
    assert len(fig.data) == 0 and "nothing recorded" in fig.layout.annotations[0].text


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
