"""The velocity field of a whole transformer block, for each normalisation scheme.

Write A for the attention sublayer of the layer acting at time t (Σ_h W_h Σ_j softmax_j(s^h_ij)
V_h y_j, with positions and grouped heads as in `positions.py`), M for its MLP (M = 0 without one),
N_attn, N_mlp, N_attn_out, N_mlp_out for its norms (LayerNorm or RMSNorm, `norms.py`) and
n(y) = y/|y|. Each scheme is the ODE ẋ = v(x) below; ONE Euler step x + dt·v(x) with dt = 1 is one
block of the corresponding real transformer (the right-hand column), token by token:

    none     v = a + M(x + a),  a = A(x)                          x' = x + a;  x'' = x' + M(x')
    sphere   the same v on S^{d−1}: ẋ = P_x v, state retracted   x'' = n(x + P_x v)
    pre-ln   v = a + M(N_mlp(x + a)),  a = A(N_attn x)            x' = x + A(N x); x'' = x'+M(N x')
    peri-ln  v = a + N_mlp_out(M(N_mlp(x + a))),                  x' = x + N(A(N x));
             a = N_attn_out(A(N_attn x))                           x'' = x' + N(M(N x'))
    post-ln  v = Φ(x) − x,  Φ(x) = N_mlp(y + M(y)),               y = N(x + A(x)); x'' = N(y + M(y))
             y = N_attn(x + A(x))
    ngpt     v = Φ(x) − x,  Φ(x) = n(y + α_M ⊙ (n(M(y)) − y)),    nGPT (Loshchilov et al. 2024),
             y = n(x + α_A ⊙ (n(A(x)) − x))                       hidden states on the unit sphere

Without an MLP the second half is dropped (post-ln: Φ = y; ngpt: Φ = y). For none/pre-ln/peri-ln the
residual stream is ẋ = attention + MLP, the sublayers composed as in the real block (the MLP reads
x + a); dt → 0 is a continuous-depth model whose unit Euler step is the block. post-ln and ngpt
normalise the residual stream itself, so their ODE is the relaxation ẋ = Φ(x) − x towards the
block map Φ (same fixed points; the unit Euler step is Φ; for small α, nGPT's update is a geodesic
step of size ≈ α towards n(A(x))). `sphere` lives on S^{d−1} (integrate with the Sphere space,
which projects and retracts); every other scheme lives in R^d (the Euclidean space).
"""

from __future__ import annotations

from typing import Literal

import torch

from tokendyn.engine.attention import AttentionField
from tokendyn.engine.attention.base import check_state
from tokendyn.engine.blocks.norms import Norm, NormType
from tokendyn.engine.blocks.weights import Layer, LayerSchedule, ResampledSchedule
from tokendyn.engine.space import Sphere
from tokendyn.errors import ConfigError

Scheme = Literal["none", "sphere", "pre-ln", "post-ln", "peri-ln", "ngpt"]
SCHEMES: tuple[str, ...] = ("none", "sphere", "pre-ln", "post-ln", "peri-ln", "ngpt")


class Block:
    """ẋ = v_{l(t)}(x) for one normalisation scheme (module docstring) and a weight schedule
    (`weights.py`): call as block(x, t) with x (N, d) or (B, N, d)."""

    def __init__(
        self,
        schedule: LayerSchedule | ResampledSchedule,
        *,
        norm: Scheme = "pre-ln",
        norm_type: NormType = "layernorm",
        eps: float = 1e-5,
    ) -> None:
        if norm not in SCHEMES:
            raise ConfigError(
                "norm", f"unknown scheme {norm!r}", f"use one of {', '.join(SCHEMES)}"
            )
        self.schedule, self.norm = schedule, norm
        self.d = schedule.at(0.0).attention.d
        self.default_norm = Norm(self.d, norm_type, eps=eps)

    @property
    def space(self) -> str:
        """The space to integrate on: 'sphere' for the sphere scheme, else 'euclidean'."""
        return "sphere" if self.norm == "sphere" else "euclidean"

    @property
    def layer_time(self) -> float | None:
        """Length of the pieces on which the weights are constant (None: constant in time)."""
        single = isinstance(self.schedule, LayerSchedule) and len(self.schedule.layers) == 1
        return None if single else self.schedule.piece

    @property
    def mask(self) -> object:
        return self.schedule.at(0.0).attention.mask

    def to(self, dtype: torch.dtype, device: torch.device | str = "cpu") -> Block:
        self.schedule = self.schedule.to(dtype, device)
        self.default_norm = self.default_norm.to(dtype, device)
        return self

    def _norm(self, layer: Layer, role: str) -> Norm:
        return layer.norms.get(role, self.default_norm)

    def attention_input(
        self, x: torch.Tensor, t: float = 0.0
    ) -> tuple[AttentionField, torch.Tensor]:
        """(the attention sublayer acting at t, the cloud it reads: N_attn x for pre-/peri-LN)."""
        layer = self.schedule.at(t)
        y = self._norm(layer, "attn")(x) if self.norm in ("pre-ln", "peri-ln") else x
        return layer.attention, y

    def __call__(self, x: torch.Tensor, t: float = 0.0) -> torch.Tensor:
        squeeze = x.dim() == 2
        x = check_state(x, self.d)
        layer = self.schedule.at(t)
        A, M = layer.attention, layer.mlp
        norm = lambda role, y: self._norm(layer, role)(y)  # noqa: E731
        if self.norm in ("none", "sphere"):
            a = A(x)
            v = a if M is None else a + M(x + a)
        elif self.norm == "pre-ln":
            a = A(norm("attn", x))
            v = a if M is None else a + M(norm("mlp", x + a))
        elif self.norm == "peri-ln":
            a = norm("attn_out", A(norm("attn", x)))
            v = a if M is None else a + norm("mlp_out", M(norm("mlp", x + a)))
        elif self.norm == "post-ln":
            y = norm("attn", x + A(x))
            v = (y if M is None else norm("mlp", y + M(y))) - x
        else:
            n = Sphere().retract
            y = n(x + layer.alpha_attn * (n(A(x)) - x))
            if M is not None:
                y = n(y + layer.alpha_mlp * (n(M(y)) - y))
            v = y - x
        return v.squeeze(0) if squeeze else v

    def describe(self) -> str:
        kind = self.default_norm.kind
        return f"{self.norm} block ({kind}), d={self.d}, layer_time={self.layer_time}"
