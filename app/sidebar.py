"""Starting and stopping runs: the new-run form in the sidebar, and the run list with Stop.

The form's choices and defaults come from :mod:`cacr_lab.config` (TrainConfig's fields, the
paper's loss options); its input is checked by the library's own validation (TrainConfig, the run
name rules, an image folder under the data roots), so the page shows the library's messages.
Start launches ``python -m cacr_lab train ...`` as a process of its own (the page never trains);
the run list shows every run folder of the runs root with its state, Stop for those running,
Dismiss for a start that failed, and one warning box per damaged run.
"""

import sys
from pathlib import Path

import streamlit as st

from cacr_lab import runs
from cacr_lab.config import (
    COSTS,
    IMBALANCE_PROFILES,
    LOSSES,
    MULTIVIEW_FORMS,
    OPTION_HELP,
    PRESETS,
    WEIGHT_GRADS,
    WEIGHTINGS,
    TrainConfig,
    check_image_folder,
    default,
    image_folder_roots,
    paper_loss_options,
)

# isort: split
from state import dismiss, launched, overview  # the page's own module, next to this file

# The trainer runs a little below the page's priority: on a 2-core laptop the page stays
# responsive, and training still gets every idle cycle. A classroom run starts at the page's
# own priority: on a machine busy with other work, nice 5 left it a quarter of a core and missed
# its 2-minute target (benchmarks/bench_app.py).
TRAINER_NICE = 5
CLASSROOM_NICE = 0
CLASSROOM = PRESETS["classroom"]
CHOICES = {
    "weighting": WEIGHTINGS,
    "weight_grad": WEIGHT_GRADS,
    "cost": COSTS,
    "multiview": MULTIVIEW_FORMS,
}
DATASET_LABELS = {
    "digits": "digits (embedded, 8×8 → 16×16)",
    "cifar10": "CIFAR-10",
    "cifar100": "CIFAR-100",
    "stl10": "STL-10",
    "folder": "image folder…",
}
# torchvision's folder of each dataset under the data root: a dataset is offered once present.
TORCHVISION_FOLDERS = {
    "cifar10": "cifar-10-batches-py",
    "cifar100": "cifar-100-python",
    "stl10": "stl10_binary",
}
DATA_ROOT = default("data_root")
# Image folders typed on the page must lie under the repo's data/ (or $CACR_LAB_DATA_DIRS).
REPO_DATA = Path(__file__).resolve().parents[1] / "data"
MAX_WARNINGS = 3  # lines of one damaged run's warning box
STATE_ICONS = {
    "starting": ":green[:material/hourglass_top:]",
    "running": ":green[:material/play_circle:]",
    "finished": ":blue[:material/check_circle:]",
    "stopped": ":gray[:material/stop_circle:]",
    "failed": ":red[:material/error:]",
    "stale": ":orange[:material/warning:]",
    "unknown": ":orange[:material/help:]",
}


# --------------------------------------------------------------------------------------------
# Sidebar: a new run
# --------------------------------------------------------------------------------------------


def available_datasets() -> list[str]:
    """digits always; torchvision sets whose files are under the data root; an image folder."""
    found = [n for n, f in TORCHVISION_FOLDERS.items() if (Path(DATA_ROOT) / f).is_dir()]
    return ["digits", *found, "folder"]


def dataset_input() -> str:
    choice = st.selectbox(
        "Dataset",
        available_datasets(),
        format_func=DATASET_LABELS.get,
        key="dataset",
        help=f"CIFAR-10/100 and STL-10 appear once their torchvision files are under "
        f"{DATA_ROOT}/ (see the README).",
    )
    if choice != "folder":
        return choice
    roots = ", ".join(f"`{r}`" for r in image_folder_roots(REPO_DATA))
    path = st.text_input(
        "Image folder (PATH/<class>/<image>, or PATH/train/ + PATH/test/)",
        key="folder_path",
        help=f"under {roots} (more: $CACR_LAB_DATA_DIRS). `PATH/train/<class>/<image>` and "
        "`PATH/test/<class>/<image>`: trains on train/, evaluates on test/; a flat "
        "`PATH/<class>/<image>`: evaluates on a held-out 10 % of it (stratified, the run's seed).",
    )
    return f"folder:{path}"


