"""Sweeps: batched = separate runs, nothing lost (resume, failures, a killed worker), errors."""

import os
import signal
import threading
import time

import numpy as np
import pytest

from tokendyn.app.config import make_config
from tokendyn.app.run import run_simulation
from tokendyn.app.sweep import (
    DONE,
    FAILED,
    PENDING,
    Sweep,
    SweepStore,
    open_sweep,
    run_points,
    run_sweep,
)
from tokendyn.errors import ConfigError, StoreError
from tokendyn.viz.plot import plot_phase

BASE = {"n": 24, "d": 3, "t_end": 6.0, "dt": 0.2, "save_every": 5}


def test_batched_points_equal_separate_runs():
    """One task with β × seed batched must reproduce each point's standalone simulation."""
    grid = {"beta": [1.0, 4.0], "seed": [0, 1, 2]}
    sweep = Sweep(BASE, grid)
    assert sweep.groups(list(range(6)), batch=True, max_batch=256) == [list(range(6))]
    results = run_points(BASE, [sweep.point(i) for i in range(6)])
    for i, result in enumerate(results):
        alone = run_simulation(make_config(**BASE, **sweep.point(i)))
        for name in ("clusters", "effective_dim", "energy"):
            np.testing.assert_allclose(result[name], alone[name].values, rtol=1e-10, atol=1e-12)
        ones = np.flatnonzero(alone["clusters"].values == 1)
        want = alone["time"].values[ones[0]] if len(ones) else np.nan
        np.testing.assert_equal(result["time_to_one_cluster"], want)


def test_random_matrices_make_seeds_unbatchable():
    sweep = Sweep({**BASE, "qkv": "random"}, {"beta": [1.0, 2.0], "seed": [0, 1]})
    assert sweep.batchable() == {"beta"}
    assert sweep.groups(list(range(4)), batch=True, max_batch=256) == [[0, 2], [1, 3]]
    assert sweep.groups(list(range(4)), batch=False, max_batch=256) == [[0], [1], [2], [3]]


def test_a_failing_point_is_recorded_and_the_others_complete():
    """β = 1 overflows (NaN) in this Euclidean 1/N setting, β = 1e-5 does not: the batch falls back
    to single points and only the bad one records its error."""
    base = {
        "space": "euclidean",
        "normalise": "n",
        "n": 16,
        "d": 3,
        "t_end": 1.0,
        "dt": 0.1,
        "init_cov": [[100.0, 0, 0], [0, 100.0, 0], [0, 0, 100.0]],
        "V": [[2.0, 0, 0], [0, 2.0, 0], [0, 0, 2.0]],
        "stats": ["effective_dim"],
    }
    good, bad = run_points(base, [{"beta": 1e-5}, {"beta": 1.0}])
    assert "error" not in good and np.isfinite(good["effective_dim"]).all()
    assert bad["error"].startswith("NonFiniteStateError: state: NaN or Inf appeared at step")


def test_sweep_store_resume_and_errors(tmp_path, monkeypatch):
    out = tmp_path / "sweep.zarr"
    sweep = Sweep(BASE, {"beta": [1.0, 4.0, -1.0], "seed": [0, 1]})
    ds = run_sweep(sweep, out, workers=1)
    assert ds["clusters"].dims == ("beta", "seed", "time")
    assert ds["status"].values.tolist() == [[DONE, DONE], [DONE, DONE], [FAILED, FAILED]]
    assert "beta: Input should be greater than 0" in str(ds["error"].values[2, 0])
    assert np.isnan(ds["clusters"].values[2]).all()
    first = ds["clusters"].values.copy()

    # A rerun skips finished points: mark two pending and make sure only they are recomputed.
    store = SweepStore.open_or_create(out, sweep)
    group = store._group()
    group["status"][0, 1] = PENDING
    group["status"][1, 0] = PENDING
    group["clusters"][0, 1] = np.nan
    group["clusters"][1, 0] = np.nan
    submitted = []
    real_groups = Sweep.groups
    monkeypatch.setattr(
        Sweep,
        "groups",
        lambda self, indices, batch, max_batch: (
            submitted.append(list(indices)) or real_groups(self, indices, batch, max_batch)
        ),
    )
    again = run_sweep(sweep, out, workers=1)
    # the first call groups every point for the memory check; the last one is what runs:
    # (β=1, seed=1) and (β=4, seed=0); the failed β=−1 are re-checked
    assert submitted[-1] == [1, 2]
    np.testing.assert_array_equal(again["clusters"].values, first)


