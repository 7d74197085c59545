"""Time scales of the three phases against N under β = c·ln N (multiscale spec §2.3, §3.4, §4 2a).

Scenario 2a: tokens on S², Q = I, K = V = S = diag(1, 1, ½), so E_max is the xy-plane and S = I
there (β_eff = β, time unscaled); azimuths from two wrapped normals (centres 0 and 1 rad, equal
weights, σ₀ = 0.2), elevations uniform. For each N the particle system (Euler + renormalisation,
the paper's scheme) gives three times, detected with the definitions of `meanfield.phases`:

* alignment done — ε_⊥ has fallen to 1 % of its start (log-interpolated between frames). Limit:
  ε_⊥ ∝ e^{−2(λ₁−λ₂)t} for M = V KᵀQ = S² (`alignment_time_predicted`), and the β → ∞ flow
  x = e^{τM}x₀/|·| run on the initial cloud. Both are independent of N: time O(1).
* clusters formed — macroscopic clusters hold ≥ 90 % of the tokens with RMS radius ≤ r (the
  cluster threshold). Finite-β heat law on the plane, βσ² + ln σ² = βσ₀² + ln σ₀² − 2t, gives the
  in-plane collapse σ₀ → r in t_heat = [β(σ₀² − r²) + ln(σ₀²/r²)]/2 (∝ β for large β, but at
  σ₀ = 0.2 the β-part βσ₀²/2 is only ≈ 0.3). The collapse overlaps with alignment, so t_heat
  (collapse from t = 0) and t_align + t_heat (collapse only after alignment) bracket it.
* first merge — the macroscopic cluster count drops. Prediction: formation time + the isolated
  pair integral T(θ → r) = ∫ dθ/|θ'| ≈ e^{β(1−cos θ)}/(2β sin²θ) from the two clusters measured
  at formation (angle θ, masses α_i, α_j), i.e. growth like N^{c(1−cos θ)}/ln N.

Where a particle run to the merge is too costly (large N, full mode) it stops after formation and
the clusters, as weighted Diracs, are carried to the merge by the reduced model
(`run_until_merge`, adaptive DOP853); those points are drawn hollow. Moderate interaction needs
N β^{−(k−1)/2} → ∞ on E_max (k = 2): it is reported for every N.
"""

from __future__ import annotations

import math
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import xarray as xr
from matplotlib.figure import Figure
from matplotlib.ticker import NullFormatter, NullLocator, ScalarFormatter

from tokendyn.app.config import SimulationConfig, make_config
from tokendyn.app.phases import ALIGNED_FRACTION, alignment_time_predicted, macroscopic_clusters
from tokendyn.app.run import run_simulation
from tokendyn.studies.common import Check
from tokendyn.theory.multiscale import (
    alignment_flow,
    closest_pair,
    pair_merge_time,
    run_until_merge,
    top_eigenspace,
    transverse_mass,
)

F64 = torch.float64
S_DIAG = (1.0, 1.0, 0.5)
CENTRES = (0.0, 1.0)
SIGMA0 = 0.2
C_LAW = 2.0
THRESHOLD = 1e-2
E_MAX_DIM = 2
MAJOR_FRACTION = 0.1  # clusters of the mixture, not tail fragments (≥ 1 % but < 10 % of N)


@dataclass
class Times:
    """Measured and predicted times for one N (None: not reached)."""

    n: int
    beta: float
    alignment: float | None
    formed: float | None
    merge: float | None
    merge_predicted: float | None
    theta_formed: float | None
    reduced: bool  # merge from the reduced (weighted-Dirac) model after formation
    frame_dt: float

    @property
    def moderate(self) -> float:
        """N β^{−(k−1)/2}, k = dim E_max."""
        return self.n * self.beta ** (-(E_MAX_DIM - 1) / 2)


