"""The paper's scenarios (experiments/multiscale_scenarios.py) and the phase diagnostics they use:
the generalised pairing prediction, Ê with QᵀK = S, Fourier modes on E_max, the phases plot."""

import json
import math

import numpy as np
import pytest
import torch
from scipy.special import ive
from typer.testing import CliRunner

from tokendyn.app.phases import detect_phases, diagnostics, log_normalised_energy, pairing_scale
from tokendyn.cli import app
from tokendyn.engine.initial import uniform_sphere, wrapped_normal_mixture
from tokendyn.studies import multiscale_scenarios as sc

F64 = torch.float64
S = np.diag([1.0, 1.0, 0.5])


def test_rotation_rate_of_a_rigidly_rotating_cloud():
    """φ_i(t) = φ_i(0) + ωt exactly: the estimator returns ω (per-frame steps < π)."""
    phi0 = np.random.default_rng(0).uniform(-np.pi, np.pi, 200)
    times = np.linspace(0, 4, 41)
    phi = phi0[None, :] + 0.7 * times[:, None]
    frames = np.stack([np.cos(phi), np.sin(phi), np.zeros_like(phi)], axis=-1)
    assert sc.rotation_rate(times, frames) == pytest.approx(0.7, rel=1e-12)


def test_component_variances_of_a_wrapped_normal_mixture():
    """−2 ln R of each component estimates σ₀² (wrapped normal: R = e^{−σ²/2}); std. error of the
    estimator ≈ σ₀²·√(2/n_j) for n_j tokens."""
    n, sigma0 = 20_000, 0.3
    x = wrapped_normal_mixture(1, n, 2, [0.0, 2.5], [0.5, 0.5], sigma0, torch.Generator())[0]
    frames = x.numpy()[None]
    var = sc.component_variances(frames, sc._components(frames[0], [0.0, 2.5]), 2)[0]
    np.testing.assert_allclose(var, sigma0**2, atol=4 * sigma0**2 * math.sqrt(2 / (n / 2)))


def test_scenario_1b_rotates_at_the_attention_weighted_rate():
    """Tokens on the xy great circle with V = I + J: ω = ⟨m_i, x_i⟩ ∈ [I₁(β)/I₀(β), 1]."""
    beta = 30.0
    theta = torch.rand(400, generator=torch.Generator().manual_seed(1), dtype=F64) * 2 * math.pi
    x0 = torch.stack([theta.cos(), theta.sin(), torch.zeros_like(theta)], dim=-1)
    eye = np.eye(3)
    times, frames = sc._run(eye, eye, sc.V_1B, beta, x0, t_end=2.0, dt=0.01, save_every=5)
    omega = sc.rotation_rate(times, frames)
    assert ive(1, beta) / ive(0, beta) - 1e-3 <= omega <= 1 + 1e-3


def test_scenario_2a_clusters_sit_at_the_mixture_means():
    """Backward heat on S² (2a matrices): cluster azimuths within 4 standard errors σ₀/√(Nα_j)
    of the mixture means."""
    n, sigma0, centres, weights = 600, 0.2, [0.0, 2.1, 4.2], [0.5, 0.3, 0.2]
    x0 = wrapped_normal_mixture(1, n, 3, centres, weights, sigma0, torch.Generator())[0]
    _, frames = sc._run(np.eye(3), S, S, 10.0, x0, t_end=6.0, dt=0.02, save_every=300)
    from tokendyn.app.phases import macroscopic_clusters

    clusters = macroscopic_clusters(torch.as_tensor(frames[-1]), 0.05)
    found = np.array([math.atan2(c[1], c[0]) for c in clusters.centres])
    offsets = np.angle(np.exp(1j * (found[None, :] - np.asarray(centres)[:, None])))
    errors = np.abs(offsets).min(axis=1)
    assert np.all(errors <= 4 * sigma0 / np.sqrt(n * np.asarray(weights)))


def test_pairing_scale_reads_the_theorem_setting():
    assert pairing_scale(np.eye(3), S, S) == pytest.approx((1.0, 1.0))
    assert pairing_scale(np.eye(3), 2 * S, 3 * 2 * S) == pytest.approx((2.0, 3.0))
    assert pairing_scale(np.eye(3), S, -S) is None  # V = cS with c < 0: forward heat
    assert pairing_scale(np.eye(3), np.diag([1.0, 0.8, 0.5]), np.diag([1.0, 0.8, 0.5])) == (
        pytest.approx((1.0, 1.0))
    )  # E_max = e₁ alone: S is scalar there
    skew = np.eye(3) + np.array([[0, 0.3, 0], [0, 0, 0], [0, 0, 0]])
    assert pairing_scale(np.eye(3), skew, skew) is None  # QᵀK not symmetric
    assert pairing_scale(np.eye(3), S, np.eye(3)) is None  # V not a multiple of S


