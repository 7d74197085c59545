"""Limits of the moderate-interaction regime (multiscale spec §3): alignment, heat, pairing.

Alignment (§3.1, β → ∞ at fixed t): tokens move independently, ẋ = P_x(V KᵀQ x)/|KᵀQ x|, i.e.
x(t) = e^{τM}x₀/|e^{τM}x₀| with M = V KᵀQ and dτ/dt = 1/|KᵀQ x(t)|; they end on E_max, the
generalised eigenspace of M for the eigenvalues of largest real part.

Heat (§3.2, time O(β), Q = K = I, V = γI on S¹): a wrapped normal of variance σ² evolves by
∂_s μ = −γΔμ (s = t/β), σ²(t) = σ₀² − 2γt/β, and at finite β by the corrected law
βσ² + ln σ² = βσ₀² + ln σ₀² − 2γt.

Pairing (§3.3): weighted clusters on the sphere with Q = K = V = I, the exact isolated-pair merge
time, and sequential merging.

Clusters are Dirac masses α_k at x_k. Self-attention (self-interaction included) moves them by

    ẋ_k = P_{x_k} Σ_l α_l e^{β⟨x_k, x_l⟩} x_l / Σ_l α_l e^{β⟨x_k, x_l⟩},

i.e. softmax attention with the key bias log α_l (for equal masses: the token system itself). For
an isolated pair at angle θ (c = cos θ) the gap obeys

    θ' = −sin θ [α_j e^{βc}/(α_i e^β + α_j e^{βc}) + α_i e^{βc}/(α_j e^β + α_i e^{βc})],

so the merge time is T(θ₀ → θ_f) = ∫_{θ_f}^{θ₀} dθ/|θ'| ≈ e^{β(1−cos θ₀)}/(2β sin²θ₀) for equal
masses. Runs use adaptive steps (SciPy DOP853), so times of order e^{β} cost little.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import numpy as np
import torch
from scipy.integrate import quad, solve_ivp
from scipy.linalg import expm, schur
from scipy.special import ive, lambertw

from tokendyn.engine.integrate import rk4_step
from tokendyn.engine.observables import pair_logsumexp
from tokendyn.engine.space import Sphere
from tokendyn.errors import ConfigError

F64 = torch.float64


def top_eigenspace(M: np.ndarray, tol: float = 1e-9) -> np.ndarray:
    """Orthonormal basis (d, k) of E_max: the invariant subspace of M for the eigenvalues whose
    real part is within tol of the largest (sorted real Schur decomposition; Jordan-safe)."""
    M = np.asarray(M, dtype=float)
    if M.ndim != 2 or M.shape[0] != M.shape[1]:
        raise ConfigError("M", f"has shape {M.shape}", "give a square matrix V KᵀQ")
    top = np.linalg.eigvals(M).real.max()
    _, Z, k = schur(M, output="real", sort=lambda re, im: re >= top - tol * max(1.0, abs(top)))
    return Z[:, :k]


def transverse_mass(x: torch.Tensor, basis: np.ndarray) -> torch.Tensor:
    """ε_⊥ = (1/N) Σ_i |(I − Π) x_i|², Π the orthogonal projector onto span(basis); per cloud."""
    b = torch.as_tensor(basis, dtype=x.dtype, device=x.device)
    inside = (x @ b) @ b.T
    return (x - inside).pow(2).sum(-1).mean(-1)


def alignment_flow(
    x0: torch.Tensor, t: float, Q: np.ndarray, K: np.ndarray, V: np.ndarray, dt: float = 1e-3
) -> torch.Tensor:
    """The β → ∞ per-token flow at time t. KᵀQ = cI: closed form x = e^{tM/c}x₀/|·|; otherwise the
    limit field ẋ = P_x(Mx)/|KᵀQx| is integrated (the engine's RK4 with the sphere's retraction,
    step ≤ dt), tokens independently."""
    A = np.asarray(K, dtype=float).T @ np.asarray(Q, dtype=float)
    M = np.asarray(V, dtype=float) @ A
    c = A[0, 0]
    if np.allclose(A, c * np.eye(A.shape[0]), atol=1e-14) and c > 0:
        y = x0 @ torch.as_tensor(expm(t * M / c), dtype=x0.dtype).T
        return y / y.norm(dim=-1, keepdim=True)
    M_t, A_t = (torch.as_tensor(m, dtype=x0.dtype) for m in (M, A))
    sphere = Sphere()

    def field(x: torch.Tensor) -> torch.Tensor:
        return sphere.project(x, x @ M_t.T) / (x @ A_t.T).norm(dim=-1, keepdim=True)

    x, steps = x0.clone(), max(1, math.ceil(t / dt))
    for _ in range(steps):
        x = sphere.retract(rk4_step(field, x, t / steps))
    return x


def heat_variance(
    sigma0: float, t: float, beta: float, gamma: int, finite_beta: bool = True
) -> float:
    """Variance σ²(t) of one wrapped-normal component under V = γI (γ = +1 backward, −1 forward).
    Heat limit: σ₀² − 2γt/β (NaN once collapsed). Finite β: βσ² + ln σ² = βσ₀² + ln σ₀² − 2γt,
    i.e. σ² = W(β e^C)/β with C the right-hand side and W the Lambert function."""
    if gamma not in (-1, 1):
        raise ConfigError(
            "gamma", f"is {gamma}", "use +1 (V = I, backward) or −1 (V = −I, forward)"
        )
    if not finite_beta:
        value = sigma0**2 - 2 * gamma * t / beta
        return value if value > 0 else math.nan
    rhs = beta * sigma0**2 + math.log(sigma0**2) - 2 * gamma * t
    return float(lambertw(beta * math.exp(rhs)).real) / beta


def mode_growth_rates(beta: float, kmax: int = 200) -> np.ndarray:
    """Linear growth rates λ_k = k² I_k(β)/(β I_0(β)), k = 1 … kmax, of Fourier mode k of uniform
    data on S¹ under SA with Q = K = V = I (ICLR companion; ≈ k²/β for k ≪ √β, max → 2/e)."""
    k = np.arange(1, kmax + 1)
    return k**2 * ive(k, beta) / (beta * ive(0, beta))


def selected_mode(beta: float) -> int:
    """k*(β) = argmax_k k² I_k(β) ≈ √(2β): the number of clusters born from uniform data on S¹."""
    return int(np.argmax(mode_growth_rates(beta, max(20, int(4 * math.sqrt(2 * beta) + 10))))) + 1


def fourier_modes(x: torch.Tensor, kmax: int) -> np.ndarray:
    """|μ̂_k| = |(1/N) Σ_i e^{−ikθ_i}|, k = 1 … kmax, for tokens (…, N, 2) on the circle."""
    theta = torch.atan2(x[..., 1], x[..., 0]).detach().cpu().double().numpy()
    k = np.arange(1, kmax + 1)
    return np.abs(np.exp(-1j * theta[..., None] * k).mean(axis=-2))


def wrapped_normal_density(
    theta: np.ndarray,
    centers: list[float],
    weights: list[float],
    variances: list[float],
    terms: int = 8,
) -> np.ndarray:
    """Σ_j α_j WN(θ; m_j, σ_j²) on the circle (images k = −terms … terms), α normalised."""
    theta = np.asarray(theta, dtype=float)[..., None]
    alpha = np.asarray(weights, dtype=float) / np.sum(weights)
    var = np.asarray(variances, dtype=float)
    k = np.arange(-terms, terms + 1)[:, None, None]
    gauss = np.exp(-((theta - np.asarray(centers) + 2 * np.pi * k) ** 2) / (2 * var))
    return (gauss.sum(0) / np.sqrt(2 * np.pi * var) * alpha).sum(-1)


def pair_rate(theta: float, beta: float, alpha_i: float = 1.0, alpha_j: float = 1.0) -> float:
    """dθ/dt of an isolated pair of clusters (masses α_i, α_j) at angle θ; max-shifted by e^{−β}."""
    decay = math.exp(beta * (math.cos(theta) - 1.0))  # e^{β(c−1)} ≤ 1
    return -math.sin(theta) * (
        alpha_j * decay / (alpha_i + alpha_j * decay)
        + alpha_i * decay / (alpha_j + alpha_i * decay)
    )


def pair_merge_time(
    theta0: float,
    beta: float,
    theta_final: float = 0.05,
    alpha_i: float = 1.0,
    alpha_j: float = 1.0,
) -> float:
    """Exact T(θ₀ → θ_f) = ∫ dθ/|θ'| for an isolated pair (quadrature in log space)."""
    if not 0 < theta_final < theta0 < math.pi:
        raise ConfigError(
            "angles",
            f"need 0 < θ_f={theta_final} < θ₀={theta0} < π",
            "give a pair closer than π and farther apart than the merge gap",
        )

    def integrand(theta: float) -> float:
        return -1.0 / pair_rate(theta, beta, alpha_i, alpha_j)

    # The integrand grows like e^{β(1−cos θ)}: split the range so quad resolves both ends.
    points = np.linspace(theta_final, theta0, 9)
    return float(
        sum(
            quad(integrand, a, b, epsabs=0, epsrel=1e-11, limit=200)[0]
            for a, b in itertools.pairwise(points)
        )
    )


