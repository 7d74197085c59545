"""Build the objects of a run from its config: space, attention field, initial cloud.

The engine's errors name its own arguments (`centers`, `cov`, `law`, …); `build`, `make_field` and
`make_space` re-raise them under the config field that set the argument (`ENGINE_FIELDS`), so the
message names what the user wrote in the TOML file or on the command line.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import ParamSpec, TypeVar

import torch

from tokendyn.app.config import SimulationConfig
from tokendyn.engine.attention import VARIANTS, AttentionField, Head, as_matrix, split_heads
from tokendyn.engine.device import resolve_device, resolve_dtype
from tokendyn.engine.initial import gaussian_cloud, uniform_sphere, wrapped_normal_mixture
from tokendyn.engine.space import Space, get_space
from tokendyn.errors import ConfigError

# engine argument → the config field (and CLI flag --field-name) that sets it
ENGINE_FIELDS = {
    "mean": "init_mean",
    "cov": "init_cov",
    "centers": "init_centers",
    "weights": "init_weights",
    "std": "init_std",
    "law": "beta_law",
    "bias": "sigmoid_bias",
    "form": "sigmoid_form",
}

P = ParamSpec("P")
R = TypeVar("R")


def _config_fields(fn: Callable[P, R]) -> Callable[P, R]:
    """Re-raise the engine's ConfigErrors under the config fields of ENGINE_FIELDS."""

    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return fn(*args, **kwargs)
        except ConfigError as err:
            raise err.renamed(ENGINE_FIELDS) from None

    return wrapper


def dtype_of(cfg: SimulationConfig) -> torch.dtype:
    """The run's torch dtype."""
    return resolve_dtype(cfg.dtype)


def device_of(cfg: SimulationConfig) -> torch.device:
    """The run's torch device (ConfigError naming `device` when CUDA is absent)."""
    return resolve_device(cfg.device)


def make_matrices(
    cfg: SimulationConfig, gen: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Q, K, V (float64): explicit ones from the config, else identity or N(0, 1/d) entries."""
    d = cfg.d
    if cfg.qkv == "random":
        drawn = [torch.randn(d, d, generator=gen, dtype=torch.float64) / d**0.5 for _ in range(3)]
    else:
        drawn = [torch.eye(d, dtype=torch.float64) for _ in range(3)]
    Q, K, V = (
        drawn[i] if getattr(cfg, name) is None else as_matrix(getattr(cfg, name), name)
        for i, name in enumerate("QKV")
    )
    return Q, K, V


@_config_fields
def make_field(cfg: SimulationConfig, gen: torch.Generator | None = None) -> AttentionField:
    """The configured attention field (heads from Q, K, V and β; row blocks when H > 1)."""
    gen = gen if gen is not None else torch.Generator().manual_seed(cfg.seed)
    Q, K, V = make_matrices(cfg, gen)
    if cfg.heads == 1:
        heads = [Head(Q, K, V, cfg.beta)]
    else:
        heads = split_heads(Q, K, V, cfg.heads, cfg.beta)
    common = dict(mask=None if cfg.mask == "none" else cfg.mask, backend=cfg.backend)
    cls = VARIANTS[cfg.attention]
    if cfg.attention == "sinkhorn":
        field = cls(heads, tol=cfg.sinkhorn_tol, max_iter=cfg.sinkhorn_max_iter, **common)
    elif cfg.attention == "sigmoid":
        field = cls(heads, bias=cfg.sigmoid_bias, form=cfg.sigmoid_form, **common)
    else:
        field = cls(heads, normalise=cfg.resolved_normalise, **common)
    return field.to(dtype_of(cfg), device_of(cfg))


@_config_fields
def make_space(cfg: SimulationConfig) -> Space:
    """The configured space (initial Gaussians apply only in R^d)."""
    if cfg.space == "sphere" and (cfg.init_mean is not None or cfg.init_cov is not None):
        raise ConfigError(
            "init_mean" if cfg.init_mean is not None else "init_cov",
            "initial Gaussians apply only in R^d",
            "drop init_mean/init_cov or use space = 'euclidean'",
        )
    return get_space(cfg.space, cfg.d)


@_config_fields
def initial_cloud(cfg: SimulationConfig, gen: torch.Generator) -> torch.Tensor:
    """x0 (batch, n, d) in float64 on the CPU from the configured law: a wrapped-normal mixture,
    uniform on the sphere, or N(init_mean, init_cov) in R^d."""
    if cfg.init in ("wrapped-normal", "mixture"):
        centers = cfg.init_centers or [0.0]
        return wrapped_normal_mixture(
            cfg.batch, cfg.n, cfg.d, centers, cfg.init_weights, cfg.init_std, gen
        )
    if cfg.space == "sphere":
        return uniform_sphere(cfg.batch, cfg.n, cfg.d, gen)
    return gaussian_cloud(cfg.batch, cfg.n, cfg.d, gen, cfg.init_mean, cfg.init_cov)


def build(cfg: SimulationConfig) -> tuple[AttentionField, Space, torch.Tensor]:
    """(field, space, x0) with x0 of shape (batch, n, d) on cfg.device in cfg.dtype.

    One generator seeded with cfg.seed draws the random Q, K, V first, then the cloud, in float64
    on the CPU, so a seed gives the same run on every device and dtype."""
    gen = torch.Generator().manual_seed(cfg.seed)
    field = make_field(cfg, gen)
    space = make_space(cfg)
    x0 = initial_cloud(cfg, gen)
    return field, space, x0.to(dtype_of(cfg)).to(device_of(cfg))
