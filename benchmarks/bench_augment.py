"""Images/s of the batched augmentation: ours (`BatchAugment`) against kornia, side by side.

    python benchmarks/bench_augment.py                  # CPU: timing + statistics checks, < 1 min
    python benchmarks/bench_augment.py --device cuda    # the same on a GPU
    python benchmarks/bench_augment.py --threads 1      # on a shared machine (see below)
    python benchmarks/bench_augment.py --smoke          # a few seconds: one round, no checks

The question (issue 11): `cacr_lab.data.augment.BatchAugment` re-implements per-sample batched
augmentation that ``kornia.augmentation`` provides; adopt kornia only if its pipeline passes the
statistics tests that ``tests/test_data.py`` asserts for ours, can make seeded views reproducible
per (seed, step) as the trainer's resume needs, and is at least as fast on CPU.

Timing: ``B`` uint8 images, ``V`` views each (the trainer's shape; default B = 128, V = 5), for
CIFAR (random 32 px colour images, the crop + flip + colour jitter + grayscale recipe) and digits
(the 16 px scikit-learn digits, affine + Gaussian noise). Both sides start from the uint8 batch
and end with normalised ``(V, B, C, S, S)`` float views; kornia's pipeline is built from the same
`VIEW_RECIPES` entry (RandomResizedCrop in its batched "resample" mode, bilinear, half-pixel
centres as ours). Each round times ``--steps`` calls of each side in turn (the order alternates
between rounds, after a warm-up), so machine noise hits both alike; the table gives the median
images/s and the kornia / ours ratio, from wall-clock time and, on CPU, from the process's own
CPU seconds (a cross-check on a shared machine). On a machine other processes keep busy, pass
``--threads 1``: intra-op threads that wait for a busy core make both sides several times slower
and the ratio noise.

Checks (kornia's side; ours are the tests): the same statistics and bounds as test_data.py's
crop-box, flip/grayscale-rate, colour-jitter and digits tests, and whether views can be drawn
from a caller's ``torch.Generator``. Without kornia installed the script times ours only and
says so.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import inspect
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import torch

if importlib.util.find_spec("cacr_lab") is None:  # run from a checkout, package not installed
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cacr_lab.data import DataSplits, batch_augment_for, load_dataset, view_recipe, view_transform
from cacr_lab.data.augment import _rgb_to_hsv

try:
    import kornia
    import kornia.augmentation as KA
except ImportError:  # optional: the benchmark still times ours
    kornia = KA = None


# --------------------------------------------------------------------------------------------
# The two pipelines
# --------------------------------------------------------------------------------------------


def kornia_pipeline(dataset: str, size: int, mean, std) -> torch.nn.Module:
    """kornia.augmentation's closest equivalent of `batch_augment_for(dataset, ...)`.

    Takes ``(N, C, H, W)`` floats in [0, 1]; returns normalised ``(N, C, S, S)``.
    """
    r = view_recipe(dataset)
    if r.kind == "affine":
        steps = [
            KA.RandomAffine(
                r.degrees,
                translate=(r.translate, r.translate),
                scale=r.affine_scale,
                padding_mode="zeros",
                align_corners=False,
                p=1.0,
            ),
            KA.RandomGaussianNoise(std=r.noise_sigma, p=1.0),
            _Clamp(),  # torchvision's GaussianNoise(clip=True), as ours
        ]
    else:
        steps = [
            KA.RandomResizedCrop(
                (size, size),
                scale=r.crop_scale,
                ratio=r.crop_ratio,
                cropping_mode="resample",
                align_corners=False,
            ),
            KA.RandomHorizontalFlip(p=r.flip_p),
            KA.ColorJitter(*r.jitter, p=1.0),
            KA.RandomGrayscale(p=r.grayscale_p),
        ]
    return torch.nn.Sequential(*steps, KA.Normalize(torch.tensor(mean), torch.tensor(std)))


class _Clamp(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.clamp(0.0, 1.0)


def kornia_views(pipeline: torch.nn.Module, images: torch.Tensor, n_views: int) -> torch.Tensor:
    """``(B, C, H, W) uint8`` -> ``(V, B, C, S, S)`` views, the same layout as ours."""
    x = images.repeat(n_views, 1, 1, 1).float().div_(255.0)
    out = pipeline(x)
    return out.view(n_views, images.shape[0], *out.shape[1:])


# --------------------------------------------------------------------------------------------
# Timing
# --------------------------------------------------------------------------------------------


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_sides(
    sides: dict[str, Callable[[], torch.Tensor]], rounds: int, steps: int, device: torch.device
) -> dict[str, tuple[list[float], list[float]]]:
    """Per side, (wall seconds, process CPU seconds) per call of each round."""
    for fn in sides.values():  # warm-up: lazy imports, allocator, kernels
        fn()
    sync(device)
    times: dict[str, tuple[list[float], list[float]]] = {name: ([], []) for name in sides}
    names = list(sides)
    for r in range(rounds):
        for name in names if r % 2 == 0 else names[::-1]:
            wall, cpu = time.perf_counter(), time.process_time()
            for _ in range(steps):
                sides[name]()
            sync(device)
            times[name][0].append((time.perf_counter() - wall) / steps)
            times[name][1].append((time.process_time() - cpu) / steps)
    return times


def bench_case(
    label: str,
    dataset: str,
    images: torch.Tensor,
    size: int,
    mean,
    std,
    args: argparse.Namespace,
) -> dict[str, float]:
    """Print one table block; return images/s per side (median wall clock)."""
    device = images.device
    ours = batch_augment_for(dataset, size, mean, std)
    gen = torch.Generator(device=device).manual_seed(0)
    sides = {"ours": lambda: ours(images, args.views, generator=gen)}
    if KA is not None:
        pipeline = kornia_pipeline(dataset, size, mean, std).to(device)
        sides["kornia"] = lambda: kornia_views(pipeline, images, args.views)
    times = time_sides(sides, args.rounds, args.steps, device)
    n = images.shape[0] * args.views
    print(f"\n{label}: B={images.shape[0]} x V={args.views} = {n} views of {size} px per call")
    rate = {}
    for name, (wall, cpu) in times.items():
        rate[name] = n / statistics.median(wall)
        cpu_rate = n / statistics.median(cpu) if statistics.median(cpu) > 0 else float("nan")
        extra = f"   ({cpu_rate:>9,.0f} images/CPU-s)" if device.type == "cpu" else ""
        print(f"  {name:<7} {rate[name]:>9,.0f} images/s  best {n / min(wall):>9,.0f}{extra}")
    if "kornia" in times:
        wall_ratio = rate["kornia"] / rate["ours"]
        cpu_ratio = statistics.median(times["ours"][1]) / statistics.median(times["kornia"][1])
        print(f"  kornia / ours: {wall_ratio:.2f}x (wall clock), {cpu_ratio:.2f}x (CPU time)")
    return rate


# --------------------------------------------------------------------------------------------
# kornia against test_data.py's statistics
# --------------------------------------------------------------------------------------------


@contextlib.contextmanager
def one_thread() -> Iterator[None]:
    """Per-image torchvision ops on tiny tensors run faster without intra-op threads."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _close(a: torch.Tensor, b: torch.Tensor, mean_tol: float, std_tol: float) -> bool:
    return bool(abs(a.mean() - b.mean()) < mean_tol and abs(a.std() - b.std()) < std_tol)