def pair_merge_time_asymptotic(theta0: float, beta: float) -> float:
    """Leading order e^{β(1−cos θ₀)}/(2β sin²θ₀) (equal masses)."""
    return math.exp(beta * (1 - math.cos(theta0))) / (2 * beta * math.sin(theta0) ** 2)


def cluster_velocity(x: torch.Tensor, masses: torch.Tensor, beta: float) -> torch.Tensor:
    """P_{x_k} Σ_l α_l e^{β⟨x_k,x_l⟩} x_l / Σ_l α_l e^{β⟨x_k,x_l⟩} for clusters x (m, d).

    Written as Σ_{l≠k} w_kl P_{x_k} x_l (P_{x_k} x_k = 0): the self term, which carries almost all
    the weight, would otherwise cancel in the projection and leave a rounding floor of ~1e-16
    under velocities of order e^{β(cos θ−1)} — a floor that caps adaptive steps at long times."""
    x_hat = x / x.norm(dim=-1, keepdim=True)
    logits = beta * (x @ x.T) + masses.log().unsqueeze(0)
    w = torch.softmax(logits, dim=-1)
    w = w - torch.diag_embed(torch.diagonal(w))
    pulled = w @ x
    return pulled - (pulled * x_hat).sum(-1, keepdim=True) * x_hat


