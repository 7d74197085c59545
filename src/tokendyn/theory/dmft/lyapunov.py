"""Lyapunov spectrum of the mean-field map by its tangent map and QR re-orthonormalisation
(spec §3.4). The state is (Â_t, m^v window, m^k window), dimension D = M + 2CM; its image after C
steps is the M·C-dimensional manifold of the last C attention vectors, so the first min(k, M·C)
exponents are those of the 12-dimensional window map. The tangent step, lag by lag:

    dμ_c = (1 − μ_c²) β Σ_a W^o_{a,c} dÂ_a,     dm^α = (1−ε) Σ_c f_c W^α_c dμ_c
    ds_τ = (γ/√M)(dm^q·m^k_τ + m^q·dm^k_τ),     dα_τ = α_τ Σ_σ α_σ (ds_τ − ds_σ)
    dÂ' = Σ_τ (dα_τ m^v_τ + α_τ dm^v_τ)

dα_τ = α_τ (ds_τ − Σ_σ α_σ ds_σ) written as a sum of the other weights times differences, so a
near-one-hot softmax (α_τ* = 1 − O(1e−20)) keeps dα_τ* = O(α_σ) instead of a rounding residue.
Known limit: on such steps the exponents beyond the leading M = 3 are still biased towards zero
(their per-step contraction floors near log(2.2e−16)), because the QR of the 27-dimensional
tangent vectors is in double precision (80-digit reference: tests/theory/test_dmft_lyapunov.py,
docs/dmft.md).

Regime labels from λ1 with the spec's threshold 1e−4: λ1 < −tol periodic, |λ1| ≤ tol
quasi-periodic, λ1 > tol chaotic.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from tokendyn.errors import ConfigError
from tokendyn.theory.dmft.dynamics import Core, WindowState
from tokendyn.theory.dmft.model import Model, check_beta

TOL = 1e-4
REGIMES = ("periodic", "quasi-periodic", "chaotic")


@dataclass
class Tangent:
    """k tangent vectors per batch member: dÂ (M, k, B), dV and dK (C, M, k, B)."""

    dA: np.ndarray  # noqa: N815 (spec symbols)
    dV: np.ndarray  # noqa: N815
    dK: np.ndarray  # noqa: N815

    def stacked(self) -> np.ndarray:
        """(B, D, k) with D = M + 2CM."""
        _, k, B = self.dA.shape
        flat = np.concatenate([self.dA, self.dV.reshape(-1, k, B), self.dK.reshape(-1, k, B)])
        return flat.transpose(2, 0, 1)

    def assign(self, Y: np.ndarray) -> None:
        """Inverse of `stacked`."""
        M = self.dA.shape[0]
        flat = Y.transpose(1, 2, 0)
        n = self.dV[..., 0, 0].size
        self.dA = np.ascontiguousarray(flat[:M])
        self.dV = np.ascontiguousarray(flat[M : M + n]).reshape(self.dV.shape)
        self.dK = np.ascontiguousarray(flat[M + n :]).reshape(self.dK.shape)


def random_tangent(core: Core, k: int, batch: int, seed: int = 0) -> Tangent:
    """k orthonormal random directions in the D-dimensional state space (same for every β)."""
    M, C = core.M, core.C
    D = M + 2 * C * M
    if not 1 <= k <= D:
        raise ConfigError("k", f"is {k}", f"use 1 ≤ k ≤ {D} (M·C = {M * C} is meaningful)")
    Q, _ = np.linalg.qr(np.random.default_rng(seed).standard_normal((D, k)))
    t = Tangent(np.zeros((M, k, batch)), np.zeros((C, M, k, batch)), np.zeros((C, M, k, batch)))
    t.assign(np.repeat(Q[None], batch, axis=0))
    return t


def tangent_step(core: Core, state: WindowState, tangent: Tangent, beta: np.ndarray) -> np.ndarray:
    """Advance state and tangent vectors (in place) by one map step; return m^o (M, B)."""
    M = core.M
    phase = (state.t + 1) % core.C
    mu = np.tanh(beta * core.fields(state.A))
    dmu = ((1.0 - mu * mu) * beta)[:, None] * core.fields(tangent.dA)  # (K, k, B)
    m = core.overlaps(mu, phase)
    dm = core.contract(dmu)  # (4M, k, B)
    alpha = core.attend(state, m, phase)
    tangent.dV[phase] = dm[M : 2 * M]
    tangent.dK[phase] = dm[3 * M :]
    q, dq = m[2 * M : 3 * M], dm[2 * M : 3 * M]
    ds = sum(dq[a] * state.K[:, a, None] + q[a] * tangent.dK[:, a] for a in range(M))
    ds *= core.score  # (C, k, B)
    dalpha = alpha[:, None] * sum(alpha[e, None] * (ds - ds[e]) for e in range(core.C))
    tangent.dA = sum(
        dalpha[c, None] * state.V[c, :, None] + alpha[c] * tangent.dV[c] for c in range(core.C)
    )
    state.t += 1
    return m[:M]


def orthonormalise(tangent: Tangent) -> np.ndarray:
    """QR of the stacked tangent vectors; keeps Q, returns log|R_ii| (B, k)."""
    Q, R = np.linalg.qr(tangent.stacked())
    sign = np.sign(np.diagonal(R, axis1=1, axis2=2))
    sign[sign == 0] = 1.0
    tangent.assign(Q * sign[:, None, :])
    with np.errstate(divide="ignore"):
        return np.log(np.abs(np.diagonal(R, axis1=1, axis2=2)))


@dataclass
class LyapunovResult:
    """exponents (B, k) per step, largest first; m^o of the measured steps (n_steps, M, B)."""

    exponents: np.ndarray
    mo: np.ndarray


def lyapunov(
    model: Model,
    state: WindowState,
    beta: np.ndarray | float,
    n_steps: int,
    k: int | None = None,
    qr_every: int = 1,
    seed: int = 0,
) -> LyapunovResult:
    """Mean-field Lyapunov spectrum over n_steps steps from `state` (advanced in place); run the
    transient first with `MeanFieldMap.run`. k defaults to M·C (the window map's dimension).
    qr_every > 1 saves time but only the leading exponents survive (the others underflow)."""
    core = Core(model, "block")
    b = check_beta(beta)
    if b.size not in (1, state.batch):
        raise ConfigError("beta", f"has {b.size} values for a batch of {state.batch}", "match them")
    if n_steps < 1 or qr_every < 1:
        raise ConfigError("n_steps", f"is {n_steps} (qr_every {qr_every})", "use positive counts")
    k = model.M * model.C if k is None else k
    tangent = random_tangent(core, k, state.batch, seed)
    total = np.zeros((state.batch, k))
    mo = np.empty((n_steps, model.M, state.batch))
    for i in range(n_steps):
        mo[i] = tangent_step(core, state, tangent, b)
        if (i + 1) % qr_every == 0 or i == n_steps - 1:
            total += orthonormalise(tangent)
    return LyapunovResult(-np.sort(-total / n_steps, axis=1), mo)


def regime(l1: float, tol: float = TOL) -> str:
    """'periodic' (λ1 < −tol), 'quasi-periodic' (|λ1| ≤ tol) or 'chaotic' (λ1 > tol)."""
    if l1 > tol:
        return "chaotic"
    return "periodic" if l1 < -tol else "quasi-periodic"
