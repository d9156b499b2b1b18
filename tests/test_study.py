"""cacr-lab study: the grid, seed pairing, the statistics, the report, resume and bad input."""

from __future__ import annotations

import csv
import json
import math
import os
import signal
from pathlib import Path

import _faults as F  # tests/_faults.py
import pytest
import torch
from scipy import stats as sps

from cacr_lab.config import TrainConfig
from cacr_lab.runs import last_checkpoint, load_run
from cacr_lab.stats import (
    Interval,
    half_means,
    paired_differences,
    rare_frequent_halves,
    t_interval,
)
from cacr_lab.study import PRESETS, initial_encoder, plan
from cacr_lab.study_report import (
    RESULT_COLUMNS,
    NotAStudyError,
    analyse,
    find_studies,
    load_study,
    verdict,
    write_csv,
)
from cacr_lab.train import Trainer

# A small study on the toy points (MLP encoder): 2 methods x 2 profiles x 2 seeds, seconds.
TOY = ["--preset", "cpu-digits", "--dataset", "toy", "--methods", "cacr,infonce"]
TOY += ["--profiles", "none,exponential", "--seeds", "2", "--epochs", "1", "--batch-size", "64"]
TOY += ["--no-progress"]


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


# --------------------------------------------------------------------------------------------
# The statistics
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "xs", [[0.01, 0.03, 0.02], [0.5, -0.1], [1.0, 2.0, 4.0, 8.0, 16.0], [-0.2, -0.25, -0.3]]
)
@pytest.mark.parametrize("confidence", [0.95, 0.9])
def test_t_interval_is_scipys_student_interval(xs, confidence):
    iv = t_interval(xs, confidence)
    n = len(xs)
    mean = sum(xs) / n
    lo, hi = sps.t.interval(confidence, n - 1, loc=mean, scale=sps.sem(xs))
    assert iv.n == n and iv.mean == pytest.approx(mean)
    assert iv.lo == pytest.approx(lo) and iv.hi == pytest.approx(hi)
    assert iv.sd == pytest.approx(float(torch.tensor(xs, dtype=torch.float64).std()))


def test_t_interval_hand_computed_cases():
    # n = 3, sd = 1: t(0.975, 2) = 4.302653, half-width 4.302653 / sqrt(3) = 2.484138
    iv = t_interval([1.0, 2.0, 3.0])
    assert (iv.lo, iv.hi) == pytest.approx((2 - 2.484138, 2 + 2.484138), abs=1e-6)
    assert not iv.excludes_zero
    # n = 2: t(0.975, 1) = 12.7062; values 0.1 and 0.3: sd = 0.141421, half 12.7062 * 0.1
    iv = t_interval([0.1, 0.3])
    assert (iv.lo, iv.hi) == pytest.approx((0.2 - 1.27062, 0.2 + 1.27062), abs=1e-5)
    # identical differences: a zero-width interval at the value, which excludes 0
    iv = t_interval([0.02, 0.02, 0.02])
    assert (iv.lo, iv.hi) == pytest.approx((0.02, 0.02)) and iv.excludes_zero


def test_t_interval_skips_missing_values_and_has_no_bounds_below_two():
    assert t_interval([0.5, None, math.nan, 0.7]).n == 2
    one = t_interval([0.4])
    assert one.mean == 0.4 and math.isnan(one.lo) and not one.excludes_zero
    assert t_interval([]).n == 0 and math.isnan(t_interval([]).mean)
    with pytest.raises(ValueError, match="confidence must be in \\(0, 1\\); got 1.5"):
        t_interval([1.0, 2.0], confidence=1.5)


def test_paired_differences_pair_by_seed_not_by_position():
    a = {2: 0.9, 0: 0.5, 1: 0.7, 3: None}
    b = {0: 0.4, 1: 0.6, 2: 0.6, 3: 0.2, 4: 0.1}
    d = paired_differences(a, b)
    assert list(d) == [0, 1, 2]  # seed 3 has no value in a, seed 4 is only in b
    assert [round(v, 6) for v in d.values()] == [0.1, 0.1, 0.3]
    # a paired interval is narrower than the unpaired spread when seeds move both together
    a = {0: 0.50, 1: 0.70, 2: 0.90}
    b = {0: 0.488, 1: 0.69, 2: 0.889}  # differences 0.012, 0.010, 0.011
    assert t_interval(paired_differences(a, b).values()).excludes_zero


