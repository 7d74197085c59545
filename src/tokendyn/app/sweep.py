"""Parameter sweeps: a grid over any config field × seeds, reduced to statistics, run on Dask.

A sweep file has a `[base]` table (the fields of `tokendyn simulate --config`) and a `[grid]` table
mapping field names to lists; every grid field becomes a dimension of one zarr store. Each point
is simulated and reduced to its statistics over time (`base.stats`: clusters, effective_dim,
energy, …) plus the time to one cluster. Points that differ only in β or in the seed (when the
seed does not draw Q, K, V) run together as one batched tensor computation of B clouds.

Nothing is lost: every finished point is written to the store at once; a rerun skips finished
points; a task whose worker dies is retried elsewhere by Dask; a point that fails (bad parameter,
NaN) is recorded with its error message while the others complete.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

from tokendyn.app.config import SimulationConfig, load_toml, make_config
from tokendyn.app.pipeline import build_run, simulate_run
from tokendyn.app.progress import progress_bar
from tokendyn.errors import ConfigError, StoreError, TokendynError

PENDING, DONE, FAILED = 0, 1, 2
ERROR_CHARS = 300
# Fields that fix the common time axis of the store, and fields the sweep sets itself.
TIME_FIELDS = {"t_end", "dt", "save_every"}
RESERVED_FIELDS = {"batch", "stats"}
SCHEDULER_TIMEOUT = "10s"
POINTS_PER_CHUNK = 4096
# The in-process cluster's workers are our own processes: one torch/OpenMP thread each, set in
# their environment at start (never by changing the caller's process).
WORKER_ENV = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


@dataclass(frozen=True)
class Sweep:
    """A grid of simulations: base config fields plus {field: [values]} (C-order product)."""

    base: dict[str, Any]
    grid: dict[str, list[Any]]

    def __post_init__(self) -> None:
        fields = SimulationConfig.model_fields
        for name in [*self.base, *self.grid]:
            if name not in fields:
                raise ConfigError(
                    name,
                    "unknown field in the sweep file",
                    f"use fields of `tokendyn simulate --config`: {', '.join(fields)}",
                )
        if not self.grid:
            raise ConfigError("grid", "is empty", "give at least one field, e.g. beta = [1.0, 4.0]")
        for name, values in self.grid.items():
            if not isinstance(values, list) or not values:
                raise ConfigError(
                    name,
                    "grid entries must be non-empty lists",
                    f"write e.g. {name} = [value1, value2]",
                )
            if name in TIME_FIELDS | RESERVED_FIELDS:
                raise ConfigError(
                    name,
                    "cannot be swept (it fixes the store's time axis or is set by the sweep)",
                    "move it to [base]; run separate sweeps to vary it",
                )
            if len({json.dumps(v) for v in values}) != len(values):
                raise ConfigError(name, "has repeated values", "list each value once")
        base_config = make_config(**{**self.base, **{k: v[0] for k, v in self.grid.items()}})
        object.__setattr__(self, "_reference", base_config)

    @classmethod
    def from_toml(cls, path: str | Path) -> Sweep:
        data = load_toml(path)
        extra = sorted(set(data) - {"base", "grid"})
        if extra:
            raise ConfigError(
                extra[0], "unknown table in the sweep file", "use only [base] and [grid]"
            )
        return cls(base=dict(data.get("base", {})), grid=dict(data.get("grid", {})))

    @property
    def reference(self) -> SimulationConfig:
        """The config of the first point (its time axis and statistics hold for every point)."""
        return self._reference  # type: ignore[attr-defined]

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(len(v) for v in self.grid.values())

    @property
    def size(self) -> int:
        return math.prod(self.shape)

    def point(self, index: int) -> dict[str, Any]:
        """The grid values of point `index` (C order over the grid fields)."""
        where = np.unravel_index(index, self.shape)
        return {name: values[i] for (name, values), i in zip(self.grid.items(), where, strict=True)}

    def to_json(self) -> str:
        return json.dumps({"base": self.base, "grid": self.grid}, sort_keys=True)

    def batchable(self) -> set[str]:
        """Grid fields that can vary inside one batched computation: β always, the seed when it
        draws only the cloud (Q = K = V = I or explicit matrices); nothing for block fields."""
        ref = self.reference
        if ref.uses_blocks:
            return set()
        seed_draws_matrices = ref.qkv != "identity" and None in (ref.Q, ref.K, ref.V)
        return {"beta"} | (set() if seed_draws_matrices else {"seed"})

    def groups(self, indices: list[int], batch: bool, max_batch: int) -> list[list[int]]:
        """Point indices grouped so each group shares every non-batchable field."""
        if not batch:
            return [[i] for i in indices]
        free = self.batchable()
        keyed: dict[str, list[int]] = {}
        for i in indices:
            key = json.dumps(
                {k: v for k, v in self.point(i).items() if k not in free}, sort_keys=True
            )
            keyed.setdefault(key, []).append(i)
        return [g[s : s + max_batch] for g in keyed.values() for s in range(0, len(g), max_batch)]


# ---------------------------------------------------------------------------------------------
# one task: a group of points simulated as one batch


def run_points(base: dict[str, Any], points: list[dict[str, Any]]) -> list[dict]:
    """Simulate `points` (grid values on top of `base`) as one batch; reduce each to statistics.

    If the batch fails, the points run one by one so that only the failing ones record an error.
    The thread count is the worker's own (the in-process cluster starts its workers with one)."""
    try:
        return _run_batch(base, points)
    except (TokendynError, RuntimeError, ValueError) as err:
        if len(points) == 1:
            return [{"error": f"{type(err).__name__}: {err}"[:ERROR_CHARS]}]
        return [r for p in points for r in run_points(base, [p])]


