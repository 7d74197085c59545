"""Observables against exact values: clusters (dense and grid paths), dimension, energy, OT."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from tokendyn.engine import observables as obs
from tokendyn.engine.attention import Head, split_heads
from tokendyn.engine.observables import clusters as obs_clusters
from tokendyn.errors import ConfigError


def sphere_cloud(n: int, d: int, seed: int = 0, batch: int | None = None) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    shape = (n, d) if batch is None else (batch, n, d)
    x = torch.randn(*shape, dtype=torch.float64, generator=g)
    return x / x.norm(dim=-1, keepdim=True)


def clustered(n: int, k: int, d: int, spread: float, seed: int = 0) -> torch.Tensor:
    """n points in k tight clusters around centres 3·m·e_1, m = 0..k-1."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.zeros(k, d, dtype=torch.float64)
    centres[:, 0] = 3.0 * torch.arange(k)
    noise = spread * torch.randn(n, d, dtype=torch.float64, generator=g)
    return centres[torch.arange(n) % k] + noise


# ------------------------------------------------------------------------------------------------
# clusters


@pytest.mark.parametrize("dense_max", [obs.DENSE_CLUSTER_MAX, 0])
@pytest.mark.parametrize(("k", "d"), [(1, 2), (3, 3), (5, 3), (4, 8)])
def test_cluster_count_separated_clusters(k: int, d: int, dense_max: int) -> None:
    x = clustered(600, k, d, spread=1e-4)
    assert int(obs.cluster_count(x, 1e-2, dense_max=dense_max)) == k


def test_cluster_labels_first_appearance_order() -> None:
    x = torch.tensor([[5.0, 0.0], [0.0, 0.0], [5.0, 0.001], [9.0, 9.0], [0.001, 0.0]])
    for dense_max in (obs.DENSE_CLUSTER_MAX, 0):
        labels = obs.cluster_labels(x, 0.01, dense_max=dense_max)
        np.testing.assert_array_equal(labels, [0, 1, 0, 2, 1])


def test_cluster_count_threshold_is_strict() -> None:
    x = torch.tensor([[0.0], [0.5], [1.0]], dtype=torch.float64)
    for dense_max in (obs.DENSE_CLUSTER_MAX, 0):
        assert int(obs.cluster_count(x, 0.5, dense_max=dense_max)) == 3
        assert int(obs.cluster_count(x, 0.5000001, dense_max=dense_max)) == 1


def test_cluster_count_batched_shape_and_dtype() -> None:
    x = torch.stack([clustered(90, 3, 3, 1e-4), clustered(90, 2, 3, 1e-4)]).float()
    counts = obs.cluster_count(x)
    assert counts.shape == (2,)
    assert counts.dtype == torch.int64
    assert counts.tolist() == [3, 2]
    assert obs.cluster_count(x[0]).shape == ()


def test_grid_path_large_clustered_cloud_without_pairwise_matrix(monkeypatch) -> None:
    def no_cdist(*args, **kwargs):
        raise AssertionError("the grid path must not form a distance matrix")

    monkeypatch.setattr(torch, "cdist", no_cdist)
    x = clustered(200_000, 3, 3, spread=1e-3, seed=1)
    assert int(obs.cluster_count(x, 1e-2)) == 3


def test_grid_path_large_uniform_sphere_matches_kdtree_reference() -> None:
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components
    from scipy.spatial import cKDTree

    x = sphere_cloud(20_000, 3, seed=2)
    pairs = cKDTree(x.numpy()).query_pairs(0.02, output_type="ndarray")
    graph = coo_matrix((np.ones(len(pairs)), (pairs[:, 0], pairs[:, 1])), shape=(20_000, 20_000))
    expected = connected_components(graph, directed=False)[0]
    assert int(obs.cluster_count(x, 0.02)) == expected


@settings(max_examples=30, deadline=None)
@given(
    n=st.integers(1, 300),
    d=st.integers(1, 6),
    k=st.integers(0, 5),
    log_spread=st.floats(-4, -0.5),
    log_threshold=st.floats(-2.5, 0.0),
    seed=st.integers(0, 2**31 - 1),
)
def test_grid_and_dense_labels_agree(n, d, k, log_spread, log_threshold, seed) -> None:
    rng = np.random.default_rng(seed)
    if k == 0:
        x = rng.random((n, d))
    else:
        centres = rng.random((k, d))
        x = centres[rng.integers(0, k, n)] + 10**log_spread * rng.normal(size=(n, d))
    for threshold in 10**log_threshold * np.array([0.5, 1.0, 2.0]):
        dense = obs.cluster_labels(torch.from_numpy(x), threshold, dense_max=obs.DENSE_CLUSTER_MAX)
        grid = obs.cluster_labels(torch.from_numpy(x), threshold, dense_max=0)
        np.testing.assert_array_equal(grid, dense)


