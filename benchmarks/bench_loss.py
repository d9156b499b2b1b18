"""Speed and memory of ``cacr_loss`` against a reference-style loop, measured side by side.

    python benchmarks/bench_loss.py                 # CPU, V=5, B=128/256/512, D=128
    python benchmarks/bench_loss.py --device cuda   # the same on a GPU (adds B=4096 timing)

Prints forward+backward time (median over interleaved rounds in a shuffled order, so machine
noise and cache state hit every contender alike; each sample repeats a call for >= 10 ms) of:
  - cacr_loss          the library's vectorised loss (default options)
  - loop (reference)   written like the reference code: loops over view pairs, one (B, B, D)
                       difference tensor per pair
  - gram floor         the one (VB, D) @ (D, VB) Gram matmul of all views, forward only, into
                       a preallocated output (a fresh 6 MB output adds up to a page fault per
                       4 KiB on CPU, which made this floor itself vary by 2x between runs)
  - info_nce_loss      multi-view InfoNCE at the same sizes, in both multi-view forms:
                       "pairs" (NT-Xent per view pair, averaged; the default) and "cmc"
                       (CMC's full graph: ordered pairs, cross-view negatives, summed)
and the peak memory of a V=5, B=2048, D=128 forward+backward (CPU: resident-set growth measured
in a fresh subprocess; CUDA: torch.cuda.max_memory_allocated).

Then the baselines against their plain one-matrix forms (``--baseline-sizes``, default 256 and
512; with 1 intra-op thread and with the machine's default, ``--threads``), each row one run of
interleaved rounds of all its contenders, medians:
  - V = 2: every baseline of the library against its plain form (``PLAIN``): SimCLR's one (2B, 2B)
    similarity matrix, diagonal masked, cross-entropy with the partner as target; CMC's two
    directions as cross-entropies of one (B, B) matrix and its transpose; HN-CL and DCL as
    reweightings of that (2B, 2B) matrix (query and partner masked, log-sum-exps); AU-CL with
    torch.pdist. Target: library / plain <= 1.2.
  - V = --views (5): each multi-view form against the plain V = 2 form run once per view pair
    (``per_pair``: the same value, the pairs' mean, or sum for "cmc"). Target: <= 1.0.
Each row prints "met" or "MISSED"; a value check first (float64, the library against the plain
forms).
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import random
import statistics
import subprocess
import sys
import time

import torch
import torch.nn.functional as F

from cacr_lab.losses import (
    align_uniform_loss,
    cacr_loss,
    debiased_loss,
    hard_negative_loss,
    info_nce_loss,
)

TARGET_V2 = 1.2  # library / plain one-matrix form at V = 2
TARGET_MULTIVIEW = 1.0  # multi-view form / the plain V = 2 form once per view pair


def loop_cacr(z: torch.Tensor, tau_pos=1.0, tau_neg=0.9, alpha=1.0, beta=1.0) -> torch.Tensor:
    """CACR the way the reference code writes it: per view, per pair, difference tensors."""
    V, B, _ = z.shape
    attraction = 0.0
    for v in range(V):
        d = torch.stack([(z[v] - z[w]).pow(2).sum(-1) for w in range(V) if w != v], dim=1)
        attraction = attraction + (torch.softmax(tau_pos * d, 1) * alpha * d).sum(1).mean()
    attraction = attraction / V
    pairs = list(itertools.combinations(range(V), 2))
    off = ~torch.eye(B, dtype=torch.bool, device=z.device)
    repulsion = 0.0
    for v, w in pairs:
        diff = z[v][:, None, :] - z[w][None, :, :]  # (B, B, D)
        d = diff.pow(2).sum(-1).masked_select(off).view(B, B - 1)
        repulsion = repulsion + (torch.softmax(-tau_neg * d, 1) * (-beta * d)).sum(1).mean()
    return attraction + repulsion / len(pairs)


# --------------------------------------------------------------------------------------------
# The plain one-matrix forms of the baselines (V = 2 views: z (2, B, D), L2-normalised)
# --------------------------------------------------------------------------------------------


def plain_simclr(z: torch.Tensor, temperature: float = 0.5) -> torch.Tensor:
    """SimCLR's NT-Xent as usually written: one (2B, 2B) similarity matrix, the diagonal masked,
    cross-entropy with the other view of the same image as the target."""
    B = z.shape[1]
    zz = z.reshape(2 * B, -1)
    sim = (zz @ zz.T / temperature).fill_diagonal_(float("-inf"))
    target = torch.arange(2 * B, device=z.device).roll(B)  # row r's partner: (r + B) mod 2B
    return F.cross_entropy(sim, target)


def plain_cmc(z: torch.Tensor, temperature: float = 0.5) -> torch.Tensor:
    """CMC's form at V = 2 (``multiview="cmc"``): one (B, B) cross-view matrix, a cross-entropy
    over its rows (view 0 -> 1) plus one over its columns (1 -> 0), summed."""
    sim = z[0] @ z[1].T / temperature
    target = torch.arange(z.shape[1], device=z.device)
    return F.cross_entropy(sim, target) + F.cross_entropy(sim.T, target)


def plain_hard_negative(
    z: torch.Tensor, temperature: float = 0.5, beta: float = 1.0, tau_plus: float = 0.1
) -> torch.Tensor:
    """HN-CL (Robinson et al.; beta = 0: DCL, Chuang et al.) as a reweighting of the one (2B, 2B)
    matrix: query and partner masked, N = 2B - 2 negatives,
    N sum_j imp_j neg_j / sum_j imp_j = exp(log N + lse((1 + beta) s / T) - lse(beta s / T)),
    then the published debiasing and clamp, in log space."""
    B = z.shape[1]
    zz = z.reshape(2 * B, -1)
    sim = zz @ zz.T / temperature
    rows = torch.arange(2 * B, device=z.device)
    pos = sim[rows, rows.roll(B)]  # (2B,): s+ / T
    eye = torch.eye(B, dtype=torch.bool, device=z.device)
    neg = sim.masked_fill(eye.repeat(2, 2), float("-inf"))  # query and partner masked
    n = 2 * B - 2
    if beta > 0:
        lse = torch.logsumexp
        log_rw = math.log(n) + lse((1 + beta) * neg, -1) - lse(beta * neg, -1)
    else:
        log_rw = torch.logsumexp(neg, -1)
    m = torch.maximum(pos, log_rw).detach()
    num = (torch.exp(log_rw - m) - tau_plus * n * torch.exp(pos - m)) / (1 - tau_plus)
    floor = torch.full_like(m, math.log(n) - 1 / temperature)
    log_ng = torch.maximum(torch.log(num.clamp_min(1e-30)) + m, floor)
    return (torch.logaddexp(pos, log_ng) - pos).mean()


def plain_debiased(z: torch.Tensor, temperature: float = 0.5, tau_plus: float = 0.1):
    """DCL (Chuang et al.): ``plain_hard_negative`` with beta = 0."""
    return plain_hard_negative(z, temperature, 0.0, tau_plus)


def plain_align_uniform(z: torch.Tensor, t: float = 2.0) -> torch.Tensor:
    """AU-CL as Wang & Isola's code writes it: alignment from the differences, uniformity from
    torch.pdist per view, averaged over the two views."""
    align = (z[0] - z[1]).norm(dim=1).pow(2).mean()
    unif = [torch.pdist(v, p=2).pow(2).mul(-t).exp().mean().log() for v in z]
    return align + (unif[0] + unif[1]) / 2


# name: (the library's loss at its defaults (T = 0.5 for the InfoNCE family), its plain form,
# how the per-pair values of the plain form combine at V > 2: "mean" or "sum")
PLAIN = {
    "info_nce pairs": (lambda z: info_nce_loss(z, 0.5, check_inputs=False), plain_simclr, "mean"),
    "info_nce cmc": (
        lambda z: info_nce_loss(z, 0.5, multiview="cmc", check_inputs=False),
        plain_cmc,
        "sum",
    ),
    "hard_negative": (
        lambda z: hard_negative_loss(z, 0.5, check_inputs=False),
        plain_hard_negative,
        "mean",
    ),
    "debiased": (lambda z: debiased_loss(z, 0.5, check_inputs=False), plain_debiased, "mean"),
    "align_uniform": (
        lambda z: align_uniform_loss(z, check_inputs=False),
        plain_align_uniform,
        "mean",
    ),
}


def per_pair(plain, combine: str):
    """The plain V = 2 form run once per view pair v < w of (V, B, D) views, combined."""

    def run(z: torch.Tensor) -> torch.Tensor:
        vals = [plain(z[[v, w]]) for v, w in itertools.combinations(range(z.shape[0]), 2)]
        total = sum(vals)
        return total / len(vals) if combine == "mean" else total

    return run


def check_baselines(V: int, device: str) -> float:
    """The largest |library - plain| (float64): at V = 2 and, per pair, at V."""
    worst = 0.0
    for lib, plain, combine in PLAIN.values():
        for n in (2, V):
            z = F.normalize(torch.randn(n, 24, 16, device=device, dtype=torch.float64), dim=-1)
            diff = lib(z).loss - per_pair(plain, combine)(z)
            worst = max(worst, diff.abs().item())
    return worst


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def contenders(V: int, B: int, D: int, device: str):
    g = torch.Generator(device=device).manual_seed(0)
    # An L2-normalised leaf: the timings are the losses' own forward + backward; normalising
    # is the encoder head's work (and costs every contender the same).
    z = F.normalize(torch.randn(V, B, D, device=device, generator=g), dim=-1)
    z.requires_grad_(True)
    flat = torch.randn(V * B, D, device=device, generator=g)
    gram = flat.new_empty(V * B, V * B)

    def fwd_bwd(fn):
        def run():
            z.grad = None
            fn(z).backward()

        return run

    return {
        "cacr_loss": fwd_bwd(lambda z: cacr_loss(z, 1.0, 0.9, check_inputs=False).loss),
        "loop (reference)": fwd_bwd(loop_cacr),
        "gram floor": lambda: torch.mm(flat, flat.T, out=gram),
        "info_nce_loss": fwd_bwd(lambda z: info_nce_loss(z, 0.5, check_inputs=False).loss),
        "info_nce cmc": fwd_bwd(
            lambda z: info_nce_loss(z, 0.5, multiview="cmc", check_inputs=False).loss
        ),
    }


def time_side_by_side(
    runs: dict, device: str, rounds: int, min_sample_s: float = 0.01
) -> dict[str, float]:
    """Median seconds per call of each run, measured in ``rounds`` interleaved rounds.

    Each sample repeats its call until it lasts ~``min_sample_s`` (a single 1 ms call right
    after another run's 30 ms one measures refilling the cache more than the call), and each
    round takes the runs in a fresh shuffled order (a fixed order lets the second of two alike
    runs inherit a warm cache from the first).
    """
    reps = {}
    for name, run in runs.items():  # warm-up, and how many calls make one sample
        run()
        sync(device)
        t = time.perf_counter()
        run()
        sync(device)
        reps[name] = max(1, math.ceil(min_sample_s / max(time.perf_counter() - t, 1e-6)))
    samples: dict[str, list[float]] = {k: [] for k in runs}
    order = list(runs)
    shuffle = random.Random(0).shuffle
    for _ in range(rounds):
        shuffle(order)
        for name in order:
            run, n = runs[name], reps[name]
            sync(device)
            t = time.perf_counter()
            for _ in range(n):
                run()
            sync(device)
            samples[name].append((time.perf_counter() - t) / n)
    return {k: statistics.median(v) for k, v in samples.items()}


def check_values(device: str) -> float:
    z = F.normalize(torch.randn(5, 64, 32, device=device, dtype=torch.float64), dim=-1)
    return (cacr_loss(z, 1.0, 0.9).loss - loop_cacr(z)).abs().item()


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def memory_child(which: str, V: int, B: int, D: int) -> None:
    """Run in a fresh process: peak RSS growth of one forward+backward, printed as JSON."""
    x = torch.randn(V, B, D, requires_grad=True)
    z = F.normalize(x, dim=-1).detach().requires_grad_(True)
    before = _rss_mb()
    if which == "cacr":
        cacr_loss(z, 1.0, 0.9, check_inputs=False).loss.backward()
    else:
        loop_cacr(z).backward()
    print(json.dumps({"peak_mb": _peak_rss_mb() - before}))


def _peak_rss_mb() -> float:
    """This process image's peak resident set (VmHWM). Not ru_maxrss: Linux carries that over
    from the parent across fork + exec, so a child would report its parent's peak."""
    with open("/proc/self/status") as f:
        line = next(ln for ln in f if ln.startswith("VmHWM:"))
    return int(line.split()[1]) / 1024  # kB -> MiB


def peak_memory_mb(which: str, V: int, B: int, D: int, device: str) -> float:
    if device == "cuda":
        x = torch.randn(V, B, D, device=device, requires_grad=True)
        z = F.normalize(x, dim=-1).detach().requires_grad_(True)
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()

        def fn(t):
            return (
                cacr_loss(t, 1.0, 0.9, check_inputs=False).loss if which == "cacr" else loop_cacr(t)
            )

        fn(z).backward()
        torch.cuda.synchronize()
        return (torch.cuda.max_memory_allocated() - base) / 2**20
    out = subprocess.run(
        [sys.executable, __file__, "--memory-child", which, str(V), str(B), str(D)],
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])["peak_mb"]