def angles_to_points(angles: list[float]) -> torch.Tensor:
    """Tokens on the circle S¹ at the given angles (radians), shape (m, 2)."""
    a = torch.tensor(angles, dtype=F64)
    return torch.stack([a.cos(), a.sin()], dim=-1)


def closest_pair(x: torch.Tensor) -> tuple[int, int, float]:
    """(i, j, angle) of the pair with the largest inner product (i < j)."""
    x_hat = x / x.norm(dim=-1, keepdim=True)
    gram = x_hat @ x_hat.T
    gram.fill_diagonal_(-2.0)
    flat = int(gram.argmax())
    i, j = divmod(flat, x.shape[0])
    return min(i, j), max(i, j), math.acos(max(-1.0, min(1.0, float(gram[i, j]))))


@dataclass
class Merge:
    time: float
    pair: tuple[int, int]
    masses: list[float]  # after the merge
    energy_before: float
    energy_after: float


def normalised_energy(x: torch.Tensor, masses: torch.Tensor, beta: float) -> float:
    """Ê = Σ_kl α_k α_l e^{β(⟨x̂_k,x̂_l⟩−1)} / (Σα)²: Σα_k²/(Σα)² for far-apart clusters; each merge
    of k, l adds 2α_kα_l/(Σα)². Summed in log form by the engine's `pair_logsumexp`."""
    x_hat = x / x.norm(dim=-1, keepdim=True)
    log_w = torch.log(masses / masses.sum()).to(x_hat.dtype)
    return math.exp(float(pair_logsumexp(beta * x_hat, x_hat, log_weights=log_w)) - beta)