def check_crop_boxes() -> bool:
    """test_crop_boxes_match_random_resized_crop_distribution, on kornia's drawn boxes."""
    from torchvision.transforms import v2

    n = 4000
    torch.manual_seed(0)
    rrc = v2.RandomResizedCrop(32, scale=(0.2, 1.0))
    params = [rrc.make_params([torch.zeros(3, 32, 32)]) for _ in range(n)]
    ref = torch.tensor([[p["top"], p["left"], p["height"], p["width"]] for p in params]).float()
    krc = KA.RandomResizedCrop((32, 32), scale=(0.2, 1.0))
    src = krc.forward_parameters(torch.Size((n, 3, 32, 32)))["src"].float()  # (n, 4, 2) x, y
    left, top = src[:, 0, 0], src[:, 0, 1]
    boxes = torch.stack((top, left, src[:, 2, 1] - top + 1, src[:, 1, 0] - left + 1), dim=1)
    ok = bool((boxes[:, 0] + boxes[:, 2] <= 32).all() and (boxes[:, 1] + boxes[:, 3] <= 32).all())
    for stat in (
        lambda b: b[:, 2] * b[:, 3] / 1024,
        lambda b: b[:, 3] / b[:, 2],
        lambda b: b[:, 0] + b[:, 2] / 2,
    ):
        a, b = stat(ref), stat(boxes)
        ok &= _close(a, b, 0.03 * a.std(), 0.05 * a.std())
    return ok


