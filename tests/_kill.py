"""Kill a child process at a chosen point of its session log (for the crash tests)."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path
from typing import Callable, Dict, List


def log_events(log: Path) -> List[Dict]:
    """The complete lines of a session's ``log.jsonl`` (a torn last line is left out)."""
    return [json.loads(line) for line in log.read_text().splitlines() if line.endswith("}")]


def kill_when(proc, log: Path, ready: Callable[[List[Dict]], bool], timeout: float = 240) -> None:
    """SIGKILL ``proc`` as soon as ``ready(events of log)`` holds; fail if it exits first or
    the point is not reached within ``timeout`` seconds."""
    deadline = time.time() + timeout
    try:
        while time.time() < deadline:
            assert proc.poll() is None, proc.stderr.read()
            if log.is_file() and ready(log_events(log)):
                break
            time.sleep(0.02)
        else:
            raise AssertionError("the child never reached the point to kill it")
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == -signal.SIGKILL
