"""cacr_lab: a hands-on lab for CACR contrastive representation learning.

CACR (Contrastive Attraction and Contrastive Repulsion; Zheng et al., TMLR 2023,
arXiv:2105.03746) weights each query's positives and negatives by a softmax of their distances:
far positives are pulled harder, near negatives pushed harder.
"""

from cacr_lab.losses import (
    LOSSES,
    OPTION_HELP,
    LossOutput,
    align_uniform_loss,
    alignment,
    cacr_loss,
    debiased_loss,
    hard_negative_loss,
    info_nce_loss,
    loss_options,
    uniformity,
)

__version__ = "0.1.0"

__all__ = [
    "LOSSES",
    "OPTION_HELP",
    "LossOutput",
    "__version__",
    "align_uniform_loss",
    "alignment",
    "cacr_loss",
    "debiased_loss",
    "hard_negative_loss",
    "info_nce_loss",
    "loss_options",
    "uniformity",
]
