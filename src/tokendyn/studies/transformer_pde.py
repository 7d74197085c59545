"""Transformer PDE (Castin, Ablin, Carrillo, Peyré 2025): Gaussian closure, the released code's
d = 2 experiments E1–E6 and rank histograms, particles of the core engine against the closure
(cases G1, G2) and the mean-field limit of every attention variant (spec §4–§6)."""

from __future__ import annotations

from pathlib import Path

import matplotlib
import numpy as np
from matplotlib.figure import Figure

from tokendyn.studies.common import Check, Section
from tokendyn.studies.paper_setups import experiments, init_grid, rank_systems, to_uwv
from tokendyn.studies.particle_limit import LIMIT_VARIANTS, limit_experiment
from tokendyn.studies.particles_vs_closure import coupling_experiment, fit_slope
from tokendyn.theory import VIClosedForm, authors_scheme, make_closure, solve_closure

G_Q = np.array([[1.0, 0.3], [0.0, 0.8]])
G_MEAN = np.array([0.5, -0.3])
G_COV = np.array([[1.0, 0.4], [0.4, 0.6]])
G2_V = np.array([[1.0, 0.5], [-0.3, 0.8]])


def tail_index(Q: np.ndarray, K: np.ndarray, beta: float, cov: np.ndarray) -> float:
    """κ = β²‖Σ^{1/2} KᵀQ Σ^{1/2}‖₂²: the softmax weights e^{β yᵀA x} of y ~ N(α, Σ) seen from
    x ~ N(α, Σ) have a finite mean-square relative error only if κ < 1/2 (E e^{xᵀPx} < ∞ with
    P = β²AᵀΣA); below it the synchronous-coupling error is O(N^{−1/2})."""
    lam, U = np.linalg.eigh(cov)
    S = (U * np.sqrt(lam)) @ U.T
    return float(beta**2 * np.linalg.norm(S @ K.T @ Q @ S, 2) ** 2)


# ------------------------------------------------------------------------------------------------
# E1–E6


def _cone_axes(fig: Figure, pos: int, n: int, title: str):
    ax = fig.add_subplot(2, n, pos, projection="3d")
    ax.set_title(title, fontsize=9)
    ax.set_axis_off()
    return ax


def _draw_cone(ax, scale: float) -> None:
    th, r = np.meshgrid(np.linspace(0, 2 * np.pi, 60), np.linspace(0, scale, 12))
    ax.plot_surface(r * np.cos(th), r * np.sin(th), r, alpha=0.07, color="k", linewidth=0)


def plot_experiment(exp, runs: dict, path: Path) -> None:
    """Top row: trajectories in the cone (u, w, v); bottom: trace-normalised disk (u/v, w/v)."""
    n = len(runs)
    fig = Figure(figsize=(3.3 * n, 6.4))
    for i, (label, run) in enumerate(runs.items()):
        uwv = to_uwv(run.path)  # (steps, B, 3)
        colour = (uwv[0, :, 1] - uwv[0, :, 1].min()) / max(np.ptp(uwv[0, :, 1]), 1e-12)
        cmap = matplotlib.colormaps["viridis"]
        ax = _cone_axes(fig, i + 1, n, f"{exp.key} {label}")
        finite = np.isfinite(uwv).all(-1)
        scale = float(np.nanmax(np.where(finite, uwv[..., 2], np.nan)))
        _draw_cone(ax, min(scale, 50.0))
        disk = fig.add_subplot(2, n, n + i + 1)
        for b in range(uwv.shape[1]):
            p = uwv[:, b]
            keep = p[:, 2] < 50.0
            ax.plot(p[keep, 0], p[keep, 1], p[keep, 2], color=cmap(colour[b]), lw=0.6, alpha=0.6)
            disk.plot(
                p[:, 0] / p[:, 2], p[:, 1] / p[:, 2], color=cmap(colour[b]), lw=0.6, alpha=0.6
            )
            disk.plot(p[-1, 0] / p[-1, 2], p[-1, 1] / p[-1, 2], ".", color=cmap(colour[b]), ms=2)
        if "q_perp" in exp.extra and label in ("softmax", "l2"):
            qp = exp.extra["q_perp"]
            ray = to_uwv(np.outer(qp, qp)[None])[0]
            t = np.linspace(0, min(scale, 50.0), 2)
            ax.plot(ray[0] * t, ray[1] * t, ray[2] * t, "k", lw=1)
        th = np.linspace(0, 2 * np.pi, 200)
        disk.plot(np.cos(th), np.sin(th), "k", lw=0.8, alpha=0.5)
        disk.set_aspect("equal")
        disk.set_xticks([])
        disk.set_yticks([])
    fig.suptitle(f"{exp.key}: {exp.title} (colour: initial w = 2Σ₁₂)")
    fig.tight_layout()
    fig.savefig(path, dpi=90)


