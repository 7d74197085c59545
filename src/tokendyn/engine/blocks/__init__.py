"""Whole transformer blocks as particle systems: depth-varying weights (weights), random weight
ensembles (ensembles), LayerNorm/RMSNorm (norms), the feed-forward term (mlp), ALiBi/RoPE/grouped
heads (positions), and the block velocity field for each normalisation scheme (block)."""

from tokendyn.engine.blocks.block import SCHEMES, Block
from tokendyn.engine.blocks.ensembles import ENSEMBLES, draw_qkv, goe, haar_orthogonal
from tokendyn.engine.blocks.mlp import ACTIVATIONS, MLP, random_mlp
from tokendyn.engine.blocks.norms import NORM_TYPES, Norm
from tokendyn.engine.blocks.positions import (
    POSITIONS,
    PositionalAttention,
    alibi_slopes,
    pair_bias_attend,
    rope,
)
from tokendyn.engine.blocks.weights import (
    Layer,
    LayerSchedule,
    ResampledSchedule,
    heads_from_projections,
)

__all__ = [
    "ACTIVATIONS",
    "ENSEMBLES",
    "MLP",
    "NORM_TYPES",
    "POSITIONS",
    "SCHEMES",
    "Block",
    "Layer",
    "LayerSchedule",
    "Norm",
    "PositionalAttention",
    "ResampledSchedule",
    "alibi_slopes",
    "draw_qkv",
    "goe",
    "haar_orthogonal",
    "heads_from_projections",
    "pair_bias_attend",
    "random_mlp",
    "rope",
]
