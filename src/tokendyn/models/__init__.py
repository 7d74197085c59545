"""Real pretrained transformers through tokendyn's lens (optional extra `tokendyn[models]`).

`architectures` holds, in one place per architecture, where a Hugging Face model keeps its layers,
attention, norms and MLP; `open` opens a model (directory, hub name or object) with the checks a
user needs before a long load; `trace` turns its hidden states into the Dataset the simulations
use (time = layer); `metrics` measures the token cloud per layer beside a shuffled-token null;
`weights` reads every layer into the engine's blocks (one Euler step = one layer) with its spectra
and effective β; `compare` integrates that particle system against the real trajectory beside
nulls; `fit` fits per-layer β (and time steps) of the attention-only model by gradient descent.
"""
