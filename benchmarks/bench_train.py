"""Images/s of full pre-training steps: CACR (K = 4) against multi-view InfoNCE, side by side.

    python benchmarks/bench_train.py                  # CPU: small CNN on digits, B=128, V=5
    python benchmarks/bench_train.py --device cuda    # GPU: SmallAlexNet, random CIFAR-shaped data
    python benchmarks/bench_train.py --device cuda --cifar-folder PATH   # ... on an image folder
    python benchmarks/bench_train.py --smoke          # a few seconds; what the tests run

One step is what the trainer does (`cacr_lab.train.Trainer.train_step`): draw B images, make
V = K + 1 views with the batched augmentation on the device (`batch_augment_for`), embed them
(`embed_views`, one forward per view by default), the loss, backward, an SGD step (momentum 0.9,
weight decay 1e-4, lr 0.12 B / 256). Like the trainer: channels_last images and weights; bf16
autocast on CUDA only. The two methods share the data, the augmentation, the encoder (same
initial weights, one copy each) and the optimiser; only the loss differs (CACR with the paper's
tau_pos / tau_neg, InfoNCE with T = 0.5, both without the value checks, as the trainer calls
them). Each round times ``--steps`` consecutive steps of every method in turn (warm-up first; on
CUDA synchronised around each timed block; the order alternates between rounds), so machine
noise hits both alike; the table gives the median images/s over the rounds and their CACR /
InfoNCE ratio. Target: ratio >= 0.95 (the loss must not be the bottleneck of a step). On a
shared machine wall-clock rounds are noisy: the ratio of the fastest rounds and (CPU) the ratio of
the process's own CPU seconds per step are printed as cross-checks. For context, the loss alone
(forward + backward on random (V, B, D) unit vectors, median of the same number of rounds) and
its share of a step.

Then (CPU, unless ``--split-batch-sizes ''``) the time split of a CIFAR-size step: the small CNN
on 32 px colour images (random uint8 images, or ``--cifar-folder``), CIFAR's crop + flip + colour
jitter + grayscale views, V = 5, for each of ``--split-batch-sizes`` (default 128 and 256) and
``--split-methods``. A real `cacr_lab.train.Trainer` is built on those images (its config's
defaults: channels_last, one forward per view, SGD) and its own functions are timed, in the
order ``Trainer._take_step`` calls them: ``batch_views`` (the seeded generator, `BatchAugment`,
the memory format) = "views"; ``forward_model`` = "encoder fwd"; the loss function = "loss fwd";
its backward to the embeddings = "loss bwd"; the rest of the backward = "encoder bwd";
``guard.before_step`` + ``optimizer.step`` (+ ``zero_grad``) = "optimizer"; ``guard.sync`` +
``guard.checked_values`` + ``_log_train`` every ``log_every`` steps = "bookkeeping". Beside it,
the whole ``Trainer._take_step`` timed in the same rounds (a check that the parts add up).
Target: everything but the encoder <= 25 % of a step.
"""

from __future__ import annotations

import argparse
import copy
import importlib.util
import platform
import shlex
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

if importlib.util.find_spec("cacr_lab") is None:  # run from a checkout, package not installed
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cacr_lab.data import DataSplits, ImageData, batch_augment_for, load_dataset
from cacr_lab.losses import LOSSES
from cacr_lab.models import build_encoder
from cacr_lab.train import TrainConfig, Trainer, embed_views, lr_at_epoch, paper_loss_options

METHODS = ("cacr", "infonce")
TARGET_RATIO = 0.95
TARGET_NON_ENCODER = 0.25  # of a CIFAR-size step: views, loss, optimiser, bookkeeping
PARTS = ("views", "encoder fwd", "loss fwd", "loss bwd", "encoder bwd", "optimizer", "bookkeeping")


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"CPU ({cpu}), {torch.get_num_threads()} threads"


def load_images(args: argparse.Namespace, device: torch.device):
    """(images uint8 (N, C, H, W) on the device, dataset name, image size, mean, std, encoder)."""
    if device.type == "cpu":
        sp = load_dataset("digits", progress=False)
        return sp.train.images, "digits", sp.image_size, sp.mean, sp.std, "small-cnn"
    if args.cifar_folder:
        name = f"folder:{args.cifar_folder}"
        sp = load_dataset(name, image_size=32, progress=True)
        return sp.train.images.to(device), name, 32, sp.mean, sp.std, "small-alexnet"
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (args.random_images, 3, 32, 32), dtype=torch.uint8, generator=g)
    # Uniform uint8: mean 127.5 / 255, std ~ 73.9 / 255 per channel.
    return images.to(device), "cifar10", 32, (0.5,) * 3, (0.29,) * 3, "small-alexnet"