def check_flip_and_grayscale_rates() -> bool:
    """test_batched_flip_and_grayscale_rates, on kornia's CIFAR pipeline."""
    ramp = 0.2 + 0.8 * torch.linspace(0, 1, 16)
    tint = torch.tensor([1.0, 0.6, 0.3]).view(3, 1, 1)
    image = (tint * ramp.view(1, 1, 16) * torch.ones(1, 16, 1) * 255).round().to(torch.uint8)
    pipeline = kornia_pipeline("cifar10", 16, (0.0,) * 3, (1.0,) * 3)
    torch.manual_seed(0)
    views = kornia_views(pipeline, image.unsqueeze(0).repeat(2000, 1, 1, 1), 1)[0]
    value = views.max(dim=1).values
    gray = (value - views.min(dim=1).values).amax(dim=(1, 2)) < 0.01
    columns = value.mean(dim=1) - value.mean(dim=(1, 2)).unsqueeze(1)
    flipped = (columns * torch.linspace(-1, 1, 16)).sum(dim=1) < 0
    return bool(abs(gray.float().mean() - 0.2) < 0.03 and abs(flipped.float().mean() - 0.5) < 0.04)


def _colour_stats(views: torch.Tensor) -> dict[str, torch.Tensor]:
    """test_data.py's per-view colour statistics of ``views: (N, 3, H, W)`` in [0, 1]."""
    left = views[..., : views.shape[-1] // 2].mean(dim=(2, 3), keepdim=True)
    hsv = _rgb_to_hsv(left)[:, :, 0, 0]
    return {
        "brightness": views.mean(dim=(1, 2, 3)),
        "chroma": (views.max(dim=1).values - views.min(dim=1).values).mean(dim=(1, 2)),
        "hue": hsv[:, 0],
        "saturation": hsv[:, 1],
    }


def check_colour_jitter() -> tuple[bool, list[str]]:
    """test_batched_colour_jitter_matches_torchvision_in_distribution, kornia's ColorJitter.

    Returns whether all four statistics pass and the names of those that fail.
    """
    from torchvision.transforms import v2

    image = torch.zeros(3, 16, 16, dtype=torch.uint8)
    image[:, :, :8] = torch.tensor([200, 120, 60], dtype=torch.uint8).view(3, 1, 1)
    image[:, :, 8:] = torch.tensor([60, 120, 250], dtype=torch.uint8).view(3, 1, 1)
    n = 800
    torch.manual_seed(0)
    jitter = v2.Compose([v2.ColorJitter(0.4, 0.4, 0.4, 0.4), v2.ToDtype(torch.float32, scale=True)])
    with one_thread():
        ref = _colour_stats(torch.stack([jitter(image) for _ in range(n)]))
    torch.manual_seed(1)
    batch = image.unsqueeze(0).repeat(n, 1, 1, 1).float() / 255
    got = _colour_stats(KA.ColorJitter(0.4, 0.4, 0.4, 0.4, p=1.0)(batch))
    failed = [
        key
        for key, values in ref.items()
        if not _close(values, got[key], 0.12 * values.std(), 0.12 * values.std())
    ]
    return not failed, failed


def check_digits(digits: DataSplits) -> bool:
    """test_digits_batch_augment_matches_per_image_pipeline, on kornia's digits pipeline."""
    image, n = digits.train.images[0], 600
    torch.manual_seed(0)
    tf = view_transform("digits", 16, digits.mean, digits.std)
    with one_thread():
        per_image = torch.stack([tf(image) for _ in range(n)])
    torch.manual_seed(1)
    pipeline = kornia_pipeline("digits", 16, digits.mean, digits.std)
    batched = kornia_views(pipeline, image.unsqueeze(0).repeat(n, 1, 1, 1), 1)[0]
    coords = torch.arange(16, dtype=torch.float32)

    def stats(views):
        ink = (views * digits.std[0] + digits.mean[0]).clamp(0, 1)[:, 0]
        mass = ink.sum(dim=(1, 2))
        centre_x = (ink.sum(1) * coords).sum(1) / mass
        centre_y = (ink.sum(2) * coords).sum(1) / mass
        return ink.mean(dim=(1, 2)), centre_x, centre_y

    return all(
        _close(a, b, 0.1 * a.std() + 0.01, 0.15 * a.std() + 0.01)
        for a, b in zip(stats(per_image), stats(batched), strict=True)
    )


def check_seeding() -> tuple[bool, str]:
    """Can kornia draw a call's parameters from a caller's ``torch.Generator``?

    The trainer makes step t's views with a generator seeded by (seed, t), so a resumed run
    repeats an uninterrupted one's views without touching the global RNG.
    """
    pipeline = kornia_pipeline("cifar10", 32, (0.5,) * 3, (0.25,) * 3)
    images = torch.randint(0, 256, (8, 3, 32, 32), dtype=torch.uint8)
    try:
        KA.RandomHorizontalFlip(generator=torch.Generator())
        takes_generator = True
    except (TypeError, ValueError):
        takes_generator = False
    takes_generator &= "generator" in inspect.signature(KA.RandomResizedCrop.forward).parameters
    torch.manual_seed(3)
    a = kornia_views(pipeline, images, 2)
    torch.manual_seed(3)
    b = kornia_views(pipeline, images, 2)
    torch.manual_seed(3)
    torch.rand(1)  # any other draw from the global RNG (dropout, a sampler, ...) in between
    c = kornia_views(pipeline, images, 2)
    global_only = bool(torch.equal(a, b) and not torch.equal(a, c))
    how = "no generator argument (the constructor refuses generator=, forward has none)"
    if global_only:
        how += "; views follow the global RNG: same global seed -> same views, one other draw"
        how += " from it in between -> different views"
    state = torch.get_rng_state()
    with torch.random.fork_rng():  # the workaround: reseed the global RNG around each call
        torch.manual_seed(3)
        e = kornia_views(pipeline, images, 2)
    if torch.equal(a, e) and torch.equal(state, torch.get_rng_state()):
        how += "; reproducible only by reseeding the global RNG inside torch.random.fork_rng"
        how += " around every call"
    return takes_generator, how


def run_checks(digits: DataSplits) -> bool:
    """Print kornia's results on test_data.py's statistics; True if everything passes."""
    print("\nkornia against tests/test_data.py's statistics (the bounds the tests assert):")
    colour_ok, colour_failed = check_colour_jitter()
    seed_ok, seed_how = check_seeding()
    results = [
        ("crop boxes (area, aspect, centre) ~ RandomResizedCrop", check_crop_boxes(), ""),
        ("flip rate 0.5 and grayscale rate 0.2", check_flip_and_grayscale_rates(), ""),
        (
            "colour jitter ~ v2.ColorJitter(0.4, 0.4, 0.4, 0.4)",
            colour_ok,
            f"fails on {', '.join(colour_failed)}; kornia draws one op order per call, "
            "torchvision and ours one per image"
            if not colour_ok
            else "",
        ),
        ("digits affine + noise ~ the per-image pipeline", check_digits(digits), ""),
        ("views from a per-(seed, step) torch.Generator", seed_ok, seed_how),
    ]
    for name, ok, why in results:
        print(f"  {'PASS' if ok else 'FAIL'}  {name}" + (f": {why}" if why else ""))
    return all(ok for _, ok, _ in results)


# --------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch", type=int, default=128, help="images per call (B)")
    parser.add_argument("--views", type=int, default=5, help="views per image (V = K + 1)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=2, help="calls per side and round")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    parser.add_argument("--no-checks", action="store_true", help="time only")
    parser.add_argument("--smoke", action="store_true", help="1 round of 1 call, no checks")
    args = parser.parse_args(argv)
    if args.smoke:
        args.rounds, args.steps, args.no_checks = 1, 1, True
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    kornia_version = kornia.__version__ if kornia is not None else "not installed"
    print(
        f"# bench_augment: {name}, {torch.get_num_threads()} threads, torch {torch.__version__},"
        f" kornia {kornia_version}"
    )
    if KA is None:
        print("# kornia is not installed (pip install kornia): timing ours only, no checks")

    g = torch.Generator().manual_seed(0)
    cifar = torch.randint(0, 256, (args.batch, 3, 32, 32), dtype=torch.uint8, generator=g)
    mean, std = (0.49, 0.48, 0.45), (0.25, 0.24, 0.26)
    rates = [bench_case("CIFAR", "cifar10", cifar.to(device), 32, mean, std, args)]
    sp = load_dataset("digits", progress=False)
    digits = sp.train.images[: args.batch].to(device)
    rates.append(bench_case("digits", "digits", digits, 16, sp.mean, sp.std, args))

    if KA is None:
        return
    checks_ok = run_checks(sp) if not args.no_checks else None
    fast = all(r["kornia"] >= r["ours"] for r in rates)
    print(f"\nkornia at least as fast as ours on {device.type} in every case: {fast}")
    if checks_ok is not None:
        verdict = "adopt kornia" if fast and checks_ok else "keep BatchAugment"
        print(f"kornia passes every check: {checks_ok}  ->  {verdict}")


if __name__ == "__main__":
    main()
