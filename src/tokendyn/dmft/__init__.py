"""Dynamical mean-field theory of 1-bit self-attention (spec seed000_dmft.md): the finite-N
network (per-spin and block-binomial Glauber samplers), its exact large-N map (general and block
forms), Lyapunov spectra, bifurcation diagrams and finite-N comparisons."""

from .analysis import autocorrelation, detect_period, distinct_counts, power_spectrum
from .bifurcation import sweep
from .dynamics import Core, WindowState
from .finite import deviation, finite_stats
from .lyapunov import LyapunovResult, lyapunov, regime
from .meanfield import MeanFieldMap
from .model import Model, Params, Weights, block_weights, paper_model, seed1_weights
from .runs import lyapunov_summary, record
from .sampler import FiniteSampler
from .starts import start_state, stored_start, x0_start

__all__ = [
    "Core",
    "FiniteSampler",
    "LyapunovResult",
    "MeanFieldMap",
    "Model",
    "Params",
    "Weights",
    "WindowState",
    "autocorrelation",
    "block_weights",
    "detect_period",
    "deviation",
    "distinct_counts",
    "finite_stats",
    "lyapunov",
    "lyapunov_summary",
    "paper_model",
    "power_spectrum",
    "record",
    "regime",
    "seed1_weights",
    "start_state",
    "stored_start",
    "sweep",
    "x0_start",
]
