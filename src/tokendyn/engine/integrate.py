"""integrate(): integrate ẋ_i = P_{x_i} Γ[μ](x_i) with a fixed-step scheme; depth is time.

Schemes (one residual layer = one step of size dt):
    euler:  x ← x + dt·F(x)                                   (a residual network)
    heun:   x ← x + dt/2·(F(x) + F(x + dt·F(x)))
    rk4:    classical 4-stage Runge–Kutta
where F(x) = P_x Γ(x) is the tangent-projected velocity. A field with a `layer_time` attribute
that is not None (a block whose weights are piecewise constant on [lτ, (l+1)τ)) is called as
Γ(x, t_n) with the step's start time t_n in every stage; dt must divide τ, so steps land on the
layer boundaries and never straddle one. Stages are evaluated on the ambient ODE,
whose exact flow keeps |x_i| = 1 on the sphere; the state is retracted (normalised) after every
step, so the scheme keeps its order. Saving and progress are callbacks: `on_save(frame)` receives
every saved frame as it is made, `on_step(n)` is told of every step taken. The loop knows no store,
Dataset or progress bar (`tokendyn.app.simulate` builds those on top of it).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from contextlib import nullcontext
from dataclasses import dataclass, field

import numpy as np
import torch

from tokendyn.engine.attention.base import AttentionField
from tokendyn.engine.space import Space
from tokendyn.engine.stepper import lean_stepper
from tokendyn.errors import ConfigError, NonFiniteStateError

Velocity = Callable[[torch.Tensor], torch.Tensor]
Statistic = Callable[[torch.Tensor], torch.Tensor]


def euler_step(F: Velocity, x: torch.Tensor, dt: float) -> torch.Tensor:
    return x + dt * F(x)


def heun_step(F: Velocity, x: torch.Tensor, dt: float) -> torch.Tensor:
    k1 = F(x)
    k2 = F(x + dt * k1)
    return x + (0.5 * dt) * (k1 + k2)


def rk4_step(F: Velocity, x: torch.Tensor, dt: float) -> torch.Tensor:
    k1 = F(x)
    k2 = F(x + (0.5 * dt) * k1)
    k3 = F(x + (0.5 * dt) * k2)
    k4 = F(x + dt * k3)
    return x + (dt / 6.0) * (k1 + 2 * k2 + 2 * k3 + k4)


METHODS: dict[str, Callable[[Velocity, torch.Tensor, float], torch.Tensor]] = {
    "euler": euler_step,
    "heun": heun_step,
    "rk4": rk4_step,
}


@dataclass
class Frame:
    """One saved state: x is (B, N, d) on the CPU as numpy; stats map names to (B,) arrays."""

    step: int
    time: float
    x: np.ndarray
    stats: dict[str, np.ndarray] = field(default_factory=dict)


def n_steps_of(t_end: float, dt: float) -> int:
    """The number of steps of size dt from 0 to t_end; t_end must be a multiple of dt."""
    if not (dt > 0 and t_end > 0):
        raise ConfigError(
            "dt", f"dt={dt}, t_end={t_end}; both must be > 0", "give positive dt and t_end"
        )
    n_steps = round(t_end / dt)
    if abs(n_steps * dt - t_end) > 1e-9 * max(1.0, t_end):
        raise ConfigError(
            "dt", f"t_end={t_end} is not a multiple of dt={dt}", "choose dt dividing t_end"
        )
    return n_steps


def integrate(
    field_fn: Velocity,
    space: Space,
    x0: torch.Tensor,
    *,
    t_end: float,
    dt: float,
    method: str = "rk4",
    save_every: int = 1,
    stats: Mapping[str, Statistic] | None = None,
    on_save: Callable[[Frame], None] | None = None,
    on_step: Callable[[int], None] | None = None,
    start_step: int = 0,
) -> torch.Tensor:
    """Integrate the cloud x0 ((N, d) or (B, N, d)) from step `start_step` to t_end; returns the
    final state as (B, N, d).

    Frames are saved at steps 0, k, 2k, … (k = save_every) and at the last step (step 0 only when
    start_step = 0); each goes to `on_save` at once. Raises NonFiniteStateError (after `on_save`
    has had every earlier frame) if NaN/Inf appears.
    """
    if method not in METHODS:
        raise ConfigError(
            "method", f"unknown method {method!r}", f"use one of {', '.join(METHODS)}"
        )
    n_steps = n_steps_of(t_end, dt)
    if save_every < 1:
        raise ConfigError("save_every", f"is {save_every}", "use an integer ≥ 1")
    if not torch.isfinite(x0).all():
        raise ConfigError(
            "x0", "the initial state contains NaN or Inf", "give a finite initial cloud"
        )
    x = x0 if x0.dim() == 3 else x0.unsqueeze(0)
    step_fn = METHODS[method]
    stats = dict(stats or {})

    layer_time = getattr(field_fn, "layer_time", None)
    if layer_time is not None and abs(layer_time / dt - round(layer_time / dt)) > 1e-9 * max(
        1.0, layer_time / dt
    ):
        raise ConfigError(
            "dt", f"dt={dt} does not divide the layer time {layer_time}", "choose dt = τ/k"
        )

    saved_until: float | None = None

    def save(step: int, state: torch.Tensor) -> None:
        nonlocal saved_until
        frame = Frame(
            step=step,
            time=step * dt,
            x=state.detach().cpu().numpy(),
            stats={
                name: np.atleast_1d(fn(state).detach().cpu().numpy()) for name, fn in stats.items()
            },
        )
        if on_save is not None:
            on_save(frame)
        saved_until = frame.time

    def stepped(count: int) -> None:
        if on_step is not None and count > 0:
            on_step(count)

    needs_grad = _needs_grad(field_fn, x)
    with nullcontext() if needs_grad else torch.inference_mode():
        stepper = None if needs_grad else lean_stepper(field_fn, space, method, x, dt)
        if start_step == 0:
            save(0, x if stepper is None else stepper.x.clone())
        if stepper is not None:
            # Chunks between saved frames: one C call each; saving, statistics and progress are
            # paid per frame, not per step.
            step = start_step
            while step < n_steps:
                target = min(n_steps, (step // save_every + 1) * save_every)
                bad = stepper.advance(target - step)
                if bad:
                    stepped(bad - 1)
                    raise NonFiniteStateError(step + bad, (step + bad) * dt, saved_until)
                save(target, stepper.x.clone())
                stepped(target - step)
                step = target
            x = stepper.x
        else:
            x = _generic_loop(
                field_fn,
                space,
                x,
                dt,
                step_fn,
                layer_time,
                start_step,
                n_steps,
                save_every,
                save,
                on_step,
                lambda: saved_until,
            )
    # Outside inference mode: a normal tensor, which callers may use under autograd.
    return x if needs_grad else x.clone()


def _needs_grad(field_fn: Velocity, x: torch.Tensor) -> bool:
    """Whether autograd may be needed: gradients are on and the state or an attention field's
    weights require them (any other callable may hold parameters, so it is assumed to)."""
    if not torch.is_grad_enabled():
        return False
    if x.requires_grad or not isinstance(field_fn, AttentionField):
        return True
    for head in field_fn.heads:
        for t in (head.Q, head.K, head.V, head.W, head.beta):
            if isinstance(t, torch.Tensor) and t.requires_grad:
                return True
    return False


def _generic_loop(
    field_fn: Velocity,
    space: Space,
    x: torch.Tensor,
    dt: float,
    step_fn: Callable[[Velocity, torch.Tensor, float], torch.Tensor],
    layer_time: float | None,
    start_step: int,
    n_steps: int,
    save_every: int,
    save: Callable[[int, torch.Tensor], None],
    on_step: Callable[[int], None] | None,
    saved_until: Callable[[], float | None],
) -> torch.Tensor:
    """The per-step torch loop: any field, any space, differentiable."""

    def velocity(y: torch.Tensor) -> torch.Tensor:
        return space.project(y, field_fn(y))

    for step in range(start_step + 1, n_steps + 1):
        if layer_time is None:
            F = velocity
        else:
            t_n = (step - 1) * dt

            def F(y: torch.Tensor, t_n: float = t_n) -> torch.Tensor:
                return space.project(y, field_fn(y, t_n))  # type: ignore[call-arg]

        x = space.retract(step_fn(F, x, dt))
        if not torch.isfinite(x).all():
            raise NonFiniteStateError(step, step * dt, saved_until())
        if step % save_every == 0 or step == n_steps:
            save(step, x)
        if on_step is not None:
            on_step(1)
    return x