def test_store_of_another_sweep_is_not_overwritten(tmp_path):
    out = tmp_path / "sweep.zarr"
    sweep = Sweep(BASE, {"beta": [1.0]})
    run_sweep(sweep, out, workers=1)
    before = open_sweep(out)
    with pytest.raises(StoreError, match="holds a different sweep; nothing was overwritten"):
        run_sweep(Sweep(BASE, {"beta": [2.0]}), out, workers=1)
    assert open_sweep(out).identical(before)


@pytest.mark.parametrize(
    ("base", "grid", "field"),
    [
        ({"bta": 1.0}, {"beta": [1.0]}, "bta"),
        ({}, {"colour": [1, 2]}, "colour"),
        ({}, {}, "grid"),
        ({}, {"beta": []}, "beta"),
        ({}, {"t_end": [1.0, 2.0]}, "t_end"),
        ({}, {"beta": [1.0, 1.0]}, "beta"),
    ],
)
def test_bad_sweep_files(base, grid, field):
    with pytest.raises(ConfigError, match=f"^{field}:"):
        Sweep(base, grid)


def test_sweep_file_tables(tmp_path):
    path = tmp_path / "s.toml"
    path.write_text("[base]\nn = 8\n[grid]\nbeta = [1.0, 2.0]\n[extra]\nx = 1\n")
    with pytest.raises(ConfigError, match="^extra: unknown table"):
        Sweep.from_toml(path)
    path.write_text("[base]\nn = 8\n[grid]\nbeta = [1.0, 2.0]\nseed = [0, 1, 2]\n")
    sweep = Sweep.from_toml(path)
    assert sweep.shape == (2, 3) and sweep.point(4) == {"beta": 2.0, "seed": 1}


def test_unreachable_scheduler(tmp_path, monkeypatch):
    monkeypatch.setattr("tokendyn.app.sweep.SCHEDULER_TIMEOUT", "1s")
    with pytest.raises(ConfigError, match="^scheduler: cannot reach"):
        run_sweep(Sweep(BASE, {"beta": [1.0]}), tmp_path / "s.zarr", scheduler="tcp://127.0.0.1:9")


def test_phase_diagram_figure_and_errors(tmp_path):
    out = tmp_path / "sweep.zarr"
    ds = run_sweep(Sweep(BASE, {"beta": [0.5, 1.0, 4.0], "seed": [0, 1]}), out, workers=1)
    fig = plot_phase(ds, "beta", "time", "clusters", path=tmp_path / "phase.png")
    mesh = fig.axes[0].collections[0]
    assert mesh.get_array().shape == (ds.sizes["time"], 3)  # (time, beta) cells, seeds averaged
    assert (tmp_path / "phase.png").stat().st_size > 1000
    with pytest.raises(ConfigError, match="^stat:"):
        plot_phase(ds, "beta", "time", "nope")
    with pytest.raises(ConfigError, match="^x:"):
        plot_phase(ds, "d", "time", "clusters")


def test_killed_worker_is_replaced_and_the_sweep_completes(tmp_path):
    """A real LocalCluster with 2 worker processes; one is SIGKILLed while tasks run."""
    from distributed import Client, LocalCluster

    out = tmp_path / "sweep.zarr"
    # 12 points of ~0.4 s each on 2 workers: the kill comes right after the first point is stored.
    base = {"n": 200, "d": 3, "t_end": 10.0, "dt": 0.02, "save_every": 100, "backend": "dense"}
    sweep = Sweep(base, {"beta": [0.5 * (i + 1) for i in range(12)], "seed": [0]})
    with (
        LocalCluster(
            n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None
        ) as cluster,
        Client(cluster) as client,
    ):
        pids = client.run(os.getpid)
        runner = threading.Thread(
            target=run_sweep,
            args=(sweep, out),
            kwargs={"scheduler": cluster.scheduler_address, "batch": False},
        )
        runner.start()
        deadline = time.time() + 120
        done_before = 0
        while time.time() < deadline and done_before == 0:
            time.sleep(0.02)
            if (out / "status" / "zarr.json").exists():
                done_before = int((SweepStore(out, sweep).status() == DONE).sum())
        os.kill(next(iter(pids.values())), signal.SIGKILL)
        runner.join(timeout=180)
    assert not runner.is_alive()
    assert done_before < sweep.size  # the kill really happened mid-sweep
    ds = open_sweep(out)
    assert (ds["status"].values == DONE).all(), ds["error"].values
    assert np.isfinite(ds["clusters"].values).all()
