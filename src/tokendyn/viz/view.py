"""Interactive views (plotly): each is ONE self-contained HTML file — plotly.js is inlined, so the
file opens in any browser with no server and no network.

- A run: the cloud in 3-D (S² for d = 3, the unit circle for d = 2, the top-3 principal axes of all
  frames for d > 3), coloured by cluster (connected components of |x_i − x_j| < threshold, the
  run's `cluster_threshold`), with a time slider and a play button; the run's statistics over time
  are drawn beside it, with a marker at the slider's time.
- A sweep store: its phase diagram (a statistic over two grid dimensions, as in `plot_phase`) as a
  heatmap with hover values, one menu entry per statistic.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import plotly.graph_objects as go
import torch
import xarray as xr
import zarr
from plotly.colors import qualitative
from plotly.subplots import make_subplots

from tokendyn.app.store import open_run
from tokendyn.app.sweep import open_sweep
from tokendyn.engine.observables import cluster_labels
from tokendyn.errors import ConfigError
from tokendyn.viz.plot import (
    STAT_LABELS,
    axis_labels_3d,
    basis_3d,
    describe,
    on_sphere,
    phase_grid,
    positions,
    statistic_series,
)

DEFAULT_THRESHOLD = 1e-2  # the config's default cluster_threshold
PALETTE = qualitative.D3
MAX_TOKENS = 2000  # tokens drawn (evenly chosen; clusters are computed on every token)
MAX_FRAMES = 200  # frames on the slider (evenly chosen; the first and last always kept)
GRID_STEPS = 24  # points per circle of the faint reference sphere


def _evenly(n: int, k: int) -> np.ndarray:
    """At most k indices evenly spread over range(n), first and last included."""
    return np.unique(np.linspace(0, n - 1, min(n, k)).round().astype(int))


def _threshold(ds: xr.Dataset) -> float:
    try:
        return float(json.loads(ds.attrs["config"]).get("cluster_threshold", DEFAULT_THRESHOLD))
    except (KeyError, TypeError, ValueError, AttributeError):
        return DEFAULT_THRESHOLD


def _colours(labels: np.ndarray) -> list[str]:
    """One colour per token: clusters ranked by size (largest first), so a colour follows the big
    clusters from frame to frame."""
    ids, counts = np.unique(labels, return_counts=True)
    rank = np.empty(ids.max() + 1, dtype=int)
    rank[ids[np.argsort(-counts, kind="stable")]] = np.arange(len(ids))
    return [PALETTE[r % len(PALETTE)] for r in rank[labels]]


def _reference_lines(sphere: bool, d: int) -> go.Scatter3d | None:
    """The unit circle (d = 2) or a few meridians and parallels of the unit sphere, faint."""
    if not sphere:
        return None
    u = np.linspace(0, 2 * np.pi, GRID_STEPS + 1)
    if d == 2:
        xs, ys, zs = np.cos(u), np.sin(u), np.zeros_like(u)
    else:
        parts = []
        for lat in np.linspace(-np.pi / 3, np.pi / 3, 5):
            parts.append(
                np.stack([np.cos(lat) * np.cos(u), np.cos(lat) * np.sin(u), 0 * u + np.sin(lat)])
            )
        for lon in np.linspace(0, np.pi, 6, endpoint=False):
            parts.append(np.stack([np.cos(lon) * np.cos(u), np.sin(lon) * np.cos(u), np.sin(u)]))
        gap = np.full((3, 1), np.nan)
        xs, ys, zs = np.concatenate([c for p in parts for c in (p, gap)], axis=1)
    return go.Scatter3d(
        x=xs,
        y=ys,
        z=zs,
        mode="lines",
        line={"color": "#c8c8c8", "width": 1},
        hoverinfo="skip",
        showlegend=False,
    )


def run_view(
    ds: xr.Dataset, batch: int = 0, max_tokens: int = MAX_TOKENS, max_frames: int = MAX_FRAMES
) -> go.Figure:
    """The interactive figure of a run (see the module docstring); frames are named by index."""
    if max_tokens < 1 or max_frames < 1:
        raise ConfigError("max_tokens", "and max_frames must be ≥ 1", "use e.g. 2000 and 200")
    x = positions(ds, batch)  # (T, N, d)
    d = x.shape[-1]
    if d < 2:
        raise ConfigError("ds", f"has d={d}", "view clouds with d ≥ 2")
    frames_k = _evenly(x.shape[0], max_frames)
    tokens = _evenly(x.shape[1], max_tokens)
    times = np.asarray(ds["time"].values, dtype=float)
    threshold = _threshold(ds)
    sphere = on_sphere(x)
    p = x @ basis_3d(x) if d >= 3 else np.concatenate([x, np.zeros_like(x[..., :1])], axis=-1)
    labels = ("x₀", "x₁", "") if d == 2 else axis_labels_3d(d)
    half = 1.05 if sphere else max(float(np.abs(p).max()), 1e-12) * 1.05
    stats = {name: v.astype(float) for name, v in statistic_series(ds, batch).items()}
    clusters = {k: cluster_labels(torch.from_numpy(x[k]), threshold) for k in frames_k}

    def cloud(k: int) -> go.Scatter3d:
        lab = clusters[k]
        return go.Scatter3d(
            x=p[k, tokens, 0],
            y=p[k, tokens, 1],
            z=p[k, tokens, 2],
            mode="markers",
            marker={"size": 3, "color": np.asarray(_colours(lab))[tokens].tolist()},
            customdata=lab[tokens],
            hovertemplate="token cluster %{customdata}<extra></extra>",
            name="tokens",
            showlegend=False,
        )

    rows = max(1, len(stats))
    specs = [[{"type": "scene", "rowspan": rows}, {"type": "xy"}]] + [
        [None, {"type": "xy"}] for _ in range(rows - 1)
    ]
    fig = make_subplots(
        rows=rows,
        cols=2,
        specs=specs,
        column_widths=[0.58, 0.42],
        horizontal_spacing=0.08,
        vertical_spacing=0.06,
        shared_xaxes=True,
        subplot_titles=[None, *[STAT_LABELS.get(n, n) for n in stats]] if stats else None,
    )
    fig.add_trace(cloud(frames_k[0]), row=1, col=1)
    reference = _reference_lines(sphere, d)
    if reference is not None:
        fig.add_trace(reference, row=1, col=1)
    markers = []
    for row, (name, v) in enumerate(stats.items(), start=1):
        fig.add_trace(
            go.Scatter(
                x=times,
                y=v,
                mode="lines",
                name=name,
                showlegend=False,
                line={"color": "#1f77b4", "width": 1.5},
            ),
            row=row,
            col=2,
        )
        markers.append(len(fig.data))
        k0 = frames_k[0]
        fig.add_trace(
            go.Scatter(
                x=[times[k0]],
                y=[v[k0]],
                mode="markers",
                showlegend=False,
                marker={"color": "#d62728", "size": 9},
                name=f"{name} now",
            ),
            row=row,
            col=2,
        )
    fig.update_xaxes(title_text="time t", row=rows, col=2)

    def title(k: int) -> str:
        return f"{describe(ds)} — t = {times[k]:.4g}, {clusters[k].max() + 1} clusters"

    frames = []
    for k in frames_k:
        data = [cloud(k)] + [go.Scatter(x=[times[k]], y=[v[k]]) for v in stats.values()]
        frames.append(
            go.Frame(
                name=str(k), data=data, traces=[0, *markers], layout={"title": {"text": title(k)}}
            )
        )
    fig.frames = frames
    still = {
        "mode": "immediate",
        "frame": {"duration": 0, "redraw": True},
        "transition": {"duration": 0},
    }
    fig.update_layout(
        title={"text": title(frames_k[0])},
        height=620,
        margin={"l": 10, "r": 20, "t": 60, "b": 10},
        scene={
            "xaxis": {"range": [-half, half], "title": labels[0]},
            "yaxis": {"range": [-half, half], "title": labels[1]},
            "zaxis": {"range": [-half, half], "title": labels[2]},
            "aspectmode": "cube",
            "uirevision": "cloud",
        },
        updatemenus=[
            {
                "type": "buttons",
                "direction": "left",
                "x": 0.0,
                "y": -0.02,
                "xanchor": "left",
                "yanchor": "top",
                "pad": {"t": 30, "r": 10},
                "showactive": False,
                "buttons": [
                    {
                        "label": "▶ play",
                        "method": "animate",
                        "args": [
                            None,
                            {
                                "frame": {"duration": 120, "redraw": True},
                                "fromcurrent": True,
                                "transition": {"duration": 0},
                            },
                        ],
                    },
                    {"label": "❚❚ pause", "method": "animate", "args": [[None], still]},
                ],
            }
        ],
        sliders=[
            {
                "active": 0,
                "x": 0.12,
                "len": 0.86,
                "y": -0.02,
                "yanchor": "top",
                "currentvalue": {"prefix": "t = "},
                "pad": {"t": 20},
                "steps": [
                    {"label": f"{times[k]:.3g}", "method": "animate", "args": [[str(k)], still]}
                    for k in frames_k
                ],
            }
        ],
    )
    return fig


def sweep_view(
    ds: xr.Dataset,
    x: str = "beta",
    y: str = "time",
    stats: list[str] | None = None,
    select: dict[str, object] | None = None,
) -> go.Figure:
    """The phase diagram of a sweep store: each statistic in `stats` (default: every numeric one
    that has both x and y) over (x, y) as a heatmap with hover values, chosen from a menu; other
    dimensions are selected or averaged as in `phase_grid`."""
    if stats is None:
        stats = [str(n) for n, v in ds.data_vars.items() if _has_axes(v, x, y)]
    if not stats:
        raise ConfigError(
            "stat",
            f"no statistic of the store has dimensions {x!r} and {y!r}",
            "choose --x and --y among the store's dimensions",
        )
    fig = go.Figure()
    for i, stat in enumerate(stats):
        grid, rest = phase_grid(ds, x, y, stat, select)
        label = stat + (f" (mean over {', '.join(rest)})" if rest else "")
        hover = f"{x} = %{{x}}<br>{y} = %{{y}}<br>{label} = %{{z:.4g}}<extra></extra>"
        fig.add_trace(
            go.Heatmap(
                x=_axis_values(grid[x]),
                y=_axis_values(grid[y]),
                z=grid.values,
                colorscale="Viridis",
                visible=i == 0,
                name=stat,
                colorbar={"title": {"text": stat}},
                hovertemplate=hover,
            )
        )
    buttons = [
        {
            "label": stat,
            "method": "update",
            "args": [
                {"visible": [j == i for j in range(len(stats))]},
                {"title": {"text": f"{stat} over ({x}, {y})"}},
            ],
        }
        for i, stat in enumerate(stats)
    ]
    menu = {"buttons": buttons, "x": 1.0, "xanchor": "right", "y": 1.12, "yanchor": "top"}
    fig.update_layout(
        title={"text": f"{stats[0]} over ({x}, {y})"},
        xaxis_title=x,
        yaxis_title=y,
        height=560,
        updatemenus=[menu] if len(stats) > 1 else [],
    )
    return fig


def _axis_values(coord: xr.DataArray) -> list:
    """Numeric coordinates as numbers, others (e.g. attention names) as strings."""
    values = coord.values
    return values.tolist() if values.dtype.kind in "fiu" else [str(v) for v in values]


def _has_axes(var: xr.DataArray, x: str, y: str) -> bool:
    """A numeric grid variable that `phase_grid` can draw over (x, y) (time may be dropped)."""
    return var.dtype.kind in "fiu" and {x, y} <= set(var.dims)


def write_html(fig: go.Figure, path: str | Path) -> Path:
    """One self-contained HTML file (plotly.js inlined; no network needed to open it)."""
    path = Path(path)
    if path.suffix.lower() not in (".html", ".htm"):
        raise ConfigError("out", f"{path} does not end in .html", "write e.g. --out view.html")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.write_html(path, include_plotlyjs=True, full_html=True, auto_play=False)
    return path


def open_store(path: str | Path) -> xr.Dataset:
    """A run store or a sweep store (zarr with the `sweep` attribute), with the stores' errors."""
    p = Path(path)
    if p.is_dir():
        try:
            is_sweep = "sweep" in zarr.open_group(str(p), mode="r").attrs
        except Exception:  # not a zarr group: open_run names the problem
            is_sweep = False
        if is_sweep:
            return open_sweep(p)
    return open_run(p)


def view_store(
    path: str | Path,
    out: str | Path | None = None,
    *,
    batch: int = 0,
    x: str = "beta",
    y: str = "time",
    stats: list[str] | None = None,
    select: dict[str, object] | None = None,
) -> Path:
    """Write the view of the store at `path` to `out` (default PATH.html): `run_view` of batch
    element `batch` for a run, `sweep_view` over (x, y) for a sweep store. Returns the path."""
    ds = open_store(path)
    fig = sweep_view(ds, x, y, stats, select) if "sweep" in ds.attrs else run_view(ds, batch)
    return write_html(fig, out if out is not None else Path(path).with_suffix(".html"))
