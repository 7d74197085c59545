"""Gaussian closure (tokendyn.meanfield): right-hand sides, exact solutions, refusals."""

import numpy as np
import pytest
import scipy.linalg
import torch

from tokendyn.app.simulate import simulate
from tokendyn.engine.attention import Head, SoftmaxAttention
from tokendyn.engine.space import Euclidean
from tokendyn.errors import ConfigError
from tokendyn.studies.particles_vs_closure import mc_moment_rates, sample_gaussian
from tokendyn.theory import (
    VIClosedForm,
    authors_scheme,
    closure_rhs,
    gaussian_velocity,
    make_closure,
    solve_closure,
)

RNG = np.random.default_rng(7)
Q2 = np.array([[0.6, 0.2], [-0.1, 0.5]])
K2 = np.array([[0.3, -0.4], [0.5, 0.2]])
V2 = np.array([[0.8, 0.3], [-0.2, 0.6]])
M0 = np.array([0.4, -0.2])
S0 = np.array([[0.9, 0.3], [0.3, 0.5]])


def spd(d: int, rng=RNG) -> np.ndarray:
    G = rng.standard_normal((d, d))
    return G @ G.T / d + 0.2 * np.eye(d)


# --- the released code's right-hand sides (Σ only), as independent implementations ---------------
def rhs_trad(S, Q, K, V, d):
    A = K.T @ Q / np.sqrt(d)
    r = V @ S @ A @ S
    return r + r.T


def rhs_l2(S, Q, K, V, d):
    A = K.T @ Q / np.sqrt(d)
    r = 2 * V @ S @ np.linalg.inv(np.eye(d) + 2 * K.T @ K @ S) @ A @ S
    return r + r.T


def rhs_multihead(S, Q, K, V, d, H):
    k, r = d // H, 0
    for h in range(H):
        A_h = K[k * h : k * (h + 1)].T @ Q[k * h : k * (h + 1)] / np.sqrt(k)
        C_h = np.eye(d)[k * h : k * (h + 1)].T @ V[k * h : k * (h + 1)]
        r = r + C_h @ S @ A_h @ S
    return r + r.T


def rhs_sinkhorn(S, Q, K, V, d):
    R = scipy.linalg.sqrtm(S).real
    A = K.T @ Q
    prod = R @ A.T
    C_S = 0.5 * (R @ scipy.linalg.sqrtm(4 * prod @ S @ prod.T + np.eye(d)).real
                 @ np.linalg.pinv(R) - np.eye(d))  # fmt: skip
    r = V @ np.linalg.pinv(A.T) @ np.linalg.pinv(S) @ C_S @ S
    return r + r.T


@pytest.mark.parametrize("d", [2, 3, 4])
def test_authors_scaling_matches_released_rhs(d):
    rng = np.random.default_rng(d)
    Q, K, V = (rng.standard_normal((d, d)) for _ in range(3))
    S = spd(d, rng)
    cases = [
        ("softmax", 1, rhs_trad(S, Q, K, V, d)),
        ("l2", 1, rhs_l2(S, Q, K, V, d)),
        ("sinkhorn", 1, rhs_sinkhorn(S, Q, K, V, d)),
    ]
    if d % 2 == 0:
        cases.append(("multihead", 2, rhs_multihead(S, Q, K, V, d, 2)))
    for attention, heads, expected in cases:
        _, dcov = closure_rhs(attention, np.zeros(d), S, Q, K, V, 1.0, heads, scaling="authors")
        # both are O(1) float64 formulas of a few matrix products: round-off level agreement
        assert np.abs(dcov - expected).max() < 1e-10 * max(1.0, np.abs(expected).max()), attention


def test_multihead_with_one_head_equals_softmax():
    d = 3
    Q, K, V = (RNG.standard_normal((d, d)) for _ in range(3))
    mean, S = RNG.standard_normal(d), spd(d)
    soft = closure_rhs("softmax", mean, S, Q, K, V, 0.7)
    for heads in (1, [Head(*(torch.as_tensor(a) for a in (Q, K, V)), 0.7)]):
        mh = closure_rhs("multihead", mean, S, Q, K, V, 0.7, heads=heads)
        for a, b in zip(soft, mh, strict=True):
            np.testing.assert_allclose(a, b, rtol=0, atol=1e-14)


