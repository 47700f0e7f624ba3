"""Optional native CPU kernels, compiled on first use with the system C compiler and loaded with ctypes.

`skinny_linear(x, weight, bias)` computes `x @ weight.T + bias` for the few rows of a cached decoding step,
streaming the weight once at close to memory bandwidth (MKL's sgemm reaches 30-50% of it at 1-8 rows).
The C source lives in `kernels/`; it is built with `-O3 -march=native -fopenmp` into a private cache folder
(`$HF_MM_KERNEL_CACHE`, else `~/.cache/hf_mm/kernels`, else `$TMPDIR/hf_mm-kernels-<uid>`), keyed by the
source, the flags and this CPU, so a cache shared between different machines never runs code built for another
CPU. Without a compiler, or with `HF_MM_NATIVE_KERNELS=0`, `skinny_linear` returns `None` and callers use torch.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import logging
import os
import platform
import subprocess
import tempfile
from pathlib import Path

import torch

logger = logging.getLogger(__name__)

SOURCE = Path(__file__).with_name("kernels") / "skinny_linear.c"
FLAGS = ["-O3", "-march=native", "-fopenmp", "-shared", "-fPIC"]


def _cpu_identity() -> str:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor()
    keep = [line for line in text.splitlines() if line.startswith(("model name", "flags"))]
    return "\n".join(sorted(set(keep)))


def _cache_dirs() -> list[Path]:
    """Where a built kernel may live: `$HF_MM_KERNEL_CACHE` alone if set, else the user cache, then a private
    per-user folder in the temp dir (for read-only homes)."""
    if os.environ.get("HF_MM_KERNEL_CACHE"):
        return [Path(os.environ["HF_MM_KERNEL_CACHE"])]
    return [Path.home() / ".cache" / "hf_mm" / "kernels", Path(tempfile.gettempdir()) / f"hf_mm-kernels-{os.getuid()}"]


def _private_dir(path: Path) -> bool:
    """Create `path` (mode 0700) if needed; True when it is ours and nobody else can write to it (we load code
    from it)."""
    try:
        path.mkdir(parents=True, exist_ok=True, mode=0o700)
        st = path.stat()
        return st.st_uid == os.getuid() and not st.st_mode & 0o022 and os.access(path, os.W_OK)
    except OSError:
        return False


def _build(source: Path, target: Path, compiler: str) -> None:
    """Compile to a temporary file, then rename: concurrent builders never load a half-written library."""
    fd, tmp = tempfile.mkstemp(suffix=".so", dir=target.parent)
    os.close(fd)
    try:
        subprocess.run([compiler, *FLAGS, str(source), "-o", tmp], check=True, capture_output=True, timeout=120)
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


@functools.cache
def load_skinny_linear():
    """The compiled `hf_mm_skinny_linear` C function, or `None` when disabled or it cannot be built."""
    if os.environ.get("HF_MM_NATIVE_KERNELS", "1") == "0" or platform.system() != "Linux":
        return None
    compiler = os.environ.get("CC", "cc")
    source = SOURCE.read_bytes()
    key = hashlib.sha256(b"\0".join([source, " ".join(FLAGS).encode(), compiler.encode(),
                                     _cpu_identity().encode(), torch.__version__.encode()])).hexdigest()[:16]
    folder = next((d for d in _cache_dirs() if _private_dir(d)), None)
    try:
        if folder is None:
            raise OSError(f"no writable private cache folder among {[str(d) for d in _cache_dirs()]}")
        target = folder / f"skinny_linear-{key}.so"
        if not target.exists():
            _build(SOURCE, target, compiler)
        fn = ctypes.CDLL(str(target)).hf_mm_skinny_linear
    except (OSError, subprocess.SubprocessError) as err:
        detail = getattr(err, "stderr", b"") or b""
        logger.warning("hf_mm: native skinny-linear kernel unavailable, using torch (%s %s)", err,
                       detail.decode(errors="replace")[-500:])
        return None
    fn.argtypes = [ctypes.c_void_p] * 4 + [ctypes.c_long] * 3 + [ctypes.c_int]
    fn.restype = ctypes.c_int
    return fn


def skinny_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor | None:
    """`x (rows, in)`, `weight (out, in)`, `bias (out,)` -> `(rows, out)` with the native kernel, or `None`
    when it is unavailable. All tensors must be contiguous CPU float32 with `in % 16 == 0` (callers check)."""
    fn = load_skinny_linear()
    if fn is None:
        return None
    rows, k = x.shape
    out = torch.empty(rows, weight.shape[0], dtype=x.dtype)
    status = fn(x.data_ptr(), weight.data_ptr(), None if bias is None else bias.data_ptr(), out.data_ptr(),
                rows, k, weight.shape[0], torch.get_num_threads())
    if status != 0:
        raise RuntimeError(f"hf_mm skinny_linear: unsupported shapes x {tuple(x.shape)}, weight {tuple(weight.shape)}")
    return out
