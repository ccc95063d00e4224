"""Bad input: one test per row of docs/bad-input.md (a clear error, or a defined behaviour).

Rows whose test lives elsewhere (checkpoints, downloads, another image's session folder) name
that test in the table; ``test_every_row_of_the_table_has_a_test`` checks the names exist."""

from __future__ import annotations

import errno
import re
from pathlib import Path

import numpy as np
import pytest

from napari_lit.cli import main
from napari_lit.core.folder import SessionFolder, SessionWriteError
from napari_lit.core.frames import FrameSource
from napari_lit.core.session import LitSession
from napari_lit.core.store import LabelStore

DOC = Path(__file__).resolve().parents[1] / "docs" / "bad-input.md"


def _disk_stack(n=4, size=96, dtype=np.uint8, radius=22):
    """(n, size, size) frames with a bright disk moving right 3 px a frame, and its masks."""
    yy, xx = np.mgrid[:size, :size]
    masks = np.stack([(yy - size // 2) ** 2 + (xx - 30 - 3 * t) ** 2 < radius ** 2 for t in range(n)])
    frames = np.where(masks, 200, 40).astype(dtype)
    return frames, masks


def _iou(a, b):
    return (a & b).sum() / max((a | b).sum(), 1)


def _segment(predictor, tmp_path, frames, mask0, name="s"):
    """Prompt the object's mask on frame 0 and propagate: the session's labels and the
    object's masked entropy per frame."""
    s = LitSession(predictor, frames, store=LabelStore.create(tmp_path / f"{name}.zarr", _yx_shape(frames)))
    n = frames.shape[0]
    s.add_mask(0, 1, mask0)
    list(s.propagate())
    assert s.store.frames_done == tuple(range(n))
    labels = np.asarray(s.store.array[:])
    entropy = s.uncertainty(1)
    s.close()
    return labels, entropy


def _yx_shape(frames):
    return tuple(frames.shape[:3])


def _cli(capsys, *args):
    code = main([str(a) for a in args])
    return code, capsys.readouterr().err


def _prompts_csv(path, rows):
    path.write_text("frame,y,x,label,object_id\n" + "".join(f"{r}\n" for r in rows))
    return path


# ------------------------------------------------------------------ image arrays
def test_2d_image(predictor, tmp_path, capsys):
    image = np.zeros((64, 64), np.uint8)
    with pytest.raises(ValueError, match="2 dimensions .* single 2D image needs a leading frame axis"):
        LitSession(predictor, image, store=LabelStore.create(tmp_path / "l.zarr", (1, 64, 64)))
    import tifffile

    tifffile.imwrite(tmp_path / "one.tif", image)
    code, err = _cli(capsys, "segment", tmp_path / "one.tif", "--prompts",
                     _prompts_csv(tmp_path / "p.csv", ["0,30,30,1,1"]), "--out", tmp_path / "o.zarr")
    assert code == 2 and "expected (N, Y, X)" in err and "(64, 64)" in err
    assert not (tmp_path / "o.zarr").exists()  # nothing written


def test_one_frame_stack(predictor, tmp_path):
    frames, masks = _disk_stack(n=1)
    labels, entropy = _segment(predictor, tmp_path, frames, masks[0])
    assert labels.shape == (1, 96, 96) and _iou(labels[0] == 1, masks[0]) > 0.6
    assert np.isfinite(entropy).all()


def test_empty_array(predictor, tmp_path):
    for shape in [(0, 64, 64), (3, 0, 64)]:
        with pytest.raises(ValueError, match=re.escape(f"the stack is empty: shape {shape}")):
            LitSession(predictor, np.zeros(shape, np.uint8), store=LabelStore.create(tmp_path / f"{shape[0]}.zarr", (1, 64, 64)))


def test_nan_and_inf_values(predictor, tmp_path):
    frames, masks = _disk_stack(dtype=np.float32)
    dirty = frames.copy()
    dirty[:, :8, :8] = np.nan  # a dead corner
    dirty[:, -4:, :] = -np.inf
    dirty[0, 5, 90] = np.inf  # one hot pixel
    src = FrameSource(dirty, image_size=predictor.image_size)
    assert np.isfinite(src.normalised(0)).all() and np.isfinite(src[0].numpy()).all()
    labels, entropy = _segment(predictor, tmp_path, dirty, masks[0])
    assert np.isfinite(entropy).all()
    assert min(_iou(labels[t] == 1, masks[t]) for t in range(len(masks))) > 0.6


def test_constant_image(predictor, tmp_path):
    frames = np.full((3, 64, 64), 1234, np.uint16)
    assert (FrameSource(frames).normalised(0) == 0).all()  # all black, no division by zero
    labels, entropy = _segment(predictor, tmp_path, frames, np.pad(np.ones((20, 20), bool), 22))
    assert labels.dtype == np.uint32 and labels.shape == (3, 64, 64)
    assert np.isfinite(entropy).all()


@pytest.mark.parametrize("kind", ["bool", "int64", "float64", "rgba"])
def test_bool_int64_float64_rgba(predictor, tmp_path, kind):
    frames, masks = _disk_stack()
    if kind == "bool":
        data = masks.copy()
    elif kind == "int64":
        data = frames.astype(np.int64) * 1000 - 70_000  # negative values too
    elif kind == "float64":
        data = frames.astype(np.float64) / 255.0
    else:
        data = np.repeat(frames[..., None], 4, axis=-1)
        data[..., 3] = 255  # alpha is dropped
    labels, _ = _segment(predictor, tmp_path, data, masks[0])
    assert min(_iou(labels[t] == 1, masks[t]) for t in range(len(masks))) > 0.6, kind
    if kind == "rgba":  # exactly the RGB image's result
        rgb_labels, _ = _segment(predictor, tmp_path, np.ascontiguousarray(data[..., :3]), masks[0], name="rgb")
        np.testing.assert_array_equal(labels, rgb_labels)


def test_8k_frames(predictor, tmp_path):
    """8192 x 8192 frames (a 16-bit zarr, read lazily): downsampled to the model's input on
    read, labels written at full resolution."""
    import zarr

    size = 8192
    z = zarr.create_array(tmp_path / "big.zarr", shape=(2, size, size), chunks=(1, 2048, 2048), dtype="uint16")
    yy, xx = np.ogrid[:size, :size]
    disks = [((yy - 4096) ** 2 + (xx - 3000 - 200 * t) ** 2) < 1500 ** 2 for t in range(2)]
    for t in range(2):
        z[t] = np.where(disks[t], 3000, 1000).astype(np.uint16)
    s = LitSession(predictor, z, store=LabelStore.create(tmp_path / "l.zarr", (2, size, size)))
    s.add_mask(0, 1, disks[0])
    list(s.propagate())
    assert s.store.frames_done == (0, 1)
    for t in range(2):
        assert _iou(np.asarray(s.store.array[t]) == 1, disks[t]) > 0.6
    assert len(s.tracker.frames._cache) <= s.tracker.frames.cache_size  # model inputs only, a few frames
    s.close()


def test_axis_order_mismatch(predictor, tmp_path):
    with pytest.raises(ValueError, match=r"512 x 3 px .* too small .* axis order"):
        FrameSource(np.zeros((512, 512, 3), np.uint8))  # (Y, X, N) read as (N, Y, X)
    with pytest.raises(ValueError, match="channels last"):
        FrameSource(np.zeros((5, 3, 64, 64), np.uint8))  # (N, C, Y, X)


# ------------------------------------------------------------------ prompts
@pytest.fixture()
def disk_session(predictor, tmp_path):
    """(session, frames) on a 4-frame 96 x 96 disk stack; closed after the test."""
    frames, _ = _disk_stack()
    s = LitSession(predictor, frames, store=LabelStore.create(tmp_path / "l.zarr", frames.shape))
    yield s, frames
    s.close()


def _cli_prompt_refused(capsys, tmp_path, frames, csv_row):
    """``napari-lit segment`` with one prompt line: (exit status, stderr); nothing written."""
    import tifffile

    tifffile.imwrite(tmp_path / "img.tif", frames)
    code, err = _cli(capsys, "segment", tmp_path / "img.tif", "--prompts",
                     _prompts_csv(tmp_path / "p.csv", [csv_row]), "--out", tmp_path / "o.zarr")
    assert not (tmp_path / "o.zarr").exists()
    return code, err


def test_prompt_outside_the_image(disk_session, tmp_path, capsys):
    s, frames = disk_session
    with pytest.raises(ValueError, match=r"point \(y=10, x=200\) is outside the 96 x 96 frame"):
        s.add_points(0, 1, [[10, 200]], [1])
    with pytest.raises(ValueError, match="outside the 96 x 96 frame"):
        s.add_box(0, 1, [200, 200, 300, 300])
    assert s.store.frames_done == ()  # nothing written, the session still works
    s.add_points(0, 1, [[48, 30]], [1])
    assert s.store.frames_done == (0,)
    code, err = _cli_prompt_refused(capsys, tmp_path, frames, "0,-5,30,1,1")
    assert code == 2 and "outside the 96 x 96 frame" in err


def test_prompt_on_a_frame_that_does_not_exist(disk_session, tmp_path, capsys):
    s, frames = disk_session
    with pytest.raises(IndexError, match=r"frame 9 does not exist.*0\.\.3"):
        s.add_points(9, 1, [[48, 30]], [1])
    with pytest.raises(IndexError, match="does not exist"):
        s.add_points(-1, 1, [[48, 30]], [1])
    code, err = _cli_prompt_refused(capsys, tmp_path, frames, "9,48,30,1,1")
    assert code == 2 and "frames 0..3" in err


def test_object_id_0(disk_session, tmp_path, capsys):
    s, frames = disk_session
    with pytest.raises(ValueError, match="object id must be >= 1 .0 is the background label."):
        s.add_points(0, 0, [[48, 30]], [1])
    code, err = _cli_prompt_refused(capsys, tmp_path, frames, "0,48,30,1,0")
    assert code == 2 and "object_id must be >= 1" in err


# ------------------------------------------------------------------ session folders
def test_unwritable_session_folder(predictor, tmp_path):
    frames, _ = _disk_stack()
    (tmp_path / "a-file").write_text("not a folder")
    with pytest.raises(PermissionError, match="cannot create the session folder .*a-file/s.litsession"):
        LitSession.create_in(tmp_path / "a-file" / "s.litsession", predictor, frames)


def test_full_disk_during_propagation(predictor, tmp_path, monkeypatch):
    """The disk fills up at frame 3 (the label store's write fails with ENOSPC), then a log
    line is cut short by the same error: a clear error, everything before intact, and once
    space is free the resumed session finishes."""
    frames, masks = _disk_stack(n=6)
    folder = tmp_path / "s.litsession"
    s = LitSession.create_in(folder, predictor, frames, learn=False)
    s.add_mask(0, 1, masks[0])
    import zarr

    real_set = zarr.Array.__setitem__

    def full_at_3(array, key, value):  # the label store's chunk write meets a full disk
        if array is s.store.array and isinstance(key, int) and key >= 3:
            raise OSError(errno.ENOSPC, "No space left on device")
        real_set(array, key, value)

    monkeypatch.setattr(zarr.Array, "__setitem__", full_at_3)
    with pytest.raises(SessionWriteError, match=r"could not save to .*labels.zarr \(No space left on device\)"
                                                r".*intact.*resume") as info:
        list(s.propagate())
    assert info.value.errno == errno.ENOSPC
    assert s.store.frames_done == (0, 1, 2)

    # an append that writes half a line, then fails: the half line is cut off again
    log = s.folder._log
    real_log_write = log.write

    def half(data):
        real_log_write(bytes(data)[: len(data) // 2])
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(s.folder, "_log", _Wrapped(log, write=half))
    with pytest.raises(SessionWriteError):
        s.folder.append({"kind": "note"})
    monkeypatch.setattr(s.folder, "_log", log)
    s.folder.append({"kind": "note"})  # space is back
    s.close()
    monkeypatch.setattr(zarr.Array, "__setitem__", real_set)
    events = SessionFolder.open(folder).events  # no corrupt line in the middle
    assert [e["kind"] for e in events][-1] == "note"

    r = LitSession.resume(folder, predictor, frames)
    assert r.store.frames_done == (0, 1, 2)
    list(r.continue_propagation())
    assert r.store.frames_done == tuple(range(6))
    labels = np.asarray(r.store.array[:])
    assert min(_iou(labels[t] == 1, masks[t]) for t in range(6)) > 0.6
    r.close()


class _Wrapped:
    """A file object with some methods replaced (for a failing write)."""

    def __init__(self, f, **methods):
        self._f, self._methods = f, methods

    def __getattr__(self, name):
        return self._methods.get(name) or getattr(self._f, name)


# ------------------------------------------------------------------ the table
def test_every_row_of_the_table_has_a_test():
    """docs/bad-input.md lists every case of issue 7 with the test that covers it."""
    text = DOC.read_text()
    rows = [line for line in text.splitlines() if line.startswith("| ") and not line.startswith("| input")]
    cases = ["2D image", "1-frame stack", "empty array", "NaN", "constant image", "bool", "8k x 8k",
             "axis order", "outside the image", "frame that does not exist", "object id 0", "corrupt",
             "hash mismatch", "unwritable", "full", "another image"]
    for case in cases:
        assert any(case in r.split("|")[1] for r in rows), f"no row for {case!r} in {DOC.name}"
    tests_dir = Path(__file__).parent
    defined = {m for f in tests_dir.glob("test_*.py") for m in re.findall(r"^def (test_\w+)", f.read_text(), re.M)}
    for row in rows:
        named = re.findall(r"`(?:tests/)?(test_\w+)\.py::(test_\w+)`", row)
        assert named, f"a row names no test: {row}"
        for module, name in named:
            assert (tests_dir / f"{module}.py").exists() and name in defined, f"{module}::{name} does not exist"
