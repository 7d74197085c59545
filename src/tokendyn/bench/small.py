"""`tokendyn bench --small`: small and medium systems, tokendyn against the NumPy loop users write.

Workload: N tokens uniform on S^{d−1} (seeded), Q = K = V = I, β = 1, dt = 0.1, i.e.

    ẋ_i = P_{x_i} Σ_j softmax_j(β⟨x_i, x_j⟩) x_j,   P_x v = v − ⟨x, v⟩x,

stepped with x ← (x + dt·ẋ)/|x + dt·ẋ| (Euler) or RK4 and renormalised after every step.

Per (N, d, dtype) a row holds:
- ``numpy_s``: seconds per step of `numpy_euler` (the reference papers' five-line loop, in the
  same dtype): the users' yardstick;
- ``euler_s``, ``rk4_s``: seconds per step of `simulate` (the public `td.simulate`, backend
  "auto", save_every = the number of steps, i.e. frames at the start and the end only; the slope
  between a call of 1 step and a call of k steps, so a call's fixed cost — ``call_s``, reported
  apart — is not spread over the steps) at the
  caller's thread setting, and ``euler_s_1t``, ``rk4_s_1t`` inside the caller's `single_thread()`
  context (the CLI sets one torch thread there: the library never changes thread settings);
- ``numpy_over_euler_1t`` = numpy_s / euler_s_1t, ``numpy_over_euler`` = numpy_s / euler_s (above 1:
  tokendyn is faster), ``default_over_1t`` = euler_s / euler_s_1t (above 1: default threads slower);
- ``attention_s``: seconds of one forward attention evaluation Attn(βx, x, x) per backend
  (dense up to N = DENSE_MAX_N; the median of ROUNDS interleaved rounds, as auto's calibration
  measures), ``auto`` the backend `auto` picks for it, ``auto_over_best`` =
  attention_s[auto] / min(attention_s) and ``auto_within_10pct`` (the issue's target).

Before the first row of a dtype, a few steps at N = 8 (at both thread settings) take the first-use
costs (auto's calibration, imports) off the clock. The NumPy loop and the attention calls run their
unit once as a warm-up (which also gives the estimate), then once more for as many steps (or calls)
as fill about `target_s` seconds (at least one); the NumPy loop's warm-up is itself the timing
where it already took longer than `target_s` (large N). `simulate` is timed by `_per_step`.
"""

from __future__ import annotations

import math
import os
import statistics
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, nullcontext
from typing import Any

import numpy as np
import torch
from rich.table import Table

from tokendyn.app.simulate import simulate
from tokendyn.bench.throughput import DENSE_MAX_N
from tokendyn.engine.attention import Head, SoftmaxAttention
from tokendyn.engine.device import resolve_dtype
from tokendyn.engine.initial import uniform_sphere
from tokendyn.engine.kernels import AutoBackend, calibration, get_backend
from tokendyn.engine.space import Sphere
from tokendyn.errors import ConfigError

SMALL_NS = tuple(2**k for k in range(3, 14))  # 8 … 8192
SMALL_DS = (2, 3, 8)
SMALL_DTYPES = ("float64", "float32")
METHODS = ("euler", "rk4")
ATTENTION_BACKENDS = ("dense", "tiled", "sdpa")
BETA = 1.0
DT = 0.1
SEED = 0
TARGET_S = 0.1
ATTENTION_TARGET_S = 0.03
ROUNDS = 3
MAX_STEPS = 100_000
AUTO_TOLERANCE = 1.10


def numpy_euler(x0: np.ndarray, beta: float, dt: float, steps: int) -> np.ndarray:
    """`steps` Euler steps of the workload in plain NumPy (any float dtype), from x0 (N, d):

    G = β x xᵀ − max_j;  W = e^G / Σ_j e^G;  v = W x;  v ← v − ⟨v, x⟩x;  x ← (x + dt v)/|x + dt v|.
    """
    x = x0.copy()
    for _ in range(steps):
        g = beta * (x @ x.T)
        w = np.exp(g - g.max(axis=1, keepdims=True))
        w /= w.sum(axis=1, keepdims=True)
        v = w @ x
        v -= (v * x).sum(axis=1, keepdims=True) * x
        x = x + dt * v
        x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x


