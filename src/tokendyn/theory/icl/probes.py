"""Per-layer probes of the function vector (spec §4.3, §5.2 fig. 3).

Features after layer ℓ: the workspace p_{≤ℓ} of the constrained models, or the query's residual
stream for the `lsa-full` references. The probe is a Gaussian class-conditional (QDA) classifier of
the leaf, fitted on probe-training sequences; the level-k prediction is the argmax of the leaf
posterior summed over the leaves below each level-k node; accuracy is on held-out sequences.
"""

from __future__ import annotations

import numpy as np
import torch

from tokendyn.theory.icl.models import ConstrainedICL, LSAFull
from tokendyn.theory.icl.priors import TreePrior
from tokendyn.theory.icl.tasks import Batch


@torch.no_grad()
def layer_features(model: torch.nn.Module, batch: Batch, device: str = "cpu") -> list[np.ndarray]:
    """Features after each layer ℓ = 1..L (list of (B, n_ℓ) arrays)."""
    model.eval()
    tb = batch.torch(device)
    if isinstance(model, ConstrainedICL):
        p = model.workspace(tb.X, tb.y, tb.xq).double().cpu().numpy()
        H = model.layout.H
        feats = [p[:, : (ell + 1) * H] for ell in range(model.layout.L)]
    elif isinstance(model, LSAFull):
        from tokendyn.theory.icl.tasks import tokens

        z, feats = tokens(tb.X, tb.y, tb.xq), []
        for ell, layer in enumerate(model.attn):
            z = layer(z)
            if model.ffs is not None:
                z = z + model.ffs[ell](z)
            feats.append(z[:, -1].double().cpu().numpy())
    else:
        raise TypeError(f"no probe features for {type(model).__name__}")
    model.train()
    return feats


def qda_leaf_logpost(
    train_x: np.ndarray, train_leaf: np.ndarray, x: np.ndarray, n_leaves: int, ridge: float = 1e-6
) -> np.ndarray:
    """log P(leaf | features) under per-leaf Gaussians with a uniform leaf prior, (B, n_leaves)."""
    n = x.shape[1]
    scale = ridge * np.trace(np.cov(train_x.T).reshape(n, n)) / n + 1e-12
    out = np.empty((x.shape[0], n_leaves))
    for j in range(n_leaves):
        xj = train_x[train_leaf == j]
        mu = xj.mean(axis=0)
        cov = np.cov(xj.T).reshape(n, n) + scale * np.eye(n)
        _, logdet = np.linalg.slogdet(cov)
        dx = x - mu
        out[:, j] = -0.5 * (np.einsum("bi,ij,bj->b", dx, np.linalg.inv(cov), dx) + logdet)
    return out


def level_accuracy(
    tree: TreePrior,
    train_feats: list[np.ndarray],
    train_leaf: np.ndarray,
    test_feats: list[np.ndarray],
    test_leaf: np.ndarray,
) -> np.ndarray:
    """Held-out accuracy of the level-k node from the layer-ℓ features: array (L, K)."""
    M = tree.b**tree.K
    acc = np.zeros((len(test_feats), tree.K))
    for ell, (ftr, fte) in enumerate(zip(train_feats, test_feats, strict=True)):
        post = qda_leaf_logpost(ftr, train_leaf, fte, M)
        for k in range(1, tree.K + 1):
            node_score = np.logaddexp.reduce(post.reshape(len(fte), tree.b**k, -1), axis=2)
            acc[ell, k - 1] = np.mean(node_score.argmax(1) == tree.node_of(test_leaf, k))
    return acc


def probe_model(
    model: torch.nn.Module, tree: TreePrior, train: Batch, test: Batch, device: str = "cpu"
) -> np.ndarray:
    """Level-k accuracy (L, K) of probes on every layer of a trained model."""
    return level_accuracy(
        tree,
        layer_features(model, train, device),
        train.comp,
        layer_features(model, test, device),
        test.comp,
    )
