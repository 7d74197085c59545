"""Open a Hugging Face model for tracing: from a local directory, a hub name, or a built object.

Everything that can be checked before a long load is checked first, with one-line errors: the
optional extra being installed, the architecture (from the config alone), weights present in a
directory, the dtype on the device, and the memory the weights need (counted on the meta device
from the config, against what the device has free).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from tokendyn.errors import ConfigError
from tokendyn.models.architectures import Architecture, architecture_of

DTYPES = {
    "float32": torch.float32,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
    "float64": torch.float64,
}
WEIGHT_FILES = ("*.safetensors", "pytorch_model*.bin", "*.safetensors.index.json")
MEMORY_HEADROOM = 1.2  # weights plus 20 % for buffers and one batch's activations


@dataclass
class OpenedModel:
    """A base model (hidden states only, no task head) in eval mode, with what a trace records."""

    model: Any
    tokenizer: Any | None
    architecture: Architecture
    name: str
    revision: str
    dtype: torch.dtype
    device: torch.device

    @property
    def config(self) -> Any:
        return self.model.config

    @property
    def context(self) -> int | None:
        return self.architecture.context_length(self.config)

    @property
    def n_layers(self) -> int:
        return int(self.config.num_hidden_layers)


def require_transformers() -> Any:
    """The transformers module, or a one-line error naming the optional extra."""
    try:
        import transformers
    except ImportError:
        raise ConfigError(
            "model",
            "opening Hugging Face models needs the optional extra tokendyn[models] "
            "(transformers, safetensors)",
            "pip install 'tokendyn[models]'",
        ) from None
    return transformers


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    """The torch dtype for `name`, refusing one the device cannot run."""
    if name not in DTYPES:
        raise ConfigError("dtype", f"is {name!r}", f"use one of {', '.join(DTYPES)}")
    dtype = DTYPES[name]
    if dtype == torch.bfloat16 and not bf16_supported(device):
        raise ConfigError(
            "dtype",
            f"bfloat16 is not supported on this {device.type.upper()}",
            "use --dtype float32 (or float16 on a GPU)",
        )
    return dtype


def bf16_supported(device: torch.device) -> bool:
    if device.type == "cuda":
        return bool(torch.cuda.is_bf16_supported())
    try:
        a = torch.ones(4, 4, dtype=torch.bfloat16)
        return bool(torch.isfinite(a @ a).all())
    except RuntimeError:
        return False


def resolve_device(name: str) -> torch.device:
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device", "CUDA is not available on this machine", "use --device cpu")
    if device.type not in ("cpu", "cuda"):
        raise ConfigError("device", f"is {name!r}", "use cpu or cuda")
    return device


def available_memory(device: torch.device) -> int | None:
    """Free bytes on the device (GPU: cudaMemGetInfo; CPU: MemAvailable), None if unknown."""
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def estimate_bytes(config: Any, dtype: torch.dtype) -> int:
    """Bytes of the base model's weights in `dtype`: its parameters counted on the meta device
    (nothing allocated), times the dtype's size, times MEMORY_HEADROOM."""
    from transformers import AutoModel

    with torch.device("meta"):
        model = AutoModel.from_config(config)
    count = sum(p.numel() for p in model.parameters())
    return math.ceil(count * torch.finfo(dtype).bits / 8 * MEMORY_HEADROOM)


def check_memory(config: Any, dtype: torch.dtype, device: torch.device, limit: int | None) -> int:
    """Refuse (before loading) a model whose estimate exceeds `limit` bytes (default: free)."""
    need = estimate_bytes(config, dtype)
    have = limit if limit is not None else available_memory(device)
    if have is not None and need > have:
        raise ConfigError(
            "model",
            f"needs about {need / 2**30:.2f} GiB for its weights in {str(dtype)[6:]} but only "
            f"{have / 2**30:.2f} GiB is available on {device.type}",
            "use --dtype bfloat16 or float16, a smaller model, or a device with more memory",
        )
    return need


def check_weights(path: Path) -> None:
    if not (path / "config.json").is_file():
        raise ConfigError(
            "model",
            f"directory {path} has no config.json",
            "point at a folder written by save_pretrained, or give a hub name",
        )
    if not any(next(path.glob(pattern), None) for pattern in WEIGHT_FILES):
        raise ConfigError(
            "model",
            f"directory {path} has no weights (model.safetensors or pytorch_model.bin)",
            "save the model there with save_pretrained, or give a hub name",
        )


def open_model(
    source: str | Path | Any,
    *,
    dtype: str = "float32",
    device: str = "cpu",
    revision: str | None = None,
    attentions: bool = False,
    tokenizer: Any | None = None,
    memory_limit: int | None = None,
) -> OpenedModel:
    """Open `source` — a local directory, a hub name, or a built transformers model — as its
    base model in eval mode on `device` in `dtype`. `attentions` selects the eager attention
    implementation (the only one that returns attention weights). `memory_limit` (bytes) replaces
    the device's free memory in the size check."""
    require_transformers()
    dev = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, dev)
    if not isinstance(source, str | Path):
        arch = architecture_of(getattr(source, "config", None))
        model = source.base_model
        if attentions:
            model.set_attn_implementation("eager")
        name = getattr(model.config, "name_or_path", "") or type(source).__name__
        model = model.to(dev, torch_dtype).eval()
        return OpenedModel(model, tokenizer, arch, name, revision or "object", torch_dtype, dev)

    from transformers import AutoConfig, AutoModel, AutoTokenizer

    path = Path(source)
    if path.exists():
        if not path.is_dir():
            raise ConfigError("model", f"{path} is a file", "give the model's directory")
        check_weights(path)
    try:
        config = AutoConfig.from_pretrained(str(source), revision=revision)
    except (OSError, ValueError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ConfigError(
            "model",
            f"cannot read the config of {source!r} ({first})",
            "give a directory written by save_pretrained, or a hub name on a machine with "
            "internet access",
        ) from None
    arch = architecture_of(config)
    check_memory(config, torch_dtype, dev, memory_limit)
    extra = {"attn_implementation": "eager"} if attentions else {}
    model = AutoModel.from_pretrained(str(source), revision=revision, dtype=torch_dtype, **extra)
    if tokenizer is None:
        try:
            tokenizer = AutoTokenizer.from_pretrained(str(source), revision=revision)
        except (OSError, ValueError, TypeError):
            tokenizer = None  # token ids can still be traced
    resolved = revision or getattr(config, "_commit_hash", None) or "local"
    model = model.base_model.to(dev).eval()
    return OpenedModel(model, tokenizer, arch, str(source), str(resolved), torch_dtype, dev)
