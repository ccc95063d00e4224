"""Models: the catalogue (embedded lit-tiny, official SAM2.1, custom) and builders."""

from .catalogue import (
    DEFAULT_MODEL,
    MODELS,
    DownloadCancelled,
    DownloadProgress,
    ModelSpec,
    ModelUnavailableError,
    load_predictor,
    needs_download,
    resolve_device,
    resolve_model,
)

__all__ = [
    "DEFAULT_MODEL",
    "MODELS",
    "DownloadCancelled",
    "DownloadProgress",
    "ModelSpec",
    "ModelUnavailableError",
    "load_predictor",
    "needs_download",
    "resolve_device",
    "resolve_model",
]
