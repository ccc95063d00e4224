"""The widget's corrections beyond painting and clicking: flag a frame (the adapted
prediction, the "where to click" hint and the frame's entropy overlay), accept the
prediction, click at the hint, undo / redo a correction, reset the adapter.

A mixin of :class:`~napari_lit._widgets.lit_widget.LitWidget` (it uses the widget's
``session``, ``viewer``, ``view``, ``obj_id``, ``current_frame``, ``busy``, its layers, its
worker queue ``_run`` and its status line). Model calls run in the widget's thread worker.
"""

from __future__ import annotations

import numpy as np

__all__ = ["FlagMixin"]


_EDIT_NAMES = {"correction": "correction", "prompt": "prompt", "removal": "prompt removal", "division": "division"}

#: the flag's overlays, in colours that differ from each other (and from the red of negative
#: clicks): the README's legend names them
SUGGESTION_COLOR = "cyan"  # the adapted prediction, as an outline
UNCERTAINTY_COLORMAP = "magenta"  # pixel entropy of the flagged frame, brighter = less sure
HINT_COLOR = "yellow"  # the star: where a click helps most


class FlagMixin:
    """Flag / accept / hint / undo / redo / reset."""

    def flag_frame(self):
        """Flag the current frame of the selected object as wrong: in a worker, the adapted
        decoder's prediction (accept with A) and a "where to click" hint (Lazy-XMem eq. 6;
        add it as a click with H) are computed from the frame's recorded decoder inputs."""
        if self.session is None:
            return
        frame, obj_id, session = self.current_frame, self.obj_id, self.session

        def flag():
            yield (session.adapted_prediction(frame, obj_id), session.suggested_click(frame, obj_id),
                   session.entropy_map(frame, obj_id))

        self._run(f"flagging frame {frame}", flag, total=1,
                  on_yield=lambda out: self._show_flag(frame, obj_id, *out))

    def _show_flag(self, frame: int, obj_id: int, mask, hint, entropy=None):
        if self.session is None:
            return
        if entropy is not None:
            self._show_entropy(frame, entropy)
        self._hint = None
        if hint is not None:
            coords = self.view.coords(frame, hint)
            self._hint = (frame, obj_id, hint)
            if self.hint_layer is None or self.hint_layer not in self.viewer.layers:
                self.hint_layer = self.viewer.add_points(
                    coords[None], name="LIT hint (H: click here)", ndim=self.view.ndim, symbol="star",
                    size=2.5 * self.points_layer.current_size,
                    face_color=HINT_COLOR, border_color="black", blending="translucent_no_depth",  # over the overlays
                    scale=self._session_scale,
                    translate=self._session_translate)
            else:
                self.hint_layer.data = coords[None]
            self.viewer.layers.selection.active = self.points_layer
        self._flagged = (frame, obj_id)
        if mask is None:
            self._notify(f"frame {frame}: no adapted prediction yet (correct a frame and propagate to teach the "
                         f"adapter); {'the yellow star marks where to click (H)' if hint else 'no hint'}")
            return
        self._suggestion = (frame, obj_id, mask)
        data = np.zeros((self.session.n_frames,) + mask.shape, np.uint8)
        data[frame][mask] = 1
        data = self.view.expand(data)
        if self.suggestion_layer is None or self.suggestion_layer not in self.viewer.layers:
            from napari.utils.colormaps import DirectLabelColormap

            self.suggestion_layer = self.viewer.add_labels(
                data, name="LIT suggestion (A: accept, Shift-F: reject)", opacity=1.0,
                blending="translucent_no_depth",  # drawn over the labels and the uncertainty
                colormap=DirectLabelColormap(color_dict={None: "transparent", 0: "transparent", 1: SUGGESTION_COLOR}),
                scale=self._session_scale, translate=self._session_translate)
            self.suggestion_layer.contour = 2  # an outline: the frame's own mask stays visible under it
        else:
            self.suggestion_layer.data = data
        if self.hint_layer is not None and self.hint_layer in self.viewer.layers:  # the star on top
            self.viewer.layers.move(self.viewer.layers.index(self.hint_layer), len(self.viewer.layers))
        self.viewer.layers.selection.active = self.points_layer  # clicks still go to the prompts
        self._notify(f"frame {frame}: adapted prediction outlined in {SUGGESTION_COLOR}; press A to accept it, "
                     f"H to click at the {HINT_COLOR} star, Shift-F to reject it, or correct the frame")

    def _show_entropy(self, frame: int, entropy: np.ndarray):
        """The pixel entropy of ``frame`` as an overlay shown on that frame only (a layer one
        frame thick, placed at it)."""
        data = np.expand_dims(entropy, [a for a in range(self.view.ndim - 2)])
        translate = np.asarray(self._session_translate, float).copy()
        translate[self.view.axis] += frame * float(self._session_scale[self.view.axis])
        if self.entropy_layer is None or self.entropy_layer not in self.viewer.layers:
            self.entropy_layer = self.viewer.add_image(
                data, name="LIT uncertainty (flagged frame)", colormap=UNCERTAINTY_COLORMAP, blending="additive",
                opacity=0.6, contrast_limits=(0, 1), scale=self._session_scale, translate=translate)
        else:
            self.entropy_layer.data = data
            self.entropy_layer.translate = translate
        self.viewer.layers.selection.active = self.points_layer

    def clear_flag(self):
        """Take the flag's overlays away (suggestion, hint star, uncertainty) and forget them:
        on accept, reject, a click at the hint, or another frame."""
        self._flagged = None
        self._suggestion = None
        self._hint = None
        for name in ("suggestion_layer", "hint_layer", "entropy_layer"):
            layer = getattr(self, name)
            if layer is not None and layer in self.viewer.layers:
                self.viewer.layers.remove(layer)
            setattr(self, name, None)
        if self.points_layer is not None and self.points_layer in self.viewer.layers:
            self.viewer.layers.selection.active = self.points_layer

    def reject_suggestion(self):
        """The shown adapted prediction is wrong: clear the overlays; correct the frame instead."""
        if self.session is None or self._flagged is None:
            return
        frame = self._flagged[0]
        self.clear_flag()
        self._notify(f"suggestion on frame {frame} rejected: correct the frame (click, box or paint)")

    def _frame_changed(self, *_):
        """Another frame is shown: the flag's overlays belong to the flagged frame only."""
        if self._flagged is not None and self.session is not None and self.current_frame != self._flagged[0]:
            self.clear_flag()
            self._notify(None)

    def click_hint(self):
        """Add the shown hint as a click (positive, or negative in negative mode) on its frame."""
        if self.session is None or self._hint is None:
            return
        frame, obj_id, (y, x) = self._hint
        self.clear_flag()
        coords = self.view.coords(frame, (y, x))
        self.labels_layer.selected_label = obj_id
        self._set_click_defaults(positive=not self.negative_mode)
        self.points_layer.add(coords)  # as if the user clicked there: the frame updates at once

    def accept_suggestion(self):
        """Accept the shown adapted prediction: written to SAM2's memory like a correction."""
        if self.session is None or self._suggestion is None:
            return
        frame, obj_id, mask = self._suggestion
        self.clear_flag()
        session = self.session

        def accept():
            yield session.accept(frame, obj_id, mask)

        self._run(f"accepting the suggestion on frame {frame}", accept, total=1,
                  on_yield=lambda r: self._refresh_labels(r.frame_idx, force=True))

    def undo(self):
        """Undo the last edit -- a correction, a first click, box or mask, or a deleted
        prompt: the frame's labels, its prompts (shown in the prompts and boxes layers) and
        the adapter state come back as they were."""
        if self.session is None or self.busy:
            return
        c = self.session.undo()
        if c is not None:
            self._pending.pop((c.frame_idx, c.obj_id), None)
            self._show_prompts(self.session)
            self._refresh_labels(c.frame_idx, force=True)
            self.update_tracks()
        self._notify(None if c is None else
                     f"undone: the {_EDIT_NAMES[c.kind]} of object {c.obj_id} on frame {c.frame_idx} (Shift-U redoes)")

    def redo(self):
        """Redo the last undone edit (its prompt, labels and adapter state)."""
        if self.session is None or self.busy:
            return
        c = self.session.redo()
        if c is not None:
            if c.kind == "correction" and not c.learned and self.session.learn:
                self._pending[(c.frame_idx, c.obj_id)] = False
            self._show_prompts(self.session)
            self._refresh_labels(c.frame_idx, force=True)
            self.update_tracks()
        self._notify(None if c is None else f"redone: the {_EDIT_NAMES[c.kind]} of object {c.obj_id} on frame {c.frame_idx}")

    def reset_adapter(self):
        """Forget what was learned for all objects."""
        if self.session is None or self.busy:
            return
        self.session.reset_adapter()
        self._update_status()
