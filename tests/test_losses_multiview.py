"""The multi-view forms of the InfoNCE family (``multiview="pairs"`` / ``"cmc"``) against slow
loop references: values, gradients, the weights' layout, bad values.

"pairs" is NT-Xent per view pair v < w (both views' negatives), averaged over the V(V-1)/2 pairs;
"cmc" is CMC's full graph (Tian et al., arXiv 1906.05849): per ordered pair v != w, the query
from view v against the B samples of view w, summed over the V(V-1) pairs. The loops below
transcribe those sentences one query at a time.
"""

from __future__ import annotations

import itertools
import math

import pytest
import torch
import torch.nn.functional as F

from cacr_lab.losses import LOSSES, debiased_loss, hard_negative_loss, info_nce_loss


def unit(*shape: int, seed: int = 0, dtype=torch.float64) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(*shape, generator=g, dtype=dtype), dim=-1)


def ref_nt_xent(z1, z2, T):
    """SimCLR's NT-Xent, one query at a time: 2B queries, 2B - 2 negatives each."""
    zs = torch.cat([z1, z2])
    n, B = len(zs), len(z1)
    total = 0.0
    for r in range(n):
        logits = [zs[r] @ zs[c] / T for c in range(n) if c != r]
        total = total - (zs[r] @ zs[(r + B) % n] / T - torch.logsumexp(torch.stack(logits), 0))
    return total / n


def pairwise_mean(z, fn):
    pairs = list(itertools.combinations(range(z.shape[0]), 2))
    return sum(fn(z[v], z[w]) for v, w in pairs) / len(pairs)


def ref_info_nce_cmc(z, T):
    """CMC's full graph, one query at a time: for every ordered view pair (v, w), query i of
    view v against the B samples of view w (positive j = i), mean over i, summed over pairs."""
    V, B, _ = z.shape
    total = 0.0
    for v, w in itertools.permutations(range(V), 2):
        for i in range(B):
            logits = torch.stack([z[v, i] @ z[w, j] / T for j in range(B)])
            total = total - (z[v, i] @ z[w, i] / T - torch.logsumexp(logits, 0)) / B
    return total


def ref_hard_debiased_cmc(z, T, tau_plus, beta):
    """Robinson et al.'s recipe (beta = 0: Chuang et al.) on CMC's pairing: per ordered pair,
    N = B - 1 cross-view negatives; mean over queries, summed over the V(V-1) pairs."""
    V, B, _ = z.shape
    N = B - 1
    total = 0.0
    for v, w in itertools.permutations(range(V), 2):
        for i in range(B):
            pos = torch.exp(z[v, i] @ z[w, i] / T)
            neg = torch.stack([torch.exp(z[v, i] @ z[w, j] / T) for j in range(B) if j != i])
            imp = (beta * neg.log()).exp()
            ng = (-tau_plus * N * pos + (imp * neg).sum() / imp.mean()) / (1 - tau_plus)
            ng = torch.clamp(ng, min=N * math.e ** (-1 / T))
            total = total - torch.log(pos / (pos + ng)) / B
    return total


def pair_list(V: int) -> list[tuple[int, int]]:
    return list(itertools.combinations(range(V), 2))


@pytest.mark.parametrize("V", [2, 3, 5])
def test_info_nce_both_multiview_forms_match_loop_references(V):
    """The "pairs" form: NT-Xent per view pair (both views' negatives), averaged over the
    V(V-1)/2 pairs; "cmc": per ordered pair, cross-view negatives only, summed over V(V-1)."""
    z = unit(V, 5, 6, seed=30 + V)
    for T in (0.1, 0.5, 1.0):
        pairs = info_nce_loss(z, T, multiview="pairs")
        torch.testing.assert_close(pairs.loss, info_nce_loss(z, T).loss, rtol=0, atol=0)
        expected = pairwise_mean(z, lambda a, b, T=T: ref_nt_xent(a, b, T))
        torch.testing.assert_close(pairs.loss, expected, rtol=0, atol=1e-10)
        cmc = info_nce_loss(z, T, multiview="cmc")
        torch.testing.assert_close(cmc.loss, ref_info_nce_cmc(z, T), rtol=0, atol=1e-10)
        torch.testing.assert_close(cmc.loss, cmc.attraction + cmc.repulsion)
        # attraction: the -s+/T terms, averaged over the pairs ("pairs") or summed ("cmc")
        pos = torch.stack([(z[v] * z[w]).sum(-1).mean() / T for v, w in pair_list(V)]).mean()
        torch.testing.assert_close(pairs.attraction, -pos, rtol=0, atol=1e-12)
        torch.testing.assert_close(cmc.attraction, -V * (V - 1) * pos, rtol=0, atol=1e-12)


def test_info_nce_cmc_with_two_views_is_both_cross_view_directions_summed():
    """V = 2: "cmc" = CE(z0 z1^T / T) + CE(z1 z0^T / T), the cross-view InfoNCE of both
    directions summed -- not SimCLR's NT-Xent (which also has same-view negatives, averaged)."""
    z = unit(2, 8, 5, seed=12)
    target = torch.arange(8)
    for T in (0.2, 0.5):
        expected = F.cross_entropy(z[0] @ z[1].T / T, target) + F.cross_entropy(
            z[1] @ z[0].T / T, target
        )
        cmc = info_nce_loss(z, T, multiview="cmc").loss
        torch.testing.assert_close(cmc, expected, rtol=0, atol=1e-12)
        assert not torch.allclose(cmc, ref_nt_xent(z[0], z[1], T))
        assert not torch.allclose(cmc / 2, ref_nt_xent(z[0], z[1], T))


