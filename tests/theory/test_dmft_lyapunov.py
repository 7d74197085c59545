"""Tangent map against finite differences, Lyapunov exponents against Floquet multipliers and
against an independent 80-digit computation."""

import functools

import mpmath as mp
import numpy as np
import pytest

from tokendyn.theory.dmft.dynamics import Core, WindowState
from tokendyn.theory.dmft.lyapunov import (
    Tangent,
    echelon,
    lyapunov,
    random_tangent,
    regime,
    tangent_step,
)
from tokendyn.theory.dmft.meanfield import MeanFieldMap
from tokendyn.theory.dmft.model import paper_model, positional_codes
from tokendyn.theory.dmft.runs import lyapunov_summary
from tokendyn.theory.dmft.starts import start_state, x0_start


def _flat(s: WindowState) -> np.ndarray:
    return np.concatenate([s.A[:, 0], s.V[..., 0].ravel(), s.K[..., 0].ravel()])


def _shifted(s: WindowState, d: np.ndarray) -> WindowState:
    out = s.copy()
    out.A = out.A + d[:3, None]
    out.V = out.V + d[3:15].reshape(4, 3, 1)
    out.K = out.K + d[15:].reshape(4, 3, 1)
    return out


def _jacobian_fd(model, state, beta, steps=1, h=1e-6):
    """Central differences of F^steps on the 27-dimensional state (error O(h²) + O(1e-16/h))."""
    cols = []
    for j in range(27):
        e = np.zeros(27)
        e[j] = h
        ends = []
        for sign in (1, -1):
            s = _shifted(state, sign * e)
            MeanFieldMap(model).run(s, beta, steps, 0)
            ends.append(_flat(s))
        cols.append((ends[0] - ends[1]) / (2 * h))
    return np.array(cols).T


@pytest.mark.parametrize(
    ("start", "beta", "pre"),
    [("x0", 1.28, 0), ("x0", 2.0, 2), ("zoom", 1.266, 200), ("full", 3.0, 0)],
)
def test_tangent_map_matches_finite_differences(start, beta, pre):
    """Including the first steps from x_0, when the window is only partly filled."""
    model = paper_model()
    state = x0_start(model) if start == "x0" else start_state(start, model)
    MeanFieldMap(model).run(state, beta, pre, 0)
    J = _jacobian_fd(model, state, beta)
    core = Core(model)
    tangent = random_tangent(core, 27, 1, seed=1)
    basis = tangent.stacked()[0]
    tangent_step(core, state.copy(), tangent, np.array([beta]))
    np.testing.assert_allclose(tangent.stacked()[0], J @ basis, atol=1e-8 * np.abs(J).max())


def test_exponents_match_floquet_multipliers_on_the_period24_orbit():
    """On the stable period-24 orbit at β = 3: λ_i = log|ρ_i| / 24 with ρ the eigenvalues of the
    24-step Jacobian (finite differences); QR over 4800 steps converges to ~1e-3."""
    model = paper_model()
    state = start_state("full", model)
    rho = np.sort(np.abs(np.linalg.eigvals(_jacobian_fd(model, state, 3.0, 24))))[::-1]
    floquet = np.log(rho[:2]) / 24
    res = lyapunov(model, state, 3.0, 4800)
    np.testing.assert_allclose(res.exponents[0, :2], floquet, atol=2e-3)
    assert floquet[0] == pytest.approx(-0.1015, abs=1e-3)


def test_qr_every_keeps_the_leading_exponents():
    """Re-orthonormalising every 4 steps keeps λ1..λ3; deeper ones (λ ≈ −9/step) underflow
    against λ1 within 4 steps, so qr_every > 1 is only for the leading exponents."""
    model = paper_model()
    a = lyapunov(model, start_state("full", model), 3.0, 960, qr_every=1).exponents
    b = lyapunov(model, start_state("full", model), 3.0, 960, qr_every=4).exponents
    np.testing.assert_allclose(a[:, :3], b[:, :3], atol=1e-8)


def test_regime_labels():
    assert regime(-0.05) == "periodic"
    assert regime(5e-5) == "quasi-periodic"
    assert regime(-5e-5) == "quasi-periodic"
    assert regime(0.14) == "chaotic"


def test_beta_zero_has_minus_infinite_exponents():
    out = lyapunov_summary(0.0, "zoom", n_record=50, n_transient=10)
    assert out["lyapunov"][0] is None and out["regime"] == "periodic"


def test_tangent_round_trip():
    core = Core(paper_model())
    t = random_tangent(core, 5, 3, seed=2)
    Y = t.stacked()
    t2 = Tangent(t.dA * 0, t.dV * 0, t.dK * 0)
    t2.assign(Y)
    np.testing.assert_array_equal(t2.stacked(), Y)
    np.testing.assert_allclose(Y[0].T @ Y[0], np.eye(5), atol=1e-14)


