"""The InfoNCE family's fused block kernel (``losses/_infonce_kernel.py``) and the plain
one-matrix forms ``benchmarks/bench_loss.py`` times it against.

- The plain forms (SimCLR's masked (2B, 2B) cross-entropy, CMC's two directions, HN-CL / DCL as
  reweightings of the one matrix, AU-CL with pdist) equal the library's losses at V = 2, values
  and gradients, in float64, and pass gradcheck themselves: the benchmark compares like with like.
- Both paths of the kernel (column sums without a shift; every ordered block with each row
  shifted, taken where exp could overflow) give the same values and gradients, the shifted one
  also at a temperature where it is the one taken, against the loop references.
- One backward per forward and a retained graph's second backward; the scratch goes back; the
  negative weights are computed when first read.
"""

from __future__ import annotations

import importlib.util
import itertools
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from cacr_lab.losses import (
    LOSSES,
    _cacr_kernel,
    _infonce_kernel,
    align_uniform_loss,
    debiased_loss,
    hard_negative_loss,
    info_nce_loss,
)

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_loss.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_loss", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def unit(*shape: int, seed: int = 0, dtype=torch.float64) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(*shape, generator=g, dtype=dtype), dim=-1)


def value_and_grad(fn, z):
    """The loss and its gradient through the normalisation, as an encoder sees them (the
    Gram-matrix and the difference forms of d2 agree on the sphere, not off it)."""
    x = z.clone().requires_grad_(True)
    loss = fn(F.normalize(x, dim=-1))
    loss = loss.loss if hasattr(loss, "loss") else loss
    loss.backward()
    return loss.detach(), x.grad


def ref_nt_xent(z1, z2, T):
    """SimCLR's NT-Xent, one query at a time (as tests/test_losses.py)."""
    zs = torch.cat([z1, z2])
    n, B = len(zs), len(z1)
    total = 0.0
    for r in range(n):
        logits = [zs[r] @ zs[c] / T for c in range(n) if c != r]
        total = total - (zs[r] @ zs[(r + B) % n] / T - torch.logsumexp(torch.stack(logits), 0))
    return total / n


def ref_hard_cmc(z, T, tau_plus, beta):
    """Robinson et al.'s recipe on CMC's pairing, one query at a time, in log space (at small T
    the direct exps of the recipe overflow): Ng = max((N sum imp neg / sum imp - tau_plus N pos)
    / (1 - tau_plus), N e^{-1/T}), term log(pos + Ng) - log pos."""
    V, B, _ = z.shape
    N, total = B - 1, 0.0
    for v, w in itertools.permutations(range(V), 2):
        for i in range(B):
            pos = z[v, i] @ z[w, i] / T
            neg = torch.stack([z[v, i] @ z[w, j] / T for j in range(B) if j != i])
            log_rw = math.log(N) + torch.logsumexp((1 + beta) * neg, 0)
            log_rw = log_rw - torch.logsumexp(beta * neg, 0)
            m = torch.maximum(pos, log_rw)
            num = (torch.exp(log_rw - m) - tau_plus * N * torch.exp(pos - m)) / (1 - tau_plus)
            floor = math.log(N) - 1 / T
            log_ng = floor if num <= 0 else torch.clamp(torch.log(num) + m, min=floor)
            total = total + (torch.logaddexp(pos, torch.as_tensor(log_ng)) - pos) / B
    return total


@pytest.mark.parametrize(
    "name", ["info_nce pairs", "info_nce cmc", "hard_negative", "debiased", "align_uniform"]
)
@pytest.mark.parametrize("B", [2, 5, 9])
def test_plain_forms_equal_the_library_at_two_views(bench, name, B):
    lib, plain, _ = bench.PLAIN[name]
    z = unit(2, B, 6, seed=B)
    lv, lg = value_and_grad(lambda x: lib(x).loss, z)
    pv, pg = value_and_grad(plain, z)
    torch.testing.assert_close(lv, pv, rtol=0, atol=1e-12)
    torch.testing.assert_close(lg, pg, rtol=0, atol=1e-12)


