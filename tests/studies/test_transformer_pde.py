"""Transformer-PDE experiments: the released code's setups, particles vs closure, limits, CLI."""

import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from tokendyn.cli import app
from tokendyn.engine.observables import wasserstein
from tokendyn.studies.paper_setups import experiments, init_grid, rank_systems, to_uwv
from tokendyn.studies.particle_limit import (
    LIMIT_VARIANTS,
    conditional_w2,
    limit_field,
    uniform_ball,
)
from tokendyn.studies.particles_vs_closure import coupling_experiment, fit_slope, flow_map
from tokendyn.theory import make_closure, solve_closure

EXP = {e.key: e for e in experiments()}


def test_grid_point_counts():
    """Spec §5.3 reference counts."""
    counts = [len(init_grid(n, lo, hi)) for n, lo, hi in
              ((10, -0.5, 0.5), (20, -1, 1), (30, -1, 1), (40, -1, 1))]  # fmt: skip
    assert counts == [100, 276, 648, 1184]
    grid = init_grid(20, -1, 1)
    assert np.allclose(np.trace(grid, axis1=1, axis2=2), 1.0)
    assert np.linalg.eigvalsh(grid).min() > 0


def test_experiment_matrices_match_spec():
    """Spec §5.4 printed values (5 decimals) from numpy's legacy seeds."""
    ok = lambda a, b: np.abs(np.asarray(a) - np.asarray(b)).max() < 6e-6  # noqa: E731
    assert ok(EXP["E1"].Q, [[0.45805, 0.30835], [0.23149, 0.27742]])
    assert ok(EXP["E1"].V, [[2.66938, -0.69153], [-0.69153, 2.68745]])
    assert ok(EXP["E2"].Q, [[0.40632, 0.91373]])
    assert ok(EXP["E4"].Q, [[0.67641, 1.52110], [-0.51188, 1.15019]])
    assert ok(EXP["E4"].K, [[-0.59072, -0.76877], [-0.33501, 0.09300]])
    assert ok(EXP["E4"].V, [[-0.34889, 0.98370], [0.58092, 0.07028]])
    assert ok(EXP["E5"].Q, [[-0.09678, 0.42220], [-0.22546, -0.63794]])
    assert ok(EXP["E5"].K, [[-0.01629, 1.04422], [-1.08488, -2.20592]])
    assert ok(EXP["E6"].V, [[1.83175, -0.37689], [0.34811, -0.11628]])
    sym = lambda e: np.linalg.eigvalsh(e.K.T @ e.Q + e.Q.T @ e.K)  # noqa: E731
    assert np.abs(sym(EXP["E4"]) - [-3.321, 0.740]).max() < 6e-4
    assert np.abs(sym(EXP["E5"]) - [0.161, 4.027]).max() < 6e-4
    assert np.abs(np.sort(np.linalg.eigvals(EXP["E6"].V).real) - [-0.046, 1.762]).max() < 6e-4


def test_cone_coordinates():
    S = np.array([[0.7, 0.2], [0.2, 0.3]])
    assert np.allclose(to_uwv(S), [0.4, 0.4, 1.0])
    rank_one = np.outer([0.6, 0.8], [0.6, 0.8])
    u, w, v = to_uwv(rank_one)
    assert abs(v - np.hypot(u, w)) < 1e-15  # the cone's boundary is the rank-one set


def test_e2_line_and_e3_plane_limits():
    """E2 (softmax, V = I): Σ∞ ∝ q⊥q⊥ᵀ; E3 (MH, empty second head): (Σ∞qᵀ)₁ = 0 (§4.4)."""
    e = EXP["E2"]
    q = e.Q[0]
    cov0 = init_grid(10)[17]
    c = make_closure("softmax", e.Q, e.K, e.V, 1.0, scaling="authors")
    sol = solve_closure(c, [0, 0], cov0, 1e6)
    qp = e.extra["q_perp"]
    assert np.abs(sol.shape - np.outer(qp, qp)).max() < 1e-3
    mh = make_closure("multihead", e.Q, e.K, e.V, 1.0, heads=2, scaling="authors")
    for cov0 in init_grid(10)[::20]:
        lim = solve_closure(mh, [0, 0], cov0, 1e6).cov[-1]
        assert abs((lim @ q)[0]) < 1e-3
        assert np.linalg.eigvalsh(lim).min() > 1e-3  # a plane section, not a ray: rank two


