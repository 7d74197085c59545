"""The calibrated `auto` backend (engine/kernels/calibration.py): the table's schema, choices that
follow a planted table, corrupt or foreign files recalibrated, a fixed number of timed calls, and
auto's results equal to the chosen backend's, bit for bit."""

import json
import threading

import pytest
import torch

from tokendyn.engine.kernels import (
    AutoBackend,
    DenseBackend,
    SdpaBackend,
    TiledBackend,
    fused,
)
from tokendyn.engine.kernels import calibration as cal
from tokendyn.errors import ConfigError

F64 = torch.float64


@pytest.fixture
def fresh(tmp_path, monkeypatch):
    """A private empty cache directory, no TOKENDYN_AUTO, no table in memory, and a fake timer
    that counts its calls and reports `fake.scale` s per call of `fake.fastest`, twice that for
    the other backends.
    The fused kernel is loaded first, from the usual cache (no rebuild in the empty directory)."""
    fused.load()
    directory = tmp_path / "cache"
    directory.mkdir(mode=0o700)
    monkeypatch.setenv("TOKENDYN_CACHE", str(directory))
    monkeypatch.delenv(cal.ENV, raising=False)
    monkeypatch.setattr(cal, "_TABLES", {})

    class Fake:
        fastest = "tiled"

        def __init__(self):
            self.calls: list[int] = []

        scale = 1e-9  # seconds per "call": far below the budget unless a test raises it

        def __call__(self, fn, loops):
            self.calls.append(loops)
            name = fn.__defaults__[0]  # the unit's backend name (bound as a lambda default)
            return self.scale * (1 if name == self.fastest else 2)

    fake = Fake()
    monkeypatch.setattr(cal, "_timed", fake)
    return fake


def _planted(best: str, n_grid=(8, 512, 2048), d_grid=(3, 16), dtype="float64", threads=None):
    """A valid file whose every cell has `best` fastest (dense only where N ≤ DENSE_MAX_N)."""
    threads = threads or cal._threads()
    cells = []
    for d in d_grid:
        for n in n_grid:
            names = cal.backends_for(n)
            seconds = {b: (1e-3 if b == best else 2e-3) for b in names}
            cells.append(
                {"n": n, "d": d, "best": min(seconds, key=seconds.get), "seconds": seconds}
            )
    entry = {"dtype": dtype, "threads": threads, "seconds": 0.5, "calls": 1, "cells": cells}
    return {"format": cal.FORMAT, "key": cal.cache_key(), "entries": {f"{dtype}:{threads}": entry}}


def _cloud(n, d, b=1, dtype=F64):
    return torch.randn(b, n, d, generator=torch.Generator().manual_seed(n + d), dtype=dtype)


def test_calibration_writes_a_valid_table_with_a_fixed_number_of_timed_calls(fresh):
    table = cal.table_for(F64)
    assert table is not None and table.dtype == "float64" and table.threads == cal._threads()
    # Exactly the planned timed calls, each of at most LOOP_PAIRS / 8² loops: the cost is bounded
    # by the plan, whatever the machine (the time itself is recorded, not asserted).
    assert len(fresh.calls) == table.calls == cal.planned_calls()
    assert max(fresh.calls) == cal.loops_for(cal.GRID_N[0]) == cal.LOOP_PAIRS // 64
    assert table.seconds > 0
    data = json.loads(cal.cache_path().read_text())
    assert set(data) == {"format", "key", "torch", "entries"}
    assert data["key"] == cal.cache_key() and data["torch"] == torch.__version__
    tables = cal.validate(data, cal.cache_key())
    assert list(tables) == [f"float64:{cal._threads()}"]
    cells = tables[f"float64:{cal._threads()}"].cells
    assert [(c["n"], c["d"]) for c in cells] == [(n, d) for n in cal.GRID_N for d in cal.GRID_D]
    for c in cells:
        assert set(c) == {"n", "d", "best", "seconds"}
        assert tuple(c["seconds"]) == cal.backends_for(c["n"])
        assert c["best"] == "tiled"  # the fake timer's fastest
    assert oct(cal.cache_path().stat().st_mode & 0o777) == oct(0o600)
    # Cached: a second process-level lookup reads the file, a second call does not re-measure.
    cal._TABLES.clear()
    assert cal.table_for(F64).cells == cells
    assert len(fresh.calls) == cal.planned_calls()
    # Refresh re-measures.
    cal.table_for(F64, refresh=True)
    assert len(fresh.calls) == 2 * cal.planned_calls()


