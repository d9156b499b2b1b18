"""Datasets, augmented views and imbalanced subsets for the CACR lab (see `datasets`)."""

from .datasets import *  # noqa: F403 - the module's __all__
from .datasets import __all__  # noqa: F401
