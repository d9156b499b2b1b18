"""The benchmark scripts run end to end on a CPU with tiny settings and print their tables.

Each script runs as a subprocess, the way a user starts it; the numbers are not checked (a shared
2-core CI box says nothing about speed), only that the run completes and reports every line.
"""

from __future__ import annotations

import importlib.util
import io
import json
import os
import re
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "benchmarks"


GPU_SMOKE = ["--device", "cpu", "--smoke"]
# A machine without torchvision, simulated: the import fails, so bench_gpu must say so and still
# time the loss.
WITHOUT_TORCHVISION = (
    "import runpy, sys; sys.modules['torchvision'] = None; sys.argv = sys.argv[1:]; "
    "runpy.run_path(sys.argv[0], run_name='__main__')"
)
SCRIPTS = {
    "train": [str(BENCH / "bench_train.py"), "--smoke"],
    "gpu": [str(BENCH / "bench_gpu.py"), *GPU_SMOKE, "--json", "{tmp}/gpu.json"],
    "loss": [
        str(BENCH / "bench_loss.py"),
        "--sizes",
        "32",
        "--rounds",
        "2",
        "--memory-batch",
        "64",
        "--baseline-sizes",
        "32",
        "--threads",
        "1",
    ],
    "gpu_no_tv": ["-c", WITHOUT_TORCHVISION, str(BENCH / "bench_gpu.py"), *GPU_SMOKE],
}


