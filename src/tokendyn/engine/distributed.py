"""One huge-N run on several processes or GPUs (torch.distributed; NCCL on GPUs, gloo on CPU).

Launched by torchrun, every rank holds the whole cloud (N·d numbers: small next to the N² work),
evaluates the velocity only for its own contiguous block of query tokens (keys are always all N
tokens), and the blocks are all-gathered, so after each evaluation every rank has the same full
velocity and the integrator runs unchanged and identically on every rank. Rank 0 writes the store.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.distributed as dist

from tokendyn.engine.attention import AttentionField
from tokendyn.errors import ConfigError

TORCHRUN_VARIABLES = ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


def row_blocks(n: int, world: int) -> list[slice]:
    """Contiguous blocks of query tokens, sizes differing by at most one."""
    base, extra = divmod(n, world)
    bounds = [0]
    for rank in range(world):
        bounds.append(bounds[-1] + base + (rank < extra))
    return [slice(bounds[r], bounds[r + 1]) for r in range(world)]


class ShardedField:
    """Γ evaluated for this rank's query block, then all-gathered over the process group."""

    def __init__(self, field: AttentionField) -> None:
        self.field = field
        self.rank, self.world = dist.get_rank(), dist.get_world_size()

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        blocks = row_blocks(x.shape[-2], self.world)
        local = self.field(x, rows=blocks[self.rank])
        width = max(b.stop - b.start for b in blocks)
        padded = local.new_zeros(*local.shape[:-2], width, local.shape[-1])
        padded[..., : local.shape[-2], :] = local
        gathered = [torch.empty_like(padded) for _ in range(self.world)]
        dist.all_gather(gathered, padded.contiguous())
        parts = [g[..., : b.stop - b.start, :] for g, b in zip(gathered, blocks, strict=True)]
        return torch.cat(parts, dim=-2)

    def describe(self) -> str:
        return f"{self.field.describe()}, sharded over {self.world} processes"


@contextmanager
def process_group(device: str) -> Iterator[torch.device]:
    """Join the torchrun process group (NCCL for cuda, gloo for cpu); yields this rank's device."""
    missing = [v for v in TORCHRUN_VARIABLES if v not in os.environ]
    if missing:
        raise ConfigError(
            "distributed",
            f"not started by torchrun ({', '.join(missing)} unset)",
            "launch the processes with torchrun (e.g. torchrun --nproc-per-node K ...)",
        )
    if device == "cuda":
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        here = torch.device("cuda", local)
    else:
        here = torch.device("cpu")
    dist.init_process_group(backend="nccl" if device == "cuda" else "gloo")
    try:
        yield here
    finally:
        dist.destroy_process_group()
