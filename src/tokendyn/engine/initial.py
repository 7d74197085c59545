"""Every initial cloud law, and β as a function of N.

Clouds are (batch, n, d) tensors drawn in float64 on the CPU from a torch.Generator, so a seed gives
the same cloud on every device and dtype: uniform on the sphere S^{d-1} (a standard Gaussian
normalised), Gaussian N(mean, cov) in R^d (x = mean + cov^{1/2} z), and wrapped-normal mixtures.

Wrapped-normal mixtures (the multiscale spec §2.4): an angle θ = m_j + σ₀ ξ (ξ ~ N(0, 1)) around
the centre m_j of a component chosen with probability α_j. On S¹ the token is (cos θ, sin θ); on
S² θ is the azimuth and the elevation ψ is uniform on [−π/2, π/2] (not area-uniform, as in the
paper's Scenario 2a): x = (cos ψ cos θ, cos ψ sin θ, sin ψ).
"""

from __future__ import annotations

import math
import re

import torch

from tokendyn.engine.linalg import psd_sqrt
from tokendyn.engine.space import Sphere, check_sphere_dimension
from tokendyn.errors import ConfigError

_NUMBER = r"([0-9]*\.?[0-9]+(?:[eE][+-]?[0-9]+)?)"
_LOG_LAW = re.compile(rf"^(?:{_NUMBER}\s*\*\s*)?log\(N\)$")
_POWER_LAW = re.compile(rf"^(?:{_NUMBER}\s*\*\s*)?N\s*\*\*\s*{_NUMBER}$")


def beta_from_law(law: str, n: int) -> float:
    """β_N from 'c*log(N)' (or 'log(N)') and 'c*N**a' (or 'N**a'); a finite β_N > 0."""
    text = law.strip()
    log_law, power_law = _LOG_LAW.match(text), _POWER_LAW.match(text)
    if log_law:
        beta = float(log_law.group(1) or 1.0) * math.log(n)
    elif power_law:
        c, a = float(power_law.group(1) or 1.0), float(power_law.group(2))
        try:
            beta = c * n**a
        except OverflowError:
            beta = math.inf
    else:
        raise ConfigError(
            "law",
            f"cannot read {law!r}",
            "write 'c*log(N)' (e.g. '3*log(N)') or 'c*N**a' (e.g. 'N**0.5')",
        )
    if not (math.isfinite(beta) and beta > 0):
        raise ConfigError(
            "law", f"gives β = {beta:g} at N = {n}", "use a law giving a finite β > 0 at this N"
        )
    return beta


def uniform_sphere(
    batch: int, n: int, d: int, generator: torch.Generator, dtype: torch.dtype = torch.float64
) -> torch.Tensor:
    """(batch, n, d) tokens uniform on S^{d-1}: x = z/|z| with z ~ N(0, I_d)."""
    check_sphere_dimension(d)
    z = torch.randn(batch, n, d, generator=generator, dtype=torch.float64)
    return Sphere().retract(z).to(dtype)


def gaussian_cloud(
    batch: int,
    n: int,
    d: int,
    generator: torch.Generator,
    mean: object = None,
    cov: object = None,
    dtype: torch.dtype = torch.float64,
) -> torch.Tensor:
    """(batch, n, d) tokens from N(mean, cov) in R^d: x = mean + cov^{1/2} z, z ~ N(0, I_d)
    (mean None: 0; cov None: I; cov symmetric positive semidefinite)."""
    z = torch.randn(batch, n, d, generator=generator, dtype=torch.float64)
    if cov is not None:
        z = z @ psd_sqrt(_covariance(cov, d)).T
    if mean is not None:
        m = torch.as_tensor(mean, dtype=torch.float64)
        if m.shape != (d,):
            raise ConfigError(
                "mean", f"has length {m.numel()}, expected {d}", f"give a list of {d} numbers"
            )
        z = z + m
    return z.to(dtype)


def _covariance(cov: object, d: int) -> torch.Tensor:
    """cov as a float64 d×d symmetric positive semidefinite matrix, or a ConfigError."""
    c = torch.as_tensor(cov, dtype=torch.float64)
    if c.shape != (d, d):
        raise ConfigError(
            "cov", f"has shape {tuple(c.shape)}, expected ({d}, {d})", f"give a {d}×{d} matrix"
        )
    if not bool(c.isfinite().all()):
        raise ConfigError("cov", "contains NaN or Inf", "give finite entries")
    if not torch.allclose(c, c.T, atol=1e-12):
        raise ConfigError(
            "cov", "is not symmetric", "give a symmetric positive semidefinite matrix"
        )
    lowest = torch.linalg.eigvalsh(c).min().item()
    if lowest < -1e-12 * max(1.0, c.abs().max().item()):
        raise ConfigError(
            "cov", f"has a negative eigenvalue {lowest:.3g}", "give a positive semidefinite matrix"
        )
    return c


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
            "d",
            f"wrapped-normal clouds are defined on S¹ and S², not d={d}",
            "use d = 2 or d = 3, or the uniform law on the sphere",
        )
    if not centers:
        raise ConfigError("centers", "is empty", "give at least one angle, e.g. [0.0, 2.1]")
    if not all(math.isfinite(c) for c in centers):
        raise ConfigError("centers", f"contains NaN or Inf ({centers})", "give finite angles")
    alpha = (
        torch.ones(len(centers), dtype=torch.float64)
        if weights is None
        else torch.tensor(weights, dtype=torch.float64)
    )
    if alpha.shape != (len(centers),):
        raise ConfigError(
            "weights",
            f"has {alpha.numel()} values for {len(centers)} centres",
            "give one weight per centre",
        )
    if not bool((alpha > 0).all()) or not bool(alpha.isfinite().all()):
        raise ConfigError("weights", "must be finite and > 0", "give positive weights")
    if not (std > 0 and math.isfinite(std)):
        raise ConfigError("std", f"is {std}", "give a standard deviation σ₀ > 0")
    component = torch.multinomial(
        (alpha / alpha.sum()).expand(batch, -1), n, replacement=True, generator=generator
    )
    theta = torch.tensor(centers, dtype=torch.float64)[component]
    theta = theta + std * torch.randn(batch, n, generator=generator, dtype=torch.float64)
    if d == 2:
        return torch.stack([theta.cos(), theta.sin()], dim=-1)
    psi = (torch.rand(batch, n, generator=generator, dtype=torch.float64) - 0.5) * math.pi
    return torch.stack([psi.cos() * theta.cos(), psi.cos() * theta.sin(), psi.sin()], dim=-1)
