"""Data safety: a crash before any store write resumes exactly; a damaged store is refused (or
its uncommitted tail left out) by every reader; nothing tokendyn did not write is replaced."""

import asyncio
import gc
import json
import os
import re
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
import xarray as xr
import zarr
import zarr.storage
from typer.testing import CliRunner
from zarr.core.sync import _get_loop

from tokendyn.app.config import make_config
from tokendyn.app.run import run_simulation
from tokendyn.app.store import MARKER, StoreRepairWarning, open_run
from tokendyn.cli import app
from tokendyn.errors import StoreError

SMALL = dict(n=8, d=3, t_end=1.0, dt=0.1, save_every=1)
SIM_FLAGS = ["--n", "8", "--d", "3", "--t-end", "1", "--dt", "0.1", "--save-every", "1"]
runner = CliRunner()


class CrashError(Exception):
    """Stands for the process dying before a store write."""


@pytest.fixture
def crash_after(monkeypatch):
    """crash_after(k): the (k+1)-th write to any zarr store and every later one raise CrashError,
    as if the process had died there; crash_after(None) first lets writes already under way
    (zarr writes chunks concurrently) finish, then writes work again. Returns a counter."""
    original = zarr.storage.LocalStore.set
    state = {"left": None, "writes": 0, "busy": 0}

    async def set_or_crash(self, key, value):
        state["writes"] += 1
        if state["left"] is not None:
            if state["left"] == 0:
                raise CrashError(key)
            state["left"] -= 1
        state["busy"] += 1
        try:
            return await original(self, key, value)
        finally:
            state["busy"] -= 1

    monkeypatch.setattr(zarr.storage.LocalStore, "set", set_or_crash)

    def pending() -> bool:
        return bool(state["busy"]) or any(not t.done() for t in asyncio.all_tasks(_get_loop()))

    def arm(k: int | None) -> dict:
        while k is None and pending():
            time.sleep(0.001)
        state["left"] = k
        return state

    return arm


def assert_same_run(got: xr.Dataset, ref: xr.Dataset) -> None:
    assert got["step"].values.tolist() == ref["step"].values.tolist()  # no duplicate, no gap
    for name in ref.variables:
        assert np.array_equal(got[name].values, ref[name].values), name


@pytest.mark.parametrize(
    "fields",
    [
        # three frames: the store's creation and two appends, the pattern every frame repeats
        {**SMALL, "t_end": 0.2, "stats": ["energy"]},
        pytest.param(SMALL, marks=pytest.mark.slow),
    ],
)
def test_resume_is_exact_after_a_crash_before_every_store_write(tmp_path, crash_after, fields):
    cfg = make_config(**fields)
    ref = run_simulation(cfg, tmp_path / "ref.zarr").load()
    writes = crash_after(None)["writes"]
    frames = ref.sizes["time"]
    assert writes > frames * 4  # every frame writes several arrays: each write is a kill point
    for k in range(writes):
        out = tmp_path / f"k{k}.zarr"
        crash_after(k)
        with pytest.raises(CrashError):
            run_simulation(cfg, out)
        crash_after(None)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", StoreRepairWarning)
            resumed = run_simulation(cfg, out, resume=True).load()
        assert_same_run(resumed, ref)
        assert zarr.open_group(str(out)).attrs["frames_committed"] == frames


def test_resume_after_only_frame_0_does_not_write_it_twice(tmp_path, crash_after):
    """Issue 16: a kill once every array held one frame made --resume save step 0 again."""
    cfg = make_config(**SMALL)
    ref = run_simulation(cfg).load()
    first_frame_writes = None
    for k in range(200):  # the first k after which exactly frame 0 is committed
        out = tmp_path / f"k{k}.zarr"
        crash_after(k)
        with pytest.raises(CrashError):
            run_simulation(cfg, out)
        crash_after(None)
        if zarr.open_group(str(out)).attrs.get("frames_committed") == 1:
            first_frame_writes = k
            break
    assert first_frame_writes is not None
    resumed = run_simulation(cfg, out, resume=True).load()
    assert resumed["step"].values.tolist() == list(range(11))
    assert_same_run(resumed, ref)