@settings(max_examples=40, deadline=None)
@given(
    n=st.integers(1, 300),
    d=st.integers(obs.GRID_MAX_DIM + 1, 80),
    k=st.integers(0, 6),
    log_spread=st.floats(-4, -0.5),
    log_threshold=st.floats(-2.5, 0.5),
    seed=st.integers(0, 2**31 - 1),
)
def test_leader_and_dense_labels_agree(n, d, k, log_spread, log_threshold, seed) -> None:
    """High-d clouds of k groups, or (k = 0) a noisy chain along a line (mean spacing 1/20 of the
    threshold), where groups link only through their members: the leader algorithm (when it
    accepts the cloud) and the cluster_labels path above the dense limit give the dense
    components exactly."""
    rng = np.random.default_rng(seed)
    if k == 0:
        direction = rng.normal(size=d) / math.sqrt(d)
        steps = rng.exponential(10**log_threshold / 20, size=n).cumsum()
        x = steps[:, None] * direction + 10 ** (log_threshold - 2) * rng.normal(size=(n, d))
        x = x[rng.permutation(n)]  # leaders at random places along the chain
    else:
        centres = rng.random((k, d))
        x = centres[rng.integers(0, k, n)] + 10**log_spread * rng.normal(size=(n, d))
    for threshold in 10**log_threshold * np.array([0.5, 1.0, 2.0]):
        dense = obs.cluster_labels(torch.from_numpy(x), threshold, dense_max=obs.DENSE_CLUSTER_MAX)
        leader = obs_clusters._leader_labels(x, threshold)
        if leader is not None:
            np.testing.assert_array_equal(obs_clusters._first_appearance_order(leader), dense)
        above = obs.cluster_labels(torch.from_numpy(x), threshold, dense_max=0)
        np.testing.assert_array_equal(above, dense)


def test_leader_algorithm_takes_tight_high_dimensional_clusters() -> None:
    """5 tight clusters of 8000 tokens at d = 64: grouped by leaders (not refused), exact."""
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(5, 64))
    x = centres[np.arange(8000) % 5] + 1e-3 * rng.normal(size=(8000, 64))
    labels = obs_clusters._leader_labels(x, 0.05)
    assert labels is not None
    np.testing.assert_array_equal(obs_clusters._first_appearance_order(labels), np.arange(8000) % 5)
    assert obs_clusters._leader_labels(rng.normal(size=(2000, 64)), 0.05) is None  # spread out


@pytest.mark.parametrize("d", [2, 3, 5])
def test_grid_and_dense_agree_on_uniform_clouds(d: int) -> None:
    x = torch.rand(2000, d, dtype=torch.float64, generator=torch.Generator().manual_seed(d))
    spacing = 2000 ** (-1 / d)
    for threshold in spacing * np.array([0.3, 0.7, 1.0, 1.5]):
        dense = obs.cluster_labels(x, threshold, dense_max=obs.DENSE_CLUSTER_MAX)
        np.testing.assert_array_equal(obs.cluster_labels(x, threshold, dense_max=0), dense)


def test_cluster_threshold_must_be_positive() -> None:
    with pytest.raises(ConfigError, match="threshold"):
        obs.cluster_count(sphere_cloud(5, 2), 0.0)


def test_bad_shape_names_x() -> None:
    with pytest.raises(ConfigError, match="x"):
        obs.effective_dimension(torch.zeros(5))


# ------------------------------------------------------------------------------------------------
# effective dimension


def test_effective_dimension_isotropic_gaussian_is_d() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 20_000, 6, dtype=torch.float64, generator=g)
    np.testing.assert_allclose(obs.effective_dimension(x).numpy(), 6.0, rtol=0.01)


def test_effective_dimension_line_is_one_and_point_is_zero() -> None:
    t = torch.linspace(-1, 1, 50, dtype=torch.float64)[:, None]
    direction = torch.tensor([[1.0, -2.0, 0.5, 3.0]], dtype=torch.float64)
    line = t * direction + 7.0
    point = torch.full((50, 4), 0.3, dtype=torch.float64)
    assert float(obs.effective_dimension(line)) == pytest.approx(1.0, abs=1e-12)
    assert float(obs.effective_dimension(point)) == 0.0


