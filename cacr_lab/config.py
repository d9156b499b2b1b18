"""The one source of a run's settings: :class:`TrainConfig`, its defaults and the runs root.

Every default of a pre-training run is a field of :class:`TrainConfig`; the CLI's flags, the
dashboard's form and the notebooks read them from here rather than repeating them. The resolved
config (``TrainConfig.to_dict``) is what ``config.json`` and every checkpoint store.

>>> TrainConfig().positives, TrainConfig(method="infonce").resolved_loss_options()["temperature"]
(4, 0.5)
"""

from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from cacr_lab.data import DATASETS, view_recipe
from cacr_lab.losses import (  # the option choices are re-exported for the CLI and the dashboard
    COSTS,
    LOSSES,
    MULTICROP,
    MULTIVIEW_FORMS,
    OPTION_HELP,
    WEIGHT_GRADS,
    WEIGHTINGS,
    check_choice,
    loss_options,
    paper_loss_options,
)
from cacr_lab.models import ENCODERS, default_encoder

__all__ = [
    "COSTS",
    "DATA_DIRS_ENV",
    "IMBALANCE_PROFILES",
    "LOSSES",
    "MOMENTUM_SCHEDULES",
    "MULTICROP",
    "MULTIVIEW_FORMS",
    "OPTION_HELP",
    "PRESETS",
    "RUNS_DIR",
    "RUNS_ENV",
    "SCHEDULES",
    "VIEW_BATCHING",
    "WEIGHTINGS",
    "WEIGHT_GRADS",
    "TrainConfig",
    "check_image_folder",
    "default",
    "image_folder_roots",
    "paper_loss_options",
    "runs_root",
]

RUNS_ENV = "CACR_LAB_RUNS"  # environment variable naming the runs root
RUNS_DIR = "runs"  # the runs root's default name
DATA_DIRS_ENV = "CACR_LAB_DATA_DIRS"  # more folders the dashboard may read image trees from


def runs_root(base: str | os.PathLike | None = None) -> Path:
    """Where run folders go: ``$CACR_LAB_RUNS`` if set, else ``runs/`` under ``base`` (or cwd).

    The CLI, the notebooks and the dashboard all call this, so a run started in one shows in all.
    """
    env = os.environ.get(RUNS_ENV)
    if env:
        return Path(env)
    return Path(base) / RUNS_DIR if base is not None else Path(RUNS_DIR)


def image_folder_roots(default_root: str | os.PathLike) -> list[Path]:
    """The folders an image folder typed on the dashboard must lie under: ``default_root`` (the
    repo's ``data/``) and those listed in ``$CACR_LAB_DATA_DIRS`` (separated by ``os.pathsep``)."""
    extra = [p for p in os.environ.get(DATA_DIRS_ENV, "").split(os.pathsep) if p.strip()]
    return [Path(p).expanduser().resolve() for p in (default_root, *extra)]


def check_image_folder(path: str, roots: list[Path]) -> Path:
    """``path`` resolved (relative to ``roots[0]``) if it lies under one of ``roots``, else
    ValueError: a page visitor must not make the server read the whole file system.

    >>> check_image_folder("/", [Path("/srv/data")])
    Traceback (most recent call last):
    ...
    ValueError: image folder '/' is outside the folders this page may read (/srv/data); move it there or add its parent to $CACR_LAB_DATA_DIRS
    """  # noqa: E501
    if not path.strip():
        raise ValueError("type the path of an image folder (PATH/<class>/<image>)")
    resolved = (roots[0] / Path(path.strip()).expanduser()).resolve()
    if not any(resolved == root or root in resolved.parents for root in roots):
        raise ValueError(
            f"image folder {path!r} is outside the folders this page may read "
            f"({', '.join(str(r) for r in roots)}); move it there or add its parent to "
            f"${DATA_DIRS_ENV}"
        )
    return resolved


