"""The toy geometry of notebook 01: its forces are the losses' forces, its identities hold, and
the theory figures draw what they say they draw."""

from __future__ import annotations

import numpy as np
import plotly.graph_objects as go
import pytest
import torch
import torch.nn.functional as F

from cacr_lab.evaluate import weight_stats
from cacr_lab.figures import force_field, metric_bars, query_force_figure, theory_curves
from cacr_lab.losses import cacr_loss
from cacr_lab.theory import (
    ToyQuery,
    closed_form_forces,
    distance_coefficients,
    infonce_relation_gap,
    infonce_without_positive,
    limit_rows,
    loss_forces,
    query_forces,
    tangent,
    toy_query,
    toy_views,
)

WEIGHTINGS = ("full", "without_w1", "without_w2", "none")

# --------------------------------------------------------------------------------------------
# Toy configurations
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dim", [2, 3, 16])
def test_toy_views_are_a_batch_of_unit_vectors(dim):
    z = toy_views(n_images=5, n_views=3, dim=dim, seed=1)
    assert z.shape == (3, 5, dim) and z.dtype == torch.float64
    torch.testing.assert_close(z.norm(dim=-1), torch.ones(3, 5, dtype=torch.float64))
    # The views of one image sit closer to each other than to the other images (small spread).
    d2 = 2 - 2 * torch.einsum("vbd,wcd->vbwc", z, z)
    same = d2[:, torch.arange(5), :, torch.arange(5)].mean()
    assert same < d2.mean()
    torch.testing.assert_close(z, toy_views(n_images=5, n_views=3, dim=dim, seed=1))


def test_toy_query_shapes_and_validation():
    toy = toy_query(n_pos=3, n_neg=7, dim=3, seed=2)
    assert toy.query.shape == (3,) and toy.positives.shape == (3, 3)
    assert toy.negatives.shape == (7, 3)
    for t in (toy.query, toy.positives, toy.negatives):
        torch.testing.assert_close(t.norm(dim=-1), torch.ones_like(t.norm(dim=-1)))
    with pytest.raises(ValueError, match="n_pos"):
        toy_query(n_pos=0)
    with pytest.raises(ValueError, match="pos_spread"):
        toy_query(pos_spread=-1.0)


def test_tangent_removes_the_radial_part():
    x = F.normalize(torch.randn(6, 4, dtype=torch.float64), dim=-1)
    v = torch.randn(6, 4, dtype=torch.float64)
    t = tangent(x, v)
    torch.testing.assert_close((t * x).sum(-1), torch.zeros(6, dtype=torch.float64))
    torch.testing.assert_close(tangent(x, t), t)


# --------------------------------------------------------------------------------------------
# The toy force field matches autograd
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("weight_grad", ["attached", "detached"])
@pytest.mark.parametrize("weighting", WEIGHTINGS)
@pytest.mark.parametrize("dim", [2, 3, 8])
def test_closed_form_batch_forces_match_autograd_through_cacr_loss(dim, weighting, weight_grad):
    z = toy_views(n_images=5, n_views=3, dim=dim, seed=dim)
    opts = dict(tau_pos=1.3, tau_neg=0.7, alpha=1.2, beta=0.8)
    opts.update(weighting=weighting, weight_grad=weight_grad)
    autograd = loss_forces(z, "cacr", **opts)
    closed = closed_form_forces(z, **opts)
    for part in ("loss", "attraction", "repulsion"):
        np.testing.assert_allclose(closed[part], autograd[part], atol=1e-12, rtol=0)
    assert np.abs(autograd["repulsion"]).max() > 1e-3  # not a vacuous comparison


def _query_loss_reference(u: torch.Tensor, n_pos: int, method: str, **kw) -> torch.Tensor:
    """One query's loss from the equations, distances as ||a - b||^2 of normalised vectors.

    ``u`` (1 + K + N, D): query, positives, negatives, *before* L2 normalisation, so that the
    gradient with respect to u is the one an encoder sees.
    """
    z = F.normalize(u, dim=-1)
    x, pos, neg = z[0], z[1 : 1 + n_pos], z[1 + n_pos :]
    d_pos = ((x - pos) ** 2).sum(-1)
    d_neg = ((x - neg) ** 2).sum(-1)
    if method == "infonce":
        t = kw["temperature"]
        s_pos, s_neg = pos @ x / t, neg @ x / t
        terms = [-s + torch.logsumexp(torch.cat([s.view(1), s_neg]), 0) for s in s_pos]
        return torch.stack(terms).mean()
    w_pos = torch.softmax(kw["tau_pos"] * d_pos, 0)
    w_neg = torch.softmax(-kw["tau_neg"] * d_neg, 0)
    if kw["weight_grad"] == "detached":
        w_pos, w_neg = w_pos.detach(), w_neg.detach()
    return kw["alpha"] * (w_pos * d_pos).sum() - kw["beta"] * (w_neg * d_neg).sum()