def test_e3_particles_with_an_empty_head_match_the_closure():
    """E3's second head has no rows (A₂ = 0, uniform attention): particles vs closure by MC."""
    from tokendyn.studies.particles_vs_closure import mc_moment_rates

    e = EXP["E3"]
    c = make_closure("multihead", e.Q, e.K, e.V, 1.0, heads=2, scaling="authors")
    m0, S0 = np.array([0.3, -0.2]), np.array([[0.7, 0.1], [0.1, 0.3]])
    dmean, dcov = c.rhs(m0, S0)
    est_m, est_c, se_m, se_c = mc_moment_rates(c, m0, S0, 1000, 16, seed=3)
    assert np.all(np.abs(est_m - dmean) < 5 * se_m + 3 * np.abs(dmean).max() / 1000)
    assert np.all(np.abs(est_c - dcov) < 5 * se_c + 3 * np.abs(dcov).max() / 1000)


def test_rank_systems_exact_rank_for_identity():
    """V = I, K = −Q: Σ∞ = Σ₀ − Σ₀Qᵀ(QΣ₀Qᵀ)⁻¹QΣ₀ has rank d − ⌊d/2⌋; the solver approaches it."""
    for s in rank_systems("identity", 1):
        limit = s.cov0 - s.cov0 @ s.Q.T @ np.linalg.solve(s.Q @ s.cov0 @ s.Q.T, s.Q @ s.cov0)
        eig = np.linalg.eigvalsh(limit)
        assert (eig > 1e-10 * eig.max()).sum() == (s.d + 1) // 2
        c = make_closure("softmax", s.Q, -s.Q, s.V, 1.0, scaling="authors")
        sol = solve_closure(c, np.zeros(s.d), s.cov0, 1e7)
        assert np.abs(sol.cov[-1] - limit).max() < 1e-4  # O(1/t) at the convergence stop


def test_flow_map_pushes_the_gaussian_forward():
    """Φ(t)Σ₀Φ(t)ᵀ = Σ(t) and Φ(t)α₀ + c(t) = α(t): the characteristics carry N(α₀, Σ₀)."""
    V = np.array([[1.0, 0.5], [-0.3, 0.8]])
    for attention in ("softmax", "l2", "sinkhorn"):
        Q = np.array([[1.0, 0.3], [0.0, 0.8]])
        c = make_closure(attention, Q, -Q, V, 1.0)
        m0, S0 = np.array([0.5, -0.3]), np.array([[1.0, 0.4], [0.4, 0.6]])
        fm = flow_map(c, m0, S0, [0.0, 0.5, 1.0])
        for P, shift, m, S in zip(fm.Phi, fm.c, fm.mean, fm.cov, strict=True):
            assert np.abs(P @ S0 @ P.T - S).max() < 1e-9
            assert np.abs(P @ m0 + shift - m).max() < 1e-9


def test_coupling_experiment_small():
    Q = np.array([[1.0, 0.3], [0.0, 0.8]])
    c = make_closure("softmax", Q, -Q, np.eye(2), 0.25)
    m0, S0 = [0.5, -0.3], [[1.0, 0.4], [0.4, 0.6]]
    small = coupling_experiment(c, m0, S0, 64, 16, seed=1)
    large = coupling_experiment(c, m0, S0, 1024, 16, seed=2)
    # at t = 0 the coupling is exact and the BW distance is the sampling error alone
    assert small.times[0] == 0.0 and small.bw.shape == (16, len(small.times))
    # the RMS error shrinks by ≈ 4 from N = 64 to 1024; accept any slope in [−0.8, −0.3]
    assert -0.8 < fit_slope([64, 1024], [small.rms.mean(), large.rms.mean()]) < -0.3
    assert np.allclose(small.cov_err, np.linalg.norm(small.cov_err[:, None], axis=1))


def test_fit_slope_exact():
    ns = np.array([10, 100, 1000])
    assert abs(fit_slope(ns, 3 * ns**-0.5) + 0.5) < 1e-12


def test_conditional_distance_and_fields():
    x, y = uniform_ball(1, 40, 2, 0)[0], uniform_ball(1, 80, 2, 1)[0]
    assert x.norm(dim=-1).max() <= 1.0
    assert abs(conditional_w2(x, y, 1) - float(wasserstein(x, y))) < 1e-12
    assert conditional_w2(x, y, 4) >= float(wasserstein(x, y)) - 1e-12  # fewer couplings allowed
    Q = torch.eye(2, dtype=torch.float64)
    for variant in LIMIT_VARIANTS:
        v = limit_field(variant, Q, -Q, Q, 1.0)(x)
        assert v.shape == x.shape and torch.isfinite(v).all()


