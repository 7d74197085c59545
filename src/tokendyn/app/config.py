"""Validated run configurations (pydantic v2), read from and written to TOML.

Every field of `tokendyn simulate` is a field here; errors name the field and the fix.
"""

from __future__ import annotations

import json
import math
import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from tokendyn.errors import ConfigError, validation_error

Matrix = list[list[float]]


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
    qkv: Literal["identity", "random"] = Field(
        "identity", description="Q=K=V=I, or random Gaussian matrices with entries N(0, 1/d)"
    )
    Q: Matrix | None = Field(None, description="explicit query matrix (k×d); overrides qkv")
    K: Matrix | None = Field(None, description="explicit key matrix (k×d); overrides qkv")
    V: Matrix | None = Field(None, description="explicit value matrix (d×d); overrides qkv")
    seed: int = Field(0, ge=0, description="random seed ≥ 0 (initial cloud and random Q, K, V)")
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
    sinkhorn_tol: float = Field(1e-9, gt=0, description="Sinkhorn marginal tolerance > 0")
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

    @field_validator("*", mode="before")
    @classmethod
    def _no_booleans(cls, value: Any) -> Any:
        """No field is a boolean; pydantic would read true/false as 1/0 (`n = true` → N = 1)."""
        if _has_bool(value):
            raise ValueError("is a boolean (true/false), not a number or a name")
        return value

    @field_validator("stats")
    @classmethod
    def _known_stats(cls, names: list[str]) -> list[str]:
        from tokendyn.engine.observables import OBSERVABLES

        unknown = [name for name in names if name not in OBSERVABLES]
        if unknown:
            raise ValueError(f"unknown statistic(s) {unknown}; use {', '.join(OBSERVABLES)}")
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
        """Q, K: k×d with the same shape (k ≤ d with several heads); V: d×d."""
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
        lines = []
        for key, value in self.model_dump(mode="json").items():
            if value is not None:
                lines.append(f"{key} = {json.dumps(value)}")
        return "\n".join(lines) + "\n"


def make_config(**fields: Any) -> SimulationConfig:
    """Build a config, turning pydantic's errors into one ConfigError naming every bad field."""
    try:
        return SimulationConfig(**fields)
    except ValidationError as err:
        raise config_error(err) from None


def config_error(err: ValidationError) -> ConfigError:
    """pydantic's errors for a SimulationConfig as one ConfigError naming every bad field."""
    return validation_error(err, SimulationConfig.model_fields)


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


def load_config(path: str | Path, **overrides: Any) -> SimulationConfig:
    """A config from a TOML file; keyword overrides (e.g. CLI flags) win over the file."""
    return make_config(**{**load_toml(path), **overrides})
