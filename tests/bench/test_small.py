"""`tokendyn bench --small` (bench/small.py): the NumPy yardstick computes what simulate computes,
rows carry their keys and ratios consistent with their timings, the CLI restores torch's threads.
Timings never assert."""

from __future__ import annotations

import json
import math
from contextlib import nullcontext

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from tokendyn.app.simulate import simulate
from tokendyn.bench import small
from tokendyn.cli import app
from tokendyn.cli.bench import _one_thread
from tokendyn.engine.space import Sphere
from tokendyn.errors import ConfigError

ROW_KEYS = {
    "kind", "n", "d", "dtype", "threads", "numpy_s", "euler_s", "rk4_s", "euler_s_1t",
    "rk4_s_1t", "numpy_over_euler_1t", "numpy_over_euler", "default_over_1t", "attention_s",
    "auto", "best", "auto_over_best", "auto_within_10pct", "steps", "call_s",
}  # fmt: skip


@pytest.mark.parametrize(("n", "d"), [(8, 2), (16, 3), (40, 8)])
def test_numpy_loop_equals_simulate_euler_to_float64_rounding(n, d):
    """Every one of K Euler steps agrees. Bound: each step's rounding δ ≤ (N + 20)·u (u = 2⁻⁵³:
    sums of N terms, the d-term dot products, the normalisation) grows at most by (1 + dt·L) per
    step with L = 1 + 4β a Lipschitz constant of the projected field on the sphere, so
    |Δx_K| ≤ K·δ·e^{K·dt·L}. A different field, step or projection would differ by O(dt)."""
    steps = 20
    x0 = small.initial_cloud(n, d, "float64")
    ds = simulate(
        small.field(d, "float64"), Sphere(d), x0, t_end=steps * small.DT, dt=small.DT,
        method="euler", save_every=1,
    )  # fmt: skip
    trajectory = ds["x"].values
    x = x0.numpy()
    lipschitz = 1 + 4 * small.BETA
    for k in range(1, steps + 1):
        x = small.numpy_euler(x, small.BETA, small.DT, 1)
        bound = k * (n + 20) * 2.0**-53 * math.exp(k * small.DT * lipschitz)
        assert np.abs(x - trajectory[k]).max() <= bound
    assert np.abs(trajectory[-1] - x0.numpy()).max() > 1e-3  # the cloud did move


def test_numpy_loop_runs_in_float32_and_stays_on_the_sphere():
    x0 = small.initial_cloud(16, 3, "float32").numpy()
    x = small.numpy_euler(x0, 1.0, 0.1, 5)
    assert x.dtype == np.float32
    assert np.abs(np.linalg.norm(x, axis=1) - 1).max() <= 4 * np.finfo(np.float32).eps


def test_tiny_grid_rows_have_their_keys_and_consistent_ratios():
    rows = list(
        small.run_small(
            single_thread=_one_thread,
            ns=(8, 16),
            ds=(2,),
            dtypes=("float64",),
            target_s=0.002,
            attention_target_s=0.001,
        )
    )
    assert [(r["n"], r["d"], r["dtype"]) for r in rows] == [(8, 2, "float64"), (16, 2, "float64")]
    for row in rows:
        assert set(row) == ROW_KEYS
        json.dumps(row)  # JSON-serialisable as printed by --json
        assert row["kind"] == "small" and row["threads"] == torch.get_num_threads()
        for key in ("numpy_s", "euler_s", "rk4_s", "euler_s_1t", "rk4_s_1t"):
            assert isinstance(row[key], float) and row[key] > 0
        assert row["numpy_over_euler_1t"] == pytest.approx(
            row["numpy_s"] / row["euler_s_1t"], rel=1e-12
        )
        assert row["numpy_over_euler"] == pytest.approx(row["numpy_s"] / row["euler_s"], rel=1e-12)
        assert row["default_over_1t"] == pytest.approx(
            row["euler_s"] / row["euler_s_1t"], rel=1e-12
        )
        times = row["attention_s"]
        assert set(times) == set(small.ATTENTION_BACKENDS) and all(t > 0 for t in times.values())
        assert row["best"] == min(times, key=times.get)
        assert row["auto_over_best"] == pytest.approx(times[row["auto"]] / min(times.values()))
        assert row["auto_within_10pct"] == (row["auto_over_best"] <= 1.10)
        assert set(row["steps"]) == {"numpy", "euler", "rk4", "euler_1t", "rk4_1t"}
        assert all(isinstance(s, int) and s >= 1 for s in row["steps"].values())
        assert set(row["call_s"]) == set(row["steps"]) - {"numpy"}
        assert all(c >= 0 for c in row["call_s"].values())
    table = small.format_small(rows)
    assert table.row_count == 2


