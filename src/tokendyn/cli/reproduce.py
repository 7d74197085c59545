"""`tokendyn reproduce`: the reproduction checks and their HTML report."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from tokendyn.cli._common import default_threads, err_console, friendly_errors


@friendly_errors
def reproduce(
    ctx: typer.Context,
    quick: Annotated[
        bool, typer.Option("--quick", help="small sizes: minutes on a laptop")
    ] = False,
    out: Annotated[
        Path, typer.Option("--out", help="report folder (index.html, summary.json, figures)")
    ] = Path("report"),
    section: Annotated[
        list[str] | None, typer.Option("--section", help="run only these sections (repeatable)")
    ] = None,
) -> None:
    """Run the reproduction checks and write an HTML report with figures and a pass/fail table."""
    from tokendyn.app.store import claim_folder
    from tokendyn.studies.report import write_report

    default_threads(ctx, 1)  # the report's values and timings do not depend on the core count

    summary = write_report(claim_folder(out), quick=quick, only=section)
    failed = [c["name"] for c in summary if not c["passed"]]
    Console().print(
        f"{len(summary) - len(failed)}/{len(summary)} checks passed → {out / 'index.html'}"
    )
    if failed:
        err_console.print(f"[bold red]failed:[/] {', '.join(failed)}")
        raise typer.Exit(code=1)


def register(app: typer.Typer) -> None:
    app.command()(reproduce)
