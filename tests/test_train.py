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

from cacr_lab.data import DataSplits, ImageData, load_dataset
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
from cacr_lab.train.moco import momentum_at

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


def rgb_digits(n: int | None = None) -> DataSplits:
    """digits as 3-channel 16 px images (the first ``n`` of each split): a stand-in for CIFAR's
    crop recipe, no download."""
    d = load_dataset("digits", image_size=16)

    def rgb(split: ImageData) -> ImageData:
        images = split.images[:n].expand(-1, 3, -1, -1).contiguous()
        return ImageData(images, split.labels[:n], split.classes, "cifar10")

    return DataSplits(rgb(d.train), rgb(d.test), d.mean * 3, d.std * 3, 16, 3)


def moco_tiny(**kw) -> TrainConfig:
    """moco on rgb_digits with the small CNN (any input size, so local crops work)."""
    return tiny(**({"dataset": "cifar10", "encoder": "small-cnn", "method": "moco"} | kw))


def test_moco_trains_a_predictor_and_moves_the_key_encoder_by_ema(tmp_path):
    cfg = tiny(method="moco", positives=1, moco_momentum=0.9, moco_momentum_schedule="cosine")
    trainer = Trainer(cfg, tmp_path / "r", progress=False)
    model, moco = trainer.model, trainer.moco
    theta0 = [p.detach().clone() for p in model.parameters()]
    keys0 = [p.detach().clone() for p in moco.key_model.parameters()]
    pred0 = [p.detach().clone() for p in moco.predictor.parameters()]
    assert all(torch.equal(a, b) for a, b in zip(theta0, keys0))  # the key model starts as a copy
    assert not any(p.requires_grad for p in moco.key_model.parameters())
    assert moco.predictor[0].out_features == 256  # max(small CNN's 128 features, 2 x 128)
    out = trainer.train_step(trainer.batch_views(0, trainer.epoch_order(0)))
    assert out.pos_weights.shape == (2, 64, 1)  # 2 anchors, 1 query view each
    m = momentum_at(cfg, 1, trainer.moco.total_steps)
    assert 0.9 < m < 0.91 and trainer.moco.total_steps == trainer.steps_per_epoch
    for k0, k1, q1 in zip(keys0, moco.key_model.parameters(), model.parameters()):
        torch.testing.assert_close(k1, m * k0 + (1 - m) * q1, rtol=1e-6, atol=1e-7)
    assert all(not torch.equal(a, b) for a, b in zip(pred0, moco.predictor.parameters()))
    path = train(tiny(method="moco", max_steps=2), tmp_path / "run", progress=False)
    state = torch.load(last_checkpoint(path), weights_only=True)
    assert set(state["moco"]) == {"predictor", "key_model"} and "queue" not in state
    assert load_run(path).config["moco_predictor_hidden"] == 256


@pytest.mark.parametrize("mode", ["light", "full"])
def test_moco_local_crops_are_queries_and_in_full_mode_anchors(tmp_path, mode):
    cfg = moco_tiny(positives=1, batch_size=32, moco_local_crops=2, moco_multicrop=mode)
    trainer = Trainer(cfg, tmp_path / "r", progress=False, splits=rgb_digits())
    views = trainer.batch_views(0, trainer.epoch_order(0))
    assert views.views.shape == (2, 32, 3, 16, 16) and views.local.shape == (2, 32, 3, 8, 8)
    seen = []
    trainer.moco.key_model.register_forward_hook(lambda m, i, o: seen.append(tuple(i[0].shape)))
    out = trainer.loss_of(views)
    anchors = 2 if mode == "light" else 4
    assert out.pos_weights.shape == (anchors, 32, 3) and torch.isfinite(out.loss)
    expect = [(2, 32, 3, 16, 16)] + ([(2, 32, 3, 8, 8)] if mode == "full" else [])
    assert seen == expect  # light: local crops never reach the momentum encoder
    assert trainer.run_config["moco_local_crop_size"] == 8  # half of 16 px
    again = trainer.batch_views(0, trainer.epoch_order(0))  # seeded: the same crops again
    assert torch.equal(again.local, views.local) and torch.equal(again.views, views.views)


