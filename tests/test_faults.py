"""Nothing lost: run folders, resume, stop and faults, tried as a user would, with faults injected.

One section per case of issue 12; each test reproduces the case and asserts what the user sees
(exit code, the one line on stderr, the page) and what is on disk afterwards. Faults are real
where the machine allows: SIGTERM, SIGINT and SIGKILL to real ``python -m cacr_lab`` processes,
a full or read-only tmpfs mounted for the test (root only; else a monkeypatched write raising
ENOSPC), permissions enforced by chmod on a process without CAP_DAC_OVERRIDE (as root, through
``setpriv``). Imports of what the fix added sit inside the tests, so each test fails on the old code
for its own reason.
"""

from __future__ import annotations

import json
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import _faults as F  # tests/_faults.py
import pytest
import torch
from PIL import Image

from cacr_lab.runs import RunWriter, last_checkpoint, load_run, run_state, stop_run
from cacr_lab.train import NonFiniteLossError, TrainConfig, Trainer, train

cli, one_line, files = F.cli, F.one_line, F.files
# The CLI's flags for a small digits run: epoch 0 (21 steps) and 4 steps of epoch 1.
FLAGS = ["--dataset", "digits", "--epochs", "2", "--batch-size", "64", "--positives", "1"]
FLAGS += ["--max-steps", "25", "--log-every", "1", "--no-progress"]
STEPS_PER_EPOCH, TOTAL_STEPS = 1347 // 64, 25
# In-process runs: 5 steps per epoch.
TINY = ["--dataset", "digits", "--epochs", "2", "--batch-size", "256", "--positives", "1"]


def tiny(**kw) -> TrainConfig:
    base = dict(dataset="digits", epochs=2, batch_size=256, positives=1, log_every=1)
    return TrainConfig(**(base | {"snapshot_size": 64, "knn_k": 20} | kw))


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    """A finished two-epoch run (10 steps) made in this process."""
    return train(tiny(), tmp_path_factory.mktemp("finished") / "run", progress=False)


@pytest.fixture
def run_copy(finished, tmp_path) -> Path:
    """A private copy of the finished run."""
    return Path(shutil.copytree(finished, tmp_path / "run"))


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    """The uninterrupted run of FLAGS, to compare interrupted ones with."""
    config = TrainConfig(
        dataset="digits", epochs=2, batch_size=64, positives=1, max_steps=25, log_every=1
    )
    return train(config, tmp_path_factory.mktemp("ref") / "ref", progress=False)


# --------------------------------------------------------------------------------------------
# 1. --overwrite deletes only run folders
# --------------------------------------------------------------------------------------------


def test_1_overwrite_refuses_a_folder_that_merely_holds_a_config_json(tmp_path, capsys):
    project = tmp_path / "project"
    (project / "src").mkdir(parents=True)
    (project / "src" / "model.py").write_text("years of work")
    (project / "notes.txt").write_text("notes")
    (project / "config.json").write_text('{"name": "my project", "lr": 0.1}')
    before = files(project)
    code, err = cli(capsys, "train", *FLAGS, "--run-dir", str(project), "--overwrite")
    assert code == 2, f"exit {code}: {err}"
    line = one_line(err)
    assert line.startswith("error: refusing to delete")
    assert "not a cacr_lab run config" in line
    assert "notes.txt" in line and "src/" in line  # names what it found
    assert files(project) == before  # nothing deleted, nothing added (no lock file)


def test_1_overwrite_refuses_a_run_folder_holding_a_users_files(run_copy, capsys):
    (run_copy / "my-analysis.ipynb").write_text("{}")
    before = files(run_copy)
    code, err = cli(capsys, "train", *FLAGS, "--run-dir", str(run_copy), "--overwrite")
    assert code == 2, f"exit {code}: {err}"
    line = one_line(err)
    assert "refusing to delete" in line and "my-analysis.ipynb" in line
    assert files(run_copy) == before


