"""Attention velocity fields Γ[μ](x): one module per variant, one interface (AttentionField)."""

from tokendyn.engine.attention.base import AttentionField, Head, as_matrix, check_head, split_heads
from tokendyn.engine.attention.l2 import L2Attention
from tokendyn.engine.attention.sigmoid import SigmoidAttention
from tokendyn.engine.attention.sinkhorn import SinkhornAttention
from tokendyn.engine.attention.softmax import SoftmaxAttention

VARIANTS = {
    "softmax": SoftmaxAttention,
    "l2": L2Attention,
    "sigmoid": SigmoidAttention,
    "sinkhorn": SinkhornAttention,
}

__all__ = [
    "VARIANTS",
    "AttentionField",
    "Head",
    "L2Attention",
    "SigmoidAttention",
    "SinkhornAttention",
    "SoftmaxAttention",
    "as_matrix",
    "check_head",
    "split_heads",
]
