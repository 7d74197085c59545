"""The command line: flags and config files, friendly errors, plot/animate/export, reproduce."""

import json

import pytest
from typer.testing import CliRunner

from tokendyn.app.store import open_run
from tokendyn.cli import app

runner = CliRunner()
FAST = ["--n", "16", "--d", "3", "--t-end", "1", "--dt", "0.1", "--quiet"]


def invoke(*args: str):
    return runner.invoke(app, list(args), catch_exceptions=False)


def test_simulate_writes_a_store_with_every_flag(tmp_path):
    out = tmp_path / "run.zarr"
    result = invoke(
        "simulate",
        "--attention",
        "l2",
        "--heads",
        "3",
        "--mask",
        "causal",
        "--normalise",
        "softmax",
        "--space",
        "euclidean",
        "--beta",
        "0.5",
        "--qkv",
        "random",
        "--seed",
        "3",
        "--method",
        "heun",
        "--save-every",
        "2",
        "--dtype",
        "float32",
        "--device",
        "cpu",
        "--backend",
        "tiled",
        "--out",
        str(out),
        *FAST,
    )
    assert result.exit_code == 0, result.output
    ds = open_run(out)
    assert ds["x"].dims == ("time", "token", "dim") and ds["x"].dtype == "float32"
    assert ds["time"].values.tolist() == pytest.approx([0, 0.2, 0.4, 0.6, 0.8, 1.0])
    cfg = json.loads(ds.attrs["config"])
    assert (cfg["attention"], cfg["heads"], cfg["mask"], cfg["method"]) == (
        "l2",
        3,
        "causal",
        "heun",
    )


def test_config_file_with_flag_override(tmp_path):
    conf = tmp_path / "run.toml"
    conf.write_text('attention = "sinkhorn"\nn = 10\nbeta = 2.0\nt_end = 0.5\ndt = 0.1\n')
    out = tmp_path / "run.zarr"
    assert (
        invoke(
            "simulate", "--config", str(conf), "--beta", "4", "--quiet", "--out", str(out)
        ).exit_code
        == 0
    )
    cfg = json.loads(open_run(out).attrs["config"])
    assert (cfg["attention"], cfg["n"], cfg["beta"]) == ("sinkhorn", 10, 4.0)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--beta", "0"], "beta"),
        (["--beta", "-1"], "beta"),
        (["--heads", "2"], "heads"),
        (["--space", "sphere", "--d", "1"], "d"),
        (["--dt", "0.3"], "dt"),
    ],
)
def test_bad_flags_give_one_clear_line(args, message):
    result = runner.invoke(app, ["simulate", "--n", "8", "--t-end", "1", *args])
    assert result.exit_code == 2
    assert "error:" in result.output and message in result.output and "Fix" in result.output
    assert "Traceback" not in result.output


def test_malformed_config_and_missing_store(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("n = = 3")
    result = runner.invoke(app, ["simulate", "--config", str(bad)])
    assert result.exit_code == 2 and "not valid TOML" in result.output
    result = runner.invoke(app, ["plot", str(tmp_path / "none.zarr")])
    assert result.exit_code == 2 and "store: nothing at" in result.output


def test_plot_animate_export(tmp_path):
    out = tmp_path / "run.zarr"
    invoke("simulate", "--out", str(out), *FAST)
    result = invoke("plot", str(out), "--out", str(tmp_path / "figs"))
    pngs = sorted((tmp_path / "figs").glob("*.png"))
    assert result.exit_code == 0 and pngs and all(p.stat().st_size > 1000 for p in pngs)
    assert invoke("animate", str(out), "--out", str(tmp_path / "run.gif")).exit_code == 0
    assert (tmp_path / "run.gif").stat().st_size > 1000
    assert invoke("export", str(out), str(tmp_path / "run.nc")).exit_code == 0
    assert open_run(tmp_path / "run.nc").sizes["time"] == 11


def test_bench_json_lines_have_the_contract_keys():
    result = invoke(
        "bench",
        "--json",
        "--n",
        "64",
        "--d",
        "3",
        "--backend",
        "tiled",
        "--backend",
        "naive",
        "--repeats",
        "1",
    )
    rows = [json.loads(line) for line in result.output.strip().splitlines()]
    keys = [
        "backend",
        "n",
        "d",
        "dtype",
        "seconds",
        "pairs_per_s",
        "peak_fraction",
        "peak_mem_bytes",
    ]
    assert {r["backend"] for r in rows} == {"tiled", "naive"}
    assert all(list(r)[: len(keys)] == keys for r in rows)


def test_reproduce_quick_writes_report(tmp_path):
    """The fastest section here (8 s; multiscale alone takes a minute); every section together
    is the slow test below (and `make run`)."""
    result = invoke(
        "reproduce",
        "--quick",
        "--section",
        "engine",
        "--out",
        str(tmp_path / "report"),
    )
    assert result.exit_code == 0, result.output
    summary = json.loads((tmp_path / "report" / "summary.json").read_text())
    assert summary and all(
        set(c) == {"name", "theory", "simulation", "tolerance", "passed"} for c in summary
    )
    assert all(c["passed"] for c in summary)
    html = (tmp_path / "report" / "index.html").read_text()
    assert "two tokens on the circle" in html and "<img" in html


@pytest.mark.slow
def test_reproduce_quick_every_section(tmp_path):
    from tokendyn.studies.report import SECTIONS

    result = invoke("reproduce", "--quick", "--out", str(tmp_path / "report"))
    assert result.exit_code == 0, result.output
    summary = json.loads((tmp_path / "report" / "summary.json").read_text())
    assert all(c["passed"] for c in summary)
    html = (tmp_path / "report" / "index.html").read_text()
    assert html.count("<h2>") == len(SECTIONS)


def test_unknown_report_section():
    result = runner.invoke(app, ["reproduce", "--section", "nope"])
    assert result.exit_code == 2 and "section: unknown section(s) nope" in result.output
