"""The `tokendyn` command line (typer): simulate, plot, animate, export, bench, reproduce."""

from __future__ import annotations

import functools
import json
import os
import sys
from collections.abc import Callable
from enum import Enum
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from .cli_closure import register as register_closure
from .cli_dmft import register as register_dmft
from .cli_icl import register as register_icl
from .cli_multiscale import register as register_multiscale
from .errors import TokendynError

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="tokendyn: transformers as interacting particle systems (tokens = particles).",
)
err_console = Console(stderr=True)


def friendly_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Show input errors as one clear line (exit code 2) instead of a traceback."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except TokendynError as err:
            err_console.print(f"[bold red]error:[/] {err}", highlight=False, soft_wrap=True)
            raise typer.Exit(code=2) from None

    return wrapper


def _numbers(field: str, text: str | None) -> list[float] | None:
    """'0, 2.1,4' → [0.0, 2.1, 4.0], with a clear error naming the flag."""
    if text is None:
        return None
    try:
        return [float(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise TokendynError(
            f"{field}: {text!r} is not a comma-separated list of numbers. Fix: write e.g. 0,2.1,4.2"
        ) from None


def _choices(*names: str) -> type[Enum]:
    return Enum("Choice", {n: n for n in names}, type=str)  # type: ignore[return-value]


Attention = _choices("softmax", "l2", "sinkhorn", "sigmoid")
MaskChoice = _choices("none", "causal")
Normalise = _choices("softmax", "n")
SpaceChoice = _choices("sphere", "euclidean")
Qkv = _choices("identity", "random")
Method = _choices("euler", "heun", "rk4")
Dtype = _choices("float64", "float32")
Device = _choices("cpu", "cuda")
Init = _choices("uniform", "wrapped-normal", "mixture")
BackendChoice = _choices("auto", "dense", "tiled", "sdpa")


@app.command()
@friendly_errors
def simulate(
    attention: Annotated[Attention | None, typer.Option(help="attention variant")] = None,
    heads: Annotated[
        int | None, typer.Option("--heads", help="number of heads H (divides d)")
    ] = None,
    mask: Annotated[MaskChoice | None, typer.Option(help="none or causal")] = None,
    normalise: Annotated[
        Normalise | None, typer.Option(help="softmax (partition function) or n (divide by N)")
    ] = None,
    space: Annotated[SpaceChoice | None, typer.Option(help="sphere or euclidean")] = None,
    n: Annotated[int | None, typer.Option("--n", help="number of tokens N")] = None,
    d: Annotated[int | None, typer.Option("--d", help="token dimension d")] = None,
    beta: Annotated[float | None, typer.Option(help="inverse temperature β > 0")] = None,
    qkv: Annotated[Qkv | None, typer.Option(help="identity or random Q, K, V")] = None,
    seed: Annotated[int | None, typer.Option(help="random seed")] = None,
    t_end: Annotated[float | None, typer.Option("--t-end", help="final time")] = None,
    dt: Annotated[float | None, typer.Option(help="time step")] = None,
    method: Annotated[Method | None, typer.Option(help="euler, heun or rk4")] = None,
    save_every: Annotated[
        int | None, typer.Option("--save-every", help="save every K steps")
    ] = None,
    dtype: Annotated[Dtype | None, typer.Option(help="float64 or float32")] = None,
    device: Annotated[Device | None, typer.Option(help="cpu or cuda")] = None,
    backend: Annotated[BackendChoice | None, typer.Option(help="kernel backend")] = None,
    batch: Annotated[int | None, typer.Option(help="independent clouds simulated together")] = None,
    beta_law: Annotated[
        str | None, typer.Option("--beta-law", help="β from N: 'c*log(N)' or 'c*N**a'")
    ] = None,
    init: Annotated[Init | None, typer.Option(help="uniform, wrapped-normal or mixture")] = None,
    init_centers: Annotated[
        str | None, typer.Option("--init-centers", help="angles a,b,… (radians; azimuths on S²)")
    ] = None,
    init_weights: Annotated[
        str | None, typer.Option("--init-weights", help="mixture weights w1,w2,…")
    ] = None,
    init_std: Annotated[
        float | None, typer.Option("--init-std", help="wrapped-normal standard deviation σ₀")
    ] = None,
    config: Annotated[
        Path | None, typer.Option("--config", help="TOML file with the same fields")
    ] = None,
    out: Annotated[
        Path | None, typer.Option("--out", help="zarr store written while the run goes")
    ] = None,
    resume: Annotated[
        bool, typer.Option("--resume", help="continue the run stored at --out")
    ] = False,
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="replace an existing --out store")
    ] = False,
    distributed: Annotated[
        bool, typer.Option("--distributed", help="shard the tokens over torchrun processes")
    ] = False,
    quiet: Annotated[bool, typer.Option("--quiet", help="no progress bar or summary")] = False,
) -> None:
    """Simulate N tokens under self-attention; flags override the --config file."""
    from .config import load_config, make_config
    from .run import run_simulation

    given = {
        k: (v.value if isinstance(v, Enum) else v)
        for k, v in {
            "attention": attention,
            "heads": heads,
            "mask": mask,
            "normalise": normalise,
            "space": space,
            "n": n,
            "d": d,
            "beta": beta,
            "qkv": qkv,
            "seed": seed,
            "t_end": t_end,
            "dt": dt,
            "method": method,
            "save_every": save_every,
            "dtype": dtype,
            "device": device,
            "backend": backend,
            "batch": batch,
            "beta_law": beta_law,
            "init": init,
            "init_centers": _numbers("init_centers", init_centers),
            "init_weights": _numbers("init_weights", init_weights),
            "init_std": init_std,
        }.items()
        if v is not None
    }
    cfg = load_config(config, **given) if config is not None else make_config(**given)
    ds = run_simulation(
        cfg, out, resume=resume, overwrite=overwrite, progress=not quiet, distributed=distributed
    )
    if quiet or (distributed and int(os.environ.get("RANK", "0")) != 0):
        return
    last = ds.isel(time=-1)
    summary = {"t": float(last.time), "frames": int(ds.sizes["time"])}
    for name in cfg.stats:
        if name in ds:
            summary[name] = last[name].values.tolist()
    where = f" → {out}" if out is not None else ""
    Console().print(f"[green]done[/]{where}: {json.dumps(summary)}")


