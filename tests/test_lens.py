"""Who is who in a snapshot, the false-negative share, and the "query under the lens" panel.

- the measure: a direct loop count on constructed batches, the uniform baseline's formula, and
  the column layout of every loss checked against distances computed from the embeddings;
- the snapshot format: old (version 1) files load, new arrays have the documented shapes and
  point at the right images of the held-out split, training is unchanged by the recording;
- the figure: the thumbnails are exactly the recorded negatives in weight order;
- the page: the panel for a run, a message for an old snapshot.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from streamlit.testing.v1 import AppTest

from cacr_lab import figures
from cacr_lab.data import center_view, load_dataset
from cacr_lab.losses import LOSSES, LossOutput
from cacr_lab.runs import (
    LENS_ARRAYS,
    SNAPSHOT_VERSION,
    RunWriter,
    Snapshot,
    latest_snapshot,
    list_snapshots,
    load_run,
    load_snapshot,
)
from cacr_lab.train import TrainConfig, lens, train

APP = str(Path(__file__).resolve().parents[1] / "app" / "main.py")
TINY = dict(
    dataset="digits",
    epochs=1,
    max_steps=3,
    batch_size=32,
    positives=2,
    log_every=1,
    snapshot_size=64,
    snapshot_queries=40,  # > B: rows past the first view pair wrap round the batch
    knn_k=10,
)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("runs")
    return train(TrainConfig(**TINY), root / "cacr-lens", progress=False)


# --------------------------------------------------------------------------------------------
# The measure
# --------------------------------------------------------------------------------------------


def _loop_share(weights: torch.Tensor, labels: list[int]) -> float:
    """The definition, as a loop over (pair, query, negative): CACR's (P, B, B-1) layout, query
    i's column c is image c if c < i else c + 1."""
    P, B, _ = weights.shape
    total = 0.0
    for p in range(P):
        for i in range(B):
            others = [j for j in range(B) if j != i]
            for c, j in enumerate(others):
                if labels[j] == labels[i]:
                    total += float(weights[p, i, c])
    return total / (P * B)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_false_negative_share_equals_a_loop_count(seed):
    g = torch.Generator().manual_seed(seed)
    labels = [0, 0, 0, 1, 1, 2, 3, 3]  # B = 8: classes of 3, 2, 1, 2 images
    B = len(labels)
    weights = torch.softmax(torch.randn(3, B, B - 1, generator=g) * 2, dim=-1)
    out = LossOutput(loss=torch.zeros(()), neg_weights=weights, neg_d2=torch.rand(3, B, B - 1))
    probe = _probe(labels)
    record = lens.fn_share_record(out, probe, 0.5)
    assert record["fn_share"] == pytest.approx(_loop_share(weights, labels), abs=1e-6)
    implicit = torch.softmax(-out.neg_d2 / (2 * 0.5), dim=-1)
    assert record["fn_share_infonce"] == pytest.approx(_loop_share(implicit, labels), abs=1e-6)


def test_a_constructed_query_puts_its_weight_where_the_labels_say():
    # query 0 (class 0) among images of classes [0, 0, 1, 0]: its negatives are images 1, 2, 3
    w = torch.tensor([[0.5, 0.3, 0.2]])
    labels = torch.tensor([0, 0, 1, 0])
    pos = lens.negative_positions(1, 3, 4)
    assert pos.tolist() == [[1, 2, 3]]
    share = lens.false_negative_shares(w, labels[pos], labels[:1])
    assert float(share) == pytest.approx(0.5 + 0.2)


def test_uniform_baseline_is_n_c_minus_one_over_b_minus_one():
    labels = torch.tensor([0, 0, 0, 1, 1, 2, 3, 3])
    B = 8
    # per image: class 0 -> 2/7 (three images), class 1 -> 1/7, class 2 -> 0, class 3 -> 1/7
    expected = (3 * 2 / 7 + 2 * 1 / 7 + 0 + 2 * 1 / 7) / B
    assert lens.uniform_share(labels) == pytest.approx(expected)
    # ... which is what uniform weights give through the measure
    uniform = torch.full((2, B, B - 1), 1 / (B - 1))
    out = LossOutput(loss=torch.zeros(()), neg_weights=uniform, neg_d2=torch.ones(2, B, B - 1))
    record = lens.fn_share_record(out, _probe(labels.tolist()), 0.5)
    assert record["fn_share"] == pytest.approx(expected)
    assert record["fn_share_uniform"] == pytest.approx(expected)
    assert record["fn_share_infonce"] == pytest.approx(expected)  # equal d²: uniform too


def test_a_layout_that_is_no_multiple_of_b_minus_one_is_refused():
    with pytest.raises(ValueError, match="no multiple of B - 1 = 7"):
        lens.negative_positions(4, 10, 8)


