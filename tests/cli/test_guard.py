"""The CLI's doors (issue 15): the top-level guard and `--debug`, output paths checked before any
work, memory estimated before any allocation (`--allow-large`), and single inputs that used to
raise a traceback. Every refusal is exactly one `error: <field>: <problem>. Fix: <fix>` line."""

from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path

import pytest
from typer.testing import CliRunner

import tokendyn.app.build as build_module
import tokendyn.app.run as run_module
from tokendyn.app.build import estimate_bytes
from tokendyn.app.config import make_config
from tokendyn.app.run import run_simulation
from tokendyn.cli import app

runner = CliRunner()
TINY = ["--n", "4", "--d", "2", "--t-end", "0.2", "--dt", "0.1", "--quiet"]
LINE = re.compile(r"^error: [\w.\[\]]+: .+\. Fix: .+$")


def one_line(result, code: int = 2, field: str | None = None) -> str:
    """The single non-empty output line of a refused command (exit `code`)."""
    assert isinstance(result.exception, SystemExit | None), repr(result.exception)
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert result.exit_code == code, result.output
    assert len(lines) == 1 and LINE.match(lines[0]), result.output
    if field is not None:
        assert lines[0].startswith(f"error: {field}: "), lines[0]
    return lines[0]


# -- the guard -----------------------------------------------------------------------------------


def _broken(*args, **kwargs):
    raise ZeroDivisionError("a planted bug\nover two lines")


def test_an_unexpected_exception_is_one_line_naming_a_bug(monkeypatch):
    monkeypatch.setattr(run_module, "run_simulation", _broken)
    line = one_line(runner.invoke(app, ["simulate", *TINY]), code=1, field="internal")
    assert "ZeroDivisionError: a planted bug over two lines" in line
    assert "bug in tokendyn" in line and "--debug" in line and "issue tracker" in line


def test_debug_lets_the_traceback_through(monkeypatch):
    monkeypatch.setattr(run_module, "run_simulation", _broken)
    result = runner.invoke(app, ["--debug", "simulate", *TINY])
    assert isinstance(result.exception, ZeroDivisionError)


def test_ctrl_c_is_one_line_and_exit_130(monkeypatch):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(run_module, "run_simulation", interrupted)
    line = one_line(runner.invoke(app, ["simulate", *TINY]), code=130, field="interrupted")
    assert "kept" in line


def test_input_errors_keep_exit_2_under_debug():
    one_line(runner.invoke(app, ["--debug", "simulate", *TINY, "--n", "0"]), field="n")


def test_seed_beyond_64_bits_is_one_line():
    one_line(runner.invoke(app, ["simulate", *TINY, "--seed", str(2**64)]), field="seed")
    assert runner.invoke(app, ["simulate", *TINY, "--seed", str(2**63 - 1)]).exit_code == 0


# -- output paths --------------------------------------------------------------------------------


def _unwritable_dir(tmp_path: Path) -> Path:
    """A folder this process cannot create files in (as root: /sys, which refuses even root)."""
    if os.geteuid() != 0:
        ro = tmp_path / "ro"
        ro.mkdir(mode=0o555)
        return ro
    try:
        tempfile.TemporaryFile(dir="/sys").close()
    except OSError:
        return Path("/sys")
    pytest.skip("no unwritable folder on this machine")


