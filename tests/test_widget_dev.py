"""The widget on a real dev sequence: clicks on small nuclei of a large frame, then tracking.

Runs only where ``../shared/data/dev/ctc-fluo-simplus-01`` exists (this project's machines;
CI has no shared folder). With NAPARI_LIT_SCREENSHOTS=DIR set, the screenshot is saved there
as ``widget-dev.png`` (the README's picture of real data comes from this test).
"""

import json
import os
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("napari")
pytestmark = pytest.mark.gui

from test_widget import _iou, _wait  # noqa: E402

SEQ = Path(__file__).resolve().parents[2] / "shared" / "data" / "dev" / "ctc-fluo-simplus-01"


@pytest.mark.skipif(not (SEQ / "image.tif").is_file(), reason="needs ../shared/data/dev/ctc-fluo-simplus-01")
def test_widget_on_real_nuclei(make_napari_viewer, qtbot, tmp_path):
    import tifffile
    from scipy import ndimage as ndi

    from napari_lit._widgets.lit_widget import LitWidget

    image = tifffile.imread(SEQ / "image.tif")[:20]
    gt = tifffile.imread(SEQ / "labels.tif")[:20]
    viewer = make_napari_viewer()
    lo, hi = np.percentile(image[0], (0.5, 99.8))  # as a user sets the contrast for dim nuclei
    viewer.add_image(image, name="ctc-fluo-simplus-01", colormap="gray", contrast_limits=(float(lo), float(hi)))
    widget = LitWidget(viewer, store_dir=tmp_path)
    viewer.window.add_dock_widget(widget, name="LIT segmentation")
    viewer.window._qt_window.resize(1500, 950)
    widget.image_combo.setCurrentText("ctc-fluo-simplus-01")
    assert widget.zoom_check.isChecked()  # object-centred zoom is the default
    widget.start()
    _wait(qtbot, widget)
    assert widget.session is not None, widget.status_label.text()
    # four of the benchmark's nuclei (meta.json) present on every frame, each clicked once at its
    # innermost point
    meta = json.loads((SEQ / "meta.json").read_text())
    ids = [int(i) for i in meta["objects"] if all((gt[t] == i).any() for t in range(len(gt)))][:4]
    for obj in ids:
        dist = ndi.distance_transform_edt(gt[0] == obj)
        y, x = np.unravel_index(np.argmax(dist), dist.shape)
        widget.labels_layer.selected_label = obj
        widget.points_layer.add([0, y, x])
        _wait(qtbot, widget)
    first = np.asarray(widget.labels_layer.data[0])
    for obj in ids:
        # a click on a ~25 px nucleus gives that nucleus, not a blob of its neighbours
        assert (first == obj).sum() < 2.5 * (gt[0] == obj).sum(), obj
        assert _iou(first == obj, gt[0] == obj) > 0.5, obj
    widget.propagate("forward")
    _wait(qtbot, widget, timeout=300_000)
    labels = np.asarray(widget.labels_layer.data[:])
    assert widget.session.store.frames_done == tuple(range(len(gt)))
    ious = [_iou(labels[t] == obj, gt[t] == obj) for obj in ids for t in range(len(gt))]
    assert np.mean(ious) > 0.5, np.mean(ious)

    shots = os.environ.get("NAPARI_LIT_SCREENSHOTS")
    if shots:
        from PIL import Image

        viewer.dims.set_current_step(0, len(gt) - 1)
        viewer.layers.selection.active = widget.labels_layer
        viewer.reset_view()
        Path(shots).mkdir(parents=True, exist_ok=True)
        Image.fromarray(viewer.screenshot(canvas_only=False, flash=False)).save(Path(shots) / "widget-dev.png")
    widget.close_session()
