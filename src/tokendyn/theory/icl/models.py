"""Constrained single-channel linear-attention transformers and full-rank LSA references (spec §3).

Residual stream of every token (width D = d + 3 + E + L·H + 1):

    h_i = [ x (d) | y (1) | c (1, = 1) | f (1, query flag) | e (E) | p (L·H workspace) | o (1) ]

A broadcast head of layer ℓ (W_Q reads only c, W_K only [x_i, e_i], W_V only y_i) writes the scalar

    p[ℓ, h] = (1/N) Σ_{i ∈ context} (k_{ℓ,h}·[x_i, e_i]) · y_i

identically into every token (the query is masked as a source). Embedding slots e for layer ℓ:
`lin`/`lin+ffout`: e = A_ℓ x (fixed learned maps); `ff` (F2): e = G_ℓ(p_{<ℓ}) x, G_ℓ an MLP of the
workspace; `ff` (F1): e_i = MLP_ℓ([x_i, p_{<ℓ}, c]) per token. Readout ŷ = x_q·R(p_{≤L}), R linear
(`lin`) or an MLP. The `lsa-full` references are unconstrained linear self-attention layers on
z = (x, y) (von Oswald / Ahn): Z ← Z + Σ_h (1/N) Σ_{i∈ctx} (z_j W_Q)·(z_i W_K) z_i W_V, with an
optional token-wise MLP per block, and prediction ŷ = −(query's y-slot).
"""

from __future__ import annotations

import torch
from torch import nn

from tokendyn.errors import ConfigError
from tokendyn.theory.icl.tasks import tokens

MODELS = ("lin", "lin+ffout", "ff", "lsa-full", "lsa-full+ff")


def mlp(n_in: int, n_out: int, width: int, hidden: int = 2) -> nn.Sequential:
    """A ReLU MLP with `hidden` hidden layers of the given width (PyTorch default init)."""
    layers: list[nn.Module] = []
    for i in range(hidden):
        layers += [nn.Linear(n_in if i == 0 else width, width), nn.ReLU()]
    layers.append(nn.Linear(width if hidden else n_in, n_out))
    return nn.Sequential(*layers)


class Layout:
    """Slot indices of the constrained model's residual stream."""

    def __init__(self, d: int, E: int, L: int, H: int) -> None:
        self.d, self.E, self.L, self.H = d, E, L, H
        self.x = slice(0, d)
        self.y, self.c, self.f = d, d + 1, d + 2
        self.e = slice(d + 3, d + 3 + E)
        self.p0 = d + 3 + E
        self.o = self.p0 + L * H
        self.D = self.o + 1

    def p(self, upto: int) -> slice:
        """Workspace slots written by layers 1..upto."""
        return slice(self.p0, self.p0 + upto * self.H)


class BroadcastHead(nn.Module):
    """Single-channel head: W_Q = e_c, W_V = e_y (fixed; their scales are absorbed in k), W_K = k on
    [x, e]. Output p = (1/N) Σ_{i∈ctx} (k·[x_i, e_i]) y_i, written into slot `slot` of all."""

    def __init__(self, layout: Layout, slot: int, init_std: float) -> None:
        super().__init__()
        self.layout, self.slot = layout, slot
        self.k = nn.Parameter(init_std * torch.randn(layout.d + layout.E))

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        lay = self.layout
        ctx = h[:, :-1]
        key = torch.cat([ctx[..., lay.x], ctx[..., lay.e]], dim=-1) @ self.k  # (B, N)
        value = key.mul(ctx[..., lay.y]).mean(dim=1)  # (B,)
        out = h[..., lay.c] * value[:, None]  # query score c_j = 1: same for every token
        onehot = torch.zeros(lay.D, dtype=h.dtype, device=h.device)
        onehot[self.slot] = 1.0
        return h + out[..., None] * onehot


