"""Every validation message names the field the user actually set (issue 16, item 6).

Config schema: for each field of SimulationConfig, invalid values (wrong type, out of range, NaN/inf
where numbers go, booleans where numbers go) give a ConfigError whose field is exactly that field,
whether the error is found while validating or while building the run. Commands: for each option
of `tokendyn simulate` and the numeric options of `icl`, `dmft` and `closure`, a value the option's
type accepts but tokendyn refuses gives exit code 2 and one line `error: <field>: …`.
"""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from tokendyn.app.build import build
from tokendyn.app.config import SimulationConfig, load_config, make_config
from tokendyn.cli import app
from tokendyn.errors import ConfigError

NAN, INF = math.nan, math.inf
INTS = ["x", 2.5, True, None]  # None: a field that may not be absent when given explicitly
POSITIVE = ["x", 0.0, -1.0, NAN, INF, -INF, True, False]
MATRIX = ["x", [[NAN, 0.0], [0.0, 1.0]], [[INF, 0.0], [0.0, 1.0]], [[True, 0.0], [0.0, 1.0]]]
MATRIX += [[[1.0, 0.0], [0.0]], [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]], [[1.0]], []]
NUMBERS = ["x", [NAN], [INF], [True], ["x"]]

# field → (context fields that make the field matter, invalid values)
INVALID: dict[str, tuple[dict, list]] = {
    "attention": ({}, ["linear", 1, True, None]),
    "heads": ({"d": 2}, [*INTS, 0, -1, 3]),
    "mask": ({}, ["diagonal", 1, True, None]),
    "normalise": ({}, ["max", 1, True]),
    "space": ({}, ["torus", 1, True, None]),
    "n": ({}, [*INTS, 0, -1]),
    "d": ({}, [*INTS, 0, 1]),
    "batch": ({}, [*INTS, 0]),
    "beta": ({}, [*POSITIVE, None]),
    "qkv": ({}, ["orthogonal", 1, True, None]),
    "Q": ({"d": 2}, [*MATRIX[:-2], [[1.0, 0.0]] * 3]),  # 3 rows > d with 2 heads below
    "K": ({"d": 2}, MATRIX[:-2]),
    "V": ({"d": 2}, [*MATRIX, [[1.0, 0.0]]]),
    "seed": ({}, [*INTS, -1]),
    "t_end": ({"dt": 0.5}, [*POSITIVE, None]),
    "dt": ({"t_end": 1.0}, [*POSITIVE, None, 0.3]),
    "method": ({}, ["rk45", 1, True, None]),
    "save_every": ({}, [*INTS, 0]),
    "dtype": ({}, ["float16", 64, True, None]),
    "device": ({}, ["tpu", 0, True, None]),
    "backend": ({}, ["fast", 1, True, None]),
    "beta_law": ({"n": 1000}, ["exp(N)", "N**400", "1e400*log(N)", "0*log(N)", 1, True]),
    "init": ({"d": 2}, ["gaussian", 1, True]),
    "init_centers": ({"init": "mixture", "d": 2}, [*NUMBERS, []]),
    "init_weights": ({"init": "mixture", "d": 2, "init_centers": [0.0, 1.0]}, [*NUMBERS, [1.0]]),
    "init_std": ({"init": "wrapped-normal", "d": 2}, [*POSITIVE, None]),
    "init_mean": ({"space": "euclidean", "d": 2}, [*NUMBERS, [0.0, 0.0, 0.0]]),
    "init_cov": ({"space": "euclidean", "d": 2}, [*MATRIX[:4], [[1.0, 0.0], [0.0, -1.0]]]),
    "sinkhorn_tol": ({"attention": "sinkhorn"}, POSITIVE),
    "sinkhorn_max_iter": ({"attention": "sinkhorn"}, [*INTS, 0]),
    "sigmoid_bias": ({"attention": "sigmoid"}, ["x", NAN, INF, True, None]),
    "sigmoid_form": ({"attention": "sigmoid"}, ["exact", 1, True, None]),
    "stats": ({}, ["energy", ["temperature"], [True], None]),
    "cluster_threshold": ({}, [*POSITIVE, None]),
    "norm": ({}, ["layernorm", 1, True]),
    "norm_type": ({"norm": "pre-ln"}, ["batchnorm", 1, True, None]),
    "layers": ({"d": 2}, ["x", 1, True]),
    "layer_time": ({"norm": "pre-ln"}, [*POSITIVE, None]),
    "resample_every": ({"qkv": "random", "norm": "pre-ln"}, POSITIVE),
    "mlp": ({}, ["tanh", 1, True, None]),
    "mlp_width": ({"mlp": "gelu"}, ["x", 2.5, True, 0, -1]),
    "positions": ({}, ["sinusoidal", 1, True, None]),
    "kv_heads": ({"d": 4, "heads": 2}, ["x", 2.5, True, 0, 3]),
}
CASES = [(name, ctx, value) for name, (ctx, values) in INVALID.items() for value in values]
# Q with 3 rows is refused only with several heads
CASES = [
    (n, {**c, "heads": 2} if n == "Q" and v == [[1.0, 0.0]] * 3 else c, v) for n, c, v in CASES
]


