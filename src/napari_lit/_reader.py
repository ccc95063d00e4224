"""napari reader for session folders: File > Open on a ``*.litsession`` folder resumes it.

A session folder made by the widget or by ``napari-lit segment --session`` records the image
it belongs to (its path, when it came from a file, and a fingerprint). Opening the folder in
napari docks the "LIT segmentation" widget and resumes the session there (labels, prompts,
corrections with undo/redo, adapters, uncertainty), on the image layer it was made on: one
already open in the viewer (matched by file path, then by layer name) or, when none is, the
recorded file opened by napari. The image is checked against the fingerprint before a model
loads, as with the widget's "Open session…".
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, List, Optional, Union

SUFFIX = ".litsession"


def get_session_reader(path: Union[str, List[str]]) -> Optional[Callable]:
    """napari's reader hook: :func:`read_session` for a ``*.litsession`` folder with a
    ``session.json``, else None (napari then asks other readers)."""
    if isinstance(path, (list, tuple)):
        if len(path) != 1:
            return None
        path = path[0]
    p = Path(path)
    if p.suffix != SUFFIX or not (p / "session.json").is_file():
        return None
    return read_session


def _layer_source(layer) -> Optional[str]:
    path = getattr(getattr(layer, "source", None), "path", None)
    return str(Path(path).resolve()) if path else None


def find_image_layer(viewer, meta: dict):
    """The viewer's image layer that ``meta`` (a session's ``session.json``) was made on:
    the one read from the recorded file, else the one with the recorded layer name or file
    stem; None when there is none."""
    from napari.layers import Image

    images = [layer for layer in viewer.layers if isinstance(layer, Image)]
    source = meta.get("source")
    if source:
        resolved = str(Path(source).resolve())
        for layer in images:
            if _layer_source(layer) == resolved:
                return layer
    names = [n for n in ((meta.get("view") or {}).get("layer"), source, source and Path(source).stem) if n]
    for name in names:
        for layer in images:
            if layer.name == name:
                return layer
    return None


def read_session(path: Union[str, List[str]]):
    """Resume the session folder ``path`` in the current viewer (napari's reader function).

    Returns
    -------
    list
        ``[(None,)]``, napari's "read, no new layer" answer: the image is an open layer or is
        opened by napari's own readers, and the widget adds the labels layer when it resumes.

    Raises
    ------
    SessionFolderError
        If the folder is not a readable session of this format.
    FileNotFoundError
        If the session's image is neither open in the viewer nor found at its recorded path.
    RuntimeError
        If there is no napari viewer to resume it in.
    """
    import napari

    from .core.folder import SessionFolder

    folder = Path(path[0] if isinstance(path, (list, tuple)) else path)
    meta = SessionFolder.read_meta(folder)
    viewer = napari.current_viewer()
    if viewer is None:
        raise RuntimeError(f"{folder.name}: a napari-lit session opens in a napari viewer")
    source = meta.get("source")
    if find_image_layer(viewer, meta) is None and not (source and Path(source).exists()):
        raise FileNotFoundError(
            f"{folder.name} was made on {source or 'an image that was not read from a file'}, "
            f"which is neither open in the viewer nor on disk: open that image first, then the session")
    from qtpy.QtCore import QTimer

    # after napari has finished this open call (opening the image from inside a reader
    # would re-enter napari's reading)
    QTimer.singleShot(0, lambda: resume_in_viewer(viewer, folder, meta))
    return [(None,)]


def resume_in_viewer(viewer, folder: Path, meta: dict):
    """Open the session's image if it is not a layer yet, dock the widget and resume
    ``folder`` in it (errors go to napari's notifications, as the widget's do)."""
    from napari.utils.notifications import show_error

    try:
        layer = find_image_layer(viewer, meta)
        if layer is None:
            viewer.open(meta["source"])
            layer = find_image_layer(viewer, meta) or viewer.layers[-1]
        _, widget = viewer.window.add_plugin_dock_widget("napari-lit", "LIT segmentation")
    except Exception as exc:  # noqa: BLE001 - shown to the user, nothing is lost
        show_error(f"{folder.name}: {exc}")
        return None
    widget._refresh_image_choices()
    widget.image_combo.setCurrentText(layer.name)
    widget.open_session(folder)
    return widget