# --- CLI ----------------------------------------------------------------------------------------
BASE = """
attention = "{attention}"
beta = 0.8
Q = [[1.0, 0.3], [0.0, 0.8]]
K = [[-1.0, -0.3], [0.0, -0.8]]
V = [[1.0, 0.5], [-0.3, 0.8]]
mean = [0.5, -0.3]
cov = [[1.0, 0.4], [0.4, 0.6]]
t_end = 1.5
"""


def write(tmp_path, text):
    path = tmp_path / "closure.toml"
    path.write_text(text)
    return str(path)


@pytest.mark.parametrize("attention", ["softmax", "l2", "sinkhorn", "multihead"])
def test_cli_json_matches_solver(tmp_path, attention):
    text = BASE.format(attention=attention) + ("heads = 2\n" if attention == "multihead" else "")
    result = CliRunner().invoke(app, ["closure", "--config", write(tmp_path, text), "--json"])
    assert result.exit_code == 0, result.output
    out = json.loads(result.output)
    assert set(out) == {"t_end", "mean", "cov", "status", "blowup_time", "shape"}
    Q = np.array([[1.0, 0.3], [0.0, 0.8]])
    c = make_closure(attention, Q, -Q, [[1.0, 0.5], [-0.3, 0.8]], 0.8,
                     heads=2 if attention == "multihead" else 1)  # fmt: skip
    sol = solve_closure(c, [0.5, -0.3], [[1.0, 0.4], [0.4, 0.6]], 1.5)
    assert out["status"] == "finished" and out["blowup_time"] is None
    assert np.allclose(out["cov"], sol.cov[-1], rtol=1e-12, atol=0)
    assert np.allclose(out["mean"], sol.mean[-1], rtol=1e-12, atol=0)
    assert abs(np.trace(out["shape"]) - 1) < 1e-12


def test_cli_blowup(tmp_path):
    text = BASE.format(attention="softmax").replace("K = [[-1.0, -0.3], [0.0, -0.8]]",
                                                    "K = [[1.0, 0.3], [0.0, 0.8]]")  # fmt: skip
    text = text.replace("V = [[1.0, 0.5], [-0.3, 0.8]]", "V = [[1.0, 0.0], [0.0, 1.0]]")
    text = text.replace("t_end = 1.5", "t_end = 50.0")
    result = CliRunner().invoke(app, ["closure", "--config", write(tmp_path, text), "--json"])
    out = json.loads(result.output)
    assert out["status"] == "blowup" and out["blowup_time"] <= out["t_end"] + 1e-6
    assert np.linalg.eigvalsh(out["shape"]).min() < 1e-6  # rank-one shape at T*


@pytest.mark.parametrize(
    ("edit", "pattern"),
    [
        (lambda t: t.replace('"softmax"', '"sigmoid"'), "no Gaussian closure"),
        (lambda t: t.replace('"softmax"', '"masked"'), "no Gaussian closure"),
        (lambda t: t.replace("t_end = 1.5", ""), "t_end: missing"),
        (lambda t: t + "foo = 1\n", "foo: unknown field"),
        (lambda t: t.replace("beta = 0.8", "beta = -1.0"), "beta"),
        (lambda t: t.replace("mean = [0.5, -0.3]", "mean = [0.5]"), "mean"),
        (lambda t: t.replace("[0.4, 0.6]]", "[0.4, -0.6]]"), "cov"),
    ],
)
def test_cli_bad_configs(tmp_path, edit, pattern):
    text = edit(BASE.format(attention="softmax"))
    result = CliRunner().invoke(app, ["closure", "--config", write(tmp_path, text), "--json"])
    assert result.exit_code == 2
    assert pattern in " ".join(result.output.split())
    assert "Fix:" in result.output


@pytest.mark.slow
def test_report_section_quick(tmp_path, monkeypatch):
    from tokendyn.studies import report
    from tokendyn.studies.transformer_pde import run

    monkeypatch.setattr(report, "SECTIONS", {"transformer_pde": run})
    summary = report.write_report(tmp_path, quick=True, only=["transformer_pde"])
    failed = [c["name"] for c in summary if not c["passed"]]
    assert not failed, failed
    assert (tmp_path / "transformer_pde_E5.png").exists()
