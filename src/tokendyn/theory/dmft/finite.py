"""Finite-N_se networks against the mean-field map (spec §5.2).

finite_stats: at one β, the std and amplitude of m^o_1 over the recorded steps (mean over trials)
and the fraction of trials staying on the mean-field attractor, for several N_se.
deviation: RMS over trials and steps of m^o(finite) − m^o(map) along the same start, whose
N_se^{-1/2} scaling is the O(N^{-1/2}) fluctuation correction of spec §3.1.
"""

from __future__ import annotations

import numpy as np

from tokendyn.theory.dmft import analysis
from tokendyn.theory.dmft.meanfield import MeanFieldMap
from tokendyn.theory.dmft.model import Model, Params, block_weights
from tokendyn.theory.dmft.sampler import FiniteSampler
from tokendyn.theory.dmft.starts import N_RECORD, protocol_steps, start_state


def paper_finite_model(n_se: int, params: Params | None = None) -> Model:
    """Seed-1 weights with n_se semantic spins in three (near-)equal blocks."""
    return Model(block_weights(n_se), params or Params())


def finite_stats(
    beta: float,
    n_se: list[int],
    trials: int = 8,
    start: str = "zoom",
    n_record: int = N_RECORD,
    n_transient: int | None = None,
    seed: int = 0,
    tol: float = 0.05,
    params: Params | None = None,
    method: str = "binomial",
) -> dict:
    """Mean-field reference and, per N_se, std / amplitude of m^o_1 (mean over trials) and the
    fraction of trials whose 95% distance quantile to the mean-field cloud is ≤ tol."""
    samplers = [
        FiniteSampler(paper_finite_model(n, params), method, seed + i) for i, n in enumerate(n_se)
    ]  # built first: bad inputs fail before any long run
    mf_model = paper_finite_model(3, params)
    state = start_state(start, mf_model)
    pre = protocol_steps(state, n_record) if n_transient is None else n_transient
    ref = MeanFieldMap(mf_model).run(state, beta, pre, n_record)[:, :, 0]
    mf = analysis.series_stats(ref)
    rows = []
    for n, sampler in zip(n_se, samplers, strict=True):
        s = start_state(start, mf_model)
        mo = sampler.run(s, beta, pre, n_record, trials)[..., 0]  # (T, M, trials)
        st = analysis.series_stats(mo)
        rows.append(
            {
                "n_se": int(n),
                "std": float(st["std"].mean()),
                "amplitude": float(st["amplitude"].mean()),
                "stayed_fraction": analysis.stayed_fraction(ref, mo, tol),
            }
        )
    return {
        "beta": float(beta),
        "mf_std": float(mf["std"]),
        "mf_amplitude": float(mf["amplitude"]),
        "finite": rows,
    }


def deviation(
    beta: float,
    n_se: list[int],
    trials: int = 16,
    start: str = "full",
    n_transient: int = 200,
    n_steps: int = 200,
    seed: int = 0,
    method: str = "binomial",
) -> np.ndarray:
    """RMS of m^o(finite) − m^o(map) over trials and n_steps steps after n_transient mean-field
    steps from `start`, one value per N_se."""
    mf_model = paper_finite_model(3)
    state = start_state(start, mf_model)
    mf = MeanFieldMap(mf_model)
    mf.run(state, beta, n_transient, 0)
    ref = mf.run(state.copy(), beta, 0, n_steps)[:, :, 0]
    out = []
    for i, n in enumerate(n_se):
        mo = FiniteSampler(paper_finite_model(n), method, seed + i).run(
            state.copy(), beta, 0, n_steps, trials
        )
        out.append(np.sqrt(np.mean((mo[..., 0] - ref[:, :, None]) ** 2)))
    return np.array(out)
