"""Solving the Gaussian closure: adaptive ODE, exact V = vI solution, the authors' scheme.

* `solve_closure`: (α, Σ) integrated together with SciPy's DOP853, Σ symmetrised at every stage,
  with a blow-up event (tr Σ > threshold; T* extrapolated from tr Σ ≈ c/(T* − t), i.e.
  T* ≈ t + tr Σ / (tr Σ)') and a convergence event (|α'| + ‖Σ'‖_F < tol).
* `VIClosedForm`: softmax with V = vI (spec §4.2). Σ(t) = S (I − vβt S(A+Aᵀ)S)⁻¹ S (S = Σ₀^{1/2}),
  T* = 1/max eig(vβ S(A+Aᵀ)S), shape at T* ∝ S u uᵀ S; for symmetric A,
  α(t) = e^{vt} S (I − 2vβt SAS)^{−1/2} S⁻¹ α₀.
* `authors_scheme`: the released code's projected Euler Σ_{k+1} = Π_PSD(Σ_k + h F(Σ_k)) (negative
  eigenvalues → 1e-14), stopped at ‖F‖_F < tol_low (converged), tr Σ > tol_high (diverged) or
  max_iter, batched over many initial covariances. It stores the iterate before each step.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.integrate import solve_ivp

from tokendyn.errors import ConfigError, TokendynError
from tokendyn.theory.gaussian import GaussianClosure, psd_sqrt

STATUSES = ("finished", "converged", "blowup", "diverged")


@dataclass
class ClosureSolution:
    """Trajectory t (n,), mean (n, d), cov (n, d, d); status in STATUSES; T* for blow-up."""

    t: np.ndarray
    mean: np.ndarray
    cov: np.ndarray
    status: str
    blowup_time: float | None = None

    @property
    def shape(self) -> np.ndarray:
        """Σ/tr Σ at the last time."""
        return self.cov[-1] / np.trace(self.cov[-1])

    def summary(self) -> dict:
        """The JSON object of `tokendyn closure --json`."""
        return {
            "t_end": float(self.t[-1]),
            "mean": self.mean[-1].tolist(),
            "cov": self.cov[-1].tolist(),
            "status": self.status,
            "blowup_time": self.blowup_time,
            "shape": self.shape.tolist(),
        }


def _initial(closure: GaussianClosure, mean0: object, cov0: object) -> tuple[np.ndarray, ...]:
    d = closure.d
    mean = np.asarray(mean0, dtype=np.float64)
    cov = np.asarray(cov0, dtype=np.float64)
    if mean.shape != (d,):
        raise ConfigError("mean", f"has shape {mean.shape}, expected ({d},)", f"give {d} numbers")
    if cov.shape != (d, d):
        raise ConfigError("cov", f"has shape {cov.shape}, expected ({d}, {d})", "give a d×d matrix")
    if not (np.isfinite(mean).all() and np.isfinite(cov).all()):
        raise ConfigError("cov", "mean or cov contains NaN or Inf", "give finite entries")
    if np.abs(cov - cov.T).max() > 1e-10 * max(1.0, np.abs(cov).max()):
        raise ConfigError("cov", "is not symmetric", "give a symmetric covariance")
    if np.linalg.eigvalsh(cov).min() < -1e-12 * max(1.0, np.abs(cov).max()):
        raise ConfigError("cov", "is not positive semidefinite", "give a PSD covariance")
    return mean, 0.5 * (cov + cov.T)


def solve_closure(
    closure: GaussianClosure,
    mean0: object,
    cov0: object,
    t_end: float,
    *,
    t_eval: np.ndarray | None = None,
    rtol: float = 1e-11,
    atol: float = 1e-13,
    blowup_trace: float = 1e8,
    converge_tol: float = 1e-10,
) -> ClosureSolution:
    """Integrate (α, Σ) on [0, t_end] (stops early at blow-up/divergence or convergence)."""
    if not (np.isfinite(t_end) and t_end > 0):
        raise ConfigError("t_end", f"is {t_end}, it must be > 0", "give a positive final time")
    mean, cov = _initial(closure, mean0, cov0)
    d = closure.d
    threshold = blowup_trace * max(1.0, float(np.trace(cov)))

    def unpack(y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        c = y[d:].reshape(d, d)
        return y[:d], 0.5 * (c + c.T)

    def f(_t: float, y: np.ndarray) -> np.ndarray:
        dm, dc = closure.rhs(*unpack(y))
        return np.concatenate([dm, dc.ravel()])

    def blowup(_t: float, y: np.ndarray) -> float:
        return float(np.trace(unpack(y)[1])) - threshold

    def converged(_t: float, y: np.ndarray) -> float:
        dm, dc = closure.rhs(*unpack(y))
        return float(np.log((np.linalg.norm(dm) + np.linalg.norm(dc) + 1e-300) / converge_tol))

    blowup.terminal = True  # type: ignore[attr-defined]
    blowup.direction = 1  # type: ignore[attr-defined]
    converged.terminal = True  # type: ignore[attr-defined]
    converged.direction = -1  # type: ignore[attr-defined]
    y0 = np.concatenate([mean, cov.ravel()])
    if converged(0.0, y0) < 0:
        return ClosureSolution(np.array([0.0]), mean[None], cov[None], "converged")
    sol = solve_ivp(
        f, (0.0, float(t_end)), y0, method="DOP853", rtol=rtol, atol=atol,
        t_eval=t_eval, events=(blowup, converged), dense_output=t_eval is not None,
    )  # fmt: skip
    if sol.status == -1:
        raise TokendynError(f"closure: the ODE solver failed ({sol.message}). Fix: lower t_end")
    ts, ys = sol.t, sol.y.T
    status, t_star = "finished", None
    if sol.t_events[0].size:
        status = closure.grows
        t_hit, y_hit = sol.t_events[0][0], sol.y_events[0][0]
        ts, ys = np.append(ts[ts < t_hit], t_hit), np.vstack([ys[ts < t_hit], y_hit])
        if status == "blowup":
            m, c = unpack(y_hit)
            t_star = float(t_hit + np.trace(c) / np.trace(closure.rhs(m, c)[1]))
    elif sol.t_events[1].size:
        status = "converged"
        t_hit, y_hit = sol.t_events[1][0], sol.y_events[1][0]
        ts, ys = np.append(ts[ts < t_hit], t_hit), np.vstack([ys[ts < t_hit], y_hit])
    covs = ys[:, d:].reshape(-1, d, d)
    return ClosureSolution(ts, ys[:, :d], 0.5 * (covs + covs.transpose(0, 2, 1)), status, t_star)


@dataclass
class VIClosedForm:
    """Exact solution of softmax with V = vI (spec §4.2); A = KᵀQ (symmetric part enters Σ)."""

    A: np.ndarray
    beta: float
    v: float
    cov0: np.ndarray
    mean0: np.ndarray

    @classmethod
    def from_closure(cls, closure: GaussianClosure, mean0: object, cov0: object) -> VIClosedForm:
        if closure.attention != "softmax" or len(closure.heads) != 1:
            raise ConfigError("attention", "the closed form is for one softmax head", "use softmax")
        h = closure.heads[0]
        v = float(h.C[0, 0])
        if not np.allclose(h.C, v * np.eye(closure.d), rtol=0, atol=1e-15):
            raise ConfigError("V", "is not a multiple of the identity", "use V = v·I")
        mean, cov = _initial(closure, mean0, cov0)
        return cls(h.K.T @ h.Q, h.beta, v, cov, mean)

    @property
    def _tilde(self) -> tuple[np.ndarray, np.ndarray]:
        S = psd_sqrt(self.cov0)
        return S, S @ (self.A + self.A.T) @ S

    def cov(self, t: float) -> np.ndarray:
        S, At = self._tilde
        return S @ np.linalg.solve(np.eye(len(S)) - self.v * self.beta * t * At, S)

    def mean(self, t: float) -> np.ndarray:
        if not np.allclose(self.A, self.A.T, rtol=0, atol=1e-14):
            raise ConfigError(
                "K", "A = KᵀQ is not symmetric", "the mean's closed form needs A = Aᵀ"
            )
        S, At = self._tilde
        lam, U = np.linalg.eigh(At / 2)
        root = (U * (1.0 - 2.0 * self.v * self.beta * t * lam) ** -0.5) @ U.T
        return np.exp(self.v * t) * S @ root @ np.linalg.solve(S, self.mean0)

    @property
    def blowup_time(self) -> float | None:
        """T* = 1/max eig(vβ S(A+Aᵀ)S), or None if that is ≤ 0 (global solution)."""
        top = float(np.linalg.eigvalsh(self.v * self.beta * self._tilde[1]).max())
        return 1.0 / top if top > 0 else None

    @property
    def blowup_shape(self) -> np.ndarray:
        """lim Σ/tr Σ at T*: S u uᵀ S normalised, u the top eigenvector of vβ S(A+Aᵀ)S."""
        S, At = self._tilde
        _, U = np.linalg.eigh(self.v * self.beta * At)
        w = S @ U[:, -1]
        return np.outer(w, w) / (w @ w)


@dataclass
class AuthorsRun:
    """Batched projected-Euler runs: path (n_saved, B, d, d) of iterates (finished runs frozen),
    final (B, d, d) = last stored iterate, iterations (B,), status (B,) in converged/diverged/
    max_iter."""

    path: np.ndarray
    final: np.ndarray
    iterations: np.ndarray
    status: np.ndarray


def psd_projection(cov: np.ndarray, floor: float = 1e-14) -> np.ndarray:
    """Π_PSD of the authors' code: negative eigenvalues replaced by `floor`."""
    lam, U = np.linalg.eigh(cov)
    lam = np.where(lam < 0, floor, lam)
    return (U * lam[..., None, :]) @ np.swapaxes(U, -1, -2)


