"""Build, cache and call the fused C kernel (_fused.c) through ctypes.

The shared library is compiled on first use with the system C compiler (``cc``), once per machine
and source version, into ``$TOKENDYN_CACHE`` (default ``~/.cache/tokendyn``). Calls release the GIL,
so row ranges run in parallel Python threads (as many as the work is worth: threads.py). If no
compiler is available the tiled backend falls back to its pure-torch block loop (one warning).

The cache is trusted only as far as it is checked, because loading a library runs its code:
- the directory must be owned by this user and not writable by group or others; otherwise it is
  refused (one warning) and the library is built in a private temporary directory instead;
- the library is loaded only if it is a regular file owned by this user, not writable by group or
  others, whose SHA-256 equals the one recorded at build time in ``<name>.sha256`` beside it (the
  name itself carries a hash of the source, the compiler flags and the host); anything else is
  rebuilt, never loaded. The bytes hashed are the bytes loaded (one open file, ``/proc/self/fd``);
- builds go to a temporary name and are renamed into place atomically, under an exclusive file
  lock, so processes starting together build once and never see a half-written library.
"""

from __future__ import annotations

import ctypes
import hashlib
import itertools
import os
import platform
import shutil
import stat
import subprocess
import tempfile
import threading
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from functools import cache
from pathlib import Path
from typing import Any, NamedTuple

import torch

from tokendyn.engine.kernels.threads import run_jobs, workers_for

try:
    import fcntl
except ImportError:  # not POSIX: atomic renames still keep half-written files invisible
    fcntl = None  # type: ignore[assignment]

SOURCE = Path(__file__).with_name("_fused.c")
# The parts of -ffast-math that vectorise reductions, but not -ffast-math itself: that links
# crtfastmath.o, which would switch the whole Python process to flush-subnormals-to-zero.
_FLAGS = [
    "-O3",
    "-fno-math-errno",
    "-fno-trapping-math",
    "-fno-signed-zeros",
    "-fassociative-math",
    "-freciprocal-math",
    "-ffinite-math-only",
    "-fPIC",
    "-shared",
    "-pthread",
    "-mprefer-vector-width=512",
]
_BUILD_LOCK = threading.Lock()
_LOADED_FDS: list[int] = []  # descriptors of the loaded libraries (see _open_verified)
MAX_DIM = 512


def cache_dir() -> Path:
    return Path(os.environ.get("TOKENDYN_CACHE", Path.home() / ".cache" / "tokendyn"))


def _flags() -> list[str]:
    """The compiler flags for this machine (the vector-width hint exists on x86 only).

    ``-march`` is ``native`` unless ``TOKENDYN_FUSED_MARCH`` names another target (e.g.
    ``haswell`` to build and time the AVX2 code on an AVX-512 machine); the flags are part of the
    library's cache key, so each target gets its own library.
    """
    x86 = platform.machine() in ("x86_64", "AMD64")
    march = f"-march={os.environ.get('TOKENDYN_FUSED_MARCH') or 'native'}"
    return [march, *(f for f in _FLAGS if x86 or f != "-mprefer-vector-width=512")]


def _library_name() -> str:
    """fused-<arch>-<key>.so with key = SHA-256(source, flags, host): -march=native is per host."""
    key = hashlib.sha256(
        SOURCE.read_bytes() + " ".join(_flags()).encode() + platform.node().encode()
    )
    return f"fused-{platform.machine()}-{key.hexdigest()[:16]}.so"


def _record(path: Path) -> Path:
    return path.with_name(path.name + ".sha256")


def _not_private(st: os.stat_result) -> str | None:
    """Why a file or directory with status `st` is not private to this user (None if it is)."""
    getuid = getattr(os, "getuid", None)
    if getuid is None:
        return "on a system where its owner cannot be checked"
    if st.st_uid != getuid():
        return f"owned by uid {st.st_uid}, not by this user (uid {getuid()})"
    if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        return f"writable by group or others (mode {stat.S_IMODE(st.st_mode):o})"
    return None


