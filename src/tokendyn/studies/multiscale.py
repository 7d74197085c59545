"""Multiscale dynamics in the moderate interaction regime (multiscale spec): the three phases
against their limits — alignment (β → ∞ flow), heat (finite-β width law), pairing (pair integral,
sequential merging and the energy staircase) — then the paper's scenarios
(`multiscale_scenarios`) and the time scales against N (`multiscale_scaling`)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from matplotlib.figure import Figure
from matplotlib.ticker import NullLocator

from tokendyn.app.simulate import simulate
from tokendyn.engine.attention import Head, SoftmaxAttention
from tokendyn.engine.initial import uniform_sphere, wrapped_normal_mixture
from tokendyn.engine.observables import cluster_count
from tokendyn.engine.space import Sphere
from tokendyn.studies.common import Check, Section
from tokendyn.studies.multiscale_scaling import time_scales_vs_n
from tokendyn.studies.multiscale_scenarios import (
    appendix_energy,
    scenario_1,
    scenario_2a,
    scenario_2b,
)
from tokendyn.theory.multiscale import (
    alignment_flow,
    angles_to_points,
    heat_variance,
    normalised_energy,
    pair_merge_time,
    pair_merge_time_asymptotic,
    run_until_merge,
    selected_mode,
    sequential_merges,
)

F64 = torch.float64


def alignment_errors(betas: list[float], n: int, seed: int = 0) -> list[float]:
    """RMS distance at t = 1 between SA tokens (Scenario 1a: Q = K = I, V = diag(1, ½, ¼)) and the
    β → ∞ flow x = e^{tV}x₀/|·|."""
    x0 = uniform_sphere(1, n, 3, torch.Generator().manual_seed(seed))[0]
    eye = torch.eye(3, dtype=F64)
    V = torch.diag(torch.tensor([1.0, 0.5, 0.25], dtype=F64))
    limit = alignment_flow(x0, 1.0, np.eye(3), np.eye(3), V.numpy())
    errors = []
    for beta in betas:
        ds = simulate(
            SoftmaxAttention([Head(eye, eye, V, beta)]), Sphere(3), x0, t_end=1.0, dt=0.05
        )
        x = torch.as_tensor(ds["x"].values[-1])
        errors.append(float((x - limit).norm(dim=-1).pow(2).mean().sqrt()))
    return errors


def heat_increments(
    beta: float, sigma0: float, n: int, t_end: float
) -> tuple[np.ndarray, np.ndarray]:
    """Times and variance increments (from t = 0, estimator −2 ln R), one forward wrapped normal."""
    x0 = wrapped_normal_mixture(1, n, 2, [0.0], None, sigma0, torch.Generator().manual_seed(1))[0]
    eye = torch.eye(2, dtype=F64)
    ds = simulate(
        SoftmaxAttention([Head(eye, eye, -eye, beta)]),
        Sphere(2),
        x0,
        t_end=t_end,
        dt=0.02,
        save_every=10,
    )
    x = ds["x"].values
    resultant = np.abs(np.exp(1j * np.arctan2(x[..., 1], x[..., 0])).mean(axis=1))
    return ds["time"].values, -2 * np.log(resultant) + 2 * np.log(resultant[0])


def clusters_from_uniform(beta: float, n: int, seed: int = 0) -> int:
    """Clusters (gap 0.05) at t = 12 from N uniform tokens on S¹, Q = K = V = I."""
    x0 = uniform_sphere(1, n, 2, torch.Generator().manual_seed(seed))[0]
    eye = torch.eye(2, dtype=F64)
    ds = simulate(
        SoftmaxAttention([Head(eye, eye, eye, beta)]),
        Sphere(2),
        x0,
        t_end=12.0,
        dt=0.05,
        save_every=240,
    )
    return int(cluster_count(torch.as_tensor(ds["x"].values[-1]), 0.05))


def run(quick: bool, out_dir: Path) -> Section:
    out_dir.mkdir(parents=True, exist_ok=True)
    section = Section(
        title="Multiscale dynamics (moderate interaction regime)",
        intro=(
            "Bruno, Pasqualotto & Agazzi: alignment onto E_max in time O(1), a heat equation on it "
            "in time O(β), then pairing of clusters in time e^{β(1−⟨x,y⟩)}. Simulations of the "
            "particle engine against each limit."
        ),
        command="tokendyn reproduce --quick --section multiscale",
    )
    checks, figures = section.checks, section.figures

    # Alignment: error against the β → ∞ flow decreases with β.
    betas = [2.0, 8.0, 32.0]
    errors = alignment_errors(betas, 1500 if quick else 4000)
    checks.append(
        Check(
            "multiscale: alignment limit approached, error(β=32)/error(β=2)",
            0.0,
            errors[-1] / errors[0],
            0.25,
            "at_most",
            note="Scenario 1a, t = 1; O(1/β) until the finite-N floor",
        )
    )

    # Heat: the finite-β width law.
    beta_h, sigma0 = 50.0, 0.3
    times, increments = heat_increments(beta_h, sigma0, 1500 if quick else 5000, 1.0)
    finite = np.array([heat_variance(sigma0, t, beta_h, -1) for t in times]) - sigma0**2
    heat = (
        np.array([heat_variance(sigma0, t, beta_h, -1, finite_beta=False) for t in times])
        - sigma0**2
    )
    checks.append(
        Check(
            "multiscale: forward heat, variance increment at t=1 vs finite-β law",
            float(finite[-1]),
            float(increments[-1]),
            0.05 * float(finite[-1]),
            note=f"β = 50, σ₀ = 0.3; the pure heat law gives {heat[-1]:.4f}",
        )
    )

    # Heat phase from uniform data: the fastest mode k*(β) = argmax k² I_k(β) sets the count.
    mode_betas = [8.0, 20.0] if quick else [4.0, 8.0, 14.0, 20.0, 32.0, 50.0]
    counts = [clusters_from_uniform(b, 1500 if quick else 3000) for b in mode_betas]
    worst_mode = max(abs(c - selected_mode(b)) for c, b in zip(counts, mode_betas, strict=True))
    checks.append(
        Check(
            "multiscale: clusters from uniform data vs k*(β) (max |difference|)",
            0.0,
            float(worst_mode),
            1.0,
            "at_most",
            note="noise-born clusters: their random phases move the count by ±1",
        )
    )

    # Pairing: merge time against β.
    beta_grid = (
        [5.0, 10.0, 15.0, 20.0, 30.0] if quick else [5.0, 10.0, 15.0, 20.0, 25.0, 30.0, 35.0, 40.0]
    )
    simulated = [
        run_until_merge(angles_to_points([0.0, 1.0]), torch.ones(2, dtype=F64), b)[0]
        for b in beta_grid
    ]
    exact = [pair_merge_time(1.0, b) for b in beta_grid]
    asymptotic = [pair_merge_time_asymptotic(1.0, b) for b in beta_grid]
    worst = max(abs(s / e - 1) for s, e in zip(simulated, exact, strict=True))
    checks.append(
        Check(
            "multiscale: two-token merge time vs exact pair integral (max rel. error)",
            0.0,
            worst,
            1e-6,
            "at_most",
            note="adaptive DOP853, rtol 1e-10, β = 5 … 40",
        )
    )

    # Sequential merging: staircase of the normalised energy.
    beta_s = 12.0
    masses = [1.0, 1.0, 2.0, 1.5]
    start = angles_to_points([0.0, 0.9, 2.1, 3.3])
    events = sequential_merges(
        start,
        torch.tensor(masses, dtype=F64),
        beta_s,
    )
    alpha = np.array(masses) / sum(masses)
    plateau = [float((alpha**2).sum())]
    plateau += [float(((np.array(e.masses) / sum(masses)) ** 2).sum()) for e in events]
    deviation = max(abs(e.energy_after - p) for e, p in zip(events, plateau[1:], strict=True))
    checks.append(
        Check(
            "multiscale: Ê after each merge vs the Σα² staircase (max deviation)",
            0.0,
            deviation,
            0.02,
            "at_most",
            note="off-diagonal terms ≤ e^{β(cos θ−1)} for the remaining clusters",
        )
    )

    fig = Figure(figsize=(16, 3.8))
    ax1, ax2, ax4, ax3 = fig.subplots(1, 4)
    grid = np.linspace(2, max(mode_betas) * 1.1, 200)
    ax4.plot(grid, [selected_mode(b) for b in grid], "-", label="k*(β) = argmax k² I_k(β)")
    ax4.plot(grid, np.sqrt(2 * grid), ":", label="√(2β)")
    ax4.plot(mode_betas, counts, "o", label="clusters at t = 12")
    ax4.set(xlabel="β", ylabel="clusters", title="From uniform data on S¹")
    ax4.legend(fontsize=8)
    ax1.loglog(betas, errors, "o-")
    ax1.set_xticks(betas, [f"{b:g}" for b in betas], minor=False)
    ax1.xaxis.set_minor_locator(NullLocator())
    ax1.set(xlabel="β", ylabel="RMS distance to the limit flow", title="Alignment (t = 1)")
    ax2.plot(times, increments, "o", label="particles")
    ax2.plot(times, finite, "-", label="finite-β law")
    ax2.plot(times, heat, "--", label="heat limit")
    ax2.set(xlabel="t", ylabel="σ²(t) − σ₀²", title=f"Forward heat, β = {beta_h:g}")
    ax2.legend()
    ax3.semilogy(beta_grid, simulated, "o", label="simulated (adaptive)")
    ax3.semilogy(beta_grid, exact, "-", label="exact pair integral")
    ax3.semilogy(beta_grid, asymptotic, "--", label="e^{β(1−cos θ)}/(2β sin²θ)")
    ax3.set(xlabel="β", ylabel="merge time (θ₀ = 1 → 0.05)", title="Pairing")
    ax3.legend(fontsize=8)
    fig.tight_layout()
    path = out_dir / "multiscale_phases.png"
    fig.savefig(path, dpi=110)
    figures.append(
        (
            path,
            "Alignment error vs β; forward-heat variance vs the finite-β and heat laws; "
            "clusters born from uniform data vs k*(β); merge time vs β.",
        )
    )

    fig = Figure(figsize=(6.4, 3.8))
    ax = fig.add_subplot()
    times_s = [1e-2] + [e.time for e in events]
    energies = [normalised_energy(start, torch.tensor(masses, dtype=F64), beta_s)]
    energies += [e.energy_after for e in events]
    ax.step(times_s, energies, where="post", label="Ê at merges")
    ax.plot(times_s, plateau, "k.", label="Σα² plateaus")
    ax.set_xscale("log")
    ax.set(
        xlabel="t (log)",
        ylabel="normalised energy Ê",
        title=f"Sequential merging of 4 clusters, β = {beta_s:g}",
    )
    ax.legend()
    fig.tight_layout()
    path = out_dir / "multiscale_staircase.png"
    fig.savefig(path, dpi=110)
    figures.append(
        (path, "Energy staircase: Ê jumps by 2α_iα_j at each merge, times e^{β(1−cos θ)}.")
    )

    # The paper's scenarios from particle runs, and the time scales against N.
    for part in (scenario_1, scenario_2a, scenario_2b, appendix_energy, time_scales_vs_n):
        more_checks, more_figures = part(quick, out_dir)
        checks.extend(more_checks)
        figures.extend(more_figures)
    return section
