"""Figures of a real model's per-layer measurements (`tokendyn.models.metrics.layer_metrics`)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import xarray as xr
from matplotlib.figure import Figure

from tokendyn.models.metrics import SCALAR_METRICS
from tokendyn.viz.plot import _save

LABELS = {
    "mean_cosine": "mean cosine (anisotropy)",
    "stable_rank": "stable rank",
    "collapse_residual": "‖X − 1x̄ᵀ‖/‖X‖",
    "participation_ratio": "participation ratio",
    "intrinsic_dimension": "intrinsic dim. (TwoNN)",
    "clusters": "clusters",
    "knn_overlap": "k-NN overlap with l − 1",
    "attention_rank": "attention stable rank",
    "leaders": "leader tokens",
}


def _title(metrics: xr.Dataset) -> str:
    model = metrics.attrs.get("model") or "model"
    return f"{model} — {metrics.attrs.get('tokens')} tokens, {metrics.attrs.get('view')} view"


def plot_metric_curves(metrics: xr.Dataset, path: str | Path | None = None) -> Figure:
    """One panel per metric against layer: the model (solid) and the shuffled-token null
    (dashed). Metrics that are NaN at every layer (no attentions stored) are left out."""
    names = [n for n in SCALAR_METRICS if np.isfinite(metrics[n].values).any()]
    cols = 3
    rows = -(-len(names) // cols)
    fig = Figure(figsize=(4 * cols, 2.6 * rows + 0.6))
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    layers = metrics["layer"].values
    for ax, name in zip(axes, names, strict=False):
        ax.plot(layers, metrics[name].values, marker=".", label="model")
        ax.plot(layers, metrics[name + "_null"].values, ls="--", color="0.5", label="null")
        ax.set_title(LABELS[name], fontsize=9)
        ax.grid(alpha=0.3)
    for ax in axes[len(names) :]:
        ax.set_visible(False)
    for ax in axes[-cols:]:
        ax.set_xlabel("layer")
    axes[0].legend(fontsize=7)
    fig.suptitle(_title(metrics), fontsize=10)
    fig.tight_layout()
    return _save(fig, path)


def plot_gram_layers(metrics: xr.Dataset, path: str | Path | None = None) -> Figure:
    """Histograms of ⟨u_i, u_j⟩ per layer (colour = depth), and the shuffled-token null of the
    last layer (dashed): the ALBERT figure of Geshkovski et al."""
    fig = Figure(figsize=(7, 4.5))
    ax = fig.add_subplot()
    centres = metrics["cosine"].values
    width = centres[1] - centres[0] if len(centres) > 1 else 2.0
    edges = np.append(centres - width / 2, centres[-1] + width / 2)
    layers = metrics["layer"].values
    colours = [
        (0.1, 0.2 + 0.6 * k / max(len(layers) - 1, 1), 0.9 - 0.6 * k / max(len(layers), 1))
        for k in range(len(layers))
    ]
    for k, layer in enumerate(layers):
        ax.stairs(metrics["gram_histogram"].values[k], edges, color=colours[k], label=f"{layer}")
    ax.stairs(
        metrics["gram_histogram_null"].values[-1], edges, ls="--", color="0.4", label="null (last)"
    )
    ax.set(xlabel="⟨u_i, u_j⟩ (cosine)", ylabel="fraction of pairs i < j", xlim=(-1, 1))
    ax.legend(title="layer", fontsize=7, ncol=2)
    ax.set_title(_title(metrics), fontsize=10)
    return _save(fig, path)


def plot_weight_spectra(report: dict, path: str | Path | None = None) -> Figure:
    """Per layer (colour = depth): the eigenvalues of every head's B_h = β sym(Q_hᵀK_h) (left) and
    the real parts of those of its value–output map W_h V_h (right), pooled over heads, as
    histograms (`tokendyn.models.weights.weight_report`)."""
    fig = Figure(figsize=(10, 4))
    axes = fig.subplots(1, 2)
    spectra = report["spectra"]
    n = len(spectra)
    for key, ax, label in (
        ("B_eigenvalues", axes[0], "eigenvalues of B = β sym(QᵀK)"),
        ("OV_eigenvalues_real", axes[1], "Re eigenvalues of W_O W_V"),
    ):
        values = [np.concatenate([h[key] for h in layer]) for layer in spectra]
        lo, hi = min(v.min() for v in values), max(v.max() for v in values)
        edges = np.linspace(lo, hi if hi > lo else lo + 1, 41)
        for i, v in enumerate(values):
            colour = (0.1, 0.2 + 0.6 * i / max(n - 1, 1), 0.9 - 0.6 * i / max(n, 1))
            ax.stairs(np.histogram(v, edges)[0], edges, color=colour, label=str(i))
        ax.set(xlabel=label, ylabel="count (all heads)")
        ax.axvline(0, color="0.6", lw=0.8)
    axes[0].legend(title="layer", fontsize=7, ncol=2)
    fig.suptitle(f"{report['model']} — weight spectra", fontsize=10)
    fig.tight_layout()
    return _save(fig, path)


def plot_compare(
    result: dict,
    metrics: tuple[str, ...] = ("cosine", "w2", "mean_cosine"),
    path: str | Path | None = None,
) -> Figure:
    """Error against layer for each particle model (solid: attention only, dotted: attention + MLP;
    one line per dt) and the nulls (dashed grey), one panel per metric
    (`tokendyn.models.compare.compare`); with shared weights, a last panel of the cluster count of
    the autonomous long run against time."""
    long_run = result.get("long_run")
    n = len(metrics) + (long_run is not None)
    fig = Figure(figsize=(4 * n, 3.4))
    axes = fig.subplots(1, n, squeeze=False).ravel()
    layers = result["layers"]
    for ax, metric in zip(axes, metrics, strict=False):
        for name, values in result["error"][metric].items():
            ax.plot(
                layers,
                values,
                ls="-" if name.startswith("attention dt") else ":",
                marker=".",
                label=name,
            )
        for name, values in result["null_error"][metric].items():
            ax.plot(
                layers,
                values,
                ls="--",
                color="0.5" if name == "identity" else "0.75",
                label=f"null: {name}",
            )
        ax.set(xlabel="layer", title=f"error: {metric}")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=6)
    if long_run is not None:
        ax = axes[-1]
        ax.plot(long_run["time"], long_run["clusters"], marker=".")
        ax.axvline(len(layers) - 1, color="0.6", ls=":", label="model depth")
        ax.set(xlabel="t (layers)", ylabel="clusters", title="autonomous long run")
        ax.legend(fontsize=7)
    fig.suptitle(f"{result['model']} — particle model vs real hidden states", fontsize=10)
    fig.tight_layout()
    return _save(fig, path)
