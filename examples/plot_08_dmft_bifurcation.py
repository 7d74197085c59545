"""
# DMFT: a bifurcation diagram with Lyapunov colouring

The 1-bit self-attention network of Poc-López & Aguilera in its large-N limit is a deterministic
map of the overlaps m^o. Batched over β, the last recorded values of m^o_1 draw the bifurcation
diagram; the largest Lyapunov exponent λ1 of the map colours each β as periodic (λ1 < 0),
quasi-periodic (λ1 ≈ 0) or chaotic (λ1 > 0). The paper's diagrams use 4001 β values and
20 000 recorded steps after a 10⁵-step transient (`tokendyn dmft bifurcation`); this one is small.
"""

import numpy as np

import tokendyn as td
from tokendyn.viz.dmft import plot_bifurcation

model = td.dmft.paper_model()
betas = np.linspace(1.0, 3.0, 81)
ds = td.dmft.sweep(
    model, betas, start="full", n_record=400, n_transient=2000, keep=400, with_lyapunov=True
)

# %%
# m^o_1 against β (grey: every kept value; colours: the regime from λ1), and λ1, λ2 below.

fig = plot_bifurcation(ds, feature=0, colouring="lyapunov")
