"""ICL models: the von Oswald construction, broadcast-head invariances, fast path = token stream."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tokendyn.errors import ConfigError
from tokendyn.theory.icl import get_setting, make_prior
from tokendyn.theory.icl.baselines import gd_steps
from tokendyn.theory.icl.models import ConstrainedICL, LSAFull, build_model, von_oswald_gd_layer
from tokendyn.theory.icl.tasks import sample_tasks, tokens

F64 = torch.float64
TOL = 1e-12  # float64 sums of ≤ 64 terms of size O(1): rounding ~1e-15, leave margin


@pytest.fixture
def batch():
    prior = make_prior(get_setting("cpu"), "tree")
    return sample_tasks(prior, 32, 0.1, 6, np.random.default_rng(0))


@torch.no_grad()
def test_von_oswald_construction_is_one_gd_step(batch):
    d, eta = 8, 0.7
    w0 = np.random.default_rng(1).standard_normal(d) / 3
    tb = batch.torch(dtype=F64)
    layer = von_oswald_gd_layer(d, eta, torch.tensor(w0, dtype=F64))
    z = layer(tokens(tb.X, tb.y, tb.xq))
    dW = gd_steps(batch, 1, eta, w0) - w0  # ΔW = −η ∇L(w₀), independent numpy implementation
    y_all = np.concatenate([batch.y, np.zeros((6, 1))], axis=1)
    x_all = np.concatenate([batch.X, batch.xq[:, None]], axis=1)
    expect = y_all - np.einsum("bnd,bd->bn", x_all, dW)
    assert np.abs(z[..., d].numpy() - expect).max() < TOL
    assert torch.equal(z[..., :d], tokens(tb.X, tb.y, tb.xq)[..., :d])  # x-slots untouched
    # from w₀ = 0 the one-layer lsa-full prediction −y_q' is x_q·w₁ of GD (η = 1: ŵ = s)
    model = LSAFull(d, 1).to(F64)
    model.attn[0] = von_oswald_gd_layer(d, 1.0, torch.zeros(d, dtype=F64))
    pred = model(tb.X, tb.y, tb.xq).numpy()
    assert np.abs(pred - np.einsum("bd,bd->b", batch.xq, batch.s)).max() < TOL


@pytest.mark.parametrize(
    "variant,kind", [("lin", "F2"), ("lin+ffout", "F2"), ("ff", "F2"), ("ff", "F1")]
)
@torch.no_grad()
def test_broadcast_head_identical_and_permutation_invariant(batch, variant, kind):
    torch.manual_seed(0)
    model = ConstrainedICL(8, 3, H=2, variant=variant, ff_kind=kind, init_std=0.5).to(F64)
    tb = batch.torch(dtype=F64)
    h = model.stream(tb.X, tb.y, tb.xq)
    p = h[..., model.layout.p(3)]
    assert torch.equal(p, p[:, :1].expand_as(p))  # the same workspace in every token
    perm = torch.randperm(32)
    h2 = model.stream(tb.X[:, perm], tb.y[:, perm], tb.xq)
    assert (h2[..., model.layout.p(3)] - p).abs().max() < TOL
    assert (h2[:, -1, model.layout.o] - h[:, -1, model.layout.o]).abs().max() < TOL
    # the query is masked as a source: moving x_q leaves the workspace unchanged
    h3 = model.stream(tb.X, tb.y, tb.xq + 1.0)
    assert (h3[:, -1, model.layout.p(3)] - p[:, -1]).abs().max() < TOL
    # the vectorised path (p = (k_x + Gᵀk_e)·s) equals the faithful token stream
    assert (model(tb.X, tb.y, tb.xq) - h[:, -1, model.layout.o]).abs().max() < TOL


def test_build_model_names_and_errors(batch):
    tb = batch.torch()
    for name in ("lin", "lin+ffout", "ff", "lsa-full", "lsa-full+ff"):
        assert build_model(name, 8, 2)(tb.X, tb.y, tb.xq).shape == (6,)
    with pytest.raises(ConfigError, match="model"):
        build_model("gpt2", 8, 2)
    with pytest.raises(ConfigError, match="depth"):
        build_model("ff", 8, 0)
