"""The fault injectors and small helpers of tests/test_faults.py (and tests/test_study.py).

How a fault is made real: a process of its own (``python -m cacr_lab``, or ``python -c`` with a
script below that patches one function of the trainer to kill itself or take a permission away
at an exact moment), a tmpfs mounted for the test and filled up or remounted read-only, and
``setpriv`` dropping root's right to ignore file permissions.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import torch

from cacr_lab.cli import main
from cacr_lab.runs import last_checkpoint, load_run

ROOT = Path(__file__).resolve().parents[1]
ENV = os.environ | {"PYTHONPATH": str(ROOT)}


# --------------------------------------------------------------------------------------------
# What the user sees, what is on disk
# --------------------------------------------------------------------------------------------


def cli(capsys, *argv: str) -> tuple[int, str]:
    """``cacr-lab ARGV`` in this process: (exit code, stderr)."""
    try:
        code = main(list(argv))
    except SystemExit as exc:  # argparse's own errors
        code = exc.code
    return code, capsys.readouterr().err


def one_line(err: str) -> str:
    """The single line a user sees for an error (asserting it is a single line)."""
    lines = err.strip().splitlines()
    assert len(lines) == 1, f"expected one line, got:\n{err}"
    assert "Traceback" not in err
    return lines[0]


def files(path: Path) -> dict[str, bytes]:
    """Every file under ``path`` (relative name -> bytes): 'nothing was touched' compares these."""
    return {str(p.relative_to(path)): p.read_bytes() for p in path.rglob("*") if p.is_file()}


def temp_files(path: Path) -> list[str]:
    return [str(p) for p in path.rglob("*") if p.name.startswith(".tmp") or p.suffix == ".tmp"]


def checkpoint(run_dir: Path) -> dict:
    return torch.load(last_checkpoint(run_dir), weights_only=True)


def assert_same_weights(a: Path, b: Path) -> None:
    wa, wb = checkpoint(a)["model"], checkpoint(b)["model"]
    assert wa.keys() == wb.keys()
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], rtol=0, atol=0)


def train_losses(run_dir: Path) -> list[tuple[int, float]]:
    return [(r["step"], r["loss"]) for r in load_run(run_dir).train_records()]


def eval_steps(run_dir: Path) -> list[int]:
    return [r["step"] for r in load_run(run_dir).eval_records()]


def snapshot_names(run_dir: Path) -> list[str]:
    return sorted(f.name for f in (run_dir / "snapshots").iterdir())


# --------------------------------------------------------------------------------------------
# Processes
# --------------------------------------------------------------------------------------------


def start_cli(*argv: str, code: str | None = None, **kw) -> subprocess.Popen:
    """``python -m cacr_lab ARGV`` (or ``python -c CODE ARGV``) as a process of its own."""
    head = [sys.executable, "-c", code] if code else [sys.executable, "-m", "cacr_lab"]
    return subprocess.Popen(
        [*head, *argv],
        env=ENV,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        # SIGINT as in a terminal, also when pytest runs as a background job that ignores it
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
        **kw,
    )


def wait_for(predicate, timeout: float, what: str, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if proc is not None and proc.poll() is not None:
            out = proc.stderr.read() if proc.stderr else ""
            raise AssertionError(f"process ended (code {proc.returncode}) before {what}: {out}")
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def trained_steps(run_dir: Path) -> int:
    """Steps of the train records written so far (0 before the first)."""
    try:
        lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    except FileNotFoundError:
        return 0
    steps = [json.loads(x)["step"] for x in lines if x.endswith("}") and '"train"' in x]
    return max(steps, default=0)


# The trainer killed with SIGKILL when an epoch's checkpoint is on disk and its evaluation not.
KILL_BEFORE_EVALUATION = """
import os, signal, sys
from cacr_lab.train import trainer
evaluate = trainer.Trainer.maybe_evaluate
def maybe_evaluate(self, final=False):
    if self.step > 0 and not final:
        os.kill(os.getpid(), signal.SIGKILL)
    return evaluate(self, final)
trainer.Trainer.maybe_evaluate = maybe_evaluate
from cacr_lab.cli import main
sys.exit(main(sys.argv[1:]))
"""

# Before the second checkpoint someone takes the write permission of checkpoints/ away.
PERMISSION_LOST = """
import os, sys
from cacr_lab.train import trainer
write, calls = trainer.write_checkpoint, []
def write_checkpoint(run_dir, *args, **kwargs):
    calls.append(1)
    if len(calls) == 2:
        os.chmod(run_dir / "checkpoints", 0o555)
    return write(run_dir, *args, **kwargs)
trainer.write_checkpoint = write_checkpoint
from cacr_lab.cli import main
sys.exit(main(sys.argv[1:]))
"""


def held_to_permissions() -> list[str] | None:
    """The command prefix under which file permissions hold for this user: none needed unless
    root, then ``setpriv`` without CAP_DAC_OVERRIDE; None when root has no setpriv."""
    if os.geteuid() != 0:
        return []
    if shutil.which("setpriv") is None:
        return None
    drop = "-dac_override,-dac_read_search"
    return ["setpriv", "--bounding-set", drop, "--inh-caps", drop, "--"]


# --------------------------------------------------------------------------------------------
# File systems
# --------------------------------------------------------------------------------------------


@contextlib.contextmanager
def tmpfs(mnt: Path, size: str = "16m") -> Iterator[Path | None]:
    """A tmpfs of ``size`` mounted at ``mnt`` (None where this process may not mount)."""
    mnt.mkdir()
    cmd = ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mnt)]
    ok = os.geteuid() == 0 and subprocess.run(cmd, capture_output=True).returncode == 0
    try:
        yield mnt if ok else None
    finally:
        if ok:
            subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def remount_read_only(mnt: Path) -> None:
    cmd = ["mount", "-o", "remount,ro", str(mnt)]
    assert subprocess.run(cmd, capture_output=True).returncode == 0


def fill(folder: Path) -> Path:
    """Write a file until the file system is full; returns it (delete it to free the space)."""
    filler = folder / "filler"
    with open(filler, "wb") as f:
        try:
            while True:
                f.write(b"\0" * (1 << 20))
                f.flush()
        except OSError as err:
            assert err.errno == errno.ENOSPC
    return filler


def fail_atomic_writes(monkeypatch) -> None:
    """Fallback where no tmpfs can be mounted: every atomic write of a run file fails (ENOSPC)."""

    def fdopen(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fdopen", fdopen)


# --------------------------------------------------------------------------------------------
# Sockets
# --------------------------------------------------------------------------------------------


def listening(port: int) -> list[str]:
    """Local addresses (hex, as in /proc/net/tcp*) listening on ``port``."""
    found = []
    for name in ("tcp", "tcp6"):
        try:
            rows = Path(f"/proc/net/{name}").read_text().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            local, state = row.split()[1], row.split()[3]
            address, hex_port = local.split(":")
            if state == "0A" and int(hex_port, 16) == port:  # 0A: LISTEN
                found.append(address)
    return found
