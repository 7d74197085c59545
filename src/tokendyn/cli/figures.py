"""`tokendyn plot`, `animate` and `plot-phase`: figures of stored runs and sweeps."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from tokendyn.cli._common import friendly_errors
from tokendyn.errors import TokendynError


@friendly_errors
def plot(
    run: Annotated[Path, typer.Argument(help="a run store (.zarr) or netCDF export")],
    out: Annotated[
        Path | None,
        typer.Option(
            "--out", help="new, empty or tokendyn-made folder for the PNGs (default: RUN_figures)"
        ),
    ] = None,
) -> None:
    """Figures of a stored run: circle angles, the cloud on S², Gram histograms, statistics."""
    from tokendyn.app.store import claim_folder, open_run
    from tokendyn.viz.plot import plot_run

    ds = open_run(run)
    folder = claim_folder(out or run.with_name(run.stem + "_figures"))
    for path in plot_run(ds, folder):
        print(path)


@friendly_errors
def animate(
    run: Annotated[Path, typer.Argument(help="a run store (.zarr) or netCDF export")],
    out: Annotated[
        Path | None, typer.Option("--out", help="output .gif or .mp4 (default: RUN.gif)")
    ] = None,
    fps: Annotated[int, typer.Option(help="frames per second")] = 10,
) -> None:
    """GIF/MP4 of a stored run's cloud over time."""
    from tokendyn.app.store import claim_file, open_run
    from tokendyn.viz.animate import animate_run

    ds = open_run(run)
    print(animate_run(ds, claim_file(out or run.with_suffix(".gif")), fps=fps))


@friendly_errors
def plot_phase_command(
    store: Annotated[Path, typer.Argument(help="a `tokendyn sweep` store")],
    x: Annotated[str, typer.Option("--x", help="grid dimension on the x axis")] = "beta",
    y: Annotated[str, typer.Option("--y", help="grid dimension or time on the y axis")] = "time",
    stat: Annotated[
        str, typer.Option("--stat", help="statistic, e.g. clusters or time_to_one_cluster")
    ] = "clusters",
    select: Annotated[
        list[str] | None, typer.Option("--select", help="fix another dimension: NAME=VALUE")
    ] = None,
    out: Annotated[
        Path | None, typer.Option("--out", help="PNG path (default STORE_STAT_X_Y.png)")
    ] = None,
) -> None:
    """Phase diagram of a sweep: a statistic over two dimensions (others averaged or selected)."""
    from tokendyn.app.store import claim_file
    from tokendyn.app.sweep import open_sweep
    from tokendyn.viz.plot import plot_phase

    chosen = {}
    for item in select or []:
        name, sep, value = item.partition("=")
        if not sep:
            raise TokendynError(f"select: {item!r} is not NAME=VALUE. Fix: write e.g. --select d=3")
        chosen[name] = json.loads(value) if value[:1] in "-0123456789[{" else value
    path = claim_file(out or store.with_name(f"{store.stem}_{stat}_{x}_{y}.png"))
    plot_phase(open_sweep(store), x, y, stat, select=chosen, path=path)
    print(path)


def register(app: typer.Typer) -> None:
    app.command()(plot)
    app.command()(animate)
    app.command("plot-phase")(plot_phase_command)
