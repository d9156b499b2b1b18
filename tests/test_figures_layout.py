"""Figures in a classroom: titles that fit the width a figure is shown at, and output that renders
offline (HTML reports, notebooks exported to HTML).

Text widths are estimated as characters x font size x ``CHAR_EM`` (0.55; Chromium measures
plotly's fonts at 0.43-0.48), against the panel widths at the design widths of
``cacr_lab.figures.style.DESIGN_WIDTHS``: a half column of the page (440 px) and a notebook or
report (800 px).
"""

import re

import numpy as np
import plotly.graph_objects as go
import plotly.io as pio
import pytest
from plotly.offline import get_plotlyjs

from cacr_lab import figures
from cacr_lab.figures.output import NOTEBOOK_RENDERER, PLOTLY_JS
from cacr_lab.figures.style import (
    DESIGN_WIDTHS,
    MARGIN,
    SUBTITLE_SIZE,
    TITLE_SIZE,
    panels,
    text_width,
)
from cacr_lab.runs import RunWriter, latest_snapshot, load_run

K, N = 4, 127
# A script fetched from the network: <script src="https://..."> or plotly's import "https://...".
CDN = re.compile(r"""(\bsrc=|\bimport\s*)["']https?://""", re.I)


def _write(path, method, *, pos=True, steps=12):
    """A run as the trainer writes one: train records with the method's parts, eval records with
    weight statistics, a probe at the end, one snapshot."""
    rng = np.random.default_rng(0)
    with RunWriter(path, {"method": method, "dataset": "digits"}) as w:
        for step in range(1, steps + 1):
            w.log({"kind": "train", "epoch": 0, "step": step, "loss": 1.0 / step,
                   "attraction": 0.5, "repulsion": -0.4})  # fmt: skip
            if step % 4 == 0:
                stats = {"neg_ess_frac": 0.9, "neg_ess": 0.9 * N, "neg_max_weight": 0.02}
                if pos:
                    stats.update(pos_ess_frac=0.99, pos_ess=0.99 * K, pos_max_weight=0.26)
                w.log({"kind": "eval", "epoch": 0, "step": step, "knn_acc": 0.8,
                       "alignment": 0.5, "uniformity": -1.5, **stats})  # fmt: skip
        w.log({"kind": "eval", "epoch": 0, "step": steps, "knn_acc": 0.8, "probe_acc": 0.9,
               "per_class_acc": [0.9] * 10})  # fmt: skip
        arrays = {
            "neg_weights": np.full((8, N), 1 / N),
            "neg_d2": rng.uniform(0, 4, (8, N)),
        }
        if pos:
            arrays.update(pos_weights=np.full((8, K), 1 / K), pos_d2=rng.uniform(0, 1, (8, K)))
        w.snapshot(steps, 0, rng.normal(size=(30, 8)), np.arange(30) % 10, **arrays)
    return load_run(path)


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    return [
        _write(root / "cacr-digits-seed0", "cacr"),
        _write(root / "infonce-digits-seed0", "infonce", pos=False),
    ]


# --------------------------------------------------------------------------------------------
# Titles that fit
# --------------------------------------------------------------------------------------------


def _overflows(fig: go.Figure, width: int) -> list[str]:
    """Titles that do not fit at a figure ``width`` px: the figure's title wider than the
    figure, or a subplot or x-axis title wider than its panel plus half the gap to each
    neighbour in its row (then it runs into the neighbour's title: "...per querypi_neg")."""
    plot = width - MARGIN["l"] - MARGIN["r"]
    found = []
    if text_width(fig.layout.title.text, TITLE_SIZE) > 0.95 * width:  # the title starts at 5 %
        found.append(f"figure title {fig.layout.title.text!r}")
    rows: dict[tuple, list] = {}
    for xref, xdomain, ydomain in panels(fig):
        rows.setdefault(ydomain, []).append((xdomain, xref))
    for row in rows.values():
        row.sort()
        for i, ((x0, x1), xref) in enumerate(row):
            left = (x0 - row[i - 1][0][1]) / 2 if i > 0 else 0.0
            right = (row[i + 1][0][0] - x1) / 2 if i + 1 < len(row) else 0.0
            room = (x1 - x0 + left + right) * plot
            titles = [
                a.text
                for a in fig.layout.annotations
                if a.name != "note" and a.yanchor == "bottom" and x0 <= a.x <= x1
            ]
            xaxis = fig.layout["xaxis" + xref[1:]]
            if xaxis.title.text and xaxis.visible is not False:
                titles.append(xaxis.title.text)
            found += [
                f"{t!r}: {text_width(t, SUBTITLE_SIZE):.0f} px in {room:.0f} px"
                for t in titles
                if text_width(t, SUBTITLE_SIZE) > room
            ]
    return found


