"""What a person sees: napari with a stack and the labels napari-lit wrote, under Xvfb.

Segments the plugin's sample time-lapse from one click per object with the embedded model,
writes the zarr label store, opens image and store in a napari viewer and takes a
screenshot. With NAPARI_LIT_SCREENSHOTS=DIR set, the screenshot is saved there (the README's
picture comes from this test).
"""

import os
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("napari")
pytestmark = pytest.mark.gui


def test_viewer_shows_store_labels(make_napari_viewer, predictor, tmp_path):
    from scipy import ndimage as ndi

    from napari_lit._sample_data import synthetic_timelapse
    from napari_lit.core import LabelStore, Tracker

    (image, image_meta, _), (gt, _, _) = synthetic_timelapse()
    tracker = Tracker(predictor, image)
    ids = [int(i) for i in np.unique(gt[0]) if i][:4]
    for obj in ids:
        dist = ndi.distance_transform_edt(gt[0] == obj)
        y, x = np.unravel_index(np.argmax(dist), dist.shape)
        tracker.add_points(0, obj, [[y, x]], [1])
    store = LabelStore.create(tmp_path / "labels.zarr", gt.shape)
    for result in tracker.propagate():
        store.write_frame(result.frame_idx, result.labels())

    viewer = make_napari_viewer()
    viewer.add_image(image, **image_meta)
    layer = viewer.add_labels(store.array, name="napari-lit labels")
    viewer.dims.set_point(0, 12)
    # the layer views the store on disk: a frame written now shows up on refresh
    store.write_object(12, 99, np.pad(np.ones((10, 10), bool), ((5, 241), (5, 241))))
    layer.refresh()
    assert np.asarray(layer.data[12])[10, 10] == 99
    assert layer.data is store.array

    viewer.window._qt_window.resize(1200, 800)
    viewer.reset_view()
    shot = viewer.screenshot(canvas_only=False, flash=False)
    assert shot.ndim == 3 and shot.shape[0] > 200 and shot.shape[1] > 200
    assert shot[..., :3].std() > 5  # not a blank window
    out = os.environ.get("NAPARI_LIT_SCREENSHOTS")
    if out:
        from PIL import Image

        Path(out).mkdir(parents=True, exist_ok=True)
        Image.fromarray(shot).save(Path(out) / "napari-labels.png")
