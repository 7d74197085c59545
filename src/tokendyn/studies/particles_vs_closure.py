"""Particles of the core engine against the Gaussian closure (spec §5.6, §6.3–6.4).

* `mc_moment_rates`: Monte-Carlo estimates of (α', Σ') from clouds x_i ~ N(α, Σ) and the engine's
  velocities v_i = Γ[μ^n](x_i): α' ≈ (1/n)Σ v_i, Σ' ≈ Cov(x, v) + Cov(v, x), with the standard error
  over independent clouds.
* `flow_map`: the mean-field characteristic x ↦ Φ(t)x + c(t) of the affine field Γ = M(t)x + b(t),
  Φ' = MΦ, c' = Mc + b, integrated with (α, Σ).
* `coupling_experiment`: synchronous coupling (Sznitman): particles and characteristics from the
  same x_i(0); RMS_i |x_i(t) − Φx_i(0) − c|, moment errors and the Bures–Wasserstein distance
  between the particles' moment-matched Gaussian and N(α(t), Σ(t)).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from scipy.integrate import solve_ivp

from tokendyn.app.simulate import simulate
from tokendyn.engine.initial import gaussian_cloud
from tokendyn.engine.observables import bures_wasserstein, mean_and_covariance
from tokendyn.engine.space import Euclidean
from tokendyn.theory.gaussian import GaussianClosure

F64 = torch.float64


def sample_gaussian(mean: object, cov: object, batch: int, n: int, seed: int) -> torch.Tensor:
    """batch clouds of n i.i.d. tokens from N(mean, cov), float64, shape (batch, n, d)."""
    d = torch.as_tensor(mean, dtype=F64).numel()
    return gaussian_cloud(batch, n, d, torch.Generator().manual_seed(seed), mean, cov)


def mc_moment_rates(
    closure: GaussianClosure, mean: object, cov: object, n: int, batch: int, seed: int = 0
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(α' estimate, Σ' estimate, α' standard error, Σ' standard error) over `batch` clouds."""
    x = sample_gaussian(mean, cov, batch, n, seed)
    v = closure.particle_field()(x)
    xc = x - x.mean(1, keepdim=True)
    vc = v - v.mean(1, keepdim=True)
    cross = xc.mT @ vc / n
    dmean = v.mean(1).numpy()
    dcov = (cross + cross.mT).numpy()
    se = lambda a: a.std(0, ddof=1) / np.sqrt(batch)  # noqa: E731
    return dmean.mean(0), dcov.mean(0), se(dmean), se(dcov)


@dataclass
class FlowMap:
    """At times t (n_t,): closure mean (n_t, d), cov (n_t, d, d), characteristic Φ, c."""

    t: np.ndarray
    mean: np.ndarray
    cov: np.ndarray
    Phi: np.ndarray
    c: np.ndarray


def flow_map(closure: GaussianClosure, mean0: object, cov0: object, times: object) -> FlowMap:
    """(α, Σ, Φ, c) at `times` (DOP853, rtol 1e-12); requires t < T* (no blow-up on the way)."""
    d = closure.d
    times = np.asarray(times, dtype=float)
    mean0 = np.asarray(mean0, dtype=float)
    cov0 = np.asarray(cov0, dtype=float)

    def f(_t: float, y: np.ndarray) -> np.ndarray:
        m, c = y[:d], y[d : d + d * d].reshape(d, d)
        c = 0.5 * (c + c.T)
        Phi, shift = y[d + d * d : d + 2 * d * d].reshape(d, d), y[-d:]
        M, b = closure.affine(m, c)
        return np.concatenate([M @ m + b, (M @ c + c @ M.T).ravel(), (M @ Phi).ravel(),
                               M @ shift + b])  # fmt: skip

    y0 = np.concatenate([mean0, cov0.ravel(), np.eye(d).ravel(), np.zeros(d)])
    sol = solve_ivp(f, (0.0, float(times[-1])), y0, method="DOP853", rtol=1e-12, atol=1e-14,
                    t_eval=times)  # fmt: skip
    y = sol.y.T
    return FlowMap(
        sol.t,
        y[:, :d],
        y[:, d : d + d * d].reshape(-1, d, d),
        y[:, d + d * d : d + 2 * d * d].reshape(-1, d, d),
        y[:, -d:],
    )


@dataclass
class CouplingResult:
    """One N over `seeds` clouds: times (n_t,), bw (seeds, n_t) Bures–Wasserstein to the closure,
    rms (seeds,) coupling error at t_end, cov_err / sampling / interaction (seeds,) Frobenius norms
    of Cov_N − Σ, Cov(Φx0+c) − Σ and Cov_N − Cov(Φx0+c) at t_end, mean_err (seeds,)."""

    n: int
    times: np.ndarray
    bw: np.ndarray
    rms: np.ndarray
    cov_err: np.ndarray
    sampling: np.ndarray
    interaction: np.ndarray
    mean_err: np.ndarray


def coupling_experiment(
    closure: GaussianClosure,
    mean0: object,
    cov0: object,
    n: int,
    seeds: int,
    *,
    t_end: float = 1.0,
    dt: float = 0.05,
    save_every: int = 2,
    seed: int = 0,
) -> CouplingResult:
    """Particles (core engine, RK4) from x_i(0) ~ N(α0, Σ0) against the closure's flow map."""
    x0 = sample_gaussian(mean0, cov0, seeds, n, seed)
    ds = simulate(closure.particle_field(), Euclidean(), x0, t_end=t_end, dt=dt, method="rk4",
                  save_every=save_every)  # fmt: skip
    xs = torch.as_tensor(ds["x"].values).reshape(-1, seeds, n, closure.d)  # (time, seed, n, d)
    times = ds["time"].values
    fm = flow_map(closure, mean0, cov0, times)
    d = closure.d
    m_t, c_t = mean_and_covariance(xs.reshape(-1, n, d))
    m_t, c_t = m_t.reshape(len(times), seeds, d), c_t.reshape(len(times), seeds, d, d)
    ref_m = torch.as_tensor(fm.mean)[:, None].expand_as(m_t)
    ref_c = torch.as_tensor(fm.cov)[:, None].expand_as(c_t)
    bw = bures_wasserstein(
        m_t.reshape(-1, closure.d), c_t.reshape(-1, closure.d, closure.d),
        ref_m.reshape(-1, closure.d), ref_c.reshape(-1, closure.d, closure.d),
    ).reshape(len(times), seeds).T.numpy()  # fmt: skip
    mapped = x0 @ torch.as_tensor(fm.Phi[-1]).T + torch.as_tensor(fm.c[-1])
    rms = (xs[-1] - mapped).pow(2).sum(-1).mean(-1).sqrt().numpy()
    _, c_map = mean_and_covariance(mapped)
    fro = lambda a: torch.linalg.matrix_norm(a).numpy()  # noqa: E731
    sigma = torch.as_tensor(fm.cov[-1])
    return CouplingResult(
        n=n,
        times=times,
        bw=bw,
        rms=rms,
        cov_err=fro(c_t[-1] - sigma),
        sampling=fro(c_map - sigma),
        interaction=fro(c_t[-1] - c_map),
        mean_err=(m_t[-1] - torch.as_tensor(fm.mean[-1])).norm(dim=-1).numpy(),
    )


def fit_slope(ns: object, values: object) -> float:
    """Least-squares slope of log(values) against log(N)."""
    return float(np.polyfit(np.log(np.asarray(ns, float)), np.log(np.asarray(values, float)), 1)[0])