# --------------------------------------------------------------------------------------------
# 2. --resume continues the stored config
# --------------------------------------------------------------------------------------------


def test_2_resume_without_epochs_keeps_a_finished_run_as_it_is(run_copy, capsys):
    before = files(run_copy)
    code, err = cli(capsys, "train", "--resume", str(run_copy), "--no-progress")
    assert code == 0, err
    assert "is finished" in one_line(err) and "nothing to resume" in err, err
    after = files(run_copy)
    assert {k: v for k, v in after.items() if k != ".lock"} == {
        k: v for k, v in before.items() if k != ".lock"
    }
    run = load_run(run_copy)
    assert run.config["epochs"] == 2 and run.status["state"] == "finished"


@pytest.mark.parametrize(
    ("flags", "named"),
    [
        (["--lr", "0.5"], "lr 0.5 (the run has None)"),
        (["--tau-neg", "2.0"], "loss_options.tau_neg 2.0 (the run has 0.9)"),
        (["--epochs", "1"], "epochs 1 (the run has 2 -- a resumed run may only be extended)"),
        (["--seed", "3", "--batch-size", "128"], "batch_size 128 (the run has 256); seed 3"),
    ],
)
def test_2_resume_refuses_flags_that_change_the_run_before_touching_it(
    run_copy, capsys, flags, named
):
    before = files(run_copy)
    code, err = cli(capsys, "train", "--resume", str(run_copy), *flags, "--no-progress")
    assert code == 2, f"exit {code}: {err}"
    line = one_line(err)
    assert line.startswith(f"error: cannot resume {run_copy}")
    assert named in line
    assert files(run_copy) == before


def test_2_resume_with_more_epochs_extends_the_run_once(run_copy, capsys):
    code, err = cli(capsys, "train", "--resume", str(run_copy), "--epochs", "3", "--no-progress")
    assert code == 0, err
    run = load_run(run_copy)
    assert run.config["epochs"] == 3 and len(run.config["resumed"]) == 1
    assert run.status["state"] == "finished" and run.status["step"] == 15
    assert run.status["step"] == run.status["total_steps"]
    steps = F.eval_steps(run_copy)
    assert steps == sorted(set(steps)) == [0, 5, 10, 15]  # no eval record twice at one step
    finals = [r["step"] for r in run.eval_records() if r.get("probe_acc") is not None]
    assert finals == [10, 15]  # the old run's final evaluation, and the extended run's


def test_2_resume_of_a_run_without_checkpoint_touches_nothing(run_copy, capsys):
    shutil.rmtree(run_copy / "checkpoints")
    status = json.loads((run_copy / "status.json").read_text())
    status.update(state="running", pid=2**22 + 7)  # killed in epoch 0: a dead pid
    (run_copy / "status.json").write_text(json.dumps(status))
    before = files(run_copy)
    code, err = cli(capsys, "train", "--resume", str(run_copy), "--no-progress")
    assert code == 2, f"exit {code}: {err}"
    assert "nothing to resume: no checkpoint" in one_line(err)
    assert files(run_copy) == before  # config.json not rewritten, no status "running"


