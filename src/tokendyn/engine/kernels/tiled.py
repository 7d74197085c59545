"""Tiled backend: keys and queries in blocks, online max-shifted softmax, memory O(N·block).

On CPU (float32/float64) it runs the fused C kernel (`fused.py`): each query block streams over key
blocks held in L1, scoring, exponentiating and accumulating in one pass. Elsewhere (CUDA, or no C
compiler) it runs the same algorithm as a torch block loop with preallocated score buffers:

    m_i ← max(m_i, max_j s_ij);  acc_i ← acc_i·e^{m_old−m_i} + Σ_j e^{s_ij−m_i} [v_j, 1]

Differentiable: when an input requires grad the call goes through `TiledAttention`, a
`torch.autograd.Function` whose backward (flash-attention style, C or torch blocks) recomputes the
weights per tile from the saved lse_i, so it keeps the forward's O(N·block) memory:

    p_ij = e^{s_ij − lse_i}, ds_ij = p_ij(⟨dout_i, v_j⟩ − δ_i), δ_i = ⟨dout_i, out_i⟩ − dlse_i
    (sigmoid: p_ij = σ(s_ij + c), ds_ij = p_ij(1 − p_ij)⟨dout_i, v_j⟩)
    dq_i = Σ_j ds_ij k_j,  dk_j = Σ_i ds_ij q_i,  dv_j = Σ_i p_ij dout_i,  db_j = Σ_i ds_ij
"""

from __future__ import annotations

from typing import Any

import torch
from torch.autograd.function import once_differentiable

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
        inputs = (q, k, v, key_bias)
        if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in inputs):
            out, lse = TiledAttention.apply(
                q, k, v, key_bias, self, allowed, causal, weight, sigmoid_bias
            )
            return Attended(out, lse if need_lse else None)
        return self.forward(q, k, v, key_bias, allowed, causal, weight, sigmoid_bias, need_lse)

    def forward(
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
        """The reduction without autograd: fused C kernel where it applies, else torch blocks."""
        if self.use_fused and fused.supports(q, v):
            mode = 0 if weight == "exp" else 1
            out, lse = fused.attend(
                q, k, v, key_bias, allowed, causal, mode, sigmoid_bias, need_lse
            )
            return Attended(out, lse)
        return self._torch_blocks(
            q, k, v, key_bias, allowed, causal, weight, sigmoid_bias, need_lse
        )

    def backward(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        key_bias: torch.Tensor | None,
        allowed: torch.Tensor | None,
        causal: bool,
        weight: Weight,
        sigmoid_bias: float,
        lse: torch.Tensor | None,
        dout: torch.Tensor,
        delta: torch.Tensor | None,
        need_bias_grad: bool,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """(dq, dk, dv, db (B,Nk) or None) from dout and, for exp weights, the forward's lse and
        δ_i = ⟨dout_i, out_i⟩ − dlse_i (module docstring)."""
        if self.use_fused and fused.supports(q, v):
            mode = 0 if weight == "exp" else 1
            return fused.attend_backward(
                q,
                k,
                v,
                key_bias,
                allowed,
                causal,
                mode,
                sigmoid_bias,
                lse,
                dout,
                delta,
                need_bias_grad,
            )
        return self._torch_blocks_backward(
            q,
            k,
            v,
            key_bias,
            allowed,
            causal,
            weight,
            sigmoid_bias,
            lse,
            dout,
            delta,
            need_bias_grad,
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

    def _torch_blocks_backward(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        key_bias: torch.Tensor | None,
        allowed: torch.Tensor | None,
        causal: bool,
        weight: Weight,
        sigmoid_bias: float,
        lse: torch.Tensor | None,
        dout: torch.Tensor,
        delta: torch.Tensor | None,
        need_bias_grad: bool,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """The backward as a torch block loop: weights recomputed per (block_q × block_k) tile."""
        B, Nq, _ = q.shape
        Nk = k.shape[1]
        bias = None if key_bias is None else key_bias.expand(B, Nk)
        dq = torch.zeros_like(q)
        dk = torch.zeros_like(k)
        dv = torch.zeros_like(v)
        db = q.new_zeros(B, Nk) if need_bias_grad else None
        for i0 in range(0, Nq, self.block_q):
            i1 = min(Nq, i0 + self.block_q)
            qi, gi = q[:, i0:i1], dout[:, i0:i1]
            k_stop = min(Nk, i1) if causal else Nk
            for j0 in range(0, k_stop, self.block_k):
                j1 = min(k_stop, j0 + self.block_k)
                s = torch.bmm(qi, k[:, j0:j1].transpose(1, 2))
                if bias is not None:
                    s = s + bias[:, None, j0:j1]
                dp = torch.bmm(gi, v[:, j0:j1].transpose(1, 2))
                if weight == "exp":
                    assert lse is not None and delta is not None
                    p = torch.exp(s - lse[:, i0:i1, None])
                    ds = p * (dp - delta[:, i0:i1, None])
                else:
                    p = torch.sigmoid(s + sigmoid_bias)
                    ds = p * (1 - p) * dp
                block_mask = self._block_mask(allowed, causal, i0, i1, j0, j1, q.device)
                if block_mask is not None:
                    # After the exponential: a fully hidden row has lse = −inf and p = NaN there.
                    p = p.masked_fill(~block_mask, 0.0)
                    ds = ds.masked_fill(~block_mask, 0.0)
                dq[:, i0:i1] += torch.bmm(ds, k[:, j0:j1])
                dk[:, j0:j1] += torch.bmm(ds.transpose(1, 2), qi)
                dv[:, j0:j1] += torch.bmm(p.transpose(1, 2), gi)
                if db is not None:
                    db[:, j0:j1] += ds.sum(1)
        return dq, dk, dv, db

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


class TiledAttention(torch.autograd.Function):
    """Autograd for the tiled backend: forward saves q, k, v, the key bias, out and lse (all
    O(N·d)); backward recomputes the weights per tile (`TiledBackend.backward`). Returns (out,
    lse), lse None for sigmoid weights. Once differentiable (no double backward)."""

    @staticmethod
    def forward(
        ctx: Any,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        key_bias: torch.Tensor | None,
        backend: TiledBackend,
        allowed: torch.Tensor | None,
        causal: bool,
        weight: Weight,
        sigmoid_bias: float,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        is_exp = weight == "exp"
        out, lse = backend.forward(
            q, k, v, key_bias, allowed, causal, weight, sigmoid_bias, need_lse=is_exp
        )
        ctx.save_for_backward(q, k, v, key_bias, allowed, out, lse)
        ctx.backend, ctx.causal, ctx.weight, ctx.sigmoid_bias = (
            backend,
            causal,
            weight,
            sigmoid_bias,
        )
        return out, lse

    @staticmethod
    @once_differentiable
    def backward(
        ctx: Any, dout: torch.Tensor, dlse: torch.Tensor | None
    ) -> tuple[torch.Tensor | None, ...]:
        q, k, v, key_bias, allowed, out, lse = ctx.saved_tensors
        delta = None
        if ctx.weight == "exp":
            delta = (dout * out).sum(-1)
            if dlse is not None:
                delta = delta - dlse
        need_db = key_bias is not None and ctx.needs_input_grad[3]
        options = (allowed, ctx.causal, ctx.weight, ctx.sigmoid_bias)
        dq, dk, dv, db = ctx.backend.backward(
            q, k, v, key_bias, *options, lse, dout, delta, need_db
        )
        d_bias = None if db is None else db.sum_to_size(key_bias.shape).to(key_bias.dtype)
        return dq, dk, dv, d_bias, None, None, None, None, None
