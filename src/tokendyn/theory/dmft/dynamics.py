"""One autoregressive step shared by the mean-field map and the finite-N samplers (spec §2.7, §3.2).

The state at time t is the attention window: slot c = τ mod C holds (m^v_τ, m^k_τ) of the last C
tokens, and Â_t. One step, given the semantic column averages u_c of token t+1 (u_c = μ_c =
tanh(β h_c) in the mean-field map, the sampled spins' average in a finite network), computes

    h_c = Σ_a W^o_{a,c} Â_{a,t}                                    (local fields, one per column)
    m^α_{a,t+1} = (1−ε) Σ_c f_c W^α_{a,c} u_c + ε/N_pe Σ_j W^α_{a,j} P_j((t+1) mod C)
    m^o_{a,t+1} = Σ_c f_c W^o_{a,c} u_c                               (v1 "mo_se")
    Â_{t+1} = Σ_τ softmax_τ[(γ/√M) m^q_{t+1}·m^k_τ] m^v_τ            (max-shifted)

with f_c the share of semantic spins in column c. Arrays keep the batch (β values × trials) last:
Â (M, B), window (C, M, B); every contraction over a short axis is an explicit sum, so a batch
member's result does not depend on the batch size.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

import numpy as np

from tokendyn.theory.dmft.model import Model, check_beta

SHORT = 8  # contractions over axes at most this long are explicit sums (deterministic)


@dataclass
class WindowState:
    """Â (M, B), V = m^v and K = m^k windows (C, M, B), clock t (time of Â), filled slots."""

    A: np.ndarray
    V: np.ndarray
    K: np.ndarray
    t: int
    filled: int

    @property
    def batch(self) -> int:
        return self.A.shape[-1]

    def copy(self) -> WindowState:
        return replace(self, A=self.A.copy(), V=self.V.copy(), K=self.K.copy())

    def tile(self, reps: int) -> WindowState:
        """Repeat the whole batch `reps` times (batch index = rep · B + b)."""
        return replace(
            self,
            A=np.tile(self.A, (1, reps)),
            V=np.tile(self.V, (1, 1, reps)),
            K=np.tile(self.K, (1, 1, reps)),
        )

    def select(self, index: np.ndarray | slice) -> WindowState:
        return replace(self, A=self.A[:, index], V=self.V[..., index], K=self.K[..., index])


def contract(mat: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Σ_l mat[l, j] x[l, …] -> (J, …); explicit sums for a short l axis, BLAS otherwise."""
    rest = x.shape[1:]
    flat = x.reshape(x.shape[0], -1)
    if mat.shape[0] > SHORT:
        return (mat.T @ flat).reshape(mat.shape[1], *rest)
    out = mat[0, :, None] * flat[0]
    for i in range(1, mat.shape[0]):
        out += mat[i, :, None] * flat[i]
    return out.reshape(mat.shape[1], *rest)


class Core:
    """Precomputed matrices of one model in `form` 'block' (distinct columns) or 'general'
    (every semantic column on its own)."""

    def __init__(self, model: Model, form: str = "block") -> None:
        from tokendyn.errors import ConfigError

        if form not in ("block", "general"):
            raise ConfigError("form", f"is {form!r}", "use 'block' or 'general'")
        w = model.weights.blocks() if form == "block" else model.weights.expanded()
        p = model.params
        self.model, self.form, self.weights = model, form, w
        self.M, self.C = model.M, model.C
        f = w.fractions
        scale = np.array([1.0 - p.epsilon if p.mo_epsilon else 1.0] + [1.0 - p.epsilon] * 3)
        # G[c, r·M + a] = scale_r f_c W^r_{a,c}
        self.G = (scale[:, None, None] * w.se * f).transpose(2, 0, 1).reshape(len(f), 4 * self.M)
        self.Wo = w.se[0]  # (M, K)
        self.offset = model.pe_overlaps().reshape(self.C, 4 * self.M)  # (C, 4M)
        self.score = p.gamma / np.sqrt(self.M)

    def fields(self, A: np.ndarray) -> np.ndarray:
        """h_c = Σ_a W^o_{a,c} Â_a: (K, B)."""
        return contract(self.Wo, A)

    def contract(self, u: np.ndarray) -> np.ndarray:
        """Σ_c G[c, ·] u_c: the semantic part of (m^o, m^v, m^q, m^k), (4M, …)."""
        return contract(self.G, u)

    def overlaps(self, u: np.ndarray, phase: int) -> np.ndarray:
        """(m^o, m^v, m^q, m^k) stacked (4M, B) from the column averages u (K, B)."""
        return contract(self.G, u) + self.offset[phase, :, None]

    def scores(self, state: WindowState, q: np.ndarray) -> np.ndarray:
        """s_τ = (γ/√M) m^q·m^k_τ over the window slots (C, B); −∞ on slots not yet filled."""
        s = q[0] * state.K[:, 0]
        for a in range(1, self.M):
            s += q[a] * state.K[:, a]
        s *= self.score
        if state.filled < self.C:
            s[state.filled :] = -np.inf
        return s

    def attend(self, state: WindowState, m: np.ndarray, phase: int) -> np.ndarray:
        """Write slot `phase`, update Â in place, return the attention weights α (C, B)."""
        M = self.M
        state.V[phase] = m[M : 2 * M]
        state.K[phase] = m[3 * M :]
        state.filled = min(state.filled + 1, self.C)
        s = self.scores(state, m[2 * M : 3 * M])
        s -= s.max(axis=0)
        alpha = np.exp(s)
        alpha /= alpha.sum(axis=0)
        A = alpha[0] * state.V[0]
        for c in range(1, self.C):
            A += alpha[c] * state.V[c]
        state.A = A
        return alpha

    def step(self, state: WindowState, u: np.ndarray) -> np.ndarray:
        """Advance the state by one token with column averages u; return m^o (M, B)."""
        phase = (state.t + 1) % self.C
        m = self.overlaps(u, phase)
        self.attend(state, m, phase)
        state.t += 1
        return m[: self.M]


Averages = Callable[[np.ndarray, np.ndarray], np.ndarray]


def run(
    core: Core,
    averages: Averages,
    state: WindowState,
    beta: np.ndarray | float,
    n_transient: int,
    n_record: int,
    every: int = 1,
) -> np.ndarray:
    """Advance `state` in place n_transient + n_record steps; return m^o of the recorded steps,
    (n_record // every, M, B). `averages(h, β)` gives the column averages u from the fields."""
    from tokendyn.errors import ConfigError

    b = check_beta(beta)
    if b.size not in (1, state.batch):
        raise ConfigError("beta", f"has {b.size} values for a batch of {state.batch}", "match them")
    for name, n in (("n_transient", n_transient), ("n_record", n_record), ("every", every)):
        if n < (1 if name == "every" else 0):
            raise ConfigError(name, f"is {n}", "use a non-negative step count")
    for _ in range(n_transient):
        core.step(state, averages(core.fields(state.A), b))
    out = np.empty((n_record // every, core.M, state.batch))
    for i in range(n_record):
        mo = core.step(state, averages(core.fields(state.A), b))
        if i % every == every - 1:
            out[i // every] = mo
    return out
