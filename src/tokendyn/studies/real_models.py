"""Real transformers through the particle lens (issue 13): the engine reproduces every supported
architecture layer by layer, and — when the small models of `scripts/train_tiny_models.py` are
cached — their per-layer measurements beside nulls, weight spectra, the particle model against
the real trajectory, and the fitted β.

Identities: for a tiny random model of each architecture (built here from a config, float64), the
engine field of layer l on that layer's input equals the model's attention sublayer output, and
one Euler step (dt = 1) of the block equals the layer's output (biases, γ and b perturbed away
from their initial 0 and 1) (`weights.identity_gaps`), bound
1e-10. Hugging Face's Llama evaluates RMSNorm and the RoPE angles in float32 even in a float64
model, so its bound is the float32 one, 1e-5 (the tests check 1e-10 with those two in float64).

Trained models: looked up in $TOKENDYN_MODEL_CACHE (default ~/.cache/tokendyn/models); never
trained here. Absent models are skipped with a note.
"""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path
from typing import Any

import torch

from tokendyn.studies.common import Check, Section

TRAINED = ("albert-docstrings", "gpt2-docstrings")
IDENTITY_TOL = {"float64": 1e-10, "float32": 1e-5}
FLOAT32_INTERNALS = ("llama", "qwen2")  # HF computes parts in float32 whatever the model dtype
IDS = [2, 5, 6, 7, 8, 9, 10, 11, 3]


def tiny_models() -> dict[str, Any]:
    """One tiny random model per supported architecture (d = 32, 2–3 layers, 4 heads)."""
    import transformers as tf

    common = {"vocab_size": 16, "pad_token_id": 0}
    bert = {
        "hidden_size": 32,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "intermediate_size": 64,
        "max_position_embeddings": 16,
    }
    return {
        "bert": lambda: tf.BertModel(tf.BertConfig(**bert, **common)),
        "roberta": lambda: tf.RobertaModel(
            tf.RobertaConfig(**{**bert, "max_position_embeddings": 18}, **common)
        ),
        "distilbert": lambda: tf.DistilBertModel(
            tf.DistilBertConfig(
                dim=32, n_layers=2, n_heads=4, hidden_dim=64, max_position_embeddings=16, **common
            )
        ),
        "albert": lambda: tf.AlbertModel(
            tf.AlbertConfig(**{**bert, "num_hidden_layers": 3}, embedding_size=16, **common)
        ),
        "gpt2": lambda: tf.GPT2Model(
            tf.GPT2Config(
                n_embd=32,
                n_layer=2,
                n_head=4,
                n_positions=16,
                bos_token_id=2,
                eos_token_id=3,
                **common,
            )
        ),
        "llama": lambda: tf.LlamaModel(tf.LlamaConfig(**bert, num_key_value_heads=2, **common)),
        "qwen2": lambda: tf.Qwen2Model(tf.Qwen2Config(**bert, num_key_value_heads=2, **common)),
    }