def scenario_config(
    n: int, t_end: float, dt: float, save_every: int, seed: int = 0
) -> SimulationConfig:
    """Scenario 2a with β = C_LAW·ln N (Euler, float64, no per-frame statistics)."""
    s = [[S_DIAG[i] if i == j else 0.0 for j in range(3)] for i in range(3)]
    eye = [[1.0 if i == j else 0.0 for j in range(3)] for i in range(3)]
    return make_config(
        n=n,
        d=3,
        beta_law=f"{C_LAW}*log(N)",
        init="mixture",
        init_centers=list(CENTRES),
        init_std=SIGMA0,
        Q=eye,
        K=s,
        V=s,
        t_end=t_end,
        dt=dt,
        method="euler",
        save_every=save_every,
        seed=seed,
        cluster_threshold=THRESHOLD,
        stats=[],
        dtype="float64",
    )


def alignment_crossing(times: np.ndarray, eps: np.ndarray) -> float | None:
    """First time ε_⊥ ≤ ALIGNED_FRACTION·ε_⊥(0), log-linearly interpolated between frames."""
    target = ALIGNED_FRACTION * eps[0]
    hit = np.flatnonzero(eps <= target)
    if not hit.size or hit[0] == 0:
        return None
    k = int(hit[0])
    frac = math.log(eps[k - 1] / target) / math.log(eps[k - 1] / max(eps[k], 1e-300))
    return float(times[k - 1] + frac * (times[k] - times[k - 1]))


def measure(cfg: SimulationConfig, ds: xr.Dataset) -> tuple[float | None, int | None, int | None]:
    """(alignment time, index of the formation frame, index of the first-merge frame). A merge is
    a drop in the number of major clusters (≥ MAJOR_FRACTION of N): at small N, tail fragments of
    ≥ 1 % of the tokens count as macroscopic and join the main clusters within O(1) time."""
    x_all = torch.as_tensor(ds["x"].values, dtype=F64)
    times = ds["time"].values
    m = np.diag(S_DIAG) @ np.diag(S_DIAG)  # V KᵀQ
    eps = transverse_mass(x_all, top_eigenspace(m)).numpy()
    formed = merge = None
    count = 0
    for k in range(len(times)):
        clusters = macroscopic_clusters(x_all[k], cfg.cluster_threshold)
        major = sum(m >= MAJOR_FRACTION for m in clusters.masses)
        if formed is None:
            if clusters.formed(cfg.cluster_threshold):
                formed, count = k, major
        elif major < count:
            merge = k
            break
    return alignment_crossing(times, eps), formed, merge


def heat_formation_time(beta: float, sigma0: float = SIGMA0, r: float = THRESHOLD) -> float:
    """In-plane collapse σ₀ → r under βσ² + ln σ² = βσ₀² + ln σ₀² − 2t (finite-β heat law)."""
    return (beta * (sigma0**2 - r**2) + math.log(sigma0**2 / r**2)) / 2


def limit_flow_alignment(n: int = 2000, t_max: float = 10.0, step: float = 0.05) -> float:
    """ε_⊥ 1 %-crossing of the β → ∞ flow ẋ = P_x(Mx)/|KᵀQx| run on the scenario's initial law."""
    cfg = scenario_config(n, step, step, 1)
    from tokendyn.app.build import build

    x = build(cfg)[2][0].to(F64)
    s = np.diag(S_DIAG)
    basis = top_eigenspace(s @ s)
    times, eps = [0.0], [float(transverse_mass(x, basis))]
    while times[-1] < t_max and eps[-1] > ALIGNED_FRACTION * eps[0]:
        x = alignment_flow(x, step, np.eye(3), s, s, dt=step / 5)
        times.append(times[-1] + step)
        eps.append(float(transverse_mass(x, basis)))
    return alignment_crossing(np.array(times), np.array(eps)) or math.nan


