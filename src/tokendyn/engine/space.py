"""Spaces tokens live in: Euclidean R^d and the unit sphere S^{d-1}.

A space knows its tangent projection P_x (applied to the attention velocity), its retraction back
onto the space after a step, and how to draw random initial clouds. Clouds are (B, N, d) tensors.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import torch

from tokendyn.errors import ConfigError


class Space(ABC):
    """Where tokens live: `project(x, v)` is the tangent projection P_x v, `retract(x)` maps a
    state back onto the space after a step."""

    name: str

    @abstractmethod
    def project(self, x: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """Tangent projection P_x v."""

    @abstractmethod
    def retract(self, x: torch.Tensor) -> torch.Tensor:
        """Map a point (near) the space back onto it."""

    @abstractmethod
    def sample(
        self, batch: int, n: int, d: int, generator: torch.Generator, dtype: torch.dtype
    ) -> torch.Tensor:
        """Random initial cloud (batch, n, d), drawn in float64 on CPU for reproducibility."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class Euclidean(Space):
    """R^d: P_x = I, no retraction. Initial clouds are Gaussian N(mean, cov) (default N(0, I))."""

    name = "euclidean"

    def __init__(self, mean: torch.Tensor | None = None, cov: torch.Tensor | None = None) -> None:
        self.mean, self.cov = mean, cov

    def project(self, x: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return v

    def retract(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def sample(
        self, batch: int, n: int, d: int, generator: torch.Generator, dtype: torch.dtype
    ) -> torch.Tensor:
        z = torch.randn(batch, n, d, generator=generator, dtype=torch.float64)
        if self.cov is not None:
            cov = torch.as_tensor(self.cov, dtype=torch.float64)
            if cov.shape != (d, d):
                raise ConfigError(
                    "init_cov",
                    f"has shape {tuple(cov.shape)}, expected ({d}, {d})",
                    f"give a {d}×{d} covariance matrix",
                )
            z = z @ _psd_sqrt(cov).T
        if self.mean is not None:
            mean = torch.as_tensor(self.mean, dtype=torch.float64)
            if mean.shape != (d,):
                raise ConfigError(
                    "init_mean",
                    f"has length {mean.numel()}, expected {d}",
                    f"give a list of {d} numbers",
                )
            z = z + mean
        return z.to(dtype)


class Sphere(Space):
    """S^{d-1} ⊂ R^d: P_x v = v − ⟨x̂, v⟩ x̂ with x̂ = x/|x|; retraction x ↦ x/|x|; uniform samples."""

    name = "sphere"

    def __init__(self, d: int | None = None) -> None:
        if d is not None and d < 2:
            raise ConfigError(
                "d",
                f"d={d} is too small for the sphere S^(d-1)",
                "use d ≥ 2 on the sphere, or --space euclidean",
            )

    def project(self, x: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        x_hat = x / x.norm(dim=-1, keepdim=True)
        return v - (v * x_hat).sum(-1, keepdim=True) * x_hat

    def retract(self, x: torch.Tensor) -> torch.Tensor:
        return x / x.norm(dim=-1, keepdim=True)

    def sample(
        self, batch: int, n: int, d: int, generator: torch.Generator, dtype: torch.dtype
    ) -> torch.Tensor:
        if d < 2:
            raise ConfigError(
                "d",
                f"d={d} is too small for the sphere S^(d-1)",
                "use d ≥ 2 on the sphere, or --space euclidean",
            )
        z = torch.randn(batch, n, d, generator=generator, dtype=torch.float64)
        return self.retract(z).to(dtype)


def _psd_sqrt(cov: torch.Tensor) -> torch.Tensor:
    if not torch.allclose(cov, cov.T, atol=1e-12):
        raise ConfigError(
            "init_cov", "is not symmetric", "give a symmetric positive semidefinite matrix"
        )
    evals, evecs = torch.linalg.eigh(cov)
    if evals.min() < -1e-12 * max(1.0, evals.abs().max().item()):
        raise ConfigError(
            "init_cov",
            f"has a negative eigenvalue {evals.min().item():.3g}",
            "give a positive semidefinite covariance",
        )
    return evecs @ torch.diag(evals.clamp(min=0).sqrt()) @ evecs.T


def get_space(name: str, d: int | None = None, **kwargs: object) -> Space:
    """The space called `name` ('sphere' or 'euclidean') in dimension d."""
    if name == "sphere":
        return Sphere(d)
    if name == "euclidean":
        return Euclidean(**kwargs)  # type: ignore[arg-type]
    raise ConfigError("space", f"unknown space {name!r}", "use 'sphere' or 'euclidean'")
