"""The retrieval profile: the attention mass the last token puts on each position.

    r^h_j = softmax_j(s^h_{N−1, j}),   j = 0..N−1,   Σ_j r^h_j = 1

for every head h of a softmax field (scores s as in `tokendyn.engine.blocks.positions`: with RoPE,
ALiBi and the mask). For a block, the scores are those of the layer acting at time t, read from the
cloud its attention sees (N_attn x for pre-/peri-LN). One query row: O(N) memory.
"""

from __future__ import annotations

import torch

from tokendyn.engine.attention import SoftmaxAttention
from tokendyn.engine.blocks import Block, PositionalAttention
from tokendyn.errors import ConfigError


def retrieval_profile(
    field: Block | SoftmaxAttention, x: torch.Tensor, t: float = 0.0
) -> torch.Tensor:
    """r^h_j for the cloud(s) x ((N, d) or (B, N, d)): shape (B, H, N), each row summing to 1."""
    attention, y = field.attention_input(x, t) if isinstance(field, Block) else (field, x)
    if not isinstance(attention, SoftmaxAttention) or attention.normalise != "softmax":
        raise ConfigError(
            "attention",
            "the retrieval profile needs softmax-normalised attention",
            "use softmax attention with normalise = 'softmax'",
        )
    if not isinstance(attention, PositionalAttention):
        attention = PositionalAttention(attention.heads, mask=attention.mask)
    return attention.row_weights(y, -1)
