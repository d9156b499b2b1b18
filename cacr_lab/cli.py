"""The ``cacr-lab`` command (also ``python -m cacr_lab``): train, eval, compare.

    cacr-lab train --dataset digits --method cacr --positives 4 --tau-pos 1.0 --tau-neg 0.9 \\
        --epochs 20 --run-dir runs/cacr-digits
    cacr-lab eval runs/cacr-digits [--protocol fast|paper]
    cacr-lab compare --methods cacr,infonce,align-uniform --dataset digits --seeds 3 \\
        --epochs 10 --imbalance linear --out results/digits-linear

Bad input exits with status 2 and one line on stderr that starts with ``error:`` (no traceback);
an existing run is never deleted or overwritten unless ``--overwrite`` is given.
"""

from __future__ import annotations

import argparse
import csv
import json
import statistics
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from cacr_lab.losses import LOSSES, OPTION_HELP, loss_options

EXIT_BAD_INPUT = 2
EXIT_FAILED = 1


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line: ``error: ...``."""

    def error(self, message: str) -> None:  # type: ignore[override]
        print(f"error: {message} (see {self.prog} --help)", file=sys.stderr)
        sys.exit(EXIT_BAD_INPUT)


def _all_loss_options() -> dict[str, Any]:
    """Every loss option of the registry with an example default (for the flag's type)."""
    opts: dict[str, Any] = {}
    for method in LOSSES:
        for name, default in loss_options(method).items():
            opts.setdefault(name, default)
    return opts


def _add_loss_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("loss options (only those of --method apply; default: the paper's)")
    for name, default in _all_loss_options().items():
        flag = "--" + name.replace("_", "-")
        help_ = OPTION_HELP.get(name, "")
        if isinstance(default, bool):
            g.add_argument(
                flag,
                dest=f"loss_{name}",
                type=_parse_bool,
                default=None,
                metavar="true|false",
                help=help_,
            )
        elif isinstance(default, str):
            g.add_argument(flag, dest=f"loss_{name}", default=None, help=help_)
        else:
            g.add_argument(flag, dest=f"loss_{name}", type=float, default=None, help=help_)


def _parse_bool(s: str) -> bool:
    if s.lower() in ("1", "true", "yes", "on"):
        return True
    if s.lower() in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {s!r}")


def _add_train_flags(p: argparse.ArgumentParser, *, single_run: bool) -> None:
    p.add_argument(
        "--dataset",
        default="digits",
        help="digits (offline default) | cifar10 | cifar100 | stl10 | folder:PATH | toy",
    )
    if single_run:
        p.add_argument("--method", default="cacr", help=f"one of {', '.join(LOSSES)}")
        p.add_argument("--seed", type=int, default=0, help="seed of init, data order and views")
    p.add_argument("--positives", type=int, default=4, help="K positives per image (V = K + 1)")
    p.add_argument(
        "--encoder",
        default=None,
        help="small-alexnet | resnet18 | small-cnn | mlp (default: by dataset)",
    )
    p.add_argument("--batch-size", type=int, default=128, help="images per step (paper 128)")
    p.add_argument("--epochs", type=int, default=20, help="pre-training epochs (paper 200)")
    p.add_argument("--lr", type=float, default=None, help="learning rate (default 0.12 * B / 256)")
    p.add_argument("--schedule", default="step", help="step (reference) | cosine")
    p.add_argument("--imbalance", default="none", help="none | linear | exponential")
    p.add_argument("--imbalance-seed", type=int, default=0, help="which images imbalance keeps")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    p.add_argument(
        "--view-batching",
        default="separate",
        help="separate (reference: BN per view) | joint (one forward, faster)",
    )
    p.add_argument("--compile", action="store_true", help="torch.compile the encoder")
    p.add_argument("--sync-bn", action="store_true", help="several GPUs: SyncBatchNorm")
    p.add_argument(
        "--moco-momentum",
        type=float,
        default=0.99,
        help="method moco: EMA rate of the momentum (key) encoder",
    )
    p.add_argument(
        "--moco-queue",
        type=int,
        default=0,
        help="method moco: past keys kept as extra negatives (0: none, as MoCo v3)",
    )
    p.add_argument("--no-amp", action="store_true", help="no bf16 autocast on CUDA")
    p.add_argument("--eval-every", type=int, default=1, help="epochs between evaluations")
    p.add_argument("--checkpoint-every", type=int, default=5, help="epochs between checkpoints")
    p.add_argument("--log-every", type=int, default=10, help="steps between train records")
    p.add_argument("--max-steps", type=int, default=None, help="stop after this many steps")
    p.add_argument("--data-root", default="data", help="where torchvision datasets live")
    p.add_argument("--download", action="store_true", help="let torchvision download datasets")
    p.add_argument("--overwrite", action="store_true", help="replace an existing run directory")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    _add_loss_flags(p)


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="cacr-lab", description="CACR contrastive learning lab: train, eval, compare")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)
    t = sub.add_parser("train", help="pre-train an encoder and write a run directory")
    _add_train_flags(t, single_run=True)
    t.add_argument("--run-dir", default=None, help="run folder (default runs/METHOD-DATASET-TIME)")
    t.add_argument("--resume", default=None, metavar="RUN_DIR", help="continue a stopped run")
    e = sub.add_parser("eval", help="kNN, linear-probe and per-class accuracy of a run")
    e.add_argument("run_dir")
    e.add_argument(
        "--protocol",
        default="fast",
        choices=["fast", "paper"],
        help="fast: logistic regression on frozen features; paper: REFERENCE.md's",
    )
    e.add_argument("--probe-epochs", type=int, default=100, help="epochs of the paper protocol")
    e.add_argument("--device", default="auto")
    e.add_argument("--data-root", default="data")
    c = sub.add_parser("compare", help="train methods x seeds on identical data and budget")
    c.add_argument("--methods", default="cacr,infonce", help="comma-separated registry keys")
    c.add_argument("--seeds", type=int, default=3, help="number of seeds per method (0..N-1)")
    c.add_argument("--out", required=True, help="output folder (runs/, results.csv, report.md)")
    _add_train_flags(c, single_run=False)
    return p