def default(name: str) -> Any:
    """A :class:`TrainConfig` field's default value (``default("epochs") == 20``)."""
    f = TrainConfig.__dataclass_fields__[name]
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return f.default


# Named sets of TrainConfig field overrides; the page's classroom mode reads them here.
# "classroom": a short digits run meant to show its first weight histogram within 10 s and to end
# within 2 minutes on a busy 2-core laptop (benchmarks/bench_app.py measures both): 10 epochs
# of 10 steps, a snapshot every 5 steps, a 256-image UMAP sample, a train record per step.
PRESETS: dict[str, dict[str, Any]] = {
    "classroom": {
        "dataset": "digits",
        "epochs": 10,
        "batch_size": 128,
        "log_every": 1,
        "eval_every_steps": 5,
        "snapshot_size": 256,
    },
}

IMBALANCE_PROFILES = (None, "linear", "exponential")
MOMENTUM_SCHEDULES = ("constant", "cosine")  # moco_momentum_schedule
LOCAL_CROP_ENCODERS = ("resnet18", "small-cnn")  # SmallAlexNet's fc6 fixes its input size
SCHEDULES = ("step", "cosine")
VIEW_BATCHING = ("separate", "joint")


@dataclass
class TrainConfig:
    """Every option of a pre-training run. Validated on construction (ValueError names the value).

    The resolved config (``to_dict``) is written to ``config.json`` and into every checkpoint.
    """

    dataset: str = "digits"  # digits | cifar10 | cifar100 | stl10 | folder:PATH | toy
    method: str = "cacr"  # a key of LOSSES
    loss_options: dict[str, Any] = field(default_factory=dict)  # overrides of the paper defaults
    positives: int = 4  # K positives per query: V = K + 1 views per image (paper: 4)
    encoder: str | None = None  # small-alexnet | resnet18 | small-cnn | mlp; None: by dataset
    feat_dim: int = 128  # projection dimension D (paper: 128)
    batch_size: int = 128  # B images per step (paper: 128)
    epochs: int = 20  # pre-training epochs (paper: 200)
    lr: float | None = None  # None: 0.12 * B / 256 (reference)
    schedule: str = "step"  # step: x0.1 at 155/170/185 of 200 epochs (scaled) | cosine
    momentum: float = 0.9
    weight_decay: float = 1e-4
    imbalance: str | None = None  # None | linear | exponential (docs/method.md §9; not stl10)
    imbalance_seed: int = 0  # which images an imbalanced set keeps
    seed: int = 0  # model init, data order and views
    device: str = "auto"  # auto (CUDA when present) | cpu | cuda | cuda:N
    amp: bool = True  # bf16 autocast on CUDA (losses compute distances in fp32)
    compile: bool = False  # torch.compile the encoder
    channels_last: bool = True  # memory format of images and conv weights
    view_batching: str = "separate"  # separate: one forward per view (reference, BN per view)
    # Method moco (docs/method.md §6): EMA rate of the momentum (key) encoder (authors: 0.99;
    # their ResNet-50 command 0.996 with "cosine": raised toward 1 on a half-cosine over training)
    moco_momentum: float = 0.99
    moco_momentum_schedule: str = "constant"  # constant | cosine
    moco_local_crops: int = 0  # small local crops per image, online branch only (authors: 8 or 0)
    moco_multicrop: str = "light"  # light: local crops only as queries | full: also anchors
    sync_bn: bool = False  # several GPUs: BatchNorm statistics over the global batch (CUDA only)
    data_root: str = "data"  # where torchvision datasets live
    download: bool = False  # let torchvision download (needs network)
    log_every: int = 10  # steps between train records
    eval_every: int = 1  # epochs between evaluations + snapshots (0: only first and last)
    eval_every_steps: int = 0  # steps between evaluations + snapshots; 0: eval_every decides
    checkpoint_every: int = 5  # epochs between kept epoch_NNNN.pt checkpoints
    snapshot_size: int = 512  # held-out images whose embeddings each snapshot stores
    snapshot_queries: int = 64  # queries whose weights each snapshot stores
    max_steps: int | None = None  # stop early (smoke tests); None: epochs * steps_per_epoch
    # neighbours of the weighted kNN; 0: follow the data, min(200, smallest class of the kNN
    # bank // 2) (cacr_lab.evaluate.knn_k_for: 200 on CIFAR-10, 65 on digits; InstDisc: 200)
    knn_k: int = 0
    knn_temperature: float = 0.07  # divides the cosine similarity in the kNN votes (InstDisc: 0.07)

    def __post_init__(self) -> None:
        if not isinstance(self.dataset, str) or not (
            self.dataset in DATASETS or self.dataset.startswith("folder:")
        ):
            raise ValueError(
                f"unknown dataset {self.dataset!r}; choose one of {', '.join(DATASETS)} "
                "or folder:PATH"
            )
        if self.method not in LOSSES:
            raise ValueError(f"unknown method {self.method!r}; choose one of {', '.join(LOSSES)}")
        valid = loss_options(self.method)
        unknown = sorted(set(self.loss_options) - set(valid))
        if unknown:
            raise ValueError(
                f"option(s) {', '.join(unknown)} do not apply to method {self.method!r}; "
                f"its options are {', '.join(valid)}"
            )
        if self.imbalance in ("none", ""):
            self.imbalance = None
        check_choice("imbalance", self.imbalance, IMBALANCE_PROFILES)
        if self.imbalance is not None and self.dataset == "stl10":
            raise ValueError(
                f"imbalance {self.imbalance!r} is not defined for stl10: it pre-trains on "
                "train+unlabeled, and its 100,000 unlabeled images have no class to subsample; "
                "use cifar10, cifar100 or folder:PATH"
            )
        check_choice("schedule", self.schedule, SCHEDULES)
        check_choice("view_batching", self.view_batching, VIEW_BATCHING)
        if self.encoder is None:
            self.encoder = default_encoder(self.dataset)
        check_choice("encoder", self.encoder, ENCODERS)
        _int_at_least("positives", self.positives, 1)
        _int_at_least("batch_size", self.batch_size, 2)
        _int_at_least("epochs", self.epochs, 1)
        _int_at_least("feat_dim", self.feat_dim, 1)
        _int_at_least("log_every", self.log_every, 1)
        _int_at_least("eval_every", self.eval_every, 0)
        _int_at_least("eval_every_steps", self.eval_every_steps, 0)
        _int_at_least("checkpoint_every", self.checkpoint_every, 1)
        _int_at_least("snapshot_size", self.snapshot_size, 2)
        _int_at_least("snapshot_queries", self.snapshot_queries, 1)
        _int_at_least("knn_k", self.knn_k, 0)
        for name in ("seed", "imbalance_seed"):  # before torch.manual_seed sees it
            _int_at_least(name, getattr(self, name), 0)
            if getattr(self, name) > MAX_SEED:
                raise ValueError(f"{name} must be at most 2**63 - 1; got {getattr(self, name)!r}")
        if self.max_steps is not None:
            _int_at_least("max_steps", self.max_steps, 1)
        self._check_moco()
        for name in ("momentum", "weight_decay"):
            v = getattr(self, name)
            if not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
                raise ValueError(f"{name} must be a non-negative number; got {v!r}")
        for name in ("lr", "knn_temperature"):
            v = getattr(self, name)
            if v is not None and (
                not isinstance(v, (int, float)) or not math.isfinite(v) or v <= 0
            ):
                raise ValueError(f"{name} must be a positive number; got {v!r}")
        if not (
            self.device in ("auto", "cpu", "cuda")
            or (self.device.startswith("cuda:") and self.device[5:].isdigit())
        ):
            raise ValueError(f"unknown device {self.device!r}; choose auto, cpu, cuda or cuda:N")
        # Let the loss validate its own options now, not at the first step.
        probe = torch.nn.functional.normalize(torch.randn(2, 2, 3), dim=-1)
        LOSSES[self.method](probe, **self.resolved_loss_options())
        if self.device == "cpu" or (self.device == "auto" and not torch.cuda.is_available()):
            check_step_memory(self, host_memory(), "this machine's memory")

    def _check_moco(self) -> None:
        """The moco fields; local crops need method moco, crop views and a size-free encoder."""
        if not 0.0 <= self.moco_momentum < 1.0:
            raise ValueError(f"moco_momentum must be in [0, 1); got {self.moco_momentum!r}")
        check_choice("moco_momentum_schedule", self.moco_momentum_schedule, MOMENTUM_SCHEDULES)
        check_choice("moco_multicrop", self.moco_multicrop, MULTICROP)
        _int_at_least("moco_local_crops", self.moco_local_crops, 0)
        if not self.moco_local_crops:
            return
        if self.method != "moco":
            raise ValueError(
                f"moco_local_crops={self.moco_local_crops} applies to method 'moco' only; "
                f"got method {self.method!r}"
            )
        if view_recipe(self.dataset).kind != "crop":
            raise ValueError(
                f"moco_local_crops needs cropped views (cifar10, cifar100, stl10, folder:PATH); "
                f"dataset {self.dataset!r} has none"
            )
        if self.encoder not in LOCAL_CROP_ENCODERS:
            raise ValueError(
                f"moco_local_crops needs an encoder that takes any image size "
                f"({', '.join(LOCAL_CROP_ENCODERS)}); {self.encoder!r} takes only its own"
            )

    def resolved_loss_options(self) -> dict[str, Any]:
        """The paper's options for this method and dataset, overridden by ``loss_options``."""
        return {**paper_loss_options(self.method, self.dataset), **self.loss_options}

    @property
    def n_views(self) -> int:
        return self.positives + 1

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["loss_options"] = self.resolved_loss_options()
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


