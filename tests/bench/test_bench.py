"""The benchmark harness: row contract, skipping, validation, peaks. Timings never assert."""

from __future__ import annotations

import math

import pytest
import torch

from tokendyn.bench import throughput
from tokendyn.bench.throughput import (
    CONTRACT_KEYS,
    bench_large,
    format_table,
    measure_peaks,
    pair_ceiling,
    run_bench,
)
from tokendyn.engine.kernels import fused, get_backend
from tokendyn.engine.kernels.threads import available_cpus
from tokendyn.errors import ConfigError

ALL_BACKENDS = ("dense", "tiled", "sdpa", "naive")


def check_row(row: dict, backend: str, n: int, d: int, dtype: str) -> None:
    assert tuple(row)[: len(CONTRACT_KEYS)] == CONTRACT_KEYS
    assert (row["backend"], row["n"], row["d"], row["dtype"]) == (backend, n, d, dtype)
    assert isinstance(row["seconds"], float) and row["seconds"] > 0
    assert math.isclose(row["pairs_per_s"], n * n / row["seconds"], rel_tol=1e-12)
    assert isinstance(row["peak_fraction"], float) and row["peak_fraction"] > 0
    assert isinstance(row["peak_mem_bytes"], int) and row["peak_mem_bytes"] >= 0


def test_rows_follow_the_contract() -> None:
    rows = list(run_bench(ns=(64, 128), ds=(3,), backends=ALL_BACKENDS, repeats=1))
    expected = [(b, n) for n in (64, 128) for b in ALL_BACKENDS]
    assert [(r["backend"], r["n"]) for r in rows] == expected
    for row in rows:
        check_row(row, row["backend"], row["n"], 3, "float32")
        assert row["kind"] == "eval" and row["bound"] in ("flops", "exp", "pairs")
        assert isinstance(row["backward_pairs_per_s"], float) and row["backward_pairs_per_s"] > 0


def test_backward_is_optional_and_absent_for_steps() -> None:
    (row,) = run_bench(ns=(64,), ds=(3,), backends=("tiled",), repeats=1, backward=False)
    assert row["backward_pairs_per_s"] is None


def test_float64_and_euler_steps() -> None:
    (row,) = run_bench(
        ns=(64,), ds=(2,), dtypes=("float64",), backends=("tiled",), repeats=1, steps=2
    )
    check_row(row, "tiled", 64, 2, "float64")
    assert row["kind"] == "step" and row["backward_pairs_per_s"] is None


def test_large_sizes_are_skipped() -> None:
    rows = list(
        run_bench(
            ns=(64, 128), ds=(3,), backends=ALL_BACKENDS, repeats=1, dense_max_n=64, naive_max_n=100
        )
    )
    assert {(r["backend"], r["n"]) for r in rows if r["n"] == 128} == {
        ("tiled", 128),
        ("sdpa", 128),
    }
    assert len(rows) == 6


def test_bench_large_row() -> None:
    row = bench_large(n=256, d=3)
    check_row(row, "tiled", 256, 3, "float32")
    assert row["kind"] == "step"


def test_measure_peaks_positive() -> None:
    peaks = measure_peaks("cpu", "float32")
    assert set(peaks) == {"sgemm_flops", "exp_rate"}
    assert all(value > 0 and math.isfinite(value) for value in peaks.values())


needs_fused = pytest.mark.skipif(not fused.available(), reason="needs the compiled fused kernel")


@needs_fused
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_pair_ceiling_is_a_positive_rate_counted_per_usable_core(dtype, monkeypatch) -> None:
    """pair_ceiling times the C ceiling kernel; measure_peaks multiplies that per-core rate by the
    threads a backend may use (no second timing to compare with: timings are not pass/fail)."""
    rate = pair_ceiling(dtype, 3)
    assert rate is not None and rate > 0 and math.isfinite(rate)
    monkeypatch.setattr(throughput, "pair_ceiling", lambda dtype, d: 1e9 + d)
    peaks = measure_peaks("cpu", dtype, d=3)
    assert peaks["pair_rate"] == (1e9 + 3) * min(torch.get_num_threads(), available_cpus())


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"backends": ("nope",)}, "backend"),
        ({"ns": (0,)}, "n"),
        ({"ds": (-1,)}, "d"),
        ({"dtypes": ("float8",)}, "dtype"),
        ({"repeats": 0}, "repeats"),
        ({"steps": 0}, "steps"),
        ({"device": "nonsense"}, "device"),
    ],
)
def test_bad_inputs_raise_config_error(kwargs: dict, field: str) -> None:
    with pytest.raises(ConfigError) as err:
        run_bench(**kwargs)  # validated on the call, before the first row
    assert err.value.field == field


def test_bench_large_refuses_dense_at_large_n() -> None:
    with pytest.raises(ConfigError, match="materialises"):
        bench_large(backend="naive")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-CUDA error")
def test_cuda_without_cuda_raises() -> None:
    with pytest.raises(ConfigError, match="CUDA"):
        run_bench(device="cuda")


def test_format_table() -> None:
    rows = list(run_bench(ns=(64,), ds=(3,), backends=("naive", "tiled"), repeats=1))
    lines = format_table(rows).splitlines()
    assert lines[0].startswith("| backend | n | d | dtype | seconds | M pairs/s")
    assert lines[0].endswith("| backward M pairs/s |")
    assert len(lines) == 2 + len(rows) and lines[2].startswith("| naive | 64 | 3 | float32 |")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_bench_on_cuda() -> None:
    rows = list(run_bench(ns=(256,), ds=(3, 16), backends=ALL_BACKENDS, device="cuda", repeats=1))
    assert len(rows) == 2 * len(ALL_BACKENDS)
    for row in rows:
        check_row(row, row["backend"], 256, row["d"], "float32")
        assert row["mem_method"] == "cuda"


@pytest.mark.slow
def test_tiled_throughput(benchmark) -> None:
    x = torch.randn(1, 4096, 3, generator=torch.Generator().manual_seed(0)) / 3**0.5
    backend = get_backend("tiled")
    out = benchmark(lambda: backend.attend(x, x, x).out)
    assert out.shape == x.shape and torch.isfinite(out).all()