def config_from_args(args: argparse.Namespace, method: str, seed: int):
    """A validated TrainConfig from parsed flags (ValueError names a bad value)."""
    from cacr_lab.train import TrainConfig

    given = {k[5:]: v for k, v in vars(args).items() if k.startswith("loss_") and v is not None}
    valid = loss_options(method)
    wrong = sorted(set(given) - set(valid))
    if wrong:
        flags = ", ".join("--" + w.replace("_", "-") for w in wrong)
        raise ValueError(
            f"{flags} do(es) not apply to method {method!r}; its options are "
            f"{', '.join('--' + v.replace('_', '-') for v in valid)}"
        )
    return TrainConfig(
        dataset=args.dataset,
        method=method,
        loss_options=given,
        positives=args.positives,
        encoder=args.encoder,
        batch_size=args.batch_size,
        epochs=args.epochs,
        lr=args.lr,
        schedule=args.schedule,
        imbalance=args.imbalance,
        imbalance_seed=args.imbalance_seed,
        seed=seed,
        device=args.device,
        amp=not args.no_amp,
        compile=args.compile,
        view_batching=args.view_batching,
        sync_bn=args.sync_bn,
        moco_momentum=args.moco_momentum,
        moco_queue=args.moco_queue,
        data_root=args.data_root,
        download=args.download,
        log_every=args.log_every,
        eval_every=args.eval_every,
        checkpoint_every=args.checkpoint_every,
        max_steps=args.max_steps,
    )


# --------------------------------------------------------------------------------------------
# Commands
# --------------------------------------------------------------------------------------------


def cmd_train(args: argparse.Namespace) -> int:
    from cacr_lab.runs import new_run_name
    from cacr_lab.train import train

    if args.resume:
        run_dir = Path(args.resume)
        if not run_dir.is_dir():
            raise ValueError(f"--resume {run_dir}: no such run directory")
        config = config_from_args(args, args.method, args.seed)
        train(config, run_dir, resume=True, progress=not args.no_progress)
        return 0
    config = config_from_args(args, args.method, args.seed)
    run_dir = (
        Path(args.run_dir)
        if args.run_dir
        else Path("runs") / new_run_name(args.method, args.dataset)
    )
    train(config, run_dir, overwrite=args.overwrite, progress=not args.no_progress)
    return 0


