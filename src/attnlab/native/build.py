"""Building the native libraries: one shared library per kernel family, each compiled with only the
instruction-set flags of the CPU features it uses.

Separate libraries keep the families independent: a compiler that rejects one family's flag (an old gcc
without ``-mamx-tile``) or a CPU without one family's feature (AVX-512 BF16) leaves the others usable.
The ``probe`` library, compiled with no such flags, says which features this CPU has before any other
library is loaded (code compiled for AVX-512 may fault on a CPU without it).

Libraries are cached under :func:`cache_dir` by a hash of the sources, headers, compiler and flags, and
written atomically (compiled to a temporary file, then renamed), so concurrent processes never load a
half-written file.
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

CSRC = Path(__file__).with_name("csrc")
HEADERS = ("kernels.h", "attnlab_native.h", "fp32_blocks.h")  # in every family's hash: simpler than tracking each file's includes
# -fvisibility=hidden: only the functions attnlab_native.h declares with ATTNLAB_API are exported.
BASE_FLAGS = ["-O3", "-fopenmp", "-shared", "-fPIC", "-fvisibility=hidden"]
LIBS = ["-lm"]

# Per CPU feature (the ATTNLAB_CPU_* names of attnlab_native.h): the compiler flags that let the kernels use
# it, and its name in status messages.
FEATURES: dict[str, tuple[list[str], str]] = {
    "AVX512F": (["-mavx512f"], "AVX-512F"),
    "AVX512BW": (["-mavx512bw"], "AVX-512BW"),
    "AVX512VL": (["-mavx512vl"], "AVX-512VL"),
    "AVX512_BF16": (["-mavx512bf16"], "AVX-512 BF16"),
    "FMA": (["-mfma"], "FMA"),
    "AMX_BF16": (["-mamx-tile", "-mamx-bf16"], "AMX-BF16"),
}

_log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Family:
    """One shared library: its C ``sources`` (in ``csrc/``), the CPU features it ``needs`` (compiled with
    their flags, loaded only where the CPU has them all) and those it ``uses`` where present (compiled in,
    chosen at run time)."""

    name: str
    sources: tuple[str, ...]
    needs: tuple[str, ...] = ()
    uses: tuple[str, ...] = ()

    def flags(self) -> list[str]:
        """The compiler flags: the common ones and those of each needed or used feature."""
        return BASE_FLAGS + [flag for feature in self.needs + self.uses for flag in FEATURES[feature][0]]


_BF16 = ("AVX512F", "AVX512BW", "AVX512VL", "AVX512_BF16", "FMA")
PROBE = Family("probe", ("probe.c",))
FAMILIES = {family.name: family for family in (
    Family("attention_bf16", ("common.c", "forward.c", "backward.c"), needs=_BF16, uses=("AMX_BF16",)),
    Family("attention_fp32", ("attention_fp32.c", "window_fp32.c"), needs=("AVX512F", "FMA")),
    Family("pointwise", ("pointwise.c",), needs=_BF16),
    Family("transpose", ("transpose.c",), needs=("AVX512F",)),
    Family("decode", ("skinny.c", "decode_attention.c"), needs=_BF16),
)}


def cache_dir() -> Path:
    """Where compiled kernels live: ``$ATTNLAB_CACHE/native`` or ``~/.cache/attnlab/native``."""
    root = os.environ.get("ATTNLAB_CACHE") or Path.home() / ".cache" / "attnlab"
    return Path(root) / "native"


def find_compiler() -> str | None:
    """``$CC``, else gcc, else cc on the PATH; None when there is none."""
    return os.environ.get("CC") or shutil.which("gcc") or shutil.which("cc")


def _snapshot(family: Family) -> dict[str, bytes]:
    """The bytes of every file ``family`` is built from, read once: the cache name and the build both come
    from this snapshot, so sources edited in between can never be cached under the wrong name."""
    return {name: (CSRC / name).read_bytes() for name in HEADERS + family.sources}


def library_path(family: Family, compiler: str, snapshot: dict[str, bytes] | None = None) -> Path:
    """The cache file of ``family`` built by ``compiler``: ``<family>-<hash>.so``."""
    text = b"".join((snapshot or _snapshot(family)).values())
    digest = hashlib.sha256(text + " ".join([compiler] + family.flags() + LIBS).encode()).hexdigest()[:16]
    return cache_dir() / f"{family.name}-{digest}.so"


def open_library(family: Family, compiler: str) -> tuple[ctypes.CDLL | None, str]:
    """``(library, "")`` for ``family``, compiled first when not cached (and again once when the cached file
    will not load); ``(None, why)`` when it cannot be built or loaded."""
    snapshot = _snapshot(family)
    target = library_path(family, compiler, snapshot)
    if not target.exists():
        _log.info("building attnlab's native %s kernels (first use, a few seconds) into %s", family.name, target)
        error = _compile(family, compiler, target, snapshot)
        if error:
            _log.warning("attnlab's native %s kernels are not used: %s", family.name, error)
            return None, error
    try:
        return ctypes.CDLL(str(target)), ""
    except OSError as first:  # a damaged cache file: rebuild once
        target.unlink(missing_ok=True)
        error = _compile(family, compiler, target, snapshot)
        if error:
            return None, error
        try:
            return ctypes.CDLL(str(target)), ""
        except OSError:
            return None, f"could not load {target}: {first}"


def _compile(family: Family, compiler: str, target: Path, snapshot: dict[str, bytes]) -> str | None:
    """Compile ``snapshot`` (copied into a temporary folder) to a temporary file next to ``target`` and rename
    it into place; an error text or None."""
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        return f"cannot create the kernel cache {target.parent}: {e} (set ATTNLAB_CACHE)"
    fd, tmp = tempfile.mkstemp(suffix=".so", dir=target.parent)
    os.close(fd)
    where = f"{family.name}, {CSRC}"
    try:
        with tempfile.TemporaryDirectory() as src_dir:
            for name, data in snapshot.items():
                Path(src_dir, name).write_bytes(data)
            sources = [str(Path(src_dir, name)) for name in family.sources]
            done = subprocess.run([compiler, *family.flags(), "-o", tmp, *sources, *LIBS], capture_output=True,
                                  text=True, timeout=120)
        if done.returncode != 0:
            return f"compiling the native kernels ({where}) failed: {done.stderr.strip()[-500:]}"
        os.replace(tmp, target)
        return None
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"compiling the native kernels ({where}) failed: {e}"
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