def _directory_problem(directory: Path) -> str | None:
    """Create `directory` (mode 700) if missing; why it may not hold the library, None if it may."""
    try:
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        st = directory.stat()
    except OSError as error:
        return f"not usable ({error.strerror})"
    if not stat.S_ISDIR(st.st_mode):
        return "not a directory"
    return _not_private(st)


def _open_private(path: Path) -> int | None:
    """A read-only descriptor of `path` if it is a regular file private to this user, else None.

    The final component is not followed if it is a symbolic link; the checks are made on the open
    file, so a file swapped in afterwards is never the one read.
    """
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    except OSError:
        return None
    st = os.fstat(fd)
    if stat.S_ISREG(st.st_mode) and _not_private(st) is None:
        return fd
    os.close(fd)
    return None


def _read_fd(fd: int) -> bytes:
    with open(fd, "rb", closefd=False) as f:
        return f.read()


def _open_verified(path: Path) -> ctypes.CDLL | None:
    """Load `path` only if it and its record are private to this user and its SHA-256 matches."""
    record_fd = _open_private(_record(path))
    if record_fd is None:
        return None
    try:
        recorded = _read_fd(record_fd).decode("ascii", "replace").strip()
    finally:
        os.close(record_fd)
    fd = _open_private(path)
    if fd is None:
        return None
    if hashlib.sha256(_read_fd(fd)).hexdigest() != recorded:
        os.close(fd)
        return None
    # Load the very file just hashed: its descriptor, not its name, which could be replaced. The
    # descriptor stays open while the process lives (a loaded library is never unloaded): the
    # dynamic loader knows a library by the name it was opened with, so a later load through a
    # reused /proc/self/fd/N would be handed the earlier library instead of this one.
    via_fd = Path(f"/proc/self/fd/{fd}")
    try:
        lib = ctypes.CDLL(str(via_fd if via_fd.exists() else path))
    except OSError:
        os.close(fd)
        raise
    _LOADED_FDS.append(fd)
    return lib


@contextmanager
def _exclusive(path: Path) -> Iterator[None]:
    """Hold an exclusive lock on `<path>.lock` (between processes and between threads)."""
    if fcntl is None:
        yield
        return
    fd = os.open(
        path.with_name(path.name + ".lock"),
        os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0),
        0o600,
    )
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the lock


def _compile(target: Path) -> None:
    """Compile SOURCE to `target` and record its SHA-256 beside it; both appear atomically."""
    compiler = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        raise OSError("no C compiler (cc/gcc) on PATH and CC is not set")
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=".build-") as tmp:
        built, record = Path(tmp) / target.name, Path(tmp) / _record(target).name
        subprocess.run(
            [compiler, *_flags(), "-o", str(built), str(SOURCE), "-lm"],
            check=True,
            capture_output=True,
            text=True,
        )
        built.chmod(0o700)  # whatever the umask: the library must not be writable by others
        record.write_text(hashlib.sha256(built.read_bytes()).hexdigest() + "\n")
        record.chmod(0o600)
        os.replace(record, _record(target))
        os.replace(built, target)


def _load_from(directory: Path) -> ctypes.CDLL:
    """The verified library in `directory` (a private one), building it there if needed."""
    path = directory / _library_name()
    lib = _open_verified(path)
    if lib is None:
        with _exclusive(path):
            lib = _open_verified(path)  # another process may have built it meanwhile
            if lib is None:
                _compile(path)
                lib = _open_verified(path)
    if lib is None:
        raise OSError(f"{path} changed between its build and its verification")
    return lib


def _open_library() -> ctypes.CDLL:
    """The library from the cache directory, or from a private temporary one if that is unsafe."""
    directory = cache_dir()
    problem = _directory_problem(directory)
    if problem is None:
        return _load_from(directory)
    warnings.warn(
        f"TOKENDYN_CACHE: {directory} is {problem}, so the fused kernel is not loaded from it "
        "(it is built in a private temporary directory for this process). Fix: point "
        "TOKENDYN_CACHE at a directory of your own that only you can write (chmod go-w).",
        RuntimeWarning,
        stacklevel=2,
    )
    with tempfile.TemporaryDirectory(prefix="tokendyn-") as tmp:
        return _load_from(Path(tmp))  # a loaded library stays mapped once its file is removed


