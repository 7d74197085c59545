"""Which backend `auto` uses on this CPU: a short calibration, measured once and cached.

For each dtype (float32, float64) and thread count, the first `auto` call on the CPU times the
forward reduction out_i = Σ_j softmax_j(⟨q_i, k_j⟩) v_j (one cloud, x ~ N(0, 1/d), q = k = v = x)
with the dense, tiled (fused) and sdpa backends on a grid of cells (N in GRID_N, d in GRID_D) and
keeps, per cell, the fastest backend (`pick`: tiled where it is within 10 % of the fastest) and
every timing. Dense is timed only where its N×N score matrix stays small (N ≤ DENSE_MAX_N).
After one warm-up call per backend, each cell runs a fixed plan: REPEATS rounds in which every
backend is timed once (interleaved, so load on a busy machine hits them alike), `loops_for(N)`
calls per timing; the median timing per backend is kept
(not the best: on a busy machine torch's multi-threaded ops stall now and then, and a backend
that is fast only when it is lucky should not win). Cells run small N first; once the timed calls
have taken BUDGET_S, the remaining cells get a single round. About 1 s per dtype on an idle
2-core AVX-512 CPU.

The table is stored as JSON beside the compiled kernel (``$TOKENDYN_CACHE``,
``auto-<key>.json``, key = the kernel's cache key (source, flags, host) and the torch version),
under the directory rules of fused.py (a directory that is not private is not written; a file that
is not a private regular file is not read). A file that fails `validate` (corrupt, foreign,
another format) is ignored and rewritten by a new calibration. ``TOKENDYN_AUTO=off`` turns the
calibration off (the fixed rule `static_choice`); ``TOKENDYN_AUTO=/path/table.json`` uses that
table as is (for reproducible choices; an invalid one is a ConfigError).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import statistics
import tempfile
import threading
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import torch

from tokendyn.engine.kernels import fused
from tokendyn.engine.kernels.base import Backend
from tokendyn.engine.kernels.dense import DenseBackend
from tokendyn.engine.kernels.sdpa import SdpaBackend
from tokendyn.engine.kernels.threads import available_cpus
from tokendyn.engine.kernels.tiled import TiledBackend
from tokendyn.errors import ConfigError

FORMAT = 1
CANDIDATES = ("dense", "tiled", "sdpa")
DTYPES = {"float32": torch.float32, "float64": torch.float64}
GRID_N = (8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096)
GRID_D = (3, 8, 16)
DENSE_MAX_N = 512
REPEATS = 3
LOOP_PAIRS = 1 << 12  # a timing at small N repeats the call until it covers ~this many pairs
PREFER_TILED = 1.10
BUDGET_S = 1.0  # seconds of timed calls per dtype before the remaining cells get a single round
SEED = 0
ENV = "TOKENDYN_AUTO"

# The rule used where there is no table (TOKENDYN_AUTO=off, dtypes other than float32/float64):
# measured on a 2-core AVX-512 CPU (`tokendyn bench`): dense for tiny work, the fused kernel up to
# d = 8, SDPA's GEMM-based flash kernel above.
STATIC_DENSE_MAX_PAIRS = 256**2
STATIC_FUSED_MAX_HEAD_DIM = 8


def pick(timings: dict[str, float]) -> str:
    """The backend to use given a cell's timings: the fastest, except that the tiled (fused)
    backend is kept when it is within PREFER_TILED of the fastest — it sizes its threads by the
    work, while torch's own kernels take every thread even for tiny work and stall when the
    machine is busy; a near-tie is not worth that risk."""
    fastest = min(timings, key=timings.__getitem__)
    tiled = timings.get("tiled")
    return "tiled" if tiled is not None and tiled <= PREFER_TILED * timings[fastest] else fastest


def static_choice(pairs: int, d: int) -> str:
    """The fixed rule: dense for B·Nq·Nk ≤ 256², tiled for d ≤ 8, sdpa above."""
    if pairs <= STATIC_DENSE_MAX_PAIRS:
        return "dense"
    return "tiled" if d <= STATIC_FUSED_MAX_HEAD_DIM else "sdpa"


def loops_for(n: int) -> int:
    """Calls per timing at N tokens: enough that a timing covers ~LOOP_PAIRS pairs (1 from N=64)."""
    return max(1, LOOP_PAIRS // (n * n))


def min_calls() -> int:
    """Timed measurements of one round over every cell."""
    return sum(len(backends_for(n)) for n in GRID_N) * len(GRID_D)


def planned_calls() -> int:
    """Timed measurements one dtype's calibration makes within its budget (warm-ups not
    counted)."""
    return min_calls() * REPEATS


def backends_for(n: int) -> tuple[str, ...]:
    return CANDIDATES if n <= DENSE_MAX_N else ("tiled", "sdpa")


@dataclass
class Table:
    """One dtype's measured cells at one thread count; `best(n, d)` looks a shape up."""

    dtype: str
    threads: int
    seconds: float
    calls: int
    cells: list[dict[str, Any]]
    _memo: dict[tuple[int, int, bool], str] = field(default_factory=dict, repr=False)

    def best(self, n: float, d: int, dense: bool = True) -> str:
        """The fastest backend of the nearest cell (nearest d by log d, then nearest N by log N);
        dense=False: the fastest other than dense."""
        key = (round(n), d, dense)
        hit = self._memo.get(key)
        if hit is None:
            d_cell = min({c["d"] for c in self.cells}, key=lambda c: abs(math.log(c / d)))
            row = [c for c in self.cells if c["d"] == d_cell]
            cell = min(row, key=lambda c: abs(math.log(c["n"] / max(n, 1.0))))
            timings = {b: t for b, t in cell["seconds"].items() if dense or b != "dense"}
            hit = pick(timings) if timings else "tiled"
            self._memo[key] = hit
        return hit

    def to_json(self) -> dict[str, Any]:
        return {
            "dtype": self.dtype,
            "threads": self.threads,
            "seconds": self.seconds,
            "calls": self.calls,
            "cells": self.cells,
        }


