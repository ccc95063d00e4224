"""The C allocator setting for CPU forward passes (issue 28)."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys

import pytest

glibc = pytest.mark.skipif(not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc",
                           reason="glibc's mallopt only")

# a 40 MB block malloc'd and freed: how much free memory glibc's heap holds afterwards
_CHILD = r"""
import ctypes, json, sys
from napari_lit.core.cpu import tune_allocator
applied = tune_allocator()
libc = ctypes.CDLL("libc.so.6")
class Info(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                                "fsmblks", "uordblks", "fordblks", "keepcost")]
libc.mallinfo2.restype = Info
libc.malloc.restype = ctypes.c_void_p
block = libc.malloc(40 << 20)
ctypes.memset(block, 1, 40 << 20)
mapped = libc.mallinfo2().hblkhd
libc.free(ctypes.c_void_p(block))
print(json.dumps({"applied": applied, "mapped_while_held": mapped, "free_in_heap": libc.mallinfo2().fordblks}))
"""


def _child(switch: str) -> dict:
    env = dict(os.environ, NAPARI_LIT_TUNE_MALLOC=switch)
    out = subprocess.run([sys.executable, "-c", _CHILD], capture_output=True, text=True, env=env, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


@glibc
def test_tuned_allocator_keeps_freed_blocks_for_reuse():
    default, tuned = _child("0"), _child("1")
    assert default["applied"] is None
    assert tuned["applied"] == {"trim_threshold": 1 << 30, "mmap_threshold": 64 << 20}
    # glibc as it comes maps a 40 MB block on its own and unmaps it when freed ...
    assert default["mapped_while_held"] >= 40 << 20 and default["free_in_heap"] < 40 << 20
    # ... tuned, the block comes from the heap and stays there, free for the next one
    assert tuned["mapped_while_held"] < 40 << 20 and tuned["free_in_heap"] >= 40 << 20


@glibc
def test_a_tracker_on_cpu_tunes_the_allocator_once(predictor):
    from napari_lit.core import cpu
    from napari_lit.core.tracker import Tracker

    import numpy as np

    tracker = Tracker(predictor, np.zeros((2, 64, 64), np.uint8), zoom="off", features=None)
    tracker.close()
    if os.environ.get(cpu.ENV_SWITCH, "1") == "0":
        assert cpu._applied is None
    else:
        assert cpu._applied == cpu.tune_allocator() == {"trim_threshold": cpu.TRIM_THRESHOLD,
                                                         "mmap_threshold": cpu.MMAP_THRESHOLD}
