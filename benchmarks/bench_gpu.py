"""GPU pre-training throughput: a reference-style data pipeline against cacr_lab's fast path.

    python benchmarks/bench_gpu.py --cifar-tar PATH/cifar10-train-jpeg.tar.gz --json OUT.json
    python benchmarks/bench_gpu.py --compile ...    # adds a torch.compile row (own time budget)
    python benchmarks/bench_gpu.py --device cpu --smoke   # the same code paths on a CPU, seconds

SmallAlexNet (32 px), K = 4 positives (V = 5 views), B = 128 images per step, CACR loss with the
paper's CIFAR-10 temperatures, SGD as in the reference (momentum 0.9, weight decay 1e-4,
lr 0.12 B / 256). Data: the CIFAR-10 training JPEGs of ``--cifar-tar`` (a .tar.gz of
``train/<class>/<image>.jpg``), decoded straight from the archive into one uint8 tensor, or
50,000 random CIFAR-shaped uint8 images when no archive is given (throughput hardly depends on
the pixels). Contenders, one after the other in this process (each: ``--warmup`` untimed steps,
then ``--steps`` timed steps, synchronised at both ends; images/s = B * steps / time, seconds per
epoch extrapolated to 50,000 images; peak GPU memory = torch.cuda.max_memory_allocated, reset
before each contender builds its model, so the fast rows include the 150 MB data set on the
device and the reference row does not; "syncs": how often one more step makes the host wait for
the GPU, from torch.cuda's sync debug mode, 0 for a path that keeps the GPU fed):

  reference     a torch DataLoader over `MultiViewDataset` with the per-image torchvision
                `view_transform` in worker processes (min(8, CPUs) workers, pinned memory,
                persistent workers), each view through the encoder separately, fp32, NCHW;
  fast joint    cacr_lab's path, step for step as `cacr_lab.train.Trainer` takes it (indices
                from a CPU permutation copied to the device, a seeded device generator per
                step): uint8 data held on the device, `BatchAugment` on the device, bf16
                autocast, channels_last, all V*B images in one forward (``view_batching="joint"``);
  fast separate the same with one forward per view (the trainer's default, BN per view);
  fast compile  with ``--compile``: fast joint through torch.compile, in a child process that is
                killed (row skipped) if it runs past ``--compile-budget`` seconds.

Then `cacr_loss` forward + backward at V = 5, B = 4096, D = 128 on the device (median of
``--loss-rounds``; peak memory above what was allocated before). The summary checks the targets:
fast / reference >= 10x, projected 200-epoch CIFAR-10 pre-training with the fast path < 15 min,
the B = 4096 loss < 20 ms and < 8 GB; "fast" is the fastest fast row, the others are listed
under it (a smoke run prints no verdicts). Every line is flushed as it is printed, so a killed run
still shows what it measured; ``--json PATH`` writes the results (rewritten after each stage).

Imports: torch, torchvision, PIL / numpy (only if torchvision cannot decode the archive) and
cacr_lab's ``losses``, ``models``, ``data`` and ``train`` modules; none of those needs
scikit-learn or plotly at import, but ``import cacr_lab`` runs the package's ``__init__``, which
imports ``cacr_lab.data``, which needs numpy, ``torchvision.ops.roi_align`` and
``torchvision.transforms.v2``. Without torchvision neither image pipeline can run: that is
reported, and the loss benchmark still runs (``cacr_lab.losses`` and ``cacr_lab.models`` need
only torch and are then imported alone).
"""

from __future__ import annotations

import argparse
import importlib.util
import io
import json
import os
import platform
import shlex
import signal
import statistics
import subprocess
import sys
import tarfile
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
if importlib.util.find_spec("cacr_lab") is None:  # a bare machine: the checkout, not installed
    sys.path.insert(0, str(ROOT))

IMAGE_SIZE = 32
EPOCH_IMAGES = 50_000  # CIFAR-10 training set: the paper pre-trains on all of it
PAPER_EPOCHS = 200
CACR_KW = dict(tau_pos=1.0, tau_neg=0.9)  # paper, CIFAR-10 (cacr_lab.train.paper_loss_options)
TARGET_SPEEDUP = 10.0
TARGET_PRETRAIN_MIN = 15.0
TARGET_LOSS_MS = 20.0
TARGET_LOSS_GB = 8.0
RESULT_TAG = "BENCH_GPU_RESULT "  # the compile child's result line