@pytest.mark.slow
def test_moco_resume_is_bit_exact(tmp_path):
    """Local crops (full mode), a cosine momentum and an evaluation in between: the resumed run
    ends with the uninterrupted run's weights, predictor, key model and losses."""
    splits = rgb_digits(n=96)  # 3 steps of 32 per epoch
    cfg = dict(batch_size=32, epochs=2, moco_local_crops=2, moco_multicrop="full")
    cfg |= dict(positives=1, moco_momentum=0.9, moco_momentum_schedule="cosine")
    Trainer(moco_tiny(**cfg), tmp_path / "ref", progress=False, splits=splits).run()
    # The same run stopped after its first epoch, then resumed in a new Trainer.
    first = moco_tiny(**cfg, max_steps=3)
    Trainer(first, tmp_path / "two", progress=False, splits=splits).run()
    assert torch.load(last_checkpoint(tmp_path / "two"), weights_only=True)["epoch"] == 1
    Trainer(moco_tiny(**cfg), tmp_path / "two", resume=True, progress=False, splits=splits).run()
    ref, two = (
        torch.load(last_checkpoint(tmp_path / p), weights_only=True) for p in ("ref", "two")
    )
    assert ref["step"] == two["step"] == 6
    for part in ("predictor", "key_model"):
        for k, v in ref["moco"][part].items():
            torch.testing.assert_close(two["moco"][part][k], v, rtol=0, atol=0)
    for k, v in ref["model"].items():
        torch.testing.assert_close(two["model"][k], v, rtol=0, atol=0)
    losses = lambda p: [(r["step"], r["loss"]) for r in load_run(p).train_records()]  # noqa: E731
    assert losses(tmp_path / "two") == losses(tmp_path / "ref")


def test_moco_old_queue_config_loads_and_old_checkpoint_is_a_clear_error(tmp_path):
    cfg = TrainConfig.from_dict({"method": "moco", "moco_queue": 65536, "moco_momentum": 0.9})
    assert cfg.moco_momentum == 0.9 and not hasattr(cfg, "moco_queue")
    path = train(tiny(method="moco", max_steps=2), tmp_path / "r", progress=False)
    state = torch.load(last_checkpoint(path), weights_only=True)
    old = {k: v for k, v in state.items() if k != "moco"}
    old |= {"key_model": state["moco"]["key_model"], "queue": torch.empty(0, 128)}
    torch.save(old, last_checkpoint(path))
    with pytest.raises(ValueError, match="no moco predictor / key model.*older cacr_lab"):
        Trainer(tiny(method="moco", epochs=2), path, resume=True, progress=False)


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


def test_eval_every_steps_snapshots_mid_epoch_and_trains_the_same(tmp_path):
    """A snapshot every 3 steps (21 steps per epoch here), in a run stopped at step 4 and
    resumed to 8: evaluations at 0, 3, 4 (the first part's final), 6 and the final 8; losses
    and weights are those of the same run evaluated by epochs, uninterrupted."""
    plain = train(tiny(epochs=2, max_steps=8), tmp_path / "plain", progress=False)
    stepped = tmp_path / "stepped"
    train(tiny(epochs=2, max_steps=4, eval_every_steps=3), stepped, progress=False)
    train(tiny(epochs=2, max_steps=8, eval_every_steps=3), stepped, resume=True, progress=False)
    assert [r["step"] for r in load_run(stepped).eval_records()] == [0, 3, 4, 6, 8]
    assert [int(p.stem.split("_")[1]) for p in list_snapshots(stepped)] == [0, 3, 4, 6, 8]
    assert [r["step"] for r in load_run(plain).eval_records()] == [0, 8]
    losses = lambda p: [(r["step"], r["loss"]) for r in load_run(p).train_records()]  # noqa: E731
    assert losses(stepped) == losses(plain)
    for k, v in _final_state(plain).items():
        torch.testing.assert_close(_final_state(stepped)[k], v, rtol=0, atol=0)


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
        ({"dataset": "stl10", "imbalance": "linear"}, "imbalance 'linear'.*stl10.*unlabeled"),
        ({"method": "infonce", "loss_options": {"multiview": "full"}}, "multiview 'full'"),
        ({"moco_momentum": 1.0}, r"moco_momentum must be in \[0, 1\); got 1.0"),
        ({"moco_momentum_schedule": "linear"}, "moco_momentum_schedule 'linear'"),
        ({"moco_multicrop": "half"}, "moco_multicrop 'half'.*light, full"),
        ({"method": "moco", "moco_local_crops": -1}, "moco_local_crops.*>= 0; got -1"),
        ({"moco_local_crops": 2}, "applies to method 'moco' only"),
        ({"method": "moco", "moco_local_crops": 2}, "cropped views.*'digits'"),
        (
            {"method": "moco", "dataset": "cifar10", "moco_local_crops": 2},
            "any image size.*'small-alexnet'",
        ),
    ],
)
def test_config_rejects_bad_values_by_name(kwargs, pattern):
    with pytest.raises(ValueError, match=pattern):
        TrainConfig(**kwargs)


