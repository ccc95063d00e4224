"""The widget's Tracks layer: each object's centroid per frame and the divisions, kept up to date.

The tracks are computed from the label store (every written frame is read, one at a time) in
a thread worker, never on the GUI thread: a long stack would freeze the window. A request
while one runs marks the tracks stale; the worker then runs once more when it ends. While a
propagation writes frames, the layer is refreshed at most every :data:`TRACKS_EVERY_S`
seconds, and once more when it ends.
"""

from __future__ import annotations

import logging
import time

import numpy as np

__all__ = ["TracksMixin"]

logger = logging.getLogger(__name__)

#: while frames are written, the Tracks layer is refreshed at most this often (seconds)
TRACKS_EVERY_S = 2.0


class TracksMixin:
    """Mixed into :class:`~napari_lit._widgets.lit_widget.LitWidget` (which provides
    ``session``, ``view``, ``viewer``, ``worker``, ``tracks_check``, ``_session_image``,
    ``_session_scale``, ``_session_translate``, ``_notify`` and ``_shut_down``)."""

    tracks_layer = None  #: the session's napari Tracks layer, or None
    tracks_worker = None  #: the worker computing the tracks, or None
    _tracks_stale = False
    _tracks_at = 0.0

    def update_tracks(self):
        """Show (or update, or with "Show tracks" off remove) the Tracks layer: each
        object's centroid on every written frame and the divisions as its graph
        (:func:`~napari_lit.io.tracks.track_graph` of the session's frames in the label
        store), in the image layer's axes and scale (an image with more axes: the session's
        frames along its axis, on the held slice). Computed in a worker; returns at once."""
        layer = self.tracks_layer
        if self.session is None or not self.tracks_check.isChecked():
            if layer is not None and layer in self.viewer.layers:
                self.viewer.layers.remove(layer)
            self.tracks_layer = None
            return
        if self.tracks_worker is not None:  # once it ends, again with what was written since
            self._tracks_stale = True
            return
        from napari.qt.threading import create_worker

        from ..io.tracks import TrackExportError, track_graph, tracks_layer_data

        session, view = self.session, self.view
        lineage = session.lineage()
        self._tracks_stale = False
        self._tracks_at = time.monotonic()

        def compute():
            try:  # the store reads as the session's (N, Y, X) frames
                graph = track_graph(session.store, lineage, missing="drop")
            except TrackExportError:
                if not lineage:  # without a lineage its only refusal: no object in any frame (yet)
                    return None
                raise  # a lineage it cannot draw: said in the status line
            data, tracks_graph = tracks_layer_data(graph)
            # in the image layer's axes: the session's frames along its axis, the held axes at
            # their index (the session layers' translate); napari reads axis 0 as the tracks' time
            return np.column_stack([data[:, :1], view.expand_points(data[:, 1:])]), tracks_graph

        worker = create_worker(compute, _start_thread=False, _ignore_errors=True)

        def show(result):
            if self.session is not session or not self.tracks_check.isChecked():
                return  # closed, or switched off, meanwhile
            if result is None:
                # no object in any frame (e.g. everything undone): no layer, as napari refuses a
                # Tracks layer without points; it comes back with the next tracks
                layer = self.tracks_layer
                if layer is not None and layer in self.viewer.layers:
                    self.viewer.layers.remove(layer)
                self.tracks_layer = None
                return
            data, tracks_graph = result
            layer = self.tracks_layer
            if layer is None or layer not in self.viewer.layers:
                self.tracks_layer = self.viewer.add_tracks(
                    data, graph=tracks_graph, name=f"{self._session_image.name} LIT tracks",
                    scale=self._session_scale, translate=self._session_translate,
                    tail_length=min(30, session.n_frames), blending="translucent")
            else:
                layer.data, layer.graph = data, tracks_graph

        def errored(exc):
            if isinstance(exc, TrackExportError):  # e.g. no object in any frame, or a lineage it cannot draw
                if self.session is session:
                    self._notify(f"tracks not shown: {exc}")
                return
            logger.warning("tracks not updated: %s", exc)
            if self.worker is not None:  # a frame read while a propagation wrote it: read again after
                self._tracks_stale = True

        def finished():
            if self.tracks_worker is worker:
                self.tracks_worker = None
            if self._tracks_stale and not self._shut_down and self.session is not None:
                self.update_tracks()  # also a session opened meanwhile, whose request waited

        worker.returned.connect(show)
        worker.errored.connect(errored)
        worker.finished.connect(finished)
        self.tracks_worker = worker
        worker.start()

    def _tracks_frame_written(self):
        """A propagation wrote a frame: refresh the shown tracks if the last refresh is
        older than :data:`TRACKS_EVERY_S`."""
        if self.session is not None and self.tracks_check.isChecked() \
                and time.monotonic() - self._tracks_at >= TRACKS_EVERY_S:
            self.update_tracks()