def _check(ok: bool, problem: str) -> None:
    if not ok:
        raise ValueError(problem)


def _positive_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def _validate_entry(name: str, entry: Any) -> Table:
    _check(isinstance(entry, dict), f"entry {name} is not an object")
    _check(entry.get("dtype") in DTYPES, f"entry {name}: dtype is not float32/float64")
    _check(_positive_int(entry.get("threads")), f"entry {name}: threads is not an int ≥ 1")
    _check(name == f"{entry['dtype']}:{entry['threads']}", f"entry {name}: name ≠ dtype:threads")
    seconds, calls = entry.get("seconds"), entry.get("calls")
    _check(isinstance(seconds, int | float) and seconds >= 0, f"entry {name}: bad seconds")
    _check(isinstance(calls, int) and calls >= 0, f"entry {name}: bad calls")
    cells = entry.get("cells")
    _check(isinstance(cells, list) and len(cells) > 0, f"entry {name}: cells is not a list")
    for cell in cells:
        _check(isinstance(cell, dict), f"entry {name}: a cell is not an object")
        _check(_positive_int(cell.get("n")) and _positive_int(cell.get("d")), "cell n/d not ≥ 1")
        timings = cell.get("seconds")
        _check(isinstance(timings, dict) and len(timings) > 0, "cell timings missing")
        for backend, t in timings.items():
            _check(backend in CANDIDATES, f"cell timing of unknown backend {backend!r}")
            _check(isinstance(t, int | float) and 0 < t < math.inf, "cell timing not > 0")
        _check(cell.get("best") == pick(timings), "cell best is not what its timings give")
    return Table(entry["dtype"], entry["threads"], float(seconds), calls, cells)