MAX_SEED = 2**63 - 1  # torch.manual_seed's range, from 0
# Bytes one step's loss needs per element of its (P, B, B) distance blocks, P = V(V-1)/2 view
# pairs (measured on CPU: CACR 11-26, InfoNCE-style losses ~100; the fp32 blocks of the distances,
# the weights and their gradients).
LOSS_BYTES_PER_PAIR = {"cacr": 24, "align-uniform": 24, "moco": 48}
DEFAULT_LOSS_BYTES_PER_PAIR = 96


def step_memory(config: TrainConfig) -> int:
    """Bytes one training step's loss needs, estimated from V x B before anything is allocated.

    >>> step_memory(TrainConfig()) / 2**20  # V = 5 views (10 pairs), B = 128: MiB
    3.75
    """
    pairs = config.n_views * (config.n_views - 1) // 2
    per = LOSS_BYTES_PER_PAIR.get(config.method, DEFAULT_LOSS_BYTES_PER_PAIR)
    return per * pairs * config.batch_size**2


def host_memory() -> int | None:
    """This machine's physical memory in bytes (None where the OS does not say)."""
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def check_step_memory(config: TrainConfig, available: int | None, where: str) -> None:
    """ValueError when one step needs more than ``available`` bytes (``where`` names them)."""
    need = step_memory(config)
    if available is not None and need > available:
        raise ValueError(
            f"positives={config.positives} and batch_size={config.batch_size} need about "
            f"{need / 2**30:.1f} GiB for one step's loss ({config.n_views} views: "
            f"{config.n_views * (config.n_views - 1) // 2} view pairs x {config.batch_size}² "
            f"distances), more than {where} ({available / 2**30:.1f} GiB); "
            "lower --positives or --batch-size"
        )


def _int_at_least(name: str, value: Any, low: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"{name} must be an integer >= {low}; got {value!r}")
