"""`tokendyn view`: one self-contained interactive HTML file of a run or a sweep store."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from tokendyn.cli._common import friendly_errors


@friendly_errors
def view(
    store: Annotated[
        Path, typer.Argument(help="a run store (.zarr/.nc) or a `tokendyn sweep` store")
    ],
    out: Annotated[
        Path | None, typer.Option("--out", help="the HTML file (default: STORE.html)")
    ] = None,
    batch: Annotated[int, typer.Option(help="runs: batch element shown")] = 0,
    x: Annotated[str, typer.Option("--x", help="sweeps: grid dimension on the x axis")] = "beta",
    y: Annotated[str, typer.Option("--y", help="sweeps: grid dimension or time on y")] = "time",
    stat: Annotated[
        list[str] | None,
        typer.Option("--stat", help="sweeps: statistic(s) in the menu (default: every one)"),
    ] = None,
) -> None:
    """Interactive view (plotly, scripts inlined: no server, no network). A run: the cloud in 3-D
    coloured by cluster, with a time slider, a play button and its statistics over time. A sweep
    store: its phase diagram with hover values."""
    from tokendyn.app.store import check_writable
    from tokendyn.viz.view import view_store

    check_writable(out or store.with_suffix(".html"))
    print(view_store(store, out, batch=batch, x=x, y=y, stats=stat or None))


def register(app: typer.Typer) -> None:
    app.command()(view)