def option_input(method: str, name: str, paper: object) -> object:
    """One loss option's widget, starting at the paper's value; returns the value (unvalidated)."""
    key, help_ = f"opt_{method}_{name}_{paper}", OPTION_HELP.get(name)
    if name in CHOICES:
        return st.selectbox(
            name, CHOICES[name], index=CHOICES[name].index(paper), key=key, help=help_
        )
    if isinstance(paper, bool):
        return st.checkbox(name, value=paper, key=key, help=help_)
    if paper is None or isinstance(paper, str):  # an optional number: empty means off
        text = st.text_input(
            name, value="" if paper is None else paper, key=key, help=f"{help_} — empty: off"
        )
        return text.strip() or None
    return st.number_input(name, value=float(paper), step=0.1, format="%.4g", key=key, help=help_)


def device_choices() -> list[str]:
    import torch

    n = torch.cuda.device_count() if torch.cuda.is_available() else 0
    return ["auto", "cpu", *(["cuda"] if n else []), *(f"cuda:{i}" for i in range(n * (n > 1)))]


def classroom_input() -> dict:
    """The classroom-mode switch; returns the preset's TrainConfig overrides (empty when off)."""
    on = st.toggle(
        "Classroom mode",
        key="classroom",
        help=f"a short digits run for a room: {CLASSROOM['epochs']} epochs, a snapshot every "
        f"{CLASSROOM['eval_every_steps']} steps, a {CLASSROOM['snapshot_size']}-image UMAP "
        "sample, the trainer at the page's priority (cacr_lab.config.PRESETS)",
    )
    return dict(CLASSROOM) if on else {}


def new_run_form(slots: dict | None = None) -> tuple[dict, str]:
    """Draw the new-run widgets; return (TrainConfig keyword arguments, run name as typed).

    Every default is TrainConfig's (``cacr_lab.config.default``), or classroom mode's
    (``cacr_lab.config.PRESETS``); the loss options start at the paper's. ``slots`` gets an
    empty placeholder under each field, by TrainConfig field name, for that field's error.
    """
    slots = {} if slots is None else slots
    preset = classroom_input()
    # A preset's fields get keys of their own, so switching it on or off resets them.
    tag = "_classroom" if preset else ""

    def given(name: str) -> object:
        return preset.get(name, default(name))

    if preset:
        dataset = preset["dataset"]
        st.caption(f"Dataset: {DATASET_LABELS[dataset]}")
    else:
        dataset = dataset_input()
    slots["dataset"] = slots["folder"] = st.empty()
    method = st.selectbox(
        "Method", list(LOSSES), key="method", help="cacr, or a baseline of the paper's tables"
    )
    defaults = paper_loss_options(method, dataset)
    with st.expander(f"{method} options (paper defaults)", expanded=True):
        loss_options = {}
        for n, d in defaults.items():
            loss_options[n] = option_input(method, n, d)
            slots[n] = st.empty()
    positives = st.number_input(
        "Positives per image K (V = K + 1 views)",
        value=default("positives"),
        step=1,
        key="positives",
    )
    slots["positives"] = st.empty()
    batch_size = st.number_input(
        "Batch size", value=given("batch_size"), step=16, key=f"batch_size{tag}"
    )
    slots["batch_size"] = st.empty()
    epochs = st.number_input("Epochs", value=given("epochs"), step=1, key=f"epochs{tag}")
    slots["epochs"] = st.empty()
    profiles = [p or "none" for p in IMBALANCE_PROFILES]
    imbalance = st.selectbox(
        "Imbalance profile",
        profiles,
        index=profiles.index(default("imbalance") or "none"),
        key="imbalance",
        help="pre-training set only (docs/method.md §9)",
    )
    seed = st.number_input("Seed", value=default("seed"), step=1, key="seed")
    slots["seed"] = st.empty()
    devices = device_choices()
    device = st.selectbox("Device", devices, index=devices.index(default("device")), key="device")
    with st.expander("Logging"):
        log_every = st.number_input(
            "Log every N steps",
            value=1 if dataset == "digits" else default("log_every"),
            step=1,
            key=f"log_every_{dataset}",
        )
        slots["log_every"] = st.empty()
        eval_every = st.number_input(
            "Evaluate + snapshot every N epochs",
            value=default("eval_every"),
            step=1,
            key="eval_every",
        )
        slots["eval_every"] = st.empty()
        eval_every_steps = st.number_input(
            "… or every N steps (0: by epochs)",
            value=given("eval_every_steps"),
            step=1,
            key=f"eval_every_steps{tag}",
        )
        slots["eval_every_steps"] = st.empty()
        snapshot_size = st.number_input(
            "UMAP sample (held-out images per snapshot)",
            value=given("snapshot_size"),
            step=64,
            key=f"snapshot_size{tag}",
        )
        slots["snapshot_size"] = st.empty()
    name = st.text_input("Run name (empty: method-dataset-time)", key="run_name")
    slots["run_name"] = st.empty()
    kwargs = dict(
        dataset=dataset,
        method=method,
        loss_options=loss_options,
        positives=int(positives),
        batch_size=int(batch_size),
        epochs=int(epochs),
        imbalance=imbalance,
        seed=int(seed),
        device=device,
        log_every=int(log_every),
        eval_every=int(eval_every),
        eval_every_steps=int(eval_every_steps),
        snapshot_size=int(snapshot_size),
    )
    return kwargs, name


