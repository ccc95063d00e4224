"""Session folder: everything a session does, saved when it happens.

A session folder holds one image's annotation task::

    session.json        what the session is: the image's fingerprint, the model and its
                        checksum, adapter settings (written once, atomically)
    labels.zarr/        the label store, written frame by frame (zarr writes each chunk
                        through a temporary file and a rename)
    log.jsonl           append-only event log, one JSON object per line, flushed and fsynced
                        per entry: prompts, corrections, learning, undo/redo, and one
                        ``frame`` event per written frame with its masked entropy
    records/NNNNNN.npz  what an event needs beside its line: a mask prompt, the labels a
                        correction replaced (for undo)
    inputs/NNNNNN.pt    a corrected frame's recorded decoder inputs (to learn after a resume)
    adapters/NNNNNN/    every object's adapter after each change (a folder renamed into place)
    memory/objK-frameF.pt  a mirror of sam2's per-frame outputs (memory features, object
                        pointers) as its state holds them (bounded like the state), so a
                        resumed session tracks on exactly as the uninterrupted one would
    features/           the image encoder's features of the frames and windows seen
                        (zarr, one chunk per frame; :mod:`napari_lit.core.features`), so a
                        resumed session does not encode them again

Rules that make a crash cost at most the frame in progress: a file an event refers to is
complete (written to a temporary name, fsynced, renamed) before the event's line is
appended; a frame counts as written only once its ``frame`` line is in the log (a chunk
written without it is cleared on resume); a last line cut short by a kill is dropped.
"""

from __future__ import annotations

import errno
import hashlib
import io
import json
import os
import shutil
import time
import uuid
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from .store import LabelStore, SessionWriteError, saving

__all__ = ["SessionFolder", "SessionFolderError", "SessionWriteError", "saving", "image_fingerprint", "check_image",
           "FORMAT"]

FORMAT = 1
META_FILE = "session.json"
LOG_FILE = "log.jsonl"
LABELS_DIR = "labels.zarr"


class SessionFolderError(ValueError):
    """A session folder that cannot be used: missing, corrupt, of another image or model."""