def time_scales(
    n: int, *, dt: float = 0.1, save_every: int = 2, t_form: float = 12.0, to_merge: bool = True
) -> Times:
    """Measure one N: particles to t_form (alignment, formation); then either particles on to the
    predicted merge (+30 %, extended once if needed; resumed zarr store) or the reduced model."""
    frame_dt = dt * save_every
    with tempfile.TemporaryDirectory() as tmp:
        store = Path(tmp) / "run.zarr"
        cfg = scenario_config(n, t_form, dt, save_every)
        ds = run_simulation(cfg, out=store)
        align, formed, merge = measure(cfg, ds)
        out = Times(n, cfg.beta, align, None, None, None, None, not to_merge, frame_dt)
        if formed is None:
            return out
        out.formed = float(ds["time"].values[formed])
        x_f = torch.as_tensor(ds["x"].values[formed], dtype=F64)
        clusters = macroscopic_clusters(x_f, cfg.cluster_threshold)
        major = [k for k, m in enumerate(clusters.masses) if m >= MAJOR_FRACTION]
        masses = [clusters.masses[k] for k in major]
        centres = torch.tensor([clusters.centres[k] for k in major], dtype=F64)
        if len(masses) < 2:
            return out
        i, j, theta = closest_pair(centres)
        out.theta_formed = theta
        pair = pair_merge_time(theta, cfg.beta, cfg.cluster_threshold, masses[i], masses[j])
        out.merge_predicted = out.formed + pair
        if not to_merge:
            alpha = torch.tensor(masses, dtype=F64)
            t_red, _, _ = run_until_merge(centres, alpha, cfg.beta, cfg.cluster_threshold)
            out.merge = out.formed + t_red
            return out
        t_end = t_form
        for factor in (1.1, 2.0):
            if merge is not None:
                break
            t_end = frame_dt * math.ceil(max(t_end, factor * out.merge_predicted) / frame_dt)
            cfg = scenario_config(n, t_end, dt, save_every)
            ds = run_simulation(cfg, out=store, resume=True)
            _, _, merge = measure(cfg, ds)
        if merge is not None:
            out.merge = float(ds["time"].values[merge])
        return out


def time_scales_vs_n(quick: bool, out_dir: Path) -> tuple[list[Check], list[tuple[Path, str]]]:
    """Alignment, formation and first-merge times against N at β = 2 ln N, with their limits;
    writes multiscale_time_scales.png."""
    out_dir.mkdir(parents=True, exist_ok=True)
    particle_ns = [800, 1600, 3200]
    reduced_ns = [] if quick else [10000, 30000]
    rows = [time_scales(n) for n in particle_ns]
    rows += [time_scales(n, to_merge=False) for n in reduced_ns]
    cfg0 = scenario_config(particle_ns[0], 1.0, 0.05, 1)
    align_rate = alignment_time_predicted(cfg0) or math.nan
    align_flow = limit_flow_alignment()
    checks: list[Check] = []

    particles = [r for r in rows if not r.reduced and r.merge and r.merge_predicted]
    frame = particles[0].frame_dt if particles else math.nan
    # Merge: frames bound the detection to +frame_dt; the Diracs-vs-clusters and stragglers
    # (≤ 10 % of mass outside) shift the integral by a few %: allow 10 % + one frame.
    rel = [(r.merge - r.merge_predicted) / r.merge_predicted for r in particles]
    worst = max(rel, key=abs) if rel else math.nan
    min_t = min((r.merge_predicted for r in particles), default=math.nan)
    checks.append(
        Check(
            "multiscale: first merge (particles) vs formation + pair integral, worst rel. error",
            0.0,
            float(worst),
            0.10 + frame / min_t,
            note=f"β = {C_LAW:g} ln N, N = {', '.join(str(r.n) for r in particles)}; "
            f"frames every {frame:g}",
        )
    )
    aligned = [r.alignment for r in rows if r.alignment is not None]
    spread = (max(aligned) - min(aligned)) / float(np.mean(aligned)) if aligned else math.nan
    checks.append(
        Check(
            "multiscale: alignment time O(1) in N, relative spread (max−min)/mean",
            0.0,
            spread,
            0.15,
            "at_most",
            note=f"times {', '.join(f'{a:.2f}' for a in aligned)}; limit rate gives "
            f"{align_rate:.2f}, β → ∞ flow {align_flow:.2f}; finite-β clustering speeds it",
        )
    )
    if len(particles) >= 2:
        first, last = particles[0], particles[-1]
        span = math.log(last.n / first.n)
        measured = math.log((last.merge - last.formed) / (first.merge - first.formed)) / span
        predicted = (
            math.log((last.merge_predicted - last.formed) / (first.merge_predicted - first.formed))
            / span
        )
        # one frame of error at each end of the two (merge − formation) spans
        tol = 2 * frame / (first.merge - first.formed) + 2 * frame / (last.merge - last.formed)
        checks.append(
            Check(
                "multiscale: growth exponent of (merge − formation) in N vs pair integral",
                predicted,
                measured,
                tol / span + 0.1,
                note=f"asymptotic c(1−cos θ) = "
                f"{C_LAW * (1 - math.cos(float(np.mean([r.theta_formed for r in particles])))):.2f}"
                " at the mean θ at formation, minus 1/ln N from the 1/(2β sin²θ) prefactor",
            )
        )

    figure = _figure(rows, align_rate, align_flow, out_dir / "multiscale_time_scales.png")
    caption = (
        f"Time scales vs N at β = {C_LAW:g} ln N (Scenario 2a, S², two wrapped normals 1 rad "
        "apart): alignment O(1), formation ≈ alignment + finite-β heat collapse, first merge "
        "≈ e^{β(1−cos θ)}; hollow markers: merge from the reduced weighted-Dirac model."
    )
    return checks, [(figure, caption)]


