"""Observables of a token cloud x of shape (N, d) or (B, N, d), one module per job.

Every function accepts float32/float64 tensors on any device and returns one value per cloud: a
tensor of shape (B,) for batched input, a 0-d tensor for a single (N, d) cloud (unless noted).

- clusters: cluster_count, cluster_labels (connected components at a distance threshold)
- energy: log_interaction_energy / interaction_energy (Q = K = I), log_attention_energy (a
  field's own heads), LogEnergy (that statistic bound to a field), pair_logsumexp (the one
  tiled log-sum-exp reduction behind every energy)
- dimension: effective_dimension (participation ratio), mean_and_covariance
- gram: gram_histogram
- transport: wasserstein, sliced_wasserstein, bures_wasserstein
"""

from tokendyn.engine.observables.clusters import (
    DENSE_CLUSTER_MAX,
    GRID_MAX_DIM,
    GRID_MIN_TOKENS,
    LEADER_MAX,
    cluster_count,
    cluster_labels,
)
from tokendyn.engine.observables.dimension import effective_dimension, mean_and_covariance
from tokendyn.engine.observables.energy import (
    LogEnergy,
    interaction_energy,
    log_attention_energy,
    log_interaction_energy,
    pair_logsumexp,
)
from tokendyn.engine.observables.gram import gram_histogram
from tokendyn.engine.observables.transport import (
    bures_wasserstein,
    sliced_wasserstein,
    wasserstein,
)

__all__ = [
    "DENSE_CLUSTER_MAX",
    "GRID_MAX_DIM",
    "GRID_MIN_TOKENS",
    "LEADER_MAX",
    "LogEnergy",
    "bures_wasserstein",
    "cluster_count",
    "cluster_labels",
    "effective_dimension",
    "gram_histogram",
    "interaction_energy",
    "log_attention_energy",
    "log_interaction_energy",
    "mean_and_covariance",
    "pair_logsumexp",
    "sliced_wasserstein",
    "wasserstein",
]
