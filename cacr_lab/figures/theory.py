"""Figures for the theory's data (:mod:`cacr_lab.theory`, notebook 01): forces and plain curves.

:func:`force_field` draws points on the unit circle (D = 2) or sphere (D = 3) with one set of
force arrows per named force (e.g. ``cacr_lab.theory.loss_forces``); :func:`query_force_figure`
is one query's anatomy (its positives and negatives sized by weight, with the forces on each);
:func:`theory_curves` draws plain lines y(x), e.g. gradient coefficients against d². This module
only draws: the numbers come from :mod:`cacr_lab.theory`.
"""

from collections.abc import Mapping, Sequence

import numpy as np
import plotly.colors as pc
import plotly.graph_objects as go

from cacr_lab.figures.style import _D2_AXIS, _finish, class_color

# Arrow colours of the force pictures: one per force name, the attraction green and the
# repulsion red as in the loss curves' legend; unknown names get the D3 palette.
FORCE_COLORS = {
    "loss": "#333333",
    "attraction": "#2CA02C",
    "repulsion": "#D62728",
    "on the query": "#333333",
    "on positives": "#2CA02C",
    "on negatives": "#D62728",
}


def _arrow_color(name: str, i: int, colors: Mapping[str, str] | None) -> str:
    if colors and name in colors:
        return colors[name]
    return FORCE_COLORS.get(name, pc.qualitative.D3[i % 10])


def force_field(
    points: np.ndarray,
    forces: Mapping[str, np.ndarray],
    *,
    groups: np.ndarray | None = None,
    group_names: Sequence[str] | None = None,
    group_colors: Sequence[str] | None = None,
    sizes: np.ndarray | None = None,
    scale: float | None = None,
    force_colors: Mapping[str, str] | None = None,
    title: str = "Forces on the sphere",
) -> go.Figure:
    """Points on the unit circle (D = 2) or sphere (D = 3) with one set of force arrows per entry.

    Args:
        points: (n, D) unit vectors, D in {2, 3} (a toy batch (V, B, D) reshaped to (V B, D)).
        forces: name -> (n, D) force on each point (e.g. ``cacr_lab.theory.loss_forces``); an
            arrow goes from the point to ``point + scale * force``; zero forces draw nothing.
        groups: (n,) ints, the colour group of each point (an image, or query/positive/negative);
            default all 0. ``group_names[g]`` names group g in the legend (default "image g"),
            ``group_colors[g]`` colours it (default :func:`class_color`).
        sizes: (n,) marker sizes in px (default 9), e.g. from a weight.
        scale: arrow length per unit of force; default: the longest arrow is 0.35.
        force_colors: name -> colour, over :data:`FORCE_COLORS`.

    Traces: "unit circle" (2-D only); one marker trace per group present (named by
    ``group_names``); per force entry a line trace named after it (the shafts) and, 2-D, a
    marker trace "<name> heads" of arrow symbols (3-D: a Cone trace).
    """
    pts, arrows, groups, sizes = _check_field(points, forces, groups, sizes)
    dim = pts.shape[1]
    longest = max((float(np.linalg.norm(f, axis=1).max()) for f in arrows.values()), default=0)
    if scale is None:
        scale = 0.35 / longest if longest > 0 else 1.0
    fig = go.Figure()
    fig.add_trace(_unit_circle() if dim == 2 else _unit_sphere())
    for trace in _group_markers(pts, groups, sizes, group_names, group_colors):
        fig.add_trace(trace)
    for i, (name, f) in enumerate(arrows.items()):
        keep = np.linalg.norm(f, axis=1) > 1e-12 * max(longest, 1e-300)
        tails, tips = pts[keep], pts[keep] + scale * f[keep]
        for trace in _arrows(name, _arrow_color(name, i, force_colors), tails, tips):
            fig.add_trace(trace)
    if dim == 2:
        fig.update_xaxes(range=[-1.6, 1.6], zeroline=False)
        fig.update_yaxes(range=[-1.6, 1.6], zeroline=False, scaleanchor="x", scaleratio=1)
    else:
        fig.update_layout(scene={"aspectmode": "cube"})
    fig = _finish(fig, title, height=560)
    fig.update_layout(meta={"arrow_scale": scale})
    return fig


def _check_field(
    points: np.ndarray,
    forces: Mapping[str, np.ndarray],
    groups: np.ndarray | None,
    sizes: np.ndarray | None,
) -> tuple[np.ndarray, dict[str, np.ndarray], np.ndarray, np.ndarray]:
    """:func:`force_field`'s inputs checked and as float arrays: points (n, D), name -> force
    (n, D), groups (n,) ints (default all 0), sizes (n,) px (default 9)."""
    pts = np.asarray(points, dtype=np.float64)
    if pts.ndim != 2 or pts.shape[1] not in (2, 3):
        raise ValueError(f"points must be (n, 2) or (n, 3), got shape {pts.shape}")
    n = pts.shape[0]
    arrows = {}
    for name, f in forces.items():
        f = np.asarray(f, dtype=np.float64)
        if f.shape != pts.shape:
            raise ValueError(f"force {name!r} has shape {f.shape}, expected {pts.shape}")
        arrows[name] = f
    groups = np.zeros(n, dtype=int) if groups is None else np.asarray(groups)
    if groups.shape != (n,) or not np.issubdtype(groups.dtype, np.integer) or groups.min() < 0:
        raise ValueError(f"groups must be ({n},) ints >= 0, got {groups.shape} {groups.dtype}")
    sizes = np.full(n, 9.0) if sizes is None else np.asarray(sizes, dtype=np.float64)
    if sizes.shape != (n,):
        raise ValueError(f"sizes must have shape ({n},), got {sizes.shape}")
    return pts, arrows, groups, sizes


