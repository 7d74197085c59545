"""Per-layer measurements of a trace's token cloud, each beside a shuffled-token null.

For layer l, X is the (n, d) cloud of every real token of every sequence (padding dropped),
u_i = x_i/‖x_i‖ its directions. Computed on all n tokens, in O(n·d + d³) memory and time:

- mean_cosine (anisotropy): mean over pairs i ≠ j of ⟨u_i, u_j⟩ = (‖Σ u_i‖² − n)/(n(n − 1)).
- stable_rank: ‖X‖_F²/‖X‖₂² = tr M/λ_max(M), M = XᵀX/n = Σ + x̄x̄ᵀ (Σ the covariance).
- collapse_residual: ‖X − 1x̄ᵀ‖_F/‖X‖_F = (tr Σ/(tr Σ + ‖x̄‖²))^{1/2} (0: every token equal).
- participation_ratio: (tr Σ)²/tr Σ² (the definition of the engine's effective_dimension).

On a fixed random subsample S of at most `max_tokens` tokens (the same tokens at every layer),
never an N×N matrix beyond it:

- intrinsic_dimension: TwoNN (scikit-dimension) on the distinct points of X_S.
- clusters: connected components of the graph |u_i − u_j| < threshold on S (the engine's
  cluster_count), read from float64 Gram blocks as ⟨u_i, u_j⟩ > 1 − threshold²/2 (the engine's
  exact dense path forms differences without BLAS: 15× slower at d = 768).
- gram_histogram: fraction of pairs of u_S per bin of ⟨u_i, u_j⟩ ∈ [−1, 1].
- knn_overlap (layer l ≥ 1): mean over i ∈ S of |N_k^{l−1}(i) ∩ N_k^l(i)|/k, N_k the k nearest
  neighbours in X_S (Euclidean, self excluded).

From the attention weights (when the trace holds them; layer l ≥ 1 uses block l − 1), per
sequence and head, averaged: attention_rank, the stable rank ‖A‖_F²/‖A‖₂² of the attention matrix
(1 when every row is the same); leaders, the fewest key tokens holding half the attention mass
(1/n) Σ_i A_ij (1 for a single sink token, about n/2 for uniform attention).

The null: the same metric on the shuffled-token cloud, each coordinate independently permuted
across tokens (numpy `permuted` along the token axis, seeded per layer): it keeps every
coordinate's marginal (mean, variance, outliers) and destroys the joint structure of the tokens.
For the attention metrics the null permutes every row of A within its support (the keys a query
may see), keeping each row's weights and destroying which keys get them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import xarray as xr
from scipy.linalg import eigh
from scipy.sparse import csr_matrix
from scipy.sparse.csgraph import connected_components

from tokendyn.engine.observables import gram_histogram, mean_and_covariance
from tokendyn.errors import ConfigError

SCALAR_METRICS = (
    "mean_cosine",
    "stable_rank",
    "collapse_residual",
    "participation_ratio",
    "intrinsic_dimension",
    "clusters",
    "knn_overlap",
    "attention_rank",
    "leaders",
)
_KNN_ROW_BLOCK = 1024


@dataclass(frozen=True)
class MetricOptions:
    """threshold: cluster distance between directions u; k: neighbours; max_tokens: size of the
    subsample for the pairwise metrics; bins: Gram histogram bins; seed: subsample and nulls."""

    threshold: float = 0.1
    k: int = 10
    max_tokens: int = 4096
    bins: int = 50
    seed: int = 0

    def check(self) -> None:
        if not self.threshold > 0:
            raise ConfigError("threshold", f"is {self.threshold}", "give a distance > 0")
        if self.k < 1:
            raise ConfigError("k", f"is {self.k}", "give k ≥ 1 neighbours")
        if self.max_tokens < 3:
            raise ConfigError("max_tokens", f"is {self.max_tokens}", "give at least 3")
        if self.bins < 1:
            raise ConfigError("bins", f"is {self.bins}", "give at least 1 bin")


# ---------------------------------------------------------------------------------------------
# single-cloud metrics


def mean_cosine(x: torch.Tensor) -> float:
    """Mean ⟨u_i, u_j⟩ over pairs i ≠ j, u = x/‖x‖, without the n×n matrix."""
    n = x.shape[0]
    if n < 2:
        return math.nan
    s = (x / x.norm(dim=-1, keepdim=True)).sum(0, dtype=torch.float64)
    return float((s @ s - n) / (n * (n - 1)))


def moment_metrics(x: torch.Tensor) -> dict[str, float]:
    """stable_rank, collapse_residual, participation_ratio of one cloud (n, d), from its mean and
    covariance (one pass; the top eigenvalue of the d×d second moment only)."""
    mean, cov = mean_and_covariance(x)
    mean, cov = mean.double().cpu().numpy(), cov.double().cpu().numpy()
    second = cov + np.outer(mean, mean)
    d = second.shape[0]
    lam_max = float(eigh(second, eigvals_only=True, subset_by_index=[d - 1, d - 1])[0])
    tr_cov, tr_second, cov2 = float(np.trace(cov)), float(np.trace(second)), float((cov**2).sum())
    return {
        "stable_rank": tr_second / lam_max if lam_max > 0 else math.nan,
        "collapse_residual": math.sqrt(tr_cov / tr_second) if tr_second > 0 else math.nan,
        "participation_ratio": tr_cov**2 / cov2 if cov2 > 0 else 0.0,
    }


def intrinsic_dimension(x: np.ndarray) -> float:
    """TwoNN (Facco et al. 2017, scikit-dimension) on the distinct points of x; 0 when fewer than
    three distinct points remain (a collapsed cloud)."""
    import skdim

    x = np.ascontiguousarray(x, dtype=np.float64)
    first = {row.tobytes(): i for i, row in reversed(list(enumerate(x)))}
    points = x[sorted(first.values())]
    if points.shape[0] < 3:
        return 0.0
    return float(skdim.id.TwoNN().fit(points).dimension_)


def cosine_clusters(u: torch.Tensor, threshold: float) -> int:
    """Connected components of |u_i − u_j| < threshold for unit vectors u (m, d), i.e.
    ⟨u_i, u_j⟩ > 1 − threshold²/2, from float64 Gram row blocks."""
    u = u.double()
    level = 1 - threshold**2 / 2
    rows = []
    for start in range(0, u.shape[0], _KNN_ROW_BLOCK):
        rows.append((u[start : start + _KNN_ROW_BLOCK] @ u.T > level).cpu().numpy())
    return int(connected_components(csr_matrix(np.concatenate(rows)), directed=False)[0])


def knn_indices(x: torch.Tensor, k: int) -> torch.Tensor:
    """(m, k) indices of each point's k nearest other points, in row blocks of the distances."""
    k = min(k, x.shape[0] - 1)
    rows = []
    for start in range(0, x.shape[0], _KNN_ROW_BLOCK):
        dist = torch.cdist(x[start : start + _KNN_ROW_BLOCK], x)
        idx = torch.arange(start, start + dist.shape[0])
        dist[torch.arange(dist.shape[0]), idx] = math.inf
        rows.append(dist.topk(k, largest=False).indices)
    return torch.cat(rows)


