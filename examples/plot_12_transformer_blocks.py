"""
# Whole transformer blocks: normalisation schemes and the retrieval profile

The same 24 tokens, weights and seed integrated as a whole transformer block (attention + a gelu
MLP, 2 heads, d = 4) under each normalisation scheme: attention on the sphere (`sphere`), pre-LN,
post-LN, peri-LN and nGPT-style normalised updates (their ODEs are on the blocks page). One Euler
step with dt = 1 of each is one block of the corresponding real transformer. Then a causal pre-LN
block with ALiBi positions: the attention mass the last token puts on each earlier position.
"""

import tokendyn as td
from tokendyn.app.build import build
from tokendyn.viz.blocks import retrieval_figure, schemes_figure

cfg = td.make_config(
    n=24, d=4, heads=2, beta=2.0, qkv="random", mlp="gelu", t_end=2.0, dt=0.25, seed=3, stats=[]
)
schemes = schemes_figure(cfg, schemes=("sphere", "pre-ln", "post-ln", "peri-ln", "ngpt"))

# %%
# ALiBi gives each head its own slope m_h: the score of key j seen from query i is shifted by
# −m_h (i − j), so heads with a steep slope look at the recent past only.

causal = td.make_config(
    n=48,
    d=4,
    heads=2,
    beta=1.0,
    qkv="random",
    norm="pre-ln",
    positions="alibi",
    mask="causal",
    t_end=1.0,
    dt=1.0,
    seed=3,
    stats=[],
)
field, _, x0 = build(causal)
profile = retrieval_figure(field, x0)
