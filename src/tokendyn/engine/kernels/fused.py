"""Build, cache and call the fused C kernel (_fused.c) through ctypes.

The shared library is compiled on first use with the system C compiler (``cc``), once per machine
and source version, into ``$TOKENDYN_CACHE`` (default ``~/.cache/tokendyn``). Calls release the GIL,
so row ranges run in parallel Python threads (one per torch thread). If no compiler is available the
tiled backend falls back to its pure-torch block loop.
"""

from __future__ import annotations

import ctypes
import hashlib
import itertools
import os
import platform
import shutil
import subprocess
import tempfile
import threading
from concurrent.futures import ThreadPoolExecutor
from functools import cache
from pathlib import Path

import torch

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


def _library_path() -> Path:
    key = hashlib.sha256(SOURCE.read_bytes() + " ".join(_FLAGS).encode() + platform.node().encode())
    return cache_dir() / f"fused-{platform.machine()}-{key.hexdigest()[:16]}.so"


def _compile(target: Path) -> None:
    compiler = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        raise OSError("no C compiler (cc/gcc) on PATH")
    target.parent.mkdir(parents=True, exist_ok=True)
    flags = list(_FLAGS)
    if platform.machine() not in ("x86_64", "AMD64"):
        flags.remove("-mprefer-vector-width=512")
    with tempfile.NamedTemporaryFile(dir=target.parent, suffix=".so", delete=False) as tmp:
        tmp_path = Path(tmp.name)
    try:
        subprocess.run(
            [compiler, *flags, "-o", str(tmp_path), str(SOURCE), "-lm"],
            check=True,
            capture_output=True,
            text=True,
        )
        os.replace(tmp_path, target)  # atomic: concurrent builders never see a half-written file
    finally:
        tmp_path.unlink(missing_ok=True)


@cache
def load() -> ctypes.CDLL | None:
    """The compiled library, or None if it cannot be built (TOKENDYN_NO_FUSED=1 disables it)."""
    if os.environ.get("TOKENDYN_NO_FUSED"):
        return None
    path = _library_path()
    with _BUILD_LOCK:
        try:
            if not path.exists():
                _compile(path)
            lib = ctypes.CDLL(str(path))
        except (OSError, subprocess.CalledProcessError):
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
