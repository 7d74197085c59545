"""Results stores: xarray + zarr, written frame by frame while a run goes; netCDF export; the
guards that keep tokendyn from replacing anything it did not write.

A run's store holds the Dataset of `simulate.frames_to_dataset` (variable `x`, coordinates `time`
and `step`, statistics) with the run's config as a JSON string in attrs["config"].

Write order (the resume guarantee). The first frame creates the store; every later frame is
appended array by array (resize, then write the frame's chunk), and only then is the frame
*committed* by rewriting the group's attrs with `frames_committed = k + 1`. A frame counts only
once committed: a run killed at any point leaves the committed frames whole, possibly followed by
uncommitted data that every reader ignores and `--resume` cuts off. Each chunk carries a CRC32C
checksum and every chunk is written even when it equals the fill value, so a deleted, emptied or
overwritten chunk is detected when the store is opened, never read as data.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import warnings
from collections.abc import Mapping
from pathlib import Path

import h5py
import numpy as np
import xarray as xr

from tokendyn.app.simulate import frames_to_dataset
from tokendyn.engine.integrate import Frame
from tokendyn.errors import StoreError, TokendynError

COMMITTED = "frames_committed"  # group attr: frames whose every variable is written
MARKER = ".tokendyn"  # file marking an output folder tokendyn made
SIGNATURE = "tokendyn"  # metadata tag in the figures and movies tokendyn writes
OWN_ATTRS = ("tokendyn_version", "config")  # a run store's own metadata


class StoreRepairWarning(UserWarning):
    """A store was read (or resumed) without its uncommitted trailing data."""


def _codecs() -> dict:
    from zarr.codecs import Crc32cCodec, ZstdCodec

    return {"compressors": (ZstdCodec(level=0), Crc32cCodec())}


class ZarrSink:
    """Writes each saved frame to a zarr store (creating it on the first frame) and commits it.

    `committed` frames are already in the store (resume) and `last_step` is the step of the last
    one: a frame with a step ≤ last_step (the resumed-from frame saved again) is not written twice.
    """

    def __init__(
        self,
        path: str | Path,
        *,
        batched: bool,
        attrs: Mapping[str, str],
        positions: bool = False,
        committed: int = 0,
        last_step: int = -1,
    ) -> None:
        self.path = Path(path)
        self.batched, self.attrs, self.positions = batched, dict(attrs), positions
        self.committed, self.last_step = committed, last_step
        self._group = None

    def write(self, frame: Frame) -> None:
        if frame.step <= self.last_step:
            return
        import zarr

        ds = frames_to_dataset(
            [frame], batched=self.batched, attrs=self.attrs, positions=self.positions
        )
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", category=UserWarning)  # zarr v3 spec notes on strings
            if self._group is None and self.committed == 0:
                ds.attrs[COMMITTED] = 0
                encoding = {name: _codecs() for name in ds.variables if "time" in ds[name].dims}
                ds.to_zarr(
                    self.path,
                    mode="w",
                    consolidated=False,
                    encoding=encoding,
                    write_empty_chunks=True,
                )
                self._group = zarr.open_group(str(self.path), mode="r+")
            else:
                if self._group is None:  # resuming: the new t_end's config, nothing committed
                    self._group = zarr.open_group(str(self.path), mode="r+")
                    self._group.update_attributes({**self.attrs, COMMITTED: self.committed})
                for name in _time_array_names(self._group):
                    array = self._group[name].with_config({"write_empty_chunks": True})
                    array.resize((self.committed + 1, *array.shape[1:]))
                    array[self.committed] = ds[name].values[0]
            self._group.update_attributes({COMMITTED: self.committed + 1})  # the commit
        self.committed += 1
        self.last_step = frame.step


def _time_array_names(group) -> list[str]:
    """Arrays of a zarr group whose first dimension is `time` (zarr v3 names or v2 attrs)."""
    out = []
    for name, array in group.arrays():
        names = getattr(array.metadata, "dimension_names", None) or array.attrs.get(
            "_ARRAY_DIMENSIONS"
        )
        if names and names[0] == "time":
            out.append(name)
    return sorted(out)


# ------------------------------------------------------------------------------------------------
# what tokendyn may replace


def _refuse_cwd(p: Path, what: str) -> None:
    here = Path.cwd().resolve()
    target = p.resolve()
    if target == here or target in here.parents:
        raise StoreError(
            f"out: {p} is the working directory or one above it, never replaced or filled. "
            f"Fix: give a new path for the {what}, e.g. --out run.zarr"
        )


def _is_partial(q: Path) -> bool:
    """A temporary file zarr writes before renaming it into place (left by a kill)."""
    return q.is_file() and not q.is_symlink() and q.name.endswith(".partial")


def _foreign_entries(p: Path) -> list[Path]:
    """Entries of a zarr v3 directory store that are not zarr metadata, chunks, or zarr's
    temporary files."""
    foreign = []
    for entry in p.iterdir():
        if entry.name == "zarr.json" or _is_partial(entry):
            continue
        if entry.is_dir() and not entry.is_symlink() and not any(entry.iterdir()):
            continue  # an array directory a kill left before its metadata
        if entry.is_symlink() or not entry.is_dir() or not (entry / "zarr.json").is_file():
            foreign.append(entry)
            continue
        for item in entry.iterdir():
            if (item.name == "zarr.json" and item.is_file()) or _is_partial(item):
                continue
            if item.name == "c" and item.is_dir() and not item.is_symlink():
                foreign += [
                    q
                    for q in item.rglob("*")
                    if not _is_partial(q)
                    and (q.is_symlink() or not q.name.isdigit() or not (q.is_file() or q.is_dir()))
                ]
                continue
            foreign.append(item)
    return foreign


def _group_attrs(p: Path) -> dict | None:
    """The attrs of the zarr v3 group at p, or None when p is not one."""
    try:
        meta = json.loads((p / "zarr.json").read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(meta, dict) or meta.get("node_type") != "group":
        return None
    attrs = meta.get("attributes")
    return attrs if isinstance(attrs, dict) else {}


def _is_empty(p: Path) -> bool:
    """Nothing there but, at most, the empty group a run's first write makes."""
    entries = [e for e in p.iterdir() if not _is_partial(e)]
    return not entries or ([e.name for e in entries] == ["zarr.json"] and _group_attrs(p) == {})


