"""Whole-block runs (norms, MLP, positions, grouped-query heads) store their statistics.

The stored energy of a block run is log E_β with Q = K = I at the config's β,
E_β = (1/(2βN²)) Σ_ij exp(β⟨x_i, x_j⟩), checked against a float64 numpy evaluation of the stored
frames (every block run used to stop with AttributeError: 'Block' object has no attribute 'heads').
"""

from __future__ import annotations

import numpy as np
import pytest

from tokendyn.app.config import make_config
from tokendyn.app.run import run_simulation


@pytest.mark.parametrize(
    "fields",
    [{"norm": "pre-ln"}, {"mlp": "gelu"}, {"positions": "rope"}, {"kv_heads": 1}],
    ids=["pre-ln", "mlp", "rope", "kv_heads"],
)
def test_block_runs_store_the_interaction_energy(fields):
    cfg = make_config(n=5, d=2, t_end=0.3, dt=0.1, beta=1.7, **fields)
    ds = run_simulation(cfg)
    x = ds["x"].values  # (time, N, d)
    gram = np.einsum("tid,tjd->tij", x, x)
    expected = np.log(np.exp(cfg.beta * gram).sum(axis=(1, 2)) / (2 * cfg.beta * cfg.n**2))
    np.testing.assert_allclose(ds["energy"].values, expected, rtol=1e-12, atol=1e-12)
    assert (
        np.isfinite(ds["clusters"].values).all() and np.isfinite(ds["effective_dim"].values).all()
    )
