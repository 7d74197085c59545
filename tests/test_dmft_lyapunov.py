"""Tangent map against finite differences, Lyapunov exponents against Floquet multipliers."""

import numpy as np
import pytest

from tokendyn.theory.dmft.dynamics import Core, WindowState
from tokendyn.theory.dmft.lyapunov import Tangent, lyapunov, random_tangent, regime, tangent_step
from tokendyn.theory.dmft.meanfield import MeanFieldMap
from tokendyn.theory.dmft.model import paper_model
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
