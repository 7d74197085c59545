"""Kernel backends: how the N×N attention reduction is evaluated (see base.py)."""

from __future__ import annotations

import torch

from tokendyn.engine.kernels.base import Attended, Backend, Mask, causal_mask, split_mask
from tokendyn.engine.kernels.calibration import choose_name
from tokendyn.engine.kernels.dense import DenseBackend
from tokendyn.engine.kernels.sdpa import SdpaBackend
from tokendyn.engine.kernels.tiled import TiledBackend

BACKENDS = ("auto", "dense", "tiled", "sdpa")


class AutoBackend(Backend):
    """Chooses per call. On GPU: SDPA (flash). On CPU: the fastest of dense / tiled (fused) /
    SDPA for the shape and dtype, from this machine's calibration table (calibration.py: measured
    at the first float32/float64 call, cached beside the compiled kernel; TOKENDYN_AUTO=off or a
    table path for fixed choices); never dense beyond the N×N sizes the calibration measured.
    SDPA hands what it cannot do to the tiled backend."""

    name = "auto"

    def __init__(self) -> None:
        self.dense, self.tiled = DenseBackend(), TiledBackend()
        self.sdpa = SdpaBackend(fallback=self.tiled)

    def choose(self, q: torch.Tensor, k: torch.Tensor) -> Backend:
        if q.device.type == "cuda":
            return self.sdpa
        batch = q.shape[0] if q.dim() > 2 else 1
        name = choose_name(q.dtype, batch, q.shape[-2], k.shape[-2], q.shape[-1])
        return getattr(self, name)

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
