"""The ``cacr-lab`` command (also ``python -m cacr_lab``): train, eval, compare, study.

    cacr-lab train --dataset digits --method cacr --positives 4 --tau-pos 1.0 --tau-neg 0.9 \\
        --epochs 20 --run-dir runs/cacr-digits
    cacr-lab eval runs/cacr-digits [--protocol fast|paper]
    cacr-lab compare --methods cacr,infonce,align-uniform --dataset digits --seeds 3 \\
        --epochs 10 --imbalance linear --out results/digits-linear
    cacr-lab study --preset cpu-digits --seeds 3 --out results/study-digits

This module is argparse only: every default comes from :mod:`cacr_lab.config` (TrainConfig's
fields, the runs root), and the commands call :mod:`cacr_lab.train` and
:mod:`cacr_lab.experiments`. Bad input exits with status 2 and one line on stderr that starts with
``error:`` (no traceback); a run that fails (a non-finite loss, a full disk, a read-only folder)
exits with 1 and one line naming the cause and the file; a run or compare stopped by SIGTERM or
Ctrl-C writes a checkpoint and exits with 128 + the signal's number. An existing run is never
deleted or overwritten unless ``--overwrite`` is given (and only a run folder, never another);
``--resume`` continues a run with its stored options and refuses flags that would change them,
but a larger ``--epochs``.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from cacr_lab.config import TrainConfig, default, runs_root
from cacr_lab.experiments import PROBE_EPOCHS, compare, evaluate_run
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
        for name, example in loss_options(method).items():
            opts.setdefault(name, example)
    return opts


def _add_loss_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("loss options (only those of --method apply; default: the paper's)")
    for name, example in _all_loss_options().items():
        flag = "--" + name.replace("_", "-")
        help_ = OPTION_HELP.get(name, "")
        if isinstance(example, bool):
            g.add_argument(
                flag,
                dest=f"loss_{name}",
                type=_parse_bool,
                default=None,
                metavar="true|false",
                help=help_,
            )
        elif isinstance(example, str):
            g.add_argument(flag, dest=f"loss_{name}", default=None, help=help_)
        else:
            g.add_argument(flag, dest=f"loss_{name}", type=float, default=None, help=help_)


def _parse_bool(s: str) -> bool:
    if s.lower() in ("1", "true", "yes", "on"):
        return True
    if s.lower() in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {s!r}")


# The training flags in --help order: (flag, type, help). A valued flag sets the TrainConfig
# field of its name (--batch-size: batch_size) and defaults to that field's default; a switch
# (type None) is off unless given.
_TRAIN_FLAGS: list[tuple[str, type | None, str]] = [
    ("--positives", int, "K positives per image (V = K + 1)"),
    ("--encoder", str, "small-alexnet | resnet18 | small-cnn | mlp (default: by dataset)"),
    ("--batch-size", int, "images per step (paper 128)"),
    ("--epochs", int, "pre-training epochs (paper 200)"),
    ("--lr", float, "learning rate (default 0.12 * B / 256)"),
    ("--schedule", str, "step (reference) | cosine"),
    ("--imbalance", str, "none | linear | exponential"),
    ("--imbalance-seed", int, "which images imbalance keeps"),
    ("--device", str, "auto | cpu | cuda | cuda:N"),
    ("--view-batching", str, "separate (reference: BN per view) | joint (one forward, faster)"),
    ("--compile", None, "torch.compile the encoder"),
    ("--sync-bn", None, "several GPUs: SyncBatchNorm"),
    ("--moco-momentum", float, "method moco: EMA rate of the momentum (key) encoder"),
    ("--moco-momentum-schedule", str, "method moco: constant | cosine (half-cosine up to 1)"),
    ("--moco-local-crops", int, "method moco: small local crops per image (authors: 8)"),
    ("--moco-multicrop", str, "method moco: light (local crops only as queries) | full"),
    ("--no-amp", None, "no bf16 autocast on CUDA"),
    ("--eval-every", int, "epochs between evaluations"),
    ("--eval-every-steps", int, "steps between evaluations (0: --eval-every decides)"),
    ("--snapshot-size", int, "held-out images each snapshot embeds (the UMAP sample)"),
    ("--checkpoint-every", int, "epochs between checkpoints"),
    ("--log-every", int, "steps between train records"),
    ("--max-steps", int, "stop after this many steps"),
    ("--data-root", str, "where torchvision datasets live"),
    ("--download", None, "let torchvision download datasets"),
    ("--overwrite", None, "replace an existing run directory"),
    ("--no-progress", None, "no progress bar"),
]


def _add_train_flags(p: argparse.ArgumentParser, *, single_run: bool) -> None:
    """The flags of TrainConfig's fields, each defaulting to the field's default."""
    p.add_argument(
        "--dataset",
        default=default("dataset"),
        help="digits (offline) | cifar10 | cifar100 | stl10 | folder:PATH | toy; "
        f"default {default('dataset')}. folder:PATH is PATH/train/<class>/<img> + "
        "PATH/test/<class>/<img> (evaluates on test/) or PATH/<class>/<img> (evaluates on a "
        "held-out 10%% of it, stratified by the run's seed)",
    )
    if single_run:
        p.add_argument("--method", default=default("method"), help=f"one of {', '.join(LOSSES)}")
        p.add_argument(
            "--seed", type=int, default=default("seed"), help="seed of init, data order and views"
        )
    for flag, type_, help_ in _TRAIN_FLAGS:
        if type_ is None:
            p.add_argument(flag, action="store_true", help=help_)
            continue
        value = default(flag[2:].replace("-", "_"))
        if flag == "--imbalance" and value is None:
            value = "none"  # the flag's word for TrainConfig's None (balanced)
        p.add_argument(flag, type=type_, default=value, help=help_)
    _add_loss_flags(p)


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="cacr-lab", description="CACR contrastive learning lab: train, eval, compare")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)
    _train_arguments(sub.add_parser("train", help="pre-train an encoder and write a run directory"))
    e = sub.add_parser("eval", help="kNN, linear-probe and per-class accuracy of a run")
    e.add_argument("run_dir")
    e.add_argument(
        "--protocol",
        default="fast",
        choices=["fast", "paper"],
        help="fast: logistic regression on frozen features; paper: the authors' linear "
        "evaluation (docs/method.md §8)",
    )
    e.add_argument(
        "--probe-epochs", type=int, default=PROBE_EPOCHS, help="epochs of the paper protocol"
    )
    e.add_argument("--device", default=default("device"))
    e.add_argument("--data-root", default=default("data_root"))
    c = sub.add_parser("compare", help="train methods x seeds on identical data and budget")
    c.add_argument("--methods", default="cacr,infonce", help="comma-separated registry keys")
    c.add_argument("--seeds", type=int, default=3, help="number of seeds per method (0..N-1)")
    c.add_argument("--out", required=True, help="output folder (runs/, results.csv, report.md)")
    _add_train_flags(c, single_run=False)
    _study_arguments(
        sub.add_parser("study", help="methods x imbalance profiles x seeds, seed-paired, a report")
    )
    return p


def _study_arguments(s: argparse.ArgumentParser) -> None:
    """``cacr-lab study``: a preset, and compare's flags on top of it (only those typed)."""
    from cacr_lab.study import PRESETS, PROFILES

    s.add_argument("--preset", default="cpu-digits", help=f"one of {', '.join(PRESETS)}")
    s.add_argument("--methods", help="comma-separated registry keys (default: the preset's)")
    s.add_argument("--profiles", help=f"comma-separated, of {', '.join(PROFILES)}")
    s.add_argument("--seeds", type=int, help="seeds 0..N-1 (default: the preset's)")
    s.add_argument("--out", required=True, help="output folder (runs/, results.csv, report.md)")
    _add_train_flags(s, single_run=False)
    # A flag not typed keeps the preset's value: every default None (a switch: None, not False).
    s.set_defaults(**{a.dest: None for a in s._actions if a.dest not in ("help", "preset", "out")})