def check_own_store(p: Path) -> None:
    """Raise unless p is a run store tokendyn wrote (its metadata, nothing else inside) or an
    empty directory: the only things `--overwrite` and `--resume` may delete."""
    _refuse_cwd(p, "store")
    if p.is_symlink() or not p.is_dir():
        raise StoreError(
            f"out: {p} is not a tokendyn store (it is a file or a link). "
            "Fix: choose another --out path, or remove it yourself"
        )
    if _is_empty(p):
        return
    attrs = _group_attrs(p)
    missing = [key for key in OWN_ATTRS if key not in (attrs or {})]
    if attrs is None or missing:
        why = (
            "its zarr.json is not a readable zarr group"
            if attrs is None
            else f"its attrs lack {', '.join(missing)}"
        )
        raise StoreError(
            f"out: {p} is not a tokendyn store ({why}: not tokendyn's, or damaged). "
            "Fix: choose another --out path, or remove it yourself"
        )
    foreign = _foreign_entries(p)
    if foreign:
        raise StoreError(
            f"out: {p} is not a tokendyn store (it holds files tokendyn did not write: "
            f"{', '.join(str(f) for f in foreign[:3])}). Fix: move them out, or choose another "
            "--out path"
        )


def prepare_new_store(path: str | Path, overwrite: bool) -> Path:
    """Refuse to clobber an existing path unless asked to, and then only a tokendyn store."""
    p = check_writable(path)
    if p.exists() or p.is_symlink():
        if not overwrite:
            raise StoreError(
                f"out: {p} already exists. Fix: add --resume to continue that run, "
                "--overwrite to replace it, or choose another --out path"
            )
        check_own_store(p)
        shutil.rmtree(p)
    return p


def check_writable(path: str | Path, flag: str = "out") -> Path:
    """Refuse, before any work, an output path that cannot be made: one under a regular file, or
    whose nearest existing folder cannot be written (a test file is created and removed there, so
    read-only file systems and permissions count as they will for the real write)."""
    p = Path(path)
    base = p if p.is_dir() and not p.is_symlink() else p.parent
    while not base.exists() and base != base.parent:
        base = base.parent
    if not base.is_dir():
        raise StoreError(
            f"{flag}: {p} lies under {base}, which is a file, not a folder. "
            f"Fix: choose a path for --{flag} whose parent folders are folders"
        )
    try:
        with tempfile.TemporaryFile(dir=base):
            pass
    except OSError as err:
        raise StoreError(
            f"{flag}: cannot write in {base} ({err.strerror}). "
            f"Fix: choose a writable place for --{flag}, or change the folder's permissions"
        ) from None
    return p


