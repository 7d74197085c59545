"""Shared interface of the attention velocity fields Γ[μ](x).

A field holds one or more heads h = 1..H, each with Q_h, K_h ∈ R^{k_h×d}, V_h ∈ R^{m_h×d}, an output
map W_h ∈ R^{d×m_h} (C_h = W_h V_h) and an inverse temperature β_h, and evaluates, for clouds
x of shape (B, N, d),

    Γ(x_i) = Σ_h W_h Σ_j w^h_ij V_h x_j

where the weights w^h_ij are defined by the variant (softmax, L2, sigmoid, Sinkhorn). The N×N
reduction is delegated to a kernel backend (tokendyn.kernels). Masks: None, "causal" (token i sees
j ≤ i) or a bool (N, N) tensor (True = visible).
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Literal

import torch

from tokendyn.engine.kernels import Backend, Mask, get_backend
from tokendyn.errors import ConfigError, TokendynError

Normalise = Literal["softmax", "n"]


@dataclass
class Head:
    """One attention head: scores β⟨Q x_i, K x_j⟩, values V x_j, output W (None = identity).

    beta is a number, or a 1-D tensor with one β per cloud of a batch (B,) — used by sweeps to run
    a β grid as one batched computation."""

    Q: torch.Tensor
    K: torch.Tensor
    V: torch.Tensor
    beta: float | torch.Tensor
    W: torch.Tensor | None = None

    def to(self, dtype: torch.dtype, device: torch.device | str) -> Head:
        move = lambda t: None if t is None else t.to(dtype=dtype, device=device)  # noqa: E731
        beta = move(self.beta) if isinstance(self.beta, torch.Tensor) else self.beta
        return Head(move(self.Q), move(self.K), move(self.V), beta, move(self.W))

    def scale(self, x: torch.Tensor) -> torch.Tensor:
        """β as a (B or 1, 1, 1) tensor broadcasting over the clouds x (B, N, ·)."""
        beta = torch.as_tensor(self.beta, dtype=x.dtype, device=x.device).reshape(-1, 1, 1)
        if beta.shape[0] not in (1, x.shape[0]):
            raise ConfigError(
                "beta",
                f"has {beta.shape[0]} values for {x.shape[0]} clouds",
                "give one β per cloud of the batch, or a single number",
            )
        return beta


def as_matrix(value: object, name: str) -> torch.Tensor:
    try:
        t = torch.as_tensor(value, dtype=torch.float64)
    except (TypeError, ValueError, RuntimeError) as err:
        raise ConfigError(
            name, f"is not a numeric matrix ({err})", "give a list of rows of numbers"
        ) from err
    if t.dim() != 2:
        raise ConfigError(
            name, f"has {t.dim()} dimensions, expected a matrix", "give a list of rows"
        )
    if not torch.isfinite(t).all():
        raise ConfigError(name, "contains NaN or Inf", "give finite entries")
    return t


def check_head(head: Head, d: int, index: int = 0) -> None:
    """Validate shapes: Q, K ∈ R^{k×d}, V ∈ R^{m×d}, W ∈ R^{d×m} (V square d×d when W is None)."""
    label = "" if index == 0 else f" (head {index})"
    if head.W is None and head.V.shape != (d, d):
        raise ConfigError(
            "V",
            f"has shape {tuple(head.V.shape)}{label}, expected ({d}, {d})",
            "give a square d×d value matrix",
        )
    for name in ("Q", "K", "V"):
        t = getattr(head, name)
        if t.dim() != 2 or t.shape[1] != d:
            raise ConfigError(
                name,
                f"has shape {tuple(t.shape)}{label}, expected (k, {d})",
                f"give a matrix with {d} columns (the token dimension d)",
            )
    if head.Q.shape != head.K.shape:
        raise ConfigError(
            "K",
            f"has shape {tuple(head.K.shape)} but Q has {tuple(head.Q.shape)}{label}",
            "give Q and K the same shape (k, d)",
        )
    if head.W is not None and head.W.shape != (d, head.V.shape[0]):
        raise ConfigError(
            "W",
            f"has shape {tuple(head.W.shape)}{label}, expected ({d}, {head.V.shape[0]})",
            "give an output map of shape (d, m)",
        )
    betas = torch.as_tensor(head.beta, dtype=torch.float64)
    if betas.dim() > 1 or betas.numel() == 0 or not bool(((betas > 0) & betas.isfinite()).all()):
        raise ConfigError(
            "beta",
            f"is {head.beta}, it must be a finite number > 0 (or a 1-D tensor of them)",
            "give each head a finite β > 0, e.g. beta=1.0",
        )


def split_heads(
    Q: torch.Tensor, K: torch.Tensor, V: torch.Tensor, heads: int, beta: float | torch.Tensor
) -> list[Head]:
    """The authors' multi-head convention: head h uses the h-th block of k = d/H consecutive rows of
    Q, K and V, and writes its output into the same block (W_h = block selector, so C_h = V with the
    rows outside block h set to zero). If Q has fewer rows, later heads get empty Q_h, K_h (A_h = 0,
    i.e. uniform attention)."""
    d = V.shape[1]
    if V.shape != (d, d):
        raise ConfigError(
            "V",
            f"has shape {tuple(V.shape)}; the row-block split needs a square ({d}, {d}) matrix",
            "give a square d×d value matrix",
        )
    if heads < 1 or d % heads:
        raise ConfigError(
            "heads",
            f"{heads} heads do not divide d={d}",
            f"choose a number of heads that divides {d}",
        )
    k = d // heads
    out = []
    for h in range(heads):
        rows = slice(h * k, (h + 1) * k)
        W = torch.zeros(d, k, dtype=V.dtype, device=V.device)
        W[rows] = torch.eye(k, dtype=V.dtype, device=V.device)
        out.append(Head(Q[rows], K[rows], V[rows], beta, W))
    return out


def check_state(x: torch.Tensor, d: int | None = None) -> torch.Tensor:
    """Accept (N, d) or (B, N, d) clouds; return (B, N, d)."""
    if x.dim() == 2:
        x = x.unsqueeze(0)
    if x.dim() != 3:
        raise TokendynError(
            f"x: has shape {tuple(x.shape)}; expected (N, d) or (B, N, d). Fix: reshape the cloud"
        )
    if d is not None and x.shape[-1] != d:
        raise TokendynError(
            f"x: tokens have dimension {x.shape[-1]} but the field expects d={d}. "
            "Fix: use matrices with d columns or a cloud of dimension d"
        )
    return x


class AttentionField(ABC):
    """Γ[μ](x) for a batch of clouds; subclasses define the weights of one head."""

    variant: str

    def __init__(
        self,
        heads: list[Head],
        *,
        mask: Mask = None,
        normalise: Normalise = "softmax",
        backend: str | Backend = "auto",
    ) -> None:
        if not heads:
            raise ConfigError("heads", "no heads given", "give at least one head")
        self.d = heads[0].V.shape[1]
        for i, head in enumerate(heads):
            check_head(head, self.d, i)
        if normalise not in ("softmax", "n"):
            raise ConfigError(
                "normalise", f"unknown normalisation {normalise!r}", "use 'softmax' or 'n'"
            )
        if isinstance(mask, torch.Tensor):
            if mask.dtype != torch.bool or mask.dim() != 2 or mask.shape[0] != mask.shape[1]:
                raise ConfigError(
                    "mask",
                    f"must be a square bool (N, N) tensor, got {mask.dtype} {tuple(mask.shape)}",
                    "pass a bool tensor with True = visible",
                )
            if normalise == "softmax" and not mask.any(dim=1).all():
                row = int((~mask.any(dim=1)).nonzero()[0])
                raise ConfigError(
                    "mask",
                    f"row {row} hides every token, so its softmax is undefined",
                    "let every token see at least one token (e.g. itself)",
                )
        elif mask not in (None, "causal"):
            raise ConfigError(
                "mask", f"unknown mask {mask!r}", "use None, 'causal' or a bool tensor"
            )
        self.heads = heads
        self.mask = mask
        self.normalise: Normalise = normalise
        self.backend = get_backend(backend)

    def to(self, dtype: torch.dtype, device: torch.device | str = "cpu") -> AttentionField:
        self.heads = [h.to(dtype, device) for h in self.heads]
        if isinstance(self.mask, torch.Tensor):
            self.mask = self.mask.to(device)
        return self

    def __call__(self, x: torch.Tensor, rows: slice | None = None) -> torch.Tensor:
        """Velocity Γ[μ](x_i) for every token (or for the tokens `rows`, keys always all of x),
        shape like x[..., rows, :]."""
        rows = slice(None) if rows is None else rows
        squeeze = x.dim() == 2
        xb = check_state(x, self.d)
        if isinstance(self.mask, torch.Tensor) and self.mask.shape[0] != xb.shape[1]:
            raise ConfigError(
                "mask",
                f"is {tuple(self.mask.shape)} but the cloud has {xb.shape[1]} tokens",
                "give an (N, N) mask matching the number of tokens",
            )
        v = torch.zeros_like(xb[:, rows])
        for index, head in enumerate(self.heads):
            out = self.head_output(index, head, xb, rows)
            v = v + (out if head.W is None else out @ head.W.T)
        return v.squeeze(0) if squeeze else v

    @abstractmethod
    def head_output(self, index: int, head: Head, x: torch.Tensor, rows: slice) -> torch.Tensor:
        """Σ_j w^h_ij V_h x_j for one head and the query tokens `rows`, shape (B, rows, m_h)."""

    def rows_mask(self, rows: slice) -> Mask:
        """The mask restricted to the query tokens `rows`."""
        if rows == slice(None) or self.mask is None:
            return self.mask
        if isinstance(self.mask, torch.Tensor):
            return self.mask[rows]
        raise ConfigError(
            "mask",
            "causal attention is not evaluated on a subset of query tokens",
            "evaluate causal attention on all query tokens (rows=None), in one process",
        )

    def unnormalise(self, out: torch.Tensor, log_z: torch.Tensor, n: int) -> torch.Tensor:
        """Softmax average → N-normalised sum: (1/N) Σ_j e^{s_ij} v_j = e^{lse_i − log N}·out_i."""
        return out * torch.exp(log_z - math.log(n)).unsqueeze(-1)

    def describe(self) -> str:
        return (
            f"{self.variant} attention, {len(self.heads)} head(s), d={self.d}, "
            f"mask={self.mask if not isinstance(self.mask, torch.Tensor) else 'custom'}, "
            f"normalise={self.normalise}, backend={self.backend.name}"
        )
