"""Throughput of the kernel backends on this machine, against this machine's own measured peaks.

The workload is ONE softmax self-attention evaluation on one cloud (B=1) of n tokens in R^d:
x ~ N(0, 1/d) (seeded), q = β·x with β = 1, k = v = x, and

    out_i = Σ_j softmax_j(⟨q_i, k_j⟩) v_j.

Every row carries, in this order, the contract keys ``backend, n, d, dtype, seconds, pairs_per_s,
peak_fraction, peak_mem_bytes`` (then extras). ``peak_fraction`` is a roofline fraction
t_min / seconds with

    t_min = max(flops / sgemm_flops, n² / max(exp_rate, pair_rate)),   flops = n²·(2d + 2(d+1)),

i.e. the score dot products (2d per pair) plus the weighted accumulation of [v_j, 1] (2(d+1) per
pair, the 1 being the normaliser), against the peaks `measure_peaks` finds in the same run.
pair_rate (CPU, when the fused kernel is built) is the fused kernel's arithmetic ceiling: its
own vector exp and the 2d + 2 flops of one pair, fused in registers over an L1 key block
(tokendyn_ceiling_* in _fused.c), on one core, times the threads any backend may use. No kernel
can beat the faster of the two exponentials, so no backend exceeds peak_fraction 1 (up to the
timing noise); torch.exp alone was no ceiling for the fused kernel, whose exp is cheaper.

Rows of kind "eval" also carry ``backward_pairs_per_s`` = n² / (best time of the backward pass
alone): with q = β·x, k, v = x as three leaves requiring grad, the forward is recorded once and
the timed unit is torch.autograd.grad(out, (q, k, v), dout) on the retained graph (None where
not measured: Euler-step rows, or backward=False).
"""

from __future__ import annotations

import ctypes
import gc
import re
import resource
import sys
import time
from collections.abc import Callable, Iterator
from functools import cache
from pathlib import Path
from typing import Any

import torch

from tokendyn.engine.device import resolve_device, resolve_dtype
from tokendyn.engine.kernels import BACKENDS, fused, get_backend
from tokendyn.engine.kernels.threads import available_cpus
from tokendyn.errors import ConfigError

CONTRACT_KEYS = (
    "backend",
    "n",
    "d",
    "dtype",
    "seconds",
    "pairs_per_s",
    "peak_fraction",
    "peak_mem_bytes",
)
BENCH_BACKENDS = ("naive", *BACKENDS)
BETA = 1.0
DT = 0.1
SEED = 0
GEMM_SIZE = 2048
EXP_ELEMENTS = 2**18
EXP_REPEATS = 64
EXP_ELEMENTS_GPU = 2**26
PEAK_TRIALS = 10
CEILING_TRIAL_SECONDS = 0.01
LARGE_WARMUP_N = 256
DENSE_MAX_N = 4096
NAIVE_MAX_N = 8192
_PROC = Path("/proc/self")

Attend = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _best_seconds(fn: Callable[[], object], device: torch.device, trials: int) -> float:
    """Best wall time of `trials` calls of fn (device synchronised around each)."""
    best = float("inf")
    for _ in range(trials):
        _sync(device)
        start = time.perf_counter()
        fn()
        _sync(device)
        best = min(best, time.perf_counter() - start)
    return best


def _check_backend(name: str) -> str:
    if name not in BENCH_BACKENDS:
        raise ConfigError(
            "backend", f"unknown backend {name!r}", f"use one of {', '.join(BENCH_BACKENDS)}"
        )
    return name


