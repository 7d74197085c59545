"""Finite-N samplers: exact one-step moments, per-spin = block-binomial in law, N^{-1/2}
convergence to the mean-field map in non-chaotic regimes, seeding."""

import numpy as np
import pytest

from tokendyn.errors import ConfigError
from tokendyn.theory.dmft.analysis import loglog_slope
from tokendyn.theory.dmft.dynamics import Core
from tokendyn.theory.dmft.finite import deviation, finite_stats, paper_finite_model
from tokendyn.theory.dmft.model import paper_model
from tokendyn.theory.dmft.sampler import FiniteSampler
from tokendyn.theory.dmft.starts import start_state

TRIALS = 20_000


@pytest.mark.parametrize("method", ["spins", "binomial"])
def test_one_step_moments(method):
    """One step from the zoom window at β = 1.27 with N_se = 99 (33 per block): m^o_a has mean
    Σ_s f_s W^o_{a,s} μ_s and variance Σ_s f_s² (1 − μ_s²)/n_s. Tolerances: 5 standard errors of
    the mean; 5% on the variance (its relative standard error is √(2/trials) ≈ 1%)."""
    model = paper_finite_model(99)
    core = Core(paper_model())
    state = start_state("zoom", paper_model())
    mu = np.tanh(1.27 * core.fields(state.A))[:, 0]
    Wo = core.Wo
    mean = Wo @ mu / 3
    var = float(np.sum(1 - mu**2)) / 9 / 33
    mo = FiniteSampler(model, method, seed=5).run(state, 1.27, 0, 1, trials=TRIALS)[0, :, :, 0]
    assert np.all(np.abs(mo.mean(axis=1) - mean) <= 5 * np.sqrt(var / TRIALS))
    np.testing.assert_allclose(mo.var(axis=1), var, rtol=0.05)


@pytest.mark.parametrize("beta", [0.5, 3.0])
def test_binomial_converges_at_inverse_sqrt_n(beta):
    """Quiet (β = 0.5) and period-24 (β = 3) regimes: RMS of m^o(finite) − m^o(map) over 16
    trials × 200 steps scales as N^{-1/2} (slope error ≈ 0.03 from 9600 samples per N)."""
    ns = [10**4, 10**5, 10**6, 10**7]
    dev = deviation(beta, ns, trials=16, start="full" if beta == 3.0 else "zoom")
    assert loglog_slope(np.array(ns), dev) == pytest.approx(-0.5, abs=0.05)


def test_spins_converge_at_inverse_sqrt_n():
    ns = [999, 9_999, 99_999]
    dev = deviation(0.5, ns, trials=8, start="zoom", n_steps=50, method="spins")
    assert loglog_slope(np.array(ns), dev) == pytest.approx(-0.5, abs=0.07)


def test_huge_n_follows_the_map():
    dev = deviation(3.0, [10**9], trials=4, start="full", n_steps=100)
    assert dev[0] < 1e-4  # √(1/N) ≈ 3e-5


def test_seeded_and_batched_over_beta():
    model = paper_finite_model(3000)
    runs = [
        FiniteSampler(model, "binomial", seed=11).run(
            start_state("zoom", paper_model(), 2), [1.0, 1.27], 10, 20, trials=3
        )
        for _ in range(2)
    ]
    np.testing.assert_array_equal(runs[0], runs[1])
    assert runs[0].shape == (20, 3, 3, 2)
    assert np.ptp(runs[0][-1, 0, :, 1]) > 0  # trials differ


def test_stayed_fraction_in_a_periodic_window():
    out = finite_stats(1.27, [10**7], trials=2, n_record=400, n_transient=20_000)
    assert out["finite"][0]["stayed_fraction"] == 1.0
    assert out["finite"][0]["std"] == pytest.approx(out["mf_std"], rel=0.05)


def test_sampler_input_errors():
    with pytest.raises(ConfigError, match="method"):
        FiniteSampler(paper_finite_model(30), "gibbs")
    s = FiniteSampler(paper_finite_model(30))
    with pytest.raises(ConfigError, match="trials"):
        s.run(start_state("zoom", paper_model()), 1.0, 1, 1, trials=0)
    with pytest.raises(ConfigError, match="state"):
        s.run(start_state("zoom", paper_model(), 2), 1.0, 1, 1)
