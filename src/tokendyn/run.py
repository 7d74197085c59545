"""Run a configured simulation end to end: build, integrate, store incrementally, resume."""

from __future__ import annotations

import json
from pathlib import Path

import torch
import xarray as xr

from . import __version__
from .config import SimulationConfig
from .errors import StoreError
from .factory import DTYPES, build, resolve_device
from .integrate import Statistic, simulate
from .observables import get_observable
from .store import ZarrSink, open_run, prepare_new_store, stored_config, truncate_incomplete_frames

# Fields that may differ between a stored run and its resumption.
RESUMABLE_CHANGES = {"t_end"}


def statistics(cfg: SimulationConfig) -> dict[str, Statistic]:
    """The configured statistics, bound to the run's β and cluster threshold."""
    out = {}
    for name in cfg.stats:
        fn = get_observable(name)
        out[name] = lambda x, fn=fn: fn(x, beta=cfg.beta, threshold=cfg.cluster_threshold)
    return out


def run_simulation(
    cfg: SimulationConfig,
    out: str | Path | None = None,
    *,
    resume: bool = False,
    overwrite: bool = False,
    progress: bool = False,
) -> xr.Dataset:
    """Simulate `cfg`; with `out`, every saved frame is appended to a zarr store as it is made.

    resume=True continues an interrupted store from its last saved step (its config must match,
    t_end may grow). Returns the full Dataset (lazy, from the store, when out is given)."""
    field, space, x0 = build(cfg)
    attrs = {"config": cfg.to_json(), "tokendyn_version": __version__, "field": field.describe()}
    kwargs = dict(
        t_end=cfg.t_end,
        dt=cfg.dt,
        method=cfg.method,
        save_every=cfg.save_every,
        stats=statistics(cfg),
        progress=progress,
        attrs=attrs,
    )
    batched = cfg.batch > 1
    x_start = x0 if batched else x0[0]
    if out is None:
        if resume:
            raise StoreError(
                "resume: there is nothing to resume without --out. Fix: give --out PATH.zarr"
            )
        return simulate(field, space, x_start, **kwargs)
    positions = cfg.mask == "causal"
    # A store killed before its first complete frame holds nothing to resume: start afresh.
    if resume and Path(out).is_dir() and truncate_incomplete_frames(out) == 0:
        overwrite = True
    if resume and Path(out).exists() and not overwrite:
        ds = open_run(out)
        _check_resumable(stored_config(ds), cfg, out)
        last_step = int(ds["step"].values[-1])
        if last_step >= cfg.n_steps:
            return ds
        dtype, device = DTYPES[cfg.dtype], resolve_device(cfg.device)
        x_last = torch.as_tensor(ds["x"].isel(time=-1).values, dtype=dtype, device=device)
        sink = ZarrSink(out, batched=batched, attrs=attrs, positions=positions, append=True)
        simulate(field, space, x_last, sink=sink, start_step=last_step, keep=False, **kwargs)
        return open_run(out)
    path = prepare_new_store(out, overwrite)
    sink = ZarrSink(path, batched=batched, attrs=attrs, positions=positions)
    simulate(field, space, x_start, sink=sink, keep=False, **kwargs)
    return open_run(path)


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
