"""Pairing phase: exact pair integral, adaptive merging, unequal masses, equiangular ODE, CLI."""

import itertools
import json
import math

import numpy as np
import pytest
import torch
from scipy.integrate import solve_ivp
from typer.testing import CliRunner

from tokendyn.app.simulate import simulate
from tokendyn.cli import app
from tokendyn.engine.attention import Head, SoftmaxAttention
from tokendyn.engine.initial import uniform_sphere
from tokendyn.engine.space import Sphere
from tokendyn.errors import ConfigError
from tokendyn.theory.multiscale import (
    angles_to_points,
    cluster_velocity,
    normalised_energy,
    pair_merge_time,
    pair_merge_time_asymptotic,
    run_until_merge,
    sequential_merges,
)

F64 = torch.float64


def test_equal_mass_clusters_are_the_token_system():
    x = angles_to_points([0.0, 1.0, 2.5, 4.0])
    I2 = torch.eye(2, dtype=F64)
    v = Sphere(2).project(x, SoftmaxAttention([Head(I2, I2, I2, 7.0)], backend="dense")(x))
    assert (v - cluster_velocity(x, torch.ones(4, dtype=F64), 7.0)).abs().max() < 1e-15


@pytest.mark.parametrize("beta", [5.0, 20.0, 35.0])
def test_two_tokens_merge_at_the_exact_pair_time(beta):
    """Adaptive DOP853 (rtol 1e-10) against quadrature of the same ODE: agreement ~1e-9."""
    simulated, _, pair = run_until_merge(
        angles_to_points([0.3, 1.3]), torch.ones(2, dtype=F64), beta
    )
    assert pair == (0, 1)
    assert simulated == pytest.approx(pair_merge_time(1.0, beta), rel=1e-7)


def test_asymptotic_merge_time_is_approached_as_beta_grows():
    ratios = [pair_merge_time_asymptotic(1.0, b) / pair_merge_time(1.0, b) for b in (5, 10, 20, 40)]
    assert all(np.diff(ratios) > 0) and abs(ratios[-1] - 1) < 0.05


def test_unequal_masses_split_the_arc_as_the_pair_odes_say():
    """Independent check: integrate each cluster's angle,
    φ_i' = α_j e^{βc} sin θ/(α_i e^β + α_j e^{βc}), and compare the distances travelled with the
    cluster simulation; as β grows the split tends to the squared-mass ratio α_j² : α_i²."""
    theta0, alpha_i, alpha_j, gap = 1.2, 1.0, 2.0, 0.05
    splits = []
    for beta in (10.0, 40.0):
        masses = torch.tensor([alpha_i, alpha_j], dtype=F64)
        _, x_hit, _ = run_until_merge(angles_to_points([0.0, theta0]), masses, beta, gap)
        travelled_i = math.atan2(float(x_hit[0, 1]), float(x_hit[0, 0]))
        travelled_j = theta0 - math.atan2(float(x_hit[1, 1]), float(x_hit[1, 0]))

        def angles(_t, y, beta=beta):
            theta = y[1] - y[0]
            decay = math.exp(beta * (math.cos(theta) - 1))
            return [
                alpha_j * decay * math.sin(theta) / (alpha_i + alpha_j * decay),
                -alpha_i * decay * math.sin(theta) / (alpha_j + alpha_i * decay),
            ]

        def merged(_t, y):
            return y[1] - y[0] - gap

        merged.terminal = True
        sol = solve_ivp(
            angles, (0, 1e12), [0.0, theta0], method="DOP853", rtol=1e-11, atol=1e-13, events=merged
        )
        phi_i, phi_j = sol.y_events[0][0]
        assert travelled_i == pytest.approx(phi_i, abs=1e-7)
        assert travelled_j == pytest.approx(theta0 - phi_j, abs=1e-7)
        splits.append(travelled_i / travelled_j)
    target = (alpha_j / alpha_i) ** 2
    assert abs(splits[1] - target) < abs(splits[0] - target) < target


