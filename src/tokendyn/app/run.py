"""Run a configured simulation end to end: build, integrate, store incrementally, resume."""

from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.distributed as dist
import xarray as xr

from tokendyn._version import __version__
from tokendyn.app.build import check_size, device_of, dtype_of
from tokendyn.app.config import SimulationConfig
from tokendyn.app.pipeline import build_run, simulate_run
from tokendyn.app.store import (
    ZarrSink,
    check_writable,
    open_run,
    prepare_new_store,
    repair_store,
    stored_config,
)
from tokendyn.engine.distributed import ShardedField, process_group
from tokendyn.errors import ConfigError, StoreError

# Fields that may differ between a stored run and its resumption.
RESUMABLE_CHANGES = {"t_end"}


def run_simulation(
    cfg: SimulationConfig,
    out: str | Path | None = None,
    *,
    resume: bool = False,
    overwrite: bool = False,
    progress: bool = False,
    distributed: bool = False,
    allow_large: bool = False,
) -> xr.Dataset:
    """Simulate `cfg`; with `out`, every saved frame is appended to a zarr store as it is made.

    resume=True continues an interrupted store from its last saved step (its config must match,
    t_end may grow). distributed=True (under torchrun) shards the query tokens over the process
    group (see distributed.py). Before anything is allocated or written, the output path must be
    writable and the run's memory estimate (`check_size`) must fit the device unless
    allow_large. Returns the Dataset (lazy, from the store, when out is given)."""
    if resume and out is None:
        raise StoreError(
            "resume: there is nothing to resume without --out. Fix: give --out PATH.zarr"
        )
    if distributed and cfg.mask == "causal":
        raise ConfigError(
            "mask",
            "causal attention is not sharded over processes",
            "run causal attention without --distributed, or use mask = 'none'",
        )
    if out is not None and not resume:
        check_writable(out)
    check_size(cfg, keep_frames=out is None, allow_large=allow_large)
    if not distributed:
        return _run(cfg, out, resume, overwrite, progress, sharded=False)
    with process_group(cfg.device):
        return _run(cfg, out, resume, overwrite, progress, sharded=True)


def _run(
    cfg: SimulationConfig,
    out: str | Path | None,
    resume: bool,
    overwrite: bool,
    progress: bool,
    sharded: bool,
) -> xr.Dataset:
    system = build_run(cfg)
    lead = not sharded or dist.get_rank() == 0  # the one process that writes
    velocity = ShardedField(system.field) if sharded else system.field
    attrs = {"config": cfg.to_json(), "tokendyn_version": __version__, "field": velocity.describe()}
    positions = cfg.mask == "causal"  # store each token's position s_i = i/N
    kwargs = dict(
        velocity=velocity,
        with_stats=lead,
        progress=progress and lead,
        attrs=attrs,
        positions=positions,
    )
    batched = cfg.batch > 1
    if out is None:
        return simulate_run(system, **kwargs)
    start, stored = _prepare_store(cfg, out, resume, overwrite) if lead else (None, None)
    start = [start]
    if sharded:
        dist.broadcast_object_list(start, src=0)  # the others wait until the store is ready
    x_start = None
    if start[0] == "finished":
        return stored if lead else open_run(out)
    committed, start_step = 0, 0
    if start[0] == "append":
        ds = stored if lead else open_run(out)
        committed, start_step = ds.sizes["time"], int(ds["step"].values[-1])
        dtype, device = dtype_of(cfg), device_of(cfg)
        x_start = torch.as_tensor(ds["x"].isel(time=-1).values, dtype=dtype, device=device)
    sink = None
    if lead:
        # The sink skips the resumed-from frame (saved again when it is step 0): no duplicate.
        sink = ZarrSink(
            out,
            batched=batched,
            attrs=attrs,
            positions=positions,
            committed=committed,
            last_step=start_step if committed else -1,
        )
    simulate_run(system, x_start=x_start, sink=sink, start_step=start_step, keep=False, **kwargs)
    if sharded:
        dist.barrier()
    return open_run(out)


def _prepare_store(
    cfg: SimulationConfig, out: str | Path, resume: bool, overwrite: bool
) -> tuple[str, xr.Dataset | None]:
    """'new' (an empty path, made ready), 'append' (resume after the last committed frame) or
    'finished', with the stored Dataset when there is one. Resuming first checks the store and
    cuts off a frame a kill left uncommitted; a damaged or foreign store is refused, never
    restarted."""
    if resume and Path(out).exists() and not overwrite:
        if repair_store(out) == 0:  # tokendyn's own store, stopped before its first frame
            prepare_new_store(out, overwrite=True)
            return "new", None
        ds = open_run(out)
        _check_resumable(stored_config(ds), cfg, out)
        return ("finished" if int(ds["step"].values[-1]) >= cfg.n_steps else "append"), ds
    prepare_new_store(out, overwrite)
    return "new", None


def _check_resumable(stored: dict, cfg: SimulationConfig, out: str | Path) -> None:
    current = json.loads(cfg.to_json())
    differ = sorted(
        k
        for k in set(stored) | set(current)
        if k not in RESUMABLE_CHANGES and stored.get(k) != current.get(k)
    )
    if differ:
        detail = ", ".join(
            f"{k}: stored {stored.get(k)!r} vs now {current.get(k)!r}" for k in differ
        )
        raise StoreError(
            f"resume: the store at {out} was made by a different run ({detail}). "
            "Fix: use the same settings (only t_end may change), or --overwrite"
        )
