"""Sweeps under faults: workers that die (in a task, at start-up, repeatedly) end the sweep with one
line naming the unfinished points, which stay pending; the in-process cluster opens only the
listeners it needs, all on 127.0.0.1, and leaves nothing in the temp folder; bad sweep inputs give
one line and exit code 2."""

import contextlib
import os
import signal
import threading
import time

import numpy as np
import psutil
import pytest
from typer.testing import CliRunner

import tokendyn.app.sweep as sweep_module
from tokendyn.app.sweep import (
    DONE,
    PENDING,
    Sweep,
    SweepStore,
    dask_client,
    open_sweep,
    run_points,
    run_sweep,
)
from tokendyn.cli import app
from tokendyn.errors import ConfigError

BASE = {"n": 8, "d": 3, "t_end": 0.4, "dt": 0.1}


def _exit_worker_at_beta_2(base, points):
    """run_points, except that a point with β = 2 kills its worker process (as a segfault or the
    OOM killer would)."""
    if any(p["beta"] == 2.0 for p in points):
        os._exit(1)
    return run_points(base, points)


def _worker_processes() -> list[psutil.Process]:
    """The worker processes (multiprocessing spawn children) of this test process."""
    found = []
    for child in psutil.Process().children(recursive=True):
        with contextlib.suppress(psutil.NoSuchProcess):
            if "spawn_main" in " ".join(child.cmdline()):
                found.append(child)
    return found


def _kill_workers() -> int:
    killed = 0
    for worker in _worker_processes():
        try:
            os.kill(worker.pid, signal.SIGKILL)
            killed += 1
        except ProcessLookupError:
            pass
    return killed


def _listening() -> set[tuple[str, int]]:
    """(ip, port) of every listening inet socket of this process and its children."""
    found = set()
    for proc in [psutil.Process(), *psutil.Process().children(recursive=True)]:
        with contextlib.suppress(psutil.NoSuchProcess):
            found |= {
                (c.laddr.ip, c.laddr.port)
                for c in proc.net_connections(kind="inet")
                if c.status == psutil.CONN_LISTEN
            }
    return found


def _port(address: str) -> tuple[str, int]:
    host, port = address.removeprefix("tcp://").rsplit(":", 1)
    return host, int(port)


def test_cluster_listeners_scratch_space_and_a_worker_killed_by_its_task(tmp_path, monkeypatch):
    """The in-process cluster: Dask starts an HTTP server (dashboard/metrics: port 8787 and one per
    worker) even with dashboard_address=None, and scratch space under the system temp folder;
    neither may remain. Then a real worker death (os._exit inside a task): with allowed failures
    0 the scheduler gives up on that task at once (KilledWorker); the other point completes, the
    dead one stays pending, and the one-line error names it."""
    import tempfile

    tmp = tmp_path / "tmp"
    tmp.mkdir()
    monkeypatch.setenv("TMPDIR", str(tmp))
    monkeypatch.setattr(tempfile, "tempdir", str(tmp))
    monkeypatch.setattr(sweep_module, "ALLOWED_FAILURES", 0)
    monkeypatch.setattr(sweep_module, "run_points", _exit_worker_at_beta_2)
    out = tmp_path / "s.zarr"
    with dask_client(2, None) as client:
        expected = {_port(client.scheduler.address)}
        for address, worker in client.scheduler_info()["workers"].items():
            expected |= {_port(address), _port(worker["nanny"])}
        assert len(expected) == 5  # scheduler + 2 nannies + 2 workers
        assert _listening() == expected
        assert {host for host, _ in expected} == {"127.0.0.1"}
        (scratch,) = tmp.iterdir()  # all scratch space is in one private directory
        assert scratch.name.startswith("tokendyn-dask-") and scratch.stat().st_mode & 0o077 == 0

        with pytest.raises(ConfigError) as caught:
            run_sweep(
                Sweep(BASE, {"beta": [1.0, 2.0]}),
                out,
                scheduler=client.scheduler.address,
                batch=False,
            )
        message = str(caught.value)
        assert message.startswith(
            "scheduler: gave up with 1 of 2 points unfinished (their workers kept dying): "
            "beta=2.0; they stay pending in "
        )
        assert "\n" not in message and "Fix: rerun the same command" in message
        assert open_sweep(out)["status"].values.tolist() == [DONE, PENDING]
        assert list(tmp.iterdir()) == [scratch]
    assert list(tmp.iterdir()) == []