def validate(data: Any, key: str | None = None) -> dict[str, Table]:
    """The tables of a calibration file's JSON object (name "dtype:threads" → Table).

    Raises ValueError naming the first problem: wrong format, a `key` other than the expected one
    (when given), or any entry whose cells are malformed or whose `best` is not `pick(timings)`."""
    _check(isinstance(data, dict), "not a JSON object")
    _check(data.get("format") == FORMAT, f"format is not {FORMAT}")
    if key is not None:
        _check(data.get("key") == key, "made for another kernel, host or torch version")
    entries = data.get("entries")
    _check(isinstance(entries, dict), "entries is not an object")
    return {name: _validate_entry(name, entry) for name, entry in entries.items()}


@cache
def cache_key() -> str:
    """The compiled kernel's cache key (source, flags, host) plus the torch version."""
    kernel = fused._library_name().removesuffix(".so")
    return f"{kernel}-torch{torch.__version__}"


def cache_path() -> Path:
    """Where this host's table lives: beside the compiled kernel, named by a hash of cache_key."""
    digest = hashlib.sha256(cache_key().encode()).hexdigest()[:16]
    return fused.cache_dir() / f"auto-{digest}.json"


def _read(path: Path, key: str | None) -> dict[str, Table]:
    """The validated tables in `path` ({} if missing, not private, unreadable or invalid)."""
    fd = fused._open_private(path)
    if fd is None:
        return {}
    try:
        return validate(json.loads(fused._read_fd(fd).decode()), key)
    except (ValueError, UnicodeDecodeError):
        return {}
    finally:
        os.close(fd)


def document(tables: dict[str, Table]) -> dict[str, Any]:
    """The file's JSON object for `tables` (also a valid TOKENDYN_AUTO table)."""
    return {
        "format": FORMAT,
        "key": cache_key(),
        "torch": torch.__version__,
        "entries": {name: table.to_json() for name, table in sorted(tables.items())},
    }


def _write(path: Path, tables: dict[str, Table]) -> None:
    """Write the file atomically (private mode) if its directory passes fused.py's checks; a
    failed write leaves the cache as it was (the table still serves this process)."""
    if fused._directory_problem(path.parent) is not None:
        return
    tmp = None
    try:
        with tempfile.NamedTemporaryFile(
            "w", dir=path.parent, prefix=".auto-", suffix=".json", delete=False
        ) as f:
            tmp = Path(f.name)
            json.dump(document(tables), f, indent=1)
        tmp.chmod(0o600)
        os.replace(tmp, path)
    except OSError:
        if tmp is not None:
            tmp.unlink(missing_ok=True)


def _cloud(n: int, d: int, dtype: torch.dtype) -> torch.Tensor:
    gen = torch.Generator().manual_seed(SEED)
    return (torch.randn(1, n, d, generator=gen, dtype=torch.float64) / d**0.5).to(dtype)


def _instances() -> dict[str, Backend]:
    tiled = TiledBackend()
    return {"dense": DenseBackend(), "tiled": tiled, "sdpa": SdpaBackend(fallback=tiled)}


def _timed(fn: Callable[[], object], loops: int) -> float:
    """Seconds per call of `loops` calls of fn (one timed measurement)."""
    start = time.perf_counter()
    for _ in range(loops):
        fn()
    return (time.perf_counter() - start) / loops


def calibrate(
    dtype: str, timer: Callable[[Callable[[], object], int], float] | None = None
) -> Table:
    """Measure one dtype's table on the CPU at the caller's thread setting: one warm-up call per
    backend, then per cell (small N first) REPEATS interleaved rounds of timed measurements
    through `timer`, the median kept (it also absorbs a first call's extra cost at a new size).
    Once the timed calls have used BUDGET_S, the remaining cells get one round each: between
    `min_calls()` and `planned_calls()` measurements, whatever the machine's load."""
    timer = timer or _timed
    instances = _instances()
    start = time.perf_counter()
    cells, calls, spent = [], 0, 0.0
    with torch.inference_mode():
        warm = _cloud(GRID_N[0], GRID_D[0], DTYPES[dtype])
        for backend in instances.values():
            backend.attend(warm, warm, warm)  # warm-up (builds the fused kernel on first use)
        for n in GRID_N:
            for d in GRID_D:
                x = _cloud(n, d, DTYPES[dtype])
                units = {
                    b: (lambda b=b, x=x: instances[b].attend(x, x, x)) for b in backends_for(n)
                }
                rounds: dict[str, list[float]] = {name: [] for name in units}
                for _ in range(REPEATS if spent < BUDGET_S else 1):
                    for name, unit in units.items():
                        seconds = timer(unit, loops_for(n))
                        rounds[name].append(seconds)
                        spent += seconds * loops_for(n)
                        calls += 1
                typical = {name: statistics.median(times) for name, times in rounds.items()}
                cells.append({"n": n, "d": d, "best": pick(typical), "seconds": typical})
    return Table(dtype, _threads(), time.perf_counter() - start, calls, cells)


