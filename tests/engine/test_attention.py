"""Attention fields: formulas against independent dense implementations, invariances, masks."""

import math
import warnings

import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from tests.conftest import random_qkv
from tokendyn.engine.attention import (
    Head,
    L2Attention,
    SigmoidAttention,
    SinkhornAttention,
    SoftmaxAttention,
    split_heads,
)
from tokendyn.errors import ConfigError

F64 = torch.float64
VARIANTS = [SoftmaxAttention, L2Attention, SigmoidAttention, SinkhornAttention]


def _cloud(n, d, seed=0, b=2):
    return torch.randn(b, n, d, generator=torch.Generator().manual_seed(seed), dtype=F64)


def test_softmax_matches_explicit_formula(gen, backend):
    Q, K, V = random_qkv(3, gen)
    x = _cloud(40, 3)
    beta = 1.7
    scores = beta * (x @ Q.T) @ (x @ K.T).transpose(1, 2)
    want = torch.softmax(scores, -1) @ (x @ V.T)
    got = SoftmaxAttention([Head(Q, K, V, beta)], backend=backend)(x)
    assert (got - want).abs().max() < 1e-12
    usa = SoftmaxAttention([Head(Q, K, V, beta)], normalise="n", backend=backend)(x)
    want_usa = torch.exp(scores) @ (x @ V.T) / 40
    assert ((usa - want_usa).abs() / want_usa.abs().clamp(min=1)).max() < 1e-12


def test_l2_matches_explicit_formula(gen, backend):
    Q, K, V = random_qkv(3, gen)
    x = _cloud(40, 3)
    beta = 0.8
    dist2 = ((x @ Q.T)[:, :, None, :] - (x @ K.T)[:, None, :, :]).pow(2).sum(-1)
    w = torch.exp(-beta * dist2)
    want = (w / w.sum(-1, keepdim=True)) @ (x @ V.T)
    assert (L2Attention([Head(Q, K, V, beta)], backend=backend)(x) - want).abs().max() < 1e-12
    want_n = w @ (x @ V.T) / 40
    got_n = L2Attention([Head(Q, K, V, beta)], normalise="n", backend=backend)(x)
    assert (got_n - want_n).abs().max() < 1e-12


def test_sigmoid_forms_match_explicit_formulas(gen, backend):
    Q, K, V = random_qkv(3, gen)
    x = _cloud(40, 3)
    logits = 1.3 * (x @ Q.T) @ (x @ K.T).transpose(1, 2)
    meanfield = SigmoidAttention([Head(Q, K, V, 1.3)], bias=0.4, backend=backend)(x)
    assert (meanfield - torch.sigmoid(logits + 0.4) @ (x @ V.T) / 40).abs().max() < 1e-13
    practical = SigmoidAttention([Head(Q, K, V, 1.3)], form="practical", backend=backend)(x)
    assert (practical - torch.sigmoid(logits - math.log(40)) @ (x @ V.T)).abs().max() < 1e-13


def test_multihead_is_sum_of_block_heads(gen, backend):
    d, H = 4, 2
    Q, K, V = random_qkv(d, gen)
    x = _cloud(30, d)
    got = SoftmaxAttention(split_heads(Q, K, V, H, 0.9), backend=backend)(x)
    want = torch.zeros_like(x)
    for h in range(H):
        rows = slice(2 * h, 2 * h + 2)
        scores = 0.9 * (x @ Q[rows].T) @ (x @ K[rows].T).transpose(1, 2)
        C = torch.zeros(d, d, dtype=F64)
        C[rows] = V[rows]
        want += torch.softmax(scores, -1) @ (x @ C.T)
    assert (got - want).abs().max() < 1e-12


def test_empty_head_is_uniform_attention():
    """Q with fewer rows than d (the 'plane' experiment): head 2 gets A_2 = 0, i.e. the mean."""
    q = torch.tensor([[0.4, 0.9]], dtype=F64)
    x = _cloud(25, 2)
    field = SoftmaxAttention(split_heads(q, -q, torch.eye(2, dtype=F64), 2, 1.0), backend="dense")
    v = field(x)
    assert (v[..., 1] - x[..., 1].mean(1, keepdim=True)).abs().max() < 1e-14