def _unit_circle() -> go.Scatter:
    """The dotted unit circle under a 2-D force field."""
    t = np.linspace(0, 2 * np.pi, 121)
    return go.Scatter(
        x=np.cos(t),
        y=np.sin(t),
        mode="lines",
        name="unit circle",
        line={"color": "lightgray", "dash": "dot"},
        hoverinfo="skip",
    )


def _unit_sphere() -> go.Scatter3d:
    """The unit sphere under a 3-D force field as a wireframe."""
    t = np.linspace(0, 2 * np.pi, 121)
    # A wireframe: the equator, two meridians and two parallels, separated by None.
    rings = []
    for z0 in (-0.7, 0.0, 0.7):
        r = np.sqrt(1 - z0**2)
        rings.append(np.stack([r * np.cos(t), r * np.sin(t), np.full_like(t, z0)], 1))
    for phi in (0.0, np.pi / 2):
        rings.append(np.stack([np.cos(phi) * np.cos(t), np.sin(phi) * np.cos(t), np.sin(t)], 1))
    wire = np.concatenate([np.vstack([r, np.full((1, 3), np.nan)]) for r in rings])
    return go.Scatter3d(
        x=wire[:, 0],
        y=wire[:, 1],
        z=wire[:, 2],
        mode="lines",
        name="unit sphere",
        line={"color": "lightgray", "width": 2},
        hoverinfo="skip",
    )


def _group_markers(
    pts: np.ndarray,
    groups: np.ndarray,
    sizes: np.ndarray,
    group_names: Sequence[str] | None,
    group_colors: Sequence[str] | None,
) -> list[go.Scatter | go.Scatter3d]:
    """One marker trace per group present in ``groups`` (n,), points (n, D), sizes (n,) px."""
    dim = pts.shape[1]
    n_groups = int(groups.max()) + 1
    scatter = go.Scatter3d if dim == 3 else go.Scatter
    traces = []
    for g in np.unique(groups):
        mask = groups == g
        name = str(group_names[g]) if group_names is not None else f"image {g}"
        color = group_colors[g] if group_colors is not None else class_color(int(g), n_groups)
        xyz = {k: pts[mask, i] for i, k in enumerate("xyz"[:dim])}
        traces.append(
            scatter(
                **xyz,
                mode="markers",
                name=name,
                marker={"color": color, "size": sizes[mask], "line": {"width": 0}},
            )
        )
    return traces


def _arrows(
    name: str, color: str, tails: np.ndarray, tips: np.ndarray
) -> list[go.Scatter | go.Scatter3d | go.Cone]:
    """The traces of one named force: the shafts from ``tails`` (m, D) to ``tips`` (m, D) and
    their heads (2-D: arrow markers; 3-D: cones, none when m = 0)."""
    dim = tails.shape[1]
    scatter = go.Scatter3d if dim == 3 else go.Scatter
    # Shafts: one line trace, arrows separated by None.
    seg = np.full((3 * len(tails), dim), np.nan)
    seg[0::3], seg[1::3] = tails, tips
    coords = {k: [None if np.isnan(v) else v for v in seg[:, j]] for j, k in enumerate("xyz"[:dim])}
    traces = [
        scatter(
            **coords,
            mode="lines",
            name=name,
            legendgroup=name,
            line={"color": color, "width": 3},
        )
    ]
    if dim == 2:
        traces.append(_arrow_heads_2d(name, color, tails, tips))
    elif len(tails):
        traces.append(_arrow_cones(name, color, tails, tips))
    return traces


def _arrow_heads_2d(name: str, color: str, tails: np.ndarray, tips: np.ndarray) -> go.Scatter:
    """Arrow-symbol markers at ``tips`` (m, 2), turned along tips - tails."""
    d = tips - tails
    return go.Scatter(
        x=tips[:, 0],
        y=tips[:, 1],
        mode="markers",
        name=f"{name} heads",
        legendgroup=name,
        showlegend=False,
        hoverinfo="skip",
        # Arrow symbols point up; marker.angle turns them clockwise (degrees).
        marker={
            "symbol": "arrow",
            "size": 11,
            "color": color,
            "angle": np.degrees(np.arctan2(d[:, 0], d[:, 1])),
        },
    )


