"""The one run pipeline: statistics bound to the run's own field, log energy that cannot overflow,
per-cloud β built in, Sinkhorn's per-dtype tolerance and its once-per-run warning."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch

from tokendyn.app.build import make_field
from tokendyn.app.config import STATISTICS, load_config, make_config
from tokendyn.app.phases import run_matrices
from tokendyn.app.pipeline import build_run, simulate_run, statistics
from tokendyn.app.run import run_simulation
from tokendyn.engine.attention import split_heads
from tokendyn.engine.attention.sinkhorn import default_tol
from tokendyn.engine.observables import (
    LogEnergy,
    interaction_energy,
    log_interaction_energy,
)
from tokendyn.errors import ConfigError

F64 = torch.float64
SMALL = {"n": 24, "d": 3, "t_end": 1.0, "dt": 0.1, "save_every": 5}


def stored(ds, name: str) -> torch.Tensor:
    return torch.as_tensor(ds[name].values)


# ------------------------------------------------------------------------------------------------
# statistics bound to the field


def test_statistics_have_batch_shape_and_known_values() -> None:
    cfg = make_config(**SMALL, beta=1.0, stats=list(STATISTICS))
    field = make_field(cfg)
    g = torch.Generator().manual_seed(0)
    centres = torch.tensor([[1.0, 0, 0], [0, 1.0, 0], [0, 0, 1.0]], dtype=F64)
    x = torch.stack([centres[torch.arange(30) % k] for k in (2, 3)])
    x = x + 1e-4 * torch.randn(x.shape, generator=g, dtype=F64)
    values = {name: fn(x) for name, fn in statistics(cfg, field).items()}
    assert set(values) == {"clusters", "effective_dim", "energy"}
    assert all(v.shape == (2,) for v in values.values())
    assert values["clusters"].tolist() == [2, 3]
    assert torch.equal(values["energy"], log_interaction_energy(x, 1.0))


def test_unknown_statistic_lists_valid_names() -> None:
    with pytest.raises(ConfigError, match="^stats:") as err:
        make_config(**SMALL, stats=["entropy"])
    assert "clusters, effective_dim, energy" in str(err.value)


def test_energy_statistic_is_bound_to_the_integrated_field() -> None:
    system = build_run(make_config(**SMALL, backend="tiled"))
    energy = system.stats["energy"]
    assert isinstance(energy, LogEnergy) and energy.field is system.field
    assert energy.field.backend.name == "tiled"


def test_stored_energy_with_identity_single_head_is_the_old_value_exactly() -> None:
    """Q = K = I, one head: exp(stored) is bit for bit the E_β the old registry stored."""
    cfg = make_config(**SMALL, beta=3.0, batch=2)
    ds = run_simulation(cfg)
    x = torch.as_tensor(ds["x"].values)  # (time, batch, N, d)
    for t in range(x.shape[0]):
        assert torch.equal(stored(ds, "energy")[t], log_interaction_energy(x[t], 3.0))
        assert torch.equal(torch.exp(stored(ds, "energy")[t]), interaction_energy(x[t], 3.0))


def test_stored_energy_is_that_of_the_runs_own_heads() -> None:
    """Random Q, K over 3 heads: the stored log E is the direct float64 double sum
    Σ_h (1/(2βN²)) Σ_ij exp(β⟨Q_h x_i, K_h x_j⟩) of the run's own matrices, not E_β."""
    beta = 2.0
    cfg = make_config(**{**SMALL, "d": 6}, beta=beta, qkv="random", heads=3, seed=4)
    ds = run_simulation(cfg)
    Q, K, V = run_matrices(cfg)
    heads = split_heads(Q, K, V, 3, beta)
    n = cfg.n
    for t, x in enumerate(torch.as_tensor(ds["x"].values)):
        direct = sum(float(torch.exp(beta * (x @ h.Q.T) @ (x @ h.K.T).T).sum()) for h in heads) / (
            2 * beta * n * n
        )
        got = float(ds["energy"].values[t])
        assert got == pytest.approx(math.log(direct), abs=1e-13)
        assert abs(got - float(log_interaction_energy(x, beta))) > 1e-3