def test_over_budget_the_remaining_cells_get_one_round(fresh):
    """Timed calls of 0.1 s per loop: the budget is spent inside the first cells (small N first);
    from then on one round per cell, so the number of measurements stays bounded."""
    fresh.scale = 0.1
    table = cal.table_for(F64)
    spent, expected = 0.0, 0
    for n in cal.GRID_N:
        for _ in cal.GRID_D:
            rounds = cal.REPEATS if spent < cal.BUDGET_S else 1
            for _ in range(rounds):
                for b in cal.backends_for(n):
                    spent += fresh.scale * (1 if b == "tiled" else 2) * cal.loops_for(n)
                    expected += 1
    assert cal.min_calls() < len(fresh.calls) == table.calls == expected < cal.planned_calls()
    assert {c["best"] for c in table.cells} == {"tiled"}


def test_a_second_dtype_is_added_to_the_same_file(fresh):
    cal.table_for(F64)
    cal.table_for(torch.float32)
    entries = json.loads(cal.cache_path().read_text())["entries"]
    assert sorted(entries) == sorted(f"{t}:{cal._threads()}" for t in ("float32", "float64"))


@pytest.mark.parametrize("best", ["dense", "tiled", "sdpa"])
def test_choose_follows_a_planted_table_and_auto_equals_the_chosen_backend(fresh, best):
    cal.cache_path().write_text(json.dumps(_planted(best)))
    cal.cache_path().chmod(0o600)
    auto = AutoBackend()
    fresh_instances = {"dense": DenseBackend(), "tiled": TiledBackend(), "sdpa": SdpaBackend()}
    for n, d in [(8, 2), (30, 3), (200, 8), (512, 16)]:
        x = _cloud(n, d)
        assert auto.choose(x, x).name == best
        got = auto.attend(1.5 * x, x, x)
        want = fresh_instances[best].attend(1.5 * x, x, x)
        assert torch.equal(got.out, want.out)
    assert fresh.calls == []  # the planted table was used, nothing measured