def _run_batch(base: dict[str, Any], points: list[dict[str, Any]]) -> list[dict]:
    system = build_run([make_config(**{**base, **p}) for p in points])
    ds = simulate_run(system)
    assert ds is not None  # simulate keeps the frames unless asked not to
    n_time = ds.sizes["time"]
    series = {name: ds[name].values.reshape(n_time, len(points)) for name in system.stats}
    times = ds["time"].values
    results = []
    for b in range(len(points)):
        values = {name: s[:, b].astype(np.float64) for name, s in series.items()}
        one = np.flatnonzero(values["clusters"] == 1) if "clusters" in values else []
        values["time_to_one_cluster"] = float(times[one[0]]) if len(one) else math.nan
        results.append(values)
    return results


# ---------------------------------------------------------------------------------------------
# the store


class SweepStore:
    """One zarr store: every statistic over (grid dims…, time), status and error per point."""

    def __init__(self, path: Path, sweep: Sweep) -> None:
        self.path, self.sweep = path, sweep
        self.dims = list(sweep.grid)

    @classmethod
    def open_or_create(cls, path: str | Path, sweep: Sweep) -> SweepStore:
        p = Path(path)
        store = cls(p, sweep)
        if p.exists():
            try:
                with _quiet_zarr():
                    stored = xr.open_zarr(p, consolidated=False).attrs.get("sweep")
            except Exception as err:
                raise StoreError(
                    f"out: {p} exists and is not a sweep store ({err}). "
                    "Fix: choose another --out path"
                ) from None
            if stored != sweep.to_json():
                raise StoreError(
                    f"out: {p} holds a different sweep; nothing was overwritten. "
                    "Fix: rerun with the same sweep file, or choose another --out path"
                )
            return store
        store._create()
        return store

    def _create(self) -> None:
        ref = self.sweep.reference
        times = np.array(sorted({*range(0, ref.n_steps + 1, ref.save_every), ref.n_steps})) * ref.dt
        grid_shape = self.sweep.shape
        variables: dict[str, Any] = {
            name: ([*self.dims, "time"], np.full((*grid_shape, len(times)), np.nan))
            for name in ref.stats
        }
        variables["time_to_one_cluster"] = (self.dims, np.full(grid_shape, np.nan))
        variables["status"] = (self.dims, np.full(grid_shape, PENDING, dtype=np.int8))
        variables["error"] = (self.dims, np.full(grid_shape, "", dtype=f"<U{ERROR_CHARS}"))
        coords = {name: _coordinate(values) for name, values in self.sweep.grid.items()}
        coords["time"] = times
        ds = xr.Dataset(
            variables,
            coords=coords,
            attrs={
                "sweep": self.sweep.to_json(),
                "status_codes": json.dumps({"pending": PENDING, "done": DONE, "failed": FAILED}),
            },
        )
        chunks = dict(zip(self.dims, _grid_chunks(grid_shape), strict=True), time=len(times))
        encoding = {v: {"chunks": tuple(chunks[d] for d in ds[v].dims)} for v in ds.data_vars}
        with _quiet_zarr():
            ds.to_zarr(self.path, mode="w-", encoding=encoding, consolidated=False)

    def _group(self):
        import zarr

        if getattr(self, "_zarr", None) is None:
            self._zarr = zarr.open_group(str(self.path), mode="r+")
        return self._zarr

    def status(self) -> np.ndarray:
        return self._group()["status"][...].reshape(-1)

    def write(self, indices: list[int], results: list[dict]) -> None:
        """Write finished points (statistics, or their error) at their grid positions: one
        coordinate-indexed write per array; `status` last, so a kill leaves them pending."""
        group = self._group()
        done = [(i, r) for i, r in zip(indices, results, strict=True) if "error" not in r]
        failed = [(i, r) for i, r in zip(indices, results, strict=True) if "error" in r]
        with _quiet_zarr():
            if done:
                where = np.unravel_index([i for i, _ in done], self.sweep.shape)
                for name in done[0][1]:
                    values = np.stack([np.asarray(r[name]) for _, r in done])
                    group[name].vindex[_with_time(where, values)] = values.reshape(-1)
                group["error"].vindex[where] = np.full(len(done), "")
                group["status"].vindex[where] = np.full(len(done), DONE, dtype=np.int8)
            if failed:
                where = np.unravel_index([i for i, _ in failed], self.sweep.shape)
                group["error"].vindex[where] = np.array([r["error"] for _, r in failed])
                group["status"].vindex[where] = np.full(len(failed), FAILED, dtype=np.int8)


