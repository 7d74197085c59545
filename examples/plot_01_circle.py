"""
# Clustering on the circle

64 tokens uniform on S¹ under softmax self-attention with Q = K = V = I and β = 4: each token moves
along ẋ_i = P_{x_i} Σ_j softmax_j(β⟨x_i, x_j⟩) x_j, and the cloud collapses into a few clusters,
which then merge slowly (metastability).
"""

import torch

import tokendyn as td
from tokendyn.viz.plot import plot_circle_angles

gen = torch.Generator().manual_seed(0)
sphere = td.Sphere(2)
x0 = td.uniform_sphere(1, 64, 2, gen)[0]
I = torch.eye(2, dtype=torch.float64)
field = td.SoftmaxAttention([td.Head(Q=I, K=I, V=I, beta=4.0)])
ds = td.simulate(field, sphere, x0, t_end=30.0, dt=0.1, save_every=2)

# %%
# The angle of every token against time (colour: its initial angle).

fig = plot_circle_angles(ds)
print("clusters at the end:", td.cluster_count(torch.as_tensor(ds["x"].values[-1]), threshold=1e-2))
