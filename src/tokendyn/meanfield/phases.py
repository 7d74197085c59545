"""Phase diagnostics of a stored run in the moderate-interaction regime (multiscale spec §3.4).

Per saved frame: the transverse mass ε_⊥ to E_max (the top generalised eigenspace of V KᵀQ), the
participation ratio, the normalised energy Ê = (1/N²) Σ_ij e^{β(⟨x_i,x_j⟩−1)} and the macroscopic
clusters (connected components at a distance threshold holding ≥ 1 % of the tokens) with their
masses and centres. From these series: when alignment is done (ε_⊥ below a fraction of its
start), when clusters have formed (macroscopic clusters hold ≥ 90 % of the tokens), and each merge
(the macroscopic cluster count drops), beside the predictions of the limits. Clusters count as
formed when they are also tight: RMS radius below the run's cluster threshold.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
import xarray as xr

from ..config import SimulationConfig, make_config
from ..factory import make_matrices
from ..observables import cluster_labels, effective_dimension, log_interaction_energy
from ..store import stored_config
from .multiscale import pair_merge_time, top_eigenspace, transverse_mass

MACRO_FRACTION = 0.01
ALIGNED_FRACTION = 1e-2
FORMED_FRACTION = 0.9


@dataclass
class Clusters:
    count: int
    masses: list[float]
    centres: list[list[float]]
    radii: list[float]  # RMS distance of the members to their mean


@dataclass
class Phases:
    """Detected phase times (None if not reached) and the limits' predictions."""

    alignment_done: float | None
    alignment_predicted: float | None
    clusters_formed: float | None
    merges: list[float] = field(default_factory=list)
    first_merge_predicted: float | None = None
    final_clusters: Clusters | None = None

    def to_json(self) -> str:
        return json.dumps(asdict(self))


def macroscopic_clusters(x: torch.Tensor, threshold: float) -> Clusters:
    """Components of one cloud (N, d) holding ≥ 1 % of the tokens: masses (fractions of N), centres
    (normalised means) and RMS radii, largest first."""
    labels = cluster_labels(x, threshold)
    counts = np.bincount(labels)
    order = [int(k) for k in np.argsort(-counts) if counts[k] >= MACRO_FRACTION * len(labels)]
    xs = x.detach().cpu().double().numpy()
    centres, radii = [], []
    for k in order:
        members = xs[labels == k]
        mean = members.mean(axis=0)
        centres.append((mean / max(np.linalg.norm(mean), 1e-300)).round(6).tolist())
        radii.append(float(np.sqrt(((members - mean) ** 2).sum(axis=1).mean())))
    masses = [float(counts[k] / len(labels)) for k in order]
    return Clusters(len(order), masses, centres, radii)


def diagnostics(ds: xr.Dataset) -> xr.Dataset:
    """Per-frame ε_⊥, participation ratio, normalised energy, macroscopic cluster count and the
    fraction of tokens in macroscopic clusters, for a stored single-cloud run."""
    cfg = make_config(**stored_config(ds))
    Q, K, V = make_matrices(cfg, torch.Generator().manual_seed(cfg.seed))
    basis = top_eigenspace((V @ K.T @ Q).numpy())
    x_all = torch.as_tensor(ds["x"].values, dtype=torch.float64)
    if x_all.dim() != 3:
        raise ValueError("x: phase diagnostics take a single-cloud run (dims time, token, dim)")
    rows = []
    n = x_all.shape[1]
    for x in x_all:
        clusters = macroscopic_clusters(x, cfg.cluster_threshold)
        log_energy = float(log_interaction_energy(x, cfg.beta)) + math.log(2 * cfg.beta) - cfg.beta
        rows.append(
            (
                float(transverse_mass(x, basis)),
                float(effective_dimension(x)),
                math.exp(log_energy),
                clusters.count,
                sum(clusters.masses),
                max(clusters.radii, default=math.nan),
            )
        )
    values = np.array(rows)
    names = (
        "transverse_mass",
        "participation_ratio",
        "normalised_energy",
        "macro_clusters",
        "macro_fraction",
        "macro_radius",
    )
    out = xr.Dataset(
        {name: ("time", values[:, i]) for i, name in enumerate(names)},
        coords={"time": ds["time"].values},
    )
    out.attrs.update(n=n, beta=cfg.beta, e_max_dim=basis.shape[1])
    return out


def alignment_time_predicted(cfg: SimulationConfig) -> float | None:
    """Time for ε_⊥ to fall by ALIGNED_FRACTION at the limit rate 2(Re λ₁ − Re λ₂) of M = V KᵀQ
    (None when M has a single eigenvalue level)."""
    Q, K, V = make_matrices(cfg, torch.Generator().manual_seed(cfg.seed))
    levels = np.unique(np.round(np.linalg.eigvals((V @ K.T @ Q).numpy()).real, 12))[::-1]
    if len(levels) < 2:
        return None
    return math.log(1 / ALIGNED_FRACTION) / (2 * (levels[0] - levels[1]))


def _first_merge_predicted(ds: xr.Dataset, cfg: SimulationConfig, formed: int) -> float | None:
    """Formation time + the isolated-pair time for the closest macroscopic clusters (their masses)
    to come within the cluster threshold; only for Q = K = V = I, the pairing theorem's setting."""
    if cfg.qkv != "identity" or any(m is not None for m in (cfg.Q, cfg.K, cfg.V)):
        return None
    x = torch.as_tensor(ds["x"].isel(time=formed).values, dtype=torch.float64)
    clusters = macroscopic_clusters(x, cfg.cluster_threshold)
    if clusters.count < 2:
        return None
    centres = np.array(clusters.centres)
    gram = centres @ centres.T
    np.fill_diagonal(gram, -2.0)
    i, j = np.unravel_index(int(gram.argmax()), gram.shape)
    theta = math.acos(min(1.0, float(gram[i, j])))
    if theta <= cfg.cluster_threshold:
        return None
    time = pair_merge_time(
        theta, cfg.beta, cfg.cluster_threshold, clusters.masses[i], clusters.masses[j]
    )
    return float(ds["time"].values[formed]) + time


def detect_phases(ds: xr.Dataset) -> Phases:
    """Detected phase times of a stored run, with the limits' predictions."""
    cfg = make_config(**stored_config(ds))
    diag = diagnostics(ds)
    times = diag["time"].values
    eps = diag["transverse_mass"].values
    aligned = np.flatnonzero(eps <= ALIGNED_FRACTION * max(eps[0], 1e-300))
    # Formed: macroscopic clusters hold most tokens and are tight (not chains of close neighbours).
    tight = diag["macro_radius"].values <= cfg.cluster_threshold
    formed = np.flatnonzero((diag["macro_fraction"].values >= FORMED_FRACTION) & tight)
    phases = Phases(
        alignment_done=float(times[aligned[0]]) if aligned.size else None,
        alignment_predicted=alignment_time_predicted(cfg),
        clusters_formed=float(times[formed[0]]) if formed.size else None,
    )
    if formed.size:
        counts = diag["macro_clusters"].values
        start = int(formed[0])
        phases.merges = [
            float(times[k]) for k in range(start + 1, len(times)) if counts[k] < counts[k - 1]
        ]
        phases.first_merge_predicted = _first_merge_predicted(ds, cfg, start)
    last = torch.as_tensor(ds["x"].isel(time=-1).values, dtype=torch.float64)
    phases.final_clusters = macroscopic_clusters(last, cfg.cluster_threshold)
    return phases
