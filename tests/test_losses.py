"""The loss family against slow loop references, float64 gradchecks, and REFERENCE.md section 4.

The loop references below are deliberately naive: one query at a time, distances as
||a - b||^2 from the difference (the reference code's form), weights from the equations.
"""

from __future__ import annotations

import itertools
import math

import pytest
import torch
import torch.nn.functional as F

from cacr_lab.losses import (
    LOSSES,
    align_uniform_loss,
    alignment,
    cacr_loss,
    debiased_loss,
    hard_negative_loss,
    info_nce_loss,
    loss_options,
    moco_cacr_loss,
    uniformity,
)


def unit(*shape: int, seed: int = 0, dtype=torch.float64) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(*shape, generator=g, dtype=dtype), dim=-1)


def softmax_list(xs: list[torch.Tensor]) -> list[torch.Tensor]:
    m = max(float(x.detach()) for x in xs)
    e = [torch.exp(x - m) for x in xs]
    s = sum(e)
    return [x / s for x in e]


# --------------------------------------------------------------------------------------------
# Slow references
# --------------------------------------------------------------------------------------------


def ref_cacr(
    z,
    tau_pos,
    tau_neg,
    alpha,
    beta,
    weighting,
    cost="euclidean",
    rbf_t=2.0,
    tau_plus=None,
    symmetric=False,
):
    """One query at a time, straight from REFERENCE.md sections 2 and 3."""
    V, B, _ = z.shape
    w_pos = weighting in ("full", "without_w2")
    w_neg = weighting in ("full", "without_w1")
    d2 = lambda a, b: ((a - b) ** 2).sum()  # noqa: E731
    attraction = 0.0
    for v in range(V):
        for i in range(B):
            ds = [d2(z[v, i], z[w, i]) for w in range(V) if w != v]
            ws = softmax_list([tau_pos * d for d in ds]) if w_pos else [1.0 / len(ds)] * len(ds)
            attraction = attraction + sum(w * alpha * d for w, d in zip(ws, ds)) / (V * B)
    if symmetric:
        groups = [
            [(v, i, [(w, j) for w in range(V) for j in range(B) if j != i]) for i in range(B)]
            for v in range(V)
        ]
    else:
        groups = [
            [(v, i, [(w, j) for j in range(B) if j != i]) for i in range(B)]
            for v, w in itertools.combinations(range(V), 2)
        ]
    repulsion = 0.0
    for group in groups:
        kernel_sum = 0.0
        for v, i, negs in group:
            ds = [d2(z[v, i], z[w, j]) for w, j in negs]
            ws = softmax_list([-tau_neg * d for d in ds]) if w_neg else [1.0 / len(ds)] * len(ds)
            if cost == "rbf":
                kernel_sum = kernel_sum + sum(w * torch.exp(-rbf_t * d) for w, d in zip(ws, ds))
                continue
            r = sum(w * (-beta * d) for w, d in zip(ws, ds))
            if tau_plus is not None:
                if symmetric:
                    dp = sum(d2(z[v, i], z[w, i]) for w in range(V) if w != v) / (V - 1)
                else:
                    dp = d2(z[v, i], z[negs[0][0], i])
                r = (r + tau_plus * beta * dp) / (1 - tau_plus)
            repulsion = repulsion + r / (len(groups) * len(group))
        if cost == "rbf":
            repulsion = repulsion + beta * torch.log(kernel_sum / len(group)) / len(groups)
    return attraction, repulsion


def ref_nt_xent(z1, z2, T):
    """SimCLR's NT-Xent, one query at a time: 2B queries, 2B - 2 negatives each."""
    zs = torch.cat([z1, z2])
    n, B = len(zs), len(z1)
    total = 0.0
    for r in range(n):
        p = (r + B) % n
        logits = [zs[r] @ zs[c] / T for c in range(n) if c != r]
        total = total - (zs[r] @ zs[p] / T - torch.logsumexp(torch.stack(logits), 0))
    return total / n


def ref_hard_debiased(z1, z2, T, tau_plus, beta):
    """Robinson et al.'s published recipe (beta = 0 is Chuang et al.'s DCL), direct exps."""
    zs = torch.cat([z1, z2])
    n, B = len(zs), len(z1)
    N = n - 2
    total = 0.0
    for r in range(n):
        p = (r + B) % n
        pos = torch.exp(zs[r] @ zs[p] / T)
        neg = torch.stack([torch.exp(zs[r] @ zs[c] / T) for c in range(n) if c not in (r, p)])
        imp = (beta * neg.log()).exp()
        reweight = (imp * neg).sum() / imp.mean()
        ng = (-tau_plus * N * pos + reweight) / (1 - tau_plus)
        ng = torch.clamp(ng, min=N * math.e ** (-1 / T))
        total = total - torch.log(pos / (pos + ng))
    return total / n


def pairwise_mean(z, fn):
    pairs = list(itertools.combinations(range(z.shape[0]), 2))
    return sum(fn(z[v], z[w]) for v, w in pairs) / len(pairs)


# --------------------------------------------------------------------------------------------
# Values against the references
# --------------------------------------------------------------------------------------------

SHAPES = [(2, 2, 3), (2, 5, 4), (3, 4, 8), (5, 6, 16)]


