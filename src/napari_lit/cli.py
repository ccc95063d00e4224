"""The ``napari-lit`` command.

Subcommands::

    napari-lit segment IMAGE --prompts PROMPTS.csv --out LABELS.zarr [--model NAME]
    napari-lit bench DATA_DIR --method propagate|static --init mask|click --json OUT.json
    napari-lit train-model RUN_DIR [--steps N]
    napari-lit embed IMAGE [--model NAME] [--session FOLDER]
    napari-lit models

Bad input (missing file, wrong dimensions, empty or out-of-bounds prompts, unknown model)
ends with exit status 2 and a one-line message, never a traceback.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Optional, Sequence

__all__ = ["main", "segment", "embed", "UsageError"]

if TYPE_CHECKING:  # for the annotation of segment() only
    from .core.store import LabelStore

logger = logging.getLogger("napari_lit")


class UsageError(Exception):
    """Bad input from the command line: printed as one line, exit status 2."""


def _progress(total: int, desc: str):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="frame", file=sys.stderr, dynamic_ncols=True)


def _drain(items, total: int, desc: str, progress: bool = True) -> None:
    """Run through ``items`` (a generator of work done one frame at a time), with a progress
    bar on stderr when ``progress`` and there is something to do."""
    bar = _progress(total, desc) if progress and total else None
    try:
        for _ in items:
            if bar is not None:
                bar.update(1)
    finally:
        if bar is not None:
            bar.close()


def segment(image, prompts, out=None, model: str = "lit-tiny", config=None, prompt_mask=None,
            prompt_frame: Optional[int] = None, mask_obj_id: int = 1, device: str = "auto",
            overwrite: bool = False, progress: bool = True, session=None,
            labels_name: str = "napari-lit", zoom: str = "auto") -> "LabelStore":
    """Segment a stack from click prompts and/or a mask prompt, writing a label store.

    Parameters
    ----------
    image : str or Path
        TIFF, zarr array or folder of frames, (N, Y, X[, C]).
    prompts : str or Path or None
        CSV with ``frame,y,x,label,object_id`` (see :func:`napari_lit.io.read_prompts_csv`).
    out : str or Path, optional
        New ``.zarr`` label store, (N, Y, X) uint32. For an OME-Zarr image it may be left
        out: the labels then go into the image's ``labels/<labels_name>`` group (NGFF, with
        the image's axes and pyramid).
    session : str or Path, optional
        Instead of ``out``: a new session folder (label store, log of the prompts and of
        every written frame), which ``napari-lit resume`` finishes if this run is killed.
    zoom : {"auto", "off"}
        Object-centred zoom (see :class:`~napari_lit.core.tracker.Tracker`): small objects
        are seen through their own window of the frame (default), or every object through
        the whole frame.
    model, config, device
        See :func:`napari_lit.models.load_predictor`.
    prompt_mask : str or Path, optional
        A (Y, X) mask image (TIFF/PNG/npy; nonzero = object) used as a mask prompt.
    prompt_frame : int, optional
        Frame of ``prompt_mask`` (required with it).
    mask_obj_id : int
        Object id of the mask prompt; a label image with several ids prompts each id.
    labels_name : str
        Name of the NGFF label image (OME-Zarr input without ``out``).
    overwrite : bool
        Replace an existing output store.
    progress : bool
        Show a progress bar on stderr.

    Returns
    -------
    LabelStore

    Raises
    ------
    UsageError
        On any bad input; nothing is written then.
    """
    import numpy as np

    from .core.features import folder_features
    from .core.frames import FrameSource
    from .core.store import LabelStore
    from .core.tracker import Tracker
    from .core.zoom import ZOOM_MODES
    from .io.ngff import NgffLabelStore, frames_of, is_ome_zarr, levels_of, open_ome_zarr
    from .io.readers import open_image, read_prompts_csv
    from .models import ModelUnavailableError, load_predictor
    from .models.build import CheckpointError

    if zoom not in ZOOM_MODES:
        raise UsageError(f"--zoom must be one of {', '.join(ZOOM_MODES)}; got {zoom!r}")
    if prompts is None and prompt_mask is None:
        raise UsageError("give click prompts (--prompts FILE.csv) and/or a mask prompt (--prompt-mask FILE --prompt-frame F)")
    if (prompt_mask is None) != (prompt_frame is None):
        raise UsageError("--prompt-mask and --prompt-frame go together")
    ngff = out is None and session is None and is_ome_zarr(image)
    if (out is None) == (session is None) and not ngff:
        raise UsageError("give an output label store (--out FILE.zarr) or a session folder (--session FOLDER)")
    target = Path(image) / "labels" / labels_name if ngff else Path(out if out is not None else session)
    if session is not None and target.exists() and (not target.is_dir() or any(target.iterdir())):
        raise UsageError(f"{target} already exists: finish it with `napari-lit resume {target}`, or choose a new folder")
    if session is None and target.exists() and not overwrite:
        raise UsageError(f"{target} already exists (pass --overwrite to replace it)")
    try:
        ome = open_ome_zarr(image) if is_ome_zarr(image) else None
        stack = frames_of(ome, 0)[0] if ome is not None else open_image(image)  # (N, Y, X[, C])
        click_prompts = read_prompts_csv(prompts) if prompts is not None else []
        mask = _read_mask(prompt_mask) if prompt_mask is not None else None
    except (FileNotFoundError, ValueError) as exc:
        raise UsageError(str(exc)) from None
    shape = tuple(stack.shape)
    if len(shape) not in (3, 4):
        raise UsageError(
            f"{Path(image).name}: expected (N, Y, X) or (N, Y, X, C) frames, got shape {shape}"
        )
    n, h, w = shape[:3]
    for p in click_prompts:
        if p.frame >= n:
            raise UsageError(f"prompt on frame {p.frame}, but {Path(image).name} has frames 0..{n - 1}")
        bad = (p.points[:, 0] < 0) | (p.points[:, 0] > h - 1) | (p.points[:, 1] < 0) | (p.points[:, 1] > w - 1)
        if bad.any():
            y, x = p.points[bad][0]
            raise UsageError(f"prompt (y={y:g}, x={x:g}) for object {p.obj_id} is outside the {h} x {w} frame")
    if mask is not None:
        if mask.shape != (h, w):
            raise UsageError(f"--prompt-mask is {mask.shape}, but the frames are {(h, w)}")
        if not 0 <= prompt_frame < n:
            raise UsageError(f"--prompt-frame {prompt_frame} does not exist: frames are 0..{n - 1}")
        if not mask.any():
            raise UsageError("--prompt-mask is empty (all zero)")
    try:
        predictor = load_predictor(model, config=config, device=device)
    except (ModelUnavailableError, CheckpointError, ValueError) as exc:
        raise UsageError(str(exc)) from None
    try:
        lowres, levels = None, ()
        if ome is not None:  # model inputs from the pyramid level nearest the model's size
            _, lowres, _ = frames_of(ome, predictor.image_size)
            levels = levels_of(ome)  # and each zoom window from the level it needs
        source = FrameSource(stack, image_size=predictor.image_size, lowres=lowres, levels=levels)
    except (TypeError, ValueError) as exc:
        raise UsageError(f"{Path(image).name}: {exc}") from None
    if session is not None:
        from .core.session import LitSession

        try:
            lit = LitSession.create_in(session, predictor, source, learn=False, source=str(Path(image).resolve()),
                                       zoom=zoom)
        except (FileExistsError, PermissionError, OSError) as exc:
            raise UsageError(str(exc)) from None
        tracker, store = lit, lit.store  # prompts and frames go through the session: logged
    else:  # features kept in memory, and read from `napari-lit embed`'s folder when it filled one
        tracker = Tracker(predictor, source, zoom=zoom, features=folder_features(predictor, source))
    for p in click_prompts:
        tracker.add_points(p.frame, p.obj_id, p.points, p.labels)
    if mask is not None:
        ids = [int(i) for i in np.unique(mask) if i != 0]
        if mask.dtype == bool or ids == [1] or ids == [255]:
            tracker.add_mask(prompt_frame, mask_obj_id, mask > 0)
        else:
            for i in ids:
                tracker.add_mask(prompt_frame, i, mask == i)
    if ngff:
        try:
            store = NgffLabelStore.create_in(ome, name=labels_name, overwrite=overwrite)
        except ValueError as exc:
            raise UsageError(f"{exc}; give --out FILE.zarr instead") from None
    elif session is None:
        store = LabelStore.create(out, (n, h, w), overwrite=overwrite,
                                  attrs={"model": model, "image": str(image)})
    bar = _progress(n, "segment") if progress else None
    try:
        for result in tracker.propagate(direction="both"):
            if session is None:
                store.write_frame(result.frame_idx, result.labels())
            if bar is not None:
                bar.update(1)
    finally:
        if bar is not None:
            bar.close()
        if session is not None:
            tracker.close()
    return store


def resume(folder, image=None, model: Optional[str] = None, config=None, device: str = "auto",
           learn_pending: bool = True, progress: bool = True, finish: bool = True):
    """Finish a session folder: learn from corrections whose training was cut short, then
    propagate over the frames that have no labels yet (frames already written are kept).

    Parameters
    ----------
    folder : str or Path
        A session folder (from ``napari-lit segment --session`` or the napari widget).
    image : str or Path, optional
        The image; the path recorded in the folder by default.
    model : str, optional
        The model; the one recorded in the folder by default (a custom checkpoint also
        needs ``config``).
    config, device
        See :func:`napari_lit.models.load_predictor`.
    learn_pending : bool
        Train the adapters on pending corrections first (as the widget does before
        propagating).
    progress : bool
    finish : bool
        Propagate over the missing frames and close the session (default); with False,
        return the session open as it stands (pending corrections learned).

    Returns
    -------
    napari_lit.core.session.LitSession
        Closed, its ``store`` complete (open as it stands with ``finish=False``).

    Raises
    ------
    UsageError
        If the folder is not a session folder, the image is missing or not the session's,
        or the model is not the one the session was made with.
    """
    import json

    from .core.folder import META_FILE
    from .core.session import LitSession
    from .io.readers import open_image
    from .models import ModelUnavailableError, load_predictor
    from .models.build import CheckpointError

    folder = Path(folder)
    try:
        meta = json.loads((folder / META_FILE).read_text())
    except FileNotFoundError:
        raise UsageError(f"{folder} is not a napari-lit session folder (no {META_FILE})") from None
    except (OSError, json.JSONDecodeError) as exc:
        raise UsageError(f"{folder / META_FILE} is unreadable: {exc}") from None
    image = image or meta.get("source")
    if image is None:
        raise UsageError(f"{folder} does not record its image: give it (napari-lit resume {folder} --image PATH)")
    model = model or (meta.get("model") or {}).get("name") or "lit-tiny"
    try:
        stack = open_image(image)
        view = meta.get("view") or {}
        if view.get("fixed"):  # a widget session on one slice of a 4D+ image: that slice
            from ._widgets._view import StackView

            fixed = {int(k): int(v) for k, v in view["fixed"].items()}
            ndim = 3 + len(fixed)  # the frame axis, the held axes, Y and X (an RGB axis is not counted)
            stack = StackView(ndim, int(view["axis"]), fixed).select(stack)
        predictor = load_predictor(model, config=config, device=device)
        session = LitSession.resume(folder, predictor, stack)
    except (FileNotFoundError, ValueError, ModelUnavailableError, CheckpointError) as exc:
        raise UsageError(str(exc)) from None
    try:
        if learn_pending:
            for frame, obj in session.pending_learning():
                for _ in session.learn_from(frame, obj):
                    pass
    except BaseException:
        session.close()
        raise
    if not finish:  # the session as it stands, open: the caller closes it
        return session
    try:
        missing = session.n_frames - len(session.store.frames_done)
        _drain(session.continue_propagation() if session.tracker.prompt_frames() else (), missing, "resume", progress)
    finally:
        session.close()
    return session


def embed(image, model: Optional[str] = None, config=None, device: str = "auto", session=None,
          dtype: Optional[str] = None, progress: bool = True) -> Path:
    """Precompute the image encoder's features of a stack, so that propagations (in napari,
    ``segment``, ``resume``) do not encode its frames again (:mod:`napari_lit.core.features`).

    Resumable: features already stored are skipped, a run killed midway loses at most the
    frame in progress.

    Parameters
    ----------
    image : str or Path
        TIFF, zarr array, OME-Zarr or folder of frames, (N, Y, X[, C]).
    model : str, optional
        ``lit-tiny`` by default; with ``session``, the session's.
    config, device
        See :func:`napari_lit.models.load_predictor`.
    session : str or Path, optional
        A session folder on that image: its ``features/`` folder is filled, with the windows
        its objects are seen through (object-centred zoom) as well as the whole frames. Not
        while the session is open elsewhere. Without it, the features go into the user
        cache (:func:`napari_lit.core.features.shared_folder`), which every later session
        on this image with this model reads.
    dtype : {"float32", "float16", "bfloat16"}, optional
        How a new user-cache folder stores features: float32 (default, exact) or in half the
        disk. A session's folder is float32 (a resumed session predicts exactly the same).
    progress : bool
        Show a progress bar on stderr.

    Returns
    -------
    Path
        The feature folder.

    Raises
    ------
    UsageError
        If the image or the session is missing or does not match, the model is unavailable,
        or the feature folder cannot be used.
    """
    from .core.features import DiskFeatures, FeatureCache, FeatureCacheError, feature_identity, shared_folder
    from .core.frames import FrameSource
    from .core.tracker import Tracker
    from .io.ngff import frames_of, is_ome_zarr, levels_of, open_ome_zarr
    from .io.readers import open_image
    from .models import ModelUnavailableError, load_predictor
    from .models.build import CheckpointError

    if session is not None:
        if dtype not in (None, "float32"):
            raise UsageError("a session folder stores its features as float32 (so that a resumed session predicts "
                             "exactly the same masks); --dtype is for the user cache (no --session)")
        lit = resume(session, image=image, model=model, config=config, device=device, learn_pending=False,
                     progress=False, finish=False)
        tracker, folder = lit.tracker, Path(session) / "features"
    else:
        lit = None
        try:
            ome = open_ome_zarr(image) if is_ome_zarr(image) else None
            stack = frames_of(ome, 0)[0] if ome is not None else open_image(image)
            predictor = load_predictor(model or "lit-tiny", config=config, device=device)
            lowres, levels = (frames_of(ome, predictor.image_size)[1], levels_of(ome)) if ome is not None else (None, ())
            source = FrameSource(stack, image_size=predictor.image_size, lowres=lowres, levels=levels)
            identity = feature_identity(predictor, source)
            folder = shared_folder(identity)
            cache = FeatureCache(disk=DiskFeatures(folder, identity, dtype=dtype, budget_bytes=None))
        except (FileNotFoundError, TypeError, ValueError, ModelUnavailableError, CheckpointError) as exc:
            raise UsageError(str(exc)) from None
        except FeatureCacheError as exc:
            raise UsageError(str(exc)) from None
        tracker = Tracker(predictor, source, zoom="off", features=cache)
    try:
        plan = tracker.precompute_plan()
        _drain(tracker.precompute(plan), len(plan), "embed", progress)
    finally:
        (lit if lit is not None else tracker).close()
    return folder


def _cmd_embed(args) -> int:
    folder = embed(args.image, model=args.model, config=args.config, device=args.device,
                   session=args.session, dtype=args.dtype, progress=not args.quiet)
    print(folder)
    return 0


def _read_mask(path):
    import numpy as np

    from .io.readers import open_image

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"mask file not found: {path}")
    if path.suffix.lower() in (".png", ".jpg", ".jpeg", ".bmp"):
        from PIL import Image

        with Image.open(path) as im:
            arr = np.asarray(im)
    else:
        arr = np.asarray(open_image(path)[:]) if path.suffix.lower() != ".npy" else np.load(path)
    arr = np.squeeze(arr)
    if arr.ndim == 3 and arr.shape[-1] in (3, 4):
        arr = arr[..., 0]
    if arr.ndim != 2:
        raise ValueError(f"mask {path.name} must be a 2D image, got shape {arr.shape}")
    return arr


def _cmd_segment(args) -> int:
    store = segment(args.image, args.prompts, args.out, model=args.model, config=args.config,
                    prompt_mask=args.prompt_mask, prompt_frame=args.prompt_frame, device=args.device,
                    overwrite=args.overwrite, progress=not args.quiet, session=args.session,
                    labels_name=args.labels_name, zoom=args.zoom)
    print(f"wrote {len(store.frames_done)} frames of labels {store.shape} to {store.path}")
    return 0


def _cmd_resume(args) -> int:
    session = resume(args.folder, image=args.image, model=args.model, config=args.config, device=args.device,
                     learn_pending=not args.no_learn, progress=not args.quiet)
    store = session.store
    print(f"{args.folder}: {len(store.frames_done)} of {store.shape[0]} frames labelled, "
          f"{len(session.corrections)} corrections; labels in {store.path}")
    return 0


def _open_labels(labels):
    """The label array behind ``labels`` (a label store, an NGFF label image's
    full-resolution level, or a session folder's store) and the session folder, if any."""
    import zarr

    from .core.folder import LABELS_DIR, META_FILE

    src = Path(labels)
    session = src if (src / META_FILE).is_file() else None
    if session is not None:
        src = src / LABELS_DIR
    try:
        node = zarr.open(str(src), mode="r")
    except Exception as exc:
        raise UsageError(f"cannot read {src} as labels: {exc}") from None
    if not hasattr(node, "shape"):  # an NGFF label image: its full-resolution level
        from .io.ngff import ome_attributes

        attrs = ome_attributes(node)
        datasets = attrs.get("multiscales", [{}])[0].get("datasets")
        if not datasets or "image-label" not in attrs:
            raise UsageError(f"{src} is a zarr group but not an NGFF label image (image.zarr/labels/NAME expected)")
        node = node[datasets[0]["path"]]
    if node.dtype.kind not in "ui":
        raise UsageError(f"{src} is not a label image (integer ids expected): {node.shape} {node.dtype}")
    return node, session


def export_tiff(labels, out, overwrite: bool = False, progress: bool = True) -> Path:
    """Write a label store to a multi-page TIFF, one frame at a time (BigTIFF, so any size).

    Parameters
    ----------
    labels : str or Path
        A label store (``.zarr``), an NGFF label image (``image.zarr/labels/NAME``; its
        full-resolution level) or a session folder.
    out : str or Path
        The TIFF file; ``tifffile.imread`` reads it back as (N, Y, X) uint32.
    overwrite : bool
    progress : bool
        A progress bar on stderr.

    Returns
    -------
    Path

    Raises
    ------
    UsageError
        If ``labels`` is none of these or ``out`` exists (without ``overwrite``).
    """
    import numpy as np
    import tifffile

    out = Path(out)
    if out.exists() and not overwrite:
        raise UsageError(f"{out} already exists (pass --overwrite to replace it)")
    node, _ = _open_labels(labels)
    if node.ndim != 3:
        raise UsageError(f"{labels} is not a (N, Y, X) label image: {node.shape} {node.dtype}")
    bar = _progress(node.shape[0], "export") if progress else None
    with tifffile.TiffWriter(out, bigtiff=True) as tif:
        for t in range(node.shape[0]):
            tif.write(np.asarray(node[t]), contiguous=True, photometric="minisblack")
            if bar is not None:
                bar.update(1)
    if bar is not None:
        bar.close()
    return out


EXPORT_FORMATS = ("tiff", "ctc", "geff")


def export_tracks(labels, out, fmt: str, overwrite: bool = False, scale=None, units=None,
                  progress: bool = True) -> Path:
    """Write the tracks of a time-lapse label image as a CTC result folder or a GEFF zarr
    (``napari-lit export --format ctc|geff``; :mod:`napari_lit.io.tracks`).

    Parameters
    ----------
    labels : str or Path
        A label store, an NGFF label image or a session folder; axis 0 is time, frames are
        (Y, X) or (Z, Y, X). Each object id is one track (an object that leaves and comes
        back: segments joined as CTC and GEFF join them); a session's divisions
        (:meth:`~napari_lit.core.session.LitSession.divide`), or a batch output's
        (``napari_lit.lineage`` in its attributes), are the lineage. A session on one slice
        of a larger image (a (T, C, Y, X) image along T at one channel, say): the tracks of
        its (N, Y, X) frames.
    out : str or Path
        The folder to create.
    fmt : {"ctc", "geff"}
    overwrite : bool
    scale, units : sequence, optional
        GEFF: each axis' step and unit (t, [z,] y, x); for a session on a slice, also one per
        axis of the whole image (those of its frames are kept).
    progress : bool
        A progress bar on stderr.

    Returns
    -------
    Path

    Raises
    ------
    UsageError
        If ``labels`` cannot be read, ``out`` exists (without ``overwrite``), or the labels
        or lineage cannot be written as tracks (the reason is in the message).
    """
    from .io.tracks import TrackExportError, track_graph, write_ctc, write_geff

    if fmt not in ("ctc", "geff"):
        raise UsageError(f"tracks are exported as ctc or geff; got {fmt!r}")
    out = Path(out)
    if out.exists() and not overwrite:
        raise UsageError(f"{out} already exists (pass --overwrite to replace it)")
    node, session = _open_labels(labels)
    # a batch output's divisions are in its attributes (napari_lit.batch with a division rule)
    parents = {int(d): int(m) for d, m in dict(node.attrs.get("napari_lit", {})).get("lineage", {}).items()}
    if session is not None:  # a session's divisions
        from .core.folder import SessionFolder

        folder = SessionFolder.open(session)
        try:
            parents = folder.lineage()
        finally:
            folder.close()
    from .core.store import LabelStore

    store = LabelStore.from_array(node, labels)
    if node.ndim > 3 and store.fixed:  # a session on one slice of a larger image: the tracks of its (N, Y, X) frames
        axes = store.slice_axes()
        scale = [scale[a] for a in axes] if scale is not None and len(scale) == node.ndim else scale
        units = [units[a] for a in axes] if units is not None and len(units) == node.ndim else units
        node = store
    bar = _progress(node.shape[0] * (2 if fmt == "ctc" else 1), f"export {fmt}") if progress else None
    step = (lambda done, total: bar.update(1)) if bar is not None else None
    try:
        graph = track_graph(node, parents, progress=step, missing="drop")  # daughters never prompted
        if fmt == "ctc":
            return write_ctc(node, out, graph=graph, overwrite=overwrite, progress=step)
        return write_geff(node, out, graph=graph, scale=scale, units=units, overwrite=overwrite)
    except (TrackExportError, FileExistsError) as exc:
        raise UsageError(f"{labels}: {exc}") from None
    finally:
        if bar is not None:
            bar.close()


def _cmd_export(args) -> int:
    fmt = args.format or ("geff" if args.out.rstrip("/").endswith((".geff", ".zarr")) else "tiff")
    if fmt == "tiff":
        if args.scale or args.units:
            raise UsageError("--scale and --units are for --format geff")
        out = export_tiff(args.labels, args.out, overwrite=args.overwrite, progress=not args.quiet)
    else:
        out = export_tracks(args.labels, args.out, fmt, overwrite=args.overwrite, scale=args.scale,
                            units=args.units, progress=not args.quiet)
    print(f"wrote {out}")
    return 0


def batch(inputs, source, out, scheduler=None, workers: int = 1, device: str = "cpu", retries: int = 2,
          progress: bool = True, prompts: str = "copy", detect_frame: int = 0, polarity: str = "bright",
          min_area: int = 30, divisions: Optional[float] = None):
    """Segment many stacks the way a session taught (``napari-lit batch``).

    Parameters
    ----------
    inputs : list of str
        Stacks, glob patterns or CSV files of paths.
    source : str or Path
        A session folder (its prompts and adapters are exported to ``out/recipe``; the
        session's image and model must be reachable) or a recipe folder.
    out : str or Path
        Output folder: one ``<stack>-labels.zarr`` per stack and ``summary.csv``.
    scheduler, workers, device, retries, progress
        See :func:`napari_lit.batch.run_batch`.
    prompts, detect_frame, polarity, min_area
        How a session's prompts carry over to the other stacks (copied, or one click per
        detected object): see :func:`napari_lit.batch.export_recipe`. A recipe folder
        keeps its own.
    divisions : float, optional
        The division rule's share for a recipe made from a session (see
        :func:`napari_lit.batch.export_recipe`); in (0, 0.5].

    Returns
    -------
    list of dict
        The summary rows.

    Raises
    ------
    UsageError
        On a missing input, a folder that is neither a session nor a recipe, or a session
        whose image or model cannot be found.
    """
    from .batch import RECIPE_FILE, export_recipe, expand_inputs, run_batch
    from .core.folder import META_FILE

    source, out = Path(source), Path(out)
    if divisions is not None and not 0.0 < float(divisions) <= 0.5:
        raise UsageError(f"--divisions is the smaller daughter's share of the two, in (0, 0.5]; got {divisions}")
    try:
        expand_inputs(inputs)
    except FileNotFoundError as exc:
        raise UsageError(str(exc)) from None
    recipe = out / "recipe"
    if (source / RECIPE_FILE).is_file():
        recipe = source
    elif (recipe / RECIPE_FILE).is_file():
        pass  # exported by an earlier run into this output folder
    elif (source / META_FILE).is_file():
        session = resume(source, learn_pending=True, progress=False, finish=False)
        try:
            export_recipe(session, recipe, prompts=prompts, detect_frame=detect_frame, polarity=polarity,
                          min_area=min_area, divisions=divisions)
        finally:
            session.close()
    else:
        raise UsageError(f"{source} is neither a session folder ({META_FILE}) nor a recipe ({RECIPE_FILE})")
    return run_batch(inputs, recipe, out, scheduler=scheduler, n_workers=workers, device=device, retries=retries,
                     progress=progress)


def _cmd_batch(args) -> int:
    rows = batch(args.inputs, getattr(args, "from"), args.out, scheduler=args.scheduler, workers=args.workers,
                 device=args.device, retries=args.retries, progress=not args.quiet, prompts=args.prompts,
                 detect_frame=args.detect_frame, polarity=args.polarity, min_area=args.min_area,
                 divisions=args.divisions)
    failed = [r for r in rows if r["status"] == "failed"]
    print(f"{len(rows) - len(failed)} of {len(rows)} stacks segmented ({sum(r['status'] == 'skipped' for r in rows)} "
          f"already done); summary in {Path(args.out) / 'summary.csv'}")
    for r in failed:
        print(f"failed: {r['input']}: {r['error']}", file=sys.stderr)
    return 1 if failed else 0


def _cmd_models(args) -> int:
    from .models import MODELS
    from .models.catalogue import cache_dir

    for spec in MODELS.values():
        where = "embedded" if spec.embedded else str(cache_dir() / spec.filename)
        print(f"{spec.name:24s} {where}\n    {spec.description}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="napari-lit", description="Segment and track objects through stacks with SAM2.")
    p.add_argument("-v", "--verbose", action="store_true", help="log details")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("segment", help="segment a stack from prompts into a zarr label store")
    s.add_argument("image", help="TIFF file, frame folder or zarr array, (N, Y, X[, C])")
    s.add_argument("--prompts", help="CSV with header frame,y,x,label,object_id")
    s.add_argument("--prompt-mask", help="mask image used as a prompt (nonzero = object)")
    s.add_argument("--prompt-frame", type=int, help="frame of --prompt-mask")
    s.add_argument("--out", help="output label store (.zarr); for an OME-Zarr image, default: its labels/ group")
    s.add_argument("--labels-name", default="napari-lit", help="name of the NGFF label image (OME-Zarr, no --out)")
    s.add_argument("--session", help="instead of --out: a new session folder (resumable with `napari-lit resume`)")
    s.add_argument("--model", default="lit-tiny", help="lit-tiny (default), sam2.1_hiera_tiny|small|base_plus|large, or a .pt file")
    s.add_argument("--config", help="Hydra config for a custom .pt checkpoint")
    s.add_argument("--device", default="auto", help="auto, cpu, cuda or mps")
    s.add_argument("--zoom", choices=["auto", "off"], default="auto",
                   help="object-centred zoom: small objects seen through their own window of the frame "
                        "(auto, default) or every object through the whole frame (off)")
    s.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    s.add_argument("--quiet", action="store_true", help="no progress bar")
    s.set_defaults(func=_cmd_segment)

    b = sub.add_parser("bench", help="benchmark on sequences with ground truth", add_help=False)
    b.set_defaults(func=None)

    t = sub.add_parser("train-model", help="train or resume the embedded lit-tiny model", add_help=False)
    t.set_defaults(func=None)

    r = sub.add_parser("resume", help="finish a session folder after a crash or a stop")
    r.add_argument("folder", help="session folder")
    r.add_argument("--image", help="the image (default: the path the session recorded)")
    r.add_argument("--model", help="the model (default: the one the session recorded)")
    r.add_argument("--config", help="Hydra config for a custom .pt checkpoint")
    r.add_argument("--device", default="auto", help="auto, cpu, cuda or mps")
    r.add_argument("--no-learn", action="store_true", help="do not train on corrections whose learning was cut short")
    r.add_argument("--quiet", action="store_true", help="no progress bar")
    r.set_defaults(func=_cmd_resume)

    e = sub.add_parser("export", help="write labels (store, NGFF label image or session) as a TIFF, or their "
                                      "tracks as a Cell Tracking Challenge result folder or a GEFF graph")
    e.add_argument("labels", help="label store .zarr, image.zarr/labels/NAME, or a session folder")
    e.add_argument("out", help="output: .tif (multi-page, BigTIFF), a CTC folder (maskTTT.tif, res_track.txt) "
                               "or a .geff folder")
    e.add_argument("--format", choices=EXPORT_FORMATS,
                   help="tiff (default), ctc, or geff (default for an output ending in .geff or .zarr)")
    e.add_argument("--scale", type=float, nargs="+", metavar="STEP",
                   help="geff: step of each axis, t [z] y x (e.g. 5 0.65 0.65)")
    e.add_argument("--units", nargs="+", metavar="UNIT", help="geff: unit of each axis (e.g. minute micrometer micrometer)")
    e.add_argument("--overwrite", action="store_true", help="replace an existing output")
    e.add_argument("--quiet", action="store_true", help="no progress bar")
    e.set_defaults(func=_cmd_export)

    b2 = sub.add_parser("batch", help="segment many stacks the way a session taught, on a dask cluster")
    b2.add_argument("inputs", nargs="+", help="stacks, glob patterns, or CSV files with a path column")
    b2.add_argument("--from", required=True, help="session folder or recipe folder")
    b2.add_argument("--out", required=True, help="output folder (label stores and summary.csv)")
    b2.add_argument("--scheduler", help="address of a running dask scheduler (default: a LocalCluster)")
    b2.add_argument("--workers", type=int, default=1, help="LocalCluster worker processes (default 1)")
    b2.add_argument("--device", default="cpu", help="cpu or cuda (on the workers)")
    b2.add_argument("--retries", type=int, default=2, help="tries again per failed stack before reporting it")
    b2.add_argument("--prompts", choices=["copy", "detect"], default="copy",
                    help="copy the session's prompts to each stack, or click every object detected on a frame")
    b2.add_argument("--detect-frame", type=int, default=0, help="frame to detect objects on (--prompts detect)")
    b2.add_argument("--polarity", choices=["bright", "dark"], default="bright", help="objects brighter or darker")
    b2.add_argument("--min-area", type=int, default=30, help="smallest object (px) for --prompts detect")
    b2.add_argument("--divisions", type=float, metavar="SHARE",
                    help="the division rule on every stack: a mask that splits into two parts, the smaller at "
                         "least SHARE of the two (e.g. 0.2), divides into two daughters; the lineage goes into "
                         "each label store (napari-lit export --format ctc|geff reads it)")
    b2.add_argument("--quiet", action="store_true", help="no progress bar")
    b2.set_defaults(func=_cmd_batch)

    em = sub.add_parser("embed", help="precompute the image features of a stack (propagations then skip the "
                                      "image encoder; resumable)")
    em.add_argument("image", help="TIFF file, frame folder, zarr array or OME-Zarr, (N, Y, X[, C])")
    em.add_argument("--model", help="lit-tiny (default), sam2.1_hiera_tiny|small|base_plus|large, or a .pt file; "
                                    "with --session: the session's")
    em.add_argument("--config", help="Hydra config for a custom .pt checkpoint")
    em.add_argument("--device", default="auto", help="auto, cpu, cuda or mps")
    em.add_argument("--session", help="a session folder on this image: fill its features/ (with its objects' "
                                      "zoom windows); default: the user cache, read by every session on this image")
    em.add_argument("--dtype", choices=["float32", "float16", "bfloat16"],
                    help="how a new feature folder stores features (default float32: exact; the others: half "
                         "the disk)")
    em.add_argument("--quiet", action="store_true", help="no progress bar")
    em.set_defaults(func=_cmd_embed)

    m = sub.add_parser("models", help="list the model catalogue")
    m.set_defaults(func=_cmd_models)
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point of ``napari-lit``: parse ``argv`` (default ``sys.argv[1:]``), return the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    # subcommands with their own parsers
    if argv and argv[0] == "bench":
        from .bench.runner import main as bench_main

        return _guard(lambda: bench_main(argv[1:]))
    if argv and argv[0] == "train-model":
        from .training.recipe import main as train_main

        return _guard(lambda: train_main(argv[1:]))
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(message)s")
    return _guard(lambda: args.func(args))


def _guard(fn) -> int:
    try:
        return int(fn() or 0)
    except UsageError as exc:
        print(f"napari-lit: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("napari-lit: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
