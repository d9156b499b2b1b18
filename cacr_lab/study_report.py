"""The report of a study: tables, paired differences with 95 % t-intervals, verdicts, figures.

:func:`analyse` turns the rows of ``results.csv`` (one per run) into the numbers the report and
the figures show; :func:`write_report` writes ``results.csv``, ``report.md`` and the HTML
figures (its ``plan``: a :class:`cacr_lab.study.StudyPlan`). Every interval is a Student
t-interval over the seeds of a **paired** difference (:mod:`cacr_lab.stats`): CACR minus a
baseline at the same seed and profile; a method's accuracy balanced minus imbalanced at the same
seed (its drop); CACR's drop minus a baseline's; and the accuracy over the rarer half of the
classes. A verdict says "inconclusive at this budget" whenever its interval contains 0.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cacr_lab.stats import (
    Interval,
    half_means,
    paired_differences,
    rare_frequent_halves,
    t_interval,
)

__all__ = [
    "METRICS",
    "RESULT_COLUMNS",
    "NotAStudyError",
    "StudyView",
    "analyse",
    "find_studies",
    "is_study",
    "load_study",
    "report_text",
    "verdict",
    "write_report",
]

# The columns of results.csv, one row per run (per-class lists and class counts as JSON).
RESULT_COLUMNS = (
    "method", "profile", "seed", "knn_acc", "probe_acc", "knn_init", "knn_k",
    "per_class_acc", "knn_per_class_acc", "class_counts", "steps", "wall_s", "eval_split",
    "run_dir",
)  # fmt: skip


def write_csv(path: Path, rows: list[dict[str, Any]], columns: Sequence[str]) -> None:
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(columns), extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)


REFERENCE_METHOD = "cacr"
# (results.csv column, its name in the report, the per-class column of the same evaluation)
METRICS = (
    ("probe_acc", "linear probe", "per_class_acc"),
    ("knn_acc", "kNN", "knn_per_class_acc"),
)


def verdict(iv: Interval, subject: str = "CACR") -> str:
    """One line: "inconclusive at this budget" if the interval contains 0 (or there is none),
    else "CACR higher by X [lo, hi]" in percent points.

    A zero-width interval (every seed gave the same difference, e.g. one test image each time
    on a quantised accuracy) is no evidence either: the t-interval has no spread to stand on,
    so it is inconclusive too.

    >>> verdict(Interval(0.02, 0.01, 0.03, 3, 0.004))
    'CACR higher by 2.00 points [+1.00, +3.00]'
    >>> verdict(Interval(0.02, -0.01, 0.05, 3, 0.01))
    'inconclusive at this budget (the interval contains 0)'
    >>> verdict(Interval(-0.0022, -0.0022, -0.0022, 3, 0.0))
    'inconclusive at this budget (every seed gave the same difference: no spread)'
    """
    if iv.n < 2:
        return f"inconclusive at this budget ({iv.n} seed: no interval)"
    if not iv.excludes_zero:
        return "inconclusive at this budget (the interval contains 0)"
    if iv.sd < 1e-6:  # 0 up to float32 rounding of the accuracies
        return "inconclusive at this budget (every seed gave the same difference: no spread)"
    word = "higher" if iv.mean > 0 else "lower"
    bounds = f"[{100 * iv.lo:+.2f}, {100 * iv.hi:+.2f}]"
    return f"{subject} {word} by {100 * abs(iv.mean):.2f} points {bounds}"


def _values(rows: Sequence[Mapping[str, Any]], key: str) -> dict[tuple[str, str], dict[int, Any]]:
    """(method, profile) -> {seed: value of ``key``} (JSON lists decoded)."""
    out: dict[tuple[str, str], dict[int, Any]] = {}
    for r in rows:
        v = r.get(key)
        if isinstance(v, str):
            v = json.loads(v) if v not in ("", "null") else None
        out.setdefault((r["method"], r["profile"]), {})[int(r["seed"])] = v
    return out


def _halves(rows: Sequence[Mapping[str, Any]]) -> dict[str, tuple[list[int], list[int]]]:
    """Per imbalanced profile, its rare and frequent classes (from the pre-training counts)."""
    out = {}
    for r in rows:
        counts = r.get("class_counts")
        counts = json.loads(counts) if isinstance(counts, str) else counts
        if r["profile"] != "none" and counts and r["profile"] not in out:
            out[r["profile"]] = rare_frequent_halves(counts) + (counts,)
    return out


def analyse(rows: Sequence[Mapping[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """The report's numbers: ``accuracy``, ``paired``, ``drops``, ``drop_differences``,
    ``halves`` and ``rare_paired`` (each a list of dicts holding an :class:`Interval` ``iv``)."""
    methods = list(dict.fromkeys(r["method"] for r in rows))
    profiles = list(dict.fromkeys(r["profile"] for r in rows))
    imbalanced = [q for q in profiles if q != "none"]
    baselines = [m for m in methods if m != REFERENCE_METHOD]
    has_ref = REFERENCE_METHOD in methods
    halves = _halves(rows)
    res: dict[str, list[dict[str, Any]]] = {
        k: [] for k in ("accuracy", "paired", "drops", "drop_differences", "halves", "rare_paired")
    }
    for key, name, per_class_key in METRICS:
        vals, per_class = _values(rows, key), _values(rows, per_class_key)
        for m in methods:
            for q in profiles:
                iv = t_interval(vals.get((m, q), {}).values())
                res["accuracy"].append({"method": m, "profile": q, "metric": name, "iv": iv})
        for b in baselines if has_ref else []:
            for q in profiles:
                d = paired_differences(vals[(REFERENCE_METHOD, q)], vals[(b, q)])
                res["paired"].append(_item(b, q, name, d))
        drops = {
            (m, q): paired_differences(vals[(m, "none")], vals[(m, q)])
            for m in methods
            for q in imbalanced
            if "none" in profiles
        }
        for (m, q), d in drops.items():
            res["drops"].append(
                {"method": m, "profile": q, "metric": name, "iv": t_interval(d.values())}
            )
        for b in baselines if has_ref else []:
            for q in imbalanced if "none" in profiles else []:
                d = paired_differences(drops[(REFERENCE_METHOD, q)], drops[(b, q)])
                res["drop_differences"].append(_item(b, q, name, d))
        rare = {}
        for q in imbalanced:
            if q not in halves:
                continue
            rare_c, freq_c, _ = halves[q]
            for m in methods:
                pcs = per_class.get((m, q), {})
                rare[(m, q)] = {s: half_means(pc, rare_c) for s, pc in pcs.items() if pc}
                freq = {s: half_means(pc, freq_c) for s, pc in pcs.items() if pc}
                res["halves"].append(
                    {
                        "method": m,
                        "profile": q,
                        "metric": name,
                        "rare": t_interval(rare[(m, q)].values()),
                        "frequent": t_interval(freq.values()),
                        "gap": t_interval(paired_differences(freq, rare[(m, q)]).values()),
                    }
                )
            for b in baselines if has_ref else []:
                d = paired_differences(rare[(REFERENCE_METHOD, q)], rare[(b, q)])
                res["rare_paired"].append(_item(b, q, name, d))
    return res


def _item(baseline: str, profile: str, metric: str, diffs: Mapping[int, float]) -> dict[str, Any]:
    return {
        "baseline": baseline,
        "profile": profile,
        "metric": metric,
        "iv": t_interval(diffs.values()),
        "seeds": sorted(diffs),
    }


# --------------------------------------------------------------------------------------------
# The report
# --------------------------------------------------------------------------------------------


def _pct(iv: Interval) -> str:
    """``"mean ± sd"`` in percent."""
    if math.isnan(iv.mean):
        return "n/a"
    sd = 0.0 if math.isnan(iv.sd) else iv.sd
    return f"{100 * iv.mean:.2f} ± {100 * sd:.2f}"


def _header(p: Any, rows: Sequence[Mapping[str, Any]]) -> list[str]:
    cfg = p.jobs[0][3]
    ks = sorted({r["knn_k"] for r in rows if r.get("knn_k") not in (None, "")}, key=str)
    splits = sorted({str(r["eval_split"]) for r in rows if r.get("eval_split") not in (None, "")})
    budget = f"{cfg.epochs} epochs" + (f", at most {cfg.max_steps} steps" if cfg.max_steps else "")
    from scipy.stats import t

    n = p.seeds
    tq = f", t = {t.ppf(0.975, n - 1):.2f}" if n > 1 else ""
    k_rule = (
        "follows the data: min(200, smallest class of the kNN bank // 2)"
        if cfg.knn_k == 0
        else "set by knn_k"
    )
    return [
        f"# study {p.preset}: {cfg.dataset}, {cfg.encoder}, {budget}, batch {cfg.batch_size}, "
        f"K = {cfg.positives}, {n} seed(s), kNN k = {', '.join(map(str, ks)) or '?'}",
        "",
        f"- Grid: methods {', '.join(p.methods)} × profiles {', '.join(p.profiles)} × seeds "
        f"0..{n - 1}; every other option identical (lr {cfg.lr or 'default 0.12·B/256'}, "
        f"schedule {cfg.schedule}, each method's paper loss options). At one seed every method "
        "starts from the same initial weights and sees the same data order and views.",
        f"- Evaluation: kNN k = {', '.join(map(str, ks)) or '?'} ({k_rule}; the same for "
        f"every run), τ = {cfg.knn_temperature}; fast linear probe (logistic regression on "
        f"frozen features). Measured on: {', '.join(splits) or 'the dataset held-out test split'}; "
        "the kNN bank and the probe's training set are the balanced train split.",
        f"- Statistics: mean ± std over seeds; every interval is a 95 % Student t-interval of the "
        f"paired differences over the seeds (df = n − 1 = {n - 1}{tq}). A verdict says "
        "'inconclusive at this budget' when its interval contains 0. Each interval covers one "
        "comparison (no correction for the many in this report: about 1 in 20 excludes 0 by "
        "chance alone), so read a single conclusive row with care.",
        f"- Wall time: {sum(float(r['wall_s'] or 0) for r in rows) / 60:.1f} min of training in "
        f"{len(rows)} runs (sum of the runs' own clocks, evaluations included).",
    ]


def _accuracy_section(res: Mapping[str, list], refs: Sequence[Mapping[str, Any]]) -> list[str]:
    lines = ["", "## Accuracy (mean ± std over seeds, %)", ""]
    lines += ["| method | profile | linear probe | kNN |", "|---|---|---|---|"]
    acc = {(a["method"], a["profile"], a["metric"]): a["iv"] for a in res["accuracy"]}
    for m, q in dict.fromkeys((a["method"], a["profile"]) for a in res["accuracy"]):
        lines.append(
            f"| {m} | {q} | {_pct(acc[(m, q, 'linear probe')])} | {_pct(acc[(m, q, 'kNN')])} |"
        )
    for name in dict.fromkeys(r["reference"] for r in refs):
        part = [r for r in refs if r["reference"] == name]
        probe = t_interval(float(r["probe_acc"]) for r in part)
        knn = t_interval(float(r["knn_acc"]) for r in part)
        lines.append(f"| *{name}* (reference) | — | {_pct(probe)} | {_pct(knn)} |")
    lines += [
        "",
        "Reference rows: the encoder at each seed's initial weights (what the runs start from) "
        "and the raw normalised pixels, evaluated the same way: what pre-training added is the "
        "gap to them.",
    ]
    return lines


def _diff_table(
    title: str, items: Sequence[Mapping[str, Any]], what: str, subject: str
) -> list[str]:
    if not items:
        return []
    lines = ["", title, ""]
    lines += [f"| baseline | profile | metric | {what} (points, 95 % CI) | verdict |"]
    lines += ["|---|---|---|---|---|"]
    for it in items:
        lines.append(
            f"| {it['baseline']} | {it['profile']} | {it['metric']} | {it['iv'].text()} | "
            f"{verdict(it['iv'], subject)} |"
        )
    return lines


def report_text(
    p: Any, rows: Sequence[Mapping[str, Any]], refs: Sequence[Mapping[str, Any]]
) -> str:
    """report.md of a study."""
    res = analyse(rows)
    lines = _header(p, rows) + _accuracy_section(res, refs)
    if REFERENCE_METHOD not in p.methods:
        lines += ["", "CACR is not in this study: no paired differences against it."]
    lines += _diff_table(
        "## Q1. Does CACR's accuracy differ from each baseline's? CACR − baseline, paired by seed",
        res["paired"],
        "CACR − baseline",
        "CACR",
    )
    if res["drops"]:
        lines += ["", "## Q2. Robustness: the drop balanced − imbalanced, paired by seed", ""]
        lines += ["| method | profile | metric | drop (points, 95 % CI) |", "|---|---|---|---|"]
        lines += [
            f"| {d['method']} | {d['profile']} | {d['metric']} | {d['iv'].text()} |"
            for d in res["drops"]
        ]
    lines += _diff_table(
        "### Does CACR drop less than each baseline? CACR's drop − the baseline's "
        "(lower: CACR more robust)",
        res["drop_differences"],
        "drop difference",
        "CACR's drop",
    )
    lines += _halves_section(res, rows)
    lines += _diff_table(
        "### Rare half: CACR − baseline, paired by seed",
        res["rare_paired"],
        "CACR − baseline",
        "CACR",
    )
    return "\n".join(lines) + "\n"


def _halves_section(res: Mapping[str, list], rows: Sequence[Mapping[str, Any]]) -> list[str]:
    if not res["halves"]:
        return []
    lines = [
        "",
        "## Q3. The rarer half of the classes vs the more frequent half (imbalanced profiles)",
        "",
    ]
    for q, (rare, freq, counts) in _halves(rows).items():
        lines.append(
            f"- {q}: rare classes {rare} (pre-training images {[counts[c] for c in rare]}), "
            f"frequent {freq} ({[counts[c] for c in freq]})"
        )
    lines += [
        "",
        "| method | profile | metric | rare half (%, 95 % CI) | frequent half | "
        "frequent − rare (points) |",
        "|---|---|---|---|---|---|",
    ]
    for h in res["halves"]:
        lines.append(
            f"| {h['method']} | {h['profile']} | {h['metric']} | "
            f"{h['rare'].text(digits=1, signed=False)} | "
            f"{h['frequent'].text(digits=1, signed=False)} | {h['gap'].text()} |"
        )
    return lines


def write_report(out: Path, p: Any, rows: list[dict[str, Any]], refs: list[dict[str, Any]]) -> None:
    """results.csv, report.md and the HTML figures of a study."""
    from cacr_lab import figures

    write_csv(out / "results.csv", rows, RESULT_COLUMNS)
    (out / "report.md").write_text(report_text(p, rows, refs))
    res = analyse(rows)
    for name, key in (("differences", "paired"), ("drop_differences", "drop_differences")):
        items = [_plot_row(it) for it in res[key]]
        if items:
            title = (
                "CACR − baseline, paired by seed (95 % t-interval)"
                if key == "paired"
                else "CACR's drop − baseline's drop, balanced − imbalanced (95 % t-interval)"
            )
            figures.write_html(figures.interval_plot(items, title=title), out / f"{name}.html")
    halves = [
        {"profile": f"{h['profile']} · {h['metric']}", "method": h["method"], "half": half}
        | _bounds(h[half])
        for h in res["halves"]
        for half in ("rare", "frequent")
    ]
    if halves:
        figures.write_html(figures.rare_frequent_bars(halves), out / "rare_frequent.html")
    acc = [
        {"method": a["method"], "profile": a["profile"], **_bounds(a["iv"])}
        for a in res["accuracy"]
        if a["metric"] == "linear probe"
    ]
    figures.write_html(figures.study_accuracy_bars(acc), out / "accuracy.html")
    section, runs = false_negative_section(rows)
    if runs:  # runs recorded before the false-negative share have no section and no figure
        with open(out / "report.md", "a") as f:
            f.write(section)
        figures.write_html(figures.false_negative_curves(runs), out / "false_negatives.html")


def false_negative_section(rows: Sequence[Mapping[str, Any]]) -> tuple[str, list]:
    """report.md's closing section: the false-negative share at each run's last evaluation
    (docs/method.md §8.1), mean ± std over seeds per method × profile, beside InfoNCE's
    implicit weights on the same embedding and uniform weights; and the runs that record it."""
    from cacr_lab.runs import load_run

    runs, table = [], {}
    for r in rows:
        run = load_run(r["run_dir"])
        last = run.eval_records()[-1] if run.eval_records() else {}
        if last.get("fn_share_uniform") is None:
            continue
        runs.append(run)
        cell = table.setdefault((r["method"], r["profile"]), {})
        for key in ("fn_share", "fn_share_infonce", "fn_share_uniform"):
            cell.setdefault(key, []).append(last.get(key))
    if not runs:
        return "", []
    lines = [
        "",
        "## False negatives: the negative weight on the query's own class, end of training",
        "",
        "Share of each query's negative weight on images of its own class, averaged over the "
        "held-out probe batch (mean ± std over seeds; docs/method.md §8.1): the run's own "
        "weights, InfoNCE's implicit weights on the same embedding, and uniform weights.",
        "",
        "| method | profile | own weights | InfoNCE's weights | uniform |",
        "|---|---|---|---|---|",
    ]
    for (method, profile), cell in table.items():
        shares = [_share(cell[k]) for k in ("fn_share", "fn_share_infonce", "fn_share_uniform")]
        lines.append(f"| {method} | {profile} | " + " | ".join(shares) + " |")
    return "\n".join(lines) + "\n", runs


def _share(values: Sequence[float | None]) -> str:
    """``"0.214 ± 0.004"`` over the values given; ``"—"`` where the method records none."""
    xs = [float(v) for v in values if v is not None]
    if not xs:
        return "—"
    mean = sum(xs) / len(xs)
    sd = math.sqrt(sum((x - mean) ** 2 for x in xs) / (len(xs) - 1)) if len(xs) > 1 else 0.0
    return f"{mean:.3f} ± {sd:.3f}"


def _bounds(iv: Interval) -> dict[str, float]:
    return {"mean": 100 * iv.mean, "lo": 100 * iv.lo, "hi": 100 * iv.hi}


def _plot_row(it: Mapping[str, Any]) -> dict[str, Any]:
    label = f"{it['baseline']} · {it['profile']} · {it['metric']}"
    return {"label": label, "method": it["baseline"]} | _bounds(it["iv"])


# --------------------------------------------------------------------------------------------
# Reading a study folder back (the dashboard's Study tab, notebooks)
# --------------------------------------------------------------------------------------------


class NotAStudyError(ValueError):
    """The folder holds no study: no ``results.csv`` with the study's columns."""