def _arrow_cones(name: str, color: str, tails: np.ndarray, tips: np.ndarray) -> go.Cone:
    """Equal cones at ``tips`` (m, 3), m >= 1, pointing along tips - tails."""
    d = tips - tails
    d = d / np.linalg.norm(d, axis=1, keepdims=True)  # equal cones: direction only
    return go.Cone(
        x=tips[:, 0],
        y=tips[:, 1],
        z=tips[:, 2],
        u=d[:, 0],
        v=d[:, 1],
        w=d[:, 2],
        anchor="tip",
        sizemode="absolute",
        sizeref=0.1,
        colorscale=[[0, color], [1, color]],
        showscale=False,
        name=f"{name} heads",
        legendgroup=name,
        hoverinfo="skip",
    )


def query_force_figure(
    query: np.ndarray,
    positives: np.ndarray,
    negatives: np.ndarray,
    pos_weights: np.ndarray,
    neg_weights: np.ndarray,
    query_force: np.ndarray,
    pos_forces: np.ndarray,
    neg_forces: np.ndarray,
    *,
    scale: float | None = None,
    title: str = "One query: weights (marker size) and forces (arrows)",
) -> go.Figure:
    """One query's anatomy: the query (black), its K positives (light green) and N negatives
    (light red), each marker sized by its weight × set size (bigger than the uniform size = more
    than its uniform share), with the forces on the query (grey arrow), on the positives (green)
    and on the negatives (red).

    Shapes: ``query`` (D,), ``positives`` (K, D), ``negatives`` (N, D), weights (K,) / (N,),
    ``query_force`` (D,), ``pos_forces`` (K, D), ``neg_forces`` (N, D); D in {2, 3}; e.g. the
    fields of ``cacr_lab.theory.query_forces``. Traces as :func:`force_field` with groups
    "query", "positives", "negatives" and forces "on the query", "on positives", "on negatives".
    """
    q = np.asarray(query, dtype=np.float64).reshape(1, -1)
    pos = np.asarray(positives, dtype=np.float64)
    neg = np.asarray(negatives, dtype=np.float64)
    pw, nw = np.asarray(pos_weights, dtype=np.float64), np.asarray(neg_weights, dtype=np.float64)
    if pw.shape != (len(pos),) or nw.shape != (len(neg),):
        raise ValueError(
            f"pos_weights {pw.shape} / neg_weights {nw.shape} must match the "
            f"{len(pos)} positives / {len(neg)} negatives"
        )
    points = np.concatenate([q, pos, neg])
    k, m = len(pos), len(neg)
    zeros = np.zeros_like(points)
    on_query, on_pos, on_neg = zeros.copy(), zeros.copy(), zeros.copy()
    on_query[0] = np.asarray(query_force, dtype=np.float64)
    on_pos[1 : 1 + k] = np.asarray(pos_forces, dtype=np.float64)
    on_neg[1 + k :] = np.asarray(neg_forces, dtype=np.float64)
    relative = np.concatenate([[1.0], pw * k, nw * m])  # weight x set size, 1 = uniform
    sizes = np.clip(6 + 8 * np.sqrt(relative), 4, 40)
    sizes[0] = 14
    return force_field(
        points,
        {"on the query": on_query, "on positives": on_pos, "on negatives": on_neg},
        groups=np.array([0] + [1] * k + [2] * m),
        group_names=("query", "positives", "negatives"),
        group_colors=("#000000", "#98DF8A", "#FF9896"),
        sizes=sizes,
        scale=scale,
        title=title,
    )


def theory_curves(
    x: np.ndarray,
    curves: Mapping[str, np.ndarray],
    *,
    x_title: str = _D2_AXIS,
    y_title: str = "",
    title: str = "",
    hline: float | None = None,
    dashes: Mapping[str, str] | None = None,
    colors: Mapping[str, str] | None = None,
) -> go.Figure:
    """Plain lines y(x), one trace per entry of ``curves`` (name -> (n,) values over ``x`` (n,)),
    e.g. the gradient coefficients dE/dd of attached and detached weights against d².
    ``hline`` draws a dotted reference line; ``dashes`` maps a name to a plotly dash style and
    ``colors`` to a colour (default: the D3 palette in order).
    """
    x = np.asarray(x, dtype=np.float64)
    fig = go.Figure()
    for i, (name, y) in enumerate(curves.items()):
        y = np.asarray(y, dtype=np.float64)
        if y.shape != x.shape:
            raise ValueError(f"curve {name!r} has shape {y.shape}, x has {x.shape}")
        fig.add_trace(
            go.Scatter(
                x=x,
                y=y,
                mode="lines",
                name=name,
                line={
                    "color": (colors or {}).get(name, pc.qualitative.D3[i % 10]),
                    "dash": (dashes or {}).get(name),
                },
            )
        )
    if hline is not None:
        fig.add_hline(y=hline, line_dash="dot", line_color="gray")
    fig.update_xaxes(title_text=x_title)
    fig.update_yaxes(title_text=y_title)
    return _finish(fig, title)
