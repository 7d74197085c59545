"""The one run pipeline of `tokendyn simulate` and `tokendyn sweep`.

config(s) → field, space and initial clouds (`app.build`) → statistics bound to that field →
simulate (`app.simulate`). A single config gives its own batch of `cfg.batch` clouds; a sweep's
batch gives several configs that differ only in β and the seed, run as one tensor computation of
B clouds whose field is built with one β per cloud.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import xarray as xr

from tokendyn.app.build import build
from tokendyn.app.config import SimulationConfig
from tokendyn.app.simulate import simulate
from tokendyn.engine.attention import AttentionField
from tokendyn.engine.integrate import Statistic, Velocity
from tokendyn.engine.observables import (
    LogEnergy,
    cluster_count,
    effective_dimension,
    log_interaction_energy,
)
from tokendyn.engine.space import Space


def statistics(cfg: SimulationConfig, field: AttentionField) -> dict[str, Statistic]:
    """The configured statistics, each x (B, N, d) → (B,), bound to the run:

    - energy: log E of `field` itself — E = Σ_h (1/(2β_h N²)) Σ_ij exp(β_h⟨Q_h x_i, K_h x_j⟩) with
      the field's heads, β (one per cloud in a batched sweep) and kernel backend (LogEnergy); a
      whole block (norms, MLP, layer schedules: no single set of heads) stores the interaction
      energy log E_β with Q = K = I at cfg.beta (log_interaction_energy);
    - clusters: components at distance cfg.cluster_threshold (cluster_count);
    - effective_dim: the participation ratio of the covariance (effective_dimension).
    """
    bound: dict[str, Statistic] = {
        "energy": (
            LogEnergy(field)
            if isinstance(field, AttentionField)
            else functools.partial(log_interaction_energy, beta=cfg.beta, backend=cfg.backend)
        ),
        "clusters": functools.partial(cluster_count, threshold=cfg.cluster_threshold),
        "effective_dim": effective_dimension,
    }
    return {name: bound[name] for name in cfg.stats}


@dataclass(frozen=True)
class RunSystem:
    """What one simulation integrates: the field, the space, the initial clouds x0 (B, N, d) on the
    run's device and dtype, and the statistics bound to the field. `cfg` (the first config) gives
    the time axis, the scheme and the statistics' names."""

    cfg: SimulationConfig
    field: AttentionField
    space: Space
    x0: torch.Tensor
    stats: dict[str, Statistic]


def build_run(configs: SimulationConfig | Sequence[SimulationConfig]) -> RunSystem:
    """The system of one config, or of a sweep's batch of configs.

    Several configs must share every field but β and the seed (`Sweep.groups` ensures it): cloud b
    is config b's initial cloud (drawn from its own seed) and runs at config b's β — the field is
    built with the (B,) tensor of β from the start."""
    cfgs = [configs] if isinstance(configs, SimulationConfig) else list(configs)
    first = cfgs[0]
    beta = None if len(cfgs) == 1 else torch.tensor([c.beta for c in cfgs], dtype=torch.float64)
    field, space, x0 = build(first, beta)
    if len(cfgs) > 1:
        x0 = torch.cat([x0, *(build(c)[2] for c in cfgs[1:])])
    return RunSystem(first, field, space, x0, statistics(first, field))


def simulate_run(
    system: RunSystem,
    *,
    velocity: Velocity | None = None,
    x_start: torch.Tensor | None = None,
    with_stats: bool = True,
    **options: Any,
) -> xr.Dataset | None:
    """Integrate `system` with its config's t_end, dt, method and save_every (`app.simulate`).

    velocity: a wrapper of system.field (e.g. sharded over processes); x_start: the state to start
    from (default x0, as one (N, d) cloud when B = 1 so the Dataset has no batch dimension);
    with_stats=False saves no statistics (processes that do not write); options go to simulate
    (sink, start_step, keep, progress, attrs)."""
    cfg = system.cfg
    if x_start is None:
        x_start = system.x0 if system.x0.shape[0] > 1 else system.x0[0]
    return simulate(
        system.field if velocity is None else velocity,
        system.space,
        x_start,
        t_end=cfg.t_end,
        dt=cfg.dt,
        method=cfg.method,
        save_every=cfg.save_every,
        stats=system.stats if with_stats else {},
        **options,
    )
