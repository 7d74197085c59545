"""Validated run configurations (pydantic v2), read from and written to TOML.

Every field of `tokendyn simulate` is a field here; errors name the field and the fix.
"""

from __future__ import annotations

import json
import math
import tomllib
from pathlib import Path
from typing import Any, Literal

import tomli_w
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from tokendyn.errors import ConfigError, validation_error

Matrix = list[list[float]]
# More steps than this is a typo, not a run (1e8 steps of even 1 µs each take a day).
MAX_STEPS = 10**8
# torch.Generator.manual_seed takes a signed 64-bit integer.
MAX_SEED = 2**63 - 1
# The statistics a run can save (field `stats`; bound to the run in app/pipeline.py).
STATISTICS = ("clusters", "effective_dim", "energy")


class LayerTable(BaseModel):
    """One `[[layers]]` table: the weights of one block (one matrix = one head, or a list of
    per-head matrices; W optional per head; W1, W2 (W3 for swiglu) the MLP, else drawn)."""

    model_config = ConfigDict(extra="forbid")

    Q: Matrix | list[Matrix] = Field(description="query matrix (k×d) or per-head list")
    K: Matrix | list[Matrix] = Field(description="key matrix (k×d) or per-head list")
    V: Matrix | list[Matrix] = Field(description="value matrix (m×d) or per-head list")
    W: Matrix | list[Matrix] | None = Field(None, description="output map (d×m) or per-head list")
    W1: Matrix | None = Field(None, description="MLP input weights (w×d)")
    W2: Matrix | None = Field(None, description="MLP output weights (d×w)")
    W3: Matrix | None = Field(None, description="SwiGLU gate weights (w×d)")