def test_knn_k_follows_the_data_and_every_eval_record_states_it(tmp_path):
    """knn_k = 0 (the default): the k of the digits bank (65) in every eval record; a set k
    is used as given."""
    auto = load_run(train(tiny(max_steps=2, knn_k=0), tmp_path / "auto", progress=False))
    assert auto.config["knn_k"] == 0
    assert [r["knn_k"] for r in auto.eval_records()] == [65, 65]
    fixed = load_run(train(tiny(max_steps=2), tmp_path / "fixed", progress=False))
    assert [r["knn_k"] for r in fixed.eval_records()] == [20, 20]


def test_batch_larger_than_dataset_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="batch_size 4096 is larger"):
        train(tiny(batch_size=4096), tmp_path / "r", progress=False)
    assert not (tmp_path / "r").exists()


def test_stl10_pretrains_on_train_plus_unlabeled_and_evaluates_on_train(tmp_path, fake_stl10):
    """STL-10 as the authors run it: pre-training draws from train+unlabeled (8 + 12 images of
    the fake set), the unlabeled images count in no class, and the kNN bank and the probe use
    the 8 labelled train images (tested against the 6 test images)."""
    cfg = tiny(
        dataset="stl10",
        data_root=str(fake_stl10.root),
        encoder="small-cnn",
        batch_size=10,
        max_steps=2,
        knn_k=3,
        snapshot_size=4,
        positives=1,
    )
    trainer = Trainer(cfg, tmp_path / "r", progress=False)
    assert len(trainer.pretrain) == 20 and trainer.steps_per_epoch == 2
    assert fake_stl10.image_ids(trainer.images.cpu()) == list(range(10, 18)) + list(range(40, 52))
    run = load_run(trainer.run())
    assert run.status["state"] == "finished"
    assert run.config["pretrain_size"] == 20 and sum(run.config["class_counts"]) == 8
    assert run.config["image_size"] == 64
    final = run.eval_records()[-1]
    assert 0.0 <= final["knn_acc"] <= 1.0 and 0.0 <= final["probe_acc"] <= 1.0
    assert set(latest_snapshot(run.path).labels.tolist()) <= set(fake_stl10.labels["test"])


def test_infonce_cmc_form_trains_and_snapshots_its_cross_view_weights(tmp_path):
    """The "cmc" form's diagnostics (computed on first read) reach the snapshot: B - 1
    cross-view negatives per query, where the "pairs" form has 2B - 2."""
    cfg = tiny(method="infonce", loss_options={"multiview": "cmc"}, max_steps=2, positives=2)
    run = load_run(train(cfg, tmp_path / "cmc", progress=False))
    assert run.status["state"] == "finished"
    assert run.config["loss_options"] == {"temperature": 0.5, "multiview": "cmc"}
    snap = latest_snapshot(run.path)
    assert snap.neg_weights.shape[1] == 63
    np.testing.assert_allclose(snap.neg_weights.sum(1), 1.0, atol=1e-5)


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