def run_experiments(quick: bool, out_dir: Path, section: Section) -> None:
    quick_grid = {"E4": (10, -1.0, 1.0), "E5": (12, -1.0, 1.0), "E6": (12, -1.0, 1.0)}
    for exp in experiments():
        grid = quick_grid.get(exp.key, exp.grid) if quick else exp.grid
        covs = init_grid(*grid)
        runs = {}
        for r in exp.runs:
            closure = make_closure(
                r.attention, exp.Q, exp.K, exp.V, 1.0, r.heads, scaling="authors"
            )
            max_iter = min(r.max_iter, 5_000) if quick and exp.key in quick_grid else r.max_iter
            label = r.attention if r.heads == 1 or r.attention != "multihead" else "multihead H=2"
            runs[label] = authors_scheme(
                closure, covs, r.h, tol_low=r.tol_low, tol_high=r.tol_high, max_iter=max_iter,
                save_every=max(1, max_iter // 400),
            )  # fmt: skip
        path = out_dir / f"transformer_pde_{exp.key}.png"
        plot_experiment(exp, runs, path)
        counts = "; ".join(
            f"{k}: "
            + ", ".join(
                f"{s} {c}" for s, c in zip(*np.unique(v.status, return_counts=True), strict=True)
            )
            for k, v in runs.items()
        )
        caption = (f"{exp.key} '{exp.title}', authors' projected Euler on the "
                   f"{grid[0]}×{grid[0]} grid over [{grid[1]}, {grid[2]}]² ({len(covs)} "
                   f"trace-1 Σ₀). {counts}. {exp.note}")  # fmt: skip
        section.figures.append((path, caption))
        if exp.key == "E1":
            frac = np.mean([np.all(v.status == "converged") for v in runs.values()])
            worst = max(float(np.trace(v.final, axis1=1, axis2=2).max()) for v in runs.values())
            section.checks.append(
                Check(
                    "E1: every run converges to Σ = 0 (fraction of variants)",
                    1.0,
                    float(frac),
                    0.0,
                    note=f"max final tr Σ {worst:.2e}",
                )
            )
        if exp.key == "E2":
            e2_checks(exp, runs, covs, section)
        if exp.key == "E5":
            soft = runs["softmax"].final
            shape = soft / np.trace(soft, axis1=1, axis2=2)[:, None, None]
            uw = to_uwv(shape)
            radius = np.hypot(uw[:, 0], uw[:, 1]) / uw[:, 2]
            section.checks.append(Check("E5 softmax: Σ/tr Σ reaches the rank-one circle (min |.|)",
                                        1.0, float(radius.min()), 0.05, "at_least"))  # fmt: skip
            blowup_checks(exp, section)


def e2_checks(exp, runs: dict, covs: np.ndarray, section: Section) -> None:
    """E2 (V = I, K = −q, rank-one q): limits on the ray q⊥q⊥ᵀ; accurate solver to ‖F‖ < 1e-12,
    and the authors' scheme, whose stop at ‖F‖ < 1e-4 leaves an O(1/t) gap (t ≈ 100)."""
    qp = exp.extra["q_perp"]
    ray = np.outer(qp, qp)
    c = make_closure("softmax", exp.Q, exp.K, exp.V, 1.0, scaling="authors")
    accurate = max(
        float(np.abs(solve_closure(c, [0, 0], cov0, 1e9, converge_tol=1e-12).shape - ray).max())
        for cov0 in covs[::20]
    )
    section.checks.append(Check("E2: limits Σ∞/tr Σ∞ on the ray q⊥q⊥ᵀ (accurate solver)", 0.0,
                                accurate, 1e-4, "at_most", note="5 grid points"))  # fmt: skip
    euler = max(float(np.abs(v.final / np.trace(v.final, axis1=1, axis2=2)[:, None, None]
                             - ray).max()) for v in runs.values())  # fmt: skip
    section.checks.append(Check("E2: same, authors' projected Euler (stop ‖F‖ < 1e-4)", 0.0,
                                euler, 0.06, "at_most", note="O(1/t) gap at t ≈ 100"))  # fmt: skip


def blowup_checks(exp, section: Section) -> None:
    """E5 (V = I, A + Aᵀ ≻ 0): solver's T* and shape against the closed form (§4.2)."""
    closure = make_closure("softmax", exp.Q, exp.K, exp.V, 1.0, scaling="authors")
    cov0 = np.array([[0.6, 0.1], [0.1, 0.4]])
    exact = VIClosedForm.from_closure(closure, np.zeros(2), cov0)
    sol = solve_closure(closure, np.zeros(2), cov0, 100.0, rtol=1e-13, atol=1e-15,
                        blowup_trace=1e10)  # fmt: skip
    section.checks.append(Check("closure: blow-up time T* (E5 softmax, Σ₀ = [[.6,.1],[.1,.4]])",
                                exact.blowup_time, sol.blowup_time, 1e-9 * exact.blowup_time,
                                note="T* = 1/(vβ λ_max(Σ₀^{1/2}(A+Aᵀ)Σ₀^{1/2})); solver: event "
                                "at tr Σ = 1e10·tr Σ₀, extrapolated"))  # fmt: skip
    section.checks.append(Check("closure: shape Σ/tr Σ at blow-up vs S u uᵀ S (max deviation)",
                                0.0, float(np.abs(sol.shape - exact.blowup_shape).max()), 1e-6,
                                "at_most"))  # fmt: skip


# ------------------------------------------------------------------------------------------------
# rank histograms


def rank_histograms(quick: bool, out_dir: Path, section: Section) -> None:
    per_dim = 2 if quick else 100
    steps = {("softmax", "identity"): ((0.09, 0.05, 0.02), 1e-4, 60_000),
             ("softmax", "random"): ((0.09, 0.06, 0.02), 5e-5, 90_000),
             ("l2", "identity"): ((0.09, 0.06, 0.02), 1e-4, 60_000),
             ("l2", "random"): ((0.15, 0.15, 0.15), 5e-5, 50_000)}  # fmt: skip
    for attention in ("softmax", "l2"):
        fig = Figure(figsize=(12, 7))
        exact_ok = []
        for row, value in enumerate(("identity", "random")):
            hs, tol, max_iter = steps[(attention, value)]
            cap = min(max_iter, 3_000) if quick else max_iter
            systems = rank_systems(value, per_dim, attention)
            for col, d in enumerate((3, 4, 5)):
                euler, eig_exact = [], []
                for s in (s for s in systems if s.d == d):
                    c = make_closure(attention, s.Q, -s.Q, s.V, 1.0, scaling="authors")
                    run = authors_scheme(c, s.cov0[None], hs[col], tol_low=tol,
                                         max_iter=cap)  # fmt: skip
                    if run.status[0] == "converged":
                        euler.append(int((np.linalg.eigvalsh(run.final[0]) > 0.1).sum()))
                    if value == "identity":  # exact limit Σ₀ − Σ₀Qᵀ(QΣ₀Qᵀ)⁻¹QΣ₀ (§4.2)
                        S0, Q = s.cov0, s.Q
                        eig = np.linalg.eigvalsh(
                            S0 - S0 @ Q.T @ np.linalg.solve(Q @ S0 @ Q.T, Q @ S0)
                        )
                        exact_ok.append(int((eig > 1e-10 * eig.max()).sum()) == (d + 1) // 2)
                    else:
                        sol = solve_closure(c, np.zeros(d), s.cov0, 1e7, converge_tol=1e-9)
                        eig = np.linalg.eigvalsh(sol.cov[-1])
                    eig_exact.append(eig)
                ax = fig.add_subplot(4, 3, 6 * row + col + 1)
                bins = np.arange(d + 2) - 0.5
                ax.hist(euler, bins=bins, alpha=0.6, label="authors' Euler, eig > 0.1")
                ax.hist([int((e > 0.1).sum()) for e in eig_exact], bins=bins, histtype="step",
                        color="k", label="accurate, eig > 0.1")  # fmt: skip
                ax.set_title(f"V {value}, d = {d}", fontsize=9)
                if row == col == 0:
                    ax.legend(fontsize=7)
                ax2 = fig.add_subplot(4, 3, 6 * row + col + 4)
                for e in eig_exact:
                    ax2.semilogy(range(1, d + 1), np.clip(e, 1e-12, None), "o-", ms=2, lw=0.5)
                ax2.axhline(0.1, color="r", lw=0.6)
                ax2.set_xlabel("eigenvalue index (accurate limit)", fontsize=8)
        fig.tight_layout()
        path = out_dir / f"transformer_pde_rank_{attention}.png"
        fig.savefig(path, dpi=90)
        section.figures.append((path, (
            f"Rank histograms, {attention} (K = −Q, Q ∈ R^(⌊d/2⌋×d), {per_dim} systems per d): "
            "bars = the authors' projected Euler (their h, tolerances, rank threshold 0.1; runs "
            "not converged within the iteration cap are left out, quick mode caps at 3000); "
            "black = "
            "accurate limits (V = I: the exact Σ∞; V random: DOP853 to convergence) with the same "
            "threshold; below: eigenvalues "
            "of the accurate limits (red: 0.1).")))  # fmt: skip
        section.checks.append(Check(
            f"rank, {attention}, V = I: accurate limits have exact rank ⌈d/2⌉ (fraction)",
            1.0, float(np.mean(exact_ok)), 0.0, note="rank = #eig > 1e-10·max eig"))  # fmt: skip


# ------------------------------------------------------------------------------------------------
# particles vs closure


def exact_solution_check(section: Section) -> None:
    closure = make_closure("softmax", G_Q, -G_Q, np.eye(2), 1.0)
    exact = VIClosedForm.from_closure(closure, G_MEAN, G_COV)
    sol = solve_closure(closure, G_MEAN, G_COV, 1.0, rtol=1e-13, atol=1e-15)
    err_c = np.abs(sol.cov[-1] - exact.cov(1.0)).max() / np.abs(exact.cov(1.0)).max()
    err_m = np.abs(sol.mean[-1] - exact.mean(1.0)).max() / np.abs(exact.mean(1.0)).max()
    section.checks.append(Check("closure: V = I exact Σ(1) vs solver (G1, relative)", 0.0,
                                float(err_c), 1e-9, "at_most"))  # fmt: skip
    section.checks.append(Check("closure: V = I exact α(1) vs solver (G1, relative)", 0.0,
                                float(err_m), 1e-9, "at_most"))  # fmt: skip


def g1(quick: bool, out_dir: Path, section: Section) -> None:
    ns = [256, 1024, 4096] if quick else [256, 1024, 4096, 16384]
    seeds = 4 if quick else 8
    closure = make_closure("softmax", G_Q, -G_Q, np.eye(2), 1.0)
    res = [coupling_experiment(closure, G_MEAN, G_COV, n, seeds, seed=n) for n in ns]
    fig = Figure(figsize=(10, 4))
    ax, ax2 = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
    for r in res:
        ax.semilogy(r.times, r.bw.mean(0), label=f"N = {r.n}")
    ax.set_xlabel("t")
    ax.set_ylabel("Bures–Wasserstein(particles, closure)")
    ax.legend(fontsize=8)
    for key, label in (("cov_err", "‖Cov_N − Σ‖"), ("sampling", "sampling part"),
                       ("interaction", "interaction part")):  # fmt: skip
        vals = [getattr(r, key).mean() for r in res]
        ax2.loglog(ns, vals, "o-", label=f"{label} (slope {fit_slope(ns, vals):.2f})")
    ax2.set_xlabel("N")
    ax2.legend(fontsize=8)
    fig.tight_layout()
    path = out_dir / "transformer_pde_G1.png"
    fig.savefig(path, dpi=90)
    cov_slope = fit_slope(ns, [r.cov_err.mean() for r in res])
    section.figures.append(
        (
            path,
            (
                "G1 (softmax, β = 1, Q = [[1, .3], [0, .8]], K = −Q, V = I; RK4 h = 0.05, "
                f"{seeds} seeds): left, Bures–Wasserstein distance between the particles' "
                "moment-matched Gaussian and the closure over time; right, ‖Cov_N(1) − Σ(1)‖_F "
                "split into the initial-sampling part "
                "(exact flow map applied to the same x_i(0)) and the interaction part."
            ),
        )
    )
    section.checks.append(Check("G1: slope of ‖Cov_N(1) − Σ(1)‖ in N", -0.5, cov_slope, 0.2,
                                note=f"N = {ns}; spec expects −0.3 … −0.5"))  # fmt: skip


def g2(quick: bool, out_dir: Path, section: Section) -> None:
    cases = [(0.25, [128, 512, 2048] if not quick else [64, 256, 1024])]
    if not quick:
        cases.append((1.0, [128, 512, 2048, 8192]))
    seeds = 48 if quick else 32
    fig = Figure(figsize=(6, 4.2))
    ax = fig.add_subplot(1, 1, 1)
    for beta, ns in cases:
        closure = make_closure("softmax", G_Q, -G_Q, G2_V, beta)
        kappa = tail_index(G_Q, -G_Q, beta, G_COV)
        rms = [coupling_experiment(closure, G_MEAN, G_COV, n, seeds, seed=7 + n).rms.mean()
               for n in ns]  # fmt: skip
        slope = fit_slope(ns, rms)
        ax.loglog(ns, rms, "o-", label=f"β = {beta:g} (κ = {kappa:.2f}): slope {slope:.3f}")
        if kappa < 0.5:
            section.checks.append(
                Check(
                    f"G2 synchronous coupling: slope of RMS|x_i(1) − Φx_i(0) − c| (β = {beta:g})",
                    -0.5,
                    slope,
                    0.1,
                    note=f"N = {ns}, RMS = {np.round(rms, 4).tolist()}, {seeds} seeds, "
                    f"κ = {kappa:.2f}",
                )
            )
        else:
            section.checks.append(
                Check(
                    "G2 as specified (β = 1, heavy-tailed weights): coupling RMS still decays",
                    -0.25,
                    slope,
                    0.0,
                    "at_most",
                    note=f"κ = {kappa:.2f} > 1/2 (N^(−1/2) needs κ < 1/2); N = {ns}, "
                    f"RMS = {np.round(rms, 4).tolist()}",
                )
            )
    ref_ns = np.array(cases[0][1], float)
    ax.loglog(ref_ns, 1.5 * ref_ns**-0.5, "k--", lw=0.8, label="N^(−1/2)")
    ax.set_xlabel("N")
    ax.set_ylabel("RMS coupling error at t = 1")
    ax.legend(fontsize=8)
    fig.tight_layout()
    path = out_dir / "transformer_pde_G2.png"
    fig.savefig(path, dpi=90)
    section.figures.append(
        (
            path,
            (
                "G2 (softmax, Q = [[1, .3], [0, .8]], K = −Q, V = [[1, .5], [−.3, .8]], T = 1): "
                "RMS over tokens of |x_i(1) − (Φx_i(0) + c)|, particles (core engine, RK4 "
                "h = 0.05) against the closure's flow map from the same x_i(0), mean over "
                f"{seeds} seeds. κ = β²‖Σ₀^½AΣ₀^½‖² measures the tails of the attention weights "
                "(finite mean-square error iff κ < 1/2)."
            ),
        )
    )


def meanfield_limit(quick: bool, out_dir: Path, section: Section) -> None:
    ns = [16, 32, 64] if quick else [64, 128, 256, 512]
    seeds = 2 if quick else 3
    for variant in LIMIT_VARIANTS:
        res = limit_experiment(variant, ns, seeds, dt=0.25 if quick else 0.1,
                               save_every=2 if quick else 5)  # fmt: skip
        fig = Figure(figsize=(5, 3.8))
        ax = fig.add_subplot(1, 1, 1)
        slopes = res.slopes
        for j, t in enumerate(res.times):
            ax.loglog(
                ns, res.dist[:, :, j].mean(1), "o-", label=f"t = {t:g}: slope {slopes[j]:.2f}"
            )
        ax.set_xlabel("N")
        ax.set_ylabel("W₂,λ" if variant == "masked" else "W₂")
        ax.set_title(f"{variant}: N tokens vs {16 * max(ns)}-token reference", fontsize=9)
        ax.legend(fontsize=8)
        fig.tight_layout()
        path = out_dir / f"transformer_pde_limit_{variant}.png"
        fig.savefig(path, dpi=90)
        section.figures.append(
            (
                path,
                (
                    f"Mean-field limit, {variant} (d = 2, β = 1, Q, K, V ~ N(0, 1/d), uniform "
                    f"disk data, {seeds} seeds): distance to a 16·N_max reference over time. "
                    "Prediction (§6.2): the slope at t equals the slope at t = 0 (stability); "
                    "FG bound ≤ −1/4."
                ),
            )
        )
        ratio = res.dist[:, :, -1].mean(1) / res.dist[:, :, 0].mean(1)
        section.checks.append(Check(
            f"limit {variant}: W_T/W_0 uniform in N (max/min over N)", 1.0,
            float(ratio.max() / ratio.min()), 0.5, "at_most",
            note=f"slopes t=0: {slopes[0]:.2f}, t=T: {slopes[-1]:.2f}"))  # fmt: skip
        section.checks.append(Check(f"limit {variant}: slope at t = 0 (FG bound −1/4)", -0.25,
                                    float(slopes[0]), 0.0, "at_most"))  # fmt: skip


def run(quick: bool, out_dir: Path) -> Section:
    out_dir.mkdir(parents=True, exist_ok=True)
    section = Section(
        title="Transformer PDE: Gaussian closure and mean-field limits",
        intro=(
            "Gaussian closure α' = Mα + b, Σ' = MΣ + ΣMᵀ for softmax, multi-head, L2 and Sinkhorn "
            "attention (spec §3), the released code's d = 2 experiments E1–E6 and rank histograms "
            "(§5), particles of the core engine against the closure (G1, G2) and the mean-field "
            "limit of every variant (§6)."
        ),
        command="tokendyn reproduce --quick --section transformer_pde",
    )
    counts = [len(init_grid(n, lo, hi)) for n, lo, hi in
              ((10, -0.5, 0.5), (20, -1, 1), (30, -1, 1), (40, -1, 1))]  # fmt: skip
    section.checks.append(Check("grid: points kept for 10/20/30/40 grids (sum; 100+276+648+1184)",
                                2208.0, float(sum(counts)), 0.0))  # fmt: skip
    exact_solution_check(section)
    run_experiments(quick, out_dir, section)
    rank_histograms(quick, out_dir, section)
    g1(quick, out_dir, section)
    g2(quick, out_dir, section)
    meanfield_limit(quick, out_dir, section)
    return section
