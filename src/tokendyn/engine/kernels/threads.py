"""How many threads a kernel call uses: sized by its work, capped by what the process may use.

A call evaluating `pairs` query–key scores gets ⌈pairs / PAIRS_PER_THREAD⌉ threads, at most
min(torch.get_num_threads(), available_cpus()). Small work therefore runs inline on the calling
thread (no hand-off, no wake-up, nothing to fight over on a busy machine); the caller's own torch
setting is read, never changed. Jobs run on one process-wide pool of plain Python threads (the C
kernels release the GIL).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from functools import cache
from pathlib import Path
from typing import Any

import torch

# About 100 µs of fused-kernel work at ~2 G pairs/s: below it, handing work to a second thread
# costs more than it saves.
PAIRS_PER_THREAD = 1 << 18


def _cgroup_cpus(root: Path = Path("/sys/fs/cgroup")) -> float | None:
    """The CPU quota of this process's cgroup (v2 `cpu.max`, v1 `cpu.cfs_quota_us`), in CPUs."""
    try:
        quota, period = (root / "cpu.max").read_text().split()[:2]
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError):
        pass
    try:
        quota_us = int((root / "cpu" / "cpu.cfs_quota_us").read_text())
        period_us = int((root / "cpu" / "cpu.cfs_period_us").read_text())
        return None if quota_us <= 0 else quota_us / period_us
    except (OSError, ValueError):
        return None


@cache
def available_cpus() -> int:
    """CPUs this process may run on: its affinity mask, reduced by a cgroup CPU quota."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cpus = os.cpu_count() or 1
    quota = _cgroup_cpus()
    if quota is not None:
        cpus = min(cpus, max(1, int(quota)))
    return max(1, cpus)


def workers_for(pairs: int, per_thread: int = PAIRS_PER_THREAD) -> int:
    """Threads worth using for `pairs` score evaluations: one per `per_thread` pairs, at least 1."""
    limit = max(1, min(torch.get_num_threads(), available_cpus()))
    return max(1, min(limit, -(-pairs // per_thread)))


@cache
def _pool(workers: int) -> ThreadPoolExecutor:
    return ThreadPoolExecutor(max_workers=workers, thread_name_prefix="tokendyn-fused")


def run_jobs(jobs: list[tuple[Callable[..., Any], tuple[Any, ...]]], workers: int) -> list[Any]:
    """Run every job `fn(*args)`: inline for one job or one worker, else on the pool; their
    results in order."""
    if len(jobs) == 1 or workers == 1:
        return [fn(*args) for fn, args in jobs]
    return [future.result() for future in [_pool(workers).submit(fn, *a) for fn, a in jobs]]
