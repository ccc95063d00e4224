"""The widget's background precompute: image features filled ahead of the user while idle.

While no model call runs, a thread worker encodes what the next propagation will read
(:meth:`napari_lit.core.tracker.Tracker.precompute_plan`: from the displayed frame to the
end, then back to the first) into the session's feature cache (memory and its folder). Any
model call the user starts stops it after the frame in progress; it starts again, skipping
what is cached, when the widget is idle again. It never blocks the GUI and never shows an
error dialog (a failure is logged and it stops until the next idle moment). Its check box
shows how far it got ("(12/40)": entries of the plan cached, a frame or an object's window of one).
"""

from __future__ import annotations

import logging

__all__ = ["PrecomputeMixin"]

logger = logging.getLogger(__name__)


class PrecomputeMixin:
    """Mixed into :class:`~napari_lit._widgets.lit_widget.LitWidget` (which provides
    ``session``, ``worker``, ``precompute_check``, ``current_frame`` and ``_shut_down``)."""

    precompute_worker = None  #: the running background precompute, or None
    #: (entries cached, entries planned) of the last background precompute
    precompute_progress = (0, 0)
    PRECOMPUTE_LABEL = "precompute image features while idle"

    def _start_precompute(self):
        """Start the background precompute if the widget is idle and there is work."""
        session = self.session
        if (self._shut_down or session is None or self.worker is not None or self.precompute_worker is not None
                or not self.precompute_check.isChecked() or session.tracker.features is None):
            return
        from napari.qt.threading import create_worker

        tracker = session.tracker
        start = min(max(int(self.current_frame), 0), tracker.n_frames - 1)
        order = list(range(start, tracker.n_frames)) + list(range(start - 1, -1, -1))
        plan = tracker.precompute_plan(order)
        if all(entry in tracker.features for entry in plan):  # memory or written flags: no chunk is read
            self._show_precompute_progress(len(plan), len(plan))  # the plan may have grown, all cached
            return
        count = {"n": 0}  # the plan's entries yielded so far (cached ones pass at once)
        self._show_precompute_progress(count["n"], len(plan))

        def run():
            yield from tracker.precompute(plan)

        worker = create_worker(run, _start_thread=False, _ignore_errors=True)

        def yielded(_value):
            count["n"] += 1
            self._show_precompute_progress(count["n"], len(plan))

        def errored(exc):
            logger.warning("background precompute stopped: %s", exc)

        def finished():
            if self.precompute_worker is worker:
                self.precompute_worker = None

        worker.yielded.connect(yielded)
        worker.errored.connect(errored)
        worker.finished.connect(finished)
        self.precompute_worker = worker
        worker.start()

    def _show_precompute_progress(self, done: int, total: int):
        """Record and show (on the check box) how many planned entries are cached."""
        done = min(int(done), int(total))
        self.precompute_progress = (done, int(total))
        try:
            self.precompute_check.setText(f"{self.PRECOMPUTE_LABEL} ({done}/{total})")
        except RuntimeError:  # the widget is gone (napari closed) and a last frame reports in
            pass

    def _stop_precompute(self):
        """Ask the background precompute to stop after the frame in progress (returns at once)."""
        if self.precompute_worker is not None:
            self.precompute_worker.quit()

    def _on_precompute_toggled(self, checked: bool):
        if checked:
            self._start_precompute()
        else:
            self._stop_precompute()
