"""Parameter sweeps: a grid over any config field × seeds, reduced to statistics, run on Dask.

A sweep file has a `[base]` table (the fields of `tokendyn simulate --config`) and a `[grid]` table
mapping field names to lists; every grid field becomes a dimension of one zarr store. Each point
is simulated and reduced to its statistics over time (`base.stats`: clusters, effective_dim,
energy, …) plus the time to one cluster. Points that differ only in β or in the seed (when the
seed does not draw Q, K, V) run together as one batched tensor computation of B clouds.

Nothing is lost: every finished point is written to the store at once; a rerun skips finished
points; a task whose worker dies is retried elsewhere by Dask; a point that fails (bad parameter,
NaN) is recorded with its error message while the others complete. Nothing hangs: tasks whose
workers keep dying, or no task running for `stall_timeout` seconds, end the sweep with one error
naming the unfinished points, which stay pending for the rerun.

The in-process cluster listens on 127.0.0.1 only, runs no HTTP server (no dashboard) and keeps
Dask's scratch space in a private temporary directory removed on exit.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import tempfile
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr
from distributed import (
    Client,
    KilledWorker,
    Nanny,
    Scheduler,
    SpecCluster,
    Worker,
    as_completed,
)

from tokendyn.app.build import check_size
from tokendyn.app.config import SimulationConfig, load_toml, make_config
from tokendyn.app.pipeline import build_run, simulate_run
from tokendyn.app.progress import progress_bar
from tokendyn.app.store import check_writable
from tokendyn.errors import ConfigError, StoreError, TokendynError

PENDING, DONE, FAILED = 0, 1, 2
ERROR_CHARS = 300
# Fields that fix the common time axis of the store, and fields the sweep sets itself.
TIME_FIELDS = {"t_end", "dt", "save_every"}
RESERVED_FIELDS = {"batch", "stats"}
SCHEDULER_TIMEOUT = "10s"
LOCALHOST = "127.0.0.1"
# Giving up: a task whose worker died more than ALLOWED_FAILURES times (Dask's KilledWorker), or
# every task once none has run for STALL_TIMEOUT seconds; the watchdog looks every POLL_SECONDS.
ALLOWED_FAILURES = 3
STALL_TIMEOUT = 60.0
POLL_SECONDS = 0.25
UNFINISHED_SHOWN = 5  # unfinished points named in the message
POINTS_PER_CHUNK = 4096
MAX_STORE_BYTES = 8 * 2**30  # the store is created whole in memory
# The in-process cluster's workers are our own processes: one torch/OpenMP thread each, set in
# their environment at start (never by changing the caller's process).
WORKER_ENV = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


@dataclass(frozen=True)
class Sweep:
    """A grid of simulations: base config fields plus {field: [values]} (C-order product)."""

    base: dict[str, Any]
    grid: dict[str, list[Any]]

    def __post_init__(self) -> None:
        for table in ("base", "grid"):
            value = getattr(self, table)
            if not isinstance(value, dict):
                raise ConfigError(
                    table,
                    f"is the {type(value).__name__} {value!r}, not a table",
                    f"write a [{table}] table of field = value lines",
                )
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
            if len({_json_value(name, v) for v in values}) != len(values):
                raise ConfigError(name, "has repeated values", "list each value once")
        for name, value in self.base.items():
            _json_value(name, value)
        base_config = make_config(**{**self.base, **{k: v[0] for k, v in self.grid.items()}})
        _check_time_axis(base_config, math.prod(len(v) for v in self.grid.values()))
        object.__setattr__(self, "_reference", base_config)

    @classmethod
    def from_toml(cls, path: str | Path) -> Sweep:
        data = load_toml(path)
        extra = sorted(set(data) - {"base", "grid"})
        if extra:
            raise ConfigError(
                extra[0], "unknown table in the sweep file", "use only [base] and [grid]"
            )
        return cls(base=data.get("base", {}), grid=data.get("grid", {}))

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


def _json_value(field: str, value: Any) -> str:
    """`value` as JSON (the sweep is stored as JSON): a clear error for what JSON cannot hold."""
    try:
        return json.dumps(value)
    except (TypeError, ValueError):
        raise ConfigError(
            field,
            f"{value!r} is not a number, string, boolean or list",
            "write numbers, strings, booleans or lists (TOML dates are not parameters)",
        ) from None


def _check_time_axis(ref: SimulationConfig, points: int) -> None:
    """The store's common time axis: finite t_end and dt, n = t_end/dt ≥ 1 steps, and a store of
    `points` × (n/save_every + 2) frames of every statistic (float64) that fits in
    MAX_STORE_BYTES, since it is created whole."""
    for name in ("t_end", "dt"):
        if not math.isfinite(getattr(ref, name)):
            raise ConfigError(name, f"is {getattr(ref, name)}", f"give a finite {name}")
    steps = ref.t_end / ref.dt
    if not math.isfinite(steps) or round(steps) < 1:
        raise ConfigError(
            "dt",
            f"t_end/dt = {ref.t_end:g}/{ref.dt:g} is not a number of steps ≥ 1",
            "give a dt ≤ t_end that divides it",
        )
    per_point = 8 * (steps / ref.save_every + 2) * len(ref.stats) + 8 + 1 + 4 * ERROR_CHARS
    if points * per_point > MAX_STORE_BYTES:
        raise ConfigError(
            "save_every",
            f"the sweep store would take {points * per_point / 2**30:.3g} GiB "
            f"(the limit is {MAX_STORE_BYTES / 2**30:g} GiB)",
            "raise save_every, shorten t_end, or split the grid into several sweeps",
        )


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


class _NoHTTP:
    """For Dask servers: start no HTTP server (dashboard, metrics, health). Dask starts one on
    every scheduler and worker even when no dashboard is asked for; a sweep needs none, and each
    would be one more unauthenticated listener."""

    def start_http_server(self, *args: Any, **kwargs: Any) -> None:
        return None


class _Scheduler(_NoHTTP, Scheduler):
    """The in-process cluster's scheduler: Dask's, without an HTTP server."""


class _Worker(_NoHTTP, Worker):
    """The in-process cluster's worker: Dask's, without an HTTP server."""


@contextlib.contextmanager
def dask_client(workers: int, scheduler: str | None) -> Iterator[Any]:
    """A distributed Client on `scheduler`, or on an in-process cluster of `workers` processes.

    The in-process cluster listens on 127.0.0.1 only (scheduler, nannies and workers; no HTTP
    server, so no dashboard), keeps Dask's scratch space in a private temporary directory that is
    removed on exit, gives up on a task whose worker died more than ALLOWED_FAILURES times
    (KilledWorker), and starts its workers with WORKER_ENV."""
    if scheduler is not None:
        try:
            client = Client(scheduler, timeout=SCHEDULER_TIMEOUT)
        except (OSError, TimeoutError) as err:
            raise ConfigError(
                "scheduler",
                f"cannot reach {scheduler} ({err})",
                "start `dask scheduler` (and workers) there, or omit --scheduler",
            ) from None
        except (ValueError, TypeError) as err:
            raise ConfigError(
                "scheduler",
                f"{scheduler!r} is not a Dask scheduler address ({err})",
                "write it as tcp://host:port, e.g. tcp://127.0.0.1:8786",
            ) from None
        with client:
            yield client
        return
    _check_positive("workers", workers)
    with (
        tempfile.TemporaryDirectory(prefix="tokendyn-dask-", ignore_cleanup_errors=True) as scratch,
        _local_cluster(workers, scratch) as cluster,
        Client(cluster) as client,
    ):
        yield client


def _local_cluster(workers: int, scratch: str) -> Any:
    """A started SpecCluster: a _Scheduler and `workers` nannies of one-thread _Workers, all on
    127.0.0.1, each worker with 1/workers of the memory (as LocalCluster gives)."""
    scheduler = {
        "cls": _Scheduler,
        "options": {
            "host": LOCALHOST,
            "port": 0,
            "protocol": "tcp://",
            "dashboard": False,
            "allowed_failures": ALLOWED_FAILURES,
            "local_directory": scratch,
        },
    }
    worker = {
        "cls": Nanny,
        "options": {
            "host": LOCALHOST,
            "protocol": "tcp://",
            "nthreads": 1,
            "env": WORKER_ENV,
            "local_directory": scratch,
            "memory_limit": 1 / workers,
            "worker_class": _Worker,
            "silence_logs": logging.CRITICAL,
        },
    }
    try:
        return SpecCluster(
            scheduler=scheduler,
            workers=dict.fromkeys(range(workers), worker),
            worker=worker,
            silence_logs=logging.CRITICAL,
        )
    except Exception as err:  # a worker killed while starting, no memory, no port, …
        raise ConfigError(
            "workers",
            f"the local Dask cluster did not start ({_one_line(err)})",
            "rerun; if it fails again, try fewer --workers or check free memory",
        ) from None


def run_sweep(
    sweep: Sweep,
    out: str | Path,
    *,
    workers: int = 1,
    scheduler: str | None = None,
    batch: bool = True,
    max_batch: int = 256,
    progress: bool = False,
    stall_timeout: float = STALL_TIMEOUT,
    allow_large: bool = False,
) -> xr.Dataset:
    """Run every unfinished point of `sweep` into the store at `out`; returns its Dataset.

    Gives up, with one ConfigError naming the unfinished points (they stay pending, so a rerun
    resumes them), when tasks lose their worker more often than the scheduler allows, or when no
    task has run for `stall_timeout` seconds (no worker alive, or none running our tasks).
    Before any work, `out` must be writable and every batched task's memory estimate (its points
    as one batch, frames kept in memory) must fit, unless allow_large."""
    check_writable(out)
    _check_positive("max_batch", max_batch)
    _check_positive("stall_timeout", stall_timeout)
    if scheduler is None:
        _check_positive("workers", workers)
    if not allow_large:
        _check_memory(sweep, batch, max_batch)
    unfinished: dict[int, str] = {}
    with contextlib.ExitStack() as stack:
        # An explicit scheduler is checked (address, reachable) before anything is written.
        client = (
            stack.enter_context(dask_client(workers, scheduler)) if scheduler is not None else None
        )
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
        advance = stack.enter_context(progress_bar(len(runnable), "sweep", "points", progress))
        if groups:
            if client is None:
                client = stack.enter_context(dask_client(workers, None))
            unfinished = _run_groups(client, sweep, store, groups, advance, stall_timeout)
    if unfinished:
        raise ConfigError(
            "workers" if scheduler is None else "scheduler",
            f"gave up with {len(unfinished)} of {sweep.size} points unfinished "
            f"({'; '.join(sorted(set(unfinished.values())))}): {_describe(sweep, unfinished)}; "
            f"they stay pending in {store.path}",
            "rerun the same command to resume them; if workers keep dying, give each more "
            "memory (fewer --workers, a smaller --max-batch)",
        )
    return open_sweep(store.path)


def _check_memory(sweep: Sweep, batch: bool, max_batch: int) -> None:
    """Refuse a sweep one of whose tasks (its points as one batch, every frame kept in memory)
    would need more memory than is available (`check_size`); invalid points are left to be
    recorded as failed."""
    for group in sweep.groups(list(range(sweep.size)), batch, max_batch):
        try:
            cfg = make_config(**{**sweep.base, **sweep.point(group[0])})
        except ConfigError:
            continue
        check_size(
            cfg.model_copy(update={"batch": cfg.batch * len(group)}),
            keep_frames=True,
            fix="lower n, d or the grid's batched values per task (--max-batch), raise "
            "save_every, or pass --allow-large",
        )


def _run_groups(
    client: Any,
    sweep: Sweep,
    store: SweepStore,
    groups: list[list[int]],
    advance: Any,
    stall_timeout: float,
) -> dict[int, str]:
    """Run each group as one task; store each as it finishes (results, or the task's error for
    every point of the group). Returns {point: why} for the points left unfinished: tasks whose
    workers kept dying (KilledWorker) or that were cancelled (scheduler lost), and every task
    still waiting once none has run for `stall_timeout` seconds."""
    futures = {
        client.submit(run_points, sweep.base, [sweep.point(i) for i in g], pure=False): g
        for g in groups
    }
    finished = as_completed(futures, loop=client.loop)
    unfinished: dict[int, str] = {}
    last_run = time.monotonic()
    while not finished.is_empty():
        ready = finished.next_batch(block=False)
        for future in ready:
            group = futures.pop(future)
            if future.status == "finished":
                store.write(group, future.result())
            elif future.status == "cancelled":
                unfinished.update(dict.fromkeys(group, "their tasks were cancelled"))
                continue
            elif isinstance(error := future.exception(), KilledWorker):
                unfinished.update(dict.fromkeys(group, "their workers kept dying"))
                continue
            else:
                store.write(group, [{"error": _one_line(error)[:ERROR_CHARS]}] * len(group))
            advance(len(group))
        alive, running = _activity(client, futures) if futures and not ready else (1, True)
        if ready or running:
            last_run = time.monotonic()
        elif time.monotonic() - last_run > stall_timeout:
            why = "no worker alive" if not alive else "no worker ran them"
            for group in futures.values():
                unfinished.update(dict.fromkeys(group, f"{why} for {stall_timeout:g} s"))
            client.cancel(list(futures))
            break
        else:
            time.sleep(POLL_SECONDS)
    return unfinished


def _activity(client: Any, futures: dict[Any, list[int]]) -> tuple[int, bool]:
    """(workers alive, whether one of them runs one of `futures`), as the scheduler sees it;
    (0, False) when the scheduler does not answer."""
    try:
        processing = client.processing()
    except (OSError, TimeoutError):
        return 0, False
    keys = {future.key for future in futures}
    return len(processing), any(key in keys for ks in processing.values() for key in ks)


def _describe(sweep: Sweep, points: dict[int, str] | list[int]) -> str:
    """The grid values of the first UNFINISHED_SHOWN `points`, 'and N more' for the rest."""
    indices = sorted(points)
    shown = "; ".join(
        ", ".join(f"{k}={_json_value(k, v)}" for k, v in sweep.point(i).items())
        for i in indices[:UNFINISHED_SHOWN]
    )
    more = len(indices) - UNFINISHED_SHOWN
    return shown + (f" and {more} more" if more > 0 else "")


def _check_positive(field: str, value: float) -> None:
    if not value > 0:
        raise ConfigError(field, f"is {value}", f"give {field} > 0")


def _one_line(error: BaseException) -> str:
    """'Type: message' on one line, without a final full stop."""
    return " ".join(f"{type(error).__name__}: {error}".split()).rstrip(".")


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
