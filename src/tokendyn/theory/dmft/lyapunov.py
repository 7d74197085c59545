"""Lyapunov spectrum of the mean-field map (spec §3.4). The state is (Â_t, m^v window, m^k window),
dimension D = M + 2CM; its image after C steps is the M·C-dimensional manifold of the last C
attention vectors, so the first min(k, M·C) exponents are those of the 12-dimensional window map.

Tangent map (`tangent_step`, 27-dimensional, used for finite-difference checks):

    dμ_c = (1 − μ_c²) β Σ_a W^o_{a,c} dÂ_a,     dm^α = (1−ε) Σ_c f_c W^α_c dμ_c
    ds_τ = (γ/√M)(dm^q·m^k_τ + m^q·dm^k_τ),     dα_τ = α_τ Σ_σ α_σ (ds_τ − ds_σ)
    dÂ' = Σ_τ (dα_τ m^v_τ + α_τ dm^v_τ)

`lyapunov` writes the same map in slot coordinates, so that a near-one-hot softmax keeps its true
contraction. A slot τ written from Â_{τ−1} holds dm^v_τ = P^v_τ ξ_τ, dm^k_τ = P^k_τ ξ_τ with
ξ_τ = dÂ_{τ−1} and P^α = ∂m^α/∂Â = (1−ε) Σ_c f_c W^α_c β(1 − μ_c²) W^o_c (3×3, stored at the
write); a slot not yet rewritten keeps its raw (dm^v, dm^k). With V_τ − Â' = Σ_σ α_σ (V_τ − V_σ)
(no cancellation) the step is

    dÂ' = Σ_τ α_τ [P^v_τ ξ_τ + (γ/√M)(V_τ − Â') (m^q·P^k_τ ξ_τ)]
          + (γ/√M) Σ_τ α_τ (V_τ − Â') (m^k_τ·P^q dÂ),          ξ_new slot = dÂ,

other slots copied, the oldest slot dropped: the rows (dÂ, newest slot, …, oldest slot) shift
by one slot and only the dÂ' rows are computed. Each block carries its weight α_τ = e^{s_τ − lse}
as an exact factor (extended range, no underflow); a one-hot step multiplies what lives only in
the non-dominant slots by α_τ ~ e^−135, far below double precision's 2.2e−16 relative to O(1)
vectors, so instead of QR the tangent basis Y is kept in column echelon form: Y ← Y U⁻¹ with U
upper triangular (the span of the first j vectors, hence every exponent, is unchanged), column j
normalised on its pivot — its largest entry in the newest slot group holding an entry ≥ 10⁻¹⁴
max|y| — and cleared from the later columns. Later columns are then exactly zero on the newer
slots' pivot rows, so a direction that lives only in old slots is multiplied by its α_τ exactly
instead of drowning in rounding of O(1) entries. The basis is in extended precision
(np.longdouble) to absorb the pivot growth. With Y_0 the start basis, J_T⋯J_1 Y_0 = Y_T U_T⋯U_1
exactly; a last QR of Y_T (as 27-dimensional vectors) gives R_T and

    λ_j = (Σ_t log|U_t,jj| + log|R_T,jj|) / T,

which equals the QR method's value (QR of J_T⋯J_1 Y_0) in exact arithmetic. Accuracy against an
independent 80-digit computation: docs/dmft.md.

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
PIVOT_TOL = 1e-14  # echelon pivots: in the newest slot with an entry ≥ PIVOT_TOL·max|y|
EXTENDED = np.longdouble  # the basis; 64-bit mantissa on x86-64, absorbs the pivot growth
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


def _derivative(core: Core, A: np.ndarray, beta: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """μ = tanh(β h) (K, B) and ∂(m^o, m^v, m^q, m^k)/∂Â = G^T diag(β(1 − μ²)) W^oT (4M, M, B)."""
    mu = np.tanh(beta * core.fields(A))
    return mu, core.contract(((1.0 - mu * mu) * beta)[:, None] * core.Wo.T[:, :, None])


class _SlotBasis:
    """k tangent vectors in slot coordinates, rows newest first: dÂ (M), then each window slot
    from the newest to the oldest, as ξ_c (M, the dÂ that wrote it) or, until it is rewritten,
    as its raw (dV_c, dK_c) (2M). Stored (B, rows, k) in extended precision."""

    def __init__(self, core: Core, state: WindowState, tangent: Tangent) -> None:
        self.core = core
        order = [(state.t - i) % core.C for i in range(core.C)]
        # (slot, (P^v, P^k) at the write, or None while raw), newest first
        self.slots: list[tuple[int, tuple[np.ndarray, np.ndarray] | None]] = [
            (c, None) for c in order
        ]
        parts = [tangent.dA] + [np.concatenate([tangent.dV[c], tangent.dK[c]]) for c in order]
        self.Y = np.concatenate(parts).transpose(2, 0, 1).astype(EXTENDED)

    def step(self, state: WindowState, beta: np.ndarray) -> np.ndarray:
        """Advance state and basis by one map step (no re-orthonormalisation); return m^o."""
        core, M, g = self.core, self.core.M, self.core.score
        p = (state.t + 1) % core.C
        mu, D = _derivative(core, state.A, beta)
        m = core.overlaps(mu, p)
        core.attend(state, m, p)
        s = core.scores(state, m[2 * M : 3 * M])
        w = np.exp((s - s.max(axis=0)).astype(EXTENDED))
        alpha = w / w.sum(axis=0)  # (C, B); extended range: no underflow for weights ≥ e^-11000
        V = state.V.astype(EXTENDED)
        dev = sum(alpha[e] * (V - V[e]) for e in range(core.C))  # V_τ − Â' (C, M, B)
        q, Pv, Pq, Pk = m[2 * M : 3 * M], D[M : 2 * M], D[2 * M : 3 * M], D[3 * M :]

        def feed(c: int, Pv_c: np.ndarray, Pk_c: np.ndarray) -> np.ndarray:
            """α_c (P^v_c + γ/√M (V_c − Â') (m^q·P^k_c)): (M, M, B)."""
            qPk = np.einsum("ab,axb->xb", q, Pk_c)
            return alpha[c] * (Pv_c + g * dev[c][:, None] * qPk[None])

        KPq = np.einsum("cab,axb->cxb", state.K, Pq)
        blocks = [feed(p, Pv, Pk) + g * np.einsum("cb,cab,cxb->axb", alpha, dev, KPq)]
        eye = np.broadcast_to(np.eye(M)[:, :, None], (M, M, state.batch))
        for c, P in self.slots[:-1]:  # the oldest slot is p: overwritten, it feeds nothing
            if P is None:
                raw = np.concatenate([eye, g * dev[c][:, None] * q[None]], axis=1)
                blocks.append(alpha[c] * raw)
            else:
                blocks.append(feed(c, *P))
        new_A, row = 0.0, 0
        for blk in blocks:
            d = blk.shape[1]
            new_A = new_A + np.einsum("axb,bxk->bak", blk, self.Y[:, row : row + d])
            row += d
        self.Y = np.concatenate([new_A, self.Y[:, :row]], axis=1)
        self.slots = [(p, (Pv, Pk)), *self.slots[:-1]]
        state.t += 1
        return m[:M]

    def groups(self) -> np.ndarray:
        """Group index of every row: 0 for dÂ, then 1… for the slots, newest first."""
        M = self.core.M
        sizes = [M] + [2 * M if P is None else M for _, P in self.slots]
        return np.repeat(np.arange(len(sizes)), sizes)

    def tangent(self) -> Tangent:
        """The basis as 27-dimensional (dÂ, dV, dK) vectors, dV_c = P^v_c ξ_c, dK_c = P^k_c ξ_c."""
        M, C = self.core.M, self.core.C
        Y = self.Y.astype(np.float64).transpose(1, 2, 0)  # (rows, k, B)
        dV = np.zeros((C, M, *Y.shape[1:]))
        dK = np.zeros_like(dV)
        row = M
        for c, P in self.slots:
            if P is None:
                dV[c], dK[c] = Y[row : row + M], Y[row + M : row + 2 * M]
                row += 2 * M
            else:
                dV[c] = np.einsum("axb,xkb->akb", P[0], Y[row : row + M])
                dK[c] = np.einsum("axb,xkb->akb", P[1], Y[row : row + M])
                row += M
        return Tangent(Y[:M], dV, dK)


def echelon(Y: np.ndarray, tau: float, group: np.ndarray) -> np.ndarray:
    """Column echelon form of Y (B, n, k) in place by column operations (Y ← Y U⁻¹, U upper
    triangular, so span(y_1..y_j) is kept for every j); returns log|U_jj| (B, k).

    Column j, already zero on the pivot rows of columns < j, takes as pivot its largest entry in
    the first row group (`group`, 0 = newest) that holds an entry ≥ tau·max|y|, is divided by it
    (so y_r = 1 exactly) and subtracted from the later columns (which become exactly 0 on row r).
    A zero column gives −∞ and claims no row."""
    nb, _, k = Y.shape
    n_groups = int(group.max()) + 1
    at = np.arange(nb)
    U = np.empty((nb, k), dtype=Y.dtype)
    for j in range(k):
        y = Y[:, :, j]
        a = np.abs(y)
        top = a.max(axis=1)
        first = np.min(np.where(a >= tau * top[:, None], group, n_groups), axis=1)
        r = np.argmax(np.where(group == first[:, None], a, -1.0), axis=1)
        u = y[at, r]
        U[:, j] = u
        zero = top == 0.0
        if zero.any():
            u = np.where(zero, 1.0, u)
        y /= u[:, None]
        if j + 1 < k:
            f = Y[at, r, j + 1 :]
            if zero.any():
                f[zero] = 0.0
            Y[:, :, j + 1 :] -= y[:, :, None] * f[:, None, :]
    with np.errstate(divide="ignore"):
        return np.log(np.abs(U)).astype(np.float64)


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
    qr_every > 1 re-echelons only every qr_every steps: less work, only the leading exponents are
    reliable."""
    core = Core(model, "block")
    b = check_beta(beta)
    if b.size not in (1, state.batch):
        raise ConfigError("beta", f"has {b.size} values for a batch of {state.batch}", "match them")
    if n_steps < 1 or qr_every < 1:
        raise ConfigError("n_steps", f"is {n_steps} (qr_every {qr_every})", "use positive counts")
    k = model.M * model.C if k is None else k
    basis = _SlotBasis(core, state, random_tangent(core, k, state.batch, seed))
    total = echelon(basis.Y, PIVOT_TOL, basis.groups())
    mo = np.empty((n_steps, model.M, state.batch))
    for i in range(n_steps):
        mo[i] = basis.step(state, b)
        if i == n_steps - 1:
            # last step: partial pivoting, a well-conditioned end basis
            total += echelon(basis.Y, 1.0, basis.groups())
        elif (i + 1) % qr_every == 0:
            total += echelon(basis.Y, PIVOT_TOL, basis.groups())
    with np.errstate(divide="ignore"):
        R = np.linalg.qr(basis.tangent().stacked(), mode="r")
        total += np.log(np.abs(np.diagonal(R, axis1=1, axis2=2)))
    return LyapunovResult(-np.sort(-total / n_steps, axis=1), mo)


def regime(l1: float, tol: float = TOL) -> str:
    """'periodic' (λ1 < −tol), 'quasi-periodic' (|λ1| ≤ tol) or 'chaotic' (λ1 > tol)."""
    if l1 > tol:
        return "chaotic"
    return "periodic" if l1 < -tol else "quasi-periodic"
