"""Optimal-transport distances between clouds: exact W_p, sliced W2, Bures–Wasserstein."""

from __future__ import annotations

import ot
import torch

from tokendyn.engine.observables._cloud import batched, unbatch
from tokendyn.errors import ConfigError


def bures_wasserstein(
    mean1: torch.Tensor, cov1: torch.Tensor, mean2: torch.Tensor, cov2: torch.Tensor
) -> torch.Tensor:
    """W2 between N(α1, Σ1) and N(α2, Σ2) (the distance, not its square), where

    W2² = |α1 − α2|² + tr(Σ1 + Σ2 − 2(Σ1^{1/2} Σ2 Σ1^{1/2})^{1/2}).
    Means (d,) or (B, d) with covariances (d, d) or (B, d, d); batches are paired elementwise.
    Uses POT's ot.gaussian.bures_wasserstein_distance.
    """
    if mean1.dim() == 1:
        return ot.gaussian.bures_wasserstein_distance(mean1, mean2, cov1, cov2).reshape(())
    return ot.gaussian.bures_wasserstein_distance(mean1, mean2, cov1, cov2, paired=True)


def wasserstein(x: torch.Tensor, y: torch.Tensor, p: float = 2) -> torch.Tensor:
    """Exact W_p = (min_π Σ_ij π_ij |x_i − y_j|^p)^{1/p} between the uniform empirical measures.

    Network simplex (ot.emd2) on the N×M cost matrix: for clouds of up to a few thousand tokens.
    """
    if p < 1:
        raise ConfigError("p", f"is {p}", "use p ≥ 1")
    (xb, single), (yb, _) = _paired(x, y)
    values = [_emd(xi, yi, p) for xi, yi in zip(xb, yb, strict=True)]
    return unbatch(torch.stack(values), single)


def sliced_wasserstein(
    x: torch.Tensor, y: torch.Tensor, n_projections: int = 200, seed: int = 0
) -> torch.Tensor:
    """Sliced W2 = (E_θ W2²(⟨θ, x⟩, ⟨θ, y⟩))^{1/2} over random unit directions θ.

    Monte Carlo over n_projections directions (ot.sliced_wasserstein_distance), at cost
    O(n_projections · N log N): for large clouds. Deterministic for a given seed.
    """
    if n_projections < 1:
        raise ConfigError("n_projections", f"is {n_projections}", "use an integer ≥ 1")
    (xb, single), (yb, _) = _paired(x, y)
    values = [
        torch.as_tensor(
            ot.sliced_wasserstein_distance(xi, yi, n_projections=n_projections, seed=seed)
        )
        for xi, yi in zip(xb, yb, strict=True)
    ]
    return unbatch(torch.stack(values), single)


def _paired(
    x: torch.Tensor, y: torch.Tensor
) -> tuple[tuple[torch.Tensor, bool], tuple[torch.Tensor, bool]]:
    bx, by = batched(x), batched(y)
    if (
        bx[0].dim() != by[0].dim()
        or bx[0].shape[0] != by[0].shape[0]
        or bx[0].shape[2] != by[0].shape[2]
    ):
        raise ConfigError(
            "y",
            f"shape {tuple(y.shape)} does not match x {tuple(x.shape)}",
            "use the same batch and d",
        )
    return bx, by


def _emd(x: torch.Tensor, y: torch.Tensor, p: float) -> torch.Tensor:
    a = x.new_full((x.shape[0],), 1.0 / x.shape[0])
    b = y.new_full((y.shape[0],), 1.0 / y.shape[0])
    cost = ot.dist(x, y) if p == 2 else ot.dist(x, y, metric="euclidean") ** p
    return torch.as_tensor(ot.emd2(a, b, cost, numItermax=10_000_000)) ** (1.0 / p)
