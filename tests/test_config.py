"""Configs: every bad field gives a message naming it and the fix."""

import pytest
import torch

from tokendyn.app.build import build, make_field
from tokendyn.app.config import load_config, make_config
from tokendyn.errors import ConfigError


def test_defaults_build_a_run():
    field, _, x0 = build(make_config())
    assert x0.shape == (1, 64, 3) and x0.dtype == torch.float64
    assert torch.allclose(x0.norm(dim=-1), torch.ones(1, 64, dtype=torch.float64))
    assert field(x0).shape == x0.shape


def test_seed_makes_runs_reproducible_and_distinct():
    a = build(make_config(qkv="random", seed=3))[2]
    b = build(make_config(qkv="random", seed=3))[2]
    c = build(make_config(qkv="random", seed=4))[2]
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_float32_cloud_is_the_rounded_float64_cloud():
    a = build(make_config(seed=7))[2]
    b = build(make_config(seed=7, dtype="float32"))[2]
    assert torch.equal(a.float(), b)


def test_euclidean_initial_gaussian_has_the_requested_moments():
    cfg = make_config(
        space="euclidean", d=2, n=20000, init_mean=[1.0, -2.0], init_cov=[[1.0, 0.4], [0.4, 0.6]]
    )
    x = build(cfg)[2][0]
    # Sample moments of 20 000 Gaussian draws: standard errors ≈ 0.01.
    assert torch.allclose(x.mean(0), torch.tensor([1.0, -2.0], dtype=torch.float64), atol=0.04)
    assert torch.allclose(
        torch.cov(x.T), torch.tensor([[1.0, 0.4], [0.4, 0.6]], dtype=torch.float64), atol=0.04
    )


@pytest.mark.parametrize(
    ("fields", "name"),
    [
        ({"beta": 0.0}, "beta"),
        ({"beta": -2.0}, "beta"),
        ({"n": 0}, "n"),
        ({"d": 1}, "d"),
        ({"heads": 2, "d": 3}, "heads"),
        ({"t_end": 1.0, "dt": 0.3}, "dt"),
        ({"attention": "linear"}, "attention"),
        ({"method": "rk45"}, "method"),
        ({"attention": "sinkhorn", "mask": "causal"}, "mask"),
        ({"attention": "sigmoid", "normalise": "softmax"}, "normalise"),
        ({"V": [[1.0, 0.0], [0.0]]}, "V"),
        ({"colour": "red"}, "colour"),
    ],
)
def test_bad_fields_are_named(fields, name):
    with pytest.raises(ConfigError, match=f"{name}") as info:
        make_config(**fields)
    assert "Fix:" in str(info.value)
    assert info.value.field == name


@pytest.mark.parametrize(
    ("fields", "name"),
    [
        ({"V": [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]}, "V"),  # not square
        ({"Q": [[1.0, 0.0], [0.0, 1.0]]}, "Q"),  # wrong number of columns
        ({"Q": [[1.0, 0.0, 0.0]], "K": [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]}, "K"),  # Q, K differ
    ],
)
def test_bad_matrices_are_named(fields, name):
    with pytest.raises(ConfigError, match=f"^{name}:"):
        make_field(make_config(**fields))


def test_cuda_without_a_gpu_is_a_clear_error():
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(ConfigError, match="^device: CUDA is not available"):
        build(make_config(device="cuda"))


def test_toml_round_trip_and_overrides(tmp_path):
    cfg = make_config(attention="l2", n=12, beta=2.5, Q=[[1, 0, 0], [0, 1, 0], [0, 0, 1]])
    path = tmp_path / "run.toml"
    path.write_text(cfg.to_toml())
    assert load_config(path) == cfg
    assert load_config(path, n=20).n == 20


def test_malformed_toml_is_a_clear_error(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text("n = [1, 2\nbeta = ")
    with pytest.raises(ConfigError, match="^config: .* is not valid TOML"):
        load_config(path)


def test_missing_config_file(tmp_path):
    with pytest.raises(ConfigError, match="^config: no file at"):
        load_config(tmp_path / "nope.toml")


def test_unknown_field_in_toml_lists_the_valid_ones(tmp_path):
    path = tmp_path / "typo.toml"
    path.write_text("bta = 2.0\n")
    with pytest.raises(ConfigError, match="bta: unknown field; valid fields are attention"):
        load_config(path)