@pytest.mark.parametrize("cls", VARIANTS)
@settings(max_examples=10, deadline=None)
@given(seed=st.integers(0, 10_000), n=st.integers(2, 40))
def test_permutation_equivariance(cls, seed, n):
    g = torch.Generator().manual_seed(seed)
    Q, K, V = random_qkv(3, g)
    x = torch.randn(1, n, 3, generator=g, dtype=F64)
    perm = torch.randperm(n, generator=g)
    # Sinkhorn is solved to tol; a tight tol keeps its permutation error at round-off level. A
    # solve that hits max_iter (it warns) depends on its warm start, so such draws are discarded.
    extra = {"tol": 1e-13, "max_iter": 20_000} if cls is SinkhornAttention else {}
    field = cls([Head(Q, K, V, 1.1)], backend="tiled", **extra)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        try:
            permuted, direct = field(x[:, perm]), field(x)[:, perm]
        except RuntimeWarning:
            assume(False)
    assert (permuted - direct).abs().max() < 1e-11


@pytest.mark.parametrize("cls", VARIANTS)
def test_rotation_equivariance_identity_weights(cls, gen):
    d = 4
    Id = torch.eye(d, dtype=F64)
    R, _ = torch.linalg.qr(torch.randn(d, d, generator=gen, dtype=F64))
    x = _cloud(50, d)
    field = cls([Head(Id, Id, Id, 1.4)], backend="tiled")
    assert (field(x @ R.T) - field(x) @ R.T).abs().max() < 1e-10


@pytest.mark.parametrize("cls", [SoftmaxAttention, L2Attention, SigmoidAttention])
def test_causal_token_never_depends_on_later_tokens(cls, gen):
    Q, K, V = random_qkv(3, gen)
    x = _cloud(60, 3)
    field = cls([Head(Q, K, V, 1.0)], mask="causal", backend="tiled")
    base = field(x)
    for i in (0, 17, 42):
        y = x.clone()
        y[:, i + 1 :] += torch.randn_like(y[:, i + 1 :])
        moved = field(y)
        assert torch.equal(moved[:, : i + 1], base[:, : i + 1])
        assert (moved[:, i + 1 :] - base[:, i + 1 :]).abs().max() > 1e-3


def test_causal_equals_explicit_bool_mask(gen):
    Q, K, V = random_qkv(3, gen)
    x = _cloud(50, 3)
    tril = torch.ones(50, 50, dtype=torch.bool).tril()
    a = SoftmaxAttention([Head(Q, K, V, 1.0)], mask="causal", backend="tiled")(x)
    b = SoftmaxAttention([Head(Q, K, V, 1.0)], mask=tril, backend="dense")(x)
    assert (a - b).abs().max() < 1e-12


def test_sinkhorn_plan_is_doubly_stochastic(gen):
    Q, K, V = random_qkv(3, gen)
    x = _cloud(80, 3)
    field = SinkhornAttention([Head(Q, K, V, 2.0)], tol=1e-10, backend="tiled")
    P = field.plan(x)
    n = x.shape[1]
    assert (n * P.sum(2) - 1).abs().max() < 1e-13  # rows: exact after the last f-update
    assert (n * P.sum(1) - 1).abs().max() < 1e-10  # columns: within the stopping tolerance
    # The velocity is n·P V x (row-normalised with the converged potentials).
    assert (field(x) - n * P @ (x @ V.T)).abs().max() < 1e-9


def test_sinkhorn_matches_pot(gen):
    """Independent implementation: POT's log-domain Sinkhorn, cost −⟨Qx, Ky⟩, reg ε = 1/β."""
    ot = pytest.importorskip("ot")
    Q, K, V = random_qkv(2, gen)
    x = _cloud(60, 2, b=1)
    beta = 1.5
    cost = -(x[0] @ Q.T) @ (x[0] @ K.T).T
    a = torch.full((60,), 1 / 60, dtype=F64)
    P_pot = ot.sinkhorn(
        a.numpy(),
        a.numpy(),
        cost.numpy(),
        1 / beta,
        method="sinkhorn_log",
        stopThr=1e-13,
        numItermax=10_000,
    )
    P = SinkhornAttention([Head(Q, K, V, beta)], tol=1e-12, backend="dense").plan(x)[0]
    assert abs(P.numpy() - P_pot).max() < 1e-10


def test_sinkhorn_mean_moves_linearly(gen):
    """Columns summing to 1/n give (1/n)Σ ẋ_i = V·mean exactly (up to the Sinkhorn tolerance)."""
    Q, K, V = random_qkv(3, gen)
    x = _cloud(70, 3) + 1.0
    v = SinkhornAttention([Head(Q, K, V, 1.0)], tol=1e-12, backend="tiled")(x)
    assert (v.mean(1) - x.mean(1) @ V.T).abs().max() < 1e-10


