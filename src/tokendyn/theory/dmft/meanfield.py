"""The exact N_se → ∞ map (spec §3.2): every sampled bit replaced by its conditional mean,
u_c = μ_c = tanh(β h_c), in the shared step of `dynamics`.

form='general' averages over every semantic weight column (any ±1 weights, any M);
form='block' over the distinct columns weighted by their share (the fast three-block form for the
paper's weights, spec §3.3). Both are the same average, so they agree to round-off.
"""

from __future__ import annotations

import numpy as np

from tokendyn.theory.dmft.dynamics import Core, WindowState, run
from tokendyn.theory.dmft.model import Model


def tanh_averages(h: np.ndarray, beta: np.ndarray) -> np.ndarray:
    """μ_c = tanh(β h_c)."""
    return np.tanh(beta * h)


class MeanFieldMap:
    """Batched over β (one β per batch member, or one β for all)."""

    def __init__(self, model: Model, form: str = "block") -> None:
        self.core = Core(model, form)
        self.model = model

    def step(self, state: WindowState, beta: np.ndarray | float) -> np.ndarray:
        """One step in place; returns m^o_{t+1} (M, B)."""
        return self.core.step(state, tanh_averages(self.core.fields(state.A), np.asarray(beta)))

    def run(
        self,
        state: WindowState,
        beta: np.ndarray | float,
        n_transient: int,
        n_record: int,
        every: int = 1,
    ) -> np.ndarray:
        """Advance in place; m^o of the recorded steps (n_record // every, M, B)."""
        return run(self.core, tanh_averages, state, beta, n_transient, n_record, every)