@app.command()
@friendly_errors
def plot(
    run: Annotated[Path, typer.Argument(help="a run store (.zarr) or netCDF export")],
    out: Annotated[
        Path | None, typer.Option("--out", help="folder for the PNGs (default: RUN_figures)")
    ] = None,
) -> None:
    """Figures of a stored run: circle angles, the cloud on S², Gram histograms, statistics."""
    from .plot import plot_run
    from .store import open_run

    ds = open_run(run)
    folder = out or run.with_name(run.stem + "_figures")
    for path in plot_run(ds, folder):
        print(path)


@app.command()
@friendly_errors
def animate(
    run: Annotated[Path, typer.Argument(help="a run store (.zarr) or netCDF export")],
    out: Annotated[
        Path | None, typer.Option("--out", help="output .gif or .mp4 (default: RUN.gif)")
    ] = None,
    fps: Annotated[int, typer.Option(help="frames per second")] = 10,
) -> None:
    """GIF/MP4 of a stored run's cloud over time."""
    from .animate import animate_run
    from .store import open_run

    print(animate_run(open_run(run), out or run.with_suffix(".gif"), fps=fps))


@app.command()
@friendly_errors
def export(
    run: Annotated[Path, typer.Argument(help="a run store (.zarr)")],
    out: Annotated[Path, typer.Argument(help="netCDF file to write (.nc)")],
) -> None:
    """Export a zarr run store to one netCDF file."""
    from .store import export_netcdf, open_run

    print(export_netcdf(open_run(run), out))


@app.command()
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
    quiet: Annotated[bool, typer.Option("--quiet", help="no progress bar or summary")] = False,
) -> None:
    """Run a parameter grid on Dask; every finished point is stored at once, reruns resume."""
    from .sweep import DONE, FAILED, Sweep, run_sweep

    spec = Sweep.from_toml(sweep_file)
    ds = run_sweep(
        spec,
        out,
        workers=workers,
        scheduler=scheduler,
        batch=batch,
        max_batch=max_batch,
        progress=not quiet,
    )
    if not quiet:
        status = ds["status"].values
        Console().print(
            f"[green]{int((status == DONE).sum())}/{status.size} points done[/], "
            f"{int((status == FAILED).sum())} failed → {out}"
        )


@app.command("plot-phase")
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
    from .plot import plot_phase
    from .sweep import open_sweep

    chosen = {}
    for item in select or []:
        name, sep, value = item.partition("=")
        if not sep:
            raise TokendynError(f"select: {item!r} is not NAME=VALUE. Fix: write e.g. --select d=3")
        chosen[name] = json.loads(value) if value[:1] in "-0123456789[{" else value
    path = out or store.with_name(f"{store.stem}_{stat}_{x}_{y}.png")
    plot_phase(open_sweep(store), x, y, stat, select=chosen, path=path)
    print(path)


@app.command()
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
    sweep_points: Annotated[
        int, typer.Option("--sweep", help="instead: sweep throughput for this many N=64 systems")
    ] = 0,
) -> None:
    """Throughput of every backend: pairs/s, fraction of this machine's measured peak, memory."""
    from .bench import bench_large, bench_sweep, format_table, run_bench

    if sweep_points:
        for row in bench_sweep(points=sweep_points):
            line = (
                f"{row['points']} systems, {row['workers']} worker(s), batch={row['batch']}: "
                f"{row['seconds']:.1f} s, {row['simulations_per_min']:.0f} simulations/min"
            )
            print(json.dumps(row) if as_json else line, flush=True)
        return

    kwargs: dict[str, Any] = {"device": device, "repeats": repeats}
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


@app.command()
@friendly_errors
def reproduce(
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
    from .report import write_report

    summary = write_report(out, quick=quick, only=section)
    failed = [c["name"] for c in summary if not c["passed"]]
    Console().print(
        f"{len(summary) - len(failed)}/{len(summary)} checks passed → {out / 'index.html'}"
    )
    if failed:
        err_console.print(f"[bold red]failed:[/] {', '.join(failed)}")
        raise typer.Exit(code=1)


for _register in (register_closure, register_dmft, register_icl, register_multiscale):
    _register(app)


def main() -> None:  # pragma: no cover - console entry point
    app(sys.argv[1:])
