"""Generated inputs for every door of the command line, and the judge of their outcome.

Used by tests/cli/test_fuzz.py (a bounded budget in the default suite) and scripts/fault_table.py
(≈1000 inputs, printing the issue-15 fault table). A case is a command line (and the files it
reads) with an oracle label: valid (True), invalid (False) or unknown (None, several options
changed at once, where interactions decide). Labels come from the documented ranges of each
option, written down here independently of the validation code.

Outcomes: `accepted` (exit 0 with valid output, label not False), `error` (exit 2 with exactly one
`error: <field>: … Fix: …` line, or click's own usage error for a value of the wrong type),
`traceback` (any other exception or exit code, the guard's "bug" line included), `accepted
invalid` (exit 0 on an input labelled invalid), `refused valid` (a clean error on an input labelled
valid), `hang` (no answer within the deadline).
"""

from __future__ import annotations

import gc
import math
import re
import signal
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import tomli_w
from hypothesis import strategies as st
from typer.testing import CliRunner

from tokendyn.cli import app

OUTCOMES = ("accepted", "error", "traceback", "accepted invalid", "refused valid", "hang")
FAILURES = ("traceback", "accepted invalid", "refused valid", "hang")
ONE_LINE = re.compile(r"^error: [\w.\[\]]+: .+\. Fix: .+$")
USAGE = ("Invalid value for", "No such option", "Missing option", "Missing argument")


@dataclass
class Case:
    family: str
    args: list[str]
    valid: bool | None
    files: dict[str, str] = field(default_factory=dict)  # name → text, written into the tmp dir

    def describe(self) -> str:
        return " ".join(self.args) + "".join(f"\n{k}:\n{v}" for k, v in self.files.items())


# -- option pools: (text, valid) -----------------------------------------------------------------

BIG = str(10**12)
SIMULATE_BASE = ["simulate", "--n", "4", "--d", "2", "--t-end", "0.2", "--dt", "0.1"]
SIMULATE_POOLS: dict[str, list[tuple[str, bool]]] = {
    "--n": [("1", True), ("9", True), ("0", False), ("-3", False), (BIG, False)],
    "--d": [("3", True), ("0", False), ("1", False), ("100000", False)],
    "--beta": [("1e-3", True), ("2", True), ("1e3", True), ("0", False), ("-1", False),
               ("nan", False), ("inf", False), ("-inf", False)],
    "--t-end": [("0.4", True), ("0", False), ("-1", False), ("inf", False), ("nan", False),
                ("1e300", False)],
    "--dt": [("0.05", True), ("0.2", True), ("0", False), ("-0.1", False), ("nan", False),
             ("inf", False), ("1e-320", False), ("0.03", False)],
    "--seed": [("7", True), (str(2**63 - 1), True), ("-1", False), (str(2**64), False)],
    "--save-every": [("2", True), ("0", False), ("-1", False)],
    "--batch": [("3", True), ("0", False), (str(10**9), False)],
    "--heads": [("2", True), ("0", False), ("3", False)],
    "--method": [("euler", True), ("heun", True), ("rk45", False)],
    "--attention": [("l2", True), ("sinkhorn", True), ("sigmoid", True), ("nope", False)],
    "--mask": [("causal", True), ("diagonal", False)],
    "--space": [("euclidean", True), ("torus", False)],
    "--init": [("uniform", True), ("wrapped-normal", True), ("mixture", False)],
    "--init-std": [("0.1", True), ("0", False), ("nan", False), ("inf", False)],
    "--init-centers": [("0,1", False), ("x", False)],
    "--beta-law": [("1*log(N)", True), ("exp(N)", False), ("1e400*log(N)", False), ("", False)],
    "--backend": [("dense", True), ("tiled", True), ("sdpa", True), ("fast", False)],
    "--dtype": [("float32", True), ("float16", False)],
    "--norm": [("pre-ln", True), ("sphere", True), ("batch", False)],
    "--mlp": [("gelu", True), ("tanh", False)],
    "--mlp-width": [("8", True), ("0", False)],
    "--layer-time": [("0.1", True), ("0", False), ("nan", False), ("inf", False)],
    "--resample-every": [("0.1", False), ("nan", False)],
    "--kv-heads": [("1", True), ("0", False), ("3", False)],
    "--positions": [("rope", True), ("alibi", True), ("sinusoidal", False)],
    "--out": [("{tmp}/run.zarr", True), ("{tmp}/a-file/run.zarr", False)],
    "--config": [("{tmp}/missing.toml", False)],
}  # fmt: skip
FLAGS = {"--resume": False, "--overwrite": True}  # flag → valid alone (no --out: resume refused)

