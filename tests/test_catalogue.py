"""Model catalogue: embedded, official (download + verify, with files the tests write) and custom."""

import hashlib
from dataclasses import replace

import pytest
import torch

from napari_lit.models import MODELS, ModelUnavailableError, load_predictor, resolve_device, resolve_model
from napari_lit.models import catalogue
from napari_lit.models.build import CheckpointError, build_sam2_model, load_config
from napari_lit.models.catalogue import LIT_TINY_CONFIG, LIT_TINY_WEIGHTS


def _write_checkpoint(model, path):
    torch.save({"model": model.state_dict()}, path)
    return hashlib.sha256(path.read_bytes()).hexdigest()


class _RecordingBar:
    """A tqdm-like bar (what napari.utils.progress offers) that records what pooch tells it."""

    def __init__(self):
        self.total, self.received, self.closed = 0, 0, False

    def __bool__(self):  # as tqdm: falsy while its total is 0
        return self.total > 0

    def update(self, n):
        self.received += n

    def reset(self):
        self.received = 0

    def close(self):
        self.closed = True


@pytest.fixture()
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("NAPARI_LIT_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def test_embedded_model_loads_without_network(cache):
    cfg, ckpt = resolve_model("lit-tiny")
    assert ckpt == LIT_TINY_WEIGHTS and ckpt.stat().st_size < 20e6
    p = load_predictor("lit-tiny", device="cpu")
    assert p.image_size == 256 and not any(cache.glob("*"))


def test_official_configs_exist_in_installed_sam2():
    for name, spec in MODELS.items():
        if not spec.embedded:
            assert load_config(spec.config).model.image_encoder.trunk._target_.endswith("Hiera")
            assert spec.url.endswith(spec.filename) and len(spec.sha256) == 64


@pytest.fixture(scope="module")
def hiera_tiny_checkpoint(tmp_path_factory):
    """A checkpoint of the real sam2.1_hiera_tiny architecture with random weights."""
    torch.manual_seed(0)
    model = build_sam2_model(MODELS["sam2.1_hiera_tiny"].config, target="base")
    path = tmp_path_factory.mktemp("ckpt") / "sam2.1_hiera_tiny.pt"
    digest = _write_checkpoint(model, path)
    return path, digest, model.state_dict()


def test_official_model_from_cache_is_verified_and_loaded(cache, hiera_tiny_checkpoint, monkeypatch):
    path, digest, state = hiera_tiny_checkpoint
    monkeypatch.setitem(MODELS, "sam2.1_hiera_tiny", replace(MODELS["sam2.1_hiera_tiny"], sha256=digest))
    cache.mkdir(parents=True)
    (cache / path.name).symlink_to(path)
    p = load_predictor("sam2.1_hiera_tiny", device="cpu", download=False)
    assert p.image_size == 1024
    key = "sam_mask_decoder.iou_prediction_head.layers.0.weight"
    assert torch.equal(p.state_dict()[key], state[key])


def test_hash_mismatch_says_which_file_to_place_where(cache, hiera_tiny_checkpoint):
    path, _, _ = hiera_tiny_checkpoint
    cache.mkdir(parents=True)
    (cache / path.name).write_bytes(b"not the real checkpoint")
    with pytest.raises(ModelUnavailableError, match=r"(?s)SHA-256.*place the correct file.*" + str(cache)):
        resolve_model("sam2.1_hiera_tiny")


def test_offline_error_says_which_file_to_place_where(cache, monkeypatch):
    spec = replace(MODELS["sam2.1_hiera_small"], url="http://127.0.0.1:9/sam2.1_hiera_small.pt")
    monkeypatch.setitem(MODELS, "sam2.1_hiera_small", spec)
    with pytest.raises(ModelUnavailableError, match=r"(?s)cannot download.*place it at .*sam2.1_hiera_small.pt"):
        resolve_model("sam2.1_hiera_small", progress=False)
    with pytest.raises(ModelUnavailableError, match="not downloaded yet"):
        resolve_model("sam2.1_hiera_small", download=False)


def test_download_over_http_with_hash_check(cache, served_model, monkeypatch):
    """The real download path (pooch) against a local HTTP server; no internet needed."""
    assert catalogue.needs_download("test-model") and not catalogue.needs_download("lit-tiny")
    bar = _RecordingBar()
    cfg, ckpt = resolve_model("test-model", progress=bar)
    assert ckpt == cache / "lit-copy.pt"
    assert hashlib.sha256(ckpt.read_bytes()).hexdigest() == served_model.sha256
    # the given bar was driven by the download: total = file size, updates add up to it
    assert bar.total == ckpt.stat().st_size and bar.received == bar.total and bar.closed
    assert not catalogue.needs_download("test-model")
    assert load_predictor("test-model", device="cpu").image_size == 256
    bad = replace(served_model, name="bad", filename="bad.pt", sha256="0" * 64)
    monkeypatch.setitem(MODELS, "bad", bad)
    with pytest.raises(ModelUnavailableError, match="expected SHA-256"):
        resolve_model("bad", progress=False)
    assert not (cache / "bad.pt").exists()


def test_custom_checkpoint_and_config(tmp_path):
    model = build_sam2_model(LIT_TINY_CONFIG, target="base")
    _write_checkpoint(model, tmp_path / "mine.pt")
    p = load_predictor(str(tmp_path / "mine.pt"), config=str(LIT_TINY_CONFIG), device="cpu")
    assert p.image_size == 256
    assert p.napari_lit_temperature == 1.0  # not calibrated here: logits taken as they are
    with pytest.raises(ModelUnavailableError, match="needs its Hydra config"):
        resolve_model(str(tmp_path / "mine.pt"))
    with pytest.raises(ModelUnavailableError, match="not found"):
        resolve_model(str(tmp_path / "missing.pt"), config=str(LIT_TINY_CONFIG))
    with pytest.raises(ModelUnavailableError, match="unknown model"):
        resolve_model("sam3_giant")


def test_corrupt_or_wrong_checkpoint(tmp_path, hiera_tiny_checkpoint):
    (tmp_path / "corrupt.pt").write_bytes(b"\x00garbage")
    with pytest.raises(CheckpointError, match="not a readable"):
        load_predictor(str(tmp_path / "corrupt.pt"), config=str(LIT_TINY_CONFIG), device="cpu")
    torch.save({"weights": {}}, tmp_path / "nomodel.pt")
    with pytest.raises(CheckpointError, match="'model'"):
        load_predictor(str(tmp_path / "nomodel.pt"), config=str(LIT_TINY_CONFIG), device="cpu")
    path, _, _ = hiera_tiny_checkpoint  # a Hiera checkpoint does not fit lit-tiny's config
    with pytest.raises(CheckpointError, match="does not fit"):
        load_predictor(str(path), config=str(LIT_TINY_CONFIG), device="cpu")


def test_resolve_device():
    assert resolve_device("cpu") == "cpu"
    assert resolve_device("auto") in ("cpu", "cuda", "mps")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="no CUDA"):
            resolve_device("cuda")
    with pytest.raises(ValueError, match="auto, cpu, cuda or mps"):
        resolve_device("tpu")