@pytest.mark.slow
@pytest.mark.parametrize("kill_at", [3, 27, 40, 64])
def test_sigkill_before_a_store_write_then_resume(tmp_path, kill_at):
    """A real SIGKILL of the process right before its (kill_at+1)-th store write."""
    out = tmp_path / "run.zarr"
    code = (
        "import os, signal, zarr.storage\n"
        "orig = zarr.storage.LocalStore.set\n"
        f"left = [{kill_at}]\n"
        "async def killer(self, key, value):\n"
        "    if left[0] == 0:\n"
        "        os.kill(os.getpid(), signal.SIGKILL)\n"
        "    left[0] -= 1\n"
        "    return await orig(self, key, value)\n"
        "zarr.storage.LocalStore.set = killer\n"
        "from tokendyn.cli import app\n"
        "app()\n"
    )
    cmd = [sys.executable, "-c", code, "simulate", *SIM_FLAGS, "--quiet", "--out", str(out)]
    proc = subprocess.run(cmd, capture_output=True, timeout=120)
    assert proc.returncode == -signal.SIGKILL
    ref = run_simulation(make_config(**SMALL)).load()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", StoreRepairWarning)
        resumed = run_simulation(make_config(**SMALL), out, resume=True).load()
    assert_same_run(resumed, ref)


# ------------------------------------------------------------------------------------------------
# damaged stores × (resume, plot, export)


def _delete_step_chunk(out):
    (out / "step" / "c" / "10").unlink()


def _delete_x_chunk(out):
    (out / "x" / "c" / "5" / "0" / "0").unlink()


def _empty_chunk(out):
    (out / "x" / "c" / "10" / "0" / "0").write_bytes(b"")


def _random_chunk(out):
    path = out / "energy" / "c" / "4"
    path.write_bytes(np.random.default_rng(0).bytes(path.stat().st_size))


def _random_last_x_chunk(out):
    path = out / "x" / "c" / "10" / "0" / "0"
    path.write_bytes(np.random.default_rng(1).bytes(path.stat().st_size))


def _deleted_step_metadata(out):
    (out / "step" / "zarr.json").unlink()


def _garbage_group_json(out):
    (out / "zarr.json").write_text('{"zarr_format": 3, "node_type": "gro')


def _garbage_array_json(out):
    (out / "time" / "zarr.json").write_bytes(b"\x00\xff garbage")


def _missing_config(out):
    meta = json.loads((out / "zarr.json").read_text())
    del meta["attributes"]["config"]
    (out / "zarr.json").write_text(json.dumps(meta))


def _broken_config(out):
    meta = json.loads((out / "zarr.json").read_text())
    meta["attributes"]["config"] = json.dumps({"n": 8, "dt": -1})
    (out / "zarr.json").write_text(json.dumps(meta))


def _committed_beyond_data(out):
    meta = json.loads((out / "zarr.json").read_text())
    meta["attributes"]["frames_committed"] = 12
    (out / "zarr.json").write_text(json.dumps(meta))


def _shifted_steps(out):
    group = zarr.open_group(str(out), mode="r+")
    group["step"][3] = 7


DAMAGE = {  # kind: (damage, regex the one-line refusal matches)
    "deleted step chunk": (_delete_step_chunk, "chunk step/c/10 is missing"),
    "deleted x chunk": (_delete_x_chunk, "chunk x/c/5/0/0 is missing"),
    "empty chunk": (_empty_chunk, "'x' frames 10… cannot be decoded"),
    "random-byte chunk": (_random_chunk, "'energy' frames 4… cannot be decoded"),
    "random-byte last x chunk": (_random_last_x_chunk, "'x' frames 10… cannot be decoded"),
    "deleted step metadata": (
        _deleted_step_metadata,
        "no array step along time|files tokendyn did not write: .*run.zarr/step\\)",
    ),
    "garbage group zarr.json": (
        _garbage_group_json,
        "zarr.json is not a readable zarr group|not a readable tokendyn store",
    ),
    "garbage array zarr.json": (_garbage_array_json, "not a readable tokendyn store"),
    "missing config attr": (_missing_config, "no readable 'config'|attrs lack config"),
    "config that does not parse": (_broken_config, "config attribute does not parse"),
    "committed count beyond the data": (_committed_beyond_data, "holds 11 frames but 12"),
    "steps out of order": (_shifted_steps, "'step' does not increase at frame 4"),
}


@pytest.fixture(scope="module")
def finished_store(tmp_path_factory):
    out = tmp_path_factory.mktemp("finished") / "run.zarr"
    run_simulation(make_config(**SMALL), out)
    return out


def _damaged_copy(finished_store, tmp_path, damage):
    import shutil

    out = tmp_path / "run.zarr"
    shutil.copytree(finished_store, out)
    damage(out)
    return out


