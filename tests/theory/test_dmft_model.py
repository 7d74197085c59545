"""DMFT model: the seed-1 weight table, positional codes, start windows, input validation."""

import numpy as np
import pytest

from tokendyn.errors import ConfigError, TokendynError
from tokendyn.theory.dmft.dynamics import Core
from tokendyn.theory.dmft.model import (
    SEED1_BLOCKS,
    SEED1_PE,
    Model,
    Params,
    Weights,
    block_weights,
    check_beta,
    paper_model,
    positional_codes,
    seed1_weights,
)
from tokendyn.theory.dmft.starts import STORED, start_state, x0_overlaps

T = 1 / 3
# spec §2.3: semantic correlations C^{oα}_{ab} = ⟨W^o_a W^α_b⟩ and fourth-order Q^{oα}_b
C_SPEC = {
    1: [[T, T, 1], [1, -T, T], [-T, -T, T]],
    2: [[-1, -T, -T], [-T, T, -1], [-T, -1, T]],
    3: [[-T, T, T], [T, -T, 1], [-1, -T, -T]],
    0: [[1, T, T], [T, 1, -T], [T, -T, 1]],
}
Q_SPEC = {0: [-T, T, T], 1: [T, -1, -T], 2: [T, -T, -T], 3: [-T, -1, T]}


@pytest.mark.parametrize("role", range(4))
def test_seed1_correlations_match_spec(role):
    W = seed1_weights(99).se
    C = W[0] @ W[role].T / 99
    np.testing.assert_allclose(C, C_SPEC[role], atol=1e-15)
    Q = (W[0, 0] * W[0, 1] * W[0, 2] * W[role]).mean(axis=1)
    np.testing.assert_allclose(Q, Q_SPEC[role], atol=1e-15)


def test_positional_codes_msb_first():
    np.testing.assert_array_equal(positional_codes(4, 2), [[-1, -1], [-1, 1], [1, -1], [1, 1]])
    assert positional_codes(8, 3)[5].tolist() == [1, -1, 1]


def test_blocks_compress_exactly():
    w = seed1_weights(99).blocks()
    assert w.counts.tolist() == [33, 33, 33]
    assert w.n_se == 99
    np.testing.assert_array_equal(np.sort(w.se[0, 0]), [-1, 1, 1])
    assert block_weights(10).counts.tolist() == [4, 3, 3]


def test_x0_overlaps_v1_quirk_match_spec():
    mv, mq, mk = x0_overlaps(paper_model(), "v1", n_se=99)
    np.testing.assert_allclose(mv, np.array([35, 33, 99]) / 101, atol=1e-15)
    np.testing.assert_allclose(mq, [-0.9802, -0.3465, -0.3069], atol=5e-5)
    np.testing.assert_allclose(mk, [-0.3069, 0.3465, 0.3267], atol=5e-5)


@pytest.mark.parametrize("name", ["full", "zoom"])
def test_stored_windows_are_model_states(name):
    """Each stored slot's m^v and m^k come from one block vector μ and the slot's PE code:
    solve μ from m^v, predict m^k to the stored 12 decimals."""
    model = paper_model()
    core = Core(model)
    M = 3
    for p in range(4):
        mv = np.asarray(STORED[name]["V"][p]) - core.offset[p, M : 2 * M]
        mu = np.linalg.solve(core.G[:, M : 2 * M].T, mv)
        mk = core.G[:, 3 * M :].T @ mu + core.offset[p, 3 * M :]
        np.testing.assert_allclose(mk, STORED[name]["K"][p], atol=2e-12)
        assert np.all(np.abs(mu) < 1)
    assert start_state(name, model).t == 3  # the next token is t = 4, position 0


def test_bad_weights_name_the_field():
    bad = SEED1_BLOCKS.copy()
    bad[0, 0, 0] = 0.5
    with pytest.raises(ConfigError, match=r"weights.se: has entries other than ±1.*Fix"):
        Weights(bad, SEED1_PE)
    with pytest.raises(ConfigError, match="weights.se: has shape"):
        Weights(SEED1_BLOCKS[:3], SEED1_PE)
    with pytest.raises(ConfigError, match="weights.pe: has shape"):
        Weights(SEED1_BLOCKS, SEED1_PE[:, :2])
    with pytest.raises(ConfigError, match="weights.counts"):
        Weights(SEED1_BLOCKS, SEED1_PE, np.array([1, 0, 2]))
    with pytest.raises(ConfigError, match="n_se"):
        seed1_weights(100)


def test_bad_context_and_parameters():
    with pytest.raises(ConfigError, match="C: is 3, not a power of two"):
        Model(seed1_weights(), Params(C=3))
    with pytest.raises(ConfigError, match="weights.pe: has N_pe = 2"):
        Model(seed1_weights(), Params(C=8))
    with pytest.raises(ConfigError, match="epsilon"):
        Params(epsilon=1.5)
    with pytest.raises(ConfigError, match="gamma"):
        Params(gamma=-1.0)
    with pytest.raises(ConfigError, match=r"beta: contains -0.5. Fix: use β ≥ 0"):
        check_beta([1.0, -0.5])
    with pytest.raises(TokendynError, match="beta"):
        check_beta(float("nan"))
    with pytest.raises(ConfigError, match="start"):
        start_state("middle", paper_model())
    with pytest.raises(ConfigError, match="form"):
        Core(paper_model(), "dense")
