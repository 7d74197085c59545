"""Stores: incremental zarr writes, resume after a kill, clear errors, netCDF export."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import xarray as xr

from tokendyn.app.config import make_config
from tokendyn.app.run import run_simulation
from tokendyn.app.store import StoreRepairWarning, export_netcdf, open_run, repair_store
from tokendyn.engine.kernels import fused
from tokendyn.errors import StoreError

SMALL = dict(
    n=24, d=3, beta=2.0, t_end=2.0, dt=0.1, save_every=2, stats=["energy", "effective_dim"]
)


def test_store_equals_in_memory_run(tmp_path):
    cfg = make_config(**SMALL)
    memory = run_simulation(cfg)
    stored = run_simulation(cfg, tmp_path / "run.zarr")
    xr.testing.assert_identical(memory.drop_attrs(), stored.load().drop_attrs())
    assert stored.attrs["config"] == cfg.to_json()


def test_resume_continues_a_shorter_run_exactly(tmp_path):
    full = run_simulation(make_config(**SMALL))
    out = tmp_path / "run.zarr"
    run_simulation(make_config(**{**SMALL, "t_end": 1.0}), out)
    resumed = run_simulation(make_config(**SMALL), out, resume=True).load()
    assert resumed["step"].values.tolist() == list(range(0, 21, 2))
    assert np.array_equal(resumed["x"].values, full["x"].values)


def test_resume_of_a_finished_run_changes_nothing(tmp_path):
    out = tmp_path / "run.zarr"
    first = run_simulation(make_config(**SMALL), out).load()
    again = run_simulation(make_config(**SMALL), out, resume=True).load()
    xr.testing.assert_identical(first, again)


def test_killed_run_resumes_from_its_last_frame(tmp_path):
    """A real `tokendyn simulate` process is killed with SIGKILL mid-run, then resumed."""
    out = tmp_path / "killed.zarr"
    flags = [
        "--n",
        "1000",
        "--d",
        "3",
        "--beta",
        "3",
        "--t-end",
        "30",
        "--dt",
        "0.05",
        "--save-every",
        "10",
        "--backend",
        "tiled",
        "--quiet",
    ]
    cmd = [
        sys.executable,
        "-c",
        "from tokendyn.cli import app; app()",
        "simulate",
        *flags,
        "--out",
        str(out),
    ]
    fused.load()  # build the C kernel here first: the subprocess must not spend its time compiling
    proc = subprocess.Popen(cmd, start_new_session=True)
    deadline = time.time() + 300
    frames = 0
    while time.time() < deadline and proc.poll() is None:
        time.sleep(0.2)
        if (out / "step" / "zarr.json").exists():
            try:
                frames = open_run(out).sizes["time"]
            except StoreError:  # caught between the writes of one frame's variables
                continue
            if frames >= 3:
                break
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert frames >= 3, "the run should have written frames before the kill"
    kept = repair_store(out)
    assert kept >= 3
    cfg = make_config(n=1000, d=3, beta=3.0, t_end=30.0, dt=0.05, save_every=10, backend="tiled")
    resumed = run_simulation(cfg, out, resume=True).load()
    assert resumed["step"].values.tolist() == list(range(0, 601, 10))
    last = min(kept + 2, 60)  # two frames past the kill, when the run had not nearly finished
    reference = run_simulation(cfg.model_copy(update={"t_end": float(resumed["time"][last])}))
    # Frames after the kill are recomputed from the stored float64 state: identical numerics.
    assert np.array_equal(resumed["x"].values[: last + 1], reference["x"].values)


def test_half_written_frame_is_dropped(tmp_path):
    """Simulate a kill between the writes of two variables of one frame: readers leave the
    uncommitted data out (the store untouched), resume's repair cuts it off."""
    import zarr

    out = tmp_path / "run.zarr"
    run_simulation(make_config(**SMALL), out)
    group = zarr.open_group(str(out), mode="r+")
    group["x"].resize((group["x"].shape[0] + 1, *group["x"].shape[1:]))
    with pytest.warns(StoreRepairWarning, match="uncommitted"):
        assert open_run(out).sizes["time"] == 11
    assert zarr.open_group(str(out))["x"].shape[0] == 12
    with pytest.warns(StoreRepairWarning, match="dropped"):
        assert repair_store(out) == 11
    assert zarr.open_group(str(out))["x"].shape[0] == 11


def test_resume_with_different_settings_is_refused(tmp_path):
    out = tmp_path / "run.zarr"
    run_simulation(make_config(**SMALL), out)
    with pytest.raises(
        StoreError, match=r"resume: .* different run \(beta: stored 2.0 vs now 3.0\)"
    ):
        run_simulation(make_config(**{**SMALL, "beta": 3.0}), out, resume=True)


def test_existing_store_is_not_overwritten_by_accident(tmp_path):
    out = tmp_path / "run.zarr"
    run_simulation(make_config(**SMALL), out)
    with pytest.raises(StoreError, match="already exists. Fix: add --resume"):
        run_simulation(make_config(**SMALL), out)
    run_simulation(make_config(**{**SMALL, "beta": 1.0}), out, overwrite=True)
    assert '"beta": 1.0' in open_run(out).attrs["config"]


def test_missing_and_corrupt_stores(tmp_path):
    with pytest.raises(StoreError, match="^store: nothing at"):
        open_run(tmp_path / "missing.zarr")
    junk = tmp_path / "junk.zarr"
    junk.mkdir()
    (junk / "zarr.json").write_text("{not json")
    with pytest.raises(StoreError, match="is not a readable"):
        open_run(junk)
    text = tmp_path / "notes.nc"
    text.write_text("hello")
    with pytest.raises(StoreError, match="is not a readable"):
        open_run(text)


def test_resume_without_out_is_an_error():
    with pytest.raises(StoreError, match="^resume:"):
        run_simulation(make_config(**SMALL), resume=True)


def test_netcdf_export_round_trip(tmp_path):
    stored = run_simulation(make_config(**{**SMALL, "batch": 2}), tmp_path / "run.zarr")
    path = export_netcdf(stored, tmp_path / "run.nc")
    back = open_run(Path(path))
    xr.testing.assert_identical(stored.load(), back.load())
    assert back["x"].dims == ("time", "batch", "token", "dim")