def test_width_estimate_is_text_length_times_font_size():
    assert text_width("abcd", 10) == pytest.approx(22.0)
    assert text_width("ab<br>abcdef", 10) == text_width("abcdef", 10)
    assert text_width("x<br><sup>abcdef</sup>", 10) == pytest.approx(0.7 * 33.0)


def test_a_title_that_does_not_fit_is_found(tmp_path):
    """The check itself: the titles of the old histogram ran together at half width."""
    fig = figures.weight_histograms(latest_snapshot(_write(tmp_path / "r", "cacr").path))
    assert _overflows(fig, DESIGN_WIDTHS["half"]) == []
    fig.layout.annotations[0].text = "pi_pos (K = None positives per query)"
    assert len(_overflows(fig, DESIGN_WIDTHS["half"])) == 1


def test_half_width_charts_fit_a_half_column(two_runs):
    half = DESIGN_WIDTHS["half"]
    for run in two_runs:
        snap = latest_snapshot(run.path)
        for fig in (
            figures.weight_histograms(snap, method=run.method),
            figures.weight_vs_distance(snap, method=run.method),
            figures.loss_curves(run),
        ):
            assert _overflows(fig, half) == [], fig.layout.title.text


def test_full_width_charts_fit_a_notebook(two_runs):
    """Notebook 02's evaluation subplot titles ran together; the compare tab's too."""
    full = DESIGN_WIDTHS["full"]
    snap = latest_snapshot(two_runs[0].path)
    xy = snap.embeddings[:, :2]
    for fig in (
        figures.eval_curves(two_runs),
        figures.weight_stats_over_time(two_runs),
        figures.loss_curves(two_runs),
        figures.embedding_panels(
            {"cacr, step 12": (xy, snap.labels), "infonce": (xy, snap.labels)}
        ),
    ):
        assert _overflows(fig, full) == [], fig.layout.title.text


def test_legends_sit_under_the_plot(two_runs):
    """A legend beside a half-width chart took ~40 % of its width."""
    legend = figures.loss_curves(two_runs).layout.legend
    assert legend.orientation == "h" and legend.yref == "container" and legend.yanchor == "bottom"


# --------------------------------------------------------------------------------------------
# One figure for maps side by side
# --------------------------------------------------------------------------------------------


def test_embedding_panels_share_one_legend_per_class(two_runs):
    snap = latest_snapshot(two_runs[0].path)
    xy, labels = snap.embeddings[:, :2], snap.labels
    fig = figures.embedding_panels(
        {"cacr": (xy, labels), "infonce": (-xy, labels)}, axis_name="PCA"
    )
    assert [a.text for a in fig.layout.annotations] == ["cacr", "infonce"]
    assert {t.xaxis for t in fig.data} == {"x", "x2"}
    shown = [t.name for t in fig.data if t.showlegend is not False]
    assert shown == [str(c) for c in range(10)]  # one legend entry per class ...
    by_class = {}
    for t in fig.data:
        by_class.setdefault(t.name, set()).add((t.legendgroup, t.marker.color))
    assert all(len(v) == 1 for v in by_class.values())  # ... toggling it in both panels
    assert fig.layout.yaxis.scaleanchor == "x" and fig.layout.yaxis2.scaleanchor == "x2"
    with pytest.raises(ValueError, match="no maps"):
        figures.embedding_panels({})
    with pytest.raises(ValueError, match=r"\(n, 2\)"):
        figures.embedding_panels({"a": (snap.embeddings, labels)})


