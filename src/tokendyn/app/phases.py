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

from tokendyn.app.build import make_matrices
from tokendyn.app.config import SimulationConfig, make_config
from tokendyn.app.store import stored_config
from tokendyn.engine.observables import cluster_labels, effective_dimension, pair_logsumexp
from tokendyn.errors import ConfigError
from tokendyn.theory.multiscale import (
    Merge,
    closest_pair,
    fourier_modes,
    pair_merge_time,
    sequential_merges,
    top_eigenspace,
    transverse_mass,
)

MACRO_FRACTION = 0.01
ALIGNED_FRACTION = 1e-2
FORMED_FRACTION = 0.9
FOURIER_MODES = 12


@dataclass
class Clusters:
    count: int
    masses: list[float]
    centres: list[list[float]]
    radii: list[float]  # RMS distance of the members to their mean

    def formed(self, threshold: float) -> bool:
        """Clusters have formed: they hold ≥ FORMED_FRACTION of the tokens and are tight (RMS
        radius ≤ threshold), not chains of close neighbours."""
        tight = max(self.radii, default=math.inf) <= threshold
        return sum(self.masses) >= FORMED_FRACTION and tight


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


def run_matrices(cfg: SimulationConfig) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The run's Q, K, V, rebuilt from its config and seed."""
    return make_matrices(cfg, torch.Generator().manual_seed(cfg.seed))


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


def log_normalised_energy(
    x: torch.Tensor, Q: torch.Tensor, K: torch.Tensor, beta: float
) -> torch.Tensor:
    """log Ê, Ê = (1/N²) Σ_ij e^{β(⟨Qx_i, Kx_j⟩ − λ_max(S))}, S = QᵀK (λ_max of its symmetric
    part): Σ_k α_k² once clustered on E_max. The pair sum is the engine's `pair_logsumexp`."""
    S = (K.T @ Q).to(torch.float64)
    lam = float(torch.linalg.eigvalsh((S + S.T) / 2)[-1])
    q, k = (x @ M.to(x.dtype).T for M in (Q, K))
    return pair_logsumexp(beta * q, k) - 2 * math.log(x.shape[0]) - beta * lam


def diagnostics(ds: xr.Dataset) -> xr.Dataset:
    """Per-frame ε_⊥, participation ratio, normalised energy, macroscopic cluster count, the
    fraction of tokens in macroscopic clusters and their largest radius, for a stored single-cloud
    run; when E_max is a plane, also the Fourier moduli |μ̂_k|, k = 1 … 12, of the azimuth on it
    (heat limit: |μ̂_k| ∝ e^{γk²t/β})."""
    cfg = make_config(**stored_config(ds))
    Q, K, V = run_matrices(cfg)
    basis = top_eigenspace((V @ K.T @ Q).numpy())
    x_all = torch.as_tensor(ds["x"].values, dtype=torch.float64)
    if x_all.dim() != 3:
        raise ValueError("x: phase diagnostics take a single-cloud run (dims time, token, dim)")
    rows = []
    n = x_all.shape[1]
    for x in x_all:
        clusters = macroscopic_clusters(x, cfg.cluster_threshold)
        log_energy = float(log_normalised_energy(x, Q, K, cfg.beta))
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
    if basis.shape[1] == 2:
        # Heat phase on a circle E_max ∩ S: |μ̂_k| of the azimuth in E_max's basis.
        modes = fourier_modes(x_all @ torch.as_tensor(basis), FOURIER_MODES)
        out["fourier_modes"] = (("time", "mode"), modes)
        out = out.assign_coords(mode=np.arange(1, FOURIER_MODES + 1))
    out.attrs.update(n=n, beta=cfg.beta, e_max_dim=basis.shape[1])
    return out


def alignment_time_predicted(cfg: SimulationConfig) -> float | None:
    """Time for ε_⊥ to fall by ALIGNED_FRACTION at the limit rate 2(Re λ₁ − Re λ₂) of M = V KᵀQ
    (None when M has a single eigenvalue level)."""
    Q, K, V = run_matrices(cfg)
    levels = np.unique(np.round(np.linalg.eigvals((V @ K.T @ Q).numpy()).real, 12))[::-1]
    if len(levels) < 2:
        return None
    return math.log(1 / ALIGNED_FRACTION) / (2 * (levels[0] - levels[1]))