def test_general_output_maps_sum_of_heads():
    """General output maps W_h: the closure is the sum of single-head closures with V → W_h V_h."""
    d = 2
    t = lambda a: torch.as_tensor(np.asarray(a, float))  # noqa: E731
    W1, W2 = RNG.standard_normal((d, 1)), RNG.standard_normal((d, 1))
    heads = [Head(t(Q2[:1]), t(K2[:1]), t(V2[:1]), 0.8, t(W1)),
             Head(t(Q2[1:]), t(K2[1:]), t(V2[1:]), 1.3, t(W2))]  # fmt: skip
    got = closure_rhs("multihead", M0, S0, Q2, K2, V2, 1.0, heads=heads)
    one = closure_rhs("softmax", M0, S0, Q2[:1], K2[:1], W1 @ V2[:1], 0.8)
    two = closure_rhs("softmax", M0, S0, Q2[1:], K2[1:], W2 @ V2[1:], 1.3)
    for g, a, b in zip(got, one, two, strict=True):
        np.testing.assert_allclose(g, a + b, rtol=0, atol=1e-14)


def test_sinkhorn_small_coupling_is_softmax():
    """For small B, the plan's cross-covariance ΣBᵀΣ + O(|B|³) gives the softmax RHS (§3.4)."""
    s = 1e-4
    sink = closure_rhs("sinkhorn", M0, S0, s * Q2, K2, V2, 1.0)[1]
    soft = closure_rhs("softmax", M0, S0, s * Q2, K2, V2, 1.0)[1]
    assert np.abs(sink - soft).max() < 10 * s**3


def test_sinkhorn_inverse_free_form_handles_singular_cov():
    S = np.array([[1.0, 0.0], [0.0, 0.0]])
    dmean, dcov = closure_rhs("sinkhorn", M0, S, Q2, K2, V2, 1.0)
    assert np.isfinite(dcov).all() and np.allclose(dmean, V2 @ M0)
    assert abs(dcov[1, 1]) < 1e-15  # the degenerate direction stays degenerate


def test_gaussian_velocity_against_importance_sampling():
    """Γ[N(α,Σ)](x) at fixed points vs self-normalised importance sampling (independent numpy);
    tolerance: 6 delta-method standard errors."""
    n = 400_000
    y = RNG.multivariate_normal(M0, S0, size=n)
    for attention in ("softmax", "l2"):
        for x in ([0.3, 0.1], [-0.5, 0.4]):
            x = np.array(x)
            if attention == "softmax":
                logw = 1.1 * (y @ K2.T) @ (Q2 @ x)
            else:
                logw = -1.1 * ((Q2 @ x - y @ K2.T) ** 2).sum(1)
            w = np.exp(logw - logw.max())
            w /= w.sum()
            vals = y @ V2.T
            est = w @ vals
            se = np.sqrt(((w[:, None] * (vals - est)) ** 2).sum(0))
            got = gaussian_velocity(attention, x, M0, S0, Q2, K2, V2, 1.1)
            assert np.all(np.abs(got - est) < 6 * se + 1e-12), (attention, got, est, se)


@pytest.mark.parametrize(
    ("attention", "heads", "n", "batch"),
    [("softmax", 1, 1500, 16), ("multihead", 2, 1500, 16), ("l2", 1, 1500, 16),
     ("sinkhorn", 1, 300, 16)],
)  # fmt: skip
def test_closure_rhs_against_particle_velocities(attention, heads, n, batch):
    """(α', Σ') vs Monte-Carlo moments of the core engine's particle velocities on clouds drawn
    from N(α, Σ). Tolerance: 5 standard errors over the independent clouds, plus the O(1/n)
    self-normalisation/self-interaction bias (allowance 3·|RHS|/n)."""
    closure = make_closure(attention, Q2, K2, V2, 1.0, heads)
    dmean, dcov = closure.rhs(M0, S0)
    est_m, est_c, se_m, se_c = mc_moment_rates(closure, M0, S0, n, batch, seed=11)
    assert np.all(np.abs(est_m - dmean) < 5 * se_m + 3 * np.abs(dmean).max() / n)
    assert np.all(np.abs(est_c - dcov) < 5 * se_c + 3 * np.abs(dcov).max() / n)


@pytest.mark.parametrize("attention", ["sigmoid", "masked", "causal"])
def test_variants_without_closure_are_refused(attention):
    with pytest.raises(ConfigError, match="no Gaussian closure"):
        closure_rhs(attention, M0, S0, Q2, K2, V2, 1.0)


def test_bad_inputs_name_the_field():
    with pytest.raises(ConfigError, match="^beta"):
        make_closure("softmax", Q2, K2, V2, -1.0)
    with pytest.raises(ConfigError, match="^heads"):
        make_closure("multihead", Q2, K2, V2, 1.0, heads=3)
    with pytest.raises(ConfigError, match="^cov"):
        solve_closure(make_closure("softmax", Q2, K2, V2, 1.0), M0, -S0, 1.0)
    with pytest.raises(ConfigError, match="^attention"):
        make_closure("linear", Q2, K2, V2, 1.0)


