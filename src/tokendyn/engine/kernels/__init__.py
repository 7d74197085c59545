"""Kernel backends: how the N×N attention reduction is evaluated (see base.py)."""

from __future__ import annotations

import torch

from tokendyn.engine.kernels.base import Attended, Backend, Mask, causal_mask, split_mask
from tokendyn.engine.kernels.dense import DenseBackend
from tokendyn.engine.kernels.sdpa import SdpaBackend
from tokendyn.engine.kernels.tiled import TiledBackend

BACKENDS = ("auto", "dense", "tiled", "sdpa")
DENSE_MAX_TOKENS = 256
# Measured on a 2-core AVX-512 CPU (`tokendyn bench`): the fused tiled kernel wins up to d = 8
# (2× SDPA at d ≤ 4), SDPA's GEMM-based flash kernel wins above (2× at d = 16).
FUSED_MAX_HEAD_DIM = 8


class AutoBackend(Backend):
    """Chooses per call: dense for tiny work (B·N² ≤ 256²); on CPU the fused tiled kernel for
    head dimensions ≤ 8 and SDPA above; on GPU SDPA (flash). SDPA hands what it cannot do to the
    tiled backend."""

    name = "auto"

    def __init__(self) -> None:
        self.dense, self.tiled = DenseBackend(), TiledBackend()
        self.sdpa = SdpaBackend(fallback=self.tiled)

    def choose(self, q: torch.Tensor, k: torch.Tensor) -> Backend:
        if q.shape[0] * q.shape[-2] * k.shape[-2] <= DENSE_MAX_TOKENS**2:
            return self.dense
        if q.device.type == "cuda" or q.shape[-1] > FUSED_MAX_HEAD_DIM:
            return self.sdpa
        return self.tiled

    def attend(self, q, k, v, **kwargs) -> Attended:  # type: ignore[override]
        return self.choose(q, k).attend(q, k, v, **kwargs)


def get_backend(name: str | Backend) -> Backend:
    """A backend instance from its name (auto, dense, tiled, sdpa) or an instance."""
    if isinstance(name, Backend):
        return name
    factories = {
        "auto": AutoBackend,
        "dense": DenseBackend,
        "tiled": TiledBackend,
        "sdpa": SdpaBackend,
    }
    if name not in factories:
        raise ValueError(
            f"backend: unknown backend {name!r}. Fix: use one of {', '.join(BACKENDS)}"
        )
    return factories[name]()


__all__ = [
    "BACKENDS",
    "Attended",
    "AutoBackend",
    "Backend",
    "DenseBackend",
    "Mask",
    "SdpaBackend",
    "TiledBackend",
    "causal_mask",
    "get_backend",
    "split_mask",
]