# --- An independent 80-digit reference (mpmath): its own overlaps, softmax, Jacobian and
# Gram–Schmidt QR, along the library's double-precision trajectory. 80 digits reproduce 120
# digits to 4 decimals on these runs; 40 digits do not (per-step weights reach e^-135).

DIGITS = 80


def _mp_jacobian(model, A, V, K, t, beta):
    """The 27×27 Jacobian of one map step at the state (Â, V window, K window, clock t), written
    from the spec's equations: μ_c = tanh(β Σ_a W^o_{a,c} Â_a), m^r_a = (1−ε) Σ_c f_c W^r_{a,c} μ_c
    + (ε/N_pe) Σ_j W^r_{a,j} P_j(p), slot p ← (m^v, m^k), α = softmax((γ/√M) m^q·K'_τ),
    Â' = Σ_τ α_τ V'_τ. State order: Â (M), V slot-major (C·M), K slot-major (C·M)."""
    w = model.weights.blocks()
    M, C, nb = model.M, model.C, w.se.shape[2]
    eps, b = mp.mpf(model.params.epsilon), mp.mpf(beta)
    f = [mp.mpf(int(c)) / int(w.counts.sum()) for c in w.counts]
    W = [[[mp.mpf(float(w.se[r, a, c])) for c in range(nb)] for a in range(M)] for r in range(4)]
    P = positional_codes(C, w.n_pe)
    g = mp.mpf(model.params.gamma) / mp.sqrt(M)
    D = M + 2 * C * M
    p = (t + 1) % C
    A = [mp.mpf(float(x)) for x in A]
    V = [[mp.mpf(float(x)) for x in row] for row in V]
    K = [[mp.mpf(float(x)) for x in row] for row in K]
    h = [mp.fsum(W[0][a][c] * A[a] for a in range(M)) for c in range(nb)]
    mu = [mp.tanh(b * x) for x in h]
    dmu = [b / mp.cosh(b * x) ** 2 for x in h]  # dμ_c/dh_c

    def m(r, a):
        pe = mp.fsum(float(w.pe[r, a, j]) * int(P[p, j]) for j in range(w.n_pe)) / w.n_pe
        return (1 - eps) * mp.fsum(f[c] * W[r][a][c] * mu[c] for c in range(nb)) + eps * pe

    def dm(r, a, x):  # ∂m^r_a/∂Â_x
        return (1 - eps) * mp.fsum(f[c] * W[r][a][c] * dmu[c] * W[0][x][c] for c in range(nb))

    mq = [m(2, a) for a in range(M)]
    V[p], K[p] = [m(1, a) for a in range(M)], [m(3, a) for a in range(M)]
    s = [g * mp.fsum(mq[a] * K[c][a] for a in range(M)) for c in range(C)]
    e = [mp.exp(x - max(s)) for x in s]
    alpha = [x / mp.fsum(e) for x in e]
    iV, iK = M, M + C * M
    ds = [[mp.mpf(0)] * D for _ in range(C)]  # ∂s_c/∂state
    for c in range(C):
        for x in range(M):
            ds[c][x] = g * mp.fsum(dm(2, a, x) * K[c][a] for a in range(M))
            if c == p:
                ds[c][x] += g * mp.fsum(mq[a] * dm(3, a, x) for a in range(M))
        if c != p:
            for a in range(M):
                ds[c][iK + c * M + a] = g * mq[a]
    dalpha = [
        [alpha[c] * (ds[c][x] - mp.fsum(alpha[e] * ds[e][x] for e in range(C))) for x in range(D)]
        for c in range(C)
    ]
    J = mp.matrix(D, D)
    for a in range(M):
        for x in range(D):
            J[a, x] = mp.fsum(dalpha[c][x] * V[c][a] for c in range(C))
            if x < M:
                J[a, x] += alpha[p] * dm(1, a, x)
        for c in range(C):
            if c != p:
                J[a, iV + c * M + a] += alpha[c]
                for i in (iV + c * M + a, iK + c * M + a):
                    J[i, i] = mp.mpf(1)
            else:
                for x in range(M):
                    J[iV + c * M + a, x] = dm(1, a, x)
                    J[iK + c * M + a, x] = dm(3, a, x)
    return J


def _trajectory(model, beta, n_transient, n_steps):
    """The state before each of n_steps map steps (double precision, the library's map)."""
    state = start_state("zoom", model)
    MeanFieldMap(model).run(state, beta, n_transient, 0)
    start, states = state.copy(), []
    for _ in range(n_steps):
        states.append(
            (state.A[:, 0].copy(), state.V[..., 0].copy(), state.K[..., 0].copy(), state.t)
        )
        MeanFieldMap(model).step(state, beta)
    return start, states


