"""Real pretrained transformers through tokendyn's lens (optional extra `tokendyn[models]`).

`architectures` holds, in one place per architecture, where a Hugging Face model keeps its layers,
attention, norms and MLP; `open` opens a model (directory, hub name or object) with the checks a
user needs before a long load; `trace` turns its hidden states into the Dataset the simulations
use (time = layer); `metrics` measures the token cloud per layer beside a shuffled-token null.
"""