@pytest.mark.parametrize(
    "method, options",
    [
        ("cacr", {}),
        ("cacr", {"symmetric": True}),
        ("infonce", {}),
        ("infonce", {"multiview": "cmc"}),
        ("hard-negative", {}),
        ("moco", {}),
    ],
)
def test_every_loss_layout_is_read_with_the_right_negatives(method, options):
    """Each image's V views share one embedding, so the d² the loss records for row r, column c
    must be the distance between image r mod B and the image `negative_positions` names."""
    B, V = 6, 3
    e = F.normalize(torch.randn(B, 8, generator=torch.Generator().manual_seed(0)), dim=-1)
    z = e.unsqueeze(0).expand(V, B, 8).contiguous()
    extra = {"keys": z[:2]} if method == "moco" else {}
    out = LOSSES[method](z, **options, **extra)
    d2 = lens.query_rows(out.neg_d2)
    pos = lens.negative_positions(d2.shape[0], d2.shape[1], B)
    rows = torch.arange(d2.shape[0]) % B
    expected = ((e[rows].unsqueeze(1) - e[pos]) ** 2).sum(-1)
    torch.testing.assert_close(d2, expected, atol=1e-5, rtol=0)
    assert not (pos == rows.unsqueeze(1)).any()  # never the query's own image


def _probe(labels: list[int]):
    from types import SimpleNamespace

    B = len(labels)
    return SimpleNamespace(
        views=torch.zeros(2, B, 1, 2, 2),
        snap_labels=torch.tensor(labels),
        snap_images=torch.zeros(B, 1, 2, 2, dtype=torch.uint8),
        index=torch.arange(B),
    )


# --------------------------------------------------------------------------------------------
# The snapshot format
# --------------------------------------------------------------------------------------------


def _old_snapshot(path: Path, rng: np.random.Generator) -> None:
    """A snapshot as cacr_lab wrote it before version 2: no version, no lens arrays."""
    w = rng.random((4, 7)).astype(np.float32)
    np.savez(
        path,
        embeddings=rng.standard_normal((10, 3)).astype(np.float32),
        labels=np.arange(10) % 3,
        step=np.int64(5),
        epoch=np.int64(1),
        neg_weights=w / w.sum(1, keepdims=True),
        neg_d2=rng.random((4, 7)).astype(np.float32),
    )


def test_an_old_snapshot_loads_without_the_new_arrays(tmp_path):
    path = tmp_path / "snap_00000005.npz"
    _old_snapshot(path, np.random.default_rng(0))
    snap = load_snapshot(path)
    assert snap.version == 1 and snap.step == 5 and snap.neg_weights.shape == (4, 7)
    assert all(getattr(snap, name) is None for name in LENS_ARRAYS)
    assert not snap.has_lens and figures.lens_queries(snap) == 0
    with pytest.raises(ValueError, match="does not say who its queries' negatives are"):
        figures.query_lens(snap, 0)


def test_the_writer_checks_the_new_arrays(tmp_path):
    with RunWriter(tmp_path / "r", {"method": "cacr"}) as w:
        base = dict(neg_weights=np.full((2, 3), 1 / 3), neg_d2=np.ones((2, 3)))
        with pytest.raises(ValueError, match="neg_index .* and neg_weights differ in shape"):
            w.snapshot(0, 0, np.eye(3), [0, 1, 2], **base, neg_index=np.zeros((2, 4)))
        with pytest.raises(ValueError, match="disagree on the number of queries"):
            w.snapshot(0, 0, np.eye(3), [0, 1, 2], **base, query_index=np.zeros(5))
        with pytest.raises(ValueError, match="images .* and image_index .* come together"):
            w.snapshot(0, 0, np.eye(3), [0, 1, 2], images=np.zeros((2, 1, 4, 4)))
        path = w.snapshot(0, 0, np.eye(3), [0, 1, 2], **base)
    assert load_snapshot(path).version == SNAPSHOT_VERSION


