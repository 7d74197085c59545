"""`tokendyn view`: the interactive HTML of a run and of a sweep store.

The figure is checked against the run it draws (positions per frame, cluster colours, the cluster
count in the title, the statistics marker) and the phase-diagram heatmap against the store's values;
the written file is opened in a real headless chromium, the slider is moved, and the scatter must
then hold the last frame's positions with no JavaScript error logged. Without chromium + playwright
the browser test skips with the reason — unless TOKENDYN_REQUIRE_BROWSER=1 (CI), where it fails.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import xarray as xr
from typer.testing import CliRunner

import tokendyn as td
from tokendyn.cli import app
from tokendyn.viz.view import run_view, sweep_view, view_store

CHROMIUM = os.environ.get("TOKENDYN_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


@pytest.fixture(scope="module")
def run_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small clustering run on S² (three clusters form by t = 6), stored as zarr."""
    out = tmp_path_factory.mktemp("view") / "run.zarr"
    cfg = td.make_config(n=60, d=3, beta=4.0, t_end=6.0, dt=0.1, save_every=5, seed=1)
    td.run_simulation(cfg, out=out)
    return out


def test_run_view_draws_every_frame_of_the_run(run_store: Path) -> None:
    ds = td.open_run(run_store)
    fig = run_view(ds)
    x = ds["x"].values
    stats = [str(n) for n, v in ds.data_vars.items() if v.dims == ("time",)]
    assert sorted(stats) == ["clusters", "effective_dim", "energy"]
    assert [f.name for f in fig.frames] == [str(k) for k in range(ds.sizes["time"])]
    threshold = json.loads(ds.attrs["config"])["cluster_threshold"]
    for k, frame in enumerate(fig.frames):
        cloud = frame.data[0]
        # d = 3 is drawn in its own coordinates: the frame holds the positions exactly
        np.testing.assert_array_equal(np.stack([cloud.x, cloud.y, cloud.z], -1), x[k])
        labels = td.cluster_labels(torch.from_numpy(x[k]), threshold)
        colours = np.asarray(cloud.marker.color)
        for c in np.unique(labels):  # one colour per cluster, different clusters differ (≤ 10)
            assert len(set(colours[labels == c])) == 1
        assert len(set(colours)) == min(len(np.unique(labels)), 10)
        count = td.cluster_count(torch.from_numpy(x[k]), threshold=threshold)
        assert f"{count} clusters" in frame.layout.title.text
        # the statistics markers sit at this frame's time and values
        for marker, name in zip(frame.data[1:], stats, strict=True):
            assert marker.x == (float(ds["time"][k]),)
            assert marker.y == (float(ds[name][k]),)
    assert len(fig.layout.sliders[0].steps) == ds.sizes["time"]


def test_sweep_view_heatmap_holds_the_store_values() -> None:
    betas, times = [1.0, 2.0, 4.0], [0.0, 1.0]
    clusters = np.array([[[5, 3], [4, 2], [3, 1]], [[7, 3], [6, 2], [5, 1]]], dtype=float)
    ds = xr.Dataset(
        {
            "clusters": (("seed", "beta", "time"), clusters),
            "time_to_one_cluster": (("seed", "beta"), np.array([[9.0, 8.0, 7.0], [6, 5, 4]])),
        },
        coords={"seed": [0, 1], "beta": betas, "time": times},
        attrs={"sweep": "{}"},
    )
    fig = sweep_view(ds)  # x = beta, y = time: only `clusters` has both
    assert [t.name for t in fig.data] == ["clusters"]
    np.testing.assert_array_equal(fig.data[0].z, clusters.mean(0).T)  # mean over seeds, (y, x)
    assert list(fig.data[0].x) == betas and list(fig.data[0].y) == times
    fig = sweep_view(ds, x="beta", y="seed")
    assert [t.name for t in fig.data] == ["clusters", "time_to_one_cluster"]
    np.testing.assert_array_equal(fig.data[0].z, clusters[..., -1])  # the final time
    assert fig.data[1].visible is False
    assert len(fig.layout.updatemenus[0].buttons) == 2


def test_cli_writes_one_self_contained_file(run_store: Path, tmp_path: Path) -> None:
    out = tmp_path / "v.html"
    result = CliRunner().invoke(app, ["view", str(run_store), "--out", str(out)])
    assert result.exit_code == 0, result.output
    page = out.read_text()
    assert not re.search(r"<script[^>]+src=", page)  # plotly.js is inlined, nothing is fetched
    assert "Plotly.newPlot" in page


def test_cli_bad_input_is_one_line(run_store: Path, tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["view", str(tmp_path / "missing.zarr")])
    assert result.exit_code == 2
    assert "store: nothing at" in result.output
    with pytest.raises(td.ConfigError, match="out"):
        view_store(run_store, tmp_path / "view.png")


def _browser() -> object:
    """The playwright module, or a skip (a failure under TOKENDYN_REQUIRE_BROWSER=1)."""
    reason = None
    if not Path(CHROMIUM).exists() and shutil.which("chromium") is None:
        reason = f"no chromium at {CHROMIUM} (apt-get install -y chromium, or `make browser`)"
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        reason = "playwright is not installed (pip install playwright)"
    if reason is not None:
        if os.environ.get("TOKENDYN_REQUIRE_BROWSER") == "1":
            pytest.fail(reason)
        pytest.skip(reason)
    return sync_playwright


def test_slider_changes_the_plot_in_a_real_browser(run_store: Path, tmp_path: Path) -> None:
    sync_playwright = _browser()
    ds = td.open_run(run_store)
    html = view_store(run_store, tmp_path / "run.html")
    plot = "document.querySelector('.js-plotly-plot')"
    errors: list[str] = []
    with sync_playwright() as pw:  # type: ignore[operator]
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page()
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(html.resolve().as_uri())
            page.wait_for_function(f"{plot} && {plot}._fullData && {plot}._fullData.length > 0")
            first = page.evaluate(f"Array.from({plot}._fullData[0].x)")
            rail = page.locator(".slider-rail-rect").bounding_box()
            assert rail is not None
            page.mouse.click(rail["x"] + rail["width"] - 1, rail["y"] + rail["height"] / 2)
            last = ds.sizes["time"] - 1
            page.wait_for_function(f"{plot}.layout.sliders[0].active === {last}")
            page.wait_for_function(f"{plot}.layout.title.text.includes('t = 6')")
            moved = page.evaluate(f"Array.from({plot}._fullData[0].x)")
        finally:
            browser.close()
    x = ds["x"].values
    np.testing.assert_array_equal(first, x[0, :, 0])
    np.testing.assert_array_equal(moved, x[last, :, 0])  # the scatter now shows the last frame
    assert not np.array_equal(first, moved)
    assert errors == []
