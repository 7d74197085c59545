"""`tokendyn sweep`: a parameter grid on Dask, stored point by point."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from tokendyn.cli._common import friendly_errors


@friendly_errors
def sweep(
    sweep_file: Annotated[Path, typer.Argument(help="TOML with [base] and [grid] tables")],
    out: Annotated[Path, typer.Option("--out", help="zarr store with the grid as dimensions")],
    workers: Annotated[int, typer.Option(help="processes of the in-process LocalCluster")] = 1,
    scheduler: Annotated[
        str | None, typer.Option(help="address of an existing Dask scheduler (tcp://host:8786)")
    ] = None,
    batch: Annotated[
        bool,
        typer.Option("--batch/--no-batch", help="run β/seed groups as one batched computation"),
    ] = True,
    max_batch: Annotated[int, typer.Option("--max-batch", help="clouds per batched task")] = 256,
    stall_timeout: Annotated[
        float,
        typer.Option(
            "--stall-timeout",
            help="give up (points stay pending) when no task has run for this many seconds",
        ),
    ] = 60.0,
    quiet: Annotated[bool, typer.Option("--quiet", help="no progress bar or summary")] = False,
    allow_large: Annotated[
        bool,
        typer.Option(
            "--allow-large", help="run even if a task's memory estimate exceeds free memory"
        ),
    ] = False,
) -> None:
    """Run a parameter grid on Dask; every finished point is stored at once, reruns resume.

    Workers that keep dying, or none running for --stall-timeout seconds, end the sweep with one
    line naming the unfinished points (a rerun resumes them)."""
    from tokendyn.app.sweep import DONE, FAILED, Sweep, run_sweep

    spec = Sweep.from_toml(sweep_file)
    ds = run_sweep(
        spec,
        out,
        workers=workers,
        scheduler=scheduler,
        batch=batch,
        max_batch=max_batch,
        progress=not quiet,
        stall_timeout=stall_timeout,
        allow_large=allow_large,
    )
    if not quiet:
        status = ds["status"].values
        Console().print(
            f"[green]{int((status == DONE).sum())}/{status.size} points done[/], "
            f"{int((status == FAILED).sum())} failed → {out}"
        )


def register(app: typer.Typer) -> None:
    app.command()(sweep)
