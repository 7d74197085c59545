"""Figures and animations of small synthetic runs: files written, readable, right frame counts."""

from __future__ import annotations

import json
from pathlib import Path

import imageio_ffmpeg
import numpy as np
import pytest
import torch
import xarray as xr
from matplotlib.figure import Figure
from PIL import Image

from tokendyn.engine import observables as obs
from tokendyn.errors import ConfigError
from tokendyn.viz.animate import animate_run
from tokendyn.viz.plot import (
    beta_of,
    plot_circle_angles,
    plot_gram_histogram,
    plot_run,
    plot_sphere,
    plot_statistics,
)

T, N = 6, 24


def synthetic_run(
    d: int, batch: int | None = None, sphere: bool = True, seed: int = 0
) -> xr.Dataset:
    """Tokens moving from random positions to 3 points, with the statistics of each frame."""
    rng = np.random.default_rng(seed)
    start = rng.normal(size=(N, d) if batch is None else (batch, N, d))
    targets = rng.normal(size=(3, d))[np.arange(N) % 3]
    s = np.linspace(0, 1, T).reshape(-1, *([1] * start.ndim))
    x = (1 - s) * start + s * targets
    if sphere:
        x /= np.linalg.norm(x, axis=-1, keepdims=True)
    lead = ("time",) if batch is None else ("time", "batch")
    flat = torch.from_numpy(x.reshape(-1, N, d))

    def per_frame(values: torch.Tensor) -> np.ndarray:
        return values.numpy().reshape(x.shape[:-2])

    data = {
        "x": ((*lead, "token", "dim"), x),
        "energy": (lead, per_frame(obs.log_interaction_energy(flat, 2.0))),  # stored as log E
        "clusters": (lead, per_frame(obs.cluster_count(flat, 1e-2))),
    }
    coords = {"time": np.linspace(0.0, 2.5, T), "token": np.arange(N), "dim": np.arange(d)}
    if batch is not None:
        coords["batch"] = np.arange(batch)
    return xr.Dataset(data, coords=coords, attrs={"config": json.dumps({"beta": 2.0, "d": d})})


def assert_png(path: Path) -> None:
    assert path.exists() and path.stat().st_size > 0
    with Image.open(path) as image:
        assert image.format == "PNG" and min(image.size) > 100


@pytest.mark.parametrize(
    ("d", "batch", "names"),
    [
        (2, None, ["circle_angles", "gram_histogram", "statistics"]),
        (3, None, ["sphere", "gram_histogram", "statistics"]),
        (5, 2, ["sphere", "gram_histogram", "statistics"]),
    ],
)
def test_plot_run_writes_every_applicable_figure(tmp_path: Path, d, batch, names) -> None:
    paths = plot_run(synthetic_run(d, batch), tmp_path / "figs")
    assert [p.name for p in paths] == [f"{name}.png" for name in names]
    for path in paths:
        assert_png(path)


def test_plot_run_without_statistics_or_config(tmp_path: Path) -> None:
    ds = synthetic_run(3)[["x"]]
    ds.attrs = {}
    paths = plot_run(ds, tmp_path)
    assert [p.name for p in paths] == ["sphere.png", "gram_histogram.png"]
    assert beta_of(ds) is None


def test_figures_have_titles_with_n_d_beta(tmp_path: Path) -> None:
    ds = synthetic_run(2)
    fig = plot_circle_angles(ds, path=tmp_path / "angles.png")
    assert isinstance(fig, Figure)
    title = fig.axes[0].get_title()
    assert "N=24" in title and "d=2" in title and "β=2" in title
    assert fig.axes[0].get_xlabel() == "time t"
    assert_png(tmp_path / "angles.png")


def test_circle_angles_lines_stay_continuous() -> None:
    fig = plot_circle_angles(synthetic_run(2))
    (lines,) = fig.axes[0].collections
    segments = lines.get_segments()
    assert 0 < len(segments) <= N * (T - 1)
    assert all(abs(seg[1, 1] - seg[0, 1]) < np.pi for seg in segments)
    low, high = fig.axes[0].get_ylim()
    assert high - low == pytest.approx(2 * np.pi)


def test_gram_histogram_figure_one_curve_per_time() -> None:
    fig = plot_gram_histogram(synthetic_run(3), time_indices=(0, 2, -1))
    labels = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert labels == ["t = 0", "t = 1", "t = 2.5"]


def test_statistics_one_panel_per_variable() -> None:
    fig = plot_statistics(synthetic_run(3, batch=2), batch=1)
    assert [ax.get_ylabel() for ax in fig.axes] == ["log E_β (energy)", "clusters"]


def test_euclidean_and_high_dimensional_sphere_plots(tmp_path: Path) -> None:
    assert_png(plot_run(synthetic_run(2, sphere=False), tmp_path)[0])
    fig = plot_sphere(synthetic_run(6), time_index=0)
    assert fig.axes[0].get_xlabel() == "PC 1"


def test_plot_errors_name_the_field() -> None:
    with pytest.raises(ConfigError, match="ds"):
        plot_circle_angles(synthetic_run(3))
    with pytest.raises(ConfigError, match="ds"):
        plot_sphere(synthetic_run(2))
    with pytest.raises(ConfigError, match="time_index"):
        plot_sphere(synthetic_run(3), time_index=T)
    with pytest.raises(ConfigError, match="batch"):
        plot_run(synthetic_run(3, batch=2), "unused", batch=2)
    with pytest.raises(ConfigError, match="ds"):
        plot_statistics(synthetic_run(3)[["x"]])


@pytest.mark.parametrize(("d", "batch"), [(2, None), (3, None), (4, 2)])
def test_animate_gif_has_one_frame_per_time(tmp_path: Path, d, batch) -> None:
    path = animate_run(synthetic_run(d, batch), tmp_path / "run.gif", fps=5, batch=0)
    assert path == tmp_path / "run.gif" and path.stat().st_size > 0
    with Image.open(path) as gif:
        assert gif.format == "GIF"
        assert gif.n_frames == T


def test_animate_euclidean_gif(tmp_path: Path) -> None:
    path = animate_run(synthetic_run(2, sphere=False), tmp_path / "flat.gif")
    with Image.open(path) as gif:
        assert gif.n_frames == T


@pytest.mark.parametrize("d", [2, 3])
def test_animate_mp4(tmp_path: Path, d: int) -> None:
    path = animate_run(synthetic_run(d), tmp_path / "run.mp4", fps=4)
    assert path.stat().st_size > 0
    frames, seconds = imageio_ffmpeg.count_frames_and_secs(str(path))
    assert frames == T
    assert seconds == pytest.approx(T / 4, abs=0.3)


@pytest.mark.parametrize("name", ["run.avi", "run"])
def test_animate_rejects_unknown_suffix(tmp_path: Path, name: str) -> None:
    with pytest.raises(ConfigError, match=r"path: .*\.gif or \.mp4"):
        animate_run(synthetic_run(2), tmp_path / name)
    assert not (tmp_path / name).exists()