def is_study(folder: str | Path) -> bool:
    """True if ``folder`` holds a study's ``results.csv`` (a ``compare`` folder has no
    ``profile`` column, a run folder no results.csv)."""
    path = Path(folder) / "results.csv"
    if not path.is_file():
        return False
    with open(path, newline="") as f:
        header = next(csv.reader(f), [])
    return {"method", "profile", "seed", "knn_acc", "probe_acc"} <= set(header)


def find_studies(*roots: str | Path) -> list[Path]:
    """The study folders at or up to two levels under ``roots``, newest ``results.csv`` first."""
    found: set[Path] = set()
    for root in map(Path, roots):
        for pattern in ("results.csv", "*/results.csv", "*/*/results.csv"):
            found |= {p.parent for p in root.glob(pattern) if is_study(p.parent)}
    return sorted(found, key=lambda d: (d / "results.csv").stat().st_mtime, reverse=True)


@dataclass
class StudyView:
    """A study folder read back: its rows, reference rows and :func:`analyse`'s numbers, as the
    tables and figure rows a page shows (accuracies in percent, differences in points)."""

    folder: Path
    rows: list[dict[str, Any]]
    refs: list[dict[str, Any]]
    res: dict[str, list[dict[str, Any]]]
    title: str  # the first line of report.md, without its "# "

    def accuracy_table(self) -> list[dict[str, str]]:
        """One row per method × profile, then the reference rows: mean ± std over seeds (%)."""
        acc = {(a["method"], a["profile"], a["metric"]): a["iv"] for a in self.res["accuracy"]}
        out = [
            {"method": m, "profile": q, "seeds": str(acc[(m, q, "kNN")].n)}
            | {name: _pct(acc[(m, q, name)]) for _, name, _ in METRICS}
            for m, q in dict.fromkeys((a["method"], a["profile"]) for a in self.res["accuracy"])
        ]
        for name in dict.fromkeys(r["reference"] for r in self.refs):
            part = [r for r in self.refs if r["reference"] == name]
            out.append(
                {"method": f"{name} (reference)", "profile": "—", "seeds": str(len(part))}
                | {m: _pct(t_interval(float(r[key]) for r in part)) for key, m, _ in METRICS}
            )
        return out

    def difference_table(self, key: str = "paired") -> list[dict[str, str]]:
        """``key``: ``paired`` (CACR − baseline), ``drop_differences`` or ``rare_paired``: one
        row per baseline × profile × metric with its 95 % interval (points) and its verdict."""
        subject = "CACR's drop" if key == "drop_differences" else "CACR"
        return [
            {
                "baseline": it["baseline"],
                "profile": it["profile"],
                "metric": it["metric"],
                "difference (points, 95 % CI)": it["iv"].text(),
                "verdict": verdict(it["iv"], subject),
            }
            for it in self.res[key]
        ]

    def drop_table(self) -> list[dict[str, str]]:
        """Each method's drop balanced − imbalanced, paired by seed (points, 95 % interval)."""
        return [
            {
                "method": d["method"],
                "profile": d["profile"],
                "metric": d["metric"],
                "drop (points, 95 % CI)": d["iv"].text(),
            }
            for d in self.res["drops"]
        ]

    def interval_rows(self, key: str = "paired") -> list[dict[str, Any]]:
        """Rows for :func:`cacr_lab.figures.interval_plot`."""
        return [_plot_row(it) for it in self.res[key]]

    def halves_rows(self) -> list[dict[str, Any]]:
        """Rows for :func:`cacr_lab.figures.rare_frequent_bars` (empty without an imbalanced
        profile)."""
        return [
            {"profile": f"{h['profile']} · {h['metric']}", "method": h["method"], "half": half}
            | _bounds(h[half])
            for h in self.res["halves"]
            for half in ("rare", "frequent")
        ]


def load_study(folder: str | Path) -> StudyView:
    """Read a study folder (``results.csv``, ``references.csv`` if there, ``report.md``'s title).
    :class:`NotAStudyError` (a ValueError, one line) if it holds no study."""
    folder = Path(folder)
    if not is_study(folder):
        why = "does not exist" if not folder.exists() else "has no study results.csv"
        raise NotAStudyError(
            f"{folder} is not a study folder: it {why} (make one with "
            "`cacr-lab study --preset cpu-digits --out FOLDER`)"
        )
    with open(folder / "results.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows:
        raise NotAStudyError(f"{folder} is not a study folder: its results.csv has no rows")
    refs: list[dict[str, Any]] = []
    if (folder / "references.csv").is_file():
        with open(folder / "references.csv", newline="") as f:
            refs = list(csv.DictReader(f))
    report = folder / "report.md"
    title = (
        report.read_text().splitlines()[0].removeprefix("# ") if report.is_file() else folder.name
    )
    return StudyView(folder, rows, refs, analyse(rows), title)
