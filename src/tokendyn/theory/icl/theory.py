"""Mean-field theory of adaptive inference with single-channel heads (spec §4).

A head with direction u transmits m = u·s, s = (1/N) Xᵀy. For x ~ N(0, I) (Isserlis),
    E[s | w] = w,   Cov[s | w] = [(‖w‖² + σ²) I + w wᵀ] / N,
so m = u·w + η with τ_u² = (‖w‖² + (u·w)² + σ²)/N ≈ τ² := (E‖w‖² + σ²)/N (used below).

Posterior of a mixture prior Σ_j π⁰_j N(c_j, S) given m = U w + η, η ~ N(0, τ² I):
    G = U S Uᵀ + τ² I,  log π_j = log π⁰_j − ½ r_jᵀ G⁻¹ r_j,  r_j = m − U c_j,
    w̄_j = c_j + S Uᵀ G⁻¹ r_j,  C = S − S Uᵀ G⁻¹ U S,
    w̄ = Σ π_j w̄_j,  Cov = C + Σ π_j (w̄_j − w̄)(w̄_j − w̄)ᵀ.
The query MSE with the optimal readout is σ² + tr Cov(w | Φ); the Monte-Carlo estimates below use
the realised σ² + ‖w − w̄‖² over sequences w ~ P(w).

Policies (designs U per layer, H channels each): `linear` (top-LH eigenvectors of Σ_w, LMMSE
readout), `fixed-nonlinear` (same U, mixture posterior mean), `greedy` (top-H eigenvectors of
Cov(w | Φ_ℓ)), `coarse-to-fine` (split directions of the MAP node at level ℓ − 1), and `dp_value`
(exact Bellman recursion over a candidate set, L ≤ 2). Gaussian prior closed form:
    J*_Gauss(L) = σ² + Σ_{j>LH} λ_j + Σ_{j≤LH} λ_j τ² / (λ_j + τ²).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from tokendyn.errors import ConfigError
from tokendyn.theory.icl.priors import GaussianPrior, MixturePrior, TreePrior

POLICIES = ("linear", "fixed-nonlinear", "greedy", "coarse-to-fine")


def tau2(prior: MixturePrior, sigma: float, N: int) -> float:
    """Isotropic mean-field measurement noise τ² = (E‖w‖² + σ²)/N."""
    return (prior.second_moment + sigma**2) / N


def measurement_cov(w: np.ndarray, U: np.ndarray, sigma: float, N: int) -> np.ndarray:
    """Exact Cov[U s | w] = U [(‖w‖² + σ²) I + w wᵀ] Uᵀ / N for x ~ N(0, I)."""
    d = w.size
    return U @ ((w @ w + sigma**2) * np.eye(d) + np.outer(w, w)) @ U.T / N


@dataclass
class Posterior:
    """Batched mixture posterior: log_post (B, J), means (B, J, d), mean (B, d), cov (B, d, d)."""

    log_post: np.ndarray
    means: np.ndarray
    mean: np.ndarray
    cov: np.ndarray

    @property
    def post(self) -> np.ndarray:
        return np.exp(self.log_post)


def posterior(prior: MixturePrior, U: np.ndarray, m: np.ndarray, t2: float) -> Posterior:
    """Posterior of w given measurements m (B, M) = U (B, M, d) w + N(0, τ² I)."""
    B, M = m.shape
    S, C = prior.S, prior.centres
    logw = np.broadcast_to(
        prior.log_weights - np.logaddexp.reduce(prior.log_weights), (B, C.shape[0])
    )
    if M == 0:
        means = np.broadcast_to(C, (B, *C.shape))
        cond = np.broadcast_to(S, (B, *S.shape))
        log_post = logw.copy()
    else:
        SU = np.einsum("de,bme->bdm", S, U)  # S Uᵀ
        G = np.einsum("bmd,bdn->bmn", U, SU) + t2 * np.eye(M)
        Ginv = np.linalg.inv(G)
        r = m[:, None, :] - np.einsum("bmd,jd->bjm", U, C)
        Gr = np.einsum("bmn,bjn->bjm", Ginv, r)
        log_post = logw - 0.5 * np.einsum("bjm,bjm->bj", r, Gr)
        means = C[None] + np.einsum("bdm,bjm->bjd", SU, Gr)
        cond = S[None] - np.einsum("bdm,bmn,ben->bde", SU, Ginv, SU)
    log_post = log_post - np.logaddexp.reduce(log_post, axis=1, keepdims=True)
    pi = np.exp(log_post)
    mean = np.einsum("bj,bjd->bd", pi, means)
    dev = means - mean[:, None, :]
    cov = cond + np.einsum("bj,bjd,bje->bde", pi, dev, dev)
    return Posterior(log_post, means, mean, cov)


def top_eigvecs(cov: np.ndarray, k: int) -> np.ndarray:
    """Rows: the top-k eigenvectors of each covariance (B, d, d) → (B, k, d)."""
    _, vecs = np.linalg.eigh(cov)
    return np.swapaxes(vecs[..., ::-1][..., :k], -1, -2)


def j_star_gauss(
    prior: MixturePrior, sigma: float, N: int, depths: list[int], H: int = 1
) -> np.ndarray:
    """J*_Gauss(L) for each depth, with λ_j the eigenvalues of Σ_w and τ² the mean-field noise."""
    lam = np.sort(np.linalg.eigvalsh(prior.cov))[::-1]
    t2 = tau2(prior, sigma, N)
    out = []
    for L in depths:
        n = min(L * H, lam.size)
        out.append(sigma**2 + lam[n:].sum() + np.sum(lam[:n] * t2 / (lam[:n] + t2)))
    return np.array(out)


@dataclass
class PolicyResult:
    """Per depth ℓ = 1..L: mse (mean of σ² + ‖w − ŵ‖²), its standard error, and the posterior MAP
    accuracy of the level-k tree node, level_accuracy[ℓ−1, k−1] (tree priors only)."""

    policy: str
    mse: np.ndarray
    mse_stderr: np.ndarray
    level_accuracy: np.ndarray | None


def run_policy(
    prior: MixturePrior,
    sigma: float,
    N: int,
    policy: str,
    L: int,
    H: int = 1,
    n_seq: int = 4000,
    seed: int = 0,
) -> PolicyResult:
    """Simulate a measurement policy for depths 1..L on n_seq sequences w ~ P(w)."""
    if policy not in POLICIES:
        raise ConfigError(
            "policy", f"unknown policy {policy!r}", f"use one of {', '.join(POLICIES)}"
        )
    tree = prior if isinstance(prior, TreePrior) else None
    if policy == "coarse-to-fine" and tree is None:
        raise ConfigError("policy", "coarse-to-fine needs the tree prior", "use --prior tree")
    if L < 1 or H < 1:
        raise ConfigError("depths", f"need depth ≥ 1 and H ≥ 1 (got {L}, {H})", "use ≥ 1")
    rng = np.random.default_rng(seed)
    w, comp = prior.sample(n_seq, rng)
    t2 = tau2(prior, sigma, N)
    gauss = GaussianPrior.matched(prior)
    fixed = top_eigvecs(prior.cov[None], min(L * H, prior.d))[0]
    U = np.zeros((n_seq, 0, prior.d))
    m = np.zeros((n_seq, 0))
    post = posterior(prior, U, m, t2)
    mse, se, acc = [], [], []
    for ell in range(1, L + 1):
        if policy in ("linear", "fixed-nonlinear"):
            new = fixed[(ell - 1) * H : ell * H]
            new = (
                np.broadcast_to(new, (n_seq, *new.shape)) if len(new) else top_eigvecs(post.cov, H)
            )
        elif policy == "greedy" or ell > tree.K:
            new = top_eigvecs(post.cov, H)
        else:
            node = map_node(tree, post, ell - 1)
            new = tree.split_basis(ell - 1, node)[:, :H]
            if new.shape[1] < H:
                new = np.concatenate([new, top_eigvecs(post.cov, H - new.shape[1])], axis=1)
        U = np.concatenate([U, new], axis=1)
        m = np.concatenate(
            [
                m,
                np.einsum("bhd,bd->bh", new, w)
                + math.sqrt(t2) * rng.standard_normal((n_seq, new.shape[1])),
            ],
            axis=1,
        )
        post = posterior(prior, U, m, t2)
        w_hat = posterior(gauss, U, m, t2).mean if policy == "linear" else post.mean
        err = sigma**2 + np.sum((w - w_hat) ** 2, axis=1)
        mse.append(err.mean())
        se.append(err.std(ddof=1) / math.sqrt(n_seq))
        if tree is not None:
            acc.append(
                [
                    np.mean(map_node(tree, post, k) == tree.node_of(comp, k))
                    for k in range(1, tree.K + 1)
                ]
            )
    return PolicyResult(policy, np.array(mse), np.array(se), np.array(acc) if acc else None)


def map_node(tree: TreePrior, post: Posterior, level: int) -> np.ndarray:
    """MAP node at a level: the leaf posterior summed over the leaves below each node."""
    p = post.post.reshape(post.post.shape[0], tree.b**level, -1).sum(axis=2)
    return p.argmax(axis=1)


def dp_candidates(prior: MixturePrior) -> np.ndarray:
    """Candidate directions for the exact DP: eigenvectors of Σ_w and, for a tree, every node's
    split directions (unit rows)."""
    cands = [top_eigvecs(prior.cov[None], prior.d)[0]]
    if isinstance(prior, TreePrior):
        for k in range(prior.K):
            nodes = np.arange(prior.b**k)
            cands.append(prior.split_basis(k, nodes).reshape(-1, prior.d))
    return np.concatenate(cands)


def dp_value(
    prior: MixturePrior,
    sigma: float,
    N: int,
    L: int,
    candidates: np.ndarray | None = None,
    n_outer: int = 400,
    n_inner: int = 32,
    seed: int = 0,
) -> float:
    """J*(L) = V_0(∅) of the Bellman recursion V_ℓ(Φ) = min_u E_m V_{ℓ+1}(Φ ∪ (u, m)), terminal
    V_L = σ² + tr Cov(w | Φ), for one channel per layer and L ∈ {1, 2}, over a candidate set; the
    expectations are Monte Carlo with common random numbers (the minima are slightly optimistic)."""
    if L not in (1, 2):
        raise ConfigError("L", f"exact DP is implemented for L ≤ 2 (got {L})", "use L = 1 or 2")
    cands = dp_candidates(prior) if candidates is None else candidates
    rng = np.random.default_rng(seed)
    t2 = tau2(prior, sigma, N)
    w, _ = prior.sample(n_outer, rng)
    eta = math.sqrt(t2) * rng.standard_normal(n_outer)
    best = math.inf
    for u in cands:
        U1 = np.broadcast_to(u, (n_outer, 1, prior.d))
        m1 = (w @ u + eta)[:, None]
        if L == 1:
            value = np.trace(posterior(prior, U1, m1, t2).cov, axis1=1, axis2=2).mean()
        else:
            value = _second_layer_value(prior, U1, m1, cands, t2, n_inner, rng)
        best = min(best, float(value))
    return sigma**2 + best


def _second_layer_value(
    prior: MixturePrior,
    U1: np.ndarray,
    m1: np.ndarray,
    cands: np.ndarray,
    t2: float,
    n_inner: int,
    rng: np.random.Generator,
) -> float:
    """E_{m1}[min_{u2} E_{m2 | Φ1, u2} tr Cov(w | Φ1, u2, m2)], m2 from the posterior predictive."""
    post = posterior(prior, U1, m1, t2)
    B, d = m1.shape[0], prior.d
    comp = (post.post.cumsum(1)[:, None, :] < rng.random((B, n_inner, 1))).sum(-1)
    comp = np.minimum(comp, post.post.shape[1] - 1)
    # w | Φ1, j ~ N(w̄_j, C): the within-component posterior covariance is shared by all j
    cond = post.cov - np.einsum(
        "bj,bjd,bje->bde",
        post.post,
        post.means - post.mean[:, None],
        post.means - post.mean[:, None],
    )
    root = np.linalg.cholesky(cond + 1e-12 * np.eye(d))
    wj = np.take_along_axis(post.means, comp[..., None], axis=1)
    ws = wj + np.einsum("bde,bke->bkd", root, rng.standard_normal((B, n_inner, d)))
    eta = math.sqrt(t2) * rng.standard_normal((B, n_inner))
    U1r, m1r = np.repeat(U1, n_inner, axis=0), np.repeat(m1, n_inner, axis=0)
    values = []
    for u in cands:
        m2 = (ws @ u + eta).reshape(-1, 1)
        U = np.concatenate([U1r, np.broadcast_to(u, (B * n_inner, 1, d))], axis=1)
        tr = np.trace(posterior(prior, U, np.concatenate([m1r, m2], 1), t2).cov, axis1=1, axis2=2)
        values.append(tr.reshape(B, n_inner).mean(1))
    return float(np.min(np.stack(values), axis=0).mean())
