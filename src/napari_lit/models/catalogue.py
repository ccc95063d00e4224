"""Model catalogue: the embedded ``lit-tiny``, the official SAM2.1 checkpoints, custom files.

``lit-tiny`` ships inside the package (no download). The official SAM2.1 checkpoints are
downloaded on first use into a user cache directory (``pooch`` with a progress bar) and
verified against their SHA-256; when that is impossible (offline, or the hash differs) a
:class:`ModelUnavailableError` says which file to place where. A custom checkpoint is a
``.pt`` file plus its Hydra config.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Optional, Tuple, Union

__all__ = [
    "ModelSpec",
    "MODELS",
    "DEFAULT_MODEL",
    "LIT_TINY_CONFIG",
    "LIT_TINY_WEIGHTS",
    "ModelUnavailableError",
    "DownloadCancelled",
    "DownloadProgress",
    "cache_dir",
    "resolve_model",
    "resolve_device",
    "needs_download",
    "load_predictor",
]

logger = logging.getLogger(__name__)

_HERE = Path(__file__).parent
LIT_TINY_CONFIG = _HERE / "configs" / "lit_tiny.yaml"
LIT_TINY_WEIGHTS = _HERE / "weights" / "lit_tiny.pt"
DEFAULT_MODEL = "lit-tiny"


@dataclass(frozen=True)
class ModelSpec:
    """One catalogue entry.

    Attributes
    ----------
    name : str
    config : str
        Hydra config: a path, or a path inside the installed ``sam2`` package.
    filename : str
        Checkpoint file name (in the cache directory, or the package for embedded models).
    url : str or None
        Download address; None for embedded models.
    sha256 : str or None
        Expected SHA-256 of the checkpoint; None for embedded models.
    description : str
    temperature : float
        Logit temperature for the uncertainty (masked entropy, where-to-click point): the
        mask logits are divided by it before the sigmoid (temperature scaling, Guo et al.
        2017). Fitted for lit-tiny by ``benchmarks/uncertainty_calibration.py`` on generated
        sequences; 1.0 (as the model gives them) for the official SAM2.1 checkpoints, which
        were not calibrated here.
    """

    name: str
    config: str
    filename: str
    url: Optional[str] = None
    sha256: Optional[str] = None
    description: str = ""
    temperature: float = 1.0

    @property
    def embedded(self) -> bool:
        return self.url is None


_FB = "https://dl.fbaipublicfiles.com/segment_anything_2/092824/"

MODELS: Dict[str, ModelSpec] = {
    "lit-tiny": ModelSpec(
        "lit-tiny", str(LIT_TINY_CONFIG), LIT_TINY_WEIGHTS.name,
        description="napari-lit's own small SAM2 (CNN trunk, 256 px), shipped in the package",
        # pixel NLL on 60 generated clips: 0.143 at T = 1, 0.076 at 2.748 (refit for the v2
        # weights, run R3; benchmarks/results/uncertainty_calibration.json)
        temperature=2.748,
    ),
    "sam2.1_hiera_tiny": ModelSpec(
        "sam2.1_hiera_tiny", "configs/sam2.1/sam2.1_hiera_t.yaml", "sam2.1_hiera_tiny.pt",
        _FB + "sam2.1_hiera_tiny.pt",
        "7402e0d864fa82708a20fbd15bc84245c2f26dff0eb43a4b5b93452deb34be69",
        "official SAM2.1 Hiera tiny (38.9 M parameters)",
    ),
    "sam2.1_hiera_small": ModelSpec(
        "sam2.1_hiera_small", "configs/sam2.1/sam2.1_hiera_s.yaml", "sam2.1_hiera_small.pt",
        _FB + "sam2.1_hiera_small.pt",
        "6d1aa6f30de5c92224f8172114de081d104bbd23dd9dc5c58996f0cad5dc4d38",
        "official SAM2.1 Hiera small (46 M parameters)",
    ),
    "sam2.1_hiera_base_plus": ModelSpec(
        "sam2.1_hiera_base_plus", "configs/sam2.1/sam2.1_hiera_b+.yaml", "sam2.1_hiera_base_plus.pt",
        _FB + "sam2.1_hiera_base_plus.pt",
        "a2345aede8715ab1d5d31b4a509fb160c5a4af1970f199d9054ccfb746c004c5",
        "official SAM2.1 Hiera base+ (80.8 M parameters)",
    ),
    "sam2.1_hiera_large": ModelSpec(
        "sam2.1_hiera_large", "configs/sam2.1/sam2.1_hiera_l.yaml", "sam2.1_hiera_large.pt",
        _FB + "sam2.1_hiera_large.pt",
        "2647878d5dfa5098f2f8649825738a9345572bae2d4350a2468587ece47dd318",
        "official SAM2.1 Hiera large (224.4 M parameters)",
    ),
}


class ModelUnavailableError(RuntimeError):
    """A model's weights cannot be found, downloaded or verified.

    Attributes
    ----------
    spec : ModelSpec or None
        The catalogue entry that could not be loaded (None for a custom checkpoint).
    target : Path or None
        Where its checkpoint must be placed by hand (the cache file), when that helps.
    """

    def __init__(self, message: str, spec: Optional["ModelSpec"] = None, target: Optional[Path] = None):
        super().__init__(message)
        self.spec = spec
        self.target = target


class DownloadCancelled(ModelUnavailableError):
    """The user cancelled a checkpoint download; no partial file was kept."""


class DownloadProgress:
    """Progress of one download, safe to read and cancel from another thread.

    Pass it as ``progress`` to :func:`resolve_model` or :func:`load_predictor`: the
    download (in a worker thread) sets :attr:`total` and adds to :attr:`n`; the GUI
    thread reads them on a timer (no Qt object is touched from the worker) and calls
    :meth:`cancel`, after which the next chunk raises :class:`DownloadCancelled`.

    Attributes
    ----------
    total : int
        Size of the file in bytes (0 until the server says).
    n : int
        Bytes received so far.
    """

    def __init__(self):
        self._lock = threading.Lock()
        self._cancelled = threading.Event()
        self.total = 0
        self.n = 0
        self.closed = False

    @property
    def cancelled(self) -> bool:
        """Whether :meth:`cancel` was called."""
        return self._cancelled.is_set()

    def cancel(self):
        """Stop the download at its next chunk (pooch streams 64 KiB at a time)."""
        self._cancelled.set()

    def __bool__(self):  # pooch tests the bar's truth value
        return True

    def update(self, n_bytes: int):
        """Add ``n_bytes`` received (pooch calls it per chunk).

        Raises
        ------
        DownloadCancelled
            Once :meth:`cancel` was called.
        """
        if self._cancelled.is_set():
            raise DownloadCancelled("download cancelled")
        with self._lock:
            self.n += int(n_bytes)

    def reset(self):
        """Start counting from 0 again (pooch does before its final update)."""
        with self._lock:
            self.n = 0

    def close(self):
        """The download is over (completed or not)."""
        self.closed = True

    def fraction(self) -> Optional[float]:
        """Share of the file received, in [0, 1]; None while the size is unknown."""
        with self._lock:
            return min(self.n / self.total, 1.0) if self.total else None


def cache_dir() -> Path:
    """Where downloaded checkpoints live: ``$NAPARI_LIT_CACHE`` or the OS user cache."""
    env = os.environ.get("NAPARI_LIT_CACHE")
    if env:
        return Path(env)
    import pooch

    return Path(pooch.os_cache("napari-lit"))


def sha256sum(path: Union[str, Path], chunk: int = 1 << 20) -> str:
    """SHA-256 hex digest of a file, read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


