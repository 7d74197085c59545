"""Random weight ensembles for (Q, K, V), d×d, drawn in float64 on the CPU from a torch.Generator.

Scores are β⟨Q x_i, K x_j⟩ = β x_iᵀ A x_j with the interaction matrix A = QᵀK.

    identity      Q = K = V = I
    random        Q, K, V with i.i.d. N(0, 1/d) entries (drawn in the order Q, K, V)
    goe           A = QᵀK is GOE: A = (G + Gᵀ)/√(2d), G_ij i.i.d. N(0, 1); Q = A, K = I, V = I.
                  Off-diagonal entries have variance 1/d, diagonal ones 2/d; the spectrum of A
                  tends to the semicircle on [−2, 2] (edge 2 + O(d^{-2/3}), Tracy–Widom).
    goe-v         A as in goe and V = +A   (symmetric value matrix, V = KᵀQ)
    goe-minus-v   A as in goe and V = −A   (V = −KᵀQ)
    orthogonal-v  Q = K = I and V Haar-distributed on O(d): the QR factor of a Gaussian matrix
                  with the signs of R's diagonal moved into Q (Mezzadri 2007), so VᵀV = I exactly.
"""

from __future__ import annotations

import torch

from tokendyn.errors import ConfigError

ENSEMBLES: tuple[str, ...] = ("identity", "random", "goe", "goe-v", "goe-minus-v", "orthogonal-v")


def goe(d: int, gen: torch.Generator) -> torch.Tensor:
    """A = (G + Gᵀ)/√(2d): off-diagonal variance 1/d, diagonal 2/d, semicircle on [−2, 2]."""
    g = torch.randn(d, d, generator=gen, dtype=torch.float64)
    return (g + g.T) / (2 * d) ** 0.5


def haar_orthogonal(d: int, gen: torch.Generator) -> torch.Tensor:
    """A Haar-distributed orthogonal d×d matrix (QR of a Gaussian matrix, sign-corrected)."""
    q, r = torch.linalg.qr(torch.randn(d, d, generator=gen, dtype=torch.float64))
    return q * torch.sign(torch.diagonal(r))


def draw_qkv(
    name: str, d: int, gen: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(Q, K, V) of the ensemble `name` (module docstring), each d×d float64."""
    eye = torch.eye(d, dtype=torch.float64)
    if name == "identity":
        return eye, eye.clone(), eye.clone()
    if name == "random":
        Q, K, V = (torch.randn(d, d, generator=gen, dtype=torch.float64) / d**0.5 for _ in "QKV")
        return Q, K, V
    if name in ("goe", "goe-v", "goe-minus-v"):
        A = goe(d, gen)
        V = {"goe": eye.clone(), "goe-v": A.clone(), "goe-minus-v": -A}[name]
        return A, eye, V
    if name == "orthogonal-v":
        return eye, eye.clone(), haar_orthogonal(d, gen)
    raise ConfigError("qkv", f"unknown ensemble {name!r}", f"use one of {', '.join(ENSEMBLES)}")
