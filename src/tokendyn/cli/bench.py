"""`tokendyn bench`: throughput of every kernel backend; `--small`: small systems against NumPy;
`--calibrate`: rerun auto's backend calibration. The only place that sets torch's thread count
(around the single-thread timings of --small, restored after)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Annotated, Any

import typer

from tokendyn.cli._common import friendly_errors


@friendly_errors
def bench(
    as_json: Annotated[bool, typer.Option("--json", help="one JSON object per line")] = False,
    n: Annotated[list[int] | None, typer.Option("--n", help="token counts (repeatable)")] = None,
    d: Annotated[list[int] | None, typer.Option("--d", help="dimensions (repeatable)")] = None,
    dtype: Annotated[
        list[str] | None, typer.Option("--dtype", help="float32/float64 (repeatable)")
    ] = None,
    backend: Annotated[
        list[str] | None, typer.Option("--backend", help="dense/tiled/sdpa/naive (repeatable)")
    ] = None,
    device: Annotated[str, typer.Option(help="cpu or cuda")] = "cpu",
    repeats: Annotated[int, typer.Option(help="timed repeats (best is kept)")] = 3,
    large: Annotated[
        bool, typer.Option("--large", help="also one Euler step at N=200 000, d=3")
    ] = False,
    backward: Annotated[
        bool, typer.Option(help="also time the backward pass (backward_pairs_per_s)")
    ] = True,
    sweep_points: Annotated[
        int, typer.Option("--sweep", help="instead: sweep throughput for this many N=64 systems")
    ] = 0,
    small: Annotated[
        bool,
        typer.Option(
            "--small",
            help="instead: per-step cost of small systems (N 8…8192, d 2/3/8) against a NumPy "
            "loop, 1 thread and default threads, and auto's pick per shape (--n/--d/--dtype "
            "restrict it)",
        ),
    ] = False,
    calibrate: Annotated[
        bool,
        typer.Option("--calibrate", help="instead: rerun auto's backend calibration, print it"),
    ] = False,
) -> None:
    """Throughput of every backend: pairs/s, fraction of this machine's measured peak, memory."""
    from tokendyn.bench.throughput import bench_large, bench_sweep, format_table, run_bench

    if calibrate:
        _calibrate(as_json, dtype)
        return
    if small:
        _small(as_json, n, d, dtype)
        return

    if sweep_points:
        for row in bench_sweep(points=sweep_points):
            line = (
                f"{row['points']} systems, {row['workers']} worker(s), batch={row['batch']}: "
                f"{row['seconds']:.1f} s, {row['simulations_per_min']:.0f} simulations/min"
            )
            print(json.dumps(row) if as_json else line, flush=True)
        return

    kwargs: dict[str, Any] = {"device": device, "repeats": repeats, "backward": backward}
    for key, value in (("ns", n), ("ds", d), ("dtypes", dtype), ("backends", backend)):
        if value:
            kwargs[key] = tuple(value)
    rows = []
    for row in run_bench(**kwargs):
        rows.append(row)
        if as_json:
            print(json.dumps(row), flush=True)
    if large:
        row = bench_large(device=device)
        rows.append(row)
        if as_json:
            print(json.dumps(row), flush=True)
    if not as_json:
        print(format_table(rows))


@contextmanager
def _one_thread() -> Iterator[None]:
    """torch on one thread inside, the caller's setting restored after."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _small(
    as_json: bool, n: list[int] | None, d: list[int] | None, dtype: list[str] | None
) -> None:
    from rich.console import Console

    from tokendyn.bench.small import format_small, run_small

    kwargs: dict[str, Any] = {}
    for key, value in (("ns", n), ("ds", d), ("dtypes", dtype)):
        if value:
            kwargs[key] = tuple(value)
    rows = []
    for row in run_small(single_thread=_one_thread, **kwargs):
        rows.append(row)
        if as_json:
            print(json.dumps(row), flush=True)
    if not as_json:
        Console(width=max(Console().width, 160)).print(format_small(rows))


def _calibrate(as_json: bool, dtype: list[str] | None) -> None:
    from rich.console import Console

    from tokendyn.bench.small import calibration_table

    data, table = calibration_table(*([tuple(dtype)] if dtype else []))
    if as_json:
        print(json.dumps(data), flush=True)
    else:
        Console(width=max(Console().width, 100)).print(table)


def register(app: typer.Typer) -> None:
    app.command()(bench)
