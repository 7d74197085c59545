"""`tokendyn simulate` and `tokendyn export`: one run, stored as it goes."""

from __future__ import annotations

import json
import os
from enum import Enum
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from tokendyn.cli._common import choices, friendly_errors, parse_numbers

Attention = choices("softmax", "l2", "sinkhorn", "sigmoid")
MaskChoice = choices("none", "causal")
Normalise = choices("softmax", "n")
SpaceChoice = choices("sphere", "euclidean")
Qkv = choices("identity", "random", "goe", "goe-v", "goe-minus-v", "orthogonal-v")
Method = choices("euler", "heun", "rk4")
Dtype = choices("float64", "float32")
Device = choices("cpu", "cuda")
Init = choices("uniform", "wrapped-normal", "mixture")
BackendChoice = choices("auto", "dense", "tiled", "sdpa")
NormChoice = choices("none", "sphere", "pre-ln", "post-ln", "peri-ln", "ngpt")
NormType = choices("layernorm", "rmsnorm")
MlpChoice = choices("none", "gelu", "relu", "swiglu")
PositionsChoice = choices("none", "alibi", "rope")


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
    qkv: Annotated[
        Qkv | None, typer.Option(help="Q, K, V: identity or an ensemble (docs/blocks.md)")
    ] = None,
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
    norm: Annotated[
        NormChoice | None, typer.Option(help="whole-block normalisation scheme (docs/blocks.md)")
    ] = None,
    norm_type: Annotated[
        NormType | None, typer.Option("--norm-type", help="block norms: layernorm or rmsnorm")
    ] = None,
    mlp: Annotated[MlpChoice | None, typer.Option(help="feed-forward term in each block")] = None,
    mlp_width: Annotated[
        int | None, typer.Option("--mlp-width", help="MLP hidden width (default 4·d)")
    ] = None,
    positions: Annotated[
        PositionsChoice | None, typer.Option(help="positional structure: none, alibi, rope")
    ] = None,
    kv_heads: Annotated[
        int | None, typer.Option("--kv-heads", help="key/value heads (grouped-query attention)")
    ] = None,
    layer_time: Annotated[
        float | None, typer.Option("--layer-time", help="time τ each [[layers]] table acts")
    ] = None,
    resample_every: Annotated[
        float | None, typer.Option("--resample-every", help="redraw the ensemble every T")
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
    allow_large: Annotated[
        bool,
        typer.Option("--allow-large", help="run even if the memory estimate exceeds free memory"),
    ] = False,
) -> None:
    """Simulate N tokens under self-attention; flags override the --config file."""
    from tokendyn.app.config import load_config, make_config
    from tokendyn.app.run import run_simulation

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
            "init_centers": parse_numbers("init_centers", init_centers),
            "init_weights": parse_numbers("init_weights", init_weights),
            "init_std": init_std,
            "norm": norm,
            "norm_type": norm_type,
            "mlp": mlp,
            "mlp_width": mlp_width,
            "positions": positions,
            "kv_heads": kv_heads,
            "layer_time": layer_time,
            "resample_every": resample_every,
        }.items()
        if v is not None
    }
    cfg = load_config(config, **given) if config is not None else make_config(**given)
    ds = run_simulation(
        cfg,
        out,
        resume=resume,
        overwrite=overwrite,
        progress=not quiet,
        distributed=distributed,
        allow_large=allow_large,
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


@friendly_errors
def export(
    run: Annotated[Path, typer.Argument(help="a run store (.zarr)")],
    out: Annotated[Path, typer.Argument(help="netCDF file to write (.nc)")],
) -> None:
    """Export a zarr run store to one netCDF file."""
    from tokendyn.app.store import export_netcdf, open_run

    print(export_netcdf(open_run(run), out))


def register(app: typer.Typer) -> None:
    app.command()(simulate)
    app.command()(export)