@pytest.mark.parametrize(
    "method, kw",
    [
        ("cacr", dict(tau_pos=1.0, tau_neg=0.9, alpha=1.0, beta=1.0, weight_grad="attached")),
        ("cacr", dict(tau_pos=3.0, tau_neg=2.0, alpha=0.5, beta=2.0, weight_grad="attached")),
        ("cacr", dict(tau_pos=1.0, tau_neg=4.0, alpha=1.0, beta=1.0, weight_grad="detached")),
        ("infonce", dict(temperature=0.5)),
        ("infonce", dict(temperature=0.1)),
    ],
)
@pytest.mark.parametrize("dim", [2, 3])
def test_query_forces_match_autograd_of_the_equations(method, kw, dim):
    toy = toy_query(n_pos=3, n_neg=9, dim=dim, seed=dim)
    u = torch.cat([toy.query.view(1, -1), toy.positives, toy.negatives]).requires_grad_(True)
    (grad,) = torch.autograd.grad(_query_loss_reference(u, 3, method, **kw), u)
    extra = {"temperature": kw["temperature"]} if method == "infonce" else kw
    f = query_forces(toy, method=method, **extra)
    closed = torch.cat([f.query_force.view(1, -1), f.pos_forces, f.neg_forces])
    torch.testing.assert_close(closed, -grad, atol=1e-12, rtol=0)


def test_query_forces_weights_are_the_losses_weights():
    toy = toy_query(n_pos=4, n_neg=10, seed=3)
    f = query_forces(toy, tau_pos=2.0, tau_neg=3.0)
    torch.testing.assert_close(f.pos_weights, torch.softmax(2.0 * f.pos_d2, 0))
    torch.testing.assert_close(f.neg_weights, torch.softmax(-3.0 * f.neg_d2, 0))
    uniform = query_forces(toy, weighting="none")
    torch.testing.assert_close(uniform.neg_weights, torch.full((10,), 0.1, dtype=torch.float64))
    info = query_forces(toy, method="infonce", temperature=0.5)
    torch.testing.assert_close(info.neg_weights.sum(), torch.tensor(1.0, dtype=torch.float64))
    with pytest.raises(ValueError, match="method"):
        query_forces(toy, method="simclr")
    with pytest.raises(ValueError, match="weighting"):
        query_forces(toy, weighting="half")


def test_detached_weights_push_every_negative_away_attached_pull_far_ones_in():
    """The attached-vs-detached lesson of notebook 01, on one query."""
    x = torch.tensor([1.0, 0.0], dtype=torch.float64)
    angles = torch.linspace(0.3, 3.1, 12, dtype=torch.float64)
    neg = torch.stack([angles.cos(), angles.sin()], 1)
    toy = ToyQuery(x, x.view(1, -1), neg)
    detached = query_forces(toy, tau_neg=3.0, weight_grad="detached")
    attached = query_forces(toy, tau_neg=3.0, weight_grad="attached")
    assert (detached.neg_coef < 0).all()  # c < 0: pushed away from the query
    far = attached.neg_d2 > (attached.neg_weights * attached.neg_d2).sum() + 1 / 3.0
    assert far.any() and (attached.neg_coef[far] > 0).all() and (attached.neg_coef[~far] < 0).all()


