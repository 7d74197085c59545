"""One rich progress bar for long loops (simulation steps, sweep points)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager


@contextmanager
def progress_bar(
    total: int, label: str, unit: str, enabled: bool = True
) -> Iterator[Callable[[int], None]]:
    """Yield advance(n); shows a transient bar when enabled (a no-op otherwise), always closed."""
    if not enabled or total <= 0:
        yield lambda n=1: None
        return
    from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

    bar = Progress(
        TextColumn(label),
        BarColumn(),
        TextColumn(f"{{task.completed}}/{{task.total}} {unit}"),
        TimeRemainingColumn(),
        transient=True,
    )
    task = bar.add_task(unit, total=total)
    with bar:
        yield lambda n=1: bar.advance(task, n)
