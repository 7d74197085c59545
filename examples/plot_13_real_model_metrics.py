"""
# A transformer's tokens layer by layer (a tiny random BERT, offline)

`tokendyn model trace` stores a Hugging Face model's hidden states as a run (time = layer), and
`tokendyn model metrics` measures the token cloud at every layer beside a shuffled-token null:
anisotropy (mean cosine), stable rank, the rank-collapse residual, participation ratio and TwoNN
intrinsic dimension. Here a BERT with random weights is built from a config, so nothing is
downloaded; the same calls take `open_model("bert-base-uncased")` or any local model directory.
"""

import torch
from transformers import BertConfig, BertModel

from tokendyn.models.metrics import layer_metrics
from tokendyn.models.open import open_model
from tokendyn.models.trace import inputs_from_ids, trace
from tokendyn.viz.models import plot_metric_curves

torch.manual_seed(0)
config = BertConfig(
    vocab_size=200,
    hidden_size=64,
    num_hidden_layers=4,
    num_attention_heads=4,
    intermediate_size=128,
    max_position_embeddings=64,
)
model = BertModel(config).eval()
opened = open_model(model)
ids = torch.randint(5, 200, (4, 32), generator=torch.Generator().manual_seed(1)).tolist()
ds = trace(opened, inputs_from_ids(opened, ids))
metrics = layer_metrics(ds)
curves = plot_metric_curves(metrics)
