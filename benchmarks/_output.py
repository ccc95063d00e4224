"""Shared by the benchmark scripts: writing a result as JSON."""

from __future__ import annotations

import json
from pathlib import Path


def write_json(result: dict, path, indent: int = 2) -> Path:
    """Write ``result`` to ``path`` as JSON (its folder created); returns the path."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=indent))
    return out