def number(text: object, name: str) -> object:
    """A text option as a float (None and non-text pass through), or ValueError quoting it."""
    if not isinstance(text, str):
        return text
    try:
        return float(text)
    except ValueError:
        raise ValueError(f"{name} must be a number or empty, got {text!r}") from None


def validated(kwargs: dict, name: str, root: Path) -> tuple[TrainConfig, Path]:
    """The library's own checks (TrainConfig, run-name rules); ValueError with its message."""
    options = {k: v if k in CHOICES else number(v, k) for k, v in kwargs["loss_options"].items()}
    if kwargs["dataset"].startswith("folder:"):  # never a folder outside the data roots
        folder = check_image_folder(kwargs["dataset"][7:], image_folder_roots(REPO_DATA))
        kwargs = kwargs | {"dataset": f"folder:{folder}"}
    config = TrainConfig(**(kwargs | {"loss_options": options}))
    slug = "folder" if config.dataset.startswith("folder:") else config.dataset
    name = name.strip() or runs.new_run_name(config.method, slug)
    path = runs.run_path(root, name)  # sanitised: never a path outside the runs folder
    if path.exists():
        raise ValueError(f"a run named {path.name!r} already exists; choose another name")
    return config, path


def field_named(message: str, slots: dict) -> str:
    """The form field an error message is about: the field name it starts with (the library's
    messages do: "batch_size must be ..."), the run name or the image folder; else "top"."""
    first = message.split(maxsplit=1)[0].rstrip(":=,") if message.strip() else ""
    first = first.split("=")[0]
    if first in slots:
        return first
    if "run name" in message or message.startswith("a run named"):
        return "run_name"
    if "image folder" in message:
        return "folder"
    return "top"


def train_command(config: TrainConfig, run_dir: Path) -> list[str]:
    """The CLI call that trains ``config`` into ``run_dir`` (flags of ``cacr-lab train``)."""
    argv = [sys.executable, "-m", "cacr_lab", "train", "--run-dir", str(run_dir), "--no-progress"]
    flags = {
        "dataset": config.dataset,
        "method": config.method,
        "positives": config.positives,
        "batch-size": config.batch_size,
        "epochs": config.epochs,
        "imbalance": config.imbalance or "none",
        "seed": config.seed,
        "device": config.device,
        "log-every": config.log_every,
        "eval-every": config.eval_every,
        "eval-every-steps": config.eval_every_steps,
        "snapshot-size": config.snapshot_size,
        "data-root": config.data_root,
    }
    flags |= {k.replace("_", "-"): v for k, v in config.loss_options.items() if v is not None}
    for flag, value in flags.items():
        argv += [f"--{flag}", str(value).lower() if isinstance(value, bool) else str(value)]
    return argv


