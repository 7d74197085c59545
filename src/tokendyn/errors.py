"""Error types: every user-facing failure names the offending field and the fix."""

from __future__ import annotations


class TokendynError(ValueError):
    """Base class for errors caused by user input (configs, matrices, stores, states)."""


class ConfigError(TokendynError):
    """An invalid parameter. The message names the field and how to fix it."""

    def __init__(self, field: str, problem: str, fix: str) -> None:
        self.field = field
        super().__init__(f"{field}: {problem}. Fix: {fix}")


class NonFiniteStateError(TokendynError):
    """A NaN or Inf appeared in the state; everything saved before it is kept."""

    def __init__(self, step: int, time: float, saved_until: float | None) -> None:
        self.step, self.time, self.saved_until = step, time, saved_until
        kept = (
            "nothing was saved yet"
            if saved_until is None
            else f"saved frames up to t={saved_until:g} are kept"
        )
        super().__init__(
            f"state: NaN or Inf appeared at step {step} (t={time:g}); {kept}. "
            "Fix: lower dt, lower beta, use float64, or work on the sphere (bounded states)."
        )


class StoreError(TokendynError):
    """A missing, unreadable or mismatching results store."""
