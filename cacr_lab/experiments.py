"""Experiments on finished runs and over many runs: evaluate one, compare methods x seeds.

The functions behind ``cacr-lab eval`` and ``cacr-lab compare``, with plain keyword arguments so
that a notebook calls them as the CLI does:

    evaluate_run("runs/cacr-digits", protocol="paper")
    compare(["cacr", "infonce"], seeds=3, out="results/digits", base_config={"epochs": 10})

The trainer and the evaluation code are imported inside the functions that use them, so importing
this module does not import the training loop.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import statistics
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from cacr_lab.config import TrainConfig, default
from cacr_lab.runs import eval_split_of, load_run, write_evaluation

PROBE_EPOCHS = 100  # epochs of the paper's linear evaluation protocol


def evaluate_run(
    run_dir: str | Path,
    *,
    protocol: str = "fast",
    probe_epochs: int = PROBE_EPOCHS,
    device: str = default("device"),
    data_root: str = default("data_root"),
) -> dict[str, Any]:
    """kNN, linear-probe and per-class accuracy of a run's last checkpoint; stored in the run."""
    from cacr_lab.data import load_dataset
    from cacr_lab.evaluate import extract_features, knn_evaluation, linear_probe
    from cacr_lab.train import load_encoder, resolve_device

    run = load_run(run_dir)
    dev = resolve_device(device)
    model, cfg = load_encoder(run_dir, device=str(dev))
    sp = load_dataset(cfg["dataset"], root=data_root, seed=cfg["seed"], progress=False)
    kw = dict(mean=sp.mean, std=sp.std, device=dev, image_size=sp.image_size)
    train_f = extract_features(model, sp.train.images, **kw)
    test_f = extract_features(model, sp.test.images, **kw)
    # The run's own kNN settings (runs older than the field: the default); k = 0 follows the data.
    knn = knn_evaluation(
        train_f,
        sp.train.labels,
        test_f,
        sp.test.labels,
        k=cfg.get("knn_k", default("knn_k")),
        temperature=cfg.get("knn_temperature", default("knn_temperature")),
        num_classes=sp.train.num_classes,
    )
    result: dict[str, Any] = {
        "run": run.name,
        "method": cfg["method"],
        "seed": cfg["seed"],
        "protocol": protocol,
        "eval_split": sp.eval_split,  # what the accuracies below were measured on
        **knn,  # knn_acc, knn_k, knn_per_class_acc
    }
    if protocol == "paper":
        from cacr_lab.data import probe_transforms
        from cacr_lab.evaluate import linear_probe_paper

        train_tf, test_tf = probe_transforms(cfg["dataset"], sp.image_size, sp.mean, sp.std)
        probe = linear_probe_paper(
            model,
            sp.train,
            sp.test,
            train_transform=train_tf,
            test_transform=test_tf,
            epochs=probe_epochs,
            device=str(dev),
        )
    else:
        probe = linear_probe(train_f, sp.train.labels, test_f, sp.test.labels)
    result["probe_acc"] = float(probe.accuracy)
    result["per_class_acc"] = [float(a) for a in probe.per_class]
    result["classes"] = sp.train.classes
    write_evaluation(run_dir, result)
    return result


