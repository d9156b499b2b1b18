"""The cacr-lab command: train / eval / compare, and one clear line for every bad input."""

from __future__ import annotations

import csv
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from cacr_lab.cli import main
from cacr_lab.runs import load_run, read_evaluation

ROOT = Path(__file__).resolve().parents[1]
TINY = [
    "--dataset",
    "digits",
    "--epochs",
    "1",
    "--batch-size",
    "64",
    "--max-steps",
    "2",
    "--no-progress",
]


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_module_entry_point_trains_a_run(tmp_path):
    run_dir = tmp_path / "r"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "cacr_lab",
            "train",
            *TINY,
            "--method",
            "infonce",
            "--temperature",
            "0.2",
            "--run-dir",
            str(run_dir),
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    run = load_run(run_dir)
    assert run.status["state"] == "finished"
    assert run.config["loss_options"] == {"temperature": 0.2, "multiview": "pairs"}


def test_train_then_eval_prints_and_stores_accuracies(tmp_path, capsys):
    run_dir = str(tmp_path / "r")
    code, out, err = run_cli(capsys, "train", *TINY, "--tau-neg", "2.0", "--run-dir", run_dir)
    assert code == 0, err
    # --no-progress drops the bar, not the result: one summary line on stdout.
    assert re.fullmatch(rf"kNN \d\.\d{{3}}  probe \d\.\d{{3}}  -> {re.escape(run_dir)}\n", out)
    assert load_run(run_dir).config["loss_options"]["tau_neg"] == 2.0
    code, out, err = run_cli(capsys, "eval", run_dir)
    assert code == 0, err
    assert "kNN" in out and "linear probe (fast)" in out and "9:" in out  # per-class lines
    assert "per-class accuracy of the linear probe (evaluation split):" in out
    assert "evaluated on: held-out 25 % of digits (stratified, fixed seed 0)\n" in out
    stored = read_evaluation(run_dir)["fast"]
    assert 0 <= stored["knn_acc"] <= 1 and len(stored["per_class_acc"]) == 10


def test_every_training_flag_reaches_the_run_config(tmp_path, capsys):
    run_dir = str(tmp_path / "r")
    code, _, err = run_cli(
        capsys,
        "train",
        *TINY,
        "--method",
        "moco",
        "--moco-momentum",
        "0.9",
        "--moco-momentum-schedule",
        "cosine",
        "--moco-multicrop",
        "full",
        "--temperature",
        "0.3",
        "--cost",
        "euclidean",
        "--positives",
        "2",
        "--view-batching",
        "joint",
        "--schedule",
        "cosine",
        "--lr",
        "0.05",
        "--log-every",
        "1",
        "--run-dir",
        run_dir,
    )
    assert code == 0, err
    cfg = load_run(run_dir).config
    moco = ("moco_momentum", "moco_momentum_schedule", "moco_multicrop", "moco_local_crops")
    assert tuple(cfg[k] for k in moco) == (0.9, "cosine", "full", 0)
    assert cfg["loss_options"] == {"temperature": 0.3, "cost": "euclidean"}
    assert "moco_queue" not in cfg
    assert (cfg["positives"], cfg["view_batching"], cfg["schedule"], cfg["lr"]) == (
        2,
        "joint",
        "cosine",
        0.05,
    )


def test_moco_flags_default_to_the_config_fields():
    from cacr_lab.cli import build_parser
    from cacr_lab.config import default

    args = build_parser().parse_args(["train", "--method", "moco"])
    for name in ("moco_momentum", "moco_momentum_schedule", "moco_local_crops", "moco_multicrop"):
        assert getattr(args, name) == default(name)
    assert (default("moco_momentum"), default("moco_momentum_schedule")) == (0.99, "constant")


def test_paper_protocol_eval_runs_on_a_tiny_budget(tmp_path, capsys):
    run_dir = str(tmp_path / "r")
    assert run_cli(capsys, "train", *TINY, "--run-dir", run_dir)[0] == 0
    code, out, err = run_cli(capsys, "eval", run_dir, "--protocol", "paper", "--probe-epochs", "1")
    assert code == 0, err
    assert "linear probe (paper)" in out
    assert set(read_evaluation(run_dir)) == {"paper"}