@pytest.mark.parametrize("weighting", ["full", "without_w1", "without_w2", "none"])
@pytest.mark.parametrize("shape", SHAPES)
def test_cacr_matches_loop_reference(weighting, shape):
    z = unit(*shape, seed=sum(shape))
    for tau_pos, tau_neg, alpha, beta in [(1.0, 0.9, 1.0, 1.0), (3.0, 2.0, 0.5, 2.0)]:
        out = cacr_loss(z, tau_pos, tau_neg, alpha, beta, weighting)
        ca, cr = ref_cacr(z, tau_pos, tau_neg, alpha, beta, weighting)
        torch.testing.assert_close(out.attraction, ca, rtol=0, atol=1e-10)
        torch.testing.assert_close(out.repulsion, cr, rtol=0, atol=1e-10)
        torch.testing.assert_close(out.loss, ca + cr, rtol=0, atol=1e-10)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize(
    "options",
    [
        {"cost": "rbf"},
        {"cost": "rbf", "weighting": "none"},
        {"debiased_tau_plus": 0.1},
        {"symmetric": True},
        {"symmetric": True, "debiased_tau_plus": 0.2},
        {"symmetric": True, "cost": "rbf"},
    ],
)
def test_cacr_variants_match_loop_reference(shape, options):
    z = unit(*shape, seed=7 + sum(shape))
    opts = dict(options)
    weighting = opts.pop("weighting", "full")
    out = cacr_loss(z, 1.0, 0.9, 1.0, 1.0, weighting, **opts)
    ca, cr = ref_cacr(
        z,
        1.0,
        0.9,
        1.0,
        1.0,
        weighting,
        cost=opts.get("cost", "euclidean"),
        tau_plus=opts.get("debiased_tau_plus"),
        symmetric=opts.get("symmetric", False),
    )
    torch.testing.assert_close(out.loss, ca + cr, rtol=0, atol=1e-10)


@pytest.mark.parametrize("weighting", ["none", "without_w2", "without_w1", "full"])
def test_cacr_debiasing_acts_in_every_weighting(weighting):
    """A documented deviation: the authors' code ignores its debiasing when the negatives are
    uniform ("none", "without_w2"); the lab applies it in every weighting, as the correction
    does not depend on the weights. Pinned: the option changes the loss, exactly as the loop
    reference's (R + tau_plus beta d2+) / (1 - tau_plus) says, in value and gradient."""
    x = torch.randn(3, 5, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(17))
    plain = cacr_loss(F.normalize(x, dim=-1), 1.0, 0.9, 1.0, 1.3, weighting)
    x1, x2 = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    out = cacr_loss(F.normalize(x1, dim=-1), 1.0, 0.9, 1.0, 1.3, weighting, debiased_tau_plus=0.2)
    ca, cr = ref_cacr(F.normalize(x2, dim=-1), 1.0, 0.9, 1.0, 1.3, weighting, tau_plus=0.2)
    torch.testing.assert_close(out.repulsion, cr, rtol=0, atol=1e-10)
    assert abs(float(out.loss.detach() - plain.loss)) > 1e-3
    torch.testing.assert_close(out.attraction, plain.attraction, rtol=0, atol=0)
    out.loss.backward()
    (ca + cr).backward()
    torch.testing.assert_close(x1.grad, x2.grad, rtol=0, atol=1e-10)


