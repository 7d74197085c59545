"""Row-sharded runs under torchrun equal the single-process run."""

import itertools
import subprocess
import sys

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from tokendyn.app.config import make_config
from tokendyn.app.run import run_simulation
from tokendyn.app.store import open_run
from tokendyn.engine.distributed import row_blocks
from tokendyn.errors import ConfigError

FLAGS = [
    "--n",
    "300",
    "--d",
    "3",
    "--beta",
    "2",
    "--t-end",
    "2",
    "--dt",
    "0.1",
    "--save-every",
    "5",
    "--qkv",
    "random",
    "--space",
    "euclidean",
    "--quiet",
]


@given(n=st.integers(1, 500), world=st.integers(1, 16))
def test_row_blocks_partition_the_tokens(n, world):
    blocks = row_blocks(n, world)
    sizes = [b.stop - b.start for b in blocks]
    assert blocks[0].start == 0 and blocks[-1].stop == n
    assert all(a.stop == b.start for a, b in itertools.pairwise(blocks))
    assert max(sizes) - min(sizes) <= 1


def _torchrun(nproc: int, *args: str) -> subprocess.CompletedProcess:
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc-per-node={nproc}",
        "-m",
        "--",
        "tokendyn",
        "simulate",
        *args,
    ]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300)


def test_two_gloo_processes_equal_one(tmp_path):
    """float64: the sharded run reproduces the single-process run to 1e-12 (it differs only by
    which backend evaluates each block of rows, i.e. by round-off)."""
    result = _torchrun(2, *FLAGS, "--out", str(tmp_path / "two.zarr"), "--distributed")
    assert result.returncode == 0, result.stderr[-2000:]
    two = open_run(tmp_path / "two.zarr")
    assert "sharded over 2 processes" in two.attrs["field"]
    one = run_simulation(
        make_config(
            n=300, d=3, beta=2.0, t_end=2.0, dt=0.1, save_every=5, qkv="random", space="euclidean"
        )
    )
    assert two["x"].shape == one["x"].shape
    assert np.abs(two["x"].values - one["x"].values).max() < 1e-12


def test_distributed_outside_torchrun_is_a_clear_error(monkeypatch):
    for name in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(ConfigError, match="^distributed: not started by torchrun"):
        run_simulation(make_config(n=8, t_end=0.2, dt=0.1), distributed=True)


@pytest.mark.gpu
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 CUDA devices")
def test_two_nccl_processes_equal_one(tmp_path):
    flags = [*FLAGS[:-1], "--dtype", "float64", "--device", "cuda", "--quiet"]
    result = _torchrun(2, *flags, "--out", str(tmp_path / "two.zarr"), "--distributed")
    assert result.returncode == 0, result.stderr[-2000:]
    one = run_simulation(
        make_config(
            n=300,
            d=3,
            beta=2.0,
            t_end=2.0,
            dt=0.1,
            save_every=5,
            qkv="random",
            space="euclidean",
            device="cuda",
        )
    )
    assert np.abs(open_run(tmp_path / "two.zarr")["x"].values - one["x"].values).max() < 1e-12