def run_until_merge(
    x0: torch.Tensor, masses: torch.Tensor, beta: float, gap: float = 0.05, t_max: float = math.inf
) -> tuple[float, torch.Tensor, tuple[int, int]]:
    """Integrate the clusters adaptively until two of them are closer than `gap` (radians).
    Returns (time, positions at that time, the merging pair); time = inf if t_max comes first."""
    m, d = x0.shape
    if m < 2:
        raise ConfigError("angles", "need at least two clusters", "give two or more angles")

    def rhs(_t: float, y: np.ndarray) -> np.ndarray:
        x = torch.from_numpy(y.reshape(m, d))
        return cluster_velocity(x, masses, beta).reshape(-1).numpy()

    def closest_gap(_t: float, y: np.ndarray) -> float:
        return closest_pair(torch.from_numpy(y.reshape(m, d)))[2] - gap

    closest_gap.terminal = True  # type: ignore[attr-defined]
    closest_gap.direction = -1  # type: ignore[attr-defined]
    horizon = t_max if math.isfinite(t_max) else 1e300
    sol = solve_ivp(
        rhs,
        (0.0, horizon),
        x0.reshape(-1).numpy(),
        method="DOP853",
        rtol=1e-10,
        atol=1e-12,
        events=closest_gap,
    )
    if not sol.t_events[0].size:
        return math.inf, torch.from_numpy(sol.y[:, -1].reshape(m, d)), (-1, -1)
    x = torch.from_numpy(sol.y_events[0][0].reshape(m, d))
    x = x / x.norm(dim=-1, keepdim=True)
    i, j, _ = closest_pair(x)
    return float(sol.t_events[0][0]), x, (i, j)


def merged_position(
    xi: torch.Tensor, xj: torch.Tensor, alpha_i: float, alpha_j: float
) -> torch.Tensor:
    """The point of the arc x_i → x_j that splits it as dist(i) : dist(j) = α_j² : α_i²."""
    share = alpha_j**2 / (alpha_i**2 + alpha_j**2)
    theta = math.acos(max(-1.0, min(1.0, float(xi @ xj))))
    if theta < 1e-12:
        return xi
    return (math.sin((1 - share) * theta) * xi + math.sin(share * theta) * xj) / math.sin(theta)


def sequential_merges(
    x0: torch.Tensor, masses: torch.Tensor, beta: float, gap: float = 0.05, t_max: float = math.inf
) -> list[Merge]:
    """Merge the closest pair each time it comes within `gap`, until one cluster (or t_max)."""
    x, alpha, t = x0.clone(), masses.clone().to(F64), 0.0
    ids = list(range(x0.shape[0]))
    events: list[Merge] = []
    while x.shape[0] > 1:
        dt, x_hit, (i, j) = run_until_merge(x, alpha, beta, gap, t_max - t)
        if not math.isfinite(dt):
            break
        t += dt
        before = normalised_energy(x_hit, alpha, beta)
        joined = merged_position(x_hit[i], x_hit[j], float(alpha[i]), float(alpha[j]))
        keep = [k for k in range(x.shape[0]) if k not in (i, j)]
        x = torch.cat([x_hit[keep], joined.unsqueeze(0)])
        new_alpha = torch.cat([alpha[keep], (alpha[i] + alpha[j]).reshape(1)])
        events.append(
            Merge(
                t,
                (ids[i], ids[j]),
                new_alpha.tolist(),
                before,
                normalised_energy(x, new_alpha, beta),
            )
        )
        ids = [ids[k] for k in keep] + [min(ids[i], ids[j])]
        alpha = new_alpha
    return events