def image_fingerprint(frames) -> Dict:
    """What identifies a stack cheaply: its (N, Y, X) shape, dtype, and the SHA-256 of the
    raw bytes of its first, middle and last frames.

    Parameters
    ----------
    frames : napari_lit.core.FrameSource

    Returns
    -------
    dict
        ``shape`` (list of int), ``dtype`` (str), ``sha256`` (hex str).
    """
    n = frames.n_frames
    h = hashlib.sha256()
    for i in sorted({0, n // 2, n - 1}):
        raw = np.ascontiguousarray(frames.raw(i))
        h.update(str(raw.shape).encode())
        h.update(raw.tobytes())
    return {"shape": [n, *frames.frame_shape], "dtype": str(np.asarray(frames.raw(0)).dtype),
            "sha256": h.hexdigest()}


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(str(path), os.O_RDONLY)
    except OSError:  # not possible on every platform (Windows): the rename is still atomic
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _atomic_write(path: Path, write) -> None:
    """Call ``write(tmp_path)``, fsync the file, rename it to ``path``."""
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.partial")
    try:
        write(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


class SessionFolder:
    """The files of one session (see the module's text for the layout).

    Use :meth:`create` or :meth:`open`.

    Attributes
    ----------
    path : Path
    meta : dict
        The contents of ``session.json``.
    store : LabelStore
    events : list of dict
        The log as read at :meth:`open` (empty for a new folder).
    """

    def __init__(self, path: Path, meta: Dict, store: LabelStore, events: List[Dict]):
        self.path = Path(path)
        self.meta = meta
        self.store = store
        self.events = events
        self._seq = max((int(e.get("seq", 0)) for e in events), default=0)
        self._torn = False  # a failed append could not cut its partial line off again
        self._log = None

    # ------------------------------------------------------------------ creation
    @classmethod
    def create(cls, path: Union[str, Path], shape: Sequence[int], meta: Dict, frame_axis: int = 0,
               fixed: Optional[Dict[int, int]] = None) -> "SessionFolder":
        """Create a new session folder.

        Parameters
        ----------
        path : str or Path
            A folder that does not exist yet, or an empty one.
        shape : (N, Y, X), or the full shape of a 4D+ image
            Label store shape.
        frame_axis, fixed
            For a 4D+ shape: the slice the session writes (see
            :meth:`napari_lit.core.store.LabelStore.create`).
        meta : dict
            JSON-serialisable description (image fingerprint, model, settings), saved as
            ``session.json`` with ``format`` and ``created`` added.

        Raises
        ------
        FileExistsError
            If ``path`` exists and is not empty.
        PermissionError
            If ``path`` cannot be written.
        """
        path = Path(path)
        if path.exists() and (not path.is_dir() or any(path.iterdir())):
            raise FileExistsError(f"{path} already exists and is not an empty folder: "
                                  f"open it to resume, or choose a new folder")
        try:
            path.mkdir(parents=True, exist_ok=True)
            probe = path / f".write-test-{uuid.uuid4().hex}"
            probe.write_bytes(b"napari-lit")  # os.access says yes to root on a read-only mount
            probe.unlink()
        except OSError as exc:
            raise PermissionError(exc.errno, f"cannot create the session folder {path} "
                                             f"({exc.strerror or exc}): choose a folder you can write to") from exc
        meta = {"format": FORMAT, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), **meta}
        with saving(path):
            store = LabelStore.create(path / LABELS_DIR, shape, frame_axis=frame_axis, fixed=fixed)
            _atomic_write(path / META_FILE, lambda p: p.write_text(json.dumps(meta, indent=2)))
            (path / LOG_FILE).touch()
        return cls(path, meta, store, [])

    @classmethod
    def open(cls, path: Union[str, Path]) -> "SessionFolder":
        """Open an existing session folder and read its log.

        A last log line cut short (the process was killed while writing it) is dropped and
        the file truncated to the last complete line.

        Raises
        ------
        SessionFolderError
            If ``path`` is not a session folder, its ``session.json`` is unreadable or of
            another format, or a log line other than the last is corrupt.
        """
        path = Path(path)
        meta = cls.read_meta(path)
        try:
            store = LabelStore.open(path / LABELS_DIR)
        except (FileNotFoundError, ValueError) as exc:
            raise SessionFolderError(f"{path}: {exc}") from None
        events = cls._read_log(path / LOG_FILE)
        return cls(path, meta, store, events)

    @staticmethod
    def read_meta(path: Union[str, Path]) -> Dict:
        """The ``session.json`` of the session folder ``path`` (without reading the log).

        Raises
        ------
        SessionFolderError
            If it is missing, unreadable or of another format.
        """
        path = Path(path)
        meta_path = path / META_FILE
        if not meta_path.is_file():
            raise SessionFolderError(f"{path} is not a napari-lit session folder (no {META_FILE})")
        try:
            meta = json.loads(meta_path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise SessionFolderError(f"{meta_path} is unreadable: {exc}") from None
        if meta.get("format") != FORMAT:
            raise SessionFolderError(f"{path} has session format {meta.get('format')!r}; this napari-lit "
                                     f"reads format {FORMAT}")
        return meta

    def save_meta(self) -> None:
        """Write :attr:`meta` back to ``session.json`` (atomically).

        Raises
        ------
        SessionWriteError
            If the folder cannot be written; the previous ``session.json`` stays."""
        with saving(self.path):
            _atomic_write(self.path / META_FILE, lambda p: p.write_text(json.dumps(self.meta, indent=2)))

    @staticmethod
    def _read_log(log_path: Path) -> List[Dict]:
        if not log_path.is_file():
            raise SessionFolderError(f"{log_path.parent} has no {LOG_FILE}")
        data = log_path.read_bytes()
        events, good_end, pos = [], 0, 0
        while pos < len(data):
            end = data.find(b"\n", pos)
            line = data[pos:] if end < 0 else data[pos:end]
            try:
                events.append(json.loads(line))
            except (json.JSONDecodeError, UnicodeDecodeError):
                if end >= 0 and data[end + 1:].strip():
                    raise SessionFolderError(
                        f"{log_path}: line {len(events) + 1} is corrupt and is not the last one; "
                        f"the log cannot be trusted past it") from None
                break  # a torn last line
            if end < 0:  # complete JSON but no newline: the write was cut before it
                good_end = len(data)
                break
            good_end = pos = end + 1
        if good_end < len(data):
            with open(log_path, "rb+") as f:
                f.truncate(good_end)
                os.fsync(f.fileno())
        if good_end and not data[:good_end].endswith(b"\n"):
            with open(log_path, "ab") as f:
                f.write(b"\n")
                os.fsync(f.fileno())
        return events

    # --------------------------------------------------------------------- writing
    def next_seq(self) -> int:
        """The sequence number of the next event (also names the files it refers to)."""
        return self._seq + 1

    def append(self, event: Dict) -> Dict:
        """Append ``event`` (with ``seq`` and ``time`` added) to the log, flushed and fsynced.

        Raises
        ------
        SessionWriteError
            If the folder cannot be written (full disk, removed, read-only); what was saved
            before stays valid: a line written in part is cut off again, so a later append
            cannot leave a corrupt line in the middle of the log.
        """
        event = {"seq": self._seq + 1, "time": round(time.time(), 3), **event}
        data = (json.dumps(event, separators=(",", ":")) + "\n").encode("utf-8")
        with saving(self.path):
            if self._torn:
                raise OSError(errno.EIO, "an earlier write left a line cut short; reopen (resume) the session")
            if self._log is None:
                self._log = open(self.path / LOG_FILE, "ab", buffering=0)
            start = self._log.seek(0, os.SEEK_END)
            try:
                view = memoryview(data)
                while view:
                    view = view[self._log.write(view):]
                os.fsync(self._log.fileno())
            except OSError:
                try:
                    self._log.truncate(start)
                except OSError:  # the torn line must stay the last: no more appends until reopened
                    self._torn = True
                raise
        self._seq += 1
        return event

    def save_record(self, name: str, **arrays: np.ndarray) -> str:
        """Save ``arrays`` as ``records/<name>.npz`` (compressed, atomically); returns the
        path relative to the folder, for an event to refer to."""
        rel = f"records/{name}.npz"
        target = self.path / rel

        def write(tmp):
            with open(tmp, "wb") as f:
                np.savez_compressed(f, **arrays)

        with saving(self.path):
            target.parent.mkdir(exist_ok=True)
            _atomic_write(target, write)
        return rel

    def load_record(self, rel: str) -> Dict[str, np.ndarray]:
        """The arrays of the record ``rel`` (a path :meth:`save_record` returned)."""
        with np.load(self.path / rel) as data:
            return {k: data[k] for k in data.files}

    def save_inputs(self, name: str, inputs) -> str:
        """Save a frame's decoder inputs (tensors) as ``inputs/<name>.pt``; returns the
        relative path."""
        import torch

        rel = f"inputs/{name}.pt"
        target = self.path / rel
        window = getattr(inputs, "window", None)
        payload = {"inputs": dict(inputs), "memory_attention": getattr(inputs, "memory_attention", None),
                   "window": None if window is None else [int(v) for v in window]}
        buffer = io.BytesIO()  # serialised in memory: a failed file write is then a plain OSError
        torch.save(payload, buffer)
        with saving(self.path):
            target.parent.mkdir(exist_ok=True)
            _atomic_write(target, lambda p: p.write_bytes(buffer.getvalue()))
        return rel

    def load_inputs(self, rel: str):
        """The decoder inputs saved as ``rel`` (a path :meth:`save_inputs` returned), on CPU."""
        import torch

        from ._sam2 import DecoderInputs

        payload = torch.load(self.path / rel, map_location="cpu", weights_only=False)
        out = DecoderInputs(payload["inputs"])
        if payload.get("memory_attention") is not None:
            out.memory_attention = payload["memory_attention"]
        if payload.get("window") is not None:
            out.window = tuple(int(v) for v in payload["window"])
        return out

    # ------------------------------------------------------------------ sam2's memory
    def _memory_path(self, obj_id: int, frame_idx: int) -> Path:
        return self.path / "memory" / f"obj{int(obj_id)}-frame{int(frame_idx):06d}.pt"

    def save_memory(self, obj_id: int, frame_idx: int, payload: dict) -> None:
        """Keep what sam2 holds of (object, frame) for the frames after it (its memory
        features, object pointer, mask logits; :meth:`Tracker.frame_memory`) as
        ``memory/obj<K>-frame<F>.pt``, replacing an earlier one. Written atomically but not
        fsynced: it mirrors sam2's state so that a resumed session tracks on exactly as it
        would have; a file lost in a power cut only makes the resume rebuild that memory.

        Parameters
        ----------
        obj_id, frame_idx : int
            The object and the frame.
        payload : dict
            :meth:`~napari_lit.core.tracker.Tracker.frame_memory` of them.
        """
        import torch

        target = self._memory_path(obj_id, frame_idx)
        buffer = io.BytesIO()
        torch.save(payload, buffer)
        with saving(self.path):
            target.parent.mkdir(exist_ok=True)
            tmp = target.with_name(f".{target.name}.{uuid.uuid4().hex}.partial")
            try:
                tmp.write_bytes(buffer.getvalue())
                os.replace(tmp, target)
            except BaseException:
                tmp.unlink(missing_ok=True)
                raise

    def drop_memory(self, obj_id: int, frame_idx: Optional[int] = None) -> None:
        """Forget the saved memory of (object, frame), or of every frame of the object.

        Parameters
        ----------
        obj_id : int
        frame_idx : int, optional
            None: all of the object's frames.
        """
        folder = self.path / "memory"
        paths = ([self._memory_path(obj_id, frame_idx)] if frame_idx is not None
                 else folder.glob(f"obj{int(obj_id)}-frame*.pt"))
        for path in paths:
            path.unlink(missing_ok=True)

    def load_memory(self) -> Dict[Tuple[int, int], dict]:
        """Every saved memory: (object, frame) -> payload (CPU tensors); unreadable files
        (cut short) are left out."""
        import re

        import torch

        out = {}
        for path in sorted((self.path / "memory").glob("obj*-frame*.pt")):
            m = re.fullmatch(r"obj(\d+)-frame(\d+)\.pt", path.name)
            if m is None:
                continue
            try:
                out[(int(m.group(1)), int(m.group(2)))] = torch.load(path, map_location="cpu", weights_only=False)
            except Exception:  # noqa: BLE001 - a torn or foreign file: that frame's memory is rebuilt
                continue
        return out

    def save_adapters(self, name: str, adapter, examples: Dict[int, List[str]]) -> str:
        """Save every object's adapter (weights + peft config, :meth:`DecoderAdapter.save`),
        the shared one if any (``sequence/``), and which saved corrections each object has
        taught (``examples``: object id -> list of ``[inputs file, target record, serial]``,
        serial ordering the corrections of all objects) as ``adapters/<name>/``, renamed into
        place when complete; returns the relative path."""
        rel = f"adapters/{name}"
        target = self.path / rel
        with saving(self.path):
            target.parent.mkdir(exist_ok=True)
            self._save_adapters(target, name, adapter, examples)
        return rel

    def _save_adapters(self, target: Path, name: str, adapter, examples: Dict[int, List[str]]) -> None:
        from .adaptation import SHARED

        tmp = target.with_name(f".{name}.{uuid.uuid4().hex}.partial")
        try:
            tmp.mkdir()
            objs = adapter.own_adapters()
            for k in objs:
                adapter.save(tmp / f"obj{k}", k)
            if adapter.has_shared:
                adapter.save(tmp / "sequence", SHARED)
            (tmp / "index.json").write_text(json.dumps({
                "objects": objs, "sequence": bool(adapter.has_shared),
                "n_corrections": {str(k): int(v) for k, v in adapter.n_corrections.items()},
                "examples": {str(k): list(v) for k, v in examples.items()}}))
            for f in tmp.rglob("*"):
                if f.is_file():
                    with open(f, "rb+") as fh:
                        os.fsync(fh.fileno())
            if target.exists():
                shutil.rmtree(target)
            os.replace(tmp, target)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        _fsync_dir(target.parent)

    def adapters_index(self, rel: str) -> Dict:
        """The ``index.json`` of the saved adapters folder ``rel`` (objects, corrections
        count, training examples)."""
        return json.loads((self.path / rel / "index.json").read_text())

    def close(self) -> None:
        """Close the log file (appending opens it again)."""
        if self._log is not None:
            self._log.close()
            self._log = None

    # ------------------------------------------------------------------- reading
    def logged_frames(self) -> Dict[int, Dict[int, float]]:
        """Frames whose ``frame`` event is in the log -> their masked entropy per object."""
        out: Dict[int, Dict[int, float]] = {}
        for e in self.events:
            if e.get("kind") == "frame":
                out[int(e["frame"])] = {int(k): float(v) for k, v in e.get("entropy", {}).items()}
        return out

    def lineage(self) -> Dict[int, int]:
        """Daughter -> mother of the divisions in effect (logged by
        :meth:`LitSession.divide`, less those undone), read from the log alone: the edits
        stack as the session stacks them (a new edit clears what undo took back)."""
        history: List[dict] = []
        undone: List[dict] = []
        for e in self.events:
            kind = e.get("kind")
            if (kind == "prompt" and "before" in e) or kind in ("remove_prompt", "division"):
                history.append(e)
                undone.clear()
            elif kind == "undo" and history:
                undone.append(history.pop())
            elif kind == "redo" and undone:
                history.append(undone.pop())
        return {int(d): int(e["obj"]) for e in history if e.get("kind") == "division" for d in e["daughters"]}

    def check_image(self, fingerprint: Dict) -> None:
        """Raise :class:`SessionFolderError` unless ``fingerprint`` (see
        :func:`image_fingerprint`) is the one this session was made on."""
        check_image(self.path, self.meta, fingerprint)

    def check_model(self, name: str, checksum: Optional[str]) -> None:
        """Raise :class:`SessionFolderError` unless the session was made with the model
        ``name`` whose checkpoint has SHA-256 ``checksum`` (not checked when either side
        did not record one)."""
        mine = self.meta.get("model", {})
        if mine.get("sha256") and checksum and mine["sha256"] != checksum:
            raise SessionFolderError(
                f"{self.path} was made with model {mine.get('name')} (sha256 {mine['sha256'][:12]}...), "
                f"but {name} (sha256 {checksum[:12]}...) is loaded: its adapters and prompts belong to "
                f"that model")

    def frames_to_clear(self) -> Tuple[int, ...]:
        """Frames the store holds but the log does not vouch for (written when the process
        was killed, before their ``frame`` line)."""
        logged = set(self.logged_frames())
        return tuple(f for f in self.store.frames_done if f not in logged)


def check_image(path: Path, meta: Dict, fingerprint: Dict) -> None:
    """Raise :class:`SessionFolderError` unless ``fingerprint`` (see :func:`image_fingerprint`)
    is the image the session folder ``path`` with ``meta`` (its ``session.json``) was made on."""
    mine = meta.get("image", {})
    if mine.get("shape") != fingerprint["shape"] or mine.get("dtype") != fingerprint["dtype"]:
        raise SessionFolderError(
            f"{path} belongs to an image of shape {mine.get('shape')} {mine.get('dtype')}, "
            f"not to this one ({fingerprint['shape']} {fingerprint['dtype']})")
    if mine.get("sha256") != fingerprint["sha256"]:
        raise SessionFolderError(
            f"{path} belongs to another image of the same shape (its frames differ): open the "
            f"image it was made on ({meta.get('source') or 'source not recorded'})")