def say(*parts: Any) -> None:
    print(*parts, flush=True)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def shm_free_gb() -> float | None:
    """Free space of /dev/shm, where DataLoader workers hand their batches over (None: absent).

    A small /dev/shm (containers often have 64 MB) kills the reference's workers with a bus
    error; the header prints it so such a failure explains itself.
    """
    try:
        st = os.statvfs("/dev/shm")
    except OSError:
        return None
    return st.f_bavail * st.f_frsize / 1e9


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU ({platform.machine()}), {torch.get_num_threads()} threads"


def lab_modules() -> tuple[Any, Any, Any, Any, str]:
    """cacr_lab's (losses, models, data, train, torchvision version).

    Without torchvision (or numpy) ``data`` and ``train`` are None and the last item says why:
    the package's ``__init__`` imports ``cacr_lab.data``, which imports numpy,
    ``torchvision.ops.roi_align`` and ``torchvision.transforms.v2`` at module level. The loss
    benchmark still runs: ``cacr_lab.losses`` and ``cacr_lab.models`` need only torch, and the
    package's ``__init__`` loads its exports lazily, so they are then imported alone.
    """
    try:
        import torchvision

        from cacr_lab import data, losses, models, train

        return losses, models, data, train, torchvision.__version__
    except Exception as err:  # noqa: BLE001 - any import failure: report it, run what we can
        why = f"{type(err).__name__}: {err}"
    losses = importlib.import_module("cacr_lab.losses")  # a package: torch only
    models = importlib.import_module("cacr_lab.models")
    return losses, models, None, None, why


losses, models, cl_data, cl_train, TORCHVISION = lab_modules()


# --------------------------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------------------------


def _decode_all(blobs: list[bytes]) -> list[torch.Tensor]:
    """JPEG/PNG bytes -> (3, H, W) uint8 RGB each: torchvision's decoder, else PIL."""
    try:
        from torchvision.io import ImageReadMode, decode_image

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the decoders are deprecated in torchvision 0.29
            return [
                decode_image(
                    torch.frombuffer(bytearray(b), dtype=torch.uint8), mode=ImageReadMode.RGB
                )
                for b in blobs
            ]
    except Exception:  # noqa: BLE001 - no torchvision decoder: PIL
        import numpy as np
        from PIL import Image

        out = []
        for b in blobs:
            with Image.open(io.BytesIO(b)) as img:
                out.append(torch.from_numpy(np.asarray(img.convert("RGB")).copy()).permute(2, 0, 1))
        return out


def read_image_tar(path: Path, limit: int | None) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """Images ``.../<class>/<file>`` of a (gzipped) tar: ``(N, 3, 32, 32) uint8``, labels, classes.

    Members are sorted by name (the archive order does not matter); images of another size are
    resized to 32 x 32; ``limit`` keeps the first ``limit`` image members met in the archive.
    """
    suffixes = (".jpg", ".jpeg", ".png")
    found: list[tuple[str, bytes]] = []
    with tarfile.open(path, "r:*") as tf:
        for m in tf:
            if m.isfile() and m.name.lower().endswith(suffixes) and "/" in m.name:
                f = tf.extractfile(m)
                if f is not None:
                    found.append((m.name, f.read()))
                if limit is not None and len(found) >= limit:
                    break
    if not found:
        raise ValueError(f"{path}: no .jpg/.jpeg/.png members of the form <class>/<image>")
    found.sort()
    cls_of = [name.rsplit("/", 2)[-2] for name, _ in found]
    classes = sorted(set(cls_of))
    index = {c: i for i, c in enumerate(classes)}
    images = torch.empty(len(found), 3, IMAGE_SIZE, IMAGE_SIZE, dtype=torch.uint8)
    for i, img in enumerate(_decode_all([b for _, b in found])):
        if img.shape[-2:] != (IMAGE_SIZE, IMAGE_SIZE):
            img = (
                F.interpolate(
                    img[None].float(),
                    size=(IMAGE_SIZE, IMAGE_SIZE),
                    mode="bilinear",
                    antialias=True,
                    align_corners=False,
                )[0]
                .round()
                .clamp(0, 255)
            )
        images[i] = img
    return images, torch.tensor([index[c] for c in cls_of]), classes