def test_no_worker_alive_gives_up_after_the_stall_timeout(tmp_path):
    """A scheduler without workers: the sweep used to wait for ever; now it gives up after
    stall_timeout with every point pending."""
    from distributed import LocalCluster

    out = tmp_path / "s.zarr"
    sweep = Sweep(BASE, {"beta": [1.0, 2.0, 3.0]})
    with LocalCluster(n_workers=0, processes=True, dashboard_address=None) as cluster:
        start = time.monotonic()
        with pytest.raises(ConfigError) as caught:
            run_sweep(sweep, out, scheduler=cluster.scheduler_address, stall_timeout=1.0)
        elapsed = time.monotonic() - start
    assert str(caught.value).startswith(
        "scheduler: gave up with 3 of 3 points unfinished (no worker alive for 1 s): "
        "beta=1.0; beta=2.0; beta=3.0; they stay pending"
    )
    assert 1.0 <= elapsed < 10.0
    assert (SweepStore(out, sweep).status() == PENDING).all()


def test_a_worker_killed_during_start_up_gives_one_line():
    stop = threading.Event()

    def killer():
        while not stop.is_set():
            _kill_workers()
            time.sleep(0.05)

    thread = threading.Thread(target=killer)
    thread.start()
    try:
        with (
            pytest.raises(ConfigError, match="^workers: the local Dask cluster did not start"),
            dask_client(1, None),
        ):
            pass
    finally:
        stop.set()
        thread.join()


@pytest.mark.slow
def test_workers_killed_again_and_again_then_the_rerun_finishes(tmp_path):
    """SIGKILL every worker (and each replacement) for a while during a 2-worker sweep: it ends
    with one line (it used to hang for ever once no worker was left); a rerun finishes it."""
    out = tmp_path / "s.zarr"
    base = {"n": 200, "d": 3, "t_end": 4.0, "dt": 0.02, "save_every": 50, "backend": "dense"}
    sweep = Sweep(base, {"beta": [0.5 * (i + 1) for i in range(8)]})
    outcome: list[BaseException | None] = []

    def sweep_in_thread():
        try:
            run_sweep(sweep, out, workers=2, batch=False, stall_timeout=5.0)
            outcome.append(None)
        except BaseException as err:  # handed to the test thread
            outcome.append(err)

    runner = threading.Thread(target=sweep_in_thread)
    runner.start()
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and not (
        (out / "status" / "zarr.json").exists() and (SweepStore(out, sweep).status() == DONE).any()
    ):
        time.sleep(0.05)
    kills, until = 0, time.monotonic() + 10
    while time.monotonic() < until and runner.is_alive():
        kills += _kill_workers()
        time.sleep(0.5)
    runner.join(timeout=120)
    assert not runner.is_alive() and kills >= 2
    (err,) = outcome
    assert isinstance(err, ConfigError) and str(err).startswith("workers: gave up with ")
    status = SweepStore(out, sweep).status()
    assert (status == DONE).any() and (status == PENDING).any()
    ds = run_sweep(sweep, out, workers=2, batch=False)
    assert (ds["status"].values == DONE).all()
    assert np.isfinite(ds["clusters"].values).all()


runner = CliRunner()


def _sweep_file(tmp_path, text: str):
    path = tmp_path / "s.toml"
    path.write_text(text)
    return str(path)


@pytest.mark.parametrize(
    ("toml", "extra", "field"),
    [
        ("base = 3\n[grid]\nbeta = [1.0]\n", [], "base"),
        ("grid = [1, 2]\n[base]\nn = 8\n", [], "grid"),
        ('grid = "beta"\n[base]\nn = 8\n', [], "grid"),
        ("[base]\nn = 8\ndt = inf\n[grid]\nbeta = [1.0, 2.0]\n", [], "dt"),
        ("[base]\nn = 8\nt_end = 1e300\ndt = 1\n[grid]\nbeta = [1.0]\n", [], "dt"),
        ("[base]\nn = 8\n[grid]\nbeta = [1979-05-27]\n", [], "beta"),
        ("[base]\nn = 8\n[grid]\nbeta = [1.0]\n", ["--scheduler", "not a url"], "scheduler"),
        ("[base]\nn = 8\n[grid]\nbeta = [1.0]\n", ["--workers", "0"], "workers"),
        ("[base]\nn = 8\n[grid]\nbeta = [1.0]\n", ["--stall-timeout", "nan"], "stall_timeout"),
    ],
)
def test_bad_sweep_inputs_give_one_line(tmp_path, toml, extra, field):
    out = tmp_path / "out.zarr"
    result = runner.invoke(app, ["sweep", _sweep_file(tmp_path, toml), "--out", str(out), *extra])
    assert result.exit_code == 2, result.output
    assert result.output.startswith(f"error: {field}: ") and ". Fix: " in result.output
    assert result.output.count("\n") == 1, result.output
    assert not out.exists()  # nothing written


def test_unknown_table_error_keeps_its_brackets(tmp_path):
    toml = "[base]\nn = 8\n[grid]\nbeta = [1.0]\n[extra]\nx = 1\n"
    result = runner.invoke(app, ["sweep", _sweep_file(tmp_path, toml), "--out", "x.zarr"])
    assert result.exit_code == 2
    assert "Fix: use only [base] and [grid]" in result.output