def test_distance_coefficients_sum_to_one_and_limits():
    d2 = torch.rand(5, 9, dtype=torch.float64) * 4
    for kind in ("pos", "neg"):
        for tau in (0.5, 2.0):
            c = distance_coefficients(d2, tau, kind, "attached")
            # Shifting every distance by h shifts E by h: the coefficients sum to 1.
            torch.testing.assert_close(c.sum(-1), torch.ones(5, dtype=torch.float64))
    torch.testing.assert_close(
        distance_coefficients(d2, 0.0), torch.full_like(d2, 1 / 9), atol=1e-15, rtol=0
    )
    torch.testing.assert_close(
        distance_coefficients(d2, 2.0, "neg", "detached"), torch.softmax(-2.0 * d2, -1)
    )
    with pytest.raises(ValueError, match="kind"):
        distance_coefficients(d2, 1.0, "both")
    with pytest.raises(ValueError, match="tau"):
        distance_coefficients(d2, -1.0)


@pytest.mark.parametrize("method", ["cacr", "infonce", "align-uniform"])
def test_loss_forces_are_tangent_and_parts_add_up(method):
    z = toy_views(n_images=6, n_views=3, dim=3, seed=4)
    f = loss_forces(z, method)
    parts = [k for k in f if k != "loss"]
    assert len(parts) == 2
    np.testing.assert_allclose(sum(f[p] for p in parts), f["loss"], atol=1e-12)
    np.testing.assert_allclose((f["loss"] * z.numpy()).sum(-1), 0.0, atol=1e-12)
    with pytest.raises(ValueError, match="unknown method"):
        loss_forces(z, "byol")


# --------------------------------------------------------------------------------------------
# REFERENCE.md section 4, as the notebook shows it
# --------------------------------------------------------------------------------------------


def test_infonce_relation_holds_only_detached_without_positive():
    z = toy_views(n_images=8, n_views=2, dim=5, seed=5)
    for t in (0.2, 0.5, 1.0):
        exact = infonce_relation_gap(z, t)
        assert exact["max_abs_diff"] < 1e-12 < 1e-3 < exact["max_abs_grad"]
        for kw in (dict(weight_grad="attached"), dict(keep_positive=True)):
            assert infonce_relation_gap(z, t, **kw)["max_abs_diff"] > 1e-3
    with pytest.raises(ValueError, match="V = 2"):
        infonce_relation_gap(toy_views(n_views=3), 0.5)


def test_infonce_without_positive_matches_a_loop():
    z = toy_views(n_images=4, n_views=3, dim=3, seed=6)
    t = 0.3
    terms = []
    for v in range(3):
        for w in range(v + 1, 3):
            for i in range(4):
                s = [float(z[v, i] @ z[w, j]) / t for j in range(4)]
                rest = [s[j] for j in range(4) if j != i]
                terms.append(-s[i] + np.log(np.sum(np.exp(rest))))
    assert float(infonce_without_positive(z, t)) == pytest.approx(np.mean(terms), abs=1e-12)


def test_limit_rows_reach_uniform_and_one_hot():
    rows = limit_rows(toy_views(n_images=8, n_views=4, dim=3, seed=7), [1e-5, 1.0, 1e4])
    small, _, large = rows
    assert small["pos_max_dev"] < 1e-3 and small["neg_max_dev"] < 1e-3
    assert large["pos_farthest_weight"] > 0.99 and large["neg_nearest_weight"] > 0.99
    assert [r["tau"] for r in rows] == [1e-5, 1.0, 1e4]


def test_random_128d_weights_start_near_uniform():
    """REFERENCE.md section 4: d2 ~ 2.0 +- 0.18 and ESS of pi_neg ~ 97 % of 127 at tau 0.9."""
    z = F.normalize(torch.randn(2, 128, 128, generator=torch.Generator().manual_seed(0)), dim=-1)
    out = cacr_loss(z, tau_pos=1.0, tau_neg=0.9)
    assert out.neg_d2.mean().item() == pytest.approx(2.0, abs=0.02)
    assert out.neg_d2.std().item() == pytest.approx(0.177, abs=0.02)
    assert weight_stats(out.neg_weights, out.neg_d2)["ess_frac"] == pytest.approx(0.97, abs=0.01)


# --------------------------------------------------------------------------------------------
# Theory figures
# --------------------------------------------------------------------------------------------


