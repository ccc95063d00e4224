"""OME-Zarr: multiscale input read at the level nearest the model's size, NGFF labels out."""

from __future__ import annotations

import numpy as np
import pytest

from napari_lit.cli import main
from napari_lit.core.frames import FrameSource
from napari_lit.core.session import LitSession
from napari_lit.io.ngff import NgffLabelStore, choose_level, frames_of, is_ome_zarr, open_ome_zarr


@pytest.fixture()
def ome_image(tmp_path):
    """A 6-frame 512 x 512 uint16 time-lapse written by ome-zarr (pyramid 512, 256, ...),
    with its ground truth (the generated clip upscaled 4x)."""
    import zarr
    from ome_zarr.writer import write_image

    from napari_lit.training.synthetic import generate_clip

    c = generate_clip(np.random.default_rng(4), 6, 128, kind="nuclei")
    frames = np.kron(c.frames[..., 0].astype(np.uint16) * 100 + 500, np.ones((1, 4, 4), np.uint16))
    labels = np.kron(c.labels, np.ones((1, 4, 4), c.labels.dtype))
    path = tmp_path / "image.zarr"
    write_image(frames, zarr.open_group(str(path), mode="w"), axes="tyx")
    return path, frames, labels


class _Counting:
    """An array wrapper that counts frame reads."""

    def __init__(self, arr):
        self.arr, self.reads = arr, 0
        self.shape, self.dtype = arr.shape, arr.dtype

    def __getitem__(self, key):
        self.reads += 1
        return self.arr[key]


def test_choose_level():
    shapes = [(5, 2048, 2048), (5, 1024, 1024), (5, 512, 512), (5, 256, 256), (5, 128, 128)]
    assert choose_level(shapes, 256) == 3
    assert choose_level(shapes, 1024) == 1
    assert choose_level(shapes, 300) == 2  # never below the model's size
    assert choose_level(shapes, 4096) == 0
    assert choose_level([(5, 1000, 300), (5, 500, 150)], 256) == 0  # the short side counts


def test_multiscale_input_reads_the_coarse_level_and_masks_come_out_full_size(ome_image, predictor, tmp_path):
    path, frames, labels = ome_image
    assert is_ome_zarr(path) and not is_ome_zarr(tmp_path)
    image = open_ome_zarr(path)
    assert image.axes == ["t", "y", "x"] and image.shapes[0] == frames.shape
    stack, lowres, level = frames_of(image, predictor.image_size)
    assert level == 1 and lowres.shape == (6, 256, 256)  # lit-tiny: 256 px
    full = _Counting(stack)
    source = FrameSource(full, image_size=predictor.image_size, lowres=lowres)
    assert source.frame_shape == (512, 512)

    obj = int(np.bincount(labels[0].ravel())[1:].argmax() + 1)
    store = NgffLabelStore.create_in(image)
    s = LitSession(predictor, source, store=store)
    s.add_mask(0, obj, labels[0] == obj)
    list(s.propagate())
    assert full.reads == 0  # the model read only the 256 px level
    out = np.asarray(store.array[:])
    assert out.shape == (6, 512, 512)
    ious = [((out[t] == obj) & (labels[t] == obj)).sum() / ((out[t] == obj) | (labels[t] == obj)).sum()
            for t in range(6)]
    assert min(ious) > 0.6, ious
    # the same as reading full frames (the model input differs only by the resampling)
    s2 = LitSession(predictor, FrameSource(stack, image_size=predictor.image_size),
                    store=NgffLabelStore.create_in(image, name="full"))
    s2.add_mask(0, obj, labels[0] == obj)
    list(s2.propagate())
    ref = np.asarray(s2.store.array[:]) == obj
    assert min(((out[t] == obj) & ref[t]).sum() / ((out[t] == obj) | ref[t]).sum() for t in range(6)) > 0.9
    s.close()
    s2.close()


def test_ngff_labels_are_found_by_readers_with_their_metadata(ome_image, predictor):
    from ome_zarr.io import parse_url
    from ome_zarr.reader import Label, Reader

    path, frames, labels = ome_image
    image = open_ome_zarr(path)
    store = NgffLabelStore.create_in(image, name="cells")
    for t in (0, 3):
        store.write_frame(t, labels[t])
    with pytest.raises(FileExistsError):
        NgffLabelStore.create_in(image, name="cells")
    nodes = list(Reader(parse_url(str(path / "labels" / "cells")))())
    label = next(n for n in nodes if any(isinstance(s, Label) for s in n.specs))
    assert "image-label" in label.zarr.root_attrs.get("ome", label.zarr.root_attrs)
    assert [tuple(d.shape) for d in label.data] == image.shapes  # the image's pyramid
    np.testing.assert_array_equal(np.asarray(label.data[0][3]), labels[3])
    np.testing.assert_array_equal(np.asarray(label.data[1][3]), labels[3][1::2, 1::2])
    assert not np.asarray(label.data[0][1]).any()
    assert store.frames_done == (0, 3)
    # the image group lists it among its labels
    root = list(Reader(parse_url(str(path)))())
    assert any("labels" in str(n.zarr.path) for n in root)