def knn_overlap(a: torch.Tensor, b: torch.Tensor) -> float:
    """Mean fraction of shared neighbours between two (m, k) neighbour lists."""
    shared = (a[:, :, None] == b[:, None, :]).any(-1).sum(-1)
    return float(shared.double().mean() / a.shape[1])


def attention_metrics(att: np.ndarray, lengths: np.ndarray) -> tuple[float, float]:
    """(stable rank, leaders) of attention matrices att (B, H, T, T), averaged over the sequences
    (first lengths[b] queries and keys; the rest, padding, is NaN or 0) and heads.

    Padding entries are set to 0, which changes neither singular values nor Frobenius norms;
    ‖A‖₂² is the largest eigenvalue of AAᵀ."""
    a = torch.nan_to_num(torch.as_tensor(att, dtype=torch.float64))
    fro2 = (a**2).sum((-2, -1))
    ranks = fro2 / torch.linalg.eigvalsh(a @ a.mT)[..., -1]
    n = torch.as_tensor(lengths, dtype=torch.float64).reshape(-1, 1, 1)
    mass = torch.sort(a.sum(-2) / n, dim=-1, descending=True).values.cumsum(-1)
    leaders = (mass < 0.5 - 1e-12).sum(-1) + 1.0
    return float(ranks.mean()), float(leaders.mean())


def shuffle_rows_in_support(att: np.ndarray, lengths: np.ndarray, causal: bool, seed: int):
    """Each row of each attention matrix permuted among the keys it may see (a prefix: j < n,
    or j ≤ i when causal)."""
    rng = np.random.default_rng(seed)
    out = np.array(att, copy=True)
    for b, n in enumerate(lengths):
        keys = rng.random((*att.shape[1:3], n))[:, :n]  # (H, n, n)
        if causal:
            keys = np.where(np.tril(np.ones((n, n), dtype=bool)), keys, np.inf)
        order = np.argsort(keys, axis=-1)
        out[b, :, :n, :n] = np.take_along_axis(att[b, :, :n, :n], order, axis=-1)
    return out


# ---------------------------------------------------------------------------------------------
# a whole trace


def _flat_cloud(x: np.ndarray) -> np.ndarray:
    """All real tokens of one layer: rows without NaN of x (…, token, dim) as (n, d)."""
    flat = x.reshape(-1, x.shape[-1])
    return flat[~np.isnan(flat).any(axis=1)]


