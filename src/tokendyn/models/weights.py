"""A real model's weights as a particle system: every layer read into the engine's `Layer`/`Block`.

For layer l the engine field is the block of `tokendyn.engine.blocks` with the model's own weights:
heads h = 1..H with Q_h, K_h (rows of W_Q, W_K of the head, K shared by a group under GQA), V_h,
W_h (columns of W_O), the projections' biases, β = the model's score scaling (1/√d_k), its norms'
γ and b (and ε), its MLP, RoPE (Llama class) and the causal mask (decoders). The normalisation
scheme is `post-ln` for the BERT family and `pre-ln` for GPT-2 and Llama, so ONE Euler step with
dt = 1 of `model_block(...)` at t = l is layer l of the model (checked, with the attention
sublayer, for every supported architecture by tests/models/test_models_weights.py). Where each
family keeps each tensor comes only from its `Architecture` entry (`architectures.py`).

Spectra. Per head, the score matrix B_h = β sym(Q_hᵀ K_h) = sym(W_Q W_Kᵀ)/√d_k (d×d: scores are
β⟨Q y_i, K y_j⟩ = y_iᵀ B_h y_j + antisymmetric part) and the value–output map W_h V_h (= W_O W_V,
d×d, its eigenvalues' real parts decide attraction vs repulsion). The **effective β** of a head is

    β_eff(l, h) = λ_max(B_h) · ρ_l,   ρ_l = mean_i |y_i|²,

y the layer's attention input (N_attn x for pre-LN, x for post-LN) measured on real inputs: the
theory's β for tokens on the unit sphere with an interaction of unit top eigenvalue has the same
largest score scale. Without text, ρ_l is measured on `PROBE_TOKENS` token ids drawn uniformly
(seed 0) from the vocabulary.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from tokendyn.engine.blocks import MLP, Block, Layer, LayerSchedule, Norm, PositionalAttention
from tokendyn.engine.blocks.weights import heads_from_projections
from tokendyn.errors import ConfigError
from tokendyn.models.architectures import get_path
from tokendyn.models.open import OpenedModel

# Hugging Face activation names → the engine's MLP activations (gated MLPs are SwiGLU).
ACTIVATIONS = {
    "gelu": "gelu",
    "gelu_new": "gelu_tanh",
    "gelu_pytorch_tanh": "gelu_tanh",
    "gelu_fast": "gelu_tanh",
    "relu": "relu",
    "silu": "swiglu",
    "swish": "swiglu",
}
ACTIVATION_KEYS = ("hidden_act", "activation", "activation_function")
PROBE_TOKENS = 64
TOP_K = 5


def linear(module: Any, conv1d: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(W (out, in), b) of an nn.Linear, or of GPT-2's Conv1D (weight stored (in, out))."""
    W = module.weight.detach()
    b = None if getattr(module, "bias", None) is None else module.bias.detach()
    return (W.T if conv1d else W), b


def read_norm(module: Any, kind: str) -> Norm:
    """The engine Norm of a LayerNorm / RMSNorm module: γ, b and its own ε."""
    gamma = module.weight.detach()
    eps = getattr(module, "eps", None)
    eps = getattr(module, "variance_epsilon", 1e-6) if eps is None else eps
    if kind == "rms":
        return Norm(gamma.shape[0], "rmsnorm", gamma=gamma, eps=float(eps))
    bias = None if getattr(module, "bias", None) is None else module.bias.detach()
    return Norm(gamma.shape[0], "layernorm", gamma=gamma, bias=bias, eps=float(eps))


def activation_of(config: Any, gated: bool) -> str:
    name = next((getattr(config, k) for k in ACTIVATION_KEYS if hasattr(config, k)), "gelu")
    if name not in ACTIVATIONS or (ACTIVATIONS[name] == "swiglu") != gated:
        raise ConfigError(
            "model",
            f"activation {name!r} ({'gated' if gated else 'plain'} MLP) has no engine counterpart",
            f"use a model whose activation is one of {', '.join(ACTIVATIONS)}",
        )
    return ACTIVATIONS[name]


def rope_base(config: Any) -> float:
    params = getattr(config, "rope_parameters", None) or {}
    kind = params.get("rope_type", "default")
    if kind != "default":
        raise ConfigError(
            "model", f"RoPE scaling {kind!r} is not modelled", "use a model with default RoPE"
        )
    return float(params.get("rope_theta", getattr(config, "rope_theta", 10000.0)))