class SimulationConfig(BaseModel):
    """One particle simulation: tokens under self-attention, integrated from t=0 to t_end."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)

    attention: Literal["softmax", "l2", "sinkhorn", "sigmoid"] = Field(
        "softmax", description="attention variant: softmax, l2, sinkhorn or sigmoid"
    )
    heads: int = Field(1, ge=1, description="number of heads H (must divide d)")
    mask: Literal["none", "causal"] = Field(
        "none", description="'none' or 'causal' (token i sees j ≤ i)"
    )
    normalise: Literal["softmax", "n"] | None = Field(
        None, description="'softmax' (partition function) or 'n' (divide by N); default per variant"
    )
    space: Literal["sphere", "euclidean"] = Field("sphere", description="'sphere' or 'euclidean'")
    n: int = Field(64, ge=1, description="number of tokens N ≥ 1")
    d: int = Field(3, ge=1, description="token dimension d ≥ 1 (≥ 2 on the sphere)")
    batch: int = Field(1, ge=1, description="number of independent clouds B simulated together")
    beta: float = Field(1.0, gt=0, description="inverse temperature β > 0")
    qkv: Literal["identity", "random", "goe", "goe-v", "goe-minus-v", "orthogonal-v"] = Field(
        "identity",
        description="Q=K=V=I; random: N(0, 1/d) entries; goe: QᵀK GOE (off-diagonal variance "
        "1/d), V=I; goe-v / goe-minus-v: V = ±QᵀK; orthogonal-v: Q=K=I, V Haar-orthogonal",
    )
    Q: Matrix | None = Field(None, description="explicit query matrix (k×d); overrides qkv")
    K: Matrix | None = Field(None, description="explicit key matrix (k×d); overrides qkv")
    V: Matrix | None = Field(None, description="explicit value matrix (d×d); overrides qkv")
    seed: int = Field(
        0,
        ge=0,
        le=MAX_SEED,
        description="random seed 0 ≤ seed < 2^63 (initial cloud, random Q, K, V)",
    )
    t_end: float = Field(10.0, gt=0, description="final time (depth) > 0")
    dt: float = Field(0.1, gt=0, description="time step (one residual layer) > 0")
    method: Literal["euler", "heun", "rk4"] = Field("rk4", description="euler, heun or rk4")
    save_every: int = Field(1, ge=1, description="save every k steps (k ≥ 1)")
    dtype: Literal["float64", "float32"] = Field("float64", description="float64 or float32")
    device: Literal["cpu", "cuda"] = Field("cpu", description="cpu or cuda")
    backend: Literal["auto", "dense", "tiled", "sdpa"] = Field(
        "auto", description="kernel backend: auto, dense, tiled or sdpa"
    )
    beta_law: str | None = Field(
        None, description="β as a function of N: 'c*log(N)' or 'c*N**a' (sets beta)"
    )
    init: Literal["uniform", "wrapped-normal", "mixture"] | None = Field(
        None,
        description="initial cloud: uniform (sphere), wrapped-normal or mixture (S¹, S²); "
        "default uniform on the sphere, Gaussian in R^d",
    )
    init_centers: list[float] | None = Field(
        None, description="mixture centres: angles on S¹, azimuths on S² (radians)"
    )
    init_weights: list[float] | None = Field(
        None, description="mixture weights α_j > 0 (default equal)"
    )
    init_std: float = Field(0.2, gt=0, description="wrapped-normal standard deviation σ₀ > 0")
    init_mean: list[float] | None = Field(None, description="Euclidean initial mean (length d)")
    init_cov: Matrix | None = Field(None, description="Euclidean initial covariance (d×d, PSD)")
    sinkhorn_tol: float | None = Field(
        None,
        gt=0,
        description="Sinkhorn marginal tolerance > 0; default per dtype: 1e-9 (float64), "
        "1.2e-5 (float32)",
    )
    sinkhorn_max_iter: int = Field(1000, ge=1, description="Sinkhorn iteration cap ≥ 1")
    sigmoid_bias: float = Field(0.0, description="sigmoid bias b (mean-field form)")
    sigmoid_form: Literal["meanfield", "practical"] = Field(
        "meanfield", description="'meanfield' (1/N, bias b) or 'practical' (bias −log N, no 1/N)"
    )
    stats: list[str] = Field(
        default_factory=lambda: ["energy", "clusters", "effective_dim"],
        description="statistics saved at every saved step (energy, clusters, effective_dim)",
    )
    cluster_threshold: float = Field(
        1e-2, gt=0, description="distance below which tokens are one cluster"
    )
    norm: Literal["none", "sphere", "pre-ln", "post-ln", "peri-ln", "ngpt"] | None = Field(
        None,
        description="whole-block normalisation scheme (docs/blocks.md); unset: today's "
        "attention-only field",
    )
    norm_type: Literal["layernorm", "rmsnorm"] = Field(
        "layernorm", description="the block norms: layernorm or rmsnorm"
    )
    layers: list[LayerTable] | None = Field(
        None, description="[[layers]] tables, layer l acting on [l·τ, (l+1)·τ) (the stack repeats)"
    )
    layer_time: float = Field(1.0, gt=0, description="time τ each layer acts for (> 0)")
    resample_every: float | None = Field(
        None, gt=0, description="redraw the qkv/MLP ensemble every T time units (> 0)"
    )
    mlp: Literal["none", "gelu", "relu", "swiglu"] = Field(
        "none", description="feed-forward term: none, gelu, relu or swiglu"
    )
    mlp_width: int | None = Field(None, ge=1, description="MLP hidden width (default 4·d)")
    positions: Literal["none", "alibi", "rope"] = Field(
        "none", description="positional structure: none, alibi or rope"
    )
    kv_heads: int | None = Field(
        None, ge=1, description="key/value heads G dividing heads (grouped-query attention)"
    )

    @property
    def uses_blocks(self) -> bool:
        """Whether the run is a whole-block field (any block field set)."""
        return (
            self.norm is not None
            or self.layers is not None
            or self.resample_every is not None
            or self.mlp != "none"
            or self.positions != "none"
            or self.kv_heads is not None
        )

    @property
    def resolved_norm(self) -> str:
        """The block scheme: `norm`, else sphere on the sphere and none in R^d."""
        return self.norm or ("sphere" if self.space == "sphere" else "none")

    @model_validator(mode="after")
    def _blocks(self) -> SimulationConfig:
        if not self.uses_blocks:
            return self
        if self.norm not in (None, "sphere") and self.space == "sphere":
            if "space" in self.model_fields_set:
                raise ValueError(
                    f"space: norm = '{self.norm}' lives in R^d; use space = 'euclidean'"
                )
            object.__setattr__(self, "space", "euclidean")
        if self.norm == "sphere" and self.space != "sphere":
            raise ValueError("norm: 'sphere' lives on the sphere; use space = 'sphere'")
        if self.attention != "softmax":
            raise ValueError("attention: blocks use softmax attention; use attention = 'softmax'")
        if self.layers is not None and self.resample_every is not None:
            raise ValueError("resample_every: layers are given explicitly; drop one of the two")
        if self.resample_every is not None and (
            self.qkv == "identity" or None not in (self.Q, self.K, self.V)
        ):
            raise ValueError(
                "resample_every: redraws a random ensemble; set qkv to random, goe, goe-v, "
                "goe-minus-v or orthogonal-v"
            )
        if self.kv_heads is not None and self.heads % self.kv_heads:
            raise ValueError(
                f"kv_heads: {self.kv_heads} does not divide heads = {self.heads}; "
                "choose kv_heads dividing heads"
            )
        if self.positions == "rope" and self.layers is None and (self.d // self.heads) % 2:
            raise ValueError(
                f"positions: RoPE needs an even head dimension, d/heads = {self.d // self.heads}; "
                "choose d and heads with d/heads even"
            )
        piece = self.resample_every or (
            self.layer_time if self.layers is not None and len(self.layers) > 1 else None
        )
        if piece is not None and abs(piece / self.dt - round(piece / self.dt)) > 1e-9 * max(
            1.0, piece / self.dt
        ):
            field = "resample_every" if self.resample_every else "layer_time"
            raise ValueError(f"dt: dt={self.dt} does not divide {field}={piece}; choose dt = τ/k")
        return self

    _no_booleans = field_validator("*", mode="before")(lambda cls, value: refuse_booleans(value))

    @field_validator("stats")
    @classmethod
    def _known_stats(cls, names: list[str]) -> list[str]:
        unknown = [name for name in names if name not in STATISTICS]
        if unknown:
            raise ValueError(f"unknown statistic(s) {unknown}; use {', '.join(STATISTICS)}")
        return names

    @model_validator(mode="after")
    def _beta_from_law(self) -> SimulationConfig:
        """With beta_law, β is β_N; an explicit different β is a contradiction."""
        if self.beta_law is None:
            return self
        from tokendyn.engine.initial import beta_from_law

        try:
            value = beta_from_law(self.beta_law, self.n)
        except ConfigError as err:
            raise ValueError(f"beta_law: {err.problem}; {err.fix}") from None
        if "beta" in self.model_fields_set and abs(self.beta - value) > 1e-12 * value:
            raise ValueError(
                f"beta: {self.beta:g} contradicts beta_law ({value:g} at N = {self.n}); "
                "give one of them"
            )
        object.__setattr__(self, "beta", value)
        return self

    @model_validator(mode="after")
    def _consistent(self) -> SimulationConfig:
        if self.space == "sphere" and self.d < 2:
            raise ValueError("d: the sphere S^(d-1) needs d ≥ 2; use d ≥ 2 or space = 'euclidean'")
        if self.d % self.heads:
            raise ValueError(
                f"heads: {self.heads} heads do not divide d={self.d}; choose H dividing d"
            )
        steps = self.t_end / self.dt
        if not steps <= MAX_STEPS:  # also catches t_end/dt overflowing to inf
            raise ValueError(
                f"dt: t_end/dt = {steps:.3g} steps, more than the limit of {MAX_STEPS:.0e} "
                "(days of computing at the fastest step); use a larger dt or a smaller t_end"
            )
        if abs(steps - round(steps)) > 1e-9 * max(1.0, steps):
            raise ValueError(
                f"dt: t_end={self.t_end} is not a multiple of dt={self.dt}; "
                "choose dt dividing t_end"
            )
        if self.init in ("wrapped-normal", "mixture") and (
            self.space != "sphere" or self.d not in (2, 3)
        ):
            raise ValueError(
                f"init: {self.init} clouds live on S¹ or S²; use space = 'sphere' with d = 2 or 3"
            )
        if self.init == "uniform" and self.space != "sphere":
            raise ValueError(
                "init: 'uniform' is the uniform law on the sphere; use space = 'sphere' "
                "(R^d clouds are Gaussian: init_mean, init_cov)"
            )
        if self.init is None and (self.init_centers or self.init_weights):
            given = "init_centers" if self.init_centers else "init_weights"
            raise ValueError(f"{given}: given without init; add init = 'mixture'")
        if self.init == "mixture" and not self.init_centers:
            raise ValueError("init_centers: a mixture needs its centres; give init_centers")
        if self.init_weights is not None and len(self.init_weights) != len(
            self.init_centers or [0.0]
        ):
            raise ValueError("init_weights: give one weight per centre in init_centers")
        if self.attention == "sinkhorn" and self.mask != "none":
            raise ValueError("mask: Sinkhorn attention has no masked form; use mask = 'none'")
        if self.attention == "sigmoid" and self.normalise == "softmax":
            raise ValueError(
                "normalise: sigmoid attention has no partition function; use normalise = 'n'"
            )
        if self.attention == "sinkhorn" and self.normalise == "n":
            raise ValueError(
                "normalise: Sinkhorn attention is normalised by its marginals; use 'softmax'"
            )
        self._check_matrices()
        return self

    def _check_matrices(self) -> None:
        """Q, K: k×d with the same shape (k ≤ d with several heads); V, init_cov: d×d."""
        if self.init_cov is not None and (
            len(self.init_cov) != self.d or any(len(row) != self.d for row in self.init_cov)
        ):
            shape = [len(row) for row in self.init_cov]
            raise ValueError(
                f"init_cov: has {len(self.init_cov)} rows of lengths {shape}, expected "
                f"{self.d}×{self.d}; give a square d×d covariance"
            )
        for name in ("Q", "K", "V"):
            value = getattr(self, name)
            if value is not None and (not value or len({len(r) for r in value}) != 1):
                raise ValueError(f"{name}: rows have different lengths; give a rectangular matrix")
            if value is not None and any(not math.isfinite(v) for r in value for v in r):
                raise ValueError(f"{name}: contains NaN or Inf; give finite entries")
            if value is not None and len(value[0]) != self.d:
                raise ValueError(
                    f"{name}: has {len(value[0])} columns but d = {self.d}; "
                    f"give a matrix with d = {self.d} columns"
                )
        if self.V is not None and len(self.V) != self.d:
            raise ValueError(
                f"V: has shape ({len(self.V)}, {self.d}), expected ({self.d}, {self.d}); "
                "give a square d×d value matrix"
            )
        if self.Q is not None and self.K is not None and len(self.Q) != len(self.K):
            raise ValueError(
                f"K: has {len(self.K)} rows but Q has {len(self.Q)}; give Q and K the same shape"
            )
        for name in ("Q", "K"):
            value = getattr(self, name)
            if value is not None and self.heads > 1 and len(value) > self.d:
                raise ValueError(
                    f"{name}: has {len(value)} rows; several heads need at most d = {self.d}; "
                    f"give {name} at most d rows"
                )

    @property
    def n_steps(self) -> int:
        return round(self.t_end / self.dt)

    @property
    def resolved_normalise(self) -> str:
        if self.normalise is not None:
            return self.normalise
        return "n" if self.attention == "sigmoid" else "softmax"

    def to_json(self) -> str:
        return json.dumps(self.model_dump(mode="json"), sort_keys=True)

    def to_toml(self) -> str:
        """The config as TOML (tomli-w); unset (None) fields are left out. A non-finite number
        has no place in a config that `load_config` would accept, so it is refused."""
        fields = _without_none(self.model_dump(mode="python"))
        for key, value in fields.items():
            _refuse_non_finite(key, value)
        return tomli_w.dumps(fields)


def _without_none(value: Any) -> Any:
    """`value` with every None (an unset field, also inside [[layers]] tables) left out."""
    if isinstance(value, dict):
        return {k: _without_none(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_without_none(v) for v in value]
    return value


def _refuse_non_finite(field: str, value: Any) -> None:
    """ConfigError naming the first NaN/±inf in `value` (a number or nested lists/dicts)."""
    if isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(
            field, f"is {value}; every number in a config must be finite", "use a finite value"
        )
    if isinstance(value, list | tuple):
        for i, item in enumerate(value):
            _refuse_non_finite(f"{field}[{i}]", item)
    elif isinstance(value, dict):
        for key, item in value.items():
            _refuse_non_finite(f"{field}.{key}", item)


def make_config(**fields: Any) -> SimulationConfig:
    """Build a config, turning pydantic's errors into one ConfigError naming every bad field."""
    try:
        return SimulationConfig(**fields)
    except ValidationError as err:
        raise config_error(err) from None