def make_steps(args: argparse.Namespace, device: torch.device) -> tuple[dict, dict, str]:
    """One full-training-step closure per method, and one loss-only closure per method."""
    images, dataset, size, mean, std, encoder = load_images(args, device)
    B, V = args.batch_size, args.positives + 1
    if len(images) < B:
        raise SystemExit(f"batch size {B} is larger than the data set ({len(images)} images)")
    augment = batch_augment_for(dataset, size, mean, std)
    torch.manual_seed(0)
    base = build_encoder(
        encoder, in_channels=images.shape[1], image_size=size, feat_dim=args.feat_dim
    ).to(device)
    channels_last = not args.no_channels_last
    if channels_last:
        base = base.to(memory_format=torch.channels_last)
    amp = device.type == "cuda" and not args.no_amp
    lr = lr_at_epoch(TrainConfig(dataset=dataset, batch_size=B), 0)

    def training_step(method: str) -> Callable[[], None]:
        model = copy.deepcopy(base)  # same initial weights for both methods
        opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=1e-4)
        loss_fn, kw = LOSSES[method], paper_loss_options(method, dataset)
        gen = torch.Generator(device=device).manual_seed(0)

        def step() -> None:
            model.train()
            idx = torch.randint(len(images), (B,), device=device, generator=gen)
            views = augment(images[idx], V, generator=gen)  # (V, B, C, S, S) float32
            if channels_last:
                # (V, B, C, H, W) stored as (V, B, H, W, C): every views[v] is channels_last.
                views = views.permute(0, 1, 3, 4, 2).contiguous().permute(0, 1, 4, 2, 3)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
                z = embed_views(model, views, args.view_batching)
            out = loss_fn(z, **kw, check_inputs=False)
            opt.zero_grad(set_to_none=True)
            out.loss.backward()
            opt.step()

        return step

    def loss_only(method: str) -> Callable[[], None]:
        loss_fn, kw = LOSSES[method], paper_loss_options(method, dataset)
        g = torch.Generator(device=device).manual_seed(1)
        x = torch.randn(V, B, args.feat_dim, device=device, generator=g, requires_grad=True)

        def run() -> None:
            x.grad = None
            loss_fn(F.normalize(x, dim=-1), **kw, check_inputs=False).loss.backward()

        return run

    what = (
        f"{encoder} on {dataset} ({len(images)} images, {size} px), B={B}, V={V}, "
        f"D={args.feat_dim}, view_batching={args.view_batching}, channels_last={channels_last}, "
        f"amp={'bf16' if amp else 'off'}"
    )
    return (
        {m: training_step(m) for m in METHODS},
        {m: loss_only(m) for m in METHODS},
        what,
    )


def time_rounds(
    runs: dict[str, Callable[[], None]],
    device: torch.device,
    *,
    warmup: int,
    rounds: int,
    steps: int,
) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    """Wall-clock and process-CPU seconds per call of each closure, one sample per round.

    Each round runs ``steps`` calls of every closure; the order alternates between rounds
    (A B, B A, ...) so a drifting machine load favours neither contender.
    """
    for run in runs.values():
        for _ in range(warmup):
            run()
    sync(device)
    wall: dict[str, list[float]] = {k: [] for k in runs}
    cpu: dict[str, list[float]] = {k: [] for k in runs}
    names = list(runs)
    for r in range(rounds):
        for name in names if r % 2 == 0 else names[::-1]:
            run = runs[name]
            sync(device)
            t, c = time.perf_counter(), time.process_time()
            for _ in range(steps):
                run()
            sync(device)
            wall[name].append((time.perf_counter() - t) / steps)
            cpu[name].append((time.process_time() - c) / steps)
    return wall, cpu


# --------------------------------------------------------------------------------------------
# The time split of a CIFAR-size step
# --------------------------------------------------------------------------------------------


def cifar_images(args: argparse.Namespace, n: int) -> tuple[torch.Tensor, str]:
    """(N, 3, 32, 32) uint8 images: ``--cifar-folder`` if given, else n random ones."""
    if args.cifar_folder:
        sp = load_dataset(f"folder:{args.cifar_folder}", image_size=32, progress=False)
        return sp.train.images, f"folder:{args.cifar_folder}"
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=g)
    return images, f"{n} random 32 px uint8 images"