def read_layer(
    opened: OpenedModel, index: int, *, dtype: torch.dtype = torch.float64, backend: str = "dense"
) -> Layer:
    """Layer `index` of the model as an engine Layer (module docstring), in `dtype` on the CPU."""
    arch, base, cfg = opened.architecture, opened.model, opened.config
    layer = arch.layer(base, index)
    parts = arch.parts(base, index)
    if len(arch.projections) == 2:  # fused (qkv, o)
        Wqkv, bqkv = linear(get_path(layer, arch.projections[0]), arch.conv1d)
        Wq, Wk, Wv = Wqkv.chunk(3, dim=0)
        bq, bk, bv = (None,) * 3 if bqkv is None else bqkv.chunk(3)
    else:
        (Wq, bq), (Wk, bk), (Wv, bv) = (
            linear(get_path(layer, p), arch.conv1d) for p in arch.projections[:3]
        )
    Wo, bo = linear(get_path(layer, arch.projections[-1]), arch.conv1d)
    H = int(cfg.num_attention_heads)
    G = int(getattr(cfg, "num_key_value_heads", None) or H)
    k = Wq.shape[0] // H
    beta = float(getattr(parts["attention"], "scaling", k**-0.5))
    heads = heads_from_projections(Wq, Wk, Wv, Wo, H, G, beta=beta)
    biases = {
        name: b.reshape(rows, -1) if name != "o" else b
        for name, b, rows in (("q", bq, H), ("k", bk, G), ("v", bv, G), ("o", bo, None))
        if b is not None
    }
    attention = PositionalAttention(
        heads,
        positions=arch.positions,  # type: ignore[arg-type]
        kv_heads=G,
        mask="causal" if arch.causal else None,
        backend=backend,
        rope_base=rope_base(cfg) if arch.positions == "rope" else 10000.0,
        biases=biases,
    )
    mlp_parts = [linear(parts[f"mlp.{name}"], arch.conv1d) for name in arch.mlp]
    activation = activation_of(cfg, gated=len(mlp_parts) == 3)
    if activation == "swiglu":  # (gate, up, down)
        (W1, _), (W3, _), (W2, _) = mlp_parts
        mlp = MLP(W1, W2, "swiglu", W3)
    else:
        (W1, b1), (W2, b2) = mlp_parts
        mlp = MLP(W1, W2, activation, b1=b1, b2=b2)  # type: ignore[arg-type]
    norms = {
        "attn": read_norm(parts["attention_norm"], arch.norm),
        "mlp": read_norm(parts["mlp_norm"], arch.norm),
    }
    return Layer(attention, mlp, norms).to(dtype)


def read_layers(
    opened: OpenedModel, *, dtype: torch.dtype = torch.float64, backend: str = "dense"
) -> list[Layer]:
    """Every layer, in order; layers sharing one module (ALBERT) share one Layer object."""
    seen: dict[int, Layer] = {}
    out = []
    for index in range(opened.n_layers):
        key = id(opened.architecture.layer(opened.model, index))
        if key not in seen:
            seen[key] = read_layer(opened, index, dtype=dtype, backend=backend)
        out.append(seen[key])
    return out


def scheme_of(opened: OpenedModel) -> str:
    return "pre-ln" if opened.architecture.pre_norm else "post-ln"


def model_block(
    opened: OpenedModel,
    layers: list[Layer] | None = None,
    *,
    dtype: torch.dtype = torch.float64,
    backend: str = "dense",
) -> Block:
    """ẋ = v_{⌊t⌋}(x): the model's layers in a LayerSchedule of layer time 1 under its scheme."""
    layers = read_layers(opened, dtype=dtype, backend=backend) if layers is None else layers
    kind = "rmsnorm" if opened.architecture.norm == "rms" else "layernorm"
    return Block(LayerSchedule(layers, 1.0), norm=scheme_of(opened), norm_type=kind)  # type: ignore[arg-type]


def shared_weights(opened: OpenedModel) -> bool:
    """Every layer is the same module (ALBERT with one group): the system is autonomous."""
    arch = opened.architecture
    return len({id(arch.layer(opened.model, i)) for i in range(opened.n_layers)}) == 1


def residual_stream(
    opened: OpenedModel, ids: list[int], *, attention_outputs: bool = False
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The model's residual stream on one sequence: x_0 (the layer-0 hidden state) and every
    layer's output x_1..x_L (before any final norm, e.g. GPT-2's ln_f), shape (L+1, N, d); and,
    with `attention_outputs`, every layer's attention sublayer output (its output projection's
    result, before the residual sum), shape (L, N, d). Read with forward hooks."""
    arch, base = opened.architecture, opened.model
    outputs: list[torch.Tensor] = []
    attn: list[torch.Tensor] = []
    hooks = []
    modules = {}
    for i in range(opened.n_layers):
        layer = arch.layer(base, i)
        modules[id(layer)] = (layer, get_path(layer, arch.projections[-1]))
    for layer, out_proj in modules.values():
        hooks.append(
            layer.register_forward_hook(
                lambda _m, _a, out: outputs.append(out[0] if isinstance(out, tuple) else out)
            )
        )
        if attention_outputs:
            hooks.append(out_proj.register_forward_hook(lambda _m, _a, out: attn.append(out)))
    try:
        with torch.no_grad():
            ref = base(
                input_ids=torch.tensor([ids], device=opened.device), output_hidden_states=True
            )
    finally:
        for h in hooks:
            h.remove()
    stream = torch.stack([ref.hidden_states[0][0]] + [o[0] for o in outputs])
    return stream, (torch.stack([a[0] for a in attn]) if attention_outputs else None)


def probe_ids(opened: OpenedModel, n: int = PROBE_TOKENS, seed: int = 0) -> list[int]:
    """n token ids drawn uniformly (seeded) from the vocabulary, n ≤ the context."""
    n = min(n, opened.context or n)
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(int(opened.config.vocab_size), (n,), generator=gen).tolist()


def attention_inputs(block: Block, stream: torch.Tensor) -> torch.Tensor:
    """y_l = the cloud layer l's attention reads (N_attn x_l for pre-LN, x_l for post-LN)."""
    x = stream.to(torch.float64).cpu()
    return torch.stack([block.attention_input(x[i], float(i))[1] for i in range(len(x) - 1)])