def initial_cloud(n: int, d: int, dtype: str) -> torch.Tensor:
    """The workload's initial cloud (N, d): uniform on S^{d−1}, seeded."""
    gen = torch.Generator().manual_seed(SEED)
    return uniform_sphere(1, n, d, gen)[0].to(resolve_dtype(dtype))


def field(d: int, dtype: str) -> SoftmaxAttention:
    """Softmax attention with Q = K = V = I and β = BETA, backend "auto"."""
    eye = torch.eye(d, dtype=resolve_dtype(dtype))
    return SoftmaxAttention([Head(Q=eye, K=eye, V=eye, beta=BETA)])


def simulate_steps(x0: torch.Tensor, method: str, steps: int) -> torch.Tensor:
    """The final state of `steps` steps of `simulate` (save_every = steps), as (N, d)."""
    ds = simulate(
        field(x0.shape[-1], str(x0.dtype).removeprefix("torch.")),
        Sphere(x0.shape[-1]),
        x0,
        t_end=steps * DT,
        dt=DT,
        method=method,
        save_every=steps,
    )
    assert ds is not None
    return torch.as_tensor(ds["x"].values[-1])


def _per_unit(
    run: Callable[[int], object], target_s: float, reuse_warmup: bool = False
) -> tuple[float, int]:
    """(seconds per unit, units timed): run(1) as warm-up and estimate, then run(k) once with
    k units filling about target_s (at least 1). reuse_warmup: a warm-up longer than target_s is
    itself the timing (for code without first-call costs: the NumPy loop at large N)."""
    start = time.perf_counter()
    run(1)
    once = time.perf_counter() - start
    if reuse_warmup and once >= target_s:
        return once, 1
    units = max(1, min(MAX_STEPS, round(target_s / max(once, 1e-9))))
    start = time.perf_counter()
    run(units)
    return (time.perf_counter() - start) / units, units


def _seconds(run: Callable[[], object]) -> float:
    start = time.perf_counter()
    run()
    return time.perf_counter() - start


def _per_step(run: Callable[[int], object], target_s: float) -> tuple[float, int, float]:
    """(seconds per step, steps timed, seconds per call beyond its steps) of `run(k)`, one call
    of k steps: the slope between a call of one step (best of ROUNDS, after a warm-up) and one
    call of k steps, k grown until its steps take about target_s. A call's fixed cost (building
    the field, the Dataset of saved frames) is not a per-step cost: a run pays it once."""
    run(1)
    one = min(_seconds(lambda: run(1)) for _ in range(ROUNDS))
    k = 2
    while True:
        spent = _seconds(lambda k=k: run(k)) - one
        if spent >= 0.5 * target_s or k >= MAX_STEPS:
            break
        k = min(MAX_STEPS, max(2 * k, round(k * target_s / max(spent, 1e-9))))
    per_step = max(spent, 0.0) / (k - 1)
    return per_step, k, max(one - per_step, 0.0)


def _steps_timing(
    n: int, d: int, dtype: str, target_s: float
) -> dict[str, tuple[float, int, float]]:
    x0 = initial_cloud(n, d, dtype)
    return {m: _per_step(lambda k, m=m: simulate_steps(x0, m, k), target_s) for m in METHODS}


def _attention_timing(n: int, d: int, dtype: str, target_s: float) -> tuple[dict, str]:
    """({backend: seconds per forward evaluation}, auto's choice) at the caller's threads: per
    backend one warm-up call sets k (k calls ≈ target_s / ROUNDS), then ROUNDS interleaved rounds
    of k calls, the median kept (as auto's calibration does)."""
    x = initial_cloud(n, d, dtype).unsqueeze(0)
    q = BETA * x
    names = [b for b in ATTENTION_BACKENDS if b != "dense" or n <= DENSE_MAX_N]
    with torch.inference_mode():
        backends = {name: get_backend(name) for name in names}
        loops = {}
        for name, backend in backends.items():
            start = time.perf_counter()
            backend.attend(q, x, x)
            once = time.perf_counter() - start
            loops[name] = max(1, min(MAX_STEPS, round(target_s / ROUNDS / max(once, 1e-9))))
        rounds: dict[str, list[float]] = {name: [] for name in names}
        for _ in range(ROUNDS):
            for name, backend in backends.items():
                start = time.perf_counter()
                for _ in range(loops[name]):
                    backend.attend(q, x, x)
                rounds[name].append((time.perf_counter() - start) / loops[name])
        chosen = AutoBackend().choose(q, x).name
    seconds: dict[str, float | None] = dict.fromkeys(ATTENTION_BACKENDS)
    seconds.update({name: statistics.median(times) for name, times in rounds.items()})
    return seconds, chosen


