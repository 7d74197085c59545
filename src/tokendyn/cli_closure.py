"""`tokendyn` commands for this capability; `register(app)` adds them to the main CLI."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    """Add this capability's commands (filled in by its issue)."""
