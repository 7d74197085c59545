"""L2 self-attention (Kim, Papamakarios & Mnih 2021), general Q and K.

    Γ[μ](x_i) = Σ_j exp(−β|Q x_i − K x_j|²) V x_j / Σ_l exp(−β|Q x_i − K x_l|²)

Since −β|Qx−Ky|² = 2β⟨Qx,Ky⟩ − β|Ky|² − β|Qx|², it is softmax attention with queries 2βQx and the
key bias −β|Ky|² (the query term cancels). With normalise="n" the query term is kept:
Γ(x_i) = (1/N) Σ_j exp(−β|Qx_i − Kx_j|²) V x_j.
"""

from __future__ import annotations

import torch

from tokendyn.engine.attention.base import AttentionField, Head


class L2Attention(AttentionField):
    """L2 (distance) self-attention: weights ∝ exp(−β_h|Q_h x_i − K_h x_j|²/2) (see the module)."""

    variant = "l2"

    def head_output(self, index: int, head: Head, x: torch.Tensor, rows: slice) -> torch.Tensor:
        qx = x[:, rows] @ head.Q.T
        k = x @ head.K.T
        v = x @ head.V.T
        beta = head.scale(x)
        key_bias = -beta[..., 0] * (k * k).sum(-1)
        need = self.normalise == "n"
        out, lse = self.backend.attend(
            2 * beta * qx, k, v, key_bias=key_bias, mask=self.rows_mask(rows), need_lse=need
        )
        if not need:
            return out
        log_z = lse - beta[..., 0] * (qx * qx).sum(-1)
        return self.unnormalise(out, log_z, x.shape[1])
