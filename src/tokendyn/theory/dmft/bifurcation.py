"""Bifurcation diagrams of m^o against β, batched over β (spec §3.5, §4.1).

protocol='v1': every β starts from the same window (stored 'full'/'zoom', or 'x0'), runs the spec's
protocol (clock up to t = 119 999, the last n_record steps recorded); β values run side by side as
one batch, in chunks that bound memory.
protocol='continuation': β values in the given order, each starting from the previous β's final
state, n_transient pre-steps then n_record recorded; `chains` contiguous segments of the β grid run
side by side as one batch (chains=1: a single continuation).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import xarray as xr

from tokendyn.errors import ConfigError
from tokendyn.theory.dmft import analysis
from tokendyn.theory.dmft.lyapunov import REGIMES, lyapunov, regime
from tokendyn.theory.dmft.meanfield import MeanFieldMap
from tokendyn.theory.dmft.model import Model, check_beta
from tokendyn.theory.dmft.starts import N_RECORD, protocol_steps, start_state

PANELS = ((0, 1), (1, 0), (2, 0))  # Poincaré sections: (filter feature, plotted feature)
COLOUR_MAX_Y = {"full": 0.9645, "x0": 0.9645, "zoom": 0.568}  # global max |m^o| (spec §4.3)
MEMORY = 2**28  # bytes of recorded m^o held at once
CONTINUATION_PRE = 100_000


def _measure(
    model: Model, state, b: np.ndarray, n_record: int, with_lyapunov: bool
) -> tuple[np.ndarray, np.ndarray | None]:
    if with_lyapunov:
        res = lyapunov(model, state, b, n_record)
        return res.mo, res.exponents
    return MeanFieldMap(model).run(state, b, 0, n_record), None


class _Collector:
    """Per-β statistics of recorded m^o (T, M, B) blocks, assembled into one Dataset."""

    def __init__(self, n: int, M: int, keep: int, max_y: float, k: int) -> None:
        self.amplitude = np.zeros((M, n))
        self.std = np.zeros((M, n))
        self.count = np.zeros((M, n), dtype=np.int64)
        self.period = np.full(n, -1, dtype=np.int64)
        self.kept = np.zeros((keep, M, n), dtype=np.float32)
        self.lyap = np.full((n, k), np.nan)
        self.sections: dict[tuple[int, int], list[tuple[np.ndarray, np.ndarray]]] = {
            p: [] for p in PANELS
        }
        self.keep, self.max_y = keep, max_y

    def add(self, idx: np.ndarray, betas: np.ndarray, mo: np.ndarray, exps) -> None:
        self.amplitude[:, idx] = np.abs(mo).max(axis=0)
        self.std[:, idx] = mo.std(axis=0)
        self.count[:, idx] = analysis.distinct_counts(mo, self.max_y)
        self.kept[:, :, idx] = mo[-self.keep :]
        if exps is not None:
            self.lyap[idx, : exps.shape[1]] = exps
        for j, i in enumerate(idx):
            period = analysis.detect_period(mo[:, :, j])
            self.period[i] = -1 if period is None else period
            for f, s in PANELS:
                vals = analysis.poincare(mo[:, :, j], f, s)
                self.sections[(f, s)].append((np.full(vals.size, betas[j]), vals))

    def dataset(self, betas: np.ndarray, attrs: dict) -> xr.Dataset:
        M = self.amplitude.shape[0]
        ds = xr.Dataset(
            {
                "mo": (("step", "feature", "beta"), self.kept),
                "amplitude": (("feature", "beta"), self.amplitude),
                "std": (("feature", "beta"), self.std),
                "distinct": (("feature", "beta"), self.count),
                "period": ("beta", self.period),
            },
            coords={"beta": betas, "feature": np.arange(1, M + 1)},
            attrs=attrs,
        )
        if np.isfinite(self.lyap).any() or np.isneginf(self.lyap).any():
            ds["lyapunov"] = (("beta", "exponent"), self.lyap)
            ds["regime"] = ("beta", [REGIMES.index(regime(l1)) for l1 in self.lyap[:, 0]])
            ds.attrs["regimes"] = ",".join(REGIMES)
        for f, s in PANELS:
            parts = self.sections[(f, s)]
            b = np.concatenate([p[0] for p in parts]) if parts else np.zeros(0)
            v = np.concatenate([p[1] for p in parts]) if parts else np.zeros(0)
            dim = f"section_{f + 1}{s + 1}"
            ds[f"{dim}_beta"] = (dim, b)
            ds[f"{dim}_value"] = (dim, v)
        return ds


def sweep(
    model: Model,
    betas: np.ndarray,
    start: str = "zoom",
    protocol: str = "v1",
    n_record: int = N_RECORD,
    n_transient: int | None = None,
    keep: int = 2000,
    chains: int = 1,
    with_lyapunov: bool = False,
    colour_max_y: float | None = None,
    x0_variant: str = "epsilon",
    progress: Callable[[int, int], None] | None = None,
) -> xr.Dataset:
    """Diagram Dataset: kept m^o (last `keep` recorded steps, float32), amplitude/std/distinct
    counts per feature and β, period (−1: none), Poincaré sections, optionally Lyapunov spectra.

    n_transient None: the v1 protocol's (t up to 119 999), or 100 000 pre-steps per β in
    continuation. colour_max_y None: the spec's global max |m^o| for the start window."""
    b = check_beta(betas)
    if protocol not in ("v1", "continuation"):
        raise ConfigError("protocol", f"is {protocol!r}", "use 'v1' or 'continuation'")
    if n_record < 2:
        raise ConfigError("n_record", f"is {n_record}", "record at least 2 steps")
    if not 1 <= chains <= b.size:
        raise ConfigError("chains", f"is {chains}", f"use 1 ≤ chains ≤ {b.size}")
    keep = min(keep, n_record)
    max_y = COLOUR_MAX_Y.get(start, 1.0) if colour_max_y is None else colour_max_y
    k = model.M * model.C if with_lyapunov else 1
    out = _Collector(b.size, model.M, keep, max_y, k)
    if protocol == "v1":
        chunk = max(1, MEMORY // (8 * n_record * model.M * (1 + 4 * with_lyapunov)))
        for lo in range(0, b.size, chunk):
            idx = np.arange(lo, min(lo + chunk, b.size))
            state = start_state(start, model, idx.size, x0_variant)
            pre = protocol_steps(state, n_record) if n_transient is None else n_transient
            MeanFieldMap(model).run(state, b[idx], pre, 0)
            out.add(idx, b[idx], *_measure(model, state, b[idx], n_record, with_lyapunov))
            if progress:
                progress(idx[-1] + 1, b.size)
    else:
        pre = CONTINUATION_PRE if n_transient is None else n_transient
        segments = np.array_split(np.arange(b.size), chains)
        length = max(len(s) for s in segments)
        state = start_state(start, model, chains, x0_variant)
        for i in range(length):
            live = np.array([j for j, s in enumerate(segments) if i < len(s)])
            idx = np.array([segments[j][i] for j in live])
            sub = state.select(live)
            MeanFieldMap(model).run(sub, b[idx], pre, 0)
            out.add(idx, b[idx], *_measure(model, sub, b[idx], n_record, with_lyapunov))
            state.A[:, live], state.V[..., live], state.K[..., live] = sub.A, sub.V, sub.K
            state.t = sub.t
            if progress:
                progress(i + 1, length)
    attrs = {
        "start": start,
        "protocol": protocol,
        "n_record": n_record,
        "colour_max_y": max_y,
        "gamma": model.params.gamma,
        "epsilon": model.params.epsilon,
    }
    return out.dataset(b, attrs)
