"""tokendyn: the mean-field theory of transformers, runnable.

Tokens are particles, depth is time, self-attention is the interaction. `import tokendyn as td`
gives the public API listed in `__all__`; everything else (modules and names with a leading
underscore, and any name not listed here) is internal and may change without notice.

The names are loaded on first use, so `import tokendyn` stays cheap (no torch or xarray until a
name that needs them is touched).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from tokendyn._version import __version__

# public name → module that defines it (a subpackage where the name is the subpackage itself)
_PUBLIC: dict[str, str] = {
    # integrating a cloud
    "simulate": "tokendyn.app.simulate",
    "integrate": "tokendyn.engine.integrate",
    "Frame": "tokendyn.engine.integrate",
    # spaces and initial clouds
    "Space": "tokendyn.engine.space",
    "Sphere": "tokendyn.engine.space",
    "Euclidean": "tokendyn.engine.space",
    "get_space": "tokendyn.engine.space",
    "uniform_sphere": "tokendyn.engine.initial",
    "gaussian_cloud": "tokendyn.engine.initial",
    "wrapped_normal_mixture": "tokendyn.engine.initial",
    "beta_from_law": "tokendyn.engine.initial",
    # attention variants (velocity fields)
    "Head": "tokendyn.engine.attention",
    "AttentionField": "tokendyn.engine.attention",
    "SoftmaxAttention": "tokendyn.engine.attention",
    "L2Attention": "tokendyn.engine.attention",
    "SinkhornAttention": "tokendyn.engine.attention",
    "SigmoidAttention": "tokendyn.engine.attention",
    "split_heads": "tokendyn.engine.attention",
    # kernel backends
    "Backend": "tokendyn.engine.kernels",
    "DenseBackend": "tokendyn.engine.kernels",
    "TiledBackend": "tokendyn.engine.kernels",
    "SdpaBackend": "tokendyn.engine.kernels",
    "get_backend": "tokendyn.engine.kernels",
    "BACKENDS": "tokendyn.engine.kernels",
    # whole transformer blocks
    "Block": "tokendyn.engine.blocks",
    "Layer": "tokendyn.engine.blocks",
    "LayerSchedule": "tokendyn.engine.blocks",
    "ResampledSchedule": "tokendyn.engine.blocks",
    "Norm": "tokendyn.engine.blocks",
    "MLP": "tokendyn.engine.blocks",
    "PositionalAttention": "tokendyn.engine.blocks",
    "draw_qkv": "tokendyn.engine.blocks",
    "retrieval_profile": "tokendyn.engine.retrieval",
    # real pretrained models (optional extra tokendyn[models])
    "models": "tokendyn.models",
    # observables
    "cluster_count": "tokendyn.engine.observables",
    "cluster_labels": "tokendyn.engine.observables",
    "effective_dimension": "tokendyn.engine.observables",
    "interaction_energy": "tokendyn.engine.observables",
    "log_interaction_energy": "tokendyn.engine.observables",
    "log_attention_energy": "tokendyn.engine.observables",
    "gram_histogram": "tokendyn.engine.observables",
    "mean_and_covariance": "tokendyn.engine.observables",
    "wasserstein": "tokendyn.engine.observables",
    "sliced_wasserstein": "tokendyn.engine.observables",
    "bures_wasserstein": "tokendyn.engine.observables",
    # mean-field theory
    "GaussianClosure": "tokendyn.theory",
    "make_closure": "tokendyn.theory",
    "solve_closure": "tokendyn.theory",
    "dmft": "tokendyn.theory.dmft",
    "icl": "tokendyn.theory.icl",
    "multiscale": "tokendyn.theory.multiscale",
    # runs, stores and sweeps
    "SimulationConfig": "tokendyn.app.config",
    "make_config": "tokendyn.app.config",
    "load_config": "tokendyn.app.config",
    "run_simulation": "tokendyn.app.run",
    "open_run": "tokendyn.app.store",
    "Sweep": "tokendyn.app.sweep",
    "run_sweep": "tokendyn.app.sweep",
    "open_sweep": "tokendyn.app.sweep",
    # errors
    "TokendynError": "tokendyn.errors",
    "ConfigError": "tokendyn.errors",
    "StoreError": "tokendyn.errors",
    "NonFiniteStateError": "tokendyn.errors",
}

# public names that are modules themselves (the theory packages)
_SUBPACKAGES = {"dmft", "icl", "models", "multiscale"}

__all__ = [
    "BACKENDS",
    "MLP",
    "AttentionField",
    "Backend",
    "Block",
    "ConfigError",
    "DenseBackend",
    "Euclidean",
    "Frame",
    "GaussianClosure",
    "Head",
    "L2Attention",
    "Layer",
    "LayerSchedule",
    "NonFiniteStateError",
    "Norm",
    "PositionalAttention",
    "ResampledSchedule",
    "SdpaBackend",
    "SigmoidAttention",
    "SimulationConfig",
    "SinkhornAttention",
    "SoftmaxAttention",
    "Space",
    "Sphere",
    "StoreError",
    "Sweep",
    "TiledBackend",
    "TokendynError",
    "__version__",
    "beta_from_law",
    "bures_wasserstein",
    "cluster_count",
    "cluster_labels",
    "dmft",
    "draw_qkv",
    "effective_dimension",
    "gaussian_cloud",
    "get_backend",
    "get_space",
    "gram_histogram",
    "icl",
    "integrate",
    "interaction_energy",
    "load_config",
    "log_attention_energy",
    "log_interaction_energy",
    "make_closure",
    "make_config",
    "mean_and_covariance",
    "models",
    "multiscale",
    "open_run",
    "open_sweep",
    "retrieval_profile",
    "run_simulation",
    "run_sweep",
    "simulate",
    "sliced_wasserstein",
    "solve_closure",
    "split_heads",
    "uniform_sphere",
    "wasserstein",
    "wrapped_normal_mixture",
]


def __getattr__(name: str) -> Any:
    module = _PUBLIC.get(name)
    if module is None:
        raise AttributeError(f"module 'tokendyn' has no attribute {name!r}")
    if name in _SUBPACKAGES:
        value = importlib.import_module(module)
    else:
        value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)


if TYPE_CHECKING:  # what static tools (IDEs, type checkers, the API docs) read
    from tokendyn.app.config import SimulationConfig, load_config, make_config
    from tokendyn.app.run import run_simulation
    from tokendyn.app.simulate import simulate
    from tokendyn.app.store import open_run
    from tokendyn.app.sweep import Sweep, open_sweep, run_sweep
    from tokendyn.engine.attention import (
        AttentionField,
        Head,
        L2Attention,
        SigmoidAttention,
        SinkhornAttention,
        SoftmaxAttention,
        split_heads,
    )
    from tokendyn.engine.blocks import (
        MLP,
        Block,
        Layer,
        LayerSchedule,
        Norm,
        PositionalAttention,
        ResampledSchedule,
        draw_qkv,
    )
    from tokendyn.engine.initial import (
        beta_from_law,
        gaussian_cloud,
        uniform_sphere,
        wrapped_normal_mixture,
    )
    from tokendyn.engine.integrate import Frame, integrate
    from tokendyn.engine.kernels import (
        BACKENDS,
        Backend,
        DenseBackend,
        SdpaBackend,
        TiledBackend,
        get_backend,
    )
    from tokendyn.engine.observables import (
        bures_wasserstein,
        cluster_count,
        cluster_labels,
        effective_dimension,
        gram_histogram,
        interaction_energy,
        log_attention_energy,
        log_interaction_energy,
        mean_and_covariance,
        sliced_wasserstein,
        wasserstein,
    )
    from tokendyn.engine.retrieval import retrieval_profile
    from tokendyn.engine.space import Euclidean, Space, Sphere, get_space
    from tokendyn.errors import ConfigError, NonFiniteStateError, StoreError, TokendynError
    from tokendyn.theory import GaussianClosure, dmft, icl, make_closure, multiscale, solve_closure
