"""Train the two small models the `real_models` report shows: an ALBERT-style encoder (masked LM)
and a GPT-2-style decoder (causal LM), on text every machine has offline — the docstrings of
Python's standard library, read with `ast` (nothing is imported).

Each model is saved with `save_pretrained` (weights, config and a word-level tokenizer) to
CACHE/albert-docstrings and CACHE/gpt2-docstrings and skipped when already there. Training is
bounded by wall-clock time (--minutes per model) and by --steps, whichever comes first, so it
fits a busy 2-core machine. Nothing here is committed; the default cache is
~/.cache/tokendyn/models.

    python scripts/train_tiny_models.py [--cache DIR] [--minutes 5] [--steps 3000] [--threads 2]
"""

from __future__ import annotations

import argparse
import ast
import collections
import re
import sysconfig
import time
from pathlib import Path

import torch

SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
VOCAB = 2000
CONTEXT = 64
HIDDEN = 64


def docstrings(limit_chars: int = 3_000_000) -> list[str]:
    """Paragraphs of the standard library's module, class and function docstrings."""
    root = Path(sysconfig.get_paths()["stdlib"])
    out: list[str] = []
    total = 0
    for path in sorted(root.glob("*.py")):
        try:
            tree = ast.parse(path.read_text(encoding="utf-8"))
        except (SyntaxError, UnicodeDecodeError):
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
                doc = ast.get_docstring(node)
                for para in (doc or "").split("\n\n"):
                    text = " ".join(para.split())
                    if len(text.split()) >= 6:
                        out.append(text.lower())
                        total += len(text)
        if total > limit_chars:
            break
    return out


def make_tokenizer(texts: list[str], template: bool):
    """A word-level tokenizer over the VOCAB most frequent words (with [CLS] … [SEP] if
    `template`)."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    words = collections.Counter(w for t in texts for w in re.findall(r"\w+|[^\w\s]", t))
    vocab = {s: i for i, s in enumerate(SPECIALS)}
    for w, _ in words.most_common(VOCAB - len(SPECIALS)):
        vocab[w] = len(vocab)
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    if template:
        tok.post_processor = processors.TemplateProcessing(
            single="[CLS] $A [SEP]", special_tokens=[("[CLS]", 2), ("[SEP]", 3)]
        )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token="[PAD]",
        unk_token="[UNK]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
        model_max_length=CONTEXT,
    )


def batches(ids: torch.Tensor, batch: int, gen: torch.Generator):
    while True:
        yield ids[torch.randint(0, ids.shape[0], (batch,), generator=gen)]


def train(model, data: torch.Tensor, kind: str, steps: int, minutes: float, seed: int) -> dict:
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.01)
    model.train()
    start, losses, step = time.perf_counter(), [], 0
    for step, x in enumerate(batches(data, 32, gen), start=1):
        if kind == "mlm":
            mask = (torch.rand(x.shape, generator=gen) < 0.15) & (x > 4)
            labels = torch.where(mask, x, -100)
            inputs = torch.where(mask, 4, x)
            loss = model(input_ids=inputs, labels=labels).loss
        else:
            loss = model(input_ids=x, labels=torch.where(x == 0, -100, x)).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
        if step >= steps or time.perf_counter() - start > 60 * minutes:
            break
    model.eval()
    return {"steps": step, "seconds": time.perf_counter() - start, "loss": sum(losses[-50:]) / 50}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cache", type=Path, default=Path.home() / ".cache/tokendyn/models")
    parser.add_argument("--minutes", type=float, default=5.0, help="wall-clock cap per model")
    parser.add_argument("--steps", type=int, default=3000, help="step cap per model")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    from transformers import AlbertConfig, AlbertForMaskedLM, GPT2Config, GPT2LMHeadModel

    texts = docstrings()
    specs = {
        "albert-docstrings": (
            "mlm",
            True,
            lambda v: AlbertForMaskedLM(
                AlbertConfig(
                    vocab_size=v,
                    embedding_size=32,
                    hidden_size=HIDDEN,
                    num_hidden_layers=6,
                    num_attention_heads=4,
                    intermediate_size=4 * HIDDEN,
                    max_position_embeddings=CONTEXT,
                    hidden_dropout_prob=0.0,
                    attention_probs_dropout_prob=0.0,
                    pad_token_id=0,
                )
            ),
        ),
        "gpt2-docstrings": (
            "lm",
            False,
            lambda v: GPT2LMHeadModel(
                GPT2Config(
                    vocab_size=v,
                    n_embd=HIDDEN,
                    n_layer=4,
                    n_head=4,
                    n_positions=CONTEXT,
                    resid_pdrop=0.0,
                    embd_pdrop=0.0,
                    attn_pdrop=0.0,
                    pad_token_id=0,
                )
            ),
        ),
    }
    for name, (kind, template, build) in specs.items():
        out = args.cache / name
        if (out / "config.json").exists():
            print(f"{name}: cached at {out}")
            continue
        tok = make_tokenizer(texts, template)
        enc = tok(texts, truncation=True, max_length=CONTEXT, padding="max_length")
        data = torch.tensor(enc["input_ids"])
        torch.manual_seed(0)
        model = build(len(tok))
        info = train(model, data, kind, args.steps, args.minutes, seed=0)
        model.save_pretrained(out)
        tok.save_pretrained(out)
        print(f"{name}: {info['steps']} steps in {info['seconds']:.0f} s, loss {info['loss']:.3f}")
        print(f"  saved to {out}")


if __name__ == "__main__":
    main()
