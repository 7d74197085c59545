"""Figures of whole-block fields: trajectories under each normalisation scheme side by side, and the
retrieval profile (attention mass of the last token on each position) per head.

Functions return matplotlib Figures (no backend is chosen) and save them when `path` is given.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from matplotlib.figure import Figure

from tokendyn.app.build import build
from tokendyn.app.config import SimulationConfig, make_config
from tokendyn.app.simulate import simulate
from tokendyn.engine.blocks import SCHEMES, Block
from tokendyn.engine.retrieval import retrieval_profile


def _save(fig: Figure, path: str | Path | None) -> Figure:
    if path is not None:
        fig.savefig(path, dpi=120)
    return fig


def schemes_figure(
    cfg: SimulationConfig,
    schemes: Sequence[str] = SCHEMES,
    path: str | Path | None = None,
) -> Figure:
    """Run `cfg` once per scheme (same weights, seed and cloud law; `sphere` on S^{d−1}, the others
    in R^d) and draw every token's direction x̂ = x/|x| in its first two coordinates over time."""
    fig = Figure(figsize=(3.2 * len(schemes), 3.4), layout="constrained")
    axes = fig.subplots(1, len(schemes), squeeze=False)[0]
    for ax, scheme in zip(axes, schemes, strict=True):
        fields = {**cfg.model_dump(exclude={"space"}), "norm": scheme, "stats": []}
        one = make_config(**fields, space="sphere" if scheme == "sphere" else "euclidean")
        field, space, x0 = build(one)
        ds = simulate(field, space, x0, t_end=one.t_end, dt=one.dt, method=one.method)
        assert ds is not None
        x = np.asarray(ds["x"].values)
        x = x.reshape(x.shape[0], -1, x.shape[-1])
        unit = x / np.linalg.norm(x, axis=-1, keepdims=True)
        for i in range(unit.shape[1]):
            ax.plot(unit[:, i, 0], unit[:, i, 1], lw=0.6, alpha=0.6)
        ax.scatter(unit[-1, :, 0], unit[-1, :, 1], s=8, c="k", zorder=3)
        ax.set(title=scheme, xlabel="x̂₁", ylabel="x̂₂", aspect="equal")
    fig.suptitle(f"one cloud, {cfg.n} tokens, t ∈ [0, {cfg.t_end:g}] under each scheme")
    return _save(fig, path)


def retrieval_figure(
    field: Block, x: torch.Tensor, t: float = 0.0, path: str | Path | None = None
) -> Figure:
    """The retrieval profile r^h_j of the first cloud of x, one line per head, vs position j."""
    r = retrieval_profile(field, x, t)[0].detach().cpu().numpy()
    fig = Figure(figsize=(6, 3.4), layout="constrained")
    ax = fig.subplots()
    for h, row in enumerate(r):
        ax.plot(np.arange(row.size), row, marker=".", lw=1, label=f"head {h}")
    ax.set(xlabel="position j", ylabel="attention mass of the last token", yscale="log")
    ax.legend(fontsize="small")
    return _save(fig, path)
