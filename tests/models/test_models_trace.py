"""Real-model traces: hidden states stored exactly, padding masked, stores readable by the run
readers, and one-line errors for bad input. Tiny random models; nothing is downloaded."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest

pytest.importorskip("transformers")

import torch
from typer.testing import CliRunner

from tests.tiny_models import BUILDERS, CONTEXT, tiny_model, tokenizer
from tokendyn.app.store import open_run, stored_config
from tokendyn.app.traces import write_trace
from tokendyn.errors import ConfigError
from tokendyn.models import open as model_open
from tokendyn.models.architectures import ARCHITECTURES
from tokendyn.models.open import open_model
from tokendyn.models.trace import (
    inputs_from_ids,
    inputs_from_texts,
    parse_ids,
    trace,
)

TEXTS = ["the token moves on the sphere", "a cloud", "attention of the layer is a cluster"]
DECODERS = ("gpt2", "llama")


def opened(name: str, **kw):
    return open_model(tiny_model(name), tokenizer=tokenizer(name not in DECODERS), **kw)


def padded_batch(inputs):
    T = inputs.max_length
    ids = torch.zeros(len(inputs.ids), T, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for b, row in enumerate(inputs.ids):
        ids[b, : len(row)] = torch.tensor(row)
        mask[b, : len(row)] = 1
    return ids, mask


@pytest.mark.parametrize("name", list(BUILDERS))
def test_trace_is_the_models_hidden_states_exactly(name):
    om = opened(name)
    inputs = inputs_from_texts(om, TEXTS)
    ds = trace(om, inputs, batch_size=len(TEXTS))
    ids, mask = padded_batch(inputs)
    with torch.no_grad():
        ref = om.model(input_ids=ids, attention_mask=mask, output_hidden_states=True)
    expected = torch.stack(ref.hidden_states).numpy()  # (L+1, B, T, d)
    x = ds["x"].values
    assert x.shape == expected.shape
    assert ds.sizes["time"] == om.n_layers + 1
    for b, row in enumerate(inputs.ids):
        n = len(row)
        np.testing.assert_array_equal(x[:, b, :n], expected[:, b, :n])
        assert np.isnan(x[:, b, n:]).all()
        assert ds["token_str"].values[b, :n].tolist() == om.tokenizer.convert_ids_to_tokens(row)
    assert ds["length"].values.tolist() == [len(r) for r in inputs.ids]
    np.testing.assert_array_equal(ds["layer"].values, np.arange(om.n_layers + 1))


@pytest.mark.parametrize("name", list(BUILDERS))
def test_padding_does_not_change_a_sequences_trajectory(name):
    """float64: each sequence traced in a padded batch of 2 equals it traced alone."""
    om = opened(name, dtype="float64")
    inputs = inputs_from_texts(om, TEXTS)
    batched = trace(om, inputs, batch_size=len(TEXTS))["x"].values
    for b in range(len(TEXTS)):
        alone = trace(om, inputs_from_texts(om, [TEXTS[b]]))["x"].values
        n = alone.shape[1]
        np.testing.assert_allclose(batched[:, b, :n], alone, rtol=0, atol=1e-10)


@pytest.mark.parametrize("name", list(BUILDERS))
def test_each_architecture_names_modules_that_exist(name):
    om = opened(name)
    arch = ARCHITECTURES[om.config.model_type]
    for layer in range(om.n_layers):
        parts = arch.parts(om.model, layer)
        assert all(isinstance(m, torch.nn.Module) for m in parts.values())
    if arch.shared_groups:  # ALBERT: one set of weights for every layer
        assert arch.layer(om.model, 0) is arch.layer(om.model, om.n_layers - 1)


def test_sphere_view_has_unit_tokens_and_streamed_batches_match(tmp_path):
    om = opened("bert")
    inputs = inputs_from_texts(om, TEXTS)
    ds = trace(om, inputs, view="sphere", batch_size=1)
    norms = np.linalg.norm(ds["x"].values, axis=-1)
    real = ~np.isnan(norms)
    np.testing.assert_allclose(norms[real], 1.0, rtol=0, atol=1e-6)  # float32 rounding
    raw = trace(om, inputs)["x"].values
    np.testing.assert_allclose(
        ds["x"].values[real], (raw / np.linalg.norm(raw, axis=-1, keepdims=True))[real], atol=1e-6
    )
    path = write_trace(om, inputs, tmp_path / "t.zarr", batch_size=1, view="sphere")
    stored = open_run(path)
    np.testing.assert_array_equal(stored["x"].values, ds["x"].values)
    assert stored["token_str"].values.tolist() == ds["token_str"].values.tolist()
    assert stored_config(stored)["space"] == "sphere"


def test_attentions_are_stored_and_padding_masked():
    om = opened("gpt2", attentions=True)
    inputs = inputs_from_texts(om, TEXTS)
    ds = trace(om, inputs, attentions=True)
    att = ds["attention"].values  # (L, B, H, T, T)
    assert att.shape[:3] == (om.n_layers, len(TEXTS), om.config.n_head)
    for b, row in enumerate(inputs.ids):
        n = len(row)
        rows = att[:, b, :, :n, :n]
        np.testing.assert_allclose(rows.sum(-1), 1.0, atol=1e-6)
        assert np.allclose(np.triu(rows, 1), 0)  # causal
        assert np.isnan(att[:, b, :, n:, :]).all()


def test_trace_store_works_with_plot_and_phases(tmp_path):
    from tokendyn.app.config import make_config
    from tokendyn.app.phases import detect_phases
    from tokendyn.viz.plot import plot_run

    om = opened("albert")
    single = write_trace(om, inputs_from_texts(om, TEXTS[:1]), tmp_path / "one.zarr", view="sphere")
    ds = open_run(single)
    assert ds["x"].dims == ("time", "token", "dim")
    make_config(**stored_config(ds))
    phases = detect_phases(ds)
    assert phases.final_clusters is not None
    assert {p.name for p in plot_run(ds, tmp_path / "fig1")} == {"sphere.png", "gram_histogram.png"}
    many = open_run(write_trace(om, inputs_from_texts(om, TEXTS), tmp_path / "b.zarr"))
    for batch in range(len(TEXTS)):  # padded (NaN) tokens are left out of the figures
        assert len(plot_run(many.isel(batch=[batch]), tmp_path / f"fig{batch + 2}")) == 2


def test_open_from_a_saved_directory_and_the_cli(tmp_path):
    from tokendyn.cli import app

    model = tiny_model("bert")
    model.save_pretrained(tmp_path / "m")
    tokenizer().save_pretrained(tmp_path / "m")
    om = open_model(tmp_path / "m")
    assert om.architecture.name == "bert" and om.tokenizer is not None
    inputs = inputs_from_texts(om, TEXTS)
    np.testing.assert_array_equal(
        trace(om, inputs)["x"].values,
        trace(open_model(model, tokenizer=tokenizer()), inputs)["x"].values,
    )
    (tmp_path / "in.txt").write_text("\n".join(TEXTS) + "\n\n")
    runner = CliRunner()
    args = ["model", "trace", "--model", str(tmp_path / "m"), "--text", str(tmp_path / "in.txt")]
    result = runner.invoke(app, [*args, "--out", str(tmp_path / "r.zarr"), "--attentions"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output.strip().splitlines()[-1])["sequences"] == len(TEXTS)
    result = runner.invoke(app, ["model", "metrics", str(tmp_path / "r.zarr"), "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data["layers"] == list(range(om.n_layers + 1))
    assert set(data["leaders"]) == {"value", "null"}
    result = runner.invoke(app, ["plot", str(tmp_path / "r.zarr"), "--out", str(tmp_path / "f")])
    assert result.exit_code == 0, result.output
    result = runner.invoke(app, [*args, "--out", str(tmp_path / "r.zarr")])
    assert result.exit_code == 2 and "--overwrite" in result.output


# ---------------------------------------------------------------------------------------------
# bad input: one line naming the field and the fix


def test_unknown_architecture_lists_the_supported_ones():
    from transformers import T5Config, T5Model

    model = T5Model(T5Config(d_model=16, d_ff=32, num_layers=1, num_heads=2, vocab_size=20))
    with pytest.raises(ConfigError, match=r"^model: architecture 't5'.*bert.*Fix: .*ARCHITECTURES"):
        open_model(model)


def test_directory_without_weights_or_config(tmp_path):
    with pytest.raises(ConfigError, match=r"^model: directory .* has no config.json"):
        open_model(tmp_path)
    tiny_model("bert").config.save_pretrained(tmp_path)
    with pytest.raises(ConfigError, match=r"^model: directory .* has no weights.*save_pretrained"):
        open_model(tmp_path)


def test_model_too_large_is_refused_with_the_estimate(tmp_path):
    model = tiny_model("gpt2")
    model.save_pretrained(tmp_path)
    params = sum(p.numel() for p in model.parameters())
    need = model_open.estimate_bytes(model.config, torch.float32)
    assert need == int(np.ceil(params * 4 * model_open.MEMORY_HEADROOM))
    with pytest.raises(ConfigError, match=r"^model: needs about .* GiB .* float32 .*Fix: "):
        open_model(tmp_path, memory_limit=need - 1)
    assert open_model(tmp_path, memory_limit=need).n_layers == 2


def test_bfloat16_without_support_and_unknown_dtype(monkeypatch):
    monkeypatch.setattr(model_open, "bf16_supported", lambda device: False)
    with pytest.raises(ConfigError, match=r"^dtype: bfloat16 is not supported .*Fix: use --dtype"):
        opened("bert", dtype="bfloat16")
    with pytest.raises(ConfigError, match=r"^dtype: is 'int8'"):
        opened("bert", dtype="int8")


def test_missing_extra_names_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "transformers", None)
    with pytest.raises(ConfigError, match=r"tokendyn\[models\].*Fix: pip install"):
        model_open.require_transformers()


def test_long_text_is_truncated_with_a_warning():
    om = opened("bert")
    long = " ".join(["token"] * (3 * CONTEXT))
    with pytest.warns(UserWarning, match=r"^text: 1 sequence\(s\) longer than the model's context"):
        inputs = inputs_from_texts(om, [long, "a cloud"])
    assert inputs.truncated == 1 and inputs.max_length == CONTEXT
    assert trace(om, inputs).sizes["token"] == CONTEXT


def test_bad_ids():
    om = opened("gpt2")
    assert parse_ids("5 6, 7\n\n8\n") == [[5, 6, 7], [8]]
    with pytest.raises(ConfigError, match=r"^ids: line 1 is not a list of integers"):
        parse_ids("5 x")
    with pytest.raises(ConfigError, match=r"^ids: token id 999 is outside the vocabulary"):
        inputs_from_ids(om, [[5, 999]])
    with pytest.raises(ConfigError, match=r"^ids: holds no token ids"):
        inputs_from_ids(om, [])
    inputs = inputs_from_ids(om, [[5, 6, 7]])
    assert inputs.tokens == [om.tokenizer.convert_ids_to_tokens([5, 6, 7])]


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_half_precision_models_are_traced_in_their_dtype(dtype):
    if dtype == "bfloat16" and not model_open.bf16_supported(torch.device("cpu")):
        pytest.skip("no bfloat16 on this CPU")
    om = opened("gpt2", dtype=dtype)
    assert next(om.model.parameters()).dtype == getattr(torch, dtype)
    inputs = inputs_from_texts(om, TEXTS[:1])
    ids = torch.tensor(inputs.ids)
    with torch.no_grad():
        ref = om.model(input_ids=ids, output_hidden_states=True).hidden_states
    x = trace(om, inputs)["x"]
    assert x.dtype == np.float32
    np.testing.assert_array_equal(x.values, torch.stack(ref)[:, 0].float().numpy())
