"""In-context regression sequences (spec §2.1): w ~ P(w); x_i, x_q ~ N(0, I_d); y_i = w·x_i + ε_i,
ε ~ N(0, σ²); tokens z_i = (x_i, y_i), query (x_q, 0). Fresh batches are streamed for training."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch

from tokendyn.errors import ConfigError
from tokendyn.theory.icl.priors import MixturePrior


@dataclass(frozen=True)
class Batch:
    """B sequences: X (B, N, d), y (B, N), xq (B, d), yq (B,) noisy query target, w (B, d) latent,
    comp (B,) mixture component (tree leaf)."""

    X: np.ndarray
    y: np.ndarray
    xq: np.ndarray
    yq: np.ndarray
    w: np.ndarray
    comp: np.ndarray
    sigma: float

    @property
    def s(self) -> np.ndarray:
        """s = (1/N) Xᵀy, the statistic one broadcast head projects (spec §4.2)."""
        return np.einsum("bnd,bn->bd", self.X, self.y) / self.X.shape[1]

    def torch(self, device: str = "cpu", dtype: torch.dtype = torch.float32) -> TorchBatch:
        arrays = (self.X, self.y, self.xq, self.yq, self.w)
        return TorchBatch(*(torch.as_tensor(a, dtype=dtype, device=device) for a in arrays))

    def noisy_mse(self, w_hat: np.ndarray) -> np.ndarray:
        """Per-sequence noisy-target MSE E_{x_q, ε_q}(y_q − x_q·ŵ)² = σ² + ‖w − ŵ‖²."""
        return self.sigma**2 + np.sum((self.w - w_hat) ** 2, axis=-1)


@dataclass(frozen=True)
class TorchBatch:
    X: torch.Tensor
    y: torch.Tensor
    xq: torch.Tensor
    yq: torch.Tensor
    w: torch.Tensor


def sample_tasks(
    prior: MixturePrior, N: int, sigma: float, B: int, rng: np.random.Generator
) -> Batch:
    """B fresh sequences of context length N."""
    if N < 1 or B < 1:
        raise ConfigError("N/B", f"must be ≥ 1 (got N={N}, B={B})", "use positive sizes")
    w, comp = prior.sample(B, rng)
    X = rng.standard_normal((B, N, prior.d))
    xq = rng.standard_normal((B, prior.d))
    y = np.einsum("bnd,bd->bn", X, w) + sigma * rng.standard_normal((B, N))
    yq = np.einsum("bd,bd->b", xq, w) + sigma * rng.standard_normal(B)
    return Batch(X, y, xq, yq, w, comp, sigma)


def stream(prior: MixturePrior, N: int, sigma: float, B: int, seed: int) -> Iterator[Batch]:
    """An endless stream of fresh batches (infinite task stream), reproducible from `seed`."""
    rng = np.random.default_rng(seed)
    while True:
        yield sample_tasks(prior, N, sigma, B, rng)


def tokens(X: torch.Tensor, y: torch.Tensor, xq: torch.Tensor) -> torch.Tensor:
    """Token matrix (B, N+1, d+1): rows (x_i, y_i), last row the query (x_q, 0)."""
    ctx = torch.cat([X, y[..., None]], dim=-1)
    q = torch.cat([xq, torch.zeros_like(xq[..., :1])], dim=-1)
    return torch.cat([ctx, q[:, None, :]], dim=1)
