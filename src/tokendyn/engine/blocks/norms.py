"""Token-wise normalisations used inside transformer blocks.

    LayerNorm(y) = γ ⊙ (y − ȳ) / sqrt(σ²(y) + ε) + b,  ȳ = (1/d) Σ_k y_k, σ² = (1/d) Σ_k (y_k − ȳ)²
    RMSNorm(y)   = γ ⊙ y / sqrt((1/d) Σ_k y_k² + ε)

γ (gain) and b (bias) are learnable: pass tensors with requires_grad and gradients flow. Each acts
on the last axis of a (…, d) tensor, token by token (no interaction between tokens).
"""

from __future__ import annotations

from typing import Literal

import torch

from tokendyn.errors import ConfigError

NormType = Literal["layernorm", "rmsnorm"]
NORM_TYPES: tuple[str, ...] = ("layernorm", "rmsnorm")


class Norm:
    """LayerNorm (centring + scaling) or RMSNorm (scaling only) with gain γ and bias b (LayerNorm
    only): the formulas of the module docstring. γ = 1, b = 0 when not given."""

    def __init__(
        self,
        d: int,
        kind: NormType = "layernorm",
        *,
        gamma: torch.Tensor | None = None,
        bias: torch.Tensor | None = None,
        eps: float = 1e-5,
    ) -> None:
        if kind not in NORM_TYPES:
            raise ConfigError("norm_type", f"unknown norm {kind!r}", "use layernorm or rmsnorm")
        if eps < 0:
            raise ConfigError("norm_eps", f"is {eps}", "give ε ≥ 0")
        if kind == "rmsnorm" and bias is not None:
            raise ConfigError("bias", "RMSNorm has no bias", "drop the bias or use layernorm")
        for name, value in (("gamma", gamma), ("bias", bias)):
            if value is not None and tuple(value.shape) != (d,):
                raise ConfigError(
                    name, f"has shape {tuple(value.shape)}, expected ({d},)", f"give {d} numbers"
                )
        self.d, self.kind, self.gamma, self.bias, self.eps = d, kind, gamma, bias, eps

    def __call__(self, y: torch.Tensor) -> torch.Tensor:
        if self.kind == "layernorm":
            y = y - y.mean(-1, keepdim=True)
        out = y * torch.rsqrt(y.pow(2).mean(-1, keepdim=True) + self.eps)
        if self.gamma is not None:
            out = out * self.gamma
        return out if self.bias is None else out + self.bias

    def to(self, dtype: torch.dtype, device: torch.device | str = "cpu") -> Norm:
        move = lambda t: None if t is None else t.to(dtype=dtype, device=device)  # noqa: E731
        return Norm(self.d, self.kind, gamma=move(self.gamma), bias=move(self.bias), eps=self.eps)