def summary(values: np.ndarray, top_k: int = TOP_K) -> dict[str, Any]:
    """min/max/mean, the top_k largest, and the fraction > 0 of real numbers."""
    v = np.sort(np.asarray(values, dtype=float))
    return {
        "min": float(v[0]),
        "max": float(v[-1]),
        "mean": float(v.mean()),
        "top": v[::-1][:top_k].tolist(),
        "positive_fraction": float((v > 0).mean()),
    }


def head_spectra(layer: Layer) -> list[dict[str, Any]]:
    """Per head: the eigenvalues of B_h = β sym(Q_hᵀK_h) and of the value–output map W_h V_h
    (real parts; and its singular values), summarised (module docstring)."""
    out = []
    for head in layer.attention.heads:
        A = head.Q.T @ head.K
        B = float(head.beta) * (A + A.T) / 2
        OV = head.V if head.W is None else head.W @ head.V
        ev = torch.linalg.eigvals(OV)
        out.append(
            {
                "B_eigenvalues": torch.linalg.eigvalsh(B).cpu().numpy(),
                "OV_eigenvalues_real": ev.real.cpu().numpy(),
                "OV_singular_values": torch.linalg.svdvals(OV).cpu().numpy(),
            }
        )
    return out


def weight_report(opened: OpenedModel, ids: list[int] | None = None) -> dict[str, Any]:
    """{'layers', 'heads', 'rho', 'effective_beta' (L, H), 'B', 'OV' (per layer, per head
    summaries), 'spectra' (raw eigenvalues, for figures)}; ρ measured on `ids` (default: a
    seeded probe, module docstring)."""
    layers = read_layers(opened)
    block = model_block(opened, layers)
    stream, _ = residual_stream(opened, probe_ids(opened) if ids is None else ids)
    y = attention_inputs(block, stream)
    rho = y.pow(2).sum(-1).mean(-1).cpu().numpy()
    spectra = [head_spectra(layer) for layer in layers]
    beta_eff = [
        [float(s["B_eigenvalues"].max()) * float(rho[i]) for s in sp]
        for i, sp in enumerate(spectra)
    ]
    return {
        "model": opened.name,
        "architecture": opened.architecture.name,
        "scheme": scheme_of(opened),
        "shared_weights": shared_weights(opened),
        "layers": list(range(opened.n_layers)),
        "heads": len(layers[0].attention.heads),
        "rho": rho.tolist(),
        "effective_beta": beta_eff,
        "B": [[summary(s["B_eigenvalues"]) for s in sp] for sp in spectra],
        "OV": [
            [
                {
                    **summary(s["OV_eigenvalues_real"]),
                    "spectral_norm": float(s["OV_singular_values"][0]),
                }
                for s in sp
            ]
            for sp in spectra
        ],
        "spectra": spectra,
    }


def identity_gaps(opened: OpenedModel, ids: list[int]) -> tuple[float, float]:
    """max |A_l(y_l) − model attention output| and max |x_l + 1·v_l(x_l) − x_{l+1}| over every
    layer l and entry, on the sequence `ids` (the engine in float64 on the model's weights): both
    are round-off when the engine reproduces the model."""
    block = model_block(opened)
    stream, attn = residual_stream(opened, ids, attention_outputs=True)
    assert attn is not None
    stream, attn = stream.double().cpu(), attn.double().cpu()
    attn_gap = step_gap = 0.0
    for layer in range(opened.n_layers):
        x = stream[layer]
        A, y = block.attention_input(x, float(layer))
        attn_gap = max(attn_gap, float((A(y) - attn[layer]).abs().max()))
        step = x + 1.0 * block(x, float(layer))
        step_gap = max(step_gap, float((step - stream[layer + 1]).abs().max()))
    return attn_gap, step_gap
