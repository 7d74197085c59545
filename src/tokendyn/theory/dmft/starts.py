"""Start protocols (spec §3.5): the stored full/zoom windows and fresh starts from x_0.

Stored windows are the final states of the authors' β = 3.0 (full) and β = 1.28 (zoom) runs; slot p
holds the token at position p, slot 3 is the most recent. The clock restarts at t = 4, so the first
new token has position 0 and t = 4 … 119 999 gives 99 996 transient + 20 000 recorded steps.
A fresh start puts x_0 = row 1 of W^o (positional bits of position 0) at t = 0.
"""

from __future__ import annotations

import numpy as np

from tokendyn.errors import ConfigError
from tokendyn.theory.dmft.dynamics import WindowState
from tokendyn.theory.dmft.model import Model, positional_codes

END = 120_000  # the protocol's last step is t = END − 1
N_RECORD = 20_000
STARTS = ("zoom", "full", "x0")

STORED = {
    "full": {
        "V": [
            [0.320155328362, 0.302978524605, 0.945165753028],
            [-0.242044437688, -0.265984816826, 0.427241486378],
            [-0.687741355840, 0.059166661661, -0.136148144037],
            [0.273972793476, 0.298795512259, 0.937736878456],
        ],
        "K": [
            [-0.322031900061, 0.322978524605, 0.300155328362],
            [-0.895270740893, -0.245984816826, -0.222044437688],
            [-0.532426550142, 0.039166661661, -0.707741355840],
            [-0.364968572722, 0.278795512259, 0.293972793476],
        ],
        "A": [-0.242044437688, -0.265984816826, 0.427241486378],
    },
    "zoom": {
        "V": [
            [-0.064904138397, 0.010939800542, -0.346058908282],
            [0.260409006042, 0.055658436641, 0.056347327684],
            [0.129367259116, 0.129088735045, -0.209009557126],
            [0.259423649821, 0.069634849968, 0.107482523511],
        ],
        "K": [
            [0.292094570427, 0.030939800542, -0.084904138397],
            [0.299720115000, 0.075658436641, 0.280409006042],
            [0.427465551287, 0.109088735045, 0.109367259116],
            [0.221575976278, 0.049634849968, 0.279423649821],
        ],
        "A": [-0.064647878328, 0.011094438067, -0.345876442496],
    },
}
STORED_BETA = {"full": 3.0, "zoom": 1.28}


def stored_start(name: str, model: Model, batch: int = 1) -> WindowState:
    """The stored window `name` ('full' or 'zoom'), clock at t = 3 (next token: t = 4)."""
    if name not in STORED:
        raise ConfigError("start", f"is {name!r}", f"use one of {sorted(STORED)}")
    if (model.M, model.C) != (3, 4):
        raise ConfigError(
            "start",
            f"stored windows are for M = 3, C = 4, not M = {model.M}, C = {model.C}",
            "use x0",
        )
    w = STORED[name]
    V = np.repeat(np.asarray(w["V"])[:, :, None], batch, axis=2)
    K = np.repeat(np.asarray(w["K"])[:, :, None], batch, axis=2)
    A = np.repeat(np.asarray(w["A"])[:, None], batch, axis=1)
    return WindowState(A, V, K, t=model.C - 1, filled=model.C)


def x0_overlaps(model: Model, variant: str = "epsilon", n_se: int = 99) -> np.ndarray:
    """(m^v_0, m^q_0, m^k_0) (3, M) of x_0. 'epsilon': ε-weighted (spec §6.3, default for fresh
    runs); 'v1': plain average over all n_se + N_pe bits, as the v1 code did."""
    w = model.weights.blocks()
    P0 = positional_codes(model.C, w.n_pe)[0]
    se = np.einsum("ram,m->ra", w.se[1:] * w.fractions, w.se[0, 0])  # ⟨W^α_a x_0⟩_se
    pe = np.einsum("raj,j->ra", w.pe[1:], P0) / w.n_pe
    if variant == "epsilon":
        eps = model.params.epsilon
        return (1 - eps) * se + eps * pe
    if variant == "v1":
        return (n_se * se + w.n_pe * pe) / (n_se + w.n_pe)
    raise ConfigError("x0_variant", f"is {variant!r}", "use 'epsilon' or 'v1'")


def x0_start(model: Model, batch: int = 1, variant: str = "epsilon", n_se: int = 99) -> WindowState:
    """x_0 at t = 0 in slot 0; Â_0 = m^v_0 (attention over the single slot)."""
    mv, _, mk = x0_overlaps(model, variant, n_se)
    V = np.zeros((model.C, model.M, batch))
    K = np.zeros((model.C, model.M, batch))
    V[0], K[0] = mv[:, None], mk[:, None]
    return WindowState(V[0].copy(), V, K, t=0, filled=1)


def start_state(
    start: str, model: Model, batch: int = 1, x0_variant: str = "epsilon"
) -> WindowState:
    """'zoom', 'full' (stored windows) or 'x0' (fresh)."""
    if start == "x0":
        return x0_start(model, batch, x0_variant)
    if start not in STARTS:
        raise ConfigError("start", f"is {start!r}", f"use one of {list(STARTS)}")
    return stored_start(start, model, batch)


def protocol_steps(state: WindowState, n_record: int = N_RECORD, end: int = END) -> int:
    """Transient steps so that the recorded steps are t = end − n_record … end − 1."""
    n = end - n_record - state.t - 1
    if n < 0:
        raise ConfigError("n_record", f"is {n_record} with end {end}", "record fewer steps")
    return n