def authors_scheme(
    closure: GaussianClosure,
    cov0: np.ndarray,
    h: float,
    *,
    tol_low: float = 1e-5,
    tol_high: float = 1e3,
    max_iter: int = 50_000,
    save_every: int = 1,
) -> AuthorsRun:
    """Σ_{k+1} = Π_PSD(Σ_k + h F(Σ_k)) for a batch of initial covariances cov0 (B, d, d)."""
    S = np.array(cov0, dtype=np.float64, copy=True)  # never modifies the caller's matrices
    B = S.shape[0]
    active = np.ones(B, dtype=bool)
    final = S.copy()
    iterations = np.full(B, max_iter)
    status = np.full(B, "max_iter", dtype=object)
    path = [S.copy()]
    for i in range(max_iter):
        idx = np.flatnonzero(active)
        if idx.size == 0:
            break
        cur = S[idx]
        final[idx] = cur
        F = closure.cov_rhs(cur)
        norms = np.linalg.norm(F, axis=(-2, -1))
        S[idx] = psd_projection(cur + h * F)
        conv = norms < tol_low
        div = ~conv & (np.trace(S[idx], axis1=-2, axis2=-1) > tol_high)
        for mask, label in ((conv, "converged"), (div, "diverged")):
            status[idx[mask]] = label
            iterations[idx[mask]] = i
            S[idx[mask]] = cur[mask]  # frozen at the last stored iterate
        active[idx[conv | div]] = False
        if (i + 1) % save_every == 0:
            path.append(S.copy())
    path.append(final.copy())
    return AuthorsRun(np.array(path), final, iterations, status)
