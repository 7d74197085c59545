"""Per-layer metrics of a trace against direct numpy computations and exact values on constructed
clouds; TwoNN on clouds of known dimension; padding ignored; the nulls; the figures."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import xarray as xr

from tokendyn.errors import ConfigError
from tokendyn.models.metrics import (
    SCALAR_METRICS,
    MetricOptions,
    attention_metrics,
    cosine_clusters,
    intrinsic_dimension,
    knn_indices,
    knn_overlap,
    layer_metrics,
    mean_cosine,
    metrics_json,
    moment_metrics,
    shuffle_rows_in_support,
)

pytest.importorskip("skdim")


def cloud(n=300, d=12, seed=0, offset=0.7):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, d)) @ rng.normal(size=(d, d)) + offset


def test_mean_cosine_against_all_pairs():
    x = cloud()
    u = x / np.linalg.norm(x, axis=1, keepdims=True)
    g = u @ u.T
    expected = (g.sum() - np.trace(g)) / (len(x) * (len(x) - 1))
    assert mean_cosine(torch.from_numpy(x)) == pytest.approx(expected, rel=0, abs=1e-13)


def test_moment_metrics_against_svd_and_eigenvalues():
    x = cloud()
    s = np.linalg.svd(x, compute_uv=False)
    centred = x - x.mean(0)
    lam = np.linalg.eigvalsh(centred.T @ centred / len(x))
    got = moment_metrics(torch.from_numpy(x))
    assert got["stable_rank"] == pytest.approx((s**2).sum() / s[0] ** 2, rel=1e-12)
    residual = np.linalg.norm(centred) / np.linalg.norm(x)
    assert got["collapse_residual"] == pytest.approx(residual, rel=1e-12)
    assert got["participation_ratio"] == pytest.approx(lam.sum() ** 2 / (lam**2).sum(), rel=1e-12)


def test_participation_ratio_and_clusters_agree_with_the_engine():
    from tokendyn.engine.observables import cluster_count, effective_dimension

    x = torch.from_numpy(cloud())
    pr = moment_metrics(x)["participation_ratio"]
    assert pr == pytest.approx(float(effective_dimension(x)), rel=1e-12)
    rng = np.random.default_rng(8)
    centres = rng.normal(size=(5, 40))
    u = torch.from_numpy(np.repeat(centres, 60, axis=0) + 0.01 * rng.normal(size=(300, 40)))
    u = u / u.norm(dim=-1, keepdim=True)
    for threshold in (1e-3, 0.05, 0.3, 1.5):
        assert cosine_clusters(u, threshold) == int(cluster_count(u, threshold))


def test_constructed_clouds_give_exact_values():
    rng = np.random.default_rng(1)
    rank1 = np.outer(rng.normal(size=200), rng.normal(size=16))  # X = a bᵀ
    got = moment_metrics(torch.from_numpy(rank1))
    assert got["stable_rank"] == pytest.approx(1.0, abs=1e-12)
    assert got["participation_ratio"] == pytest.approx(1.0, abs=1e-12)
    collapsed = np.tile(rng.normal(size=16), (50, 1))  # every token the same
    got = moment_metrics(torch.from_numpy(collapsed))
    assert got["collapse_residual"] == pytest.approx(0.0, abs=1e-7)
    assert got["stable_rank"] == pytest.approx(1.0, abs=1e-12)
    assert mean_cosine(torch.from_numpy(collapsed)) == pytest.approx(1.0, abs=1e-12)
    assert intrinsic_dimension(collapsed) == 0.0
    orthonormal = np.eye(8)  # 8 orthogonal tokens: cosine 0, stable rank 8
    assert mean_cosine(torch.from_numpy(orthonormal)) == pytest.approx(0.0, abs=1e-15)
    assert moment_metrics(torch.from_numpy(orthonormal))["stable_rank"] == pytest.approx(8.0)


@pytest.mark.parametrize(("kind", "dim"), [("subspace", 3), ("sphere", 2)])
def test_twonn_recovers_known_dimensions_in_r50(kind, dim):
    """TwoNN's MLE d̂ = n/Σ log μ_i has relative standard error 1/√n (n ≈ 0.9·2000 points kept);
    4 standard errors."""
    rng = np.random.default_rng(2)
    basis = np.linalg.qr(rng.normal(size=(50, dim + 1)))[0]
    if kind == "subspace":
        points = rng.normal(size=(2000, dim)) @ basis[:, :dim].T
    else:
        z = rng.normal(size=(2000, 3))
        points = (z / np.linalg.norm(z, axis=1, keepdims=True)) @ basis.T
    estimate = intrinsic_dimension(points)
    assert abs(estimate - dim) <= 4 * dim / math.sqrt(0.9 * 2000)


def test_knn_against_argsort_and_overlap():
    x = torch.from_numpy(cloud(n=150))
    dist = np.linalg.norm(x.numpy()[:, None] - x.numpy()[None], axis=-1)
    np.fill_diagonal(dist, np.inf)
    expected = np.sort(np.argsort(dist, axis=1)[:, :5], axis=1)
    got = np.sort(knn_indices(x, 5).numpy(), axis=1)
    np.testing.assert_array_equal(got, expected)
    a = knn_indices(x, 5)
    assert knn_overlap(a, a) == 1.0
    assert knn_overlap(a, knn_indices(2.0 * x + 3.0, 5)) == 1.0  # similarity: same neighbours
    b = a.clone()
    b[:, 0] = -1  # one of five neighbours replaced everywhere
    assert knn_overlap(a, b) == pytest.approx(0.8)


def test_attention_metrics_on_constructed_matrices():
    n, T = 10, 12
    att = np.full((3, 2, T, T), np.nan)
    att[0, :, :n, :n] = 1.0 / n  # uniform: rank 1, half the mass on n/2 keys
    att[1, :, :n, :n] = 0.0
    att[1, :, :n, 0] = 1.0  # one sink token
    att[2, :, :n, :n] = np.eye(n)  # each token to itself: rank n
    lengths = np.array([n, n, n])
    for b, (rank, leaders) in enumerate([(1.0, n / 2), (1.0, 1.0), (float(n), n / 2)]):
        got = attention_metrics(att[b : b + 1], lengths[b : b + 1])
        assert got == pytest.approx((rank, leaders), rel=1e-12)


def test_attention_null_permutes_rows_within_their_support():
    rng = np.random.default_rng(3)
    n, T = 6, 8
    att = np.full((1, 2, T, T), np.nan)
    a = np.tril(rng.random((2, n, n)))
    att[0, :, :n, :n] = a / a.sum(-1, keepdims=True)
    null = shuffle_rows_in_support(att, np.array([n]), causal=True, seed=0)
    shuffled = null[0, :, :n, :n]
    np.testing.assert_allclose(np.sort(shuffled, -1), np.sort(att[0, :, :n, :n], -1))
    assert np.allclose(np.triu(shuffled, 1), 0.0)
    assert not np.allclose(shuffled, att[0, :, :n, :n])


def trace_like(x: np.ndarray, lengths: list[int]) -> xr.Dataset:
    """A model-trace Dataset (time, batch, token, dim) from x, NaN past each length."""
    x = x.copy()
    for b, n in enumerate(lengths):
        x[:, b, n:] = np.nan
    return xr.Dataset(
        {"x": (("time", "batch", "token", "dim"), x), "length": ("batch", np.array(lengths))},
        coords={"time": np.arange(x.shape[0], dtype=float)},
    )


def test_layer_metrics_ignore_padding_and_match_the_direct_values():
    rng = np.random.default_rng(4)
    x = rng.normal(size=(3, 4, 40, 8)) + np.array([0.0, 1.0, 3.0])[:, None, None, None]
    lengths = [40, 25, 31, 12]
    ds = trace_like(x, lengths)
    opts = MetricOptions(max_tokens=10_000)
    m = layer_metrics(ds, opts)
    for layer in range(3):
        real = np.concatenate([x[layer, b, :n] for b, n in enumerate(lengths)])
        t = torch.from_numpy(real)
        assert m["mean_cosine"].values[layer] == pytest.approx(mean_cosine(t), rel=1e-12)
        for name, value in moment_metrics(t).items():
            assert m[name].values[layer] == pytest.approx(value, rel=1e-12)
    assert m.attrs["tokens"] == sum(lengths)
    assert np.isnan(m["knn_overlap"].values[0]) and np.isnan(m["leaders"].values).all()
    np.testing.assert_allclose(m["gram_histogram"].values.sum(-1), 1.0, atol=1e-12)


def test_the_null_keeps_marginals_and_breaks_structure():
    """A rank-1 cloud: the null permutes each coordinate, which keeps the coordinate means (so the
    collapse residual's mean part) and raises the stable rank far above 1."""
    rng = np.random.default_rng(5)
    x = np.outer(rng.normal(size=400), rng.normal(size=16))[None, None]
    m = layer_metrics(trace_like(x, [400]), MetricOptions(seed=1))
    assert m["stable_rank"].values[0] == pytest.approx(1.0, abs=1e-9)
    assert m["stable_rank_null"].values[0] > 3
    means = x[0, 0].mean(0)
    null_means = np.random.default_rng([1, 0]).permuted(x[0, 0], axis=0).mean(0)
    np.testing.assert_allclose(null_means, means, atol=1e-12)


def test_json_keys_and_bad_options(tmp_path):
    ds = trace_like(np.random.default_rng(6).normal(size=(2, 2, 20, 5)), [20, 15])
    m = layer_metrics(ds)
    data = metrics_json(m)
    assert set(data) == {"layers", "gram_histogram", *SCALAR_METRICS}
    assert data["layers"] == [0, 1] and data["knn_overlap"]["value"][0] is None
    assert len(data["gram_histogram"]["edges"]) == len(data["gram_histogram"]["value"][0]) + 1
    with pytest.raises(ConfigError, match=r"^threshold: is 0"):
        layer_metrics(ds, MetricOptions(threshold=0))
    from tokendyn.viz.models import plot_gram_layers, plot_metric_curves

    plot_metric_curves(m, tmp_path / "m.png")
    plot_gram_layers(m, tmp_path / "g.png")
    assert (tmp_path / "m.png").stat().st_size > 0 and (tmp_path / "g.png").stat().st_size > 0


@pytest.mark.slow
def test_metrics_on_1e5_tokens_by_768_dims_in_seconds():
    import time

    x = np.random.default_rng(7).normal(size=(1, 1, 100_000, 768)).astype(np.float32)
    start = time.process_time()  # CPU seconds: wall time depends on the machine's load
    layer_metrics(trace_like(x, [100_000]))
    assert time.process_time() - start < 60  # 21 s measured on 2 shared cores
