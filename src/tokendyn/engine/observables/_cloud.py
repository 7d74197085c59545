"""Input checks shared by the observables: a cloud is (N, d) or (B, N, d)."""

from __future__ import annotations

import torch

from tokendyn.errors import ConfigError


def as_cloud(x: torch.Tensor) -> torch.Tensor:
    x = torch.as_tensor(x)
    if x.dim() not in (2, 3) or x.shape[-2] < 1:
        raise ConfigError(
            "x",
            f"has shape {tuple(x.shape)}",
            "pass a cloud of shape (N, d) or (B, N, d) with N ≥ 1",
        )
    return x


def batched(x: torch.Tensor) -> tuple[torch.Tensor, bool]:
    """(x as (B, N, d), whether the input was a single (N, d) cloud)."""
    x = as_cloud(x)
    return (x.unsqueeze(0), True) if x.dim() == 2 else (x, False)


def unbatch(values: torch.Tensor, single: bool) -> torch.Tensor:
    return values[0] if single else values


def check_positive(field: str, value: float) -> None:
    if not value > 0:
        raise ConfigError(field, f"is {value}", f"give {field} > 0")
