"""Several processes (gloo on CPU) give the one-process loss and gradients; torchrun trains."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import torch

from cacr_lab.runs import load_run

ROOT = Path(__file__).resolve().parents[1]
WORKER = Path(__file__).with_name("_ddp_worker.py")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _two_ranks_and_reference(tmp_path: Path, method: str) -> list[str]:
    """Run the worker as 2 gloo ranks, then as the one-process reference on their global batch;
    returns the ranks' result files (the reference's is ``one.pt``)."""
    port = _free_port()
    env = os.environ | {
        "PYTHONPATH": str(ROOT),
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(port),
        "WORLD_SIZE": "2",
        "OMP_NUM_THREADS": "1",
        "CACR_DDP_METHOD": method,
    }
    procs = [
        subprocess.Popen(
            [sys.executable, str(WORKER), str(tmp_path / f"rank{r}.pt"), str(tmp_path / "ddp")],
            env=env | {"RANK": str(r), "LOCAL_RANK": str(r)},
            stderr=subprocess.PIPE,
            text=True,
        )
        for r in range(2)
    ]
    for p in procs:
        _, err = p.communicate(timeout=240)
        assert p.returncode == 0, err
    single_env = {k: v for k, v in env.items() if k not in ("WORLD_SIZE", "MASTER_PORT")}
    ranks = [str(tmp_path / f"rank{r}.pt") for r in range(2)]
    subprocess.run(
        [sys.executable, str(WORKER), str(tmp_path / "one.pt"), str(tmp_path / "one"), *ranks],
        env=single_env,
        check=True,
        timeout=240,
    )
    return ranks


def test_two_ranks_equal_one_process_on_the_global_batch(tmp_path):
    ranks = _two_ranks_and_reference(tmp_path, "cacr")
    one = torch.load(tmp_path / "one.pt")
    r0, r1 = (torch.load(f) for f in ranks)
    assert r0["views"].shape[1] == 8 and one["views"].shape[1] == 16
    # Every rank computes the global loss; DDP averages the gradients over the ranks.
    torch.testing.assert_close(r0["loss"], one["loss"])
    torch.testing.assert_close(r1["loss"], one["loss"])
    for name, g in one["grads"].items():
        torch.testing.assert_close(r0["grads"][name], g, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(r1["grads"][name], g, rtol=1e-5, atol=1e-6)
    # Only rank 0 wrote the run directory.
    assert (tmp_path / "ddp" / "config.json").exists()


def test_moco_ranks_compute_the_loss_of_the_gathered_predictions_and_keys(tmp_path):
    """Method moco under DDP: the keys (and predictions) of both ranks are gathered, so the
    global batch is every query's negatives, and both ranks compute that one global loss."""
    from cacr_lab.losses import moco_cacr_loss

    ranks = _two_ranks_and_reference(tmp_path, "moco")
    one = torch.load(tmp_path / "one.pt")
    r0, r1 = (torch.load(f) for f in ranks)
    assert r0["q"].shape == r0["k"].shape == (3, 8, 128)  # V = 3 views, b = 8 per rank
    torch.testing.assert_close(r0["loss"], one["loss"])
    torch.testing.assert_close(r1["loss"], one["loss"])
    # Not merely each rank's own batch: that loss differs.
    own = moco_cacr_loss(r0["q"], temperature=0.5, keys=r0["k"]).loss
    assert (own - one["loss"]).abs() > 1e-4
    assert set(r0["grads"]) > {"predictor.0.weight", "predictor.3.weight"}
    for name, g in r0["grads"].items():
        torch.testing.assert_close(r1["grads"][name], g)  # DDP's all-reduce


def test_torchrun_trains_and_rank0_writes_one_run(tmp_path):
    torchrun = Path(sys.executable).with_name("torchrun")
    run_dir = tmp_path / "run"
    cmd = [
        str(torchrun),
        "--standalone",
        "--nproc_per_node=2",
        "-m",
        "cacr_lab",
        "train",
        "--dataset",
        "toy",
        "--device",
        "cpu",
        "--batch-size",
        "32",
        "--epochs",
        "1",
        "--max-steps",
        "3",
        "--log-every",
        "1",
        "--run-dir",
        str(run_dir),
        "--no-progress",
    ]
    env = os.environ | {"PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    run = load_run(run_dir)
    assert run.status["state"] == "finished"
    assert [r["step"] for r in run.train_records()] == [1, 2, 3]  # logged once, by rank 0
