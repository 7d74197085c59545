"""Sigmoid self-attention: unnormalised, bounded weights.

    mean-field form (default):  Γ[μ](x_i) = (1/N) Σ_j σ(β⟨Q x_i, K x_j⟩ + b) V x_j
    practical form:             Γ[μ](x_i) = Σ_j σ(β⟨Q x_i, K x_j⟩ − log N) V x_j

(σ(z) = 1/(1+e^{−z}); the practical form of Ramapuram et al. 2024 tends to unnormalised softmax
attention as N → ∞.) Gaussians are not preserved, so there is no Gaussian closure for it.
"""

from __future__ import annotations

import math
from typing import Literal

import torch

from tokendyn.engine.attention.base import AttentionField, Head
from tokendyn.errors import ConfigError

SigmoidForm = Literal["meanfield", "practical"]


class SigmoidAttention(AttentionField):
    """Sigmoid self-attention: weights σ(β_h⟨Q_h x_i, K_h x_j⟩ + b), mean-field (1/N) or practical
    (bias −log N) form (module docstring)."""

    variant = "sigmoid"

    def __init__(
        self, heads: list[Head], *, bias: float = 0.0, form: SigmoidForm = "meanfield", **kwargs
    ) -> None:
        normalise = kwargs.pop("normalise", "n")
        if normalise != "n":
            raise ConfigError(
                "normalise",
                "sigmoid attention has no partition function",
                "use normalise 'n' (the 1/N mean-field form) with sigmoid attention",
            )
        if form not in ("meanfield", "practical"):
            raise ConfigError("form", f"unknown form {form!r}", "use 'meanfield' or 'practical'")
        if not math.isfinite(bias):
            raise ConfigError("bias", "must be finite", "give a finite bias b")
        super().__init__(heads, normalise="n", **kwargs)
        self.bias, self.form = bias, form

    def head_output(self, index: int, head: Head, x: torch.Tensor, rows: slice) -> torch.Tensor:
        n = x.shape[1]
        q = head.scale(x) * (x[:, rows] @ head.Q.T)
        k = x @ head.K.T
        v = x @ head.V.T
        c = -math.log(n) if self.form == "practical" else self.bias
        mask = self.rows_mask(rows)
        out, _ = self.backend.attend(q, k, v, mask=mask, weight="sigmoid", sigmoid_bias=c)
        return out if self.form == "practical" else out / n