# config-schema values: scalars of every kind for every field, labelled per field below
JUNK = [True, False, math.nan, math.inf, -math.inf, 1e308, -5, 0, "x", [1, [2]], {"a": {"b": 1}},
        [[1.0, 0.0], [0.0]], 2**70, ""]  # fmt: skip
TOML_VALID: dict[str, list] = {
    "n": [1, 5], "d": [2, 3], "batch": [1, 2], "beta": [0.5, 4.0], "seed": [0, 11],
    "t_end": [0.2, 0.3], "dt": [0.1, 0.05], "save_every": [1, 2], "heads": [1, 2],
    "cluster_threshold": [0.1], "sinkhorn_max_iter": [10], "sigmoid_bias": [0.0, -1.5],
    "method": ["euler", "rk4"], "attention": ["softmax", "l2"], "space": ["sphere"],
    "init_std": [0.3], "layer_time": [0.1], "stats": [["energy"], []], "qkv": ["random", "goe"],
    "Q": [[[1.0, 0.0], [0.0, 1.0]]], "V": [[[0.0, 1.0], [-1.0, 0.0]]], "init": ["uniform"],
}  # fmt: skip
# junk that a field accepts as valid (a number where a number goes, in range)
TOML_JUNK_VALID = {
    "sigmoid_bias": [-5, 0, 1e308, 2**70],
    "seed": [0],
    "beta": [1e308, 2**70],
    "init_std": [1e308, 2**70],
    "cluster_threshold": [1e308, 2**70],
    "layer_time": [1e308, 2**70],
    "sinkhorn_max_iter": [2**70],  # a cap on iterations: any integer ≥ 1
}

CLOSURE_BASE = {
    "attention": "softmax", "Q": [[1.0, 0.0], [0.0, 1.0]], "K": [[1.0, 0.0], [0.0, 1.0]],
    "V": [[1.0, 0.0], [0.0, 1.0]], "mean": [0.0, 0.0], "cov": [[1.0, 0.0], [0.0, 1.0]],
    "t_end": 0.5,
}  # fmt: skip
CLOSURE_VALID: dict[str, list] = {
    "attention": ["l2", "sinkhorn", "multihead"], "beta": [0.5, 3.0], "eps": [0.5],
    "scaling": ["authors"], "t_end": [0.1, 2.0], "mean": [[1.0, -1.0]],
    "cov": [[[2.0, 0.5], [0.5, 1.0]], [[1e3, 0.0], [0.0, 1e3]]], "heads": [1, 2],
}  # fmt: skip
CLOSURE_INVALID_EXTRA = {
    "cov": [[[1.0, 2.0], [0.0, 1.0]], [[-1.0, 0.0], [0.0, 1.0]], [[1e308, 0.0], [0.0, 1e308]]],
    "attention": ["sigmoid", "linear"], "mean": [[0.0]], "V": [[[1e308, 0.0], [0.0, 1e308]]],
    "heads": [3], "Q": [[[1.0, 0.0]]],
}  # fmt: skip

