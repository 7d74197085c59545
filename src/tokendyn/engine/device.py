"""Device and dtype names → torch objects, with errors naming the argument and the fix."""

from __future__ import annotations

import torch

from tokendyn.errors import ConfigError

DTYPES = {
    "float64": torch.float64,
    "float32": torch.float32,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
}


def resolve_dtype(name: str, allowed: tuple[str, ...] = tuple(DTYPES)) -> torch.dtype:
    """The torch dtype called `name`, one of `allowed`."""
    if name not in allowed:
        raise ConfigError("dtype", f"unknown dtype {name!r}", f"use one of {', '.join(allowed)}")
    return DTYPES[name]


def resolve_device(name: str | torch.device) -> torch.device:
    """'cpu', 'cuda' (or 'cuda:k'), or 'auto' (cuda when available, else cpu) as a torch device;
    ConfigError when CUDA is asked for and absent."""
    if str(name) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except (RuntimeError, TypeError) as err:
        raise ConfigError(
            "device", f"unknown device {name!r}", "use 'cpu', 'cuda' or 'auto'"
        ) from err
    if dev.type not in ("cpu", "cuda"):
        raise ConfigError(
            "device", f"unsupported device type {dev.type!r}", "use 'cpu', 'cuda' or 'auto'"
        )
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(
            "device", "CUDA is not available on this machine", "use device 'cpu' (or 'auto')"
        )
    return dev