# --------------------------------------------------------------------------------------------
# Offline output
# --------------------------------------------------------------------------------------------


def test_write_html_puts_plotly_js_beside_the_page(tmp_path, two_runs):
    page = figures.write_html(figures.loss_curves(two_runs), tmp_path / "loss.html")
    html = page.read_text(encoding="utf-8")
    assert not CDN.search(html) and "cdn.plot.ly" not in html
    assert f'src="{PLOTLY_JS}"' in html
    assert (tmp_path / PLOTLY_JS).read_text(encoding="utf-8") == get_plotlyjs()
    # a second page reuses the file; a stale copy is replaced
    (tmp_path / PLOTLY_JS).write_text("stale", encoding="utf-8")
    figures.write_html(figures.eval_curves(two_runs), tmp_path / "eval.html")
    assert (tmp_path / PLOTLY_JS).read_text(encoding="utf-8") == get_plotlyjs()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["eval.html", "loss.html", PLOTLY_JS]


def test_write_html_inline_is_one_self_contained_file(tmp_path, two_runs):
    page = figures.write_html(figures.eval_curves(two_runs), tmp_path / "a" / "e.html", inline=True)
    html = page.read_text(encoding="utf-8")
    assert not CDN.search(html) and get_plotlyjs()[:2000] in html
    assert [p.name for p in page.parent.iterdir()] == ["e.html"]
    with pytest.raises(ValueError, match=r"\.html"):
        figures.write_html(go.Figure(), tmp_path / "e.png")
    with pytest.raises(ValueError, match="plotly Figure"):
        figures.write_html({"data": []}, tmp_path / "e.html")


def test_compare_writes_html_that_renders_offline(tmp_path, monkeypatch):
    """``cacr-lab compare``'s figures loaded plotly.js from a CDN: blank offline."""
    import cacr_lab.train
    from cacr_lab.experiments import compare

    def fake_train(config, run_dir, **kw):  # a run folder as the trainer writes it, instantly
        _write(run_dir, config.method, pos=config.method == "cacr")
        return run_dir

    monkeypatch.setattr(cacr_lab.train, "train", fake_train)
    out = compare(["cacr", "infonce"], seeds=1, out=tmp_path / "cmp",
                  base_config={"dataset": "digits"}, progress=False)  # fmt: skip
    pages = sorted(out.glob("*.html"))
    assert [p.name for p in pages] == [
        "eval_curves.html", "loss_curves.html", "per_class.html", "weight_stats.html"
    ]  # fmt: skip
    for page in pages:
        html = page.read_text(encoding="utf-8")
        assert not CDN.search(html) and f'src="{PLOTLY_JS}"' in html, page.name
    assert (out / PLOTLY_JS).stat().st_size > 1_000_000


def test_setup_notebook_stores_html_and_the_plotly_mimetype_without_a_cdn(monkeypatch):
    monkeypatch.setattr(pio.renderers, "default", pio.renderers.default)  # restored afterwards
    assert figures.setup_notebook() == f"plotly_mimetype+{NOTEBOOK_RENDERER}"
    assert figures.setup_notebook() == pio.renderers.default  # idempotent
    fig = figures.weights_vs_distance_curves(np.linspace(0, 4, 5), [1.0])
    bundle = pio.renderers[NOTEBOOK_RENDERER].to_mimebundle(fig.to_dict())
    html = bundle["text/html"]
    assert "Plotly.newPlot" in html and 'class="plotly-graph-div"' in html
    assert not CDN.search(html) and "cdn" not in html.lower()
    assert "application/vnd.plotly.v1+json" in pio.renderers["plotly_mimetype"].to_mimebundle(
        fig.to_dict()
    )
