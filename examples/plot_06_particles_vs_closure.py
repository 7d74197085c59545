"""
# Particles against the closure

2000 tokens drawn from N(α₀, Σ₀) in R², pushed by softmax attention (β = 1, Q = K = I, V = −I),
against the Gaussian closure started from the same mean and covariance: the particles' empirical
mean and covariance follow the closure's ODE up to the Monte-Carlo error O(N^−1/2).
"""

import numpy as np
import torch
from matplotlib.figure import Figure

import tokendyn as td

d, n, beta = 2, 2000, 1.0
mean0 = torch.tensor([0.3, -0.2], dtype=torch.float64)
cov0 = torch.tensor([[0.5, 0.1], [0.1, 0.3]], dtype=torch.float64)
space = td.Euclidean()
x0 = td.gaussian_cloud(1, n, d, torch.Generator().manual_seed(0), mean0, cov0)[0]
I = torch.eye(d, dtype=torch.float64)
field = td.SoftmaxAttention([td.Head(Q=I, K=I, V=-I, beta=beta)])
ds = td.simulate(field, space, x0, t_end=2.0, dt=0.1)
times = ds["time"].values
means, covs = td.mean_and_covariance(torch.as_tensor(ds["x"].values))

# the closure from the particles' own initial moments
closure = td.make_closure("softmax", I.numpy(), I.numpy(), -I.numpy(), beta=beta)
sol = td.solve_closure(closure, means[0].numpy(), covs[0].numpy(), t_end=2.0, t_eval=times)

# %%
# Mean and covariance entries: particles (dots) and closure (lines).

fig = Figure(figsize=(10, 4))
ax_m, ax_c = fig.subplots(1, 2)
for i in range(d):
    ax_m.plot(sol.t, sol.mean[:, i], label=f"closure α_{i}")
    ax_m.plot(times, means[:, i], ".", c=f"C{i}", label=f"particles α_{i}")
for k, (i, j) in enumerate([(0, 0), (0, 1), (1, 1)]):
    ax_c.plot(sol.t, sol.cov[:, i, j], c=f"C{k}", label=f"closure Σ_{i}{j}")
    ax_c.plot(times, covs[:, i, j], ".", c=f"C{k}")
ax_m.set(xlabel="t", title="mean")
ax_c.set(xlabel="t", title="covariance")
ax_m.legend(fontsize=8)
ax_c.legend(fontsize=8)
gap = np.abs(covs.numpy() - sol.cov).max()
fig.suptitle(f"N = {n}: max |Σ_particles − Σ_closure| = {gap:.2e}")
fig.tight_layout()