def compare(
    methods: Sequence[str],
    *,
    seeds: int,
    out: str | Path,
    base_config: Mapping[str, Any] | TrainConfig,
    overwrite: bool = False,
    progress: bool = True,
) -> Path:
    """Train every method x seed with identical data, encoder and budget; write a report.

    ``base_config`` holds the :class:`TrainConfig` fields every run shares (a mapping of fields,
    or a config); each run sets ``method`` and ``seed`` (0..seeds-1) on top. Every config is
    validated before the first run starts (ValueError names a bad value). A finished run of the
    same config is reused and a stopped or killed one resumed unless ``overwrite``, so an
    interrupted compare picks up where it stopped. SIGTERM or Ctrl-C stops the compare as a
    whole: the current run stops with a checkpoint, no further run starts, and
    :class:`~cacr_lab.train.guards.StudyStopped` says how far it got.

    Writes ``OUT/runs/METHOD-seedS/`` (run directories), ``OUT/results.csv`` (one row per run),
    ``OUT/report.md`` (mean +- std per method) and plotly HTML figures that render offline
    (``plotly.min.js`` written once beside them: :func:`cacr_lab.figures.write_html`).
    """
    out = Path(out)
    base = (
        dataclasses.asdict(base_config)
        if isinstance(base_config, TrainConfig)
        else dict(base_config)
    )
    configs = [
        (m, s, TrainConfig(**{**base, "method": m, "seed": s}))
        for m in methods
        for s in range(seeds)
    ]
    jobs = [(out / "runs" / f"{method}-seed{seed}", config) for method, seed, config in configs]
    run_all(jobs, overwrite=overwrite, progress=progress)  # all validated already
    rows = [_row(method, seed, run_dir) for (method, seed, _), (run_dir, _) in zip(configs, jobs)]
    runs = [load_run(run_dir) for run_dir, _ in jobs]
    _write_report(out, rows, runs, configs[0][2], seeds)
    return out


def run_all(
    jobs: Sequence[tuple[Path, TrainConfig]],
    *,
    overwrite: bool = False,
    progress: bool = True,
    splits: Callable[[TrainConfig], Any] | None = None,
) -> None:
    """Train every ``(run_dir, config)`` of ``jobs`` in order: the loop of a compare or a study.

    A finished run of the same config is reused and a stopped or killed one resumed unless
    ``overwrite``. SIGTERM or Ctrl-C stops the whole list: the current run stops with a
    checkpoint, no further run starts, and :class:`~cacr_lab.train.guards.StudyStopped` says
    how far it got (running the same command again continues). ``splits(config)``: the loaded
    dataset of a run that trains (None: each run loads its own).
    """
    from cacr_lab.train import stop_requests, train
    from cacr_lab.train.checkpoint import finished_with
    from cacr_lab.train.guards import StudyStopped

    if not overwrite:
        _refuse_other_runs(jobs)  # before any run starts, not after an hour of them
    with stop_requests() as stop:  # one flag for the whole study: a run's stop ends it
        for done, (run_dir, config) in enumerate(jobs):
            started = not stop.requested
            if started:
                # A finished run of the same config is reused, a stopped one resumed.
                resume = not overwrite and _resumable(run_dir, config)
                reused = not overwrite and not resume and finished_with(run_dir, config)
                train(
                    config,
                    run_dir,
                    overwrite=overwrite,
                    reuse=not overwrite,
                    resume=resume,
                    progress=progress,
                    splits=splits(config) if splits is not None and not reused else None,
                )
            if stop.requested:
                where = f"{run_dir.name} stopped with a checkpoint" if started else "nothing lost"
                raise StudyStopped(
                    f"{stop.name} after {done} of {len(jobs)} runs ({where}); run the same "
                    "command again to continue: finished runs are reused, a stopped one resumes",
                    int(stop.signal),
                )


def _refuse_other_runs(jobs: Sequence[tuple[Path, TrainConfig]]) -> None:
    """ValueError when a job's folder holds a run of other options (from another command, or
    from an older version of the lab that stored other fields) that this job neither reuses
    nor resumes (extends): only ``overwrite`` may replace it. Names the folder and what
    differs."""
    from cacr_lab.train.checkpoint import config_differences

    others = [
        (d, diff)
        for d, config in jobs
        if (diff := config_differences(d, config)) and not _resumable(d, config)  # more epochs
    ]
    if not others:
        return
    run_dir, diff = others[0]
    more = f" (and {len(others) - 1} more of the {len(jobs)} runs)" if len(others) > 1 else ""
    shown = "; ".join(diff[:4]) + ("; ..." if len(diff) > 4 else "")
    raise ValueError(
        f"{run_dir} holds a run with other options{more}: {shown}. Only a run of exactly these "
        "options is reused or resumed: use --overwrite to retrain such runs, or another --out "
        "to keep them"
    )