def test_effective_dimension_two_equal_axes() -> None:
    x = torch.tensor([[1.0, 0, 0], [-1, 0, 0], [0, 1, 0], [0, -1, 0]], dtype=torch.float64)
    assert float(obs.effective_dimension(x)) == pytest.approx(2.0, abs=1e-12)


# ------------------------------------------------------------------------------------------------
# interaction energy


def direct_energy(x: torch.Tensor, beta: float) -> float:
    x = x.double()
    n = x.shape[0]
    return float(torch.exp(beta * x @ x.T).sum() / (2 * beta * n * n))


@pytest.mark.parametrize(("n", "beta"), [(40, 2.5), (700, 1.0)])
def test_energy_equals_direct_double_sum(n: int, beta: float) -> None:
    x = sphere_cloud(n, 3, seed=n)
    assert float(obs.interaction_energy(x, beta)) == pytest.approx(
        direct_energy(x, beta), rel=1e-12
    )


def test_energy_batched_and_permutation_invariant() -> None:
    x = sphere_cloud(300, 4, batch=2, seed=3)
    energy = obs.interaction_energy(x, 3.0)
    assert energy.shape == (2,)
    for b in range(2):
        assert float(energy[b]) == pytest.approx(direct_energy(x[b], 3.0), rel=1e-12)
    permuted = x[:, torch.randperm(300, generator=torch.Generator().manual_seed(1))]
    torch.testing.assert_close(obs.interaction_energy(permuted, 3.0), energy, rtol=1e-12, atol=0)


def test_log_energy_has_no_overflow_at_large_beta() -> None:
    x = sphere_cloud(60, 3, seed=4)
    beta = 1000.0
    log_e = obs.log_interaction_energy(x, beta)
    expected = torch.logsumexp((beta * x @ x.T).ravel(), 0) - math.log(2 * beta * 60**2)
    assert torch.isfinite(log_e)
    assert float(log_e) == pytest.approx(float(expected), rel=1e-12)


@pytest.mark.parametrize("beta", [0.0, -1.0])
def test_energy_rejects_non_positive_beta(beta: float) -> None:
    with pytest.raises(ConfigError, match="beta"):
        obs.interaction_energy(sphere_cloud(5, 2), beta)


def direct_head_energy(x: torch.Tensor, heads: list[Head]) -> float:
    """Σ_h (1/(2β_h N²)) Σ_ij exp(β_h⟨Q_h x_i, K_h x_j⟩) by the dense float64 double sum."""
    x = x.double()
    n = x.shape[0]
    total = 0.0
    for h in heads:
        scores = float(h.beta) * (x @ h.Q.double().T) @ (x @ h.K.double().T).T
        total += float(torch.exp(scores).sum()) / (2 * float(h.beta) * n * n)
    return total


@pytest.mark.parametrize("backend", ["dense", "tiled", "auto"])
def test_identity_head_energy_is_the_interaction_energy_to_the_last_bit(backend: str) -> None:
    """One head with Q = K = I: the statistic a run stores is bit for bit the old E_β."""
    x = sphere_cloud(300, 3, batch=2, seed=7)
    eye = torch.eye(3, dtype=torch.float64)
    for beta in (2.0, torch.tensor([1.0, 5.0], dtype=torch.float64)):
        log_e = obs.log_attention_energy(x, [Head(eye, eye, eye, beta)], backend)
        assert torch.equal(log_e, obs.log_interaction_energy(x, beta, backend))
        assert torch.equal(torch.exp(log_e), obs.interaction_energy(x, beta, backend))


@pytest.mark.parametrize("backend", ["dense", "tiled"])
def test_head_energy_uses_each_heads_q_k_and_beta(backend: str) -> None:
    """Random Q, K split over 3 heads (and one head with its own β): the direct double sum."""
    g = torch.Generator().manual_seed(2)
    d = 6
    Q, K, V = (torch.randn(d, d, dtype=torch.float64, generator=g) / d**0.5 for _ in range(3))
    heads = split_heads(Q, K, V, 3, 2.5)
    heads[1] = Head(heads[1].Q, heads[1].K, heads[1].V, 0.7, heads[1].W)
    x = sphere_cloud(90, d, seed=8)
    got = float(obs.log_attention_energy(x, heads, backend))
    assert got == pytest.approx(math.log(direct_head_energy(x, heads)), abs=1e-13)
    # and it is not the Q = K = I energy the registry used to store for this run
    assert abs(got - float(obs.log_interaction_energy(x, 2.5))) > 1e-3