def channel_stats(images: torch.Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std of ``(N, C, H, W) uint8`` in [0, 1] units, from exact histograms."""
    levels = torch.arange(256, dtype=torch.float64) / 255.0
    hist = torch.stack(
        [
            torch.bincount(images[:, c].reshape(-1).int(), minlength=256)
            for c in range(images.shape[1])
        ]
    ).double()  # (C, 256) pixel counts per value
    n = hist.sum(1)
    mean = (hist * levels).sum(1) / n
    std = ((hist * levels.square()).sum(1) / n - mean.square()).clamp_min(1e-12).sqrt()
    return tuple(mean.tolist()), tuple(std.tolist())


def load_data(args: argparse.Namespace) -> dict[str, Any]:
    t = time.perf_counter()
    tar = Path(args.cifar_tar) if args.cifar_tar else None
    if tar is not None and tar.is_file():
        images, labels, classes = read_image_tar(tar, args.max_images)
        source = f"{tar} ({len(images)} images decoded)"
    else:
        if tar is not None:
            say(f"# WARNING: --cifar-tar {tar} not found; using RANDOM data instead")
        n = args.max_images or EPOCH_IMAGES
        g = torch.Generator().manual_seed(0)
        images = torch.randint(
            0, 256, (n, 3, IMAGE_SIZE, IMAGE_SIZE), dtype=torch.uint8, generator=g
        )
        labels = torch.randint(0, 10, (n,), generator=g)
        classes = [str(c) for c in range(10)]
        source = f"random uint8 ({n}, 3, 32, 32)"
    mean, std = channel_stats(images)
    return dict(
        images=images,
        labels=labels,
        classes=classes,
        mean=mean,
        std=std,
        source=source,
        load_s=time.perf_counter() - t,
    )


# --------------------------------------------------------------------------------------------
# Contenders
# --------------------------------------------------------------------------------------------


def new_model(device: torch.device, channels_last: bool) -> torch.nn.Module:
    torch.manual_seed(0)
    model = models.build_encoder(
        "small-alexnet", in_channels=3, image_size=IMAGE_SIZE, feat_dim=128
    )
    model = model.to(device)
    return model.to(memory_format=torch.channels_last) if channels_last else model


def sgd(model: torch.nn.Module, batch_size: int) -> torch.optim.Optimizer:
    return torch.optim.SGD(
        model.parameters(), lr=0.12 * batch_size / 256, momentum=0.9, weight_decay=1e-4
    )


def train_step(model, forward, opt, views: torch.Tensor, view_batching: str, amp: bool) -> None:
    """One SGD step of CACR on ``views: (V, B, C, S, S)``; ``forward`` is the model or its
    compiled form."""
    model.train()
    with torch.autocast(views.device.type, dtype=torch.bfloat16, enabled=amp):
        z = cl_train.embed_views(forward, views, view_batching)  # (V, B, D)
    out = losses.cacr_loss(z, **CACR_KW, check_inputs=False)
    opt.zero_grad(set_to_none=True)
    out.loss.backward()
    opt.step()


def measure(
    step: Callable[[], None], args: argparse.Namespace, device: torch.device, name: str
) -> dict[str, Any]:
    """Warm-up, then ``args.steps`` timed steps; images/s, s/epoch, projection, peak memory."""
    t = time.perf_counter()
    for _ in range(args.warmup):
        step()
    sync(device)
    warm = time.perf_counter() - t
    t = time.perf_counter()
    for _ in range(args.steps):
        step()
    sync(device)
    elapsed = time.perf_counter() - t
    rate = args.batch_size * args.steps / elapsed
    epoch_s = (EPOCH_IMAGES // args.batch_size) * elapsed / args.steps
    peak = torch.cuda.max_memory_allocated(device) / 1e9 if device.type == "cuda" else None
    return dict(
        name=name,
        images_per_s=rate,
        ms_per_step=elapsed / args.steps * 1e3,
        s_per_epoch=epoch_s,
        pretrain_min=PAPER_EPOCHS * epoch_s / 60,
        peak_mem_gb=peak,
        warmup_s=warm,
    )


def host_syncs(step: Callable[[], None], device: torch.device) -> int | None:
    """How many times one more ``step`` makes the host wait for the GPU (CUDA only).

    torch.cuda's sync debug mode warns at every synchronising call (``.item()``, ``nonzero``,
    blocking copies); a fast path should have none, so the GPU never idles between kernels.
    """
    if device.type != "cuda":
        return None
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            step()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    sync(device)
    return sum("synchroniz" in str(w.message).lower() for w in caught)


def reset_memory(device: torch.device) -> None:
    if device.type == "cuda":
        sync(device)
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def forever(loader) -> Iterator:
    while True:
        yield from loader


def run_reference(args, data: dict, device: torch.device) -> dict[str, Any]:
    """DataLoader + per-image torchvision views in workers, per-view forward, fp32, NCHW."""
    from torch.utils.data import DataLoader

    V = args.positives + 1
    ds = cl_data.MultiViewDataset(
        cl_data.ImageData(data["images"], data["labels"], data["classes"], "cifar10"),
        cl_data.view_transform("cifar10", IMAGE_SIZE, data["mean"], data["std"]),
        V,
    )
    if len(ds) < args.batch_size:
        raise SystemExit(f"batch size {args.batch_size} > data set size {len(ds)}")
    loader = DataLoader(
        ds,
        batch_size=args.batch_size,
        shuffle=True,
        num_workers=args.workers,
        pin_memory=device.type == "cuda",
        persistent_workers=args.workers > 0,
        drop_last=True,
    )
    reset_memory(device)
    model = new_model(device, channels_last=False)
    opt = sgd(model, args.batch_size)
    batches = forever(loader)

    def step() -> None:
        views, _ = next(batches)  # (B, V, C, S, S) float32, pinned
        views = views.to(device, non_blocking=True).transpose(0, 1)  # (V, B, C, S, S)
        train_step(model, model, opt, views, "separate", False)

    name = f"reference (DataLoader, {args.workers} workers, fp32, separate)"
    try:
        return measure(step, args, device, name)
    finally:
        # Persistent workers end with the loader's iterator, freed when this frame returns.
        batches.close()


def run_fast(
    args, data: dict, device: torch.device, view_batching: str, compiled: bool = False
) -> dict[str, Any]:
    """cacr_lab's path: uint8 data on the device, BatchAugment there, bf16, channels_last."""
    V, B = args.positives + 1, args.batch_size
    augment = cl_data.batch_augment_for("cifar10", IMAGE_SIZE, data["mean"], data["std"])
    if "images_dev" not in data:  # after the reference ran: its peak memory excludes this
        data["images_dev"] = data["images"].to(device)
    images = data["images_dev"]
    amp = device.type == "cuda"
    reset_memory(device)
    model = new_model(device, channels_last=True)
    forward = torch.compile(model) if compiled else model
    opt = sgd(model, B)
    # As Trainer.epoch_order / batch_views: a CPU permutation per epoch, each step's indices
    # copied to the device, a freshly seeded device generator per step for the views.
    order = torch.randperm(len(images), generator=torch.Generator().manual_seed(0))
    steps_per_epoch = len(images) // B
    count = 0

    def step() -> None:
        nonlocal count
        i = count % steps_per_epoch
        idx = order[i * B : (i + 1) * B].to(device)
        gen = torch.Generator(device=device).manual_seed(count)
        count += 1
        views = augment(images[idx], V, generator=gen)  # (V, B, C, S, S) float32
        # (V, B, C, H, W) stored as (V, B, H, W, C): every views[v] is channels_last (trainer).
        views = views.permute(0, 1, 3, 4, 2).contiguous().permute(0, 1, 4, 2, 3)
        train_step(model, forward, opt, views, view_batching, amp)

    name = f"fast {view_batching} ({'bf16' if amp else 'fp32'}, channels_last" + (
        ", torch.compile)" if compiled else ")"
    )
    return measure(step, args, device, name) | {"host_syncs_per_step": host_syncs(step, device)}


