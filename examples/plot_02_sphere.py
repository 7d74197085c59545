"""
# Clustering on the sphere S²

500 tokens uniform on S² (β = 4): the cloud at t = 0 and t = 20, and the statistics recorded
along the way (interaction energy E_β, which never decreases, the cluster count and the effective
dimension).
"""

import torch

import tokendyn as td
from tokendyn.viz.plot import plot_sphere, plot_statistics

gen = torch.Generator().manual_seed(0)
sphere = td.Sphere(3)
x0 = td.uniform_sphere(1, 500, 3, gen)[0]
I = torch.eye(3, dtype=torch.float64)
field = td.SoftmaxAttention([td.Head(Q=I, K=I, V=I, beta=4.0)])
stats = {
    "energy": lambda x: td.interaction_energy(x, 4.0),
    "clusters": lambda x: td.cluster_count(x, threshold=1e-2),
}
ds = td.simulate(field, sphere, x0, t_end=20.0, dt=0.1, save_every=10, stats=stats)

# %%
# The cloud at the start and at the end.

start = plot_sphere(ds, time_index=0)
end = plot_sphere(ds, time_index=-1)

# %%
# Statistics over time.

statistics = plot_statistics(ds)
