"""Mean-field map: the period-24 orbit, general = block = sign-pattern form, an independent
step-by-step implementation, the ε = 0 odd symmetry, batch independence."""

import itertools

import numpy as np
import pytest

from tokendyn.studies.dmft import ORBIT_TOL, orbit_deviation, period24_run
from tokendyn.theory.dmft.analysis import detect_period
from tokendyn.theory.dmft.dynamics import Core
from tokendyn.theory.dmft.meanfield import MeanFieldMap
from tokendyn.theory.dmft.model import Model, Params, Weights, paper_model
from tokendyn.theory.dmft.runs import record
from tokendyn.theory.dmft.starts import start_state, x0_start


def test_period24_orbit_from_x0_short():
    """β = 3 from x_0: after 20 000 steps m^o is the spec's period-24 orbit (to its 4 decimals)."""
    mo = record(3.0, "x0", n_record=200, n_transient=20_000)
    dev, _ = orbit_deviation(mo)
    assert dev <= ORBIT_TOL
    assert detect_period(mo) == 24


@pytest.mark.slow
def test_period24_orbit_full_protocol():
    """120 000 steps from x_0 regenerate the stored full window (spec: exactly) and the orbit; from
    the stored window (v1 restart at t = 4) the orbit comes out with the spec's phase (shift 0)."""
    mo, window_diff = period24_run()
    assert window_diff < 1e-11  # the stored window has 12 decimals
    assert orbit_deviation(mo)[0] <= ORBIT_TOL
    assert orbit_deviation(record(3.0, "full")) == (pytest.approx(4.8e-5, abs=1e-6), 0)


def _random_model(M, n_se, seed, eps=0.02):
    rng = np.random.default_rng(seed)
    se = rng.choice([-1.0, 1.0], size=(4, M, n_se))
    pe = rng.choice([-1.0, 1.0], size=(4, M, 2))
    return Model(Weights(se, pe), Params(epsilon=eps))


@pytest.mark.parametrize("M", [1, 2, 3, 5])
def test_general_and_block_forms_agree(M):
    """Random ±1 weights (N_se = 40: repeated columns are likely for small M): the per-column
    average and the distinct-column form agree to round-off along 30 steps at β = 1.3."""
    model = _random_model(M, 40, M)
    state = x0_start(model, 2)
    beta = np.array([1.3, 2.0])
    a = MeanFieldMap(model, "block").run(state.copy(), beta, 0, 30)
    b = MeanFieldMap(model, "general").run(state.copy(), beta, 0, 30)
    np.testing.assert_allclose(a, b, atol=1e-12)


def test_paper_forms_agree_on_the_orbit():
    m_block, m_gen = paper_model(), paper_model(99)
    a = MeanFieldMap(m_block).run(start_state("full", m_block), 3.0, 0, 2000)
    b = MeanFieldMap(m_gen, "general").run(start_state("full", m_gen), 3.0, 0, 2000)
    np.testing.assert_allclose(a, b, atol=1e-13)


def test_sign_pattern_form():
    """spec §3.3 (M = 3), an independent formula:
    ⟨W^α_b μ⟩ = 2^{−2} Σ_s tanh(β s·Â)[Σ_a s_a C^{oα}_{ab} + s1s2s3 Q^{oα}_b]."""
    model = _random_model(3, 60, 7, eps=0.0)
    W = model.weights.se
    core = Core(model, "general")
    A = np.array([[0.3], [-0.2], [0.5]])
    beta = 1.7
    m = core.overlaps(np.tanh(beta * core.fields(A)), 0)[:, 0].reshape(4, 3)
    for role in range(4):
        C = W[0] @ W[role].T / 60
        Q = (W[0, 0] * W[0, 1] * W[0, 2] * W[role]).mean(axis=1)
        expect = np.zeros(3)
        for s in [(1, *rest) for rest in itertools.product([1, -1], repeat=2)]:
            s = np.array(s, dtype=float)
            expect += np.tanh(beta * s @ A[:, 0]) * (s @ C + s.prod() * Q) / 4
        np.testing.assert_allclose(m[role], expect, atol=1e-14)


def _naive_run(model, beta, steps):
    """Spec §2.7 literally: a list of past tokens' (m^v, m^k), softmax over the last C."""
    W, pe = model.weights.se, model.weights.pe
    eps, gamma, C = model.params.epsilon, model.params.gamma, model.params.C
    P = np.array([[-1, -1], [-1, 1], [1, -1], [1, 1]], dtype=float)
    x0 = np.concatenate([W[0, 0], P[0]])
    full = np.concatenate([W, pe], axis=2)
    v0, k0 = full[1] @ x0 / x0.size, full[3] @ x0 / x0.size  # v1 plain averages
    past, A, out = [(v0, k0)], v0, []
    for t in range(1, steps + 1):
        mu = np.tanh(beta * W[0].T @ A)
        m = [(1 - eps) * W[r] @ mu / W.shape[2] + eps * pe[r] @ P[t % C] / 2 for r in (1, 2, 3)]
        past.append((m[0], m[2]))
        window = past[-C:]
        s = np.array([gamma / np.sqrt(3) * m[1] @ k for _, k in window])
        a = np.exp(s - s.max())
        A = sum(ai * v for ai, (v, _) in zip(a / a.sum(), window, strict=True))
        out.append(W[0] @ mu / W.shape[2])
    return np.array(out)


def test_against_naive_implementation():
    """Agreement before transient chaos amplifies round-off (spec §3.6: 1e−16 for ~50 steps)."""
    model = paper_model(99)
    naive = _naive_run(model, 1.28, 40)
    state = x0_start(model, 1, "v1", n_se=99)
    mo = MeanFieldMap(model, "general").run(state, 1.28, 0, 40)[:, :, 0]
    np.testing.assert_allclose(mo, naive, atol=1e-12)


def test_odd_symmetry_at_zero_epsilon():
    """ε = 0: F(−state) = −F(state) exactly (tanh odd, q·k even)."""
    model = paper_model(None, epsilon=0.0)
    s1 = start_state("zoom", model, 2)
    s2 = s1.copy()
    s2.A, s2.V, s2.K = -s2.A, -s2.V, -s2.K
    beta = np.array([1.26, 1.4])
    a = MeanFieldMap(model).run(s1, beta, 0, 100)
    b = MeanFieldMap(model).run(s2, beta, 0, 100)
    np.testing.assert_array_equal(a, -b)
    # with ε = 0.02 the positional term breaks it
    m = paper_model()
    t1, t2 = start_state("zoom", m), start_state("zoom", m)
    t2.A, t2.V, t2.K = -t2.A, -t2.V, -t2.K
    assert (
        np.abs(MeanFieldMap(m).run(t1, 1.26, 0, 5) + MeanFieldMap(m).run(t2, 1.26, 0, 5)).max()
        > 1e-3
    )


def test_batch_over_beta_is_bitwise_single_runs():
    model = paper_model()
    betas = np.array([0.7, 1.266, 1.28, 2.2])
    batch = MeanFieldMap(model).run(start_state("zoom", model, 4), betas, 300, 50)
    for i, b in enumerate(betas):
        single = MeanFieldMap(model).run(start_state("zoom", model), b, 300, 50)
        np.testing.assert_array_equal(batch[:, :, i], single[:, :, 0])


def test_small_beta_ripple():
    """spec §3.6: max|m^o_1| ≈ 3e−4 at β = 0.5 (period-4 PE ripple)."""
    mo = record(0.5, "zoom", n_record=400, n_transient=2000)
    assert detect_period(mo) == 4
    assert abs(np.abs(mo[:, 0]).max() - 3e-4) < 1e-4