def run_compile_child(args, device: torch.device) -> dict[str, Any]:
    """The torch.compile row in a child process, killed after ``--compile-budget`` seconds."""
    cmd = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--only-compile",
        "--device",
        args.device,
        "--batch-size",
        str(args.batch_size),
        "--positives",
        str(args.positives),
        "--warmup",
        str(args.warmup),
        "--steps",
        str(args.steps),
        "--compile-batching",
        args.compile_batching,
    ]
    if args.cifar_tar:
        cmd += ["--cifar-tar", args.cifar_tar]
    if args.max_images:
        cmd += ["--max-images", str(args.max_images)]
    say(f"# compiling in a child process (budget {args.compile_budget:.0f} s) ...")
    t = time.perf_counter()
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, process_group=0
    )  # its own process group (killed whole, compile workers too), same session (ends with ours)
    try:
        out, _ = proc.communicate(timeout=args.compile_budget)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        msg = f"skipped: did not finish within --compile-budget {args.compile_budget:.0f} s"
        return dict(name="fast + torch.compile", skipped=msg)
    for line in out.splitlines():
        if line.startswith(RESULT_TAG):
            row = json.loads(line[len(RESULT_TAG) :])
            row["child_s"] = time.perf_counter() - t
            return row
    tail = "\n".join(out.splitlines()[-15:])
    return dict(
        name="fast + torch.compile",
        skipped=f"child exited with {proc.returncode} and no result:\n{tail}",
    )


