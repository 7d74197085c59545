"""The paper's scenarios (multiscale spec §4) as particle runs beside their limits.

1a: Q = K = I, V = diag(1, ½, ¼), uniform on S², β = 30 — collapse onto ±e₁ (PR → 1).
1b: Q = K = I, V = [[1, −1, 0], [1, 1, 0], [0, 0, ½]] (eigenvalues 1 ± i, ½) — collapse onto the
    xy great circle (PR → 2) and rigid rotation of the azimuth at rate ω ∈ [I₁(β)/I₀(β), 1].
2a: Q = I, K = V = S = diag(1, 1, ½), β = 10, azimuths from a wrapped-normal mixture (σ₀ = 0.2),
    elevation uniform — backward heat on the xy-circle: clusters at the mixture means with the
    mixture weights as masses.
2b: S¹, Q = K = I, V = −I, β = 50, three wrapped normals — forward heat; each component's variance
    follows βσ² + ln σ² = βσ₀² + ln σ₀² + 2t (finite-β law).
Appendix E: as 2a with four components; the normalised energy Ê against log t through the three
    time scales, continued past the particle run by the reduced model (weighted Diracs).
The integrator is the paper's: explicit Euler, then renormalisation.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from matplotlib.figure import Figure
from scipy.special import ive

from tokendyn.app.phases import log_normalised_energy, macroscopic_clusters
from tokendyn.app.simulate import simulate
from tokendyn.engine.attention import Head, SoftmaxAttention
from tokendyn.engine.initial import uniform_sphere, wrapped_normal_mixture
from tokendyn.engine.observables import effective_dimension
from tokendyn.engine.space import Sphere
from tokendyn.studies.common import Check
from tokendyn.theory.multiscale import (
    alignment_flow,
    heat_variance,
    sequential_merges,
    top_eigenspace,
    transverse_mass,
    wrapped_normal_density,
)
from tokendyn.viz.plot import draw_cloud_3d

F64 = torch.float64
Figures = list[tuple[Path, str]]
SNAPSHOTS = (0.0, 0.5, 1.5, 5.0)  # spec §4 [R]
V_1A = np.diag([1.0, 0.5, 0.25])
V_1B = np.array([[1.0, -1.0, 0.0], [1.0, 1.0, 0.0], [0.0, 0.0, 0.5]])
S_2A = np.diag([1.0, 1.0, 0.5])


def _run(
    Q: np.ndarray, K: np.ndarray, V: np.ndarray, beta: float, x0: torch.Tensor, **kwargs
) -> tuple[np.ndarray, np.ndarray]:
    """Times and frames (T, N, d) of SA on the sphere, explicit Euler + renormalisation."""
    head = Head(*(torch.as_tensor(m, dtype=F64) for m in (Q, K, V)), beta)
    ds = simulate(SoftmaxAttention([head]), Sphere(x0.shape[-1]), x0, method="euler", **kwargs)
    return ds["time"].values, ds["x"].values


def _azimuth(x: np.ndarray) -> np.ndarray:
    return np.arctan2(x[..., 1], x[..., 0])


def _snapshot(ax, times: np.ndarray, frames: np.ndarray, t: float, name: str) -> None:
    """The cloud on S² at the saved time nearest t (at most 3000 tokens drawn)."""
    k = int(np.argmin(np.abs(times - t)))
    draw_cloud_3d(ax, frames[k][:3000], sphere=True, labels=("x", "y", "z"))
    ax.set_title(f"{name}: t = {t:g}", fontsize=9)


def rotation_rate(times: np.ndarray, frames: np.ndarray) -> float:
    """Mean angular velocity of the azimuth: the circular mean of the per-frame increments e^{iΔφ}
    (no unwrapping needed while |Δφ| < π), summed and divided by the elapsed time."""
    steps = np.angle(np.exp(1j * np.diff(_azimuth(frames), axis=0)).mean(axis=1))
    return float(steps.sum() / (times[-1] - times[0]))


def scenario_1(quick: bool, out_dir: Path) -> tuple[list[Check], Figures]:
    """Scenarios 1a and 1b: snapshots at t ∈ {0, 0.5, 1.5, 5}, ε_⊥ and PR against the β → ∞ flow."""
    n, beta, dt = (2000 if quick else 10_000), 30.0, 0.01
    x0 = uniform_sphere(1, n, 3, torch.Generator().manual_seed(3))[0]
    eye = np.eye(3)
    checks: list[Check] = []
    fig = Figure(figsize=(16, 8.2))
    grid = fig.add_gridspec(2, 5)
    for row, (name, V) in enumerate((("1a", V_1A), ("1b", V_1B))):
        times, frames = _run(eye, eye, V, beta, x0, t_end=SNAPSHOTS[-1], dt=dt, save_every=10)
        basis = top_eigenspace(V)
        x = torch.as_tensor(frames)
        eps = transverse_mass(x, basis).numpy()
        pr = effective_dimension(x).numpy()
        limit = [alignment_flow(x0, float(t), eye, eye, V) for t in times]
        eps_limit = [float(transverse_mass(y, basis)) for y in limit]
        pr_limit = [float(effective_dimension(y)) for y in limit]
        for col, t in enumerate(SNAPSHOTS):
            _snapshot(fig.add_subplot(grid[row, col], projection="3d"), times, frames, t, name)
        ax = fig.add_subplot(grid[row, 4])
        ax.semilogy(times, eps, label="ε_⊥, particles")
        ax.semilogy(times, eps_limit, "--", label="ε_⊥, β → ∞ flow")
        ax2 = ax.twinx()
        ax2.plot(times, pr, "C2", label="PR, particles")
        ax2.plot(times, pr_limit, "C2:", label="PR, β → ∞ flow")
        ax2.set_ylabel("participation ratio")
        ax.set(xlabel="t", ylabel="transverse mass ε_⊥", title=f"Scenario {name}, β = {beta:g}")
        ax.legend(fontsize=7, loc="lower left")
        ax2.legend(fontsize=7, loc="upper right")
        if name == "1a":
            # The limit flow keeps sign(x₁) (e^{tV} is diagonal): each token goes to sign(x₁(0))e₁.
            agree = float((np.sign(frames[-1][:, 0]) == np.sign(frames[0][:, 0])).mean())
            checks.append(
                Check(
                    "multiscale: scenario 1a, tokens reaching the pole ±e₁ of the β → ∞ flow",
                    1.0,
                    agree,
                    beta**-0.5,
                    "at_least",
                    note="only tokens within the kernel width β^{-1/2} of x₁ = 0 (a fraction "
                    f"β^{{-1/2}} = {beta**-0.5:.3f} of uniform data) may be captured across; "
                    f"PR(5) = {pr[-1]:.3f} (flow: {pr_limit[-1]:.3f})",
                )
            )
        if name == "1b":
            late = times >= SNAPSHOTS[2]
            omega = rotation_rate(times[late], frames[late])
            floor = float(ive(1, beta) / ive(0, beta))
            checks.append(
                Check(
                    "multiscale: scenario 1b, rotation rate of the azimuth (t ∈ [1.5, 5])",
                    1.0,
                    omega,
                    1.0 - floor,
                    note=f"ω = ⟨m_i, x_i⟩ ∈ [I₁(β)/I₀(β), 1] = [{floor:.4f}, 1]",
                )
            )
    fig.tight_layout()
    path = out_dir / "multiscale_scenario_1.png"
    fig.savefig(path, dpi=90)
    return checks, [
        (
            path,
            "Scenarios 1a (top: collapse onto ±e₁) and 1b (bottom: onto the xy great circle, "
            "rotating): snapshots, transverse mass and participation ratio against the β → ∞ flow.",
        )
    ]


def _components(x0: np.ndarray, centres: list[float]) -> np.ndarray:
    """Mixture component of each token: the nearest centre in azimuth (exact for components
    farther apart than ~10σ₀: misassignment probability Φ(−gap/2σ₀))."""
    gaps = np.angle(np.exp(1j * (_azimuth(x0)[:, None] - np.asarray(centres))))
    return np.abs(gaps).argmin(axis=1)


def _azimuth_histograms(
    axes: list,
    times: np.ndarray,
    frames: np.ndarray,
    shown: tuple[float, ...],
    mixture: tuple[list[float], list[float], float],
    beta: float,
    gamma: int,
) -> None:
    """Histograms of the azimuth at the shown times against the mixture with every component's
    variance from the heat limit (dashed) and from the finite-β law (solid)."""
    centres, weights, sigma0 = mixture
    theta = np.linspace(-np.pi, np.pi, 721)
    for ax, t in zip(axes, shown, strict=True):
        k = int(np.argmin(np.abs(times - t)))
        ax.hist(_azimuth(frames[k]), bins=180, range=(-np.pi, np.pi), density=True, alpha=0.5)
        for finite, style, label in ((False, "r--", "heat limit"), (True, "r-", "finite-β law")):
            var = heat_variance(sigma0, float(times[k]), beta, gamma, finite_beta=finite)
            if math.isfinite(var):
                density = wrapped_normal_density(theta, centres, weights, [var] * len(centres))
                ax.plot(theta, density, style, lw=1, label=label)
        ax.set(xlabel="azimuth θ", title=f"t = {times[k]:.3g}")
        ax.legend(fontsize=7)


def scenario_2a(quick: bool, out_dir: Path) -> tuple[list[Check], Figures]:
    """Backward heat on S²: Q = I, K = V = diag(1, 1, ½), β = 10, three azimuth components
    (σ₀ = 0.2, elevation uniform). Clusters at the mixture means with the mixture weights."""
    n, beta, dt, sigma0 = (3000 if quick else 10_000), 10.0, 0.01, 0.2
    centres, weights = [0.0, 2.1, 4.2], [0.5, 0.3, 0.2]
    x0 = wrapped_normal_mixture(1, n, 3, centres, weights, sigma0, torch.Generator().manual_seed(4))
    times, frames = _run(np.eye(3), S_2A, S_2A, beta, x0[0], t_end=6.0, dt=dt, save_every=5)
    clusters = macroscopic_clusters(torch.as_tensor(frames[-1]), 0.05)
    found = np.array([math.atan2(c[1], c[0]) for c in clusters.centres])
    # Match each mixture component to the nearest cluster centre (in azimuth).
    offsets = np.angle(np.exp(1j * (found[None, :] - np.asarray(centres)[:, None])))
    nearest = np.abs(offsets).argmin(axis=1)
    errors = np.abs(offsets[np.arange(len(centres)), nearest])
    noise = sigma0 / np.sqrt(n * np.asarray(weights))  # standard error of a component's mean
    masses = np.array(clusters.masses)[nearest]
    realised = np.bincount(_components(frames[0], centres), minlength=len(centres)) / n
    checks = [
        Check(
            "multiscale: scenario 2a, cluster centres vs mixture means (max error / std. error)",
            0.0,
            float((errors / noise).max()),
            4.0,
            "at_most",
            note=f"{clusters.count} clusters at t = 6; errors {np.round(errors, 4).tolist()} rad; "
            f"std. errors σ₀/√(Nα_j) = {np.round(noise, 4).tolist()}; masses "
            f"{np.round(masses, 3).tolist()} vs realised weights {np.round(realised, 3).tolist()}",
        )
    ]
    fig = Figure(figsize=(16, 7.6))
    grid = fig.add_gridspec(2, 4)
    for col, t in enumerate((0.0, 0.5, 2.0, 6.0)):
        _snapshot(fig.add_subplot(grid[0, col], projection="3d"), times, frames, t, "2a")
    axes = [fig.add_subplot(grid[1, col]) for col in range(3)]
    _azimuth_histograms(axes, times, frames, (0.0, 0.1, 0.15), (centres, weights, sigma0), beta, 1)
    ax = fig.add_subplot(grid[1, 3])
    ax.bar(np.arange(3) - 0.2, weights, 0.4, label="mixture weights α_j")
    ax.bar(np.arange(3) + 0.2, masses, 0.4, label="cluster masses (t = 6)")
    ax.set_xticks(range(3), [f"m = {c:g}" for c in centres])
    ax.set(title="masses", ylabel="fraction of tokens")
    ax.legend(fontsize=7)
    fig.tight_layout()
    path = out_dir / "multiscale_scenario_2a.png"
    fig.savefig(path, dpi=90)
    return checks, [
        (
            path,
            "Scenario 2a (backward heat on S², β = 10): snapshots; azimuth histograms against the "
            "backward heat solution (collapse at t = βσ₀²/2 = 0.2); cluster masses vs weights.",
        )
    ]


def appendix_energy(quick: bool, out_dir: Path) -> tuple[list[Check], Figures]:
    """Appendix E: Ê = (1/N²) Σ e^{β(⟨x_i, S x_j⟩ − 1)} against log t for four azimuth components
    (2a matrices, β = 10): alignment (t = O(1)), heat collapse (t ≈ βσ₀²/2), then pairing. The
    particle run covers the first merge; the reduced model (weighted Diracs at the measured masses
    and centres) continues to one cluster. First merge: particles vs the isolated-pair integral."""
    n, beta, sigma0 = (2000 if quick else 10_000), 10.0, 0.2
    centres, weights = [0.0, 1.2, 2.6, 4.3], [0.3, 0.2, 0.3, 0.2]
    x0 = wrapped_normal_mixture(1, n, 3, centres, weights, sigma0, torch.Generator().manual_seed(5))
    eye, S = np.eye(3), torch.as_tensor(S_2A)
    early_t, early = _run(eye, S_2A, S_2A, beta, x0[0], t_end=1.0, dt=0.01, save_every=1)
    late_t, late = _run(
        eye, S_2A, S_2A, beta, torch.as_tensor(early[-1]), t_end=39.0, dt=0.05, save_every=2
    )
    times = np.concatenate([early_t, 1.0 + late_t[1:]])
    frames = np.concatenate([early, late[1:]])
    eye_t = torch.eye(3, dtype=F64)
    energy = np.exp(
        [float(log_normalised_energy(torch.as_tensor(x), eye_t, S, beta)) for x in frames]
    )
    formed, first_merge = None, None
    for k in range(len(early_t), len(frames)):  # clusters are not formed before t = 1
        clusters = macroscopic_clusters(torch.as_tensor(frames[k]), 0.05)
        if formed is None and clusters.formed(0.05):
            formed = (k, clusters)
        elif formed is not None and clusters.count < formed[1].count:
            first_merge = float(times[k])
            break
    checks: list[Check] = []
    if formed is None:
        raise RuntimeError("appendix E: the clusters did not form within the particle run")
    k_formed, at_formation = formed
    t_formed = float(times[k_formed])
    points = torch.as_tensor(at_formation.centres, dtype=F64)[:, :2]
    points = points / points.norm(dim=-1, keepdim=True)
    masses = torch.tensor(at_formation.masses, dtype=F64)
    events = sequential_merges(points, masses, beta)  # S = I on E_max: β_eff = β, V = I
    plateau = float((masses / masses.sum()).pow(2).sum())
    k_plateau = int(np.searchsorted(times, 2 * t_formed))
    gram = points @ points.T
    alpha = masses / masses.sum()
    off = float(alpha @ (torch.exp(beta * (gram - 1)) - torch.eye(len(alpha), dtype=F64)) @ alpha)
    checks.append(
        Check(
            "multiscale: appendix E, Ê plateau after formation vs Σα_k² of the clusters",
            plateau,
            float(energy[k_plateau]),
            off + 1e-3,
            note=f"t = {times[k_plateau]:.3g}; tolerance: the off-diagonal terms "
            "Σ_{k≠l} α_kα_l e^{β(cos θ_kl − 1)} plus 1e-3 for the residual cluster widths",
        )
    )
    predicted = t_formed + events[0].time
    checks.append(
        Check(
            "multiscale: appendix E, first merge of the particle run vs the pair integral",
            predicted,
            first_merge if first_merge is not None else math.nan,
            0.025 * events[0].time + 2 * (times[-1] - times[-2]),
            note="prediction from the clusters at formation (t = "
            f"{t_formed:.3g}); tolerance: rate correction βr² ≤ 2.5 % for cluster radii r ≤ 0.05, "
            "plus two frame spacings",
        )
    )
    fig = Figure(figsize=(8, 4.4))
    ax = fig.add_subplot()
    ax.plot(times[1:], energy[1:], label=f"particles (N = {n})")
    t_steps = [t_formed + e.time for e in events]
    e_steps = [e.energy_after for e in events]
    ax.step(
        [t_formed, *t_steps, t_steps[-1] * 3],
        [plateau, *e_steps, e_steps[-1]],
        "k--",
        where="post",
        lw=1,
        label="reduced model (weighted Diracs)",
    )
    for t, label, colour in (
        (1.0, "alignment O(1)", "C1"),
        (beta * sigma0**2 / 2, "heat collapse βσ₀²/2", "C2"),
    ):
        ax.axvline(t, color=colour, lw=1, ls=":", label=label)
    for j, t in enumerate(t_steps):
        ax.axvline(t, color="C3", lw=1, ls=":", label="pair integral" if j == 0 else None)
    ax.set_xscale("log")
    ax.set(
        xlabel="t (log)",
        ylabel="normalised energy Ê",
        title=f"Energy through the three time scales (β = {beta:g}, four components)",
    )
    ax.legend(fontsize=8)
    fig.tight_layout()
    path = out_dir / "multiscale_energy_log_time.png"
    fig.savefig(path, dpi=110)
    return checks, [
        (
            path,
            "Appendix E: Ê against log t — alignment, heat collapse, then the staircase of "
            "pairings (particles until t = 40, then the reduced model of weighted Diracs).",
        )
    ]


def component_variances(frames: np.ndarray, labels: np.ndarray, k: int) -> np.ndarray:
    """Circular variance −2 ln R of each component's azimuths per frame, (T, k)."""
    phases = np.exp(1j * _azimuth(frames))
    resultant = np.stack([np.abs(phases[:, labels == j].mean(axis=1)) for j in range(k)], axis=1)
    return -2 * np.log(resultant)


