"""Build the objects of a run from its config: space, attention field, initial cloud.

The engine's errors name its own arguments (`centers`, `cov`, `law`, …); `build`, `make_field` and
`make_space` re-raise them under the config field that set the argument (`ENGINE_FIELDS`), so the
message names what the user wrote in the TOML file or on the command line.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import ParamSpec, TypeVar

import torch

from tokendyn.app.config import LayerTable, SimulationConfig
from tokendyn.engine.attention import VARIANTS, AttentionField, Head, as_matrix, split_heads
from tokendyn.engine.blocks import (
    MLP,
    Block,
    Layer,
    LayerSchedule,
    PositionalAttention,
    ResampledSchedule,
    draw_qkv,
    heads_from_projections,
    random_mlp,
)
from tokendyn.engine.device import resolve_device, resolve_dtype
from tokendyn.engine.initial import gaussian_cloud, uniform_sphere, wrapped_normal_mixture
from tokendyn.engine.kernels.calibration import DENSE_MAX_N
from tokendyn.engine.space import Space, get_space
from tokendyn.errors import ConfigError
from tokendyn.models.open import available_memory

# engine argument → the config field (and CLI flag --field-name) that sets it
ENGINE_FIELDS = {
    "mean": "init_mean",
    "cov": "init_cov",
    "centers": "init_centers",
    "weights": "init_weights",
    "std": "init_std",
    "law": "beta_law",
    "bias": "sigmoid_bias",
    "form": "sigmoid_form",
}

P = ParamSpec("P")
R = TypeVar("R")


def _config_fields(fn: Callable[P, R]) -> Callable[P, R]:
    """Re-raise the engine's ConfigErrors under the config fields of ENGINE_FIELDS."""

    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return fn(*args, **kwargs)
        except ConfigError as err:
            raise err.renamed(ENGINE_FIELDS) from None

    return wrapper


def dtype_of(cfg: SimulationConfig) -> torch.dtype:
    """The run's torch dtype."""
    return resolve_dtype(cfg.dtype)


def device_of(cfg: SimulationConfig) -> torch.device:
    """The run's torch device (ConfigError naming `device` when CUDA is absent)."""
    return resolve_device(cfg.device)