def test_sequential_merging_and_energy_staircase():
    """Four equal clusters: three merges, each when the then-closest pair closes; Ê steps from
    Σα² = 1/4 by 2α_iα_j (up to e^{−β(1−cos θ)} from the far clusters)."""
    beta = 10.0
    x0 = angles_to_points([0.0, 1.0, 2.6, 4.3])
    events = sequential_merges(x0, torch.ones(4, dtype=F64), beta)
    assert [e.pair for e in events] == [(0, 1), (2, 3), (0, 2)]
    assert [round(e.energy_after, 3) for e in events] == [0.375, 0.5, 1.0]
    # The first merge is the isolated-pair time, perturbed by far clusters (e^{β(cos 1.6−1)}).
    assert events[0].time == pytest.approx(pair_merge_time(1.0, beta), rel=1e-2)
    assert all(b.time > a.time for a, b in itertools.pairwise(events))
    # Off-diagonal terms are at most (1 − Σw²)·e^{β(cos θ_min − 1)} with θ_min = 1 rad.
    excess = normalised_energy(x0, torch.ones(4, dtype=F64), beta) - 0.25
    assert 0 < excess <= 0.75 * math.exp(beta * (math.cos(1.0) - 1))


def test_equiangular_tokens_follow_the_spec_ode():
    """n orthogonal tokens in d = n stay equiangular, with (SA)
    ρ' = 2e^{βρ}(1−ρ)((n−1)ρ+1)/(e^β+(n−1)e^{βρ})."""
    n, beta, t_end = 4, 1.5, 3.0
    x0 = torch.eye(n, dtype=F64)
    eye = torch.eye(n, dtype=F64)
    field = SoftmaxAttention([Head(eye, eye, eye, beta)])
    ds = simulate(field, Sphere(n), x0, t_end=t_end, dt=0.01)
    x = ds["x"].values
    rho = np.einsum("tk,tk->t", x[:, 0], x[:, 1])

    def rate(_t, r):
        e = math.exp(beta * r[0])
        return [2 * e * (1 - r[0]) * ((n - 1) * r[0] + 1) / (math.exp(beta) + (n - 1) * e)]

    exact = solve_ivp(
        rate, (0, t_end), [0.0], method="DOP853", rtol=1e-12, atol=1e-14, t_eval=ds["time"].values
    ).y[0]
    assert np.abs(rho - exact).max() < 1e-9  # RK4 at dt = 0.01 on an O(1) smooth ODE


def test_pairing_cli_contract():
    result = CliRunner().invoke(
        app, ["multiscale", "pairing", "--beta", "12", "--angles", "0,0.9", "--json"]
    )
    assert result.exit_code == 0, result.output
    row = json.loads(result.output)
    assert list(row) == ["beta", "merge_time_simulated", "merge_time_predicted", "pair"]
    assert row["pair"] == [0, 1]
    assert row["merge_time_simulated"] == pytest.approx(row["merge_time_predicted"], rel=1e-7)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--beta", "0", "--angles", "0,1"], "beta"),
        (["--beta", "3", "--angles", "0"], "angles"),
        (["--beta", "3", "--angles", "0,x"], "angles"),
        (["--beta", "3", "--angles", "0,1", "--gap", "0"], "gap"),
    ],
)
def test_pairing_cli_bad_input(args, message):
    result = CliRunner().invoke(app, ["multiscale", "pairing", *args, "--json"])
    assert result.exit_code == 2 and result.output.startswith(f"error: {message}")


def test_merge_time_needs_a_gap_below_the_angle():
    with pytest.raises(ConfigError, match="^angles:"):
        pair_merge_time(0.04, 10.0, theta_final=0.05)


def test_top_eigenspace_real_complex_and_jordan():
    from tokendyn.theory.multiscale import top_eigenspace

    real = top_eigenspace(np.diag([1.0, 0.5, 0.25]))
    assert real.shape == (3, 1) and abs(abs(real[0, 0]) - 1) < 1e-12
    rotation = top_eigenspace(np.array([[1.0, -1.0, 0], [1.0, 1.0, 0], [0, 0, 0.5]]))
    assert rotation.shape == (3, 2) and np.abs(rotation[2]).max() < 1e-12  # the xy-plane
    jordan = top_eigenspace(np.array([[1.0, 1.0, 0], [0, 1.0, 0], [0, 0, 0.2]]))
    assert jordan.shape == (3, 2) and np.abs(jordan[2]).max() < 1e-12


