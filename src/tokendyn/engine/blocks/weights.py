"""Depth-varying weights: which block's weights act at time (depth) t.

A block is the map x ↦ x + (one Euler step of size 1); a network of L blocks with layer time τ is
the piecewise-constant-in-time field

    ẋ = v_{l(t)}(x),   l(t) = ⌊t/τ⌋ mod L   (layer l acts on [lτ, (l+1)τ))

so that t = Lτ is one pass through the stack, L = 1 is one shared layer repeated (ALBERT-like),
and t > Lτ repeats the stack (a looped transformer). `ResampledSchedule` instead draws fresh weights
from an ensemble on every interval [kT, (k+1)T) (T = resample_every), from a generator seeded by
(seed, k) only, so the weights at a time do not depend on how the integration got there.
Time t is mapped to its interval as ⌊t/τ + 10⁻⁹⌋, so t = lτ computed as a sum of steps lands in
interval l despite round-off.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace

import numpy as np
import torch

from tokendyn.engine.attention import AttentionField, Head
from tokendyn.engine.blocks.mlp import MLP
from tokendyn.engine.blocks.norms import Norm
from tokendyn.errors import ConfigError

NORM_ROLES: tuple[str, ...] = ("attn", "mlp", "attn_out", "mlp_out")


@dataclass
class Layer:
    """The weights of one block: its attention sublayer (any AttentionField; PositionalAttention
    for ALiBi/RoPE/GQA), its MLP (None = no feed-forward term), its norms by role (`attn`, `mlp`:
    the norms before (pre-, peri-LN) or after (post-LN) each sublayer; `attn_out`, `mlp_out`:
    peri-LN output norms; a missing role is the block's default norm, γ = 1, b = 0) and nGPT's
    step sizes α_attn, α_mlp (numbers or (d,) vectors)."""

    attention: AttentionField
    mlp: MLP | None = None
    norms: dict[str, Norm] = field(default_factory=dict)
    alpha_attn: float | torch.Tensor = 1.0
    alpha_mlp: float | torch.Tensor = 1.0

    def __post_init__(self) -> None:
        unknown = set(self.norms) - set(NORM_ROLES)
        if unknown:
            raise ConfigError(
                "norms", f"unknown roles {sorted(unknown)}", f"use {', '.join(NORM_ROLES)}"
            )

    def to(self, dtype: torch.dtype, device: torch.device | str = "cpu") -> Layer:
        move = lambda a: a.to(dtype=dtype, device=device) if isinstance(a, torch.Tensor) else a  # noqa: E731
        return replace(
            self,
            attention=self.attention.to(dtype, device),
            mlp=None if self.mlp is None else self.mlp.to(dtype, device),
            norms={role: n.to(dtype, device) for role, n in self.norms.items()},
            alpha_attn=move(self.alpha_attn),
            alpha_mlp=move(self.alpha_mlp),
        )


def heads_from_projections(
    Wq: torch.Tensor,
    Wk: torch.Tensor,
    Wv: torch.Tensor,
    Wo: torch.Tensor,
    heads: int,
    kv_heads: int | None = None,
    beta: float | torch.Tensor = 1.0,
) -> list[Head]:
    """A real model's fused projections → engine heads. Wq (H·k, d), Wk (G·k, d), Wv (G·m, d),
    Wo (d, H·m) with G = kv_heads (default H): head h gets Q_h = rows h·k…(h+1)·k of Wq,
    K_h, V_h = the rows of its group g = ⌊hG/H⌋ (the same tensors for every head of a group) and
    W_h = columns h·m…(h+1)·m of Wo."""
    G = heads if kv_heads is None else kv_heads
    if heads < 1 or G < 1 or heads % G:
        raise ConfigError("kv_heads", f"{G} does not divide {heads} heads", "choose G dividing H")
    for name, t, parts, axis in (
        ("Wq", Wq, heads, 0),
        ("Wk", Wk, G, 0),
        ("Wv", Wv, G, 0),
        ("Wo", Wo, heads, 1),
    ):
        if t.shape[axis] % parts:
            raise ConfigError(
                name,
                f"has {t.shape[axis]} rows/columns, not a multiple of {parts}",
                "give one equal block per head",
            )
    k, m = Wq.shape[0] // heads, Wv.shape[0] // G
    K = [Wk[g * k : (g + 1) * k] for g in range(G)]
    V = [Wv[g * m : (g + 1) * m] for g in range(G)]
    return [
        Head(
            Wq[h * k : (h + 1) * k],
            K[h * G // heads],
            V[h * G // heads],
            beta,
            Wo[:, h * m : (h + 1) * m],
        )
        for h in range(heads)
    ]


def interval(t: float, length: float) -> int:
    """The index l of [l·length, (l+1)·length) holding t (with the 10⁻⁹ round-off allowance)."""
    return math.floor(t / length + 1e-9)


class LayerSchedule:
    """Layer ⌊t/τ⌋ mod L of `layers` acts at time t (module docstring)."""

    def __init__(self, layers: Sequence[Layer], layer_time: float = 1.0) -> None:
        if not layers:
            raise ConfigError("layers", "no layers given", "give at least one layer")
        if not layer_time > 0:
            raise ConfigError("layer_time", f"is {layer_time}", "give a layer time τ > 0")
        self.layers, self.piece = list(layers), float(layer_time)

    def at(self, t: float) -> Layer:
        return self.layers[interval(t, self.piece) % len(self.layers)]

    def to(self, dtype: torch.dtype, device: torch.device | str = "cpu") -> LayerSchedule:
        return LayerSchedule([layer.to(dtype, device) for layer in self.layers], self.piece)


class ResampledSchedule:
    """Fresh weights draw(gen_k) on every [kT, (k+1)T), gen_k seeded by (seed, k) only."""

    def __init__(
        self,
        draw: Callable[[torch.Generator], Layer],
        resample_every: float,
        seed: int = 0,
        dtype: torch.dtype = torch.float64,
        device: torch.device | str = "cpu",
    ) -> None:
        if not resample_every > 0:
            raise ConfigError("resample_every", f"is {resample_every}", "give a time T > 0")
        self.draw, self.piece, self.seed = draw, float(resample_every), seed
        self.dtype, self.device = dtype, device
        self._cached: tuple[int, Layer] | None = None

    def generator(self, k: int) -> torch.Generator:
        state = np.random.SeedSequence([self.seed, k]).generate_state(1)[0]
        return torch.Generator().manual_seed(int(state))

    def at(self, t: float) -> Layer:
        k = interval(t, self.piece)
        if self._cached is None or self._cached[0] != k:
            self._cached = (k, self.draw(self.generator(k)).to(self.dtype, self.device))
        return self._cached[1]

    def to(self, dtype: torch.dtype, device: torch.device | str = "cpu") -> ResampledSchedule:
        return ResampledSchedule(self.draw, self.piece, self.seed, dtype, device)