def test_rare_and_frequent_halves_follow_the_counts():
    assert rare_frequent_halves([1, 1, 4, 11, 30, 82, 224, 609, 1655, 4500]) == (
        [0, 1, 2, 3, 4],
        [5, 6, 7, 8, 9],
    )
    assert rare_frequent_halves([50, 10, 30]) == ([1], [0])  # odd: the middle one in neither
    assert half_means([1.0, 0.5, math.nan, 0.0], [0, 1, 2]) == 0.75
    assert math.isnan(half_means([math.nan, 0.5], [0]))


def test_verdict_says_inconclusive_whenever_the_interval_contains_zero():
    assert verdict(Interval(0.03, 0.01, 0.05, 3, 0.01)) == (
        "CACR higher by 3.00 points [+1.00, +5.00]"
    )
    assert verdict(Interval(-0.03, -0.05, -0.01, 3, 0.01)).startswith("CACR lower by 3.00")
    assert verdict(Interval(0.03, -0.01, 0.07, 3, 0.02)).startswith("inconclusive at this budget")
    # a zero-width interval (the same one-image difference at every seed) is no evidence
    assert verdict(Interval(-0.0022, -0.0022, -0.0022, 3, 0.0)).startswith("inconclusive")
    assert verdict(Interval(-0.0022, -0.00221, -0.00219, 3, 3e-9)).startswith("inconclusive")
    assert verdict(Interval(0.03, math.nan, math.nan, 1, math.nan)).startswith(
        "inconclusive at this budget (1 seed"
    )


def test_analyse_on_constructed_rows_gives_the_known_differences():
    """Two methods, two profiles, three seeds, numbers chosen so every answer is known."""
    counts = json.dumps([1, 2, 10, 20])
    rows = []
    for seed in range(3):
        for method, base in (("cacr", 0.80), ("infonce", 0.75)):
            for profile, drop in (
                ("none", 0.0),
                ("exponential", 0.10 if method == "cacr" else 0.2),
            ):
                acc = base - drop + 0.01 * seed
                pc = [acc - 0.05, acc - 0.05, acc + 0.05, acc + 0.05]
                rows.append(
                    {"method": method, "profile": profile, "seed": seed, "probe_acc": acc,
                     "knn_acc": acc, "per_class_acc": json.dumps(pc),
                     "knn_per_class_acc": json.dumps(pc), "class_counts": counts}
                )  # fmt: skip
    res = analyse(rows)
    paired = {(p["profile"], p["metric"]): p["iv"] for p in res["paired"]}
    assert paired[("none", "linear probe")].mean == pytest.approx(0.05)
    assert paired[("exponential", "kNN")].mean == pytest.approx(0.15)
    drops = {(d["method"], d["profile"], d["metric"]): d["iv"] for d in res["drops"]}
    assert drops[("cacr", "exponential", "kNN")].mean == pytest.approx(0.10)
    assert drops[("infonce", "exponential", "kNN")].mean == pytest.approx(0.20)
    dd = res["drop_differences"][0]["iv"]
    assert dd.mean == pytest.approx(-0.10) and dd.excludes_zero  # CACR drops 10 points less
    half = next(h for h in res["halves"] if h["method"] == "cacr" and h["metric"] == "kNN")
    assert half["gap"].mean == pytest.approx(0.10)  # frequent - rare
    assert half["rare"].mean == pytest.approx(0.70 - 0.05 + 0.01)