@pytest.mark.parametrize(("dtype", "beta"), [("float64", 1000.0), ("float32", 100.0)])
def test_stored_energy_is_finite_where_e_beta_overflows(dtype: str, beta: float) -> None:
    """The issue's defect: E_β was stored as +inf at β ≥ 1000 (float64), β ≥ 100 (float32). The
    stored log E is finite and equals a float64 logsumexp over the dense score matrix of the stored
    cloud; tolerance u·((d+1)β + 2(N+2) + 3|log E| + log(2βN²)) (score rounding, two levels of
    sums, the logarithms; u the unit roundoff of the run's dtype)."""
    cfg = make_config(n=64, d=3, beta=beta, dtype=dtype, t_end=0.2, dt=0.1, stats=["energy"])
    ds = run_simulation(cfg)
    u = torch.finfo(getattr(torch, dtype)).eps / 2
    for t, x in enumerate(torch.as_tensor(ds["x"].values, dtype=F64)):
        want = float(torch.logsumexp((beta * x @ x.T).ravel(), 0)) - math.log(2 * beta * 64**2)
        got = float(ds["energy"].values[t])
        assert math.isfinite(got)
        assert want > math.log(torch.finfo(getattr(torch, dtype)).max)  # E itself overflows
        tol = u * (4 * beta + 2 * 66 + 3 * abs(want) + math.log(2 * beta * 64**2))
        assert abs(got - want) <= tol


# ------------------------------------------------------------------------------------------------
# batched sweeps: one field with one β per cloud


def test_batched_system_has_per_cloud_beta_from_the_start() -> None:
    configs = [make_config(**SMALL, beta=b, seed=s) for b, s in ((1.0, 0), (4.0, 1))]
    system = build_run(configs)
    for head in system.field.heads:
        assert torch.equal(torch.as_tensor(head.beta), torch.tensor([1.0, 4.0], dtype=F64))
    assert torch.equal(system.x0[1], build_run(configs[1]).x0[0])
    ds = simulate_run(system)
    for b, cfg in enumerate(configs):
        alone = run_simulation(cfg)
        np.testing.assert_allclose(
            ds["energy"].values[:, b], alone["energy"].values, rtol=0, atol=1e-12
        )


# ------------------------------------------------------------------------------------------------
# Sinkhorn: tolerance per dtype, one warning per run


def test_float32_sinkhorn_at_defaults_converges_below_the_cap() -> None:
    """N = 256 in float32 at the default tolerance: converged before max_iter. The old default
    1e-9 lies below float32's resolution: on this cloud the error cycles at 2^-21 ≈ 4.8e-7 and 1e-9
    is never reached (the test's control)."""
    cfg = make_config(
        attention="sinkhorn", n=256, d=3, beta=4.0, dtype="float32", t_end=0.1, seed=1
    )
    assert cfg.sinkhorn_tol is None
    system = build_run(cfg)
    field = system.field
    field(system.x0)
    assert field.last_iterations < cfg.sinkhorn_max_iter
    assert field.last_error < default_tol(torch.float32) and field.capped == 0
    old = make_field(
        make_config(**{**cfg.model_dump(), "sinkhorn_tol": 1e-9, "sinkhorn_max_iter": 100})
    )
    with pytest.warns(RuntimeWarning, match="did not reach tol=1e-09"):
        old(system.x0)
    assert old.capped == 1


def test_default_tolerance_per_dtype_and_explicit_toml_value(tmp_path) -> None:
    assert default_tol(torch.float64) == 1e-9
    assert default_tol(torch.float32) == pytest.approx(100 * 2.0**-23)
    conf = tmp_path / "run.toml"
    conf.write_text('attention = "sinkhorn"\nsinkhorn_tol = 1e-7\nn = 8\n')
    assert make_field(load_config(conf)).tol == 1e-7


def test_a_capped_run_warns_exactly_once_with_its_error() -> None:
    cfg = make_config(
        attention="sinkhorn", n=16, d=3, beta=5.0, t_end=0.5, dt=0.1, sinkhorn_max_iter=2
    )
    system = build_run(cfg)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")  # Python's own once-per-location filter is off
        simulate_run(system)
    sinkhorn = [w for w in caught if "Sinkhorn did not reach" in str(w.message)]
    assert len(sinkhorn) == 1
    assert "marginal error" in str(sinkhorn[0].message)
    assert system.field.capped >= 4 * 5  # every RK4 stage of every step hit the cap
    assert system.field.worst_error > default_tol(torch.float64)
