"""Finite-N networks (spec §2.6): each semantic bit of token t+1 is drawn independently,

    P(x_{i,t+1} = ±1 | past) = e^{±β h_i} / (2 cosh β h_i),   h_i = Σ_a W^o_{a,i} Â_{a,t},

(parallel Glauber / kinetic-Ising update), positional bits set to the code of (t+1) mod C.

method='spins': every spin sampled (any ±1 weights; cost O(N_se M) per step).
method='binomial': exact for block-constant weights: the n_c spins of column block c share h_c, so
their sum is 2·Binomial(n_c, (1 + tanh β h_c)/2) − n_c; O(1) per step for any N_se (10^9 and more).
"""

from __future__ import annotations

import numpy as np

from tokendyn.errors import ConfigError
from tokendyn.theory.dmft.dynamics import Core, WindowState, run
from tokendyn.theory.dmft.model import Model, check_beta

METHODS = ("spins", "binomial")


class FiniteSampler:
    """Finite-N_se network, batched over β values × trials; seeded numpy PCG64 stream."""

    def __init__(self, model: Model, method: str = "binomial", seed: int = 0) -> None:
        if method not in METHODS:
            raise ConfigError("method", f"is {method!r}", f"use one of {METHODS}")
        self.model, self.method = model, method
        self.core = Core(model, "block" if method == "binomial" else "general")
        self.rng = np.random.default_rng(seed)
        self.counts = self.core.weights.counts
        if method == "binomial" and self.counts is None:
            self.counts = np.ones(self.core.G.shape[0], dtype=np.int64)

    @property
    def n_se(self) -> int:
        return self.model.weights.n_se

    def averages(self, h: np.ndarray, beta: np.ndarray) -> np.ndarray:
        """Sampled semantic averages per column: spins ±1 (K, B) or block means (S, B)."""
        p_up = 0.5 * (1.0 + np.tanh(beta * h))
        if self.method == "spins":
            return np.where(self.rng.random(p_up.shape) < p_up, 1.0, -1.0)
        n = self.counts[:, None]
        return 2.0 * self.rng.binomial(n, p_up) / n - 1.0

    def run(
        self,
        state: WindowState,
        beta: np.ndarray | float,
        n_transient: int,
        n_record: int,
        trials: int = 1,
        every: int = 1,
    ) -> np.ndarray:
        """`state` has one batch member per β; it is tiled over trials and advanced in place.
        Returns m^o of the recorded steps, (n_record // every, M, trials, n_beta)."""
        b = check_beta(beta)
        if state.batch != b.size:
            raise ConfigError("state", f"has batch {state.batch} for {b.size} β values", "match")
        if trials < 1:
            raise ConfigError("trials", f"is {trials}", "use at least 1 trial")
        big = state.tile(trials)
        mo = run(self.core, self.averages, big, np.tile(b, trials), n_transient, n_record, every)
        state.A, state.V, state.K, state.t, state.filled = big.A, big.V, big.K, big.t, big.filled
        return mo.reshape(mo.shape[0], mo.shape[1], trials, b.size)
