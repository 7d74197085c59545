"""
# The multiscale energy staircase

In the moderate interaction regime (Bruno, Pasqualotto, Agazzi) clusters on the circle merge one
pair at a time, after waiting times that grow like e^{β(1−⟨x,y⟩)}: the normalised energy
Ê = Σ_ij α_iα_j e^{β(⟨x_i,x_j⟩−1)} climbs a staircase on a log-time axis. The reduced model of
weighted Diracs (`td.multiscale.sequential_merges`) follows it through every merge.
"""

import torch
from matplotlib.figure import Figure

import tokendyn as td

beta = 8.0
angles = [0.0, 0.9, 1.7, 3.0, 4.1, 5.2]
x0 = td.multiscale.angles_to_points(angles)
masses = torch.tensor([0.2, 0.15, 0.15, 0.2, 0.1, 0.2], dtype=torch.float64)
merges = td.multiscale.sequential_merges(x0, masses, beta, t_max=1e6)  # until t = 10⁶
for m in merges:
    print(f"t = {m.time:10.4g}: merge {m.pair}, Ê {m.energy_before:.4f} → {m.energy_after:.4f}")

# %%
# Ê after each merge, against log time: one step per merge.

e0 = td.multiscale.normalised_energy(x0, masses, beta)
times = [m.time for m in merges]
levels = [e0] + [m.energy_after for m in merges]
fig = Figure(figsize=(7, 4.5))
ax = fig.add_subplot()
ax.step(
    [times[0] / 10, *times, times[-1] * 10],
    [*levels, levels[-1]],
    where="post",
    label="just after each merge",
)
ax.plot(times, [m.energy_before for m in merges], "o", ms=4, label="just before a merge")
ax.set_xscale("log")
ax.set(
    xlabel="time t (log)", ylabel="normalised energy Ê", title=f"β = {beta:g}, 6 clusters at t = 0"
)
ax.legend()
