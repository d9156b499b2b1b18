"""The run directory format: what the trainer writes is what the dashboard reads."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

import cacr_lab
from cacr_lab.runs import (
    MetricsTail,
    RunWriter,
    checkpoint_dir,
    checkpoint_path,
    is_running,
    last_checkpoint,
    latest_snapshot,
    list_runs,
    list_snapshots,
    load_run,
    load_snapshot,
    new_run_name,
    run_path,
    run_state,
    sanitize_run_name,
    series,
)
from cacr_lab.runs import writer as runs_writer  # the module that calls np.savez

CONFIG = {"method": "cacr", "dataset": "digits", "tau_pos": 1.0, "tau_neg": 0.9, "seed": 0}


def _train(step: int, loss: float = 1.0) -> dict:
    return {"kind": "train", "epoch": step // 10, "step": step, "loss": loss, "lr": 0.1}


# --------------------------------------------------------------------------------------------
# Round trip
# --------------------------------------------------------------------------------------------


def test_round_trip_config_metrics_snapshot_status(tmp_path):
    rng = np.random.default_rng(0)
    emb = rng.normal(size=(20, 8)).astype(np.float32)
    labels = np.arange(20) % 3
    neg_d2 = rng.uniform(0, 4, size=(5, 19))
    neg_w = np.exp(-0.9 * neg_d2) / np.exp(-0.9 * neg_d2).sum(1, keepdims=True)
    config = {**CONFIG, "lr": np.float32(0.5), "views": (5,), "out": tmp_path / "x"}

    with RunWriter(tmp_path / "r", config, class_counts=np.array([7, 8, 5])) as w:
        w.log(_train(1, loss=2.5) | {"attraction": 1.0, "repulsion": -1.5})
        w.log(
            {
                "kind": "eval",
                "epoch": 0,
                "step": 1,
                "knn_acc": torch.tensor(0.5),
                "per_class_acc": np.array([0.1, 0.2, 0.3]),
                "neg_ess_frac": 0.97,
            }
        )
        w.snapshot(1, 0, torch.from_numpy(emb), labels, neg_weights=neg_w, neg_d2=neg_d2)
        w.set_status("running", step=1, epoch=0, total_steps=10, images_per_sec=123.0)
        assert json.loads((tmp_path / "r" / "status.json").read_text())["step"] == 1

    run = load_run(tmp_path / "r")
    assert run.name == "r" and run.warnings == []
    assert run.config["method"] == "cacr" and run.config["lr"] == 0.5
    assert run.config["views"] == [5] and run.config["out"] == str(tmp_path / "x")
    assert run.config["class_counts"] == [7, 8, 5]
    assert run.config["code_version"]["cacr_lab"] == cacr_lab.__version__
    assert "git_commit" in run.config["code_version"] and run.config["created"]
    assert run.status["state"] == "finished" and run.status["pid"] == os.getpid()
    assert run.status["images_per_sec"] == 123.0 and run.status["total_steps"] == 10
    assert [r["kind"] for r in run.metrics] == ["train", "eval"]
    train, ev = run.train_records()[0], run.eval_records()[0]
    assert train["attraction"] == 1.0 and train["time"] >= 0.0
    assert ev["knn_acc"] == 0.5 and ev["per_class_acc"] == pytest.approx([0.1, 0.2, 0.3])

    snaps = list_snapshots(tmp_path / "r")
    assert [p.name for p in snaps] == ["snap_00000001.npz"]
    snap = load_snapshot(snaps[0])
    assert snap.step == 1 and snap.epoch == 0
    assert snap.embeddings.dtype == np.float32 and snap.labels.dtype == np.int64
    np.testing.assert_array_equal(snap.embeddings, emb)
    np.testing.assert_array_equal(snap.labels, labels)
    np.testing.assert_allclose(snap.neg_weights.sum(1), 1.0, rtol=1e-5)
    assert snap.neg_weights.shape == snap.neg_d2.shape == (5, 19)
    assert snap.pos_weights is None and snap.pos_d2 is None


def test_failure_inside_writer_is_recorded(tmp_path):
    with pytest.raises(RuntimeError), RunWriter(tmp_path / "r", CONFIG):
        raise RuntimeError("loss is NaN")
    status = load_run(tmp_path / "r").status
    assert status["state"] == "failed" and "loss is NaN" in status["error"]


def test_nan_is_written_as_null(tmp_path):
    with RunWriter(tmp_path / "r", CONFIG) as w:
        w.log(
            {
                "kind": "train",
                "step": 1,
                "loss": float("nan"),
                "parts": [float("inf"), 1.0],
                "lr": np.float64("nan"),
            }
        )
        w.set_status("running", eta_sec=float("inf"))
    text = (tmp_path / "r" / "metrics.jsonl").read_text()
    assert "NaN" not in text and "Infinity" not in text
    rec = json.loads(text, parse_constant=lambda c: pytest.fail(f"non-strict token {c}"))
    assert rec["loss"] is None and rec["lr"] is None and rec["parts"] == [None, 1.0]
    steps, values = series(load_run(tmp_path / "r").metrics, "loss")
    assert steps.size == 0 and values.size == 0  # a None value is skipped, not plotted as 0


def test_bad_records_and_arrays_are_rejected(tmp_path):
    with RunWriter(tmp_path / "r", CONFIG) as w:
        with pytest.raises(ValueError, match="kind"):
            w.log({"step": 1})
        with pytest.raises(ValueError, match="step"):
            w.log({"kind": "train", "step": -1})
        with pytest.raises(ValueError, match="object"):
            w.log({"kind": "train", "step": 1, "x": object()})
        with pytest.raises(ValueError, match="'bogus'"):
            w.set_status("bogus")
        with pytest.raises(ValueError, match="speed"):
            w.set_status("running", speed=1.0)
        with pytest.raises(ValueError, match="weights_pos"):
            w.snapshot(1, 0, np.zeros((2, 3)), np.zeros(2), weights_pos=np.zeros((1, 2)))
        with pytest.raises(ValueError, match=r"\(2, 3\)"):
            w.snapshot(1, 0, np.zeros((2, 3)), np.zeros(3))
        with pytest.raises(ValueError, match="neg_weights"):
            w.snapshot(
                1,
                0,
                np.zeros((2, 3)),
                np.zeros(2),
                neg_weights=np.zeros((1, 2)),
                neg_d2=np.zeros((1, 3)),
            )


# --------------------------------------------------------------------------------------------
# Tolerant reading
# --------------------------------------------------------------------------------------------


def _write_run_by_hand(path, metrics_bytes: bytes):
    path.mkdir()
    (path / "config.json").write_text(json.dumps(CONFIG))
    (path / "status.json").write_text(json.dumps({"state": "finished", "pid": 1}))
    (path / "metrics.jsonl").write_bytes(metrics_bytes)


def test_reader_skips_half_written_last_line_silently(tmp_path):
    good = b"".join(json.dumps(_train(s)).encode() + b"\n" for s in (1, 2))
    _write_run_by_hand(tmp_path / "r", good + b'{"kind": "train", "step": 3, "lo')
    run = load_run(tmp_path / "r")
    assert [r["step"] for r in run.metrics] == [1, 2]
    assert run.warnings == []


def test_reader_skips_corrupt_middle_line_with_warning(tmp_path):
    lines = [json.dumps(_train(1)), '{"kind": "train", "st', "[1, 2]", json.dumps(_train(3))]
    _write_run_by_hand(tmp_path / "r", ("\n".join(lines) + "\n").encode())
    run = load_run(tmp_path / "r")
    assert [r["step"] for r in run.metrics] == [1, 3]
    assert len(run.warnings) == 2 and "line 2" in run.warnings[0] and "line 3" in run.warnings[1]


def test_corrupt_config_and_status_still_give_a_run(tmp_path):
    _write_run_by_hand(tmp_path / "r", json.dumps(_train(1)).encode() + b"\n")
    (tmp_path / "r" / "config.json").write_text("{not json")
    (tmp_path / "r" / "status.json").write_text("")
    run = load_run(tmp_path / "r")
    assert run.config == {} and run.status["state"] == "unknown" and len(run.metrics) == 1
    assert any("config.json" in w for w in run.warnings)
    assert any("status.json" in w for w in run.warnings)


def test_load_run_rejects_a_folder_that_is_not_a_run(tmp_path):
    with pytest.raises(ValueError, match="not a run directory"):
        load_run(tmp_path)


def test_list_runs_with_one_good_and_one_corrupt_run(tmp_path):
    with RunWriter(tmp_path / "good", CONFIG) as w:
        w.log(_train(1))
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "config.json").write_bytes(b"\x00\xff garbage")
    (tmp_path / "not_a_run").mkdir()  # no config.json: not listed at all

    found = {r.name: r for r in list_runs(tmp_path)}
    assert set(found) == {"good", "bad"}
    assert found["good"].warnings == [] and len(found["good"].metrics) == 1
    assert found["bad"].warnings and found["bad"].status["state"] == "unknown"
    assert list_runs(tmp_path / "missing") == []


def test_list_runs_sorted_by_creation_time(tmp_path):
    for name, created in [
        ("b", "2026-01-02T00:00:00+00:00"),
        ("a", "2026-01-03T00:00:00+00:00"),
        ("c", "2026-01-01T00:00:00+00:00"),
    ]:
        (tmp_path / name).mkdir()
        (tmp_path / name / "config.json").write_text(json.dumps({"created": created}))
    assert [r.name for r in list_runs(tmp_path)] == ["c", "b", "a"]


def test_series_skips_missing_and_none():
    records = [{"step": 1, "x": 1.0}, {"step": 2}, {"step": 3, "x": None}, {"step": 4, "x": 2}]
    steps, values = series(records, "x")
    assert steps.tolist() == [1, 4] and values.tolist() == [1.0, 2.0]
    assert steps.dtype == np.int64 and values.dtype == np.float64


# --------------------------------------------------------------------------------------------
# Atomicity, overwrite, resume
# --------------------------------------------------------------------------------------------


def test_snapshot_is_atomic_and_leaves_no_temp_files(tmp_path, monkeypatch):
    with RunWriter(tmp_path / "r", CONFIG) as w:
        w.snapshot(5, 0, np.eye(3), [0, 1, 2])
        w.snapshot(5, 0, np.eye(3) * 2, [0, 1, 2])  # replacing an existing snapshot
        assert sorted(os.listdir(tmp_path / "r" / "snapshots")) == ["snap_00000005.npz"]

        def crash(*args, **kwargs):
            raise OSError("disk full")

        monkeypatch.setattr(runs_writer.np, "savez", crash)
        with pytest.raises(OSError, match="disk full"):
            w.snapshot(6, 0, np.eye(3), [0, 1, 2])
    # the failed write left neither a temp file nor a half snapshot; the old one is intact
    assert sorted(os.listdir(tmp_path / "r" / "snapshots")) == ["snap_00000005.npz"]
    assert latest_snapshot(tmp_path / "r").embeddings[0, 0] == 2.0
    assert not [p for p in (tmp_path / "r").rglob("*") if p.name.startswith(".tmp")]


def test_list_snapshots_sorted_by_step_and_ignores_temp_files(tmp_path):
    with RunWriter(tmp_path / "r", CONFIG) as w:
        for step in (100, 2, 30):
            w.snapshot(step, 0, np.eye(2), [0, 1])
    (tmp_path / "r" / "snapshots" / ".tmp-abc.npz").write_bytes(b"partial")
    assert [p.name for p in list_snapshots(tmp_path / "r")] == [
        "snap_00000002.npz",
        "snap_00000030.npz",
        "snap_00000100.npz",
    ]
    assert latest_snapshot(tmp_path / "r").step == 100
    assert latest_snapshot(tmp_path / "nothing") is None


def test_latest_snapshot_reads_through_the_given_loader(tmp_path):
    with RunWriter(tmp_path / "r", CONFIG) as w:
        for step in (1, 2):
            w.snapshot(step, 0, np.eye(2) * step, [0, 1])
    seen = []

    def load(path):  # a cached reader, as the dashboard passes; this one finds step 2 damaged
        seen.append(path.name)
        if path.name == "snap_00000002.npz":
            raise ValueError("damaged")
        return load_snapshot(path)

    snap = latest_snapshot(tmp_path / "r", load=load)
    assert snap.step == 1 and snap.embeddings[0, 0] == 1.0
    assert seen == ["snap_00000002.npz", "snap_00000001.npz"]
    assert latest_snapshot(tmp_path / "r").step == 2  # the default reader finds it intact


def test_existing_run_without_overwrite_raises_and_deletes_nothing(tmp_path):
    with RunWriter(tmp_path / "r", CONFIG) as w:
        w.log(_train(1))
    before = {p: p.read_bytes() for p in (tmp_path / "r").rglob("*") if p.is_file()}
    with pytest.raises(FileExistsError, match=r"--overwrite.*--resume") as err:
        RunWriter(tmp_path / "r", CONFIG)
    assert str(tmp_path / "r") in str(err.value)
    assert {p: p.read_bytes() for p in (tmp_path / "r").rglob("*") if p.is_file()} == before


def test_overwrite_replaces_a_run(tmp_path):
    with RunWriter(tmp_path / "r", CONFIG) as w:
        w.log(_train(1))
    with RunWriter(tmp_path / "r", {**CONFIG, "seed": 1}, overwrite=True) as w:
        w.log(_train(7))
    run = load_run(tmp_path / "r")
    assert run.config["seed"] == 1 and [r["step"] for r in run.metrics] == [7]


def test_overwrite_refuses_a_folder_that_is_not_a_run(tmp_path):
    (tmp_path / "precious").mkdir()
    (tmp_path / "precious" / "thesis.tex").write_text("years of work")
    with pytest.raises(FileExistsError, match="refusing to delete"):
        RunWriter(tmp_path / "precious", CONFIG, overwrite=True)
    assert (tmp_path / "precious" / "thesis.tex").read_text() == "years of work"


def test_overwrite_refuses_a_live_run(tmp_path):
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        w = RunWriter(tmp_path / "r", CONFIG)
        w.set_status("running", pid=proc.pid)
        w.close()
        assert is_running(load_run(tmp_path / "r"))
        with pytest.raises(FileExistsError, match=str(proc.pid)):
            RunWriter(tmp_path / "r", CONFIG, overwrite=True)
    finally:
        proc.kill()
        proc.wait()
    # once the process is gone the run is stale and may be replaced
    assert run_state(load_run(tmp_path / "r")) == "stale"
    RunWriter(tmp_path / "r", CONFIG, overwrite=True).close()


def test_resume_truncates_records_and_snapshots_after_the_step(tmp_path):
    with RunWriter(tmp_path / "r", CONFIG, class_counts=[3, 4]) as w:
        for step in range(1, 7):
            w.log(_train(step) | {"time": float(step)})
        w.snapshot(2, 0, np.eye(2), [0, 1])
        w.snapshot(6, 0, np.eye(2), [0, 1])
    with open(tmp_path / "r" / "metrics.jsonl", "ab") as f:
        f.write(b'{"kind": "train", "st')  # the crash left a half line
    created = load_run(tmp_path / "r").config["created"]

    with RunWriter(tmp_path / "r", CONFIG, resume=True) as w:
        assert w.truncate_after(4) == 2
        assert w.elapsed() >= 4.0  # time continues from the last kept record
        w.log(_train(5, loss=0.5))
    run = load_run(tmp_path / "r")
    assert [r["step"] for r in run.metrics] == [1, 2, 3, 4, 5]
    assert run.metrics[-1]["loss"] == 0.5 and run.metrics[-1]["time"] >= 4.0
    assert run.warnings == []
    assert [p.name for p in list_snapshots(tmp_path / "r")] == ["snap_00000002.npz"]
    assert run.config["created"] == created and len(run.config["resumed"]) == 1
    assert run.config["class_counts"] == [3, 4]


def test_resume_needs_a_run_and_excludes_overwrite(tmp_path):
    with pytest.raises(ValueError, match="not a run directory"):
        RunWriter(tmp_path / "nothing", CONFIG, resume=True)
    with pytest.raises(ValueError, match="overwrite"):
        RunWriter(tmp_path / "r", CONFIG, resume=True, overwrite=True)


def test_checkpoint_paths(tmp_path):
    RunWriter(tmp_path / "r", CONFIG).close()
    assert last_checkpoint(tmp_path / "r") is None
    checkpoint_path(tmp_path / "r", 3).write_bytes(b"x")
    checkpoint_path(tmp_path / "r", 12).write_bytes(b"x")
    assert last_checkpoint(tmp_path / "r").name == "epoch_0012.pt"
    checkpoint_path(tmp_path / "r").write_bytes(b"x")
    assert last_checkpoint(tmp_path / "r") == checkpoint_dir(tmp_path / "r") / "last.pt"


# --------------------------------------------------------------------------------------------
# Names from a web page
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["cacr-digits-1", "run_2.b", "A" * 64, "x"])
def test_sanitize_run_name_accepts_good_names(name):
    assert sanitize_run_name(name) == name


@pytest.mark.parametrize(
    "name",
    [
        "../x",
        "/etc",
        "a/b",
        "",
        "   ",
        ".hidden",
        "..",
        "a..b",
        "a\\b",
        "x" * 65,
        "a b",
        "C:evil",
        "naïve",
        None,
    ],
)
def test_sanitize_run_name_rejects_escapes(name):
    with pytest.raises(ValueError, match="run name"):
        sanitize_run_name(name)


def test_new_run_name_and_run_path(tmp_path):
    name = new_run_name("cacr", "digits")
    assert name.startswith("cacr-digits-") and len(name) == len("cacr-digits-20261127-223501")
    assert run_path(tmp_path, name) == (tmp_path / name).resolve()
    with pytest.raises(ValueError):
        run_path(tmp_path, "../escape")


# --------------------------------------------------------------------------------------------
# Live tail
# --------------------------------------------------------------------------------------------


def test_metrics_tail_returns_a_partial_line_only_once_complete(tmp_path):
    path = tmp_path / "metrics.jsonl"
    tail = MetricsTail(path)
    assert tail.read_new() == []  # the file does not exist yet
    line = json.dumps(_train(2)).encode()
    path.write_bytes(json.dumps(_train(1)).encode() + b"\n" + line[:10])
    assert [r["step"] for r in tail.read_new()] == [1]
    assert tail.read_new() == []
    with open(path, "ab") as f:
        f.write(line[10:])
    assert tail.read_new() == []  # still no newline
    with open(path, "ab") as f:
        f.write(b"\n")
    assert [r["step"] for r in tail.read_new()] == [2]
    assert tail.read_new() == [] and not tail.restarted


def test_metrics_tail_follows_a_live_writer_and_restarts_after_truncation(tmp_path):
    w = RunWriter(tmp_path / "r", CONFIG)
    tail = MetricsTail(tmp_path / "r")
    for step in (1, 2, 3):
        w.log(_train(step))
    assert [r["step"] for r in tail.read_new()] == [1, 2, 3]
    w.log(_train(4))
    assert [r["step"] for r in tail.read_new()] == [4]
    w.truncate_after(2)  # resume: the file is rewritten shorter
    w.log(_train(3, loss=0.1))
    new = tail.read_new()
    assert tail.restarted and [r["step"] for r in new] == [1, 2, 3] and new[-1]["loss"] == 0.1
    w.close()


# --------------------------------------------------------------------------------------------
# Import weight
# --------------------------------------------------------------------------------------------


def test_a_version_1_run_folder_is_still_read_resumed_and_replaced(tmp_path):
    """Folders written before the format's signature, lock and pid token (version 1)."""
    from cacr_lab.runs import FORMAT_VERSION, run_format_of

    with RunWriter(tmp_path / "r", CONFIG) as w:
        w.log(_train(1))
    assert run_format_of(tmp_path / "r") == FORMAT_VERSION == 2
    config = json.loads((tmp_path / "r" / "config.json").read_text())
    del config["run_format"]
    (tmp_path / "r" / "config.json").write_text(json.dumps(config))
    status = json.loads((tmp_path / "r" / "status.json").read_text())
    del status["pid_start"]
    (tmp_path / "r" / "status.json").write_text(json.dumps(status))
    (tmp_path / "r" / ".lock").unlink()
    assert run_format_of(tmp_path / "r") == 1
    run = load_run(tmp_path / "r")
    assert run.warnings == [] and run.status["state"] == "finished" and len(run.metrics) == 1
    with RunWriter(tmp_path / "r", CONFIG, resume=True) as w:
        w.log(_train(2))
    assert run_format_of(tmp_path / "r") == 2 and len(load_run(tmp_path / "r").metrics) == 2
    # a folder whose config.json has neither signature is no run
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "config.json").write_text(json.dumps({"method": "cacr"}))
    assert run_format_of(tmp_path / "other") is None
    with pytest.raises(ValueError, match="not a run directory"):
        RunWriter(tmp_path / "other", CONFIG, resume=True)