def split_trainer(images: torch.Tensor, method: str, B: int, run_dir: Path) -> Trainer:
    """A Trainer on ``images`` (CIFAR's recipe, the small CNN, this machine's CPU)."""
    labels = torch.arange(len(images)) % 10
    classes = [str(c) for c in range(10)]
    train = ImageData(images, labels, classes, "cifar10")
    test = ImageData(images[:256], labels[:256], classes, "cifar10")
    # Uniform uint8 images: mean 0.5, std ~0.29 per channel.
    splits = DataSplits(train, test, (0.5,) * 3, (0.29,) * 3, image_size=32, in_channels=3)
    config = TrainConfig(
        dataset="cifar10", method=method, encoder="small-cnn", batch_size=B, device="cpu"
    )
    return Trainer(config, run_dir, overwrite=True, progress=False, splits=splits)


def split_step(tr: Trainer, order: torch.Tensor, clock: dict[str, float]) -> None:
    """One ``Trainer._take_step``, its parts timed into ``clock`` (seconds, added)."""
    marks = [time.perf_counter()]

    def mark() -> None:
        marks.append(time.perf_counter())

    views = tr.batch_views(tr.step, order)
    mark()
    tr.model.train()
    z = tr.forward_model(views)  # (V, B, D): the encoder, one forward per view
    mark()
    zd = z.detach().requires_grad_(True)
    out = tr.loss_fn(zd, **tr.loss_kwargs, check_inputs=False)
    mark()
    tr.optimizer.zero_grad(set_to_none=True)
    out.loss.backward()  # the loss's backward, to the embeddings
    mark()
    z.backward(zd.grad)  # the encoder's
    mark()
    params = (p for group in tr.optimizer.param_groups for p in group["params"])
    tr.guard.before_step(out, params, step=tr.step + 1, epoch=tr.epoch)
    tr.optimizer.step()
    mark()
    tr.step += 1
    tr._seen += tr.config.batch_size
    tr.guard.sync(step=tr.step, epoch=tr.epoch)
    values = tr.guard.checked_values(out, step=tr.step, epoch=tr.epoch)
    if tr.step % tr.config.log_every == 0:
        tr._log_train(values)
    mark()
    for part, t0, t1 in zip(PARTS, marks, marks[1:]):
        clock[part] += t1 - t0


def time_split(tr: Trainer, *, warmup: int, rounds: int, steps: int) -> dict[str, list[float]]:
    """Seconds per step of each part and of the whole ``_take_step``, one sample per round
    (the split and the whole alternate first between rounds)."""
    tr._t0 = time.perf_counter()
    order = tr.epoch_order(0)
    n = tr.steps_per_epoch
    samples: dict[str, list[float]] = {k: [] for k in (*PARTS, "step", "whole")}
    for _ in range(warmup):
        split_step(tr, order, dict.fromkeys(PARTS, 0.0))
        tr._take_step(order)
    for r in range(rounds):
        for which in ("split", "whole") if r % 2 == 0 else ("whole", "split"):
            if tr.step + steps >= n:  # stay inside the epoch's order
                tr.step = 0
            clock = dict.fromkeys(PARTS, 0.0)
            t = time.perf_counter()
            for _ in range(steps):
                if which == "split":
                    split_step(tr, order, clock)
                else:
                    tr._take_step(order)
            if which == "whole":
                samples["whole"].append((time.perf_counter() - t) / steps)
                continue
            for part in PARTS:
                samples[part].append(clock[part] / steps)
            samples["step"].append(sum(clock.values()) / steps)
    return samples