def test_per_step_cost_is_the_slope_not_the_call_overhead(monkeypatch):
    """A call of k steps that costs c + s·k (planted clock): _per_step returns s per step and c per
    call, where dividing one call by its steps would have reported s + c/k."""
    c, s = 1e-3, 2e-6
    calls: list[int] = []
    monkeypatch.setattr(small, "_seconds", lambda fn: (fn(), c + s * calls[-1])[1])
    per_step, steps, call = small._per_step(calls.append, target_s=0.1)
    assert per_step == pytest.approx(s, rel=1e-9) and call == pytest.approx(c, rel=1e-9)
    assert steps * s >= 0.05 and calls[0] == 1


def test_small_row_marks_auto_beyond_ten_percent_and_skips_missing_dense():
    timing = {"euler": (2.0, 1, 0.5), "rk4": (8.0, 1, 0.5)}
    row = small.small_row(
        8192, 3, "float32", 2, (4.0, 1), timing, {"euler": (1.0, 1, 0.1), "rk4": (4.0, 1, 0.1)},
        {"dense": None, "tiled": 1.0, "sdpa": 1.2}, "sdpa",
    )  # fmt: skip
    assert row["best"] == "tiled" and row["auto_over_best"] == pytest.approx(1.2)
    assert row["auto_within_10pct"] is False
    assert (row["numpy_over_euler_1t"], row["numpy_over_euler"], row["default_over_1t"]) == (
        4.0,
        2.0,
        2.0,
    )
    assert row["call_s"] == {"euler": 0.5, "rk4": 0.5, "euler_1t": 0.1, "rk4_1t": 0.1}


def test_bad_grid_is_one_config_error_before_anything_runs():
    with pytest.raises(ConfigError, match=r"^d: .*Fix: "):
        small.run_small(single_thread=nullcontext, ds=(1,))
    with pytest.raises(ConfigError, match=r"^dtype: "):
        small.run_small(single_thread=nullcontext, dtypes=("float16",))


def test_one_thread_context_restores_the_callers_setting():
    before = torch.get_num_threads()
    with _one_thread():
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before


def test_cli_small_json_and_threads_restored():
    before = torch.get_num_threads()
    result = CliRunner().invoke(
        app,
        ["bench", "--small", "--json", "--n", "8", "--d", "2", "--dtype", "float32"],
        catch_exceptions=False,
    )
    assert result.exit_code == 0
    (row,) = [json.loads(line) for line in result.output.strip().splitlines()]
    assert set(row) == ROW_KEYS and (row["n"], row["d"], row["dtype"]) == (8, 2, "float32")
    assert torch.get_num_threads() == before


def test_cli_calibrate_prints_the_table_in_use(tmp_path, monkeypatch):
    from tokendyn.engine.kernels import calibration

    cells = [{"n": 8, "d": 3, "best": "sdpa", "seconds": {"tiled": 2e-5, "sdpa": 1e-5}}]
    entry = {"dtype": "float64", "threads": 1, "seconds": 0.1, "calls": 3, "cells": cells}
    path = tmp_path / "table.json"
    path.write_text(json.dumps({"format": 1, "key": "x", "entries": {"float64:1": entry}}))
    monkeypatch.setenv(calibration.ENV, str(path))
    monkeypatch.setattr(calibration, "_TABLES", {})
    args = ["bench", "--calibrate", "--dtype", "float64"]
    result = CliRunner().invoke(app, [*args, "--json"], catch_exceptions=False)
    printed = json.loads(result.output)  # one object: a table file TOKENDYN_AUTO accepts
    assert printed["entries"] == {"float64:1": entry}
    assert calibration.validate(printed)["float64:1"].cells == cells
    text = CliRunner().invoke(app, args, catch_exceptions=False).output
    assert "sdpa" in text and "10.0" in text and str(path.name) in text
    monkeypatch.setenv(calibration.ENV, "off")
    result = CliRunner().invoke(app, args)
    assert result.exit_code != 0 and "TOKENDYN_AUTO: " in result.output