def test_force_field_draws_points_and_one_arrow_set_per_force():
    z = toy_views(n_images=4, n_views=3, dim=2, seed=8)
    f = loss_forces(z, "cacr")
    pts = z.reshape(-1, 2).numpy()
    forces = {k: f[k].reshape(-1, 2) for k in ("attraction", "repulsion")}
    groups = np.tile(np.arange(4), 3)
    fig = force_field(pts, forces, groups=groups, scale=2.0)
    assert isinstance(fig, go.Figure)
    names = [t.name for t in fig.data]
    assert names == ["unit circle"] + [f"image {g}" for g in range(4)] + [
        "attraction",
        "attraction heads",
        "repulsion",
        "repulsion heads",
    ]
    shafts = fig.data[names.index("repulsion")]
    x = np.array([np.nan if v is None else v for v in shafts.x], dtype=float)
    y = np.array([np.nan if v is None else v for v in shafts.y], dtype=float)
    # Arrow k runs from point k to point k + scale * force k.
    np.testing.assert_allclose(x[0::3], pts[:, 0])
    np.testing.assert_allclose(y[1::3], pts[:, 1] + 2.0 * forces["repulsion"][:, 1])
    assert fig.layout.meta["arrow_scale"] == 2.0
    # Default scale: the longest arrow is 0.35 long.
    auto = force_field(pts, forces)
    longest = max(np.linalg.norm(v, axis=1).max() for v in forces.values())
    assert auto.layout.meta["arrow_scale"] == pytest.approx(0.35 / longest)


def test_force_field_in_3d_and_validation():
    z = toy_views(n_images=3, n_views=2, dim=3, seed=9)
    f = loss_forces(z, "infonce")
    fig = force_field(z.reshape(-1, 3).numpy(), {"loss": f["loss"].reshape(-1, 3)})
    assert [t.type for t in fig.data] == ["scatter3d", "scatter3d", "scatter3d", "cone"]
    assert [t.name for t in fig.data][:3] == ["unit sphere", "image 0", "loss"]
    with pytest.raises(ValueError, match="points"):
        force_field(np.zeros((4, 5)), {})
    with pytest.raises(ValueError, match="force 'x'"):
        force_field(np.eye(2), {"x": np.zeros((3, 2))})
    with pytest.raises(ValueError, match="groups"):
        force_field(np.eye(2), {}, groups=np.array([0.5, 1.0]))


def test_query_force_figure_sizes_markers_by_weight():
    toy = toy_query(n_pos=3, n_neg=6, seed=10)
    f = query_forces(toy, tau_neg=3.0)
    fig = query_force_figure(
        toy.query,
        toy.positives,
        toy.negatives,
        f.pos_weights,
        f.neg_weights,
        f.query_force,
        f.pos_forces,
        f.neg_forces,
    )
    names = [t.name for t in fig.data]
    for name in ("query", "positives", "negatives", "on the query", "on negatives heads"):
        assert name in names
    neg = fig.data[names.index("negatives")]
    nearest = int(np.argmin(f.neg_d2.numpy()))
    assert np.argmax(neg.marker.size) == nearest  # the nearest negative weighs most
    with pytest.raises(ValueError, match="pos_weights"):
        query_force_figure(
            toy.query, toy.positives, toy.negatives, f.neg_weights, f.neg_weights,
            f.query_force, f.pos_forces, f.neg_forces,
        )  # fmt: skip


def test_theory_curves_one_trace_per_curve():
    d2 = np.linspace(0, 4, 50)
    fig = theory_curves(
        d2, {"attached": d2 * 0 + 1, "detached": d2}, hline=0.0, colors={"detached": "#000000"}
    )
    assert [t.name for t in fig.data] == ["attached", "detached"]
    assert fig.data[1].line.color == "#000000"
    with pytest.raises(ValueError, match="shape"):
        theory_curves(d2, {"bad": d2[:3]})


def test_metric_bars_one_trace_per_metric_present():
    rows = [
        {"variant": "full", "knn_acc": 0.9, "probe_acc": 0.97},
        {"variant": "none", "knn_acc": 0.8, "probe_acc": None},
    ]
    fig = metric_bars(rows, label="variant", metrics=("knn_acc", "probe_acc", "absent"))
    assert [t.name for t in fig.data] == ["knn_acc", "probe_acc"]
    assert list(fig.data[0].x) == ["full", "none"] and list(fig.data[1].x) == ["full"]
    with pytest.raises(ValueError, match="no rows"):
        metric_bars([])
    with pytest.raises(ValueError, match="'run'"):
        metric_bars(rows)