@pytest.fixture(scope="module")
def run_store(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("run") / "run.zarr"
    run_simulation(make_config(n=4, d=2, t_end=0.2, dt=0.1), out)
    return out


def _commands(run: Path, target: Path, sweep_toml: Path) -> dict[str, list[str]]:
    return {
        "simulate": ["simulate", *TINY, "--out", str(target / "run.zarr")],
        "sweep": ["sweep", str(sweep_toml), "--out", str(target / "s.zarr"), "--quiet"],
        "export": ["export", str(run), str(target / "run.nc")],
        "plot": ["plot", str(run), "--out", str(target / "figs")],
        "animate": ["animate", str(run), "--out", str(target / "a.gif")],
        "view": ["view", str(run), "--out", str(target / "v.html")],
        "dmft bifurcation": ["dmft", "bifurcation", "--beta-min", "1", "--beta-max", "1.1",
                             "--num", "1", "--n-record", "2", "--n-transient", "0",
                             "--out", str(target / "bif")],
        "icl train": ["icl", "train", "--steps", "1", "--out", str(target / "icl")],
        "reproduce": ["reproduce", "--quick", "--out", str(target / "report")],
    }  # fmt: skip


@pytest.mark.parametrize("where", ["under a file", "unwritable folder"])
def test_every_writer_refuses_a_bad_output_path_before_work(run_store, tmp_path, where):
    sweep_toml = tmp_path / "s.toml"
    sweep_toml.write_text("[base]\nn = 4\nd = 2\nt_end = 0.2\ndt = 0.1\n[grid]\nbeta = [1.0]\n")
    if where == "under a file":
        target = tmp_path / "a-file"
        target.write_text("user data\n")
        expect = "which is a file, not a folder"
    else:
        target = _unwritable_dir(tmp_path)
        expect = "cannot write in"
    for name, args in _commands(run_store, target, sweep_toml).items():
        line = one_line(runner.invoke(app, args))
        assert expect in line, (name, line)
    if where == "under a file":
        assert target.read_text() == "user data\n"


# -- memory estimates ----------------------------------------------------------------------------


def test_estimate_counts_state_frames_weights_and_the_dense_buffer():
    """n = 16, d = 3, float64, rk4, 11 frames kept, dense backend (B·N² ≤ 256²):
    (8 copies + 11 frames)·B·N·d·8 + 3·d²·8 + 2·B·H·N²·8 bytes."""
    cfg = make_config(n=16, d=3, t_end=1.0, dt=0.1)
    assert estimate_bytes(cfg, keep_frames=True) == 19 * 16 * 3 * 8 + 3 * 9 * 8 + 2 * 256 * 8
    assert estimate_bytes(cfg, keep_frames=False) == 9 * 16 * 3 * 8 + 3 * 9 * 8 + 2 * 256 * 8
    tiled = make_config(n=16, d=3, t_end=1.0, dt=0.1, backend="tiled")
    assert estimate_bytes(tiled, keep_frames=True) == 19 * 16 * 3 * 8 + 3 * 9 * 8


@pytest.mark.parametrize(
    ("field", "args"),
    [("n", ["--n", str(10**12)]), ("d", ["--d", "100000"]), ("batch", ["--batch", str(10**9)])],
)
def test_huge_runs_are_refused_with_the_estimate_before_allocation(monkeypatch, field, args):
    def no_build(*a, **k):
        raise AssertionError("built before the size check")

    monkeypatch.setattr(run_module, "build_run", no_build)
    line = one_line(runner.invoke(app, ["simulate", *TINY, *args]), field=field)
    assert re.search(r"needs ≈ [\d.]+ [kMGTPE]?B \(limit [\d.]+ [kMGTPE]?B available", line)
    assert "--allow-large" in line


def test_allow_large_lifts_the_limit(monkeypatch):
    monkeypatch.setattr(build_module, "available_memory", lambda device: 1000)
    line = one_line(runner.invoke(app, ["simulate", *TINY]), field="n")
    assert "limit 1 kB available" in line
    assert runner.invoke(app, ["simulate", *TINY, "--allow-large"]).exit_code == 0


def test_a_sweep_task_too_large_is_refused_before_the_store(tmp_path, monkeypatch):
    monkeypatch.setattr(build_module, "available_memory", lambda device: 1000)
    toml = tmp_path / "s.toml"
    toml.write_text("[base]\nn = 4\nd = 2\nt_end = 0.2\ndt = 0.1\n[grid]\nbeta = [1.0, 2.0]\n")
    line = one_line(runner.invoke(app, ["sweep", str(toml), "--out", str(tmp_path / "s.zarr")]))
    assert "B·N·d = 2·4·2" in line and "--max-batch" in line
    assert not (tmp_path / "s.zarr").exists()


# -- single inputs from the fault table --------------------------------------------------

CLOSURE = """attention = "softmax"
Q = [[1.0, 0.0], [0.0, 1.0]]
K = [[1.0, 0.0], [0.0, 1.0]]
V = [[1.0, 0.0], [0.0, 1.0]]
mean = [0.0, 0.0]
t_end = 1.0
"""


@pytest.mark.parametrize(
    ("cov", "field", "problem"),
    [
        ("[[1e308, 0.0], [0.0, 1e308]]", "cov", "overflows double precision"),
        ("[[1.0, 0.0], [0.0]]", "cov", "rows have different lengths"),
    ],
)
def test_closure_extreme_or_ragged_covariance(tmp_path, cov, field, problem):
    path = tmp_path / "c.toml"
    path.write_text(CLOSURE + f"cov = {cov}\n")
    assert problem in one_line(runner.invoke(app, ["closure", "--config", str(path)]), field=field)


def test_closure_with_a_large_but_finite_covariance_still_solves(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text(CLOSURE + "cov = [[1e3, 0.0], [0.0, 1e3]]\n")
    assert runner.invoke(app, ["closure", "--config", str(path), "--json"]).exit_code == 0


@pytest.mark.parametrize("command", ["simulate", "closure"])
def test_deeply_nested_toml_is_one_line(tmp_path, command):
    path = tmp_path / "deep.toml"
    path.write_text("n = " + "[" * 5000 + "]" * 5000 + "\n")
    line = one_line(runner.invoke(app, [command, "--config", str(path)]), field="config")
    assert "too deeply" in line


def test_ragged_init_cov_is_one_line(tmp_path):
    path = tmp_path / "r.toml"
    path.write_text('space = "euclidean"\nd = 2\ninit_cov = [[1.0, 0.0], [0.0]]\n')
    one_line(runner.invoke(app, ["simulate", *TINY, "--config", str(path)]), field="init_cov")


@pytest.mark.parametrize(
    ("field", "args"),
    [
        ("n_record", ["dmft", "lyapunov", "--beta", "1.3", "--n-record", "1"]),
        ("seed", ["dmft", "finite", "--beta", "1.3", "--n-se", "4", "--seed", "-1"]),
        ("tol", ["dmft", "finite", "--beta", "1.3", "--n-se", "4", "--tol", "nan"]),
        ("tol", ["dmft", "finite", "--beta", "1.3", "--n-se", "4", "--tol", "-1"]),
        ("lr", ["icl", "train", "--lr", "inf"]),
    ],
)
def test_dmft_and_icl_single_inputs(field, args):
    one_line(runner.invoke(app, args), field=field)
