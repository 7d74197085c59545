"""Whole transformer blocks as particle systems (tokendyn.engine.blocks).

The identity tests compare one Euler step (dt = 1) of each block field with one block of a reference
transformer written below with plain torch ops from fused projection matrices (Wq, Wk, Wv, Wo as in
a real model; LayerNorm via torch.nn.functional.layer_norm; RoPE via complex multiplication; ALiBi
as the full pair-bias matrix; GQA via repeat_interleave), in float64 to 1e-10."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from tokendyn.engine.attention import Head, SoftmaxAttention
from tokendyn.engine.blocks import (
    MLP,
    Block,
    Layer,
    LayerSchedule,
    Norm,
    PositionalAttention,
    ResampledSchedule,
    draw_qkv,
    haar_orthogonal,
    heads_from_projections,
    random_mlp,
)
from tokendyn.engine.integrate import integrate
from tokendyn.engine.retrieval import retrieval_profile
from tokendyn.engine.space import get_space
from tokendyn.errors import ConfigError

D, N, H, G, HEAD = 8, 7, 4, 2, 2  # token dim, tokens, query heads, kv heads, head dim
BETA = 1 / math.sqrt(HEAD)
ROLES = ("attn", "mlp", "attn_out", "mlp_out")


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def params(seed: int, activation: str | None, kv: int = G) -> dict:
    g = gen(seed)
    r = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64)  # noqa: E731
    p = {
        "Wq": r(H * HEAD, D) / 2,
        "Wk": r(kv * HEAD, D) / 2,
        "Wv": r(kv * HEAD, D) / 2,
        "Wo": r(D, H * HEAD) / 2,
        "gamma": {role: 1 + 0.3 * r(D) for role in ROLES},
        "bias": {role: 0.2 * r(D) for role in ROLES},
        "alpha": (
            0.3 + 0.2 * torch.rand(D, generator=g, dtype=torch.float64),
            0.4 + 0.2 * torch.rand(D, generator=g, dtype=torch.float64),
        ),
    }
    if activation is not None:
        width = 12
        p["W1"], p["W2"] = r(width, D) / 3, r(D, width) / 3
        p["W3"] = r(width, D) / 3 if activation == "swiglu" else None
        p["b1"], p["b2"] = (None, None) if activation == "swiglu" else (0.1 * r(width), 0.1 * r(D))
    return p


# ---- the reference transformer (plain torch; does not call tokendyn) ----


def ref_norm(y, p, role, kind):
    if kind == "layernorm":
        return F.layer_norm(y, (D,), p["gamma"][role], p["bias"][role], eps=1e-5)
    return p["gamma"][role] * y / torch.sqrt((y * y).mean(-1, keepdim=True) + 1e-5)


def ref_rope(t, base=10000.0):  # t (B, h, N, k): pairs (a, a + k/2) as complex numbers
    half = t.shape[-1] // 2
    z = torch.complex(t[..., :half], t[..., half:])
    ang = torch.arange(t.shape[-2], dtype=torch.float64)[:, None] * base ** (
        -2.0 * torch.arange(half, dtype=torch.float64) / t.shape[-1]
    )
    z = z * torch.polar(torch.ones_like(ang), ang)
    return torch.cat([z.real, z.imag], dim=-1)


def ref_attn(y, p, positions, causal):
    B, n, _ = y.shape
    kv = p["Wk"].shape[0] // HEAD
    q = (y @ p["Wq"].T).view(B, n, H, HEAD).transpose(1, 2)
    k = (y @ p["Wk"].T).view(B, n, kv, HEAD).transpose(1, 2).repeat_interleave(H // kv, dim=1)
    v = (y @ p["Wv"].T).view(B, n, kv, HEAD).transpose(1, 2).repeat_interleave(H // kv, dim=1)
    if positions == "rope":
        q, k = ref_rope(q), ref_rope(k)
    s = BETA * q @ k.transpose(-1, -2)
    i = torch.arange(n, dtype=torch.float64)
    if positions == "alibi":
        slopes = torch.tensor([2.0 ** (-8.0 * h / H) for h in range(1, H + 1)], dtype=torch.float64)
        s = s - slopes[:, None, None] * (i[:, None] - i[None, :]).abs()
    if causal:
        s = s.masked_fill(i[None, :] > i[:, None], float("-inf"))
    out = torch.softmax(s, dim=-1) @ v  # (B, H, N, k)
    return out.transpose(1, 2).reshape(B, n, H * HEAD) @ p["Wo"].T


def ref_mlp(y, p, activation):
    if activation == "swiglu":
        return (F.silu(y @ p["W1"].T) * (y @ p["W3"].T)) @ p["W2"].T
    act = F.gelu if activation == "gelu" else F.relu
    return act(y @ p["W1"].T + p["b1"]) @ p["W2"].T + p["b2"]


def ref_block(x, p, scheme, activation, positions, causal, kind="layernorm"):
    A = lambda y: ref_attn(y, p, positions, causal)  # noqa: E731
    M = (lambda y: ref_mlp(y, p, activation)) if activation else (lambda y: 0 * y)
    N_ = lambda role, y: ref_norm(y, p, role, kind)  # noqa: E731
    unit = lambda y: y / torch.sqrt((y * y).sum(-1, keepdim=True))  # noqa: E731
    if scheme == "none":
        x1 = x + A(x)
        return x1 + M(x1)
    if scheme == "sphere":
        x1 = x + A(x)
        u = x1 + M(x1) - x
        return unit(x + u - (u * x).sum(-1, keepdim=True) * x)
    if scheme == "pre-ln":
        x1 = x + A(N_("attn", x))
        return x1 + M(N_("mlp", x1))
    if scheme == "peri-ln":
        x1 = x + N_("attn_out", A(N_("attn", x)))
        return x1 + (N_("mlp_out", M(N_("mlp", x1))) if activation else 0)
    if scheme == "post-ln":
        x1 = N_("attn", x + A(x))
        return N_("mlp", x1 + M(x1)) if activation else x1
    a_attn, a_mlp = p["alpha"]
    h = unit(x + a_attn * (unit(A(x)) - x))
    return unit(h + a_mlp * (unit(M(h)) - h)) if activation else h


# ---- the engine side ----


def engine_layer(p, activation, positions, causal, kind="layernorm", backend="dense", kv=G):
    heads = heads_from_projections(p["Wq"], p["Wk"], p["Wv"], p["Wo"], H, kv, BETA)
    attention = PositionalAttention(
        heads,
        positions=positions,
        kv_heads=kv,
        mask="causal" if causal else None,
        backend=backend,
    )
    mlp = None
    if activation:
        mlp = MLP(p["W1"], p["W2"], activation, p["W3"], p["b1"], p["b2"])
    norms = {
        role: Norm(
            D, kind, gamma=p["gamma"][role], bias=p["bias"][role] if kind == "layernorm" else None
        )
        for role in ROLES
    }
    return Layer(attention, mlp, norms, *p["alpha"])


def one_euler_step(block: Block, x: torch.Tensor) -> torch.Tensor:
    space = get_space(block.space, D)
    return integrate(block, space, x, t_end=1.0, dt=1.0, method="euler")


def cloud(scheme: str, seed: int = 1, n: int = N) -> torch.Tensor:
    x = torch.randn(2, n, D, generator=gen(seed), dtype=torch.float64)
    return x / x.norm(dim=-1, keepdim=True) if scheme in ("sphere", "ngpt") else x


SCHEMES = ("none", "sphere", "pre-ln", "post-ln", "peri-ln", "ngpt")


@pytest.mark.parametrize("causal", [True, False], ids=["causal", "bidirectional"])
@pytest.mark.parametrize("positions", ["none", "alibi", "rope"])
@pytest.mark.parametrize("activation", [None, "gelu", "relu", "swiglu"])
@pytest.mark.parametrize("scheme", SCHEMES)
def test_one_euler_step_is_one_block(scheme, activation, positions, causal):
    p = params(0, activation)
    x = cloud(scheme)
    block = Block(LayerSchedule([engine_layer(p, activation, positions, causal)]), norm=scheme)
    got = one_euler_step(block, x)
    want = ref_block(x, p, scheme, activation, positions, causal)
    assert (got - want).abs().max().item() < 1e-10


@pytest.mark.parametrize("scheme", ["pre-ln", "peri-ln", "post-ln"])
def test_rmsnorm_blocks(scheme):
    p = params(3, "swiglu")
    x = cloud(scheme)
    layer = engine_layer(p, "swiglu", "rope", True, kind="rmsnorm")
    block = Block(LayerSchedule([layer]), norm=scheme, norm_type="rmsnorm")
    want = ref_block(x, p, scheme, "swiglu", "rope", True, kind="rmsnorm")
    assert (one_euler_step(block, x) - want).abs().max().item() < 1e-10


@pytest.mark.parametrize("kv", [1, 2, 4])
@pytest.mark.parametrize("backend", ["dense", "tiled", "sdpa"])
@pytest.mark.parametrize("positions", ["alibi", "rope"])
def test_every_backend_applies_positions_and_groups(positions, backend, kv):
    """300 tokens (above the dense size of `auto`): causal ALiBi through the backend's key bias and
    RoPE before the kernel, for multi-query (G = 1), grouped (G = 2) and full (G = H) heads."""
    p = params(5, "gelu", kv=kv)
    x = cloud("pre-ln", n=300)
    layer = engine_layer(p, "gelu", positions, True, backend=backend, kv=kv)
    block = Block(LayerSchedule([layer]), norm="pre-ln")
    want = ref_block(x, p, "pre-ln", "gelu", positions, True)
    assert (one_euler_step(block, x) - want).abs().max().item() < 1e-10


def test_bidirectional_alibi_runs_in_query_blocks():
    """Non-causal ALiBi is not a key bias: the pair-bias loop must agree with the reference when the
    queries span several of its blocks (300 tokens, blocks of 256)."""
    p = params(6, None)
    x = cloud("none", n=300)
    block = Block(LayerSchedule([engine_layer(p, None, "alibi", False)]), norm="none")
    want = ref_block(x, p, "none", None, "alibi", False)
    assert (one_euler_step(block, x) - want).abs().max().item() < 1e-10


# ---- depth-varying weights ----


def uniform_layer(c: float, d: int = 3) -> Layer:
    """Q = K = 0 (uniform attention), V = c·I: A(x)_i = c·x̄ for every token."""
    zero = torch.zeros(1, d, dtype=torch.float64)
    head = Head(zero, zero.clone(), c * torch.eye(d, dtype=torch.float64), 1.0)
    return Layer(SoftmaxAttention([head], backend="dense"))


@pytest.mark.parametrize("method", ["euler", "rk4"])
def test_layer_l_acts_exactly_on_its_interval(method):
    """ẋ_i = c_{l(t)} x̄ on R^d: x_i − x̄ is constant and each step multiplies x̄ by the scheme's
    growth factor R(dt·c) (Euler 1 + z, RK4 Σ_{k≤4} z^k/k!). With layers c = (0.5, −0.3, 1.2),
    τ = 0.5, dt = 0.1 and t_end = 2 (the stack, then layer 0 again), x̄(2) = x̄(0)·Π R(0.1c_l)^5 —
    exact to round-off only if every step uses the layer of its own interval."""
    cs = [0.5, -0.3, 1.2]
    block = Block(LayerSchedule([uniform_layer(c) for c in cs], layer_time=0.5), norm="none")
    x0 = torch.randn(1, 9, 3, generator=gen(2), dtype=torch.float64)
    out = integrate(block, get_space("euclidean"), x0, t_end=2.0, dt=0.1, method=method)
    R = (
        (lambda z: 1 + z)
        if method == "euler"
        else (lambda z: 1 + z + z**2 / 2 + z**3 / 6 + z**4 / 24)
    )
    factor = math.prod(R(0.1 * c) ** 5 for c in [*cs, cs[0]])
    mean0 = x0.mean(1, keepdim=True)
    assert (out.mean(1, keepdim=True) - factor * mean0).abs().max().item() < 1e-13
    assert ((out - out.mean(1, keepdim=True)) - (x0 - mean0)).abs().max().item() < 1e-13


def test_dt_must_divide_the_layer_time():
    block = Block(LayerSchedule([uniform_layer(1.0), uniform_layer(2.0)], 0.5), norm="none")
    x0 = torch.zeros(1, 2, 3, dtype=torch.float64)
    with pytest.raises(ConfigError, match="^dt: .*layer time"):
        integrate(block, get_space("euclidean"), x0, t_end=1.2, dt=0.3, method="euler")


def test_shared_weights_are_one_layer_repeated():
    shared = Block(LayerSchedule([uniform_layer(0.7)], 0.5), norm="none")
    stacked = Block(LayerSchedule([uniform_layer(0.7)] * 4, 0.5), norm="none")
    assert shared.layer_time is None and stacked.layer_time == 0.5
    x0 = torch.randn(1, 5, 3, generator=gen(4), dtype=torch.float64)
    a = integrate(shared, get_space("euclidean"), x0, t_end=2.0, dt=0.25, method="rk4")
    b = integrate(stacked, get_space("euclidean"), x0, t_end=2.0, dt=0.25, method="rk4")
    assert torch.equal(a, b)


def test_resampled_weights_depend_only_on_seed_and_interval():
    def draw(g: torch.Generator) -> Layer:
        Q, K, V = draw_qkv("random", 3, g)
        return Layer(SoftmaxAttention([Head(Q, K, V, 1.0)], backend="dense"))

    s1, s2 = ResampledSchedule(draw, 0.5, seed=7), ResampledSchedule(draw, 0.5, seed=7)
    V = lambda s, t: s.at(t).attention.heads[0].V  # noqa: E731
    late = V(s1, 1.2)  # interval 2 drawn first, then interval 0
    assert torch.equal(V(s1, 0.0), V(s2, 0.3)) and torch.equal(late, V(s2, 1.0))
    assert not torch.equal(V(s1, 0.0), late)
    assert not torch.equal(V(ResampledSchedule(draw, 0.5, seed=8), 0.0), V(s1, 0.0))


# ---- ensembles ----


def test_ensembles_are_reproducible_from_the_seed():
    for name in ("random", "goe", "goe-v", "goe-minus-v", "orthogonal-v"):
        a, b = draw_qkv(name, 5, gen(3)), draw_qkv(name, 5, gen(3))
        c = draw_qkv(name, 5, gen(4))
        assert all(torch.equal(u, v) for u, v in zip(a, b, strict=True))
        assert any(not torch.equal(u, v) for u, v in zip(a, c, strict=True))


def test_random_is_todays_gaussian_draw():
    g = gen(11)
    want = [torch.randn(4, 4, generator=g, dtype=torch.float64) / 2 for _ in range(3)]
    got = draw_qkv("random", 4, gen(11))
    assert all(torch.equal(u, v) for u, v in zip(got, want, strict=True))


def test_goe_moments_and_semicircle_edge():
    """A = QᵀK, d = 400: off-diagonal variance 1/d and diagonal 2/d (sample of n entries: relative
    standard error √(2/n), 5σ); λ_max = 2 + d^{-2/3}·TW₁ with TW₁ mean −1.21, sd 1.27, so
    |λ_max − 2| < (1.21 + 5·1.27)·d^{-2/3} < 8·d^{-2/3}; the V choices are ±A and I."""
    d = 400
    Q, K, V = draw_qkv("goe-minus-v", d, gen(0))
    A = Q.T @ K
    assert torch.equal(A, A.T) and torch.equal(V, -A)
    off = A[torch.triu(torch.ones(d, d, dtype=torch.bool), 1)]
    diag = torch.diagonal(A)
    assert abs(off.var().item() * d - 1) < 5 * math.sqrt(2 / off.numel())
    assert abs(diag.var().item() * d / 2 - 1) < 5 * math.sqrt(2 / d)
    lam = torch.linalg.eigvalsh(A)
    assert abs(lam.max().item() - 2) < 8 * d ** (-2 / 3)
    assert abs(lam.min().item() + 2) < 8 * d ** (-2 / 3)


def test_orthogonal_v_is_haar():
    """VᵀV = I; for Haar O(d) the trace has mean 0 and second moment 1 (d ≥ 2): 2000 draws at
    d = 8, 5 standard errors (tr V is close to N(0, 1): sd of tr² ≈ √2)."""
    V = draw_qkv("orthogonal-v", 6, gen(1))[2]
    assert (V.T @ V - torch.eye(6, dtype=torch.float64)).abs().max().item() < 1e-13
    g = gen(2)
    tr = torch.tensor([torch.trace(haar_orthogonal(8, g)).item() for _ in range(2000)])
    assert abs(tr.mean().item()) < 5 / math.sqrt(2000)
    assert abs((tr**2).mean().item() - 1) < 5 * math.sqrt(2 / 2000)


def test_random_mlp_scaling():
    """W₁ entries N(0, 1/d), W₂ entries N(0, 1/w): variances within 5 relative standard errors."""
    d, w = 64, 256
    m = random_mlp(d, w, "swiglu", gen(0))
    for t, var in ((m.W1, 1 / d), (m.W3, 1 / d), (m.W2, 1 / w)):
        assert abs(t.var().item() / var - 1) < 5 * math.sqrt(2 / t.numel())


# ---- gradients, retrieval, errors ----


def test_gradients_flow_through_a_block():
    p = params(8, "gelu")
    Wq = p["Wq"].clone().requires_grad_(True)
    gamma = p["gamma"]["attn"].clone().requires_grad_(True)
    p = {**p, "Wq": Wq, "gamma": {**p["gamma"], "attn": gamma}}
    block = Block(LayerSchedule([engine_layer(p, "gelu", "alibi", True)]), norm="pre-ln")
    x = cloud("pre-ln").requires_grad_(True)
    v = block(x)
    assert v.requires_grad
    v.pow(2).sum().backward()
    assert all(t.grad is not None and t.grad.abs().sum() > 0 for t in (Wq, gamma, x))


@pytest.mark.parametrize("scheme", ["pre-ln", "ngpt"])
def test_gradcheck_tiny_block(scheme):
    g = gen(9)
    d, n = 4, 3
    r = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64).requires_grad_(True)  # noqa: E731
    x, Q, K, V, W1, W2, gamma = r(1, n, d), r(2, d), r(2, d), r(2, d), r(5, d), r(d, 5), r(d)

    def f(x, Q, K, V, W1, W2, gamma):
        W = torch.eye(d, 2, dtype=torch.float64)
        att = PositionalAttention(
            [Head(Q, K, V, 0.7, W)], positions="rope", mask="causal", backend="dense"
        )
        layer = Layer(att, MLP(W1, W2, "gelu"), {"attn": Norm(d, gamma=gamma)})
        return Block(LayerSchedule([layer]), norm=scheme)(x)

    assert torch.autograd.gradcheck(f, (x, Q, K, V, W1, W2, gamma))


def test_retrieval_profile_is_the_last_row_of_attention():
    p = params(10, None)
    x = cloud("pre-ln")
    block = Block(LayerSchedule([engine_layer(p, None, "alibi", True)]), norm="pre-ln")
    r = retrieval_profile(block, x)
    # reference: the last query row of ref_attn's weights on the normalised cloud
    y = ref_norm(x, p, "attn", "layernorm")
    q = (y @ p["Wq"].T).view(2, N, H, HEAD).transpose(1, 2)
    k = (y @ p["Wk"].T).view(2, N, G, HEAD).transpose(1, 2).repeat_interleave(H // G, dim=1)
    i = torch.arange(N, dtype=torch.float64)
    slopes = torch.tensor([2.0 ** (-8.0 * h / H) for h in range(1, H + 1)], dtype=torch.float64)
    s = BETA * q[:, :, -1:] @ k.transpose(-1, -2) - slopes[:, None, None] * (N - 1 - i)
    assert r.shape == (2, H, N)
    assert (r - torch.softmax(s, dim=-1)[:, :, 0]).abs().max().item() < 1e-12
    plain = SoftmaxAttention(
        [Head(p["Wq"][:2], p["Wk"][:2], torch.eye(D, dtype=torch.float64), 1.0)], mask="causal"
    )
    assert torch.allclose(
        retrieval_profile(plain, x).sum(-1), torch.ones(2, 1, dtype=torch.float64)
    )


def test_one_line_errors():
    p = params(0, None)
    heads = heads_from_projections(p["Wq"], p["Wk"], p["Wv"], p["Wo"], H, G, BETA)
    with pytest.raises(ConfigError, match="^kv_heads: 3 does not divide"):
        PositionalAttention(heads, kv_heads=3)
    with pytest.raises(ConfigError, match="^kv_heads: query head 2"):
        PositionalAttention(heads, kv_heads=1)  # one group, but two different K
    with pytest.raises(ConfigError, match="^positions: unknown"):
        PositionalAttention(heads, positions="sinusoidal")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="^norm: unknown scheme"):
        Block(LayerSchedule([Layer(PositionalAttention(heads, kv_heads=G))]), norm="deep-ln")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="^W3: "):
        MLP(p["Wq"].T @ p["Wq"], p["Wq"].T @ p["Wq"], "swiglu")


# ---- configs, TOML [[layers]], CLI ----

LAYERS_TOML = """
norm = "none"
space = "euclidean"
d = 3
n = 6
t_end = 1.5
dt = 0.1
layer_time = 0.5
method = "euler"
stats = []
[[layers]]
Q = [[0, 0, 0]]
K = [[0, 0, 0]]
V = [[0.5, 0, 0], [0, 0.5, 0], [0, 0, 0.5]]
[[layers]]
Q = [[0, 0, 0]]
K = [[0, 0, 0]]
V = [[-0.3, 0, 0], [0, -0.3, 0], [0, 0, -0.3]]
"""


def test_toml_layers_act_on_their_intervals(tmp_path):
    """The end-to-end form of test_layer_l_acts_exactly_on_its_interval: layers c = (0.5, −0.3)
    from [[layers]] tables over t ∈ [0, 1.5) (the stack, then layer 0): x̄ × Π (1 + 0.1 c)^5."""
    from tokendyn.app.config import load_config
    from tokendyn.app.run import run_simulation

    path = tmp_path / "layers.toml"
    path.write_text(LAYERS_TOML)
    cfg = load_config(path)
    ds = run_simulation(cfg, None, progress=False)
    x = torch.as_tensor(ds["x"].values)
    factor = (1 + 0.05) ** 5 * (1 - 0.03) ** 5 * (1 + 0.05) ** 5
    assert (x[-1].mean(0) - factor * x[0].mean(0)).abs().max().item() < 1e-13
    assert load_config(path).to_toml() == cfg.to_toml()
    (tmp_path / "again.toml").write_text(cfg.to_toml())
    assert load_config(tmp_path / "again.toml") == cfg


def test_default_config_builds_todays_field():
    from tokendyn.app.build import make_field
    from tokendyn.app.config import make_config

    assert isinstance(make_field(make_config()), SoftmaxAttention)
    block = make_field(
        make_config(
            norm="pre-ln", mlp="swiglu", positions="rope", heads=2, d=4, kv_heads=1, qkv="goe"
        )
    )
    assert isinstance(block, Block) and block.space == "euclidean"


@pytest.mark.parametrize(
    ("args", "field"),
    [
        (["--norm", "pre-ln", "--space", "sphere"], "space"),
        (["--norm", "sphere", "--space", "euclidean"], "norm"),
        (["--heads", "3", "--d", "6", "--kv-heads", "2"], "kv_heads"),
        (["--positions", "rope", "--d", "3"], "positions"),
        (["--resample-every", "0.5", "--qkv", "identity"], "resample_every"),
        (["--resample-every", "0.3", "--qkv", "goe"], "dt"),
        (["--mlp", "gelu", "--attention", "l2"], "attention"),
        (["--mlp-width", "0", "--mlp", "gelu"], "mlp_width"),
        (["--layer-time", "-1"], "layer_time"),
        (["--norm", "deep"], "norm"),
    ],
)
def test_block_flags_give_one_line_errors(args, field):
    from typer.testing import CliRunner

    from tokendyn.cli import app

    result = CliRunner().invoke(app, ["simulate", "--n", "8", "--t-end", "1", "--dt", "0.5", *args])
    assert result.exit_code == 2, result.output
    assert field in result.output and "Traceback" not in result.output


def test_layer_table_errors_name_the_table(tmp_path):
    from tokendyn.app.build import build
    from tokendyn.app.config import load_config

    path = tmp_path / "bad.toml"
    path.write_text(
        LAYERS_TOML.replace(
            "V = [[-0.3, 0, 0], [0, -0.3, 0], [0, 0, -0.3]]", "V = [[1, 0], [0, 1]]"
        )
    )
    with pytest.raises(ConfigError, match=r"^layers\[1\]\.[QKV]: "):
        build(load_config(path))


def test_block_figures(tmp_path):
    from tokendyn.app.build import make_field
    from tokendyn.app.config import make_config
    from tokendyn.viz.blocks import retrieval_figure, schemes_figure

    cfg = make_config(
        n=8,
        d=4,
        heads=2,
        mlp="gelu",
        positions="alibi",
        mask="causal",
        t_end=1,
        dt=0.5,
        qkv="random",
        norm="pre-ln",
    )
    fig = schemes_figure(cfg, path=tmp_path / "schemes.png")
    assert len(fig.axes) == 6 and (tmp_path / "schemes.png").stat().st_size > 0
    x = torch.randn(1, 8, 4, generator=gen(0), dtype=torch.float64)
    fig = retrieval_figure(make_field(cfg), x, path=tmp_path / "retrieval.png")
    assert len(fig.axes[0].lines) == 2
