"""simulate(): integrate ẋ_i = P_{x_i} Γ[μ](x_i) with a fixed-step scheme; depth is time.

Schemes (one residual layer = one step of size dt):
    euler:  x ← x + dt·F(x)                                   (a residual network)
    heun:   x ← x + dt/2·(F(x) + F(x + dt·F(x)))
    rk4:    classical 4-stage Runge–Kutta
where F(x) = P_x Γ(x) is the tangent-projected velocity. Stages are evaluated on the ambient ODE,
whose exact flow keeps |x_i| = 1 on the sphere; the state is retracted (normalised) after every
step, so the scheme keeps its order. Saved frames are passed to an optional sink as they are made
(for incremental stores) and returned as an xarray Dataset.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
import torch
import xarray as xr

from .errors import ConfigError, NonFiniteStateError
from .progress import progress_bar
from .space import Space

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


class FrameSink(Protocol):
    def write(self, frame: Frame) -> None: ...


def frames_to_dataset(
    frames: list[Frame],
    *,
    batched: bool,
    attrs: Mapping[str, str] | None = None,
    positions: bool = False,
) -> xr.Dataset:
    """Frames → Dataset with `x` (time, [batch,] token, dim), coordinates time and step, and one
    variable per statistic (time, [batch])."""
    x = np.stack([f.x for f in frames])
    _, B, N, d = x.shape
    lead = ("time", "batch") if batched else ("time",)
    data = {"x": ((*lead, "token", "dim"), x if batched else x[:, 0])}
    for name in frames[0].stats:
        values = np.stack([f.stats[name] for f in frames])
        data[name] = (lead, values if batched else values[:, 0])
    coords: dict[str, object] = {
        "time": [f.time for f in frames],
        "step": ("time", np.array([f.step for f in frames], dtype=np.int64)),
        "token": np.arange(N),
        "dim": np.arange(d),
    }
    if batched:
        coords["batch"] = np.arange(B)
    if positions:
        coords["position"] = ("token", np.arange(1, N + 1) / N)
    return xr.Dataset(data, coords=coords, attrs=dict(attrs or {}))


def simulate(
    field_fn: Velocity,
    space: Space,
    x0: torch.Tensor,
    *,
    t_end: float,
    dt: float,
    method: str = "rk4",
    save_every: int = 1,
    stats: Mapping[str, Statistic] | None = None,
    sink: FrameSink | None = None,
    start_step: int = 0,
    keep: bool = True,
    progress: bool = False,
    attrs: Mapping[str, str] | None = None,
) -> xr.Dataset | None:
    """Integrate the cloud x0 ((N, d) or (B, N, d)) from step `start_step` to t_end.

    Frames are saved at steps 0, k, 2k, … (k = save_every) and at the last step; each goes to
    `sink` at once. Returns the Dataset of the frames saved by this call (None if keep=False).
    Raises NonFiniteStateError (after the sink has every earlier frame) if NaN/Inf appears.
    """
    if method not in METHODS:
        raise ConfigError(
            "method", f"unknown method {method!r}", f"use one of {', '.join(METHODS)}"
        )
    if not (dt > 0 and t_end > 0):
        raise ConfigError(
            "dt", f"dt={dt}, t_end={t_end}; both must be > 0", "give positive dt and t_end"
        )
    if save_every < 1:
        raise ConfigError("save_every", f"is {save_every}", "use an integer ≥ 1")
    n_steps = round(t_end / dt)
    if abs(n_steps * dt - t_end) > 1e-9 * max(1.0, t_end):
        raise ConfigError(
            "dt", f"t_end={t_end} is not a multiple of dt={dt}", "choose dt dividing t_end"
        )
    if not torch.isfinite(x0).all():
        raise ConfigError(
            "x0", "the initial state contains NaN or Inf", "give a finite initial cloud"
        )
    batched = x0.dim() == 3 and x0.shape[0] > 1
    x = x0 if x0.dim() == 3 else x0.unsqueeze(0)
    step_fn = METHODS[method]
    stats = dict(stats or {})
    positions = getattr(field_fn, "mask", None) == "causal"

    def velocity(y: torch.Tensor) -> torch.Tensor:
        return space.project(y, field_fn(y))

    frames: list[Frame] = []
    saved_until: float | None = None

    def save(step: int) -> None:
        nonlocal saved_until
        frame = Frame(
            step=step,
            time=step * dt,
            x=x.detach().cpu().numpy(),
            stats={name: np.atleast_1d(fn(x).detach().cpu().numpy()) for name, fn in stats.items()},
        )
        if sink is not None:
            sink.write(frame)
        if keep:
            frames.append(frame)
        saved_until = frame.time

    if start_step == 0:
        save(0)
    with progress_bar(n_steps - start_step, "simulating", "steps", progress) as advance:
        for step in range(start_step + 1, n_steps + 1):
            x = space.retract(step_fn(velocity, x, dt))
            if not torch.isfinite(x).all():
                raise NonFiniteStateError(step, step * dt, saved_until)
            if step % save_every == 0 or step == n_steps:
                save(step)
            advance(1)
    if not keep or not frames:
        return None
    meta = dict(attrs or {})
    meta.setdefault("method", method)
    meta.setdefault("dt", json.dumps(dt))
    return frames_to_dataset(frames, batched=batched, attrs=meta, positions=positions)
