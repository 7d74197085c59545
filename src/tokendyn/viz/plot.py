"""Figures of a run: an xarray Dataset with `x` (time, [batch,] token, dim), coordinate `time`, and
optional statistics (time, [batch]) such as energy, clusters, effective_dim.

Every function returns a matplotlib Figure (not registered with pyplot, so nothing to close) and
saves it as well when `path` is given. Batched runs show batch element `batch` (default 0).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
import xarray as xr
from matplotlib.axes import Axes
from matplotlib.collections import LineCollection, PathCollection
from matplotlib.figure import Figure

from tokendyn.app.store import SIGNATURE, stored_config
from tokendyn.engine.observables import gram_histogram
from tokendyn.errors import ConfigError

if TYPE_CHECKING:
    from tokendyn.app.phases import Phases

# Stored statistics and their axis labels; `energy` is stored as log E (it cannot overflow).
STAT_LABELS = {
    "energy": "log E_β (energy)",
    "clusters": "clusters",
    "effective_dim": "effective dimension",
}
SPHERE_TOLERANCE = 1e-6  # |‖x_i‖ − 1| below this everywhere: the cloud is drawn on the unit sphere


# ------------------------------------------------------------------------------------------------
# reading the Dataset


def positions(
    ds: xr.Dataset,
    batch: int = 0,
    time: int | slice | list[int] = slice(None),
    token: np.ndarray | slice = slice(None),
) -> np.ndarray:
    """Positions of the selected tokens of batch element `batch` at the selected time(s):
    numpy (…, n, d). Padding (tokens NaN throughout, as in model traces) is left out."""
    if "x" not in ds or "time" not in ds.coords:
        raise ConfigError("ds", "has no variable 'x' with coordinate 'time'", "pass a run Dataset")
    x = _select_batch(ds["x"], batch).isel(time=time, token=token)
    if "length" in ds:  # a model trace: right-padded sequences
        x = x.dropna("token", how="all")
    return np.asarray(x.transpose(..., "token", "dim").values)


def statistic_series(ds: xr.Dataset, batch: int = 0) -> dict[str, np.ndarray]:
    """The statistic variables (dims (time,) or (time, batch)) as arrays over time."""
    out = {}
    for name, var in ds.data_vars.items():
        if name == "x" or var.dims not in (("time",), ("time", "batch")):
            continue
        out[str(name)] = np.asarray(_select_batch(var, batch).values)
    return out


def _select_batch(var: xr.DataArray, batch: int) -> xr.DataArray:
    if "batch" not in var.dims:
        return var
    if not 0 <= batch < var.sizes["batch"]:
        raise ConfigError("batch", f"is {batch}", f"use 0 ≤ batch < {var.sizes['batch']}")
    return var.isel(batch=batch)


def beta_of(ds: xr.Dataset) -> float | None:
    """β from the JSON `config` attribute, or None if there is none."""
    try:
        return float(stored_config(ds)["beta"])
    except (KeyError, TypeError, ValueError):  # StoreError is a ValueError
        return None


def describe(ds: xr.Dataset) -> str:
    """'N=…, d=…, β=…' for titles (β left out when unknown)."""
    parts = [f"N={ds.sizes['token']}", f"d={ds.sizes['dim']}"]
    beta = beta_of(ds)
    if beta is not None:
        parts.append(f"β={beta:g}")
    return ", ".join(parts)


def on_sphere(x: np.ndarray) -> bool:
    return bool(np.all(np.abs(np.linalg.norm(x, axis=-1) - 1) < SPHERE_TOLERANCE))


def basis_3d(x: np.ndarray) -> np.ndarray:
    """(d, 3) basis to draw points x (…, d) in 3-D: the identity for d = 3, the top-3 principal
    axes of all the points for d > 3."""
    d = x.shape[-1]
    if d == 3:
        return np.eye(3)
    _, vectors = np.linalg.eigh(np.cov(x.reshape(-1, d).T, bias=True))
    return vectors[:, ::-1][:, :3]


def axis_labels_3d(d: int) -> tuple[str, str, str]:
    return ("x₀", "x₁", "x₂") if d == 3 else ("PC 1", "PC 2", "PC 3")


def _time_index(ds: xr.Dataset, index: int) -> int:
    n = ds.sizes["time"]
    if not -n <= index < n:
        raise ConfigError("time_index", f"is {index}", f"use an index in [{-n}, {n})")
    return index % n


def _save(fig: Figure, path: str | Path | None) -> Figure:
    if path is not None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        png = Path(path).suffix.lower() == ".png"  # signed, so tokendyn may replace it later
        fig.savefig(path, dpi=110, metadata={"Software": SIGNATURE} if png else None)
    return fig


# ------------------------------------------------------------------------------------------------
# figures


def plot_circle_angles(
    ds: xr.Dataset, batch: int = 0, max_tokens: int = 2000, path: str | Path | None = None
) -> Figure:
    """d = 2: angle θ_i = atan2(x_i1, x_i0) of every token against time (at most max_tokens,
    evenly chosen). The 2π seam is put in the widest gap between the final angles, so no final
    cluster is cut, and lines break where a trajectory crosses it."""
    if ds.sizes["dim"] != 2:
        raise ConfigError("ds", f"has d={ds.sizes['dim']}", "use plot_sphere for d ≥ 3")
    n = ds.sizes["token"]
    tokens = np.unique(np.linspace(0, n - 1, min(n, max_tokens)).round().astype(int))
    x = positions(ds, batch, token=tokens)
    angles = np.arctan2(x[..., 1], x[..., 0])  # (T, n)
    seam = _widest_gap_centre(angles[-1])
    wrapped = seam + np.mod(angles - seam, 2 * np.pi)
    times = np.asarray(ds["time"].values, dtype=float)
    fig = Figure(figsize=(8, 4.5))
    ax = fig.add_subplot()
    segments = _unbroken_segments(times, wrapped)
    colours = np.repeat(np.mod(angles[0], 2 * np.pi) / (2 * np.pi), len(times) - 1)
    lines = LineCollection(segments, linewidths=0.6, cmap="twilight", array=colours[_kept(wrapped)])
    ax.add_collection(lines)
    ax.set(
        xlim=(times[0], times[-1]),
        ylim=(seam, seam + 2 * np.pi),
        xlabel="time t",
        ylabel="angle θ (rad)",
    )
    shown = "" if len(tokens) == n else f" ({len(tokens)} tokens shown)"
    ax.set_title(f"Token angles on S¹ — {describe(ds)}{shown}")
    return _save(fig, path)


def _widest_gap_centre(angles: np.ndarray) -> float:
    a = np.sort(np.mod(angles, 2 * np.pi))
    gaps = np.diff(np.append(a, a[0] + 2 * np.pi))
    k = int(np.argmax(gaps))
    centre = float(np.mod(a[k] + gaps[k] / 2, 2 * np.pi))
    return centre - 2 * np.pi if centre > np.pi else centre


def _kept(wrapped: np.ndarray) -> np.ndarray:
    """(T−1)·n mask, token-major: the steps that do not jump across the seam."""
    return (np.abs(np.diff(wrapped, axis=0)) < np.pi).T.ravel()


def _unbroken_segments(times: np.ndarray, wrapped: np.ndarray) -> np.ndarray:
    """Line segments (t_k, θ_k) → (t_{k+1}, θ_{k+1}) of every token, without seam jumps."""
    t = np.broadcast_to(times[:, None], wrapped.shape)
    points = np.stack([t, wrapped], axis=-1).transpose(1, 0, 2)  # (n, T, 2)
    segments = np.stack([points[:, :-1], points[:, 1:]], axis=2).reshape(-1, 2, 2)
    return segments[_kept(wrapped)]


def plot_sphere(
    ds: xr.Dataset, time_index: int = -1, batch: int = 0, path: str | Path | None = None
) -> Figure:
    """d = 3: the cloud at one time as a 3-D scatter on a faint wireframe unit sphere (drawn when
    the cloud lies on it). d > 3: projected onto its top-3 principal axes."""
    d = ds.sizes["dim"]
    if d < 3:
        raise ConfigError("ds", f"has d={d}", "use plot_circle_angles for d = 2")
    k = _time_index(ds, time_index)
    x = positions(ds, batch, k)
    fig = Figure(figsize=(6, 6))
    ax = fig.add_subplot(projection="3d")
    draw_cloud_3d(ax, x @ basis_3d(x), sphere=on_sphere(x), labels=axis_labels_3d(d))
    ax.set_title(f"t = {float(ds['time'][k]):g} — {describe(ds)}")
    return _save(fig, path)


def draw_cloud_3d(
    ax: Axes,
    p: np.ndarray,
    *,
    sphere: bool,
    labels: tuple[str, str, str],
    half: float | None = None,
) -> PathCollection:
    """Scatter p (N, 3) on a 3-D axis with limits ±half (default: fit p, or the sphere), on the
    unit sphere drawn as a faint wireframe if `sphere`. Returns the scatter artist."""
    if sphere:
        u, v = np.meshgrid(np.linspace(0, 2 * np.pi, 25), np.linspace(0, np.pi, 13))
        ax.plot_wireframe(
            np.cos(u) * np.sin(v),
            np.sin(u) * np.sin(v),
            np.cos(v),
            color="0.75",
            linewidth=0.3,
            alpha=0.5,
        )
    if half is None:
        half = 1.05 if sphere else max(float(np.abs(p).max()), 1e-12) * 1.05
    ax.set(
        xlim=(-half, half),
        ylim=(-half, half),
        zlim=(-half, half),
        xlabel=labels[0],
        ylabel=labels[1],
        zlabel=labels[2],
    )
    ax.set_box_aspect((1, 1, 1))
    return ax.scatter(p[:, 0], p[:, 1], p[:, 2], s=8, c="tab:blue", depthshade=True)


def plot_gram_histogram(
    ds: xr.Dataset,
    time_indices: tuple[int, ...] = (0, -1),
    bins: int = 50,
    batch: int = 0,
    path: str | Path | None = None,
) -> Figure:
    """Histograms (fraction of pairs i < j) of the inner products ⟨x_i, x_j⟩ at a few times,
    on [−1, 1] on the sphere and on [−r², r²], r = max ‖x_i‖, otherwise."""
    ks = [_time_index(ds, i) for i in time_indices]
    clouds = positions(ds, batch, ks)
    r2 = 1.0 if on_sphere(clouds) else float((clouds**2).sum(-1).max())
    n = clouds.shape[1]
    fig = Figure(figsize=(7, 4.5))
    ax = fig.add_subplot()
    for k, cloud in zip(ks, clouds, strict=True):
        counts, edges = gram_histogram(torch.from_numpy(cloud), bins=bins, range=(-r2, r2))
        ax.stairs(counts / max(n * (n - 1) / 2, 1), edges, label=f"t = {float(ds['time'][k]):g}")
    ax.set(xlabel="⟨x_i, x_j⟩", ylabel="fraction of pairs i < j")
    ax.set_title(f"Gram histogram — {describe(ds)}")
    ax.legend()
    return _save(fig, path)


def plot_statistics(ds: xr.Dataset, batch: int = 0, path: str | Path | None = None) -> Figure:
    """One panel per statistic variable against time."""
    stats = statistic_series(ds, batch)
    if not stats:
        raise ConfigError("ds", "has no statistic variables", "simulate with stats such as energy")
    times = np.asarray(ds["time"].values, dtype=float)
    fig = Figure(figsize=(7, 2.4 * len(stats) + 0.6))
    axes = fig.subplots(len(stats), 1, sharex=True, squeeze=False)[:, 0]
    for ax, (name, values) in zip(axes, stats.items(), strict=True):
        style = "steps-post" if np.issubdtype(values.dtype, np.integer) else "default"
        ax.plot(times, values, drawstyle=style, marker="." if len(times) <= 50 else None)
        ax.set_ylabel(STAT_LABELS.get(name, name))
        ax.grid(alpha=0.3)
    axes[-1].set_xlabel("time t")
    axes[0].set_title(f"Statistics — {describe(ds)}")
    fig.tight_layout()
    return _save(fig, path)


def plot_run(ds: xr.Dataset, out_dir: str | Path, batch: int = 0) -> list[Path]:
    """Write every figure that applies as PNG into out_dir: angles (d = 2), sphere (d ≥ 3), Gram
    histogram, statistics (if any). Returns the paths."""
    out = Path(out_dir)
    makers = {"gram_histogram": plot_gram_histogram}
    if ds.sizes["dim"] == 2:
        makers = {"circle_angles": plot_circle_angles, **makers}
    if ds.sizes["dim"] >= 3:
        makers = {"sphere": plot_sphere, **makers}
    if statistic_series(ds, batch):
        makers["statistics"] = plot_statistics
    paths = []
    for name, make in makers.items():
        path = out / f"{name}.png"
        make(ds, batch=batch, path=path)
        paths.append(path)
    return paths


def phase_grid(
    ds: xr.Dataset, x: str, y: str, stat: str, select: dict[str, object] | None = None
) -> tuple[xr.DataArray, list[str]]:
    """`stat` of a sweep store as a (y, x) grid, numeric axes sorted: other grid dimensions fixed
    by `select` (nearest value) or averaged (NaNs of failed points ignored); a time-dependent stat
    with y ≠ time is taken at the final time unless `select` gives one. Returns the grid and the
    averaged dimensions."""
    if stat not in ds:
        names = [v for v in ds.data_vars if v not in ("status", "error")]
        raise ConfigError("stat", f"{stat!r} is not in the store", f"use one of {', '.join(names)}")
    for name, axis in (("x", x), ("y", y)):
        if axis not in ds.dims:
            raise ConfigError(
                name,
                f"{axis!r} is not a dimension of the store",
                f"use one of {', '.join(map(str, ds.dims))}",
            )
    if x == y:
        raise ConfigError("y", "equals x", "choose two different dimensions")
    var = ds[stat]
    for name, value in (select or {}).items():
        if name not in var.dims:
            raise ConfigError(
                "select",
                f"{name!r} is not a dimension of {stat}",
                f"use one of {', '.join(map(str, var.dims))}",
            )
        var = var.sel({name: value}, method="nearest" if var[name].dtype.kind in "fiu" else None)
    if "time" in var.dims and "time" not in (x, y):
        var = var.isel(time=-1)
    rest = [str(d) for d in var.dims if d not in (x, y)]
    var = var.mean(rest, skipna=True) if rest else var
    grid = var.transpose(y, x)
    for axis in (x, y):
        if grid[axis].dtype.kind in "fiu":
            grid = grid.sortby(axis)
    return grid, rest


def plot_phase(
    ds: xr.Dataset,
    x: str,
    y: str,
    stat: str,
    select: dict[str, object] | None = None,
    path: str | Path | None = None,
) -> Figure:
    """Phase diagram of a sweep store: `stat` over (x, y), e.g. clusters over (β, time) or the time
    to one cluster over (β, d), from `phase_grid` (other dimensions selected or averaged)."""
    grid, rest = phase_grid(ds, x, y, stat, select)
    fig = Figure(figsize=(6.4, 4.6))
    ax = fig.add_subplot()
    xs, ys = _edges(grid[x].values), _edges(grid[y].values)
    mesh = ax.pcolormesh(xs, ys, np.ma.masked_invalid(grid.values), shading="flat", cmap="viridis")
    label = STAT_LABELS.get(stat, stat)
    fig.colorbar(
        mesh, ax=ax, label=label + (" (mean over " + ", ".join(rest) + ")" if rest else "")
    )
    ax.set(xlabel=x, ylabel=y, title=f"{label} over ({x}, {y})")
    _label_categories(ax, "x", grid[x].values)
    _label_categories(ax, "y", grid[y].values)
    if _log_spaced(grid[x].values):
        ax.set_xscale("log")
    return _save(fig, path)


def _edges(values: np.ndarray) -> np.ndarray:
    """Cell edges around sorted centres (midpoints in log space for log-spaced positive values);
    non-numeric coordinates are placed at 0, 1, 2, …"""
    v = np.asarray(values)
    v = v.astype(float) if v.dtype.kind in "fiu" else np.arange(len(v), dtype=float)
    if len(v) == 1:
        return np.array([v[0] - 0.5, v[0] + 0.5])
    log = _log_spaced(v)
    w = np.log(v) if log else v
    mids = (w[:-1] + w[1:]) / 2
    edges = np.concatenate([[2 * w[0] - mids[0]], mids, [2 * w[-1] - mids[-1]]])
    return np.exp(edges) if log else edges


def _label_categories(ax: Axes, which: str, values: np.ndarray) -> None:
    if np.asarray(values).dtype.kind not in "fiu":
        getattr(ax, f"set_{which}ticks")(np.arange(len(values)), [str(v) for v in values])


def _log_spaced(values: np.ndarray) -> bool:
    v = np.asarray(values)
    if v.dtype.kind not in "fiu" or len(v) < 3 or (v <= 0).any():
        return False
    ratios = v[1:] / v[:-1]
    return bool(np.allclose(ratios, ratios[0], rtol=1e-6)) and ratios[0] > 1.5


def plot_phase_diagnostics(
    diag: xr.Dataset, phases: Phases, path: str | Path | None = None
) -> Figure:
    """Per-frame phase diagnostics on a log-time axis (ε_⊥, participation ratio, Ê, macroscopic
    clusters, and the Fourier moduli |μ̂_k| when E_max is a plane), with the detected phase times
    (solid) and the limits' predictions (dashed)."""
    times = np.asarray(diag["time"].values, dtype=float)
    keep = times > 0
    panels = [
        ("transverse_mass", "ε_⊥ (transverse mass)", True),
        ("participation_ratio", "participation ratio", False),
        ("normalised_energy", "normalised energy Ê", False),
        ("macro_clusters", "macroscopic clusters", False),
    ]
    has_modes = "fourier_modes" in diag
    fig = Figure(figsize=(7.5, 1.9 * (len(panels) + has_modes) + 0.7))
    axes = fig.subplots(len(panels) + has_modes, 1, sharex=True, squeeze=False)[:, 0]
    for ax, (name, label, log) in zip(axes, panels, strict=False):
        style = "steps-post" if name == "macro_clusters" else "default"
        ax.plot(times[keep], diag[name].values[keep], drawstyle=style)
        ax.set_ylabel(label, fontsize=8)
        if log:
            ax.set_yscale("log")
    if has_modes:
        ax = axes[-1]
        modes = diag["fourier_modes"].values[keep]
        for k in range(min(6, modes.shape[1])):
            ax.plot(times[keep], modes[:, k], lw=1, label=f"k = {k + 1}")
        ax.set_yscale("log")
        ax.set_ylabel("|μ̂_k| on E_max", fontsize=8)
        ax.legend(fontsize=7, ncol=3)
    marks = [
        (phases.alignment_done, phases.alignment_predicted, "C1", "aligned"),
        (phases.clusters_formed, None, "C2", "clusters formed"),
        (phases.merges[0] if phases.merges else None, phases.first_merge_predicted, "C3", "merge"),
    ]
    for ax in axes:
        for detected, predicted, colour, label in marks:
            if detected is not None and detected > 0:
                ax.axvline(detected, color=colour, lw=1, label=label if ax is axes[0] else None)
            if predicted is not None and predicted > 0:
                ax.axvline(predicted, color=colour, lw=1, ls="--")
        for later in phases.merges[1:]:
            ax.axvline(later, color="C3", lw=1)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7, title="solid: detected, dashed: predicted", title_fontsize=7)
    axes[-1].set_xscale("log")
    axes[-1].set_xlabel("time t (log)")
    axes[0].set_title(
        f"Phases — N = {diag.attrs.get('n')}, β = {diag.attrs.get('beta'):.4g}, "
        f"dim E_max = {diag.attrs.get('e_max_dim')}",
        fontsize=9,
    )
    fig.tight_layout()
    return _save(fig, path)
