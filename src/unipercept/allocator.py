"""How freed CPU memory goes back to the operating system: glibc's malloc settings for the
command-line entry points.

glibc serves an allocation of 32 MiB or more (less, until its threshold adapts) with its own
``mmap`` and gives it back with ``munmap`` when it is freed. A forward pass allocates and frees
the same large activations again and again, so every one of them comes back from the kernel as
fresh zeroed pages, one page fault per 4 KiB touched: 0.1-0.6 million faults for one 480x640
forward of the ResNet-50 Deformable DETR (``benchmarks/allocator.py``). :func:`keep_freed_memory`
turns that off with ``mallopt``: no ``mmap`` for single allocations (``M_MMAP_MAX=0``: they
come from the heap) and no trimming of the heap's free top below :data:`TRIM_THRESHOLD`
(``M_TRIM_THRESHOLD``), so freed activations are reused by the next pass. Measured there (2
CPUs): no page faults after the first pass, the forward 1.29x faster in float32 (1.09x in
bfloat16, transformers' model 1.49x), a mot step of the bundled model 1.02x. The price is
memory: the heap grows over the first passes to a steady size and keeps it, instead of
shrinking between passes (peak resident set 1.68 GB against 1.49 GB there).

The same can be had without code through glibc's environment
(``MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=17179869184``, or ``GLIBC_TUNABLES``); where the
user sets either, their settings win and nothing is changed here. ``UNIPERCEPT_MALLOC=system``
leaves glibc's defaults alone. Other C libraries (musl, macOS, Windows) are left alone.
"""

from __future__ import annotations

import ctypes
import logging
import os

logger = logging.getLogger(__name__)

#: ``keep`` (the entry points call :func:`keep_freed_memory`) or ``system`` (glibc's defaults;
#: :func:`keep_freed_memory` does nothing either).
MALLOC_ENV = "UNIPERCEPT_MALLOC"
MALLOC_MODES = ("keep", "system")
#: What the entry points do when :data:`MALLOC_ENV` is unset.
DEFAULT_MODE = "keep"

# mallopt parameter numbers from glibc's <malloc.h>.
M_TRIM_THRESHOLD = -1
M_MMAP_MAX = -4
#: Free memory at the top of the heap beyond this is given back (mallopt takes a C int).
TRIM_THRESHOLD = 2**31 - 1

# Environment variables through which the user already tells glibc's malloc what to do.
_GLIBC_VARIABLES = ("MALLOC_MMAP_MAX_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_MMAP_THRESHOLD_")

_applied = False


def glibc_version() -> str | None:
    """``"glibc 2.36"`` and so on when this process runs on glibc, else None."""
    try:
        return os.confstr("CS_GNU_LIBC_VERSION")
    except (AttributeError, ValueError, OSError):  # no confstr, or not glibc
        return None


def _user_settings() -> list[str]:
    named = [name for name in _GLIBC_VARIABLES if name in os.environ]
    if "glibc.malloc." in os.environ.get("GLIBC_TUNABLES", ""):
        named.append("GLIBC_TUNABLES")
    return named


def malloc_mode(default: str = DEFAULT_MODE) -> str:
    """The mode :data:`MALLOC_ENV` asks for, ``default`` when it is unset or empty.

    Raises:
        ValueError: the variable holds something other than ``keep`` or ``system``.
    """
    mode = os.environ.get(MALLOC_ENV, "").strip().lower() or default
    if mode not in MALLOC_MODES:
        raise ValueError(
            f"{MALLOC_ENV} must be one of {', '.join(MALLOC_MODES)}, got {os.environ[MALLOC_ENV]!r}"
        )
    return mode


def keep_freed_memory() -> bool:
    """Keeps freed memory in the process for reuse instead of giving it back (see the module
    docstring): ``mallopt(M_MMAP_MAX, 0)`` and ``mallopt(M_TRIM_THRESHOLD,`` 2 GiB ``)``.

    Affects the allocations made after the call; call it early, before the work. Nothing changes
    where :data:`MALLOC_ENV` is ``system``, where the user set glibc's own malloc variables, or
    where the C library is not glibc.

    Returns:
        Whether glibc accepted both settings.

    Raises:
        ValueError: :data:`MALLOC_ENV` holds something other than ``keep`` or ``system``.
    """
    global _applied
    if malloc_mode(default="keep") == "system" or _user_settings() or glibc_version() is None:
        return False
    libc = ctypes.CDLL(None)  # the C library this process already has loaded
    mallopt = libc.mallopt
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    applied = mallopt(M_MMAP_MAX, 0) == 1 and mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1
    if not applied:
        logger.warning("unipercept: glibc refused the malloc settings; keeping its defaults")
    _applied = _applied or applied
    return applied


def configure_malloc() -> bool:
    """What the command-line entry points call at start: :func:`keep_freed_memory` when
    :data:`MALLOC_ENV` (default :data:`DEFAULT_MODE`) says ``keep``.

    Returns:
        Whether the settings were applied.

    Raises:
        ValueError: :data:`MALLOC_ENV` holds something other than ``keep`` or ``system``.
    """
    return malloc_mode() == "keep" and keep_freed_memory()


def malloc_settings() -> dict[str, object]:
    """What decides this process's malloc behaviour, for benchmark records and bug reports:
    the C library, :data:`MALLOC_ENV`, glibc's own variables, and whether
    :func:`keep_freed_memory` has applied its settings here."""
    return {
        "libc": glibc_version(),
        MALLOC_ENV: os.environ.get(MALLOC_ENV),
        **{name: os.environ.get(name) for name in (*_GLIBC_VARIABLES, "GLIBC_TUNABLES")},
        "keep_freed_memory": _applied,
    }