def pairing_scale(Q: np.ndarray, K: np.ndarray, V: np.ndarray) -> tuple[float, float] | None:
    """(λ, c) when the pairing theorem applies on E_max: S = QᵀK symmetric, V = cS with c > 0, and
    S = λI on E_max. There ⟨Qx, Ky⟩ = λ⟨x, y⟩ and Vx = cλx, so clusters on E_max pair as under
    Q = K = V = I with β_eff = λβ and time running cλ times faster. None otherwise."""
    S = K.T @ Q
    scale = float(np.abs(S).max())
    if scale == 0 or not np.allclose(S, S.T, atol=1e-12 * scale):
        return None
    c = float(np.sum(V * S) / np.sum(S * S))
    if c <= 0 or not np.allclose(V, c * S, atol=1e-12 * max(scale, float(np.abs(V).max()))):
        return None
    basis = top_eigenspace(V @ S)
    restricted = basis.T @ S @ basis
    lam = float(restricted[0, 0])
    if lam <= 0 or not np.allclose(restricted, lam * np.eye(basis.shape[1]), atol=1e-9 * scale):
        return None
    return lam, c


def _first_merge_predicted(ds: xr.Dataset, cfg: SimulationConfig, formed: int) -> float | None:
    """Formation time + the isolated-pair time for the closest macroscopic clusters (their masses)
    to come within the cluster threshold, when the pairing theorem applies (`pairing_scale`)."""
    Q, K, V = (m.numpy() for m in run_matrices(cfg))
    scale = pairing_scale(Q, K, V)
    if scale is None:
        return None
    lam, c = scale
    x = torch.as_tensor(ds["x"].isel(time=formed).values, dtype=torch.float64)
    clusters = macroscopic_clusters(x, cfg.cluster_threshold)
    if clusters.count < 2:
        return None
    i, j, theta = closest_pair(torch.tensor(clusters.centres, dtype=torch.float64))
    if theta <= cfg.cluster_threshold:
        return None
    time = pair_merge_time(
        theta, lam * cfg.beta, cfg.cluster_threshold, clusters.masses[i], clusters.masses[j]
    )
    return float(ds["time"].values[formed]) + time / (c * lam)


def detect_phases(ds: xr.Dataset, diag: xr.Dataset | None = None) -> Phases:
    """Detected phase times of a stored run, with the limits' predictions (`diag`: its
    `diagnostics`, computed here when not given)."""
    cfg = make_config(**stored_config(ds))
    diag = diagnostics(ds) if diag is None else diag
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


def reduced_continuation(ds: xr.Dataset, t_max: float = math.inf) -> list[Merge]:
    """Continue a stored run past its last frame with the reduced model: its macroscopic clusters
    become weighted Diracs (masses = token fractions) merged one pair at a time
    (`sequential_merges`, adaptive steps) until one cluster or t_max. Needs the pairing setting
    (`pairing_scale`) and tight clusters in the last frame. Merge times are absolute run times."""
    cfg = make_config(**stored_config(ds))
    Q, K, V = (m.numpy() for m in run_matrices(cfg))
    scale = pairing_scale(Q, K, V)
    if scale is None:
        raise ConfigError(
            "Q, K, V",
            "the pairing theorem needs QᵀK = S symmetric, V = cS (c > 0) and S = λI on E_max",
            "continue such runs with the particle engine (tokendyn simulate --resume)",
        )
    lam, c = scale
    last = torch.as_tensor(ds["x"].isel(time=-1).values, dtype=torch.float64)
    if last.dim() != 2:
        raise ConfigError("x", "is a batch of clouds", "continue a single-cloud run")
    clusters = macroscopic_clusters(last, cfg.cluster_threshold)
    if not clusters.formed(cfg.cluster_threshold):
        raise ConfigError(
            "run",
            "its last frame has no tight macroscopic clusters yet",
            "simulate longer (tokendyn simulate --resume with a larger --t-end) first",
        )
    t_end = float(ds["time"].values[-1])
    masses = torch.tensor(clusters.masses, dtype=torch.float64)
    centres = torch.tensor(clusters.centres, dtype=torch.float64)
    # On E_max the clusters pair as under Q = K = V = I at β_eff = λβ, with time scaled by cλ.
    events = sequential_merges(
        centres, masses, lam * cfg.beta, cfg.cluster_threshold, (t_max - t_end) * c * lam
    )
    for event in events:
        event.time = t_end + event.time / (c * lam)
    return events
