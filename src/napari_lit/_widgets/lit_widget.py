"""The "LIT segmentation" dock widget.

A thin Qt layer over :class:`napari_lit.core.session.LitSession`: every model call runs in a
napari thread worker wrapping a core generator (one at a time, queued), so the viewer never
waits for the model. The session's label store (zarr on disk) *is* the data of the "LIT
labels" layer: frames are written as they are computed and the layer is refreshed.

The session tracks the frames along one axis of the image layer (time or z; the first
non-spatial axis by default); in images with more non-spatial axes the others are held at the
viewer's position when the session starts (:class:`~napari_lit._widgets._view.StackView`).

Keyboard shortcuts (viewer-wide while the widget is open)::

    .  /  ,      next / previous frame
    T            toggle positive / negative clicks (Control-click: negative for one click)
    P            propagate forward (learning first from pending corrections)
    Shift-P      propagate backward
    F            flag the current frame as wrong: show the adapted prediction
    A            accept the adapted prediction
    Shift-F      reject it (the flag's overlays go)
    H            add the hint of a flagged frame (a star) as a click
    U / Shift-U  undo / redo the last edit: a correction or any prompt (labels and adapter together)
    ]  /  [      next / previous uncertain frame
    Escape       cancel the running propagation or training

Every session is a session folder (:mod:`napari_lit.core.folder`) in the widget's session
folder: prompts, corrections, adapters, uncertainty and every written frame are saved when
they happen. "Open session" resumes one (after a crash, too) on the image it was made on.

The "Review" box plots the selected object's masked entropy per frame (Lazy-XMem eq. 2-4,
computed from the tracker's logits as frames are written); clicking the plot jumps to that
frame.
"""

from __future__ import annotations

import logging
import weakref
from collections import deque
from pathlib import Path
from typing import Callable, Deque, Dict, List, Optional, Tuple

import numpy as np
from qtpy.QtCore import QEvent, QThreadPool, QTimer
from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QFormLayout,
    QGridLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QProgressBar,
    QPushButton,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from ._flagging import FlagMixin
from ._precompute import PrecomputeMixin
from ._review import ReviewMixin
from ._sessions import NEGATIVE_COLOR, POSITIVE_COLOR, SessionMixin, default_session_dir
from ._tracks import TracksMixin

__all__ = ["LitWidget", "SHORTCUTS"]

logger = logging.getLogger(__name__)

#: The division rule's smaller daughter's share (Advanced, "divide when a mask splits").
DIVISION_SHARE = 0.2

SHORTCUTS = {
    ".": "next frame",
    ",": "previous frame",
    "T": "toggle positive / negative clicks",
    "P": "propagate forward (learns from pending corrections first)",
    "Shift-P": "propagate backward",
    "F": "flag frame: show the adapted prediction",
    "A": "accept the adapted prediction",
    "Shift-F": "reject the adapted prediction (clears the flag's overlays)",
    "H": "click where the hint (star) shows",
    "U": "undo the last edit (a correction, or any click, box or mask)",
    "Shift-U": "redo the last undone edit",
    "]": "next uncertain frame (masked entropy >= the review threshold)",
    "[": "previous uncertain frame",
    "Escape": "cancel",
}

#: below these the status line warns that the model itself doubts a click's mask
LOW_PREDICTED_IOU = 0.5
LOW_OBJECT_SCORE = 0.5


class _WorkerFailed(Exception):
    """Carries an error out of a thread worker. superqt treats a ``RuntimeError`` raised
    by a generator as "the worker was deleted": it only warns and never emits ``errored``
    or ``finished``, so the widget would stay busy for good (torch and our model errors
    are RuntimeErrors)."""

    def __init__(self, error: BaseException):
        super().__init__(str(error))
        self.error = error


def _guarded(gen_func: Callable):
    """Run generator function ``gen_func`` (values sent in pass through), re-raising any
    exception as :class:`_WorkerFailed`."""
    try:
        return (yield from gen_func())
    except Exception as exc:
        raise _WorkerFailed(exc) from exc


