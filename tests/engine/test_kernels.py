"""Every backend agrees with the dense reference to 1e-10 in float64, for every weight and mask."""

import pytest
import torch

from tokendyn.engine.kernels import (
    AutoBackend,
    DenseBackend,
    SdpaBackend,
    TiledBackend,
    fused,
    get_backend,
)

F64 = torch.float64
BACKENDS = {
    "tiled": TiledBackend(),
    "tiled-torch": TiledBackend(block_q=37, block_k=53, use_fused=False),
    "sdpa": SdpaBackend(),
    "auto": AutoBackend(),
}


def _inputs(d: int, n: int = 300, b: int = 2, seed: int = 0, scale: float = 3.0):
    g = torch.Generator().manual_seed(seed)
    q = scale * torch.randn(b, n, d, generator=g, dtype=F64)
    k = torch.randn(b, n, d, generator=g, dtype=F64)
    v = torch.randn(b, n, d, generator=g, dtype=F64)
    bias = torch.randn(b, n, generator=g, dtype=F64)
    mask = torch.rand(n, n, generator=g) < 0.3
    mask.fill_diagonal_(True)
    return q, k, v, bias, mask


@pytest.mark.parametrize("name", list(BACKENDS))
@pytest.mark.parametrize("d", [1, 2, 3, 5, 8, 16])
@pytest.mark.parametrize("mask_kind", ["none", "causal", "bool"])
@pytest.mark.parametrize("mode", ["exp", "exp+bias", "exp+lse", "sigmoid"])
def test_backends_agree_with_dense(name, d, mask_kind, mode):
    q, k, v, bias, bool_mask = _inputs(d)
    mask = {"none": None, "causal": "causal", "bool": bool_mask}[mask_kind]
    kwargs = {
        "exp": {},
        "exp+bias": {"key_bias": bias},
        "exp+lse": {"need_lse": True},
        "sigmoid": {"weight": "sigmoid", "sigmoid_bias": -0.7, "key_bias": bias},
    }[mode]
    ref = DenseBackend().attend(q, k, v, mask=mask, **kwargs)
    got = BACKENDS[name].attend(q, k, v, mask=mask, **kwargs)
    assert (got.out - ref.out).abs().max().item() <= 1e-10
    if ref.lse is not None:
        assert (got.lse - ref.lse).abs().max().item() <= 1e-10


@pytest.mark.parametrize("name", ["dense", *BACKENDS])
def test_large_beta_does_not_overflow(name):
    """Scores up to ~1e4 (β = 1e3 on unit vectors × 10): max-shifting keeps everything finite."""
    q, k, v, _, _ = _inputs(3, n=200, scale=1e3)
    backend = get_backend("dense") if name == "dense" else BACKENDS[name]
    for dtype in (torch.float64, torch.float32):
        res = backend.attend(q.to(dtype), k.to(dtype), v.to(dtype), need_lse=True)
        assert torch.isfinite(res.out).all() and torch.isfinite(res.lse).all()
    # With huge β the softmax is (nearly) an argmax: compare with the hard maximum.
    scores = q @ k.transpose(1, 2)
    hard = torch.gather(v, 1, scores.argmax(-1, keepdim=True).expand(-1, -1, 3))
    out = backend.attend(q, k, v).out
    gaps = scores.topk(2, dim=-1).values
    clear = (gaps[..., 0] - gaps[..., 1]) > 50  # rows whose top score wins by e^50
    assert (out - hard)[clear].abs().max() < 1e-12


def test_float32_fused_matches_float64_reference():
    q, k, v, bias, _ = _inputs(3, n=1000, scale=2.0)
    ref = DenseBackend().attend(q, k, v, key_bias=bias).out
    got = TiledBackend().attend(q.float(), k.float(), v.float(), key_bias=bias.float()).out
    # float32 relative rounding ~6e-8 per op; accumulations over 1000 keys stay well under 1e-5.
    assert (got.double() - ref).abs().max().item() < 1e-5


def test_logsumexp_matches_torch():
    q, k, _, bias, _ = _inputs(4)
    want = torch.logsumexp(q @ k.transpose(1, 2) + bias[:, None, :], dim=-1)
    for backend in BACKENDS.values():
        assert (backend.logsumexp(q, k, key_bias=bias) - want).abs().max() < 1e-10


def test_generic_dimension_path_matches_dense():
    """dk ≠ dv and dims outside the specialised set take the generic fused loop."""
    g = torch.Generator().manual_seed(5)
    q, k = torch.randn(2, 2, 150, 7, generator=g, dtype=F64)
    v = torch.randn(2, 150, 11, generator=g, dtype=F64)
    ref = DenseBackend().attend(q, k, v, mask="causal")
    got = TiledBackend().attend(q, k, v, mask="causal")
    assert (got.out - ref.out).abs().max() < 1e-12


def test_fused_kernel_is_built_here():
    """On CPU machines with a C compiler (CI included) the fused kernel must be in use."""
    assert fused.available()


def test_loading_the_fused_kernel_keeps_subnormals():
    """The library must not switch the process to flush-to-zero (as -ffast-math linking would)."""
    import numpy as np

    assert fused.load() is not None
    tiny = np.array([2.2250738585072014e-308]) / 4
    assert tiny[0] > 0
    assert (torch.tensor([2.2250738585072014e-308], dtype=F64) / 4).item() > 0


def test_unknown_backend_is_a_clear_error():
    with pytest.raises(ValueError, match="backend: unknown backend 'fast'"):
        get_backend("fast")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("name", ["tiled", "sdpa", "auto"])
def test_cuda_backends_agree(name):
    q, k, v, bias, _ = _inputs(8)
    ref = DenseBackend().attend(q, k, v, key_bias=bias, mask="causal")
    got = get_backend(name).attend(
        q.cuda(), k.cuda(), v.cuda(), key_bias=bias.cuda(), mask="causal"
    )
    assert (got.out.cpu() - ref.out).abs().max() < 1e-10


@pytest.mark.parametrize("b", [1, 2, 3, 8])
@pytest.mark.parametrize("mask_kind", ["none", "causal", "shared-bool", "per-cloud-bool"])
def test_fused_batches_of_clouds(b, mask_kind):
    """Many small clouds go through the batched C entry point (whole clouds per thread); shared
    and per-cloud biases and masks must land on the right cloud."""
    g = torch.Generator().manual_seed(7)
    q, k, v = (torch.randn(b, 40, 3, generator=g, dtype=F64) for _ in range(3))
    shared_bias = torch.randn(40, generator=g, dtype=F64)
    per_cloud_bias = torch.randn(b, 40, generator=g, dtype=F64)
    masks = torch.rand(b, 40, 40, generator=g) < 0.4
    masks |= torch.eye(40, dtype=torch.bool)
    kinds = {"none": None, "causal": "causal", "shared-bool": masks[0], "per-cloud-bool": masks}
    mask = kinds[mask_kind]
    for bias in (shared_bias, per_cloud_bias):
        ref = DenseBackend().attend(q, k, v, key_bias=bias, mask=mask, need_lse=True)
        got = TiledBackend().attend(q, k, v, key_bias=bias, mask=mask, need_lse=True)
        assert (got.out - ref.out).abs().max() < 1e-12
        assert (got.lse - ref.lse).abs().max() < 1e-12
