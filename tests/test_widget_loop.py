"""The whole LIT loop through the widget (kept apart: it asserts segmentation quality)."""

import os
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("napari")
pytestmark = pytest.mark.gui

from napari_lit.bench.interactive import error_click  # noqa: E402

from test_widget import Heartbeat, _iou, _wait, loop  # noqa: E402,F401


def test_whole_loop_click_propagate_correct_learn(loop, qtbot):
    from scipy import ndimage as ndi

    viewer, widget, gt = loop
    beat = Heartbeat()
    beat.probe = lambda: widget.status_label.text()
    beat.start()
    # the object: present on every frame, the largest on frame 0
    ids = [i for i in np.unique(gt[0]) if i and all((gt[t] == i).any() for t in range(len(gt)))]
    obj = max(ids, key=lambda i: (gt[0] == i).sum())
    target = gt == obj
    widget.labels_layer.selected_label = int(obj)
    viewer.dims.set_current_step(0, 0)
    dist = ndi.distance_transform_edt(target[0])
    y, x = np.unravel_index(np.argmax(dist), dist.shape)
    widget.points_layer.add([0, y, x])  # a positive click, as a user adds it
    _wait(qtbot, widget, beat=beat)
    assert _iou(np.asarray(widget.labels_layer.data[0]) == obj, target[0]) > 0.5
    assert widget.points_layer.features["positive"].tolist() == [True]

    widget.propagate("forward")
    _wait(qtbot, widget, beat=beat)
    labels = np.asarray(widget.labels_layer.data[:])
    assert widget.session.store.frames_done == tuple(range(len(gt)))
    ious = [_iou(labels[t] == obj, target[t]) for t in range(len(gt))]

    # correct the worst later frame with clicks where the error is, as the simulated user does
    # (at least one click, so there is always a correction to learn from)
    k = int(np.argmin(ious[1:]) + 1)
    for i in range(3):
        pred = np.asarray(widget.labels_layer.data[k]) == obj
        if i > 0 and _iou(pred, target[k]) > 0.9:
            break
        if (pred ^ target[k]).any():
            (cy, cx), positive = error_click(pred, target[k])
        else:
            (cy, cx), positive = np.unravel_index(np.argmax(ndi.distance_transform_edt(target[k])), pred.shape), 1
        widget._set_click_defaults(positive=bool(positive))
        widget.points_layer.add([k, cy, cx])
        _wait(qtbot, widget, beat=beat)
    assert len(widget.session.corrections) >= 1
    viewer.dims.set_current_step(0, k)
    widget.propagate("forward")  # learns from the correction, then resumes from frame k
    _wait(qtbot, widget, beat=beat)
    beat.stop()
    assert widget.session.n_learned == 1
    assert widget.session.last_train_ms > 0
    assert "corrections learned 1" in widget.status_label.text()
    assert f"reproduces it at IoU {widget.session.last_train_fit:.2f}" in widget.status_label.text()
    labels = np.asarray(widget.labels_layer.data[:])
    final = [_iou(labels[t] == obj, target[t]) for t in range(len(gt))]
    assert beat.max_gap < 0.1, f"GUI thread blocked for {beat.max_gap * 1000:.0f} ms ({beat.where})"
    assert np.mean(final) >= 0.7, final

    shots = os.environ.get("NAPARI_LIT_SCREENSHOTS")
    if shots:
        from PIL import Image

        viewer.dims.set_current_step(0, k)
        viewer.layers.selection.active = widget.labels_layer
        viewer.layers[1].visible = False  # the sample's ground truth: show only napari-lit's labels
        viewer.reset_view()
        Path(shots).mkdir(parents=True, exist_ok=True)
        Image.fromarray(viewer.screenshot(canvas_only=False, flash=False)).save(Path(shots) / "widget.png")