def perturb_vectors(model: Any, seed: int = 0, scale: float = 0.1) -> Any:
    """Add N(0, scale²) to every 1-D parameter (biases, norms' γ and b): a freshly initialised
    model has zero biases and γ = 1, which would leave their handling unchecked."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 1:
                p.add_(scale * torch.randn(p.shape, generator=gen, dtype=p.dtype))
    return model


def cache_dir() -> Path:
    return Path(os.environ.get("TOKENDYN_MODEL_CACHE", Path.home() / ".cache/tokendyn/models"))


def sample_texts(n: int) -> list[str]:
    """Docstrings of a few standard-library modules, one paragraph a text (offline, fixed)."""
    import collections
    import json as json_module
    import pathlib
    import textwrap

    texts = []
    for module in (json_module, collections, pathlib, textwrap):
        texts += [" ".join(p.split()) for p in (module.__doc__ or "").split("\n\n") if p.strip()]
    return texts[:n]


def identity_checks(section: Section) -> None:
    from tokendyn.models.open import open_model
    from tokendyn.models.weights import identity_gaps

    for name, build in tiny_models().items():
        torch.manual_seed(0)
        om = open_model(perturb_vectors(build().eval()), dtype="float64")
        attn_gap, step_gap = identity_gaps(om, IDS)
        tol = IDENTITY_TOL["float32" if name in FLOAT32_INTERNALS else "float64"]
        note = "float64 model; " + (
            "HF computes RMSNorm and RoPE angles in float32" if tol > 1e-10 else "round-off"
        )
        for label, gap in (("attention sublayer", attn_gap), ("one Euler step = layer", step_gap)):
            section.checks.append(
                Check(f"real_models: {name} {label}, max |gap|", 0.0, gap, tol, "at_most", note)
            )


def trained_model(section: Section, path: Path, out_dir: Path, quick: bool) -> dict[str, Any]:
    from tokendyn.models.compare import compare
    from tokendyn.models.fit import fit_model
    from tokendyn.models.metrics import MetricOptions, layer_metrics
    from tokendyn.models.open import open_model
    from tokendyn.models.trace import inputs_from_texts, trace
    from tokendyn.models.weights import weight_report
    from tokendyn.viz.models import (
        plot_compare,
        plot_gram_layers,
        plot_metric_curves,
        plot_weight_spectra,
    )

    name = path.name
    om = open_model(path, attentions=True)
    texts = sample_texts(8 if quick else 32)
    with warnings.catch_warnings(record=True):  # long docstrings: truncated to the context
        warnings.simplefilter("always", UserWarning)
        inputs = inputs_from_texts(om, texts, "stdlib docstrings")
    ds = trace(om, inputs, batch_size=8, attentions=True)
    metrics = layer_metrics(ds, MetricOptions(max_tokens=1024 if quick else 4096))
    figures = {
        "gram": (plot_gram_layers, metrics, "per-layer Gram histograms ⟨u_i, u_j⟩ with null"),
        "metrics": (plot_metric_curves, metrics, "measurements vs depth, model and null"),
    }
    ids = max(inputs.ids, key=len)
    report = weight_report(om, ids)
    result = compare(om, ids, dts=(1.0, 0.5) if quick else (1.0, 0.5, 0.25), far=10)
    fitted = fit_model(om, ids, max_iter=30 if quick else 200)
    for key, (plot, data, caption) in figures.items():
        plot(data, out_dir / f"real_models_{name}_{key}.png")
        section.figures.append((out_dir / f"real_models_{name}_{key}.png", f"{name}: {caption}"))
    plot_weight_spectra(report, out_dir / f"real_models_{name}_spectra.png")
    plot_compare(result, path=out_dir / f"real_models_{name}_compare.png")
    section.figures += [
        (out_dir / f"real_models_{name}_spectra.png", f"{name}: weight spectra per layer"),
        (out_dir / f"real_models_{name}_compare.png", f"{name}: error vs layer, particle vs nulls"),
    ]
    section.checks.append(
        Check(
            f"real_models: {name} whole blocks at dt = 1 reproduce the trajectory (max 1 − cos)",
            0.0,
            max(result["error"]["cosine"]["attention+mlp dt=1"]),
            1e-5,
            "at_most",
            "float32 model, engine in float64",
        )
    )
    section.checks.append(
        Check(
            f"real_models: {name} fit lowers the trajectory loss (final − initial)",
            0.0,
            fitted["loss"] - fitted["initial_loss"],
            0.0,
            "at_most",
            f"β scale per layer {[round(c, 3) for c in fitted['beta_scale']]}",
        )
    )
    last = -1
    summary = {
        "attention_cosine_error_last": result["error"]["cosine"]["attention dt=1"][last],
        "identity_null_cosine_error_last": result["null_error"]["cosine"]["identity"][last],
        "random_null_cosine_error_last": result["null_error"]["cosine"]["random"][last],
        "effective_beta_weights": fitted["effective_beta_weights"],
        "effective_beta_fit": fitted["effective_beta_fit"],
        "long_run": {k: result["long_run"][k] for k in ("final_clusters", "settled_at")}
        if "long_run" in result
        else None,
    }
    (out_dir / f"real_models_{name}.json").write_text(json.dumps(summary, indent=2))
    return summary


def run(quick: bool, out_dir: Path) -> Section:
    section = Section(
        title="Real transformers as particle systems",
        intro=(
            "Hugging Face models' weights read into the engine: one Euler step (dt = 1) of the "
            "block is one layer of the model, for every supported architecture. Trained small "
            "models (when cached): per-layer measurements with shuffled-token nulls, weight "
            "spectra, the particle model integrated from the layer-0 embeddings against the real "
            "hidden states beside identity and spectrum-matched random nulls, and the fitted β."
        ),
        command="tokendyn reproduce --quick --section real_models",
    )
    try:
        import transformers  # noqa: F401
    except ImportError:
        section.intro += " Skipped: the optional extra tokendyn[models] is not installed."
        return section
    identity_checks(section)
    missing = []
    for name in TRAINED:
        path = cache_dir() / name
        if (path / "config.json").is_file():
            trained_model(section, path, out_dir, quick)
        else:
            missing.append(name)
    if missing:
        section.intro += (
            f" Not cached, skipped: {', '.join(missing)} (train them once with "
            f"`python scripts/train_tiny_models.py --cache {cache_dir()}`; the report never "
            "trains)."
        )
    return section
