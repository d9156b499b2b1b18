"""cacr_lab: a hands-on lab for CACR contrastive representation learning.

CACR (Contrastive Attraction and Contrastive Repulsion; Zheng et al., TMLR 2023,
arXiv:2105.03746) weights each query's positives and negatives by a softmax of their distances:
far positives are pulled harder, near negatives pushed harder.

The public names below are loaded on first use (PEP 562), so ``import cacr_lab.runs`` (reading a
run folder, the dashboard's job) does not import torch, and ``from cacr_lab import cacr_loss``
imports only what the loss needs.
"""

from __future__ import annotations

import importlib
from typing import Any

from cacr_lab._version import __version__

# public name -> the module that defines it
_EXPORTS = {
    "DataSplits": "cacr_lab.data",
    "ImageData": "cacr_lab.data",
    "load_dataset": "cacr_lab.data",
    "make_imbalanced": "cacr_lab.data",
    "toy_sphere": "cacr_lab.data",
    "knn_accuracy": "cacr_lab.evaluate",
    "linear_probe": "cacr_lab.evaluate",
    "weight_stats": "cacr_lab.evaluate",
    "LOSSES": "cacr_lab.losses",
    "OPTION_HELP": "cacr_lab.losses",
    "LossOutput": "cacr_lab.losses",
    "align_uniform_loss": "cacr_lab.losses",
    "alignment": "cacr_lab.losses",
    "cacr_loss": "cacr_lab.losses",
    "debiased_loss": "cacr_lab.losses",
    "hard_negative_loss": "cacr_lab.losses",
    "info_nce_loss": "cacr_lab.losses",
    "loss_options": "cacr_lab.losses",
    "moco_cacr_loss": "cacr_lab.losses",
    "uniformity": "cacr_lab.losses",
    "build_encoder": "cacr_lab.models",
    "TrainConfig": "cacr_lab.config",
}

__all__ = ["__version__", *sorted(_EXPORTS)]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value  # the next access is a plain attribute read
        return value
    raise AttributeError(f"module 'cacr_lab' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
