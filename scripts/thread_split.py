"""A single cloud on the lean path: ms per Euler step with one thread, with the token split forced
on every available thread, with the library's own choice (`ThreadChoice`), and on the generic
per-step torch path (TOKENDYN_LEAN=0), side by side in one run.

    PYTHONPATH=src python scripts/thread_split.py 256 1024 4096          # an idle machine
    PYTHONPATH=src python scripts/thread_split.py 256 1024 4096 --busy   # one core kept busy

The workload of `tokendyn bench --small` (bench/small.py: S², Q = K = V = I, β = 1, a seeded
uniform cloud), d = 3, dt = 0.01; each cell is the best of 3 runs of about 2·10⁷
score pairs (`integrate`, frames at the start and the end only). `--busy` runs a spinning process
on one core for the whole measurement: what a shared machine looks like.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import time

import torch

from tokendyn.bench.small import field, initial_cloud
from tokendyn.engine import stepper
from tokendyn.engine.attention import SoftmaxAttention
from tokendyn.engine.integrate import integrate
from tokendyn.engine.kernels.threads import available_cpus
from tokendyn.engine.space import Sphere

DT = 0.01
MODES = ("one thread", "split", "choice", "generic")


def _spin() -> None:
    while True:
        pass


def _per_step(attention: SoftmaxAttention, x0: torch.Tensor, steps: int, mode: str) -> float:
    """Seconds per step of `mode` (best of 3, after a warm-up)."""
    real_workers, real_choice = stepper.workers_for, stepper.choice_for
    forced = {"one thread": 1, "split": available_cpus()}.get(mode)
    os.environ["TOKENDYN_LEAN"] = "0" if mode == "generic" else "1"
    if forced is not None:
        stepper.workers_for = lambda pairs, per_thread=0: forced

        def only(shape: tuple, threads: int, probe_steps: int) -> stepper.ThreadChoice:
            choice = stepper.ThreadChoice(threads, probe_steps)
            choice.options = [threads]  # no probes: always this many threads
            return choice

        stepper.choice_for = only
    try:
        integrate(attention, Sphere(3), x0, t_end=2 * DT, dt=DT, method="euler")
        best = float("inf")
        for _ in range(3):
            start = time.perf_counter()
            integrate(
                attention, Sphere(3), x0, t_end=steps * DT, dt=DT, method="euler", save_every=steps
            )
            best = min(best, (time.perf_counter() - start) / steps)
        return best
    finally:
        stepper.workers_for, stepper.choice_for = real_workers, real_choice
        os.environ.pop("TOKENDYN_LEAN")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("n", type=int, nargs="+", help="numbers of tokens")
    parser.add_argument("--busy", action="store_true", help="keep one core busy meanwhile")
    args = parser.parse_args()
    spinner = multiprocessing.Process(target=_spin, daemon=True) if args.busy else None
    if spinner is not None:
        spinner.start()
    try:
        print(f"{'dtype':8} {'N':>6} " + " ".join(f"{m:>11}" for m in MODES) + "  (ms per step)")
        for dtype in ("float64", "float32"):
            attention = field(3, dtype)
            for n in args.n:
                x0 = initial_cloud(n, 3, dtype)[None]
                steps = max(3, round(2e7 / n**2))
                cells = [_per_step(attention, x0, steps, m) * 1e3 for m in MODES]
                row = " ".join(f"{c:11.4g}" for c in cells)
                print(f"{dtype:8} {n:6d} {row}", flush=True)
    finally:
        if spinner is not None:
            spinner.terminate()


if __name__ == "__main__":
    main()
