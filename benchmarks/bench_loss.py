"""Speed and memory of ``cacr_loss`` against a reference-style loop, measured side by side.

    python benchmarks/bench_loss.py                 # CPU, V=5, B=128/256/512, D=128
    python benchmarks/bench_loss.py --device cuda   # the same on a GPU (adds B=4096 timing)

Prints forward+backward time (median over interleaved rounds, so machine noise hits every
contender alike) of:
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
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import statistics
import subprocess
import sys
import time

import torch
import torch.nn.functional as F

from cacr_lab.losses import cacr_loss, info_nce_loss


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


def time_side_by_side(runs: dict, device: str, rounds: int) -> dict[str, float]:
    for run in runs.values():  # warm-up
        run()
    sync(device)
    samples: dict[str, list[float]] = {k: [] for k in runs}
    for _ in range(rounds):
        for name, run in runs.items():
            sync(device)
            t = time.perf_counter()
            run()
            sync(device)
            samples[name].append(time.perf_counter() - t)
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--views", type=int, default=5)
    ap.add_argument("--dim", type=int, default=128)
    ap.add_argument("--sizes", default="128,256,512")
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--memory-batch", type=int, default=2048)
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


if __name__ == "__main__":
    main()
