"""The kernel-backend interface: HOW the N×N attention reduction is evaluated.

Every backend computes, for queries q (B,Nq,dk) already scaled by β, keys k (B,Nk,dk), values
v (B,Nk,dv), an optional key bias b (B,Nk) or (Nk,) and a mask (None, "causal" or bool (Nq,Nk)):

    s_ij = ⟨q_i, k_j⟩ + b_j                     (masked pairs excluded)
    weight="exp":     out_i = Σ_j softmax_j(s_ij) v_j,  lse_i = log Σ_j exp(s_ij)
    weight="sigmoid": out_i = Σ_j σ(s_ij + c) v_j     (c = sigmoid_bias; no normalisation)

WHAT is evaluated (which q, k, v, bias and post-scaling) is the attention variant's job.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Literal, NamedTuple

import torch

Mask = None | Literal["causal"] | torch.Tensor
Weight = Literal["exp", "sigmoid"]


class Attended(NamedTuple):
    out: torch.Tensor
    lse: torch.Tensor | None


def split_mask(mask: Mask) -> tuple[torch.Tensor | None, bool]:
    """(boolean mask or None, causal flag)."""
    if mask is None:
        return None, False
    if isinstance(mask, str):
        if mask != "causal":
            raise ValueError(f"mask: unknown mask {mask!r}; use None, 'causal' or a bool tensor")
        return None, True
    return mask, False


def causal_mask(nq: int, nk: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """Inclusive lower-triangular mask: key j visible to query i iff j ≤ i."""
    return torch.ones(nq, nk, dtype=torch.bool, device=device).tril()


class Backend(ABC):
    """One way of evaluating the reduction. Subclasses implement `attend`."""

    name: str

    @abstractmethod
    def attend(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        *,
        key_bias: torch.Tensor | None = None,
        mask: Mask = None,
        weight: Weight = "exp",
        sigmoid_bias: float = 0.0,
        need_lse: bool = False,
    ) -> Attended: ...

    def logsumexp(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        *,
        key_bias: torch.Tensor | None = None,
        mask: Mask = None,
    ) -> torch.Tensor:
        """lse_i = log Σ_j exp(⟨q_i,k_j⟩ + b_j), max-shifted."""
        # v = k (not an empty v): the fused kernel's compiled fast path needs dv = dk, and the
        # extra output costs one multiply-add per pair beside the exponential.
        lse = self.attend(q, k, k, key_bias=key_bias, mask=mask, need_lse=True).lse
        assert lse is not None
        return lse

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"