def test_compare_writes_results_report_and_figures(tmp_path, capsys):
    out_dir = tmp_path / "cmp"
    argv = [
        "compare",
        "--methods",
        "cacr,infonce",
        "--seeds",
        "2",
        *TINY,
        "--imbalance",
        "linear",
        "--out",
        str(out_dir),
    ]
    code, out, err = run_cli(capsys, *argv)
    assert code == 0, err
    rows = list(csv.DictReader(open(out_dir / "results.csv")))
    assert [(r["method"], r["seed"]) for r in rows] == [
        ("cacr", "0"),
        ("cacr", "1"),
        ("infonce", "0"),
        ("infonce", "1"),
    ]
    report = (out_dir / "report.md").read_text()
    assert "| cacr |" in report and "| infonce |" in report and "±" in report
    assert "Per-class" in report
    assert "Evaluated on: held-out 25 % of digits (stratified, fixed seed 0)." in report
    assert {r["eval_split"] for r in rows} == {"held-out 25 % of digits (stratified, fixed seed 0)"}
    for name in ("eval_curves", "loss_curves", "weight_stats", "per_class"):
        assert (out_dir / f"{name}.html").stat().st_size > 1000
    # Identical data for every method: the same class counts.
    counts = {tuple(load_run(r["run_dir"]).config["class_counts"]) for r in rows}
    assert len(counts) == 1
    # Run again: the finished runs are reused, not trained (nor deleted) again.
    status = {r["run_dir"]: (Path(r["run_dir"]) / "status.json").read_bytes() for r in rows}
    code, _, err = run_cli(capsys, *argv)
    assert code == 0, err
    assert {p: (Path(p) / "status.json").read_bytes() for p in status} == status
    # More steps extend the finished runs (a resume), which is no run of "other options".
    longer = [*argv, "--max-steps", "3"]
    code, _, err = run_cli(capsys, *longer)
    assert code == 0, err
    assert {load_run(r["run_dir"]).eval_records()[-1]["step"] for r in rows} == {3}
    # A run folder of other options (here: stored by a lab without the channels_last field) is
    # refused before any run starts, naming the folder and the field; nothing is touched.
    config_path = Path(rows[2]["run_dir"]) / "config.json"
    stored = json.loads(config_path.read_text())
    del stored["channels_last"]
    config_path.write_text(json.dumps(stored))
    before = {p: sorted((f.name, f.stat().st_mtime_ns) for f in Path(p).rglob("*")) for p in status}
    code, _, err = run_cli(capsys, *longer)
    assert code == 2
    assert f"{rows[2]['run_dir']} holds a run with other options" in err
    assert "channels_last: the run has no such field, now True" in err and "--overwrite" in err
    assert "Traceback" not in err
    after = {p: sorted((f.name, f.stat().st_mtime_ns) for f in Path(p).rglob("*")) for p in status}
    assert after == before


def _unreadable_folder(tmp_path: Path) -> Path:
    root = tmp_path / "imgs"
    for c in ("a", "b"):
        (root / c).mkdir(parents=True)
        for i in range(3):
            Image.new("RGB", (8, 8), (40 * i, 0, 0)).save(root / c / f"{i}.png")
    (root / "b" / "broken.png").write_bytes(b"not an image")
    return root


@pytest.mark.parametrize(
    "argv,pattern",
    [
        (["train", "--dataset", "mnist"], "unknown dataset 'mnist'"),
        (["train", "--method", "simclr"], "unknown method 'simclr'"),
        (["train", "--tau-neg", "-1"], "tau_neg must be a positive.*-1"),
        (["train", "--method", "infonce", "--temperature", "0"], "temperature.*0"),
        (["train", "--batch-size", "1"], "batch_size must be an integer >= 2; got 1"),
        (["train", "--temperature", "0.5"], "--temperature do.*not apply to method 'cacr'"),
        (["train", "--method", "moco", "--moco-multicrop", "half"], "moco_multicrop 'half'"),
        (
            ["train", "--method", "moco", "--moco-momentum-schedule", "step"],
            "moco_momentum_schedule 'step'.*constant, cosine",
        ),
        (["train", "--method", "moco", "--moco-local-crops", "2"], "cropped views.*'digits'"),
        (["train", "--moco-local-crops", "2"], "moco_local_crops=2 applies to method 'moco'"),
        (["train", "--moco-queue", "10"], "unrecognized arguments: --moco-queue"),
        (["train", "--dataset", "folder:/nonexistent/x"], "/nonexistent/x"),
        (["train", "--epochs", "two"], "invalid int value: 'two'"),
        (["compare", "--methods", "cacr,byol", "--out", "x"], "unknown method.*byol"),
        (["eval", "/nonexistent/run"], "/nonexistent/run"),
        (["frobnicate"], "invalid choice: 'frobnicate'"),
    ],
)
def test_bad_input_is_one_clear_line(capsys, argv, pattern, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # a default run dir would land here, never in the repo
    try:
        code = main(argv)
    except SystemExit as exc:  # argparse's own errors exit from inside parse_args
        code = exc.code
    assert code == 2
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:"), err
    assert "Traceback" not in err
    assert re.search(pattern, lines[0]), lines[0]
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


def test_unreadable_image_is_named(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    folder = _unreadable_folder(tmp_path)
    code = main(["train", "--dataset", f"folder:{folder}", "--run-dir", "r", "--no-progress"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.startswith("error:") and "broken.png" in err and "\n" not in err


def test_existing_run_is_never_overwritten_without_flag(tmp_path, capsys):
    run_dir = tmp_path / "r"
    assert run_cli(capsys, "train", *TINY, "--run-dir", str(run_dir))[0] == 0
    before = {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file()}
    code, _, err = run_cli(capsys, "train", *TINY, "--run-dir", str(run_dir))
    assert code == 2 and "--overwrite" in err and "--resume" in err
    assert {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file()} == before
    code, _, err = run_cli(
        capsys, "train", *TINY, "--seed", "5", "--run-dir", str(run_dir), "--overwrite"
    )
    assert code == 0, err
    assert load_run(run_dir).config["seed"] == 5