def test_a_training_run_records_who_is_who(tiny_run):
    splits = load_dataset("digits")
    test = splits.test
    snap = latest_snapshot(tiny_run)
    B, K, Q = TINY["batch_size"], TINY["positives"], TINY["snapshot_queries"]
    N = B - 1  # CACR's reference pairing
    assert snap.version == SNAPSHOT_VERSION
    shapes = {
        "query_index": (Q,),
        "query_labels": (Q,),
        "pos_index": (Q, K),
        "pos_labels": (Q, K),
        "neg_index": (Q, N),
        "neg_labels": (Q, N),
        "infonce_weights": (Q, N),
        "images": (B, 1, 16, 16),
        "image_index": (B,),
        "query_views": (16, K + 1, 1, 16, 16),
    }
    assert {k: getattr(snap, k).shape for k in shapes} == shapes
    assert snap.images.dtype == np.uint8 and snap.query_views.dtype == np.uint8
    assert snap.infonce_temperature == 0.5
    np.testing.assert_allclose(snap.infonce_weights.sum(1), 1.0, atol=1e-5)
    # the indices point into the test split: its labels, and its pixels after the eval resize
    np.testing.assert_array_equal(snap.query_labels, test.labels[snap.query_index].numpy())
    np.testing.assert_array_equal(snap.neg_labels, test.labels[snap.neg_index].numpy())
    assert (snap.pos_index == snap.query_index[:, None]).all()
    resized = center_view(test.images[torch.as_tensor(snap.image_index).long()], 16).numpy()
    np.testing.assert_array_equal(snap.images, resized)
    row = {int(i): k for k, i in enumerate(snap.image_index)}
    for q in range(Q):
        expected = center_view(test.images[int(snap.query_index[q])], 16).numpy()
        np.testing.assert_array_equal(snap.images[row[int(snap.query_index[q])]], expected)
        assert int(snap.query_index[q]) not in snap.neg_index[q, : B - 1].tolist()
    # query q is image q mod B: rows past B (the next view pair) repeat the batch
    np.testing.assert_array_equal(snap.query_index[B:], snap.query_index[: Q - B])
    # the views are pixels of the augmented query image: close to it on average, not equal
    first = snap.images[row[int(snap.query_index[0])]].astype(float)
    assert np.abs(snap.query_views[0, 0].astype(float) - first).mean() < 60
    evals = load_run(tiny_run).eval_records()
    for rec in evals:
        assert 0.0 <= rec["fn_share_uniform"] <= 1.0
        assert {"fn_share", "fn_share_infonce"} <= set(rec)
    labels = test.labels[torch.as_tensor(snap.image_index).long()]
    assert evals[-1]["fn_share_uniform"] == pytest.approx(lens.uniform_share(labels))


def test_the_recording_leaves_training_bit_identical(tiny_run, tmp_path, monkeypatch):
    """The same run without the lens arrays and shares: the same losses and weights."""
    monkeypatch.setattr(lens, "fn_share_record", lambda out, probe, t: {})
    monkeypatch.setattr(
        lens,
        "snapshot_arrays",
        lambda out, probe, q, t, splits: {
            k: lens.query_rows(getattr(out, k))[:q].float()
            for k in ("pos_weights", "pos_d2", "neg_weights", "neg_d2")
        },
    )
    bare = train(TrainConfig(**TINY), tmp_path / "bare", progress=False)
    losses = [r["loss"] for r in load_run(bare).train_records()]
    assert losses == [r["loss"] for r in load_run(tiny_run).train_records()]
    a = torch.load(bare / "checkpoints" / "last.pt", weights_only=False)["model"]
    b = torch.load(tiny_run / "checkpoints" / "last.pt", weights_only=False)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    old = load_snapshot(list_snapshots(bare)[-1])
    new = load_snapshot(list_snapshots(tiny_run)[-1])
    np.testing.assert_array_equal(old.neg_weights, new.neg_weights)


# --------------------------------------------------------------------------------------------
# The figures
# --------------------------------------------------------------------------------------------


def _constructed_snapshot() -> Snapshot:
    """Q = 2 queries over B = 6 images with known weights (ties included)."""
    B, N = 6, 5
    images = np.stack([np.full((1, 4, 4), 40 * i, dtype=np.uint8) for i in range(B)])
    index = np.array([10, 11, 12, 13, 14, 15], dtype=np.int32)
    labels = np.array([0, 1, 0, 1, 2, 0], dtype=np.int32)
    rows = np.arange(2)
    pos = lens.negative_positions(2, N, B).numpy()
    w = np.array([[0.1, 0.4, 0.1, 0.3, 0.1], [0.05, 0.05, 0.6, 0.2, 0.1]], dtype=np.float32)
    return Snapshot(
        step=7,
        epoch=1,
        embeddings=np.zeros((B, 2), np.float32),
        labels=labels,
        pos_weights=np.array([[0.5, 0.5], [0.3, 0.7]], np.float32),
        pos_d2=np.array([[0.1, 0.2], [0.3, 0.4]], np.float32),
        neg_weights=w,
        neg_d2=np.linspace(0.5, 3.0, 10, dtype=np.float32).reshape(2, 5),
        version=2,
        query_index=index[rows],
        query_labels=labels[rows],
        pos_index=np.repeat(index[rows, None], 2, 1),
        pos_labels=np.repeat(labels[rows, None], 2, 1),
        neg_index=index[pos],
        neg_labels=labels[pos],
        infonce_weights=np.full((2, N), 0.2, np.float32),
        infonce_temperature=0.5,
        images=images,
        image_index=index,
        query_views=np.zeros((2, 3, 1, 4, 4), np.uint8),
    )