def baseline_table(V: int, D: int, sizes: list[int], threads: list[int], rounds: int, device: str):
    """The baselines against their plain forms (module docstring), one row per loss, size and
    thread count; returns the rows as dicts (and prints them)."""
    print(
        f"# baselines against their plain one-matrix forms, fwd+bwd, D={D}, medians of {rounds} "
        f"interleaved rounds; targets: V=2 library/plain <= {TARGET_V2}, V={V} multi-view / "
        f"(plain V=2 form once per pair) <= {TARGET_MULTIVIEW}"
    )
    print(f"# value check: max |library - plain| = {check_baselines(V, device):.2e} (float64)")
    print(
        f"{'threads':>7} {'B':>5} {'loss':<15} {'V=2 lib ms':>11} {'plain ms':>9} {'ratio':>6} "
        f"{'V=2':>6} {f'V={V} lib ms':>11} {'per-pair ms':>12} {'ratio':>6} {f'V={V}':>6}"
    )
    default, rows = torch.get_num_threads(), []
    for n_threads in threads:
        torch.set_num_threads(n_threads)
        for B in sizes:
            g = torch.Generator(device=device).manual_seed(0)
            z2 = F.normalize(torch.randn(2, B, D, device=device, generator=g), dim=-1)
            zv = F.normalize(torch.randn(V, B, D, device=device, generator=g), dim=-1)
            z2.requires_grad_(True)
            zv.requires_grad_(True)
            runs = {}
            for name, (lib, plain, combine) in PLAIN.items():
                runs[(name, "lib2")] = _fwd_bwd(z2, lambda z, f=lib: f(z).loss)
                runs[(name, "plain2")] = _fwd_bwd(z2, plain)
                runs[(name, "libV")] = _fwd_bwd(zv, lambda z, f=lib: f(z).loss)
                runs[(name, "pairs")] = _fwd_bwd(zv, per_pair(plain, combine))
            t = time_side_by_side(runs, device, rounds)
            for name in PLAIN:
                row = _baseline_row(name, n_threads, B, V, t)
                rows.append(row)
                print(
                    f"{n_threads:>7} {B:>5} {name:<15} {row['lib2_ms']:>11.2f} "
                    f"{row['plain2_ms']:>9.2f} {row['ratio2']:>6.2f} {row['met2']:>6} "
                    f"{row['libV_ms']:>11.2f} {row['pairs_ms']:>12.2f} {row['ratioV']:>6.2f} "
                    f"{row['metV']:>6}",
                    flush=True,
                )
    torch.set_num_threads(default)
    met = sum(r["met2"] == "met" for r in rows) + sum(r["metV"] == "met" for r in rows)
    print(f"# baselines: {met} of {2 * len(rows)} targets met")
    return rows


