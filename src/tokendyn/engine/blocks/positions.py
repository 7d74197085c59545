"""Positional structure of multi-head softmax attention: ALiBi, RoPE, grouped-query attention.

Token i sits at position p_i = i (0-based). Head h has scores

    none:   s^h_ij = β⟨Q_h x_i, K_h x_j⟩
    rope:   s^h_ij = β⟨R(p_i) Q_h x_i, R(p_j) K_h x_j⟩      (Llama / Hugging Face convention)
    alibi:  s^h_ij = β⟨Q_h x_i, K_h x_j⟩ − m_h |p_i − p_j|   (causal: −m_h (p_i − p_j), j ≤ i)

and output Σ_h W_h Σ_j softmax_j(s^h_ij) V_h x_j. R(p) rotates the pairs of coordinates (a, a + k/2)
of a head of even dimension k by the angles p·θ_a, θ_a = base^{−2a/k} (a = 0..k/2−1, base 10000).
ALiBi slopes are Press et al.'s m_h = 2^{−8h/H} (h = 1..H; for H not a power of two, the slopes of
the nearest lower power of two followed by every other slope of the next one); the bias is not
multiplied by β. Grouped-query attention: H query heads share G = kv_heads key/value heads; query
head h uses K, V of group ⌊h G / H⌋ (heads of one group must hold equal K and V; they are computed
once per group). Optional biases (Hugging Face models with biased projections): `biases` holds
q (H, k), k (G, k), v (G, m) and o (d,) — q_i = Q_h x_i + b^q_h, k_j = K_g x_j + b^k_g,
v_j = V_g x_j + b^v_g, and b^o added to the sum over heads; each entry may be absent (zero).

Which kernel path runs: RoPE rotates q and k before the kernel, so every backend applies. Causal
ALiBi is exactly a key bias, since softmax_j(s_ij − m(p_i − p_j)) = softmax_j(s_ij + m p_j) (the
term −m p_i is constant along the row): it goes through the chosen backend's `key_bias` (dense,
tiled/fused, or SDPA, which hands causal + bias to the tiled kernel). Non-causal ALiBi (and ALiBi
with a custom bool mask) is not a key bias: it runs in the torch loop `pair_bias_attend` below, over
blocks of query rows (memory O(block·N) in the forward pass), never silently without its bias.
"""

from __future__ import annotations

import math
from typing import Literal

import torch

from tokendyn.engine.attention import Head, SoftmaxAttention
from tokendyn.engine.kernels import Backend, Mask, causal_mask
from tokendyn.errors import ConfigError

Positions = Literal["none", "alibi", "rope"]
POSITIONS: tuple[str, ...] = ("none", "alibi", "rope")


def alibi_slopes(heads: int) -> list[float]:
    """Press et al.'s per-head ALiBi slopes m_1..m_H (geometric, 2^{−8h/H} for H = 2^n)."""

    def power_of_two(n: int) -> list[float]:
        return [2.0 ** (-8.0 * h / n) for h in range(1, n + 1)]

    n = 2 ** math.floor(math.log2(heads))
    return power_of_two(n) + power_of_two(2 * n)[0::2][: heads - n]


def rope(t: torch.Tensor, positions: torch.Tensor, base: float = 10000.0) -> torch.Tensor:
    """Rotate the pairs (a, a + k/2) of the last axis of t (…, n, k) by positions·θ_a,
    θ_a = base^{−2a/k}: the rotary embedding of Llama-class models (rotate_half form)."""
    half = t.shape[-1] // 2
    theta = base ** (-torch.arange(half, dtype=t.dtype, device=t.device) / half)
    angle = positions.to(t.dtype)[:, None] * theta[None, :]
    cos, sin = angle.cos(), angle.sin()
    a, b = t[..., :half], t[..., half:]
    return torch.cat([a * cos - b * sin, b * cos + a * sin], dim=-1)


def pair_bias_attend(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    bias: torch.Tensor,
    allowed: torch.Tensor | None,
    block: int = 256,
) -> torch.Tensor:
    """out_i = Σ_j softmax_j(⟨q_i, k_j⟩ + bias_ij) v_j over visible pairs, `block` query rows at a
    time (max-shifted by torch.softmax; differentiable). bias (Nq, Nk), allowed bool (Nq, Nk)."""
    outs = []
    for i0 in range(0, q.shape[1], block):
        rows = slice(i0, i0 + block)
        s = q[:, rows] @ k.transpose(-1, -2) + bias[rows]
        if allowed is not None:
            s = s.masked_fill(~allowed[rows], float("-inf"))
        outs.append(torch.softmax(s, dim=-1) @ v)
    return torch.cat(outs, dim=1)


