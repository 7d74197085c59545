"""The interaction energy of attention, computed and returned as a logarithm (it cannot overflow).

One reduction serves every energy of the library, `pair_logsumexp`:

    L = log Σ_ij exp(a_i + a_j + ⟨q_i, k_j⟩),

evaluated as lse_i = log Σ_j exp(⟨q_i, k_j⟩ + a_j) by the kernel backend (max-shifted, tiled: no
N×N matrix for large N), then logsumexp_i(lse_i + a_i). E_β = e^{β} / (2β) at β = 1000 is 10^431,
beyond float64; its logarithm is 993.1.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from tokendyn.engine.attention.base import AttentionField, Head
from tokendyn.engine.kernels import Backend, get_backend
from tokendyn.engine.observables._cloud import batched, unbatch
from tokendyn.errors import ConfigError


def pair_logsumexp(
    q: torch.Tensor,
    k: torch.Tensor,
    *,
    log_weights: torch.Tensor | None = None,
    backend: str | Backend = "auto",
) -> torch.Tensor:
    """L = log Σ_ij exp(a_i + a_j + ⟨q_i, k_j⟩) for q, k of shape (N, m) or (B, N, m).

    a = log_weights, shape (N,) or (B, N) (None: a = 0). Returns (B,), or a 0-d tensor for (N, m)
    input. Max-shifted at both levels and tiled by the kernel backend."""
    qb, single = batched(q)
    kb, _ = batched(k)
    if log_weights is None:
        lse = get_backend(backend).logsumexp(qb, kb)
    else:
        a = log_weights.to(qb.dtype).expand(qb.shape[:2])
        lse = get_backend(backend).logsumexp(qb, kb, key_bias=a) + a
    return unbatch(torch.logsumexp(lse, dim=-1), single)


def _log_energy_term(
    q: torch.Tensor, k: torch.Tensor, beta: torch.Tensor, backend: str | Backend
) -> torch.Tensor:
    """log[(1/(2βN²)) Σ_ij exp(⟨q_i, k_j⟩)] for q already scaled by β; beta (B,) or (1,)."""
    n = q.shape[-2]
    return pair_logsumexp(q, k, backend=backend) - torch.log(2 * beta * n * n)


def log_interaction_energy(
    x: torch.Tensor, beta: float | torch.Tensor, backend: str | Backend = "auto"
) -> torch.Tensor:
    """log E_β, E_β = (1/(2βN²)) Σ_ij exp(β⟨x_i, x_j⟩) (Q = K = I, one head).

    Finite for any β (pair_logsumexp). β is a number or one value per cloud, a (B,) tensor."""
    xb, single = batched(x)
    betas = torch.as_tensor(beta, dtype=xb.dtype, device=xb.device).reshape(-1)
    if betas.numel() not in (1, xb.shape[0]) or not bool((betas > 0).all()):
        raise ConfigError("beta", f"is {beta}", "give β > 0, one number or one per cloud")
    return unbatch(_log_energy_term(betas.reshape(-1, 1, 1) * xb, xb, betas, backend), single)


def interaction_energy(
    x: torch.Tensor, beta: float | torch.Tensor, backend: str | Backend = "auto"
) -> torch.Tensor:
    """E_β = (1/(2βN²)) Σ_ij exp(β⟨x_i, x_j⟩), the energy the attention dynamics increases.

    exp(log_interaction_energy): +inf once log E_β exceeds the dtype's range (β⟨x_i, x_j⟩ ≳ 88
    in float32, ≳ 709 in float64); store and compare the logarithm instead."""
    return torch.exp(log_interaction_energy(x, beta, backend))


def log_attention_energy(
    x: torch.Tensor, heads: Sequence[Head], backend: str | Backend = "auto"
) -> torch.Tensor:
    """log E of the heads' own scores, over every pair (i, j) of each cloud:

        E = Σ_h (1/(2 β_h N²)) Σ_ij exp(β_h ⟨Q_h x_i, K_h x_j⟩),

    i.e. (1/(2βN²)) Σ_h Σ_ij exp(β⟨Q_h x_i, K_h x_j⟩) when the heads share β. Masks, values and
    the variant's normalisation play no part. For one head with Q = K = I this is E_β, computed by
    the same operations as `log_interaction_energy` (equal to the last bit). β_h may hold one
    value per cloud (B,). Returns (B,), or a 0-d tensor for one (N, d) cloud."""
    xb, single = batched(x)
    terms = []
    for head in heads:
        beta = head.scale(xb)
        q, k = beta * (xb @ head.Q.T), xb @ head.K.T
        terms.append(_log_energy_term(q, k, beta.reshape(-1), backend))
    total = terms[0] if len(terms) == 1 else torch.logsumexp(torch.stack(terms), dim=0)
    return unbatch(total.expand(xb.shape[0]), single)


@dataclass(frozen=True)
class LogEnergy:
    """The statistic log E of `field`: `log_attention_energy` with the field's heads and kernel
    backend, so a run stores the energy of the system it simulates."""

    field: AttentionField

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return log_attention_energy(x, self.field.heads, self.field.backend)
