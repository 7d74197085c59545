"""Bounded fuzz of every command family (issue 15): hypothesis draws command lines and config files
(tests/cli/fuzz_cases.py: valid and invalid values of every option and config field — booleans,
NaN/±inf, huge, negative, wrong types, nested junk), runs each in-process through CliRunner with a
deadline, and requires every outcome to be exit 0 with output (on an input not labelled invalid)
or exit 2 with exactly one `error: <field>: … Fix: …` line (or click's own usage error) — never a
traceback, a hang, an invalid input accepted or a valid one refused.

The examples are derandomized (the same inputs every run); `scripts/fault_table.py` runs ≈1000 of
them and prints the fault table.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings

from tests.cli.fuzz_cases import FAILURES, FAMILIES, Case, judge
from tokendyn.app.config import make_config
from tokendyn.app.run import run_simulation
from tokendyn.errors import TokendynError

# examples per family in the default suite (≈ 40 s on 2 shared cores); sweeps start Dask
BUDGET = {
    "simulate flags": 80,
    "simulate TOML": 50,
    "closure": 15,
    "dmft": 15,
    "icl theory/baselines": 6,
    "icl train": 4,
    "sweep": 2,
    "readers": 8,
}
SECONDS = {"sweep": 60.0}  # per-example deadline (default 10 s)


@pytest.fixture(scope="module")
def run_store(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("fuzz") / "run.zarr"
    run_simulation(make_config(n=4, d=2, t_end=0.2, dt=0.1), out)
    return out


def test_every_family_has_a_budget():
    assert set(BUDGET) == set(FAMILIES)


@pytest.mark.parametrize("family", list(BUDGET))
def test_fuzzed_inputs_end_in_a_result_or_one_line(family, run_store):
    failures: list[str] = []

    @settings(max_examples=BUDGET[family], deadline=None, database=None, derandomize=True,
              suppress_health_check=list(HealthCheck))  # fmt: skip
    @given(case=FAMILIES[family])
    def check(case: Case) -> None:
        with tempfile.TemporaryDirectory() as tmp:
            outcome, output = judge(case, Path(tmp), SECONDS.get(family, 10.0), run_store)
        if outcome in FAILURES:
            failures.append(f"{outcome}: {case.describe()}\n  → {output[:400]}")

    check()
    assert not failures, "\n\n".join(failures)


def test_the_judge_sees_a_traceback_an_invalid_acceptance_and_a_hang(monkeypatch, tmp_path):
    """The judge can fail: a planted exception, an invalid input labelled valid, and a planted
    endless loop are each reported as such."""
    import tokendyn.app.run as run_module

    base = ["simulate", "--n", "4", "--d", "2", "--t-end", "0.2", "--dt", "0.1"]
    assert judge(Case("t", base, True), tmp_path, 10.0)[0] == "accepted"
    assert judge(Case("t", base, False), tmp_path, 10.0)[0] == "accepted invalid"
    assert judge(Case("t", [*base, "--n", "0"], True), tmp_path, 10.0)[0] == "refused valid"
    assert judge(Case("t", [*base, "--n", "0"], False), tmp_path, 10.0)[0] == "error"

    def broken(*args, **kwargs):
        raise IndexError("planted")

    monkeypatch.setattr(run_module, "run_simulation", broken)
    assert judge(Case("t", base, None), tmp_path, 10.0)[0] == "traceback"

    class FailsInFinaliser:
        def __init__(self) -> None:
            self.cycle = self  # freed by the garbage collector, not by its reference count

        def __del__(self) -> None:
            raise AttributeError("planted")

    def leaves_a_broken_object(*args, **kwargs):
        FailsInFinaliser()
        raise TokendynError("n: planted. Fix: none")

    monkeypatch.setattr(run_module, "run_simulation", leaves_a_broken_object)
    assert judge(Case("t", base, None), tmp_path, 10.0)[0] == "traceback"

    def endless(*args, **kwargs):
        while True:
            pass

    monkeypatch.setattr(run_module, "run_simulation", endless)
    assert judge(Case("t", base, None), tmp_path, 0.5)[0] == "hang"
