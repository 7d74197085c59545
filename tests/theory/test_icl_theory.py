"""ICL theory and baselines: exact identities of the spec's §4 and §6.3."""

from __future__ import annotations

import numpy as np
import pytest

from tokendyn.errors import ConfigError
from tokendyn.theory.icl import GaussianPrior, MixturePrior, TreePrior, get_setting, make_prior
from tokendyn.theory.icl.baselines import all_baselines, bayes, dmmse, gd_steps, ridge
from tokendyn.theory.icl.tasks import sample_tasks
from tokendyn.theory.icl.theory import (
    dp_value,
    j_star_gauss,
    measurement_cov,
    posterior,
    run_policy,
    tau2,
    top_eigvecs,
)

CPU = get_setting("cpu")


def test_settings_rows_and_errors():
    assert (CPU.d, CPU.b, CPU.K, CPU.N, CPU.prior_seed) == (8, 2, 4, 64, 1)
    assert get_setting("bushy").leaves == 64 and get_setting("paper").leaves == 32
    with pytest.raises(ConfigError, match="setting"):
        get_setting("gpu")
    with pytest.raises(ConfigError, match="^d:"):
        CPU.with_(d=0)


def test_tree_prior_normalised_and_fixed_by_seed():
    tree = make_prior(CPU, "tree")
    assert tree.second_moment == pytest.approx(1.0, abs=1e-12)  # (1/M)Σ‖c‖² + σ_leaf² = 1
    assert np.allclose(tree.centres.mean(0), 0.0, atol=1e-14)
    assert np.array_equal(tree.centres, make_prior(CPU, "tree").centres)  # prior seed 1
    assert not np.allclose(tree.centres, TreePrior.from_setting(CPU.with_(prior_seed=2)).centres)
    gauss = make_prior(CPU, "gauss")
    assert np.allclose(gauss.cov, tree.cov) and np.allclose(gauss.mean, tree.mean)
    # ancestors: leaf ℓ's level-k node is ℓ // b^(K−k)
    assert tree.node_of(np.array([0, 5, 15]), 1).tolist() == [0, 0, 1]
    flat = make_prior(CPU, "flat")
    assert flat.centres.shape == (2, 8)
    # sampling: 20000 draws, mean within ~4 standard errors (sd ≤ 1)
    w, _ = tree.sample(20_000, np.random.default_rng(0))
    assert np.abs(w.mean(0)).max() < 4 / np.sqrt(20_000)


def test_mean_field_noise_law_of_the_measurement():
    """N·Var(u·s − u·w | w) = ‖w‖² + (u·w)² + σ² for x ~ N(0, I) (Isserlis)."""
    rng = np.random.default_rng(3)
    d, N, sigma, n = 8, 64, 0.3, 40_000
    w = rng.standard_normal(d) / np.sqrt(d)
    U = np.linalg.qr(rng.standard_normal((d, 2)))[0].T
    X = rng.standard_normal((n, N, d))
    y = X @ w + sigma * rng.standard_normal((n, N))
    m = np.einsum("hd,bnd,bn->bh", U, X, y) / N
    emp = np.cov((m - U @ w).T) * N
    law = measurement_cov(w, U, sigma, N) * N
    assert np.allclose(law[0, 0], w @ w + (U[0] @ w) ** 2 + sigma**2)
    # relative standard error of a sample variance is about sqrt(2/n) ≈ 0.7%: allow 4%
    assert np.allclose(emp, law, rtol=0.04, atol=0.04 * law[0, 0])
    assert np.abs((m - U @ w).mean(0)).max() < 4 * np.sqrt(law.diagonal().max() / N / n)


def test_gaussian_greedy_equals_pca_and_j_star():
    """Under a Gaussian prior Cov(w|Φ) does not depend on m: greedy measures the principal
    components in order and its expected MSE σ² + tr Cov equals J*_Gauss exactly."""
    gauss = make_prior(CPU, "gauss")
    t2 = tau2(gauss, CPU.sigma, CPU.N)
    lam, vecs = np.linalg.eigh(gauss.cov)
    lam, vecs = lam[::-1], vecs[:, ::-1]
    assert lam[3] > lam[0] * t2 / (lam[0] + t2)  # no direction is worth re-measuring for L ≤ 4
    rng = np.random.default_rng(0)
    U, m = np.zeros((5, 0, 8)), np.zeros((5, 0))
    J = j_star_gauss(gauss, CPU.sigma, CPU.N, [1, 2, 3, 4])
    for ell in range(4):
        post = posterior(gauss, U, m, t2)
        u = top_eigvecs(post.cov, 1)
        assert np.allclose(np.abs(u[:, 0] @ vecs[:, ell]), 1.0, atol=1e-8)
        U = np.concatenate([U, u], 1)
        m = np.concatenate([m, rng.standard_normal((5, 1))], 1)
        tr = np.trace(posterior(gauss, U, m, t2).cov, axis1=1, axis2=2)
        assert np.allclose(CPU.sigma**2 + tr, J[ell], rtol=1e-10)
    # Monte Carlo: greedy and linear draw identical designs; realised MSE within 4 s.e. of J*
    g = run_policy(gauss, CPU.sigma, CPU.N, "greedy", 4, n_seq=3000)
    lin = run_policy(gauss, CPU.sigma, CPU.N, "linear", 4, n_seq=3000)
    assert np.allclose(g.mse, lin.mse, rtol=1e-10)
    assert np.all(np.abs(g.mse - J) < 4 * g.mse_stderr)


