"""Wrapped-normal mixtures on S¹/S² and β laws: the sampled law and clear errors."""

import math

import numpy as np
import pytest
import torch
from scipy import stats

from tokendyn.app.build import build
from tokendyn.app.config import load_config, make_config
from tokendyn.engine.initial import beta_from_law, wrapped_normal_mixture
from tokendyn.errors import ConfigError

CENTERS = [0.0, 2.1, 4.2]
WEIGHTS = [1.0, 2.0, 1.0]


def _angles_and_components(x: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    theta = np.arctan2(x[..., 1].numpy(), x[..., 0].numpy()).ravel()
    gaps = np.angle(np.exp(1j * (theta[:, None] - np.array(CENTERS)[None, :])))
    return gaps, np.abs(gaps).argmin(axis=1)


@pytest.mark.parametrize("d", [2, 3])
def test_mixture_matches_its_law(d):
    gen = torch.Generator().manual_seed(0)
    n = 40_000
    x = wrapped_normal_mixture(1, n, d, CENTERS, WEIGHTS, 0.2, gen)
    assert torch.allclose(x.norm(dim=-1), torch.ones(1, n, dtype=torch.float64))
    gaps, component = _angles_and_components(x)
    fractions = np.bincount(component, minlength=3) / n
    expected = np.array(WEIGHTS) / sum(WEIGHTS)
    # Multinomial standard error sqrt(p(1−p)/n) ≤ 0.0025; centres 2.1 rad apart are 10σ₀ apart, so
    # misassignment is negligible. 5 standard errors:
    assert np.abs(fractions - expected).max() < 5 * 0.0025
    for j in range(3):
        offsets = gaps[component == j, j]
        # Mean offset: standard error σ₀/√n_j; std: relative standard error 1/√(2 n_j).
        assert abs(offsets.mean()) < 5 * 0.2 / math.sqrt(len(offsets))
        assert abs(offsets.std() / 0.2 - 1) < 5 / math.sqrt(2 * len(offsets))
    if d == 3:  # the elevation is uniform on [−π/2, π/2] (not area-uniform)
        psi = np.arcsin(x[0, :, 2].numpy())
        assert stats.kstest(psi, stats.uniform(-math.pi / 2, math.pi).cdf).pvalue > 1e-3


def test_config_builds_the_mixture_reproducibly():
    cfg = make_config(
        d=2, n=500, init="mixture", init_centers=CENTERS, init_weights=WEIGHTS, seed=4
    )
    a, b = build(cfg)[2], build(cfg)[2]
    assert torch.equal(a, b)
    single = build(make_config(d=2, n=500, init="wrapped-normal", init_std=0.05))[2]
    theta = torch.atan2(single[..., 1], single[..., 0])
    assert theta.abs().max() < 0.05 * 6  # one component at angle 0 with σ₀ = 0.05


@pytest.mark.parametrize(
    ("law", "n", "beta"),
    [
        ("3*log(N)", 10_000, 3 * math.log(10_000)),
        ("log(N)", 50, math.log(50)),
        ("N**0.5", 400, 20.0),
        ("2*N**0.25", 10_000, 20.0),
    ],
)
def test_beta_laws(law, n, beta):
    assert beta_from_law(law, n) == pytest.approx(beta, rel=1e-12)
    cfg = make_config(n=n, beta_law=law)
    assert cfg.beta == pytest.approx(beta, rel=1e-12)


def test_beta_law_is_recorded_and_round_trips(tmp_path):
    cfg = make_config(n=1000, beta_law="3*log(N)")
    path = tmp_path / "run.toml"
    path.write_text(cfg.to_toml())
    again = load_config(path)
    assert again == cfg and again.beta_law == "3*log(N)"


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"beta_law": "exp(N)"}, "beta_law"),
        ({"beta": 2.0, "beta_law": "log(N)"}, "beta"),
        ({"init": "mixture", "d": 2}, "init_centers"),
        ({"init": "mixture", "d": 4, "init_centers": [0.0]}, "init"),
        ({"init": "mixture", "space": "euclidean", "d": 2, "init_centers": [0.0]}, "init"),
        ({"init": "uniform", "space": "euclidean"}, "init"),
        ({"init_centers": [0.0, 1.0], "d": 2}, "init_centers"),
        (
            {"init": "mixture", "d": 2, "init_centers": [0.0, 1.0], "init_weights": [1.0]},
            "init_weights",
        ),
        ({"init": "wrapped-normal", "d": 2, "init_std": 0.0}, "init_std"),
    ],
)
def test_bad_initial_specifications(fields, field):
    with pytest.raises(ConfigError) as info:
        make_config(**fields)
    assert info.value.field == field


def test_negative_mixture_weight_is_refused():
    cfg = make_config(d=2, init="mixture", init_centers=[0.0, 1.0], init_weights=[1.0, -1.0])
    with pytest.raises(ConfigError, match="^init_weights: must be finite and > 0"):
        build(cfg)