def test_dense_is_never_chosen_beyond_the_measured_sizes(fresh):
    cal.cache_path().write_text(json.dumps(_planted("dense")))
    cal.cache_path().chmod(0o600)
    auto = AutoBackend()
    x = _cloud(cal.DENSE_MAX_N, 3)
    assert auto.choose(x, x).name == "dense"
    big = _cloud(cal.DENSE_MAX_N + 1, 3)
    assert auto.choose(big, big).name != "dense"
    batch = _cloud(64, 3, b=cal.DENSE_MAX_N**2 // 64**2 + 1)  # B·N² above the limit
    assert auto.choose(batch, batch).name != "dense"


@pytest.mark.parametrize(
    "content",
    [
        "{not json",
        json.dumps({"format": 999, "entries": {}}),
        "FOREIGN",
        "BEST_NOT_FASTEST",
        "NEGATIVE_TIME",
    ],
)
def test_a_corrupt_or_foreign_table_is_recalibrated(fresh, content):
    if content == "FOREIGN":
        content = json.dumps({**_planted("sdpa"), "key": "fused-other-host"})
    elif content == "BEST_NOT_FASTEST":
        data = _planted("sdpa")
        next(iter(data["entries"].values()))["cells"][0]["best"] = "dense"
        content = json.dumps(data)
    elif content == "NEGATIVE_TIME":
        data = _planted("sdpa")
        next(iter(data["entries"].values()))["cells"][0]["seconds"]["sdpa"] = -1.0
        content = json.dumps(data)
    cal.cache_path().write_text(content)
    cal.cache_path().chmod(0o600)
    table = cal.table_for(F64)
    assert len(fresh.calls) == cal.planned_calls()  # measured again, the file not trusted
    assert {c["best"] for c in table.cells} == {"tiled"}
    assert cal.validate(json.loads(cal.cache_path().read_text()), cal.cache_key())


def test_a_table_file_writable_by_others_is_not_read(fresh):
    cal.cache_path().write_text(json.dumps(_planted("sdpa")))
    cal.cache_path().chmod(0o666)
    table = cal.table_for(F64)
    assert len(fresh.calls) == cal.planned_calls()
    assert {c["best"] for c in table.cells} == {"tiled"}


def test_tokendyn_auto_off_uses_the_fixed_rule(fresh, monkeypatch):
    monkeypatch.setenv(cal.ENV, "off")
    auto = AutoBackend()
    small, mid, wide = _cloud(16, 3), _cloud(1000, 3), _cloud(1000, 32)
    assert [auto.choose(x, x).name for x in (small, mid, wide)] == ["dense", "tiled", "sdpa"]
    assert fresh.calls == [] and not cal.cache_path().exists()


def test_tokendyn_auto_path_uses_that_table_and_rejects_a_bad_one(fresh, monkeypatch, tmp_path):
    path = tmp_path / "table.json"
    data = _planted("sdpa", threads=7)  # another thread count: the nearest one is used
    data["key"] = "made-elsewhere"  # a user table is not tied to this host
    path.write_text(json.dumps(data))
    monkeypatch.setenv(cal.ENV, str(path))
    x = _cloud(300, 3)
    assert AutoBackend().choose(x, x).name == "sdpa"
    assert AutoBackend().choose(x.float(), x.float()).name == "tiled"  # no float32 entry: rule
    assert fresh.calls == []
    path.write_text("{broken")
    monkeypatch.setattr(cal, "_TABLES", {})
    with pytest.raises(ConfigError, match=r"^TOKENDYN_AUTO: .*Fix: "):
        AutoBackend().choose(x, x)


def test_threads_starting_together_calibrate_once(fresh):
    barrier = threading.Barrier(4)
    tables = []

    def first_use():
        barrier.wait()
        tables.append(cal.table_for(F64))

    workers = [threading.Thread(target=first_use) for _ in range(4)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    assert len(fresh.calls) == cal.planned_calls()
    assert all(t is tables[0] for t in tables)


def test_nearest_cell_by_log_n_and_d_class():
    plan = {  # (d, n): (dense, tiled, sdpa) seconds
        (3, 8): (1e-3, 3e-3, 2e-3),
        (3, 512): (3e-3, 2e-3, 1e-3),
        (16, 8): (3e-3, 1e-3, 2e-3),
        (16, 512): (3e-3, 1e-3, 2e-3),
    }
    cells = []
    for (d, n), times in plan.items():
        seconds = dict(zip(cal.CANDIDATES, times, strict=True))
        cells.append({"n": n, "d": d, "best": min(seconds, key=seconds.get), "seconds": seconds})
    table = cal.Table("float64", 1, 0.0, 0, cells)
    assert table.best(60, 3) == "dense"  # log-nearer 8 than 512 (√(8·512) = 64)
    assert table.best(70, 3) == "sdpa"
    assert table.best(70, 6) == "sdpa"  # d = 6: log-nearer 3 than 16
    assert table.best(70, 7) == "tiled"  # d = 7: log-nearer 16
    assert table.best(8, 3, dense=False) == "sdpa"  # the fastest other than dense


def test_a_cache_directory_writable_by_others_is_not_written(fresh):
    cal.cache_path().parent.chmod(0o777)
    table = cal.table_for(F64)
    assert table is not None and len(fresh.calls) == cal.planned_calls()
    assert not cal.cache_path().exists()


def test_a_failed_write_leaves_no_file_and_still_serves_the_table(fresh, monkeypatch):
    def full_disk(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(cal.json, "dump", full_disk)
    assert cal.table_for(F64) is not None
    assert list(cal.cache_path().parent.glob("*.json")) == []


def test_tiled_is_kept_within_ten_percent_of_the_fastest():
    assert cal.pick({"dense": 1.0, "tiled": 1.09, "sdpa": 1.05}) == "tiled"
    assert cal.pick({"dense": 1.0, "tiled": 1.11, "sdpa": 1.05}) == "dense"
    assert cal.pick({"dense": 1.0, "sdpa": 1.05}) == "dense"
    cell = {"n": 8, "d": 3, "best": "dense", "seconds": {"dense": 1.0, "tiled": 1.05}}
    entry = {"dtype": "float64", "threads": 1, "seconds": 0.0, "calls": 0, "cells": [cell]}
    with pytest.raises(ValueError, match="best"):
        cal.validate({"format": cal.FORMAT, "entries": {"float64:1": entry}})
