"""Build, cache and call the fused C kernel (_fused.c) through ctypes.

The shared library is compiled on first use with the system C compiler (``cc``), once per machine
and source version, into ``$TOKENDYN_CACHE`` (default ``~/.cache/tokendyn``). Calls release the GIL,
so row ranges run in parallel Python threads (one per torch thread). If no compiler is available the
tiled backend falls back to its pure-torch block loop (with one warning).

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
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from functools import cache
from pathlib import Path

import torch

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
    "-march=native",
    "-mprefer-vector-width=512",
]
_BUILD_LOCK = threading.Lock()
MAX_DIM = 512


def cache_dir() -> Path:
    return Path(os.environ.get("TOKENDYN_CACHE", Path.home() / ".cache" / "tokendyn"))


def _flags() -> list[str]:
    """The compiler flags for this machine (the vector-width hint exists on x86 only)."""
    x86 = platform.machine() in ("x86_64", "AMD64")
    return [f for f in _FLAGS if x86 or f != "-mprefer-vector-width=512"]


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
    try:
        if hashlib.sha256(_read_fd(fd)).hexdigest() != recorded:
            return None
        # Load the very file just hashed: its descriptor, not its name, which could be replaced.
        via_fd = Path(f"/proc/self/fd/{fd}")
        return ctypes.CDLL(str(via_fd if via_fd.exists() else path))
    finally:
        os.close(fd)


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
        fn = getattr(lib, f"tokendyn_attend_{suffix}")
        fn.restype = None
        fn.argtypes = [pointer] * 5 + [i64] * 6 + [c_int, c_int, scalar, pointer, pointer]
        batched = getattr(lib, f"tokendyn_attend_batch_{suffix}")
        batched.restype = None
        batched.argtypes = [pointer] * 5 + [i64] * 8 + [c_int, c_int, scalar, pointer, pointer]
    return lib


def available() -> bool:
    return load() is not None


@cache
def _pool(workers: int) -> ThreadPoolExecutor:
    return ThreadPoolExecutor(max_workers=workers, thread_name_prefix="tokendyn-fused")


def _pointer(t: torch.Tensor | None) -> int | None:
    return None if t is None else t.data_ptr()


def supports(q: torch.Tensor, v: torch.Tensor) -> bool:
    return (
        q.device.type == "cpu"
        and q.dtype in (torch.float32, torch.float64)
        and max(q.shape[-1], v.shape[-1]) <= MAX_DIM
        and available()
    )


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
    fn = lib.tokendyn_attend_f32 if dtype == torch.float32 else lib.tokendyn_attend_f64
    q = q.contiguous()
    kT = k.transpose(1, 2).contiguous()
    vT = v.transpose(1, 2).contiguous()
    # A bias or mask shared by every cloud is passed once, with stride 0.
    kb = None if key_bias is None else key_bias.to(dtype).reshape(-1, Nk).contiguous()
    mb = None if mask is None else mask.to(torch.uint8).reshape(-1, Nq, Nk).contiguous()
    kb_stride = 0 if kb is None or kb.shape[0] == 1 else Nk
    mb_stride = 0 if mb is None or mb.shape[0] == 1 else Nq * Nk
    out = torch.empty(B, Nq, dv, dtype=dtype)
    lse = torch.empty(B, Nq, dtype=dtype) if (need_lse and mode == 0) else None
    workers = max(1, torch.get_num_threads())
    if workers <= B:
        # Whole clouds per job: one C call per thread handles a contiguous range of the batch.
        fn_batch = (
            lib.tokendyn_attend_batch_f32
            if dtype == torch.float32
            else lib.tokendyn_attend_batch_f64
        )
        bounds = [B * i // workers for i in range(workers + 1)]
        common = (
            q.data_ptr(),
            kT.data_ptr(),
            vT.data_ptr(),
            _pointer(kb),
            _pointer(mb),
            Nq,
            Nk,
            dk,
            dv,
        )
        tail = (
            kb_stride,
            mb_stride,
            int(causal),
            mode,
            sigmoid_bias,
            out.data_ptr(),
            _pointer(lse),
        )
        jobs = [
            (fn_batch, (*common, b0, b1, *tail)) for b0, b1 in itertools.pairwise(bounds) if b1 > b0
        ]
    else:
        # Few clouds: split each cloud's query rows. Causal rows have unequal cost, so many small
        # chunks balance the threads; otherwise one chunk per thread and cloud.
        pieces = 8 * workers if causal else max(1, -(-workers // B))
        chunk = max(4, -(-Nq // pieces))
        jobs = []
        for b in range(B):
            args_b = (
                q[b].data_ptr(),
                kT[b].data_ptr(),
                vT[b].data_ptr(),
                None if kb is None else kb.data_ptr() + b * kb_stride * kb.element_size(),
                None if mb is None else mb.data_ptr() + b * mb_stride,
            )
            out_b = out[b].data_ptr()
            lse_b = None if lse is None else lse[b].data_ptr()
            for start in range(0, Nq, chunk):
                stop = min(Nq, start + chunk)
                args = (
                    *args_b,
                    Nk,
                    dk,
                    dv,
                    start,
                    stop,
                    0,
                    int(causal),
                    mode,
                    sigmoid_bias,
                    out_b,
                    lse_b,
                )
                jobs.append((fn, args))
    if len(jobs) == 1:
        jobs[0][0](*jobs[0][1])
    else:
        for future in [_pool(workers).submit(f, *args) for f, args in jobs]:
            future.result()
    return out, lse
