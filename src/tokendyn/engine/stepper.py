"""Lean stepping path: k fixed steps of a softmax attention field in one call of the fused C driver.

For a batch of clouds x (B, N, d) on the sphere or in R^d, `tokendyn_lean_steps_*` (end of
kernels/_fused.c) advances every cloud by k Euler, Heun or RK4 steps of

    ẋ_i = P_{x_i} Σ_h W_h Σ_j softmax_j(β_h⟨Q_h x_i, K_h x_j⟩) V_h x_j

(retraction x ↦ x/|x| after each step on the sphere; mask None or causal; normalise "softmax" or
"n"; one β per head, or one per cloud and head) with no Python, allocation or validation per step:
the per-stage buffers (q = βQy, kᵀ = Ky, vᵀ = Vy, the stage velocities) are a workspace allocated
once per `integrate` call. Clouds are independent, so the batch is split into contiguous cloud
ranges, one per thread (`workers_for(B·N²)`), each taking its k steps with no synchronisation.

`lean_stepper` returns None — and `integrate` runs its generic torch loop, unchanged — unless every
condition holds: a plain `SoftmaxAttention` field (no block, no layer time) on the `auto` or fused
`tiled` backend, a `Sphere` or `Euclidean` space, a CPU float32/float64 state whose dtype the
weights share, dimensions within the kernel's limit, no gradient needed, the fused library built,
and work that one thread per cloud range handles faster than the threaded per-step kernel (see
`SPLIT_PAIRS`). Setting the environment variable TOKENDYN_LEAN=0 forces the generic path (tests
compare the two).
"""

from __future__ import annotations

import ctypes
import itertools
import os

import torch

from tokendyn.engine.attention.softmax import SoftmaxAttention
from tokendyn.engine.kernels import AutoBackend, TiledBackend, fused
from tokendyn.engine.kernels.threads import run_jobs, workers_for
from tokendyn.engine.space import Euclidean, Space, Sphere

METHOD_CODES = {"euler": 0, "heun": 1, "rk4": 2}
# A single cloud with at least this many score pairs per field evaluation keeps the per-step path
# when more threads are available than clouds: there the threaded kernel beats one lean thread.
# Measured side by side (`tokendyn bench --small`, 2-core EPYC, float64, d = 3, ms per Euler step,
# lean on 1 thread / per-step path on 2): N = 1024: 1.34 / 2.72, 2048: 4.87 / 6.68, 4096: 20.3 /
# 24.7, 8192: 89.7 / 66.8. Below N = 8192 the per-step path's torch calls (whose OpenMP threads
# spin against the kernel's) cost more than the second thread gains.
SPLIT_PAIRS = 1 << 26


def lean_enabled() -> bool:
    """False when TOKENDYN_LEAN=0 forces the generic per-step torch path."""
    return os.environ.get("TOKENDYN_LEAN", "1") != "0"


def _tensors(field: SoftmaxAttention) -> list[torch.Tensor]:
    out = []
    for head in field.heads:
        out += [t for t in (head.Q, head.K, head.V, head.W) if t is not None]
        if isinstance(head.beta, torch.Tensor):
            out.append(head.beta)
    return out


def _qualifies(field: object, space: Space, method: str, x: torch.Tensor) -> bool:
    if not (lean_enabled() and type(field) is SoftmaxAttention and method in METHOD_CODES):
        return False
    assert isinstance(field, SoftmaxAttention)
    backend = field.backend
    fused_backend = type(backend) is AutoBackend or (
        type(backend) is TiledBackend and backend.use_fused
    )
    mask_ok = not isinstance(field.mask, torch.Tensor) and field.mask in (None, "causal")
    if not (fused_backend and mask_ok and type(space) in (Sphere, Euclidean)):
        return False
    B, N, d = x.shape
    tensors = _tensors(field)
    if (
        x.device.type != "cpu"
        or x.dtype not in (torch.float32, torch.float64)
        or d != field.d
        or B * N == 0
        or any(t.device.type != "cpu" for t in tensors)
        or any(t.dtype != x.dtype for t in tensors if t.dim() == 2)
    ):
        return False
    if torch.is_grad_enabled() and any(t.requires_grad for t in [x, *tensors]):
        return False
    for head in field.heads:
        if max(head.Q.shape[0], head.V.shape[0], d) > fused.MAX_DIM:
            return False
        if torch.as_tensor(head.beta).numel() not in (1, B):
            return False  # the generic path raises its one-line error
    if not fused.available():
        return False
    workers = workers_for(B * N * N)
    return workers <= B or N * N < SPLIT_PAIRS


class LeanStepper:
    """Advances its own copy `x` (B, N, d) of the state in place, k steps per `advance(k)`."""

    def __init__(
        self, field: SoftmaxAttention, space: Space, method: str, x: torch.Tensor, dt: float
    ):
        lib = fused.load()
        assert lib is not None
        B, N, d = x.shape
        dtype = x.dtype
        self.x = x.detach().clone().contiguous()
        heads = field.heads
        # Kept alive here: the C side only sees their addresses.
        self._mats = [
            None if t is None else t.detach().contiguous()
            for head in heads
            for t in (head.Q, head.K, head.V, head.W)
        ]
        self._pointers = (ctypes.c_void_p * len(self._mats))(
            *[None if t is None else t.data_ptr() for t in self._mats]
        )
        self._hdims = torch.tensor(
            [[head.Q.shape[0], head.V.shape[0]] for head in heads], dtype=torch.int64
        )
        self._beta = torch.stack(
            [
                torch.as_tensor(head.beta, dtype=dtype).detach().reshape(-1).expand(B)
                for head in heads
            ]
        ).contiguous()
        kmax = max(1, *(head.Q.shape[0] for head in heads))
        mmax = max(1, *(head.V.shape[0] for head in heads))
        workers = min(B, workers_for(B * N * N))
        bounds = [B * i // workers for i in range(workers + 1)]
        size = 3 * N * d + N * (2 * kmax + 2 * mmax + 1)
        self._work = torch.empty(workers, size, dtype=dtype)
        self._fail = torch.zeros(B, dtype=torch.int64)
        self._workers = workers
        fn = getattr(lib, "tokendyn_lean_steps_" + ("f32" if dtype == torch.float32 else "f64"))
        flags = (
            int(field.mask == "causal"),
            int(field.normalise == "n"),
            int(isinstance(space, Sphere)),
            METHOD_CODES[method],
            float(dt),
        )
        params = (len(heads), self._pointers, self._hdims.data_ptr(), self._beta.data_ptr())
        self._calls = [
            (fn, (self.x.data_ptr(), B, b0, b1, N, d, *params, *flags), self._work[w].data_ptr())
            for w, (b0, b1) in enumerate(itertools.pairwise(bounds))
        ]

    def advance(self, steps: int) -> int:
        """Take `steps` steps; 0 if every cloud stayed finite, else the first step (1..steps)
        after which some cloud held a NaN or Inf (that cloud is left there)."""
        fail = self._fail.data_ptr()
        jobs = [(fn, (*head, steps, work, fail)) for fn, head, work in self._calls]
        run_jobs(jobs, self._workers)
        bad = self._fail[self._fail > 0]
        return int(bad.min()) if bad.numel() else 0


def lean_stepper(
    field: object, space: Space, method: str, x: torch.Tensor, dt: float
) -> LeanStepper | None:
    """A LeanStepper for (field, space, method, x (B, N, d)) if the lean path applies, else None."""
    if not _qualifies(field, space, method, x):
        return None
    assert isinstance(field, SoftmaxAttention)
    return LeanStepper(field, space, method, x, dt)
