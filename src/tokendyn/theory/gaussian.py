"""Gaussian closure of the Transformer PDE: ODEs for the mean α and covariance Σ (spec §3).

For μ = N(α, Σ) the velocity of softmax, multi-head, L2 and Sinkhorn attention is affine,
Γ[μ](x) = M x + b, so μ_t stays Gaussian with

    α' = M α + b,    Σ' = M Σ + Σ Mᵀ.

Per head h (A_h = K_hᵀQ_h, C_h = W_h V_h the value-output map, β_h the inverse temperature):

    softmax     Γ(x) = C_h (α + β_h Σ A_h x)                                     (§3.1, §3.2)
    L2          Γ(x) = C_h R_h (α + 2β_h Σ K_hᵀQ_h x),  R_h = (I + 2β_h Σ K_hᵀK_h)⁻¹    (§3.3)
    Sinkhorn    Γ(x) = C_h (α + J_h (x − α)),  Σ' ∋ C_h X_h + X_hᵀ C_hᵀ with the plan's
                cross-covariance X_h = J_h Σ = 2 S G_hᵀ [I + (I + 4 G_h G_hᵀ)^{1/2}]⁻¹ S,
                S = Σ^{1/2}, G_h = S B_h S, B_h = β_h Q_hᵀK_h / ε   (inverse-free form, §3.4)

and the field is the sum over heads. Sigmoid and masked attention have no Gaussian closure (§3.5).
`scaling="authors"` applies the released code's conventions (§7.1): β·1/√d for softmax,
β·1/√(d/H) per head for multi-head, Q → Q/√d for L2, ε = 1 for Sinkhorn.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch

from tokendyn.engine.attention import VARIANTS, Head, split_heads
from tokendyn.engine.attention.base import AttentionField, check_head
from tokendyn.engine.linalg import psd_sqrt as engine_psd_sqrt
from tokendyn.errors import ConfigError

Variant = Literal["softmax", "multihead", "l2", "sinkhorn"]
Scaling = Literal["explicit", "authors"]
CLOSED = ("softmax", "multihead", "l2", "sinkhorn")
NO_CLOSURE = {
    "sigmoid": "sigmoid attention has no Gaussian closure: its weights are not exponential in x, "
    "so Γ[N(α,Σ)](x) is not affine in x and Gaussians are not preserved (spec §3.5)",
    "masked": "masked (causal) attention has no Gaussian closure: the attended measure "
    "(1/s)∫_0^s μ_r dr is a Gaussian mixture (spec §3.5); only position-independent data reduce "
    "to the unmasked closure",
}
NO_CLOSURE["causal"] = NO_CLOSURE["masked"]


@dataclass(frozen=True)
class ClosureHead:
    """One head in numpy float64: Q, K ∈ R^{k×d}, value-output map C ∈ R^{d×d}, β."""

    Q: np.ndarray
    K: np.ndarray
    C: np.ndarray
    beta: float


def _matrix(value: object, name: str) -> np.ndarray:
    try:
        m = np.array(value, dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise ConfigError(
            name, f"is not numeric ({err})", "give a list of rows of numbers"
        ) from None
    if m.ndim != 2 or not np.isfinite(m).all():
        raise ConfigError(name, "is not a finite matrix", "give a list of rows of finite numbers")
    return m


def check_variant(attention: str) -> Variant:
    """The closed variant named `attention`; ConfigError for sigmoid/masked or unknown names."""
    if attention in NO_CLOSURE:
        raise ConfigError(
            "attention",
            NO_CLOSURE[attention],
            "simulate particles instead (tokendyn simulate), or use softmax, multihead, l2 "
            "or sinkhorn",
        )
    if attention not in CLOSED:
        raise ConfigError(
            "attention", f"unknown variant {attention!r}", f"use one of {', '.join(CLOSED)}"
        )
    return attention  # type: ignore[return-value]


@dataclass(frozen=True)
class GaussianClosure:
    """The closure of one attention variant: per-head matrices, ε (Sinkhorn), dimension d."""

    attention: Variant
    heads: tuple[ClosureHead, ...]
    eps: float = 1.0

    @property
    def d(self) -> int:
        return self.heads[0].C.shape[0]

    @property
    def grows(self) -> str:
        """'blowup' if Σ can blow up in finite time (quadratic RHS), else 'diverged' (§4.4)."""
        return "blowup" if self.attention in ("softmax", "multihead") else "diverged"

    # -- affine velocity (every method accepts batches: mean (..., d), cov (..., d, d)) ----------
    def cross_covariance(self, head: ClosureHead, cov: np.ndarray) -> np.ndarray:
        """Sinkhorn plan's cross-covariance X = JΣ = 2 S Gᵀ [I + (I + 4GGᵀ)^{1/2}]⁻¹ S, G = SBS."""
        S = psd_sqrt(cov)
        B = head.beta * head.Q.T @ head.K / self.eps
        G = S @ B @ S
        lam, U = np.linalg.eigh(G @ _t(G))
        root = (U * np.sqrt(1.0 + 4.0 * np.clip(lam, 0.0, None))[..., None, :]) @ _t(U)
        inner = np.eye(self.d) + root
        return 2.0 * S @ _t(np.linalg.solve(_t(inner), G)) @ S

    def affine(self, mean: np.ndarray, cov: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(M, b) with Γ[N(α,Σ)](x) = M x + b (Sinkhorn needs Σ ≻ 0 for M = C J)."""
        d = self.d
        M = np.zeros(cov.shape)
        b = np.zeros(mean.shape)
        for h in self.heads:
            if self.attention == "sinkhorn":
                J = _t(np.linalg.solve(_t(cov), _t(self.cross_covariance(h, cov))))
                M = M + h.C @ J
                b = b + _mv(h.C, mean - _mv(J, mean))
            elif self.attention == "l2":
                R = np.linalg.inv(np.eye(d) + 2.0 * h.beta * cov @ (h.K.T @ h.K))
                M = M + 2.0 * h.beta * h.C @ R @ cov @ (h.K.T @ h.Q)
                b = b + _mv(h.C @ R, mean)
            else:
                M = M + h.beta * h.C @ cov @ (h.K.T @ h.Q)
                b = b + _mv(h.C, mean)
        return M, b

    def rhs(self, mean: np.ndarray, cov: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(α', Σ') = (Mα + b, MΣ + ΣMᵀ); Sinkhorn uses the inverse-free form (valid for Σ ⪰ 0)."""
        mean = np.asarray(mean, dtype=np.float64)
        cov = np.asarray(cov, dtype=np.float64)
        cov = 0.5 * (cov + _t(cov))
        if self.attention == "sinkhorn":
            dmean = sum(_mv(h.C, mean) for h in self.heads)
            P = sum(h.C @ self.cross_covariance(h, cov) for h in self.heads)
            return np.asarray(dmean), P + _t(P)
        M, b = self.affine(mean, cov)
        P = M @ cov
        return _mv(M, mean) + b, P + _t(P)

    def cov_rhs(self, cov: np.ndarray) -> np.ndarray:
        """Σ' alone (it does not involve α)."""
        return self.rhs(np.zeros(np.shape(cov)[:-1]), cov)[1]

    def velocity(self, x: np.ndarray, mean: np.ndarray, cov: np.ndarray) -> np.ndarray:
        """Γ[N(α,Σ)](x) for points x of shape (n, d)."""
        M, b = self.affine(np.asarray(mean, float), np.asarray(cov, float))
        return np.asarray(x, float) @ M.T + b

    # -- the matching particle system ------------------------------------------------------------
    def particle_field(self, backend: str = "auto", sinkhorn_tol: float = 1e-10) -> AttentionField:
        """The core engine's attention field with the same parameters (Sinkhorn: β_h/ε)."""

        def head(h: ClosureHead, scale: float = 1.0) -> Head:
            empty = h.Q.shape[0] == 0  # an empty row block: A_h = 0, i.e. uniform attention
            Q, K = (np.zeros((1, self.d)),) * 2 if empty else (h.Q, h.K)
            return Head(_torch(Q), _torch(K), _torch(h.C), h.beta * scale)

        if self.attention == "sinkhorn":
            return VARIANTS["sinkhorn"](
                [head(h, 1.0 / self.eps) for h in self.heads], tol=sinkhorn_tol, backend=backend
            )
        cls = VARIANTS["softmax" if self.attention == "multihead" else self.attention]
        return cls([head(h) for h in self.heads], backend=backend)


def _torch(a: np.ndarray) -> torch.Tensor:
    return torch.as_tensor(a, dtype=torch.float64)


def _t(a: np.ndarray) -> np.ndarray:
    return np.swapaxes(a, -1, -2)


def _mv(M: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Batched matrix-vector product M x."""
    return (M @ x[..., None])[..., 0]


def psd_sqrt(cov: np.ndarray) -> np.ndarray:
    """The engine's principal square root (`tokendyn.engine.linalg.psd_sqrt`) of a (batch of)
    symmetric PSD matrices, on numpy float64 arrays."""
    return engine_psd_sqrt(torch.from_numpy(np.asarray(cov, dtype=np.float64))).numpy()


def make_closure(
    attention: str,
    Q: object,
    K: object,
    V: object,
    beta: float,
    heads: int | Sequence[Head] = 1,
    eps: float = 1.0,
    scaling: Scaling = "explicit",
) -> GaussianClosure:
    """Build the closure. heads: H (the authors' row-block split, W^O = I; `attention` softmax or
    multihead) or a list of core `Head`s with general output maps W_h (C_h = W_h V_h)."""
    variant = check_variant(attention)
    if scaling not in ("explicit", "authors"):
        raise ConfigError("scaling", f"unknown scaling {scaling!r}", "use 'explicit' or 'authors'")
    if not (np.isfinite(beta) and beta > 0):
        raise ConfigError("beta", f"is {beta}, it must be a finite number > 0", "use e.g. 1.0")
    if not (np.isfinite(eps) and eps > 0):
        raise ConfigError("eps", f"is {eps}, it must be a finite number > 0", "use e.g. 1.0")
    Qm, Km, Vm = _matrix(Q, "Q"), _matrix(K, "K"), _matrix(V, "V")
    d = Vm.shape[1]
    if isinstance(heads, int):
        if heads > 1 and variant == "softmax":
            variant = "multihead"
        if variant == "multihead":
            if scaling == "authors" and heads >= 1 and d % heads == 0:
                beta = beta / np.sqrt(d // heads)
            torch_heads = split_heads(_torch(Qm), _torch(Km), _torch(Vm), heads, beta)
        else:
            if heads != 1:
                raise ConfigError(
                    "heads",
                    f"the row-block split into {heads} heads is defined for softmax attention, "
                    f"not {variant}",
                    "use heads = 1, attention = 'multihead', or pass a list of Head objects",
                )
            torch_heads = [Head(_torch(Qm), _torch(Km), _torch(Vm), beta)]
    else:
        torch_heads = list(heads)
    if not torch_heads:
        raise ConfigError("heads", "no heads given", "give at least one head")
    for i, h in enumerate(torch_heads):
        check_head(h, d, i)
    if scaling == "authors" and variant == "softmax":
        torch_heads = [Head(h.Q, h.K, h.V, h.beta / np.sqrt(d), h.W) for h in torch_heads]
    if scaling == "authors" and variant == "l2":
        torch_heads = [Head(h.Q / np.sqrt(d), h.K, h.V, h.beta, h.W) for h in torch_heads]
    if scaling == "authors" and variant == "sinkhorn":
        eps = 1.0
    out = []
    for h in torch_heads:
        C = h.V if h.W is None else h.W @ h.V
        out.append(ClosureHead(h.Q.numpy().copy(), h.K.numpy().copy(), C.numpy().copy(), h.beta))
    return GaussianClosure(variant, tuple(out), float(eps))


def closure_rhs(
    attention: str,
    mean: object,
    cov: object,
    Q: object,
    K: object,
    V: object,
    beta: float,
    heads: int | Sequence[Head] = 1,
    eps: float = 1.0,
    scaling: Scaling = "explicit",
) -> tuple[np.ndarray, np.ndarray]:
    """(α', Σ') of the Gaussian closure for softmax, multihead, l2 or sinkhorn attention."""
    closure = make_closure(attention, Q, K, V, beta, heads, eps, scaling)
    return closure.rhs(np.asarray(mean, float), np.asarray(cov, float))


def gaussian_velocity(
    attention: str,
    x: object,
    mean: object,
    cov: object,
    Q: object,
    K: object,
    V: object,
    beta: float,
    heads: int | Sequence[Head] = 1,
    eps: float = 1.0,
    scaling: Scaling = "explicit",
) -> np.ndarray:
    """Γ[N(α,Σ)](x) for points x (..., d)."""
    closure = make_closure(attention, Q, K, V, beta, heads, eps, scaling)
    return closure.velocity(np.asarray(x, float), mean, cov)
