"""Figures of the ICL section (matplotlib Figure objects, Agg backend, saved as PNG)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

COLOURS = {"lin": "C0", "lin+ffout": "C1", "ff": "C2", "lsa-full": "C3", "lsa-full+ff": "C4"}
THEORY = {"linear": "C0", "fixed-nonlinear": "C1", "greedy": "C2", "coarse-to-fine": "C5"}


def _save(fig: Figure, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    return path


def mse_vs_depth(panels: dict[str, dict], path: Path) -> Path:
    """panels[prior] = {"models": {name: (depths, mse)}, "theory": {policy: (depths, mse)},
    "jgauss": (depths, values), "baselines": {name: value}}."""
    fig = Figure(figsize=(11, 4.2))
    for ax, (prior, data) in zip(
        np.atleast_1d(fig.subplots(1, len(panels))), panels.items(), strict=True
    ):
        for name, (L, mse) in data["models"].items():
            ax.plot(L, mse, "o-", color=COLOURS.get(name, "k"), label=f"{name} (trained)")
        for policy, (L, mse) in data["theory"].items():
            ax.plot(L, mse, "--", color=THEORY.get(policy, "grey"), label=f"theory: {policy}")
        L, J = data["jgauss"]
        ax.plot(L, J, ":", color="k", label="J*_Gauss")
        for i, (name, value) in enumerate(data["baselines"].items()):
            ax.axhline(
                value,
                color=f"0.{2 + 2 * i}",
                lw=0.9,
                ls=(0, (1 + 2 * i, 2)),
                label=f"{name} (full context)",
            )
        ax.set_yscale("log")
        ax.set_xticks(L)
        ax.set_xlabel("depth L")
        ax.set_ylabel("test MSE (noisy target)")
        ax.set_title(f"{prior} prior")
        ax.legend(fontsize=6)
    fig.tight_layout()
    return _save(fig, path)


def depth_needed(Ks: list[int], curves: dict[str, list[float]], path: Path) -> Path:
    fig = Figure(figsize=(5, 4))
    ax = fig.subplots()
    for name, values in curves.items():
        ax.plot(Ks, values, "o-", label=name)
    ax.plot(Ks, Ks, "k:", label="L = K")
    ax.set_xlabel("tree depth K (K = 1: flat mixture)")
    ax.set_ylabel("depth needed L*(ε)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    return _save(fig, path)


def probe_heatmaps(maps: dict[str, np.ndarray], path: Path) -> Path:
    """maps[title] = accuracy (layers, levels)."""
    fig = Figure(figsize=(4 * len(maps) + 1, 3.6), layout="constrained")
    axes = np.atleast_1d(fig.subplots(1, len(maps)))
    for ax, (title, acc) in zip(axes, maps.items(), strict=True):
        im = ax.imshow(
            acc.T,
            origin="lower",
            vmin=0,
            vmax=1,
            cmap="viridis",
            aspect="auto",
            extent=(0.5, acc.shape[0] + 0.5, 0.5, acc.shape[1] + 0.5),
        )
        for (i, j), v in np.ndenumerate(acc):
            ax.text(i + 1, j + 1, f"{v:.2f}", ha="center", va="center", fontsize=7, color="w")
        ax.set_xticks(range(1, acc.shape[0] + 1))
        ax.set_yticks(range(1, acc.shape[1] + 1))
        ax.set_xlabel("layer ℓ")
        ax.set_ylabel("tree level k")
        ax.set_title(title, fontsize=9)
    fig.colorbar(im, ax=list(axes), label="accuracy")
    return _save(fig, path)


def mse_vs_context(
    Ns: list[int], curves: dict[str, list[float]], bounds: dict[str, float], path: Path
) -> Path:
    fig = Figure(figsize=(5.5, 4))
    ax = fig.subplots()
    for name, values in curves.items():
        ax.plot(Ns[: len(values)], values, "o-" if "trained" in name else "--", label=name)
    for name, value in bounds.items():
        ax.axhline(value, ls=":", color="k", lw=0.8)
        ax.text(Ns[0], value, f" {name}", fontsize=7, va="bottom")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("context length N")
    ax.set_ylabel("test MSE (noisy target)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    return _save(fig, path)
