"""
# A phase diagram from a sweep

A `td.Sweep` over β and the seed (64 tokens on S², t ≤ 20): every point is one simulation, all
points with the same non-batchable fields run as one batch, and every finished point is stored at
once in one resumable zarr store (`tokendyn sweep` does the same from a TOML file, on any number of
Dask workers). The phase diagram is the cluster count over (β, time), averaged over seeds.
"""

import tempfile
from pathlib import Path

import tokendyn as td
from tokendyn.viz.plot import plot_phase

sweep = td.Sweep(
    base={"n": 64, "d": 3, "t_end": 20.0, "dt": 0.2, "save_every": 5},
    grid={"beta": [0.5, 1.0, 2.0, 4.0, 8.0, 16.0], "seed": [0, 1, 2]},
)

# %%
# Dask starts its workers as new processes, which import this script again: the guard keeps them
# from running the sweep themselves.

if __name__ == "__main__":
    store = td.run_sweep(sweep, Path(tempfile.mkdtemp()) / "phase.zarr", workers=1)
    print(dict(store["clusters"].sizes))

    # Clusters over (β, time), averaged over seeds: the larger β, the more clusters, and the
    # longer they live.
    fig = plot_phase(store, x="beta", y="time", stat="clusters")