def _threads() -> int:
    return max(1, min(torch.get_num_threads(), available_cpus()))


_LOCK = threading.Lock()
_TABLES: dict[tuple[str, str, str, int], Table | None] = {}


def _source() -> tuple[str, str]:
    """(TOKENDYN_AUTO, TOKENDYN_CACHE): what a table depends on besides dtype and threads (the
    raw settings: resolving the cache path costs a home-directory lookup per call)."""
    return os.environ.get(ENV, ""), os.environ.get("TOKENDYN_CACHE", "")


def _user_table(path: str, dtype: str, threads: int) -> Table | None:
    """The entry for `dtype` in the user's table file (the nearest thread count), None if absent."""
    try:
        tables = validate(json.loads(Path(path).read_text()))
    except (OSError, ValueError, UnicodeDecodeError) as error:
        raise ConfigError(
            ENV,
            f"{path} is not a usable calibration table ({error})",
            "point it at a file written by `tokendyn bench --calibrate --json`, or unset it",
        ) from error
    same = [t for t in tables.values() if t.dtype == dtype]
    return min(same, key=lambda t: abs(t.threads - threads), default=None)


def _cached_or_new(dtype: str, threads: int, refresh: bool) -> Table:
    """This host's table for (dtype, threads): from the cache file unless refresh, else measured
    and written back (under the file lock, so processes starting together calibrate once)."""
    path = cache_path()
    name = f"{dtype}:{threads}"
    if not refresh and name in (tables := _read(path, cache_key())):
        return tables[name]
    locked = fused._directory_problem(path.parent) is None
    with fused._exclusive(path) if locked else nullcontext():
        tables = _read(path, cache_key())
        if not refresh and name in tables:
            return tables[name]
        table = calibrate(dtype)
        tables[name] = table
        _write(path, tables)
    return table


def table_for(dtype: torch.dtype, refresh: bool = False) -> Table | None:
    """The table `auto` uses for `dtype` at the caller's thread setting (None: use the fixed
    rule). Thread-safe; measured at most once per process and setting unless refresh."""
    name = str(dtype).removeprefix("torch.")
    setting, directory = _source()
    if name not in DTYPES or setting == "off":
        return None
    threads = _threads()
    memo = (setting, directory, name, threads)
    if not refresh and memo in _TABLES:
        return _TABLES[memo]
    with _LOCK:
        if not refresh and memo in _TABLES:
            return _TABLES[memo]
        if setting:
            table = _user_table(setting, name, threads)
        else:
            table = _cached_or_new(name, threads, refresh)
        _TABLES[memo] = table
    return table


def choose_name(dtype: torch.dtype, batch: int, nq: int, nk: int, d: int) -> str:
    """auto's CPU choice for B clouds of Nq queries × Nk keys in dimension d: the table's cell
    nearest to N = √(B·Nq·Nk) (per-call work, which sets the per-call overhead's share), and never
    dense when B·Nq·Nk > DENSE_MAX_N² (no N×N buffer beyond what the calibration measured)."""
    pairs = batch * nq * nk
    table = table_for(dtype)
    if table is None:
        return static_choice(pairs, d)
    return table.best(math.sqrt(pairs), d, dense=pairs <= DENSE_MAX_N**2)