def test_every_config_field_has_invalid_values():
    assert set(INVALID) == set(SimulationConfig.model_fields)


def _error(fields: dict) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        build(make_config(**fields))
    return info.value


@pytest.mark.parametrize(
    ("name", "context", "value"), CASES, ids=[f"{c[0]}={c[2]!r}" for c in CASES]
)
def test_an_invalid_value_names_its_own_field(name, context, value):
    err = _error({**context, name: value})
    assert err.field == name, str(err)
    assert str(err).startswith(f"{name}: ") and ". Fix: " in str(err)


def test_context_alone_is_valid():
    for context, _ in INVALID.values():
        centers = [0.0] if context.get("init") == "mixture" else None  # a mixture needs centres
        build(make_config(**{"n": 4, "init_centers": centers, **context}))


def test_a_boolean_is_not_read_as_a_number(tmp_path):
    """`n = true` used to run with N = 1."""
    path = tmp_path / "run.toml"
    path.write_text("n = true\n")
    with pytest.raises(ConfigError, match="^n: is a boolean") as info:
        load_config(path)
    assert info.value.field == "n"


POSITIVE_FLOATS = ["beta", "t_end", "dt", "init_std", "sinkhorn_tol", "cluster_threshold"]


@settings(max_examples=40, deadline=None)
@given(
    name=st.sampled_from(POSITIVE_FLOATS),
    value=st.floats(max_value=0.0) | st.sampled_from([INF, -INF, NAN]),
)
def test_non_positive_or_non_finite_numbers_are_refused(name, value):
    context = {"t_end": 1.0, "dt": 0.5} if name in ("t_end", "dt") else {}
    with pytest.raises(ConfigError) as info:
        make_config(**{**context, name: value})
    assert info.value.field == name


@settings(max_examples=40, deadline=None)
@given(name=st.sampled_from(["heads", "n", "batch", "save_every", "sinkhorn_max_iter"]),
       value=st.integers(max_value=0))  # fmt: skip
def test_integers_below_one_are_refused(name, value):
    with pytest.raises(ConfigError) as info:
        make_config(**{name: value})
    assert info.value.field == name


def test_several_bad_fields_are_all_named_first_one_first():
    with pytest.raises(ConfigError) as info:
        make_config(n=0, beta=-1.0)
    assert info.value.field == "n"
    assert "beta:" in info.value.problem


# -- the command line ------------------------------------------------------------

runner = CliRunner()
SIMULATE = ["simulate", "--n", "4", "--t-end", "0.2", "--dt", "0.1", "--quiet"]


def _one_line_error(args: list[str], field: str) -> None:
    result = runner.invoke(app, args)
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert result.exit_code == 2, result.output
    assert len(lines) == 1 and lines[0].startswith(f"error: {field}: "), result.output


