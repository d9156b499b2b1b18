"""What the dashboard needs from the library beyond reading runs: finding run folders cheaply,
a status line per run, starting a trainer as a detached process and stopping it, and a UMAP that
is quick on first use."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from cacr_lab import figures
from cacr_lab.runs import (
    LOG_FILE,
    Run,
    RunWriter,
    describe_status,
    load_run,
    read_log,
    run_dirs,
    run_stamp,
    run_state,
    spare_cores,
    start_process,
    stop_run,
)


def make_run(path: Path, **status) -> Path:
    with RunWriter(path, {"method": "cacr"}) as w:
        w.log({"kind": "train", "step": 1, "loss": 0.5})
        if status:
            w.set_status(**status)
    return path


def test_run_dirs_lists_only_run_folders(tmp_path):
    assert run_dirs(tmp_path / "missing") == []
    make_run(tmp_path / "b")
    make_run(tmp_path / "a")
    (tmp_path / "not-a-run").mkdir()
    (tmp_path / ".hidden").mkdir()
    (tmp_path / ".hidden" / "config.json").write_text("{}")
    (tmp_path / "file.txt").write_text("x")
    assert [p.name for p in run_dirs(tmp_path)] == ["a", "b"]


def test_run_stamp_changes_when_the_run_does(tmp_path):
    path = make_run(tmp_path / "r")
    before = run_stamp(path)
    assert run_stamp(path) == before
    with open(path / "metrics.jsonl", "a") as f:
        f.write('{"kind": "train", "step": 2}\n')
    assert run_stamp(path) != before
    assert run_stamp(tmp_path / "missing") == (None, None, None)


def run_with(status: dict) -> Run:
    return Run(Path("r"), "r", {}, status, [])


@pytest.mark.parametrize(
    ("status", "line"),
    [
        ({"state": "finished", "step": 400, "total_steps": 400}, "finished · step 400/400"),
        ({"state": "stopped", "step": 120, "total_steps": 400}, "stopped at step 120/400"),
        (
            {"state": "failed", "step": 37, "error": "non-finite loss"},
            "failed at step 37: non-finite loss",
        ),
        ({"state": "failed"}, "failed: no error text recorded"),
        ({"state": "unknown"}, "unknown: status.json missing or unreadable"),
        (
            {"state": "running", "pid": 2**22 + 12345, "step": 5, "total_steps": 10},
            "stale: status says running, but process 4206649 is gone (killed?) · last step 5/10",
        ),
    ],
)
def test_describe_status(status, line):
    assert describe_status(run_with(status)) == line


def test_describe_status_of_a_live_run_gives_rate_and_eta():
    run = run_with(
        {
            "state": "running",
            "pid": os.getpid(),
            "step": 120,
            "total_steps": 400,
            "images_per_sec": 851.4,
            "eta_sec": 185.0,
        }
    )
    assert describe_status(run) == "running · step 120/400 · 851 img/s · ETA 3 min 05 s"
    run.status.update(eta_sec=7300.0, images_per_sec=None)
    assert describe_status(run) == "running · step 120/400 · ETA 2 h 01 min"


# A stand-in trainer: writes a running status with its own pid, stops cleanly on SIGTERM.
FAKE_TRAINER = textwrap.dedent(
    """
    import signal, sys, time
    from cacr_lab.runs import RunWriter
    print("fake trainer starting", flush=True)
    w = RunWriter(sys.argv[1], {"method": "cacr"})
    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
    step = 0
    while not stop and step < 600:
        step += 1
        w.log({"kind": "train", "step": step, "loss": 1.0 / step})
        w.set_status("running", step=step, total_steps=600)
        time.sleep(0.05)
    w.set_status("stopped" if stop else "finished", step=step)
    w.close()
    print("fake trainer done", flush=True)
    """
)


def wait_for(predicate, timeout: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.1)
    return False


def test_start_process_then_stop_run_marks_it_stopped(tmp_path):
    path = tmp_path / "runs" / "live"
    proc = start_process(path, [sys.executable, "-c", FAKE_TRAINER, str(path)])
    try:
        assert (path / LOG_FILE).is_file()  # the log is inside the run folder from the start
        assert wait_for(
            lambda: (path / "status.json").exists() and load_run(path).status.get("step", 0) >= 3
        )
        run = load_run(path)
        assert run_state(run) == "running" and run.status["pid"] == proc.pid
        assert stop_run(path)
        assert proc.wait(timeout=30) == 0
        assert run_state(load_run(path)) == "stopped"
        assert not stop_run(path)  # nothing left to stop
        assert read_log(path).splitlines() == ["fake trainer starting", "fake trainer done"]
        assert read_log(path, lines=1) == "fake trainer done"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_start_process_can_lower_the_priority(tmp_path):
    code = "import os; print(os.nice(0))"
    proc = start_process(tmp_path / "n", [sys.executable, "-c", code], nice=5)
    assert proc.wait(timeout=30) == 0
    assert read_log(tmp_path / "n") == str(os.nice(0) + 5)
    with pytest.raises(ValueError, match="nice must be"):
        start_process(tmp_path / "m", [sys.executable, "-c", "pass"], nice=-1)


def test_start_process_sets_the_trainers_threads(tmp_path):
    code = "import os; print(os.environ['OMP_NUM_THREADS'])"
    proc = start_process(tmp_path / "t", [sys.executable, "-c", code], threads=1)
    assert proc.wait(timeout=30) == 0
    assert read_log(tmp_path / "t") == "1"
    for bad in (0, -2, 1.5, "2"):
        with pytest.raises(ValueError, match=f"threads must be .*got {bad!r}"):
            start_process(tmp_path / "m", [sys.executable, "-c", "pass"], threads=bad)


def test_spare_cores_leaves_out_the_cores_other_processes_are_using():
    """With a busy loop on every core, no core is spare (but a trainer always gets one)."""
    cores = os.cpu_count() or 1
    assert 1 <= spare_cores(0.2) <= cores
    loops = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(cores)]
    try:
        time.sleep(0.5)  # past their start-up
        assert spare_cores(0.5) == 1
    finally:
        for p in loops:
            p.kill()
            p.wait()


def test_spare_cores_falls_back_to_every_core_without_proc_stat(monkeypatch):
    from cacr_lab.runs import process

    monkeypatch.setattr(process, "_cpu_times", lambda: None)  # as on macOS or Windows
    assert spare_cores() == (os.cpu_count() or 1)


def test_start_process_refuses_an_existing_run(tmp_path):
    path = make_run(tmp_path / "r")
    with pytest.raises(FileExistsError, match="already holds a run"):
        start_process(path, [sys.executable, "-c", "pass"])


def test_run_writer_accepts_a_folder_holding_only_the_launch_log(tmp_path):
    path = tmp_path / "r"
    path.mkdir()
    (path / LOG_FILE).write_text("starting\n")
    make_run(path)
    assert (path / LOG_FILE).read_text() == "starting\n"
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="already exists and is not empty"):
        RunWriter(other, {"method": "cacr"})


def test_stop_run_ignores_runs_that_are_not_running(tmp_path):
    assert not stop_run(make_run(tmp_path / "done"))
    assert not stop_run(tmp_path / "missing")
    assert read_log(tmp_path / "missing") == ""


def test_warm_up_umap_caches_and_a_later_umap_is_quick():
    figures.warm_up_umap()
    assert figures.enable_umap_disk_cache() == 0  # idempotent: everything already caching
    x = np.random.default_rng(0).standard_normal((512, 32))
    start = time.perf_counter()
    xy = figures.compute_umap(x)
    assert xy.shape == (512, 2) and np.isfinite(xy).all()
    assert time.perf_counter() - start < 10.0  # compiled already (~0.5 s on 2 cores)