def _figure(rows: list[Times], align_rate: float, align_flow: float, path: Path) -> Path:
    fig = Figure(figsize=(7.2, 4.4))
    ax = fig.add_subplot()
    ns = np.array([r.n for r in rows], dtype=float)
    grid = np.geomspace(ns.min() * 0.8, ns.max() * 1.25, 60)
    betas = C_LAW * np.log(grid)
    ax.plot(ns, [r.alignment or np.nan for r in rows], "o", color="C0", label="alignment done")
    ax.axhline(align_rate, color="C0", ls=":", lw=1, label="limit rate 2(λ₁−λ₂)")
    ax.axhline(align_flow, color="C0", ls="--", lw=1, label="β → ∞ flow")
    ax.plot(ns, [r.formed or np.nan for r in rows], "s", color="C1", label="clusters formed")
    heat = np.array([heat_formation_time(b) for b in betas])
    ax.plot(grid, heat, ":", color="C1", lw=1, label="heat law alone (lower)")
    ax.plot(
        grid, align_flow + heat, "--", color="C1", lw=1, label="β→∞ alignment, then heat (upper)"
    )
    for reduced, face in ((False, "C2"), (True, "none")):
        sel = [r for r in rows if r.reduced == reduced and r.merge is not None]
        if sel:
            ax.plot(
                [r.n for r in sel],
                [r.merge for r in sel],
                "^",
                color="C2",
                mfc=face,
                label="first merge" + (" (reduced model)" if reduced else " (particles)"),
            )
    pred = [(r.n, r.merge_predicted) for r in rows if r.merge_predicted]
    if pred:
        ax.plot(
            *zip(*pred, strict=True), "x-", color="k", lw=0.8, label="formation + pair integral"
        )
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set(xlabel="N  (β = 2 ln N)", ylabel="time t (depth)", title="Time scales of the phases")
    top_t = 1.3 * max(
        [r.merge or 0.0 for r in rows] + [r.merge_predicted or 0.0 for r in rows] + [10.0]
    )
    ax.set_yticks([t for t in (3, 5, 10, 20, 30, 50, 100, 200, 500, 1000) if t <= top_t])
    ax.yaxis.set_major_formatter(ScalarFormatter())
    ax.yaxis.set_minor_formatter(NullFormatter())
    ax.set_ylim(2.5, top_t)
    ax.set_xticks(ns, [str(r.n) for r in rows])
    ax.xaxis.set_minor_locator(NullLocator())
    top = ax.secondary_xaxis("top")
    top.set_xticks(ns, [f"{r.moderate:.0f}" for r in rows])
    top.xaxis.set_minor_locator(NullLocator())
    top.set_xlabel("N β^{-(k-1)/2}  (k = 2)")
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return path
