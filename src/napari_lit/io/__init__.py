"""Readers and writers: TIFF, frame folders, zarr, evaluation-sequence layout."""

from .dataset import EvalSequence, list_sequences, load_sequence
from .readers import FrameFolder, PointPrompt, open_image, read_prompts_csv

__all__ = ["EvalSequence", "FrameFolder", "PointPrompt", "list_sequences", "load_sequence", "open_image", "read_prompts_csv"]
