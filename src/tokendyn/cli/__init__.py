"""The `tokendyn` command line: a root typer app; each command group lives in its own module."""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from tokendyn.cli import (
    bench,
    closure,
    dmft,
    figures,
    icl,
    model,
    multiscale,
    reproduce,
    run,
    sweep,
    view,
)
from tokendyn.cli._common import GuardedGroup

app = typer.Typer(
    cls=GuardedGroup,
    add_completion=False,
    no_args_is_help=True,
    help="tokendyn: transformers as interacting particle systems (tokens = particles).",
)


@app.callback()
def _root(
    ctx: typer.Context,
    threads: Annotated[
        int | None,
        typer.Option(
            "--threads",
            min=1,
            help="torch threads for this command (default: torch's own; 1 for reproduce and "
            "icl train)",
        ),
    ] = None,
    debug: Annotated[
        bool,
        typer.Option(
            "--debug", help="show the full traceback of an unexpected error (a bug in tokendyn)"
        ),
    ] = False,
) -> None:
    """The one place the command line sets torch's thread count (the library never does)."""
    ctx.obj = {"threads": threads, "debug": debug}
    if threads is not None:
        import torch

        torch.set_num_threads(threads)


for _module in (run, figures, sweep, bench, reproduce, closure, dmft, icl, multiscale, model, view):
    _module.register(app)


def main() -> None:  # pragma: no cover - console entry point
    app(sys.argv[1:])