@cache
def load() -> ctypes.CDLL | None:
    """The compiled library, or None if it cannot be built (TOKENDYN_NO_FUSED=1 disables it)."""
    if os.environ.get("TOKENDYN_NO_FUSED"):
        return None
    with _BUILD_LOCK:
        try:
            lib = _open_library()
        except (OSError, subprocess.CalledProcessError) as error:
            failed = isinstance(error, subprocess.CalledProcessError) and error.stderr
            reason = error.stderr.strip().splitlines()[0] if failed else str(error)
            warnings.warn(
                f"fused kernel: not available ({reason}); the tiled backend uses its torch block "
                "loop instead. Fix: install a C compiler (cc) or set CC; TOKENDYN_NO_FUSED=1 "
                "silences this.",
                RuntimeWarning,
                stacklevel=2,
            )
            return None
    pointer, i64, c_int = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int
    for suffix, scalar in (("f32", ctypes.c_float), ("f64", ctypes.c_double)):
        signatures = {
            "attend": [pointer] * 5 + [i64] * 6 + [c_int, c_int, scalar] + [pointer] * 2,
            "attend_batch": [pointer] * 5 + [i64] * 8 + [c_int, c_int, scalar] + [pointer] * 2,
            "attend_bwd": [pointer] * 5 + [i64] * 5 + [c_int, c_int, scalar] + [pointer] * 7,
            "attend_bwd_batch": [pointer] * 5 + [i64] * 8 + [c_int, c_int, scalar] + [pointer] * 7,
            "lean_steps": [pointer]
            + [i64] * 6
            + [pointer] * 3
            + [c_int] * 4
            + [ctypes.c_double, i64, pointer, pointer, c_int],
        }
        for name, argtypes in signatures.items():
            fn = getattr(lib, f"tokendyn_{name}_{suffix}")
            fn.restype = c_int if name == "lean_steps" else None  # the threads that ran
            fn.argtypes = argtypes
        exp_fn = getattr(lib, f"tokendyn_exp_{suffix}")
        exp_fn.restype, exp_fn.argtypes = None, [pointer, pointer, i64]
        ceiling_fn = getattr(lib, f"tokendyn_ceiling_{suffix}")
        ceiling_fn.restype, ceiling_fn.argtypes = i64, [i64, i64, pointer]
    return lib


def available() -> bool:
    return load() is not None


def _pointer(t: torch.Tensor | None) -> int | None:
    return None if t is None else t.data_ptr()


def supports(q: torch.Tensor, v: torch.Tensor) -> bool:
    return (
        q.device.type == "cpu"
        and q.dtype in (torch.float32, torch.float64)
        and max(q.shape[-1], v.shape[-1]) <= MAX_DIM
        and available()
    )


class _Prepared(NamedTuple):
    """Kernel-layout inputs: q (B,Nq,dk), k_t = kᵀ (B,dk,Nk), v_t = vᵀ (B,dv,Nk) contiguous;
    the key bias (1 or B, Nk) and byte mask (1 or B, Nq, Nk) with their per-cloud strides
    (0 = shared)."""

    q: torch.Tensor
    k_t: torch.Tensor
    v_t: torch.Tensor
    kb: torch.Tensor | None
    mb: torch.Tensor | None
    kb_stride: int
    mb_stride: int