# --------------------------------------------------------------------------------------------
# 3. Stop writes a checkpoint; resuming from it gives the uninterrupted result
# --------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_3_stop_checkpoints_the_current_step_and_resume_is_bit_exact(reference, tmp_path, capsys):
    run_dir = tmp_path / "stopped"
    proc = F.start_cli("train", *FLAGS, "--run-dir", str(run_dir))
    try:
        F.wait_for(lambda: F.trained_steps(run_dir) >= 2, 120, "the first steps", proc)
        assert stop_run(run_dir), "the dashboard's Stop sent no signal"  # SIGTERM, as the page
        proc.wait(timeout=60)
    finally:
        proc.kill()
    err = proc.stderr.read()
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert "stopped by SIGTERM at step" in one_line(err) and "--resume" in err
    run = load_run(run_dir)
    assert run.status["state"] == "stopped"
    stopped_at = run.status["step"]
    assert 0 < stopped_at < STEPS_PER_EPOCH, "stopped in epoch 0, before any epoch checkpoint"
    state = F.checkpoint(run_dir)
    assert (state["step"], state["epoch"]) == (stopped_at, 0)
    assert not list((run_dir / "checkpoints").glob("epoch_*.pt"))  # only complete epochs

    # a run stopped in epoch 0 can be evaluated ...
    code, err = cli(capsys, "eval", str(run_dir))
    assert code == 0, err
    # ... and resumed, to exactly what the uninterrupted run gives
    code, err = cli(capsys, "train", "--resume", str(run_dir), "--no-progress")
    assert code == 0, err
    assert load_run(run_dir).status["state"] == "finished"
    F.assert_same_weights(run_dir, reference)
    assert F.train_losses(run_dir) == F.train_losses(reference)
    assert F.eval_steps(run_dir) == F.eval_steps(reference)


# --------------------------------------------------------------------------------------------
# 4. kill -9 between an epoch's checkpoint and its evaluation
# --------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_4_resume_redoes_the_evaluation_a_kill_cut_off(reference, tmp_path, capsys):
    run_dir = tmp_path / "killed"
    proc = F.start_cli("train", *FLAGS, "--run-dir", str(run_dir), code=F.KILL_BEFORE_EVALUATION)
    proc.wait(timeout=180)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.read()
    assert F.checkpoint(run_dir)["step"] == STEPS_PER_EPOCH
    assert STEPS_PER_EPOCH not in F.eval_steps(run_dir)  # killed before the evaluation

    code, err = cli(capsys, "train", "--resume", str(run_dir), "--no-progress")
    assert code == 0, err
    assert F.eval_steps(run_dir) == F.eval_steps(reference) == [0, STEPS_PER_EPOCH, TOTAL_STEPS]
    assert F.snapshot_names(run_dir) == F.snapshot_names(reference)
    F.assert_same_weights(run_dir, reference)


# --------------------------------------------------------------------------------------------
# 5. A non-finite gradient on an epoch's last step
# --------------------------------------------------------------------------------------------


def test_5_a_nan_gradient_is_refused_before_the_step_and_never_checkpointed(tmp_path):
    trainer = Trainer(tiny(), tmp_path / "run", progress=False)
    last = trainer.steps_per_epoch - 1  # 0-based: the last step of epoch 0, before its checkpoint
    first = next(trainer.model.parameters())
    first.register_hook(lambda g: torch.full_like(g, float("nan")) if trainer.step == last else g)
    with pytest.raises(NonFiniteLossError, match=rf"non-finite gradient at step {last + 1} "):
        trainer.run()
    run = load_run(tmp_path / "run")
    assert run.status["state"] == "failed" and "non-finite gradient" in run.status["error"]
    assert run.status["step"] == last  # the step was not taken
    assert all(torch.isfinite(p).all() for p in trainer.model.parameters())
    for path in (tmp_path / "run" / "checkpoints").glob("*.pt"):  # none, or only finite ones
        state = torch.load(path, weights_only=True)["model"]
        assert all(torch.isfinite(v).all() for v in state.values() if v.is_floating_point()), path


# --------------------------------------------------------------------------------------------
# 6. Disk full, read-only and forbidden folders
# --------------------------------------------------------------------------------------------


@pytest.fixture
def small_fs(tmp_path):
    """A 16 MiB tmpfs at tmp_path/fs (None where this process may not mount: not root)."""
    with F.tmpfs(tmp_path / "fs") as mnt:
        yield mnt