def _check_grid(ns: tuple[int, ...], ds: tuple[int, ...], dtypes: tuple[str, ...]) -> None:
    for n in ns:
        if isinstance(n, bool) or not isinstance(n, int) or n < 2:
            raise ConfigError("n", f"must be an integer ≥ 2, got {n!r}", "pass --n 2 or more")
    for d in ds:
        if isinstance(d, bool) or not isinstance(d, int) or d < 2:
            raise ConfigError("d", f"must be an integer ≥ 2 on the sphere, got {d!r}", "use ≥ 2")
    for name in dtypes:
        resolve_dtype(name, SMALL_DTYPES)


def run_small(
    *,
    single_thread: Callable[[], AbstractContextManager[object]],
    ns: tuple[int, ...] = SMALL_NS,
    ds: tuple[int, ...] = SMALL_DS,
    dtypes: tuple[str, ...] = SMALL_DTYPES,
    target_s: float = TARGET_S,
    attention_target_s: float = ATTENTION_TARGET_S,
) -> Iterator[dict[str, Any]]:
    """One row per (dtype, d, N) as measured (module docstring), validated before anything runs.

    `single_thread()` is a context manager inside which torch runs one thread (the CLI's job);
    everything else runs at the caller's setting."""
    _check_grid(ns, ds, dtypes)
    return _small_rows(single_thread, ns, ds, dtypes, target_s, attention_target_s)


def _small_rows(
    single_thread: Callable[[], AbstractContextManager[object]],
    ns: tuple[int, ...],
    ds: tuple[int, ...],
    dtypes: tuple[str, ...],
    target_s: float,
    attention_target_s: float,
) -> Iterator[dict[str, Any]]:
    for dtype in dtypes:
        # First use outside the clock: auto's calibration (per dtype and thread count), imports.
        for context in (nullcontext, single_thread):
            with context():
                for method in METHODS:
                    simulate_steps(initial_cloud(8, 2, dtype), method, 2)
        for d in ds:
            for n in ns:
                x0 = initial_cloud(n, d, dtype).numpy()
                numpy_s, numpy_steps = _per_unit(
                    lambda k, x0=x0: numpy_euler(x0, BETA, DT, k), target_s, reuse_warmup=True
                )
                default = _steps_timing(n, d, dtype, target_s)
                threads = torch.get_num_threads()
                with single_thread():
                    one = _steps_timing(n, d, dtype, target_s)
                attention, chosen = _attention_timing(n, d, dtype, attention_target_s)
                numpy = (numpy_s, numpy_steps)
                yield small_row(n, d, dtype, threads, numpy, default, one, attention, chosen)


def small_row(
    n: int,
    d: int,
    dtype: str,
    threads: int,
    numpy: tuple[float, int],
    default: dict[str, tuple[float, int, float]],
    one: dict[str, tuple[float, int, float]],
    attention: dict[str, float | None],
    chosen: str,
) -> dict[str, Any]:
    """The row of one (N, d, dtype) from its timings (seconds per step or call, units timed, and
    for simulate the fixed seconds per call)."""
    timed = {name: t for name, t in attention.items() if t is not None}
    best = min(timed, key=timed.__getitem__)
    auto_over_best = timed[chosen] / timed[best] if chosen in timed else math.nan
    return {
        "kind": "small",
        "n": n,
        "d": d,
        "dtype": dtype,
        "threads": threads,
        "numpy_s": numpy[0],
        "euler_s": default["euler"][0],
        "rk4_s": default["rk4"][0],
        "euler_s_1t": one["euler"][0],
        "rk4_s_1t": one["rk4"][0],
        "numpy_over_euler_1t": numpy[0] / one["euler"][0],
        "numpy_over_euler": numpy[0] / default["euler"][0],
        "default_over_1t": default["euler"][0] / one["euler"][0],
        "attention_s": attention,
        "auto": chosen,
        "best": best,
        "auto_over_best": auto_over_best,
        "auto_within_10pct": auto_over_best <= AUTO_TOLERANCE,
        "steps": {
            "numpy": numpy[1],
            **{m: default[m][1] for m in METHODS},
            **{f"{m}_1t": one[m][1] for m in METHODS},
        },
        "call_s": {
            **{m: default[m][2] for m in METHODS},
            **{f"{m}_1t": one[m][2] for m in METHODS},
        },
    }