def _fwd_bwd(z: torch.Tensor, fn):
    def run():
        z.grad = None
        fn(z).backward()

    return run


def _baseline_row(name: str, threads: int, B: int, V: int, t: dict) -> dict:
    ms = {k: t[(name, k)] * 1e3 for k in ("lib2", "plain2", "libV", "pairs")}
    r2, rv = ms["lib2"] / ms["plain2"], ms["libV"] / ms["pairs"]
    return {
        "loss": name,
        "threads": threads,
        "B": B,
        **{f"{k}_ms": v for k, v in ms.items()},
        "ratio2": r2,
        "met2": "met" if r2 <= TARGET_V2 else "MISSED",
        "ratioV": rv,
        "metV": "met" if rv <= TARGET_MULTIVIEW else "MISSED",
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--views", type=int, default=5)
    ap.add_argument("--dim", type=int, default=128)
    ap.add_argument("--sizes", default="128,256,512")
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--memory-batch", type=int, default=2048)
    ap.add_argument("--baseline-sizes", default="256,512", help="B of the baselines' table")
    ap.add_argument(
        "--threads",
        default="1,default",
        help="intra-op thread counts of the baselines' table ('default': torch's)",
    )
    ap.add_argument("--memory-child", nargs=4, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.memory_child:
        which, V, B, D = args.memory_child
        memory_child(which, int(V), int(B), int(D))
        return
    if args.device == "cuda" and not torch.cuda.is_available():
        sys.exit("--device cuda: no CUDA device is available here")
    V, D = args.views, args.dim
    cpu = f"CPU, {torch.get_num_threads()} threads"
    dev_name = torch.cuda.get_device_name() if args.device == "cuda" else cpu
    print(f"# bench_loss: V={V}, D={D}, device={dev_name}, torch {torch.__version__}")
    print(f"# value check: |cacr_loss - loop| = {check_values(args.device):.2e} (float64)")
    sizes = [int(s) for s in args.sizes.split(",")]
    print(
        f"{'B':>6} {'cacr_loss ms':>13} {'loop ms':>10} {'loop/cacr':>10} {'gram ms':>9} "
        f"{'cacr/gram':>10} {'info_nce ms':>12} {'cmc ms':>9}"
    )
    for B in sizes:
        runs = contenders(V, B, D, args.device)
        if B > 1024:
            runs.pop("loop (reference)")  # a (B, B, D) tensor per pair: too large to be useful
        t = time_side_by_side(runs, args.device, args.rounds)
        loop, cacr = t.get("loop (reference)", float("nan")), t["cacr_loss"]
        print(
            f"{B:>6} {cacr * 1e3:>13.2f} {loop * 1e3:>10.2f} {loop / cacr:>10.1f} "
            f"{t['gram floor'] * 1e3:>9.3f} {cacr / t['gram floor']:>10.2f} "
            f"{t['info_nce_loss'] * 1e3:>12.2f} {t['info_nce cmc'] * 1e3:>9.2f}"
        )
    Bm = args.memory_batch
    cacr_mb = peak_memory_mb("cacr", V, Bm, D, args.device)
    loop_small = min(512, Bm)
    loop_mb = peak_memory_mb("loop", V, loop_small, D, args.device)
    # The loop keeps one (B, B, D) float32 difference tensor per pair for backward.
    loop_est_gb = V * (V - 1) / 2 * Bm * Bm * D * 4 / 2**30
    print(f"# peak memory, forward+backward, V={V}, D={D}:")
    print(f"#   cacr_loss B={Bm}: {cacr_mb:.0f} MiB")
    print(
        f"#   loop      B={loop_small}: {loop_mb:.0f} MiB measured; B={Bm}: >= {loop_est_gb:.1f} "
        "GiB of difference tensors alone (computed, not run)"
    )
    default = torch.get_num_threads()
    threads = [default if t == "default" else int(t) for t in args.threads.split(",")]
    sizes = [int(b) for b in args.baseline_sizes.split(",")]
    baseline_table(V, D, sizes, list(dict.fromkeys(threads)), args.rounds, args.device)


if __name__ == "__main__":
    main()
