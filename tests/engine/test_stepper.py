"""The lean stepping path (engine/stepper.py + the fused C driver) against the generic torch loop.

TOKENDYN_LEAN=0 forces the generic per-step path; both run the same equations, so they differ only
by rounding. Tolerance: one field evaluation sums N keys and d, k components; in a different order
(online fused softmax vs dense torch), each sum may differ by ≤ (N + 2d)·u·Σ|terms| and the
exponential (polynomial vs libm) by a few u per weight, so each stage velocity differs by
≤ (N + 4d + 16)·u·M, M = max|F| ≤ H·max‖W_h V_h‖·max|x| ≤ 2 for the matrices below (norms ≤ 1,
|x| ≤ 2 over the short runs). A step adds dt·that plus a few u from the update and the
retraction; over s steps differences are amplified at most by e^{L t}, L ≤ H(1 + 2β_max) ≤ 10 here
(Lipschitz constant of the field for these norms). So |x_lean − x_generic| ≤
s·(N + 4d + 16)·u·2·e^{10 t}·max(1, |x|) with u the unit round-off of the dtype.
"""

from __future__ import annotations

import itertools
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tokendyn.engine import stepper
from tokendyn.engine.attention import Head, SigmoidAttention, SoftmaxAttention
from tokendyn.engine.blocks import Block, Layer, LayerSchedule
from tokendyn.engine.integrate import integrate
from tokendyn.engine.kernels import fused
from tokendyn.engine.space import Euclidean, Sphere
from tokendyn.errors import NonFiniteStateError

pytestmark = pytest.mark.skipif(not fused.available(), reason="no C compiler: no lean path")

D, DT, STEPS = 3, 0.1, 4


def _matrix(g: torch.Generator, rows: int, cols: int, norm: float) -> torch.Tensor:
    m = torch.randn(rows, cols, generator=g, dtype=torch.float64)
    return norm * m / torch.linalg.matrix_norm(m, 2)


def _field(heads: int, beta_per_cloud: bool, B: int, mask, seed: int = 0) -> SoftmaxAttention:
    g = torch.Generator().manual_seed(seed)
    betas = torch.tensor([0.5, 2.0, 1.0][:B], dtype=torch.float64) if beta_per_cloud else 1.5
    if heads == 1:
        hs = [Head(*(_matrix(g, D, D, 1.0) for _ in range(3)), betas)]
    else:
        hs = [
            Head(
                _matrix(g, 2, D, 1.0),
                _matrix(g, 2, D, 1.0),
                _matrix(g, 2, D, 1.0),
                betas,
                _matrix(g, D, 2, 0.5),
            )
            for _ in range(2)
        ]
    return SoftmaxAttention(hs, mask=mask)


def _both(monkeypatch, field, space, x0, method, **kwargs):
    monkeypatch.setenv("TOKENDYN_LEAN", "1")
    lean = integrate(field, space, x0, t_end=STEPS * DT, dt=DT, method=method, **kwargs)
    monkeypatch.setenv("TOKENDYN_LEAN", "0")
    generic = integrate(field, space, x0, t_end=STEPS * DT, dt=DT, method=method, **kwargs)
    return lean, generic


def _tolerance(dtype: torch.dtype, n: int) -> float:
    u = torch.finfo(dtype).eps / 2
    return STEPS * (n + 4 * D + 16) * u * 2 * math.exp(10 * STEPS * DT)


def _cases() -> list:
    """Every combination; the default run keeps a subset that still covers each method × space ×
    dtype with both masks, 1 and 2 heads, both β kinds, B = 1 and 3 and N = 1, 7, 64 (the rest is
    marked slow)."""
    cases = []
    for method, space, dtype, mask, heads, per_cloud, B, n in itertools.product(
        ["euler", "heun", "rk4"],
        [Sphere(D), Euclidean()],
        [torch.float32, torch.float64],
        [None, "causal"],
        [1, 2],
        [False, True],
        [1, 3],
        [1, 2, 7, 64],
    ):
        fast = (mask is None) == (heads == 1) and per_cloud == (B == 3) and n != 2
        marks = () if fast else (pytest.mark.slow,)
        args = (method, space, dtype, mask, heads, per_cloud, B, n)
        cases.append(pytest.param(*args, marks=marks))
    return cases


