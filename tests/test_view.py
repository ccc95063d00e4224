"""How a session's (N, Y, X) stack and label store line up with a 4D+ image layer."""

import numpy as np
import pytest
import zarr

from napari_lit._widgets._view import ExpandedArray, StackView


@pytest.fixture()
def store(tmp_path):
    base = np.arange(3 * 4 * 5, dtype=np.uint32).reshape(3, 4, 5)
    z = zarr.open_array(str(tmp_path / "a.zarr"), mode="w", shape=base.shape, dtype="uint32", chunks=(1, 4, 5))
    z[:] = base
    return z, base


@pytest.mark.parametrize("positions", [(1,), (0,), (0, 2)])
def test_expanded_array_reads_like_numpy(store, positions):
    z, base = store
    e, ref = ExpandedArray(z, positions), np.expand_dims(base, positions)
    assert e.shape == ref.shape and e.ndim == ref.ndim and e.dtype == ref.dtype
    keys = [(0,), (slice(None),), (Ellipsis,), (0, 0), (-1,), (0, slice(None), 1),
            tuple(np.array([0, 0, 1]) if ref.shape[a] > 1 else np.zeros(3, int) for a in range(ref.ndim))]
    for k in keys:
        try:
            expected = ref[k]
        except IndexError:  # out of range for this layout: refused the same way
            with pytest.raises(IndexError):
                e[k]
            continue
        np.testing.assert_array_equal(e[k], expected)
    np.testing.assert_array_equal(np.asarray(e), ref)


def test_expanded_array_writes_through(store):
    z, base = store
    e = ExpandedArray(z, (1,))  # (3, 1, 4, 5)
    e[2, 0, 1, 1] = 99  # basic
    e[(np.array([0, 1]), np.array([0, 0]), np.array([3, 3]), np.array([4, 0]))] = 7  # fancy, as napari paints
    e[1] = np.full((1, 4, 5), 5)  # a whole frame with its size-1 axis
    assert z[2, 1, 1] == 99 and z[0, 3, 4] == 7 and (z[1] == 5).all()
    with pytest.raises(IndexError, match="out of range"):
        e[0, 1]
    with pytest.raises(IndexError, match="out of range"):
        e[(np.array([0]), np.array([1]), np.array([0]), np.array([0]))]


class _Layer:
    """The few attributes of a napari image layer that StackView reads."""

    def __init__(self, data, scale, translate):
        self.data, self.ndim, self.name, self.multiscale = data, data.ndim, "img", False
        self.level_shapes = [data.shape]
        self.scale, self.translate = np.asarray(scale, float), np.asarray(translate, float)

    def world_to_data(self, point):
        return (np.asarray(point, float) - self.translate) / self.scale


def test_stack_view_holds_the_other_axes_at_the_viewer_position(tmp_path):
    data = np.random.default_rng(0).integers(0, 255, (4, 3, 8, 9), dtype=np.uint8)  # (T, C, Y, X)
    layer = _Layer(data, (1, 1, 0.5, 0.5), (0, 10, 0, 0))
    view = StackView.from_layer(layer, 0, point=(2, 12, 1, 1))  # the viewer shows C = (12 - 10) / 1 = 2
    assert view.fixed == {1: 2} and view.held == (1,)
    stack = view.select(data)
    assert stack.shape == (4, 8, 9) and np.shares_memory(stack, data)  # a view, no copy
    np.testing.assert_array_equal(stack, data[:, 2])
    z = zarr.open_array(str(tmp_path / "img.zarr"), mode="w", shape=data.shape, dtype="uint8", chunks=(1, 1, 8, 9))
    z[:] = data
    lazy = view.select(z)
    assert type(lazy).__module__.startswith("dask") and lazy.shape == (4, 8, 9)
    np.testing.assert_array_equal(np.asarray(lazy[3]), data[3, 2])
    assert view.translate(layer) == (0, 12, 0, 0)
    assert view.expand(np.zeros((4, 8, 9))).shape == (4, 1, 8, 9)
    coords = np.array([[3, 0, 5.2, 6.7], [1.4, 0, 2, 3]])
    assert view.frame(coords).tolist() == [3, 1] and view.yx(coords).tolist() == [[5.2, 6.7], [2, 3]]
    assert view.coords(3, (5.2, 6.7)).tolist() == [3, 0, 5.2, 6.7]
    assert view.expand_points([[3, 5.2, 6.7], [1, 2, 3]]).tolist() == [[3, 0, 5.2, 6.7], [1, 0, 2, 3]]
    # along C instead: T is held; out-of-range positions are clipped into the stack
    view_c = StackView.from_layer(layer, 1, point=(99, 10, 0, 0))
    assert view_c.fixed == {0: 3}
    assert view_c.expand_points([[2, 5, 6]]).tolist() == [[0, 2, 5, 6]]  # frames along C, T held
    with pytest.raises(ValueError, match="not a non-spatial axis"):
        StackView.from_layer(layer, 2, point=(0, 0, 0, 0))
    with pytest.raises(ValueError, match="single 2D image"):
        StackView.from_layer(_Layer(data[0, 0], (1, 1), (0, 0)), 0, point=(0, 0))


@pytest.mark.parametrize("axis", [0, 1])
def test_4d_propagation_along_t_and_along_z(predictor, clip, tmp_path, axis):
    """A (T, Z, Y, X) zarr image: a session along T (at a held Z) or along Z (at a held T)
    segments exactly what a session on that 3D stack alone does."""
    from napari_lit.core.session import LitSession
    from napari_lit.core.store import LabelStore

    frames, labels = clip  # 8 frames: the propagated axis
    other = 3
    shape = (len(frames), other) if axis == 0 else (other, len(frames))
    data = zarr.open_array(str(tmp_path / "tzyx.zarr"), mode="w", shape=shape + frames.shape[1:], dtype=frames.dtype,
                           chunks=(1, 1) + frames.shape[1:])
    for i in range(other):  # noise elsewhere, the clip at index 2 of the held axis
        block = frames if i == 2 else np.random.default_rng(i).integers(0, 255, frames.shape, dtype=frames.dtype)
        data[(slice(None), i) if axis == 0 else (i, slice(None))] = block
    layer = _Layer(data, (1, 1, 1, 1), (0, 0, 0, 0))
    view = StackView.from_layer(layer, axis, point=(2, 2, 0, 0))
    assert view.fixed == {1 - axis: 2}
    obj = int(np.bincount(labels[0].ravel())[1:].argmax() + 1)
    out = []
    for name, stack in (("4d", view.select(data)), ("3d", frames)):
        s = LitSession(predictor, stack, store=LabelStore.create(tmp_path / f"{name}.zarr", frames.shape))
        s.add_mask(0, obj, labels[0] == obj)
        list(s.propagate())
        out.append(np.asarray(s.store.array[:]))
        s.close()
    assert out[0].shape == frames.shape and (out[0] == obj).any()
    np.testing.assert_array_equal(out[0], out[1])
