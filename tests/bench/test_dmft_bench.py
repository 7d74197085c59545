"""Benchmarks (slow, timings never asserted): block map over 4001 β, finite-N samplers.
Run: pytest -m slow tests/bench/test_dmft_bench.py --benchmark-enable"""

import numpy as np
import pytest

from tokendyn.bench.dmft import bench_map, bench_sampler
from tokendyn.theory.dmft.meanfield import MeanFieldMap
from tokendyn.theory.dmft.model import paper_model
from tokendyn.theory.dmft.starts import start_state


@pytest.mark.slow
def test_bench_block_map_4001_beta(benchmark):
    model = paper_model()
    betas = np.linspace(1.24, 1.28, 4001)
    state = start_state("zoom", model, betas.size)
    mf = MeanFieldMap(model)
    benchmark(mf.run, state, betas, 200, 0)


@pytest.mark.slow
def test_bench_rows_are_complete():
    row = bench_map(401, 200, repeats=1)
    assert row["beta_steps_per_s"] > 0
    row = bench_sampler("spins", 9_999, trials=2, steps=5, repeats=1)
    assert row["spins_per_s"] > 0
