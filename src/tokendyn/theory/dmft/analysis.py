"""Statistics of recorded m^o series: power spectra, autocorrelation, periods, the paper's
distinct-value colouring, Poincaré sections, and finite-N versus mean-field comparisons."""

from __future__ import annotations

import numpy as np
from scipy.spatial import cKDTree

from tokendyn.errors import ConfigError

PERIOD_TOL = 1e-8
COLOUR_BINS = 5001
QUASI_COUNT, CHAOS_COUNT = 80, 2500
SECTION_TOL = 1e-3


def power_spectrum(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(frequencies in cycles/step, |FFT(x − mean)|² / n) of a 1-D series."""
    x = np.asarray(x, dtype=np.float64)
    spec = np.abs(np.fft.rfft(x - x.mean())) ** 2 / x.size
    return np.fft.rfftfreq(x.size), spec


def autocorrelation(x: np.ndarray, max_lag: int | None = None) -> np.ndarray:
    """Normalised autocorrelation ρ(τ) = Σ_t δx_t δx_{t+τ} / Σ_t δx_t², τ = 0 … max_lag (by FFT)."""
    x = np.asarray(x, dtype=np.float64) - np.mean(x)
    n = x.size
    f = np.fft.rfft(x, 2 * n)
    acf = np.fft.irfft(f * np.conj(f))[:n]
    acf = acf / acf[0] if acf[0] > 0 else np.ones(n)
    return acf[: (n if max_lag is None else max_lag + 1)]


def detect_period(mo: np.ndarray, max_period: int = 1000, tol: float = PERIOD_TOL) -> int | None:
    """Smallest p ≤ max_period with max_t |m^o_{t+p} − m^o_t| ≤ tol·max(1, max|m^o|) over the
    recorded steps (time on axis 0; any trailing axes), or None."""
    mo = np.asarray(mo)
    scale = tol * max(1.0, float(np.abs(mo).max(initial=0.0)))
    top = min(max_period, mo.shape[0] // 2)
    last = mo[-1]
    lagged = mo[-2 : -top - 2 : -1].reshape(top, -1)  # m^o_{T−1−p}, p = 1 … top
    candidates = np.flatnonzero(np.abs(lagged - last.reshape(1, -1)).max(axis=1) <= scale) + 1
    for p in candidates:
        if np.abs(mo[p:] - mo[:-p]).max() <= scale:
            return int(p)
    return None


def distinct_counts(mo: np.ndarray, max_y: float, bins: int = COLOUR_BINS) -> np.ndarray:
    """Number of distinct quantised values per column of mo (time on axis 0), with `bins` equal bins
    over [−max_y, max_y] (spec §4.1; max_y is the diagram's global max |m^o|)."""
    if not max_y > 0:
        raise ConfigError("max_y", f"is {max_y}", "use the global max |m^o| (> 0)")
    q = np.clip(np.floor((mo + max_y) / (2 * max_y) * bins), 0, bins - 1).astype(np.int64)
    flat = q.reshape(q.shape[0], -1)
    srt = np.sort(flat, axis=0)
    counts = 1 + (np.diff(srt, axis=0) != 0).sum(axis=0)
    return counts.reshape(mo.shape[1:])


def paper_colour(count: int | np.ndarray) -> np.ndarray:
    """v1 colouring: < 80 periodic, < 2500 quasi-periodic, else chaotic."""
    c = np.asarray(count)
    return np.where(
        c < QUASI_COUNT, "periodic", np.where(c < CHAOS_COUNT, "quasi-periodic", "chaotic")
    )


def poincare(mo: np.ndarray, filt: int, show: int, tol: float = SECTION_TOL) -> np.ndarray:
    """Values of m^o_show at the steps where |m^o_filt| ≤ tol (mo: (T, M))."""
    return mo[np.abs(mo[:, filt]) <= tol, show]


def series_stats(mo: np.ndarray) -> dict[str, np.ndarray]:
    """std and amplitude (max |·|) of m^o_1 over time (axis 0), mean of every feature."""
    return {
        "std": mo[:, 0].std(axis=0),
        "amplitude": np.abs(mo[:, 0]).max(axis=0),
        "mean": mo.mean(axis=0),
    }


def attractor_distance(reference: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Distance of every point (…, M) to the nearest reference point (T, M) (k-d tree)."""
    tree = cKDTree(np.asarray(reference))
    d, _ = tree.query(np.asarray(points).reshape(-1, reference.shape[1]))
    return d.reshape(points.shape[:-1])


def stayed_fraction(
    reference: np.ndarray, trials: np.ndarray, tol: float = 0.05, quantile: float = 0.95
) -> float:
    """Fraction of trials (trials: (T, M, n)) whose `quantile` of the distance to the mean-field
    attractor cloud `reference` (T', M) stays ≤ tol."""
    d = attractor_distance(reference, np.moveaxis(trials, 1, -1))  # (T, n)
    return float(np.mean(np.quantile(d, quantile, axis=0) <= tol))


def loglog_slope(x: np.ndarray, y: np.ndarray) -> float:
    """Least-squares slope of log y against log x."""
    return float(np.polyfit(np.log(x), np.log(y), 1)[0])
