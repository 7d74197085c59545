"""simulate(): exact two-token dynamics, measured orders, sphere constraint, NaN stop."""

import math

import numpy as np
import pytest
import torch

from tokendyn.app.simulate import simulate
from tokendyn.engine.attention import Head, SoftmaxAttention
from tokendyn.engine.initial import uniform_sphere
from tokendyn.engine.space import Euclidean, Sphere
from tokendyn.errors import ConfigError, NonFiniteStateError
from tokendyn.studies.engine import convergence_order, exact_gap, two_token_gap

F64 = torch.float64


@pytest.mark.parametrize("normalise", ["softmax", "n"])
@pytest.mark.parametrize("beta", [0.5, 2.0, 9.0])
def test_two_tokens_follow_the_exact_gap_ode(normalise, beta):
    times, gap = two_token_gap(2.5, beta, normalise, t_end=4.0, dt=0.01)
    _, gap_half = two_token_gap(2.5, beta, normalise, t_end=4.0, dt=0.005)
    ref = exact_gap(2.5, beta, normalise, times)
    # Richardson: RK4's error at dt is ≈ 16/15·|φ_dt − φ_{dt/2}|; allow twice that (+ round-off).
    estimate = 16 / 15 * np.abs(gap - gap_half[::2]).max()
    assert np.abs(gap - ref).max() <= 2 * estimate + 1e-12
    assert estimate < 1e-7


@pytest.mark.parametrize(("method", "order"), [("euler", 1), ("heun", 2), ("rk4", 4)])
def test_measured_convergence_order(method, order):
    dts = (
        np.array([0.4, 0.2, 0.1, 0.05]) if method == "rk4" else np.array([0.1, 0.05, 0.025, 0.0125])
    )
    ref = exact_gap(2.5, 2.0, "softmax", np.array([0.0, 2.0]))[-1]
    errors = [abs(two_token_gap(2.5, 2.0, "softmax", 2.0, h, method)[1][-1] - ref) for h in dts]
    slope = np.polyfit(np.log(dts), np.log(errors), 1)[0]
    assert abs(slope - order) < 0.15


def test_engine_convergence_helper_reports_fourth_order():
    _, errors, slope = convergence_order()
    assert np.all(np.diff(errors) < 0) and abs(slope - 4) < 0.15


def test_sphere_constraint_is_kept():
    gen = torch.Generator().manual_seed(0)
    x0 = uniform_sphere(2, 40, 3, gen)
    Q, K, V = (torch.randn(3, 3, generator=gen, dtype=F64) for _ in range(3))
    field = SoftmaxAttention([Head(Q, K, V, 3.0)], backend="tiled")
    ds = simulate(field, Sphere(3), x0, t_end=3.0, dt=0.05, method="euler")
    norms = np.linalg.norm(ds["x"].values, axis=-1)
    assert np.abs(norms - 1).max() < 1e-14


def test_zero_value_matrix_is_static():
    x0 = torch.randn(20, 3, generator=torch.Generator().manual_seed(1), dtype=F64)
    I3 = torch.eye(3, dtype=F64)
    field = SoftmaxAttention([Head(I3, I3, torch.zeros(3, 3, dtype=F64), 1.0)])
    ds = simulate(field, Euclidean(), x0, t_end=1.0, dt=0.1)
    assert np.array_equal(ds["x"].values[-1], x0.numpy())


def test_uniform_attention_moves_the_mean_by_exp_tv():
    """Q = 0: ẋ_i = V·mean, so the mean follows e^{tV} and the centred cloud is frozen."""
    gen = torch.Generator().manual_seed(2)
    x0 = torch.randn(30, 3, generator=gen, dtype=F64)
    V = torch.randn(3, 3, generator=gen, dtype=F64)
    field = SoftmaxAttention([Head(torch.zeros(3, 3, dtype=F64), torch.eye(3, dtype=F64), V, 1.0)])
    ds = simulate(field, Euclidean(), x0, t_end=1.0, dt=0.01)
    x_end = ds["x"].values[-1]
    want_mean = torch.linalg.matrix_exp(V) @ x0.mean(0)
    assert np.abs(x_end.mean(0) - want_mean.numpy()).max() < 1e-9
    assert np.abs((x_end - x_end.mean(0)) - (x0 - x0.mean(0)).numpy()).max() < 1e-12