def _check_positive(field: str, value: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(field, f"must be a positive integer, got {value!r}", "pass an int ≥ 1")
    return value


def pair_ceiling(dtype: str, d: int) -> float | None:
    """Score pairs/s that one core cannot exceed in the fused kernel (None: kernel not built).

    Best rate of PEAK_TRIALS calls of tokendyn_ceiling_<dtype>(reps, d), reps doubled until one
    call takes CEILING_TRIAL_SECONDS (the best of short trials is the idle-core rate even on a
    busy machine).
    """
    lib = fused.load()
    if lib is None:
        return None
    fn = getattr(
        lib, "tokendyn_ceiling_" + ("f32" if resolve_dtype(dtype) == torch.float32 else "f64")
    )
    sink = torch.zeros(1, dtype=torch.float64)
    reps = 1
    while True:
        start = time.perf_counter()
        fn(reps, d, sink.data_ptr())
        if time.perf_counter() - start >= CEILING_TRIAL_SECONDS:
            break
        reps *= 2
    pairs = fn(reps, d, sink.data_ptr())
    return pairs / _best_seconds(
        lambda: fn(reps, d, sink.data_ptr()), torch.device("cpu"), PEAK_TRIALS
    )


def measure_peaks(device: str | torch.device, dtype: str, d: int | None = None) -> dict[str, float]:
    """This machine's peaks in `dtype`: {sgemm_flops, exp_rate} and, given d on CPU with the
    fused kernel built, pair_rate.

    sgemm_flops = 2·2048³ / best time of a 2048×2048 matmul (FLOP/s);
    exp_rate = elements/s of torch.exp(src, out=buf) on an L2-resident buffer of 2^18 elements,
    repeated EXP_REPEATS times per trial (a 2^24-element tensor would measure memory bandwidth,
    not the exponential);
    pair_rate = pair_ceiling(dtype, d) · min(torch.get_num_threads(), available_cpus()): pairs/s
    with every core any backend may use running the fused kernel's arithmetic ceiling.
    """
    dev = resolve_device(str(device))
    tdtype = resolve_dtype(dtype)
    gen = torch.Generator().manual_seed(SEED)
    a = torch.randn(GEMM_SIZE, GEMM_SIZE, generator=gen).to(dev, tdtype)
    b = torch.randn(GEMM_SIZE, GEMM_SIZE, generator=gen).to(dev, tdtype)
    c = torch.empty(GEMM_SIZE, GEMM_SIZE, dtype=tdtype, device=dev)
    torch.mm(a, b, out=c)  # warm-up
    gemm_s = _best_seconds(lambda: torch.mm(a, b, out=c), dev, PEAK_TRIALS)
    # CPU: an L2-resident buffer; GPU: large enough that launches do not dominate.
    n_exp = EXP_ELEMENTS if dev.type == "cpu" else EXP_ELEMENTS_GPU
    src = torch.rand(n_exp, generator=gen).to(dev, tdtype).neg_()
    buf = torch.exp(src)  # warm-up; arguments stay in [-1, 0]

    def exps() -> None:
        for _ in range(EXP_REPEATS):
            torch.exp(src, out=buf)

    exp_s = _best_seconds(exps, dev, PEAK_TRIALS) / EXP_REPEATS
    peaks = {"sgemm_flops": 2 * GEMM_SIZE**3 / gemm_s, "exp_rate": n_exp / exp_s}
    ceiling = None if d is None or dev.type != "cpu" else pair_ceiling(dtype, d)
    if ceiling is not None:
        peaks["pair_rate"] = ceiling * max(1, min(torch.get_num_threads(), available_cpus()))
    return peaks


def _roofline(n: int, d: int, seconds: float, peaks: dict[str, float]) -> tuple[float, str]:
    """(t_min / seconds, name of the bound that sets t_min: "flops", "exp" or "pairs")."""
    pairs = n * n
    t_flops = pairs * (2 * d + 2 * (d + 1)) / peaks["sgemm_flops"]
    pair_rate = peaks.get("pair_rate", 0.0)
    t_exp = pairs / max(peaks["exp_rate"], pair_rate)
    if t_flops >= t_exp:
        return t_flops / seconds, "flops"
    return t_exp / seconds, "pairs" if pair_rate > peaks["exp_rate"] else "exp"


def _proc_kib(field: str) -> int:
    status = (_PROC / "status").read_text()
    match = re.search(rf"^{field}:\s+(\d+)\s+kB", status, re.MULTILINE)
    if match is None:
        raise OSError(f"{field} missing from /proc/self/status")
    return int(match.group(1))


@cache
def _malloc_trim() -> Callable[[int], int] | None:
    """glibc's malloc_trim, or None (other C libraries)."""
    try:
        return ctypes.CDLL("libc.so.6").malloc_trim
    except (OSError, AttributeError):
        return None


def _measure_memory(fn: Callable[[], object], device: torch.device) -> tuple[int, int, str]:
    """Run fn once; (extra bytes it needed, absolute peak bytes, method).

    cuda: max_memory_allocated − memory_allocated before, after reset_peak_memory_stats.
    cpu ("proc"): write 5 to /proc/self/clear_refs (resets VmHWM), then VmHWM after − VmRSS before;
    freed heap pages are first returned to the OS (glibc malloc_trim) so that reusing them counts.
    cpu ("getrusage", no /proc): rise of the lifetime peak ru_maxrss (under-reports if the process
    already peaked higher before).
    """
    gc.collect()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        fn()
        torch.cuda.synchronize(device)
        peak = torch.cuda.max_memory_allocated(device)
        return max(0, peak - before), peak, "cuda"
    trim = _malloc_trim()
    if trim is not None:
        trim(0)
    try:
        (_PROC / "clear_refs").write_text("5")
        before = _proc_kib("VmRSS")
    except OSError:
        # ru_maxrss is in KiB on Linux, bytes on macOS.
        unit = 1 if sys.platform == "darwin" else 1024
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        fn()
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return max(0, peak - before) * unit, peak * unit, "getrusage"
    fn()
    peak = _proc_kib("VmHWM")
    return max(0, peak - before) * 1024, peak * 1024, "proc"


def _naive(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Reference: softmax(q kᵀ) v with the full N×N matrix."""
    return torch.softmax(q @ k.transpose(-1, -2), dim=-1) @ v


def _attention(backend: str) -> Attend:
    if backend == "naive":
        return _naive
    impl = get_backend(backend)
    return lambda q, k, v: impl.attend(q, k, v).out


def _workload(attend: Attend, x: torch.Tensor, steps: int | None) -> Callable[[], None]:
    """The timed unit: one evaluation Attn(β·x, x, x), or `steps` in-place Euler steps."""
    if steps is None:
        q = BETA * x

        def evaluate() -> None:
            attend(q, x, x)

        return evaluate
    n_steps = steps

    def euler() -> None:
        for _ in range(n_steps):
            x.add_(attend(BETA * x, x, x), alpha=DT)

    return euler


def _backward_unit(attend: Attend, x: torch.Tensor) -> Callable[[], object]:
    """The timed backward unit: gradients of one recorded evaluation w.r.t. q, k and v."""
    q, k, v = ((BETA * x if i == 0 else x).detach().clone().requires_grad_() for i in range(3))
    out = attend(q, k, v)
    dout = torch.randn(out.shape, generator=torch.Generator().manual_seed(SEED)).to(out)
    return lambda: torch.autograd.grad(out, (q, k, v), dout, retain_graph=True)


def _cloud(n: int, d: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """x ~ N(0, 1/d), shape (1, n, d), seeded (drawn on CPU so every device sees the same cloud)."""
    gen = torch.Generator().manual_seed(SEED)
    return (torch.randn(1, n, d, generator=gen) / d**0.5).to(device, dtype)


def _row(
    backend: str,
    n: int,
    d: int,
    dtype: str,
    seconds: float,
    memory: tuple[int, int, str],
    peaks: dict[str, float],
    device: torch.device,
    kind: str,
    backward_seconds: float | None = None,
) -> dict[str, Any]:
    fraction, bound = _roofline(n, d, seconds, peaks)
    pairs_per_s = n * n / seconds
    extra, absolute, method = memory
    row: dict[str, Any] = {
        "backend": backend,
        "n": n,
        "d": d,
        "dtype": dtype,
        "seconds": seconds,
        "pairs_per_s": pairs_per_s,
        "peak_fraction": fraction,
        "peak_mem_bytes": extra,
        "kind": kind,
        "device": str(device),
        "bound": bound,
        "process_peak_bytes": absolute,
        "mem_method": method,
        "peak_sgemm_flops": peaks["sgemm_flops"],
        "peak_exp_rate": peaks["exp_rate"],
        "peak_pair_rate": peaks.get("pair_rate"),
        "backward_pairs_per_s": None if backward_seconds is None else n * n / backward_seconds,
    }
    if device.type == "cpu":
        threads = torch.get_num_threads()
        row["threads"] = threads
        row["pairs_per_s_per_core"] = pairs_per_s / threads
    return row


def run_bench(
    ns: tuple[int, ...] = (1024, 4096, 16384),
    ds: tuple[int, ...] = (3, 16),
    dtypes: tuple[str, ...] = ("float32",),
    backends: tuple[str, ...] = ("dense", "tiled", "sdpa", "naive"),
    device: str = "cpu",
    repeats: int = 3,
    steps: int | None = None,
    dense_max_n: int = DENSE_MAX_N,
    naive_max_n: int = NAIVE_MAX_N,
    backward: bool = True,
) -> Iterator[dict[str, Any]]:
    """Rows of measurements, one per (dtype, d, n, backend), yielded as soon as measured.

    steps=None times one attention evaluation (kind "eval"); steps=k times k explicit Euler steps
    x ← x + dt·Attn(x) (dt = 0.1) and reports seconds per step (kind "step"). Each timing is the
    best of `repeats` after one warm-up (which also compiles the fused C kernel); memory is measured
    on one further run. Sizes above naive_max_n (naive) or dense_max_n (dense) are skipped.
    With backward=True, "eval" rows also time the backward pass (module docstring).
    Arguments are validated on the call, before anything runs.
    """
    dev = resolve_device(device)
    for name in dtypes:
        resolve_dtype(name)
    for name in backends:
        _check_backend(name)
    for n in ns:
        _check_positive("n", n)
    for d in ds:
        _check_positive("d", d)
    _check_positive("repeats", repeats)
    if steps is not None:
        _check_positive("steps", steps)
    limits = {"naive": naive_max_n, "dense": dense_max_n}
    return _rows(ns, ds, dtypes, backends, dev, repeats, steps, limits, backward)


def _rows(
    ns: tuple[int, ...],
    ds: tuple[int, ...],
    dtypes: tuple[str, ...],
    backends: tuple[str, ...],
    device: torch.device,
    repeats: int,
    steps: int | None,
    limits: dict[str, int],
    backward: bool,
) -> Iterator[dict[str, Any]]:
    for dtype in dtypes:
        for d in ds:
            peaks = measure_peaks(device, dtype, d)
            for n in ns:
                for backend in backends:
                    if n > limits.get(backend, n):
                        continue
                    x = _cloud(n, d, resolve_dtype(dtype), device)
                    attend = _attention(backend)
                    unit = _workload(attend, x, steps)
                    unit()  # warm-up
                    seconds = _best_seconds(unit, device, repeats) / (steps or 1)
                    memory = _measure_memory(unit, device)
                    kind = "eval" if steps is None else "step"
                    backward_seconds = None
                    if backward and steps is None:
                        grads = _backward_unit(attend, x)
                        grads()  # warm-up
                        backward_seconds = _best_seconds(grads, device, repeats)
                    yield _row(
                        backend, n, d, dtype, seconds, memory, peaks, device, kind, backward_seconds
                    )


def bench_large(
    n: int = 200_000,
    d: int = 3,
    dtype: str = "float32",
    backend: str = "tiled",
    device: str = "cpu",
) -> dict[str, Any]:
    """One explicit Euler step x ← x + dt·Attn(x) at large n, timed and memory-measured once.

    Target: n = 200 000, d = 3 on CPU with peak memory under 1 GB. A warm-up at n = 256 compiles
    the fused kernel first. Returns a row with the contract keys plus kind="step".
    """
    dev = resolve_device(device)
    tdtype = resolve_dtype(dtype)
    _check_backend(backend)
    _check_positive("n", n)
    _check_positive("d", d)
    limit = {"naive": NAIVE_MAX_N, "dense": DENSE_MAX_N}.get(backend, n)
    if n > limit:
        gib = n * n * torch.finfo(tdtype).bits / 8 / 2**30
        raise ConfigError(
            "backend",
            f"{backend} materialises the n×n matrix ({gib:.1f} GiB at n={n}; limit n ≤ {limit})",
            "use backend='tiled' or 'sdpa'",
        )
    attend = _attention(backend)
    _workload(attend, _cloud(LARGE_WARMUP_N, d, tdtype, dev), 1)()  # compiles the fused kernel
    peaks = measure_peaks(dev, dtype, d)
    step = _workload(attend, _cloud(n, d, tdtype, dev), 1)
    seconds = 0.0

    def timed_step() -> None:
        nonlocal seconds
        seconds = _best_seconds(step, dev, 1)

    memory = _measure_memory(timed_step, dev)
    return _row(backend, n, d, dtype, seconds, memory, peaks, dev, "step")


def format_table(rows: list[dict[str, Any]]) -> str:
    """Markdown table: backend, n, d, dtype, seconds, M pairs/s, peak fraction, peak MB (10⁶ B),
    backward M pairs/s ("–" where not measured)."""
    lines = [
        "| backend | n | d | dtype | seconds | M pairs/s | peak fraction | peak MB "
        "| backward M pairs/s |",
        "|---|---:|---:|---|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        label = row["backend"] + (" (step)" if row.get("kind") == "step" else "")
        bwd = row.get("backward_pairs_per_s")
        lines.append(
            f"| {label} | {row['n']} | {row['d']} | {row['dtype']} | {row['seconds']:.4g} "
            f"| {row['pairs_per_s'] / 1e6:.1f} | {row['peak_fraction']:.3f} "
            f"| {row['peak_mem_bytes'] / 1e6:.1f} | {'–' if bwd is None else f'{bwd / 1e6:.1f}'} |"
        )
    return "\n".join(lines)


def bench_sweep(
    points: int = 64,
    workers: tuple[int, ...] = (1, 2),
    batch: tuple[bool, ...] = (True, False),
    n: int = 64,
    d: int = 3,
    t_end: float = 5.0,
) -> Iterator[dict[str, Any]]:
    """Sweep throughput: `points` small systems (a β × seed grid, N = n on S^{d−1}, RK4, dt = 0.1,
    statistics every 10 steps) run by `run_sweep` on a LocalCluster of each worker count, with
    and without batching. The cluster is started (and warmed up) before the clock starts; the time
    includes scheduling, the simulations, the statistics and the store writes. Rows: kind="sweep",
    workers, batch, points, n, d, seconds, simulations_per_min, startup_seconds."""
    import tempfile

    from tokendyn.app.sweep import Sweep, dask_client, run_sweep

    _check_positive("points", points)
    seeds = max(1, points // 8)
    betas = [0.5 + 0.5 * i for i in range(-(-points // seeds))]
    base = {"n": n, "d": d, "t_end": t_end, "dt": 0.1, "save_every": 10}
    sweep = Sweep(base, {"beta": betas, "seed": list(range(seeds))})
    warm = Sweep(base, {"beta": [1.0]})
    for w in workers:
        start = time.perf_counter()
        with dask_client(w, None) as client, tempfile.TemporaryDirectory() as tmp:
            address = client.scheduler.address
            run_sweep(warm, Path(tmp) / "warm.zarr", scheduler=address)  # imports on the workers
            startup = time.perf_counter() - start
            for batched in batch:
                start = time.perf_counter()
                run_sweep(
                    sweep, Path(tmp) / f"sweep-{batched}.zarr", scheduler=address, batch=batched
                )
                seconds = time.perf_counter() - start
                yield {
                    "kind": "sweep",
                    "workers": w,
                    "batch": batched,
                    "points": sweep.size,
                    "n": n,
                    "d": d,
                    "seconds": seconds,
                    "simulations_per_min": 60 * sweep.size / seconds,
                    "startup_seconds": startup,
                }
