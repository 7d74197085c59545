"""Series statistics on signals with known answers."""

import numpy as np
import pytest

from tokendyn.errors import ConfigError
from tokendyn.theory.dmft import analysis


def test_period_detection():
    t = np.arange(600)
    x = np.stack([np.sin(2 * np.pi * t / 24), np.cos(2 * np.pi * t / 8)], axis=1)
    assert analysis.detect_period(x) == 24
    assert analysis.detect_period(np.sin(np.sqrt(2) * t)) is None
    assert analysis.detect_period(np.ones(10)) == 1


def test_power_spectrum_peak_and_autocorrelation():
    t = np.arange(1000)
    f, p = analysis.power_spectrum(np.cos(2 * np.pi * 0.1 * t))
    assert f[np.argmax(p)] == pytest.approx(0.1)
    acf = analysis.autocorrelation(np.cos(2 * np.pi * t / 10), 20)
    assert acf[0] == 1.0
    assert acf[10] == pytest.approx(0.99, abs=0.01)  # (n − τ)/n of a full-period lag
    assert acf[5] == pytest.approx(-0.995, abs=0.01)


def test_distinct_counts_and_colour():
    x = np.stack([np.tile([0.1, -0.2, 0.3], 100), np.linspace(-1, 1, 300)], axis=1)
    assert analysis.distinct_counts(x, 1.0, bins=5001).tolist() == [3, 300]
    assert analysis.paper_colour([3, 100, 3000]).tolist() == [
        "periodic",
        "quasi-periodic",
        "chaotic",
    ]
    with pytest.raises(ConfigError, match="max_y"):
        analysis.distinct_counts(x, 0.0)


def test_poincare_and_stayed_fraction():
    mo = np.array([[0.0005, 0.3, 0], [0.2, 0.1, 0], [-0.0009, -0.4, 0]])
    np.testing.assert_array_equal(analysis.poincare(mo, 0, 1), [0.3, -0.4])
    ref = np.zeros((5, 3))
    trials = np.zeros((100, 3, 2))
    trials[:, 0, 1] = 0.2
    assert analysis.stayed_fraction(ref, trials, tol=0.05) == 0.5
