"""Core: frames, tracker, label store. Imports neither Qt nor napari."""

from .frames import FrameSource, normalise_frame
from .store import LabelStore
from .tracker import FrameResult, Tracker

__all__ = ["FrameResult", "FrameSource", "LabelStore", "Tracker", "normalise_frame"]
