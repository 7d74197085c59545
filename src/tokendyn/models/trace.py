"""Hidden states of every layer of a real model as the Dataset the simulations use.

`x` has dims (time, [batch,] token, dim) with time = layer index (0 = the embeddings, L = the last
layer, as `output_hidden_states` returns them; pre-norm decoders apply their final norm to the
last one). Sequences of different lengths are right-padded; padded tokens are NaN in `x`, −1 in
`input_ids`, '' in `token_str`, and `length` holds each sequence's real length, so readers can
ignore them. A batch dimension exists only when there is more than one sequence (as in simulate).
Text longer than the model's context is truncated to the context, with a warning (no windowing:
a window would start a fresh residual stream that is not the model's trajectory of that text).
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import xarray as xr

from tokendyn.errors import ConfigError
from tokendyn.models.open import OpenedModel

VIEWS = ("raw", "sphere")


@dataclass
class Inputs:
    """Token ids and their strings per sequence; `truncated`: sequences cut to the context."""

    ids: list[list[int]]
    tokens: list[list[str]]
    source: str
    truncated: int = 0

    @property
    def max_length(self) -> int:
        return max(len(row) for row in self.ids)


def _truncate(rows: list[list[int]], context: int | None, field: str) -> tuple[list, int]:
    if context is None:
        return rows, 0
    cut = sum(len(r) > context for r in rows)
    if cut:
        warnings.warn(
            f"{field}: {cut} sequence(s) longer than the model's context of {context} tokens were "
            f"truncated to {context}. Fix: split long lines to keep every token",
            stacklevel=3,
        )
    return [r[:context] for r in rows], cut


def _nonempty(rows: Sequence, field: str, what: str) -> None:
    if not rows:
        raise ConfigError(field, f"holds no {what}", f"give at least one non-empty line of {what}")


def inputs_from_texts(opened: OpenedModel, texts: Sequence[str], source: str = "") -> Inputs:
    """Tokenise one sequence per text (with the tokenizer's special tokens)."""
    texts = [t for t in texts if t.strip()]
    _nonempty(texts, "text", "text")
    tok = opened.tokenizer
    if tok is None:
        raise ConfigError(
            "text", "the model has no tokenizer", "give token ids with --ids, one sequence a line"
        )
    rows = [list(tok(t, verbose=False)["input_ids"]) for t in texts]
    rows, cut = _truncate(rows, opened.context, "text")
    return Inputs(rows, [tok.convert_ids_to_tokens(r) for r in rows], source, cut)


def inputs_from_ids(opened: OpenedModel, rows: Sequence[Sequence[int]], source: str = "") -> Inputs:
    """Token ids as given (no special tokens added), checked against the vocabulary."""
    rows = [[int(i) for i in r] for r in rows if len(r)]
    _nonempty(rows, "ids", "token ids")
    vocab = int(opened.config.vocab_size)
    bad = [i for r in rows for i in r if not 0 <= i < vocab]
    if bad:
        raise ConfigError(
            "ids", f"token id {bad[0]} is outside the vocabulary [0, {vocab})", "use ids < vocab"
        )
    rows, cut = _truncate(rows, opened.context, "ids")
    tok = opened.tokenizer
    tokens = [tok.convert_ids_to_tokens(r) if tok else [str(i) for i in r] for r in rows]
    return Inputs(rows, tokens, source, cut)


def parse_ids(text: str) -> list[list[int]]:
    """One sequence per non-empty line of integers separated by spaces or commas."""
    rows = []
    for n, line in enumerate(text.splitlines(), start=1):
        parts = line.replace(",", " ").split()
        try:
            rows.append([int(p) for p in parts])
        except ValueError:
            raise ConfigError(
                "ids", f"line {n} is not a list of integers", "write token ids like 101 2054 102"
            ) from None
    return [r for r in rows if r]


def _check_view(view: str) -> None:
    if view not in VIEWS:
        raise ConfigError("view", f"is {view!r}", f"use one of {', '.join(VIEWS)}")


def trace_config(opened: OpenedModel, inputs: Inputs, view: str) -> dict:
    """The minimal simulation config of a trace (fields of tokendyn's SimulationConfig), so the
    readers of run stores apply: d, n, batch, space, mask; β = 1 and identity Q = K = V stand for
    'no particle model'; dt = 1 per layer; no statistics saved."""
    _check_view(view)
    return {
        "d": int(opened.config.hidden_size),
        "n": inputs.max_length,
        "batch": len(inputs.ids),
        "space": "sphere" if view == "sphere" else "euclidean",
        "mask": "causal" if opened.architecture.causal else "none",
        "beta": 1.0,
        "dt": 1.0,
        "t_end": float(max(opened.n_layers, 1)),
        "method": "euler",
        "dtype": "float64" if opened.dtype == torch.float64 else "float32",
        "stats": [],
    }


def trace_attrs(opened: OpenedModel, inputs: Inputs, view: str) -> dict[str, str]:
    return {
        "kind": "model_trace",
        "model": opened.name,
        "revision": opened.revision,
        "architecture": opened.architecture.name,
        "view": view,
        "inputs": inputs.source,
        "truncated": str(inputs.truncated),
        "model_dtype": str(opened.dtype).removeprefix("torch."),
        "config": json.dumps(trace_config(opened, inputs, view), sort_keys=True),
        "dt": json.dumps(1.0),
        "method": "euler",
    }


def n_batches(inputs: Inputs, batch_size: int) -> int:
    return -(-len(inputs.ids) // batch_size)


def trace_batches(
    opened: OpenedModel,
    inputs: Inputs,
    *,
    batch_size: int = 8,
    view: str = "raw",
    attentions: bool = False,
) -> Iterator[xr.Dataset]:
    """One Dataset per batch of sequences (dims time, batch, token, dim; padded to the longest
    sequence of all inputs), so a store can be written while memory holds one batch only. With a
    single sequence the batch dimension is dropped."""
    _check_view(view)
    if batch_size < 1:
        raise ConfigError("batch_size", f"is {batch_size}", "use an integer ≥ 1")
    T = inputs.max_length
    width = max(1, *(len(s) for row in inputs.tokens for s in row))
    attrs = trace_attrs(opened, inputs, view)
    single = len(inputs.ids) == 1
    pad = getattr(opened.tokenizer, "pad_token_id", None) or 0
    for start in range(0, len(inputs.ids), batch_size):
        rows = inputs.ids[start : start + batch_size]
        lengths = np.array([len(r) for r in rows])
        ids = torch.full((len(rows), T), pad, dtype=torch.long)
        mask = torch.zeros((len(rows), T), dtype=torch.long)
        for b, r in enumerate(rows):
            ids[b, : len(r)] = torch.tensor(r)
            mask[b, : len(r)] = 1
        with torch.no_grad():
            out = opened.model(
                input_ids=ids.to(opened.device),
                attention_mask=mask.to(opened.device),
                output_hidden_states=True,
                output_attentions=attentions,
            )
        ds = _batch_dataset(out, inputs, start, lengths, T, width, view, opened, attentions)
        ds.attrs.update(attrs)
        yield ds.isel(batch=0, drop=True) if single else ds


def _batch_dataset(out, inputs, start, lengths, T, width, view, opened, attentions) -> xr.Dataset:
    store = np.float64 if opened.dtype == torch.float64 else np.float32
    x = torch.stack(out.hidden_states).to(torch.float64 if store == np.float64 else torch.float32)
    if view == "sphere":
        x = x / x.norm(dim=-1, keepdim=True)
    x = x.cpu().numpy().astype(store, copy=False)
    B = len(lengths)
    valid = np.arange(T)[None, :] < lengths[:, None]  # (B, T)
    x = np.where(valid[None, :, :, None], x, np.nan)
    token_str = np.full((B, T), "", dtype=f"<U{width}")
    input_ids = np.full((B, T), -1, dtype=np.int64)
    for b in range(B):
        n = lengths[b]
        token_str[b, :n] = inputs.tokens[start + b]
        input_ids[b, :n] = inputs.ids[start + b]
    L = x.shape[0] - 1
    data = {
        "x": (("time", "batch", "token", "dim"), x),
        "length": ("batch", lengths.astype(np.int64)),
    }
    if attentions:
        att = torch.stack(out.attentions).float().cpu().numpy()  # (L, B, H, T, T)
        pair = valid[:, :, None] & valid[:, None, :]
        att = np.where(pair[None, :, None], att, np.nan).astype(np.float32)
        data["attention"] = (("block", "batch", "head", "query", "key"), att)
    coords = {
        "time": np.arange(L + 1, dtype=float),
        "layer": ("time", np.arange(L + 1)),
        "step": ("time", np.arange(L + 1, dtype=np.int64)),
        "batch": np.arange(start, start + B),
        "token": np.arange(T),
        "position": ("token", np.arange(T)),
        "dim": np.arange(x.shape[-1]),
        "token_str": (("batch", "token"), token_str),
        "input_ids": (("batch", "token"), input_ids),
    }
    if attentions:
        coords["block"] = np.arange(L)
    return xr.Dataset(data, coords=coords)


def trace(
    opened: OpenedModel,
    inputs: Inputs,
    *,
    batch_size: int = 8,
    view: str = "raw",
    attentions: bool = False,
) -> xr.Dataset:
    """The whole trace in memory (see `trace_batches`; stores stream the batches instead)."""
    parts = list(
        trace_batches(opened, inputs, batch_size=batch_size, view=view, attentions=attentions)
    )
    return parts[0] if len(parts) == 1 else xr.concat(parts, dim="batch", data_vars="minimal")