DMFT_STEPS = ["--n-record", "3", "--n-transient", "2"]
DMFT_BASE = {
    "lyapunov": ["dmft", "lyapunov", "--beta", "1.3", *DMFT_STEPS],
    "orbit": ["dmft", "orbit", "--beta", "1.3", "--steps", "2", *DMFT_STEPS],
    "finite": ["dmft", "finite", "--beta", "1.3", "--n-se", "4", "--trials", "2", *DMFT_STEPS],
    "bifurcation": ["dmft", "bifurcation", "--beta-min", "1", "--beta-max", "1.2", "--num", "2",
                    *DMFT_STEPS, "--out", "{tmp}/bif"],
}  # fmt: skip
DMFT_POOLS: dict[str, list[tuple[str, bool]]] = {
    "--beta": [("0", True), ("2.0", True), ("-1", False), ("nan", False), ("inf", False)],
    "--n-record": [("2", True), ("1", None), ("0", False), ("-5", False), (BIG, False)],
    "--n-transient": [("0", True), ("-1", False), (BIG, False)],
    "--gamma": [("10", True), ("nan", False), ("inf", False), ("-1", None)],
    "--epsilon": [("0.1", True), ("2", False), ("nan", False), ("-0.5", False)],
    "--start": [("full", True), ("x0", True), ("middle", False)],
    "--seed": [("3", True), ("-1", False)],
    "--tol": [("0.1", True), ("nan", False), ("-1", False), ("0", False), ("inf", False)],
    "--trials": [("1", True), ("0", False), (BIG, False)],
    "--n-se": [("3", True), ("2", False), ("0", False), ("-3", False), (BIG, False)],
    "--steps": [("1", True), ("0", False), ("99", False)],
    "--num": [("1", True), ("0", False), (BIG, False)],
    "--beta-min": [("0.5", True), ("nan", False), ("-1", False)],
    "--beta-max": [("1.5", True), ("0.5", False), ("inf", False)],
}
DMFT_OPTIONS = {
    "lyapunov": ["--beta", "--n-record", "--n-transient", "--gamma", "--epsilon", "--start"],
    "orbit": ["--beta", "--n-record", "--n-transient", "--gamma", "--steps", "--start"],
    "finite": ["--beta", "--n-record", "--n-transient", "--seed", "--tol", "--trials", "--n-se",
               "--epsilon"],
    "bifurcation": ["--beta-min", "--beta-max", "--num", "--n-record", "--n-transient",
                    "--gamma"],
}  # fmt: skip
ICL_BASE = {
    "theory": ["icl", "theory", "--depths", "1,2", "--n-seq", "50", "--json"],
    "baselines": ["icl", "baselines", "--n-seq", "20", "--json"],
}
ICL_POOLS: dict[str, list[tuple[str, bool]]] = {
    "--depths": [("1", True), ("0,1", False), ("x", False), ("", False), (BIG, False)],
    "--heads": [("2", True), ("0", False), ("-1", False)],
    "--n-seq": [("2", True), ("1", False), ("0", False), (BIG, False)],
    "--seed": [("5", True), ("-1", False), (str(2**64), None)],
    "--prior": [("flat", None), ("nope", False)],
    "--setting": [("gpu", None), ("tpu", False)],
}
ICL_OPTIONS = {
    "theory": ["--depths", "--heads", "--n-seq", "--seed", "--prior", "--setting"],
    "baselines": ["--n-seq", "--seed", "--prior", "--setting"],
}
ICL_TRAIN = ["icl", "train", "--steps", "1", "--batch", "4", "--n-test", "10", "--n-probe",
             "100", "--depth", "1", "--seeds", "0", "--device", "cpu", "--json"]  # fmt: skip
ICL_TRAIN_POOLS: dict[str, list[tuple[str, bool]]] = {
    "--lr": [("1e-3", True), ("inf", False), ("nan", False), ("0", False), ("-1", False)],
    "--steps": [("2", True), ("0", False), (BIG, False)],
    "--batch": [("2", True), ("0", False), (BIG, False)],
    "--depth": [("2", True), ("0", False), (BIG, False)],
    "--seeds": [("0,1", True), ("x", False), ("-1", False), ("", False)],
    "--out": [("{tmp}/icl", True), ("{tmp}/a-file/icl", False)],
}
READER_BASE = {
    "plot": ["plot", "{run}", "--out", "{tmp}/figs"],
    "animate": ["animate", "{run}", "--out", "{tmp}/a.gif"],
    "export": ["export", "{run}", "{tmp}/run.nc"],
    "view": ["view", "{run}", "--out", "{tmp}/v.html"],
}
READER_POOLS: dict[str, list[tuple[list[str], bool]]] = {
    "plot": [(["--out", "{tmp}/a-file/figs"], False), (["--out", "{tmp}/a-file"], False)],
    "animate": [(["--fps", "0"], False), (["--fps", "-3"], False), (["--fps", "30"], True),
                (["--out", "{tmp}/a-file"], False), (["--out", "{tmp}/x.mp3"], False)],
    "export": [(["{tmp}/a-file"], False)],
    "view": [(["--batch", "5"], None), (["--batch", "-1"], None),
             (["--out", "{tmp}/a-file/v.html"], False)],
}  # fmt: skip


# -- strategies ----------------------------------------------------------------------------------


@st.composite
def simulate_flags(draw) -> Case:
    """The tiny valid base with one to three options changed (one: labelled; more: unknown)."""
    names = draw(st.lists(st.sampled_from(sorted(SIMULATE_POOLS)), min_size=1, max_size=3,
                          unique=True))  # fmt: skip
    args, labels = list(SIMULATE_BASE), []
    for name in names:
        value, ok = draw(st.sampled_from(SIMULATE_POOLS[name]))
        args += [name, value]
        labels.append(ok)
    if draw(st.booleans()):
        flag = draw(st.sampled_from(sorted(FLAGS)))
        args.append(flag)
        labels.append(FLAGS[flag] or "--out" in names)
    return Case("simulate flags", args, labels[0] if len(labels) == 1 else None)


