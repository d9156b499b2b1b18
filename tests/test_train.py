"""The trainer end to end on digits: run directory, determinism, resume, NaN handling."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from cacr_lab.runs import last_checkpoint, latest_snapshot, list_snapshots, load_run
from cacr_lab.train import (
    NonFiniteLossError,
    TrainConfig,
    Trainer,
    finished_with,
    lr_at_epoch,
    resume_config,
    train,
)

ROOT = Path(__file__).resolve().parents[1]


def tiny(**kw) -> TrainConfig:
    base = dict(dataset="digits", epochs=1, batch_size=64, log_every=1, snapshot_size=64, knn_k=20)
    return TrainConfig(**(base | kw))


def test_tiny_training_writes_a_valid_run_directory(tmp_path):
    path = train(tiny(max_steps=4, positives=2), tmp_path / "run", progress=False)
    run = load_run(path)
    assert run.warnings == []
    assert run.status["state"] == "finished"
    assert run.config["method"] == "cacr" and run.config["n_views"] == 3
    assert run.config["loss_options"] == {**run.config["loss_options"], "tau_neg": 0.9}
    assert sum(run.config["class_counts"]) == run.config["pretrain_size"]
    train_recs = run.train_records()
    assert [r["step"] for r in train_recs] == [1, 2, 3, 4]
    for r in train_recs:
        assert r["loss"] == pytest.approx(r["attraction"] + r["repulsion"], abs=1e-5)
        assert r["lr"] == pytest.approx(0.12 * 64 / 256)
        assert r["images_per_sec"] > 0
    evals = run.eval_records()
    assert evals[0]["step"] == 0 and evals[-1]["step"] == 4  # at init and at the end
    final = evals[-1]
    assert 0.0 <= final["knn_acc"] <= 1.0 and 0.0 <= final["probe_acc"] <= 1.0
    assert len(final["per_class_acc"]) == 10
    assert 0 < final["neg_ess_frac"] <= 1 and "pos_entropy_norm" in final
    snap = latest_snapshot(path)
    assert snap.embeddings.shape == (64, 128)
    np.testing.assert_allclose(np.linalg.norm(snap.embeddings, axis=1), 1.0, atol=1e-4)
    assert snap.pos_weights.shape[1] == 2 and snap.neg_weights.shape[1] == 63
    np.testing.assert_allclose(snap.neg_weights.sum(1), 1.0, atol=1e-5)
    assert len(list_snapshots(path)) == 2
    assert last_checkpoint(path) is not None


def test_training_learns_something_on_digits(tmp_path):
    """Two epochs of CACR lower the held-out loss; the features separate the digits.

    (A random conv net already gives ~85 % kNN on digits, so the loss is the sharper signal.)
    """
    run = load_run(
        train(tiny(epochs=2, batch_size=128, log_every=5), tmp_path / "r", progress=False)
    )
    evals = run.eval_records()
    assert evals[-1]["eval_loss"] < evals[0]["eval_loss"] - 0.05
    assert evals[-1]["probe_acc"] > 0.8 and evals[-1]["knn_acc"] > 0.8


@pytest.mark.parametrize(
    "method", ["infonce", "align-uniform", "hard-negative", "debiased", "moco"]
)
def test_every_registry_method_trains(tmp_path, method):
    run = load_run(train(tiny(method=method, max_steps=2), tmp_path / method, progress=False))
    assert run.status["state"] == "finished"
    assert run.config["method"] == method
    assert np.isfinite(run.train_records()[-1]["loss"])


def test_moco_method_keeps_a_momentum_encoder_and_a_queue(tmp_path):
    cfg = tiny(method="moco", max_steps=3, moco_queue=100, moco_momentum=0.9)
    trainer = Trainer(cfg, tmp_path / "r", progress=False)
    before = [p.clone() for p in trainer.key_model.parameters()]
    trainer.run()
    assert trainer.queue.shape == (100, 128)  # 3 steps x 5 views x 64 keys, newest 100 kept
    moved = [not torch.equal(a, b) for a, b in zip(before, trainer.key_model.parameters())]
    assert any(moved)
    state = torch.load(last_checkpoint(tmp_path / "r"), weights_only=True)
    assert state["queue"].shape == (100, 128) and state["key_model"] is not None


def test_same_seed_same_loss_trajectory(tmp_path):
    a = load_run(train(tiny(max_steps=5, seed=3), tmp_path / "a", progress=False))
    b = load_run(train(tiny(max_steps=5, seed=3), tmp_path / "b", progress=False))
    c = load_run(train(tiny(max_steps=5, seed=4), tmp_path / "c", progress=False))
    la = [r["loss"] for r in a.train_records()]
    assert la == [r["loss"] for r in b.train_records()]
    assert la != [r["loss"] for r in c.train_records()]


def test_reuse_returns_a_finished_run_of_the_same_config_untouched(tmp_path):
    config = tiny(max_steps=2, loss_options={"tau_neg": 2.0})
    path = train(config, tmp_path / "run", progress=False)
    assert finished_with(path, config)
    metrics = path / "metrics.jsonl"
    before = metrics.stat().st_mtime_ns, metrics.read_bytes()
    assert train(config, path, reuse=True, progress=False) == path
    assert (metrics.stat().st_mtime_ns, metrics.read_bytes()) == before
    # another config is not reused: without overwrite it refuses, with it it trains afresh
    other = tiny(max_steps=3, loss_options={"tau_neg": 2.0})
    assert not finished_with(path, other)
    with pytest.raises(FileExistsError):
        train(other, path, reuse=True, progress=False)
    train(other, path, reuse=True, overwrite=True, progress=False)
    assert load_run(path).status["step"] == 3
    # an unfinished run is trained again, a folder that is no run is not "finished"
    (path / "status.json").write_text('{"state": "stopped"}')
    assert not finished_with(path, other)
    assert not finished_with(tmp_path / "nothing", other)


def _final_state(run_dir: Path) -> dict:
    return torch.load(last_checkpoint(run_dir), weights_only=True)["model"]


def test_killed_run_resumes_to_the_uninterrupted_result(tmp_path):
    cfg = dict(dataset="digits", epochs=3, batch_size=256, log_every=1, snapshot_size=64)
    ref = train(TrainConfig(**cfg), tmp_path / "ref", progress=False)

    # A real process, killed with SIGKILL once its first epoch checkpoint is on disk.
    run_dir = tmp_path / "killed"
    cmd = [
        sys.executable,
        "-m",
        "cacr_lab",
        "train",
        "--dataset",
        "digits",
        "--epochs",
        "3",
        "--batch-size",
        "256",
        "--log-every",
        "1",
        "--run-dir",
        str(run_dir),
        "--no-progress",
    ]
    env = os.environ | {"PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    while last_checkpoint(run_dir) is None and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed_step = torch.load(last_checkpoint(run_dir), weights_only=True)["step"]
    assert killed_step < 3 * (1347 // 256), "the process must be killed before it finished"

    # the run's stored config (the CLI run kept the default snapshot size)
    train(resume_config(run_dir), run_dir, resume=True, progress=False)
    for k, v in _final_state(ref).items():
        torch.testing.assert_close(_final_state(run_dir)[k], v, rtol=0, atol=0)
    losses = lambda p: [(r["step"], r["loss"]) for r in load_run(p).train_records()]  # noqa: E731
    assert losses(run_dir) == losses(ref)
    assert load_run(run_dir).status["state"] == "finished"


def test_non_finite_loss_stops_the_run_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    run_dir = train(tiny(), tmp_path / "run", progress=False)
    good = last_checkpoint(run_dir).read_bytes()
    # Extend the run, with an absurd learning rate slipped in: the weights overflow. (A resume
    # refuses a changed lr, so it comes in through the schedule.)
    monkeypatch.setattr("cacr_lab.train.trainer.lr_at_epoch", lambda config, epoch: 1e30)
    with pytest.raises(
        NonFiniteLossError, match=r"non-finite (loss|gradient) at step \d+.*last finite"
    ):
        Trainer(tiny(epochs=3), run_dir, resume=True, progress=False).run()
    run = load_run(run_dir)
    assert run.status["state"] == "failed" and "non-finite" in run.status["error"]
    assert last_checkpoint(run_dir).read_bytes() == good


def test_step_schedule_scales_the_reference_milestones():
    cfg = TrainConfig(epochs=20, batch_size=128, lr=1.0)
    assert [lr_at_epoch(cfg, e) for e in (14, 16, 17, 19)] == pytest.approx([1, 0.1, 0.01, 0.001])
    cos = TrainConfig(epochs=10, schedule="cosine", lr=1.0)
    assert lr_at_epoch(cos, 0) == 1.0 and lr_at_epoch(cos, 5) == pytest.approx(0.5)


def test_imbalanced_run_records_its_class_counts(tmp_path):
    run = load_run(train(tiny(imbalance="linear", max_steps=1), tmp_path / "r", progress=False))
    counts = run.config["class_counts"]
    assert counts == sorted(counts) and counts[0] < counts[-1]
    assert run.config["imbalance"] == "linear"


@pytest.mark.parametrize(
    "kwargs,pattern",
    [
        ({"dataset": "mnist"}, "unknown dataset 'mnist'"),
        ({"method": "simclr"}, "unknown method 'simclr'"),
        ({"loss_options": {"temperature": 0.5}}, "temperature.*cacr"),
        ({"loss_options": {"tau_neg": -1.0}}, "tau_neg.*-1.0"),
        ({"batch_size": 1}, "batch_size.*1"),
        ({"positives": 0}, "positives.*0"),
        ({"imbalance": "steep"}, "imbalance 'steep'"),
        ({"device": "tpu"}, "device 'tpu'"),
        ({"lr": -0.1}, "lr.*-0.1"),
    ],
)
def test_config_rejects_bad_values_by_name(kwargs, pattern):
    with pytest.raises(ValueError, match=pattern):
        TrainConfig(**kwargs)


def test_batch_larger_than_dataset_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="batch_size 4096 is larger"):
        train(tiny(batch_size=4096), tmp_path / "r", progress=False)
    assert not (tmp_path / "r").exists()


def test_finite_guard_without_a_sync_per_step_reports_at_the_next_sync():
    """The GPU form of the guard (no host sync per step), on CPU tensors: a non-finite gradient
    is recorded on the device and raised at the next sync -- a logging step or a checkpoint --
    naming the steps since the last one; non-finite weights are never checkpointed."""
    from cacr_lab.losses import LossOutput
    from cacr_lab.train.guards import FiniteGuard

    guard = FiniteGuard(check_every_step=False)
    param = torch.nn.Parameter(torch.ones(3))
    out = LossOutput(loss=torch.tensor(0.5), attraction=torch.tensor(1.0))
    param.grad = torch.ones(3)
    guard.before_step(out, [param], step=1, epoch=0)
    guard.sync(step=1, epoch=0)  # finite so far
    for step, grad in ((2, torch.ones(3)), (3, torch.tensor([1.0, float("inf"), 1.0]))):
        param.grad = grad
        guard.before_step(out, [param], step=step, epoch=0)  # no raise: nothing synced yet
    with pytest.raises(NonFiniteLossError, match="between step 2 and step 3"):
        guard.sync(step=3, epoch=0)
    model = torch.nn.Linear(2, 2)
    with torch.no_grad():
        model.weight[0, 0] = float("nan")
    with pytest.raises(NonFiniteLossError, match="non-finite weights at step 7: no checkpoint"):
        guard.check_weights(model, step=7)
