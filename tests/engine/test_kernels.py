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


@pytest.mark.parametrize("name", list(BACKENDS))
@pytest.mark.parametrize("d", [1, 3, 7, 16])
@pytest.mark.parametrize("mask_kind", ["none", "causal", "bool"])
@pytest.mark.parametrize("mode", ["exp", "exp+bias", "exp+lse", "sigmoid"])
def test_backward_agrees_with_dense(name, d, mask_kind, mode):
    """Gradients w.r.t. q, k, v and the key bias of a random functional of (out, lse) equal the
    dense backend's autograd gradients to 1e-10 (relative to their largest entry); d = 7 takes
    the generic (not compile-time) C loop."""
    q, k, v, bias, bool_mask = _inputs(d)
    mask = {"none": None, "causal": "causal", "bool": bool_mask}[mask_kind]
    kwargs = {
        "exp": {},
        "exp+bias": {"key_bias": bias},
        "exp+lse": {"need_lse": True, "key_bias": bias[0]},  # one bias shared by both clouds
        "sigmoid": {"weight": "sigmoid", "sigmoid_bias": -0.7, "key_bias": bias},
    }[mode]
    g = torch.Generator().manual_seed(1)
    w_out = torch.randn(*v.shape, generator=g, dtype=F64)
    w_lse = torch.randn(*q.shape[:2], generator=g, dtype=F64)
    grads = []
    for backend in (DenseBackend(), BACKENDS[name]):
        args = {
            key: val.clone().requires_grad_() if key == "key_bias" else val
            for key, val in kwargs.items()
        }
        qkv = [t.clone().requires_grad_() for t in (q, k, v)]
        res = backend.attend(*qkv, mask=mask, **args)
        assert res.out.requires_grad
        loss = (res.out * w_out).sum() + (0 if res.lse is None else (res.lse * w_lse).sum())
        wrt = qkv + ([args["key_bias"]] if "key_bias" in args else [])
        grads.append(torch.autograd.grad(loss, wrt))
    for got, want in zip(grads[1], grads[0], strict=True):
        assert (got - want).abs().max() <= 1e-10 * want.abs().max().clamp(min=1.0)


@pytest.mark.parametrize("b", [1, 3])
@pytest.mark.parametrize("mask_kind", ["causal", "per-cloud-bool"])
def test_fused_backward_batches_and_float32(b, mask_kind):
    """Rows split over threads (b = 1) and whole clouds per thread (b = 3) give the dense
    gradients; float32 agrees with the float64 reference to float32 accuracy."""
    g = torch.Generator().manual_seed(9)
    q, k, v = (torch.randn(b, 203, 3, generator=g, dtype=F64) for _ in range(3))
    masks = torch.rand(b, 203, 203, generator=g) < 0.4
    masks |= torch.eye(203, dtype=torch.bool)
    mask = "causal" if mask_kind == "causal" else masks
    w = torch.randn(b, 203, 3, generator=g, dtype=F64)
    grads = {}
    for key, backend, dtype in (
        ("ref", DenseBackend(), F64),
        ("f64", TiledBackend(), F64),
        ("f32", TiledBackend(), torch.float32),
    ):
        qkv = [t.to(dtype).requires_grad_() for t in (q, k, v)]
        out = backend.attend(*qkv, mask=mask).out
        grads[key] = torch.autograd.grad((out * w.to(dtype)).sum(), qkv)
    for ref, f64, f32 in zip(grads["ref"], grads["f64"], grads["f32"], strict=True):
        scale = ref.abs().max()
        assert (f64 - ref).abs().max() <= 1e-12 * scale
        # float32: unit round-off 6e-8 over ~200-term sums; 1e-5 relative leaves a wide margin.
        assert (f32.double() - ref).abs().max() <= 1e-5 * scale


def test_no_grad_path_builds_no_graph():
    """Inputs without requires_grad (or under no_grad) take the plain forward: no graph."""
    q, k, v, _, _ = _inputs(3)
    assert not TiledBackend().attend(q, k, v).out.requires_grad
    with torch.no_grad():
        assert not TiledBackend().attend(q.requires_grad_(), k, v).out.requires_grad
