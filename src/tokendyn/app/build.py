"""Build the objects of a run from its config: space, attention field, initial cloud."""

from __future__ import annotations

import torch

from tokendyn.app.config import SimulationConfig
from tokendyn.engine.attention import VARIANTS, AttentionField, Head, as_matrix, split_heads
from tokendyn.engine.initial import wrapped_normal_mixture
from tokendyn.engine.space import Space, get_space
from tokendyn.errors import ConfigError

DTYPES = {"float64": torch.float64, "float32": torch.float32}


def resolve_device(name: str) -> torch.device:
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device", "CUDA is not available on this machine", "use --device cpu")
    return torch.device(name)


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


def make_field(
    cfg: SimulationConfig,
    gen: torch.Generator | None = None,
    beta: float | torch.Tensor | None = None,
) -> AttentionField:
    """The configured attention field; `beta` (default cfg.beta) may be a (B,) tensor, one β per
    cloud of a batch."""
    gen = gen if gen is not None else torch.Generator().manual_seed(cfg.seed)
    beta = cfg.beta if beta is None else beta
    Q, K, V = make_matrices(cfg, gen)
    if cfg.heads == 1:
        heads = [Head(Q, K, V, beta)]
    else:
        if Q.shape[0] > cfg.d:
            raise ConfigError(
                "Q",
                f"has {Q.shape[0]} rows; multi-head needs at most d={cfg.d}",
                "give Q, K with at most d rows",
            )
        heads = split_heads(Q, K, V, cfg.heads, beta)
    common = dict(mask=None if cfg.mask == "none" else cfg.mask, backend=cfg.backend)
    cls = VARIANTS[cfg.attention]
    if cfg.attention == "sinkhorn":
        field = cls(heads, tol=cfg.sinkhorn_tol, max_iter=cfg.sinkhorn_max_iter, **common)
    elif cfg.attention == "sigmoid":
        field = cls(heads, bias=cfg.sigmoid_bias, form=cfg.sigmoid_form, **common)
    else:
        field = cls(heads, normalise=cfg.resolved_normalise, **common)
    return field.to(DTYPES[cfg.dtype], resolve_device(cfg.device))


def make_space(cfg: SimulationConfig) -> Space:
    if cfg.space == "sphere":
        if cfg.init_mean is not None or cfg.init_cov is not None:
            raise ConfigError(
                "init_mean",
                "initial Gaussians apply only in R^d",
                "drop init_mean/init_cov or use space = 'euclidean'",
            )
        return get_space("sphere", cfg.d)
    return get_space("euclidean", cfg.d, mean=cfg.init_mean, cov=cfg.init_cov)


def build(
    cfg: SimulationConfig, beta: float | torch.Tensor | None = None
) -> tuple[AttentionField, Space, torch.Tensor]:
    """(field, space, x0) with x0 of shape (batch, n, d) on cfg.device in cfg.dtype; `beta` as in
    make_field.

    One generator seeded with cfg.seed draws the random Q, K, V first, then the cloud, in float64
    on the CPU, so a seed gives the same run on every device and dtype."""
    gen = torch.Generator().manual_seed(cfg.seed)
    field = make_field(cfg, gen, beta)
    space = make_space(cfg)
    if cfg.init in ("wrapped-normal", "mixture"):
        centers = cfg.init_centers or [0.0]
        x0 = wrapped_normal_mixture(
            cfg.batch, cfg.n, cfg.d, centers, cfg.init_weights, cfg.init_std, gen
        )
    else:
        x0 = space.sample(cfg.batch, cfg.n, cfg.d, gen, torch.float64)
    return field, space, x0.to(DTYPES[cfg.dtype]).to(resolve_device(cfg.device))
