"""In-context regression with hierarchical (tree) and Gaussian latents: tasks, constrained
linear-attention models, mean-field adaptive-inference theory and baselines (spec seed003_icl)."""

from tokendyn.theory.icl.priors import GaussianPrior, MixturePrior, TreePrior, make_prior
from tokendyn.theory.icl.settings import SETTINGS, ICLSetting, get_setting

__all__ = [
    "SETTINGS",
    "GaussianPrior",
    "ICLSetting",
    "MixturePrior",
    "TreePrior",
    "get_setting",
    "make_prior",
]
