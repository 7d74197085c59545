"""Lean stepping path: k fixed steps of a softmax attention field in one call of the fused C driver.

For a batch of clouds x (B, N, d) on the sphere or in R^d, `tokendyn_lean_steps_*` (end of
kernels/_fused.c) advances every cloud by k Euler, Heun or RK4 steps of

    ẋ_i = P_{x_i} Σ_h W_h Σ_j softmax_j(β_h⟨Q_h x_i, K_h x_j⟩) V_h x_j

(retraction x ↦ x/|x| after each step on the sphere; mask None or causal; normalise "softmax" or
"n"; one β per head, or one per cloud and head) with no Python, allocation or validation per step:
the per-stage buffers (q = βQy, kᵀ = Ky, vᵀ = Vy, the stage velocities) are a workspace allocated
once per `integrate` call. Threads are shared out as clouds first: clouds are independent, so the
batch is split into min(B, workers_for(B·N²)) contiguous cloud ranges, each taking its k steps
with no synchronisation; the threads left over (of workers_for(B·N², TOKEN_PAIRS_PER_THREAD); all
of them for a single cloud) split each cloud's tokens inside the C driver, meeting at a barrier
twice per head and stage (bitwise the same result for every split). A barrier waits for the
slowest thread, so on a busy machine a split can be slower than one thread: each stepper times
both (`ThreadChoice`) and keeps the faster.

`lean_stepper` returns None — and `integrate` runs its generic torch loop, unchanged — unless every
condition holds: a plain `SoftmaxAttention` field (no block, no layer time) on the `auto` or fused
`tiled` backend, a `Sphere` or `Euclidean` space, a CPU float32/float64 state whose dtype the
weights share, dimensions within the kernel's limit, no gradient needed and the fused library
built. Setting the environment variable TOKENDYN_LEAN=0 forces the generic
path (tests compare the two).
"""

from __future__ import annotations

import ctypes
import itertools
import os
import time
from collections import deque
from functools import lru_cache

import torch

from tokendyn.engine.attention.softmax import SoftmaxAttention
from tokendyn.engine.kernels import AutoBackend, TiledBackend, fused
from tokendyn.engine.kernels.threads import run_jobs, workers_for
from tokendyn.engine.space import Euclidean, Space, Sphere

METHOD_CODES = {"euler": 0, "heun": 1, "rk4": 2}


# Token split: about 30 µs of work per thread and step. Measured side by side (2-core EPYC, idle,
# Euler, d = 3, float64, ms per step, 1 thread / 2 threads): N = 128: 0.023 / 0.013, 256: 0.081 /
# 0.044, 512: 0.31 / 0.17, 4096: 18.9 / 9.7; float32 alike (1.7-2.3x from N = 128).
TOKEN_PAIRS_PER_THREAD = 1 << 15
PROBE_PAIRS = 1 << 22  # score pairs per timed probe (a few ms of one thread's work)
PROBE_EVERY = 16  # probes' worth of steps on the faster option between two probes of the other


class ThreadChoice:
    """One thread or `threads` per cloud range, whichever has taken less time per step.

    Steps are run in calls of `probe_steps` (about PROBE_PAIRS score pairs) until each option has
    been timed once; then the faster (by the least time per step of its last three calls, so one
    hiccup — a slow first call — does not decide and a lasting change does) runs 1, 2, 4, …, then
    PROBE_EVERY probes' worth of steps between two probes of the other, so an early wrong pick is
    undone soon and a machine that became busy (or idle) is followed, at a cost of at most
    1/PROBE_EVERY of the difference. Steppers of the same shape share one choice
    (`choice_for`), so repeated short runs do not each pay the first probes. The choice never
    changes a result: every split gives the same bits.
    """

    def __init__(self, threads: int, probe_steps: int):
        self.options = [threads, 1] if threads > 1 else [1]
        self.probe_steps = max(1, probe_steps)
        self.recent: dict[int, deque[float]] = {t: deque(maxlen=3) for t in self.options}
        self.since_probe = 0
        self.period = 1  # probes' worth of steps between two probes: doubles up to PROBE_EVERY

    def plan(self, remaining: int) -> tuple[int, int]:
        """(threads, steps) for the next call, out of `remaining` steps."""
        if len(self.options) == 1:
            return self.options[0], remaining
        untried = [t for t in self.options if not self.recent[t]]
        if untried:
            return untried[0], min(remaining, self.probe_steps)
        best, other = sorted(self.options, key=lambda t: min(self.recent[t]))
        between = self.period * self.probe_steps
        if self.since_probe >= between:
            self.since_probe = 0
            self.period = min(PROBE_EVERY, 2 * self.period)
            return other, min(remaining, self.probe_steps)
        steps = min(remaining, between - self.since_probe)
        self.since_probe += steps
        return best, steps

    def record(self, threads: int, seconds: float, steps: int) -> None:
        self.recent[threads].append(seconds / steps)


@lru_cache(maxsize=256)
def choice_for(shape: tuple, threads: int, probe_steps: int) -> ThreadChoice:
    """The ThreadChoice shared by the steppers of one shape (sizes, heads, method, dtype)."""
    return ThreadChoice(threads, probe_steps)


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
    return fused.available()


class LeanStepper:
    """Advances its own copy `x` (B, N, d) of the state in place, k steps per `advance(k)`;
    `threads_used` counts the threads of its last kernel call, over all its cloud ranges."""

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
        ranges = min(B, workers_for(B * N * N))
        threads = max(1, workers_for(B * N * N, TOKEN_PAIRS_PER_THREAD) // ranges)
        stages = {"euler": 1, "heun": 2, "rk4": 4}[method]
        probe_steps = PROBE_PAIRS // (B * N * N * len(heads) * stages)
        shape = (B, N, d, tuple(map(tuple, self._hdims.tolist())), method, dtype, bool(field.mask))
        self.choice = choice_for(shape, threads, probe_steps)  # per range, splitting its tokens
        bounds = [B * i // ranges for i in range(ranges + 1)]
        size = 3 * N * d + N * (2 * kmax + 2 * mmax + 1)
        self._work = torch.zeros(ranges, size, dtype=dtype)  # touched here, not in a timed call
        self._fail = torch.zeros(B, dtype=torch.int64)
        self._ranges = ranges
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
        fail, done = self._fail.data_ptr(), 0
        while done < steps:
            threads, chunk = self.choice.plan(steps - done)
            jobs = [(fn, (*head, chunk, work, fail, threads)) for fn, head, work in self._calls]
            start = time.perf_counter()
            self.threads_used = sum(run_jobs(jobs, self._ranges))  # by every cloud range
            self.choice.record(threads, time.perf_counter() - start, chunk)
            bad = self._fail[self._fail > 0]
            if bad.numel():
                return done + int(bad.min())
            done += chunk
        return 0


def lean_stepper(
    field: object, space: Space, method: str, x: torch.Tensor, dt: float
) -> LeanStepper | None:
    """A LeanStepper for (field, space, method, x (B, N, d)) if the lean path applies, else None."""
    if not _qualifies(field, space, method, x):
        return None
    assert isinstance(field, SoftmaxAttention)
    return LeanStepper(field, space, method, x, dt)
