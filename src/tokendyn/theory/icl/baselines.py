"""Baselines with full access to the context (spec §4.6); every estimator returns ŵ (B, d).

- Bayes (mixture prior Σ_j π⁰_j N(c_j, S)): A = XᵀX/σ² + S⁻¹, m_j = c_j + A⁻¹Xᵀ(y − X c_j)/σ²,
  log-evidence −½[‖r_j‖²/σ² − (Xᵀr_j)ᵀA⁻¹(Xᵀr_j)/σ⁴], r_j = y − X c_j; ŵ = Σ softmax_j · m_j.
  A⁻¹ = S^{½}(S^{½}XᵀXS^{½}/σ² + I)⁻¹S^{½} stays finite as S → 0 (σ_leaf = 0 gives the dMMSE).
- Generalised ridge: ŵ = μ₀ + (XᵀX + σ²Σ_w⁻¹)⁻¹Xᵀ(y − Xμ₀) (Bayes for N(μ₀, Σ_w)); isotropic ridge
  λ = σ² d / tr Σ_w: ŵ = (XᵀX + λI)⁻¹Xᵀy.
- k-step GD from μ₀: w_{t+1} = w_t − η(1/N)Xᵀ(Xw_t − y), η tuned on validation sequences.
- One-step GD ŵ = s = (1/N)Xᵀy; the prior mean μ₀; OLS (N ≥ d).
"""

from __future__ import annotations

import math

import numpy as np

from tokendyn.errors import ConfigError
from tokendyn.theory.icl.priors import GaussianPrior, MixturePrior
from tokendyn.theory.icl.tasks import Batch


def _sqrtm(S: np.ndarray) -> np.ndarray:
    vals, vecs = np.linalg.eigh(S)
    return (vecs * np.sqrt(np.clip(vals, 0.0, None))) @ vecs.T


def _gram(X: np.ndarray) -> np.ndarray:
    """XᵀX per sequence (B, d, d)."""
    return np.swapaxes(X, 1, 2) @ X


def bayes(prior: MixturePrior, batch: Batch) -> np.ndarray:
    """Exact posterior mean of w for the mixture prior given the whole context."""
    X, y, s2 = batch.X, batch.y, batch.sigma**2
    if s2 == 0:
        raise ConfigError("sigma", "Bayes needs label noise σ > 0", "use σ > 0")
    R = _sqrtm(prior.S)
    d = prior.d
    core = np.linalg.inv(R @ _gram(X) @ R / s2 + np.eye(d))
    Ainv = R @ core @ R
    r = y[:, None, :] - np.swapaxes(X @ prior.centres.T, 1, 2)  # (B, J, N)
    Xr = r @ X  # (B, J, d)
    AXr = Xr @ Ainv  # A⁻¹ is symmetric
    log_ev = -0.5 * (np.sum(r**2, -1) / s2 - np.sum(Xr * AXr, -1) / s2**2)
    log_post = prior.log_weights + log_ev
    pi = np.exp(log_post - np.logaddexp.reduce(log_post, axis=1, keepdims=True))
    return np.einsum("bj,bjd->bd", pi, prior.centres[None] + AXr / s2)


def dmmse(prior: MixturePrior, batch: Batch) -> np.ndarray:
    """Posterior mean over the discrete centres (σ_leaf = 0): π_j ∝ π⁰_j exp(−‖y − Xc_j‖²/2σ²)."""
    r = batch.y[:, None, :] - np.swapaxes(batch.X @ prior.centres.T, 1, 2)
    log_post = prior.log_weights - 0.5 * np.sum(r**2, -1) / batch.sigma**2
    pi = np.exp(log_post - np.logaddexp.reduce(log_post, axis=1, keepdims=True))
    return pi @ prior.centres


def ridge(prior: MixturePrior, batch: Batch) -> np.ndarray:
    """Generalised ridge with the prior's (μ₀, Σ_w): the Bayes estimator for N(μ₀, Σ_w)."""
    return bayes(GaussianPrior.matched(prior), batch)


def isotropic_ridge(prior: MixturePrior, batch: Batch) -> np.ndarray:
    """Ridge with λ = σ² d / tr Σ_w."""
    lam = batch.sigma**2 * prior.d / np.trace(prior.cov)
    XtX = _gram(batch.X) + lam * np.eye(prior.d)
    return np.linalg.solve(XtX, np.swapaxes(batch.X, 1, 2) @ batch.y[..., None])[..., 0]


def ols(batch: Batch) -> np.ndarray:
    """Least squares (needs N ≥ d)."""
    if batch.X.shape[1] < batch.X.shape[2]:
        raise ConfigError("N", "OLS needs N ≥ d", "use a longer context")
    XtX = _gram(batch.X)
    return np.linalg.solve(XtX, np.swapaxes(batch.X, 1, 2) @ batch.y[..., None])[..., 0]


def gd_steps(batch: Batch, k: int, eta: float, w0: np.ndarray) -> np.ndarray:
    """k steps of GD on L(w) = (1/2N) Σ (w·x_i − y_i)² from w0."""
    N = batch.X.shape[1]
    w = np.broadcast_to(w0, batch.w.shape).copy()
    for _ in range(k):
        res = (batch.X @ w[..., None])[..., 0] - batch.y
        w = w - eta * (res[:, None, :] @ batch.X)[:, 0] / N
    return w


def tuned_gd(prior: MixturePrior, batch: Batch, val: Batch, k: int) -> tuple[np.ndarray, float]:
    """k-step GD from μ₀ with η chosen on validation sequences from a grid in (0, 2)."""
    grid = np.linspace(0.05, 1.5, 30)
    losses = [val.noisy_mse(gd_steps(val, k, eta, prior.mean)).mean() for eta in grid]
    eta = float(grid[int(np.argmin(losses))])
    return gd_steps(batch, k, eta, prior.mean), eta


def all_baselines(prior: MixturePrior, batch: Batch, val: Batch, gd_k: int = 3) -> dict:
    """Noisy-target MSE (mean, stderr) of every baseline on `batch`."""
    estimates = {
        "bayes": bayes(prior, batch),
        "ridge": ridge(prior, batch),
        "isotropic_ridge": isotropic_ridge(prior, batch),
        "gd1": batch.s,
        f"gd{gd_k}_tuned": tuned_gd(prior, batch, val, gd_k)[0],
        "ols": ols(batch),
        "prior_mean": np.broadcast_to(prior.mean, batch.w.shape),
        "zero": np.zeros_like(batch.w),
    }
    out = {}
    for name, w_hat in estimates.items():
        err = batch.noisy_mse(w_hat)
        out[name] = (float(err.mean()), float(err.std(ddof=1) / math.sqrt(err.size)))
    return out