def test_cli_segments_ome_zarr_into_its_labels_group_and_exports_tiff(ome_image, tmp_path, capsys):
    import tifffile
    import zarr

    path, frames, labels = ome_image
    obj = int(np.bincount(labels[0].ravel())[1:].argmax() + 1)
    ys, xs = np.nonzero(labels[0] == obj)
    (tmp_path / "p.csv").write_text(f"frame,y,x,label,object_id\n0,{ys.mean():.0f},{xs.mean():.0f},1,{obj}\n")
    prompts = ["--prompts", str(tmp_path / "p.csv"), "--quiet"]
    assert main(["segment", str(path), "--out", str(tmp_path / "o.zarr")] + prompts) == 0  # a plain store
    plain = np.asarray(zarr.open_array(str(tmp_path / "o.zarr"), mode="r")[:])
    assert plain.shape == (6, 512, 512) and (plain[0] == obj).any()
    assert main(["segment", str(path)] + prompts) == 0  # no --out: the image's labels/ group
    assert main(["segment", str(path)] + prompts) == 2  # not over it without --overwrite
    assert "already exists" in capsys.readouterr().err
    ngff = np.asarray(zarr.open_array(str(path / "labels" / "napari-lit" / "s0"), mode="r")[:])
    np.testing.assert_array_equal(ngff, plain)
    # export to TIFF, from the NGFF label image and from the plain store
    for src, name in ((path / "labels" / "napari-lit", "a.tif"), (tmp_path / "o.zarr", "b.tif")):
        assert main(["export", str(src), str(tmp_path / name), "--quiet"]) == 0
        back = tifffile.imread(tmp_path / name)
        assert back.dtype == np.uint32
        np.testing.assert_array_equal(back, plain)
    assert main(["export", str(path), str(tmp_path / "c.tif"), "--quiet"]) == 2  # the image is no label image


def test_5d_ome_zarr_time_lapse_with_channels(tmp_path, capsys):
    """A (t, c, z, y, x) file as microscopes write it (z = 1, two channels): frames along t,
    channels used together, labels as (t, 1, 1, y, x) with the image's pyramid."""
    import zarr
    from ome_zarr.io import parse_url
    from ome_zarr.reader import Label, Reader
    from ome_zarr.writer import write_image

    from napari_lit.io.ngff import frame_layout
    from napari_lit.training.synthetic import generate_clip

    c = generate_clip(np.random.default_rng(6), 5, 128, kind="nuclei")
    cells = np.kron(c.frames[..., 0].astype(np.uint16) * 100 + 500, np.ones((1, 2, 2), np.uint16))  # 256 px
    gt = np.kron(c.labels, np.ones((1, 2, 2), c.labels.dtype))
    data = np.stack([np.full_like(cells, 300), cells], axis=1)[:, :, None]  # (t, c, z=1, y, x)
    path = tmp_path / "tczyx.zarr"
    write_image(data, zarr.open_group(str(path), mode="w"), axes="tczyx")
    image = open_ome_zarr(path)
    assert frame_layout(image) == (0, {2: 0})
    stack, _, _ = frames_of(image, 256)
    assert stack.shape == (5, 256, 256, 2)  # channels last, z dropped
    obj = int(np.bincount(gt[0].ravel())[1:].argmax() + 1)
    ys, xs = np.nonzero(gt[0] == obj)
    (tmp_path / "p.csv").write_text(f"frame,y,x,label,object_id\n0,{ys.mean():.0f},{xs.mean():.0f},1,{obj}\n")
    assert main(["segment", str(path), "--prompts", str(tmp_path / "p.csv"), "--quiet"]) == 0, capsys.readouterr().err
    nodes = list(Reader(parse_url(str(path / "labels" / "napari-lit")))())
    label = next(n for n in nodes if any(isinstance(s, Label) for s in n.specs))
    levels = [np.asarray(d) for d in label.data]
    assert levels[0].shape == (5, 1, 1, 256, 256) and levels[1].shape == (5, 1, 1, 128, 128)
    out = levels[0][:, 0, 0]
    assert (out[0] == obj).any() and set(np.unique(out)) <= {0, obj}
    np.testing.assert_array_equal(levels[1][:, 0, 0], out[:, 1::2, 1::2])
    iou = ((out == obj) & (gt == obj)).sum() / ((out == obj) | (gt == obj)).sum()
    assert iou > 0.4, iou
    # two long non-spatial axes: a clear error, nothing written
    both = tmp_path / "tz.zarr"
    write_image(np.zeros((3, 4, 64, 64), np.uint8), zarr.open_group(str(both), mode="w"), axes="tzyx")
    assert main(["segment", str(both), "--prompts", str(tmp_path / "p.csv"), "--quiet"]) == 2
    assert "one axis (t or z)" in capsys.readouterr().err and not (both / "labels").exists()
