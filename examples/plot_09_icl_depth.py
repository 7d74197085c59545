"""
# In-context regression: error against depth

A deep linear-attention transformer solving in-context regression with a hierarchical (tree)
prior on the task vector: the mean-field theory predicts the test error of each measurement
policy layer by layer. Greedy and coarse-to-fine policies adapt to the tree and beat the linear
(ridge-like) policy at every depth; the Bayes-optimal error is the floor. These are theory curves
(Monte-Carlo over sequences), no training.
"""

import numpy as np
from matplotlib.figure import Figure

import tokendyn as td
from tokendyn.theory.icl.baselines import all_baselines
from tokendyn.theory.icl.tasks import sample_tasks
from tokendyn.theory.icl.theory import run_policy

setting = td.icl.get_setting("cpu")
prior = td.icl.make_prior(setting, "tree")
depths = np.arange(1, 7)
curves = {}
for policy in ("linear", "greedy", "coarse-to-fine"):
    res = run_policy(prior, setting.sigma, setting.N, policy, int(depths[-1]), n_seq=400, seed=0)
    curves[policy] = (res.mse[: len(depths)], res.mse_stderr[: len(depths)])
test = sample_tasks(prior, setting.N, setting.sigma, 400, np.random.default_rng(0))
val = sample_tasks(prior, setting.N, setting.sigma, 400, np.random.default_rng(1))
bayes = all_baselines(prior, test, val)["bayes"][0]

# %%
# Test MSE per depth (± one standard error) and the Bayes floor.

fig = Figure(figsize=(7, 4.5))
ax = fig.add_subplot()
for policy, (mse, err) in curves.items():
    ax.errorbar(depths, mse, yerr=err, marker="o", capsize=3, label=policy)
ax.axhline(bayes, c="k", ls="--", lw=1, label="Bayes (full context)")
ax.set(
    xlabel="depth L",
    ylabel="test MSE",
    yscale="log",
    title=f"setting '{setting.name}' (d = {setting.d}, N = {setting.N}), tree prior",
)
ax.legend()
