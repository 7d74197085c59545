"""Spaces tokens live in: Euclidean R^d and the unit sphere S^{d-1}.

A space is geometry only: its tangent projection P_x (applied to the attention velocity) and its
retraction back onto the space after a step. Clouds are (B, N, d) tensors; initial clouds are drawn
by `tokendyn.engine.initial`.
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

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class Euclidean(Space):
    """R^d: P_x = I, no retraction."""

    name = "euclidean"

    def project(self, x: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return v

    def retract(self, x: torch.Tensor) -> torch.Tensor:
        return x


class Sphere(Space):
    """S^{d-1} ⊂ R^d: P_x v = v − ⟨x̂, v⟩ x̂ with x̂ = x/|x|; retraction x ↦ x/|x|."""

    name = "sphere"

    def __init__(self, d: int | None = None) -> None:
        if d is not None:
            check_sphere_dimension(d)

    def project(self, x: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        x_hat = x / x.norm(dim=-1, keepdim=True)
        return v - (v * x_hat).sum(-1, keepdim=True) * x_hat

    def retract(self, x: torch.Tensor) -> torch.Tensor:
        return x / x.norm(dim=-1, keepdim=True)


def check_sphere_dimension(d: int) -> None:
    """The sphere S^(d-1) needs an ambient dimension d ≥ 2."""
    if d < 2:
        raise ConfigError(
            "d",
            f"d={d} is too small for the sphere S^(d-1)",
            "use d ≥ 2 on the sphere, or the Euclidean space",
        )


def get_space(name: str, d: int | None = None) -> Space:
    """The space called `name` ('sphere' or 'euclidean') in dimension d."""
    if name == "sphere":
        return Sphere(d)
    if name == "euclidean":
        return Euclidean()
    raise ConfigError("space", f"unknown space {name!r}", "use 'sphere' or 'euclidean'")
