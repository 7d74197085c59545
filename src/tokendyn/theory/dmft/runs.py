"""One-β runs of the spec's protocol (transient, then n_record recorded steps) for the CLI and the
report: Lyapunov summary and the recorded orbit."""

from __future__ import annotations

import math

import numpy as np

from tokendyn.theory.dmft.analysis import detect_period
from tokendyn.theory.dmft.lyapunov import lyapunov, regime
from tokendyn.theory.dmft.meanfield import MeanFieldMap
from tokendyn.theory.dmft.model import Model, check_beta, paper_model
from tokendyn.theory.dmft.starts import N_RECORD, protocol_steps, start_state


def _finite(x: float) -> float | None:
    return float(x) if math.isfinite(x) else None


def record(
    beta: float,
    start: str = "zoom",
    n_record: int = N_RECORD,
    n_transient: int | None = None,
    model: Model | None = None,
    x0_variant: str = "epsilon",
) -> np.ndarray:
    """m^o (n_record, M) of the recorded steps at one β."""
    model = model or paper_model()
    b = check_beta(beta)
    state = start_state(start, model, 1, x0_variant)
    pre = protocol_steps(state, n_record) if n_transient is None else n_transient
    return MeanFieldMap(model).run(state, b, pre, n_record)[:, :, 0]


def lyapunov_summary(
    beta: float,
    start: str = "zoom",
    n_record: int = N_RECORD,
    n_transient: int | None = None,
    model: Model | None = None,
    x0_variant: str = "epsilon",
) -> dict:
    """{'beta', 'lyapunov' (largest first; −∞ as None), 'regime', 'amplitude' (max |m^o_1|),
    'period' (int or None)} over the recorded steps."""
    model = model or paper_model()
    b = check_beta(beta)
    state = start_state(start, model, 1, x0_variant)
    pre = protocol_steps(state, n_record) if n_transient is None else n_transient
    MeanFieldMap(model).run(state, b, pre, 0)
    res = lyapunov(model, state, b, n_record)
    exps = res.exponents[0]
    mo = res.mo[:, :, 0]
    return {
        "beta": float(b[0]),
        "lyapunov": [_finite(x) for x in exps],
        "regime": regime(float(exps[0])),
        "amplitude": float(np.abs(mo[:, 0]).max()),
        "period": detect_period(mo),
    }