def loss_bench(args, device: torch.device) -> dict[str, Any]:
    V, B, D = args.positives + 1, args.loss_batch, 128
    g = torch.Generator(device=device).manual_seed(0)
    x = torch.randn(V, B, D, device=device, generator=g, requires_grad=True)

    def run() -> None:
        x.grad = None
        losses.cacr_loss(F.normalize(x, dim=-1), **CACR_KW, check_inputs=False).loss.backward()

    for _ in range(2):
        run()
    times = []
    for _ in range(args.loss_rounds):
        sync(device)
        t = time.perf_counter()
        run()
        sync(device)
        times.append(time.perf_counter() - t)
    peak = None
    if device.type == "cuda":
        x.grad = None
        reset_memory(device)
        base = torch.cuda.memory_allocated(device)
        run()
        sync(device)
        peak = (torch.cuda.max_memory_allocated(device) - base) / 1e9
    return dict(
        V=V,
        B=B,
        D=D,
        median_ms=statistics.median(times) * 1e3,
        min_ms=min(times) * 1e3,
        peak_mem_gb=peak,
    )


# --------------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------------


def fmt_row(r: dict[str, Any]) -> str:
    if "skipped" in r:
        return f"{r['name']:<52} {r['skipped']}"
    mem = f"{r['peak_mem_gb']:.2f}" if r.get("peak_mem_gb") is not None else "n/a"
    syncs = r.get("host_syncs_per_step")
    return (
        f"{r['name']:<52} {r['images_per_s']:>9.0f} {r['ms_per_step']:>8.1f} "
        f"{r['s_per_epoch']:>8.1f} {r['pretrain_min']:>9.1f} {mem:>8} {r['warmup_s']:>8.1f} "
        f"{'n/a' if syncs is None else syncs:>6}"
    )


HEADER = (
    f"{'contender':<52} {'images/s':>9} {'ms/step':>8} {'s/epoch':>8} "
    f"{'200ep min':>9} {'peak GB':>8} {'warmup s':>8} {'syncs':>6}"
)


def verdict(ok: bool, smoke: bool) -> str:
    return "n/a (smoke run)" if smoke else ("PASS" if ok else "FAIL")


