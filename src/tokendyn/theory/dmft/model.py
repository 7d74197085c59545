"""The 1-bit self-attention model: ±1 weights, positional codes and parameters (spec §2).

Weights are four M×N matrices W^α, α ∈ (o, v, q, k), split into N_se semantic columns and
N_pe = log2(C) positional columns. Overlaps are ε-weighted (spec §2.4):

    m^α_a = (1−ε)(1/N_se) Σ_{i∈se} W^α_{a,i} x_i + ε (1/N_pe) Σ_{j∈pe} W^α_{a,j} x_j.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from tokendyn.errors import ConfigError

ROLES = ("o", "v", "q", "k")
GAMMA = 220.0
EPSILON = 0.02
CONTEXT = 4

# Seed-1 weight table (spec §2.3): per role, rows = features 1..3, (block values s1,s2,s3) and
# (positional columns p1, p2).
SEED1_BLOCKS = np.array(
    [
        [[-1, 1, 1], [-1, 1, -1], [1, 1, 1]],  # W^o
        [[-1, 1, -1], [-1, -1, 1], [-1, 1, 1]],  # W^v
        [[1, -1, -1], [-1, -1, -1], [1, -1, 1]],  # W^q
        [[-1, -1, -1], [-1, -1, 1], [-1, 1, -1]],  # W^k
    ],
    dtype=np.float64,
)
SEED1_PE = np.array(
    [
        [[-1, -1], [1, -1], [1, 1]],
        [[-1, -1], [1, -1], [-1, 1]],
        [[1, -1], [1, 1], [-1, -1]],
        [[-1, -1], [-1, -1], [-1, 1]],
    ],
    dtype=np.float64,
)


def _check_pm1(name: str, arr: np.ndarray) -> np.ndarray:
    arr = np.asarray(arr, dtype=np.float64)
    if not np.all(np.isfinite(arr)) or not np.all(np.abs(arr) == 1.0):
        bad = arr[~(np.abs(arr) == 1.0)].ravel()[:3].tolist()
        raise ConfigError(name, f"has entries other than ±1 (e.g. {bad})", "use 1-bit weights ±1")
    return arr


@dataclass(frozen=True)
class Weights:
    """1-bit weights: `se` (4, M, N_se) and `pe` (4, M, N_pe), roles ordered (o, v, q, k).

    `counts` (K,) optionally says that semantic column c stands for counts[c] identical spins
    (block-constant weights, N_se = Σ counts); None means every column is one spin."""

    se: np.ndarray
    pe: np.ndarray
    counts: np.ndarray | None = None

    def __post_init__(self) -> None:
        se = _check_pm1("weights.se", self.se)
        pe = _check_pm1("weights.pe", self.pe)
        if se.ndim != 3 or se.shape[0] != 4 or se.shape[1] < 1 or se.shape[2] < 1:
            raise ConfigError(
                "weights.se", f"has shape {se.shape}", "pass an array (4, M, N_se) for (o, v, q, k)"
            )
        if pe.ndim != 3 or pe.shape[:2] != se.shape[:2]:
            raise ConfigError(
                "weights.pe",
                f"has shape {pe.shape} but weights.se has {se.shape}",
                f"pass an array (4, {se.shape[1]}, N_pe)",
            )
        object.__setattr__(self, "se", se)
        object.__setattr__(self, "pe", pe)
        if self.counts is not None:
            counts = np.asarray(self.counts)
            if counts.shape != (se.shape[2],) or np.any(counts < 1) or np.any(counts % 1):
                raise ConfigError(
                    "weights.counts",
                    f"is {counts.tolist()} for {se.shape[2]} semantic columns",
                    "give one positive integer per semantic column",
                )
            object.__setattr__(self, "counts", counts.astype(np.int64))

    @property
    def M(self) -> int:
        return self.se.shape[1]

    @property
    def n_pe(self) -> int:
        return self.pe.shape[2]

    @property
    def n_se(self) -> int:
        return int(self.counts.sum()) if self.counts is not None else self.se.shape[2]

    @property
    def fractions(self) -> np.ndarray:
        """Share of the semantic spins carried by each column (sums to 1)."""
        if self.counts is None:
            return np.full(self.se.shape[2], 1.0 / self.se.shape[2])
        return self.counts / self.counts.sum()

    def blocks(self) -> Weights:
        """The same weights as distinct semantic columns with multiplicities (exact compression)."""
        cols, inverse = np.unique(
            self.se.reshape(-1, self.se.shape[2]).T, axis=0, return_inverse=True
        )
        counts = np.bincount(inverse.ravel(), weights=self.counts, minlength=len(cols))
        return Weights(cols.T.reshape(4, self.M, -1), self.pe, counts.astype(np.int64))

    def expanded(self) -> Weights:
        """Every spin as its own column (inverse of `blocks`)."""
        if self.counts is None:
            return self
        return Weights(np.repeat(self.se, self.counts, axis=2), self.pe)


def seed1_weights(n_se: int | None = None) -> Weights:
    """The paper's seed-1 weights (spec §2.3). n_se None: 3 blocks with equal counts 1 (block
    form); otherwise n_se (divisible by 3) explicit columns, each block repeated n_se/3 times."""
    if n_se is None:
        return Weights(SEED1_BLOCKS, SEED1_PE, np.ones(3, dtype=np.int64))
    if n_se < 3 or n_se % 3:
        raise ConfigError("n_se", f"is {n_se}", "use a positive multiple of 3 (three equal blocks)")
    return Weights(np.repeat(SEED1_BLOCKS, n_se // 3, axis=2), SEED1_PE)


def block_weights(
    n_se: int, blocks: np.ndarray = SEED1_BLOCKS, pe: np.ndarray = SEED1_PE
) -> Weights:
    """Block-constant weights with n_se spins split into len(blocks) equal blocks (sizes differ by
    at most one); used by the block-binomial sampler for N_se up to 10^9 and beyond."""
    S = np.asarray(blocks).shape[2]
    if n_se < S:
        raise ConfigError("n_se", f"is {n_se}", f"use at least {S} (one spin per block)")
    counts = np.full(S, n_se // S, dtype=np.int64)
    counts[: n_se % S] += 1
    return Weights(blocks, pe, counts)


@dataclass(frozen=True)
class Params:
    """γ (attention gain, ×100 already included), ε (positional share), C (context window).

    mo_epsilon=False records m^o as v1's semantic-only overlap (no (1−ε) factor, spec §6.4)."""

    gamma: float = GAMMA
    epsilon: float = EPSILON
    C: int = CONTEXT
    mo_epsilon: bool = False

    def __post_init__(self) -> None:
        if not np.isfinite(self.gamma) or self.gamma < 0:
            raise ConfigError("gamma", f"is {self.gamma}", "use a finite γ ≥ 0 (paper: 220)")
        if not 0.0 <= self.epsilon <= 1.0:
            raise ConfigError("epsilon", f"is {self.epsilon}", "use 0 ≤ ε ≤ 1 (paper: 0.02)")
        if int(self.C) != self.C or self.C < 1:
            raise ConfigError("C", f"is {self.C}", "use a positive integer context (paper: 4)")