def test_6_disk_full_ends_the_run_in_one_line_and_keeps_the_last_checkpoint(
    small_fs, tmp_path, capsys, monkeypatch
):
    from cacr_lab.train import trainer as trainer_module

    run_dir = (small_fs or tmp_path) / "run"
    write, calls = trainer_module.write_checkpoint, []

    def fill_then_write(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:  # at the end of epoch 2 the disk is full
            if small_fs is not None:
                F.fill(small_fs)  # a real ENOSPC from the kernel
            else:
                F.fail_atomic_writes(monkeypatch)
        return write(*args, **kwargs)

    monkeypatch.setattr(trainer_module, "write_checkpoint", fill_then_write)
    code, err = cli(capsys, "train", *TINY, "--no-progress", "--run-dir", str(run_dir))
    assert code == 1, err
    assert one_line(err) == f"error: {run_dir / 'checkpoints' / 'last.pt'}: No space left on device"
    monkeypatch.undo()
    run = load_run(run_dir)
    assert run.status["state"] == "failed" and "No space left on device" in run.status["error"]
    assert F.temp_files(run_dir) == []
    state = F.checkpoint(run_dir)  # the last good one, intact
    assert state["step"] == 5 and all(torch.isfinite(v).all() for v in state["model"].values())
    # Nothing lost: with space again the run resumes from it and finishes.
    if small_fs is not None:
        (small_fs / "filler").unlink()
    code, err = cli(capsys, "train", "--resume", str(run_dir), "--no-progress")
    assert code == 0, err
    assert load_run(run_dir).status["state"] == "finished"


def test_6_read_only_folder_is_one_line_and_changes_nothing(small_fs, capsys):
    if small_fs is None:
        pytest.skip("needs a read-only mount (root); the disk-full test covers the fallback")
    run_dir = train(tiny(epochs=1), small_fs / "run", progress=False)
    F.remount_read_only(small_fs)
    before = files(run_dir)
    # a new run in a read-only folder
    code, err = cli(capsys, "train", *FLAGS, "--run-dir", str(small_fs / "new"))
    assert code == 1, err
    assert one_line(err) == f"error: {small_fs / 'new'}: Read-only file system"
    assert not (small_fs / "new").exists()
    # extending a run on a read-only disk
    code, err = cli(capsys, "train", "--resume", str(run_dir), "--epochs", "2", "--no-progress")
    assert code == 1, err
    line = one_line(err)
    assert line.startswith(f"error: {run_dir}") and "Read-only file system" in line
    assert files(run_dir) == before


@pytest.mark.slow
def test_6_permission_denied_is_one_line_state_failed_and_no_temp_files(tmp_path):
    prefix = F.held_to_permissions()  # root ignores permissions unless setpriv drops that right
    if prefix is None:
        pytest.skip("root ignores file permissions, and setpriv is missing to drop that right")
    run_dir = tmp_path / "run"
    proc = subprocess.run(
        [*prefix, sys.executable, "-c", F.PERMISSION_LOST, "train", *TINY, "--no-progress"]
        + ["--run-dir", str(run_dir)],
        env=F.ENV,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert proc.returncode == 1, proc.stderr
    line = one_line(proc.stderr)
    assert line == f"error: {run_dir / 'checkpoints' / 'last.pt'}: Permission denied"
    run = load_run(run_dir)
    assert run.status["state"] == "failed" and "Permission denied" in run.status["error"]
    assert F.temp_files(run_dir) == []
    assert F.checkpoint(run_dir)["step"] == 5


# --------------------------------------------------------------------------------------------
# 7. compare stops as a whole
# --------------------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_7_compare_stops_as_a_whole_on_sigterm_and_sigint(tmp_path, capsys, signum):
    out = tmp_path / "cmp"
    argv = ["compare", "--methods", "cacr,infonce", "--seeds", "1", "--out", str(out)]
    argv += ["--dataset", "digits", "--epochs", "1", "--batch-size", "64", "--positives", "1"]
    argv += ["--log-every", "1", "--no-progress"]
    proc = F.start_cli(*argv)
    first = out / "runs" / "cacr-seed0"
    try:
        F.wait_for(lambda: F.trained_steps(first) >= 2, 120, "the first run's steps", proc)
        proc.send_signal(signum)
        proc.wait(timeout=60)
    finally:
        proc.kill()
    err = proc.stderr.read()
    assert proc.returncode == 128 + signum, err
    name = signal.Signals(signum).name
    assert one_line(err).startswith(f"stopped: {name} after 0 of 2 runs")
    assert not (out / "runs" / "infonce-seed0").exists()  # no further run started
    assert load_run(first).status["state"] == "stopped" and last_checkpoint(first) is not None
    assert not (out / "results.csv").exists()
    if signum == signal.SIGTERM:  # the same command again continues: nothing lost
        code, err = cli(capsys, *argv)
        assert code == 0, err
        assert len(load_run(first).config["resumed"]) == 1
        assert (out / "results.csv").read_text().count("\n") == 3


# --------------------------------------------------------------------------------------------
# 8. A reused pid is neither shown as the run nor signalled
# --------------------------------------------------------------------------------------------


def test_8_a_reused_pid_is_stale_and_never_signalled(tmp_path):
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        RunWriter(tmp_path / "r", {"method": "cacr"}).close()
        status_path = tmp_path / "r" / "status.json"
        status = json.loads(status_path.read_text())
        for token in ("deadbeef:123", None):  # the trainer died, its pid went to `other`
            status.update(state="running", pid=other.pid)
            status.pop("pid_start", None)
            if token is not None:
                status["pid_start"] = token
            status_path.write_text(json.dumps(status))
            assert run_state(load_run(tmp_path / "r")) == ("stale" if token else "running")
            assert stop_run(tmp_path / "r") is False
            time.sleep(0.2)
            assert other.poll() is None, "an unrelated process was signalled"
        # the real identity (pid and start token) is trusted
        from cacr_lab.runs import process_token

        status["pid_start"] = process_token(other.pid)
        status_path.write_text(json.dumps(status))
        assert run_state(load_run(tmp_path / "r")) == "running"
        assert stop_run(tmp_path / "r") is True
        assert other.wait(timeout=10) == -signal.SIGTERM
    finally:
        other.kill()
        other.wait()


# --------------------------------------------------------------------------------------------
# 9. Damaged checkpoints: one line naming the file
# --------------------------------------------------------------------------------------------


class Foreign:
    """Something no checkpoint holds: loading it safely must refuse it."""


@pytest.mark.parametrize("damage", ["truncated", "foreign object", "missing keys", "wrong shapes"])
def test_9_eval_of_a_damaged_checkpoint_is_one_line_naming_the_file(run_copy, capsys, damage):
    path = run_copy / "checkpoints" / "last.pt"
    state = torch.load(path, weights_only=True)
    if damage == "truncated":
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    elif damage == "foreign object":
        torch.save(state | {"model": Foreign()}, path)
    elif damage == "missing keys":
        torch.save({"model": state["model"], "epoch": 2}, path)
    else:
        torch.save(state | {"model": {k: v.flatten()[:1] for k, v in state["model"].items()}}, path)
    code, err = cli(capsys, "eval", str(run_copy))
    assert code == 2, f"exit {code}: {err}"
    assert one_line(err).startswith(f"error: damaged checkpoint {path}")
    assert "weights_only" not in err


# --------------------------------------------------------------------------------------------
# 10. Bounds before allocation
# --------------------------------------------------------------------------------------------


def test_10_a_seed_out_of_range_names_the_flag(tmp_path, capsys):
    run_dir = tmp_path / "r"
    code, err = cli(
        capsys, "train", *FLAGS, "--seed", "99999999999999999999999", "--run-dir", str(run_dir)
    )
    line = one_line(err)
    assert code == 2 and "seed must be at most 2**63 - 1" in line and "9999999999" in line
    assert not run_dir.exists()


def test_10_too_many_views_for_the_memory_is_refused_before_allocating(tmp_path):
    run_dir = tmp_path / "r"
    argv = ["train", *FLAGS, "--positives", "400", "--batch-size", "1024", "--device", "cpu"]
    # Under an 8 GiB address-space limit, so that a missing check fails fast instead of
    # swapping the machine.
    limit = lambda: __import__("resource").setrlimit(  # noqa: E731
        __import__("resource").RLIMIT_AS, (8 << 30, 8 << 30)
    )
    proc = subprocess.run(
        [sys.executable, "-m", "cacr_lab", *argv, "--run-dir", str(run_dir)],
        env=F.ENV,
        capture_output=True,
        text=True,
        timeout=120,
        preexec_fn=limit,
    )
    line = one_line(proc.stderr)
    assert proc.returncode == 2
    assert "positives=400 and batch_size=1024 need about" in line and "GiB" in line
    assert "lower --positives or --batch-size" in line
    assert not run_dir.exists()


def test_10_an_image_folder_too_small_to_split_is_refused_early(tmp_path, capsys):
    folder = tmp_path / "imgs"
    for c in ("cats", "dogs"):  # one image per class: nothing left for a test split
        (folder / c).mkdir(parents=True)
        Image.new("RGB", (8, 8), (200, 0, 0)).save(folder / c / "only.png")
    run_dir = tmp_path / "r"
    argv = ["--dataset", f"folder:{folder}", "--batch-size", "2", "--no-progress"]
    code, err = cli(capsys, "train", *argv, "--run-dir", str(run_dir))
    line = one_line(err)
    assert code == 2 and f"class folder {folder / 'cats'} holds only 1 image" in line
    assert not run_dir.exists()


# --------------------------------------------------------------------------------------------
# 11. One owner per run folder
# --------------------------------------------------------------------------------------------


def test_11_two_writers_started_at_the_same_instant_never_both_own_a_folder(tmp_path):
    config = {"method": "cacr", "seed": 0}
    for trial in range(40):
        path = tmp_path / f"r{trial}"
        barrier, results = threading.Barrier(2), []

        def claim(path=path, barrier=barrier, results=results) -> None:
            barrier.wait()
            try:
                results.append(RunWriter(path, config))
            except FileExistsError as err:
                results.append(err)

        threads = [threading.Thread(target=claim) for _ in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        owners = [r for r in results if isinstance(r, RunWriter)]
        for w in owners:
            w.close()
        assert len(owners) == 1, f"trial {trial}: {len(owners)} writers own {path}"
        refused = next(r for r in results if isinstance(r, FileExistsError))
        assert "in use by another process" in str(refused) or "already exists" in str(refused)


def test_11_the_lock_is_released_on_every_exit_path(tmp_path):
    config = {"method": "cacr", "seed": 0}
    path = tmp_path / "r"
    held = RunWriter(path, config)
    with pytest.raises(FileExistsError, match="in use by another process"):
        RunWriter(path, config, resume=True)
    held.set_status("finished")
    held.close()  # normal close
    with pytest.raises(RuntimeError), RunWriter(path, config, resume=True):
        raise RuntimeError("the trainer failed")  # an exception inside
    with RunWriter(path, config, resume=True):
        pass
    # a process killed with SIGKILL while it holds the folder
    code = (
        "import sys, time; from cacr_lab.runs import RunWriter; "
        f"w = RunWriter({str(path)!r}, {{'method': 'cacr'}}, resume=True); "
        "print('held', flush=True); time.sleep(60)"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], env=F.ENV, stdout=subprocess.PIPE)
    try:
        assert proc.stdout.readline().strip() == b"held"
        with pytest.raises(FileExistsError, match=rf"in use by .*{proc.pid}"):
            RunWriter(path, config, resume=True)
    finally:
        proc.kill()
        proc.wait()
    RunWriter(path, config, resume=True).close()


# --------------------------------------------------------------------------------------------
# 12. The dashboard
# --------------------------------------------------------------------------------------------

APP = F.ROOT / "app" / "main.py"


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/net/tcp").exists(), reason="reads /proc/net/tcp (Linux)")
def test_12_the_app_binds_to_loopback_when_started_from_another_directory(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    streamlit = Path(sys.executable).with_name("streamlit")
    proc = subprocess.Popen(
        [str(streamlit), "run", str(APP), "--server.port", str(port), "--server.headless", "true"],
        cwd=tmp_path,  # not the repo: its .streamlit/ is not in the working directory
        env=F.ENV | {"CACR_LAB_RUNS": str(tmp_path / "runs")},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        F.wait_for(lambda: F.listening(port), 90, f"streamlit to listen on port {port}", proc)
        time.sleep(0.5)  # both address families are bound by then
        assert set(F.listening(port)) == {"0100007F"}, F.listening(port)  # 127.0.0.1 only
    finally:
        proc.terminate()
        proc.wait(timeout=30)


@pytest.fixture
def page(monkeypatch):
    """An AppTest of the page, without the background UMAP compilation."""
    from streamlit.testing.v1 import AppTest

    monkeypatch.setattr("cacr_lab.figures.warm_up_umap", lambda: 0.0)

    def make(root: Path) -> AppTest:
        monkeypatch.setenv("CACR_LAB_RUNS", str(root))
        return AppTest.from_file(str(APP), default_timeout=120)

    return make


def test_12_an_image_folder_outside_the_data_roots_is_refused(page, tmp_path, monkeypatch):
    monkeypatch.delenv("CACR_LAB_DATA_DIRS", raising=False)
    at = page(tmp_path / "runs").run()
    at.selectbox(key="dataset").select("folder").run()
    at.text_input(key="folder_path").set_value("/").run()
    assert not at.exception
    errors = "\n".join(e.value for e in at.sidebar.error)
    assert "image folder '/' is outside the folders this page may read" in errors
    assert at.button(key="start").disabled
    # a folder under a root added by the environment is accepted
    monkeypatch.setenv("CACR_LAB_DATA_DIRS", str(tmp_path))
    at.text_input(key="folder_path").set_value(str(tmp_path / "imgs")).run()
    assert not at.sidebar.error and not at.button(key="start").disabled


@pytest.mark.slow
def test_12_a_failed_start_shows_its_error_and_can_be_dismissed(page, tmp_path, monkeypatch):
    monkeypatch.setenv("CACR_LAB_DATA_DIRS", str(tmp_path))
    root = tmp_path / "runs"
    at = page(root).run()
    at.selectbox(key="dataset").select("folder").run()
    at.text_input(key="folder_path").set_value(str(tmp_path / "no-such-folder")).run()
    at.text_input(key="run_name").set_value("bad-start").run()
    at.button(key="start").click().run()
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline and not at.error:
        time.sleep(0.5)
        at.run()
    shown = "\n".join(e.value for e in at.error)
    assert "bad-start: failed to start (exit code 2)" in shown and "no-such-folder" in shown
    assert "waiting for the trainer" not in "\n".join(i.value for i in at.info)
    assert at.session_state.live is False
    at.button(key="dismiss_bad-start").click().run()
    assert not at.exception
    assert "bad-start" not in "\n".join(m.value for m in at.markdown)
    assert not at.error and not (root / "bad-start").exists()


def test_12_a_damaged_run_folds_its_warnings_into_one_box(page, finished, tmp_path):
    root = tmp_path / "runs"
    bad = Path(shutil.copytree(finished, root / "damaged"))
    shutil.rmtree(bad / "snapshots")  # no UMAP to compute in this test
    with open(bad / "metrics.jsonl", "ab") as f:
        f.write(b"".join(b"garbage %d\n" % i for i in range(28)))
    at = page(root).run()
    assert not at.exception
    boxes = [w.value for w in at.warning if "damaged" in w.value]
    assert len(boxes) == 1, boxes
    assert boxes[0].count("skipped corrupt line") == 3 and "and 25 more warnings" in boxes[0]