def config_error(err: ValidationError) -> ConfigError:
    """pydantic's errors for a SimulationConfig as one ConfigError naming every bad field."""
    return validation_error(err, SimulationConfig.model_fields)


def refuse_booleans(value: Any) -> Any:
    """A field validator: no config field is a boolean, pydantic would read true/false as 1/0
    (`n = true` → N = 1)."""
    if _has_bool(value):
        raise ValueError("is a boolean (true/false), not a number or a name")
    return value


def _has_bool(value: Any) -> bool:
    if isinstance(value, list | tuple):
        return any(_has_bool(v) for v in value)
    return isinstance(value, bool)


def load_toml(path: str | Path) -> dict[str, Any]:
    """Read a TOML file into a dict, with clear errors for a missing or malformed file."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError("config", f"no file at {p}", "give the path of an existing .toml file")
    try:
        with p.open("rb") as fh:
            return tomllib.load(fh)
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(
            "config", f"{p} is not valid TOML ({err})", "fix the TOML syntax"
        ) from None
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(
            "config", f"cannot read {p} ({err})", "check the file's permissions/encoding"
        ) from None
    except RecursionError:
        raise ConfigError(
            "config",
            f"{p} nests arrays or tables too deeply to be read",
            "write a flat config: numbers, names, lists of numbers and matrices",
        ) from None


def load_config(path: str | Path, **overrides: Any) -> SimulationConfig:
    """A config from a TOML file; keyword overrides (e.g. CLI flags) win over the file."""
    return make_config(**{**load_toml(path), **overrides})