def test_load_study_reads_a_study_folder_back_into_the_reports_tables(tmp_path):
    """Constructed rows written as results.csv: the tables a page shows hold the known numbers;
    a compare folder (no profile column) and an empty folder are no study, in one line."""
    rows = []
    for seed, (a, b) in enumerate([(0.80, 0.70), (0.82, 0.71), (0.84, 0.72)]):
        for method, acc in (("cacr", a), ("infonce", b)):
            rows.append({"method": method, "profile": "none", "seed": seed, "probe_acc": acc,
                         "knn_acc": acc - 0.1, "per_class_acc": "[]",
                         "knn_per_class_acc": "[]", "class_counts": "null"})  # fmt: skip
    old, new = tmp_path / "old", tmp_path / "deep" / "new"
    for folder in (old, new):
        folder.mkdir(parents=True)
        write_csv(folder / "results.csv", rows, RESULT_COLUMNS)
    refs = [
        {"reference": "raw pixels", "seed": s, "knn_acc": 0.5, "probe_acc": 0.6} for s in (0, 1)
    ]
    write_csv(new / "references.csv", refs, ("reference", "seed", "knn_acc", "probe_acc"))
    (new / "report.md").write_text("# study cpu-digits: toy\n\nmore\n")
    compare = tmp_path / "a-compare"
    compare.mkdir()
    (compare / "results.csv").write_text("method,seed,knn_acc,probe_acc\ncacr,0,0.5,0.5\n")
    os.utime(old / "results.csv", (1, 1))  # old is older than new
    assert find_studies(tmp_path) == [new, old]
    view = load_study(new)
    assert view.title == "study cpu-digits: toy"
    # cacr: 80, 82, 84 -> 82.00 ± 2.00; infonce 70, 71, 72 -> 71.00 ± 1.00; kNN 10 points lower
    assert view.accuracy_table() == [
        {"method": "cacr", "profile": "none", "seeds": "3", "linear probe": "82.00 ± 2.00",
         "kNN": "72.00 ± 2.00"},
        {"method": "infonce", "profile": "none", "seeds": "3", "linear probe": "71.00 ± 1.00",
         "kNN": "61.00 ± 1.00"},
        {"method": "raw pixels (reference)", "profile": "—", "seeds": "2",
         "linear probe": "60.00 ± 0.00", "kNN": "50.00 ± 0.00"},
    ]  # fmt: skip
    # differences 10, 11, 12: mean 11, sd 1, t(0.975, 2) = 4.302653: 11 ± 2.484138
    probe = view.difference_table("paired")[0]
    assert probe["metric"] == "linear probe"
    assert probe["difference (points, 95 % CI)"] == "+11.00 [+8.52, +13.48]"
    assert probe["verdict"] == "CACR higher by 11.00 points [+8.52, +13.48]"
    row = view.interval_rows("paired")[0]
    assert (row["mean"], row["lo"], row["hi"]) == pytest.approx((11.0, 8.515862, 13.484138))
    assert view.halves_rows() == [] and view.difference_table("drop_differences") == []
    assert view.drop_table() == []  # no imbalanced profile: no drop
    for folder, why in ((compare, "has no study results.csv"), (tmp_path / "nope", "not exist")):
        with pytest.raises(NotAStudyError, match=f"^{folder} is not a study folder: it .*{why}"):
            load_study(folder)


# --------------------------------------------------------------------------------------------
# Seed pairing
# --------------------------------------------------------------------------------------------


def _trainer(tmp_path: Path, name: str, **kw) -> Trainer:
    base = dict(dataset="digits", epochs=1, batch_size=64, positives=2, eval_every=0)
    return Trainer(TrainConfig(**(base | kw)), tmp_path / name, progress=False)


def _same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_one_seed_gives_every_method_and_profile_the_same_init_order_and_views(tmp_path):
    cacr = _trainer(tmp_path, "a", method="cacr", seed=1)
    info = _trainer(tmp_path, "b", method="infonce", seed=1)
    expo = _trainer(tmp_path, "c", method="hard-negative", seed=1, imbalance="exponential")
    other = _trainer(tmp_path, "d", method="cacr", seed=2)
    # initial weights: equal across methods and profiles at a seed, different across seeds
    assert _same_weights(cacr.model, info.model) and _same_weights(cacr.model, expo.model)
    assert not _same_weights(cacr.model, other.model)
    # the data order and the first batch's views: equal across methods, not across seeds
    assert torch.equal(cacr.epoch_order(0), info.epoch_order(0))
    views = cacr.batch_views(0, cacr.epoch_order(0))
    assert torch.equal(views, info.batch_views(0, info.epoch_order(0)))
    assert not torch.equal(views, other.batch_views(0, other.epoch_order(0)))
    # the study's untrained-encoder reference starts from exactly these weights
    assert _same_weights(initial_encoder(cacr.config, cacr.splits), cacr.model)
    assert not _same_weights(initial_encoder(other.config, other.splits), cacr.model)


