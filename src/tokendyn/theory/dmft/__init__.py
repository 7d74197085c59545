"""Dynamical mean-field theory of 1-bit self-attention (spec seed000_dmft.md): the finite-N
network (per-spin and block-binomial Glauber samplers), its exact large-N map (general and block
forms), Lyapunov spectra, bifurcation diagrams and finite-N comparisons."""

from tokendyn.theory.dmft.analysis import (
    autocorrelation,
    detect_period,
    distinct_counts,
    power_spectrum,
)
from tokendyn.theory.dmft.bifurcation import sweep
from tokendyn.theory.dmft.dynamics import Core, WindowState
from tokendyn.theory.dmft.finite import deviation, finite_stats
from tokendyn.theory.dmft.lyapunov import LyapunovResult, lyapunov, regime
from tokendyn.theory.dmft.meanfield import MeanFieldMap
from tokendyn.theory.dmft.model import (
    Model,
    Params,
    Weights,
    block_weights,
    paper_model,
    seed1_weights,
)
from tokendyn.theory.dmft.runs import lyapunov_summary, record
from tokendyn.theory.dmft.sampler import FiniteSampler
from tokendyn.theory.dmft.starts import start_state, stored_start, x0_start

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
