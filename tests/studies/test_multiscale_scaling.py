"""Time scales vs N under β = c ln N (experiments/multiscale_scaling.py)."""

import math

import numpy as np
import pytest

from tokendyn.app.phases import alignment_time_predicted, detect_phases
from tokendyn.app.run import run_simulation
from tokendyn.studies import multiscale_scaling as ms
from tokendyn.theory.multiscale import heat_variance


@pytest.fixture(scope="module")
def rows():
    return [ms.time_scales(800), ms.time_scales(1600)]


def test_phases_come_in_order_and_merge_matches_the_pair_integral(rows):
    for r in rows:
        assert r.alignment < r.formed < r.merge
        # one frame of detection delay plus a few % for finite clusters and stragglers
        assert abs(r.merge - r.merge_predicted) <= 0.1 * r.merge_predicted + r.frame_dt
        assert 0.5 < r.theta_formed < 1.0  # the two mixture clusters, not fragments


def test_alignment_is_order_one_between_its_limits(rows):
    cfg = ms.scenario_config(800, 1.0, 0.1, 1)
    rate = alignment_time_predicted(cfg)  # pure exponential at 2(λ₁ − λ₂) = 1.5
    assert rate == pytest.approx(math.log(100) / 1.5)
    for r in rows:
        assert rate < r.alignment < ms.limit_flow_alignment(n=500)
    assert abs(rows[0].alignment - rows[1].alignment) < 0.1 * rows[0].alignment


def test_merge_grows_with_n_as_predicted(rows):
    small, large = rows
    measured = (large.merge - large.formed) / (small.merge - small.formed)
    predicted = (large.merge_predicted - large.formed) / (small.merge_predicted - small.formed)
    assert measured > 1.2
    assert measured == pytest.approx(predicted, rel=0.1)


def test_reduced_model_continues_to_the_same_merge(rows):
    reduced = ms.time_scales(800, to_merge=False)
    assert reduced.reduced and reduced.formed == rows[0].formed
    assert reduced.merge == pytest.approx(rows[0].merge, rel=0.05)


def test_fast_detection_agrees_with_detect_phases():
    cfg = ms.scenario_config(800, 12.0, 0.1, 5)
    ds = run_simulation(cfg)
    align, formed, _ = ms.measure(cfg, ds)
    phases = detect_phases(ds)
    times = ds["time"].values
    assert phases.clusters_formed == pytest.approx(times[formed])
    # detect_phases reports the first frame at/after the crossing; ours interpolates
    assert 0 <= phases.alignment_done - align <= times[1] - times[0]


def test_alignment_crossing_interpolates_an_exponential():
    t = np.arange(0, 5, 0.5)
    assert ms.alignment_crossing(t, 0.5 * np.exp(-1.5 * t)) == pytest.approx(math.log(100) / 1.5)
    assert ms.alignment_crossing(t, np.ones_like(t)) is None


def test_heat_formation_time_solves_the_finite_beta_law():
    for beta in (10.0, 20.0):
        t = ms.heat_formation_time(beta)
        assert heat_variance(ms.SIGMA0, t, beta, 1) == pytest.approx(ms.THRESHOLD**2, rel=1e-9)
