"""Shared fixtures: the real embedded model and small generated stacks."""

from __future__ import annotations

import numpy as np
import pytest


@pytest.fixture(scope="session")
def predictor():
    """lit-tiny as sam2's video predictor, on CPU (the real embedded weights)."""
    import torch

    from napari_lit.models import load_predictor

    torch.set_num_threads(2)
    return load_predictor("lit-tiny", device="cpu")


@pytest.fixture(scope="session")
def clip():
    """A generated 8-frame 96 x 128 nuclei time-lapse with ground truth."""
    from napari_lit.training.synthetic import generate_clip

    c = generate_clip(np.random.default_rng(3), 8, 128, kind="nuclei")
    return c.frames[:, 16:112, :, 0].copy(), c.labels[:, 16:112, :].copy()


@pytest.fixture()
def object_on_frame0(clip):
    """(object id, its mask on frame 0) for the largest object on frame 0."""
    _, labels = clip
    ids, counts = np.unique(labels[0][labels[0] > 0], return_counts=True)
    obj = int(ids[np.argmax(counts)])
    return obj, labels[0] == obj


@pytest.fixture()
def served_model(tmp_path, monkeypatch):
    """A catalogue entry ``test-model`` (lit-tiny's architecture, fresh weights) served by a
    local HTTP server, with an empty model cache: the real download path, no internet.

    Yields the :class:`~napari_lit.models.ModelSpec`."""
    import functools
    import hashlib
    import http.server
    import threading

    import torch

    from napari_lit.models import MODELS, catalogue
    from napari_lit.models.build import build_sam2_model
    from napari_lit.models.catalogue import LIT_TINY_CONFIG

    monkeypatch.setenv("NAPARI_LIT_CACHE", str(tmp_path / "cache"))
    served = tmp_path / "served"
    served.mkdir()
    torch.save({"model": build_sam2_model(LIT_TINY_CONFIG, target="base").state_dict()}, served / "lit-copy.pt")
    digest = hashlib.sha256((served / "lit-copy.pt").read_bytes()).hexdigest()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(served))
    handler.log_message = lambda *a, **k: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/lit-copy.pt"
    spec = catalogue.ModelSpec("test-model", str(LIT_TINY_CONFIG), "lit-copy.pt", url, digest)
    monkeypatch.setitem(MODELS, "test-model", spec)
    try:
        yield spec
    finally:
        server.shutdown()