# --------------------------------------------------------------------------------------------
# The command
# --------------------------------------------------------------------------------------------


def test_study_writes_results_references_report_and_figures(tmp_path, capsys):
    out = tmp_path / "study"
    code, err = F.cli(capsys, "study", *TOY, "--max-steps", "4", "--out", str(out))
    assert code == 0, err
    rows = read_csv(out / "results.csv")
    assert list(rows[0]) == list(RESULT_COLUMNS)
    grid = {(r["method"], r["profile"], r["seed"]) for r in rows}
    assert len(rows) == 8 and len(grid) == 8  # one row per method x profile x seed
    assert {r["knn_k"] for r in rows} == {"112"}  # 225 toy points per class: 225 // 2, everywhere
    for r in rows:
        assert Path(r["run_dir"]).name == f"{r['method']}-{r['profile']}-seed{r['seed']}"
        assert 0 <= float(r["probe_acc"]) <= 1 and len(json.loads(r["per_class_acc"])) == 4
        assert float(r["wall_s"]) > 0 and int(r["steps"]) == 4
    # the untrained-encoder reference is each seed's step-0 kNN of every run
    refs = read_csv(out / "references.csv")
    assert {r["reference"] for r in refs} == {"untrained encoder", "raw pixels"}
    for r in refs:
        if r["reference"] == "untrained encoder":
            inits = [float(x["knn_init"]) for x in rows if x["seed"] == r["seed"]]
            assert inits == [pytest.approx(float(r["knn_acc"]), abs=1e-6)] * 4
    report = (out / "report.md").read_text()
    assert report.startswith("# study cpu-digits: toy, mlp")
    assert "kNN k = " in report.splitlines()[0]
    assert "95 % Student t-interval" in report and "df = n − 1 = 1" in report
    assert "| infonce | none | linear probe |" in report  # a paired-difference row
    assert "CACR − baseline" in report and "drop" in report and "rare half" in report
    assert "*untrained encoder* (reference)" in report and "*raw pixels* (reference)" in report
    for name in ("accuracy", "differences", "drop_differences", "rare_frequent", "false_negatives"):
        assert (out / f"{name}.html").stat().st_size > 1000
    # the false-negative share at each run's last evaluation, mean over the seeds (issue 17)
    fn = [
        load_run(r["run_dir"]).eval_records()[-1]["fn_share"]
        for r in rows
        if (r["method"], r["profile"]) == ("cacr", "none")
    ]
    section = report.split("## False negatives")[1]
    line = next(x for x in section.splitlines() if x.startswith("| cacr | none |"))
    assert line.split(" | ")[2].startswith(f"{sum(fn) / len(fn):.3f} ± ")
    # the same command again reuses every run (nothing retrained)
    before = {r["run_dir"]: (Path(r["run_dir"]) / "metrics.jsonl").stat().st_mtime_ns for r in rows}
    code, err = F.cli(capsys, "study", *TOY, "--max-steps", "4", "--out", str(out))
    assert code == 0, err
    after = {r: (Path(r) / "metrics.jsonl").stat().st_mtime_ns for r in before}
    assert after == before


@pytest.mark.parametrize(
    ("argv", "named"),
    [
        (
            ["--preset", "gpu-everything"],
            "unknown preset 'gpu-everything'; choose one of cpu-digits",
        ),
        (["--profiles", "none,steep"], "unknown profile(s) steep; choose from none, linear"),
        (["--methods", "cacr,byol"], "unknown method(s) byol; choose from cacr"),
        (["--seeds", "0"], "seeds must be an integer >= 1; got 0"),
        (["--imbalance", "linear"], "--imbalance does not apply to study: use --profiles"),
        (["--epochs", "0"], "epochs must be an integer >= 1; got 0"),
        (["--preset", "cpu-cifar10"], "preset 'cpu-cifar10' needs a CIFAR-10 image tree"),
        (["--temperature", "0.2"], "do not apply to method 'cacr'"),
    ],
)
def test_bad_input_is_one_line_naming_it(tmp_path, capsys, argv, named):
    out = tmp_path / "never"
    code, err = F.cli(capsys, "study", "--out", str(out), *argv)
    assert code == 2, err
    assert named in F.one_line(err)
    assert not out.exists()  # validated before anything is written