def claim_folder(path: str | Path) -> Path:
    """Make `path` a folder tokendyn may write its files into: a new or empty folder (then marked
    with a `.tokendyn` file) or one it marked before. Anything else is refused."""
    p = Path(path)
    if p.exists() and (p.is_symlink() or not p.is_dir()):
        raise StoreError(f"out: {p} is a file, not a folder. Fix: give a new folder path for --out")
    check_writable(p)
    if p.is_dir() and any(p.iterdir()) and not (p / MARKER).is_file():
        raise StoreError(
            f"out: {p} is not a tokendyn output folder (it holds other files and no {MARKER} "
            "marker). Fix: give a new or empty folder for --out"
        )
    try:
        p.mkdir(parents=True, exist_ok=True)
        (p / MARKER).write_text("made by tokendyn; its files here may be replaced by tokendyn\n")
    except OSError as err:
        raise StoreError(
            f"out: cannot write to {p} ({err.strerror}). Fix: choose a writable folder"
        ) from None
    return p


def _hdf5_damage(p: Path) -> str | None:
    """Why `p` is not a readable HDF5 (netCDF-4) file, None if every object header and attribute
    reads. Checked with h5py before h5netcdf opens the file: an h5netcdf File whose opening fails
    halfway prints a traceback from its finaliser later."""
    if not h5py.is_hdf5(p):
        return "not an HDF5/netCDF-4 file"

    def read_attrs(_name: str, obj: h5py.HLObject) -> None:
        dict(obj.attrs)

    try:
        with h5py.File(p, "r") as f:
            dict(f.attrs)
            f.visititems(read_attrs)
    except Exception as err:  # h5py raises many types for corrupt files
        return f"{type(err).__name__}: {err}"
    return None


def _is_own_file(p: Path) -> bool:
    suffix = p.suffix.lower()
    try:
        if suffix == ".nc":
            if _hdf5_damage(p) is not None:
                return False
            with xr.open_dataset(p, engine="h5netcdf") as ds:
                return all(key in ds.attrs for key in OWN_ATTRS) or "tokendyn" in str(
                    ds.attrs.get("source", "")
                )
        if suffix in (".png", ".gif"):
            from PIL import Image

            with Image.open(p) as image:
                tag = image.info.get("Software") or image.info.get("comment") or ""
            tag = tag.decode(errors="replace") if isinstance(tag, bytes) else str(tag)
            return tag.startswith(SIGNATURE)
        if suffix == ".mp4":
            with p.open("rb") as f:
                head = f.read(1 << 16)
                f.seek(max(0, p.stat().st_size - (1 << 16)))
                tail = f.read()
            return f"{SIGNATURE} ".encode() in head + tail
    except Exception:  # an unreadable file is not one tokendyn recognises
        return False
    return False


def claim_file(path: str | Path) -> Path:
    """Allow writing `path` only if nothing is there or it is a file tokendyn wrote (a netCDF
    export with its metadata, a PNG/GIF/MP4 carrying its signature)."""
    p = Path(path)
    if p.is_symlink() or (p.exists() and (p.is_dir() or not _is_own_file(p))):
        raise StoreError(
            f"out: {p} already exists and is not a file tokendyn wrote. "
            "Fix: choose another path, or remove it yourself"
        )
    return check_writable(p)


# ------------------------------------------------------------------------------------------------
# reading and repairing


def _damaged(p: Path, what: str) -> StoreError:
    return StoreError(
        f"store: {p} is damaged ({what}). Fix: its frames cannot be trusted; rerun the "
        "simulation with --overwrite (or restore the store from a copy)"
    )


