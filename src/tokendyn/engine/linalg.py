"""Small dense linear algebra shared by the engine and the theory."""

from __future__ import annotations

import torch


def psd_sqrt(cov: torch.Tensor) -> torch.Tensor:
    """Principal square root S = U diag(√max(λ, 0)) Uᵀ, where ½(C + Cᵀ) = U diag(λ) Uᵀ, of a
    (batch of) positive semidefinite matrices C (..., d, d); negative round-off eigenvalues → 0."""
    lam, U = torch.linalg.eigh(0.5 * (cov + cov.mT))
    return (U * lam.clamp(min=0).sqrt().unsqueeze(-2)) @ U.mT