def test_sinkhorn_warns_when_not_converged(gen):
    Q, K, V = random_qkv(3, gen)
    field = SinkhornAttention([Head(Q, K, V, 5.0)], tol=1e-14, max_iter=2, backend="dense")
    with pytest.warns(RuntimeWarning, match="Sinkhorn did not reach"):
        field(_cloud(30, 3))


def test_zero_query_is_uniform_attention(gen):
    _, K, V = random_qkv(3, gen)
    x = _cloud(30, 3)
    v = SoftmaxAttention([Head(torch.zeros(3, 3, dtype=F64), K, V, 2.0)], backend="tiled")(x)
    assert (v - (x.mean(1, keepdim=True) @ V.T)).abs().max() < 1e-14


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"Q": torch.zeros(3, 2)}, "Q"),
        ({"K": torch.zeros(2, 3)}, "K"),
        ({"V": torch.zeros(3, 2)}, "V"),
        ({"beta": 0.0}, "beta"),
        ({"beta": -1.0}, "beta"),
        ({"beta": float("nan")}, "beta"),
    ],
)
def test_bad_head_is_a_clear_error(kwargs, field):
    I3 = torch.eye(3, dtype=F64)
    head = {"Q": I3, "K": I3, "V": I3, "beta": 1.0, **kwargs}
    with pytest.raises(ConfigError, match=f"^{field}:.*Fix:"):
        SoftmaxAttention([Head(**head)])


def test_heads_must_divide_d():
    I3 = torch.eye(3, dtype=F64)
    with pytest.raises(ConfigError, match="^heads:"):
        split_heads(I3, I3, I3, 2, 1.0)


def test_mask_hiding_a_whole_row_is_rejected():
    mask = torch.ones(5, 5, dtype=torch.bool)
    mask[2] = False
    I3 = torch.eye(3, dtype=F64)
    with pytest.raises(ConfigError, match="^mask: row 2"):
        SoftmaxAttention([Head(I3, I3, I3, 1.0)], mask=mask)


def test_wrong_state_dimension_is_a_clear_error():
    I3 = torch.eye(3, dtype=F64)
    with pytest.raises(ValueError, match="^x: tokens have dimension 4"):
        SoftmaxAttention([Head(I3, I3, I3, 1.0)])(torch.zeros(5, 4, dtype=F64))


@pytest.mark.parametrize("cls", VARIANTS)
def test_per_cloud_beta_equals_separate_runs(cls, gen):
    """A (B,) tensor of β runs B clouds at once exactly as B separate fields would."""
    Q, K, V = random_qkv(3, gen)
    x = _cloud(30, 3, b=3)
    betas = torch.tensor([0.5, 1.0, 3.0], dtype=F64)
    extra = {"tol": 1e-13} if cls is SinkhornAttention else {}
    batched = cls([Head(Q, K, V, betas)], backend="tiled", **extra)(x)
    for b in range(3):
        alone = cls([Head(Q, K, V, float(betas[b]))], backend="tiled", **extra)(x[b : b + 1])
        assert (batched[b] - alone[0]).abs().max() < 1e-11


def test_per_cloud_beta_must_match_the_batch(gen):
    Q, K, V = random_qkv(3, gen)
    field = SoftmaxAttention([Head(Q, K, V, torch.tensor([1.0, 2.0], dtype=F64))])
    with pytest.raises(ConfigError, match="^beta: has 2 values for 3 clouds"):
        field(_cloud(10, 3, b=3))
    with pytest.raises(ConfigError, match="^beta:"):
        SoftmaxAttention([Head(Q, K, V, torch.tensor([1.0, -2.0], dtype=F64))])


@pytest.mark.parametrize("cls", VARIANTS)
def test_subset_of_query_rows_equals_slice_of_full_field(cls, gen):
    Q, K, V = random_qkv(3, gen)
    x = _cloud(50, 3)
    extra = {"tol": 1e-13} if cls is SinkhornAttention else {}
    field = cls([Head(Q, K, V, 1.2)], backend="tiled", **extra)
    full = field(x)
    for rows in (slice(0, 17), slice(17, 50), slice(49, 50)):
        assert (field(x, rows=rows) - full[:, rows]).abs().max() < 1e-12


def test_causal_mask_is_not_split_by_rows(gen):
    Q, K, V = random_qkv(3, gen)
    field = SoftmaxAttention([Head(Q, K, V, 1.0)], mask="causal")
    with pytest.raises(ConfigError, match="^mask: causal attention is not evaluated on a subset"):
        field(_cloud(10, 3), rows=slice(0, 5))
