"""torch.nn.functional.scaled_dot_product_attention backend (flash kernels on CPU and GPU).

It applies to exp weights without a requested log-normaliser; anything else (sigmoid weights, the
log-partition needed by the N-normalised variant, Sinkhorn potentials, causal mask with a key
bias) is delegated to the tiled backend, so `sdpa` is always a complete backend.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from tokendyn.engine.kernels.base import Attended, Backend, Mask, Weight, split_mask
from tokendyn.engine.kernels.tiled import TiledBackend


class SdpaBackend(Backend):
    """PyTorch's scaled_dot_product_attention (flash / memory-efficient kernels); what it cannot
    do (log-sum-exp outputs, some masks) goes to `fallback`."""

    name = "sdpa"

    def __init__(self, fallback: Backend | None = None) -> None:
        self.fallback = fallback or TiledBackend()

    def attend(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        *,
        key_bias: torch.Tensor | None = None,
        mask: Mask = None,
        weight: Weight = "exp",
        sigmoid_bias: float = 0.0,
        need_lse: bool = False,
    ) -> Attended:
        allowed, causal = split_mask(mask)
        if weight != "exp" or need_lse or (causal and key_bias is not None) or v.shape[-1] == 0:
            return self.fallback.attend(
                q,
                k,
                v,
                key_bias=key_bias,
                mask=mask,
                weight=weight,
                sigmoid_bias=sigmoid_bias,
                need_lse=need_lse,
            )
        attn_mask = None
        if key_bias is not None:
            attn_mask = key_bias.expand(q.shape[0], k.shape[1]).unsqueeze(-2).to(q.dtype)
            if allowed is not None:
                attn_mask = attn_mask.masked_fill(~allowed, float("-inf"))
        elif allowed is not None:
            attn_mask = allowed
        # Inputs are (B, N, d); SDPA wants a head dimension: (B, 1, N, d).
        out = F.scaled_dot_product_attention(
            q.unsqueeze(1),
            k.unsqueeze(1),
            v.unsqueeze(1),
            attn_mask=None if attn_mask is None else _with_head_dim(attn_mask),
            is_causal=causal,
            scale=1.0,
        )
        return Attended(out.squeeze(1), None)


def _with_head_dim(mask: torch.Tensor) -> torch.Tensor:
    """(Nq,Nk) → (1,1,Nq,Nk); (B,Nq,Nk) → (B,1,Nq,Nk)."""
    return mask[None, None] if mask.dim() == 2 else mask.unsqueeze(1)