def _cloud_values(x: np.ndarray, sub: np.ndarray, opts: MetricOptions) -> dict:
    t = torch.from_numpy(x)
    xs = t[sub]
    u = xs / xs.norm(dim=-1, keepdim=True)
    counts, _ = gram_histogram(u, bins=opts.bins, range=(-1.0, 1.0))
    m = len(sub)
    return {
        "mean_cosine": mean_cosine(t),
        **moment_metrics(t),
        "intrinsic_dimension": intrinsic_dimension(xs.numpy()),
        "clusters": float(cosine_clusters(u, opts.threshold)),
        "gram_histogram": counts / max(m * (m - 1) / 2, 1),
        "_knn": knn_indices(xs, opts.k),
    }


def layer_metrics(ds: xr.Dataset, options: MetricOptions | None = None) -> xr.Dataset:
    """Every metric per layer (dims layer, and cosine for the Gram histograms), value and null
    (variables NAME and NAME_null)."""
    opts = options or MetricOptions()
    opts.check()
    if "x" not in ds or "time" not in ds.dims:
        raise ConfigError("run", "has no variable 'x' along 'time'", "give a model trace store")
    n_layers = ds.sizes["time"]
    rows: dict[str, list] = {f"{name}{s}": [] for name in SCALAR_METRICS for s in ("", "_null")}
    grams: dict[str, list] = {"gram_histogram": [], "gram_histogram_null": []}
    previous: dict[str, torch.Tensor] = {}
    sub = None
    n_tokens = 0
    for layer in range(n_layers):
        x = _flat_cloud(np.asarray(ds["x"].isel(time=layer).values))
        if sub is None:
            n_tokens = x.shape[0]
            if n_tokens < 3:
                raise ConfigError("run", f"holds {n_tokens} tokens", "trace at least 3 tokens")
            rng = np.random.default_rng(opts.seed)
            size = min(opts.max_tokens, n_tokens)
            sub = np.sort(rng.choice(n_tokens, size=size, replace=False))
        null = np.random.default_rng([opts.seed, layer]).permuted(x, axis=0)
        for suffix, cloud in (("", x), ("_null", null)):
            values = _cloud_values(cloud, sub, opts)
            knn = values.pop("_knn")
            grams["gram_histogram" + suffix].append(values.pop("gram_histogram"))
            overlap = knn_overlap(previous[suffix], knn) if suffix in previous else math.nan
            previous[suffix] = knn
            values["knn_overlap"] = overlap
            for name, value in values.items():
                rows[name + suffix].append(value)
        _attention_row(ds, layer, rows, opts.seed)
    bins = np.linspace(-1, 1, opts.bins + 1)
    data = {name: ("layer", np.array(v, dtype=float)) for name, v in rows.items()}
    data.update({name: (("layer", "cosine"), np.array(v)) for name, v in grams.items()})
    return xr.Dataset(
        data,
        coords={"layer": np.arange(n_layers), "cosine": (bins[:-1] + bins[1:]) / 2},
        attrs={
            "tokens": n_tokens,
            "subsample": len(sub),
            "threshold": opts.threshold,
            "k": opts.k,
            "seed": opts.seed,
            "model": ds.attrs.get("model", ""),
            "view": ds.attrs.get("view", ""),
            "null": "each coordinate permuted independently across tokens; attention rows "
            "permuted within their support",
        },
    )


def _attention_row(ds: xr.Dataset, layer: int, rows: dict[str, list], seed: int) -> None:
    names = ("attention_rank", "leaders")
    if "attention" not in ds or layer == 0:
        for name in names:
            rows[name].append(math.nan)
            rows[name + "_null"].append(math.nan)
        return
    att = np.asarray(ds["attention"].isel(block=layer - 1).values)
    lengths = np.atleast_1d(np.asarray(ds["length"].values))
    if att.ndim == 3:  # a single sequence: no batch dimension
        att = att[None]
    causal = '"causal"' in ds.attrs.get("config", "")
    null = shuffle_rows_in_support(att, lengths, causal, seed + layer)
    for suffix, a in (("", att), ("_null", null)):
        rank, leaders = attention_metrics(a, lengths)
        rows["attention_rank" + suffix].append(rank)
        rows["leaders" + suffix].append(leaders)


def metrics_json(metrics: xr.Dataset) -> dict:
    """{'layers': [...], NAME: {'value': [...], 'null': [...]}, …} with NaN as null; the Gram
    histograms also carry their bin 'edges'."""

    def clean(values: np.ndarray) -> list:
        return [None if isinstance(v, float) and math.isnan(v) else v for v in values.tolist()]

    def clean_nested(values: np.ndarray) -> list:
        return [clean(row) for row in values]

    out: dict = {"layers": metrics["layer"].values.tolist()}
    for name in SCALAR_METRICS:
        out[name] = {
            "value": clean(metrics[name].values),
            "null": clean(metrics[name + "_null"].values),
        }
    centres = metrics["cosine"].values
    width = centres[1] - centres[0] if len(centres) > 1 else 2.0
    out["gram_histogram"] = {
        "value": clean_nested(metrics["gram_histogram"].values),
        "null": clean_nested(metrics["gram_histogram_null"].values),
        "edges": np.append(centres - width / 2, centres[-1] + width / 2).tolist(),
    }
    return out
