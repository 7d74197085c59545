"""The particle engine's own checks against exact solutions, invariances and monotone quantities.

Two tokens on the circle with Q = K = V = I: with gap φ = θ₂ − θ₁ the tangent velocities give
    softmax (SA):    φ' = −2 sin φ / (1 + e^{β(1 − cos φ)})
    unnormalised:    φ' = −e^{β cos φ} sin φ        (normaliser N = 2)
integrated to 1e-13 with SciPy (DOP853) as the reference.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from matplotlib.figure import Figure
from scipy.integrate import solve_ivp

from tokendyn.app.config import make_config
from tokendyn.app.run import run_simulation
from tokendyn.app.simulate import simulate
from tokendyn.engine.attention import (
    Head,
    L2Attention,
    SigmoidAttention,
    SinkhornAttention,
    SoftmaxAttention,
)
from tokendyn.engine.kernels import TiledBackend
from tokendyn.engine.space import Euclidean, Sphere
from tokendyn.studies.common import Check, Section
from tokendyn.viz.plot import plot_circle_angles, plot_gram_histogram, plot_sphere, plot_statistics

F64 = torch.float64


def gap_rate(phi: float, beta: float, normalise: str) -> float:
    if normalise == "n":
        return -math.exp(beta * math.cos(phi)) * math.sin(phi)
    return -2.0 * math.sin(phi) / (1.0 + math.exp(beta * (1.0 - math.cos(phi))))


def exact_gap(phi0: float, beta: float, normalise: str, times: np.ndarray) -> np.ndarray:
    sol = solve_ivp(
        lambda t, y: [gap_rate(y[0], beta, normalise)],
        (0.0, float(times[-1])),
        [phi0],
        method="DOP853",
        rtol=1e-13,
        atol=1e-15,
        t_eval=times,
    )
    return sol.y[0]


def two_token_gap(
    phi0: float, beta: float, normalise: str, t_end: float, dt: float, method: str = "rk4"
) -> tuple[np.ndarray, np.ndarray]:
    """Simulated gap φ(t) of two tokens at angles 0 and φ0 on the circle."""
    x0 = torch.tensor([[1.0, 0.0], [math.cos(phi0), math.sin(phi0)]], dtype=F64)
    I2 = torch.eye(2, dtype=F64)
    field = SoftmaxAttention([Head(I2, I2, I2, beta)], normalise=normalise, backend="dense")
    ds = simulate(field, Sphere(2), x0, t_end=t_end, dt=dt, method=method)
    x = ds["x"].values
    angles = np.unwrap(np.arctan2(x[..., 1], x[..., 0]), axis=0)
    return ds["time"].values, angles[:, 1] - angles[:, 0]


def convergence_order(
    beta: float = 2.0, phi0: float = 2.5, t_end: float = 2.0
) -> tuple[np.ndarray, np.ndarray, float]:
    dts = np.array([0.4, 0.2, 0.1, 0.05])
    ref = exact_gap(phi0, beta, "softmax", np.array([0.0, t_end]))[-1]
    errors = np.array(
        [abs(two_token_gap(phi0, beta, "softmax", t_end, h)[1][-1] - ref) for h in dts]
    )
    slope = float(np.polyfit(np.log(dts), np.log(errors), 1)[0])
    return dts, errors, slope


def equivariance_errors(n: int = 40, d: int = 3, seed: int = 0) -> tuple[float, float]:
    """(rotation, permutation) equivariance errors of softmax attention with Q = K = V = I."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=gen, dtype=F64)
    Id = torch.eye(d, dtype=F64)
    field = SoftmaxAttention([Head(Id, Id, Id, 1.5)], backend="tiled")
    R, _ = torch.linalg.qr(torch.randn(d, d, generator=gen, dtype=F64))
    perm = torch.randperm(n, generator=gen)
    rotation = (field(x @ R.T) - field(x) @ R.T).abs().max().item()
    permutation = (field(x[perm]) - field(x)[perm]).abs().max().item()
    return rotation, permutation


