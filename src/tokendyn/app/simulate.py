"""simulate(): integrate a velocity field and collect the saved frames as an xarray Dataset.

The engine's `integrate` loop does the numerics; this module adds what a run needs around it: the
Dataset of saved frames (dims time, [batch,] token, dim; coordinates time and step; one variable per
statistic), an optional sink that receives each frame as it is made (incremental stores), and a
progress bar.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Protocol

import numpy as np
import torch
import xarray as xr

from tokendyn.app.progress import progress_bar
from tokendyn.engine.integrate import Frame, Statistic, Velocity, integrate, n_steps_of
from tokendyn.engine.space import Space


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
    positions: bool = False,
) -> xr.Dataset | None:
    """Integrate the cloud x0 ((N, d) or (B, N, d)) from step `start_step` to t_end.

    ẋ_i = P_{x_i} Γ[μ](x_i) with a fixed-step scheme (`tokendyn.engine.integrate`). Frames are
    saved at steps 0, k, 2k, … (k = save_every) and at the last step; each goes to `sink` at once.
    Returns the Dataset of the frames saved by this call (None if keep=False), with the coordinate
    `position` s_i = i/N of each token when positions=True (causal attention). Raises
    NonFiniteStateError (after the sink has every earlier frame) if NaN/Inf appears.
    """
    frames: list[Frame] = []

    def on_save(frame: Frame) -> None:
        if sink is not None:
            sink.write(frame)
        if keep:
            frames.append(frame)

    total = n_steps_of(t_end, dt) - start_step
    with progress_bar(total, "simulating", "steps", progress) as advance:
        integrate(
            field_fn,
            space,
            x0,
            t_end=t_end,
            dt=dt,
            method=method,
            save_every=save_every,
            stats=stats,
            on_save=on_save,
            on_step=advance if progress else None,
            start_step=start_step,
        )
    if not keep or not frames:
        return None
    batched = x0.dim() == 3 and x0.shape[0] > 1
    meta = dict(attrs or {})
    meta.setdefault("method", method)
    meta.setdefault("dt", json.dumps(dt))
    return frames_to_dataset(frames, batched=batched, attrs=meta, positions=positions)
