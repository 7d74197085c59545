"""tokendyn: the mean-field theory of transformers, runnable.

Tokens are particles, depth is time, self-attention is the interaction.
"""

__version__ = "0.1.0"