@pytest.mark.parametrize(
    ("method", "space", "dtype", "mask", "heads", "beta_per_cloud", "B", "n"), _cases()
)
def test_lean_path_equals_generic_path(
    monkeypatch, method, space, dtype, mask, heads, beta_per_cloud, B, n
):
    field = _field(heads, beta_per_cloud, B, mask).to(dtype)
    g = torch.Generator().manual_seed(1)
    x0 = torch.randn(B, n, D, generator=g, dtype=torch.float64)
    x0 = (x0 / x0.norm(dim=-1, keepdim=True)).to(dtype)
    assert stepper.lean_stepper(field, space, method, x0, DT) is not None
    frames: dict[str, list] = {"lean": [], "generic": []}
    monkeypatch.setenv("TOKENDYN_LEAN", "1")
    lean = integrate(
        field, space, x0, t_end=STEPS * DT, dt=DT, method=method, save_every=3,
        on_save=frames["lean"].append,
    )  # fmt: skip
    monkeypatch.setenv("TOKENDYN_LEAN", "0")
    generic = integrate(
        field, space, x0, t_end=STEPS * DT, dt=DT, method=method, save_every=3,
        on_save=frames["generic"].append,
    )  # fmt: skip
    tol = _tolerance(dtype, n) * max(1.0, generic.abs().max().item())
    assert (lean - generic).abs().max().item() <= tol
    assert [f.step for f in frames["lean"]] == [f.step for f in frames["generic"]] == [0, 3, 4]
    for a, b in zip(frames["lean"], frames["generic"], strict=True):
        assert abs(a.x - b.x).max() <= tol