class _BarForPooch:
    """Hands a tqdm-like bar to pooch. pooch tests the bar's truth value, and a tqdm bar
    with ``total == 0`` (not yet known) is falsy, so pooch would skip it."""

    def __init__(self, bar):
        self.bar = bar

    def __bool__(self):
        return True

    @property
    def total(self):
        return self.bar.total

    @total.setter
    def total(self, value):
        self.bar.total = value

    def update(self, n):
        self.bar.update(n)

    def reset(self):
        self.bar.reset()

    def close(self):
        self.bar.close()


def _download(spec: ModelSpec, directory: Path, progress) -> Path:
    import pooch

    target = directory / spec.filename
    if target.exists():
        digest = sha256sum(target)
        if digest != spec.sha256:
            raise ModelUnavailableError(
                f"{target} has SHA-256 {digest}, but {spec.name} must have {spec.sha256}. "
                f"Delete it and let napari-lit download it again, or place the correct file "
                f"from {spec.url} at {target}.", spec, target
            )
        return target
    directory.mkdir(parents=True, exist_ok=True)
    bar = progress if isinstance(progress, bool) else _BarForPooch(progress)
    # 64 KiB chunks: a cancel (DownloadProgress) takes effect within one chunk; pooch
    # writes to a temporary file and moves it into place only once the hash matches
    downloader = pooch.HTTPDownloader(progressbar=bar, chunk_size=1 << 16, timeout=30)
    try:
        path = pooch.retrieve(spec.url, known_hash=f"sha256:{spec.sha256}", fname=spec.filename,
                              path=directory, downloader=downloader)
    except DownloadCancelled as exc:
        raise DownloadCancelled(f"download of {spec.name} cancelled; nothing was kept in {directory}",
                                spec, target) from exc
    except ValueError as exc:  # pooch's hash mismatch
        raise ModelUnavailableError(
            f"the file downloaded from {spec.url} does not have the expected SHA-256 "
            f"{spec.sha256} ({exc}). Place the correct {spec.filename} at {target}.", spec, target
        ) from exc
    except Exception as exc:  # no network, proxy, HTTP error ...
        raise ModelUnavailableError(
            f"cannot download {spec.name} from {spec.url} ({exc.__class__.__name__}: {exc}). "
            f"Without network access, download {spec.filename} on another machine and place "
            f"it at {target} (SHA-256 {spec.sha256}).", spec, target
        ) from exc
    return Path(path)