@st.composite
def simulate_toml(draw) -> Case:
    """A TOML config over the schema: one field set to a valid value or to junk (booleans,
    NaN/±inf, 1e308, negatives, wrong types, nested tables, ragged matrices, 2^70), or nested junk
    under an unknown key."""
    base = {"n": 4, "d": 2, "t_end": 0.2, "dt": 0.1}
    name = draw(st.sampled_from(sorted(TOML_VALID)))
    kind = draw(st.sampled_from(["valid", "junk", "unknown"]))
    if kind == "valid":
        value, ok = draw(st.sampled_from(TOML_VALID[name])), True
    elif kind == "junk":
        value = draw(st.sampled_from(JUNK))
        ok = any(value == v and type(value) is type(v) for v in TOML_JUNK_VALID.get(name, []))
        ok = ok or (name == "stats" and value == [])
    else:
        name, value, ok = "extra_" + name, draw(st.sampled_from(JUNK)), False
    fields = {**base, name: value}
    if name in ("Q", "V"):
        fields["qkv"] = "identity"
    return Case("simulate TOML", ["simulate", "--config", "{tmp}/run.toml"], ok,
                {"run.toml": tomli_w.dumps(fields)})  # fmt: skip


@st.composite
def closure_toml(draw) -> Case:
    name = draw(st.sampled_from(sorted({*CLOSURE_VALID, *CLOSURE_INVALID_EXTRA, "beta", "t_end"})))
    kind = draw(st.sampled_from(["valid", "invalid", "junk"]))
    if kind == "valid" and name in CLOSURE_VALID:
        value, ok = draw(st.sampled_from(CLOSURE_VALID[name])), True
    elif kind == "invalid" and name in CLOSURE_INVALID_EXTRA:
        value, ok = draw(st.sampled_from(CLOSURE_INVALID_EXTRA[name])), False
    else:
        value = draw(st.sampled_from(JUNK))
        huge = type(value) in (int, float) and value in (1e308, 2**70)
        # a huge final time is fine (the solve stops at blow-up); a huge β or ε may be
        ok = (None if name in ("beta", "eps") else name == "t_end") if huge else False
    fields = {**CLOSURE_BASE, name: value}
    if name == "heads" and value == 2:
        fields["attention"] = "multihead"
    return Case("closure", ["closure", "--config", "{tmp}/c.toml", "--json"], ok,
                {"c.toml": tomli_w.dumps(fields)})  # fmt: skip


@st.composite
def dmft_options(draw) -> Case:
    command = draw(st.sampled_from(sorted(DMFT_BASE)))
    name = draw(st.sampled_from(DMFT_OPTIONS[command]))
    value, ok = draw(st.sampled_from(DMFT_POOLS[name]))
    if name == "--n-record" and value == "1":
        # lyapunov's period and bifurcation compare steps; orbit prints --steps 2 of them
        ok = command == "finite"
    return Case(f"dmft {command}", [*DMFT_BASE[command], name, value], ok)


@st.composite
def icl_options(draw) -> Case:
    command = draw(st.sampled_from(sorted(ICL_BASE)))
    name = draw(st.sampled_from(ICL_OPTIONS[command]))
    value, ok = draw(st.sampled_from(ICL_POOLS[name]))
    return Case(f"icl {command}", [*ICL_BASE[command], name, value], ok)


@st.composite
def icl_train_options(draw) -> Case:
    name = draw(st.sampled_from(sorted(ICL_TRAIN_POOLS)))
    value, ok = draw(st.sampled_from(ICL_TRAIN_POOLS[name]))
    return Case("icl train", [*ICL_TRAIN, name, value], ok)


