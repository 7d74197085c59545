"""Helpers every command module shares: one-line errors, list parsing, choice enums."""

from __future__ import annotations

import functools
from collections.abc import Callable
from enum import Enum
from typing import Any

import typer
from rich.console import Console
from rich.markup import escape

from tokendyn.errors import TokendynError

err_console = Console(stderr=True)


def friendly_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Show input errors as one clear line (exit code 2) instead of a traceback."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except TokendynError as err:
            message = escape(str(err))  # Rich markup would eat e.g. "[base]"
            err_console.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
            raise typer.Exit(code=2) from None

    return wrapper


def parse_numbers(field: str, text: str | None) -> list[float] | None:
    """'0, 2.1,4' → [0.0, 2.1, 4.0], with a clear error naming the flag."""
    if text is None:
        return None
    try:
        return [float(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise TokendynError(
            f"{field}: {text!r} is not a comma-separated list of numbers. Fix: write e.g. 0,2.1,4.2"
        ) from None


def choices(*names: str) -> type[Enum]:
    """A str Enum whose members are `names` (typer shows them as the option's choices)."""
    return Enum("Choice", {n: n for n in names}, type=str)  # type: ignore[return-value]


def default_threads(ctx: typer.Context, threads: int) -> None:
    """Use `threads` torch threads for this command unless the root --threads chose already."""
    root = ctx.find_root().obj or {}
    if root.get("threads") is None:
        import torch

        torch.set_num_threads(threads)