def test_alignment_limit_is_approached_as_beta_grows():
    """Scenario 1a (Q = K = I, V = diag(1, 0.5, 0.25)): SA tokens at t = 1 approach the closed-form
    independent flow x = e^{tV}x₀/|·| as β grows (error O(1/β) until the finite-N floor)."""
    from tokendyn.theory.multiscale import alignment_flow, top_eigenspace, transverse_mass

    x0 = uniform_sphere(1, 1500, 3, torch.Generator().manual_seed(0))[0]
    eye = torch.eye(3, dtype=F64)
    V = torch.diag(torch.tensor([1.0, 0.5, 0.25], dtype=F64))
    limit = alignment_flow(x0, 1.0, np.eye(3), np.eye(3), V.numpy())
    errors = []
    for beta in (2.0, 8.0, 32.0):
        ds = simulate(
            SoftmaxAttention([Head(eye, eye, V, beta)]), Sphere(3), x0, t_end=1.0, dt=0.05
        )
        x = torch.as_tensor(ds["x"].values[-1])
        errors.append(float((x - limit).norm(dim=-1).pow(2).mean().sqrt()))
    assert errors[0] > errors[1] > errors[2] and errors[2] < errors[0] / 4
    e_max = top_eigenspace(V.numpy())
    assert transverse_mass(limit, e_max) < transverse_mass(x0, e_max)


def test_heat_width_laws():
    """Finite-β law βσ² + ln σ² = βσ₀² + ln σ₀² − 2γt solved exactly; heat limit σ₀² − 2γt/β;
    spec: β = 10, σ₀ = 0.3, backward, t = 0.5 gives σ² ≈ 0.0495 (the heat limit has collapsed)."""
    from tokendyn.theory.multiscale import heat_variance

    for beta, s0, t, gamma in ((10.0, 0.3, 0.5, 1), (50.0, 0.2, 3.0, -1), (200.0, 0.1, 0.2, -1)):
        v = heat_variance(s0, t, beta, gamma)
        assert beta * v + math.log(v) == pytest.approx(
            beta * s0**2 + math.log(s0**2) - 2 * gamma * t, abs=1e-10
        )
    assert heat_variance(0.3, 0.5, 10.0, 1) == pytest.approx(0.0495, abs=5e-4)
    assert math.isnan(heat_variance(0.3, 0.5, 10.0, 1, finite_beta=False))
    assert heat_variance(0.2, 1.0, 50.0, -1, finite_beta=False) == pytest.approx(0.08)


def test_forward_heat_follows_the_finite_beta_law():
    """Q = K = I, V = −I on S¹ from one wrapped normal (σ₀ = 0.3, β = 50): the variance increment
    (from the sample's own t = 0 value, estimated as −2 ln R) follows the finite-β law within 5 %,
    while the pure heat law overestimates it by 20 % (spec: 24–32 % for the variance at β = 50)."""
    from tokendyn.engine.initial import wrapped_normal_mixture
    from tokendyn.theory.multiscale import heat_variance

    beta, s0 = 50.0, 0.3
    x0 = wrapped_normal_mixture(1, 2000, 2, [0.0], None, s0, torch.Generator().manual_seed(1))[0]
    eye = torch.eye(2, dtype=F64)
    ds = simulate(
        SoftmaxAttention([Head(eye, eye, -eye, beta)]),
        Sphere(2),
        x0,
        t_end=1.0,
        dt=0.02,
        save_every=50,
    )
    x = ds["x"].values
    resultant = np.abs(np.exp(1j * np.arctan2(x[..., 1], x[..., 0])).mean(axis=1))
    increment = -2 * np.log(resultant[-1]) + 2 * np.log(resultant[0])
    finite = heat_variance(s0, 1.0, beta, -1) - s0**2
    heat = heat_variance(s0, 1.0, beta, -1, finite_beta=False) - s0**2
    assert increment == pytest.approx(finite, rel=0.05)
    assert heat > 1.15 * increment


def test_wrapped_normal_density_is_normalised():
    from tokendyn.theory.multiscale import wrapped_normal_density

    theta = np.linspace(-np.pi, np.pi, 20001)
    rho = wrapped_normal_density(theta, [0.0, 2.0, 4.0], [1.0, 2.0, 1.0], [0.04, 0.5, 2.0])
    assert np.trapezoid(rho, theta) == pytest.approx(1.0, abs=1e-9)


