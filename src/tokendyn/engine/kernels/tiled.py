"""Tiled backend: keys and queries in blocks, online max-shifted softmax, memory O(N·block).

On CPU (float32/float64) it runs the fused C kernel (`fused.py`): each query block streams over key
blocks held in L1, scoring, exponentiating and accumulating in one pass. Elsewhere (CUDA, or no C
compiler) it runs the same algorithm as a torch block loop with preallocated score buffers:

    m_i ← max(m_i, max_j s_ij);  acc_i ← acc_i·e^{m_old−m_i} + Σ_j e^{s_ij−m_i} [v_j, 1]
"""

from __future__ import annotations

import torch

from tokendyn.engine.kernels import fused
from tokendyn.engine.kernels.base import Attended, Backend, Mask, Weight, split_mask


class TiledBackend(Backend):
    """Online-softmax over (block_q × block_k) tiles: O(N·block) memory; on CPU the fused C kernel
    evaluates each tile."""

    name = "tiled"

    def __init__(self, block_q: int = 512, block_k: int = 1024, use_fused: bool = True) -> None:
        if block_q < 1 or block_k < 1:
            raise ValueError("block_q/block_k: must be ≥ 1")
        self.block_q, self.block_k, self.use_fused = block_q, block_k, use_fused

    def __repr__(self) -> str:
        blocks = f"block_q={self.block_q}, block_k={self.block_k}"
        return f"TiledBackend({blocks}, use_fused={self.use_fused})"

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
        if self.use_fused and fused.supports(q, v):
            mode = 0 if weight == "exp" else 1
            out, lse = fused.attend(
                q, k, v, key_bias, allowed, causal, mode, sigmoid_bias, need_lse
            )
            return Attended(out, lse)
        return self._torch_blocks(
            q, k, v, key_bias, allowed, causal, weight, sigmoid_bias, need_lse
        )

    def _torch_blocks(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        key_bias: torch.Tensor | None,
        allowed: torch.Tensor | None,
        causal: bool,
        weight: Weight,
        sigmoid_bias: float,
        need_lse: bool,
    ) -> Attended:
        B, Nq, _ = q.shape
        Nk, dv = k.shape[1], v.shape[2]
        is_exp = weight == "exp"
        # [v, 1]: the last column accumulates the partition function in the same matmul.
        v_aug = torch.cat([v, v.new_ones(B, Nk, 1)], dim=-1) if is_exp else v
        bias = None if key_bias is None else key_bias.expand(B, Nk)
        out = q.new_empty(B, Nq, dv)
        lse = q.new_empty(B, Nq) if (need_lse and is_exp) else None
        score_buf = q.new_empty(B, self.block_q, self.block_k)
        neg_inf = float("-inf")
        for i0 in range(0, Nq, self.block_q):
            i1 = min(Nq, i0 + self.block_q)
            qi = q[:, i0:i1]
            rows = i1 - i0
            acc = q.new_zeros(B, rows, v_aug.shape[-1])
            m = q.new_full((B, rows, 1), neg_inf)
            k_stop = min(Nk, i1) if causal else Nk
            for j0 in range(0, k_stop, self.block_k):
                j1 = min(k_stop, j0 + self.block_k)
                s = score_buf[:, :rows, : j1 - j0]
                torch.bmm(qi, k[:, j0:j1].transpose(1, 2), out=s)
                if bias is not None:
                    s.add_(bias[:, None, j0:j1])
                block_mask = self._block_mask(allowed, causal, i0, i1, j0, j1, q.device)
                if not is_exp:
                    s.add_(sigmoid_bias).sigmoid_()
                    if block_mask is not None:
                        s.masked_fill_(~block_mask, 0.0)
                    acc.baddbmm_(s, v_aug[:, j0:j1])
                    continue
                if block_mask is not None:
                    s.masked_fill_(~block_mask, neg_inf)
                m_new = torch.maximum(m, s.amax(dim=-1, keepdim=True))
                safe = torch.where(torch.isinf(m_new), torch.zeros_like(m_new), m_new)
                acc.mul_(torch.exp(m - safe))
                s.sub_(safe).exp_()
                acc.baddbmm_(s, v_aug[:, j0:j1])
                m = m_new
            if is_exp:
                out[:, i0:i1] = acc[..., :dv] / acc[..., dv:]
                if lse is not None:
                    lse[:, i0:i1] = m.squeeze(-1) + torch.log(acc[..., dv])
            else:
                out[:, i0:i1] = acc
        return Attended(out, lse)

    @staticmethod
    def _block_mask(
        allowed: torch.Tensor | None,
        causal: bool,
        i0: int,
        i1: int,
        j0: int,
        j1: int,
        device: torch.device,
    ) -> torch.Tensor | None:
        if allowed is not None:
            return allowed[..., i0:i1, j0:j1]
        if causal and j1 - 1 > i0:
            rows = torch.arange(i0, i1, device=device)[:, None]
            cols = torch.arange(j0, j1, device=device)[None, :]
            return cols <= rows
        return None
