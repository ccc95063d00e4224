"""napari dock widgets (Qt). They only wrap napari_lit.core generators in thread workers."""

from .lit_widget import SHORTCUTS, LitWidget

__all__ = ["LitWidget", "SHORTCUTS"]