def scenario_2b(quick: bool, out_dir: Path) -> tuple[list[Check], Figures]:
    """Forward heat on S¹: Q = K = I, V = −I, β = 50, three wrapped normals with σ₀ = 0.15
    (βσ₀² = 1.1: widths comparable to β^{-1/2}, so the finite-β correction shows)."""
    n, dt = (5000, 5e-3) if quick else (20_000, 1e-3)
    beta, sigma0, t_end = 50.0, 0.15, 1.0
    centres, weights = [0.0, 2.1, 4.2], [0.4, 0.35, 0.25]
    x0 = wrapped_normal_mixture(1, n, 2, centres, weights, sigma0, torch.Generator().manual_seed(6))
    eye = np.eye(2)
    times, frames = _run(eye, eye, -eye, beta, x0[0], t_end=t_end, dt=dt, save_every=20)
    labels = _components(frames[0], centres)
    increments = component_variances(frames, labels, 3)
    increments = increments - increments[0]
    # Bootstrap the tokens of each component for the standard error of the final increment.
    rng = np.random.default_rng(0)
    boot = []
    for _ in range(200):
        pick = rng.integers(0, n, n)
        v = component_variances(frames[[0, -1]][:, pick], labels[pick], 3)
        boot.append(v[1] - v[0])
    stderr = np.std(boot, axis=0)
    finite = np.array([heat_variance(sigma0, t, beta, -1) for t in times]) - sigma0**2
    heat = np.array([heat_variance(sigma0, t, beta, -1, False) for t in times]) - sigma0**2
    worst = np.abs(increments[-1] - finite[-1]) / (4 * stderr + dt * finite[-1])
    checks = [
        Check(
            "multiscale: scenario 2b, component variance increments vs finite-β law "
            "(max |error| / tolerance)",
            0.0,
            float(worst.max()),
            1.0,
            "at_most",
            note=f"t = {t_end:g}: increments {np.round(increments[-1], 5).tolist()} vs "
            f"{finite[-1]:.5f} (heat limit {heat[-1]:.5f}); tolerance 4 bootstrap std. errors "
            f"{np.round(4 * stderr, 5).tolist()} + dt·increment (Euler)",
        )
    ]
    fig = Figure(figsize=(16, 3.8))
    axes = fig.subplots(1, 4)
    _azimuth_histograms(
        list(axes[:3]), times, frames, (0.0, 0.5, 1.0), (centres, weights, sigma0), beta, -1
    )
    ax = axes[3]
    for j in range(3):
        ax.plot(times, increments[:, j], ".", ms=4, label=f"component m = {centres[j]:g}")
    ax.plot(times, finite, "k-", label="finite-β law")
    ax.plot(times, heat, "k--", label="heat limit 2t/β")
    ax.set(xlabel="t", ylabel="σ²(t) − σ₀²", title=f"Forward heat, β = {beta:g}, N = {n}")
    ax.legend(fontsize=7)
    fig.tight_layout()
    path = out_dir / "multiscale_scenario_2b.png"
    fig.savefig(path, dpi=90)
    return checks, [
        (
            path,
            "Scenario 2b (forward heat on S¹, V = −I, β = 50): azimuth histograms against the "
            "forward heat solution; each component's variance against the finite-β law.",
        )
    ]
