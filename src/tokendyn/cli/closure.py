"""`tokendyn closure`: solve the Gaussian closure (α, Σ) of the Transformer PDE from a TOML file."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Annotated, Literal

import numpy as np
import typer
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from tokendyn.app.config import load_toml, refuse_booleans
from tokendyn.errors import ConfigError, validation_error
from tokendyn.theory import make_closure, solve_closure
from tokendyn.theory.gaussian import check_variant

Matrix = list[list[float]]


class ClosureConfig(BaseModel):
    """One closure solve: attention variant, parameters, initial N(mean, cov) and final time."""

    model_config = ConfigDict(extra="forbid")

    attention: str = Field(description="softmax, multihead, l2 or sinkhorn")
    beta: float = Field(1.0, gt=0, description="inverse temperature β > 0")
    heads: int = Field(1, ge=1, description="number of heads H (row-block split, divides d)")
    eps: float = Field(1.0, gt=0, description="Sinkhorn regularisation ε > 0")
    scaling: Literal["explicit", "authors"] = Field(
        "explicit", description="'explicit' (β as given) or 'authors' (the released code's scaling)"
    )
    Q: Matrix = Field(description="query matrix (k×d)")
    K: Matrix = Field(description="key matrix (k×d)")
    V: Matrix = Field(description="value matrix (d×d)")
    mean: list[float] = Field(description="initial mean α₀ (length d)")
    cov: Matrix = Field(description="initial covariance Σ₀ (d×d, symmetric PSD)")
    t_end: float = Field(gt=0, description="final time > 0")

    _no_booleans = field_validator("*", mode="before")(lambda cls, value: refuse_booleans(value))

    @field_validator("beta", "eps", "t_end")
    @classmethod
    def _finite(cls, value: float) -> float:
        if not math.isfinite(value):
            raise ValueError("must be finite")
        return value

    @field_validator("Q", "K", "V", "cov")
    @classmethod
    def _rectangular(cls, value: Matrix) -> Matrix:
        if not value or len({len(row) for row in value}) != 1:
            raise ValueError("rows have different lengths (give a rectangular matrix)")
        return value


def load_closure_config(path: str | Path) -> ClosureConfig:
    """Read and validate a closure TOML file; one ConfigError naming every bad field."""
    try:
        cfg = ClosureConfig(**load_toml(path))
    except ValidationError as err:
        raise validation_error(err, ClosureConfig.model_fields) from None
    check_variant(cfg.attention)  # sigmoid/masked: explains why there is no closure
    return cfg


def run_closure(cfg: ClosureConfig) -> dict:
    """The JSON summary (t_end, mean, cov, status, blowup_time, shape) of one closure solve."""
    closure = make_closure(
        cfg.attention, cfg.Q, cfg.K, cfg.V, cfg.beta, cfg.heads, cfg.eps, cfg.scaling
    )
    mean, cov = np.asarray(cfg.mean, dtype=float), np.asarray(cfg.cov, dtype=float)
    if mean.shape == (len(cfg.V),) and cov.shape == (len(cfg.V),) * 2:
        with np.errstate(all="ignore"):  # overflow is the finding here, not a warning
            velocity = closure.rhs(mean, cov)
            finite = np.isfinite(np.trace(cov)) and all(np.isfinite(v).all() for v in velocity)
        if not finite:
            raise ConfigError(
                "cov",
                "the closure's initial velocity (dα/dt, dΣ/dt at t = 0) overflows double "
                f"precision (largest |entry| of mean, cov, V: "
                f"{max(np.abs(mean).max(), np.abs(cov).max(), np.abs(cfg.V).max()):.3g})",
                "rescale mean, cov and V to moderate magnitudes",
            )
    return solve_closure(closure, mean, cov, cfg.t_end).summary()


def register(app: typer.Typer) -> None:
    """Add `tokendyn closure` to the main CLI."""
    from tokendyn.cli._common import friendly_errors

    @app.command()
    @friendly_errors
    def closure(
        config: Annotated[
            Path,
            typer.Option(
                help="TOML file: attention, beta, heads, eps, scaling, Q, K, V, mean, cov, t_end"
            ),
        ],
        as_json: Annotated[bool, typer.Option("--json", help="print one JSON object")] = False,
    ) -> None:
        """Solve the Gaussian closure (mean α, covariance Σ) of the Transformer PDE."""
        out = run_closure(load_closure_config(config))
        if as_json:
            typer.echo(json.dumps(out))
            return
        when = "" if out["blowup_time"] is None else f" (T* = {out['blowup_time']:.10g})"
        typer.echo(f"status: {out['status']}{when} at t = {out['t_end']:.10g}")
        typer.echo(f"mean:  {out['mean']}")
        typer.echo(f"cov:   {out['cov']}")
        typer.echo(f"shape: {out['shape']}")
