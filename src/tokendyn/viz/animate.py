"""Animations of a run's cloud over time: GIF (Pillow) or MP4 (ffmpeg from imageio-ffmpeg)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import imageio_ffmpeg
import matplotlib
import numpy as np
import xarray as xr
from matplotlib.animation import FFMpegWriter, MovieWriter, PillowWriter
from matplotlib.figure import Figure

from tokendyn.app.store import SIGNATURE
from tokendyn.errors import ConfigError
from tokendyn.viz.plot import (
    axis_labels_3d,
    basis_3d,
    describe,
    draw_cloud_3d,
    on_sphere,
    positions,
)


def animate_run(ds: xr.Dataset, path: str | Path, fps: int = 10, batch: int = 0) -> Path:
    """Write one frame per saved time of batch element `batch` to `path` (.gif or .mp4).

    d = 2: the tokens on the unit circle (a plain scatter for Euclidean clouds); d = 3: on the
    sphere; d > 3: projected onto the top-3 principal axes of all frames together. Returns path.
    """
    path = Path(path)
    writer, rc = _writer(path.suffix.lower(), fps)
    x = positions(ds, batch)  # (T, N, d)
    if x.shape[-1] < 2:
        raise ConfigError("ds", f"has d={x.shape[-1]}", "animate clouds with d ≥ 2")
    times = np.asarray(ds["time"].values, dtype=float)
    fig = Figure(figsize=(5, 5))
    draw = _scene_2d(fig, x) if x.shape[-1] == 2 else _scene_3d(fig, x)
    title = fig.axes[0].set_title("")
    path.parent.mkdir(parents=True, exist_ok=True)
    with matplotlib.rc_context(rc), writer.saving(fig, str(path), dpi=100):
        for k, t in enumerate(times):
            draw(k)
            title.set_text(f"{describe(ds)}\nt = {t:.3g}")
            writer.grab_frame()
    return path


def _writer(suffix: str, fps: int) -> tuple[MovieWriter, dict[str, str]]:
    """The movie writer for a file type, and the rc settings it needs while it writes (set in a
    context, never process-wide)."""
    if fps < 1:
        raise ConfigError("fps", f"is {fps}", "use an integer ≥ 1")
    if suffix == ".gif":
        return _SignedGif(fps=fps), {}
    if suffix == ".mp4":
        writer = FFMpegWriter(fps=fps, metadata={"comment": f"{SIGNATURE} movie"})
        return writer, {"animation.ffmpeg_path": imageio_ffmpeg.get_ffmpeg_exe()}
    raise ConfigError("path", f"unsupported file type {suffix!r}", "end the path in .gif or .mp4")


class _SignedGif(PillowWriter):
    """A GIF whose comment carries tokendyn's signature (so tokendyn may replace it later)."""

    def finish(self) -> None:
        self._frames[0].save(
            self.outfile,
            save_all=True,
            append_images=self._frames[1:],
            duration=int(1000 / self.fps),
            loop=0,
            comment=f"{SIGNATURE} movie",
        )


def _scene_2d(fig: Figure, x: np.ndarray) -> Callable[[int], None]:
    """Points in the plane, on a faint unit circle when the cloud lies on it."""
    ax = fig.add_subplot()
    if on_sphere(x):
        theta = np.linspace(0, 2 * np.pi, 200)
        ax.plot(np.cos(theta), np.sin(theta), color="0.8", linewidth=0.8)
        half = 1.15
    else:
        half = max(float(np.abs(x).max()), 1e-12) * 1.05
    ax.set(xlim=(-half, half), ylim=(-half, half), xlabel="x₀", ylabel="x₁", aspect="equal")
    points = ax.scatter(x[0, :, 0], x[0, :, 1], s=10, c="tab:blue")

    def draw(k: int) -> None:
        points.set_offsets(x[k])

    return draw


def _scene_3d(fig: Figure, x: np.ndarray) -> Callable[[int], None]:
    """Points in 3-D (top-3 principal axes for d > 3), on a faint wireframe sphere when on it."""
    p = x @ basis_3d(x)
    sphere = on_sphere(x)
    half = 1.05 if sphere else max(float(np.abs(p).max()), 1e-12) * 1.05
    ax = fig.add_subplot(projection="3d")
    labels = axis_labels_3d(x.shape[-1])
    points = draw_cloud_3d(ax, p[0], sphere=sphere, labels=labels, half=half)

    def draw(k: int) -> None:
        points._offsets3d = (p[k, :, 0], p[k, :, 1], p[k, :, 2])

    return draw
