"""Keep freed memory inside the process while the flows train, instead of paging it in afresh.

A training step of the flows allocates and frees the same few hundred MiB of large tensors
every batch. glibc's ``malloc`` serves blocks above its mmap threshold (128 KiB, adapting up
to 32 MiB) with fresh pages from the kernel and unmaps them again on ``free``, so every step
pays a zero-filled page fault on each 4 KiB page it touches first: 140 000 faults (550 MiB)
per step for ResNet-18's flows at batch 32 on CPU, 10 % of the step's time. Inside
:func:`reuse_freed_memory`, ``malloc`` takes large blocks from its heap and keeps freed ones
there for the next step (no mmap, no trimming); on leaving, glibc's default values come
back and ``malloc_trim`` returns the kept memory to the system. (The mmap threshold then
stays where glibc's adaptation had taken it: any ``mallopt`` call ends that adaptation for
the rest of the process.) The peak is that of the live tensors, as before; only the
memory between steps is kept rather than returned.

On other C libraries (macOS, Windows, musl) this does nothing.
"""

from __future__ import annotations

import contextlib
import ctypes
import threading
from collections.abc import Iterator

# mallopt parameters and glibc's defaults for them (malloc/malloc.c).
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD, _M_MMAP_MAX = -1, -3, -4
# glibc's upper bound for its adaptive mmap threshold (DEFAULT_MMAP_THRESHOLD_MAX, 64-bit).
_ADAPTIVE_MMAP_THRESHOLD_MAX = 32 * 1024 * 1024
_DEFAULT_TRIM_THRESHOLD, _DEFAULT_MMAP_MAX = 128 * 1024, 65536
_NEVER_TRIM = 2**31 - 1  # mallopt takes a C int


def _glibc() -> ctypes.CDLL | None:
    """The process's C library when it is glibc (which has mallopt and malloc_trim), else None."""
    try:
        libc = ctypes.CDLL(None)
        libc.gnu_get_libc_version  # noqa: B018 - glibc only: musl has mallopt but not this
        libc.mallopt, libc.malloc_trim  # noqa: B018
    except (OSError, TypeError, AttributeError):  # TypeError: CDLL(None) on Windows
        return None
    return libc


_GLIBC = _glibc()
_lock = threading.Lock()
_depth = 0  # nested or concurrent fits share one setting; the last one out restores it


@contextlib.contextmanager
def reuse_freed_memory() -> Iterator[None]:
    """Within the block, let ``malloc`` keep freed memory for reuse (glibc only).

    Re-entrant and thread-safe: the defaults come back when the last of the nested or
    concurrent blocks ends.
    """
    global _depth
    if _GLIBC is None:
        yield
        return
    with _lock:
        if _depth == 0:
            _GLIBC.mallopt(_M_MMAP_MAX, 0)
            _GLIBC.mallopt(_M_TRIM_THRESHOLD, _NEVER_TRIM)
        _depth += 1
    try:
        yield
    finally:
        with _lock:
            _depth -= 1
            if _depth == 0:
                _GLIBC.mallopt(_M_MMAP_MAX, _DEFAULT_MMAP_MAX)
                _GLIBC.mallopt(_M_TRIM_THRESHOLD, _DEFAULT_TRIM_THRESHOLD)
                _GLIBC.malloc_trim(0)


def raise_mmap_threshold() -> bool:
    """Serve blocks up to 32 MiB from the heap, for the rest of the process (glibc only).

    glibc raises its mmap threshold by itself, up to 32 MiB, as a program frees large
    blocks, unless a threshold was set explicitly: dask's nanny starts every worker with
    ``MALLOC_TRIM_THRESHOLD_`` in its environment, which freezes the mmap threshold at
    128 KiB. Every tensor above that is then mapped afresh and unmapped on ``free``, and
    page-faulted again at each use: torch scored at half its speed in such a worker
    (ResNet-18, one thread: 2.8 against 5.6 images/s, ``docs/scaling.md``). This sets the
    threshold to the 32 MiB glibc's adaptation would reach; dask's trim threshold, which
    returns freed memory at the top of the heap to the system, is kept.

    Returns
    -------
    bool
        Whether it was applied (False on other C libraries).
    """
    if _GLIBC is None:
        return False
    return bool(_GLIBC.mallopt(_M_MMAP_THRESHOLD, _ADAPTIVE_MMAP_THRESHOLD_MAX))
