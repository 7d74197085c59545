"""Bifurcation sweeps: batched over β = single runs, continuation chains, the Dataset, figures."""

import numpy as np
import pytest

from tokendyn.errors import ConfigError
from tokendyn.theory.dmft.bifurcation import sweep
from tokendyn.theory.dmft.meanfield import MeanFieldMap
from tokendyn.theory.dmft.model import paper_model
from tokendyn.theory.dmft.starts import start_state
from tokendyn.viz import dmft as figures


def test_v1_sweep_equals_single_runs():
    model = paper_model()
    betas = np.array([0.5, 1.255, 1.27, 3.0])
    ds = sweep(model, betas, "full", n_record=300, n_transient=2000, keep=300)
    for i, b in enumerate(betas):
        mo = MeanFieldMap(model).run(start_state("full", model), b, 2000, 300)[:, :, 0]
        np.testing.assert_array_equal(ds["mo"].values[:, :, i], mo.astype(np.float32))
        np.testing.assert_array_equal(ds["amplitude"].values[:, i], np.abs(mo).max(axis=0))
    assert ds["period"].values[0] == 4 and ds["period"].values[-1] == 24


def test_continuation_chains_follow_their_neighbours():
    """chains=2 over 4 β: each chain continues from its previous β's final state."""
    model = paper_model()
    betas = np.array([1.0, 1.1, 2.9, 3.0])
    ds = sweep(
        model, betas, "full", "continuation", n_record=50, n_transient=100, keep=50, chains=2
    )
    state = start_state("full", model)
    mf = MeanFieldMap(model)
    mf.run(state, 2.9, 100, 50)
    expect = mf.run(state, 3.0, 100, 50)[:, :, 0]
    np.testing.assert_array_equal(ds["mo"].values[:, :, 3], expect.astype(np.float32))


def test_sweep_with_lyapunov_and_figure(tmp_path):
    model = paper_model()
    ds = sweep(model, [1.27, 3.0], "full", n_record=500, n_transient=500, with_lyapunov=True)
    assert ds["lyapunov"].shape == (2, 12)
    assert ds["regime"].values[1] == 0  # periodic
    assert ds["section_21_beta"].size == ds["section_21_value"].size
    figures.plot_bifurcation(ds, 0, "lyapunov", tmp_path / "b.png")
    figures.plot_bifurcation(ds, 2, "paper", tmp_path / "c.png")
    assert (tmp_path / "b.png").stat().st_size > 0


def test_sweep_input_errors():
    model = paper_model()
    with pytest.raises(ConfigError, match="protocol"):
        sweep(model, [1.0], protocol="forward")
    with pytest.raises(ConfigError, match="chains"):
        sweep(model, [1.0, 2.0], protocol="continuation", chains=3)
    with pytest.raises(ConfigError, match="beta"):
        sweep(model, [-1.0])
