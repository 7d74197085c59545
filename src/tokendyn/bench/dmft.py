"""Throughput of the mean-field map (β·steps/s, block form, batched over β) and of the finite-N
samplers (spins/s). `python -m tokendyn.dmft.bench` prints one JSON object per line."""

from __future__ import annotations

import json
import time

import numpy as np

from tokendyn.theory.dmft.finite import paper_finite_model
from tokendyn.theory.dmft.meanfield import MeanFieldMap
from tokendyn.theory.dmft.model import paper_model
from tokendyn.theory.dmft.sampler import FiniteSampler
from tokendyn.theory.dmft.starts import start_state


def _best(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def bench_map(n_beta: int = 4001, steps: int = 2000, repeats: int = 3, form: str = "block") -> dict:
    """β·steps per second of the mean-field map over a batch of n_beta values of β."""
    model = paper_model(None if form == "block" else 99)
    betas = np.linspace(1.24, 1.28, n_beta)
    mf = MeanFieldMap(model, form)
    state = start_state("zoom", model, n_beta)
    sec = _best(lambda: mf.run(state, betas, steps, 0), repeats)
    return {
        "bench": f"map_{form}",
        "n_beta": n_beta,
        "steps": steps,
        "seconds": sec,
        "beta_steps_per_s": n_beta * steps / sec,
    }


def bench_sampler(
    method: str = "spins", n_se: int = 99_000, trials: int = 8, steps: int = 50, repeats: int = 3
) -> dict:
    """Spins per second of a finite-N_se network (trials side by side, β = 1.27)."""
    sampler = FiniteSampler(paper_finite_model(n_se), method, seed=0)
    model = paper_model()
    sec = _best(lambda: sampler.run(start_state("zoom", model, 1), 1.27, steps, 0, trials), repeats)
    return {
        "bench": f"sampler_{method}",
        "n_se": n_se,
        "trials": trials,
        "steps": steps,
        "seconds": sec,
        "spins_per_s": n_se * trials * steps / sec,
    }


def main() -> None:
    for row in (
        bench_map(4001),
        bench_map(401),
        bench_map(1),
        bench_map(401, 200, form="general"),
        bench_sampler("spins", 99_000),
        bench_sampler("binomial", 10**9, trials=8, steps=2000),
    ):
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
