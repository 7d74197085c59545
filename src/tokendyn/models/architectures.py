"""Per-architecture knowledge of Hugging Face models, in one place: where the layers live and, in
each layer, the attention, its norm, the MLP and its norm (dotted paths relative to the layer
module, read from the *base* model, `model.base_model`).

To support a new architecture add one `Architecture` to ARCHITECTURES under its
`config.model_type`. Weight extraction (Q, K, V, W_O, γ/β, MLP per layer) will read the same
entries, so nothing about a model family lives anywhere else.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from tokendyn.errors import ConfigError


@dataclass(frozen=True)
class Architecture:
    """Where one model family keeps its parts.

    layers: dotted path from the base model to the list of transformer layers; for ALBERT the
    groups of shared layers (`shared_groups`). attention, attention_norm, mlp, mlp_norm: dotted
    paths inside one layer (several names for an MLP split into modules). norm: "layer" or "rms".
    pre_norm: the norm is applied to the sublayer input (GPT-2, Llama) rather than after the
    residual sum (BERT family). causal: decoder (token i sees j ≤ i). context: config keys holding
    the longest sequence, first present wins; pad_offset: positions start after the padding id
    (RoBERTa), so pad_token_id + 1 positions are not usable. projections: paths inside one layer
    of the query, key, value and output projections (q, k, v, o), or of a fused (qkv, o) pair
    whose qkv rows stack Q, K, V (GPT-2); conv1d: those projections and the MLP's are GPT-2's
    Conv1D (y = x W + b, weight stored (in, out)) rather than nn.Linear; positions: "rope" when
    the attention rotates queries and keys (Llama class), else "none" (absolute position
    embeddings are in the layer-0 hidden state). `tokendyn.models.weights` reads these entries.
    """

    name: str
    layers: str
    attention: str
    attention_norm: str
    mlp: tuple[str, ...]
    mlp_norm: str
    norm: str
    pre_norm: bool
    causal: bool
    projections: tuple[str, ...] = ()
    conv1d: bool = False
    positions: str = "none"
    context: tuple[str, ...] = ("max_position_embeddings",)
    shared_groups: bool = False
    pad_offset: bool = False

    def layer(self, base: Any, index: int) -> Any:
        """The module of layer `index` (ALBERT: the shared layer its group runs)."""
        modules = get_path(base, self.layers)
        if not self.shared_groups:
            return modules[index]
        cfg = base.config
        group = index // (cfg.num_hidden_layers // cfg.num_hidden_groups)
        return modules[group].albert_layers[0]

    def parts(self, base: Any, index: int) -> dict[str, Any]:
        """{'attention', 'attention_norm', 'mlp_norm', 'mlp.<name>'…} modules of layer `index`."""
        layer = self.layer(base, index)
        out = {
            "attention": get_path(layer, self.attention),
            "attention_norm": get_path(layer, self.attention_norm),
            "mlp_norm": get_path(layer, self.mlp_norm),
        }
        out.update({f"mlp.{name}": get_path(layer, name) for name in self.mlp})
        return out

    def context_length(self, config: Any) -> int | None:
        for key in self.context:
            value = getattr(config, key, None)
            if isinstance(value, int) and value > 0:
                return value - (int(config.pad_token_id) + 1 if self.pad_offset else 0)
        return None


def get_path(obj: Any, path: str) -> Any:
    for part in path.split("."):
        obj = obj[int(part)] if part.isdigit() else getattr(obj, part)
    return obj


_BERT = {
    "layers": "encoder.layer",
    "attention": "attention.self",
    "attention_norm": "attention.output.LayerNorm",
    "mlp": ("intermediate.dense", "output.dense"),
    "mlp_norm": "output.LayerNorm",
    "norm": "layer",
    "pre_norm": False,
    "causal": False,
    "projections": (
        "attention.self.query",
        "attention.self.key",
        "attention.self.value",
        "attention.output.dense",
    ),
}
_LLAMA = {
    "layers": "layers",
    "attention": "self_attn",
    "attention_norm": "input_layernorm",
    "mlp": ("mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"),
    "mlp_norm": "post_attention_layernorm",
    "norm": "rms",
    "pre_norm": True,
    "causal": True,
    "projections": ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj"),
    "positions": "rope",
}

ARCHITECTURES: dict[str, Architecture] = {
    "bert": Architecture("bert", **_BERT),
    "roberta": Architecture("roberta", **_BERT, pad_offset=True),
    "distilbert": Architecture(
        "distilbert",
        layers="transformer.layer",
        attention="attention",
        attention_norm="sa_layer_norm",
        mlp=("ffn.lin1", "ffn.lin2"),
        mlp_norm="output_layer_norm",
        norm="layer",
        pre_norm=False,
        causal=False,
        projections=("attention.q_lin", "attention.k_lin", "attention.v_lin", "attention.out_lin"),
    ),
    "albert": Architecture(
        "albert",
        layers="encoder.albert_layer_groups",
        attention="attention",
        attention_norm="attention.LayerNorm",
        mlp=("ffn", "ffn_output"),
        mlp_norm="full_layer_layer_norm",
        norm="layer",
        pre_norm=False,
        causal=False,
        projections=("attention.query", "attention.key", "attention.value", "attention.dense"),
        shared_groups=True,
    ),
    "gpt2": Architecture(
        "gpt2",
        layers="h",
        attention="attn",
        attention_norm="ln_1",
        mlp=("mlp.c_fc", "mlp.c_proj"),
        mlp_norm="ln_2",
        norm="layer",
        pre_norm=True,
        causal=True,
        projections=("attn.c_attn", "attn.c_proj"),
        conv1d=True,
        context=("n_positions", "max_position_embeddings"),
    ),
    "llama": Architecture("llama", **_LLAMA),
    "qwen2": Architecture("qwen2", **_LLAMA),
}


def architecture_of(config: Any) -> Architecture:
    """The Architecture of a transformers config (by its model_type), or a one-line error."""
    model_type = getattr(config, "model_type", None)
    if model_type not in ARCHITECTURES:
        raise ConfigError(
            "model",
            f"architecture {model_type!r} is not supported (supported: {', '.join(ARCHITECTURES)})",
            "use a model of a supported family, or add an Architecture entry for it to "
            "ARCHITECTURES in tokendyn/models/architectures.py",
        )
    return ARCHITECTURES[model_type]