def test_normalise_n_equals_generic(monkeypatch):
    field = _field(2, True, 3, "causal")
    field.normalise = "n"
    x0 = torch.randn(3, 9, D, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    lean, generic = _both(monkeypatch, field, Euclidean(), x0, "rk4")
    assert (lean - generic).abs().max().item() <= _tolerance(torch.float64, 9)


@pytest.mark.parametrize("method", ["euler", "heun", "rk4"])
def test_uniform_attention_growth_is_exact(monkeypatch, method):
    """Q = K = 0, V = c·I on R^d: ẋ_i = c·x̄, so x̄ is multiplied by the scheme's growth factor
    R(z) (Euler 1 + z, Heun 1 + z + z²/2, RK4 Σ_{k≤4} zᵏ/k!), z = c·dt, per step and x_i − x̄ is
    constant: an exact solution for the lean path alone."""
    c = 0.7
    zero = torch.zeros(1, D, dtype=torch.float64)
    field = SoftmaxAttention([Head(zero, zero, c * torch.eye(D, dtype=torch.float64), 1.0)])
    x0 = torch.randn(2, 5, D, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    monkeypatch.setenv("TOKENDYN_LEAN", "1")
    assert stepper.lean_stepper(field, Euclidean(), method, x0, DT) is not None
    out = integrate(field, Euclidean(), x0, t_end=1.0, dt=DT, method=method)
    z = c * DT
    R = {"euler": 1 + z, "heun": 1 + z + z**2 / 2, "rk4": 1 + z + z**2 / 2 + z**3 / 6 + z**4 / 24}
    mean0 = x0.mean(1, keepdim=True)
    assert (out.mean(1, keepdim=True) - R[method] ** 10 * mean0).abs().max().item() < 1e-13
    assert ((out - out.mean(1, keepdim=True)) - (x0 - mean0)).abs().max().item() < 1e-13


@pytest.mark.parametrize("method", ["euler", "heun", "rk4"])
@pytest.mark.parametrize(("dtype", "c"), [(torch.float32, 1e3), (torch.float64, 1e20)])
def test_overflow_raises_the_same_error(monkeypatch, method, dtype, c):
    """Uniform attention with V = c·I, dt = 1 multiplies x̄ by R(c) per step (c … c⁴/24), so the
    state overflows mid-way between saved frames; both paths must stop at the same step with the
    same fields. c is chosen so that the last finite state (and its stages) lies orders of
    magnitude below the overflow threshold and the next step far above it: rounding cannot move
    the step."""
    zero = torch.zeros(1, D, dtype=dtype)
    field = SoftmaxAttention([Head(zero, zero, c * torch.eye(D, dtype=dtype), 1.0)])
    x0 = torch.randn(2, 6, D, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    x0 = x0.to(dtype)
    errors, counted = [], []
    for lean in ("1", "0"):
        monkeypatch.setenv("TOKENDYN_LEAN", lean)
        steps: list[int] = []
        with pytest.raises(NonFiniteStateError) as info:
            integrate(
                field, Euclidean(), x0, t_end=40.0, dt=1.0, method=method, save_every=3,
                on_step=steps.append,
            )  # fmt: skip
        errors.append((info.value.step, info.value.time, info.value.saved_until))
        counted.append(sum(steps))
    assert errors[0] == errors[1]
    assert 1 < errors[0][0] < 40 and errors[0][0] % 3 != 0  # the check is mid-chunk
    assert counted[0] == counted[1] == errors[0][0] - 1


def test_progress_counts_every_step():
    field = _field(1, False, 1, None)
    steps: list[int] = []
    x0 = torch.randn(1, 4, D, dtype=torch.float64)
    integrate(field, Sphere(D), x0, t_end=1.7, dt=0.1, save_every=5, on_step=steps.append)
    assert sum(steps) == 17 and len(steps) == 4  # one report per saved frame


def test_fields_needing_gradients_take_the_generic_path():
    field = _field(2, False, 1, None)
    field.heads[0].Q.requires_grad_(True)
    x0 = torch.randn(1, 5, D, dtype=torch.float64, requires_grad=True)
    assert stepper.lean_stepper(field, Sphere(D), "rk4", x0, DT) is None
    out = integrate(field, Sphere(D), x0, t_end=0.3, dt=DT, method="rk4")
    out.square().sum().backward()
    assert x0.grad is not None and x0.grad.abs().sum() > 0
    assert field.heads[0].Q.grad is not None and field.heads[0].Q.grad.abs().sum() > 0
    with torch.no_grad():  # no gradient wanted: the lean path again
        assert stepper.lean_stepper(field, Sphere(D), "rk4", x0, DT) is not None


def test_block_and_sigmoid_fields_never_take_the_lean_path(monkeypatch):
    built: list[object] = []
    real = stepper.LeanStepper

    def spy(*args, **kwargs):
        built.append(args[0])
        return real(*args, **kwargs)

    monkeypatch.setattr(stepper, "LeanStepper", spy)
    eye = torch.eye(D, dtype=torch.float64)
    x0 = torch.randn(1, 6, D, dtype=torch.float64)
    sigmoid = SigmoidAttention([Head(eye, eye, eye, 1.0)])
    block = Block(LayerSchedule([Layer(SoftmaxAttention([Head(eye, eye, eye, 1.0)]))]), norm="none")
    for f in (sigmoid, block):
        integrate(f, Sphere(D), x0, t_end=0.2, dt=DT, method="euler")
    dense = SoftmaxAttention([Head(eye, eye, eye, 1.0)], backend="dense")
    integrate(dense, Sphere(D), x0, t_end=0.2, dt=DT, method="euler")  # a backend chosen by name
    assert built == []
    softmax = SoftmaxAttention([Head(eye, eye, eye, 1.0)])
    integrate(softmax, Sphere(D), x0, t_end=0.2, dt=DT, method="euler")
    assert built == [softmax]


def _threads(monkeypatch, workers: int) -> None:
    """Give the lean path `workers` threads whatever the size (more than the cores is fine)."""
    monkeypatch.setenv("TOKENDYN_LEAN", "1")
    monkeypatch.setattr(stepper, "workers_for", lambda pairs, per_thread=0: workers)
    stepper.choice_for.cache_clear()  # no timing from an earlier stepper: the split runs first


@pytest.mark.parametrize("method", ["euler", "heun", "rk4"])
@pytest.mark.parametrize(
    ("space", "dtype", "mask", "heads", "B", "n", "workers", "used"),
    [
        (Sphere(D), torch.float64, None, 1, 1, 37, 3, 3),  # one cloud: 3 token ranges
        (Sphere(D), torch.float32, "causal", 2, 1, 37, 2, 2),  # causal: ranges split the pairs
        (Euclidean(), torch.float64, "causal", 2, 3, 37, 7, 6),  # 3 cloud ranges × 2 threads
        (Euclidean(), torch.float64, None, 1, 1, 9, 5, 3),  # 3 row groups of 4: 3 threads
    ],
)
def test_token_split_is_bitwise_the_same(
    monkeypatch, method, space, dtype, mask, heads, B, n, workers, used
):
    """Splitting each cloud's tokens over threads changes which thread computes a token, never
    its arithmetic: the states after every frame are equal bit for bit to one thread's."""
    field = _field(heads, True, B, mask).to(dtype)
    x0 = torch.randn(B, n, D, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    x0 = (x0 / x0.norm(dim=-1, keepdim=True)).to(dtype)
    runs = {}
    for w in (1, workers):
        _threads(monkeypatch, w)
        frames: list = []
        out = integrate(
            field, space, x0, t_end=7 * DT, dt=DT, method=method, save_every=3,
            on_save=frames.append,
        )  # fmt: skip
        runs[w] = (out, [f.x for f in frames])
    assert torch.equal(runs[1][0], runs[workers][0])
    for a, b in zip(runs[1][1], runs[workers][1], strict=True):
        assert (a == b).all()
    _threads(monkeypatch, workers)
    lean = stepper.lean_stepper(field, space, method, x0, DT)
    assert lean is not None
    lean.advance(1)
    assert lean.threads_used == used


@pytest.mark.parametrize(("method", "step"), [("euler", 3), ("heun", 2), ("rk4", 1)])
def test_one_token_range_overflowing_stops_every_thread(monkeypatch, method, step):
    """Q = K = 0, V = c·I, causal, on R^d: token i moves with c times the mean of tokens 0..i, so
    a last token of size 1e250 overflows after `step` steps (growth R(c·dt) = 1e20, 5e39, 4e78
    per step) while the others, of size 1, stay finite for 4 or more steps. Only the last
    thread's tokens go non-finite; every thread must stop at that step, as the generic path
    does (a thread that went on would wait for ever at the next barrier)."""
    c = 1e20
    zero = torch.zeros(1, D, dtype=torch.float64)
    field = SoftmaxAttention(
        [Head(zero, zero, c * torch.eye(D, dtype=torch.float64), 1.0)], mask="causal"
    )
    x0 = torch.randn(1, 9, D, generator=torch.Generator().manual_seed(6), dtype=torch.float64)
    x0[0, -1] *= 1e250
    errors = []
    for workers, lean in ((3, "1"), (1, "1"), (1, "0")):
        _threads(monkeypatch, workers)
        monkeypatch.setenv("TOKENDYN_LEAN", lean)
        with pytest.raises(NonFiniteStateError) as info:
            integrate(field, Euclidean(), x0, t_end=20.0, dt=1.0, method=method, save_every=5)
        errors.append((info.value.step, info.value.time, info.value.saved_until))
    assert errors[0] == errors[1] == errors[2]
    assert errors[0][0] == step


def test_thread_choice_keeps_the_faster_and_follows_a_change():
    """The choice times both options on probes of `probe_steps` steps, then runs the one with
    less time per step, timing the other after 1, 2, 4, … and then every PROBE_EVERY probes'
    worth of steps; when the machine changes (the split gets slower), it switches."""
    every = stepper.PROBE_EVERY
    assert stepper.ThreadChoice(1, 5).plan(100) == (1, 100)
    choice = stepper.ThreadChoice(2, 5)
    plans = []

    def run(steps: int, seconds_per_step: dict[int, float]) -> None:
        while steps:
            threads, n = choice.plan(steps)
            plans.append((threads, n))
            choice.record(threads, n * seconds_per_step[threads], n)
            steps -= n

    run(2000, {2: 1.0, 1: 1.8})  # the split is faster
    assert plans[:2] == [(2, 5), (1, 5)]
    gaps = [n for t, n in plans[2:] if t == 2]
    assert gaps[:5] == [5, 10, 20, 40, 80] and set(gaps[5:-1]) == {every * 5}
    assert all(n == 5 for t, n in plans[2:] if t == 1)  # one thread only in probes
    plans.clear()
    run(2000, {2: 3.0, 1: 1.8})  # a busy machine: now one thread is faster
    # The split's last three times must all be slow before it loses: three of its calls, then
    # only probes of it, every PROBE_EVERY probes' worth of steps (its gap stays at the longest).
    full = [i for i, (t, n) in enumerate(plans) if t == 2 and n > 5]
    assert len(full) == 3
    after = plans[full[-1] + 1 :]
    assert all(n == 5 for t, n in after if t == 2)
    assert set(n for t, n in after[1:-1] if t == 1) <= {every * 5}


def test_steppers_of_one_shape_share_their_choice(monkeypatch):
    _threads(monkeypatch, 2)
    field = _field(1, False, 1, None)
    x0 = torch.randn(1, 64, D, dtype=torch.float64)
    a = stepper.lean_stepper(field, Sphere(D), "euler", x0, DT)
    b = stepper.lean_stepper(field, Sphere(D), "euler", x0.clone(), DT)
    c = stepper.lean_stepper(field, Sphere(D), "rk4", x0, DT)
    assert a is not None and b is not None and c is not None
    assert a.choice is b.choice and a.choice is not c.choice
    a.advance(1)
    assert b.choice.plan(10)[0] == 1  # a timed the split: b goes on with one thread's probe


_FAILING_PTHREAD_CREATE = r"""
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
/* pthread_create that lets SHIM_ALLOWED threads of the fused library start, then fails (EAGAIN);
 * the library is loaded through /proc/self/fd/N, other libraries' threads are never touched. */
typedef int (*create_fn)(pthread_t *, const pthread_attr_t *, void *(*)(void *), void *);
static int allowed = -1;
int pthread_create(pthread_t *t, const pthread_attr_t *a, void *(*fn)(void *), void *arg) {
    create_fn real = (create_fn)dlsym(RTLD_NEXT, "pthread_create");
    Dl_info info;
    if (dladdr((void *)fn, &info) && info.dli_fname &&
        (strstr(info.dli_fname, "/proc/self/fd/") || strstr(info.dli_fname, "fused-"))) {
        if (allowed < 0) allowed = atoi(getenv("SHIM_ALLOWED"));
        if (allowed == 0) return EAGAIN;
        --allowed;
    }
    return real(t, a, fn, arg);
}
"""

_RUN_THREE_THREADS = """
import torch
from tokendyn.engine import stepper
from tokendyn.engine.attention import Head, SoftmaxAttention
from tokendyn.engine.space import Sphere
stepper.workers_for = lambda pairs, per_thread=0: 3
eye = torch.eye(3, dtype=torch.float64)
field = SoftmaxAttention([Head(eye, eye, eye, 1.5)], mask="causal")
x0 = torch.randn(1, 41, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
lean = stepper.lean_stepper(field, Sphere(3), "rk4", x0 / x0.norm(dim=-1, keepdim=True), 0.1)
lean.advance(5)
print(lean.threads_used, [v.hex() for v in lean.x.flatten().tolist()])
"""


@pytest.mark.skipif(sys.platform != "linux" or shutil.which("cc") is None, reason="LD_PRELOAD")
def test_threads_that_cannot_start_leave_the_work_to_one_thread(tmp_path):
    """When pthread_create fails (none or only some of the threads start), the started threads
    are released and the caller's thread takes every token: the same bits, no deadlock."""
    source = tmp_path / "shim.c"
    source.write_text(_FAILING_PTHREAD_CREATE)
    shim = tmp_path / "shim.so"
    subprocess.run(["cc", "-shared", "-fPIC", "-o", str(shim), str(source), "-ldl"], check=True)
    env = {
        **os.environ,
        "LD_PRELOAD": str(shim),
        "PYTHONPATH": str(Path(__file__).parents[2] / "src"),
    }
    results = {}
    for allowed in (0, 1, 99):
        run = subprocess.run(
            [sys.executable, "-c", _RUN_THREE_THREADS],
            env={**env, "SHIM_ALLOWED": str(allowed)},
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert run.returncode == 0, run.stderr
        used, state = run.stdout.split(" ", 1)
        results[allowed] = (int(used), state)
    assert [results[a][0] for a in (0, 1, 99)] == [1, 1, 3]
    assert results[0][1] == results[1][1] == results[99][1]