@st.composite
def sweep_toml(draw) -> Case:
    """A sweep file whose [base] or [grid] is junk, or a valid grid (tiny)."""
    base = {"n": 4, "d": 2, "t_end": 0.2, "dt": 0.1}
    grid = {"beta": [1.0, 2.0]}
    kind = draw(st.sampled_from(["valid", "base", "grid", "grid value", "scheduler"]))
    args = ["sweep", "{tmp}/s.toml", "--out", "{tmp}/s.zarr"]
    ok = True
    if kind == "base":
        base, ok = draw(st.sampled_from([[1, 2], "x", {"n": {"a": 1}}, {"dt": math.inf}])), False
    elif kind == "grid":
        grid, ok = (
            draw(st.sampled_from([[1, 2], "x", {}, {"beta": []}, {"beta": [1.0, 1.0]}])),
            False,
        )
    elif kind == "grid value":
        grid = {"beta": [1.0, draw(st.sampled_from([math.nan, -1.0, True, "x"]))]}
        ok = None  # bad points are recorded as failed; the sweep itself ends cleanly
    elif kind == "scheduler":
        args += ["--scheduler", draw(st.sampled_from(["not a url", "tcp://", "tcp://127.0.0.1:1"]))]
        ok = False
    text = (
        tomli_w.dumps({"base": base, "grid": grid})
        if isinstance(base, dict) and isinstance(grid, dict)
        else f"base = {base!r}\ngrid = {grid!r}\n".replace("'", '"')
    )
    return Case("sweep", args, ok, {"s.toml": text})


@st.composite
def reader_options(draw) -> Case:
    command = draw(st.sampled_from(sorted(READER_BASE)))
    extra, ok = draw(st.sampled_from(READER_POOLS[command]))
    args = list(READER_BASE[command])
    if command == "export" or "--out" in extra:
        args = args[:2] + extra
    else:
        args += extra
    return Case(f"readers ({command})", args, ok)


FAMILIES = {
    "simulate flags": simulate_flags(),
    "simulate TOML": simulate_toml(),
    "closure": closure_toml(),
    "dmft": dmft_options(),
    "icl theory/baselines": icl_options(),
    "icl train": icl_train_options(),
    "sweep": sweep_toml(),
    "readers": reader_options(),
}


# -- running and judging -------------------------------------------------------------------------


class Hang(BaseException):
    """Raised by the alarm: the command did not answer in time (not an Exception, so neither the
    CLI's guard nor CliRunner catches it)."""


@contextmanager
def deadline(seconds: float) -> Iterator[None]:
    def ring(signum, frame):
        raise Hang

    previous = signal.signal(signal.SIGALRM, ring)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def prepare(case: Case, tmp: Path, run_store: Path | None = None) -> list[str]:
    """Write the case's files into the fresh folder `tmp` (and a regular file `a-file` that
    paths under it run into); its arguments with {tmp} and {run} filled in."""
    (tmp / "a-file").write_text("a user's file\n")
    for name, text in case.files.items():
        (tmp / name).write_text(text)
    fill = {"{tmp}": str(tmp), "{run}": str(run_store)}
    out = []
    for arg in case.args:
        for key, value in fill.items():
            arg = arg.replace(key, value)
        out.append(arg)
    return out


@contextmanager
def finaliser_errors() -> Iterator[list[str]]:
    """The exceptions raised in finalisers (``Exception ignored in …``, which Python prints as a
    traceback on stderr) while the block runs, its young garbage collected at the end."""
    seen: list[str] = []
    previous = sys.unraisablehook
    sys.unraisablehook = lambda u: seen.append(
        f"{u.exc_type.__name__}: {u.exc_value} in {u.object!r}"
    )
    try:
        yield seen
    finally:
        gc.collect(1)
        sys.unraisablehook = previous


def judge(case: Case, tmp: Path, seconds: float, run_store: Path | None = None) -> tuple[str, str]:
    """Run `case` in-process; (outcome, output)."""
    args = prepare(case, tmp, run_store)
    runner = CliRunner()
    try:
        with deadline(seconds), finaliser_errors() as finalisers:
            result = runner.invoke(app, args, catch_exceptions=True)
    except Hang:
        return "hang", ""
    output = result.output
    if finalisers:
        return "traceback", "Exception ignored in a finaliser: " + "; ".join(finalisers)
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        return "traceback", f"{type(result.exception).__name__}: {result.exception}\n{output}"
    lines = [line for line in output.splitlines() if line.strip()]
    if result.exit_code == 0:
        if case.valid is False:
            return "accepted invalid", output
        return ("accepted", output) if lines else ("traceback", "exit 0 with no output")
    if result.exit_code == 2:
        clean = (len(lines) == 1 and ONE_LINE.match(lines[0])) or any(u in output for u in USAGE)
        if not clean:
            return "traceback", output
        return ("refused valid", output) if case.valid is True else ("error", output)
    return "traceback", output