def evaluate_run(
    run_dir: str | Path,
    *,
    protocol: str = "fast",
    probe_epochs: int = 100,
    device: str = "auto",
    data_root: str = "data",
) -> dict[str, Any]:
    """kNN, linear-probe and per-class accuracy of a run's last checkpoint; stored in the run."""
    from cacr_lab.data import load_dataset
    from cacr_lab.evaluate import extract_features, knn_accuracy, linear_probe, per_class_accuracy
    from cacr_lab.runs import load_run, write_evaluation
    from cacr_lab.train import load_encoder, resolve_device

    run = load_run(run_dir)
    dev = resolve_device(device)
    model, cfg = load_encoder(run_dir, device=str(dev))
    sp = load_dataset(cfg["dataset"], root=data_root, seed=cfg["seed"], progress=False)
    kw = dict(mean=sp.mean, std=sp.std, device=dev, image_size=sp.image_size)
    train_f = extract_features(model, sp.train.images, **kw)
    test_f = extract_features(model, sp.test.images, **kw)
    acc, preds = knn_accuracy(
        train_f,
        sp.train.labels,
        test_f,
        sp.test.labels,
        num_classes=sp.train.num_classes,
        return_predictions=True,
    )
    result: dict[str, Any] = {
        "run": run.name,
        "method": cfg["method"],
        "seed": cfg["seed"],
        "protocol": protocol,
        "knn_acc": float(acc),
        "knn_per_class_acc": per_class_accuracy(preds, sp.test.labels, sp.train.num_classes),
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


def cmd_eval(args: argparse.Namespace) -> int:
    r = evaluate_run(
        args.run_dir,
        protocol=args.protocol,
        probe_epochs=args.probe_epochs,
        device=args.device,
        data_root=args.data_root,
    )
    print(
        f"{r['run']}: kNN {r['knn_acc']:.4f}  linear probe ({r['protocol']}) {r['probe_acc']:.4f}"
    )
    for name, a in zip(r["classes"], r["per_class_acc"]):
        print(f"  {name:>12}: {a:.4f}")
    return 0


def compare(
    methods: Sequence[str],
    *,
    seeds: int,
    out: str | Path,
    args: argparse.Namespace,
    progress: bool = True,
) -> Path:
    """Train every method x seed with identical data, encoder and budget; write a report.

    Writes ``OUT/runs/METHOD-seedS/`` (run directories), ``OUT/results.csv`` (one row per run),
    ``OUT/report.md`` (mean +- std per method) and plotly HTML figures.
    """
    from cacr_lab import figures
    from cacr_lab.runs import load_run
    from cacr_lab.train import train

    out = Path(out)
    configs = [(m, s, config_from_args(args, m, s)) for m in methods for s in range(seeds)]
    rows, runs = [], []
    for method, seed, config in configs:  # all validated before the first run starts
        run_dir = out / "runs" / f"{method}-seed{seed}"
        # Reuses a finished run of the same config: an interrupted compare picks up where it
        # stopped.
        train(
            config, run_dir, overwrite=args.overwrite, reuse=not args.overwrite, progress=progress
        )
        run = load_run(run_dir)
        runs.append(run)
        final = run.eval_records()[-1]
        rows.append(
            {
                "method": method,
                "seed": seed,
                "knn_acc": final["knn_acc"],
                "probe_acc": final.get("probe_acc"),
                "per_class_acc": json.dumps(final.get("per_class_acc")),
                "run_dir": str(run_dir),
            }
        )
    with open(out / "results.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    (out / "report.md").write_text(_report(rows, args, seeds))
    figures.eval_curves(runs).write_html(out / "eval_curves.html", include_plotlyjs="cdn")
    figures.loss_curves(runs).write_html(out / "loss_curves.html", include_plotlyjs="cdn")
    figures.weight_stats_over_time(runs).write_html(
        out / "weight_stats.html", include_plotlyjs="cdn"
    )
    figures.per_class_bars(runs).write_html(out / "per_class.html", include_plotlyjs="cdn")
    return out


def _mean_std(xs: list[float]) -> str:
    xs = [x for x in xs if x is not None]
    if not xs:
        return "n/a"
    sd = statistics.stdev(xs) if len(xs) > 1 else 0.0
    return f"{100 * statistics.mean(xs):.2f} ± {100 * sd:.2f}"


def _report(rows: list[dict[str, Any]], args: argparse.Namespace, seeds: int) -> str:
    lines = [
        f"# compare: {args.dataset}, imbalance {args.imbalance}, {args.epochs} epochs, "
        f"batch {args.batch_size}, K = {args.positives}, {seeds} seed(s)",
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
    if args.imbalance not in (None, "none"):
        lines += ["", "Per-class linear-probe accuracy (%), mean over seeds:", ""]
        for m in methods:
            per = [json.loads(r["per_class_acc"]) for r in rows if r["method"] == m]
            means = [100 * statistics.mean(c) for c in zip(*per)]
            lines.append(f"- {m}: " + ", ".join(f"{v:.1f}" for v in means))
    return "\n".join(lines) + "\n"


def cmd_compare(args: argparse.Namespace) -> int:
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = [m for m in methods if m not in LOSSES]
    if not methods or unknown:
        raise ValueError(
            f"unknown method(s) {', '.join(unknown) or '(none given)'}; "
            f"choose from {', '.join(LOSSES)}"
        )
    if args.seeds < 1:
        raise ValueError(f"--seeds must be >= 1; got {args.seeds}")
    out = compare(methods, seeds=args.seeds, out=args.out, args=args, progress=not args.no_progress)
    print((out / "report.md").read_text())
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    command = {"train": cmd_train, "eval": cmd_eval, "compare": cmd_compare}[args.command]
    from cacr_lab.train import NonFiniteLossError

    try:
        return command(args)
    except (ValueError, FileNotFoundError, FileExistsError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except NonFiniteLossError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except RuntimeError as exc:  # e.g. torchvision's own errors, CUDA out of memory
        print(f"error: {exc}".splitlines()[0], file=sys.stderr)
        return EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
