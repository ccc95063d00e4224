"""The widget's sessions: start one on an image, open a saved one, show it, close it.

A mixin of :class:`~napari_lit._widgets.lit_widget.LitWidget`. A session is a session folder
(:mod:`napari_lit.core.folder`) in ``store_dir``; the model loads in a worker, the image is
checked before a saved session's model loads, and a closed session is released only once
its worker has finished the frame in progress.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Tuple

import numpy as np

__all__ = ["SessionMixin", "default_session_dir", "POSITIVE_COLOR", "NEGATIVE_COLOR"]

POSITIVE_COLOR = "lime"
NEGATIVE_COLOR = "red"


def marker_size(frame_shape, share: float = 0.012, least: float = 7.0) -> float:
    """Size of prompt points, in image pixels: ``share`` of the frame's longer side, at least
    ``least`` px, so that a click can be seen at napari's default zoom on a large image (7 px
    on an 1100 px frame is a dot a few screen pixels wide)."""
    return float(max(least, round(share * max(int(v) for v in frame_shape[-2:]))))


def default_session_dir() -> Path:
    """Where the widget keeps session folders unless told otherwise: ``$NAPARI_LIT_SESSIONS``
    or ``~/napari-lit/sessions`` (created on first use)."""
    import os

    folder = Path(os.environ.get("NAPARI_LIT_SESSIONS") or Path.home() / "napari-lit" / "sessions")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def _model_frames(layer, view, stack, image_size: int):
    """The session's :class:`FrameSource`: for a multiscale layer (e.g. OME-Zarr), model
    inputs come from the pyramid level nearest the model's input size (among the levels
    with all of level 0's frames), each zoom window from the coarsest level that has the
    detail it needs; masks stay at full resolution."""
    from ..core.frames import FrameSource
    from ..io.ngff import choose_level

    lowres, levels = None, []
    if layer.multiscale:
        shapes = [tuple(d.shape)[:-1] if layer.rgb else tuple(d.shape) for d in layer.data]
        same = [i for i, shape in enumerate(shapes) if shape[:-2] == shapes[0][:-2]]
        level = same[choose_level([shapes[i] for i in same], image_size)]
        if level:
            lowres = view.select(layer.data[level])
        levels = [view.select(layer.data[i]) for i in same[1:]]  # each zoom window from the level it needs
    return FrameSource(stack, image_size=image_size, lowres=lowres, levels=levels)


def _label_shape(layer) -> Tuple[int, ...]:
    """The full label shape of an image layer: its level-0 shape without the RGB axis."""
    shape = tuple(int(v) for v in (layer.data[0] if layer.multiscale else layer.data).shape)
    return shape[:-1] if layer.rgb else shape


def _safe_name(name: str) -> str:
    """A layer name as a file name (no path separators or odd characters)."""
    import re

    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._") or "image"


class _ModelLoad:
    """Loading one model for the widget: the worker calls :meth:`load`; the rest runs on
    the GUI thread.

    A checkpoint not yet in the cache downloads in the worker through a
    :class:`~napari_lit.models.DownloadProgress`, which a GUI timer copies into napari's
    activity dock and the widget's bar (no Qt object is touched from the worker); Cancel
    stops the download within one chunk. A load that fails says in the status line, a
    notification and a dialog which file to place where (with its SHA-256), with a Retry
    button."""

    def __init__(self, widget, model: str, config, device: str, retry):
        from ..models import DownloadProgress, needs_download

        self.widget, self.model, self.config, self.device, self.retry = widget, model, config, device, retry
        self.download = DownloadProgress() if needs_download(model) else None
        self.bar = None
        self.timer = None
        if self.download is not None:  # a SAM2.1 checkpoint: show the download in napari's activity
            from napari.utils import progress
            from qtpy.QtCore import QTimer

            self.bar = progress(total=0, desc=f"downloading {model}")
            self.timer = QTimer(widget)
            self.timer.setInterval(100)
            self.timer.timeout.connect(self._show_progress)
            self.timer.start()

    def load(self):
        """Generator for the worker: yields once the model is loaded; returns the predictor."""
        from ..models import load_predictor

        if self.download is not None:
            yield f"downloading {self.model}"
        predictor = load_predictor(self.model, config=self.config, device=self.device,
                                   progress=self.download if self.download is not None else False)
        if self.download is not None:
            self.download.close()
        yield "model loaded"
        return predictor

    def _show_progress(self):
        download, bar = self.download, self.bar
        if bar is not None:
            if download.total and bar.total != download.total:
                bar.total = download.total
            if download.n > bar.n:
                bar.update(download.n - bar.n)
        fraction = download.fraction()
        progress_bar = self.widget.progress_bar
        if fraction is not None:
            progress_bar.setRange(0, 1000)
            progress_bar.setValue(int(1000 * fraction))
            self.widget._status(f"downloading {self.model}: {download.n / 1e6:.0f} of {download.total / 1e6:.0f} MB")
        if download.closed or download.cancelled:
            self._stop()

    def finish(self):
        """The worker is done (loaded, failed or cancelled): the last progress is shown and the
        activity bar closed."""
        if self.timer is not None:
            self._show_progress()
        self._stop()

    def _stop(self):
        if self.timer is not None:
            self.timer.stop()
            self.timer = None
        if self.bar is not None:
            bar, self.bar = self.bar, None
            bar.close()

    def cancel(self):
        """Called when the user cancels: the download stops at its next chunk."""
        if self.download is not None:
            self.download.cancel()

    def failed(self, exc: BaseException):
        """The load failed: say so in the status line and a notification, and for a missing
        or wrong checkpoint open a dialog with the file, where to place it and its SHA-256."""
        from ..models import DownloadCancelled, ModelUnavailableError

        self.finish()
        widget = self.widget
        if isinstance(exc, DownloadCancelled):
            widget._status(str(exc))
            return
        widget._show_error(exc)
        if isinstance(exc, ModelUnavailableError) and exc.spec is not None and exc.target is not None:
            widget._show_model_dialog(exc, self.retry)


class SessionMixin:
    """Session start, open, install and close for the LIT widget."""

    # -------------------------------------------------------------- session
    def _stack(self):
        """(stack, view): the (N, Y, X[, RGB]) frames along the chosen axis of the image
        layer (other non-spatial axes held at the viewer's position; lazy) and the
        :class:`StackView` that says how the session's layers line up with the image."""
        from ._view import StackView

        layer = self.image_layer
        if layer is None:
            raise ValueError("add an image layer first")
        data = layer.data[0] if layer.multiscale else layer.data
        view = StackView.from_layer(layer, max(self.axis_combo.currentIndex(), 0), self.viewer.dims.point)
        return view.select(data), view

    def start(self):
        """Load the model (in a worker) and open a session on the chosen image."""
        from ..core.adaptation import AdapterConfig

        try:
            stack, view = self._stack()
        except ValueError as exc:
            self._show_error(exc)
            return
        if self.busy:
            self._show_error(RuntimeError("a model call is running; cancel it first"))
            return
        model = self.model_combo.currentText()
        config = None
        if model == "custom checkpoint":
            model, config = self.checkpoint_edit.text(), self.config_edit.text() or None
        device = self.device_combo.currentText()
        adapter_config = AdapterConfig(rank=self.rank_spin.value(), alpha=float(self.rank_spin.value()),
                                       lr=self.lr_spin.value(), max_steps=self.steps_spin.value(),
                                       scope=self.scope_combo.currentText())
        layer = self.image_layer
        stem = f"{_safe_name(layer.name)}-{time.strftime('%Y%m%d-%H%M%S')}"
        folder = self.store_dir / f"{stem}.litsession"
        n = 1
        while folder.exists():  # two sessions started within one second
            n += 1
            folder = self.store_dir / f"{stem}-{n}.litsession"
        source = getattr(getattr(layer, "source", None), "path", None) or layer.name
        learn = self.learn_check.isChecked()
        zoom = "auto" if self.zoom_check.isChecked() else "off"
        result = {}

        loading = self._model_loader(model, config, device)

        def load():
            from ..core.session import LitSession

            predictor = yield from loading.load()
            frames = _model_frames(layer, view, stack, predictor.image_size)
            full = dict(label_shape=_label_shape(layer), frame_axis=view.axis, fixed=view.fixed) if view.fixed else {}
            session = LitSession.create_in(folder, predictor, frames, learn=learn, adapter_config=adapter_config, **full,
                                           source=source, zoom=zoom)
            session.folder.meta["view"] = {"axis": view.axis, "fixed": {str(k): v for k, v in view.fixed.items()},
                                           "layer": layer.name}
            session.folder.save_meta()
            result["session"] = session
            yield "session ready"

        def done():
            loading.finish()
            if "session" in result:
                self._install_session(result["session"], layer, view)

        if self.session is not None:
            self.close_session()
        self._run(f"loading {model}", load, total=2, on_done=done, on_error=loading.failed,
                  on_cancel=loading.cancel)

    def open_session(self, folder=None):
        """Resume the session folder ``folder`` (a folder dialog when None) on the selected
        image layer, in a worker: labels, clicks, corrections (undo/redo), adapters and
        uncertainty come back; corrections whose learning was cut short are learned before
        the next propagation; "Propagate" fills the frames still missing."""
        from ._view import StackView

        if folder is None:
            from qtpy.QtWidgets import QFileDialog

            folder = QFileDialog.getExistingDirectory(self, "Open a napari-lit session folder", str(self.store_dir))
            if not folder:
                return
        folder = Path(folder)
        if self.busy:
            self._show_error(RuntimeError("a model call is running; cancel it first"))
            return
        try:
            from ..core.folder import SessionFolder

            meta = SessionFolder.read_meta(folder)
            layer = self.image_layer
            if layer is None:
                raise ValueError(f"open the image this session was made on first ({meta.get('source')})")
            saved = meta.get("view") or {}
            view = StackView(layer.ndim, int(saved.get("axis", 0)), {int(k): int(v) for k, v in saved.get("fixed", {}).items()})
            if view.axis >= layer.ndim - 2 or any(a >= layer.ndim - 2 for a in view.fixed):
                raise ValueError(f"{folder.name} was made on a {len(meta['image']['shape'])}D stack along axis "
                                 f"{view.axis}; {layer.name!r} has {layer.ndim} dimensions")
            data = layer.data[0] if layer.multiscale else layer.data
            stack = view.select(data)
            from ..core.folder import check_image, image_fingerprint
            from ..core.frames import FrameSource

            # the wrong image is refused here, before a model is loaded
            check_image(folder, meta, image_fingerprint(FrameSource(stack)))
        except (ValueError, OSError) as exc:
            self._show_error(exc)
            return
        model = (meta.get("model") or {}).get("name") or "lit-tiny"
        config = self.config_edit.text() or None
        device = self.device_combo.currentText()
        result = {}
        loading = self._model_loader(model, config, device, retry=lambda: self.open_session(folder))

        def load():
            from ..core.session import LitSession

            predictor = yield from loading.load()
            result["session"] = LitSession.resume(folder, predictor,
                                                  _model_frames(layer, view, stack, predictor.image_size))
            yield "session resumed"

        def done():
            loading.finish()
            if "session" in result:  # the open session is closed only now: a failed resume keeps it
                if self.session is not None:
                    self.close_session()
                session = result["session"]
                self._install_session(session, layer, view)
                for frame, obj in session.pending_learning():
                    self._pending[(frame, obj)] = False
                self._show_prompts(session)
                self._refresh_labels(self.current_frame, force=True)

        self._run(f"resuming {folder.name}", load, total=2, on_done=done, on_error=loading.failed,
                  on_cancel=loading.cancel)

    def _model_loader(self, model: str, config, device: str, retry=None) -> "_ModelLoad":
        """A model load for a worker, with its download shown and cancellable here."""
        return _ModelLoad(self, model, config, device, retry=retry or self.start)

    def _show_model_dialog(self, exc, retry):
        """A non-blocking dialog for a checkpoint that cannot be loaded: what to download
        from where, where to place it, its SHA-256; Retry starts the load again."""
        from qtpy.QtCore import Qt
        from qtpy.QtWidgets import QMessageBox

        spec, target = exc.spec, exc.target
        box = QMessageBox(self)
        box.setIcon(QMessageBox.Warning)
        box.setWindowTitle(f"napari-lit: {spec.name} is not available")
        box.setText(f"{spec.name} could not be loaded.\n\nDownload {spec.filename} from\n{spec.url}\n"
                    f"and place it at\n{target}\nthen press Retry.")
        box.setInformativeText(f"SHA-256 (checked on load): {spec.sha256}")
        box.setDetailedText(str(exc))
        box.setTextInteractionFlags(Qt.TextSelectableByMouse)  # the path can be selected and copied
        box.setStandardButtons(QMessageBox.Retry | QMessageBox.Close)
        box.setDefaultButton(QMessageBox.Close)

        def chosen(button):
            if box.standardButton(button) == QMessageBox.Retry:
                retry()

        box.buttonClicked.connect(chosen)
        box.setModal(False)
        self.model_dialog = box
        box.show()

    def _show_prompts(self, session):
        """Show the session's clicks and boxes in the prompts and boxes layers (after a resume,
        an undo or a redo), without prompting sam2 again."""
        import pandas as pd

        coords, positive, ids, boxes, box_ids = [], [], [], [], []
        for (frame, obj), prompt in sorted(session.prompts.items()):
            if prompt["kind"] == "points":
                for yx, label in zip(prompt["points"], prompt["labels"]):
                    coords.append(self.view.coords(frame, yx))
                    positive.append(bool(label))
                    ids.append(int(obj))
            elif prompt["kind"] == "box":
                y0, x0, y1, x1 = prompt["box"]
                boxes.append(np.asarray([self.view.coords(frame, yx) for yx in
                                         ((y0, x0), (y0, x1), (y1, x1), (y1, x0))], float))
                box_ids.append(int(obj))
        # not a user's click: the layers' data events must not prompt sam2 again
        self.points_layer.events.data.disconnect(self._on_points)
        try:
            self.points_layer.data = np.asarray(coords).reshape(-1, self.view.ndim)
            self.points_layer.features = pd.DataFrame({"positive": np.asarray(positive, bool),
                                                       "obj_id": np.asarray(ids, int)})
            if coords:
                self.points_layer.face_color = [POSITIVE_COLOR if p else NEGATIVE_COLOR for p in positive]
        finally:
            self.points_layer.events.data.connect(self._on_points)
        self.shapes_layer.events.data.disconnect(self._on_shapes)
        try:
            self.shapes_layer.data = []
            if boxes:
                self.shapes_layer.add_rectangles(boxes)
            self.shapes_layer.features = pd.DataFrame({"obj_id": np.asarray(box_ids, int)})
        finally:
            self.shapes_layer.events.data.connect(self._on_shapes)
        self._set_click_defaults(positive=not self.negative_mode)

    def _install_session(self, session, image_layer, view):
        self.session = session
        self._session_image = image_layer
        self.view = view
        name = image_layer.name
        held = "".join(f", axis {a} at {i}" for a, i in sorted(view.fixed.items()))
        # the prompt layers (and overlays) are one slice thick, placed at the held position
        self._session_scale = tuple(image_layer.scale)
        self._session_translate = view.translate(image_layer)
        if session.store.array.ndim == view.ndim:  # labels at the image's full shape
            labels_data, labels_translate = session.store.array, tuple(image_layer.translate)
        else:  # an (N, Y, X) store (e.g. a session from an earlier version) seen in place
            labels_data, labels_translate = view.expand(session.store.array), self._session_translate
        self.labels_layer = self.viewer.add_labels(labels_data, name=f"{name} LIT labels{held}",
                                                   scale=image_layer.scale, translate=labels_translate)
        self.labels_layer.selected_label = 1
        self.labels_layer.events.paint.connect(self._on_paint)
        self.points_layer = self.viewer.add_points(
            np.empty((0, view.ndim)), name=f"{name} LIT prompts", ndim=view.ndim,
            size=marker_size(session.store.array.shape),
            features={"positive": np.array([], bool), "obj_id": np.array([], int)},
            face_color=POSITIVE_COLOR, border_color="white", scale=self._session_scale,
            translate=self._session_translate,
        )
        self._set_click_defaults(positive=not self.negative_mode)
        self.points_layer.events.data.connect(self._on_points)
        self.points_layer.mouse_drag_callbacks.append(self._points_mouse)
        self.labels_layer.events.selected_label.connect(self._sync_obj)
        self.shapes_layer = self.viewer.add_shapes(ndim=view.ndim, name=f"{name} LIT boxes", edge_color="yellow",
                                                   face_color="transparent", scale=self._session_scale,
                                                   translate=self._session_translate,
                                                   features={"obj_id": np.array([], int)})
        self.shapes_layer.feature_defaults["obj_id"] = self.obj_id
        self.shapes_layer.events.data.connect(self._on_shapes)
        self.viewer.layers.selection.active = self.points_layer
        self.points_layer.mode = "add"
        config = session.adapter.config  # the settings this session learns with (a resumed one's own)
        self.rank_spin.setValue(config.rank)
        self.lr_spin.setValue(config.lr)
        self.steps_spin.setValue(config.max_steps)
        self.scope_combo.setCurrentText(config.scope)
        self._set_session_controls(True)
        self._update_status()
        self.update_review(now=True)  # the full draw here, while no model call runs
        self.update_tracks()
        self._start_precompute()

    def close_session(self):
        """Cancel running work and close the session (layers stay in the viewer).

        A model call in progress stops after its frame or step, and the session (its log
        file, label store) is closed only then, from the worker's ``finished`` signal: the
        GUI never waits, and nothing is written to a closed session."""
        session = self.session
        workers = [w for w in (self.worker, self.precompute_worker, self.tracks_worker) if w is not None]
        self.cancel()
        self._stop_precompute()
        self.session = None
        self.view = None
        self.tracks_layer = None  # stays in the viewer; a new session makes its own
        self._set_session_controls(False)
        if session is None:
            return
        if workers:
            self._closing.append(session)  # shutdown() closes it if the signals cannot come
            running = set(map(id, workers))

            def close_later(worker_id):
                running.discard(worker_id)
                if running:
                    return
                session.close()
                if session in self._closing:
                    self._closing.remove(session)

            for w in workers:
                w.finished.connect(lambda w_id=id(w): close_later(w_id))
        else:
            session.close()

    def _on_layer_removed(self, event):
        layer = event.value
        if self.session is not None and (layer is self.labels_layer or layer is self._session_image):
            folder = getattr(getattr(self.session, "folder", None), "path", None)
            self.close_session()
            what = "image" if layer is self._session_image else "labels"
            saved = (f"everything is saved in {folder}: reopen it with Open session... (or napari's File > Open "
                     f"on that folder)" if folder is not None else "its labels stay in their store")
            message = f"session closed: its {what} layer {layer.name!r} was removed; {saved}"
            self._closed_reason = message  # the status line keeps it until a session starts
            self._status(message)
            from napari.utils.notifications import show_info

            show_info(f"napari-lit: {message}")
        self._refresh_image_choices()
