import numpy as np
import pytest

from napari_lit.core.frames import IMAGENET_MEAN, IMAGENET_STD, FrameSource, normalise_frame


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.int16, np.float32, np.float64, np.int64])
def test_normalise_frame_percentile_range(dtype):
    rng = np.random.default_rng(0)
    frame = (rng.random((40, 50)) * 1000).astype(dtype)
    out = normalise_frame(frame)
    assert out.shape == (40, 50, 3) and out.dtype == np.float32
    assert out.min() == 0.0 and out.max() == 1.0
    assert np.allclose(out[..., 0], out[..., 2])  # grey -> 3 equal channels
    # the stretch keeps the order of intensities
    flat = frame.ravel().astype(np.float64)
    i, j = np.argmin(flat), np.argmax(flat)
    assert out[..., 0].ravel()[i] <= out[..., 0].ravel()[j]


def test_normalise_frame_robust_to_outliers():
    frame = np.full((64, 64), 100, np.uint16)
    frame[:32] = 200
    frame[0, 0] = 65535  # one hot pixel must not squash the contrast
    out = normalise_frame(frame)[..., 0]
    assert out[40, 40] < 0.05 and out[10, 10] > 0.95


def test_normalise_frame_rgb8_keeps_colours():
    frame = np.zeros((8, 8, 3), np.uint8)
    frame[..., 0] = 255
    frame[..., 1] = 51
    out = normalise_frame(frame)
    assert np.allclose(out[0, 0], [1.0, 0.2, 0.0])


def test_normalise_frame_nan_constant_bool_rgba():
    f = np.ones((10, 10), np.float32)
    f[2, 2] = np.nan
    f[3, 3] = np.inf
    assert np.isfinite(normalise_frame(f)).all()
    assert (normalise_frame(np.full((5, 5), 7.0)) == 0).all()
    b = np.zeros((5, 5), bool)
    b[1, 1] = True
    assert normalise_frame(b)[1, 1, 0] == 1.0 and normalise_frame(b)[0, 0, 0] == 0.0
    rgba = np.zeros((4, 4, 4), np.uint8)
    rgba[..., 3] = 255
    assert normalise_frame(rgba).shape == (4, 4, 3)


def test_normalise_frame_does_not_modify_input():
    f = np.arange(100, dtype=np.float32).reshape(10, 10)
    before = f.copy()
    normalise_frame(f)
    assert np.array_equal(f, before)


def test_frame_source_model_input_matches_sam2_normalisation():
    frame = np.linspace(0, 1, 32 * 48, dtype=np.float32).reshape(1, 32, 48)
    src = FrameSource(frame, image_size=64, contrast=(0.0, 1.0))
    t = src[0]
    assert tuple(t.shape) == (3, 64, 64)
    # undo sam2's ImageNet normalisation: back in [0, 1], increasing along x
    rgb = t.numpy() * np.array(IMAGENET_STD)[:, None, None] + np.array(IMAGENET_MEAN)[:, None, None]
    assert rgb.min() >= -1e-4 and rgb.max() <= 1 + 1e-4
    assert rgb[0, 10, -1] > rgb[0, 10, 0]


def test_frame_source_is_lazy_and_bounded():
    class CountingStack:
        shape = (50, 16, 16)
        dtype = np.dtype(np.uint16)

        def __init__(self):
            self.reads = []

        def __getitem__(self, i):
            self.reads.append(i)
            return np.full((16, 16), i, np.uint16)

    stack = CountingStack()
    src = FrameSource(stack, image_size=32, cache_size=3)
    assert stack.reads == []  # nothing read on creation
    for i in (5, 6, 7, 8, 5):
        src[i]
    assert stack.reads == [5, 6, 7, 8, 5]  # 5 was evicted (cache of 3), read again
    assert len(src._cache) == 3


def test_frame_source_dask_and_zarr(tmp_path):
    import dask.array as da
    import zarr

    data = (np.random.default_rng(1).random((6, 20, 30)) * 4000).astype(np.uint16)
    z = zarr.open_array(str(tmp_path / "a.zarr"), mode="w", shape=data.shape, chunks=(1, 20, 30), dtype=data.dtype)
    z[:] = data
    ref = FrameSource(data, image_size=32)[3].numpy()
    for arr in (da.from_array(data, chunks=(1, 20, 30)), z):
        assert np.allclose(FrameSource(arr, image_size=32)[3].numpy(), ref)


@pytest.mark.parametrize(
    "data, err",
    [
        (np.zeros((10, 10)), "2 dimensions"),
        (np.zeros((0, 10, 10)), "empty"),
        (np.zeros((2, 3, 10, 10, 1)), "5 dimensions"),
        (np.zeros((3, 16, 16, 7)), "channels last"),
        (np.full((2, 16, 16), "a"), "dtype"),
        (np.zeros((512, 512, 3)), "too small"),  # (Y, X, N) given as (N, Y, X)
    ],
)
def test_frame_source_rejects_bad_stacks(data, err):
    with pytest.raises((ValueError, TypeError), match=err):
        FrameSource(data)


def test_frame_source_index_errors():
    src = FrameSource(np.zeros((3, 16, 16), np.uint8), image_size=16)
    with pytest.raises(IndexError, match="0..2"):
        src[3]
    with pytest.raises(TypeError):
        src[1.5]


def test_prefetch_reads_ahead_in_the_direction_of_reading_and_gives_the_same_inputs():
    import time

    data = np.random.default_rng(1).integers(0, 4000, (12, 40, 48)).astype(np.uint16)
    reads = []

    class Counting:
        shape, dtype = data.shape, data.dtype

        def __getitem__(self, i):
            reads.append(i)
            return data[i]

    plain = FrameSource(data, image_size=32)
    src = FrameSource(Counting(), image_size=32, prefetch=3)
    assert src.cache_size >= 5
    for i in (0, 1):
        assert torch_equal(src[i], plain[i])
    deadline = time.time() + 10
    while not {2, 3, 4} <= set(reads) and time.time() < deadline:
        time.sleep(0.01)
    assert {2, 3, 4} <= set(reads) and 9 not in reads  # ahead, not everything
    n = len(reads)
    assert torch_equal(src[3], plain[3]) and len(reads) >= n  # served from the prefetch
    assert reads.count(3) == 1
    for i in (9, 8):  # backwards now
        assert torch_equal(src[i], plain[i])
    deadline = time.time() + 10
    while not {7, 6} <= set(reads) and time.time() < deadline:
        time.sleep(0.01)
    assert {7, 6} <= set(reads)
    src.close()
    assert torch_equal(src[5], plain[5])  # still usable after close


def torch_equal(a, b):
    import torch

    return torch.equal(a, b)