class ConstrainedICL(nn.Module):
    """The `lin`, `lin+ffout` and `ff` family (spec §3.1–3.5) with depth L and H heads per layer."""

    def __init__(
        self,
        d: int,
        L: int,
        H: int = 1,
        variant: str = "ff",
        ff_kind: str = "F2",
        E: int | None = None,
        width: int = 64,
        init_std: float = 0.02,
    ) -> None:
        super().__init__()
        if variant not in ("lin", "lin+ffout", "ff"):
            raise ConfigError("model", f"unknown variant {variant!r}", "use lin, lin+ffout or ff")
        if ff_kind not in ("F1", "F2"):
            raise ConfigError("ff_kind", f"unknown {ff_kind!r}", "use F1 or F2")
        if L < 1 or H < 1:
            raise ConfigError("depth/heads", f"need L ≥ 1 and H ≥ 1 (got {L}, {H})", "use ≥ 1")
        self.variant, self.ff_kind = variant, ff_kind
        self.layout = lay = Layout(d, E or H, L, H)
        adaptive = variant == "ff"
        self.embed = nn.ModuleList()
        for ell in range(L):
            if adaptive and ff_kind == "F1":
                self.embed.append(mlp(d + ell * H + 1, lay.E, 2 * width))
            elif adaptive and ell > 0:
                self.embed.append(mlp(ell * H, lay.E * d, width))
            else:
                self.embed.append(nn.Linear(d, lay.E, bias=False))
        self.heads = nn.ModuleList(
            nn.ModuleList(BroadcastHead(lay, lay.p0 + ell * H + h, init_std) for h in range(H))
            for ell in range(L)
        )
        self.readout = nn.Linear(L * H, d) if variant == "lin" else mlp(L * H, d, width)

    def initial_stream(self, X: torch.Tensor, y: torch.Tensor, xq: torch.Tensor) -> torch.Tensor:
        lay = self.layout
        B, N, _ = X.shape
        h = X.new_zeros(B, N + 1, lay.D)
        h[:, :N, lay.x], h[:, N, lay.x], h[:, :N, lay.y] = X, xq, y
        h[..., lay.c] = 1.0
        h[:, N, lay.f] = 1.0
        return h

    def embedding(self, ell: int, h: torch.Tensor) -> torch.Tensor:
        """Embedding slots e (B, N+1, E) of layer ell from x and the workspace p_{<ell}."""
        lay, net = self.layout, self.embed[ell]
        x, p = h[..., lay.x], h[:, -1, lay.p(ell)]
        if isinstance(net, nn.Linear):
            return net(x)
        if self.ff_kind == "F1":  # each token's MLP reads its own [x_i, p_{<ℓ}, c]
            return net(torch.cat([x, h[..., lay.p(ell)], h[..., lay.c : lay.c + 1]], dim=-1))
        G = net(p).view(-1, lay.E, lay.d)  # G_ℓ(p): computed once per sequence (F2)
        return torch.einsum("bed,bnd->bne", G, x)

    def stream(self, X: torch.Tensor, y: torch.Tensor, xq: torch.Tensor) -> torch.Tensor:
        """The full residual stream (B, N+1, D) after all layers and the readout."""
        lay = self.layout
        h = self.initial_stream(X, y, xq)
        for ell in range(lay.L):
            e = self.embedding(ell, h)
            h = torch.cat([h[..., : lay.e.start], e, h[..., lay.e.stop :]], dim=-1)
            for head in self.heads[ell]:
                h = head(h)
        yhat = torch.einsum("bd,bd->b", h[:, -1, lay.x], self.readout(h[:, -1, lay.p(lay.L)]))
        o = torch.zeros_like(h[..., lay.o])
        o[:, -1] = yhat  # the readout writes the query's output slot
        return torch.cat([h[..., : lay.o], o[..., None]], dim=-1)

    def fast_workspace(self, s: torch.Tensor) -> torch.Tensor:
        """p_{≤L} from s = (1/N) Xᵀy alone (F2 and fixed embeddings): since e = G x is linear in x,
        p[ℓ, h] = (k_x + Gᵀ k_e)·s exactly; equal to `stream` up to rounding."""
        lay, d = self.layout, self.layout.d
        p = s.new_zeros(s.shape[0], 0)
        for ell in range(lay.L):
            net = self.embed[ell]
            G = (
                net.weight.expand(s.shape[0], -1, -1)
                if isinstance(net, nn.Linear)
                else (net(p).view(-1, lay.E, d))
            )
            k = torch.stack([head.k for head in self.heads[ell]])  # (H, d + E)
            u = k[:, :d] + torch.einsum("he,bed->bhd", k[:, d:], G)  # measurement directions
            p = torch.cat([p, torch.einsum("bhd,bd->bh", u, s)], dim=-1)
        return p

    def workspace(self, X: torch.Tensor, y: torch.Tensor, xq: torch.Tensor) -> torch.Tensor:
        """The function vector p_{≤L} (B, L·H), read at the query (identical in all tokens)."""
        if self.variant == "ff" and self.ff_kind == "F1":
            return self.stream(X, y, xq)[:, -1, self.layout.p(self.layout.L)]
        return self.fast_workspace(torch.einsum("bnd,bn->bd", X, y) / X.shape[1])

    def forward(self, X: torch.Tensor, y: torch.Tensor, xq: torch.Tensor) -> torch.Tensor:
        """Prediction ŷ = x_q·R(p_{≤L}) (B,)."""
        return torch.einsum("bd,bd->b", xq, self.readout(self.workspace(X, y, xq)))


