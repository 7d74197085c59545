"""Effective dimension (participation ratio) and the empirical mean and covariance of a cloud."""

from __future__ import annotations

import torch

from tokendyn.engine.observables._cloud import as_cloud, batched, unbatch


def effective_dimension(x: torch.Tensor) -> torch.Tensor:
    """Participation ratio (Σλ)²/Σλ² = tr(Σ)²/tr(Σ²) of the eigenvalues λ of the covariance Σ.

    Between 1 (a line) and d (isotropic). A cloud collapsed to a point has no direction, and gets 0:
    that is when tr Σ ≤ d·(64·ε·max(1, max|x|))², i.e. its spread is at the rounding level of its
    coordinates (ε the dtype's machine epsilon).
    """
    xb, single = batched(x)
    _, cov = mean_and_covariance(xb)
    trace = cov.diagonal(dim1=-2, dim2=-1).sum(-1)
    frob2 = (cov**2).sum((-2, -1))
    scale = xb.abs().amax((-2, -1)).clamp(min=1.0)
    floor = xb.shape[-1] * (64 * torch.finfo(xb.dtype).eps * scale) ** 2
    ratio = torch.where(trace > floor, trace**2 / frob2, torch.zeros_like(trace))
    return unbatch(ratio, single)


def mean_and_covariance(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Empirical mean α = (1/N) Σ x_i, shape (…, d), and covariance (…, d, d)

    Σ = (1/N) Σ_i (x_i − α)(x_i − α)ᵀ (population normalisation 1/N).
    """
    x = as_cloud(x)
    mean = x.mean(dim=-2)
    centred = x - mean.unsqueeze(-2)
    return mean, centred.mT @ centred / x.shape[-2]