@pytest.mark.parametrize("tau_neg", [5.0, 30.0, 200.0])
def test_fused_repulsion_both_sides_of_the_unshifted_exp_threshold(tau_neg):
    """The fused path skips the max-subtraction of the softmax while exp(2 tau G) cannot
    overflow (fp32 tau <~ 19, fp64 tau <~ 159) and shifts otherwise: values and gradients of
    both branches against the loop reference (fp64), and fp32 against fp64."""
    x = torch.randn(4, 6, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    x1, x2 = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    out = cacr_loss(F.normalize(x1, dim=-1), 1.0, tau_neg)
    ca, cr = ref_cacr(F.normalize(x2, dim=-1), 1.0, tau_neg, 1.0, 1.0, "full")
    torch.testing.assert_close(out.repulsion, cr, rtol=0, atol=1e-10)
    out.loss.backward()
    (ca + cr).backward()
    torch.testing.assert_close(x1.grad, x2.grad, rtol=0, atol=1e-9)
    out32 = cacr_loss(F.normalize(x.float(), dim=-1), 1.0, tau_neg)
    torch.testing.assert_close(out32.loss.double(), out.loss, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out32.neg_weights.double(), out.neg_weights, rtol=0, atol=1e-4)


@pytest.mark.parametrize("weight_grad", ["attached", "detached"])
def test_backward_twice_through_a_retained_graph(weight_grad):
    """The fused backward reuses its Gram buffer; a second backward must recompute, not read
    the spent buffer."""
    x = torch.randn(3, 5, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    x.requires_grad_(True)
    loss = cacr_loss(F.normalize(x, dim=-1), 1.0, 0.9, weight_grad=weight_grad).loss
    (g1,) = torch.autograd.grad(loss, x, retain_graph=True)
    (g2,) = torch.autograd.grad(loss, x)
    torch.testing.assert_close(g1, g2, rtol=0, atol=0)


@pytest.mark.parametrize("weighting", ["full", "without_w1", "without_w2"])
def test_each_cacr_part_alone_has_its_own_gradient(weighting):
    """The fused backward builds both parts' gradients in one (P, B, B) block (the attraction
    on its diagonal): backpropagating one part alone, or a weighted sum of the parts, must
    give the reference gradient of just that, and with detached weights the parts' gradients
    must add up to the loss's."""
    x = torch.randn(4, 5, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(6))
    args = (1.5, 0.9, 0.7, 1.3, weighting)

    def grad_of(parts, weight_grad="attached"):
        """Gradient of sum_k c_k part_k, for parts {name: c} of the fused and the reference."""
        leaf, ref_leaf = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
        out = cacr_loss(F.normalize(leaf, dim=-1), *args, weight_grad=weight_grad)
        sum(c * getattr(out, name) for name, c in parts.items()).backward()
        ca, cr = ref_cacr(F.normalize(ref_leaf, dim=-1), *args)
        ref = {"attraction": ca, "repulsion": cr, "loss": ca + cr}
        sum(c * ref[name] for name, c in parts.items()).backward()
        return leaf.grad, ref_leaf.grad

    for parts in ({"attraction": 2.5}, {"repulsion": -0.7}, {"attraction": 2.5, "repulsion": -0.7}):
        torch.testing.assert_close(*grad_of(parts), rtol=0, atol=1e-12)
    detached = (
        grad_of({"attraction": 1.0}, "detached")[0] + grad_of({"repulsion": 1.0}, "detached")[0]
    )
    torch.testing.assert_close(detached, grad_of({"loss": 1.0}, "detached")[0], rtol=0, atol=1e-12)


def test_live_graphs_never_share_the_fused_loss_scratch():
    """The fused loss reuses CPU scratch memory across calls. Graphs alive at the same time
    (gradient accumulation; a no-grad evaluation between a forward and its backward) must
    each keep their own: their gradients equal those of fresh, separate computations."""
    xs = [
        torch.randn(3, 6, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(s))
        for s in range(3)
    ]

    def loss_of(leaf):
        return cacr_loss(F.normalize(leaf, dim=-1), 1.0, 0.9).loss

    expected = []
    for x in xs:
        leaf = x.clone().requires_grad_(True)
        loss_of(leaf).backward()
        expected.append(leaf.grad)
    leaves = [x.clone().requires_grad_(True) for x in xs]
    loss_a = loss_of(leaves[0])
    loss_b = loss_of(leaves[1])  # while A's graph holds its scratch
    with torch.no_grad():
        loss_of(xs[2])  # leases a scratch and gives it back at once
    loss_b.backward()  # B gives its scratch back ...
    loss_c = loss_of(leaves[2])  # ... and C may take it, while A still holds its own
    loss_a.backward()
    loss_c.backward()
    for leaf, grad in zip(leaves, expected):
        torch.testing.assert_close(leaf.grad, grad, rtol=0, atol=1e-12)


def test_fused_loss_scratch_goes_back_after_backward_or_when_the_graph_is_dropped():
    """The speed of the fused loss on CPU rests on reusing its scratch (a fresh multi-MB
    buffer costs a page fault per 4 KiB): leased while a graph can still use it, free again
    after the backward, or as soon as an unused graph is dropped."""
    from cacr_lab.losses import _cacr_kernel as losses

    V, B, D = 3, 7, 5
    P = V * (V - 1) // 2
    key = (2 * P * B * B + 4 * P * B * D, torch.float64)
    losses._FREE_SCRATCH.pop(key, None)
    z = unit(V, B, D, seed=8).requires_grad_(True)
    out = cacr_loss(z, 1.0, 0.9)
    assert key not in losses._FREE_SCRATCH  # leased by the live graph
    out.loss.backward()
    buf = losses._FREE_SCRATCH[key]  # given back by the backward
    out = cacr_loss(z, 1.0, 0.9)
    assert key not in losses._FREE_SCRATCH  # the next call took it
    del out  # dropped without a backward
    assert losses._FREE_SCRATCH[key] is buf


def test_negative_weights_are_computed_on_first_read():
    """CACR's (P, B, B-1) pi_neg / d2 are diagnostics a training step never reads: the fused
    path computes them when first read, from the same embeddings, also after the backward,
    from a detached copy, and under autocast (in full precision)."""
    from cacr_lab.losses import LossOutput

    x = torch.randn(4, 6, 5, generator=torch.Generator().manual_seed(9))
    z = F.normalize(x, dim=-1)
    first = cacr_loss(z, 1.0, 0.9)
    w, d2 = first.neg_weights, first.neg_d2
    out = cacr_loss(z.clone().requires_grad_(True), 1.0, 0.9)
    out.loss.backward()
    copy = out.detach()
    torch.testing.assert_close(copy.neg_weights, w, rtol=0, atol=0)
    torch.testing.assert_close(out.neg_d2, d2, rtol=0, atol=0)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        late = cacr_loss(z, 1.0, 0.9)
        assert late.neg_weights.dtype == torch.float32
    torch.testing.assert_close(late.neg_weights, w, rtol=0, atol=0)
    calls = []
    lazy = LossOutput(loss=torch.tensor(0.0), neg_weights=lambda: calls.append(1) or w)
    assert calls == []
    assert lazy.neg_weights is w and lazy.neg_weights is w and calls == [1]


def test_cacr_weight_tensors_follow_documented_layout():
    V, B = 4, 5
    z = unit(V, B, 6, seed=3)
    out = cacr_loss(z, tau_pos=2.0, tau_neg=0.9)
    assert out.pos_weights.shape == (V, B, V - 1)
    assert out.neg_weights.shape == (V * (V - 1) // 2, B, B - 1)
    for v in range(V):
        for i in range(B):
            others = [w for w in range(V) if w != v]
            ds = torch.stack([((z[v, i] - z[w, i]) ** 2).sum() for w in others])
            torch.testing.assert_close(out.pos_d2[v, i], ds)
            torch.testing.assert_close(out.pos_weights[v, i], torch.softmax(2.0 * ds, 0))
    for p, (v, w) in enumerate(itertools.combinations(range(V), 2)):
        for i in range(B):
            ds = torch.stack([((z[v, i] - z[w, j]) ** 2).sum() for j in range(B) if j != i])
            torch.testing.assert_close(out.neg_d2[p, i], ds)
            torch.testing.assert_close(out.neg_weights[p, i], torch.softmax(-0.9 * ds, 0))
    assert not out.neg_weights.requires_grad


def test_cacr_gradient_matches_difference_form_reference():
    """Default options reproduce the reference's gradients (through the normalisation)."""
    x = torch.randn(3, 5, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    x1 = x.clone().requires_grad_(True)
    x2 = x.clone().requires_grad_(True)
    cacr_loss(F.normalize(x1, dim=-1), 1.0, 0.9).loss.backward()
    ca, cr = ref_cacr(F.normalize(x2, dim=-1), 1.0, 0.9, 1.0, 1.0, "full")
    (ca + cr).backward()
    torch.testing.assert_close(x1.grad, x2.grad, rtol=0, atol=1e-10)


@pytest.mark.parametrize("shape", [(2, 2, 3), (2, 6, 5), (3, 4, 8)])
def test_info_nce_v2_equals_nt_xent(shape):
    z = unit(*shape, seed=11)
    for T in (0.1, 0.5, 1.0):
        out = info_nce_loss(z, temperature=T)
        if shape[0] == 2:
            expected = ref_nt_xent(z[0], z[1], T)
        else:
            expected = pairwise_mean(z, lambda a, b, T=T: ref_nt_xent(a, b, T))
        torch.testing.assert_close(out.loss, expected, rtol=0, atol=1e-10)
        torch.testing.assert_close(out.loss, out.attraction + out.repulsion)


def test_info_nce_hand_computed_2d_example():
    # Two images on orthogonal axes of the plane, two identical views each, T = 0.5: each query's
    # positive has s = 1, its two negatives s = 0, so every query scores
    # -1/T + log(e^{1/T} + 2) = log(1 + 2 e^{-1/T}).
    z1 = torch.tensor([[1.0, 0.0], [0.0, 1.0]], dtype=torch.float64)
    out = info_nce_loss(torch.stack([z1, z1.clone()]), temperature=0.5)
    assert out.loss.item() == pytest.approx(math.log(1 + 2 * math.exp(-2.0)), abs=1e-12)
    # The implicit negative weights are uniform here (both negatives equally far).
    torch.testing.assert_close(out.neg_weights, torch.full((1, 4, 2), 0.5, dtype=torch.float64))


def test_info_nce_matches_a_standard_cross_entropy_implementation():
    z = unit(2, 16, 8, seed=5, dtype=torch.float32)
    T = 0.2
    zs = torch.cat([z[0], z[1]])
    sim = zs @ zs.T / T
    sim.fill_diagonal_(float("-inf"))
    target = (torch.arange(32) + 16) % 32
    torch.testing.assert_close(info_nce_loss(z, T).loss, F.cross_entropy(sim, target))


@pytest.mark.parametrize("V", [2, 3])
def test_hard_negative_and_debiased_match_published_recipe(V):
    z = unit(V, 6, 5, seed=13)
    for T, tau_plus, beta in [(0.5, 0.1, 1.0), (0.2, 0.05, 0.5), (1.0, 0.3, 2.0)]:
        hn = hard_negative_loss(z, temperature=T, beta=beta, tau_plus=tau_plus)
        dcl = debiased_loss(z, temperature=T, tau_plus=tau_plus)
        exp_hn = pairwise_mean(
            z, lambda a, b, T=T, tp=tau_plus, be=beta: ref_hard_debiased(a, b, T, tp, be)
        )
        exp_dcl = pairwise_mean(z, lambda a, b, T=T, tp=tau_plus: ref_hard_debiased(a, b, T, tp, 0))
        torch.testing.assert_close(hn.loss, exp_hn, rtol=0, atol=1e-10)
        torch.testing.assert_close(dcl.loss, exp_dcl, rtol=0, atol=1e-10)


def test_hard_negative_clamp_branch_matches_recipe():
    # A large tau_plus drives the debiased numerator negative: the N e^{-1/T} floor takes over.
    z = unit(2, 4, 3, seed=2)
    torch.testing.assert_close(
        debiased_loss(z, temperature=0.5, tau_plus=0.9).loss,
        ref_hard_debiased(z[0], z[1], 0.5, 0.9, 0.0),
        rtol=0,
        atol=1e-10,
    )


def test_debiased_with_zero_prior_is_nt_xent():
    z = unit(2, 5, 4, seed=9)
    T = 0.5
    zs = torch.cat([z[0], z[1]])
    n = 10
    expected = 0.0
    for r in range(n):
        p = (r + 5) % n
        negs = torch.stack([zs[r] @ zs[c] / T for c in range(n) if c not in (r, p)])
        expected = expected - torch.log(
            torch.exp(zs[r] @ zs[p] / T) / (torch.exp(zs[r] @ zs[p] / T) + torch.exp(negs).sum())
        )
    # tau_plus = 0, beta = 0: Ng = sum_j neg_j, exactly NT-Xent.
    torch.testing.assert_close(debiased_loss(z, T, tau_plus=0.0).loss, expected / n)


def test_align_uniform_matches_wang_isola():
    z = unit(2, 7, 5, seed=4)
    out = align_uniform_loss(z)
    align = (z[0] - z[1]).norm(dim=1).pow(2).mean()
    unif = (uniformity(z[0]) + uniformity(z[1])) / 2
    torch.testing.assert_close(out.alignment, align, rtol=0, atol=1e-10)
    torch.testing.assert_close(out.uniformity, unif, rtol=0, atol=1e-10)
    torch.testing.assert_close(alignment(z[0], z[1]), align)
    # Other exponent, more views.
    z3 = unit(3, 5, 4, seed=6)
    out3 = align_uniform_loss(z3, align_alpha=1.0, unif_t=3.0, unif_weight=0.5)
    exp_align = pairwise_mean(z3, lambda a, b: alignment(a, b, alpha=1.0))
    exp_unif = sum(uniformity(z3[v], t=3.0) for v in range(3)) / 3
    torch.testing.assert_close(out3.alignment, exp_align, rtol=0, atol=1e-10)
    torch.testing.assert_close(out3.loss, exp_align + 0.5 * exp_unif, rtol=0, atol=1e-10)


# --------------------------------------------------------------------------------------------
# Gradients (float64 gradcheck through the normalisation, as an encoder sees them)
# --------------------------------------------------------------------------------------------

GRAD_CASES = [
    ("cacr", {}),
    ("cacr", {"weighting": "without_w1"}),
    ("cacr", {"weighting": "without_w2"}),
    ("cacr", {"weighting": "none"}),
    ("cacr", {"cost": "rbf"}),
    ("cacr", {"debiased_tau_plus": 0.1}),
    ("cacr", {"symmetric": True}),
    ("cacr", {"symmetric": True, "cost": "rbf"}),
    ("infonce", {"temperature": 0.3}),
    ("align-uniform", {}),
    ("align-uniform", {"align_alpha": 1.5}),
    ("hard-negative", {}),
    ("debiased", {}),
]


@pytest.mark.parametrize("method,options", GRAD_CASES)
def test_gradcheck(method, options):
    x = torch.randn(3, 4, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    x.requires_grad_(True)
    fn = LOSSES[method]
    assert torch.autograd.gradcheck(lambda t: fn(F.normalize(t, dim=-1), **options).loss, (x,))


@pytest.mark.parametrize("multiview", ["pairs", "cmc"])
def test_info_nce_gradcheck_at_two_views(multiview):
    """V = 2 takes the plain one-matrix form (``_two_view_parts``), V > 2 the fused kernel."""
    x = torch.randn(2, 4, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    x.requires_grad_(True)
    for T in (0.05, 0.5):  # 1/T = 20: past where the kernel would shift rows

        def loss(t: torch.Tensor, T: float = T) -> torch.Tensor:
            return info_nce_loss(F.normalize(t, dim=-1), T, multiview=multiview).loss

        assert torch.autograd.gradcheck(loss, (x,))


# --------------------------------------------------------------------------------------------
# Limits and identities (REFERENCE.md section 4)
# --------------------------------------------------------------------------------------------


def test_small_tau_gives_uniform_weights():
    z = unit(5, 8, 16, seed=1)
    out = cacr_loss(z, tau_pos=1e-9, tau_neg=1e-9)
    torch.testing.assert_close(out.pos_weights, torch.full_like(out.pos_weights, 1 / 4))
    torch.testing.assert_close(out.neg_weights, torch.full_like(out.neg_weights, 1 / 7))
    uniform = cacr_loss(z, weighting="none")
    torch.testing.assert_close(out.loss, uniform.loss)


def test_large_tau_puts_all_weight_on_farthest_positive_and_nearest_negative():
    z = unit(5, 8, 16, seed=2)
    out = cacr_loss(z, tau_pos=1e4, tau_neg=1e4)
    far = out.pos_d2.argmax(-1, keepdim=True)
    near = out.neg_d2.argmin(-1, keepdim=True)
    torch.testing.assert_close(out.pos_weights.gather(-1, far), torch.ones_like(far, dtype=z.dtype))
    torch.testing.assert_close(
        out.neg_weights.gather(-1, near), torch.ones_like(near, dtype=z.dtype)
    )
    # The loss is then alpha * max d2+ minus beta * min d2-, averaged over queries.
    expected = out.pos_d2.amax(-1).mean() - out.neg_d2.amin(-1).mean()
    torch.testing.assert_close(out.loss, expected)


def test_k1_uniform_attraction_is_wang_isola_alignment():
    z = unit(2, 10, 8, seed=3)
    out = cacr_loss(z, alpha=0.7, weighting="none")
    torch.testing.assert_close(out.attraction, 0.7 * alignment(z[0], z[1], alpha=2.0))
    # With K = 1 the positive softmax has one element, so weighting cannot change CA.
    torch.testing.assert_close(cacr_loss(z, alpha=0.7).attraction, out.attraction)


def test_detached_weights_have_the_log_sum_exp_gradient():
    """Detached weights are a surrogate (gradcheck does not apply): CA has the gradient of
    (alpha/tau_pos) log sum_k exp(tau_pos d2+) and CR that of (beta/tau_neg) log sum_j
    exp(-tau_neg d2-), per query, averaged as in the reference pairing."""
    tp, tn, a, b = 1.5, 0.9, 0.7, 1.3
    x = torch.randn(3, 5, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    x1 = x.clone().requires_grad_(True)
    x2 = x.clone().requires_grad_(True)
    cacr_loss(F.normalize(x1, dim=-1), tp, tn, a, b, weight_grad="detached").loss.backward()
    z = F.normalize(x2, dim=-1)
    V, B = 3, 5
    pot = 0.0
    for v in range(V):
        for i in range(B):
            d = torch.stack([((z[v, i] - z[w, i]) ** 2).sum() for w in range(V) if w != v])
            pot = pot + a / tp * torch.logsumexp(tp * d, 0) / (V * B)
    pairs = list(itertools.combinations(range(V), 2))
    for v, w in pairs:
        for i in range(B):
            d = torch.stack([((z[v, i] - z[w, j]) ** 2).sum() for j in range(B) if j != i])
            pot = pot + b / tn * torch.logsumexp(-tn * d, 0) / (len(pairs) * B)
    pot.backward()
    torch.testing.assert_close(x1.grad, x2.grad, rtol=0, atol=1e-10)


def test_detached_weights_give_the_infonce_gradient():
    """Detached, K = 1, alpha = beta = 1, tau_neg = 1/(2T): grad CACR = grad 2T x InfoNCE
    with the positive removed from the denominator (one direction, as CACR's pairing)."""
    T = 0.25
    x = torch.randn(2, 6, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    x1 = x.clone().requires_grad_(True)
    x2 = x.clone().requires_grad_(True)
    cacr_loss(F.normalize(x1, dim=-1), tau_neg=1 / (2 * T), weight_grad="detached").loss.backward()
    z = F.normalize(x2, dim=-1)
    s = z[0] @ z[1].T / T  # (B, B): query i of view 0 against sample j of view 1
    off = ~torch.eye(6, dtype=torch.bool)
    nce = (-s.diagonal() + torch.logsumexp(s.masked_fill(~off, float("-inf")), dim=1)).mean()
    (2 * T * nce).backward()
    torch.testing.assert_close(x1.grad, x2.grad, rtol=0, atol=1e-10)
    # With attached weights (the default) the gradient is a different one.
    x3 = x.clone().requires_grad_(True)
    cacr_loss(F.normalize(x3, dim=-1), tau_neg=1 / (2 * T)).loss.backward()
    assert not torch.allclose(x3.grad, x2.grad, atol=1e-6)


def test_random_unit_vectors_start_with_near_uniform_negative_weights():
    z = unit(2, 128, 128, seed=0)
    out = cacr_loss(z, tau_neg=0.9)
    assert out.neg_d2.mean().item() == pytest.approx(2.0, abs=0.02)
    assert out.neg_d2.std().item() == pytest.approx(0.18, abs=0.03)
    ess = 1.0 / (out.neg_weights**2).sum(-1)
    assert (ess.mean() / 127).item() == pytest.approx(0.97, abs=0.01)


@pytest.mark.parametrize("method", list(LOSSES))
def test_batch_permutation_invariance(method):
    z = unit(3, 9, 6, seed=8)
    perm = torch.randperm(9, generator=torch.Generator().manual_seed(0))
    a, b = LOSSES[method](z), LOSSES[method](z[:, perm])
    torch.testing.assert_close(a.loss, b.loss, rtol=0, atol=1e-12)
    if method == "cacr":
        torch.testing.assert_close(a.pos_weights[:, perm], b.pos_weights)


@pytest.mark.parametrize("method", list(LOSSES))
def test_registry_losses_run_with_their_defaults_and_parts_add_up(method):
    z = unit(5, 8, 16, seed=1, dtype=torch.float32)
    out = LOSSES[method](z, **loss_options(method))
    assert out.loss.dim() == 0 and torch.isfinite(out.loss)
    parts = out.parts()
    assert parts, "every loss reports its named parts"
    if method != "align-uniform":
        torch.testing.assert_close(out.loss, parts["attraction"] + parts["repulsion"])
    else:
        torch.testing.assert_close(out.loss, parts["alignment"] + parts["uniformity"])


def test_sequence_of_views_equals_stacked_tensor():
    z = unit(3, 4, 5, seed=1)
    torch.testing.assert_close(cacr_loss(list(z)).loss, cacr_loss(z).loss)


# --------------------------------------------------------------------------------------------
# Mixed precision and extreme temperatures
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("method", list(LOSSES))
def test_stable_under_bf16_autocast(method):
    x = torch.randn(5, 64, 32, generator=torch.Generator().manual_seed(0))
    ref = LOSSES[method](F.normalize(x, dim=-1)).loss
    lin = torch.nn.Linear(32, 32)
    torch.nn.init.eye_(lin.weight)
    torch.nn.init.zeros_(lin.bias)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        z = F.normalize(lin(x), dim=-1)  # bf16 under autocast
        assert z.dtype == torch.bfloat16
        out = LOSSES[method](z)
    assert out.loss.dtype == torch.float32
    assert torch.isfinite(out.loss)
    out.loss.backward()
    assert torch.isfinite(lin.weight.grad).all()
    torch.testing.assert_close(out.loss, ref, rtol=0.05, atol=0.05)


def test_large_tau_neg_is_finite():
    x = torch.randn(5, 64, 32, generator=torch.Generator().manual_seed(1), requires_grad=True)
    for tau in (50.0, 1e3):
        out = cacr_loss(F.normalize(x, dim=-1), tau_pos=tau, tau_neg=tau)
        (g,) = torch.autograd.grad(out.loss, x)
        assert torch.isfinite(out.loss) and torch.isfinite(g).all()
    hn = hard_negative_loss(F.normalize(x, dim=-1), temperature=0.01)
    assert torch.isfinite(hn.loss)
    assert torch.isfinite(torch.autograd.grad(hn.loss, x)[0]).all()


# --------------------------------------------------------------------------------------------
# Bad input
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("method", list(LOSSES))
def test_bad_shapes_raise_naming_the_value(method):
    fn = LOSSES[method]
    with pytest.raises(ValueError, match="V=1"):
        fn(unit(1, 4, 3))
    with pytest.raises(ValueError, match="B=1"):
        fn(unit(2, 1, 3))
    with pytest.raises(ValueError, match=r"\(4, 3\).*\(5, 3\)"):
        fn([unit(4, 3), unit(5, 3)])
    with pytest.raises(ValueError, match=r"shape \(2, 4\)"):
        fn(unit(2, 4))
    bad = unit(2, 4, 3).clone()
    bad[0, 1, 2] = float("nan")
    with pytest.raises(ValueError, match="non-finite"):
        fn(bad)
    with pytest.raises(ValueError, match="L2-normalised.*3"):
        fn(3 * unit(2, 4, 3))


@pytest.mark.parametrize(
    "fn,kwargs,pattern",
    [
        (cacr_loss, {"tau_pos": 0.0}, "tau_pos.*0.0"),
        (cacr_loss, {"tau_neg": -1.0}, "tau_neg.*-1.0"),
        (cacr_loss, {"tau_neg": float("inf")}, "tau_neg.*inf"),
        (cacr_loss, {"alpha": -0.5}, "alpha.*-0.5"),
        (cacr_loss, {"weighting": "half"}, "weighting 'half'.*full"),
        (cacr_loss, {"weight_grad": "frozen"}, "weight_grad 'frozen'"),
        (cacr_loss, {"cost": "cosine"}, "cost 'cosine'"),
        (cacr_loss, {"rbf_t": 0}, "rbf_t.*0"),
        (cacr_loss, {"debiased_tau_plus": 1.5}, "debiased_tau_plus.*1.5"),
        (cacr_loss, {"debiased_tau_plus": 0.1, "cost": "rbf"}, "euclidean"),
        (info_nce_loss, {"temperature": 0}, "temperature.*0"),
        (info_nce_loss, {"temperature": -0.1}, "temperature.*-0.1"),
        (hard_negative_loss, {"temperature": 0.0}, "temperature"),
        (hard_negative_loss, {"tau_plus": 1.0}, "tau_plus.*1.0"),
        (hard_negative_loss, {"beta": -1.0}, "beta.*-1.0"),
        (debiased_loss, {"temperature": -2.0}, "temperature.*-2.0"),
        (align_uniform_loss, {"unif_t": 0.0}, "unif_t.*0.0"),
        (align_uniform_loss, {"align_alpha": -2.0}, "align_alpha.*-2.0"),
    ],
)
def test_bad_options_raise_naming_the_value(fn, kwargs, pattern):
    with pytest.raises(ValueError, match=pattern):
        fn(unit(2, 4, 3), **kwargs)


def test_metric_guards():
    with pytest.raises(ValueError, match="N=1"):
        uniformity(unit(1, 3))
    with pytest.raises(ValueError, match="N=0"):
        alignment(unit(0, 3), unit(0, 3))
    with pytest.raises(ValueError, match="same shape"):
        alignment(unit(2, 3), unit(3, 3))
    with pytest.raises(ValueError, match="unknown method 'simclr'"):
        loss_options("simclr")


# --------------------------------------------------------------------------------------------
# The large-scale form (moco): the authors' ImageNet code on MoCo v3
# --------------------------------------------------------------------------------------------


def ref_moco(q, k, T, cost, multicrop="light", attached=False):
    """One anchor, one query view, one sample at a time, from docs/method.md section 6.

    q: (V, B, D) predictions, k: (G, B, D) keys of views[:G]. ``attached=True`` lets the gradient
    through the weights p (and the euclidean CR softmax), which the real loss must not do.
    """
    V, B, _ = q.shape
    anchors = range(V) if multicrop == "full" else range(k.shape[0])
    maybe = (lambda t: t) if attached else (lambda t: t.detach())  # noqa: E731
    total = 0.0
    for a in anchors:
        js = [j for j in range(V) if j != a]
        loss_a = 0.0
        for n in range(B):
            d2 = [((q[j, n] - k[a, n]) ** 2).sum() for j in js]
            p = softmax_list([maybe(d) / T for d in d2])
            for pj, j in zip(p, js):
                if cost == "rbf":
                    logits = torch.stack([q[j, n] @ k[a, m] / T for m in range(B)])
                    ce = -(logits[n] - torch.logsumexp(logits, 0))
                    loss_a = loss_a + pj * ce * 2 * T / B
                else:
                    c = [1 - q[j, n] @ k[a, m] for m in range(B)]
                    negs = [c[m] for m in range(B) if m != n]
                    w = softmax_list([-maybe(cm) / T for cm in negs])
                    cr = -sum(wm * cm for wm, cm in zip(w, negs))
                    loss_a = loss_a + pj * (c[n] + cr) / B
        total = total + loss_a
    return total / len(anchors)


def moco_v3_ctr(q, k, T):
    """MoCo v3's contrastive_loss on one GPU: cross-entropy of q.k / T over the keys, * 2T."""
    return F.cross_entropy(q @ k.T / T, torch.arange(len(q))) * 2 * T


MOCO_CASES = [  # (V, G, multicrop): G global views with keys, V - G local crops
    (2, 2, "light"),
    (3, 3, "light"),
    (4, 2, "light"),
    (5, 2, "light"),
    (4, 4, "full"),
    (5, 5, "full"),
]


@pytest.mark.parametrize("cost", ["rbf", "euclidean"])
@pytest.mark.parametrize("V,G,multicrop", MOCO_CASES)
def test_moco_matches_loop_reference_with_gradients(cost, V, G, multicrop):
    for T, seed in ((1.0, 0), (0.2, 1), (0.5, 2)):
        x = torch.randn(V, 5, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))
        x.requires_grad_(True)
        k = unit(G, 5, 6, seed=seed + 10)
        out = moco_cacr_loss(F.normalize(x, dim=-1), T, cost, keys=k, multicrop=multicrop)
        ref = ref_moco(F.normalize(x, dim=-1), k, T, cost, multicrop)
        torch.testing.assert_close(out.loss, ref, rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(out.attraction + out.repulsion, out.loss)
        (g,) = torch.autograd.grad(out.loss, x)
        (g_ref,) = torch.autograd.grad(ref, x)
        torch.testing.assert_close(g, g_ref, rtol=1e-8, atol=1e-12)


@pytest.mark.parametrize("cost", ["rbf", "euclidean"])
def test_moco_weights_get_no_gradient(cost):
    """The gradient is the detached-weights reference's, not the attached one's."""
    x = torch.randn(4, 5, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    x.requires_grad_(True)
    k = unit(2, 5, 6, seed=4)
    q = lambda: F.normalize(x, dim=-1)  # noqa: E731
    (g,) = torch.autograd.grad(moco_cacr_loss(q(), 0.5, cost, keys=k).loss, x)
    (g_det,) = torch.autograd.grad(ref_moco(q(), k, 0.5, cost), x)
    (g_att,) = torch.autograd.grad(ref_moco(q(), k, 0.5, cost, attached=True), x)
    torch.testing.assert_close(g, g_det, rtol=1e-8, atol=1e-12)
    assert (g - g_att).abs().max() > 1e-4  # the weights' own gradient would be visible
    out = moco_cacr_loss(q(), 0.5, cost, keys=k)
    assert not out.pos_weights.requires_grad and out.pos_weights.grad_fn is None


def test_moco_euclidean_cr_softmax_gets_no_gradient():
    """With one query view (p = 1) only the CR softmax can carry a weight gradient."""
    x = torch.randn(2, 6, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    x.requires_grad_(True)
    k = unit(2, 6, 4, seed=6)
    (g,) = torch.autograd.grad(
        moco_cacr_loss(F.normalize(x, dim=-1), 0.3, "euclidean", keys=k).loss, x
    )
    q = F.normalize(x, dim=-1)
    # By hand: with w = softmax(-c/T) held fixed, CR's gradient is -sum_m w_m dc_m.
    hand = 0.0
    for a, j in ((0, 1), (1, 0)):
        c = 1 - q[j] @ k[a].T  # (B, B)
        neg = c.masked_fill(torch.eye(6, dtype=torch.bool), float("inf"))
        w = torch.softmax(-neg.detach() / 0.3, dim=-1)
        cr = -(w * c.masked_fill(torch.eye(6, dtype=torch.bool), 0.0)).sum(-1)
        hand = hand + (c.diagonal() + cr).mean() / 2
    (g_hand,) = torch.autograd.grad(hand, x)
    torch.testing.assert_close(g, g_hand, rtol=1e-8, atol=1e-12)


def test_moco_two_views_rbf_is_moco_v3_symmetric_loss_over_two():
    q, k = unit(2, 8, 16, seed=21), unit(2, 8, 16, seed=22)
    for T in (0.1, 0.2, 1.0):
        out = moco_cacr_loss(q, temperature=T, keys=k)
        symmetric = moco_v3_ctr(q[0], k[1], T) + moco_v3_ctr(q[1], k[0], T)
        torch.testing.assert_close(out.loss, symmetric / 2, rtol=0, atol=1e-12)
        torch.testing.assert_close(out.pos_weights, torch.ones(2, 8, 1, dtype=torch.float64))


def test_moco_weight_tensors_follow_documented_layout():
    q, k = unit(4, 6, 8, seed=24), unit(2, 6, 8, seed=25)
    out = moco_cacr_loss(q, 0.5, keys=k)  # anchors 0, 1; query views j != a of 4
    assert out.pos_weights.shape == (2, 6, 3) and out.neg_weights.shape == (2, 6, 3, 5)
    for a in range(2):
        js = [j for j in range(4) if j != a]
        for n in range(6):
            d2 = torch.stack([((q[j, n] - k[a, n]) ** 2).sum() for j in js])
            torch.testing.assert_close(out.pos_d2[a, n], d2)
            torch.testing.assert_close(out.pos_weights[a, n], torch.softmax(d2 / 0.5, 0))
            for i, j in enumerate(js):
                others = [m for m in range(6) if m != n]
                s = torch.stack([q[j, n] @ k[a, m] for m in others])
                torch.testing.assert_close(out.neg_weights[a, n, i], torch.softmax(s / 0.5, 0))
                torch.testing.assert_close(out.neg_d2[a, n, i], 2 - 2 * s)


def test_moco_registry_call_uses_the_views_as_detached_keys():
    """``LOSSES["moco"](views)``: the keys default to the views themselves, detached."""
    x = torch.randn(3, 4, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(7))
    x.requires_grad_(True)
    q = lambda: F.normalize(x, dim=-1)  # noqa: E731
    out = LOSSES["moco"](q(), **loss_options("moco"))
    ref = ref_moco(q(), q().detach(), 1.0, "rbf")
    torch.testing.assert_close(out.loss, ref)
    (g,) = torch.autograd.grad(out.loss, x)
    (g_ref,) = torch.autograd.grad(ref, x)
    torch.testing.assert_close(g, g_ref)
    assert loss_options("moco") == {"temperature": 1.0, "cost": "rbf"}


def test_moco_gradcheck_where_no_weight_depends_on_the_input_and_keys_get_no_gradient():
    """gradcheck differentiates numerically through the no-grad weights too, so it applies where
    they are constant: two views (p = 1) and the rbf cost (no CR softmax). Elsewhere the loop
    reference's autograd gradient with detached weights is the check (tests above)."""
    x = torch.randn(2, 4, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    x.requires_grad_(True)
    k = unit(2, 4, 5, seed=4).requires_grad_(True)
    fn = lambda t: moco_cacr_loss(F.normalize(t, dim=-1), 0.5, keys=k).loss  # noqa: E731
    assert torch.autograd.gradcheck(fn, (x,))
    fn(x).backward()
    assert k.grad is None


@pytest.mark.parametrize(
    "kwargs,pattern",
    [
        ({"keys": unit(2, 3, 5)}, r"keys must be \(G, 4, 5\).*\(2, 3, 5\)"),
        ({"keys": unit(5, 4, 5)}, r"G <= V=4.*\(5, 4, 5\)"),
        ({"keys": unit(1, 4, 5)}, "keys: need at least V=2"),
        ({"keys": 2 * unit(2, 4, 5)}, "keys: views must be L2-normalised"),
        ({"keys": unit(2, 4, 5), "multicrop": "full"}, "keys for all V=4 views; got keys for G=2"),
        ({"multicrop": "half"}, "multicrop 'half'.*light, full"),
        ({"cost": "cosine"}, "cost 'cosine'.*euclidean, rbf"),
        ({"temperature": 0.0}, "temperature.*0.0"),
    ],
)
def test_moco_bad_input_raises_one_line_naming_the_value(kwargs, pattern):
    with pytest.raises(ValueError, match=pattern) as err:
        moco_cacr_loss(unit(4, 4, 5), **kwargs)
    assert "\n" not in str(err.value)
