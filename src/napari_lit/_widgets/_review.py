"""The widget's Review box: the selected object's masked entropy per frame, drawn cheaply.

A mixin of :class:`~napari_lit._widgets.lit_widget.LitWidget` (it uses the widget's
``session``, ``obj_id``, ``current_frame``, ``busy``, ``viewer`` and status line). Frames
stream in during propagation, so the plot is redrawn by blitting the curve over a cached
background; a full matplotlib draw (30-100 ms of the GUI thread while the model uses the
cores) happens only when the axis limits change, never while a model call runs.
"""

from __future__ import annotations

import numpy as np
from matplotlib.layout_engine import ConstrainedLayoutEngine
from qtpy.QtCore import QTimer
from qtpy.QtWidgets import QDoubleSpinBox, QGridLayout, QGroupBox, QPushButton

__all__ = ["ReviewMixin"]


class ReviewMixin:
    """The Review box: uncertainty plot (click to go to a frame), threshold, previous /
    next uncertain frame."""

    def _build_review(self):
        from matplotlib.backends.backend_qtagg import FigureCanvasQTAgg
        from matplotlib.figure import Figure

        box = QGroupBox("Review")
        grid = QGridLayout(box)
        self.review_figure = Figure(figsize=(3.2, 1.4), dpi=90, layout="constrained")
        self.review_canvas = FigureCanvasQTAgg(self.review_figure)
        self.review_canvas.setMinimumHeight(120)
        self.review_canvas.setToolTip("masked entropy of the selected object per frame; click to go to a frame")
        ax = self.review_figure.add_subplot(111)
        ax.set_xlabel("frame", fontsize=7)
        ax.set_ylabel("uncertainty", fontsize=7)
        ax.tick_params(labelsize=6)
        # the curve and the two markers are drawn by blitting over a cached background, so
        # that frames streaming in cost a few ms on the GUI thread, not a full redraw
        (self._review_line,) = ax.plot([], [], lw=1, color="tab:orange", marker=".", ms=3, animated=True)
        self._review_threshold_line = ax.axhline(0.2, color="grey", ls=":", lw=0.8, animated=True)
        self._review_frame_line = ax.axvline(0, color="tab:blue", lw=0.8, animated=True)
        self._review_ax = ax
        self._review_background = None
        self.review_canvas.mpl_connect("draw_event", self._on_review_draw)
        # the constrained layout costs 2/3 of a draw: lay out once per canvas size, then freeze it
        self.review_canvas.mpl_connect("resize_event", lambda _: self.review_figure.set_layout_engine("constrained"))
        self.review_canvas.mpl_connect("button_press_event", self._on_review_click)
        grid.addWidget(self.review_canvas, 0, 0, 1, 3)
        self.review_threshold = QDoubleSpinBox()
        self.review_threshold.setRange(0.0, 1.0)
        self.review_threshold.setSingleStep(0.01)
        self.review_threshold.setDecimals(3)
        self.review_threshold.setSpecialValueText("auto")  # 0: the object's 90th percentile
        self.review_threshold.setValue(0.0)
        self.review_threshold.setToolTip("frames whose masked entropy reaches this are 'uncertain'; "
                                         "auto: the 10 % most uncertain frames of the object")
        self.review_threshold.valueChanged.connect(self._schedule_review)
        self.prev_uncertain_button = QPushButton("◀ uncertain")
        self.next_uncertain_button = QPushButton("uncertain ▶")
        self.prev_uncertain_button.clicked.connect(lambda: self.goto_uncertain(-1))
        self.next_uncertain_button.clicked.connect(lambda: self.goto_uncertain(1))
        grid.addWidget(self.prev_uncertain_button, 1, 0)
        grid.addWidget(self.review_threshold, 1, 1)
        grid.addWidget(self.next_uncertain_button, 1, 2)
        # redraw at most every 250 ms while frames stream in (drawing is slow)
        self._review_timer = QTimer(self)
        self._review_timer.setSingleShot(True)
        self._review_timer.setInterval(250)
        self._review_timer.timeout.connect(self.update_review)
        self.viewer.dims.events.current_step.connect(self._schedule_review)
        self.viewer.dims.events.current_step.connect(self._frame_changed)
        return box

    def _schedule_review(self, *_):
        if not self._review_timer.isActive():
            self._review_timer.start()

    def update_review(self, now: bool = False):
        """Redraw the uncertainty plot of the selected object (and the current frame); with
        ``now``, a full redraw before returning.

        Only the curve and markers are redrawn (blitted over a cached background) unless the
        axis limits change. The y-limit moves in steps (0.01 x 2^k) and not while a model call
        runs (values above it are drawn at the top edge until the call ends): a full redraw
        takes 30-100 ms of the GUI thread when the model is using the cores."""
        ax = self._review_ax
        threshold = self.review_threshold_value()
        if self.session is None:
            values = np.zeros(0)
            xlim, top = (-0.5, 0.5), 1.0
        else:
            values = self.session.uncertainty(self.obj_id)
            xlim = (-0.5, len(values) - 0.5)
            top = np.nanmax(values) if np.isfinite(values).any() else 0.0
            top = max(0.01, float(top), threshold) * 1.15
            top = 0.01 * 2 ** np.ceil(np.log2(top / 0.01))
            self._review_frame_line.set_xdata([self.current_frame, self.current_frame])
        if self.busy and self._review_background is not None and ax.get_xlim() == xlim:
            top = ax.get_ylim()[1]  # no rescale while a model call runs
        self._review_line.set_data(np.arange(len(values)), np.minimum(values, top))
        self._review_threshold_line.set_ydata([threshold] * 2)
        if now or ax.get_xlim() != xlim or ax.get_ylim() != (0.0, top) or self._review_background is None:
            ax.set_xlim(*xlim)
            ax.set_ylim(0.0, top)
            if now:
                self.review_canvas.draw()  # _on_review_draw caches the background
            else:
                self.review_canvas.draw_idle()
            return
        canvas = self.review_canvas
        canvas.restore_region(self._review_background)
        self._draw_review_artists()
        canvas.blit(ax.bbox)

    def _draw_review_artists(self):
        for artist in (self._review_threshold_line, self._review_line, self._review_frame_line):
            self._review_ax.draw_artist(artist)

    def _on_review_draw(self, event):
        """After a full draw: keep the background without the curve, then draw the curve."""
        if isinstance(self.review_figure.get_layout_engine(), ConstrainedLayoutEngine):
            self.review_figure.set_layout_engine("none")  # keeps the positions just computed
        self._review_background = self.review_canvas.copy_from_bbox(self._review_ax.bbox)
        self._draw_review_artists()

    def review_threshold_value(self) -> float:
        """The review threshold in effect: the spin box's value, or with "auto" (0) the 90th
        percentile of the selected object's masked entropy over its frames so far."""
        value = self.review_threshold.value()
        if value > 0 or self.session is None:
            return value
        values = self.session.uncertainty(self.obj_id)
        values = values[np.isfinite(values)]
        return float(np.percentile(values, 90)) if len(values) else 1.0

    def _on_review_click(self, event):
        if self.session is None or event.xdata is None:
            return
        self._goto_frame(int(np.clip(round(event.xdata), 0, self.session.n_frames - 1)))

    def _goto_frame(self, frame: int):
        self.viewer.dims.set_current_step(self._frame_axis(), int(frame))

    def goto_uncertain(self, step: int = 1):
        """Go to the next (``step`` 1) or previous (-1) frame whose masked entropy for the
        selected object reaches the review threshold."""
        if self.session is None:
            return
        threshold = self.review_threshold_value()
        frame = self.session.next_uncertain(self.current_frame, self.obj_id, threshold, step)
        if frame is None:
            self._status(f"no {'later' if step > 0 else 'earlier'} frame with uncertainty >= "
                         f"{threshold:.3f} for object {self.obj_id}")
            return
        self._goto_frame(frame)