def backend_disagreement(n: int = 300, d: int = 4, seed: int = 1) -> float:
    """Largest |tiled − dense| over every variant (float64, random Q, K, V, causal and not)."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(2, n, d, generator=gen, dtype=F64)
    Q, K, V = (torch.randn(d, d, generator=gen, dtype=F64) / d**0.5 for _ in range(3))
    worst = 0.0
    cases = [
        (SoftmaxAttention, {}),
        (SoftmaxAttention, {"mask": "causal"}),
        (SoftmaxAttention, {"normalise": "n"}),
        (L2Attention, {}),
        (SigmoidAttention, {}),
        (SinkhornAttention, {}),
    ]
    for cls, kwargs in cases:
        dense = cls([Head(Q, K, V, 1.3)], backend="dense", **kwargs)(x)
        tiled = cls([Head(Q, K, V, 1.3)], backend=TiledBackend(), **kwargs)(x)
        worst = max(worst, ((tiled - dense).abs().max() / dense.abs().max().clamp(min=1)).item())
    return worst


def gradient_disagreement(n: int = 300, d: int = 3, seed: int = 2) -> float:
    """Largest relative |∇_tiled − ∇_dense| of L = Σ w·Γ(x) with respect to x, Q and β over every
    variant (float64): the tiled backend's backward (fused C on CPU, weights recomputed from the
    saved log-sum-exp) and Sinkhorn's implicit gradient against autograd through the N×N matrix."""
    gen = torch.Generator().manual_seed(seed)
    x0 = torch.randn(1, n, d, generator=gen, dtype=F64)
    Q0, K, V = (torch.randn(d, d, generator=gen, dtype=F64) / d**0.5 for _ in range(3))
    w = torch.randn(1, n, d, generator=gen, dtype=F64)
    cases = [
        (SoftmaxAttention, {}),
        (SoftmaxAttention, {"mask": "causal"}),
        (SoftmaxAttention, {"normalise": "n"}),
        (L2Attention, {}),
        (SigmoidAttention, {}),
        (SinkhornAttention, {"tol": 1e-13}),
    ]
    worst = 0.0
    for cls, kwargs in cases:
        grads = []
        for backend in ("dense", TiledBackend()):
            x = x0.clone().requires_grad_(True)
            Q = Q0.clone().requires_grad_(True)
            beta = torch.tensor(1.3, dtype=F64, requires_grad=True)
            y = cls([Head(Q, K, V, beta)], backend=backend, **kwargs)(x)
            parts = torch.autograd.grad((w * y).sum(), (x, Q, beta))
            grads.append(torch.cat([g.reshape(-1) for g in parts]))
        gap = (grads[1] - grads[0]).abs().max() / grads[0].abs().max()
        worst = max(worst, gap.item())
    return worst


def exact_linear_checks(seed: int = 3) -> tuple[float, float]:
    """Errors at t=1 of the Sinkhorn mean α(t) = e^{tV}α(0) and causal x₁(t) = e^{tV}x₁(0)."""
    gen = torch.Generator().manual_seed(seed)
    d, n, t_end = 3, 48, 1.0
    Q, K, V = (torch.randn(d, d, generator=gen, dtype=F64) / d**0.5 for _ in range(3))
    x0 = torch.randn(n, d, generator=gen, dtype=F64) + 0.5
    flow = torch.linalg.matrix_exp(t_end * V)
    sink = SinkhornAttention([Head(Q, K, V, 1.0)], tol=1e-12, backend="tiled")
    xs = simulate(sink, Euclidean(), x0, t_end=t_end, dt=0.01)["x"].values
    mean_err = float(np.abs(xs[-1].mean(0) - (flow @ x0.mean(0)).numpy()).max())
    causal = SoftmaxAttention([Head(Q, K, V, 1.0)], mask="causal", backend="tiled")
    xc = simulate(causal, Euclidean(), x0, t_end=t_end, dt=0.01)["x"].values
    first_err = float(np.abs(xc[-1, 0] - (flow @ x0[0]).numpy()).max())
    return mean_err, first_err


