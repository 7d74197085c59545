"""Theory against the real trajectory: the particle system with a model's own weights, integrated
from the layer-0 embeddings, against the model's hidden states layer by layer.

The real trajectory r_0..r_L is the residual stream (`weights.residual_stream`: the layer-0 hidden
state and every block's output, before any final norm). The particle trajectories solve
ẋ = v_{⌊t⌋}(x) (`weights.model_block`, the model's normalisation scheme) by Euler steps of size dt
from x(0) = r_0, read at t = l:

    attention      the blocks without their MLP (attention sublayer + norms only)
    attention+mlp  the whole blocks; with dt = 1 this IS the model (x(l) = r_l up to round-off)

for every dt in `dts` (1/dt steps per layer). Errors per layer l, for a cloud x against r:

    cosine   mean_i (1 − cos(x_i, r_i))                     (per-token direction error)
    rel      mean_i |x_i − r_i| / |r_i|                     (per-token relative error)
    w2       W₂ between the clouds of unit vectors {x_i/|x_i|} and {r_i/|r_i|} (exact optimal
             transport up to EXACT_W2_TOKENS tokens, sliced W₂ above)
    mean_cosine, stable_rank, collapse_residual, participation_ratio
             |m(x) − m(r)| for the per-layer measurements of `metrics.py`

Nulls: `identity` (x_l = r_0: nothing moves) and `random` (the attention-only model whose every head
is conjugated by an independent Haar orthogonal O (one per key/value group under GQA): Q O, K O,
V O, Oᵀ W, so every B_h and every
W_h V_h keeps its spectrum while the directions it acts along are random), dt = 1.

Shared weights (ALBERT): the system is autonomous; `long_run` integrates the whole blocks with
dt = 1 to `far` × the depth and counts clusters of unit tokens (|u_i − u_j| < threshold) in time.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import numpy as np
import torch

from tokendyn.engine.blocks import Block, Layer, PositionalAttention, haar_orthogonal
from tokendyn.engine.integrate import Frame, integrate
from tokendyn.engine.observables.transport import sliced_wasserstein, wasserstein
from tokendyn.engine.space import Euclidean
from tokendyn.errors import ConfigError
from tokendyn.models.metrics import cosine_clusters, mean_cosine, moment_metrics
from tokendyn.models.open import OpenedModel
from tokendyn.models.weights import model_block, read_layers, residual_stream, shared_weights

EXACT_W2_TOKENS = 1000
METRICS = (
    "cosine",
    "rel",
    "w2",
    "mean_cosine",
    "stable_rank",
    "collapse_residual",
    "participation_ratio",
)
CLOUD_METRICS = METRICS[3:]


def map_layers(layers: list[Layer], fn: Any) -> list[Layer]:
    """fn applied once per distinct Layer object (shared layers stay shared)."""
    done: dict[int, Layer] = {}
    for layer in layers:
        if id(layer) not in done:
            done[id(layer)] = fn(layer)
    return [done[id(layer)] for layer in layers]


def attention_only(layers: list[Layer]) -> list[Layer]:
    return map_layers(layers, lambda layer: replace(layer, mlp=None))


def rotated(layers: list[Layer], seed: int = 0) -> list[Layer]:
    """The `random` null: attention-only layers with each head conjugated by a Haar O (module
    docstring); biases, β, positions and norms unchanged."""
    gen = torch.Generator().manual_seed(seed)

    def rotate(layer: Layer) -> Layer:
        att = layer.attention
        assert isinstance(att, PositionalAttention)
        d = att.heads[0].Q.shape[1]
        # one O per key/value group: heads of a group share K, V, so they share the rotation
        rot = [haar_orthogonal(d, gen).to(att.heads[0].Q.dtype) for _ in range(att.kv_heads)]
        heads = []
        for h, head in enumerate(att.heads):
            o = rot[att.group(h)]
            W = o.T if head.W is None else o.T @ head.W
            heads.append(replace(head, Q=head.Q @ o, K=head.K @ o, V=head.V @ o, W=W))
        G = att.kv_heads
        new = PositionalAttention(
            heads,
            positions=att.positions,  # type: ignore[arg-type]
            kv_heads=G,
            mask=att.mask,
            backend=att.backend,
            rope_base=att.rope_base,
            slopes=att.slopes,
            biases=att.biases,
        )
        return replace(layer, attention=new, mlp=None)

    return map_layers(layers, rotate)


def run_layers(block: Block, x0: torch.Tensor, n_layers: float, dt: float) -> torch.Tensor:
    """Euler with step dt from x0 (N, d) to t = n_layers; the states at t = 0, 1, …: (L+1, N, d)."""
    frames: list[Frame] = []
    steps = round(1 / dt)
    if abs(steps * dt - 1) > 1e-9:
        raise ConfigError("dt", f"{dt} does not divide one layer", "use dt = 1/k")
    integrate(
        block,
        Euclidean(),
        x0,
        t_end=float(n_layers),
        dt=dt,
        method="euler",
        save_every=steps,
        on_save=frames.append,
    )
    return torch.from_numpy(np.stack([f.x[0] for f in frames]))


def _unit(x: torch.Tensor) -> torch.Tensor:
    return x / x.norm(dim=-1, keepdim=True)


def errors(x: torch.Tensor, r: torch.Tensor) -> dict[str, list[float]]:
    """Every metric of the module docstring, per layer, for trajectories x, r (L+1, N, d)."""
    out: dict[str, list[float]] = {m: [] for m in METRICS}
    for xl, rl in zip(x.double(), r.double(), strict=True):
        out["cosine"].append(float((1 - (_unit(xl) * _unit(rl)).sum(-1)).mean()))
        out["rel"].append(float(((xl - rl).norm(dim=-1) / rl.norm(dim=-1)).mean()))
        ux, ur = _unit(xl), _unit(rl)
        w2 = wasserstein(ux, ur) if len(ux) <= EXACT_W2_TOKENS else sliced_wasserstein(ux, ur)
        out["w2"].append(float(w2))
        mx, mr = moment_metrics(xl), moment_metrics(rl)
        out["mean_cosine"].append(abs(mean_cosine(xl) - mean_cosine(rl)))
        for name in CLOUD_METRICS[1:]:
            out[name].append(abs(mx[name] - mr[name]))
    return out


def compare(
    opened: OpenedModel,
    ids: list[int],
    *,
    dts: tuple[float, ...] = (1.0, 0.5, 0.25),
    seed: int = 0,
    far: int = 10,
    threshold: float = 0.1,
) -> dict[str, Any]:
    """{'layers', 'error': {metric: {variant: per layer}}, 'null_error': {metric: {null: per
    layer}}, 'trajectories' (for figures), and for shared weights 'long_run'} (module docstring);
    variants are named 'attention dt=…' and 'attention+mlp dt=…'."""
    layers = read_layers(opened)
    real, _ = residual_stream(opened, ids)
    real = real.double().cpu()
    L = opened.n_layers
    x0 = real[0]
    models = {"attention": attention_only(layers), "attention+mlp": layers}
    runs: dict[str, torch.Tensor] = {}
    for name, ls in models.items():
        block = model_block(opened, ls)
        for dt in dts:
            runs[f"{name} dt={dt:g}"] = run_layers(block, x0, L, dt)
    nulls = {
        "identity": x0.expand(L + 1, *x0.shape),
        "random": run_layers(model_block(opened, rotated(layers, seed)), x0, L, 1.0),
    }
    per_run = {k: errors(v, real) for k, v in runs.items()}
    per_null = {k: errors(v, real) for k, v in nulls.items()}
    out: dict[str, Any] = {
        "model": opened.name,
        "architecture": opened.architecture.name,
        "tokens": len(ids),
        "layers": list(range(L + 1)),
        "dts": list(dts),
        "error": {m: {k: e[m] for k, e in per_run.items()} for m in METRICS},
        "null_error": {m: {k: e[m] for k, e in per_null.items()} for m in METRICS},
    }
    if shared_weights(opened):
        out["long_run"] = long_run(opened, layers, x0, far * L, threshold)
    return out


def long_run(
    opened: OpenedModel, layers: list[Layer], x0: torch.Tensor, t_end: int, threshold: float
) -> dict[str, Any]:
    """Cluster count of the unit tokens at t = 0..t_end under the autonomous whole block (dt = 1)
    and the first time the final count is reached."""
    block = model_block(opened, layers[:1])
    traj = run_layers(block, x0, t_end, 1.0)
    counts = [cosine_clusters(_unit(x), threshold) for x in traj]
    final = counts[-1]
    settled = next(t for t in range(len(counts)) if all(c == final for c in counts[t:]))
    return {
        "time": list(range(t_end + 1)),
        "clusters": counts,
        "final_clusters": final,
        "settled_at": settled,
        "mean_cosine": [mean_cosine(x) for x in traj],
        "threshold": threshold,
    }
