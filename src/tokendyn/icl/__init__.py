"""In-context regression with hierarchical (tree) and Gaussian latents: tasks, constrained
linear-attention models, mean-field adaptive-inference theory and baselines (spec seed003_icl)."""

from .priors import GaussianPrior, MixturePrior, TreePrior, make_prior
from .settings import SETTINGS, ICLSetting, get_setting

__all__ = [
    "SETTINGS",
    "GaussianPrior",
    "ICLSetting",
    "MixturePrior",
    "TreePrior",
    "get_setting",
    "make_prior",
]