def test_head_energy_per_cloud_beta_equals_separate_clouds() -> None:
    x = sphere_cloud(50, 3, batch=3, seed=9)
    g = torch.Generator().manual_seed(3)
    Q, K = (torch.randn(3, 3, dtype=torch.float64, generator=g) for _ in range(2))
    betas = torch.tensor([0.5, 2.0, 8.0], dtype=torch.float64)
    batched = obs.log_attention_energy(x, [Head(Q, K, Q, betas)])
    for b in range(3):
        alone = obs.log_attention_energy(x[b], [Head(Q, K, Q, float(betas[b]))])
        assert float(batched[b]) == pytest.approx(float(alone), abs=1e-14)


def test_pair_logsumexp_with_weights_is_the_weighted_double_sum() -> None:
    g = torch.Generator().manual_seed(4)
    q, k = (torch.randn(2, 40, 3, dtype=torch.float64, generator=g) for _ in range(2))
    w = torch.rand(2, 40, dtype=torch.float64, generator=g) + 0.1
    got = obs.pair_logsumexp(q, k, log_weights=w.log())
    want = torch.log(torch.einsum("bi,bij,bj->b", w, torch.exp(q @ k.mT), w))
    torch.testing.assert_close(got, want, rtol=0, atol=1e-13)


@pytest.mark.parametrize(("dtype", "beta"), [(torch.float64, 1000.0), (torch.float32, 100.0)])
def test_log_head_energy_finite_where_the_energy_overflows(dtype: torch.dtype, beta: float) -> None:
    """At β = 1000 (float64) and β = 100 (float32) E overflows; log E is finite and equals a float64
    logsumexp over the dense score matrix of the same (rounded) cloud. Tolerance: unit roundoff u
    times the error terms — (d+1)β from each score β⟨x_i, x_j⟩, 2(N+2) from the two levels of
    sums, 3|log E| + log(2βN²) from the logarithms and the shift."""
    n, d = 64, 3
    x = sphere_cloud(n, d, seed=5).to(dtype)
    eye = torch.eye(d, dtype=dtype)
    got = obs.log_attention_energy(x, [Head(eye, eye, eye, beta)])
    x64 = x.double()
    want = float(torch.logsumexp((beta * x64 @ x64.T).ravel(), 0)) - math.log(2 * beta * n * n)
    assert got.dtype == dtype and torch.isfinite(got)
    assert not torch.isfinite(torch.exp(torch.tensor(want, dtype=dtype)))  # E itself overflows
    u = torch.finfo(dtype).eps / 2
    tol = u * ((d + 1) * beta + 2 * (n + 2) + 3 * abs(want) + math.log(2 * beta * n * n))
    assert abs(float(got) - want) <= tol


# ------------------------------------------------------------------------------------------------
# Gram histogram


@pytest.mark.parametrize("max_pairs_dense", [1 << 22, 100])
def test_gram_histogram_matches_numpy(max_pairs_dense: int) -> None:
    n = 57
    x = sphere_cloud(n, 3, seed=5)
    counts, edges = obs.gram_histogram(x, bins=20, max_pairs_dense=max_pairs_dense)
    i, j = np.triu_indices(n, k=1)
    gram = (x.numpy() @ x.numpy().T)[i, j]
    expected, expected_edges = np.histogram(gram, bins=20, range=(-1, 1))
    assert counts.dtype == np.float64
    assert counts.sum() == n * (n - 1) / 2
    np.testing.assert_array_equal(counts, expected)
    np.testing.assert_allclose(edges, expected_edges)


def test_gram_histogram_collapsed_cloud_counts_rounding_overshoot() -> None:
    x = sphere_cloud(1, 3).repeat(30, 1) * (1 + 1e-15)
    counts, _ = obs.gram_histogram(x, bins=10)
    assert counts[-1] == 30 * 29 / 2


def test_gram_histogram_batched() -> None:
    x = sphere_cloud(40, 2, batch=3, seed=6)
    counts, edges = obs.gram_histogram(x, bins=8, max_pairs_dense=64)
    assert counts.shape == (3, 8)
    assert edges.shape == (9,)
    np.testing.assert_array_equal(counts[1], obs.gram_histogram(x[1], bins=8)[0])
    assert (counts.sum(axis=1) == 40 * 39 / 2).all()


