"""The fused kernel's cache loads only what it built: planted, tampered or exposed files never run.

Builds use a fast flag set (-O0: a different cache name, the same checks) so each one takes well
under a second; the kernel's results are compared against the dense reference.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch

from tokendyn.engine.kernels import DenseBackend, TiledBackend, fused

pytestmark = pytest.mark.skipif(shutil.which("cc") is None, reason="needs a C compiler (cc)")

PLANT = r"""
#include <stdio.h>
__attribute__((constructor)) static void planted(void) {
    FILE *f = fopen(MARKER, "w");
    if (f) { fputs("planted code ran\n", f); fclose(f); }
}
"""


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """A fresh private cache directory in TOKENDYN_CACHE, fast build flags, load() recomputed."""
    directory = tmp_path / "cache"
    monkeypatch.setenv("TOKENDYN_CACHE", str(directory))
    monkeypatch.delenv("TOKENDYN_NO_FUSED", raising=False)
    monkeypatch.setattr(fused, "_FLAGS", ["-O0", "-fPIC", "-shared"])
    fused.load.cache_clear()
    yield directory
    fused.load.cache_clear()  # the rest of the suite loads the real cache again


def _plant(directory: Path, marker: Path, *, forge_record: bool) -> Path:
    """Compile a working kernel plus a constructor that writes `marker`, under the expected name."""
    directory.mkdir(parents=True, exist_ok=True)
    source = directory / "plant.c"
    source.write_text(PLANT)
    target = directory / fused._library_name()
    command = ["cc", "-O0", "-fPIC", "-shared", f'-DMARKER="{marker}"', "-o", str(target)]
    subprocess.run([*command, str(fused.SOURCE), str(source), "-lm"], check=True)
    if forge_record:
        digest = hashlib.sha256(target.read_bytes()).hexdigest()
        fused._record(target).write_text(digest + "\n")
    return target


def _kernel_works() -> None:
    g = torch.Generator().manual_seed(0)
    q, k = torch.randn(2, 1, 300, 5, generator=g, dtype=torch.float64)
    got = TiledBackend().attend(q, k, k)
    ref = DenseBackend().attend(q, k, k)
    assert (got.out - ref.out).abs().max() < 1e-12


def _recorded(path: Path) -> str:
    return fused._record(path).read_text().strip()


def test_planted_library_without_a_valid_record_is_rebuilt_not_loaded(cache, tmp_path):
    marker = tmp_path / "marker"
    planted = _plant(cache, marker, forge_record=False)
    planted_bytes = planted.read_bytes()
    assert fused.load() is not None
    _kernel_works()
    assert not marker.exists()
    assert planted.read_bytes() != planted_bytes  # replaced by a fresh build
    assert hashlib.sha256(planted.read_bytes()).hexdigest() == _recorded(planted)


def test_group_writable_cache_is_refused_even_with_a_forged_record(cache, tmp_path):
    """Whoever can write the directory can also write the record: such a directory is avoided."""
    marker = tmp_path / "marker"
    planted = _plant(cache, marker, forge_record=True)
    for mode in (0o770, 0o757):
        cache.chmod(mode)
        fused.load.cache_clear()
        with pytest.warns(RuntimeWarning, match="writable by group or others"):
            assert fused.load() is not None
        _kernel_works()
        assert not marker.exists()
    # The private temporary build left nothing behind in the refused directory.
    assert sorted(p.name for p in cache.iterdir()) == sorted(
        ["plant.c", planted.name, fused._record(planted).name]
    )


@pytest.mark.skipif(not hasattr(os, "getuid") or os.getuid() != 0, reason="chown needs root")
def test_cache_owned_by_another_user_is_refused(cache, tmp_path):
    marker = tmp_path / "marker"
    _plant(cache, marker, forge_record=True)
    os.chown(cache, 65534, 65534)
    for path in cache.iterdir():
        os.chown(path, 65534, 65534)
    with pytest.warns(RuntimeWarning, match="owned by uid 65534"):
        assert fused.load() is not None
    _kernel_works()
    assert not marker.exists()


def test_library_writable_by_others_is_rebuilt(cache, tmp_path):
    """A library file (with a correct record) that others could rewrite is not loaded."""
    marker = tmp_path / "marker"
    planted = _plant(cache, marker, forge_record=True)
    planted.chmod(0o777)
    assert fused.load() is not None
    assert not marker.exists()
    assert hashlib.sha256(planted.read_bytes()).hexdigest() == _recorded(planted)
    assert planted.stat().st_mode & 0o022 == 0


def test_tampered_library_is_rebuilt(cache):
    assert fused.load() is not None
    path = cache / fused._library_name()
    good = path.read_bytes()
    tampered = bytearray(good)
    tampered[len(tampered) // 2] ^= 0xFF
    # A new file renamed over the name, as any writer of a library file does: writing into the
    # file in place would also change the pages this process has mapped from it (the library
    # loaded above), and the process would crash running them.
    replacement = path.with_name(path.name + ".tampered")
    replacement.write_bytes(bytes(tampered))
    replacement.chmod(0o700)
    os.replace(replacement, path)
    fused.load.cache_clear()
    assert fused.load() is not None
    _kernel_works()
    rebuilt = path.read_bytes()
    assert rebuilt != bytes(tampered)
    assert hashlib.sha256(rebuilt).hexdigest() == _recorded(path)


def test_symlink_under_the_library_name_is_not_followed(cache, tmp_path):
    marker = tmp_path / "marker"
    elsewhere = _plant(tmp_path / "elsewhere", marker, forge_record=True)
    cache.mkdir()
    (cache / elsewhere.name).symlink_to(elsewhere)
    fused._record(cache / elsewhere.name).write_text(fused._record(elsewhere).read_text())
    assert fused.load() is not None
    assert not marker.exists()
    assert not (cache / elsewhere.name).is_symlink()


def test_concurrent_first_use_builds_once(cache, monkeypatch):
    """Builders racing on an empty cache: one compiles, the others wait and load its result."""
    builds, real_compile = [], fused._compile
    start = threading.Barrier(4)

    def counting_compile(target: Path) -> None:
        builds.append(target)
        real_compile(target)

    def first_use(_: int) -> object:
        start.wait()
        return fused._load_from(cache)

    monkeypatch.setattr(fused, "_compile", counting_compile)
    cache.mkdir(mode=0o700)
    with ThreadPoolExecutor(4) as pool:
        libs = list(pool.map(first_use, range(4)))
    assert len(builds) == 1 and all(lib is not None for lib in libs)
    assert [p.name for p in cache.iterdir() if p.name.startswith(".build-")] == []


def test_no_compiler_falls_back_with_one_warning(cache, monkeypatch):
    monkeypatch.setenv("CC", str(cache / "no-such-compiler"))
    with pytest.warns(RuntimeWarning, match="fused kernel: not available"):
        assert fused.load() is None
    assert not fused.available()  # cached: no second warning, no second attempt
    _kernel_works()  # the tiled backend's torch block loop


def test_a_second_load_gets_its_own_library(cache, monkeypatch):
    """Another build loaded later in the same process is that build, not the first library again
    (loading through a reused /proc/self/fd/N name used to hand back the earlier library: after
    this module's -O0 builds, the rest of a test run computed with unoptimised kernels)."""
    first = fused.load()
    monkeypatch.setattr(fused, "_FLAGS", ["-O1", "-fPIC", "-shared"])  # another library name
    fused.load.cache_clear()
    second = fused.load()
    assert first is not None and second is not None
    assert second._handle != first._handle
    _kernel_works()
