"""Particle system with a model's own weights against its real trajectory; the fit of per-layer β.
Tiny random models, float64."""

from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("transformers")

import torch

from tests.tiny_models import tiny_model, tokenizer
from tokendyn.models.compare import attention_only, compare, errors, rotated
from tokendyn.models.metrics import cosine_clusters
from tokendyn.models.open import open_model
from tokendyn.models.weights import head_spectra, read_layers, residual_stream

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


def synthetic_layers(L: int = 3, d: int = 8, H: int = 2, seed: int = 0):
    from tokendyn.engine.blocks import Layer, PositionalAttention, heads_from_projections

    gen = torch.Generator().manual_seed(seed)
    layers = []
    for _ in range(L):
        Wq, Wk, Wv = (torch.randn(H * 4, d, generator=gen, dtype=torch.float64) for _ in "qkv")
        Wo = torch.randn(d, H * 4, generator=gen, dtype=torch.float64) / 4
        heads = heads_from_projections(Wq, Wk, Wv, Wo, H, beta=0.5)
        layers.append(Layer(PositionalAttention(heads, backend="dense")))
    return layers


@pytest.mark.parametrize("fit_dt", [False, True])
def test_fit_recovers_planted_betas(fit_dt):
    """Noise-free data from planted c (and τ); the loss is 0 there. Near the optimum loss ≈ ½ δᵀHδ,
    so the parameter error is |δ| ≤ √(2·loss/λ_min(H)) (H the Hessian in (log c, log τ) at the
    planted point, computed here by autograd); allowed: twice that (the cubic remainder), and the
    fit must reach a bound below 10⁻³ to count as a recovery."""
    from tokendyn.engine.blocks import Block, LayerSchedule
    from tokendyn.models.fit import fit_layers, rollout, trajectory_loss

    layers = synthetic_layers()
    L = len(layers)
    planted_c = torch.tensor([0.6, 1.8, 1.3], dtype=torch.float64)
    planted_tau = torch.tensor([0.8, 1.0, 1.25] if fit_dt else [1.0] * L, dtype=torch.float64)
    block = Block(LayerSchedule(layers, 1.0), norm="pre-ln")
    x0 = torch.randn(12, 8, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    with torch.no_grad():
        target = torch.stack(rollout(block, layers, x0, planted_c, planted_tau))
    result = fit_layers(layers, "pre-ln", target, fit_dt=fit_dt)
    assert result.loss < result.initial_loss

    truth = torch.cat([planted_c.log(), planted_tau.log()] if fit_dt else [planted_c.log()])

    def loss_at(p):
        c = p[:L].exp()
        tau = p[L:].exp() if fit_dt else planted_tau
        return trajectory_loss(rollout(block, layers, x0, c, tau), target)

    hess = torch.autograd.functional.hessian(loss_at, truth)
    lam_min = float(torch.linalg.eigvalsh(hess)[0])
    assert lam_min > 0  # identifiable
    bound = (2 * result.loss / lam_min) ** 0.5
    assert bound < 1e-3
    fitted = torch.tensor(result.c + (result.tau if fit_dt else []), dtype=torch.float64).log()
    assert float((fitted - truth).norm()) <= 2 * bound + 1e-12


def test_fit_on_a_model_reports_weight_read_beta():
    from tokendyn.models.fit import fit_model

    out = fit_model(opened("gpt2"), IDS, max_iter=20)
    assert len(out["beta_scale"]) == len(out["effective_beta_weights"]) == 2
    np.testing.assert_allclose(
        out["effective_beta_fit"],
        np.array(out["beta_scale"]) * np.array(out["effective_beta_weights"]),
    )
    assert out["loss"] <= out["initial_loss"]


def test_cli_fit_json(tmp_path):
    from typer.testing import CliRunner

    from tokendyn.cli import app

    tiny_model("albert").save_pretrained(tmp_path / "m")
    tokenizer().save_pretrained(tmp_path / "m")
    args = ["model", "fit", "--model", str(tmp_path / "m"), "--max-iter", "5", "--json"]
    result = CliRunner().invoke(app, [*args, "--fit-dt"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert len(data["beta_scale"]) == len(data["dt"]) == 3


def test_report_section_with_cached_models(tmp_path, monkeypatch):
    """The study's trained-model path, on tiny random models saved under the cached names."""
    from tokendyn.studies import real_models

    for arch, name in (("albert", "albert-docstrings"), ("gpt2", "gpt2-docstrings")):
        tiny_model(arch).save_pretrained(tmp_path / "cache" / name)
        tokenizer(arch == "albert").save_pretrained(tmp_path / "cache" / name)
    monkeypatch.setenv("TOKENDYN_MODEL_CACHE", str(tmp_path / "cache"))
    section = real_models.run(True, tmp_path)
    failed = [c.name for c in section.checks if not c.passed]
    assert not failed
    assert "Not cached" not in section.intro
    assert len(section.figures) == 8
    assert all(path.stat().st_size > 0 for path, _ in section.figures)
    summary = json.loads((tmp_path / "real_models_albert-docstrings.json").read_text())
    assert summary["long_run"] is not None