MIXTURE = ["--init", "mixture", "--d", "2"]
SIMULATE_OPTIONS = [
    ("heads", ["--heads", "0"]),
    ("heads", ["--heads", "2"]),
    ("n", ["--n", "0"]),
    ("d", ["--d", "1"]),
    ("beta", ["--beta", "0"]),
    ("beta", ["--beta", "inf"]),
    ("beta", ["--beta", "nan"]),
    ("seed", ["--seed", "-1"]),
    ("t_end", ["--t-end", "-1"]),
    ("t_end", ["--t-end", "inf"]),
    ("dt", ["--dt", "0"]),
    ("dt", ["--dt", "0.3"]),
    ("save_every", ["--save-every", "0"]),
    ("batch", ["--batch", "0"]),
    ("beta_law", ["--beta-law", "exp(N)"]),
    ("beta_law", ["--beta-law", "1e400*log(N)"]),
    ("init", ["--init", "mixture", "--d", "4", "--init-centers", "0"]),
    ("init_centers", [*MIXTURE, "--init-centers", "0,x"]),
    ("init_centers", [*MIXTURE, "--init-centers", "0,nan"]),
    ("init_weights", [*MIXTURE, "--init-centers", "0,1", "--init-weights", "1"]),
    ("init_weights", [*MIXTURE, "--init-centers", "0,1", "--init-weights", "1,-1"]),
    ("init_std", ["--init", "wrapped-normal", "--d", "2", "--init-std", "0"]),
    ("init_std", ["--init", "wrapped-normal", "--d", "2", "--init-std", "nan"]),
    ("mask", ["--attention", "sinkhorn", "--mask", "causal"]),
    ("normalise", ["--attention", "sigmoid", "--normalise", "softmax"]),
    ("config", ["--config", "no-such-file.toml"]),
    ("resume", ["--resume"]),
    ("distributed", ["--distributed"]),
    ("init", ["--space", "euclidean", "--init", "uniform"]),
]  # fmt: skip