def _train_arguments(t: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The arguments of ``cacr-lab train`` (also parsed alone to see which flags were typed)."""
    _add_train_flags(t, single_run=True)
    default_run = str(runs_root() / "METHOD-DATASET-TIME").replace("%", "%%")
    t.add_argument("--run-dir", default=None, help=f"run folder (default {default_run})")
    t.add_argument(
        "--resume",
        default=None,
        metavar="RUN_DIR",
        help="continue a stopped run with its stored options (--epochs N > its epochs extends it)",
    )
    return t


_NOT_TYPED = object()
# Flags of `train` that name no TrainConfig field, and the one whose field has another name.
_NOT_FIELDS = {"overwrite", "no_progress", "run_dir", "resume", "command"}


def _typed_changes(args: argparse.Namespace) -> dict[str, Any]:
    """The TrainConfig fields set by flags typed on the command line (not by their defaults):
    what a resume must check against the stored config."""
    argv = list(args.argv)
    namespace = argparse.Namespace(**{k: _NOT_TYPED for k in vars(args)})
    parser = _train_arguments(_Parser(prog="cacr-lab train"))
    typed = vars(parser.parse_args(argv[argv.index("train") + 1 :], namespace=namespace))
    changes: dict[str, Any] = {}
    for dest, value in typed.items():
        if value is _NOT_TYPED or value is None or dest in _NOT_FIELDS or dest == "argv":
            continue
        if dest.startswith("loss_"):
            changes.setdefault("loss_options", {})[dest[5:]] = value
        elif dest == "no_amp":
            changes["amp"] = not value
        elif dest == "imbalance":
            changes[dest] = None if value == "none" else value
        else:
            changes[dest] = value
    return changes


def config_from_args(args: argparse.Namespace, method: str, seed: int) -> TrainConfig:
    """A validated TrainConfig from parsed flags (ValueError names a bad value)."""
    return TrainConfig(
        **_shared_fields(args),
        method=method,
        seed=seed,
        loss_options=_loss_flags(args, method),
    )


def _loss_flags(args: argparse.Namespace, method: str) -> dict[str, Any]:
    """The loss options given as flags; ValueError names a flag that ``method`` does not take."""
    given = {k[5:]: v for k, v in vars(args).items() if k.startswith("loss_") and v is not None}
    valid = loss_options(method)
    wrong = sorted(set(given) - set(valid))
    if wrong:
        flags = ", ".join("--" + w.replace("_", "-") for w in wrong)
        raise ValueError(
            f"{flags} do(es) not apply to method {method!r}; its options are "
            f"{', '.join('--' + v.replace('_', '-') for v in valid)}"
        )
    return given


def _shared_fields(args: argparse.Namespace) -> dict[str, Any]:
    """The TrainConfig fields of the training flags, but method, seed and loss options."""
    return dict(
        dataset=args.dataset,
        positives=args.positives,
        encoder=args.encoder,
        batch_size=args.batch_size,
        epochs=args.epochs,
        lr=args.lr,
        schedule=args.schedule,
        imbalance=args.imbalance,
        imbalance_seed=args.imbalance_seed,
        device=args.device,
        amp=not args.no_amp,
        compile=args.compile,
        view_batching=args.view_batching,
        sync_bn=args.sync_bn,
        moco_momentum=args.moco_momentum,
        moco_momentum_schedule=args.moco_momentum_schedule,
        moco_local_crops=args.moco_local_crops,
        moco_multicrop=args.moco_multicrop,
        data_root=args.data_root,
        download=args.download,
        log_every=args.log_every,
        eval_every=args.eval_every,
        eval_every_steps=args.eval_every_steps,
        snapshot_size=args.snapshot_size,
        checkpoint_every=args.checkpoint_every,
        max_steps=args.max_steps,
    )


# --------------------------------------------------------------------------------------------
# Commands
# --------------------------------------------------------------------------------------------


def cmd_train(args: argparse.Namespace) -> int:
    from cacr_lab.runs import new_run_name, read_status
    from cacr_lab.train import resume_config, stop_requests, train
    from cacr_lab.train.resume import nothing_left

    if args.resume:
        if args.run_dir or args.overwrite:
            raise ValueError("--resume continues a run in its folder: drop --run-dir, --overwrite")
        run_dir = Path(args.resume)
        if not run_dir.is_dir():
            raise ValueError(f"--resume {run_dir}: no such run directory")
        # The stored config, changed only by typed flags that may change it (checked here,
        # before anything is written).
        config = resume_config(run_dir, _typed_changes(args))
        note = nothing_left(run_dir, config)
        if note is not None:
            print(note, file=sys.stderr)
            return 0
    else:
        config = config_from_args(args, args.method, args.seed)
        run_dir = (
            Path(args.run_dir)
            if args.run_dir
            else runs_root() / new_run_name(args.method, args.dataset)
        )
    with stop_requests() as stop:
        train(
            config,
            run_dir,
            resume=bool(args.resume),
            overwrite=args.overwrite,
            progress=not args.no_progress,
        )
    status = read_status(run_dir)
    if stop.requested and status.get("state") == "stopped":
        print(
            f"stopped by {stop.name} at step {status.get('step')}, checkpoint written; "
            f"continue with: cacr-lab train --resume {run_dir}",
            file=sys.stderr,
        )
        return 128 + int(stop.signal)
    if args.no_progress and status.get("state") == "finished":
        # The progress bar's closing line, for scripts and logs that turned the bar off.
        print(_summary(run_dir))
    return 0


def _summary(run_dir: Path) -> str:
    """One line: the run's final kNN and probe accuracy, and where it is."""
    from cacr_lab.runs import load_run

    final = load_run(run_dir).eval_records()[-1]
    probe = final.get("probe_acc")
    shown = "n/a" if probe is None else f"{probe:.3f}"
    return f"kNN {final['knn_acc']:.3f}  probe {shown}  -> {run_dir}"


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
    print(f"evaluated on: {r['eval_split']}")
    print("per-class accuracy of the linear probe (evaluation split):")
    for name, a in zip(r["classes"], r["per_class_acc"]):
        print(f"  {name:>12}: {a:.4f}")
    return 0


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
    for method in methods:  # every method's flags checked first, so that an error names a flag
        config_from_args(args, method, seed=0)
    base = _shared_fields(args) | {"loss_options": _loss_flags(args, methods[0])}
    out = compare(
        methods,
        seeds=args.seeds,
        out=args.out,
        base_config=base,
        overwrite=args.overwrite,
        progress=not args.no_progress,
    )
    print((out / "report.md").read_text())
    return 0


_STUDY_NOT_FIELDS = {"preset", "methods", "profiles", "seeds", "out", "overwrite", "no_progress"}


def cmd_study(args: argparse.Namespace) -> int:
    from cacr_lab.study import study

    overrides: dict[str, Any] = {}
    for dest, value in vars(args).items():
        if value is None or dest in _STUDY_NOT_FIELDS or dest in ("command", "argv"):
            continue
        if dest == "imbalance":
            raise ValueError("--imbalance does not apply to study: use --profiles")
        if dest.startswith("loss_"):
            overrides.setdefault("loss_options", {})[dest[5:]] = value
        elif dest == "no_amp":
            overrides["amp"] = False
        else:
            overrides[dest] = value
    out = study(
        args.preset,
        out=args.out,
        methods=args.methods,
        profiles=args.profiles,
        seeds=args.seeds,
        overrides=overrides,
        overwrite=bool(args.overwrite),
        progress=not args.no_progress,
    )
    print((out / "report.md").read_text())
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    args.argv = argv  # which flags were typed: a resume refuses those that change the run
    command = {"train": cmd_train, "eval": cmd_eval, "compare": cmd_compare, "study": cmd_study}[
        args.command
    ]
    from cacr_lab.train import NonFiniteLossError, error_line
    from cacr_lab.train.guards import StudyStopped

    try:
        return command(args)
    except (ValueError, FileNotFoundError, FileExistsError) as exc:
        print(f"error: {error_line(exc)}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except StudyStopped as exc:
        print(f"stopped: {exc}", file=sys.stderr)
        return 128 + exc.signal
    except (NonFiniteLossError, OSError) as exc:  # OSError: disk full, read-only folder, ...
        print(f"error: {error_line(exc)}", file=sys.stderr)
        return EXIT_FAILED
    except RuntimeError as exc:  # e.g. torchvision's own errors, CUDA out of memory
        print(f"error: {error_line(exc)}", file=sys.stderr)
        return EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
