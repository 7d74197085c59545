"""
# Every attention variant, side by side

The same 64 tokens on S², the same Q = K = V = I and β = 4, integrated to t = 10 with each
velocity field of the engine: softmax, the unnormalised USA variant (1/N instead of the partition
function), causal softmax, two heads (the authors' row-block split), L2 (exp(−β‖Qx − Ky‖²)),
sigmoid (mean-field 1/N form) and Sinkhorn (doubly stochastic, ε = 1/β).

Two variants need their own settings: USA's velocity is up to e^β times softmax's, so it takes
steps of 0.02 instead of 0.1; Sinkhorn's iterations grow as clusters of unequal mass form (a doubly
stochastic plan must move mass between them), so it stops at t = 4 with a looser marginal
tolerance (10⁻⁶).
"""

import numpy as np
import torch
from matplotlib.figure import Figure

import tokendyn as td
from tokendyn.viz.plot import draw_cloud_3d

beta = 4.0
gen = torch.Generator().manual_seed(0)
sphere = td.Sphere(3)
x0 = td.uniform_sphere(1, 64, 3, gen)[0]
I = torch.eye(3, dtype=torch.float64)
head = td.Head(Q=I, K=I, V=I, beta=beta)
I4 = torch.eye(4, dtype=torch.float64)
variants = {  # name: (field, t_end, dt)
    "softmax": (td.SoftmaxAttention([head]), 10.0, 0.1),
    "USA (1/N)": (td.SoftmaxAttention([head], normalise="n"), 10.0, 0.02),
    "causal softmax": (td.SoftmaxAttention([head], mask="causal"), 10.0, 0.1),
    "L2": (td.L2Attention([head]), 10.0, 0.1),
    "sigmoid": (td.SigmoidAttention([head]), 10.0, 0.1),
    "Sinkhorn, t = 4": (td.SinkhornAttention([head], tol=1e-6), 4.0, 0.2),
}
finals = {}
for name, (field, t_end, dt) in variants.items():
    ds = td.simulate(field, sphere, x0, t_end=t_end, dt=dt, method="heun", save_every=1000)
    finals[name] = ds["x"].values[-1]

# Two heads need d divisible by 2: the same experiment on S³, drawn in its top-3 principal axes.
x4 = td.uniform_sphere(1, 64, 4, gen)[0]
two_heads = td.SoftmaxAttention(td.split_heads(I4, I4, I4, 2, beta))
finals["2 heads (S³, PCA)"] = td.simulate(
    two_heads, td.Sphere(4), x4, t_end=10.0, dt=0.1, method="heun", save_every=1000
)["x"].values[-1]

# %%
# The final clouds, with their cluster counts.

fig = Figure(figsize=(14, 7.5))
for i, (name, x) in enumerate(finals.items()):
    ax = fig.add_subplot(2, 4, i + 1, projection="3d")
    p = x if x.shape[1] == 3 else x @ np.linalg.eigh(np.cov(x.T))[1][:, ::-1][:, :3]
    on_sphere = x.shape[1] == 3
    draw_cloud_3d(ax, p, sphere=on_sphere, labels=("", "", ""))
    count = int(td.cluster_count(torch.as_tensor(x), threshold=1e-2))
    ax.set_title(f"{name}: {count} clusters", fontsize=10)
fig.tight_layout()