@pytest.mark.parametrize(("field", "args"), SIMULATE_OPTIONS)
def test_simulate_options_name_their_field(field, args, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for name in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(name, raising=False)
    _one_line_error([*SIMULATE, *args], field)


@pytest.mark.parametrize(
    "option",
    ["--attention", "--mask", "--normalise", "--space", "--qkv", "--method", "--dtype", "--device",
     "--backend", "--init"],
)  # fmt: skip
def test_simulate_choice_options_refuse_unknown_names(option):
    result = runner.invoke(app, [*SIMULATE, option, "nope"])
    assert result.exit_code == 2 and option in result.output


def test_cuda_without_a_gpu_names_device():
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    _one_line_error([*SIMULATE, "--device", "cuda"], "device")


def test_unknown_sweep_table_keeps_its_brackets(tmp_path):
    """Rich markup used to eat "[base]" and "[grid]" from the fix text."""
    path = tmp_path / "s.toml"
    path.write_text("[base]\nn = 4\n[grid]\nbeta = [1.0]\n[extra]\nx = 1\n")
    result = runner.invoke(app, ["sweep", str(path), "--out", str(tmp_path / "s.zarr")])
    assert result.exit_code == 2
    assert "use only [base] and [grid]" in result.output


ICL = [
    ("heads", ["icl", "theory", "--heads", "0"]),
    ("depths", ["icl", "theory", "--depths", "0,1"]),
    ("n_seq", ["icl", "theory", "--n-seq", "1"]),
    ("seed", ["icl", "theory", "--seed", "-1"]),
    ("n_seq", ["icl", "baselines", "--n-seq", "1"]),
    ("seed", ["icl", "baselines", "--seed", "-1"]),
    ("depth", ["icl", "train", "--depth", "0"]),
    ("heads", ["icl", "train", "--heads", "0"]),
    ("steps", ["icl", "train", "--steps", "0"]),
    ("batch", ["icl", "train", "--batch", "0"]),
    ("lr", ["icl", "train", "--lr", "0"]),
    ("lr", ["icl", "train", "--lr", "inf"]),
    ("lr", ["icl", "train", "--lr", "nan"]),
    ("seeds", ["icl", "train", "--seeds", "0,x"]),
    ("n_test", ["icl", "train", "--n-test", "1"]),
    ("n_probe", ["icl", "train", "--n-probe", "1"]),
]
STEPS = ["--n-record", "5", "--n-transient", "5"]
DMFT = [
    ("beta", ["dmft", "lyapunov", "--beta", "-1", *STEPS]),
    ("beta", ["dmft", "lyapunov", "--beta", "inf", *STEPS]),
    ("n_record", ["dmft", "lyapunov", "--beta", "1", "--n-record", "0"]),
    ("n_transient", ["dmft", "lyapunov", "--beta", "1", "--n-transient", "-1"]),
    ("gamma", ["dmft", "lyapunov", "--beta", "1", "--gamma", "nan", *STEPS]),
    ("epsilon", ["dmft", "lyapunov", "--beta", "1", "--epsilon", "2", *STEPS]),
    ("steps", ["dmft", "orbit", "--beta", "1", "--steps", "0", *STEPS]),
    ("n_record", ["dmft", "orbit", "--beta", "1", "--n-record", "0"]),
    ("beta_min", ["dmft", "bifurcation", "--beta-min", "nan", "--beta-max", "1", "--out", "o"]),
    ("beta_max", ["dmft", "bifurcation", "--beta-min", "1", "--beta-max", "0", "--out", "o"]),
    ("num", ["dmft", "bifurcation", "--beta-min", "0", "--beta-max", "1", "--num", "0",
             "--out", "o"]),
    ("chains", ["dmft", "bifurcation", "--beta-min", "0", "--beta-max", "1", "--num", "2",
                "--chains", "0", "--out", "o", *STEPS]),
    ("colour_max_y", ["dmft", "bifurcation", "--beta-min", "0", "--beta-max", "1", "--num", "2",
                      "--colour-max-y", "nan", "--out", "o", *STEPS]),
    ("n_se", ["dmft", "finite", "--n-se", "0", "--beta", "1", *STEPS]),
    ("trials", ["dmft", "finite", "--n-se", "30", "--beta", "1", "--trials", "0", *STEPS]),
    ("seed", ["dmft", "finite", "--n-se", "30", "--beta", "1", "--seed", "-1", *STEPS]),
    ("tol", ["dmft", "finite", "--n-se", "30", "--beta", "1", "--tol", "nan", *STEPS]),
    ("n_record", ["dmft", "finite", "--n-se", "30", "--beta", "1", "--n-record", "0"]),
]  # fmt: skip


@pytest.mark.parametrize(("field", "args"), ICL + DMFT, ids=[" ".join(a) for _, a in ICL + DMFT])
def test_icl_and_dmft_options_name_their_field(field, args, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _one_line_error(args, field)


CLOSURE = (
    "attention = 'softmax'\nQ = [[1.0]]\nK = [[1.0]]\nV = [[1.0]]\nmean = [0.0]\ncov = [[1.0]]\n"
)


@pytest.mark.parametrize(
    ("field", "line"),
    [
        ("beta", "beta = -1.0\nt_end = 1.0"),
        ("beta", "beta = inf\nt_end = 1.0"),
        ("eps", "eps = nan\nt_end = 1.0"),
        ("heads", "heads = 0\nt_end = 1.0"),
        ("t_end", "t_end = 0.0"),
        ("t_end", ""),
        ("scaling", "scaling = 'x'\nt_end = 1.0"),
        ("attention", "t_end = 1.0\n[x]"),
    ],
)
def test_closure_fields_name_their_field(field, line, tmp_path):
    path = tmp_path / "c.toml"
    text = CLOSURE + line + "\n"
    if field == "attention":
        text = text.replace("'softmax'", "'sigmoid'").replace("\n[x]", "")
    path.write_text(text)
    _one_line_error(["closure", "--config", str(path)], field)


@pytest.mark.parametrize(("t_end", "dt"), [(1e300, 1.0), (10.0, 1e-320), (1e9, 1.0)])
def test_absurd_step_counts_are_refused_before_any_work(t_end, dt):
    """`--t-end 1e300 --dt 1` used to start computing for ever; `--dt 1e-320` overflowed."""
    with pytest.raises(ConfigError, match=r"^dt: t_end/dt = .* steps, more than the limit"):
        make_config(t_end=t_end, dt=dt)