def _ms(seconds: float | None) -> str:
    return "–" if seconds is None else f"{seconds * 1e3:.3g}"


def format_small(rows: list[dict[str, Any]]) -> Table:
    """The rows as a rich table: ms per step, ratios, ms per simulate call beyond its steps (1
    thread, Euler), forward attention ms per backend, auto's
    pick (marked ✗ where it is more than 10 % slower than the best)."""
    threads = rows[0]["threads"] if rows else torch.get_num_threads()
    table = Table(title=f"tokendyn bench --small (ms per step; default = {threads} threads)")
    columns = [
        "dtype", "d", "N", "NumPy", "Euler 1t", "RK4 1t", "Euler", "RK4",
        "NumPy/Euler 1t", "default/1t", "call 1t", "dense", "tiled", "sdpa", "auto",
    ]  # fmt: skip
    for name in columns:
        table.add_column(name, justify="left" if name in ("dtype", "auto") else "right")
    for row in rows:
        ratio = row["auto_over_best"]
        mark = "✓" if row["auto_within_10pct"] else f"✗ {ratio:.2f}× best ({row['best']})"
        attention = row["attention_s"]
        table.add_row(
            row["dtype"],
            str(row["d"]),
            str(row["n"]),
            _ms(row["numpy_s"]),
            _ms(row["euler_s_1t"]),
            _ms(row["rk4_s_1t"]),
            _ms(row["euler_s"]),
            _ms(row["rk4_s"]),
            f"{row['numpy_over_euler_1t']:.2f}",
            f"{row['default_over_1t']:.2f}",
            _ms(row["call_s"]["euler_1t"]),
            *(_ms(attention[b]) for b in ATTENTION_BACKENDS),
            f"{row['auto']} {mark}",
        )
    return table


def calibration_table(
    dtypes: tuple[str, ...] = SMALL_DTYPES,
) -> tuple[dict[str, Any], Table]:
    """Rerun auto's calibration for each dtype at the caller's thread setting: (the JSON document
    of the new entries — a valid TOKENDYN_AUTO table file —, a rich table of their cells in µs).
    With TOKENDYN_AUTO=<path>, that file's entries instead (nothing is measured)."""
    for name in dtypes:
        resolve_dtype(name, SMALL_DTYPES)
    tables = {}
    for name in dtypes:
        found = calibration.table_for(resolve_dtype(name), refresh=True)
        if found is None:
            raise ConfigError(
                "TOKENDYN_AUTO",
                "is 'off', so auto uses its fixed rule and there is nothing to calibrate",
                "unset TOKENDYN_AUTO",
            )
        tables[f"{found.dtype}:{found.threads}"] = found
    source = os.environ.get(calibration.ENV) or calibration.cache_path()
    table = Table(title=f"auto's calibration (µs per forward call) — {source}")
    for name in ("dtype", "threads", "d", "N", *calibration.CANDIDATES, "best"):
        table.add_column(name, justify="left" if name in ("dtype", "best") else "right")
    for entry in tables.values():
        for cell in entry.cells:
            times = cell["seconds"]
            table.add_row(
                entry.dtype,
                str(entry.threads),
                str(cell["d"]),
                str(cell["n"]),
                *(f"{times[b] * 1e6:.1f}" if b in times else "–" for b in calibration.CANDIDATES),
                cell["best"],
            )
    return calibration.document(tables), table