def _resumable(run_dir: Path, config: TrainConfig) -> bool:
    """Whether ``run_dir`` holds an unfinished run of ``config`` with a checkpoint."""
    from cacr_lab.train.resume import check_resume

    try:
        check_resume(run_dir, config)
    except (ValueError, OSError):
        return False
    return True


def _row(method: str, seed: int, run_dir: Path) -> dict[str, Any]:
    """The results.csv row of a finished run."""
    run = load_run(run_dir)
    final = run.eval_records()[-1]
    return {
        "method": method,
        "seed": seed,
        "knn_acc": final["knn_acc"],
        "probe_acc": final.get("probe_acc"),
        "per_class_acc": json.dumps(final.get("per_class_acc")),
        "eval_split": eval_split_of(final),
        "run_dir": str(run_dir),
    }


def _write_report(
    out: Path, rows: list[dict[str, Any]], runs: list, config: TrainConfig, seeds: int
) -> None:
    """results.csv, report.md and the HTML figures of a compare."""
    from cacr_lab import figures

    with open(out / "results.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    knn_k = runs[0].eval_records()[-1].get("knn_k", config.knn_k)  # the k every run used
    (out / "report.md").write_text(_report(rows, config, seeds, knn_k))
    figures.write_html(figures.eval_curves(runs), out / "eval_curves.html")
    figures.write_html(figures.loss_curves(runs), out / "loss_curves.html")
    figures.write_html(figures.weight_stats_over_time(runs), out / "weight_stats.html")
    figures.write_html(figures.per_class_bars(runs), out / "per_class.html")


def _mean_std(xs: list[float]) -> str:
    """``"mean ± std"`` of accuracies in percent; None entries skipped, ``"n/a"`` if none.

    >>> _mean_std([0.5, 0.7, None])
    '60.00 ± 14.14'
    """
    xs = [x for x in xs if x is not None]
    if not xs:
        return "n/a"
    sd = statistics.stdev(xs) if len(xs) > 1 else 0.0
    return f"{100 * statistics.mean(xs):.2f} ± {100 * sd:.2f}"


def _report(
    rows: list[dict[str, Any]], config: TrainConfig, seeds: int, knn_k: int | None = None
) -> str:
    """report.md of a compare: mean ± std per method, per-class accuracy if imbalanced.

    ``config`` is any run's config: the fields the report quotes are shared by every run;
    ``knn_k`` the k of their kNN (the eval records'; ``config.knn_k`` 0 means it follows the data).
    """
    lines = [
        f"# compare: {config.dataset}, imbalance {config.imbalance or 'none'}, "
        f"{config.epochs} epochs, batch {config.batch_size}, K = {config.positives}, "
        f"{seeds} seed(s), kNN k = {knn_k if knn_k is not None else config.knn_k}",
        "",
        "Evaluated on: " + "; ".join(dict.fromkeys(r["eval_split"] for r in rows)) + ".",
        "",
        "| method | linear probe (%) | kNN (%) |",
        "|---|---|---|",
    ]
    methods = list(dict.fromkeys(r["method"] for r in rows))
    for m in methods:
        rs = [r for r in rows if r["method"] == m]
        lines.append(
            f"| {m} | {_mean_std([r['probe_acc'] for r in rs])} | "
            f"{_mean_std([r['knn_acc'] for r in rs])} |"
        )
    if config.imbalance is not None:
        lines += ["", "Per-class linear-probe accuracy (%), mean over seeds:", ""]
        for m in methods:
            per = [json.loads(r["per_class_acc"]) for r in rows if r["method"] == m]
            means = [100 * statistics.mean(c) for c in zip(*per)]
            lines.append(f"- {m}: " + ", ".join(f"{v:.1f}" for v in means))
    return "\n".join(lines) + "\n"
