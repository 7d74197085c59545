"""The fused kernel's own exponential (exp_f32 / exp_f64 in _fused.c) against libm over [-708, 0].

The kernel computes exp(x) = 2^n · P(r), n = rint(x·log2 e), r = x − n·ln 2 (ln 2 in two parts),
P the Taylor polynomial of degree 7 (float) or 13 (double). Its truncation error is below one
unit roundoff u (u = 2^-24, 2^-53) for |r| ≤ ln2/2; the rounding errors are those of r (≤ 1 u of
|r| < 0.35), of the last two Horner steps (≤ 1 u each) and of the final scaling (≤ 1 u); the
reference adds ≤ 1 u (double; the float reference is the double libm exp of the float input,
exact to float precision). So the relative error is below 8 u: 4.8e-7 (float), 8.9e-16 (double).
"""

from __future__ import annotations

import pytest
import torch

from tokendyn.engine.kernels import fused

pytestmark = pytest.mark.skipif(not fused.available(), reason="needs the compiled fused kernel")

LOWER = {torch.float32: -87.0, torch.float64: -708.0}  # the kernel's clamps
UNIT = {torch.float32: 2.0**-24, torch.float64: 2.0**-53}


def kernel_exp(x: torch.Tensor) -> torch.Tensor:
    lib = fused.load()
    assert lib is not None
    suffix = "f32" if x.dtype == torch.float32 else "f64"
    x = x.contiguous()
    y = torch.empty_like(x)
    getattr(lib, f"tokendyn_exp_{suffix}")(x.data_ptr(), y.data_ptr(), x.numel())
    return y


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_exp_relative_error_against_libm(dtype: torch.dtype) -> None:
    """Dense grid over the whole domain plus random points: max relative error < 8 u."""
    gen = torch.Generator().manual_seed(0)
    lo = LOWER[dtype]
    grid = torch.linspace(lo, 0.0, 2**18, dtype=torch.float64)
    random = torch.rand(2**16, generator=gen, dtype=torch.float64) * lo
    small = -torch.rand(2**12, generator=gen, dtype=torch.float64) * 1e-3  # near exp(0) = 1
    x = torch.cat([grid, random, small]).to(dtype)
    reference = torch.exp(x.double())
    error = ((kernel_exp(x).double() - reference) / reference).abs().max().item()
    print(f"{dtype}: max relative error {error:.3g}")
    assert error < 8 * UNIT[dtype], f"max relative error {error:.3g}"


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_exp_of_zero_is_one(dtype: torch.dtype) -> None:
    """n = 0, r = 0: P(0) = 1 and 2^0 = 1 exactly (the softmax's maximum gets weight 1)."""
    assert kernel_exp(torch.zeros(4, dtype=dtype)).tolist() == [1.0] * 4


def test_march_override_is_part_of_the_cache_key(monkeypatch) -> None:
    """TOKENDYN_FUSED_MARCH replaces -march=native and gives the library another name."""
    monkeypatch.delenv("TOKENDYN_FUSED_MARCH", raising=False)
    native = fused._library_name()
    assert "-march=native" in fused._flags()
    monkeypatch.setenv("TOKENDYN_FUSED_MARCH", "haswell")
    assert "-march=haswell" in fused._flags() and "-march=native" not in fused._flags()
    assert fused._library_name() != native