# --- exact V = vI softmax solutions (§4.2) ----------------------------------------------------
def symmetric_case(d: int, sign: float, rng) -> tuple:
    G = rng.standard_normal((d, d))
    Q = np.eye(d)
    K = sign * (G @ G.T / d + 0.1 * np.eye(d))  # A = KᵀQ = K symmetric, definite with sign
    return Q, K


@pytest.mark.parametrize("v", [1.0, 0.5, -0.7])
def test_vI_closed_form_cov_and_mean_against_solver(v):
    d = 3
    rng = np.random.default_rng(3)
    Q, K = symmetric_case(d, -np.sign(v), rng)  # vβ(A+Aᵀ) ≼ 0: global solution
    closure = make_closure("softmax", Q, K, v * np.eye(d), 0.8)
    mean0, cov0 = rng.standard_normal(d), spd(d, rng)
    exact = VIClosedForm.from_closure(closure, mean0, cov0)
    times = np.linspace(0.0, 2.0, 5)
    sol = solve_closure(closure, mean0, cov0, 2.0, t_eval=times, rtol=1e-13, atol=1e-15)
    assert sol.status == "finished" and exact.blowup_time is None
    for t, m, c in zip(sol.t, sol.mean, sol.cov, strict=True):
        assert np.abs(c - exact.cov(t)).max() < 1e-9 * np.abs(exact.cov(t)).max()
        assert np.abs(m - exact.mean(t)).max() < 1e-9 * np.abs(exact.mean(t)).max()


def test_vI_blowup_time_and_shape_against_solver():
    d = 3
    rng = np.random.default_rng(5)
    Q = rng.standard_normal((d, d))
    K = rng.standard_normal((d, d))  # A + Aᵀ indefinite: blow-up for every Σ₀ ≻ 0
    closure = make_closure("softmax", Q, K, 1.5 * np.eye(d), 0.6)
    mean0, cov0 = rng.standard_normal(d), spd(d, rng)
    exact = VIClosedForm.from_closure(closure, mean0, cov0)
    sol = solve_closure(closure, mean0, cov0, 10.0, rtol=1e-13, atol=1e-15, blowup_trace=1e10)
    assert sol.status == "blowup" and exact.blowup_time is not None
    # T* is extrapolated from tr Σ ≈ c/(T* − t), exact up to O((T* − t)²) = O(threshold⁻²)
    assert abs(sol.blowup_time - exact.blowup_time) < 1e-9 * exact.blowup_time
    # the shape converges like (T* − t) ≈ T*/threshold-scale
    assert np.abs(sol.shape - exact.blowup_shape).max() < 1e-6
    # time-reversal: Σ at a time before T* from the closed form
    t_mid = 0.5 * exact.blowup_time
    mid = solve_closure(closure, mean0, cov0, t_mid, rtol=1e-13, atol=1e-15)
    assert np.abs(mid.cov[-1] - exact.cov(t_mid)).max() < 1e-9 * np.abs(exact.cov(t_mid)).max()


def test_d1_closed_form():
    """d = 1: s(t) = s₀/(1 − 2vβa s₀ t), α(t) = α₀ e^{vt}(1 − 2vβa s₀ t)^{−1/2} (§4.2)."""
    q, k, v, beta, s0, a0, t = 0.7, -1.2, 0.9, 0.5, 1.3, 0.4, 1.7
    sol = solve_closure(make_closure("softmax", [[q]], [[k]], [[v]], beta), [a0], [[s0]], t,
                        rtol=1e-13, atol=1e-15)  # fmt: skip
    den = 1 - 2 * v * beta * k * q * s0 * t
    assert abs(sol.cov[-1, 0, 0] - s0 / den) < 1e-10
    assert abs(sol.mean[-1, 0] - a0 * np.exp(v * t) * den**-0.5) < 1e-10


# --- long-time behaviour ------------------------------------------------------------------------
@pytest.mark.parametrize("attention", ["softmax", "l2", "sinkhorn"])
def test_lyapunov_trace_decreases(attention):
    """K = −Q, V SPD: L = tr(V⁻¹Σ) never increases (§4.3)."""
    d = 3
    rng = np.random.default_rng(9)
    Q = rng.standard_normal((2, d))
    V, cov0 = spd(d, rng), spd(d, rng)
    closure = make_closure(attention, Q, -Q, V, 1.0)
    sol = solve_closure(closure, np.zeros(d), cov0, 20.0, t_eval=np.linspace(0, 20, 201))
    L = np.einsum("ij,tji->t", np.linalg.inv(V), sol.cov)
    assert np.diff(L).max() <= 1e-12 * L[0]
    # and dL/dt from the RHS is ≤ 0 at every saved point (exact sign, no time-stepping involved)
    rates = [np.trace(np.linalg.solve(V, closure.cov_rhs(c))) for c in sol.cov]
    assert max(rates) <= 1e-14