def _inspect(p: Path, mode: str = "r"):
    """Open the zarr group at p, check its metadata and chunks; returns (group, time-array names,
    committed frames, names of arrays holding more than the committed frames)."""
    import zarr

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", category=UserWarning)
            group = zarr.open_group(str(p), mode=mode)
            names = _time_array_names(group)
    except Exception as err:  # zarr raises many types for corrupt metadata
        raise StoreError(
            f"store: {p} is not a readable tokendyn store ({type(err).__name__}: "
            f"{str(err).splitlines()[0] if str(err) else ''}). "
            "Fix: give the --out path of a `tokendyn simulate` run"
        ) from None
    missing = [name for name in ("x", "time", "step") if name not in names]
    if missing:
        raise _damaged(p, f"no array {', '.join(missing)} along time")
    lengths = {name: group[name].shape[0] for name in names}
    committed = group.attrs.get(COMMITTED, min(lengths.values()))  # older stores: shortest
    if not isinstance(committed, int) or committed < 0:
        raise _damaged(p, f"{COMMITTED} = {committed!r} is not a frame count")
    short = {n: k for n, k in lengths.items() if k < committed}
    if short:
        name, k = next(iter(short.items()))
        raise _damaged(p, f"'{name}' holds {k} frames but {committed} are committed")
    for name in names:
        array = group[name]
        per = array.chunks[0]
        for key in _chunk_keys(array, -(-committed // per)):
            if not (p / name / key).is_file():
                raise _damaged(p, f"chunk {name}/{key} is missing")
    longer = sorted(n for n, k in lengths.items() if k > committed)
    return group, names, committed, longer


def _chunk_keys(array, n_time_chunks: int) -> list[str]:
    grid = array.cdata_shape[1:]
    return [
        array.metadata.encode_chunk_key((t, *rest))
        for t in range(n_time_chunks)
        for rest in np.ndindex(*grid)
    ]


def _verify_chunks(p: Path, group, names: list[str], committed: int) -> None:
    """Decode every committed chunk of every time-array (one chunk in memory at a time). `x` must
    be finite, except on the padding of a model trace (tokens at or past each sequence's
    `length`, NaN by design)."""
    padding = None
    if "length" in group:  # a model trace: x is (time, batch, token, dim), right-padded with NaN
        n_tokens = group["x"].shape[-2]
        lengths = np.atleast_1d(np.asarray(group["length"][...]))
        padding = np.arange(n_tokens)[None, :] >= lengths[:, None]  # (batch, token)
    for name in names:
        array = group[name]
        per = array.chunks[0]
        for start in range(0, committed, per):
            try:
                block = array[start : min(start + per, committed)]
            except Exception as err:  # codec/checksum failures have many types
                raise _damaged(
                    p, f"'{name}' frames {start}… cannot be decoded: {type(err).__name__}"
                ) from None
            finite = np.isfinite(block)
            if name == "x" and padding is not None:  # (time, [batch,] token, dim)
                finite |= (
                    padding[None, :, :, None] if finite.ndim == 4 else padding[0][None, :, None]
                )
            if name == "x" and not finite.all():
                raise _damaged(p, f"'x' holds NaN or Inf at frames {start}…")


def repair_store(path: str | Path) -> int:
    """Before resuming: check the store, cut every array to the committed frames (with a warning
    when something is cut) and return their number. Refuses a damaged or foreign store."""
    p = Path(path)
    check_own_store(p)
    for partial in [q for q in p.rglob("*.partial") if _is_partial(q)]:
        partial.unlink()
    if _is_empty(p) or (_group_attrs(p) or {}).get(COMMITTED) == 0:
        return 0
    group, _, committed, longer = _inspect(p, mode="r+")
    if longer:
        warnings.warn(
            f"store: {p}: dropped the uncommitted data of a frame the killed run had begun "
            f"({', '.join(longer)}); resuming after frame {committed}",
            StoreRepairWarning,
            stacklevel=2,
        )
        for name in longer:
            array = group[name]
            array.resize((committed, *array.shape[1:]))
    return committed


def open_run(path: str | Path) -> xr.Dataset:
    """Open a run store (zarr directory or netCDF file) after checking it is whole: every
    committed chunk present and decodable, all time-arrays as long as the committed frames,
    step/time coordinates increasing with time = step·dt, a config that parses. Uncommitted trailing
    data (a run killed mid-frame, or one still writing) is left out with a warning. Anything else
    is refused with one line naming the damage."""
    p = Path(path)
    if not p.exists():
        raise StoreError(
            f"store: nothing at {p}. Fix: give the --out path of a finished or "
            "interrupted `tokendyn simulate` run"
        )
    if p.is_dir():
        ds = _open_zarr(p)
    else:
        damage = _hdf5_damage(p)
        if damage is None:
            try:
                ds = xr.open_dataset(p, engine="h5netcdf")
            except Exception as err:  # h5py raises many types for corrupt files
                damage = f"{type(err).__name__}: {err}"
        if damage is not None:
            raise StoreError(
                f"store: {p} is not a readable tokendyn store ({damage}). "
                "Fix: give a store written by `tokendyn simulate` or `tokendyn export`"
            )
        if "x" not in ds or "time" not in ds.coords or "step" not in ds.coords:
            raise StoreError(
                f"store: {p} has no variable 'x' with coordinates 'time' and 'step'. "
                "Fix: point at a store written by `tokendyn simulate`"
            )
        for name, variable in ds.variables.items():
            try:
                variable.load()
            except Exception as err:
                raise _damaged(p, f"'{name}' cannot be read: {type(err).__name__}") from None
        if not np.isfinite(ds["x"].values).all():
            raise _damaged(p, "'x' holds NaN or Inf")
    _check_coordinates(p, ds)
    return ds


def _open_zarr(p: Path) -> xr.Dataset:
    group, names, committed, longer = _inspect(p)
    if committed == 0:
        raise StoreError(
            f"store: {p} holds no complete frame (the run was stopped before its first). "
            "Fix: rerun the simulation with --resume or --overwrite"
        )
    _verify_chunks(p, group, names, committed)
    if longer:
        warnings.warn(
            f"store: {p}: reading its {committed} committed frames; the uncommitted data of a "
            f"frame being written or cut off by a kill ({', '.join(longer)}) is left out",
            StoreRepairWarning,
            stacklevel=3,
        )
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", category=UserWarning)
            ds = xr.open_zarr(p, consolidated=False, drop_variables=longer)
            for name in longer:  # opened alone: xarray refuses dimensions of unequal length
                others = [n for n in names if n != name]
                alone = xr.open_zarr(p, consolidated=False, drop_variables=others)
                part = alone[name].isel(time=slice(0, committed)).variable
                coord = name in ("time", "step")
                ds = ds.assign_coords({name: part}) if coord else ds.assign({name: part})
    except Exception as err:
        raise StoreError(
            f"store: {p} is not a readable tokendyn store ({type(err).__name__}: {err}). "
            "Fix: give the --out path of a `tokendyn simulate` run"
        ) from None
    ds = ds.isel(time=slice(0, committed))
    ds.attrs.pop(COMMITTED, None)
    return ds


def _check_coordinates(p: Path, ds: xr.Dataset) -> None:
    """step starts at 0 and increases; time = step·dt with the stored config's dt."""
    from tokendyn.app.config import make_config

    try:
        cfg = make_config(**stored_config(ds))
    except TokendynError as err:
        raise _damaged(p, f"its config attribute does not parse: {err}") from None
    step = np.asarray(ds["step"].values)
    time = np.asarray(ds["time"].values)
    if step.dtype.kind not in "iu" or step.size == 0 or step[0] != 0:
        raise _damaged(p, f"'step' starts at {step[:1].tolist()} instead of [0]")
    if (np.diff(step) <= 0).any():
        bad = int(np.argmax(np.diff(step) <= 0)) + 1
        raise _damaged(p, f"'step' does not increase at frame {bad} ({step[bad - 1]}, {step[bad]})")
    if step[-1] > cfg.n_steps:
        raise _damaged(p, f"'step' reaches {step[-1]} beyond the config's {cfg.n_steps} steps")
    if not np.array_equal(time, step * cfg.dt):
        bad = int(np.argmax(time != step * cfg.dt))
        raise _damaged(
            p, f"'time' at frame {bad} is {time[bad]!r}, not step·dt = {step[bad] * cfg.dt!r}"
        )


def stored_config(ds: xr.Dataset) -> dict:
    try:
        config = json.loads(ds.attrs["config"])
    except (KeyError, TypeError, json.JSONDecodeError) as err:
        raise StoreError(
            "store: its attrs hold no readable 'config'. Fix: rerun with --overwrite"
        ) from err
    if not isinstance(config, dict):
        raise StoreError("store: its 'config' attr is not a table. Fix: rerun with --overwrite")
    return config


def export_netcdf(ds: xr.Dataset, path: str | Path) -> Path:
    """Write a Dataset (e.g. a zarr run) to one netCDF4 file via h5netcdf, replacing only a file
    tokendyn wrote; written to a temporary name first so a kill never leaves half a file."""
    p = claim_file(path)
    partial = p.with_name(f".{p.name}.partial")
    try:
        ds.load().to_netcdf(partial, engine="h5netcdf")
        os.replace(partial, p)
    except OSError as err:
        partial.unlink(missing_ok=True)
        raise StoreError(
            f"out: cannot write {p} ({err.strerror}). Fix: choose a writable path"
        ) from None
    return p