@pytest.mark.parametrize("kind", list(DAMAGE))
def test_damaged_store_is_refused_by_resume(finished_store, tmp_path, kind):
    damage, message = DAMAGE[kind]
    out = _damaged_copy(finished_store, tmp_path, damage)
    before = sorted(p.relative_to(out) for p in out.rglob("*"))
    with pytest.raises(StoreError, match=rf"^(store|out): .*({message})") as err:
        run_simulation(make_config(**{**SMALL, "t_end": 2.0}), out, resume=True)
    assert "\n" not in str(err.value)
    assert sorted(p.relative_to(out) for p in out.rglob("*")) == before  # nothing restarted


@pytest.mark.parametrize("command", ["plot", "export", "animate"])
@pytest.mark.parametrize("kind", list(DAMAGE))
def test_damaged_store_is_refused_by_readers(finished_store, tmp_path, kind, command):
    damage, message = DAMAGE[kind]
    out = _damaged_copy(finished_store, tmp_path, damage)
    target = {
        "plot": ["--out", str(tmp_path / "figs")],
        "animate": ["--out", str(tmp_path / "a.gif")],
    }
    args = [command, str(out), *target.get(command, [])]
    if command == "export":
        args.append(str(tmp_path / "run.nc"))
    result = runner.invoke(app, args)
    assert result.exit_code == 2, result.output
    assert re.search(message, result.output.replace("\n", "")), result.output
    assert "Traceback" not in result.output
    assert not (tmp_path / "run.nc").exists() and not (tmp_path / "a.gif").exists()
    assert not list((tmp_path / "figs").glob("*.png")) if (tmp_path / "figs").exists() else True


def test_uncommitted_frame_is_left_out_by_readers_and_cut_by_resume(finished_store, tmp_path):
    """A kill in the middle of frame 11 of a longer run: arrays longer than the commit."""
    out = _damaged_copy(finished_store, tmp_path, lambda out: None)
    group = zarr.open_group(str(out), mode="r+")
    for name in ("x", "energy"):
        group[name].resize((12, *group[name].shape[1:]))
        group[name][11] = group[name][10]
    ref = open_run(finished_store).load()
    with pytest.warns(StoreRepairWarning, match="uncommitted"):
        assert_same_run(open_run(out).load(), ref)
    with pytest.warns(StoreRepairWarning, match="uncommitted"):
        result = runner.invoke(app, ["export", str(out), str(tmp_path / "run.nc")])
    assert result.exit_code == 0
    assert_same_run(open_run(tmp_path / "run.nc"), ref)
    longer = make_config(**{**SMALL, "t_end": 1.5})
    with pytest.warns(StoreRepairWarning, match="dropped"):
        resumed = run_simulation(longer, out, resume=True).load()
    assert_same_run(resumed, run_simulation(longer).load())