def start(config: TrainConfig, path: Path, nice: int = TRAINER_NICE) -> None:
    """Launch the trainer, watch its run, and redraw the page with the run-name field cleared.

    Handled in the script run the click causes (not in an on_click callback), so the options
    used are exactly those the browser sent with the click.
    """
    # Only the cores idle right now: on a busy laptop a trainer with a thread per core slows
    # itself and the other work down several times over (runs.spare_cores says why).
    threads = runs.spare_cores()
    proc = runs.start_process(path, train_command(config, path), nice=nice, threads=threads)
    launched()[str(path)] = proc
    st.session_state.update(watch=path.name, live=True, clear_name=True)
    st.rerun()


def sidebar(root: Path) -> None:
    """The new-run form, its validation message (under the field it names), and Start."""
    if st.session_state.clear_name:  # before the field exists in this run
        st.session_state.update(run_name="", clear_name=False)
    with st.sidebar:
        st.header("New run")
        slots = {"top": st.empty()}
        kwargs, name = new_run_form(slots)
        try:
            config, path = validated(kwargs, name, root)
        except ValueError as err:
            slots[field_named(str(err), slots)].error(f"Cannot start: {err}")
            config = path = None
        disabled = config is None
        if st.button("Start", type="primary", disabled=disabled, key="start", width="stretch"):
            classroom = bool(st.session_state.get("classroom"))
            start(config, path, CLASSROOM_NICE if classroom else TRAINER_NICE)
        st.caption(f"Runs folder: `{root.resolve()}`")


# --------------------------------------------------------------------------------------------
# Run list: a status line per run, Stop
# --------------------------------------------------------------------------------------------


def status_row(icon_state: str, text: str, key: str | None, label: str = "Stop") -> bool:
    """One status line with an optional button (Stop, Dismiss); True when it was pressed."""
    left, right = st.columns([0.86, 0.14], vertical_alignment="center")
    left.markdown(f"{STATE_ICONS.get(icon_state, STATE_ICONS['unknown'])} {text}")
    return key is not None and right.button(label, key=key)


def warning_box(run: runs.Run) -> str:
    """One box for all of a damaged run's warnings: the first few, and how many more."""
    lines = [f"{run.name}: {w}" for w in run.warnings[:MAX_WARNINGS]]
    more = len(run.warnings) - MAX_WARNINGS
    if more > 0:
        lines.append(f"… and {more} more warning{'s' * (more > 1)} like these")
    return "  \n".join(lines)


def run_list(root: Path) -> None:
    """Fragment: every run (newest first), a warning per damaged run, Stop for running ones."""
    found, waiting, states = overview(root)
    if states != st.session_state.seen:  # a run appeared, started or ended: redraw the page
        st.session_state.seen = states
        st.rerun()
    if not found and not waiting:
        st.info(
            "No runs yet: choose options in the sidebar and press **Start**, or train from "
            "the CLI (`python -m cacr_lab train`) — runs appear here."
        )
        return
    for name, (state, text) in waiting.items():
        if state == "starting":
            if status_row(state, f"**{name}** · {text}", f"stop_{name}"):
                launched()[str((root / name).resolve())].terminate()
        elif status_row(state, f"**{name}** · {text}", f"dismiss_{name}", "Dismiss"):
            dismiss(root / name)
            st.rerun(scope="app")
    for run in reversed(found):
        state = runs.run_state(run)
        text = f"**{run.name}** · `{run.method}` · {runs.describe_status(run)}"
        if status_row(state, text, f"stop_{run.name}" if state == "running" else None):
            runs.stop_run(run.path)
            st.toast(f"Stop requested for {run.name}")
        if run.warnings:
            st.warning(warning_box(run), icon=":material/warning:")