def split_table(args: argparse.Namespace) -> None:
    """The time split of a CIFAR-size step per batch size and method (module docstring)."""
    import tempfile

    sizes = [int(b) for b in args.split_batch_sizes.split(",") if b]
    if not sizes:
        return
    images, what = cifar_images(args, max(2048, 4 * max(sizes)))
    print(
        f"# step split: small-cnn on {what}, cifar10 views, V={args.positives + 1}, "
        f"{device_name(torch.device('cpu'))}; the Trainer's functions, medians of "
        f"{args.rounds} rounds of {args.steps} step(s); target: all but the encoder <= "
        f"{TARGET_NON_ENCODER:.0%} of a step"
    )
    heads = "".join(f"{p + ' ms':>15}" for p in PARTS)
    print(f"{'method':<8} {'B':>4}{heads} {'step ms':>9} {'_take_step':>11} {'non-enc':>8}  target")
    for B in sizes:
        for method in args.split_methods.split(","):
            with tempfile.TemporaryDirectory() as tmp:
                tr = split_trainer(images, method, B, Path(tmp) / "run")
                t = time_split(tr, warmup=args.warmup, rounds=args.rounds, steps=args.steps)
                tr.writer.close()
            ms = {k: statistics.median(v) * 1e3 for k, v in t.items()}
            encoder = ms["encoder fwd"] + ms["encoder bwd"]
            share = 1.0 - encoder / sum(ms[p] for p in PARTS)
            verdict = "met" if share <= TARGET_NON_ENCODER else "MISSED"
            cells = "".join(f"{ms[p]:>15.1f}" for p in PARTS)
            print(
                f"{method:<8} {B:>4}{cells} {ms['step']:>9.1f} {ms['whole']:>11.1f} "
                f"{share:>8.1%}  {verdict}",
                flush=True,
            )


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--cifar-folder", help="CUDA: an ImageFolder tree PATH/<class>/<image>")
    ap.add_argument("--random-images", type=int, default=50_000, help="CUDA: random data size")
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--positives", type=int, default=4, help="K; V = K + 1 views")
    ap.add_argument("--feat-dim", type=int, default=128)
    ap.add_argument("--view-batching", default="separate", choices=["separate", "joint"])
    ap.add_argument("--no-channels-last", action="store_true")
    ap.add_argument("--no-amp", action="store_true", help="CUDA: no bf16 autocast")
    ap.add_argument("--warmup", type=int, default=2, help="untimed steps per method first")
    ap.add_argument("--rounds", type=int, default=12)
    ap.add_argument("--steps", type=int, default=2, help="timed steps per method per round")
    ap.add_argument(
        "--split-batch-sizes",
        default="128,256",
        help="CPU: batch sizes of the CIFAR-size step split ('' skips it)",
    )
    ap.add_argument("--split-methods", default="cacr", help="methods of the step split")
    ap.add_argument("--split-only", action="store_true", help="CPU: the step split alone")
    ap.add_argument("--smoke", action="store_true", help="B=32, 2 rounds of 1 step: seconds")
    args = ap.parse_args(argv)
    if args.smoke:
        args.batch_size, args.warmup, args.rounds, args.steps = 32, 1, 2, 1
        args.split_batch_sizes = "32"
    if args.device == "cuda" and not torch.cuda.is_available():
        sys.exit("--device cuda: no CUDA device is available here")
    device = torch.device(args.device)

    print(f"# bench_train: {device_name(device)}, torch {torch.__version__}", flush=True)
    print(f"# command: {shlex.join(['python', *sys.argv])}", flush=True)
    if args.split_only and device.type == "cpu":
        split_table(args)
        return
    steps, losses, what = make_steps(args, device)
    print(f"# {what}", flush=True)
    print(
        f"# {args.rounds} interleaved rounds of {args.steps} step(s) per method after "
        f"{args.warmup} warm-up step(s); medians",
        flush=True,
    )
    step_t, step_cpu = time_rounds(
        steps, device, warmup=args.warmup, rounds=args.rounds, steps=args.steps
    )
    loss_t, _ = time_rounds(losses, device, warmup=2, rounds=args.rounds, steps=args.steps)
    B = args.batch_size
    print(
        f"{'method':<10} {'images/s':>10} {'ms/step':>9} {'min-max ms':>15} "
        f"{'loss ms':>9} {'loss share':>11}"
    )
    rate = {}
    for m in METHODS:
        med, loss_ms = statistics.median(step_t[m]), statistics.median(loss_t[m])
        rate[m] = B / med
        spread = f"{min(step_t[m]) * 1e3:.1f}-{max(step_t[m]) * 1e3:.1f}"
        print(
            f"{m:<10} {rate[m]:>10.0f} {med * 1e3:>9.1f} {spread:>15} {loss_ms * 1e3:>9.2f} "
            f"{loss_ms / med:>10.1%}"
        )
    ratio = rate["cacr"] / rate["infonce"]
    verdict = "PASS" if ratio >= TARGET_RATIO else "FAIL"
    print(
        f"# ratio cacr/infonce images/s (medians): {ratio:.3f} (target >= {TARGET_RATIO}) {verdict}"
    )
    # Cross-checks for a shared machine: the fastest rounds (least disturbed), and on a CPU the
    # process's own CPU seconds per step, which other processes' load barely touches.
    best = min(step_t["infonce"]) / min(step_t["cacr"])
    checks = f"# cross-checks: fastest rounds {best:.3f}"
    if device.type == "cpu":
        by_cpu = statistics.median(step_cpu["infonce"]) / statistics.median(step_cpu["cacr"])
        checks += f"; process CPU time per step (medians) {by_cpu:.3f}"
    print(checks)
    if device.type == "cpu":
        split_table(args)


if __name__ == "__main__":
    main()