@pytest.mark.parametrize("V", [2, 3, 5])
def test_hard_negative_and_debiased_cmc_match_loop_reference(V):
    z = unit(V, 5, 4, seed=40 + V)
    for T, tau_plus, beta in [(0.5, 0.1, 1.0), (0.2, 0.05, 0.5), (1.0, 0.3, 2.0)]:
        hn = hard_negative_loss(z, T, beta, tau_plus, multiview="cmc")
        dcl = debiased_loss(z, T, tau_plus, multiview="cmc")
        exp_hn = ref_hard_debiased_cmc(z, T, tau_plus, beta)
        torch.testing.assert_close(hn.loss, exp_hn, rtol=0, atol=1e-10)
        torch.testing.assert_close(
            dcl.loss, ref_hard_debiased_cmc(z, T, tau_plus, 0.0), rtol=0, atol=1e-10
        )
        torch.testing.assert_close(hn.loss, hn.attraction + hn.repulsion)
    # The floor N e^{-1/T} (N = B - 1 here) takes over for a large class prior.
    torch.testing.assert_close(
        debiased_loss(z, 0.5, 0.9, multiview="cmc").loss,
        ref_hard_debiased_cmc(z, 0.5, 0.9, 0.0),
        rtol=0,
        atol=1e-10,
    )
    # tau_plus = 0 and beta = 0 leave InfoNCE (its positive in the denominator), form for form.
    for form in ("pairs", "cmc"):
        torch.testing.assert_close(
            debiased_loss(z, 0.5, 0.0, multiview=form).loss,
            info_nce_loss(z, 0.5, multiview=form).loss,
            rtol=0,
            atol=1e-10,
        )


@pytest.mark.parametrize(
    "method,options,ref",
    [
        ("infonce", {"temperature": 0.3}, lambda z: ref_info_nce_cmc(z, 0.3)),
        (
            "hard-negative",
            {"temperature": 0.4, "beta": 1.5, "tau_plus": 0.1},
            lambda z: ref_hard_debiased_cmc(z, 0.4, 0.1, 1.5),
        ),
        (
            "debiased",
            {"temperature": 0.4, "tau_plus": 0.2},
            lambda z: ref_hard_debiased_cmc(z, 0.4, 0.2, 0.0),
        ),
    ],
)
def test_cmc_gradients_match_the_loop_reference(method, options, ref):
    """The batched (V, V, B, B) form, v == w blocks masked out of the sum, has the loop's
    gradient (through the normalisation, float64)."""
    x = torch.randn(3, 4, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    x1, x2 = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    LOSSES[method](F.normalize(x1, dim=-1), **options, multiview="cmc").loss.backward()
    ref(F.normalize(x2, dim=-1)).backward()
    torch.testing.assert_close(x1.grad, x2.grad, rtol=0, atol=1e-10)


def test_cmc_negative_weights_follow_documented_layout():
    """(V(V-1), B, B-1): ordered pairs v != w, v-major; row i of pair (v, w) is the softmax
    over the negatives j != i of view w of s / T (HN-CL: (1 + beta) s / T), with their d2."""
    V, B, T, beta = 3, 4, 0.5, 1.5
    z = unit(V, B, 6, seed=5)
    outs = [  # (the softmax's scale of s / T, the output)
        (1.0, info_nce_loss(z, T, multiview="cmc")),
        (1.0 + beta, hard_negative_loss(z, T, beta, multiview="cmc")),
        (1.0, debiased_loss(z, T, multiview="cmc")),  # DCL: beta = 0
    ]
    for _, out in outs:
        assert out.neg_weights.shape == out.neg_d2.shape == (V * (V - 1), B, B - 1)
        assert not out.neg_weights.requires_grad
    for q, (v, w) in enumerate(itertools.permutations(range(V), 2)):
        for i in range(B):
            s = torch.stack([z[v, i] @ z[w, j] for j in range(B) if j != i])
            d2 = torch.stack([((z[v, i] - z[w, j]) ** 2).sum() for j in range(B) if j != i])
            for scale, out in outs:
                torch.testing.assert_close(out.neg_weights[q, i], torch.softmax(scale * s / T, 0))
                torch.testing.assert_close(out.neg_d2[q, i], d2)
    # "pairs" keeps its (P, 2B, 2B-2) layout.
    assert hard_negative_loss(z, T).neg_weights.shape == (3, 2 * B, 2 * B - 2)
    assert info_nce_loss(z, T).neg_weights.shape == (3, 2 * B, 2 * B - 2)


@pytest.mark.parametrize("method", ["infonce", "hard-negative", "debiased"])
def test_cmc_gradcheck(method):
    x = torch.randn(3, 4, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    x.requires_grad_(True)
    fn = LOSSES[method]
    assert torch.autograd.gradcheck(
        lambda t: fn(F.normalize(t, dim=-1), multiview="cmc").loss, (x,)
    )


@pytest.mark.parametrize(
    "fn,value,pattern",
    [
        (info_nce_loss, "full", "^unknown multiview 'full'; choose one of pairs, cmc$"),
        (hard_negative_loss, "CMC", "^unknown multiview 'CMC'; choose one of pairs, cmc$"),
        (debiased_loss, None, "^unknown multiview None; choose one of pairs, cmc$"),
    ],
)
def test_bad_multiview_value_is_a_one_line_error(fn, value, pattern):
    with pytest.raises(ValueError, match=pattern):
        fn(unit(2, 4, 3), multiview=value)