def test_normalised_energy_with_a_bilinear_form_matches_the_direct_sum():
    x = uniform_sphere(1, 300, 3, torch.Generator().manual_seed(2))[0]
    beta, K = 7.0, torch.as_tensor(S)
    direct = torch.exp(beta * (x @ K.T @ x.T - 1.0)).mean()
    got = torch.exp(log_normalised_energy(x, torch.eye(3, dtype=F64), K, beta))
    assert float(got) == pytest.approx(float(direct), rel=1e-12)


def test_normalised_energy_of_uniform_circle_data():
    """Ê = e^{−β}I₀(β) for uniform data on S¹ (spec §6.1); equispaced tokens make the double sum a
    trapezoidal rule, exact to rounding for this periodic integrand."""
    n, beta = 4000, 6.0
    theta = torch.arange(n, dtype=F64) * (2 * math.pi / n)  # equispaced: quadrature, no noise
    x = torch.stack([theta.cos(), theta.sin()], dim=-1)
    eye = torch.eye(2, dtype=F64)
    got = float(torch.exp(log_normalised_energy(x, eye, eye, beta)))
    assert got == pytest.approx(float(ive(0, beta)), rel=1e-10)


@pytest.fixture(scope="module")
def run_2a(tmp_path_factory):
    from tokendyn.app.config import make_config
    from tokendyn.app.run import run_simulation

    cfg = make_config(
        n=800,
        d=3,
        beta=10.0,
        init="mixture",
        init_centers=[0.0, 1.2, 3.5],
        init_weights=[0.4, 0.3, 0.3],
        init_std=0.2,
        Q=np.eye(3).tolist(),
        K=S.tolist(),
        V=S.tolist(),
        t_end=30.0,
        dt=0.05,
        method="euler",
        save_every=4,
        stats=[],
    )
    path = tmp_path_factory.mktemp("run2a") / "run.zarr"
    return path, run_simulation(cfg, path)


def test_fourier_modes_on_e_max_start_at_the_mixture_transform(run_2a):
    """|μ̂_k(0)| = |Σ_j α_j e^{−ikm_j}| e^{−k²σ₀²/2} (wrapped normals), sampling error ~ 1/√N."""
    _, ds = run_2a
    diag = diagnostics(ds)
    k = diag["mode"].values
    alpha, m = np.array([0.4, 0.3, 0.3]), np.array([0.0, 1.2, 3.5])
    exact = np.abs((alpha * np.exp(-1j * k[:, None] * m)).sum(-1)) * np.exp(-(k**2) * 0.04 / 2)
    measured = diag["fourier_modes"].values[0]
    np.testing.assert_allclose(measured, exact, atol=4 / math.sqrt(800))


def test_first_merge_predicted_for_s_matrices(run_2a):
    """QᵀK = V = S: the pair integral on E_max predicts the first merge (frame spacing + 5 %)."""
    _, ds = run_2a
    phases = detect_phases(ds)
    assert phases.first_merge_predicted is not None and phases.merges
    spacing = float(ds["time"].values[1] - ds["time"].values[0])
    assert phases.merges[0] == pytest.approx(
        phases.first_merge_predicted, abs=spacing + 0.05 * phases.first_merge_predicted
    )


def test_phases_cli_draws_the_diagnostics(run_2a, tmp_path):
    path, _ = run_2a
    png = tmp_path / "phases.png"
    result = CliRunner().invoke(
        app, ["multiscale", "phases", str(path), "--json", "--plot", str(png)]
    )
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["clusters_formed"] is not None
    assert png.stat().st_size > 10_000


def test_reduced_continuation_from_formation_predicts_the_particle_merge(run_2a):
    """Cut the stored run when the clusters have formed, continue with weighted Diracs: the first
    reduced merge lands on the particle run's first merge (frame spacing + 5 %); the reduced
    model goes on to one cluster (masses: token fractions of the macroscopic clusters), Ê → 1."""
    from tokendyn.app.phases import reduced_continuation

    _, ds = run_2a
    phases = detect_phases(ds)
    times = ds["time"].values
    cut = int(np.searchsorted(times, phases.clusters_formed)) + 1
    events = reduced_continuation(ds.isel(time=slice(0, cut)))
    spacing = float(times[1] - times[0])
    assert events[0].time == pytest.approx(phases.merges[0], abs=spacing + 0.05 * phases.merges[0])
    assert [e.time for e in events] == sorted(e.time for e in events)
    assert len(events[-1].masses) == 1 and events[-1].energy_after > 0.99


def test_merges_cli(run_2a, tmp_path):
    path, _ = run_2a
    result = CliRunner().invoke(app, ["multiscale", "merges", str(path), "--json"])
    assert result.exit_code == 0, result.output
    merges = json.loads(result.output)["merges"]
    assert merges and len(merges[-1]["masses"]) == 1

    from tokendyn.app.config import make_config
    from tokendyn.app.run import run_simulation

    forward = make_config(d=2, n=50, V=(-np.eye(2)).tolist(), t_end=0.5, dt=0.1, stats=[])
    run_simulation(forward, tmp_path / "forward.zarr")
    refused = CliRunner().invoke(app, ["multiscale", "merges", str(tmp_path / "forward.zarr")])
    assert refused.exit_code == 2 and "pairing theorem" in refused.output