@pytest.fixture(scope="module")
def bench_runs(tmp_path_factory):
    """All the scripts started at once, one compute thread each: on 2 cores they overlap their
    imports, subprocesses and waits, which keeps the module near a minute on an idle machine.
    Each test waits for its own process."""
    tmp = tmp_path_factory.mktemp("bench")
    env = os.environ | {"OMP_NUM_THREADS": "1"}
    procs = {
        key: subprocess.Popen(
            [sys.executable, *(a.format(tmp=tmp) for a in argv)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=ROOT,
            env=env,
        )
        for key, argv in SCRIPTS.items()
    }
    yield procs, tmp
    for proc in procs.values():  # a failed test must not leave its script running
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


def output_of(bench_runs, key: str, timeout: float = 240) -> str:
    procs, _ = bench_runs
    proc = procs[key]
    out, err = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, f"{SCRIPTS[key]} exited {proc.returncode}:\n{out}\n{err}"
    return out


def load_bench_gpu():
    spec = importlib.util.spec_from_file_location("bench_gpu", BENCH / "bench_gpu.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_bench_train_smoke_prints_both_methods_and_the_ratio(bench_runs):
    out = output_of(bench_runs, "train")
    assert re.search(r"^# bench_train: CPU .*, torch ", out, re.M), out
    assert re.search(r"^# command: python \S*bench_train\.py --smoke$", out, re.M), out
    assert re.search(r"^method\s+images/s\s+ms/step", out, re.M)
    for method in ("cacr", "infonce"):
        assert re.search(rf"^{method}\s+\d+\s+[\d.]+", out, re.M), out
    assert re.search(
        r"^# ratio cacr/infonce images/s \(medians\): [\d.]+ \(target >= 0\.95\) (PASS|FAIL)$",
        out,
        re.M,
    ), out
    assert re.search(r"^# cross-checks: fastest rounds [\d.]+; process CPU time", out, re.M), out
    # The time split of a CIFAR-size step, the Trainer's own functions, and its verdict.
    assert re.search(r"^# step split: small-cnn on \d+ random 32 px uint8 images", out, re.M), out
    assert re.search(r"target: all but the encoder <= 25% of a step$", out, re.M), out
    head = re.search(r"^method\s+B\s+views ms\s+encoder fwd ms.*non-enc\s+target$", out, re.M)
    assert head, out
    row = re.search(r"^cacr\s+32((?:\s+[\d.]+){9})\s+([\d.]+)%\s+(met|MISSED)$", out, re.M)
    assert row, out
    parts = [float(v) for v in row.group(1).split()]  # the 7 parts, their sum, _take_step
    assert parts[7] == pytest.approx(sum(parts[:7]), abs=0.5)
    encoder = parts[1] + parts[4]
    assert float(row.group(2)) == pytest.approx(100 * (1 - encoder / sum(parts[:7])), abs=0.2)


@pytest.mark.slow
def test_bench_gpu_cpu_smoke_runs_every_contender_and_summarises(bench_runs):
    out = output_of(bench_runs, "gpu")
    json_path = bench_runs[1] / "gpu.json"
    assert "images/s" in out and "200ep min" in out
    for row in ("reference (DataLoader", "fast joint", "fast separate"):
        assert re.search(rf"^{re.escape(row)}.*\s\d+\s+[\d.]+", out, re.M), out
    assert "FAILED" not in out
    assert "== summary" in out
    assert "fast/reference speed ratio: " in out
    assert "projected 200-epoch CIFAR-10 pre-training" in out
    assert "cacr_loss fwd+bwd V=3, B=256, D=128:" in out
    res = json.loads(json_path.read_text())
    assert [r["key"] for r in res["contenders"]] == ["reference", "fast_joint", "fast_separate"]
    assert all(r["images_per_s"] > 0 for r in res["contenders"])
    assert res["summary"]["speedup"] > 0 and res["loss"]["median_ms"] > 0


@pytest.mark.slow
def test_bench_loss_small_sizes_print_the_table_and_memory(bench_runs):
    out = output_of(bench_runs, "loss")
    assert re.search(r"^\s+B\s+cacr_loss ms\s+loop ms", out, re.M)
    assert re.search(r"^\s+32\s+[\d.]+\s+[\d.]+", out, re.M), out
    assert "# peak memory, forward+backward" in out and "cacr_loss B=64:" in out
    # The baselines against their plain one-matrix forms: every loss, V = 2 and V = 5, verdicts.
    assert re.search(
        r"targets: V=2 library/plain <= 1\.2, V=5 multi-view / \(plain V=2 form once", out
    )
    check = re.search(
        r"^# value check: max \|library - plain\| = ([\d.e+-]+) \(float64\)$", out, re.M
    )
    assert check and float(check.group(1)) < 1e-10, out
    for loss in ("info_nce pairs", "info_nce cmc", "hard_negative", "debiased", "align_uniform"):
        times = r"(?:[\d.]+\s+){3}"
        row = rf"^\s+1\s+32 {re.escape(loss)}\s+{times}(met|MISSED)\s+{times}(met|MISSED)$"
        assert re.search(row, out, re.M), (loss, out)
    assert re.search(r"^# baselines: \d+ of 10 targets met$", out, re.M), out


@pytest.mark.slow
def test_bench_gpu_without_torchvision_says_why_and_still_times_the_loss(bench_runs):
    out = output_of(bench_runs, "gpu_no_tv")
    assert "# IMAGE PIPELINES NOT RUN: cacr_lab cannot be imported here" in out
    assert "torchvision.ops.roi_align" in out
    assert "fast/reference speed ratio: NOT MEASURED" in out
    assert "cacr_loss fwd+bwd V=3, B=256, D=128:" in out


def test_bench_gpu_reads_an_image_tar(tmp_path):
    """The archive reader: classes from folder names, sorted, any size resized to 32 px."""
    from PIL import Image

    bench = load_bench_gpu()
    path = tmp_path / "tiny.tar.gz"
    colours = {"cat": (200, 30, 30), "ant": (30, 30, 200)}
    with tarfile.open(path, "w:gz") as tf:
        for cls, colour in colours.items():
            for i, size in enumerate((32, 40)):
                buf = io.BytesIO()
                Image.new("RGB", (size, size), colour).save(buf, format="JPEG", quality=95)
                info = tarfile.TarInfo(f"train/{cls}/{i:04d}.jpg")
                info.size = buf.tell()
                buf.seek(0)
                tf.addfile(info, buf)
    images, labels, classes = bench.read_image_tar(path, None)
    assert classes == ["ant", "cat"]
    assert images.shape == (4, 3, 32, 32) and images.dtype == torch.uint8
    assert labels.tolist() == [0, 0, 1, 1]
    red = images[labels == 1].float().mean(dim=(0, 2, 3))
    assert red[0] > 150 and red[2] < 80  # decoded as RGB, channels in order
    assert len(bench.read_image_tar(path, 3)[0]) == 3


def test_bench_gpu_compile_child_past_its_budget_is_skipped_not_fatal():
    bench = load_bench_gpu()
    args = bench.argparse.Namespace(
        device="cpu",
        batch_size=8,
        positives=2,
        warmup=1,
        steps=1,
        compile_batching="joint",
        cifar_tar=None,
        max_images=64,
        compile_budget=0.5,
    )
    row = bench.run_compile_child(args, torch.device("cpu"))
    assert row["skipped"].startswith("skipped: did not finish within --compile-budget")