def summary(res: dict[str, Any], smoke: bool) -> list[str]:
    lines = []
    rows = {r["key"]: r for r in res["contenders"] if "skipped" not in r}
    ref = rows.get("reference")
    fast = [rows[k] for k in ("fast_joint", "fast_separate", "fast_compile") if k in rows]
    s = res.setdefault("summary", {})
    if fast:
        best = max(fast, key=lambda r: r["images_per_s"])
        if ref:
            ratio = best["images_per_s"] / ref["images_per_s"]
            s["speedup"] = ratio
            lines.append(
                f"fast/reference speed ratio: {ratio:.1f}x ({best['name']}: "
                f"{best['images_per_s']:.0f} vs {ref['images_per_s']:.0f} images/s; target >= "
                f"{TARGET_SPEEDUP:.0f}x) {verdict(ratio >= TARGET_SPEEDUP, smoke)}"
            )
            for r in fast:
                if r is not best:
                    lines.append(f"  {r['name']}: {r['images_per_s'] / ref['images_per_s']:.1f}x")
        else:
            lines.append("fast/reference speed ratio: NOT MEASURED (no reference row)")
        s["pretrain_min"] = best["pretrain_min"]
        lines.append(
            f"projected {PAPER_EPOCHS}-epoch CIFAR-10 pre-training, {best['name']}: "
            f"{best['pretrain_min']:.1f} min (target < {TARGET_PRETRAIN_MIN:.0f} min) "
            f"{verdict(best['pretrain_min'] < TARGET_PRETRAIN_MIN, smoke)}"
        )
        for r in fast:
            if r is not best:
                lines.append(f"  {r['name']}: {r['pretrain_min']:.1f} min")
    else:
        lines.append("fast/reference speed ratio: NOT MEASURED (image pipelines did not run)")
        lines.append(f"projected {PAPER_EPOCHS}-epoch pre-training: NOT MEASURED")
    lb = res.get("loss")
    if lb:
        tag = f"cacr_loss fwd+bwd V={lb['V']}, B={lb['B']}, D={lb['D']}"
        not_real = smoke or lb["B"] != 4096  # the targets are for B = 4096
        lines.append(
            f"{tag}: {lb['median_ms']:.2f} ms (target < {TARGET_LOSS_MS:.0f} ms at "
            f"B=4096) {verdict(lb['median_ms'] < TARGET_LOSS_MS, not_real)}"
        )
        if lb["peak_mem_gb"] is None:
            lines.append(f"{tag} peak memory: n/a on CPU")
        else:
            ok = lb["peak_mem_gb"] < TARGET_LOSS_GB
            lines.append(
                f"{tag} peak memory: {lb['peak_mem_gb']:.2f} GB (target < "
                f"{TARGET_LOSS_GB:.0f} GB) {verdict(ok, not_real)}"
            )
    return lines