def _shown(fig, row: str) -> list[dict]:
    return sorted(
        (t.meta for t in fig.data if (t.meta or {}).get("row") == row), key=lambda m: m["rank"]
    )


@pytest.mark.parametrize("query", [0, 1])
def test_the_thumbnails_are_the_recorded_negatives_in_weight_order(query):
    snap = _constructed_snapshot()
    fig = figures.query_lens(snap, query, n_negatives=3)
    w = snap.neg_weights[query]
    high, low = _shown(fig, "highest"), _shown(fig, "lowest")
    assert [m["weight"] for m in high] == pytest.approx(sorted(w, reverse=True)[:3])
    assert [m["weight"] for m in low] == pytest.approx(sorted(w)[:3])
    for m in high + low:  # each thumbnail is the recorded negative of its column, drawn as such
        assert m["index"] == snap.neg_index[query, m["column"]]
        assert m["label"] == snap.neg_labels[query, m["column"]]
        assert m["d2"] == pytest.approx(snap.neg_d2[query, m["column"]])
    pixels = {
        t.meta["index"]: np.asarray(t.z)[..., 0]
        for t in fig.data
        if (t.meta or {}).get("row") == "highest"
    }
    for index, z in pixels.items():
        np.testing.assert_array_equal(z, snap.images[list(snap.image_index).index(index), 0])
    # the query, its view and its K = 2 positives; pi_pos carried along
    query_row = _shown(fig, "query")
    assert [m["index"] for m in query_row] == [snap.query_index[query]] * 4
    assert [m.get("weight") for m in query_row[2:]] == pytest.approx(snap.pos_weights[query])
    # ties keep the column order: query 0's three 0.1 weights are its lowest, columns 0, 2, 4
    if query == 0:
        assert [m["column"] for m in low] == [0, 2, 4]


def test_the_lens_title_gives_the_queries_false_negative_shares():
    snap = _constructed_snapshot()
    fig = figures.query_lens(snap, 0)
    # query 0 (class 0): negatives are images 1..5 of classes 1, 0, 1, 2, 0 -> columns 1 and 4
    assert "own class: 50% of π⁻" in fig.layout.title.text  # 0.4 + 0.1
    assert "40% under InfoNCE" in fig.layout.title.text and "40% uniform" in fig.layout.title.text
    with pytest.raises(ValueError, match=r"query must be an int in \[0, 2\), got 2"):
        figures.query_lens(snap, 2)


def test_false_negative_curves_draw_the_three_shares(tiny_run):
    fig = figures.false_negative_curves(load_run(tiny_run))
    names = [t.name for t in fig.data]
    assert names == [
        "cacr · cacr-lens · its own weights",
        "cacr · cacr-lens · InfoNCE's implicit weights",
        "cacr · cacr-lens · uniform weights",
    ]
    assert [len(t.x) for t in fig.data] == [len(load_run(tiny_run).eval_records())] * 3


# --------------------------------------------------------------------------------------------
# The page
# --------------------------------------------------------------------------------------------


def _charts(at) -> dict[str, dict]:
    specs = [json.loads(c.proto.spec) for c in at.get("plotly_chart")]
    return {s["layout"]["title"]["text"]: s for s in specs}


def test_the_page_shows_the_lens_and_a_message_for_an_old_snapshot(tiny_run, tmp_path, monkeypatch):
    root = tmp_path / "runs"
    shutil.copytree(tiny_run, root / "cacr-lens")
    old = shutil.copytree(tiny_run, root / "cacr-old")
    for path in list_snapshots(old):  # rewritten the old way: no version, no lens arrays
        with np.load(path) as npz:
            kept = {k: npz[k] for k in npz.files if k not in LENS_ARRAYS and k != "version"}
        np.savez(path, **kept)
    monkeypatch.setenv("CACR_LAB_RUNS", str(root))
    at = AppTest.from_file(APP, default_timeout=240)
    at.session_state["watch"] = "cacr-lens"
    at.run()
    assert not at.exception
    titles = list(_charts(at))
    assert any(t.startswith("Query 0 under the lens · step 3") for t in titles), titles
    assert any(t.startswith("False negatives") for t in titles)
    at.selectbox(key="lens_query_cacr-lens").select(5).run()
    assert any(t.startswith("Query 5 under the lens") for t in _charts(at))
    at.selectbox(key="watch").select("cacr-old").run()
    assert not at.exception
    assert "does not say who its queries' negatives are" in "\n".join(i.value for i in at.info)
    assert not any("under the lens" in t for t in _charts(at))
    # Compare: both runs' false-negative shares, the lens of one, the message for the other
    at.multiselect(key="compare").select("cacr-lens").select("cacr-old").run()
    assert not at.exception
    fn = [t for t in _charts(at) if t.startswith("False negatives")]
    assert fn
