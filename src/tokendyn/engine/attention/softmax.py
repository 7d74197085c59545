"""Dot-product softmax self-attention (single- and multi-head, optionally masked).

    Γ[μ](x_i) = Σ_h W_h Σ_j P^h_ij V_h x_j,
    P^h_ij = exp(β_h⟨Q_h x_i, K_h x_j⟩) / Σ_l exp(β_h⟨Q_h x_i, K_h x_l⟩)

The sum includes j = i. With mask="causal" the softmax runs over j ≤ i. With normalise="n" (the
unnormalised "USA" variant) the partition function is replaced by N:
P_ij = exp(β⟨Qx_i,Kx_j⟩)/N (evaluated as e^{lse_i − log N}·softmax, so it overflows only when
the true value does).
"""

from __future__ import annotations

import torch

from tokendyn.engine.attention.base import AttentionField, Head


class SoftmaxAttention(AttentionField):
    """Softmax self-attention Γ[μ](x_i) = Σ_h W_h Σ_j P^h_ij V_h x_j with
    P^h_ij ∝ exp(β_h⟨Q_h x_i, K_h x_j⟩) (the module docstring gives the masked and 1/N forms)."""

    variant = "softmax"

    def head_output(self, index: int, head: Head, x: torch.Tensor, rows: slice) -> torch.Tensor:
        q = head.scale(x) * (x[:, rows] @ head.Q.T)
        k = x @ head.K.T
        v = x @ head.V.T
        need = self.normalise == "n"
        out, lse = self.backend.attend(q, k, v, mask=self.rows_mask(rows), need_lse=need)
        return self.unnormalise(out, lse, x.shape[1]) if need else out