@pytest.mark.filterwarnings("error::pytest.PytestUnraisableExceptionWarning")
def test_damaged_netcdf_export_is_refused(finished_store, tmp_path):
    nc = tmp_path / "run.nc"
    assert runner.invoke(app, ["export", str(finished_store), str(nc)]).exit_code == 0
    data = bytearray(nc.read_bytes())
    data[len(data) // 2 : len(data) // 2 + 4096] = np.random.default_rng(1).bytes(4096)
    nc.write_bytes(bytes(data))
    result = runner.invoke(app, ["plot", str(nc), "--out", str(tmp_path / "figs")])
    assert result.exit_code == 2 and "store:" in result.output, result.output
    gc.collect()  # a half-opened h5netcdf File would print a traceback from its finaliser here


# ------------------------------------------------------------------------------------------------
# --overwrite and --out replace only what tokendyn wrote


def _plant(path: Path, kind: str) -> Path:
    """A user's file, or a user's folder with a file, at `path`; returns the file."""
    if kind == "file":
        path.write_text("precious")
        return path
    path.mkdir()
    (path / "keep").write_text("precious")
    return path / "keep"


def _user_store(path: Path) -> Path:
    """A zarr group that is not a tokendyn store (no tokendyn metadata)."""
    zarr.open_group(str(path), mode="w", attributes={"owner": "someone"})
    (path / "keep").write_text("precious")
    return path / "keep"


@pytest.mark.parametrize("kind", ["file", "folder", "foreign zarr"])
def test_simulate_overwrite_keeps_what_is_not_a_tokendyn_store(tmp_path, kind):
    out = tmp_path / "d"
    keep = _user_store(out) if kind == "foreign zarr" else _plant(out, kind)
    for extra in (["--overwrite"], ["--resume"], []):
        result = runner.invoke(app, ["simulate", *SIM_FLAGS, "--out", str(out), *extra])
        assert result.exit_code == 2 and "out:" in result.output and "Fix" in result.output
        assert keep.read_text() == "precious"


def test_a_user_file_inside_a_store_is_never_deleted(tmp_path):
    out = tmp_path / "run.zarr"
    assert runner.invoke(app, ["simulate", *SIM_FLAGS, "--out", str(out)]).exit_code == 0
    (out / "x" / "notes.txt").write_text("precious")
    result = runner.invoke(app, ["simulate", *SIM_FLAGS, "--out", str(out), "--overwrite"])
    assert result.exit_code == 2 and "did not write" in result.output
    assert (out / "x" / "notes.txt").read_text() == "precious"


def test_out_dot_never_empties_the_working_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    keep = _plant(tmp_path / "keep.txt", "file")
    for command in (
        ["simulate", *SIM_FLAGS, "--out", ".", "--overwrite"],
        ["simulate", *SIM_FLAGS, "--out", "..", "--overwrite"],
        ["simulate", *SIM_FLAGS, "--out", ".", "--resume"],
    ):
        result = runner.invoke(app, command)
        assert result.exit_code == 2 and "out:" in result.output, result.output
        assert keep.read_text() == "precious"


def test_overwrite_replaces_its_own_store(tmp_path):
    out = tmp_path / "run.zarr"
    assert runner.invoke(app, ["simulate", *SIM_FLAGS, "--out", str(out)]).exit_code == 0
    result = runner.invoke(
        app, ["simulate", *SIM_FLAGS, "--beta", "2", "--out", str(out), "--overwrite"]
    )
    assert result.exit_code == 0, result.output
    assert json.loads(open_run(out).attrs["config"])["beta"] == 2.0


@pytest.fixture(scope="module")
def sweep_store(tmp_path_factory):
    root = tmp_path_factory.mktemp("sweep")
    spec = root / "s.toml"
    spec.write_text("[base]\nn = 8\nd = 3\nt_end = 0.2\ndt = 0.1\n[grid]\nbeta = [1.0, 2.0]\n")
    out = root / "s.zarr"
    result = runner.invoke(app, ["sweep", str(spec), "--out", str(out), "--workers", "1"])
    assert result.exit_code == 0, result.output
    return out


@pytest.mark.parametrize("kind", ["file", "folder"])
def test_every_out_keeps_a_user_file(finished_store, sweep_store, tmp_path, kind):
    """Each command that writes to a user-given path refuses a path that holds the user's data,
    before doing any work; run twice to its own output, it replaces that."""
    cases = {
        "export": lambda p: ["export", str(finished_store), str(p)],
        "animate": lambda p: ["animate", str(finished_store), "--out", str(p)],
        "plot": lambda p: ["plot", str(finished_store), "--out", str(p)],
        "plot-phase": lambda p: ["plot-phase", str(sweep_store), "--out", str(p)],
        "reproduce": lambda p: ["reproduce", "--quick", "--section", "engine", "--out", str(p)],
        "icl train": lambda p: ["icl", "train", "--steps", "1", "--out", str(p)],
        "dmft bifurcation": lambda p: [
            "dmft",
            "bifurcation",
            "--beta-min",
            "1",
            "--beta-max",
            "2",
            "--num",
            "2",
            "--n-record",
            "10",
            "--out",
            str(p),
        ],
    }
    suffix = {"export": ".nc", "animate": ".gif", "plot-phase": ".png"}
    for name, args in cases.items():
        target = tmp_path / f"{name.replace(' ', '_')}{suffix.get(name, '')}"
        keep = _plant(target, kind)
        result = runner.invoke(app, args(target))
        assert result.exit_code == 2, (name, result.output)
        assert "out:" in result.output and "Fix" in result.output, (name, result.output)
        assert keep.read_text() == "precious", name


def test_own_outputs_are_replaced_on_a_second_run(finished_store, sweep_store, tmp_path):
    cases = [
        ["export", str(finished_store), str(tmp_path / "run.nc")],
        ["animate", str(finished_store), "--out", str(tmp_path / "run.gif")],
        ["plot", str(finished_store), "--out", str(tmp_path / "figs")],
        ["plot-phase", str(sweep_store), "--out", str(tmp_path / "phase.png")],
    ]
    for args in cases:
        for _ in range(2):
            result = runner.invoke(app, args)
            assert result.exit_code == 0, (args, result.output)
    assert (tmp_path / "figs" / MARKER).is_file()
    assert not list(tmp_path.glob(".*.partial"))


def test_plot_out_dot_is_refused_in_a_used_folder(finished_store, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "sphere.png").write_text("a user's figure")
    result = runner.invoke(app, ["plot", str(finished_store), "--out", "."])
    assert result.exit_code == 2 and "not a tokendyn output folder" in result.output
    assert (tmp_path / "sphere.png").read_text() == "a user's figure"
    assert not os.path.exists(tmp_path / MARKER)
