"""Initial clouds beyond the uniform sphere and the Gaussian in R^d, and β as a function of N.

Wrapped-normal mixtures (the multiscale spec §2.4): an angle θ = m_j + σ₀ ξ (ξ ~ N(0, 1)) around
the centre m_j of a component chosen with probability α_j. On S¹ the token is (cos θ, sin θ); on
S² θ is the azimuth and the elevation ψ is uniform on [−π/2, π/2] (not area-uniform, as in the
paper's Scenario 2a): x = (cos ψ cos θ, cos ψ sin θ, sin ψ).
"""

from __future__ import annotations

import math
import re

import torch

from tokendyn.errors import ConfigError

_NUMBER = r"([0-9]*\.?[0-9]+(?:[eE][+-]?[0-9]+)?)"
_LOG_LAW = re.compile(rf"^(?:{_NUMBER}\s*\*\s*)?log\(N\)$")
_POWER_LAW = re.compile(rf"^(?:{_NUMBER}\s*\*\s*)?N\s*\*\*\s*{_NUMBER}$")


def beta_from_law(law: str, n: int) -> float:
    """β_N from 'c*log(N)' (or 'log(N)') and 'c*N**a' (or 'N**a')."""
    text = law.strip()
    match = _LOG_LAW.match(text)
    if match:
        c = float(match.group(1) or 1.0)
        return c * math.log(n)
    match = _POWER_LAW.match(text)
    if match:
        c = float(match.group(1) or 1.0)
        return c * n ** float(match.group(2))
    raise ConfigError(
        "beta_law",
        f"cannot read {law!r}",
        "write 'c*log(N)' (e.g. '3*log(N)') or 'c*N**a' (e.g. 'N**0.5')",
    )


def wrapped_normal_mixture(
    batch: int,
    n: int,
    d: int,
    centers: list[float],
    weights: list[float] | None,
    std: float,
    generator: torch.Generator,
) -> torch.Tensor:
    """(batch, n, d) float64 tokens on S¹ (d = 2) or S² (d = 3) from a wrapped-normal mixture."""
    if d not in (2, 3):
        raise ConfigError(
            "init",
            f"wrapped-normal clouds are defined on S¹ and S², not d={d}",
            "use --d 2 or --d 3, or --init uniform",
        )
    if not centers:
        raise ConfigError(
            "init_centers", "is empty", "give at least one angle, e.g. --init-centers 0,2.1"
        )
    alpha = (
        torch.ones(len(centers), dtype=torch.float64)
        if weights is None
        else torch.tensor(weights, dtype=torch.float64)
    )
    if alpha.shape != (len(centers),):
        raise ConfigError(
            "init_weights",
            f"has {alpha.numel()} values for {len(centers)} centres",
            "give one weight per centre",
        )
    if not bool((alpha > 0).all()) or not bool(alpha.isfinite().all()):
        raise ConfigError("init_weights", "must be finite and > 0", "give positive weights")
    if not (std > 0 and math.isfinite(std)):
        raise ConfigError("init_std", f"is {std}", "give a standard deviation σ₀ > 0")
    component = torch.multinomial(
        (alpha / alpha.sum()).expand(batch, -1), n, replacement=True, generator=generator
    )
    theta = torch.tensor(centers, dtype=torch.float64)[component]
    theta = theta + std * torch.randn(batch, n, generator=generator, dtype=torch.float64)
    if d == 2:
        return torch.stack([theta.cos(), theta.sin()], dim=-1)
    psi = (torch.rand(batch, n, generator=generator, dtype=torch.float64) - 0.5) * math.pi
    return torch.stack([psi.cos() * theta.cos(), psi.cos() * theta.sin(), psi.sin()], dim=-1)