def test_rank_deficient_limit_softmax_vI():
    """K = −Q, Q of rank r, V = I: Σ∞ = Σ₀ − Σ₀Qᵀ(QΣ₀Qᵀ)⁻¹QΣ₀, rank d − r; Σ(t) − Σ∞ = O(1/t)."""
    d = 3
    rng = np.random.default_rng(2)
    Q = rng.standard_normal((1, d))
    cov0 = spd(d, rng)
    closure = make_closure("softmax", Q, -Q, np.eye(d), 1.0)
    limit = cov0 - cov0 @ Q.T @ np.linalg.solve(Q @ cov0 @ Q.T, Q @ cov0)
    exact = VIClosedForm.from_closure(closure, np.zeros(d), cov0)
    gap5, gap6 = (np.abs(exact.cov(t) - limit).max() for t in (1e5, 1e6))
    assert gap6 < 1e-4 and gap6 < 0.2 * gap5  # O(1/t) approach to Σ∞
    assert np.linalg.matrix_rank(limit, tol=1e-10) == d - 1
    sol = solve_closure(closure, np.zeros(d), cov0, 1e4)
    assert np.abs(sol.cov[-1] - limit).max() < 1e-3


def test_statuses_diverged_and_converged():
    eye = np.eye(2)
    l2 = solve_closure(make_closure("l2", eye, 2 * eye, eye, 1.0), [0, 0], eye, 50.0)
    assert l2.status == "diverged" and l2.blowup_time is None
    zero = solve_closure(make_closure("softmax", eye, eye, 0 * eye, 1.0), [0, 0], eye, 1.0)
    assert zero.status == "converged"
    conv = solve_closure(make_closure("sinkhorn", Q2, -Q2, eye, 1.0), [0, 0], S0, 1e7)
    assert conv.status == "converged" and np.abs(conv.cov[-1]).max() < 1e-3


def test_authors_scheme_leaves_input_and_matches_euler_loop():
    closure = make_closure("softmax", Q2, -Q2, spd(2), 1.0, scaling="authors")
    covs = np.array([S0, 0.5 * S0])
    before = covs.copy()
    run = authors_scheme(closure, covs, 0.3, tol_low=1e-5)
    assert np.array_equal(covs, before)
    S = S0.copy()  # the released `evolution` loop, written out
    for _ in range(int(run.iterations[0])):
        S = S + 0.3 * rhs_trad(S, Q2, -Q2, closure.heads[0].C, 2)
        lam, U = np.linalg.eigh(S)
        S = U @ np.diag(np.where(lam < 0, 1e-14, lam)) @ U.T
    assert run.status[0] == "converged"
    np.testing.assert_allclose(run.final[0], S, rtol=0, atol=1e-12)


# --- exact particle identities ------------------------------------------------------------------
@pytest.mark.parametrize("n", [1, 5, 40])
def test_sinkhorn_particle_mean_follows_exp_tV(n):
    closure = make_closure("sinkhorn", Q2, K2, V2, 1.0)
    x0 = sample_gaussian(M0, S0, 1, n, seed=n)[0]
    ds = simulate(closure.particle_field(sinkhorn_tol=1e-13), Euclidean(), x0, t_end=1.0, dt=0.1)
    # every RK4 stage has mean velocity V·(stage mean) exactly, so the mean follows the RK4
    # propagator R = Σ_{k≤4} (hV)^k/k! exactly (up to the 1e-13 Sinkhorn marginals) ...
    hV = 0.1 * V2
    R = sum(np.linalg.matrix_power(hV, k) / np.prod(range(1, k + 1)) for k in range(5))
    got = ds["x"].values[-1].mean(0)
    assert np.abs(got - np.linalg.matrix_power(R, 10) @ x0.mean(0).numpy()).max() < 1e-11
    # ... which is e^{V} up to RK4's error (0.1‖V‖)⁵/120 per step
    assert np.abs(got - scipy.linalg.expm(V2) @ x0.mean(0).numpy()).max() < 1e-6


def test_masked_first_token_follows_exp_tV():
    t = lambda a: torch.as_tensor(a)  # noqa: E731
    field = SoftmaxAttention([Head(t(Q2), t(K2), t(V2), 1.0)], mask="causal")
    x0 = sample_gaussian(M0, S0, 1, 30, seed=3)[0]
    ds = simulate(field, Euclidean(), x0, t_end=1.0, dt=0.05)
    first = ds["x"].values[-1, 0]
    # RK4 with h = 0.05 on ẋ₁ = V x₁: error ≈ 20 (0.05‖V‖)⁵/120 ≈ 1e-8
    assert np.abs(first - scipy.linalg.expm(V2) @ x0[0].numpy()).max() < 1e-7
