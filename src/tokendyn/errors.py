"""Error types: every user-facing failure names the offending field and the fix."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


class TokendynError(ValueError):
    """Base class for errors caused by user input (configs, matrices, stores, states)."""


class ConfigError(TokendynError):
    """An invalid parameter. The message is `<field>: <problem>. Fix: <fix>`."""

    def __init__(self, field: str, problem: str, fix: str) -> None:
        self.field, self.problem, self.fix = field, problem, fix
        super().__init__(f"{field}: {problem}. Fix: {fix}")

    def renamed(self, names: Mapping[str, str]) -> ConfigError:
        """The same error with its field renamed by `names` (e.g. an engine argument → the config
        field that set it); unchanged if the field is not in `names`."""
        if self.field not in names:
            return self
        return ConfigError(names[self.field], self.problem, self.fix)


def validation_error(err: Any, fields: Mapping[str, Any], default: str = "config") -> ConfigError:
    """A pydantic ValidationError `err` as one ConfigError naming every bad field.

    `fields` is the model's `model_fields` (their descriptions become the expected values).
    A check of the whole model raises `ValueError("<field>: <problem>; <fix>")`; its field is the
    text before the first colon. The error's field is the first bad field."""
    problems: list[tuple[str, str]] = []
    for e in err.errors():
        loc = str(e["loc"][0]) if e["loc"] else ""
        message = str(e["msg"]).removeprefix("Value error, ")
        if len(e["loc"]) > 1:  # an entry of a list or matrix
            message = f"entry {''.join(f'[{p}]' for p in e['loc'][1:])}: {message}"
        if not loc:  # a model-level check: its message starts with the field name
            loc, _, message = message.partition(": ")
            problems.append((loc or default, message))
            continue
        described = fields.get(loc)
        if e["type"] == "extra_forbidden":
            message = f"unknown field; valid fields are {', '.join(fields)}"
        elif e["type"] == "missing":
            message = "missing"
        if described is not None and described.description and e["type"] != "extra_forbidden":
            message = f"{message} (expected: {described.description})"
        problems.append((loc, message))
    if not problems:
        return ConfigError(default, str(err), "correct the fields")
    if len(problems) == 1:
        return ConfigError(problems[0][0], problems[0][1], "correct this field")
    others = "".join(f"; {field}: {message}" for field, message in problems[1:])
    return ConfigError(problems[0][0], problems[0][1] + others, "correct the fields named above")


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