def run(quick: bool, out_dir: Path) -> Section:
    out_dir.mkdir(parents=True, exist_ok=True)
    section = Section(
        title="Particle engine",
        intro=(
            "Tokens x_i on S^{d−1} or R^d moving under ẋ_i = P_{x_i} Σ_j P_ij V x_j (Q = K = V = I "
            "unless stated). Exact solutions, invariances and monotone quantities."
        ),
    )
    checks = section.checks
    beta, phi0, t_end, dt = 2.0, 2.5, 5.0, 0.01
    times, gap = {}, {}
    for norm in ("softmax", "n"):
        times[norm], gap[norm] = two_token_gap(phi0, beta, norm, t_end, dt)
        half = two_token_gap(phi0, beta, norm, t_end, dt / 2)[1][-1]
        ref = exact_gap(phi0, beta, norm, times[norm])
        label = "softmax" if norm == "softmax" else "unnormalised (1/N)"
        # Tolerance: twice the Richardson estimate 16/15·|φ_dt − φ_dt/2| of RK4's error.
        tolerance = 2 * 16 / 15 * abs(gap[norm][-1] - half) + 1e-12
        checks.append(
            Check(
                f"engine: two tokens on the circle, gap φ(T={t_end:g}), {label}",
                float(ref[-1]),
                float(gap[norm][-1]),
                tolerance,
                note="RK4, dt = 0.01; reference DOP853 rtol 1e-13; tol = 2× Richardson estimate",
            )
        )
        gap[norm + "_ref"] = ref
    dts, errors, slope = convergence_order()
    checks.append(
        Check(
            "engine: RK4 convergence order on the two-token gap",
            4.0,
            slope,
            0.25,
            note="log-log slope of |error| over dt = 0.4 … 0.05",
        )
    )

    n = 48 if quick else 256
    cfg = make_config(
        n=n,
        d=3,
        beta=1.0,
        t_end=40.0 if quick else 60.0,
        dt=0.1,
        save_every=5,
        stats=["energy", "clusters", "effective_dim"],
        seed=0,
    )
    ds = run_simulation(cfg)
    increments = np.expm1(np.diff(ds["energy"].values))  # E_{k+1}/E_k − 1 from the stored log E
    checks.append(
        Check(
            "engine: energy E_β non-decreasing along the S² flow (min relative increment)",
            0.0,
            float(increments.min()),
            1e-12,
            "at_least",
        )
    )
    checks.append(
        Check(
            f"engine: one cluster on S² at t={cfg.t_end:g} (N={n}, β=1)",
            1.0,
            float(ds["clusters"].values[-1]),
            0.0,
        )
    )
    norms = np.linalg.norm(ds["x"].values, axis=-1)
    checks.append(
        Check(
            "engine: |x_i| = 1 kept on the sphere (max deviation)",
            0.0,
            float(np.abs(norms - 1).max()),
            1e-12,
            "at_most",
        )
    )

    circle = run_simulation(
        make_config(
            n=16,
            d=2,
            beta=4.0,
            t_end=20.0,
            dt=0.05,
            save_every=4,
            stats=["energy", "clusters"],
            seed=1,
        )
    )
    rotation, permutation = equivariance_errors()
    checks.append(
        Check(
            "engine: rotation equivariance Γ(xR) = Γ(x)R (Q=K=V=I)", 0.0, rotation, 1e-12, "at_most"
        )
    )
    checks.append(Check("engine: permutation equivariance", 0.0, permutation, 1e-12, "at_most"))
    checks.append(
        Check(
            "engine: tiled vs dense backends, every variant (relative, float64)",
            0.0,
            backend_disagreement(),
            1e-10,
            "at_most",
        )
    )
    checks.append(
        Check(
            "engine: gradient, tiled (fused) backward vs dense, every variant (max relative)",
            0.0,
            gradient_disagreement(),
            1e-10,
            "at_most",
        )
    )
    mean_err, first_err = exact_linear_checks()
    checks.append(
        Check(
            "engine: Sinkhorn mean α(t) = e^{tV}α(0) (max error, t=1)",
            0.0,
            mean_err,
            1e-8,
            "at_most",
        )
    )
    checks.append(
        Check(
            "engine: causal token 1, x₁(t) = e^{tV}x₁(0) (max error, t=1)",
            0.0,
            first_err,
            1e-9,
            "at_most",
        )
    )

    fig = Figure(figsize=(10, 3.8))
    ax1, ax2 = fig.subplots(1, 2)
    for norm, style in (("softmax", "-"), ("n", "--")):
        ax1.plot(times[norm], gap[norm], style, lw=2, label=f"particles ({norm})")
        ax1.plot(times[norm], gap[norm + "_ref"], "k:", lw=1)
    ax1.set(
        xlabel="t", ylabel="gap φ(t)", title=f"Two tokens on S¹, β={beta:g} (dotted: exact ODE)"
    )
    ax1.legend()
    ax2.loglog(dts, errors, "o-", label=f"RK4, slope {slope:.2f}")
    ax2.loglog(dts, errors[0] * (dts / dts[0]) ** 4, "k:", label="slope 4")
    ax2.set(xlabel="dt", ylabel="|φ(T) − φ_exact(T)|", title="Convergence order")
    ax2.legend()
    fig.tight_layout()
    figures = [
        (
            out_dir / "engine_two_tokens.png",
            "Two tokens on the circle against the exact gap ODE; RK4 order.",
        )
    ]
    fig.savefig(figures[0][0], dpi=110)
    made = [
        (
            plot_circle_angles(circle, path=out_dir / "engine_circle_angles.png"),
            "engine_circle_angles.png",
            "16 tokens on S¹ (β=4): angles vs depth merge into clusters.",
        ),
        (
            plot_sphere(ds, path=out_dir / "engine_sphere.png"),
            "engine_sphere.png",
            f"{n} tokens on S² at t={cfg.t_end:g}: a single cluster.",
        ),
        (
            plot_statistics(ds, path=out_dir / "engine_statistics.png"),
            "engine_statistics.png",
            "Energy E_β (non-decreasing), cluster count and effective dimension on S².",
        ),
        (
            plot_gram_histogram(ds, path=out_dir / "engine_gram.png"),
            "engine_gram.png",
            "Inner products ⟨x_i, x_j⟩ at t = 0 and at the end: mass moves to 1.",
        ),
    ]
    for _, name, caption in made:
        figures.append((out_dir / name, caption))
    section.figures = figures
    return section