class PositionalAttention(SoftmaxAttention):
    """Multi-head softmax attention Σ_h W_h Σ_j softmax_j(s^h_ij) V_h x_j with the scores of the
    module docstring (none / rope / alibi) and grouped-query heads (kv_heads groups)."""

    variant = "softmax"

    def __init__(
        self,
        heads: list[Head],
        *,
        positions: Positions = "none",
        kv_heads: int | None = None,
        mask: Mask = None,
        backend: str | Backend = "auto",
        rope_base: float = 10000.0,
        slopes: list[float] | None = None,
        biases: dict[str, torch.Tensor] | None = None,
    ) -> None:
        super().__init__(heads, mask=mask, normalise="softmax", backend=backend)
        H = len(heads)
        if positions not in POSITIONS:
            raise ConfigError(
                "positions", f"unknown positions {positions!r}", "use none, alibi or rope"
            )
        if positions == "rope" and any(h.Q.shape[0] % 2 for h in heads):
            raise ConfigError(
                "positions", "RoPE rotates pairs of coordinates", "give heads of even dimension k"
            )
        self.kv_heads = H if kv_heads is None else kv_heads
        if self.kv_heads < 1 or H % self.kv_heads:
            raise ConfigError(
                "kv_heads",
                f"{self.kv_heads} does not divide the {H} query heads",
                "choose kv_heads dividing the number of heads",
            )
        for h, head in enumerate(heads):
            first = heads[self.group(h) * (H // self.kv_heads)]
            if not (torch.equal(head.K, first.K) and torch.equal(head.V, first.V)):
                raise ConfigError(
                    "kv_heads",
                    f"query head {h} has K or V unlike the rest of its group",
                    "give the heads of one group the same K and V",
                )
        self.slopes = alibi_slopes(H) if slopes is None else list(slopes)
        if len(self.slopes) != H:
            raise ConfigError("slopes", f"{len(self.slopes)} for {H} heads", "give one per head")
        self.positions, self.rope_base = positions, rope_base
        self.biases = dict(biases or {})
        unknown = set(self.biases) - {"q", "k", "v", "o"}
        if unknown:
            raise ConfigError("biases", f"unknown keys {sorted(unknown)}", "use q, k, v, o")
        self._kv: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    def group(self, h: int) -> int:
        return h * self.kv_heads // len(self.heads)

    def __call__(self, x: torch.Tensor, rows: slice | None = None) -> torch.Tensor:
        self._kv = {}
        try:
            out = super().__call__(x, rows)
        finally:
            self._kv = {}
        return out if "o" not in self.biases else out + self.biases["o"]

    def to(self, dtype: torch.dtype, device: torch.device | str = "cpu") -> PositionalAttention:
        super().to(dtype, device)
        self.biases = {n: b.to(dtype=dtype, device=device) for n, b in self.biases.items()}
        return self

    def _bias(self, name: str, index: int) -> torch.Tensor | int:
        return self.biases[name][index] if name in self.biases else 0

    def _keys_values(self, index: int, head: Head, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        g = self.group(index)
        if g not in self._kv:
            k = x @ head.K.T + self._bias("k", g)
            if self.positions == "rope":
                k = rope(k, torch.arange(x.shape[1], device=x.device), self.rope_base)
            self._kv[g] = (k, x @ head.V.T + self._bias("v", g))
        return self._kv[g]

    def _queries(self, index: int, head: Head, x: torch.Tensor, rows: slice) -> torch.Tensor:
        q = head.scale(x) * (x[:, rows] @ head.Q.T + self._bias("q", index))
        if self.positions == "rope":
            q = rope(q, torch.arange(x.shape[1], device=x.device)[rows], self.rope_base)
        return q

    def _pair_bias(self, index: int, n: int, rows: slice, like: torch.Tensor) -> torch.Tensor:
        """−m_h |p_i − p_j| for the query rows `rows` and all n keys."""
        p = torch.arange(n, dtype=like.dtype, device=like.device)
        return -self.slopes[index] * (p[rows, None] - p[None, :]).abs()

    def _allowed(self, n: int, rows: slice, device: torch.device) -> torch.Tensor | None:
        if self.mask == "causal":
            return causal_mask(n, n, device)[rows]
        return self.mask[rows] if isinstance(self.mask, torch.Tensor) else None

    def head_output(self, index: int, head: Head, x: torch.Tensor, rows: slice) -> torch.Tensor:
        q = self._queries(index, head, x, rows)
        k, v = self._keys_values(index, head, x)
        n = x.shape[1]
        if self.positions != "alibi":
            return self.backend.attend(q, k, v, mask=self.rows_mask(rows)).out
        if self.mask == "causal" and rows == slice(None):
            bias = self.slopes[index] * torch.arange(n, dtype=x.dtype, device=x.device)
            return self.backend.attend(q, k, v, key_bias=bias, mask="causal").out
        bias = self._pair_bias(index, n, rows, x)
        return pair_bias_attend(q, k, v, bias, self._allowed(n, rows, x.device))

    def row_weights(self, x: torch.Tensor, row: int = -1) -> torch.Tensor:
        """softmax_j(s^h_{row, j}) for every head: shape (B, H, N); one query row, O(N) memory."""
        xb = x if x.dim() == 3 else x.unsqueeze(0)
        n = xb.shape[1]
        rows = slice(row % n, row % n + 1)
        self._kv = {}
        out = []
        try:
            for index, head in enumerate(self.heads):
                k, _ = self._keys_values(index, head, xb)
                s = self._queries(index, head, xb, rows) @ k.transpose(-1, -2)
                if self.positions == "alibi":
                    s = s + self._pair_bias(index, n, rows, xb)
                allowed = self._allowed(n, rows, xb.device)
                if allowed is not None:
                    s = s.masked_fill(~allowed, float("-inf"))
                out.append(torch.softmax(s, dim=-1)[:, 0])
        finally:
            self._kv = {}
        return torch.stack(out, dim=1)