def check_beta(beta: np.ndarray | float) -> np.ndarray:
    """β as a 1-D float64 array; every β must be finite and ≥ 0."""
    b = np.atleast_1d(np.asarray(beta, dtype=np.float64))
    if b.ndim != 1 or b.size == 0:
        raise ConfigError("beta", f"has shape {b.shape}", "pass a number or a 1-D list of β")
    if not np.all(np.isfinite(b)) or np.any(b < 0):
        raise ConfigError("beta", f"contains {b[~(np.isfinite(b) & (b >= 0))][0]}", "use β ≥ 0")
    return b


def positional_codes(C: int, n_pe: int) -> np.ndarray:
    """P (C, N_pe): binary code of p = t mod C, most significant bit first, 0 → −1, 1 → +1."""
    if C & (C - 1):
        raise ConfigError(
            "C",
            f"is {C}, not a power of two, but positional bits are binary codes of t mod C",
            "use C = 2^N_pe (paper: C = 4 with N_pe = 2)",
        )
    if 2**n_pe != C:
        raise ConfigError(
            "weights.pe",
            f"has N_pe = {n_pe} positional columns; C = {C} needs {C.bit_length() - 1}",
            "use C = 2^N_pe",
        )
    p = np.arange(C)[:, None]
    bits = (p >> np.arange(n_pe - 1, -1, -1)[None, :]) & 1
    return 2.0 * bits - 1.0


@dataclass(frozen=True)
class Model:
    """Weights + parameters, validated together."""

    weights: Weights
    params: Params = Params()

    def __post_init__(self) -> None:
        positional_codes(self.params.C, self.weights.n_pe)

    @property
    def M(self) -> int:
        return self.weights.M

    @property
    def C(self) -> int:
        return self.params.C

    def pe_overlaps(self) -> np.ndarray:
        """ε (1/N_pe) Σ_j W^α_{a,j} P_j(p) for every phase p: (C, 4, M) (zero for α = o)."""
        P = positional_codes(self.C, self.weights.n_pe)
        out = self.params.epsilon * np.einsum("rmj,pj->prm", self.weights.pe, P) / self.weights.n_pe
        out[:, 0] = 0.0
        return out


def paper_model(n_se: int | None = None, **params: float) -> Model:
    """γ = 220, ε = 0.02, C = 4 with the seed-1 weights (block form unless n_se is given)."""
    return Model(seed1_weights(n_se), Params(**params))
