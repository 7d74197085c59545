"""Mean-field limit of every attention variant on compactly supported data (spec §6.1–6.2).

Tokens start i.i.d. uniform on the unit disk/ball. For each N, the N-particle cloud μ^N_t is
compared with a reference cloud of 16·N_max tokens (its own i.i.d. draw) at several times:

    W₂(μ^N_t, ν_t) by exact OT (POT's network simplex), and for masked (causal) attention the
    conditional distance W_{2,λ}(μ, ν)² = Σ_k λ_k W₂(μ_k, ν_k)², the positions s_i = i/N cut into
    equal bins k (couplings may not move s; λ_k = 1/bins).

Stability (W_t ≤ e^{Lt} W_0) predicts the same log-log slope in N at every t as at t = 0, where
Fournier–Guillin bound E W₂(μ^N_0, μ_0) ≲ N^{−1/4} in d = 2 (the uniform law in d = 2 actually
gives W₂ ≈ (log N / N)^{1/2}, a fitted slope near −1/2).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from tokendyn.app.simulate import simulate
from tokendyn.engine.attention import VARIANTS, Head, split_heads
from tokendyn.engine.attention.base import AttentionField
from tokendyn.engine.observables import wasserstein
from tokendyn.engine.space import Euclidean
from tokendyn.errors import ConfigError
from tokendyn.studies.particles_vs_closure import fit_slope

F64 = torch.float64
LIMIT_VARIANTS = ("softmax", "multihead", "l2", "sinkhorn", "sigmoid", "masked")


def limit_field(variant: str, Q: torch.Tensor, K: torch.Tensor, V: torch.Tensor, beta: float
                ) -> AttentionField:  # fmt: skip
    """The core engine's field for one of LIMIT_VARIANTS (multihead: H = 2 row blocks)."""
    head = [Head(Q, K, V, beta)]
    if variant == "multihead":
        return VARIANTS["softmax"](split_heads(Q, K, V, 2, beta))
    if variant == "masked":
        return VARIANTS["softmax"](head, mask="causal")
    options = {"sinkhorn": {"tol": 1e-9}}
    if variant in VARIANTS:
        return VARIANTS[variant](head, **options.get(variant, {}))
    raise ConfigError("variant", f"unknown variant {variant!r}", f"use {', '.join(LIMIT_VARIANTS)}")


def uniform_ball(batch: int, n: int, d: int, seed: int) -> torch.Tensor:
    """batch clouds of n tokens uniform on the unit ball of R^d (compact support)."""
    gen = torch.Generator().manual_seed(seed)
    z = torch.randn(batch, n, d, generator=gen, dtype=F64)
    r = torch.rand(batch, n, 1, generator=gen, dtype=F64) ** (1.0 / d)
    return z / z.norm(dim=-1, keepdim=True) * r


def conditional_w2(x: torch.Tensor, y: torch.Tensor, bins: int) -> float:
    """W_{2,λ} between clouds ordered by position (token i at s = i/N): bin-wise W₂, L² in s."""
    total = 0.0
    for k in range(bins):
        xs = x[k * len(x) // bins : (k + 1) * len(x) // bins]
        ys = y[k * len(y) // bins : (k + 1) * len(y) // bins]
        total += float(wasserstein(xs, ys)) ** 2 / bins
    return total**0.5


@dataclass
class LimitResult:
    """dist (len(ns), seeds, len(times)); slopes (len(times),) fitted on the seed means."""

    variant: str
    ns: np.ndarray
    times: np.ndarray
    dist: np.ndarray

    @property
    def slopes(self) -> np.ndarray:
        return np.array([fit_slope(self.ns, self.dist[:, :, j].mean(1)) for j in
                         range(len(self.times))])  # fmt: skip


def limit_experiment(
    variant: str,
    ns: list[int],
    seeds: int,
    *,
    d: int = 2,
    beta: float = 1.0,
    t_end: float = 1.0,
    dt: float = 0.1,
    save_every: int = 5,
    ref_factor: int = 16,
    bins: int = 4,
    seed: int = 0,
) -> LimitResult:
    """W₂ (W_{2,λ} for masked) between N-particle clouds and a 16·N_max reference, over time."""
    gen = torch.Generator().manual_seed(1000 + seed)
    Q, K, V = (torch.randn(d, d, generator=gen, dtype=F64) / d**0.5 for _ in range(3))
    field = limit_field(variant, Q, K, V, beta)

    def run(x0: torch.Tensor) -> tuple[np.ndarray, torch.Tensor]:
        ds = simulate(field, Euclidean(), x0, t_end=t_end, dt=dt, save_every=save_every)
        return ds["time"].values, torch.as_tensor(ds["x"].values)

    dist = []
    for s in range(seeds):
        times, ref = run(uniform_ball(1, ref_factor * max(ns), d, seed=10_000 * (seed + 1) + s)[0])
        row = []
        for n in ns:
            _, xs = run(uniform_ball(1, n, d, seed=100 * (seed + 1) * n + s)[0])
            if variant == "masked":
                row.append([conditional_w2(xs[j], ref[j], bins) for j in range(len(times))])
            else:
                row.append([float(wasserstein(xs[j], ref[j])) for j in range(len(times))])
        dist.append(row)
    return LimitResult(variant, np.array(ns), times, np.array(dist).transpose(1, 0, 2))