# ------------------------------------------------------------------------------------------------
# Gaussian and optimal-transport distances


def test_mean_and_covariance() -> None:
    x = sphere_cloud(100, 3, seed=7)
    mean, cov = obs.mean_and_covariance(x)
    torch.testing.assert_close(mean, x.mean(0))
    torch.testing.assert_close(cov, torch.cov(x.T, correction=0))


def test_bures_wasserstein_identical_and_commuting() -> None:
    mean, cov = obs.mean_and_covariance(sphere_cloud(200, 3, seed=8))
    assert float(obs.bures_wasserstein(mean, cov, mean, cov)) == pytest.approx(0.0, abs=1e-6)
    a = torch.tensor([0.5, 2.0, 1.0], dtype=torch.float64)
    b = torch.tensor([3.0, 0.1, 1.0], dtype=torch.float64)
    m1, m2 = (
        torch.tensor([1.0, 0, 0], dtype=torch.float64),
        torch.tensor([0, 2.0, 0], dtype=torch.float64),
    )
    expected = math.sqrt(float((m1 - m2).pow(2).sum() + (a.sqrt() - b.sqrt()).pow(2).sum()))
    w = obs.bures_wasserstein(m1, torch.diag(a), m2, torch.diag(b))
    assert w.shape == ()
    assert float(w) == pytest.approx(expected, rel=1e-10)
    batched = obs.bures_wasserstein(
        torch.stack([m1, m1]),
        torch.stack([torch.diag(a)] * 2),
        torch.stack([m2, m1]),
        torch.stack([torch.diag(b), torch.diag(a)]),
    )
    np.testing.assert_allclose(batched.numpy(), [expected, 0.0], atol=1e-7)


@pytest.mark.parametrize("p", [1, 2])
def test_wasserstein_of_translate_is_shift_norm(p: int) -> None:
    x = sphere_cloud(80, 3, seed=9)
    shift = torch.tensor([0.3, -0.4, 1.2], dtype=torch.float64)
    assert float(obs.wasserstein(x, x + shift, p=p)) == pytest.approx(1.3, rel=1e-9)


def test_wasserstein_batched_and_permutation() -> None:
    x = sphere_cloud(50, 2, batch=2, seed=10)
    w = obs.wasserstein(x, x.flip(1))
    assert w.shape == (2,)
    np.testing.assert_allclose(w.numpy(), 0.0, atol=1e-7)


def test_sliced_wasserstein() -> None:
    x = sphere_cloud(500, 3, seed=11)
    shift = torch.tensor([0.0, 0.0, 0.6], dtype=torch.float64)
    assert float(obs.sliced_wasserstein(x, x)) == pytest.approx(0.0, abs=1e-12)
    sw = obs.sliced_wasserstein(x, x + shift, n_projections=400, seed=3)
    assert float(sw) == float(obs.sliced_wasserstein(x, x + shift, n_projections=400, seed=3))
    # translation by a: SW2² = E_θ⟨a, θ⟩² = |a|²/d
    assert float(sw) == pytest.approx(0.6 / math.sqrt(3), rel=0.1)
    assert float(sw) <= float(obs.wasserstein(x[:300], x[:300] + shift))


def test_mismatched_clouds_rejected() -> None:
    with pytest.raises(ConfigError, match="y"):
        obs.wasserstein(sphere_cloud(10, 2), sphere_cloud(10, 3))


@settings(max_examples=25, deadline=None)
@given(
    seed=st.integers(0, 10_000),
    b=st.integers(2, 6),
    n=st.integers(1, 60),
    threshold=st.sampled_from([0.05, 0.3, 0.8]),
    clustered=st.booleans(),
)
def test_batched_cluster_counts_equal_per_cloud_labels(seed, b, n, threshold, clustered):
    """The batched label propagation agrees with scipy's connected components cloud by cloud."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, n, 3, generator=g, dtype=torch.float64)
    if clustered:  # tight groups around a few centres, so components have many members
        centres = torch.randn(b, 4, 3, generator=g, dtype=torch.float64)
        x = centres[:, torch.randint(0, 4, (n,), generator=g)] + 0.05 * x
    batched = obs.cluster_count(x, threshold)
    each = [int(obs.cluster_labels(cloud, threshold).max()) + 1 for cloud in x]
    assert batched.tolist() == each
