"""
# An animation

`animate_run` writes one frame per saved time of a run as a GIF (or MP4 through ffmpeg):
here 200 tokens on S² with β = 6 collapsing into clusters. The same Dataset gives the interactive
view of `tokendyn view RUN.zarr` (a self-contained HTML file with a time slider).
"""

import tempfile
from pathlib import Path

import torch

import tokendyn as td
from tokendyn.viz.animate import animate_run

gen = torch.Generator().manual_seed(3)
sphere = td.Sphere(3)
x0 = td.uniform_sphere(1, 200, 3, gen)[0]
I = torch.eye(3, dtype=torch.float64)
field = td.SoftmaxAttention([td.Head(Q=I, K=I, V=I, beta=6.0)])
ds = td.simulate(field, sphere, x0, t_end=12.0, dt=0.1, save_every=6)

# %%
# The GIF (21 frames, 6 per second).

animation = animate_run(ds, Path(tempfile.mkdtemp()) / "clusters.gif", fps=6)
