"""
# The Gaussian closure and its blow-up

For softmax attention a Gaussian cloud N(α, Σ) in R^d stays Gaussian, and its mean and covariance
follow a closed ODE (Castin, Ablin, Carrillo, Peyré): α' = V(α + βΣKᵀQα), Σ' = VΣ(I + βQᵀKΣ)ᵀ + (…)ᵀ
for one head. With V = −I the cloud contracts to a point; with V = I it expands, and the covariance
reaches infinity in finite time T* — the closure's blow-up, which `td.solve_closure` detects and
extrapolates.
"""

import numpy as np
from matplotlib.figure import Figure

import tokendyn as td

d = 2
Q = K = np.eye(d)
mean0, cov0 = np.array([0.3, -0.2]), np.array([[0.5, 0.1], [0.1, 0.3]])
solutions = {}
for name, V in {"V = −I (contracting)": -np.eye(d), "V = I (blow-up)": np.eye(d)}.items():
    closure = td.make_closure("softmax", Q, K, V, beta=1.0)
    solutions[name] = td.solve_closure(closure, mean0, cov0, t_end=5.0)
    sol = solutions[name]
    print(f"{name}: status {sol.status}, T* = {sol.blowup_time}")

# %%
# tr Σ(t) on a log scale; the dashed line is the extrapolated blow-up time T*.

fig = Figure(figsize=(7, 4.5))
ax = fig.add_subplot()
for name, sol in solutions.items():
    ax.semilogy(sol.t, np.trace(sol.cov, axis1=1, axis2=2), label=f"{name}: {sol.status}")
    if sol.blowup_time is not None:
        ax.axvline(sol.blowup_time, ls="--", c="k", lw=1, label=f"T* = {sol.blowup_time:.3f}")
ax.set(xlabel="time t", ylabel="tr Σ(t)", title="Gaussian closure of softmax attention (β = 1)")
ax.legend()