def _grid_chunks(shape: tuple[int, ...], points: int = POINTS_PER_CHUNK) -> tuple[int, ...]:
    """Chunk sizes along the grid dimensions holding up to `points` points (trailing dims first).
    Only the client writes and zarr replaces a chunk atomically, so points may share chunks."""
    chunks = []
    for size in reversed(shape):
        chunks.append(max(1, min(size, points)))
        points = max(1, points // chunks[-1])
    return tuple(reversed(chunks))


def _with_time(where: tuple[np.ndarray, ...], values: np.ndarray) -> tuple[np.ndarray, ...]:
    """Point coordinates extended over a trailing time axis (zarr coordinate selections name every
    dimension)."""
    if values.ndim == 1:
        return where
    steps = values.shape[1]
    return (*(np.repeat(w, steps) for w in where), np.tile(np.arange(steps), len(where[0])))


def _coordinate(values: list[Any]) -> np.ndarray:
    if all(isinstance(v, bool | int | float) for v in values):
        return np.asarray(values)
    return np.asarray([v if isinstance(v, str) else json.dumps(v) for v in values])


@contextlib.contextmanager
def _quiet_zarr() -> Iterator[None]:
    with warnings.catch_warnings():
        # zarr v3 notes that fixed-width strings (the error messages) have no v3 spec yet.
        warnings.filterwarnings("ignore", message=".*Zarr V3 specification.*")
        yield


# ---------------------------------------------------------------------------------------------
# running


@contextlib.contextmanager
def dask_client(workers: int, scheduler: str | None) -> Iterator[Any]:
    """A distributed Client: an in-process LocalCluster of `workers` processes, or `scheduler`."""
    from distributed import Client, LocalCluster

    if scheduler is not None:
        try:
            client = Client(scheduler, timeout=SCHEDULER_TIMEOUT)
        except (OSError, TimeoutError) as err:
            raise ConfigError(
                "scheduler",
                f"cannot reach {scheduler} ({err})",
                "start `dask scheduler` (and workers) there, or omit --scheduler",
            ) from None
        with client:
            yield client
        return
    if workers < 1:
        raise ConfigError("workers", f"is {workers}", "use --workers 1 or more")
    with (
        LocalCluster(
            n_workers=workers,
            threads_per_worker=1,
            env=WORKER_ENV,
            processes=True,
            dashboard_address=None,
            silence_logs=logging.ERROR,
        ) as cluster,
        Client(cluster) as client,
    ):
        yield client


def run_sweep(
    sweep: Sweep,
    out: str | Path,
    *,
    workers: int = 1,
    scheduler: str | None = None,
    batch: bool = True,
    max_batch: int = 256,
    progress: bool = False,
) -> xr.Dataset:
    """Run every unfinished point of `sweep` into the store at `out`; returns its Dataset."""
    from distributed import as_completed

    if max_batch < 1:
        raise ConfigError("max_batch", f"is {max_batch}", "use 1 or more")
    store = SweepStore.open_or_create(out, sweep)
    todo = [int(i) for i in np.flatnonzero(store.status() != DONE)]
    runnable = []
    for i in todo:  # bad parameter values are recorded at once; the others run
        try:
            make_config(**{**sweep.base, **sweep.point(i)})
            runnable.append(i)
        except ConfigError as err:
            store.write([i], [{"error": f"ConfigError: {err}"[:ERROR_CHARS]}])
    groups = sweep.groups(runnable, batch, max_batch)
    with progress_bar(len(runnable), "sweep", "points", progress) as advance:
        if groups or scheduler is not None:  # an explicit scheduler is always checked
            with dask_client(workers, scheduler) as client:
                futures = {
                    client.submit(
                        run_points, sweep.base, [sweep.point(i) for i in g], pure=False
                    ): g
                    for g in groups
                }
                for future in as_completed(futures):
                    group = futures[future]
                    try:
                        results = future.result()
                    except Exception as err:
                        results = [{"error": f"{type(err).__name__}: {err}"[:ERROR_CHARS]}] * len(
                            group
                        )
                    store.write(group, results)
                    advance(len(group))
    return open_sweep(store.path)


def open_sweep(path: str | Path) -> xr.Dataset:
    """A sweep store as a Dataset (grid dims…, time), with clear errors."""
    p = Path(path)
    if not p.exists():
        raise StoreError(
            f"store: nothing at {p}. Fix: give the --out path of a `tokendyn sweep` run"
        )
    try:
        with _quiet_zarr():
            ds = xr.open_zarr(p, consolidated=False).load()
    except Exception as err:
        raise StoreError(f"store: {p} is not a readable sweep store ({err})") from None
    if "sweep" not in ds.attrs:
        raise StoreError(
            f"store: {p} is not a sweep store. Fix: point at a `tokendyn sweep` output"
        )
    return ds
