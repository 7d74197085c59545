"""`tokendyn icl` CLI: the JSON contract of theory, baselines and train; one-line input errors."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from tokendyn.cli import app
from tokendyn.theory.icl import get_setting, make_prior
from tokendyn.theory.icl.train import evaluate_mse, load_checkpoint, make_test_set

runner = CliRunner()


def _json(args: list[str]) -> dict:
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    return json.loads(res.stdout.strip().splitlines()[-1])


def test_theory_json_contract():
    out = _json(
        [
            "icl",
            "theory",
            "--setting",
            "cpu",
            "--prior",
            "tree",
            "--policy",
            "greedy",
            "--depths",
            "1,2,3",
            "--n-seq",
            "500",
            "--json",
        ]
    )
    assert set(out) == {"setting", "prior", "policy", "depths", "mse", "mse_stderr"}
    assert (out["setting"], out["prior"], out["policy"], out["depths"]) == (
        "cpu",
        "tree",
        "greedy",
        [1, 2, 3],
    )
    assert len(out["mse"]) == len(out["mse_stderr"]) == 3
    assert out["mse"][0] > out["mse"][2] > 0.01  # noisy target: never below σ² = 0.01


def test_baselines_json_contract():
    out = _json(
        ["icl", "baselines", "--setting", "cpu", "--prior", "gauss", "--n-seq", "300", "--json"]
    )
    assert {"bayes", "ridge", "gd1", "prior_mean"} <= set(out)
    assert out["bayes"] < out["gd1"] < out["prior_mean"]


def test_train_json_contract(tmp_path):
    out = _json(
        [
            "icl",
            "train",
            "--setting",
            "cpu",
            "--prior",
            "tree",
            "--model",
            "ff",
            "--depth",
            "2",
            "--steps",
            "5",
            "--seeds",
            "0",
            "--n-test",
            "200",
            "--n-probe",
            "2000",
            "--device",
            "cpu",
            "--out",
            str(tmp_path),
            "--json",
        ]
    )
    assert {"test_mse", "level_accuracy"} <= set(out)
    assert len(out["level_accuracy"]) == 4  # one per tree level (K = 4)
    assert all(0.0 <= a <= 1.0 for a in out["level_accuracy"])
    assert (tmp_path / "best.pt").exists() and (tmp_path / "seed0.pt").exists()
    assert json.loads((tmp_path / "result.json").read_text())["test_mse"] == out["test_mse"]
    # the checkpoint reproduces the reported test MSE (same seeded test sequences)
    s = get_setting("cpu")
    model = load_checkpoint(tmp_path / "best.pt")
    test = make_test_set(s, make_prior(s, "tree"), 200)
    assert evaluate_mse(model, test, "cpu")[0] == pytest.approx(out["test_mse"], rel=1e-6)


@pytest.mark.parametrize(
    "args,field",
    [
        (["icl", "theory", "--depths", "1,x"], "depths"),
        (["icl", "theory", "--prior", "gauss", "--policy", "coarse-to-fine"], "policy"),
        (["icl", "train", "--steps", "0", "--json"], "steps"),
        (["icl", "train", "--seeds", "a", "--json"], "seeds"),
    ],
)
def test_bad_input_is_one_line_exit_2(args, field):
    res = runner.invoke(app, args)
    assert res.exit_code == 2
    assert field in res.output and "Fix:" in res.output
