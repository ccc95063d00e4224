"""napari-lit: segment time-lapses, z-stacks and videos with SAM2, learning from corrections.

Heavy dependencies (torch, sam2, napari) are imported lazily, so napari can discover the
plugin without loading them.
"""

__version__ = "0.1.0.dev0"

__all__ = ["__version__"]
