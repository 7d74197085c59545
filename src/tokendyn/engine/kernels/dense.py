"""Dense reference backend: forms the full N×N score matrix. For small N and for tests."""

from __future__ import annotations

import torch

from tokendyn.engine.kernels.base import Attended, Backend, Mask, Weight, causal_mask, split_mask


class DenseBackend(Backend):
    """The reference backend: forms the N×N score matrix (small N only; exact, differentiable)."""

    name = "dense"

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
        scores = q @ k.transpose(-1, -2)
        if key_bias is not None:
            scores = scores + key_bias.unsqueeze(-2)
        allowed, causal = split_mask(mask)
        if causal:
            allowed = causal_mask(q.shape[-2], k.shape[-2], q.device)
        if weight == "sigmoid":
            w = torch.sigmoid(scores + sigmoid_bias)
            if allowed is not None:
                w = w * allowed
            return Attended(w @ v, None)
        if allowed is not None:
            scores = scores.masked_fill(~allowed, float("-inf"))
        lse = torch.logsumexp(scores, dim=-1)
        w = torch.exp(scores - lse.unsqueeze(-1))
        return Attended(w @ v, lse if need_lse else None)
