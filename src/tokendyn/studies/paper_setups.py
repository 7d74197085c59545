"""The released code's d = 2 experiments E1–E6 and rank-histogram systems (spec §5.3–5.5).

Matrices are drawn exactly as the authors' scripts do (numpy's legacy `np.random.seed`, which
reproduces across versions). Covariances are shown in the cone coordinates
(u, w, v) = (a − b, 2c, a + b) of Σ = [[a, c], [c, b]]; the PSD cone is v ≥ √(u² + w²).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class Run:
    """One closure run of an experiment: variant, heads, step h and the scheme's thresholds."""

    attention: str
    h: float
    tol_low: float
    tol_high: float = 1e3
    max_iter: int = 50_000
    heads: int = 1


@dataclass(frozen=True)
class Experiment:
    """E1–E6: name, Q, K, V, the initial grid (n, lo, hi) and the runs (scaling = 'authors')."""

    key: str
    title: str
    Q: np.ndarray
    K: np.ndarray
    V: np.ndarray
    grid: tuple[int, float, float]
    runs: tuple[Run, ...]
    note: str = ""
    extra: dict = field(default_factory=dict)


def init_grid(n: int, lo: float = -0.5, hi: float = 0.5) -> np.ndarray:
    """The authors' `init_grid(n, n, 1, [lo, hi, lo, hi])`: trace-1 covariances with
    u² + w² < 1, in their order; shape (m, 2, 2)."""
    u = np.linspace(lo, hi, n)
    X = np.array(np.meshgrid(u, u, np.ones(1))).T.reshape(-1, 3)
    keep = X[:, 2] ** 2 - X[:, 0] ** 2 > X[:, 1] ** 2
    return np.array([from_uwv(x) for x in X[keep]])


def to_uwv(cov: np.ndarray) -> np.ndarray:
    """(…, 2, 2) → (…, 3): (a − b, 2c, a + b)."""
    a, b, c = cov[..., 0, 0], cov[..., 1, 1], cov[..., 1, 0]
    return np.stack([a - b, 2 * c, a + b], axis=-1)


def from_uwv(x: np.ndarray) -> np.ndarray:
    u, w, v = x
    return np.array([[(u + v) / 2, w / 2], [w / 2, (v - u) / 2]])


def _draw_qk(seed: int, accept) -> tuple[np.ndarray, np.ndarray]:
    np.random.seed(seed)
    for _ in range(1000):
        Q = np.random.randn(2, 2)
        K = np.random.randn(2, 2)
        A = K.T @ Q
        if accept(np.linalg.eigh(A + A.T)[0]):
            break
    return Q, K


def _unit_q(seed: int) -> np.ndarray:
    np.random.seed(seed)
    q = np.random.randn(1, 2)
    return q / np.linalg.norm(q)


def experiments() -> list[Experiment]:
    """E1–E6 with the spec's parameters (§5.4)."""
    np.random.seed(35)
    Q1 = np.random.rand(2, 2)
    G = np.random.randn(2, 2)
    V1 = G @ G.T
    q = _unit_q(36)
    Q4, K4 = _draw_qk(36, lambda e: e[0] * e[1] < 0)
    np.random.seed(32)
    V4 = np.random.randn(2, 2)
    Q5, K5 = _draw_qk(33, lambda e: e[0] > 0)
    np.random.seed(35)
    np.random.randn(8, 7)
    V6 = np.random.randn(2, 2)
    eye = np.eye(2)
    return [
        Experiment("E1", "Convergence to zero", Q1, -Q1, V1, (10, -0.5, 0.5), (
            Run("softmax", 0.3, 1e-5), Run("l2", 0.3, 1e-5), Run("multihead", 0.3, 1e-5, heads=2),
            Run("sinkhorn", 0.5, 1e-5))),
        Experiment("E2", "Convergence to a line", q, -q, eye, (10, -0.5, 0.5), (
            Run("softmax", 0.5, 1e-4), Run("l2", 0.5, 1e-4)),
            extra={"q_perp": np.array([-q[0, 1], q[0, 0]])}),
        Experiment("E3", "Convergence to a plane", q, -q, eye, (10, -0.5, 0.5), (
            Run("multihead", 0.5, 1e-4, heads=2),)),
        Experiment("E4", "Convergence to two lines", Q4, K4, V4, (20, -1.0, 1.0), (
            Run("softmax", 0.01, 1e-7), Run("l2", 0.01, 1e-7)),
            note="the released script plots the L2 run in both files; both are shown here"),
        Experiment("E5", "Blow-up or divergence", Q5, K5, eye, (40, -1.0, 1.0), (
            Run("softmax", 0.01, 1e-4, max_iter=100_000),
            Run("multihead", 0.002, 1e-4, max_iter=100_000, heads=2),
            Run("l2", 0.001, 1e-5, tol_high=1e4), Run("sinkhorn", 0.01, 1e-5, tol_high=1e4))),
        Experiment("E6", "Convergence and blow-up depending on initial data", Q4, K4, V6,
                   (30, -1.0, 1.0), (
            Run("softmax", 0.003, 1e-4), Run("l2", 0.002, 1e-4),
            Run("multihead", 0.002, 1e-4, heads=1)),
            note="the released MH_both call omits H=2, so it is softmax with h = 0.002"),
    ]  # fmt: skip


@dataclass(frozen=True)
class RankSystem:
    """One rank-histogram system: d, Q ∈ R^{⌊d/2⌋×d}, K = −Q, V, initial Σ₀ = GGᵀ."""

    d: int
    Q: np.ndarray
    V: np.ndarray
    cov0: np.ndarray


def rank_systems(value: str, per_dim: int, attention: str = "softmax") -> list[RankSystem]:
    """The histogram protocol's systems (first Σ₀ draw of each; redraws are not needed by the
    accurate mode). value: 'identity' or 'random' (V = GᵀG, seed 26 softmax / 27 L2)."""
    dims = np.repeat([3, 4, 5], 100)
    np.random.seed(40)
    Qs = [np.random.randn(d // 2, d) for d in dims]
    if value == "random":
        np.random.seed(26 if attention == "softmax" else 27)
        Vs = [(lambda G: G.T @ G)(np.random.randn(d, d)) for d in dims]
    else:
        Vs = [np.eye(d) for d in dims]
    out = []
    for j, d in enumerate((3, 4, 5)):
        np.random.seed(41)
        for i in range(per_dim):
            G = np.random.randn(d, d)
            k = 100 * j + i
            out.append(RankSystem(d, Qs[k], Vs[k], G @ G.T))
    return out
