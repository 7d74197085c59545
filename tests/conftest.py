import pytest
import torch

F64 = torch.float64


@pytest.fixture
def gen() -> torch.Generator:
    return torch.Generator().manual_seed(1234)


def random_qkv(d: int, gen: torch.Generator, k: int | None = None):
    k = d if k is None else k
    Q = torch.randn(k, d, generator=gen, dtype=F64) / d**0.5
    K = torch.randn(k, d, generator=gen, dtype=F64) / d**0.5
    V = torch.randn(d, d, generator=gen, dtype=F64) / d**0.5
    return Q, K, V


BACKENDS = ("dense", "tiled", "sdpa", "auto")


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    """Every kernel backend: a test that takes `backend` runs once on each (one suite, every
    backend, as POT does)."""
    return request.param
