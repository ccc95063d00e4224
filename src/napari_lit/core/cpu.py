"""CPU settings that make the model's forward passes faster, measured (issue 28).

SAM2.1's memory attention and MLPs at 1024 px allocate and free tens of temporary tensors of
16-32 MB per propagated frame. glibc's ``malloc`` gives the top of its heap back to the system
whenever more than its trim threshold (by default twice the largest chunk freed lately, at
most 64 MB) lies free there, so each frame's temporaries come back as fresh pages that the
kernel must map and zero again: on this CPU a fifth of a cached frame's memory attention and
of the image encoder (``benchmarks/experiments/allocator.py``: medians 1.53 -> 1.23 s and
2.80 -> 2.32 s). :func:`tune_allocator` keeps up to
:data:`TRIM_THRESHOLD` of freed heap for reuse and serves allocations below
:data:`MMAP_THRESHOLD` from the heap; larger blocks (image stacks, caches) are still mapped
on their own and given back when freed.
"""

from __future__ import annotations

import ctypes
import logging
import os
import platform
import sys
from typing import Optional

log = logging.getLogger(__name__)

#: bytes of free heap glibc keeps for reuse before it gives memory back to the system
TRIM_THRESHOLD = 1 << 30
#: allocations of at least this many bytes are mapped on their own (and unmapped when freed)
MMAP_THRESHOLD = 64 << 20
#: set to ``0`` to leave the C allocator as it is
ENV_SWITCH = "NAPARI_LIT_TUNE_MALLOC"

_M_TRIM_THRESHOLD = -1  # glibc's malloc.h
_M_MMAP_THRESHOLD = -3
_applied: Optional[dict] = None


def tune_allocator() -> Optional[dict]:
    """Keep freed heap memory for reuse in this process (glibc on Linux only; once).

    Sets glibc's ``M_TRIM_THRESHOLD`` to :data:`TRIM_THRESHOLD` and ``M_MMAP_THRESHOLD`` to
    :data:`MMAP_THRESHOLD` through ``mallopt(3)``. The process's resident memory may stay up
    to :data:`TRIM_THRESHOLD` above what it uses; memory is never lost. Skipped (returns
    None) on other systems or C libraries, or when the environment variable
    ``NAPARI_LIT_TUNE_MALLOC`` is ``0``.

    Returns
    -------
    dict or None
        ``{"trim_threshold": bytes, "mmap_threshold": bytes}`` as set (also on later calls),
        or None where nothing was changed.
    """
    global _applied
    if _applied is not None:
        return _applied
    if os.environ.get(ENV_SWITCH, "1").strip() == "0":
        return None
    if not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc":
        return None
    try:
        libc = ctypes.CDLL("libc.so.6")
        ok = libc.mallopt(_M_TRIM_THRESHOLD, ctypes.c_int(TRIM_THRESHOLD)) == 1
        ok = libc.mallopt(_M_MMAP_THRESHOLD, ctypes.c_int(MMAP_THRESHOLD)) == 1 and ok
    except (OSError, AttributeError) as err:  # no such library or function: nothing changed
        log.debug("mallopt unavailable: %s", err)
        return None
    if not ok:
        log.debug("mallopt refused the settings")
        return None
    _applied = {"trim_threshold": TRIM_THRESHOLD, "mmap_threshold": MMAP_THRESHOLD}
    log.debug("C allocator: keeps %d MB of freed heap, maps blocks of %d MB or more",
              TRIM_THRESHOLD >> 20, MMAP_THRESHOLD >> 20)
    return _applied
