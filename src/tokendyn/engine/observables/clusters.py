"""Cluster counts: connected components of the graph i ~ j iff |x_i − x_j| < threshold."""

from __future__ import annotations

import math

import numpy as np
import torch
from scipy.sparse import coo_matrix, csr_matrix
from scipy.sparse.csgraph import connected_components
from scipy.spatial import cKDTree

from tokendyn.engine.observables._cloud import batched, check_positive, unbatch
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
    check_positive("threshold", threshold)
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
    xb, single = batched(x)
    check_positive("threshold", threshold)
    n = xb.shape[1]
    batched_ok = n <= _dense_limit(xb.shape[2], dense_max)
    if xb.shape[0] > 1 and batched_ok and xb.shape[0] * n * n <= _BATCHED_ADJACENCY_MAX:
        return unbatch(_batched_component_counts(xb.detach().double(), threshold), single)
    counts = [int(cluster_labels(cloud, threshold, dense_max=dense_max).max()) + 1 for cloud in xb]
    return unbatch(torch.tensor(counts, dtype=torch.int64, device=xb.device), single)


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
