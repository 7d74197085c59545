"""The feed-forward (MLP) sublayer of a transformer block, token by token.

    gelu / relu:  M(y) = W₂ σ(W₁ y + b₁) + b₂,        W₁ ∈ R^{w×d}, W₂ ∈ R^{d×w}
    swiglu:       M(y) = W₂ (silu(W₁ y) ⊙ (W₃ y)),     W₁, W₃ ∈ R^{w×d}, W₂ ∈ R^{d×w}  (Llama)

σ = gelu (exact, erf form), gelu_tanh (the tanh approximation, GPT-2's and ALBERT's "gelu_new")
or relu; silu(z) = z·sigmoid(z). Biases are optional (None = 0).
Random ensemble (`random_mlp`): entries of W₁, W₃ are N(0, 1/d) and of W₂ N(0, 1/w), biases 0, so
that a unit-variance input gives O(1) hidden and output activations.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F

from tokendyn.errors import ConfigError

Activation = Literal["gelu", "gelu_tanh", "relu", "swiglu"]
ACTIVATIONS: tuple[str, ...] = ("gelu", "gelu_tanh", "relu", "swiglu")


@dataclass
class MLP:
    """M(y) of the module docstring; W3 is required for swiglu and absent otherwise."""

    W1: torch.Tensor
    W2: torch.Tensor
    activation: Activation = "gelu"
    W3: torch.Tensor | None = None
    b1: torch.Tensor | None = None
    b2: torch.Tensor | None = None

    def __post_init__(self) -> None:
        if self.activation not in ACTIVATIONS:
            raise ConfigError(
                "mlp",
                f"unknown activation {self.activation!r}",
                f"use one of {', '.join(ACTIVATIONS)}",
            )
        w, d = self.W1.shape
        if tuple(self.W2.shape) != (d, w):
            raise ConfigError(
                "W2", f"has shape {tuple(self.W2.shape)}, expected ({d}, {w})", "give W2 as d×w"
            )
        if (self.activation == "swiglu") != (self.W3 is not None):
            raise ConfigError(
                "W3", "is needed for swiglu and only for swiglu", "give W3 exactly with swiglu"
            )
        if self.W3 is not None and self.W3.shape != self.W1.shape:
            raise ConfigError(
                "W3", f"has shape {tuple(self.W3.shape)}, expected ({w}, {d})", "give W3 as w×d"
            )
        if self.activation == "swiglu" and (self.b1 is not None or self.b2 is not None):
            raise ConfigError("b1", "SwiGLU has no biases here", "drop b1/b2 or use gelu/relu")

    def __call__(self, y: torch.Tensor) -> torch.Tensor:
        h = F.linear(y, self.W1, self.b1)
        if self.activation == "swiglu":
            assert self.W3 is not None
            h = F.silu(h) * F.linear(y, self.W3)
        elif self.activation == "relu":
            h = F.relu(h)
        else:
            h = F.gelu(h, approximate="tanh" if self.activation == "gelu_tanh" else "none")
        return F.linear(h, self.W2, self.b2)

    def to(self, dtype: torch.dtype, device: torch.device | str = "cpu") -> MLP:
        move = lambda t: None if t is None else t.to(dtype=dtype, device=device)  # noqa: E731
        return MLP(
            move(self.W1),
            move(self.W2),
            self.activation,
            move(self.W3),
            move(self.b1),
            move(self.b2),
        )


def random_mlp(d: int, width: int, activation: Activation, gen: torch.Generator) -> MLP:
    """W₁ (and W₃) with N(0, 1/d) entries, W₂ with N(0, 1/w) entries, no biases; drawn in float64
    on the CPU in the order W₁, W₂, W₃."""
    if width < 1:
        raise ConfigError("mlp_width", f"is {width}", "give a hidden width ≥ 1")
    W1 = torch.randn(width, d, generator=gen, dtype=torch.float64) / d**0.5
    W2 = torch.randn(d, width, generator=gen, dtype=torch.float64) / width**0.5
    W3 = None
    if activation == "swiglu":
        W3 = torch.randn(width, d, generator=gen, dtype=torch.float64) / d**0.5
    return MLP(W1, W2, activation, W3)
