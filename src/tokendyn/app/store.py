"""Results stores: xarray + zarr, written frame by frame while a run goes; netCDF export.

A run's store holds the Dataset of `integrate.frames_to_dataset` (variable `x`, coordinate
`time`, statistics) with the run's config as a JSON string in attrs["config"]. Frames are appended
along `time` as soon as they are saved, so a killed run keeps everything up to its last frame and
`--resume` continues from there.
"""

from __future__ import annotations

import json
import shutil
import warnings
from collections.abc import Mapping
from pathlib import Path

import xarray as xr

from tokendyn.app.simulate import frames_to_dataset
from tokendyn.engine.integrate import Frame
from tokendyn.errors import StoreError


class ZarrSink:
    """Appends each saved frame to a zarr store (creating it on the first frame)."""

    def __init__(
        self,
        path: str | Path,
        *,
        batched: bool,
        attrs: Mapping[str, str],
        positions: bool = False,
        append: bool = False,
    ) -> None:
        self.path = Path(path)
        self.batched, self.attrs, self.positions = batched, dict(attrs), positions
        self._exists = append

    def write(self, frame: Frame) -> None:
        ds = frames_to_dataset(
            [frame], batched=self.batched, attrs=self.attrs, positions=self.positions
        )
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", category=UserWarning)  # zarr v3 spec notes on strings
            if self._exists:
                ds.to_zarr(self.path, append_dim="time", consolidated=False)
            else:
                ds.to_zarr(self.path, mode="w", consolidated=False)
                self._exists = True


def prepare_new_store(path: str | Path, overwrite: bool) -> Path:
    """Refuse to clobber an existing store unless asked to."""
    p = Path(path)
    if p.exists():
        if not overwrite:
            raise StoreError(
                f"out: {p} already exists. Fix: add --resume to continue that run, "
                "--overwrite to replace it, or choose another --out path"
            )
        shutil.rmtree(p) if p.is_dir() else p.unlink()
    return p


def open_run(path: str | Path) -> xr.Dataset:
    """Open a run store (zarr directory or netCDF file) lazily, with clear errors."""
    p = Path(path)
    if not p.exists():
        raise StoreError(
            f"store: nothing at {p}. Fix: give the --out path of a finished or "
            "interrupted `tokendyn simulate` run"
        )
    try:
        if p.is_dir():
            ds = xr.open_zarr(p, consolidated=False)
        else:
            ds = xr.open_dataset(p, engine="h5netcdf")
    except Exception as err:  # zarr/netCDF raise many types for corrupt stores
        raise StoreError(
            f"store: {p} is not a readable tokendyn store ({type(err).__name__}: {err}). "
            "Fix: rerun the simulation with --overwrite"
        ) from None
    if "x" not in ds or "time" not in ds.coords:
        raise StoreError(
            f"store: {p} has no variable 'x' with coordinate 'time'. "
            "Fix: point at a store written by `tokendyn simulate`"
        )
    return ds


def _time_arrays(group) -> list:
    """Arrays of a zarr group whose first dimension is `time` (zarr v3 names or v2 attrs)."""
    out = []
    for _, array in group.arrays():
        names = getattr(array.metadata, "dimension_names", None) or array.attrs.get(
            "_ARRAY_DIMENSIONS"
        )
        if names and names[0] == "time":
            out.append(array)
    return out


def truncate_incomplete_frames(path: str | Path) -> int:
    """Make a store consistent after a kill in the middle of an append: every array along `time`
    is cut to the number of frames that all of them hold. Returns that number."""
    import zarr

    try:
        group = zarr.open_group(str(path), mode="r+")
    except Exception as err:
        raise StoreError(
            f"store: {path} is not a readable zarr store ({err}). Fix: rerun with --overwrite"
        ) from None
    arrays = _time_arrays(group)
    if not arrays:
        raise StoreError(f"store: {path} has no arrays along 'time'. Fix: rerun with --overwrite")
    complete = min(a.shape[0] for a in arrays)
    for array in arrays:
        if array.shape[0] != complete:
            array.resize((complete, *array.shape[1:]))
    return complete


def stored_config(ds: xr.Dataset) -> dict:
    try:
        return json.loads(ds.attrs["config"])
    except (KeyError, json.JSONDecodeError) as err:
        raise StoreError(
            "store: its attrs hold no readable 'config'. Fix: rerun with --overwrite"
        ) from err


def export_netcdf(ds: xr.Dataset, path: str | Path) -> Path:
    """Write a Dataset (e.g. a zarr run) to one netCDF4 file via h5netcdf."""
    p = Path(path)
    ds.load().to_netcdf(p, engine="h5netcdf")
    return p
