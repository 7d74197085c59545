"""Particle system with a model's own weights against its real trajectory; the fit of per-layer β.
Tiny random models, float64."""

from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("transformers")

import torch

from tokendyn.models.compare import attention_only, compare, errors, rotated
from tokendyn.models.metrics import cosine_clusters
from tokendyn.models.open import open_model
from tokendyn.models.weights import head_spectra, read_layers, residual_stream

from .tiny_models import tiny_model, tokenizer

IDS = [2, 5, 6, 7, 8, 9, 10, 11, 3]


def opened(name: str):
    return open_model(tiny_model(name), dtype="float64", tokenizer=tokenizer())


@pytest.mark.parametrize("name", ["bert", "gpt2", "albert"])
def test_whole_blocks_at_dt_1_reproduce_the_model(name):
    """attention+mlp with dt = 1 is the model itself: every error is round-off; layer 0 is the
    common start, so every error there is 0 (W₂ up to the transport solver's round-off)."""
    result = compare(opened(name), IDS, dts=(1.0, 0.5), far=2)
    assert result["layers"] == list(range(tiny_model(name).config.num_hidden_layers + 1))
    exact = result["error"]
    assert max(exact["cosine"]["attention+mlp dt=1"]) < 1e-12
    assert max(exact["rel"]["attention+mlp dt=1"]) < 1e-10
    assert max(exact["w2"]["attention+mlp dt=1"]) < 1e-6
    for group in ("error", "null_error"):
        for runs in result[group].values():
            for values in runs.values():
                assert abs(values[0]) < 1e-6
    # the identity null's error is the real cloud's own motion: positive after layer 0
    assert min(result["null_error"]["rel"]["identity"][1:]) > 0
    json.dumps(result)


def test_errors_against_exact_values():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(3, 7, 5, generator=gen, dtype=torch.float64)
    e = errors(-x, x)
    np.testing.assert_allclose(e["cosine"], 2.0, atol=1e-14)  # 1 − cos(−x, x) = 2
    np.testing.assert_allclose(e["rel"], 2.0, atol=1e-14)  # |−x − x|/|x| = 2
    same = errors(x, x)
    for name, values in same.items():
        np.testing.assert_allclose(values, 0.0, atol=1e-7, err_msg=name)


def test_random_null_keeps_every_heads_spectra():
    layers = attention_only(read_layers(opened("llama")))
    null = rotated(layers, seed=3)
    for a, b in zip(layers, null, strict=True):
        for sa, sb in zip(head_spectra(a), head_spectra(b), strict=True):
            np.testing.assert_allclose(sa["B_eigenvalues"], sb["B_eigenvalues"], atol=1e-12)
            np.testing.assert_allclose(
                sa["OV_singular_values"], sb["OV_singular_values"], atol=1e-12
            )
        assert not torch.allclose(a.attention.heads[0].Q, b.attention.heads[0].Q)


def test_albert_long_run_counts_clusters_from_the_start():
    om = opened("albert")
    result = compare(om, IDS, dts=(1.0,), far=3)
    lr = result["long_run"]
    assert lr["time"] == list(range(3 * om.n_layers + 1))
    x0, _ = residual_stream(om, IDS)
    u = x0[0] / x0[0].norm(dim=-1, keepdim=True)
    assert lr["clusters"][0] == cosine_clusters(u, 0.1)
    assert all(c == lr["final_clusters"] for c in lr["clusters"][lr["settled_at"] :])


def test_cli_compare_json(tmp_path):
    from typer.testing import CliRunner

    from tokendyn.cli import app

    tiny_model("bert").save_pretrained(tmp_path / "m")
    tokenizer().save_pretrained(tmp_path / "m")
    (tmp_path / "t.txt").write_text("the token moves on the sphere\n")
    args = ["model", "compare", "--model", str(tmp_path / "m"), "--text", str(tmp_path / "t.txt")]
    result = CliRunner().invoke(app, [*args, "--out", str(tmp_path / "o"), "--json", "--dt", "1"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert {"layers", "error", "null_error"} <= set(data)
    assert set(data["error"]["cosine"]) == {"attention dt=1", "attention+mlp dt=1"}
    assert (tmp_path / "o" / "compare.png").stat().st_size > 0