def test_saved_frames_and_coordinates():
    x0 = uniform_sphere(3, 10, 3, torch.Generator().manual_seed(0))
    I3 = torch.eye(3, dtype=F64)
    field = SoftmaxAttention([Head(I3, I3, I3, 1.0)], mask="causal")
    ds = simulate(field, Sphere(3), x0, t_end=1.0, dt=0.1, save_every=3, positions=True)
    assert ds["x"].dims == ("time", "batch", "token", "dim")
    assert ds["step"].values.tolist() == [0, 3, 6, 9, 10]
    assert np.allclose(ds["time"].values, [0, 0.3, 0.6, 0.9, 1.0])
    assert np.allclose(ds["position"].values, np.arange(1, 11) / 10)


def test_statistics_are_saved_per_frame():
    x0 = uniform_sphere(1, 10, 3, torch.Generator().manual_seed(0))[0]
    I3 = torch.eye(3, dtype=F64)
    field = SoftmaxAttention([Head(I3, I3, I3, 1.0)])
    ds = simulate(
        field,
        Sphere(3),
        x0,
        t_end=1.0,
        dt=0.5,
        stats={"mean_norm": lambda x: x.mean(1).norm(dim=-1)},
    )
    assert ds["mean_norm"].dims == ("time",)
    assert np.allclose(ds["mean_norm"].values, np.linalg.norm(ds["x"].values.mean(1), axis=-1))


class _Recorder:
    def __init__(self):
        self.steps = []

    def write(self, frame):
        self.steps.append(frame.step)


def test_nan_stops_the_run_and_keeps_saved_frames():
    """Euclidean softmax with a huge β and expanding V blows up; the error names the step."""
    x0 = torch.randn(20, 3, generator=torch.Generator().manual_seed(0), dtype=F64) * 10
    I3 = torch.eye(3, dtype=F64)
    field = SoftmaxAttention([Head(I3, I3, 50 * I3, 1.0)], normalise="n")
    sink = _Recorder()
    with pytest.raises(
        NonFiniteStateError, match=r"state: NaN or Inf appeared at step \d+"
    ) as info:
        simulate(field, Euclidean(), x0, t_end=100.0, dt=0.1, sink=sink, save_every=1)
    assert sink.steps == list(range(info.value.step))
    assert math.isclose(info.value.saved_until, (info.value.step - 1) * 0.1)


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"method": "rk5"}, "method"),
        ({"dt": 0.3}, "dt"),
        ({"save_every": 0}, "save_every"),
        ({"dt": -1.0}, "dt"),
    ],
)
def test_bad_integration_settings(kwargs, field):
    I3 = torch.eye(3, dtype=F64)
    args = {"t_end": 1.0, "dt": 0.1, **kwargs}
    with pytest.raises(ConfigError, match=f"^{field}:"):
        simulate(
            SoftmaxAttention([Head(I3, I3, I3, 1.0)]),
            Sphere(3),
            torch.ones(4, 3, dtype=F64),
            **args,
        )


def test_nan_initial_state_is_rejected():
    I3 = torch.eye(3, dtype=F64)
    x0 = torch.ones(4, 3, dtype=F64)
    x0[1, 2] = float("nan")
    with pytest.raises(ConfigError, match="^x0:"):
        simulate(SoftmaxAttention([Head(I3, I3, I3, 1.0)]), Euclidean(), x0, t_end=1.0, dt=0.1)


@pytest.mark.parametrize("normalise", ["softmax", "n"])
def test_energy_never_decreases_along_the_sphere_flow(normalise):
    """Q=K=V=I on S^{d-1}: SA and USA are gradient ascents of E_β (USA for the plain metric, SA for
    a reweighted one), so E_β(t) is non-decreasing up to round-off."""
    from tokendyn.engine.observables import interaction_energy

    gen = torch.Generator().manual_seed(11)
    x0 = uniform_sphere(2, 32, 3, gen)
    I3 = torch.eye(3, dtype=F64)
    field = SoftmaxAttention([Head(I3, I3, I3, 2.0)], normalise=normalise)
    energy = lambda x: interaction_energy(x, 2.0)  # noqa: E731
    ds = simulate(field, Sphere(3), x0, t_end=10.0, dt=0.05, stats={"energy": energy})
    e = ds["energy"].values
    increments = np.diff(e, axis=0) / e[:-1]
    assert increments.min() > -1e-13
    assert (e[-1] - e[0]).min() > 0.1 * e[0].min()  # and it really moves