def test_exact_dp_on_gaussian_prior_equals_j_star():
    """With the principal components among the candidates the Bellman optimum is J*_Gauss."""
    gauss = make_prior(CPU, "gauss")
    J = j_star_gauss(gauss, CPU.sigma, CPU.N, [1, 2])
    assert dp_value(gauss, CPU.sigma, CPU.N, 1, n_outer=50) == pytest.approx(J[0], rel=1e-10)
    assert dp_value(gauss, CPU.sigma, CPU.N, 2, n_outer=20, n_inner=4) == pytest.approx(
        J[1], rel=1e-10
    )


def test_tree_policies_ordering_and_dp_bound():
    tree = make_prior(CPU, "tree")
    res = {
        p: run_policy(tree, CPU.sigma, CPU.N, p, 4, n_seq=2000)
        for p in ("linear", "fixed-nonlinear", "greedy", "coarse-to-fine")
    }
    # same measurements, better estimator: the mixture posterior mean beats LMMSE at every depth
    assert np.all(res["fixed-nonlinear"].mse < res["linear"].mse)
    # adaptivity pays at L = 3, 4 (differences ≫ standard errors ≈ 0.002)
    assert np.all(res["greedy"].mse[2:] < res["fixed-nonlinear"].mse[2:])
    # the exact one-layer DP over candidates (including the greedy direction) is no worse
    dp1 = dp_value(tree, CPU.sigma, CPU.N, 1, n_outer=2000)
    assert dp1 <= res["greedy"].mse[0] + 4 * res["greedy"].mse_stderr[0]
    assert res["coarse-to-fine"].level_accuracy.shape == (4, 4)
    with pytest.raises(ConfigError, match="policy"):
        run_policy(make_prior(CPU, "gauss"), CPU.sigma, CPU.N, "coarse-to-fine", 2)


def test_zero_jitter_tree_bayes_is_dmmse():
    tree = TreePrior(8, 2, 3, 0.85, 0.0, seed=1)
    batch = sample_tasks(tree, 16, 0.3, 200, np.random.default_rng(1))
    assert np.allclose(bayes(tree, batch), dmmse(tree, batch), atol=1e-12)
    # σ_leaf → 0: the continuous posterior mean converges to the discrete one
    for s_leaf, tol in [(1e-2, 1e-2), (1e-4, 1e-5)]:
        jitter = MixturePrior(tree.log_weights, tree.centres, s_leaf**2 / 8 * np.eye(8))
        assert np.abs(bayes(jitter, batch) - dmmse(tree, batch)).max() < tol


def test_one_leaf_tree_bayes_is_generalised_ridge():
    rng = np.random.default_rng(2)
    c, S = rng.standard_normal(6) / 3, 0.05 * np.eye(6)
    one = MixturePrior(np.zeros(1), c[None], S)
    batch = sample_tasks(one, 20, 0.2, 50, rng)
    # independent closed form: ŵ = (XᵀX + σ² S⁻¹)⁻¹ (Xᵀy + σ² S⁻¹ c)
    P = 0.2**2 * np.linalg.inv(S)
    A = np.einsum("bnd,bne->bde", batch.X, batch.X) + P
    rhs = np.einsum("bnd,bn->bd", batch.X, batch.y) + P @ c
    expect = np.linalg.solve(A, rhs[..., None])[..., 0]
    assert np.allclose(bayes(one, batch), expect, atol=1e-12)
    assert np.allclose(ridge(one, batch), expect, atol=1e-12)
    # the theory posterior with one component is the LMMSE of the spec's policy 1
    U = rng.standard_normal((50, 3, 6))
    m = rng.standard_normal((50, 3))
    G = U @ S @ np.swapaxes(U, 1, 2) + 0.01 * np.eye(3)
    lmmse = c + np.einsum("de,bme,bmn,bn->bd", S, U, np.linalg.inv(G), m - U @ c)
    assert np.allclose(posterior(one, U, m, 0.01).mean, lmmse, atol=1e-12)


def test_baselines_sane_on_tree():
    tree = make_prior(CPU, "tree")
    test = sample_tasks(tree, CPU.N, CPU.sigma, 1000, np.random.default_rng(0))
    val = sample_tasks(tree, CPU.N, CPU.sigma, 500, np.random.default_rng(1))
    b = all_baselines(tree, test, val)
    assert b["bayes"][0] <= b["ridge"][0] + 1e-4  # Bayes is optimal (same sequences)
    assert b["prior_mean"][0] == pytest.approx(CPU.sigma**2 + 1.0, abs=5 * b["prior_mean"][1])
    assert b["ridge"][0] < b["gd3_tuned"][0] < b["gd1"][0] < b["prior_mean"][0]
    # one GD step from 0 with η = 1 is s = Xᵀy/N
    assert np.allclose(gd_steps(test, 1, 1.0, np.zeros(8)), test.s)


def test_gaussian_prior_validation():
    with pytest.raises(ConfigError, match="cov"):
        GaussianPrior(np.zeros(2), -np.eye(2))
