"""File > Open on a ``.litsession`` folder resumes the session in the widget (napari reader),
under Xvfb, with the real lit-tiny model."""

import shutil

import numpy as np
import pytest

pytest.importorskip("napari")
pytestmark = pytest.mark.gui

tifffile = pytest.importorskip("tifffile")


@pytest.fixture()
def cli_session(tmp_path, clip):
    """A session folder made by ``napari-lit segment --session`` on a TIFF stack, one click on
    the largest object of frame 0; returns (tiff path, folder, labels written)."""
    from napari_lit.cli import main
    from napari_lit.core.store import LabelStore

    frames, labels = clip
    path = tmp_path / "cells.tif"
    tifffile.imwrite(path, frames, photometric="minisblack")
    obj = int(np.bincount(labels[0].ravel())[1:].argmax() + 1)
    ys, xs = np.nonzero(labels[0] == obj)
    prompts = tmp_path / "prompts.csv"
    prompts.write_text(f"frame,y,x,label,object_id\n0,{int(ys.mean())},{int(xs.mean())},1,{obj}\n")
    folder = tmp_path / "cells.litsession"
    assert main(["segment", str(path), "--prompts", str(prompts), "--session", str(folder), "--quiet"]) == 0
    written = np.asarray(LabelStore.open(folder / "labels.zarr", mode="r").array[:]).copy()
    assert (written == obj).any()
    return path, folder, written


def _resumed(viewer, qtbot, folder):
    """Wait until the dock widget has resumed ``folder``; returns the widget."""
    def ready():
        w = viewer.window.dock_widgets.get("LIT segmentation (napari-lit)")
        return w is not None and not w.busy and w.session is not None and w.session.folder.path == folder
    qtbot.waitUntil(ready, timeout=120_000)
    return viewer.window.dock_widgets["LIT segmentation (napari-lit)"]


def test_file_open_resumes_a_cli_session_and_opens_its_image(make_napari_viewer, qtbot, cli_session, clip):
    """File > Open on the folder offers napari-lit's reader (napari's own also claims
    folders, so napari lets the user pick); with it, in an empty viewer, the recorded TIFF is
    opened, the widget docked and the session resumed there: the labels layer shows what the
    CLI wrote."""
    from napari.errors import MultipleReaderError

    path, folder, written = cli_session
    viewer = make_napari_viewer()
    with pytest.raises(MultipleReaderError) as choice:  # what File > Open turns into a dialog
        viewer.open(str(folder), plugin=None)
    assert "napari-lit" in choice.value.available_plugins
    viewer.open(str(folder), plugin="napari-lit")  # the dialog's choice
    widget = _resumed(viewer, qtbot, folder)
    images = [layer for layer in viewer.layers if layer._type_string == "image"]
    assert [layer.name for layer in images] == ["cells"]
    assert np.array_equal(np.asarray(images[0].data), clip[0])
    assert np.array_equal(np.asarray(widget.labels_layer.data), written)
    assert widget.image_layer is images[0]


def test_file_open_uses_the_image_already_open(make_napari_viewer, qtbot, cli_session):
    """With the stack already open under another name, the session goes on that layer (the
    file path matches) and no second copy of the image is opened."""
    path, folder, written = cli_session
    viewer = make_napari_viewer()
    viewer.open(str(path), layer_type="image", name="my stack")
    viewer.add_image(np.zeros((3, 16, 16), np.uint8), name="unrelated")  # selected last
    viewer.open(str(folder), plugin="napari-lit")
    widget = _resumed(viewer, qtbot, folder)
    assert sorted(layer.name for layer in viewer.layers if layer._type_string == "image") == ["my stack", "unrelated"]
    assert widget.image_layer.name == "my stack"
    assert np.array_equal(np.asarray(widget.labels_layer.data), written)


def test_file_open_without_the_image_says_what_to_open(make_napari_viewer, cli_session, tmp_path):
    """A session whose image is neither open nor at its recorded path is refused with the
    path to open first; the folder is left as it was. Other folders are not claimed."""
    from napari_lit._reader import get_session_reader

    path, folder, _ = cli_session
    moved = tmp_path / "elsewhere.tif"
    shutil.move(path, moved)
    viewer = make_napari_viewer()
    before = sorted(p.name for p in folder.rglob("*"))
    with pytest.raises(Exception, match="open that image first"):
        viewer.open(str(folder), plugin="napari-lit")
    assert sorted(p.name for p in folder.rglob("*")) == before and len(viewer.layers) == 0
    assert get_session_reader(str(tmp_path)) is None  # not a session folder
    assert get_session_reader(str(folder)) is not None