@pytest.mark.parametrize(
    "plain", ["plain_simclr", "plain_cmc", "plain_hard_negative", "plain_debiased"]
)
def test_plain_forms_gradcheck(bench, plain):
    x = torch.randn(2, 4, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    fn = getattr(bench, plain)
    assert torch.autograd.gradcheck(lambda t: fn(F.normalize(t, dim=-1)), (x.requires_grad_(),))


def test_plain_align_uniform_gradcheck(bench):
    x = torch.randn(2, 4, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    fn = bench.plain_align_uniform
    assert torch.autograd.gradcheck(lambda t: fn(F.normalize(t, dim=-1)), (x.requires_grad_(),))


@pytest.mark.parametrize("V", [2, 5])
def test_multiview_forms_equal_the_plain_form_once_per_pair(bench, V):
    """What the benchmark's V = 5 column compares: the same value, computed once per pair."""
    z = unit(V, 6, 4, seed=V)
    for lib, plain, combine in bench.PLAIN.values():
        torch.testing.assert_close(
            lib(z).loss, bench.per_pair(plain, combine)(z), rtol=0, atol=1e-12
        )


LOSS_CASES = [
    (info_nce_loss, {"temperature": 0.3}),
    (hard_negative_loss, {"temperature": 0.4, "beta": 1.5, "tau_plus": 0.1}),
    (debiased_loss, {"temperature": 0.4, "tau_plus": 0.2}),
]


@pytest.mark.parametrize("multiview", ["pairs", "cmc"])
@pytest.mark.parametrize("fn,options", LOSS_CASES)
def test_shifted_path_equals_the_unshifted_one(monkeypatch, fn, options, multiview):
    """Every ordered block, rows shifted by their maximum (taken where exp could overflow), gives
    what the column-sum path gives, values and gradients."""
    z = unit(3, 5, 4, seed=7)
    fast = value_and_grad(lambda x: fn(x, **options, multiview=multiview), z)
    monkeypatch.setattr(_infonce_kernel, "_exp_is_safe", lambda *args: False)
    shifted = value_and_grad(lambda x: fn(x, **options, multiview=multiview), z)
    for a, b in zip(fast, shifted):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-12)


@pytest.mark.parametrize("multiview", ["pairs", "cmc"])
@pytest.mark.parametrize("method", ["infonce", "hard-negative", "debiased"])
def test_shifted_path_gradcheck(monkeypatch, method, multiview):
    monkeypatch.setattr(_infonce_kernel, "_exp_is_safe", lambda *args: False)
    x = torch.randn(3, 4, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    fn = LOSSES[method]
    assert torch.autograd.gradcheck(
        lambda t: fn(F.normalize(t, dim=-1), multiview=multiview).loss, (x.requires_grad_(),)
    )


def test_small_temperature_takes_the_shifted_path_and_matches_the_loops():
    """T = 0.002: 1 / T = 500 is past float64's safe exponent (~318), so the rows are shifted;
    the values and gradients are still the loop references' (which run in log space)."""
    assert not _infonce_kernel._exp_is_safe(500 / 2, torch.float64)
    z = unit(2, 4, 3, seed=3)
    T = 0.002
    value, grad = value_and_grad(lambda x: info_nce_loss(x, T), z)
    ref_value, ref_grad = value_and_grad(lambda x: ref_nt_xent(x[0], x[1], T), z)
    torch.testing.assert_close(value, ref_value, rtol=1e-12, atol=1e-9)
    torch.testing.assert_close(grad, ref_grad, rtol=1e-9, atol=1e-6)
    z = unit(3, 4, 3, seed=5)
    value, grad = value_and_grad(lambda x: hard_negative_loss(x, T, 0.5, 0.1, multiview="cmc"), z)
    ref_value, ref_grad = value_and_grad(lambda x: ref_hard_cmc(x, T, 0.1, 0.5), z)
    torch.testing.assert_close(value, ref_value, rtol=1e-12, atol=1e-9)
    torch.testing.assert_close(grad, ref_grad, rtol=1e-9, atol=1e-6)


@pytest.mark.parametrize("fn,options", LOSS_CASES)
def test_backward_twice_through_a_retained_graph(fn, options):
    z = unit(3, 5, 4, seed=1).requires_grad_(True)
    out = fn(z, **options)
    out.loss.backward(retain_graph=True)
    first = z.grad.clone()
    z.grad = None
    out.loss.backward()
    torch.testing.assert_close(z.grad, first, rtol=0, atol=0)


def test_kernel_scratch_goes_back_after_backward():
    V, B, D = 2, 6, 4
    K = 3  # "pairs" with column sums: blocks (0, 0), (0, 1), (1, 1)
    key = (2 * K * B * B + 4 * K * B * D, torch.float64)  # one exp buffer, the gradient's, views
    _cacr_kernel._FREE_SCRATCH.pop(key, None)
    z = unit(V, B, D, seed=8).requires_grad_(True)
    out = debiased_loss(z, 0.5)  # one scale; info_nce_loss takes the plain form at V = 2
    assert key not in _cacr_kernel._FREE_SCRATCH  # leased by the live graph
    out.loss.backward()
    assert key in _cacr_kernel._FREE_SCRATCH  # given back by the backward


@pytest.mark.parametrize("multiview", ["pairs", "cmc"])
def test_negative_weights_are_computed_on_first_read(multiview):
    z = unit(3, 5, 4, seed=2)
    for fn, options in LOSS_CASES:
        out = fn(z, **options, multiview=multiview)
        assert callable(out.__dict__["_deferred_neg_weights"])  # not computed by the step
        w = out.neg_weights
        assert not callable(out.__dict__["_deferred_neg_weights"])
        torch.testing.assert_close(w.sum(-1), torch.ones_like(w.sum(-1)))
        assert out.neg_d2.shape == w.shape and not w.requires_grad


def test_align_uniform_uniformity_is_the_per_view_metric_at_any_batch():
    from cacr_lab.losses import uniformity

    for B in (2, 3, 17):
        z = unit(3, B, 4, seed=B)
        out = align_uniform_loss(z, unif_t=1.5)
        expected = sum(uniformity(z[v], t=1.5) for v in range(3)) / 3
        torch.testing.assert_close(out.uniformity, expected, rtol=0, atol=1e-12)