class LitWidget(SessionMixin, ReviewMixin, FlagMixin, PrecomputeMixin, TracksMixin, QWidget):
    """Dock widget: prompt, propagate, correct and learn, without freezing the viewer.

    Parameters
    ----------
    napari_viewer : napari.Viewer
    store_dir : str or Path, optional
        Folder for session folders; by default ``napari-lit/sessions`` in the user's home
        folder (kept across restarts, so a crash never loses the work).

    Attributes
    ----------
    session : LitSession or None
        The running session (after :meth:`start`).
    labels_layer, points_layer, shapes_layer : napari layers or None
        Created by :meth:`start`.
    """

    def __init__(self, napari_viewer, store_dir=None):
        super().__init__()
        self.viewer = napari_viewer
        self.store_dir = Path(store_dir) if store_dir else default_session_dir()
        self.session = None
        self.labels_layer = None
        self.points_layer = None
        self.shapes_layer = None
        self.suggestion_layer = None
        self.hint_layer = None
        self.entropy_layer = None
        self._hint: Optional[Tuple[int, int, Tuple[int, int]]] = None
        self._flagged: Optional[Tuple[int, int]] = None  # (frame, object) whose flag overlays show
        self.view = None  # StackView of the running session
        self._session_image = None  # the image layer the session runs on
        self._session_scale: Tuple[float, ...] = ()  # scale and translate of the one-slice session layers
        self._session_translate: Tuple[float, ...] = ()
        self._closing: List = []  # sessions closed while their worker finishes a frame
        self._closed_reason: Optional[str] = None  # why the last session closed, shown until the next
        self._shut_down = False  # napari closed (shutdown() ran)
        self._main_window = lambda: None  # weak reference to napari's main window, once known
        self._suggestion: Optional[Tuple[int, int, np.ndarray]] = None
        self.worker = None
        self._running_name: Optional[str] = None  # what the worker does ("propagating forward")
        self._running_opts: Optional[dict] = None  # its callbacks (see _run)
        self.model_dialog = None  # the last "model not available" dialog
        self._notice: Optional[str] = None  # what the status line says first until the next action
        self._queue: Deque[Tuple[str, Callable, dict]] = deque()
        self._pending: Dict[Tuple[int, int], bool] = {}  # corrected (frame, obj) -> learned
        self._last_auto: List[Tuple[int, int]] = []  # (frame, obj) the adapter fixed in the last propagation
        self.negative_mode = False
        self._build_ui()
        # napari's main window (a private attribute; without it, the first showEvent finds it)
        self._watch_window(getattr(getattr(napari_viewer, "window", None), "_qt_window", None))
        self._bind_keys()
        self.viewer.layers.events.inserted.connect(self._refresh_image_choices)
        self.viewer.layers.events.removed.connect(self._on_layer_removed)
        self._refresh_image_choices()

    # ------------------------------------------------------------------- UI
    def _build_ui(self):
        from ..models import MODELS

        layout = QVBoxLayout(self)
        setup = QGroupBox("Image and model")
        form = QFormLayout(setup)
        self.image_combo = QComboBox()
        form.addRow("image", self.image_combo)
        self.axis_combo = QComboBox()
        self.axis_combo.setToolTip("axis to propagate along (time or z)")
        form.addRow("propagate along", self.axis_combo)
        self.image_combo.currentIndexChanged.connect(self._refresh_axes)
        self.model_combo = QComboBox()
        self.model_combo.addItems(list(MODELS) + ["custom checkpoint"])
        self.model_combo.setToolTip("lit-tiny ships with napari-lit; SAM2.1 models download on first use")
        form.addRow("model", self.model_combo)
        self.checkpoint_edit = QLineEdit()
        self.checkpoint_edit.setPlaceholderText("custom .pt checkpoint")
        self.config_edit = QLineEdit()
        self.config_edit.setPlaceholderText("its Hydra config .yaml")
        form.addRow("checkpoint", self.checkpoint_edit)
        form.addRow("config", self.config_edit)
        self.device_combo = QComboBox()
        self.device_combo.addItems(["auto", "cpu", "cuda", "mps"])
        form.addRow("device", self.device_combo)
        self.learn_check = QCheckBox("learn from corrections (LIT-LoRA)")
        self.learn_check.setChecked(True)
        form.addRow(self.learn_check)
        self.zoom_check = QCheckBox("zoom to each object (small objects in their own window)")
        self.zoom_check.setChecked(True)
        self.zoom_check.setToolTip("object-centred zoom: a small object is seen through its own window of the "
                                   "frame, which follows it, instead of the whole frame shrunk to the model's input")
        form.addRow(self.zoom_check)
        self.precompute_check = QCheckBox(self.PRECOMPUTE_LABEL)
        self.precompute_check.setChecked(True)
        self.precompute_check.setToolTip("while no model call runs, encode the frames the next propagation will read "
                                         "(from the displayed frame on), so that it skips the image encoder; they "
                                         "are kept in memory and in the session folder")
        self.precompute_check.toggled.connect(self._on_precompute_toggled)
        form.addRow(self.precompute_check)
        from superqt import QCollapsible

        self.advanced = QCollapsible("Advanced adapter settings")
        adv = QWidget()
        adv_form = QFormLayout(adv)
        from ..core.adaptation import AdapterConfig

        defaults = AdapterConfig()
        self.rank_spin = QSpinBox()
        self.rank_spin.setRange(1, 64)
        self.rank_spin.setValue(defaults.rank)
        self.lr_spin = QDoubleSpinBox()
        self.lr_spin.setDecimals(5)
        self.lr_spin.setRange(1e-5, 1e-1)
        self.lr_spin.setSingleStep(1e-4)
        self.lr_spin.setValue(defaults.lr)
        self.lr_spin.setToolTip("LIT published 1e-4 for SAM2's decoder; lit-tiny's smaller decoder needs 1e-2 "
                                "(see docs/benchmarks.md)")
        self.steps_spin = QSpinBox()
        self.steps_spin.setRange(1, 500)
        self.steps_spin.setValue(defaults.max_steps)
        from ..core.adaptation import SCOPES

        self.scope_combo = QComboBox()
        self.scope_combo.addItems(list(SCOPES))
        self.scope_combo.setCurrentText(defaults.scope)
        self.scope_combo.setToolTip("object: each object learns from its own corrections (LIT). sequence: one "
                                    "adapter shared by all objects, so a correction of one nucleus fixes the same "
                                    "error on the others. both: the shared adapter and each object's own on top "
                                    "(training takes up to twice as long)")
        adv_form.addRow("LoRA rank", self.rank_spin)
        adv_form.addRow("learning rate", self.lr_spin)
        adv_form.addRow("max steps", self.steps_spin)
        adv_form.addRow("learn for", self.scope_combo)
        from ..core.uncertainty import DEFAULT_TAU_M, DEFAULT_TAU_U

        self.auto_check = QCheckBox("self-applied learning (lit-auto)")
        self.auto_check.setToolTip("while propagating, where an object's uncertainty jumps by tau_u, the adapter "
                                   "predicts the frame too and the surer prediction is kept (Lazy-XMem 3.4)")
        self.tau_u_spin = QDoubleSpinBox()
        self.tau_u_spin.setDecimals(3)
        self.tau_u_spin.setRange(0.0, 1.0)
        self.tau_u_spin.setSingleStep(0.01)
        self.tau_u_spin.setValue(DEFAULT_TAU_U)
        self.gate_check = QCheckBox("keep unsure frames out of memory")
        self.gate_check.setToolTip("a frame whose masked entropy exceeds tau_m is not written to SAM2's memory, "
                                   "so later frames do not build on it (Lazy-XMem 3.5)")
        self.tau_m_spin = QDoubleSpinBox()
        self.tau_m_spin.setDecimals(3)
        self.tau_m_spin.setRange(0.0, 1.0)
        self.tau_m_spin.setSingleStep(0.01)
        self.tau_m_spin.setValue(DEFAULT_TAU_M)
        adv_form.addRow(self.auto_check, self.tau_u_spin)
        adv_form.addRow(self.gate_check, self.tau_m_spin)
        self.divide_check = QCheckBox("divide when a mask splits (forward)")
        self.divide_check.setToolTip("while propagating forward, an object whose mask splits into two parts (the "
                                     "smaller at least 20 % of the two) divides there into two new objects, its "
                                     "daughters (undo takes it back)")
        adv_form.addRow(self.divide_check)
        self.advanced.addWidget(adv)
        form.addRow(self.advanced)
        self.start_button = QPushButton("Start session")
        self.start_button.clicked.connect(self.start)
        self.open_button = QPushButton("Open session…")
        self.open_button.setToolTip("resume a session folder (also after a crash) on the image it was made on")
        self.open_button.clicked.connect(lambda: self.open_session())
        row = QHBoxLayout()
        row.addWidget(self.start_button)
        row.addWidget(self.open_button)
        form.addRow(row)
        layout.addWidget(setup)

        loop = QGroupBox("Segment")
        grid = QGridLayout(loop)
        self.new_object_button = QPushButton("New object")
        self.new_object_button.clicked.connect(self.new_object)
        self.polarity_button = QPushButton("Clicks: positive")
        self.polarity_button.setCheckable(True)
        self.polarity_button.toggled.connect(self._set_negative)
        grid.addWidget(self.new_object_button, 0, 0)
        grid.addWidget(self.polarity_button, 0, 1)
        self.forward_button = QPushButton("Propagate ▶")
        self.backward_button = QPushButton("◀ Propagate")
        self.both_button = QPushButton("◀ Both ▶")
        self.forward_button.clicked.connect(lambda: self.propagate("forward"))
        self.backward_button.clicked.connect(lambda: self.propagate("backward"))
        self.both_button.clicked.connect(lambda: self.propagate("both"))
        row = QHBoxLayout()
        for b in (self.backward_button, self.both_button, self.forward_button):
            row.addWidget(b)
        grid.addLayout(row, 1, 0, 1, 2)
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.clicked.connect(self.cancel)
        self.progress_bar = QProgressBar()
        grid.addWidget(self.progress_bar, 2, 0)
        grid.addWidget(self.cancel_button, 2, 1)
        self.flag_button = QPushButton("Flag frame (adapted prediction)")
        self.flag_button.clicked.connect(self.flag_frame)
        self.accept_button = QPushButton("Accept")
        self.accept_button.clicked.connect(self.accept_suggestion)
        self.reject_button = QPushButton("Reject")
        self.reject_button.clicked.connect(self.reject_suggestion)
        grid.addWidget(self.flag_button, 3, 0)
        row = QHBoxLayout()
        row.addWidget(self.accept_button)
        row.addWidget(self.reject_button)
        grid.addLayout(row, 3, 1)
        self.undo_button = QPushButton("Undo")
        self.undo_button.clicked.connect(self.undo)
        self.redo_button = QPushButton("Redo")
        self.redo_button.clicked.connect(self.redo)
        self.reset_button = QPushButton("Reset adapter")
        self.reset_button.clicked.connect(self.reset_adapter)
        grid.addWidget(self.undo_button, 4, 0)
        grid.addWidget(self.redo_button, 4, 1)
        grid.addWidget(self.reset_button, 5, 0, 1, 2)
        self.divide_button = QPushButton("Divide here")
        self.divide_button.setToolTip("the selected object divides on this frame: its track ends on the frame "
                                      "before and two new objects, its daughters, begin here (from the two parts "
                                      "of its mask when it has split, else from your next clicks)")
        self.divide_button.clicked.connect(lambda: self.divide())
        self.tracks_check = QCheckBox("Show tracks")
        self.tracks_check.setToolTip("a Tracks layer: each object's centroid per frame, and the divisions")
        self.tracks_check.toggled.connect(lambda on: self.update_tracks())
        grid.addWidget(self.divide_button, 6, 0)
        grid.addWidget(self.tracks_check, 6, 1)
        self.export_button = QPushButton("Export tracks…")
        self.export_button.setToolTip("write the tracks with their divisions: a .geff folder (napari-geff, other "
                                      "tracking tools) or a Cell Tracking Challenge result folder")
        self.export_button.clicked.connect(lambda: self.export_tracks())
        grid.addWidget(self.export_button, 7, 0, 1, 2)
        self.status_label = QLabel("no session")
        self.status_label.setWordWrap(True)
        grid.addWidget(self.status_label, 8, 0, 1, 2)
        layout.addWidget(loop)
        layout.addWidget(self._build_review())
        layout.addStretch(1)
        self.setToolTip("Shortcuts:\n" + "\n".join(f"{k}: {v}" for k, v in SHORTCUTS.items()))
        self._set_session_controls(False)

    def _set_session_controls(self, enabled: bool):
        for w in (self.new_object_button, self.polarity_button, self.forward_button, self.backward_button,
                  self.both_button, self.flag_button, self.accept_button, self.reject_button, self.undo_button, self.redo_button,
                  self.reset_button, self.divide_button, self.tracks_check, self.export_button,
                  self.prev_uncertain_button, self.next_uncertain_button):
            w.setEnabled(enabled)

    def _image_layers(self):
        from napari.layers import Image

        return [layer for layer in self.viewer.layers if isinstance(layer, Image)]

    def _refresh_image_choices(self, *_):
        current = self.image_combo.currentText()
        self.image_combo.blockSignals(True)
        self.image_combo.clear()
        self.image_combo.addItems([layer.name for layer in self._image_layers()])
        if current:
            idx = self.image_combo.findText(current)
            if idx >= 0:
                self.image_combo.setCurrentIndex(idx)
        self.image_combo.blockSignals(False)
        self._refresh_axes()

    def _refresh_axes(self, *_):
        self.axis_combo.clear()
        layer = self.image_layer
        if layer is None:
            return
        shape = layer.level_shapes[0]
        labels = list(self.viewer.dims.axis_labels)[-layer.ndim:]
        names = [f"axis {i}" if str(labels[i]).lstrip("-").isdigit() else f"axis {i}: {labels[i]}"
                 for i in range(max(layer.ndim - 2, 0))]
        # the first non-spatial axis is the default (index 0)
        self.axis_combo.addItems([f"{name} ({int(shape[i])} frames)" for i, name in enumerate(names)])

    @property
    def image_layer(self):
        name = self.image_combo.currentText()
        return next((layer for layer in self._image_layers() if layer.name == name), None)

    def _status(self, text: str):
        self.status_label.setText(text)

    def _show_error(self, exc: Exception):
        from napari.utils.notifications import show_error

        self._status(f"error: {exc}")
        show_error(f"napari-lit: {exc}")

    # -------------------------------------------------------------- workers
    @property
    def busy(self) -> bool:
        """Whether a model call (propagation, training, prompt) is running."""
        return self.worker is not None

    def _run(self, name: str, gen_func: Callable, total: int = 0, on_yield: Optional[Callable] = None,
             on_done: Optional[Callable] = None, on_error: Optional[Callable] = None,
             on_cancel: Optional[Callable] = None):
        """Run ``gen_func()`` (a generator function) in a thread worker, or queue it.

        ``on_error(exc)`` replaces the default error message; ``on_cancel()`` is called
        (on the GUI thread) when the user cancels while this call runs, for work that does
        not yield often (a download). A new call is a new action: the last notice goes, and
        the background precompute stops (after its frame in progress)."""
        self._notice = None
        self._stop_precompute()
        self._queue.append((name, gen_func, dict(total=total, on_yield=on_yield, on_done=on_done,
                                                 on_error=on_error, on_cancel=on_cancel,
                                                 session=self.session)))
        if self.worker is None:
            self._next()

    def _next(self):
        from napari.qt.threading import create_worker

        if not self._queue:
            self.worker = None
            self._running_name = None
            self.update_review()  # now: the plot rescales (no model call competes for the cores)
            self._start_precompute()
            return
        name, gen_func, opts = self._queue.popleft()
        # errors are ours to show (errored below); napari would also re-raise them on the GUI thread
        worker = create_worker(_guarded, gen_func, _start_thread=False, _ignore_errors=True)
        self.worker = worker
        self._running_name = name
        self._running_opts = opts
        self.progress_bar.setRange(0, opts["total"] or 0)
        self.progress_bar.setValue(0)
        count = {"n": 0, "failed": False}

        def errored(exc):
            if self._shut_down:
                return
            count["failed"] = True
            exc = exc.error if isinstance(exc, _WorkerFailed) else exc
            if opts["on_error"] is not None:
                opts["on_error"](exc)
            else:
                self._show_error(exc)

        def current():  # the session it was started for is still the widget's
            return self.session is opts["session"]

        def yielded(value):
            if self._shut_down:  # napari closed: the widgets may be gone
                return
            count["n"] += 1
            if opts["total"]:
                self.progress_bar.setValue(min(count["n"], opts["total"]))
            if opts["on_yield"] is not None and current():
                opts["on_yield"](value)

        def finished():
            if self._shut_down:
                return
            self.progress_bar.setRange(0, 1)
            self.progress_bar.setValue(1)
            if opts["on_done"] is not None and current():
                opts["on_done"]()
            if not count["failed"]:  # an error stays in the status line
                self._update_status()
            self.worker = None
            self._running_opts = None
            self._next()

        worker.yielded.connect(yielded)
        worker.errored.connect(errored)
        worker.finished.connect(finished)
        self._status(f"{name} ...")
        worker.start()

    def cancel(self):
        """Stop the running model call after the frame or step in progress; queued calls
        are dropped. What was written stays."""
        self._queue.clear()
        if self.worker is not None:
            on_cancel = (self._running_opts or {}).get("on_cancel")
            if on_cancel is not None:
                on_cancel()
            self.worker.quit()

    # ------------------------------------------------------------ prompts
    @property
    def current_frame(self) -> int:
        """Index of the displayed frame along the propagation axis."""
        return int(self.viewer.dims.current_step[self._frame_axis()])

    def _frame_axis(self) -> int:
        """The viewer (world) axis of the propagation axis."""
        view = getattr(self, "view", None)
        if view is None:
            layer = self.image_layer
            ndim = layer.ndim if layer is not None else self.viewer.dims.ndim
            return max(self.viewer.dims.ndim - ndim + max(self.axis_combo.currentIndex(), 0), 0)
        return self.viewer.dims.ndim - view.ndim + view.axis

    @property
    def obj_id(self) -> int:
        """Current object id = the Labels layer's selected label."""
        return int(self.labels_layer.selected_label) if self.labels_layer is not None else 1

    def _sync_obj(self, *_):
        self._set_click_defaults(positive=not self.negative_mode)
        self._schedule_review()

    def new_object(self):
        """Select a label id no object uses yet."""
        used = set(self.session.tracker.obj_ids) if self.session else set()
        self.labels_layer.selected_label = max(used | {0}) + 1

    def _set_click_defaults(self, positive: bool):
        """What the next point gets: polarity, colour, object id (the selection is cleared
        first, because napari applies "current" colours to selected points)."""
        layer = self.points_layer
        if layer is None:
            return
        layer.selected_data = set()
        layer.feature_defaults["positive"] = bool(positive)
        layer.feature_defaults["obj_id"] = self.obj_id
        layer.current_face_color = POSITIVE_COLOR if positive else NEGATIVE_COLOR
        if self.shapes_layer is not None:
            self.shapes_layer.feature_defaults["obj_id"] = self.obj_id

    def _set_negative(self, negative: bool):
        self.negative_mode = bool(negative)
        self.polarity_button.setText("Clicks: negative" if negative else "Clicks: positive")
        self._set_click_defaults(positive=not negative)

    def toggle_polarity(self):
        """Switch clicks between positive and negative."""
        self.polarity_button.setChecked(not self.polarity_button.isChecked())

    def _points_mouse(self, layer, event):
        # runs before the layer adds the point: Control-click adds a negative point
        if layer.mode == "add":
            self._set_click_defaults(positive=not (self.negative_mode ^ ("Control" in event.modifiers)))

    def _on_points(self, event):
        from napari.layers.base._base_constants import ActionType

        action = getattr(event, "action", None)
        if self.session is None:
            return
        if action == ActionType.REMOVING:  # which (frame, object) prompts lose a click
            data, feats = np.asarray(self.points_layer.data), self.points_layer.features
            indices = [int(i) % len(data) for i in event.data_indices]
            self._losing_clicks = {(int(self.view.frame(data[i])), int(feats["obj_id"].iloc[i])) for i in indices}
            return
        if action == ActionType.REMOVED:
            for frame, obj_id in sorted(getattr(self, "_losing_clicks", set())):
                self._prompt_frame(frame, obj_id, removed=True)
            self._losing_clicks = set()
            return
        if action != ActionType.ADDED:
            return
        data = np.asarray(self.points_layer.data)
        indices = [int(i) % len(data) for i in event.data_indices]  # napari may say -1: the last
        added = data[indices]
        frame, yx = self.view.frame(added), self.view.yx(added)
        h, w = self.session.store.shape[1:]
        outside = ((frame < 0) | (frame >= self.session.n_frames) | (yx[:, 0] < -0.5) | (yx[:, 0] > h - 0.5)
                   | (yx[:, 1] < -0.5) | (yx[:, 1] > w - 0.5))
        if outside.any():
            # a click off the image would make every later prompt on its frame fail: drop it
            (y, x), f = yx[outside][0], frame[outside][0]
            self.points_layer.events.data.disconnect(self._on_points)
            try:
                self.points_layer.selected_data = {i for i, o in zip(indices, outside) if o}
                self.points_layer.remove_selected()
            finally:
                self.points_layer.events.data.connect(self._on_points)
            self._show_error(ValueError(f"a click at (y={y:.0f}, x={x:.0f}) on frame {f} is outside the image "
                                        f"(frames 0..{self.session.n_frames - 1}, {h} x {w} px): ignored"))
        for frame in sorted({int(f) for f in frame[~outside]}):
            self._prompt_frame(frame, self.obj_id)

    def _clicks(self, frame: int, obj_id: int):
        data = self.points_layer.data
        feats = self.points_layer.features
        sel = (self.view.frame(data) == frame) & (feats["obj_id"].to_numpy() == obj_id)
        h, w = self.session.store.shape[1:]  # a click on an edge pixel's outer half is on it
        yx = np.clip(self.view.yx(data[sel]), 0, [h - 1, w - 1])
        return yx, feats["positive"].to_numpy()[sel].astype(int)

    def _prompt_frame(self, frame: int, obj_id: int, removed: bool = False):
        """Give the object's clicks on ``frame`` to the session; after a click was deleted
        (``removed``) the remaining ones, or, with none left, the frame's prompt is removed
        (an object left with no prompt goes, with its labels)."""
        points, labels = self._clicks(frame, obj_id)
        session = self.session
        if not len(points):
            if removed and session.prompts.get((frame, obj_id), {}).get("kind") == "points":
                self._remove_prompt(frame, obj_id, "click")
            return
        if session.is_tracked(frame, obj_id) and session.tracker.prompt_frames(obj_id) != [frame]:
            self._pending[(frame, obj_id)] = False

        def prompt():
            yield session.add_points(frame, obj_id, points, labels)

        self._run(f"segmenting object {obj_id} on frame {frame}", prompt, total=1,
                  **self._prompt_callbacks(session, obj_id))

    def _prompt_callbacks(self, session, obj_id: int) -> dict:
        """``on_yield`` and ``on_done`` of a click or box prompt: the frame is redrawn, then the
        model's confidence in the mask it made is said (:meth:`_say_confidence`)."""
        made = {}

        def shown(result):
            made["result"] = result
            self._refresh_labels(result.frame_idx, force=True)

        return dict(on_yield=shown, on_done=lambda: self._say_confidence(session, made.get("result"), obj_id))

    def _say_confidence(self, session, result, obj_id: int):
        """After a click or box: the model's own confidence in its mask in the status line,
        and a warning when it is low (a click on background often makes a large mask the
        model itself rates poorly)."""
        if result is None or session is not self.session or obj_id not in session.tracker.obj_ids:
            return
        frame = result.frame_idx
        got = session.tracker.confidence(frame, obj_id)
        if got is None:
            return
        iou, score = got
        area = int((result.labels() == obj_id).sum())  # what was written, without reading the frame back
        text = f"object {obj_id} on frame {frame}: predicted IoU {iou:.2f}, object score {score:.2f}, {area} px"
        low = []
        if iou < LOW_PREDICTED_IOU:
            low.append(f"predicted IoU below {LOW_PREDICTED_IOU}")
        if score < LOW_OBJECT_SCORE:
            low.append("the model sees no object there")
        if area == 0:
            low.append("the mask is empty")
        if low:
            from napari.utils.notifications import show_warning

            text = (f"low confidence ({'; '.join(low)}) -- {text}: check the mask; a negative click (T), "
                    f"a box or U (undo) fixes a click on background")
            show_warning(f"napari-lit: {text}")
        self._notify(text)

    def _remove_prompt(self, frame: int, obj_id: int, what: str):
        session = self.session

        def remove():
            yield session.remove_prompt(frame, obj_id)

        def done():
            self._refresh_labels(frame, force=True)
            if obj_id not in session.tracker.obj_ids:
                self._notify(f"object {obj_id} has no prompt left: removed, with its labels on every frame "
                             f"(U undoes)")

        self._run(f"removing the {what} of object {obj_id} on frame {frame}", remove, total=1, on_done=done)

    def _on_shapes(self, event):
        from napari.layers.base._base_constants import ActionType

        action = getattr(event, "action", None)
        if self.session is None:
            return
        if action == ActionType.REMOVING:  # a deleted box: its prompt goes
            feats = self.shapes_layer.features
            for i in event.data_indices:
                verts = np.asarray(self.shapes_layer.data[int(i)])
                frame, obj_id = int(self.view.frame(verts[0])), int(feats["obj_id"].iloc[int(i)])
                if self.session.prompts.get((frame, obj_id), {}).get("kind") == "box":
                    self._remove_prompt(frame, obj_id, "box")
            return
        if action != ActionType.ADDED:
            return
        for i in event.data_indices:
            verts = np.asarray(self.shapes_layer.data[i])
            frame, yx = int(self.view.frame(verts[0])), self.view.yx(verts)
            box = [yx[:, 0].min(), yx[:, 1].min(), yx[:, 0].max(), yx[:, 1].max()]
            obj_id, session = self.obj_id, self.session

            def prompt(frame=frame, box=box, obj_id=obj_id):
                yield session.add_box(frame, obj_id, box)

            self._run(f"box for object {obj_id} on frame {frame}", prompt, total=1,
                      **self._prompt_callbacks(session, obj_id))

    def _on_paint(self, event):
        """Painting a frame of the labels layer is a mask correction of the selected object."""
        if self.session is None:
            return
        frames = set()
        session_frames = self.session.n_frames
        full = self.session.store.array.ndim == self.view.ndim  # labels at the image's full shape
        for atom in event.value:
            idx = atom[0]
            # napari's history atoms hold index arrays (point edits) or slices (masked
            # region edits) per axis; only paint on the session's slice is a correction
            # (elsewhere in a full-shape label image it stays as painted)
            keep = True
            for a, i in self.view.fixed.items():
                at = i if full else 0
                held = idx[a]
                keep = keep & ((at in range(*held.indices(at + 1))) if isinstance(held, slice)
                               else (np.asarray(held) == at))
            along = idx[self.view.axis]
            if isinstance(along, slice):
                if np.all(keep):
                    frames.update(range(*along.indices(session_frames)))
            else:
                along = np.asarray(along)
                frames.update(int(f) for f in np.unique(along[np.broadcast_to(keep, along.shape)]))
        obj_id, session = self.obj_id, self.session
        for frame in frames:
            mask = session.store.read_frame(frame) == obj_id
            if not mask.any() and obj_id not in session.tracker.obj_ids:
                continue
            if session.is_tracked(frame, obj_id):
                self._pending[(frame, obj_id)] = False

            def paint(frame=frame, mask=mask):
                yield session.add_mask(frame, obj_id, mask)

            self._run(f"painted correction on frame {frame}", paint, total=1,
                      on_yield=lambda r: self._refresh_labels(r.frame_idx, force=True))

    # ---------------------------------------------------------------- lineage
    def divide(self, frame: Optional[int] = None, obj_id: Optional[int] = None):
        """The selected object (``obj_id``) divides on the displayed frame (``frame``): its
        track ends on the frame before and two new objects begin there as its daughters.
        When its mask on that frame has split into two large parts
        (:func:`~napari_lit.core.session.split_daughters`) they are the daughters' masks;
        otherwise the first daughter is selected for the user's click and the status line
        says which id the second has. Undo takes each step back."""
        from ..core.session import split_daughters

        if self.session is None or self.busy:
            return
        session = self.session
        frame = self.current_frame if frame is None else int(frame)
        mother = self.obj_id if obj_id is None else int(obj_id)
        mask = session.store.read_frame(frame) == mother
        parts = split_daughters(mask)
        a = max(set(session.tracker.obj_ids) | set(session.parents) | {0}) + 1
        try:
            session.divide(frame, mother, [a, a + 1])
        except ValueError as exc:
            self._show_error(exc)
            return
        self._refresh_labels(frame, force=True)
        if parts is None:
            self.labels_layer.selected_label = a
            self._notify(f"object {mother} divided on frame {frame}: click daughter {a} now, then select "
                         f"{a + 1} (New object) and click the other daughter")
            self.update_tracks()
            return

        def prompt_daughters():
            for d, part in zip((a, a + 1), parts):
                yield session.add_mask(frame, d, part)

        def done():
            self._show_prompts(session)
            self.update_tracks()
            self._notify(f"object {mother} divided on frame {frame} into {a} and {a + 1} (the two parts of its "
                         f"mask); propagate to track them on")

        self._run(f"dividing object {mother} on frame {frame}", prompt_daughters, total=2,
                  on_yield=lambda r: self._refresh_labels(r.frame_idx, force=True), on_done=done)

    def export_tracks(self, out=None, fmt: Optional[str] = None):
        """Write the session's tracks and divisions (in a worker; for an image with more axes,
        those of the session's frames, on its slice): ``fmt`` ``"geff"`` (axis
        scales and units from the image layer) or ``"ctc"`` (the CTC result format), to
        ``out`` (a save dialog when None; a name ending in ``.geff`` or ``.zarr`` is GEFF,
        anything else a CTC folder). An existing target is replaced only after a dialog's
        confirmation (``out`` given: refused)."""
        from ..io.tracks import track_graph, write_ctc, write_geff

        if self.session is None or self.busy:
            return
        overwrite = False
        if out is None:
            from qtpy.QtWidgets import QFileDialog

            out, _ = QFileDialog.getSaveFileName(self, "Export tracks: NAME.geff (GEFF) or a folder name (CTC)",
                                                 str(self.session.folder.path.with_suffix(".geff")
                                                     if self.session.folder is not None else self.store_dir))
            if not out:
                return
            overwrite = True  # the dialog asked
        out = Path(out)
        fmt = fmt or ("geff" if out.suffix in (".geff", ".zarr") else "ctc")
        session, layer = self.session, self._session_image
        axes = (self.view.axis, -2, -1)  # the tracks of the session's (N, Y, X) frames: their layer axes
        scale = [self._session_scale[a] for a in axes]
        units = [str(u) for u in getattr(layer, "units", ())] or None
        units = [units[a] for a in axes] if units is not None and len(units) == len(self._session_scale) else None

        written = []

        def export():
            graph = track_graph(session.store, session.lineage(), missing="drop")
            if fmt == "geff":
                written.append(write_geff(session.store, out, graph=graph, scale=scale, units=units,
                                          overwrite=overwrite))
            else:
                written.append(write_ctc(session.store, out, graph=graph, overwrite=overwrite))
            yield written[-1]

        def done():  # also called after an error, which then stays in the status line
            if written:
                self._notify(f"tracks written to {out} ({'GEFF' if fmt == 'geff' else 'CTC result format'})")

        self._run(f"exporting tracks to {out.name}", export, total=1, on_done=done)

    # ---------------------------------------------------------- propagation
    def _refresh_labels(self, frame: int, force: bool = False):
        if self.labels_layer is not None and (force or frame == self.current_frame):
            self.labels_layer.refresh()
        self._schedule_review()

    def propagate(self, direction: str = "forward"):
        """Learn from pending corrections, then propagate in ``direction`` from the latest
        corrected frame (or, with no pending correction, from the earliest prompted frame).
        Refused (with a message) while a propagation or training runs or waits."""
        if self.session is None:
            return
        running = [name for name in [self._running_name] + [q[0] for q in self._queue]
                   if name and name.startswith(("propagating", "learning"))]
        if running:
            self._show_error(RuntimeError(f"{running[0]} is running: wait for it or cancel it first"))
            return
        session = self.session
        pending = [k for k, learned in self._pending.items() if not learned]
        if session.learn:
            for frame, obj_id in pending:
                def learn(frame=frame, obj_id=obj_id):
                    yield from session.learn_from(frame, obj_id)

                config = session.adapter.config  # scope both: the shared adapter's steps, then the object's
                shared = config.shared_steps or config.max_steps
                total = {"object": config.max_steps, "sequence": shared}.get(config.scope, shared + config.max_steps)
                self._run(f"learning from the correction on frame {frame}", learn, total=total)
        if not session.tracker.prompt_frames():
            self._show_error(ValueError("click an object first"))
            return
        start = max((f for f, _ in pending), default=session.tracker.prompt_frames()[0])
        n = session.n_frames
        total = {"forward": n - start, "backward": start + 1, "both": n}[direction]

        tau_u = self.tau_u_spin.value() if self.auto_check.isChecked() and session.learn else None
        tau_m = self.tau_m_spin.value() if self.gate_check.isChecked() else None
        divisions = DIVISION_SHARE if self.divide_check.isChecked() else None
        n_auto = len(session.auto_applied)

        def run():
            yield from session.propagate(start_frame=start, direction=direction, tau_u=tau_u, tau_m=tau_m,
                                         divisions=divisions)

        def done():
            self._pending.clear()  # learned (or learning is off): propagation went past them
            self._refresh_labels(self.current_frame, force=True)
            self.update_tracks()
            self._last_auto = session.auto_applied[n_auto:]  # shown in the status line

        def written(r):
            self._refresh_labels(r.frame_idx)
            self._tracks_frame_written()

        self._run(f"propagating {direction}", run, total=total, on_yield=written, on_done=done)

    def _update_status(self):
        if self.session is None:  # why the last session closed, if it was not the user's doing
            self._status(self._closed_reason or "no session")
            return
        self._closed_reason = None
        s = self.session
        last = f"{s.last_train_ms / 1000:.2f} s" if s.last_train_ms is not None else "–"
        if s.last_train_fit is not None:  # how well the adapter now reproduces that correction
            last += f" (reproduces it at IoU {s.last_train_fit:.2f})"
        auto = ""
        if self._last_auto:
            frames = sorted({f for f, _ in self._last_auto})
            auto = (f" · adapter fixed frames {', '.join(map(str, frames[:8]))}" + (" ..." if len(frames) > 8 else ""))
        notice = f"{self._notice} · " if self._notice else ""
        self._status(f"{notice}objects {len(s.tracker.obj_ids)} · corrections learned {s.n_learned} · "
                     f"last training {last}{auto} · labels: {s.store.path}")

    def _notify(self, text: Optional[str]):
        """Show ``text`` at the front of the status line until the user's next action (a new
        model call, accept, reject, another frame) replaces it; None clears it."""
        self._notice = text
        self._update_status()

    # ------------------------------------------------------------- keys
    def _bind_keys(self):
        v = self.viewer

        def step(delta):
            def f(_viewer):
                axis = self._frame_axis()
                v.dims.set_current_step(axis, int(np.clip(v.dims.current_step[axis] + delta, 0, v.dims.nsteps[axis] - 1)))
            return f

        bindings = {
            ".": step(1), ",": step(-1), "T": lambda _v: self.toggle_polarity(),
            "P": lambda _v: self.propagate("forward"), "Shift-P": lambda _v: self.propagate("backward"),
            "F": lambda _v: self.flag_frame(), "A": lambda _v: self.accept_suggestion(),
            "Shift-F": lambda _v: self.reject_suggestion(),
            "H": lambda _v: self.click_hint(),
            "U": lambda _v: self.undo(), "Shift-U": lambda _v: self.redo(), "Escape": lambda _v: self.cancel(),
            "]": lambda _v: self.goto_uncertain(1), "[": lambda _v: self.goto_uncertain(-1),
        }
        self._bound = []
        for key, func in bindings.items():
            v.bind_key(key, func, overwrite=True)
            self._bound.append(key)

    # ------------------------------------------------------------- closing
    def _watch_window(self, window) -> None:
        """Closing ``window`` (napari's main window) or quitting stops the worker."""
        if window is None or window is self or window is self._main_window():
            return
        self._main_window = weakref.ref(window)  # no reference cycle with the window
        window.installEventFilter(self)

    def showEvent(self, event):  # noqa: N802 (Qt)
        self._watch_window(self.window())  # the window this widget is docked in
        super().showEvent(event)

    def eventFilter(self, obj, event):  # noqa: N802 (Qt)
        if event.type() == QEvent.Close and obj is self._main_window():
            if not event.spontaneous():  # viewer.close(): napari asks nothing, the window goes
                self.shutdown()
            else:  # the user closes it: napari may ask first; act once the window is gone
                QTimer.singleShot(0, self._shutdown_if_closed)
        return False

    def _shutdown_if_closed(self):
        try:
            window = self._main_window()
            if window is None or not window.isVisible():
                self.shutdown()
        except RuntimeError:  # the window (and this widget) were deleted already
            pass

    def shutdown(self, wait_ms: int = 10_000):
        """Stop for good (napari is closing): cancel the model call, wait up to ``wait_ms``
        for the frame or step in progress, close the session. Everything already done was
        saved when it happened; the session folder can be opened again."""
        self.close_session()
        self._shut_down = True
        if self._closing:
            QThreadPool.globalInstance().waitForDone(wait_ms)
        while self._closing:
            self._closing.pop().close()  # idempotent: also connected to the worker's finished signal

    def closeEvent(self, event):  # noqa: N802 (Qt)
        self.close_session()
        self._review_timer.stop()
        self.viewer.dims.events.current_step.disconnect(self._schedule_review)
        self.viewer.dims.events.current_step.disconnect(self._frame_changed)
        for key in getattr(self, "_bound", []):
            self.viewer.bind_key(key, None, overwrite=True)
        super().closeEvent(event)
