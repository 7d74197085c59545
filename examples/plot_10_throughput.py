"""
# Throughput against N

What `tokendyn bench` measures, at tiny sizes: one softmax attention evaluation (float32, d = 3)
with each kernel backend — `dense` (the reference N×N matrix), `tiled` (the fused C kernel on
CPU: online max-shifted softmax in key blocks, O(N·block) memory), `sdpa` (torch's fused
attention) — and a naive `softmax(QKᵀ)V`, in pairs (i, j) per second. The performance page has
the numbers at N = 16 384 and 200 000 on the reference machine.
"""

from matplotlib.figure import Figure

from tokendyn.bench.throughput import run_bench

ns = (256, 512, 1024, 2048)
rows = list(run_bench(ns=ns, ds=(3,), backends=("dense", "tiled", "sdpa", "naive"), repeats=1))
for r in rows:
    print(f"{r['backend']:6s} N = {r['n']:5d}: {r['pairs_per_s'] / 1e6:8.1f} M pairs/s")

# %%
# Pairs per second against N (log–log); the fused kernel wins once per-call overheads are paid.

fig = Figure(figsize=(7, 4.5))
ax = fig.add_subplot()
for backend in ("dense", "tiled", "sdpa", "naive"):
    mine = [r for r in rows if r["backend"] == backend]
    ax.loglog([r["n"] for r in mine], [r["pairs_per_s"] for r in mine], "o-", label=backend)
ax.set(xlabel="tokens N", ylabel="pairs per second", title="one attention evaluation, d = 3")
ax.legend()
