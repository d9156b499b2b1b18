"""cacr_lab: a hands-on lab for CACR contrastive representation learning.

CACR (Contrastive Attraction and Contrastive Repulsion; Zheng et al., TMLR 2023,
arXiv:2105.03746) weights each query's positives and negatives by a softmax of their distances:
far positives are pulled harder, near negatives pushed harder.
"""

__version__ = "0.1.0"  # before the imports: runs.py reads it while cacr_lab is importing

from cacr_lab.data import DataSplits, ImageData, load_dataset, make_imbalanced, toy_sphere
from cacr_lab.evaluate import knn_accuracy, linear_probe, weight_stats
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
    moco_cacr_loss,
    uniformity,
)
from cacr_lab.models import build_encoder

__all__ = [
    "DataSplits",
    "ImageData",
    "LOSSES",
    "OPTION_HELP",
    "LossOutput",
    "__version__",
    "align_uniform_loss",
    "alignment",
    "build_encoder",
    "cacr_loss",
    "debiased_loss",
    "hard_negative_loss",
    "info_nce_loss",
    "knn_accuracy",
    "linear_probe",
    "load_dataset",
    "loss_options",
    "make_imbalanced",
    "moco_cacr_loss",
    "toy_sphere",
    "uniformity",
    "weight_stats",
]
