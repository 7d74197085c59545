"""The spec's three parameter rows (§2.3), validated with pydantic; errors are ConfigErrors."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from tokendyn.errors import ConfigError, validation_error


class ICLSetting(BaseModel):
    """One in-context regression setting: d, tree (b, K, r, σ_leaf), label noise σ, context N."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field("custom", description="setting name")
    d: int = Field(8, ge=1, description="input dimension d ≥ 1")
    b: int = Field(2, ge=2, description="tree branching b ≥ 2")
    K: int = Field(4, ge=1, description="tree depth K ≥ 1 (K = 1 is a flat mixture)")
    r: float = Field(0.85, gt=0, description="scale ratio between tree levels r > 0")
    sigma_leaf: float = Field(0.1, ge=0, lt=1, description="leaf jitter 0 ≤ σ_leaf < 1")
    sigma: float = Field(0.1, ge=0, description="label noise σ ≥ 0")
    N: int = Field(64, ge=1, description="context length N ≥ 1")
    prior_seed: int = Field(1, ge=0, description="seed of the fixed tree centres ≥ 0")

    @property
    def leaves(self) -> int:
        return self.b**self.K

    def with_(self, **changes: Any) -> ICLSetting:
        """A validated copy with some fields changed."""
        return _validated({**self.model_dump(), **changes})


SETTINGS: dict[str, ICLSetting] = {
    "cpu": ICLSetting(name="cpu", d=8, b=2, K=4, r=0.85, sigma_leaf=0.1, sigma=0.1, N=64),
    "paper": ICLSetting(name="paper", d=16, b=2, K=5, r=0.85, sigma_leaf=0.1, sigma=0.1, N=128),
    "bushy": ICLSetting(name="bushy", d=16, b=4, K=3, r=0.85, sigma_leaf=0.1, sigma=0.1, N=256),
}


def _validated(values: dict[str, Any]) -> ICLSetting:
    try:
        return ICLSetting(**values)
    except ValidationError as err:
        raise validation_error(err, ICLSetting.model_fields, "setting") from None


def get_setting(name: str, **overrides: Any) -> ICLSetting:
    """The named row (cpu, paper, bushy) of the spec, optionally with fields overridden."""
    if name not in SETTINGS:
        raise ConfigError("setting", f"unknown setting {name!r}", f"use one of {sorted(SETTINGS)}")
    return SETTINGS[name].with_(**overrides) if overrides else SETTINGS[name]