def resolve_model(name: str = DEFAULT_MODEL, config: Optional[Union[str, Path]] = None,
                  download: bool = True, progress=True,
                  directory: Optional[Union[str, Path]] = None) -> Tuple[str, Path]:
    """Find (or download) a model's config and checkpoint.

    Parameters
    ----------
    name : str
        A catalogue name (see :data:`MODELS`) or the path of a custom ``.pt`` checkpoint.
    config : str or Path, optional
        Hydra config for a custom checkpoint (required then).
    download : bool
        Download missing official checkpoints; otherwise raise.
    progress : bool or tqdm-like object
        Show a download progress bar on stderr (True), none (False), or drive this bar
        (anything with ``total``, ``update(n_bytes)``, ``reset()`` and ``close()``, such as
        ``napari.utils.progress``; pooch sets ``total`` to the file size in bytes). A
        :class:`DownloadProgress` also lets another thread cancel the download.
    directory : str or Path, optional
        Cache directory; :func:`cache_dir` by default.

    Returns
    -------
    (config, checkpoint) : (str, Path)

    Raises
    ------
    ModelUnavailableError
        Unknown name, missing custom file or config, failed download or hash mismatch;
        the message says which file to place where (and ``exc.spec``, ``exc.target`` too).
    DownloadCancelled
        ``progress`` is a :class:`DownloadProgress` that was cancelled mid-download.
    """
    spec = MODELS.get(name)
    if spec is None:
        path = Path(name)
        if path.suffix in (".pt", ".pth", ".ckpt") or path.exists():
            if not path.is_file():
                raise ModelUnavailableError(f"custom checkpoint not found: {path}")
            if config is None:
                raise ModelUnavailableError(
                    f"custom checkpoint {path} needs its Hydra config (--config FILE.yaml)"
                )
            if not Path(config).is_file():
                try:
                    from .build import load_config

                    load_config(config)
                except FileNotFoundError as exc:
                    raise ModelUnavailableError(str(exc)) from exc
            return str(config), path
        raise ModelUnavailableError(
            f"unknown model {name!r}: expected one of {', '.join(MODELS)} or a .pt checkpoint path"
        )
    if spec.embedded:
        if not LIT_TINY_WEIGHTS.is_file():
            raise ModelUnavailableError(
                f"the embedded {spec.name} weights are missing from the installation "
                f"(expected {LIT_TINY_WEIGHTS}); reinstall napari-lit"
            )
        return spec.config, LIT_TINY_WEIGHTS
    directory = Path(directory) if directory else cache_dir()
    target = directory / spec.filename
    if not download and not target.exists():
        raise ModelUnavailableError(
            f"{spec.name} is not downloaded yet: place {spec.filename} (from {spec.url}) at {target}",
            spec, target)
    return spec.config, _download(spec, directory, progress)


