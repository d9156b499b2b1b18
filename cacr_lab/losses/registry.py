"""The registry of losses: one name per method, the options of each, the paper's values.

``LOSSES`` maps the method name used everywhere (CLI ``--method``, ``config.json``, figure
legends) to its loss; ``loss_options`` reads a method's options off its signature,
``OPTION_HELP`` explains each in one line, and ``paper_loss_options`` gives the released values.
``WEIGHTINGS``, ``WEIGHT_GRADS``, ``COSTS`` (CACR's choices), ``MULTIVIEW_FORMS`` (the InfoNCE
family's) and ``PART_NAMES`` (the scalar parts a :class:`LossOutput` may carry) are the
vocabulary the CLI and the dashboard offer.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

from .align_uniform import align_uniform_loss
from .base import PART_NAMES, LossOutput
from .cacr import COSTS, WEIGHT_GRADS, WEIGHTINGS, cacr_loss
from .infonce import MULTIVIEW_FORMS, debiased_loss, hard_negative_loss, info_nce_loss
from .moco import moco_cacr_loss

__all__ = [
    "COSTS",
    "LOSSES",
    "MULTIVIEW_FORMS",
    "OPTION_HELP",
    "PART_NAMES",
    "WEIGHTINGS",
    "WEIGHT_GRADS",
    "LossFn",
    "loss_options",
    "paper_loss_options",
]

LossFn = Callable[..., LossOutput]

# One name per method, used everywhere: registry key, CLI --method, config.json, figure legends.
LOSSES: dict[str, LossFn] = {
    "cacr": cacr_loss,
    "infonce": info_nce_loss,
    "align-uniform": align_uniform_loss,
    "hard-negative": hard_negative_loss,
    "debiased": debiased_loss,
    "moco": moco_cacr_loss,
}

# One line per option, shown by the CLI's --help and the dashboard's sidebar.
OPTION_HELP: dict[str, str] = {
    "tau_pos": "CACR inverse temperature multiplying d2 in pi_pos (paper 1.0)",
    "tau_neg": "CACR inverse temperature multiplying d2 in pi_neg (paper 0.9 CIFAR-10, 2.0 others)",
    "alpha": "CACR scale of the attraction term (paper 1.0)",
    "beta": "scale of CACR's repulsion / HN-CL's hardness concentration (paper 1.0)",
    "weighting": "CACR ablation: full | without_w1 | without_w2 | none",
    "weight_grad": "CACR: attached (reference) or detached softmax weights",
    "cost": "repulsion cost: euclidean (CACR reference) or rbf (MoCo form's default)",
    "rbf_t": "CACR rbf kernel parameter t (default 2.0)",
    "debiased_tau_plus": "CACR Chuang et al. debiasing class prior (off by default; e.g. 0.1)",
    "symmetric": "CACR: negatives from all views in both directions (not the paper's pairing)",
    "temperature": "InfoNCE/MoCo temperature dividing the similarity (SimCLR 0.5; MoCo form: "
    "1.0 ResNet-50, 0.2 ViT)",
    "tau_plus": "class prior of HN-CL / DCL (paper 0.1)",
    "multiview": "InfoNCE/HN-CL/DCL views: pairs (per view pair v<w, both views' negatives, "
    "averaged; SimCLR at V=2) | cmc (CMC full graph: per ordered pair, cross-view negatives "
    "only, summed)",
    "align_alpha": "AU-CL alignment exponent (paper 2)",
    "unif_t": "AU-CL uniformity kernel t (paper 2)",
    "unif_weight": "AU-CL weight of the uniformity term (paper 1)",
}


def loss_options(method: str) -> dict[str, object]:
    """The tunable options of a registered loss with their defaults.

    The MoCo form's ``keys`` and ``multicrop`` are not options: the trainer's moco path sets
    them (``multicrop`` from ``TrainConfig.moco_multicrop``).

    >>> loss_options("infonce"), loss_options("moco")
    ({'temperature': 0.5, 'multiview': 'pairs'}, {'temperature': 1.0, 'cost': 'rbf'})
    """
    if method not in LOSSES:
        raise ValueError(f"unknown method {method!r}; choose one of {', '.join(LOSSES)}")
    sig = inspect.signature(LOSSES[method])
    return {
        name: p.default
        for name, p in sig.parameters.items()
        if name not in ("views", "check_inputs", "keys", "multicrop")
        and p.default is not inspect.Parameter.empty
    }


def paper_loss_options(method: str, dataset: str = "cifar10") -> dict[str, Any]:
    """The released hyper-parameters of a method (docs/method.md §2), else the defaults.

    >>> paper_loss_options("cacr", "cifar100")["tau_neg"]
    2.0
    """
    options = loss_options(method)
    if method == "cacr":
        options.update(tau_pos=1.0, tau_neg=2.0 if dataset in ("cifar100", "stl10") else 0.9)
    return options
