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
