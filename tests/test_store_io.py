import json

import numpy as np
import pytest
import tifffile

from napari_lit.core.store import LabelStore
from napari_lit.io import FrameFolder, list_sequences, load_sequence, open_image, read_prompts_csv


def test_label_store_frame_by_frame(tmp_path):
    store = LabelStore.create(tmp_path / "l.zarr", (5, 12, 10), attrs={"model": "lit-tiny"})
    assert store.array.chunks == (1, 12, 10) and store.array.dtype == np.uint32
    lab = np.zeros((12, 10), np.uint32)
    lab[2:5, 3:6] = 7
    store.write_frame(3, lab)
    store.write_object(3, 2, np.eye(12, 10, dtype=bool))
    again = LabelStore.open(tmp_path / "l.zarr")
    got = again.read_frame(3)
    assert (got[np.eye(12, 10, dtype=bool)] == 2).all()
    assert (got[2:5, 3:6][~np.eye(12, 10, dtype=bool)[2:5, 3:6]] == 7).all()
    assert again.frames_done == (3,)
    assert (again.read_frame(0) == 0).all()
    assert again.array.attrs["napari_lit"]["model"] == "lit-tiny"
    # one chunk per frame: writing frame 3 created exactly one chunk file
    chunks = [p for p in (tmp_path / "l.zarr").rglob("*") if p.is_file() and p.name != "zarr.json"]
    assert len(chunks) == 1


def test_label_store_errors(tmp_path):
    store = LabelStore.create(tmp_path / "l.zarr", (2, 4, 4))
    with pytest.raises(FileExistsError):
        LabelStore.create(tmp_path / "l.zarr", (2, 4, 4))
    with pytest.raises(IndexError, match="0..1"):
        store.write_frame(2, np.zeros((4, 4)))
    with pytest.raises(ValueError, match="shaped"):
        store.write_frame(0, np.zeros((3, 4)))
    with pytest.raises(ValueError):
        LabelStore.create(tmp_path / "m.zarr", (2, 4))
    with pytest.raises(FileNotFoundError):
        LabelStore.open(tmp_path / "missing.zarr")


def test_label_store_opens_in_napari_reader(tmp_path):
    """napari's own reader opens the store as a (lazy) labels layer."""
    napari_builtins = pytest.importorskip("napari_builtins.io")
    store = LabelStore.create(tmp_path / "l.zarr", (3, 8, 8))
    store.write_frame(1, np.full((8, 8), 4, np.uint32))
    layers = napari_builtins.napari_get_reader(str(tmp_path / "l.zarr"))(str(tmp_path / "l.zarr"))
    data = layers[0][0]
    data = data[0] if isinstance(data, list) else data
    assert tuple(data.shape) == (3, 8, 8)
    assert int(np.asarray(data[1]).max()) == 4


def test_open_image_tiff_memmap_and_compressed(tmp_path):
    data = (np.random.default_rng(0).random((4, 16, 16)) * 1000).astype(np.uint16)
    tifffile.imwrite(tmp_path / "a.tif", data)
    tifffile.imwrite(tmp_path / "b.tif", data, compression="zlib")
    a, b = open_image(tmp_path / "a.tif"), open_image(tmp_path / "b.tif")
    assert isinstance(a, np.memmap)
    assert np.array_equal(np.asarray(b[2]), data[2]) and tuple(b.shape) == data.shape


def test_open_image_frame_folder_and_errors(tmp_path):
    from PIL import Image

    folder = tmp_path / "frames"
    folder.mkdir()
    for i in range(3):
        Image.fromarray(np.full((10, 12, 3), i * 40, np.uint8)).save(folder / f"{i:05d}.png")
    (folder / "notes.txt").write_text("not a frame")
    ff = open_image(folder)
    assert isinstance(ff, FrameFolder) and ff.shape == (3, 10, 12, 3)
    assert ff[2][0, 0, 0] == 80 and ff[1:3].shape == (2, 10, 12, 3)
    Image.fromarray(np.zeros((5, 5, 3), np.uint8)).save(folder / "00009.png")
    with pytest.raises(ValueError, match="same size"):
        open_image(folder)[3]
    with pytest.raises(FileNotFoundError):
        open_image(tmp_path / "nothing.tif")
    (tmp_path / "x.xyz").write_text("")
    with pytest.raises(ValueError, match="unsupported"):
        open_image(tmp_path / "x.xyz")