def write_json(path: str | None, res: dict[str, Any]) -> None:
    if path:
        tmp = Path(path).with_suffix(".tmp")
        tmp.write_text(json.dumps(res, indent=2))
        tmp.replace(path)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    ap.add_argument("--cifar-tar", help="CIFAR-10 JPEG archive; random data when absent")
    ap.add_argument("--max-images", type=int, help="decode / generate at most this many images")
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--positives", type=int, default=4, help="K; V = K + 1 views")
    ap.add_argument("--warmup", type=int, default=10, help="untimed steps per contender")
    ap.add_argument("--steps", type=int, default=40, help="timed steps per contender")
    ap.add_argument(
        "--workers",
        type=int,
        default=min(8, cpu_count()),
        help="reference DataLoader workers (default min(8, CPUs))",
    )
    ap.add_argument("--compile", action="store_true", help="add a torch.compile row")
    ap.add_argument(
        "--compile-budget",
        type=float,
        default=240.0,
        help="seconds the torch.compile child may take in all",
    )
    ap.add_argument("--compile-batching", default="joint", choices=["joint", "separate"])
    ap.add_argument("--loss-batch", type=int, default=4096)
    ap.add_argument("--loss-rounds", type=int, default=20)
    ap.add_argument("--json", help="write the results as JSON to this path")
    ap.add_argument(
        "--smoke",
        action="store_true",
        help="tiny sizes (B=8, V=3, no warm-up, 1 timed step, 256 images, "
        "loss B=256): the code paths in seconds",
    )
    ap.add_argument("--only-compile", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.smoke:
        args.batch_size, args.positives, args.warmup, args.steps = 8, 2, 0, 1
        args.max_images = args.max_images or 256
        args.loss_batch, args.loss_rounds = 256, 3
    if args.device == "cuda" and not torch.cuda.is_available():
        sys.exit("--device cuda: no CUDA device is available here (use --device cpu --smoke)")
    device = torch.device(args.device)

    if args.only_compile:  # the child of run_compile_child: one row, as a JSON line
        data = load_data(args)
        row = run_fast(args, data, device, args.compile_batching, compiled=True)
        say(RESULT_TAG + json.dumps(row | {"key": "fast_compile"}))
        return

    res: dict[str, Any] = dict(
        command=shlex.join(["python", *sys.argv]),
        device=device_name(device),
        torch=torch.__version__,
        torchvision=TORCHVISION if cl_data else None,
        cuda=torch.version.cuda,
        cpus=cpu_count(),
        dev_shm_free_gb=shm_free_gb(),
        batch_size=args.batch_size,
        views=args.positives + 1,
        warmup=args.warmup,
        steps=args.steps,
        contenders=[],
    )
    shm = "n/a" if res["dev_shm_free_gb"] is None else f"{res['dev_shm_free_gb']:.1f} GB"
    say(
        f"# bench_gpu: {res['device']}, torch {torch.__version__} (CUDA {torch.version.cuda}), "
        f"torchvision {res['torchvision']}, {res['cpus']} CPUs, /dev/shm free {shm}"
    )
    say(f"# command: {res['command']}")
    if args.smoke:
        say("# SMOKE RUN: tiny sizes, the numbers mean nothing")

    if cl_data is None:
        say(f"# IMAGE PIPELINES NOT RUN: cacr_lab cannot be imported here ({TORCHVISION}).")
        say("#   The package's __init__ imports cacr_lab.data, which imports numpy,")
        say("#   torchvision.ops.roi_align and torchvision.transforms.v2 at module level")
        say("#   (BatchAugment needs roi_align; the reference needs torchvision's transforms).")
        say(f"#   Carry torchvision (and numpy) wheels matching torch {torch.__version__}.")
        say("#   Running the loss benchmark only (cacr_lab.losses imported alone).")
        res["image_pipelines"] = f"not run: {TORCHVISION}"
    else:
        data = load_data(args)
        res["data"] = data["source"]
        say(
            f"# data: {data['source']} in {data['load_s']:.1f} s; mean "
            f"{tuple(round(m, 3) for m in data['mean'])}, std "
            f"{tuple(round(s, 3) for s in data['std'])}"
        )
        say(
            f"# SmallAlexNet 32 px, B={args.batch_size}, V={args.positives + 1}, cacr "
            f"{CACR_KW}; {args.warmup} warm-up + {args.steps} timed steps per contender; "
            f"epoch = {EPOCH_IMAGES} images"
        )
        say(HEADER)
        plan = [
            ("reference", lambda: run_reference(args, data, device)),
            ("fast_joint", lambda: run_fast(args, data, device, "joint")),
            ("fast_separate", lambda: run_fast(args, data, device, "separate")),
        ]
        for key, fn in plan:
            try:
                row = fn() | {"key": key}
            except Exception as err:  # noqa: BLE001 - report the failure, measure the rest
                row = dict(key=key, name=key, skipped=f"FAILED: {type(err).__name__}: {err}")
            res["contenders"].append(row)
            say(fmt_row(row))
            write_json(args.json, res)
        del data

    reset_memory(device)
    lb = loss_bench(args, device)
    res["loss"] = lb
    mem = f"{lb['peak_mem_gb']:.2f} GB" if lb["peak_mem_gb"] is not None else "n/a on CPU"
    say(
        f"# cacr_loss fwd+bwd V={lb['V']}, B={lb['B']}, D={lb['D']}: median "
        f"{lb['median_ms']:.2f} ms (min {lb['min_ms']:.2f}) over {args.loss_rounds} rounds; "
        f"peak memory {mem}"
    )

    say(f"== summary ({res['device']}) ==")
    for line in summary(res, args.smoke):
        say(line)
    write_json(args.json, res)

    if args.compile and cl_data is not None:
        row = run_compile_child(args, device)
        res["contenders"].append(row | {"key": "fast_compile"})
        say(HEADER)
        say(fmt_row(row))
        if "skipped" not in row:
            say("== summary with torch.compile ==")
            for line in summary(res, args.smoke):
                say(line)
        write_json(args.json, res)


if __name__ == "__main__":
    main()