def _prepare(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    key_bias: torch.Tensor | None,
    mask: torch.Tensor | None,
) -> _Prepared:
    Nq, Nk = q.shape[1], k.shape[1]
    # A bias or mask shared by every cloud is passed once, with stride 0.
    kb = None if key_bias is None else key_bias.to(q.dtype).reshape(-1, Nk).contiguous()
    mb = None if mask is None else mask.to(torch.uint8).reshape(-1, Nq, Nk).contiguous()
    return _Prepared(
        q.contiguous(),
        k.transpose(1, 2).contiguous(),
        v.transpose(1, 2).contiguous(),
        kb,
        mb,
        0 if kb is None or kb.shape[0] == 1 else Nk,
        0 if mb is None or mb.shape[0] == 1 else Nq * Nk,
    )


def _batch_pointers(p: _Prepared) -> tuple[int | None, ...]:
    """(q, kT, vT, key bias, mask) pointers of the whole batch."""
    return (p.q.data_ptr(), p.k_t.data_ptr(), p.v_t.data_ptr(), _pointer(p.kb), _pointer(p.mb))


def _cloud_pointers(p: _Prepared, b: int) -> tuple[int | None, ...]:
    """(q, kT, vT, key bias, mask) pointers of cloud b."""
    return (
        p.q[b].data_ptr(),
        p.k_t[b].data_ptr(),
        p.v_t[b].data_ptr(),
        None if p.kb is None else p.kb.data_ptr() + b * p.kb_stride * p.kb.element_size(),
        None if p.mb is None else p.mb.data_ptr() + b * p.mb_stride,
    )