def test_phase_detection_on_stored_runs(tmp_path):
    """Tight clusters from the start (σ₀ = 0.002): formed at t = 0, and the detected first merge
    matches the isolated-pair prediction (masses measured) within a saved-frame interval + 5 %.
    Scenario 1a: alignment detected, within a factor 2 of ln(100)/(2(λ₁ − λ₂))."""
    from tokendyn.app.config import make_config
    from tokendyn.app.phases import detect_phases
    from tokendyn.app.run import run_simulation

    pairing = make_config(
        d=2,
        n=150,
        init="mixture",
        init_centers=[0.0, 0.8, 3.5],
        init_std=0.002,
        beta=8.0,
        t_end=12.0,
        dt=0.05,
        save_every=2,
        stats=[],
    )
    phases = detect_phases(run_simulation(pairing, tmp_path / "pairing.zarr"))
    assert phases.clusters_formed == 0.0 and phases.merges
    assert phases.merges[0] == pytest.approx(
        phases.first_merge_predicted, abs=0.1 + 0.05 * phases.first_merge_predicted
    )
    assert phases.final_clusters.count == 2
    assert sorted(round(m, 1) for m in phases.final_clusters.masses) == [0.3, 0.7]

    aligned = make_config(
        d=3,
        n=300,
        beta=16.0,
        t_end=8.0,
        dt=0.05,
        save_every=4,
        stats=[],
        V=[[1.0, 0, 0], [0, 0.5, 0], [0, 0, 0.25]],
    )
    phases = detect_phases(run_simulation(aligned, tmp_path / "aligned.zarr"))
    assert phases.alignment_predicted == pytest.approx(math.log(100) / 1.0)
    assert phases.alignment_done is not None
    assert 0.5 < phases.alignment_done / phases.alignment_predicted < 2.0


def test_phases_cli(tmp_path):
    from tokendyn.app.config import make_config
    from tokendyn.app.run import run_simulation

    run_simulation(make_config(d=2, n=40, t_end=1.0, dt=0.1, stats=[]), tmp_path / "r.zarr")
    result = CliRunner().invoke(app, ["multiscale", "phases", str(tmp_path / "r.zarr"), "--json"])
    assert result.exit_code == 0, result.output
    keys = {
        "alignment_done",
        "alignment_predicted",
        "clusters_formed",
        "merges",
        "first_merge_predicted",
        "final_clusters",
    }
    assert set(json.loads(result.output)) == keys
    missing = CliRunner().invoke(app, ["multiscale", "phases", str(tmp_path / "none.zarr")])
    assert missing.exit_code == 2 and "store: nothing at" in missing.output


def test_energy_increases_when_qtk_equals_v_spd():
    """Q = I, K = V = S (S = diag(1, 1, ½) SPD, so QᵀK = V = S): ẋ_i = P_{x_i}∇_iE_S / Z_i with
    E_S = Σ_ij e^{β x_iᵀ S x_j}, hence Ê never decreases (up to round-off); on frozen clusters
    (three tight, equally spaced clusters on E_max: an equilibrium) it stays at Σα_k² + the
    off-diagonal terms, constant to round-off."""
    from tokendyn.app.phases import log_normalised_energy

    S = torch.diag(torch.tensor([1.0, 1.0, 0.5], dtype=F64))
    eye = torch.eye(3, dtype=F64)
    beta = 6.0

    def log_energy(x: torch.Tensor) -> torch.Tensor:
        return torch.stack([log_normalised_energy(cloud, eye, S, beta) for cloud in x])

    def run(x0: torch.Tensor) -> np.ndarray:
        field = SoftmaxAttention([Head(eye, S, S, beta)])
        stats = {"log_energy": log_energy}
        ds = simulate(field, Sphere(3), x0, t_end=6.0, dt=0.05, stats=stats)
        return ds["log_energy"].values

    log_e = run(uniform_sphere(2, 200, 3, torch.Generator().manual_seed(3)))
    assert np.diff(log_e, axis=0).min() > -1e-12
    assert (log_e[-1] - log_e[0]).min() > 1.0

    frozen = angles_to_points([0.0, 2 * math.pi / 3, 4 * math.pi / 3]).repeat_interleave(40, 0)
    frozen = torch.cat([frozen, torch.zeros(120, 1, dtype=F64)], dim=-1).unsqueeze(0)
    log_frozen = run(frozen).ravel()
    off_diagonal = 2 / 3 * math.exp(beta * (math.cos(2 * math.pi / 3) - 1))
    assert math.exp(log_frozen[0]) == pytest.approx(1 / 3 + off_diagonal, rel=1e-12)
    assert np.abs(log_frozen - log_frozen[0]).max() < 1e-12
