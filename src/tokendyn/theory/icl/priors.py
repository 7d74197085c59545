"""Priors on the latent w (spec §2.2), as Gaussian mixtures with one shared component covariance.

    P(w) = Σ_j π⁰_j N(w; c_j, S)

- Gaussian control: one component, c = μ₀, S = Σ_w (isotropic Σ_w = I/d, or matched to a tree).
- Tree prior: a complete b-ary tree of depth K, centres fixed by a prior seed; the root is 0 and a
  level-k child is c_{a,j} = c_a + δ_{a,j}, δ ~ N(0, s₁² r^{2(k−1)}/d · I). A leaf is uniform and
  w = c_ℓ + ξ, ξ ~ N(0, σ_leaf²/d · I), so S = σ_leaf²/d · I. Normalisation subtracts the mean leaf
  centre and rescales all centres so that mean_ℓ ‖c_ℓ‖² + σ_leaf² = 1 (E‖w‖² = 1). K = 1 is a flat
  mixture of b Gaussians.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from tokendyn.errors import ConfigError
from tokendyn.theory.icl.settings import ICLSetting


@dataclass(frozen=True)
class MixturePrior:
    """Σ_j π⁰_j N(c_j, S): log_weights (M,), centres (M, d), S (d, d)."""

    log_weights: np.ndarray
    centres: np.ndarray
    S: np.ndarray

    @property
    def d(self) -> int:
        return self.centres.shape[1]

    @property
    def weights(self) -> np.ndarray:
        return np.exp(self.log_weights - np.logaddexp.reduce(self.log_weights))

    @property
    def mean(self) -> np.ndarray:
        return self.weights @ self.centres

    @property
    def cov(self) -> np.ndarray:
        """Σ_w = S + Σ_j π⁰_j (c_j − μ₀)(c_j − μ₀)ᵀ."""
        dc = self.centres - self.mean
        return self.S + (dc * self.weights[:, None]).T @ dc

    @property
    def second_moment(self) -> float:
        """E‖w‖²."""
        return float(np.trace(self.cov) + self.mean @ self.mean)

    def sample(self, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """n draws: (w (n, d), component index (n,))."""
        comp = rng.choice(len(self.weights), size=n, p=self.weights)
        try:
            root = np.linalg.cholesky(self.S)
        except np.linalg.LinAlgError:  # singular S (e.g. σ_leaf = 0): symmetric square root
            vals, vecs = np.linalg.eigh(self.S)
            root = vecs * np.sqrt(np.clip(vals, 0.0, None))
        return self.centres[comp] + rng.standard_normal((n, self.d)) @ root.T, comp


class GaussianPrior(MixturePrior):
    """w ~ N(μ₀, Σ_w): a one-component mixture."""

    def __init__(self, mean: np.ndarray, cov: np.ndarray) -> None:
        mean, cov = np.asarray(mean, float), np.asarray(cov, float)
        if cov.shape != (mean.size, mean.size) or not np.allclose(cov, cov.T):
            raise ConfigError("cov", "must be a symmetric d×d matrix", "pass Σ_w matching μ₀")
        if np.linalg.eigvalsh(cov).min() < -1e-12:
            raise ConfigError("cov", "is not positive semi-definite", "pass a PSD Σ_w")
        super().__init__(np.zeros(1), mean[None, :], cov)

    @classmethod
    def isotropic(cls, d: int) -> GaussianPrior:
        """N(0, I/d), so E‖w‖² = 1."""
        return cls(np.zeros(d), np.eye(d) / d)

    @classmethod
    def matched(cls, prior: MixturePrior) -> GaussianPrior:
        """The Gaussian with the same first and second moments as `prior`."""
        return cls(prior.mean, prior.cov)


class TreePrior(MixturePrior):
    """The hierarchical Gaussian-mixture ("tree") prior with fixed centres (spec §2.2 b)."""

    def __init__(
        self,
        d: int,
        b: int,
        K: int,
        r: float,
        sigma_leaf: float,
        seed: int = 1,
        normalise: bool = True,
        s1: float = 1.0,
    ) -> None:
        if b < 2 or K < 1 or d < 1:
            raise ConfigError("tree", f"needs b ≥ 2, K ≥ 1, d ≥ 1 (got {b}, {K}, {d})", "fix b/K/d")
        if normalise and sigma_leaf >= 1:
            raise ConfigError("sigma_leaf", "must be < 1 when normalising", "use σ_leaf < 1")
        rng = np.random.default_rng(seed)
        levels = [np.zeros((1, d))]
        for k in range(1, K + 1):
            parents = np.repeat(levels[-1], b, axis=0)
            step = s1 * r ** (k - 1) / np.sqrt(d)
            levels.append(parents + step * rng.standard_normal((b**k, d)))
        if normalise:
            shift = levels[-1].mean(axis=0)
            scale = np.sqrt((1.0 - sigma_leaf**2) / np.mean(np.sum((levels[-1] - shift) ** 2, 1)))
            levels = [(c - shift) * scale for c in levels]
        self.b, self.K, self.r, self.sigma_leaf = b, K, r, sigma_leaf
        self.level_centres: list[np.ndarray] = levels
        M = b**K
        super().__init__(np.full(M, -np.log(M)), levels[-1], (sigma_leaf**2 / d) * np.eye(d))

    @classmethod
    def from_setting(cls, s: ICLSetting, normalise: bool = True) -> TreePrior:
        return cls(s.d, s.b, s.K, s.r, s.sigma_leaf, seed=s.prior_seed, normalise=normalise)

    def node_of(self, leaf: np.ndarray, level: int) -> np.ndarray:
        """Index of the level-k ancestor (0 ≤ k ≤ K) of each leaf index."""
        return np.asarray(leaf) // self.b ** (self.K - level)

    def split_basis(self, level: int, node: np.ndarray) -> np.ndarray:
        """Orthonormal basis (n, b−1, d) of span{c_{n,j} − c̄_n} for level-k nodes n (k < K)."""
        kids = self.level_centres[level + 1].reshape(-1, self.b, self.d)[np.asarray(node)]
        diffs = kids - kids.mean(axis=1, keepdims=True)
        u, _, _ = np.linalg.svd(np.swapaxes(diffs, 1, 2), full_matrices=False)
        return np.swapaxes(u[..., : self.b - 1], 1, 2)


def make_prior(setting: ICLSetting, prior: str) -> MixturePrior:
    """'tree', 'gauss' (covariance-matched to the tree), 'gauss-iso' (N(0, I/d)), 'flat' (K = 1)."""
    if prior == "tree":
        return TreePrior.from_setting(setting)
    if prior == "gauss":
        return GaussianPrior.matched(TreePrior.from_setting(setting))
    if prior == "gauss-iso":
        return GaussianPrior.isotropic(setting.d)
    if prior == "flat":
        return TreePrior.from_setting(setting.with_(K=1))
    raise ConfigError("prior", f"unknown prior {prior!r}", "use tree, gauss, gauss-iso or flat")