def resolve_device(device: str = "auto") -> str:
    """``auto`` -> ``cuda`` if available, else ``mps`` if available, else ``cpu``.

    Raises
    ------
    ValueError
        If an explicitly requested device is not available.
    """
    import torch

    device = str(device).lower()
    if device == "auto":
        if torch.cuda.is_available():
            return "cuda"
        mps = getattr(torch.backends, "mps", None)
        if mps is not None and mps.is_available():
            return "mps"
        return "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError("device 'cuda' was requested but PyTorch sees no CUDA GPU")
    if device == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise ValueError("device 'mps' was requested but this PyTorch has no MPS support")
    if device not in ("cpu", "mps") and not device.startswith("cuda"):
        raise ValueError(f"device must be auto, cpu, cuda or mps; got {device!r}")
    return device


def needs_download(name: str, directory: Optional[Union[str, Path]] = None) -> bool:
    """Whether loading catalogue model ``name`` would download its checkpoint first (False
    for the embedded model, custom checkpoints and files already in the cache).

    Parameters
    ----------
    name : str
        A catalogue name or a custom checkpoint path.
    directory : str or Path, optional
        Cache directory; :func:`cache_dir` by default.
    """
    spec = MODELS.get(name)
    if spec is None or spec.embedded:
        return False
    directory = Path(directory) if directory else cache_dir()
    return not (directory / spec.filename).exists()


def load_predictor(name: str = DEFAULT_MODEL, config: Optional[Union[str, Path]] = None,
                   device: str = "auto", download: bool = True, progress=True):
    """Build sam2's video predictor for a catalogue model or a custom checkpoint.

    Parameters
    ----------
    name, config, download, progress
        See :func:`resolve_model`.
    device : str
        See :func:`resolve_device`.

    Returns
    -------
    sam2.sam2_video_predictor.SAM2VideoPredictor
        In eval mode on ``device``; ``predictor.image_size`` is its input size in pixels,
        ``predictor.napari_lit_temperature`` its logit temperature (see :class:`ModelSpec`).

    Raises
    ------
    ModelUnavailableError
        See :func:`resolve_model`.
    napari_lit.models.build.CheckpointError
        If the checkpoint is corrupt or does not fit the config.
    """
    from .build import build_sam2_model

    cfg, ckpt = resolve_model(name, config, download=download, progress=progress)
    predictor = build_sam2_model(cfg, ckpt, target="video", device=resolve_device(device))
    predictor.napari_lit_model = name if name in MODELS else str(ckpt)
    spec = MODELS.get(name)
    predictor.napari_lit_temperature = spec.temperature if spec is not None else 1.0
    # which weights a session folder was made with (a downloaded checkpoint was verified
    # against its catalogue hash; the embedded and custom ones are hashed here, < 1 s)
    predictor.napari_lit_checksum = spec.sha256 if spec is not None and spec.sha256 else sha256sum(ckpt)
    return predictor
