"""Observables of a token cloud x of shape (N, d) or (B, N, d).

Every function accepts float32/float64 tensors on any device and returns one value per cloud: a
tensor of shape (B,) for batched input, a 0-d tensor for a single (N, d) cloud (unless noted).
`OBSERVABLES` maps the statistic names a simulation can save to callables f(x, *, beta, threshold).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import ot
import torch
from scipy.sparse import coo_matrix, csr_matrix
from scipy.sparse.csgraph import connected_components
from scipy.spatial import cKDTree

from tokendyn.engine.kernels import Backend, get_backend
from tokendyn.errors import ConfigError

# cluster_labels: dense distance rows up to DENSE_CLUSTER_MAX tokens, the grid algorithm above.
# For d ≤ GRID_MAX_DIM the grid wins from GRID_MIN_TOKENS tokens on (measured on 2 cores: 2000
# tokens in 3 tight clusters, d = 3: 2.4 ms against 186 ms dense); in higher d its KD-tree loses
# on clustered clouds (d = 128: 1.5 s against 0.16 s), so dense is kept up to DENSE_CLUSTER_MAX.
DENSE_CLUSTER_MAX = 4096
GRID_MAX_DIM = 32
GRID_MIN_TOKENS = 512
LEADER_MAX = 256  # above this many tight groups, high-d clouds go to the grid
_DENSE_ROW_BLOCK = 512  # rows of the distance matrix formed at once on the dense path
_PAIR_CHUNK = 1 << 20  # point pairs compared at once on the grid path
_KDTREE_PAIR_WORK = 4096  # cell pairs with more point pairs than this are checked with a k-d tree
_BATCHED_ADJACENCY_MAX = 1 << 22  # B·N² entries of the batched adjacency in cluster_count


# ---------------------------------------------------------------------------------------------
# input checks


def _cloud(x: torch.Tensor) -> torch.Tensor:
    x = torch.as_tensor(x)
    if x.dim() not in (2, 3) or x.shape[-2] < 1:
        raise ConfigError(
            "x",
            f"has shape {tuple(x.shape)}",
            "pass a cloud of shape (N, d) or (B, N, d) with N ≥ 1",
        )
    return x


def _batched(x: torch.Tensor) -> tuple[torch.Tensor, bool]:
    """(x as (B, N, d), whether the input was a single (N, d) cloud)."""
    x = _cloud(x)
    return (x.unsqueeze(0), True) if x.dim() == 2 else (x, False)


def _unbatch(values: torch.Tensor, single: bool) -> torch.Tensor:
    return values[0] if single else values


def _check_positive(field: str, value: float) -> None:
    if not value > 0:
        raise ConfigError(field, f"is {value}", f"give {field} > 0")


# ---------------------------------------------------------------------------------------------
# clusters


def _dense_limit(d: int, dense_max: int | None) -> int:
    if dense_max is not None:
        return dense_max
    return GRID_MIN_TOKENS if d <= GRID_MAX_DIM else DENSE_CLUSTER_MAX


def cluster_labels(
    x2d: torch.Tensor, threshold: float, *, dense_max: int | None = None
) -> np.ndarray:
    """Connected components of the graph i ~ j iff |x_i − x_j| < threshold, for one cloud (N, d).

    Returns a numpy int64 array (N,); components are numbered 0, 1, … in order of their first
    token. N ≤ dense_max: row blocks of the distance matrix. Larger N: exact algorithms in O(N)
    memory that never form an N×N matrix — in d > GRID_MAX_DIM groups around greedy leaders when
    the cloud is made of few tight groups (`_leader_labels`), otherwise a grid (`_grid_labels`).
    dense_max defaults to GRID_MIN_TOKENS for d ≤ GRID_MAX_DIM and DENSE_CLUSTER_MAX above.
    """
    _check_positive("threshold", threshold)
    x = torch.as_tensor(x2d)
    if x.dim() != 2 or x.shape[0] < 1:
        raise ConfigError("x2d", f"has shape {tuple(x.shape)}", "pass one cloud of shape (N, d)")
    if x.shape[0] <= _dense_limit(x.shape[1], dense_max):
        labels = _dense_labels(x.detach().double(), threshold)
    else:
        xs = x.detach().cpu().double().numpy()
        labels = _leader_labels(xs, threshold) if x.shape[1] > GRID_MAX_DIM else None
        if labels is None:
            labels = _grid_labels(xs, threshold)
    return _first_appearance_order(labels)


def cluster_count(
    x: torch.Tensor, threshold: float = 1e-2, *, dense_max: int | None = None
) -> torch.Tensor:
    """Number of connected components of the graph i ~ j iff |x_i − x_j| < threshold (int64).

    Many small clouds (B·N² ≤ 2^22) are counted together by label propagation on the batched
    adjacency; otherwise each cloud goes through `cluster_labels`."""
    xb, single = _batched(x)
    _check_positive("threshold", threshold)
    n = xb.shape[1]
    batched_ok = n <= _dense_limit(xb.shape[2], dense_max)
    if xb.shape[0] > 1 and batched_ok and xb.shape[0] * n * n <= _BATCHED_ADJACENCY_MAX:
        return _unbatch(_batched_component_counts(xb.detach().double(), threshold), single)
    counts = [int(cluster_labels(cloud, threshold, dense_max=dense_max).max()) + 1 for cloud in xb]
    return _unbatch(torch.tensor(counts, dtype=torch.int64, device=xb.device), single)


def _batched_component_counts(x: torch.Tensor, threshold: float) -> torch.Tensor:
    """Components of every cloud of x (B, N, d) at once: each token takes the smallest label among
    its neighbours, then follows its label's label (pointer jumping), until nothing changes; the
    roots (label = own index) are the components."""
    adjacent = torch.cdist(x, x, compute_mode="donot_use_mm_for_euclid_dist") < threshold
    n = x.shape[1]
    index = torch.arange(n, device=x.device).expand(x.shape[0], n)
    labels = index
    while True:
        neighbour = torch.where(adjacent, labels[:, None, :], n).amin(dim=-1)
        new = torch.minimum(labels, neighbour)
        new = new.gather(1, new)
        if torch.equal(new, labels):
            return (labels == index).sum(dim=-1)
        labels = new


def _first_appearance_order(labels: np.ndarray) -> np.ndarray:
    _, first, inverse = np.unique(labels, return_index=True, return_inverse=True)
    rank = np.argsort(np.argsort(first))
    return rank[inverse.ravel()].astype(np.int64)


def _components(n_nodes: int, edges: np.ndarray) -> np.ndarray:
    ones = np.ones(len(edges), dtype=np.int8)
    graph = coo_matrix((ones, (edges[:, 0], edges[:, 1])), shape=(n_nodes, n_nodes))
    return connected_components(graph, directed=False)[1]


def _dense_labels(x: torch.Tensor, threshold: float) -> np.ndarray:
    rows = []
    for start in range(0, x.shape[0], _DENSE_ROW_BLOCK):
        block = x[start : start + _DENSE_ROW_BLOCK]
        dist = torch.cdist(block, x, compute_mode="donot_use_mm_for_euclid_dist")
        rows.append((dist < threshold).cpu().numpy())
    return connected_components(csr_matrix(np.concatenate(rows)), directed=False)[1]


def _grid_labels(x: np.ndarray, threshold: float) -> np.ndarray:
    """Exact components without an N×N matrix.

    Tokens are binned into cubic cells of side threshold/(2√d), so a cell's diameter D is
    threshold/2 and every cell is a clique. Each occupied cell gets an anchor and a reach: its only
    token and reach 0 for a one-token cell, its centre and reach D/2 otherwise. Two cells whose
    anchors are g apart are surely linked if g + reach_a + reach_b < threshold and surely not if
    g − reach_a − reach_b ≥ threshold; the ambiguous pairs in between are checked token by token,
    and only when the sure links have not already joined them.
    """
    d = x.shape[1]
    h = threshold / (2 * math.sqrt(d))
    slack = 1e-12 * math.sqrt(d) * (float(np.abs(x).max()) + threshold)  # rounding in binning
    origin = x.min(axis=0)
    cells, cell_of = np.unique(
        np.floor((x - origin) / h).astype(np.int64), axis=0, return_inverse=True
    )
    cell_of = cell_of.ravel()
    counts = np.bincount(cell_of)
    anchors = origin + (cells + 0.5) * h
    lone_tokens = np.flatnonzero(counts[cell_of] == 1)
    anchors[cell_of[lone_tokens]] = x[lone_tokens]
    crowd_reach = h * math.sqrt(d) / 2
    reach = np.where(counts == 1, 0.0, crowd_reach)
    pairs = _candidate_pairs(anchors, counts == 1, threshold + slack, crowd_reach)
    gap = np.linalg.norm(anchors[pairs[:, 0]] - anchors[pairs[:, 1]], axis=1)
    spread = reach[pairs[:, 0]] + reach[pairs[:, 1]]
    sure = pairs[gap + spread < threshold - slack]
    labels = _components(len(cells), sure)
    maybe = pairs[(gap + spread >= threshold - slack) & (gap - spread < threshold + slack)]
    maybe = maybe[labels[maybe[:, 0]] != labels[maybe[:, 1]]]
    touching = maybe[_cells_touch(x, cell_of, counts, maybe, threshold)]
    return _components(len(cells), np.concatenate([sure, touching]))[cell_of]


def _leader_labels(x: np.ndarray, threshold: float) -> np.ndarray | None:
    """Exact components of a cloud made of few tight groups, in any dimension (the grid's KD-tree
    degrades with d: 8000 tokens in 5 clusters at d = 64 took 21 s on the grid path).

    Greedy leaders: the first token not yet grouped becomes a leader and takes every ungrouped
    token closer than threshold/2, so a group has diameter < threshold and is a clique. Groups a, b
    whose leaders (tokens themselves) are g apart, with radii r_a, r_b, are linked if g < threshold,
    surely not if g − r_a − r_b ≥ threshold, and checked token by token in between (as the grid
    does for its cells). None for a spread-out cloud: more than LEADER_MAX leaders, or fewer than
    four tokens per leader after sixteen.
    """
    slack = 1e-12 * (float(np.abs(x).max()) + threshold)
    radius = threshold / 2 - slack
    group_of = np.full(x.shape[0], -1, dtype=np.int64)
    leaders: list[int] = []
    ungrouped = np.arange(x.shape[0])
    while ungrouped.size:
        grouped = x.shape[0] - ungrouped.size
        if len(leaders) == LEADER_MAX or (len(leaders) >= 16 and grouped < 4 * len(leaders)):
            return None  # many groups, or groups of a few tokens: a spread-out cloud
        leader = int(ungrouped[0])
        near = np.sqrt(((x[ungrouped] - x[leader]) ** 2).sum(axis=1)) < radius
        near[0] = True
        group_of[ungrouped[near]] = len(leaders)
        leaders.append(leader)
        ungrouped = ungrouped[~near]
    anchors = x[leaders]
    reach = np.zeros(len(leaders))
    np.maximum.at(reach, group_of, np.sqrt(((x - anchors[group_of]) ** 2).sum(axis=1)))
    a, b = np.triu_indices(len(leaders), k=1)
    gap = np.sqrt(((anchors[a] - anchors[b]) ** 2).sum(axis=1))
    spread = reach[a] + reach[b]
    pairs = np.stack([a, b], axis=1)
    sure = pairs[gap < threshold]  # leaders are tokens: closer than threshold means linked
    labels = _components(len(leaders), sure)
    maybe = pairs[(gap >= threshold) & (gap - spread < threshold + slack)]
    maybe = maybe[labels[maybe[:, 0]] != labels[maybe[:, 1]]]
    counts = np.bincount(group_of, minlength=len(leaders))
    touching = maybe[_cells_touch(x, group_of, counts, maybe, threshold)]
    return _components(len(leaders), np.concatenate([sure, touching]))[group_of]


def _candidate_pairs(
    anchors: np.ndarray, lone: np.ndarray, base: float, reach: float
) -> np.ndarray:
    """Cell pairs whose anchors are within base + reach_a + reach_b, where a cell's reach is 0 if
    it holds one token (`lone`) and `reach` otherwise."""
    lone_ids, crowd_ids = np.flatnonzero(lone), np.flatnonzero(~lone)
    lone_tree, crowd_tree = cKDTree(anchors[lone_ids]), cKDTree(anchors[crowd_ids])
    mixed = crowd_tree.sparse_distance_matrix(lone_tree, base + reach, output_type="ndarray")
    return np.concatenate(
        [
            lone_ids[lone_tree.query_pairs(base, output_type="ndarray")],
            crowd_ids[crowd_tree.query_pairs(base + 2 * reach, output_type="ndarray")],
            np.stack([crowd_ids[mixed["i"]], lone_ids[mixed["j"]]], axis=1),
        ]
    )


def _cells_touch(
    x: np.ndarray, cell_of: np.ndarray, counts: np.ndarray, pairs: np.ndarray, threshold: float
) -> np.ndarray:
    """For each cell pair (a, b): is some token of a closer than threshold to some token of b?"""
    xs = x[np.argsort(cell_of, kind="stable")]
    starts = np.cumsum(counts) - counts
    work = counts[pairs[:, 0]] * counts[pairs[:, 1]]
    touch = np.zeros(len(pairs), dtype=bool)
    small = np.flatnonzero(work <= _KDTREE_PAIR_WORK)
    chunk_of = (np.cumsum(work[small]) - 1) // _PAIR_CHUNK
    for chunk in np.split(small, np.flatnonzero(np.diff(chunk_of)) + 1):
        touch[chunk] = _min_distances(xs, starts, counts, pairs[chunk]) < threshold
    for k in np.flatnonzero(work > _KDTREE_PAIR_WORK):
        a, b = pairs[k]
        tree = cKDTree(xs[starts[a] : starts[a] + counts[a]])
        dist, _ = tree.query(xs[starts[b] : starts[b] + counts[b]], k=1)
        touch[k] = dist.min() < threshold
    return touch


def _min_distances(
    xs: np.ndarray, starts: np.ndarray, counts: np.ndarray, pairs: np.ndarray
) -> np.ndarray:
    """min |p − q| over p in cell a, q in cell b, for every pair (a, b), by enumerating all p, q."""
    if len(pairs) == 0:
        return np.zeros(0)
    a, b = pairs[:, 0], pairs[:, 1]
    work = counts[a] * counts[b]
    offsets = np.cumsum(work) - work
    pair_id = np.repeat(np.arange(len(pairs)), work)
    local = np.arange(int(work.sum())) - offsets[pair_id]
    nb = counts[b][pair_id]
    i = starts[a][pair_id] + local // nb
    j = starts[b][pair_id] + local % nb
    dist = np.sqrt(((xs[i] - xs[j]) ** 2).sum(axis=1))
    return np.minimum.reduceat(dist, offsets)


# ---------------------------------------------------------------------------------------------
# effective dimension


def effective_dimension(x: torch.Tensor) -> torch.Tensor:
    """Participation ratio (Σλ)²/Σλ² = tr(Σ)²/tr(Σ²) of the eigenvalues λ of the covariance Σ.

    Between 1 (a line) and d (isotropic). A cloud collapsed to a point has no direction, and gets 0:
    that is when tr Σ ≤ d·(64·ε·max(1, max|x|))², i.e. its spread is at the rounding level of its
    coordinates (ε the dtype's machine epsilon).
    """
    xb, single = _batched(x)
    _, cov = mean_and_covariance(xb)
    trace = cov.diagonal(dim1=-2, dim2=-1).sum(-1)
    frob2 = (cov**2).sum((-2, -1))
    scale = xb.abs().amax((-2, -1)).clamp(min=1.0)
    floor = xb.shape[-1] * (64 * torch.finfo(xb.dtype).eps * scale) ** 2
    ratio = torch.where(trace > floor, trace**2 / frob2, torch.zeros_like(trace))
    return _unbatch(ratio, single)


# ---------------------------------------------------------------------------------------------
# interaction energy


def log_interaction_energy(
    x: torch.Tensor, beta: float | torch.Tensor, backend: str | Backend = "auto"
) -> torch.Tensor:
    """log E_β = logsumexp_i(lse_i) − log(2βN²), lse_i = log Σ_j exp(β⟨x_i, x_j⟩).

    Max-shifted and tiled by the kernel backend: finite for any β (no N×N matrix for large N).
    β is a number or one value per cloud, a (B,) tensor.
    """
    xb, single = _batched(x)
    betas = torch.as_tensor(beta, dtype=xb.dtype, device=xb.device).reshape(-1)
    if betas.numel() not in (1, xb.shape[0]) or not bool((betas > 0).all()):
        raise ConfigError("beta", f"is {beta}", "give β > 0, one number or one per cloud")
    n = xb.shape[1]
    lse = get_backend(backend).logsumexp(betas.reshape(-1, 1, 1) * xb, xb)
    log_norm = torch.log(2 * betas * n * n)
    return _unbatch(torch.logsumexp(lse, dim=-1) - log_norm, single)


def interaction_energy(
    x: torch.Tensor, beta: float | torch.Tensor, backend: str | Backend = "auto"
) -> torch.Tensor:
    """E_β = (1/(2βN²)) Σ_ij exp(β⟨x_i, x_j⟩), the energy the attention dynamics increases."""
    return torch.exp(log_interaction_energy(x, beta, backend))


# ---------------------------------------------------------------------------------------------
# Gram histogram


def gram_histogram(
    x: torch.Tensor,
    bins: int = 50,
    range: tuple[float, float] = (-1.0, 1.0),
    max_pairs_dense: int = 1 << 22,
) -> tuple[np.ndarray, np.ndarray]:
    """Histogram of the inner products ⟨x_i, x_j⟩ over the pairs i < j, in float64.

    Returns (counts, edges): counts float64 (bins,) for one cloud (N, d) or (B, bins) for (B, N, d),
    edges (bins + 1,). The Gram matrix is formed in tiles of at most max_pairs_dense entries.
    Values outside `range` are not counted, except rounding overshoots (within 1e-6 of the width,
    e.g. ⟨x, x'⟩ = 1 + 1e-16 on the sphere) which go to the edge bins.
    """
    lo, hi = float(range[0]), float(range[1])
    if not (bins >= 1 and lo < hi):
        raise ConfigError("bins/range", f"bins={bins}, range={range}", "use bins ≥ 1 and lo < hi")
    if max_pairs_dense < 1:
        raise ConfigError("max_pairs_dense", f"is {max_pairs_dense}", "use an integer ≥ 1")
    xb, single = _batched(x)
    block = math.isqrt(max_pairs_dense)
    counts = np.stack([_gram_counts(c.detach().double(), bins, lo, hi, block) for c in xb])
    return (counts[0] if single else counts), np.linspace(lo, hi, bins + 1)


def _gram_counts(x: torch.Tensor, bins: int, lo: float, hi: float, block: int) -> np.ndarray:
    n = x.shape[0]
    tol = 1e-6 * (hi - lo)
    counts = torch.zeros(bins, dtype=torch.float64, device=x.device)
    for i0 in range(0, n, block):
        rows = x[i0 : i0 + block]
        for j0 in range(i0, n, block):
            gram = rows @ x[j0 : j0 + block].T
            values = (
                gram[torch.ones_like(gram, dtype=torch.bool).triu(1)] if j0 == i0 else gram.ravel()
            )
            snapped = torch.where((values > hi) & (values <= hi + tol), hi, values)
            snapped = torch.where((snapped < lo) & (snapped >= lo - tol), lo, snapped)
            counts += torch.histc(snapped, bins=bins, min=lo, max=hi)
    return counts.cpu().numpy()


# ---------------------------------------------------------------------------------------------
# Gaussian and optimal-transport distances


def mean_and_covariance(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Empirical mean α = (1/N) Σ x_i, shape (…, d), and covariance (…, d, d)

    Σ = (1/N) Σ_i (x_i − α)(x_i − α)ᵀ (population normalisation 1/N).
    """
    x = _cloud(x)
    mean = x.mean(dim=-2)
    centred = x - mean.unsqueeze(-2)
    return mean, centred.mT @ centred / x.shape[-2]


def bures_wasserstein(
    mean1: torch.Tensor, cov1: torch.Tensor, mean2: torch.Tensor, cov2: torch.Tensor
) -> torch.Tensor:
    """W2 between N(α1, Σ1) and N(α2, Σ2) (the distance, not its square), where

    W2² = |α1 − α2|² + tr(Σ1 + Σ2 − 2(Σ1^{1/2} Σ2 Σ1^{1/2})^{1/2}).
    Means (d,) or (B, d) with covariances (d, d) or (B, d, d); batches are paired elementwise.
    Uses POT's ot.gaussian.bures_wasserstein_distance.
    """
    if mean1.dim() == 1:
        return ot.gaussian.bures_wasserstein_distance(mean1, mean2, cov1, cov2).reshape(())
    return ot.gaussian.bures_wasserstein_distance(mean1, mean2, cov1, cov2, paired=True)


def wasserstein(x: torch.Tensor, y: torch.Tensor, p: float = 2) -> torch.Tensor:
    """Exact W_p = (min_π Σ_ij π_ij |x_i − y_j|^p)^{1/p} between the uniform empirical measures.

    Network simplex (ot.emd2) on the N×M cost matrix: for clouds of up to a few thousand tokens.
    """
    if p < 1:
        raise ConfigError("p", f"is {p}", "use p ≥ 1")
    (xb, single), (yb, _) = _paired(x, y)
    values = [_emd(xi, yi, p) for xi, yi in zip(xb, yb, strict=True)]
    return _unbatch(torch.stack(values), single)


def sliced_wasserstein(
    x: torch.Tensor, y: torch.Tensor, n_projections: int = 200, seed: int = 0
) -> torch.Tensor:
    """Sliced W2 = (E_θ W2²(⟨θ, x⟩, ⟨θ, y⟩))^{1/2} over random unit directions θ.

    Monte Carlo over n_projections directions (ot.sliced_wasserstein_distance), at cost
    O(n_projections · N log N): for large clouds. Deterministic for a given seed.
    """
    if n_projections < 1:
        raise ConfigError("n_projections", f"is {n_projections}", "use an integer ≥ 1")
    (xb, single), (yb, _) = _paired(x, y)
    values = [
        torch.as_tensor(
            ot.sliced_wasserstein_distance(xi, yi, n_projections=n_projections, seed=seed)
        )
        for xi, yi in zip(xb, yb, strict=True)
    ]
    return _unbatch(torch.stack(values), single)


def _paired(
    x: torch.Tensor, y: torch.Tensor
) -> tuple[tuple[torch.Tensor, bool], tuple[torch.Tensor, bool]]:
    bx, by = _batched(x), _batched(y)
    if (
        bx[0].dim() != by[0].dim()
        or bx[0].shape[0] != by[0].shape[0]
        or bx[0].shape[2] != by[0].shape[2]
    ):
        raise ConfigError(
            "y",
            f"shape {tuple(y.shape)} does not match x {tuple(x.shape)}",
            "use the same batch and d",
        )
    return bx, by


def _emd(x: torch.Tensor, y: torch.Tensor, p: float) -> torch.Tensor:
    a = x.new_full((x.shape[0],), 1.0 / x.shape[0])
    b = y.new_full((y.shape[0],), 1.0 / y.shape[0])
    cost = ot.dist(x, y) if p == 2 else ot.dist(x, y, metric="euclidean") ** p
    return torch.as_tensor(ot.emd2(a, b, cost, numItermax=10_000_000)) ** (1.0 / p)


# ---------------------------------------------------------------------------------------------
# registry of statistics saved by simulate()

Observable = Callable[..., torch.Tensor]


def _clusters(x: torch.Tensor, *, beta: float, threshold: float) -> torch.Tensor:
    return cluster_count(x, threshold)


def _effective_dim(x: torch.Tensor, *, beta: float, threshold: float) -> torch.Tensor:
    return effective_dimension(x)


def _energy(x: torch.Tensor, *, beta: float, threshold: float) -> torch.Tensor:
    return interaction_energy(x, beta)


OBSERVABLES: dict[str, Observable] = {
    "clusters": _clusters,
    "effective_dim": _effective_dim,
    "energy": _energy,
}


def get_observable(name: str) -> Observable:
    """The statistic `name` as f(x, *, beta, threshold) -> (B,)."""
    if name not in OBSERVABLES:
        raise ConfigError(
            "stats", f"unknown statistic {name!r}", f"use one of {', '.join(OBSERVABLES)}"
        )
    return OBSERVABLES[name]
