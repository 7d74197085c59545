"""Histogram of the pairwise inner products ⟨x_i, x_j⟩."""

from __future__ import annotations

import math

import numpy as np
import torch

from tokendyn.engine.observables._cloud import batched
from tokendyn.errors import ConfigError


def gram_histogram(
    x: torch.Tensor,
    bins: int = 50,
    range: tuple[float, float] = (-1.0, 1.0),
    max_pairs_dense: int = 1 << 22,
) -> tuple[np.ndarray, np.ndarray]:
    """Histogram of the inner products ⟨x_i, x_j⟩ over the pairs i < j, in float64.

    Returns (counts, edges): counts float64 (bins,) for one cloud (N, d) or (B, bins) for (B, N, d),
    edges (bins + 1,). The Gram matrix is formed in tiles of at most max_pairs_dense entries.
    Values outside `range` are not counted, except rounding overshoots (within 1e-6 of the width,
    e.g. ⟨x, x'⟩ = 1 + 1e-16 on the sphere) which go to the edge bins.
    """
    lo, hi = float(range[0]), float(range[1])
    if not (bins >= 1 and lo < hi):
        raise ConfigError("bins/range", f"bins={bins}, range={range}", "use bins ≥ 1 and lo < hi")
    if max_pairs_dense < 1:
        raise ConfigError("max_pairs_dense", f"is {max_pairs_dense}", "use an integer ≥ 1")
    xb, single = batched(x)
    block = math.isqrt(max_pairs_dense)
    counts = np.stack([_gram_counts(c.detach().double(), bins, lo, hi, block) for c in xb])
    return (counts[0] if single else counts), np.linspace(lo, hi, bins + 1)


def _gram_counts(x: torch.Tensor, bins: int, lo: float, hi: float, block: int) -> np.ndarray:
    n = x.shape[0]
    tol = 1e-6 * (hi - lo)
    counts = torch.zeros(bins, dtype=torch.float64, device=x.device)
    for i0 in range(0, n, block):
        rows = x[i0 : i0 + block]
        for j0 in range(i0, n, block):
            gram = rows @ x[j0 : j0 + block].T
            values = (
                gram[torch.ones_like(gram, dtype=torch.bool).triu(1)] if j0 == i0 else gram.ravel()
            )
            snapped = torch.where((values > hi) & (values <= hi + tol), hi, values)
            snapped = torch.where((snapped < lo) & (snapped >= lo - tol), lo, snapped)
            counts += torch.histc(snapped, bins=bins, min=lo, max=hi)
    return counts.cpu().numpy()
