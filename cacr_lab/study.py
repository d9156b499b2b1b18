"""Seed-paired studies: methods x imbalance profiles x seeds, with paired differences.

The function behind ``cacr-lab study``; a notebook calls it as the CLI does:

    study("cpu-digits", out="results/study-digits", seeds=3)
    study("cpu-cifar10", out="results/c10", overrides={"dataset": "folder:/data/cifar10/train"})

Every run of a study shares every option but its method, its imbalance profile and its seed, and
at one seed every method gets the same encoder initialisation, data order and views: the trainer
seeds the initial weights with ``torch.manual_seed(seed)`` before anything draws from the global
generator, and draws the data order and the views from generators seeded by (seed, epoch) and
(seed, step) alone (:mod:`cacr_lab.train.trainer`; ``tests/test_study.py`` checks it). Two methods
are therefore compared seed by seed (:mod:`cacr_lab.stats`), and so are two profiles of one
method (the drop under imbalance): the initial weights do not depend on the profile either.

The grid runs through :func:`cacr_lab.experiments.run_all`, the loop of ``compare``: every config
is validated before the first run, finished runs are reused, a stopped one resumes, and SIGTERM
or Ctrl-C stops the whole study (run the same command again to continue). Output folder::

    OUT/runs/METHOD-PROFILE-seedS/   run folders
    OUT/results.csv                  one row per run (method, profile, seed, accuracies, ...)
    OUT/references.csv               untrained encoder and raw pixels, kNN and probe, per seed
    OUT/report.md                    tables, paired differences, intervals, verdicts
    OUT/*.html                       figures (cacr_lab.figures.study), render offline

The presets (:data:`PRESETS`) name a grid and a budget; overrides go on top.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cacr_lab.config import LOSSES, TrainConfig
from cacr_lab.experiments import run_all
from cacr_lab.runs import load_run
from cacr_lab.study_report import write_csv, write_report

__all__ = ["PRESETS", "PROFILES", "Preset", "StudyPlan", "initial_encoder", "plan", "study"]

PROFILES = ("none", "linear", "exponential")  # the imbalance profiles (docs/method.md §9)


@dataclass(frozen=True)
class Preset:
    """A named study: its grid, the options every run shares, and its measured wall time."""

    name: str
    methods: tuple[str, ...]
    profiles: tuple[str, ...]
    seeds: int
    config: Mapping[str, Any]  # TrainConfig fields every run shares
    wall_time: str  # measured, with the machine and its load
    about: str
    dataset_hint: str | None = None  # set: the dataset must be given (--dataset), this says what


PRESETS: dict[str, Preset] = {
    p.name: p
    for p in (
        Preset(
            name="cpu-digits",
            methods=("cacr", "infonce", "align-uniform", "hard-negative", "debiased"),
            profiles=PROFILES,
            seeds=3,
            config=dict(dataset="digits", epochs=5, batch_size=64, eval_every=0),
            wall_time="2.4 min on an idle 2-core machine (2 threads), 2026-12-03: 45 runs "
            "(balanced 105 steps, linear 55, exponential 15) in 2.3 min of their own clocks, and "
            "the reference rows; 11.8 min with OMP_NUM_THREADS=1 on the machine busy at load 5-7",
            about="every registry method but moco on the bundled digits (small CNN, 5 epochs, "
            "B = 64, K = 4), three profiles, 3 seeds: 45 runs on a laptop CPU",
        ),
        Preset(
            name="cpu-cifar10",
            methods=("cacr", "infonce"),
            profiles=("none", "exponential"),
            seeds=3,
            config=dict(encoder="small-cnn", epochs=1, batch_size=128, eval_every=0),
            wall_time="28.1 min on an idle 2-core machine (2 threads), 2026-12-03: 12 runs "
            "(balanced 351 steps, ~2.5 min each; exponential 55 steps, ~45 s) in 19.2 min of "
            "their own clocks; the rest is decoding the folder once per seed and the reference "
            "rows (the probe on 45,000 raw 3,072-pixel images: ~2.4 min per seed)",
            about="CACR vs InfoNCE on a CIFAR-10 image tree (small CNN, 32 px), balanced and "
            "exponential, 3 seeds",
            dataset_hint="a CIFAR-10 image tree: --dataset folder:PATH with PATH/<class>/<image> "
            "(or PATH/train and PATH/test)",
        ),
        Preset(
            name="paper-cifar10",
            methods=("infonce", "align-uniform", "hard-negative", "cacr"),
            profiles=PROFILES,
            seeds=3,
            config=dict(
                dataset="cifar10",
                encoder="small-alexnet",
                epochs=200,
                batch_size=128,
                eval_every=10,
            ),  # fmt: skip
            wall_time="not run on a CPU (for a GPU: 36 runs of the paper's 200 epochs)",
            about="the paper's small-scale recipe (docs/method.md §7.1): SmallAlexNet, 200 epochs, "
            "B = 128, K = 4, CL / AU-CL / HN-CL / CACR, three profiles, 3 seeds",
        ),
    )
}


@dataclass
class StudyPlan:
    """A resolved study: the grid and the options every run shares (validated)."""

    preset: str
    methods: list[str]
    profiles: list[str]
    seeds: int
    base: dict[str, Any]
    jobs: list[tuple[str, str, int, TrainConfig]] = field(default_factory=list)

    def run_dir(self, out: str | Path, method: str, profile: str, seed: int) -> Path:
        return Path(out) / "runs" / f"{method}-{profile}-seed{seed}"


def _names(given: Sequence[str] | str | None, default: Sequence[str]) -> list[str]:
    if given is None:
        return list(default)
    if isinstance(given, str):
        given = given.split(",")
    return [g.strip() for g in given if g.strip()]


def plan(
    preset: str = "cpu-digits",
    *,
    methods: Sequence[str] | str | None = None,
    profiles: Sequence[str] | str | None = None,
    seeds: int | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> StudyPlan:
    """The preset with the overrides on top, every run's config built and validated.

    ``overrides``: TrainConfig fields (``epochs``, ``max_steps``, ``dataset``, ...; not
    ``method``, ``seed``, ``imbalance``: the grid sets those). ValueError names a bad preset,
    method, profile, seed count or field value.
    """
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")
    p = PRESETS[preset]
    ms, ps = _names(methods, p.methods), _names(profiles, p.profiles)
    bad = [m for m in ms if m not in LOSSES]
    if not ms or bad:
        raise ValueError(
            f"unknown method(s) {', '.join(bad) or '(none given)'}; choose from {', '.join(LOSSES)}"
        )
    bad = [q for q in ps if q not in PROFILES]
    if not ps or bad:
        raise ValueError(
            f"unknown profile(s) {', '.join(bad) or '(none given)'}; choose from "
            f"{', '.join(PROFILES)}"
        )
    n_seeds = p.seeds if seeds is None else seeds
    if isinstance(n_seeds, bool) or not isinstance(n_seeds, int) or n_seeds < 1:
        raise ValueError(f"seeds must be an integer >= 1; got {n_seeds!r}")
    overrides = dict(overrides or {})
    fixed = sorted({"method", "seed", "imbalance"} & set(overrides))
    if fixed:
        raise ValueError(
            f"{', '.join(fixed)} is set by the study's grid; use methods=, profiles=, seeds= "
            "(--methods, --profiles, --seeds)"
        )
    base = {**p.config, **overrides}
    if p.dataset_hint and "dataset" not in base:
        raise ValueError(f"preset {preset!r} needs {p.dataset_hint}")
    result = StudyPlan(preset, list(dict.fromkeys(ms)), list(dict.fromkeys(ps)), n_seeds, base)
    for seed in range(n_seeds):  # seed by seed: a stopped study holds complete pairs
        for profile in result.profiles:
            for method in result.methods:
                imbalance = None if profile == "none" else profile
                config = TrainConfig(
                    **{**base, "method": method, "seed": seed, "imbalance": imbalance}
                )
                result.jobs.append((method, profile, seed, config))
    return result


def study(
    preset: str = "cpu-digits",
    *,
    out: str | Path,
    methods: Sequence[str] | str | None = None,
    profiles: Sequence[str] | str | None = None,
    seeds: int | None = None,
    overrides: Mapping[str, Any] | None = None,
    overwrite: bool = False,
    progress: bool = True,
) -> Path:
    """Run a study (:func:`plan` validates it first) and write its report; returns ``out``.

    Interrupt-safe as :func:`cacr_lab.experiments.compare`: rerunning the same call reuses the
    finished runs and resumes the stopped one.
    """
    p = plan(preset, methods=methods, profiles=profiles, seeds=seeds, overrides=overrides)
    out = Path(out)
    jobs = [(p.run_dir(out, m, q, s), config) for m, q, s, config in p.jobs]
    loader = _SplitsCache()  # a CIFAR folder is decoded once per seed, not once per run
    run_all(jobs, overwrite=overwrite, progress=progress, splits=loader)
    rows = [result_row(m, q, s, p.run_dir(out, m, q, s)) for m, q, s, _ in p.jobs]
    refs = references(p, out, loader, progress=progress)
    write_report(out, p, rows, refs)
    return out


class _SplitsCache:
    """``load_dataset`` for a run's config, keeping the last dataset loaded (runs go seed by
    seed, and a ``folder:`` split depends on the seed)."""

    def __init__(self) -> None:
        self.key: tuple | None = None
        self.splits: Any = None

    def __call__(self, config: TrainConfig) -> Any:
        from cacr_lab.data import load_dataset

        key = (config.dataset, config.data_root, config.download, config.seed)
        if key != self.key:
            self.splits = None  # free the last one before loading the next
            self.splits = load_dataset(
                config.dataset,
                root=config.data_root,
                download=config.download,
                seed=config.seed,
                progress=False,
            )
            self.key = key
        return self.splits


# --------------------------------------------------------------------------------------------
# Rows: one per run, and the reference rows
# --------------------------------------------------------------------------------------------


def result_row(method: str, profile: str, seed: int, run_dir: Path) -> dict[str, Any]:
    """The results.csv row of a finished run (``study_report.RESULT_COLUMNS``; per-class lists and
    counts as JSON)."""
    run = load_run(run_dir)
    evals = run.eval_records()
    final, first = evals[-1], evals[0]
    return {
        "method": method,
        "profile": profile,
        "seed": seed,
        "knn_acc": final["knn_acc"],
        "probe_acc": final.get("probe_acc"),
        "knn_init": first["knn_acc"] if first.get("step") == 0 else None,
        "knn_k": final.get("knn_k"),
        "per_class_acc": json.dumps(final.get("per_class_acc")),
        "knn_per_class_acc": json.dumps(final.get("knn_per_class_acc")),
        "class_counts": json.dumps(run.config.get("class_counts")),
        "steps": final.get("step"),
        "wall_s": round(float(final.get("time", 0.0)), 1),  # training time, evaluations included
        "eval_split": final.get("eval_split"),
        "run_dir": str(run_dir),
    }


def initial_encoder(config: TrainConfig, splits: Any) -> Any:
    """The encoder a run of ``config`` starts from: the trainer's init at ``config.seed``
    (``torch.manual_seed(seed)``, then the encoder; ``tests/test_study.py`` checks the weights
    equal the trainer's), for the untrained-encoder reference rows. ``splits``: the dataset's
    :class:`~cacr_lab.data.DataSplits`."""
    import torch

    from cacr_lab.models import build_encoder, default_encoder

    torch.manual_seed(config.seed)
    model = build_encoder(
        config.encoder or default_encoder(config.dataset),
        in_channels=splits.in_channels,
        image_size=splits.image_size,
        feat_dim=config.feat_dim,
    )
    if config.channels_last and splits.train.images.dim() == 4:  # as the trainer, same numerics
        model = model.to(memory_format=torch.channels_last)
    return model


REFERENCE_COLUMNS = ("reference", "seed", "knn_acc", "probe_acc", "knn_k", "eval_split", "key")


def _reference_key(config: TrainConfig) -> str:
    """What a reference row depends on: a cached row is reused only if this matches."""
    keep = ("dataset", "encoder", "feat_dim", "seed", "knn_k", "knn_temperature", "channels_last")
    return json.dumps({k: getattr(config, k) for k in keep}, sort_keys=True)


def references(
    p: StudyPlan, out: Path, loader: Any = None, *, progress: bool = False
) -> list[dict[str, Any]]:
    """The untrained encoder (each seed's initial weights) and raw pixels, kNN and probe, per
    seed; cached in ``OUT/references.csv`` (a rerun reuses rows of the same key). ``progress``:
    a bar over the seeds (on CIFAR-10 images a seed's rows take minutes: the probe on raw
    pixels fits 3,072 features)."""
    path = out / "references.csv"
    cached: dict[tuple[str, str], dict[str, Any]] = {}
    if path.exists():
        with open(path, newline="") as f:
            cached = {(r["reference"], r["key"]): r for r in csv.DictReader(f)}
    rows = []
    seeds: Any = range(p.seeds)
    if progress:
        from tqdm.auto import tqdm

        seeds = tqdm(seeds, desc="reference rows (untrained encoder, raw pixels)", unit="seed")
    for seed in seeds:
        config = next(c for _, _, s, c in p.jobs if s == seed)
        key = _reference_key(config)
        if all((name, key) in cached for name in ("untrained encoder", "raw pixels")):
            rows += [cached[("untrained encoder", key)], cached[("raw pixels", key)]]
            continue
        sp = (loader or _SplitsCache())(config)
        rows += [r | {"key": key} for r in _reference_rows(config, sp)]
    write_csv(path, rows, REFERENCE_COLUMNS)
    return rows


def _reference_rows(config: TrainConfig, sp: Any) -> list[dict[str, Any]]:
    """kNN and fast probe of the untrained encoder and of raw pixels at ``config.seed``
    (``sp``: the dataset's splits, loaded for that seed)."""
    from cacr_lab.evaluate import extract_features, knn_accuracy, knn_k_for, linear_probe
    from cacr_lab.train import resolve_device

    dev = resolve_device(config.device)
    k = knn_k_for(config.knn_k, sp.train.labels)
    kw = dict(mean=sp.mean, std=sp.std, device=dev, image_size=sp.image_size)
    model = initial_encoder(config, sp).to(dev)
    feats = {
        "untrained encoder": (
            extract_features(model, sp.train.images, **kw),
            extract_features(model, sp.test.images, **kw),
        ),
        "raw pixels": tuple(
            _raw_pixels(d.images, sp.mean, sp.std, dev) for d in (sp.train, sp.test)
        ),
    }
    rows = []
    for name, (train_f, test_f) in feats.items():
        args = (train_f, sp.train.labels, test_f, sp.test.labels)
        knn = knn_accuracy(
            *args, k=k, temperature=config.knn_temperature, num_classes=sp.train.num_classes
        )
        probe = linear_probe(*args, num_classes=sp.train.num_classes)
        rows.append(
            {
                "reference": name,
                "seed": config.seed,
                "knn_acc": float(knn),
                "probe_acc": float(probe.accuracy),
                "knn_k": k,
                "eval_split": getattr(sp, "eval_split", None),
            }
        )
    return rows


def _raw_pixels(images: Any, mean: Sequence[float], std: Sequence[float], device: Any) -> Any:
    """``(N, C*H*W) float32`` pixels normalised per channel (toy points: as they are)."""
    import torch

    if images.dim() != 4:
        return images.float().to(device)
    m = torch.tensor(mean).view(1, -1, 1, 1)
    s = torch.tensor(std).view(1, -1, 1, 1)
    return ((images.float() / 255.0 - m) / s).flatten(1).to(device)
