"""Write a real model's trace (`tokendyn.models.trace`) to a zarr run store, batch by batch.

The store is an ordinary run store: `open_run` reads it, and its `config` attr is a validated
SimulationConfig, so `tokendyn plot` and `multiscale phases` apply to it unchanged.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

from tokendyn.app.config import make_config
from tokendyn.app.progress import progress_bar
from tokendyn.app.store import prepare_new_store
from tokendyn.models.open import OpenedModel
from tokendyn.models.trace import Inputs, n_batches, trace_batches, trace_config


def write_trace(
    opened: OpenedModel,
    inputs: Inputs,
    out: str | Path,
    *,
    batch_size: int = 8,
    view: str = "raw",
    attentions: bool = False,
    overwrite: bool = False,
    progress: bool = False,
) -> Path:
    """Trace `inputs` through the model and append each batch to the zarr store `out` (memory
    bounded by one batch's hidden states). Returns the store's path."""
    make_config(**trace_config(opened, inputs, view))  # the readers' config must validate
    path = prepare_new_store(out, overwrite)
    batches = trace_batches(opened, inputs, batch_size=batch_size, view=view, attentions=attentions)
    total = n_batches(inputs, batch_size)
    with progress_bar(total, "tracing", "batches", progress) as advance:
        for k, ds in enumerate(batches):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # zarr v3 notes on fixed-width strings
                if k == 0:
                    ds.to_zarr(path, mode="w", consolidated=False)
                else:
                    ds.to_zarr(path, append_dim="batch", consolidated=False)
            advance(1)
    return path


def trace_summary(path: Path, inputs: Inputs, opened: OpenedModel) -> str:
    return json.dumps(
        {
            "out": str(path),
            "model": opened.name,
            "layers": opened.n_layers,
            "sequences": len(inputs.ids),
            "tokens": sum(len(r) for r in inputs.ids),
            "truncated": inputs.truncated,
        }
    )