def _row_chunks(B: int, Nq: int, causal: bool, workers: int) -> list[tuple[int, int, int]]:
    """(cloud, first row, end row) pieces when there are fewer clouds than threads. Causal rows
    have unequal cost, so many small chunks balance the threads; otherwise one chunk per thread
    and cloud."""
    pieces = 8 * workers if causal else max(1, -(-workers // B))
    chunk = max(4, -(-Nq // pieces))
    return [(b, start, min(Nq, start + chunk)) for b in range(B) for start in range(0, Nq, chunk)]


def attend(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    key_bias: torch.Tensor | None,
    mask: torch.Tensor | None,
    causal: bool,
    mode: int,
    sigmoid_bias: float,
    need_lse: bool,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Run the fused kernel on batched inputs q (B,Nq,dk), k (B,Nk,dk), v (B,Nk,dv).

    mask: bool (Nq,Nk) or (B,Nq,Nk) or None. Returns (out (B,Nq,dv), lse (B,Nq) or None).
    """
    lib = load()
    assert lib is not None
    B, Nq, dk = q.shape
    Nk, dv = k.shape[1], v.shape[2]
    dtype = q.dtype
    suffix = "f32" if dtype == torch.float32 else "f64"
    p = _prepare(q, k, v, key_bias, mask)
    out = torch.empty(B, Nq, dv, dtype=dtype)
    lse = torch.empty(B, Nq, dtype=dtype) if (need_lse and mode == 0) else None
    workers = workers_for(B * Nq * Nk)
    if workers <= B:
        # Whole clouds per job: one C call per thread handles a contiguous range of the batch.
        fn_batch = getattr(lib, f"tokendyn_attend_batch_{suffix}")
        bounds = [B * i // workers for i in range(workers + 1)]
        common = _batch_pointers(p)
        tail = (p.kb_stride, p.mb_stride, int(causal), mode, sigmoid_bias)
        jobs = [
            (fn_batch, (*common, Nq, Nk, dk, dv, b0, b1, *tail, out.data_ptr(), _pointer(lse)))
            for b0, b1 in itertools.pairwise(bounds)
            if b1 > b0
        ]
    else:
        fn = getattr(lib, f"tokendyn_attend_{suffix}")
        jobs = [
            (
                fn,
                (
                    *_cloud_pointers(p, b),
                    Nk,
                    dk,
                    dv,
                    start,
                    stop,
                    0,
                    int(causal),
                    mode,
                    sigmoid_bias,
                    out[b].data_ptr(),
                    None if lse is None else lse[b].data_ptr(),
                ),
            )
            for b, start, stop in _row_chunks(B, Nq, causal, workers)
        ]
    run_jobs(jobs, workers)
    return out, lse


def attend_backward(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    key_bias: torch.Tensor | None,
    mask: torch.Tensor | None,
    causal: bool,
    mode: int,
    sigmoid_bias: float,
    lse: torch.Tensor | None,
    dout: torch.Tensor,
    delta: torch.Tensor | None,
    need_bias_grad: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Gradients (dq, dk, dv, db per cloud (B,Nk) or None) of the fused kernel's output.

    Mode 0 needs the forward's lse (B,Nq) and delta_i = ⟨dout_i, out_i⟩ − dlse_i; the weights are
    recomputed per key block (memory O(N·block) in C; per thread one (B, dk+dv+1, Nk) buffer for
    the key-side sums when a cloud's rows are split over threads).
    """
    lib = load()
    assert lib is not None
    B, Nq, dk = q.shape
    Nk, dv = k.shape[1], v.shape[2]
    dtype = q.dtype
    suffix = "f32" if dtype == torch.float32 else "f64"
    # The C backward always reads a key bias and writes db (no branches in its inner loop).
    bias = q.new_zeros(1, Nk) if key_bias is None else key_bias
    p = _prepare(q, k, v, bias, mask)
    dout = dout.contiguous()
    lse = None if lse is None else lse.contiguous()
    delta = None if delta is None else delta.contiguous()
    workers = workers_for(B * Nq * Nk)
    # Clouds split over threads write disjoint slices of one buffer; rows split over threads
    # need one partial key-side buffer per thread, summed at the end.
    split_rows = workers > B
    copies = workers if split_rows else 1
    dq = torch.zeros(B, Nq, dk, dtype=dtype)
    dkT = torch.zeros(copies, B, dk, Nk, dtype=dtype)
    dvT = torch.zeros(copies, B, dv, Nk, dtype=dtype)
    db = torch.zeros(copies, B, Nk, dtype=dtype)
    tail = (int(causal), mode, sigmoid_bias)
    if not split_rows:
        fn_batch = getattr(lib, f"tokendyn_attend_bwd_batch_{suffix}")
        common = _batch_pointers(p)
        grads = (
            _pointer(lse),
            dout.data_ptr(),
            _pointer(delta),
            dq.data_ptr(),
            dkT.data_ptr(),
            dvT.data_ptr(),
            db.data_ptr(),
        )
        bounds = [B * i // workers for i in range(workers + 1)]
        strides = (p.kb_stride, p.mb_stride)
        jobs = [
            (fn_batch, (*common, Nq, Nk, dk, dv, b0, b1, *strides, *tail, *grads))
            for b0, b1 in itertools.pairwise(bounds)
            if b1 > b0
        ]
    else:
        fn = getattr(lib, f"tokendyn_attend_bwd_{suffix}")
        calls: list[list[tuple[Any, ...]]] = [[] for _ in range(workers)]
        for index, (b, start, stop) in enumerate(_row_chunks(B, Nq, causal, workers)):
            w = index % workers
            grads = (
                None if lse is None else lse[b].data_ptr(),
                dout[b].data_ptr(),
                None if delta is None else delta[b].data_ptr(),
                dq[b].data_ptr(),
                dkT[w, b].data_ptr(),
                dvT[w, b].data_ptr(),
                db[w, b].data_ptr(),
            )
            calls[w].append((*_cloud_pointers(p, b), Nk, dk, dv, start, stop, *tail, *grads))

        def serial(arg_lists: list[tuple[Any, ...]]) -> None:
            for args in arg_lists:
                fn(*args)

        jobs = [(serial, (arg_lists,)) for arg_lists in calls if arg_lists]
    run_jobs(jobs, workers)
    dk_out = dkT.sum(0).transpose(1, 2) if split_rows else dkT[0].transpose(1, 2)
    dv_out = dvT.sum(0).transpose(1, 2) if split_rows else dvT[0].transpose(1, 2)
    db_out = None if not need_bias_grad else (db.sum(0) if split_rows else db[0])
    return dq, dk_out, dv_out, db_out