def test_presets_are_documented_and_valid():
    assert {"cpu-digits", "cpu-cifar10", "paper-cifar10"} <= set(PRESETS)
    digits = plan("cpu-digits")
    assert digits.methods == ["cacr", "infonce", "align-uniform", "hard-negative", "debiased"]
    assert digits.profiles == ["none", "linear", "exponential"] and digits.seeds >= 3
    assert len(digits.jobs) == 5 * 3 * digits.seeds
    paper = plan("paper-cifar10")
    assert set(paper.methods) == {"infonce", "align-uniform", "hard-negative", "cacr"}
    cfg = paper.jobs[0][3]
    assert (cfg.encoder, cfg.epochs, cfg.batch_size, cfg.positives) == (
        "small-alexnet",
        200,
        128,
        4,
    )
    assert paper.seeds == 3 and len(paper.jobs) == 4 * 3 * 3
    for p in PRESETS.values():
        assert p.wall_time and p.about
    # overrides go on top of a preset; the grid's seed order keeps complete pairs first
    small = plan("cpu-digits", seeds=2, methods="cacr,infonce", overrides={"max_steps": 20})
    assert [(m, q, s) for m, q, s, _ in small.jobs][:2] == [
        ("cacr", "none", 0),
        ("infonce", "none", 0),
    ]
    assert all(c.max_steps == 20 and c.batch_size == 64 for *_, c in small.jobs)


@pytest.mark.slow
def test_a_stopped_study_continues_where_it_stopped(tmp_path, capsys):
    out = tmp_path / "study"
    argv = ["study", "--preset", "cpu-digits", "--methods", "cacr,infonce", "--profiles", "none"]
    argv += ["--seeds", "1", "--epochs", "1", "--positives", "1", "--log-every", "1"]
    argv += ["--no-progress", "--out", str(out)]
    proc = F.start_cli(*argv)
    first = out / "runs" / "cacr-none-seed0"
    try:
        F.wait_for(lambda: F.trained_steps(first) >= 2, 300, "the first run's steps", proc)
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=120)
    finally:
        proc.kill()
    err = proc.stderr.read()
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert F.one_line(err).startswith("stopped: SIGTERM after 0 of 2 runs")
    assert load_run(first).status["state"] == "stopped" and last_checkpoint(first) is not None
    assert not (out / "runs" / "infonce-none-seed0").exists() and not (out / "results.csv").exists()
    code, err = F.cli(capsys, *argv)  # the same command again: resumes, then the rest
    assert code == 0, err
    assert len(load_run(first).config["resumed"]) == 1
    rows = read_csv(out / "results.csv")
    assert [(r["method"], r["steps"]) for r in rows] == [("cacr", "21"), ("infonce", "21")]


@pytest.mark.slow
def test_done_when_command_cpu_digits_two_seeds_twenty_steps(tmp_path, capsys):
    out = tmp_path / "study"
    argv = ["study", "--preset", "cpu-digits", "--seeds", "2", "--max-steps", "20"]
    code, err = F.cli(capsys, *argv, "--no-progress", "--out", str(out))
    assert code == 0, err
    rows = read_csv(out / "results.csv")
    assert len(rows) == 5 * 3 * 2
    assert {r["knn_k"] for r in rows} == {"65"}  # the digits rule: 131 // 2, the same everywhere
    report = (out / "report.md").read_text()
    assert "kNN k = 65" in report.splitlines()[0]
    for baseline in ("infonce", "align-uniform", "hard-negative", "debiased"):
        assert f"| {baseline} | exponential | linear probe |" in report
    assert "95 % Student t-interval" in report
