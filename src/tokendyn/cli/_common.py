"""Helpers every command module shares: one-line errors, list parsing, choice enums."""

from __future__ import annotations

import functools
from collections.abc import Callable
from enum import Enum
from importlib import metadata
from typing import Any

import typer
from rich.console import Console
from rich.markup import escape
from typer.core import TyperGroup
from typer.exceptions import TyperException

from tokendyn.errors import ConfigError, TokendynError

err_console = Console(stderr=True)


def _error_line(text: str) -> None:
    """One `error: …` line on stderr; the text is shown as is ("[base]" is not Rich markup)."""
    err_console.print(f"[bold red]error:[/] {escape(text)}", highlight=False, soft_wrap=True)


def friendly_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Show input errors as one clear line (exit code 2) instead of a traceback."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except TokendynError as err:
            _error_line(str(err))
            raise typer.Exit(code=2) from None

    return wrapper


def issue_tracker() -> str:
    """Where to report a bug: the package metadata's issue-tracker URL, if it names one."""
    try:
        urls = metadata.metadata("tokendyn").get_all("Project-URL") or []
    except metadata.PackageNotFoundError:
        urls = []
    for entry in urls:
        label, _, url = entry.partition(",")
        if label.strip().lower() in ("issues", "tracker", "bug tracker", "issue tracker"):
            return url.strip()
    return "the tokendyn issue tracker"


class GuardedGroup(TyperGroup):
    """The root command: whatever a command raises becomes one line on stderr.

    A TokendynError (bad input) → `error: <field>: <problem>. Fix: <fix>`, exit 2; Ctrl-C → one
    line, exit 130; any other exception is a bug in tokendyn → one line naming its type and
    message, where to report it and `--debug`, exit 1. With `tokendyn --debug …` the exception
    propagates with its full traceback. click's own exits and usage errors pass through."""

    def invoke(self, ctx: typer.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (typer.Exit, typer.Abort, TyperException):  # click's own exits and usage errors
            raise
        except KeyboardInterrupt:
            if _debug(ctx):
                raise
            _error_line(
                "interrupted: stopped by Ctrl-C; frames already stored are kept. Fix: rerun "
                "the same command (with --resume for a stored run) to continue"
            )
            raise typer.Exit(code=130) from None
        except TokendynError as err:
            if _debug(ctx):
                raise
            _error_line(str(err))
            raise typer.Exit(code=2) from None
        except Exception as err:
            if _debug(ctx):
                raise
            message = " ".join(str(err).split()) or "(no message)"
            _error_line(
                f"internal: {type(err).__name__}: {message}. This is a bug in tokendyn, not "
                f"in your input. Fix: please report it at {issue_tracker()} with the command; "
                "rerun with `tokendyn --debug …` for the full traceback"
            )
            raise typer.Exit(code=1) from None


def _debug(ctx: typer.Context) -> bool:
    return bool((ctx.obj or {}).get("debug"))


def require(field: str, ok: bool, value: object, fix: str) -> None:
    """Refuse an option's value unless `ok`: one line naming the option's field and the fix."""
    if not ok:
        raise ConfigError(field, f"is {value}", fix)


def require_count(field: str, value: int, low: int = 1) -> None:
    """Refuse a count (steps, sequences, trials, depth…) below `low` or above MAX_STEPS = 1e8,
    the limit of a run's steps: more is a typo that would compute for days, not a run."""
    from tokendyn.app.config import MAX_STEPS

    flag = "--" + field.replace("_", "-")
    require(field, low <= value <= MAX_STEPS, value, f"use {low} ≤ {flag} ≤ {MAX_STEPS:.0e}")


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
