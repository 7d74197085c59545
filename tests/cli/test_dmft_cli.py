"""`tokendyn dmft` JSON contract (short runs via --n-transient/--n-record); report section."""

import json

import pytest
from typer.testing import CliRunner

from tokendyn.cli import app

runner = CliRunner()


def _json(args):
    res = runner.invoke(app, ["dmft", *args, "--json"])
    assert res.exit_code == 0, res.output
    return json.loads(res.stdout)


def test_lyapunov_json_contract():
    out = _json(["lyapunov", "--beta", "3", "--start", "full", "--n-transient", "0",
                 "--n-record", "600"])  # fmt: skip
    assert set(out) == {"beta", "lyapunov", "regime", "amplitude", "period"}
    assert out["beta"] == 3.0 and out["period"] == 24 and out["regime"] == "periodic"
    assert len(out["lyapunov"]) == 12 and out["lyapunov"] == sorted(out["lyapunov"], reverse=True)
    assert out["amplitude"] == pytest.approx(0.9645, abs=1e-4)


def test_orbit_json_contract():
    out = _json(["orbit", "--beta", "3", "--start", "full", "--steps", "24", "--n-transient",
                 "0", "--n-record", "48"])  # fmt: skip
    assert out["beta"] == 3.0
    assert len(out["mo"]) == 24 and all(len(row) == 3 for row in out["mo"])


def test_finite_json_contract():
    out = _json(["finite", "--n-se", "100000", "--beta", "0.5", "--trials", "2",
                 "--n-transient", "200", "--n-record", "200"])  # fmt: skip
    assert {"n_se", "beta", "std", "amplitude", "stayed_fraction"} <= set(out)
    assert out["n_se"] == 100000 and out["beta"] == 0.5
    assert 0.0 <= out["stayed_fraction"] <= 1.0


def test_bifurcation_writes_outputs(tmp_path):
    res = runner.invoke(app, ["dmft", "bifurcation", "--beta-min", "1.24", "--beta-max", "1.28",
                              "--num", "5", "--start", "zoom", "--out", str(tmp_path),
                              "--n-transient", "100", "--n-record", "100"])  # fmt: skip
    assert res.exit_code == 0, res.output
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert len(summary["beta"]) == 5
    for name in ("bifurcation.nc", "bifurcation_m1.png", "bifurcation_m3.png"):
        assert (tmp_path / name).exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["lyapunov", "--beta", "-1"], "beta"),
        (["orbit", "--beta", "1", "--steps", "0"], "steps"),
        (["finite", "--n-se", "2", "--beta", "1"], "n_se"),
        (["lyapunov", "--beta", "1", "--epsilon", "2"], "epsilon"),
    ],
)
def test_bad_inputs_exit_2_with_one_line(args, message):
    res = runner.invoke(app, ["dmft", *args])
    assert res.exit_code == 2
    assert message in res.output and "Fix:" in res.output


@pytest.mark.slow
def test_report_section_quick(tmp_path, monkeypatch):
    import tokendyn.report as report

    from tokendyn.studies.dmft import run

    monkeypatch.setattr(report, "SECTIONS", {"dmft": run})
    summary = report.write_report(tmp_path, quick=True, only=["dmft"])
    assert summary and all(c["passed"] for c in summary), summary
    assert (tmp_path / "dmft_trajectories.png").exists()