def make_matrices(
    cfg: SimulationConfig, gen: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Q, K, V (float64): explicit ones from the config, else drawn from the qkv ensemble
    (tokendyn.engine.blocks.ensembles)."""
    drawn = draw_qkv(cfg.qkv, cfg.d, gen)
    Q, K, V = (
        drawn[i] if getattr(cfg, name) is None else as_matrix(getattr(cfg, name), name)
        for i, name in enumerate("QKV")
    )
    return Q, K, V


@_config_fields
def make_field(
    cfg: SimulationConfig,
    gen: torch.Generator | None = None,
    beta: float | torch.Tensor | None = None,
) -> AttentionField | Block:
    """The configured field (an attention layer, or a whole block when a block field is set);
    `beta` (default cfg.beta) may be a (B,) tensor, one β per cloud of a batch (attention layers
    only: sweeps run block configs point by point)."""
    gen = gen if gen is not None else torch.Generator().manual_seed(cfg.seed)
    if cfg.uses_blocks:
        return make_block(cfg, gen)
    beta = cfg.beta if beta is None else beta
    Q, K, V = make_matrices(cfg, gen)
    heads = [Head(Q, K, V, beta)] if cfg.heads == 1 else split_heads(Q, K, V, cfg.heads, beta)
    common = dict(mask=None if cfg.mask == "none" else cfg.mask, backend=cfg.backend)
    cls = VARIANTS[cfg.attention]
    if cfg.attention == "sinkhorn":
        field = cls(heads, tol=cfg.sinkhorn_tol, max_iter=cfg.sinkhorn_max_iter, **common)
    elif cfg.attention == "sigmoid":
        field = cls(heads, bias=cfg.sigmoid_bias, form=cfg.sigmoid_form, **common)
    else:
        field = cls(heads, normalise=cfg.resolved_normalise, **common)
    return field.to(dtype_of(cfg), device_of(cfg))


@_config_fields
def make_space(cfg: SimulationConfig) -> Space:
    """The configured space (initial Gaussians apply only in R^d)."""
    if cfg.space == "sphere" and (cfg.init_mean is not None or cfg.init_cov is not None):
        raise ConfigError(
            "init_mean" if cfg.init_mean is not None else "init_cov",
            "initial Gaussians apply only in R^d",
            "drop init_mean/init_cov or use space = 'euclidean'",
        )
    return get_space(cfg.space, cfg.d)


@_config_fields
def initial_cloud(cfg: SimulationConfig, gen: torch.Generator) -> torch.Tensor:
    """x0 (batch, n, d) in float64 on the CPU from the configured law: a wrapped-normal mixture,
    uniform on the sphere, or N(init_mean, init_cov) in R^d."""
    if cfg.init in ("wrapped-normal", "mixture"):
        centers = cfg.init_centers or [0.0]
        return wrapped_normal_mixture(
            cfg.batch, cfg.n, cfg.d, centers, cfg.init_weights, cfg.init_std, gen
        )
    if cfg.space == "sphere":
        return uniform_sphere(cfg.batch, cfg.n, cfg.d, gen)
    return gaussian_cloud(cfg.batch, cfg.n, cfg.d, gen, cfg.init_mean, cfg.init_cov)


def build(
    cfg: SimulationConfig, beta: float | torch.Tensor | None = None
) -> tuple[AttentionField | Block, Space, torch.Tensor]:
    """(field, space, x0) with x0 of shape (batch, n, d) on cfg.device in cfg.dtype; `beta` as in
    make_field.

    One generator seeded with cfg.seed draws the random Q, K, V first, then the cloud, in float64
    on the CPU, so a seed gives the same run on every device and dtype."""
    gen = torch.Generator().manual_seed(cfg.seed)
    field = make_field(cfg, gen, beta)
    space = make_space(cfg)
    x0 = initial_cloud(cfg, gen)
    return field, space, x0.to(dtype_of(cfg)).to(device_of(cfg))


def _block_heads(
    cfg: SimulationConfig,
    Q: torch.Tensor | list[torch.Tensor],
    K: torch.Tensor | list[torch.Tensor],
    V: torch.Tensor | list[torch.Tensor],
    W: torch.Tensor | list[torch.Tensor] | None,
) -> list[Head]:
    """Heads from fused matrices (split into H query and G key/value blocks, W = I: the block
    selectors of split_heads) or from per-head lists (Q, W: H entries; K, V: G entries)."""
    H, G = cfg.heads, cfg.kv_heads or cfg.heads
    if isinstance(Q, list):
        for name, value, count in (("Q", Q, H), ("K", K, G), ("V", V, G), ("W", W, H)):
            if value is not None and (not isinstance(value, list) or len(value) != count):
                raise ConfigError(
                    name, f"needs a list of {count} per-head matrices", "give one per head"
                )
        assert isinstance(K, list) and isinstance(V, list)
        Ws = W if isinstance(W, list) else [None] * H
        return [Head(Q[h], K[h * G // H], V[h * G // H], cfg.beta, Ws[h]) for h in range(H)]
    assert not isinstance(K, list) and not isinstance(V, list) and not isinstance(W, list)
    if W is None and H == 1:
        return [Head(Q, K, V, cfg.beta)]
    if W is None and G == H:
        return split_heads(Q, K, V, H, cfg.beta)
    if W is None:  # grouped: the first G key/value blocks of d/H rows, identity output
        rows = G * (cfg.d // H)
        K, V, W = K[:rows], V[:rows], torch.eye(cfg.d, dtype=torch.float64)
    return heads_from_projections(Q, K, V, W, H, G, cfg.beta)


def _table_layer(cfg: SimulationConfig, table: LayerTable, gen: torch.Generator) -> Layer:
    def read(name: str) -> torch.Tensor | list[torch.Tensor] | None:
        value = getattr(table, name)
        if value is None or not value or not isinstance(value[0][0], list):
            return None if value is None else as_matrix(value, name)
        return [as_matrix(m, name) for m in value]

    Q, K, V, W = (read(name) for name in "QKVW")
    assert Q is not None and K is not None and V is not None
    mlp = None
    if cfg.mlp != "none" and table.W1 is not None:
        W1, W2 = as_matrix(table.W1, "W1"), as_matrix(table.W2 or [[]], "W2")
        W3 = None if table.W3 is None else as_matrix(table.W3, "W3")
        mlp = MLP(W1, W2, cfg.mlp, W3)  # type: ignore[arg-type]
    elif cfg.mlp != "none":
        mlp = random_mlp(cfg.d, cfg.mlp_width or 4 * cfg.d, cfg.mlp, gen)  # type: ignore[arg-type]
    return Layer(_block_attention(cfg, _block_heads(cfg, Q, K, V, W)), mlp)


def _block_attention(cfg: SimulationConfig, heads: list[Head]) -> PositionalAttention:
    return PositionalAttention(
        heads,
        positions=cfg.positions,
        kv_heads=cfg.kv_heads,
        mask=None if cfg.mask == "none" else cfg.mask,
        backend=cfg.backend,
    )


def _drawn_layer(cfg: SimulationConfig, gen: torch.Generator) -> Layer:
    """Q, K, V from the config (explicit or the qkv ensemble), then the MLP from the ensemble."""
    Q, K, V = make_matrices(cfg, gen)
    mlp = None
    if cfg.mlp != "none":
        mlp = random_mlp(cfg.d, cfg.mlp_width or 4 * cfg.d, cfg.mlp, gen)  # type: ignore[arg-type]
    return Layer(_block_attention(cfg, _block_heads(cfg, Q, K, V, None)), mlp)


def make_block(cfg: SimulationConfig, gen: torch.Generator) -> Block:
    """The whole-block field of a config (docs/blocks.md): `[[layers]]` tables (layer l on
    [l·τ, (l+1)·τ)), an ensemble redrawn every `resample_every` (seeded by (seed, interval)), or
    one layer from Q, K, V / qkv repeated (shared weights); errors in a table name `layers[i]`."""
    schedule: LayerSchedule | ResampledSchedule
    if cfg.resample_every is not None:
        schedule = ResampledSchedule(lambda g: _drawn_layer(cfg, g), cfg.resample_every, cfg.seed)
    elif cfg.layers is not None:
        layers = []
        for i, table in enumerate(cfg.layers):
            try:
                layers.append(_table_layer(cfg, table, gen))
            except ConfigError as err:
                problem, _, fix = str(err).partition(": ")[2].rpartition(". Fix: ")
                raise ConfigError(f"layers[{i}].{err.field}", problem, fix) from None
        schedule = LayerSchedule(layers, cfg.layer_time)
    else:
        schedule = LayerSchedule([_drawn_layer(cfg, gen)], cfg.layer_time)
    block = Block(schedule, norm=cfg.resolved_norm, norm_type=cfg.norm_type)  # type: ignore[arg-type]
    return block.to(dtype_of(cfg), device_of(cfg))


# Copies of the state (B, N, d) an integration step holds at once: x, the stage slopes, the
# next x and the saved frame (euler: x, k1, x_new, frame; heun adds one slope, rk4 three more).
STATE_COPIES = {"euler": 4, "heun": 5, "rk4": 8}


def estimate_bytes(cfg: SimulationConfig, *, keep_frames: bool) -> int:
    """Bytes a run of `cfg` allocates, estimated before anything is allocated (a lower bound of
    the peak, not counting torch's own overhead), with s = bytes per number, S = B·N·d·s:

    - the state: STATE_COPIES[method] · S, plus every saved frame (n_steps/save_every + 1) · S when
      the frames are kept in memory (no --out), else the one frame being written;
    - the weights: per head k×d query and key and a d×d value matrix (3·d²·s per layer; the
      random ensembles draw them in float64), and an MLP's 3·w·d weights and its B·N·w activations;
    - the largest kernel buffer: the dense backend's B·H·N² scores and weights (2·B·H·N²·s),
      which `auto` may use up to B·N² = 512² (its calibration's largest dense cell); the
      tiled/SDPA backends stay in O(B·N·d).
    """
    s = 8 if cfg.dtype == "float64" else 4
    state = cfg.batch * cfg.n * cfg.d * s
    frames = cfg.n_steps // cfg.save_every + 1 if keep_frames else 1
    total = (STATE_COPIES[cfg.method] + frames) * state
    layers = len(cfg.layers) if cfg.layers is not None else 1
    total += 3 * cfg.d * cfg.d * 8 * layers
    if cfg.mlp != "none":
        width = cfg.mlp_width or 4 * cfg.d
        total += (
            3 * width * cfg.d * 8 * layers
            + STATE_COPIES[cfg.method] * cfg.batch * cfg.n * width * s
        )
    dense = cfg.backend == "dense" or (
        cfg.backend == "auto" and cfg.batch * cfg.n * cfg.n <= DENSE_MAX_N**2
    )
    if dense:
        total += 2 * cfg.batch * cfg.heads * cfg.n * cfg.n * s
    return total


def check_size(
    cfg: SimulationConfig,
    *,
    keep_frames: bool,
    allow_large: bool = False,
    fix: str = "lower n, d or batch (or raise save_every, or give --out so frames go to disk), "
    "or pass --allow-large",
) -> int:
    """Refuse a run whose `estimate_bytes` exceeds the memory available on its device (CPU:
    MemAvailable; GPU: free memory), unless `allow_large`; returns the estimate. `fix` ends the
    message."""
    need = estimate_bytes(cfg, keep_frames=keep_frames)
    if allow_large:
        return need
    cuda = cfg.device == "cuda" and torch.cuda.is_available()
    have = available_memory(torch.device(cfg.device)) if cfg.device == "cpu" or cuda else None
    if have is not None and need > have:
        weights = 3 * cfg.d * cfg.d * 8
        field = "d" if weights > need / 2 else ("batch" if cfg.batch > cfg.n else "n")
        raise ConfigError(
            field,
            f"a run of B·N·d = {cfg.batch}·{cfg.n}·{cfg.d} ({cfg.n_steps} steps, "
            f"{cfg.backend} backend) needs ≈ {_bytes(need)} "
            f"(limit {_bytes(have)} available on {cfg.device})",
            fix,
        )
    return need


def _bytes(count: float) -> str:
    """1.5e12 → '1.5 TB' (decimal units)."""
    units = ("B", "kB", "MB", "GB", "TB", "PB", "EB")
    k = 0
    while count >= 1000 and k < len(units) - 1:
        count, k = count / 1000, k + 1
    return f"{count:.3g} {units[k]}"