@functools.cache
def _exponents(beta, n_steps, k=12, n_transient=2000):
    """(library, 80-digit reference) exponents over the same n_steps from the same start basis."""
    model = paper_model()
    start, states = _trajectory(model, beta, n_transient, n_steps)
    Q0 = random_tangent(Core(model), k, 1, seed=0).stacked()[0]
    with mp.workdps(DIGITS):
        Q = mp.matrix(Q0.tolist())
        logs = [mp.mpf(0)] * k
        for A, V, K, t in states:
            Y = _mp_jacobian(model, A, V, K, t, beta) * Q
            for j in range(k):  # modified Gram–Schmidt
                for i in range(j):
                    r = mp.fsum(Y[x, i] * Y[x, j] for x in range(Y.rows))
                    for x in range(Y.rows):
                        Y[x, j] -= r * Y[x, i]
                norm = mp.sqrt(mp.fsum(Y[x, j] ** 2 for x in range(Y.rows)))
                logs[j] += mp.log(norm)
                for x in range(Y.rows):
                    Y[x, j] /= norm
            Q = Y
        reference = np.array([float(x / n_steps) for x in logs])
    library = lyapunov(model, start, beta, n_steps, k=k).exponents[0]
    return library, reference


def test_mp_reference_jacobian_matches_the_tangent_map():
    """The two independent Jacobians agree where double precision resolves them (O(1) entries)."""
    model = paper_model()
    for beta in (1.3, 2.0):
        start, states = _trajectory(model, beta, 500, 1)
        tangent = random_tangent(Core(model), 27, 1, seed=1)
        basis = tangent.stacked()[0]
        tangent_step(Core(model), start, tangent, np.array([beta]))
        with mp.workdps(DIGITS):
            J = np.array(_mp_jacobian(model, *states[0], beta).tolist(), dtype=float)
        np.testing.assert_allclose(tangent.stacked()[0], J @ basis, rtol=0, atol=1e-12)


def _within(library, reference):
    """The issue's criterion: within 2 % or 0.05 (absolute)."""
    return np.abs(library - reference) <= np.maximum(0.02 * np.abs(reference), 0.05)


@pytest.mark.parametrize("beta", [1.3, 2.0])
def test_leading_exponents_match_the_80_digit_reference(beta):
    """λ1…λ3, which give the regime labels."""
    library, reference = _exponents(beta, 60)
    assert _within(library[:3], reference[:3]).all(), (library, reference)


def test_every_exponent_matches_the_80_digit_reference_at_beta_1_3():
    """All 12 exponents over 60 steps (deep ones −4.3…−7.3: the one-hot steps' true contraction)."""
    library, reference = _exponents(1.3, 60)
    assert _within(library, reference).all(), (library, reference)


@pytest.mark.xfail(
    strict=True,
    reason="over the first C = 4 steps the 27-dimensional start basis is generic in a space larger "
    "than the 12-dimensional window (raw slots), where the echelon meets cancellations that "
    "double-precision Jacobian entries resolve only to 1e-16; a fixed 10–55 (log units) on "
    "λ7…λ12: λ9 6.9 % off over 60 steps, within 1.4 % over 300 (slow test, docs/dmft.md)",
)
def test_every_exponent_matches_the_80_digit_reference_at_beta_2_over_60_steps():
    library, reference = _exponents(2.0, 60)
    assert _within(library, reference).all(), (library, reference)


@pytest.mark.slow
@pytest.mark.parametrize("beta", [1.3, 2.0])
def test_every_exponent_matches_the_80_digit_reference_over_300_steps(beta):
    library, reference = _exponents(beta, 300)
    assert _within(library, reference).all(), (library, reference)


def test_echelon_keeps_every_leading_span():
    """Y = Y' U with U upper triangular: the j-volume of the first j columns of Y equals
    Π_{i≤j} |U_ii| times that of Y'; each pivot is 1 and the largest entry of the newest group
    holding an entry ≥ tau·max, and later columns vanish on earlier pivot rows."""
    rng = np.random.default_rng(3)
    Y = rng.standard_normal((2, 9, 6)) * np.logspace(0, -30, 9)[None, :, None]
    Y[0, :3, 2:] = 0.0  # later columns of batch member 0 start without the newest group
    group = np.repeat(np.arange(3), 3)
    before = Y.copy()
    logs = echelon(Y, 1e-14, group)

    def log_volumes(Z):
        R = np.linalg.qr(Z.astype(np.float64), mode="r")
        return np.cumsum(np.log(np.abs(np.diagonal(R, axis1=1, axis2=2))), axis=1)

    np.testing.assert_allclose(log_volumes(before), log_volumes(Y) + np.cumsum(logs, axis=1),
                               rtol=1e-10)  # fmt: skip
    for b in range(2):
        pivots = []
        for j in range(6):
            y = np.abs(Y[b, :, j])
            assert (y[pivots] == 0.0).all()
            first = group[y >= 1e-14 * y.max()].min()
            r = int(np.argmax(np.where(group == first, y, -1.0)))
            assert Y[b, r, j] == 1.0
            pivots.append(r)