class LSALayer(nn.Module):
    """Full-rank linear self-attention, H heads, on z (B, N+1, D); the query is not a source."""

    def __init__(self, D: int, H: int, init_std: float) -> None:
        super().__init__()
        self.Wq = nn.Parameter(init_std * torch.randn(H, D, D))
        self.Wk = nn.Parameter(init_std * torch.randn(H, D, D))
        self.Wv = nn.Parameter(init_std * torch.randn(H, D, D))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        ctx = z[:, :-1]
        q = torch.einsum("bjd,hde->bhje", z, self.Wq)
        k = torch.einsum("bid,hde->bhie", ctx, self.Wk)
        v = torch.einsum("bid,hde->bhie", ctx, self.Wv)
        kv = torch.einsum("bhie,bhif->bhef", k, v) / ctx.shape[1]  # (1/N) Σ_i k_i v_iᵀ
        return z + torch.einsum("bhje,bhef->bjf", q, kv)


class LSAFull(nn.Module):
    """`lsa-full` (attention only) and `lsa-full+ff` (plus a residual token-wise MLP per block)."""

    def __init__(
        self, d: int, L: int, H: int = 1, ff: bool = False, width: int = 64, init_std: float = 0.1
    ) -> None:
        super().__init__()
        if L < 1 or H < 1:
            raise ConfigError("depth/heads", f"need L ≥ 1 and H ≥ 1 (got {L}, {H})", "use ≥ 1")
        self.d = d
        self.attn = nn.ModuleList(LSALayer(d + 1, H, init_std) for _ in range(L))
        self.ffs = (
            nn.ModuleList(mlp(d + 1, d + 1, width, hidden=1) for _ in range(L)) if ff else None
        )

    def stream(self, X: torch.Tensor, y: torch.Tensor, xq: torch.Tensor) -> torch.Tensor:
        z = tokens(X, y, xq)
        for ell, layer in enumerate(self.attn):
            z = layer(z)
            if self.ffs is not None:
                z = z + self.ffs[ell](z)
        return z

    def forward(self, X: torch.Tensor, y: torch.Tensor, xq: torch.Tensor) -> torch.Tensor:
        """ŷ = −(y-slot of the query token) (von Oswald's readout)."""
        return -self.stream(X, y, xq)[:, -1, self.d]


def von_oswald_gd_layer(d: int, eta: float, w0: torch.Tensor) -> LSALayer:
    """The von Oswald construction: W_Q = W_K = diag(I_d, 0), value (0, η(w₀·x_i − y_i)). One layer
    maps every y-slot to y − ΔW·x with ΔW = −η ∇L(w₀), L(w) = (1/2N) Σ (w·x_i − y_i)²."""
    layer = LSALayer(d + 1, 1, 0.0).to(w0.dtype)
    with torch.no_grad():
        layer.Wq[0, :d, :d] = torch.eye(d, dtype=w0.dtype)
        layer.Wk[0, :d, :d] = torch.eye(d, dtype=w0.dtype)
        layer.Wv[0, :d, d] = eta * w0
        layer.Wv[0, d, d] = -eta
    return layer


def build_model(
    name: str, d: int, L: int, H: int = 1, ff_kind: str = "F2", width: int = 64
) -> nn.Module:
    """Model by name: lin, lin+ffout, ff (F2 or F1), lsa-full, lsa-full+ff."""
    if name in ("lin", "lin+ffout", "ff"):
        return ConstrainedICL(d, L, H, variant=name, ff_kind=ff_kind, width=width)
    if name in ("lsa-full", "lsa-full+ff"):
        return LSAFull(d, L, H, ff=name.endswith("+ff"), width=width)
    raise ConfigError("model", f"unknown model {name!r}", f"use one of {', '.join(MODELS)}")
