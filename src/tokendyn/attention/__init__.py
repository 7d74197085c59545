"""Attention velocity fields Γ[μ](x): one module per variant, one interface (AttentionField)."""

from .base import AttentionField, Head, as_matrix, check_head, split_heads
from .l2 import L2Attention
from .sigmoid import SigmoidAttention
from .sinkhorn import SinkhornAttention
from .softmax import SoftmaxAttention

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
