"""Tiny randomly initialised Hugging Face models of every supported architecture, and a word-level
tokenizer made here: nothing is downloaded."""

from __future__ import annotations

import pytest

pytest.importorskip("transformers")

import torch
from tokenizers import Tokenizer, models, pre_tokenizers, processors
from transformers import (
    AlbertConfig,
    AlbertModel,
    BertConfig,
    BertModel,
    DistilBertConfig,
    DistilBertModel,
    GPT2Config,
    GPT2Model,
    LlamaConfig,
    LlamaModel,
    PreTrainedTokenizerFast,
    RobertaConfig,
    RobertaModel,
)

WORDS = ["the", "a", "token", "moves", "on", "sphere", "cloud", "layer", "attention", "cluster"]
VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]
CONTEXT = 16


def tokenizer(template: bool = True) -> PreTrainedTokenizerFast:
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(VOCAB)}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    if template:
        tok.post_processor = processors.TemplateProcessing(
            single="[CLS] $A [SEP]", special_tokens=[("[CLS]", 2), ("[SEP]", 3)]
        )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="[PAD]", unk_token="[UNK]", model_max_length=CONTEXT
    )


def _common(**extra):
    return dict(vocab_size=len(VOCAB), pad_token_id=0, **extra)


BUILDERS = {
    "bert": lambda: BertModel(
        BertConfig(
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=4,
            intermediate_size=64,
            max_position_embeddings=CONTEXT,
            **_common(),
        )
    ),
    "roberta": lambda: RobertaModel(
        RobertaConfig(
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=4,
            intermediate_size=64,
            max_position_embeddings=CONTEXT + 2,
            **_common(),
        )
    ),
    "distilbert": lambda: DistilBertModel(
        DistilBertConfig(
            dim=32,
            n_layers=2,
            n_heads=4,
            hidden_dim=64,
            max_position_embeddings=CONTEXT,
            **_common(),
        )
    ),
    "albert": lambda: AlbertModel(
        AlbertConfig(
            embedding_size=16,
            hidden_size=32,
            num_hidden_layers=3,
            num_attention_heads=4,
            intermediate_size=64,
            max_position_embeddings=CONTEXT,
            **_common(),
        )
    ),
    "gpt2": lambda: GPT2Model(
        GPT2Config(
            n_embd=32,
            n_layer=2,
            n_head=4,
            n_positions=CONTEXT,
            bos_token_id=2,
            eos_token_id=3,
            **_common(),
        )
    ),
    "llama": lambda: LlamaModel(
        LlamaConfig(
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            intermediate_size=64,
            max_position_embeddings=CONTEXT,
            bos_token_id=2,
            eos_token_id=3,
            **_common(),
        )
    ),
}


def tiny_model(name: str, seed: int = 0):
    torch.manual_seed(seed)
    return BUILDERS[name]().eval()