def test_read_prompts_csv(tmp_path):
    p = tmp_path / "p.csv"
    p.write_text("frame,y,x,label,object_id\n0,10,20,1,1\n0,5,5,0,1\n3,1.5,2,1,2\n")
    prompts = read_prompts_csv(p)
    assert [(q.frame, q.obj_id) for q in prompts] == [(0, 1), (3, 2)]
    assert prompts[0].points.tolist() == [[10, 20], [5, 5]] and prompts[0].labels.tolist() == [1, 0]
    for text, msg in [
        ("frame,y,x,label\n0,1,1,1\n", "missing object_id"),
        ("frame,y,x,label,object_id\n", "no prompts"),
        ("frame,y,x,label,object_id\n0,a,1,1,1\n", "line 2"),
        ("frame,y,x,label,object_id\n0,1,1,3,1\n", "label must be"),
        ("frame,y,x,label,object_id\n0,1,1,1,0\n", "object_id must be"),
    ]:
        p.write_text(text)
        with pytest.raises(ValueError, match=msg):
            read_prompts_csv(p)


def test_dataset_layout(tmp_path):
    seq = tmp_path / "s1"
    seq.mkdir()
    tifffile.imwrite(seq / "image.tif", np.zeros((3, 8, 8), np.uint8))
    tifffile.imwrite(seq / "labels.tif", np.ones((3, 8, 8), np.uint32))
    (seq / "meta.json").write_text(json.dumps({"layout": "tiff", "axes": "ZYX", "objects": [1]}))
    (tmp_path / "not-a-seq").mkdir()
    assert list_sequences(tmp_path) == [seq]
    s = load_sequence(seq)
    assert s.objects == [1] and s.is_volume and s.gt_mask(1).all()
    (seq / "meta.json").write_text(json.dumps({"layout": "hdf5"}))
    with pytest.raises(ValueError, match="unknown layout"):
        load_sequence(seq)


def test_label_store_at_the_full_shape_of_a_4d_image(tmp_path):
    """A (T, Z, Y, X) store written along Z at T = 2: frames land there, the slice is
    recorded, and opening the store finds it again."""
    store = LabelStore.create(tmp_path / "l.zarr", (3, 5, 8, 9), frame_axis=1, fixed={0: 2})
    assert store.shape == (5, 8, 9) and store.array.shape == (3, 5, 8, 9)
    frame = np.arange(72, dtype=np.uint32).reshape(8, 9)
    store.write_frame(4, frame)
    full = np.asarray(store.array[:])
    np.testing.assert_array_equal(full[2, 4], frame)
    assert full.sum() == frame.sum()  # nowhere else
    again = LabelStore.open(tmp_path / "l.zarr")
    assert again.shape == (5, 8, 9) and again.frames_done == (4,)
    np.testing.assert_array_equal(again.read_frame(4), frame)
    again.clear_frame(4)
    assert not np.asarray(again.array[:]).any() and again.frames_done == ()
    with pytest.raises(ValueError, match="frame axis and an index on every other"):
        LabelStore.create(tmp_path / "bad.zarr", (3, 5, 8, 9), frame_axis=1)  # T not held
    with pytest.raises(ValueError, match="frame axis and an index"):
        LabelStore.create(tmp_path / "bad2.zarr", (3, 5, 8, 9), frame_axis=1, fixed={0: 7})  # out of range


def test_a_slice_store_reads_as_its_frames(tmp_path):
    """A store on one slice of a (T, C, Y, X) image reads as its (N, Y, X) frames."""
    store = LabelStore.create(tmp_path / "s.zarr", (3, 2, 4, 5), frame_axis=0, fixed={1: 1})
    lab = np.zeros((4, 5), np.uint32)
    lab[1:3, 2:4] = 9
    store.write_frame(2, lab)
    assert store.shape == (3, 4, 5) and store.slice_axes() == (0, 2, 3)
    np.testing.assert_array_equal(store[2], lab)
    np.testing.assert_array_equal(store[-1], lab)
    assert not np.asarray(store.array[2, 0]).any()  # the other channel untouched
    with pytest.raises(IndexError, match="out of range for 3 frames"):
        store[3]
    with pytest.raises(TypeError, match="one frame at a time"):
        store[0:2]
