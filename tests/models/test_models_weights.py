"""A real model's weights as a particle system: for every supported architecture, the engine field
built from layer l, evaluated on that layer's input, is the model's attention sublayer output, and
one Euler step (dt = 1) of the whole block is the model's layer output. Tiny random models."""

from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("transformers")

import torch

from tests.tiny_models import BUILDERS, tiny_model, tokenizer
from tokendyn.models import weights
from tokendyn.models.open import open_model
from tokendyn.models.weights import (
    read_layers,
    residual_stream,
    weight_report,
)
from tokendyn.studies.real_models import perturb_vectors

IDS = [2, 5, 6, 7, 8, 9, 10, 11, 3]
# float64: round-off of O(10) ops on O(1) numbers, bound 1e-10 (measured ≲ 1e-14).
# float32: the model runs in float32, the engine in float64 on the same weights; the model's own
# round-off (≈ 1e-7 relative on O(1)–O(10) activations through LayerNorm) bounds the gap, < 1e-5.
TOL = {"float64": 1e-10, "float32": 1e-5}


def identity_gaps(name: str, dtype: str) -> tuple[float, float]:
    model = perturb_vectors(tiny_model(name))
    om = open_model(model, dtype=dtype, tokenizer=tokenizer())
    return weights.identity_gaps(om, IDS)


def qwen2():
    from transformers import Qwen2Config, Qwen2Model

    torch.manual_seed(0)
    cfg = Qwen2Config(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        intermediate_size=64,
        max_position_embeddings=16,
        vocab_size=16,
        pad_token_id=0,
    )
    return perturb_vectors(Qwen2Model(cfg).eval())


def llama_in_float64(monkeypatch, family: str = "llama"):
    """Hugging Face's Llama (and Qwen2) computes RMSNorm and the RoPE angles in float32 even in a
    float64 model (modeling_llama.py casts to torch.float); the same two functions without the
    casts, so that the float64 identity is checked on float64 arithmetic. The unmodified model is
    checked at the float32 tolerance below."""
    import importlib

    ml = importlib.import_module(f"transformers.models.{family}.modeling_{family}")
    prefix = {"llama": "Llama", "qwen2": "Qwen2"}[family]

    def rms_forward(self, h):
        return self.weight * (
            h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.variance_epsilon)
        )

    def rope_forward(self, x, position_ids):
        freqs = position_ids[..., None].to(x.dtype) * self.original_inv_freq64.to(x.device)
        emb = torch.cat((freqs, freqs), dim=-1)
        return emb.cos() * self.attention_scaling, emb.sin() * self.attention_scaling

    rotary = getattr(ml, f"{prefix}RotaryEmbedding")
    monkeypatch.setattr(getattr(ml, f"{prefix}RMSNorm"), "forward", rms_forward)
    monkeypatch.setattr(rotary, "forward", rope_forward)
    monkeypatch.setattr(
        rotary,
        "original_inv_freq64",
        property(
            lambda self: (
                1.0
                / (
                    self.config.rope_parameters["rope_theta"]
                    ** (
                        torch.arange(0, self.inv_freq.shape[0] * 2, 2, dtype=torch.float64)
                        / (self.inv_freq.shape[0] * 2)
                    )
                )
            )
        ),
        raising=False,
    )


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("name", list(BUILDERS))
def test_one_euler_step_is_one_layer(name, dtype, monkeypatch):
    if name == "llama" and dtype == "float64":
        llama_in_float64(monkeypatch)
    attn_gap, step_gap = identity_gaps(name, dtype)
    assert attn_gap < TOL[dtype]
    assert step_gap < TOL[dtype]


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_qwen2_with_qkv_biases(dtype, monkeypatch):
    if dtype == "float64":
        llama_in_float64(monkeypatch, "qwen2")
    model = qwen2()
    assert model.layers[0].self_attn.q_proj.bias is not None
    om = open_model(model, dtype=dtype)
    attn_gap, step_gap = weights.identity_gaps(om, IDS)
    assert max(attn_gap, step_gap) < TOL[dtype]


def test_unmodified_llama_in_float64_within_its_float32_internals():
    attn_gap, step_gap = identity_gaps("llama", "float64")
    assert max(attn_gap, step_gap) < TOL["float32"]


def test_albert_layers_share_one_layer_object():
    om = open_model(tiny_model("albert"), tokenizer=tokenizer())
    layers = read_layers(om)
    assert len(layers) == om.n_layers and all(layer is layers[0] for layer in layers)


def test_weight_report_spectra_match_direct_computation():
    """B's eigenvalues against numpy on the model's own W_Q, W_K (BERT head 1, layer 1)."""
    om = open_model(tiny_model("bert"), dtype="float64", tokenizer=tokenizer())
    rep = weight_report(om, IDS)
    att = om.model.encoder.layer[1].attention.self
    k = 32 // 4
    Wq = att.query.weight.detach().numpy()[k : 2 * k]
    Wk = att.key.weight.detach().numpy()[k : 2 * k]
    A = Wq.T @ Wk / np.sqrt(k)
    ev = np.linalg.eigvalsh((A + A.T) / 2)
    np.testing.assert_allclose(rep["spectra"][1][1]["B_eigenvalues"], ev, atol=1e-12)
    assert rep["B"][1][1]["max"] == pytest.approx(ev.max(), abs=1e-12)
    assert rep["effective_beta"][1][1] == pytest.approx(ev.max() * rep["rho"][1], rel=1e-12)
    # post-LN: layer 1 reads x_1 (a LayerNorm output, γ = 1, b = 0 at init): |y|² ≈ d
    stream, _ = residual_stream(om, IDS)
    rho1 = float(stream[1].pow(2).sum(-1).mean())
    assert rep["rho"][1] == pytest.approx(rho1, rel=1e-12)
    assert torch.isfinite(torch.tensor(rep["effective_beta"])).all()
    json.dumps({k: v for k, v in rep.items() if k != "spectra"})


def test_cli_weights_json_and_figure(tmp_path):
    from typer.testing import CliRunner

    from tokendyn.cli import app

    tiny_model("gpt2").save_pretrained(tmp_path / "m")
    tokenizer(False).save_pretrained(tmp_path / "m")
    (tmp_path / "t.txt").write_text("the token moves\non the sphere\n")
    args = ["model", "weights", "--model", str(tmp_path / "m"), "--text", str(tmp_path / "t.txt")]
    result = CliRunner().invoke(app, [*args, "--json", "--figure", str(tmp_path / "s.png")])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["layers"] == [0, 1] and data["heads"] == 4 and data["scheme"] == "pre-ln"
    assert np.array(data["effective_beta"]).shape == (2, 4)
    assert (tmp_path / "s.png").stat().st_size > 0
