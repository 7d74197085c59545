"""Figures of the DMFT model: bifurcation diagram, trajectories (time series, spectra,
autocorrelation, phase plane), finite-N convergence. Each returns a matplotlib Figure and saves it
when `path` is given."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import xarray as xr
from matplotlib.figure import Figure

from tokendyn.theory.dmft import analysis
from tokendyn.theory.dmft.lyapunov import REGIMES

COLOURS = {"periodic": "tab:blue", "quasi-periodic": "tab:green", "chaotic": "tab:red"}


def _save(fig: Figure, path: str | Path | None) -> Figure:
    if path is not None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=110)
    return fig


def regime_labels(ds: xr.Dataset, feature: int = 0, colouring: str = "lyapunov") -> np.ndarray:
    """Per-β labels: from λ1 ('lyapunov', when the diagram has exponents) or the paper's
    distinct-value count ('paper')."""
    if colouring == "lyapunov" and "regime" in ds:
        return np.array([REGIMES[i] for i in ds["regime"].values])
    return analysis.paper_colour(ds["distinct"].values[feature])


def plot_bifurcation(
    ds: xr.Dataset,
    feature: int = 0,
    colouring: str = "lyapunov",
    path: str | Path | None = None,
) -> Figure:
    """m^o_feature against β: all kept values in light grey; periodic β drawn in full, others by
    the Poincaré section |m^o_filter| ≤ 1e-3 that plots this feature; λ1, λ2 below if present."""
    betas = ds["beta"].values
    labels = regime_labels(ds, feature, colouring)
    rows = 2 if "lyapunov" in ds else 1
    fig = Figure(figsize=(9, 4 + 2.5 * (rows - 1)))
    axes = fig.subplots(rows, 1, sharex=True, squeeze=False)[:, 0]
    ax = axes[0]
    mo = ds["mo"].values[:, feature]
    ax.scatter(np.broadcast_to(betas, mo.shape).ravel(), mo.ravel(), s=0.1, c="0.75", lw=0)
    for name, colour in COLOURS.items():
        sel = labels == name
        if name == "periodic":
            vals = mo[:, sel]
            ax.scatter(
                np.broadcast_to(betas[sel], vals.shape).ravel(),
                vals.ravel(),
                s=0.8,
                c=colour,
                lw=0,
                label=name,
            )
            continue
        dim = "section_21" if feature == 0 else f"section_{(feature + 1) % 3 + 1}{feature + 1}"
        if f"{dim}_beta" not in ds:
            dim = "section_12"
        sb, sv = ds[f"{dim}_beta"].values, ds[f"{dim}_value"].values
        keep = np.isin(sb, betas[sel])
        ax.scatter(sb[keep], sv[keep], s=2.0, c=colour, lw=0, label=f"{name} (section)")
    ax.set_ylabel(f"m^o_{feature + 1}")
    ax.legend(loc="upper left", markerscale=4, fontsize=8)
    ax.set_title(f"bifurcation diagram, start {ds.attrs.get('start')}, {ds.attrs.get('protocol')}")
    if rows == 2:
        lyap = ds["lyapunov"].values
        axes[1].plot(betas, lyap[:, 0], lw=0.7, label="λ1")
        axes[1].plot(betas, lyap[:, 1], lw=0.7, label="λ2")
        axes[1].axhline(0, c="k", lw=0.5)
        axes[1].set_ylabel("Lyapunov exponent")
        axes[1].legend(fontsize=8)
    axes[-1].set_xlabel("β")
    fig.tight_layout()
    return _save(fig, path)


def plot_trajectories(
    records: dict[float, np.ndarray], window: int = 250, path: str | Path | None = None
) -> Figure:
    """One row per β (records: β → m^o (T, M)): m^o_1 time series over `window` steps, log power
    spectrum, autocorrelation, phase plane (m^o_1, m^o_2)."""
    n = len(records)
    fig = Figure(figsize=(13, 2.2 * n))
    axes = fig.subplots(n, 4, squeeze=False)
    for row, (beta, mo) in enumerate(records.items()):
        x = mo[:, 0]
        axes[row, 0].plot(np.arange(window), x[:window], lw=0.7)
        axes[row, 0].set_ylabel(f"β = {beta:g}\nm^o_1")
        f, p = analysis.power_spectrum(x)
        axes[row, 1].semilogy(f[1:], p[1:] + 1e-30, lw=0.5)
        axes[row, 2].plot(analysis.autocorrelation(x, 200), lw=0.7)
        axes[row, 3].scatter(mo[:, 0], mo[:, 1], s=4 if analysis.detect_period(mo) else 0.2, lw=0)
    for col, title in enumerate(
        ("m^o_1(t)", "power spectrum", "autocorrelation", "(m^o_1, m^o_2)")
    ):
        axes[0, col].set_title(title)
    axes[-1, 0].set_xlabel("step")
    axes[-1, 1].set_xlabel("frequency (1/step)")
    axes[-1, 2].set_xlabel("lag")
    fig.tight_layout()
    return _save(fig, path)


def plot_finite(
    stats: list[dict], deviation: dict | None = None, path: str | Path | None = None
) -> Figure:
    """Finite-N statistics against N_se (one line per β, mean-field values dashed) and, if given,
    the RMS deviation from the map with an N^{-1/2} guide."""
    cols = 4 if deviation else 3
    fig = Figure(figsize=(4 * cols, 3.4))
    axes = fig.subplots(1, cols)
    for st in stats:
        n = [r["n_se"] for r in st["finite"]]
        for ax, key in zip(axes[:3], ("std", "amplitude", "stayed_fraction"), strict=True):
            line = ax.semilogx(n, [r[key] for r in st["finite"]], "o-", label=f"β={st['beta']:g}")
            if key != "stayed_fraction":
                ax.axhline(st[f"mf_{key}"], ls="--", c=line[0].get_color(), lw=0.8)
            ax.set_title(key.replace("_", " ") + " of m^o_1" * (key != "stayed_fraction"))
            ax.set_xlabel("N_se")
    axes[0].legend(fontsize=8)
    if deviation:
        n = np.asarray(deviation["n_se"])
        for beta, dev in deviation["rms"].items():
            axes[3].loglog(n, dev, "o-", label=f"β={beta:g}")
        d0 = np.asarray(next(iter(deviation["rms"].values())))
        axes[3].loglog(n, d0[-1] * np.sqrt(n[-1] / n), "k--", lw=0.8, label="N^{-1/2}")
        axes[3].set_title("RMS m^o(finite) − m^o(map)")
        axes[3].set_xlabel("N_se")
        axes[3].legend(fontsize=8)
    fig.tight_layout()
    return _save(fig, path)
