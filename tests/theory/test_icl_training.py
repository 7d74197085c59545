"""Trained models on the CPU setting (slow): the spec's §6.2 margins and the report section."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tokendyn.theory.icl import get_setting, make_prior
from tokendyn.theory.icl.train import TrainConfig, evaluate_mse, make_test_set, train


def test_training_is_deterministic_and_keeps_the_best_seed():
    s = get_setting("cpu")
    tree = make_prior(s, "tree")
    cfg = TrainConfig(steps=20, seeds=(0, 1), eval_every=10, val_size=200, device="cpu")
    a, b = (train(s, tree, "ff", 2, cfg=cfg) for _ in range(2))
    assert a.seed == b.seed and a.val_mse == b.val_mse
    for (ka, va), (kb, vb) in zip(
        a.model.state_dict().items(), b.model.state_dict().items(), strict=True
    ):
        assert ka == kb and torch.equal(va, vb)
    assert a.val_mse == min(v for hist in a.history.values() for _, v in hist)


@pytest.mark.slow
def test_trained_ff_beats_lin_by_the_spec_margin(tmp_path):
    """Tree prior, L = 4: ff ≲ 0.06, ff < lin+ffout, and lin/ff ≥ 3 (spec §6.2 criteria 1–2)."""
    s = get_setting("cpu")
    tree = make_prior(s, "tree")
    test = make_test_set(s, tree, 4000)
    cfg = TrainConfig(steps=1500, seeds=(0, 1), device="cpu")
    mse = {
        name: evaluate_mse(train(s, tree, name, 4, cfg=cfg).model, test, "cpu")[0]
        for name in ("lin", "lin+ffout", "ff")
    }
    assert mse["ff"] <= 0.06
    assert mse["ff"] < mse["lin+ffout"]
    assert mse["lin"] / mse["ff"] >= 3.0


@pytest.mark.slow
def test_report_section_quick(tmp_path, monkeypatch):
    """`tokendyn reproduce --quick --section icl`: every CPU criterion check passes."""
    import tokendyn.report as report

    from tokendyn.studies.icl import run

    monkeypatch.setattr(report, "SECTIONS", {"icl": run})
    summary = report.write_report(tmp_path, quick=True, only=["icl"])
    assert len(list(tmp_path.glob("icl_*.png"))) == 4
    failed = [c["name"] for c in summary if not c["passed"]]
    assert not failed, failed
    assert np.isfinite([c["simulation"] for c in summary]).all()
