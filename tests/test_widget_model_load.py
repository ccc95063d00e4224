"""Loading a model that is not in the cache, from the dock widget under Xvfb (issue 25, item 1).

The network is absent (a closed local port, as on a machine offline) or slow (a local server
that trickles the file): the widget must be idle again within seconds, say which file to put
where with its SHA-256, let Cancel stop a download in progress, load once the file is placed,
and never touch Qt objects from the worker thread.
"""

import functools
import hashlib
import http.server
import socket
import threading
import time
from dataclasses import replace

import pytest

pytest.importorskip("napari")
pytestmark = pytest.mark.gui

from napari_lit._widgets import LitWidget  # noqa: E402
from napari_lit.models import MODELS, catalogue  # noqa: E402

THREAD_WARNINGS = ("different thread", "another thread")


def _closed_port() -> int:
    """A local TCP port nobody listens on: a connection is refused at once, as offline."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture()
def widget(make_napari_viewer, tmp_path, monkeypatch):
    monkeypatch.setenv("NAPARI_LIT_CACHE", str(tmp_path / "cache"))
    viewer = make_napari_viewer()
    viewer.open_sample("napari-lit", "timelapse")
    w = LitWidget(viewer, store_dir=tmp_path / "sessions")
    viewer.window.add_dock_widget(w, name="LIT segmentation")
    w.image_combo.setCurrentText(viewer.layers[0].name)
    yield w
    if w.session is not None:
        w.close_session()


def _thread_warnings(caplog, capfd):
    text = " ".join(r.getMessage() for r in caplog.records) + " ".join(capfd.readouterr())
    return [w for w in THREAD_WARNINGS if w in text]


def test_offline_model_fails_within_seconds_with_a_dialog_and_retry_after_placing_it(
        widget, qtbot, tmp_path, monkeypatch, caplog, capfd):
    """Before the fix the worker's RuntimeError was swallowed by superqt (no errored, no
    finished): the widget stayed "loading ..." for good and refused every later start."""
    from napari_lit.models.build import build_sam2_model
    from napari_lit.models.catalogue import LIT_TINY_CONFIG
    import torch

    # the file a user would download elsewhere: lit-tiny's architecture, fresh weights
    made = tmp_path / "elsewhere" / "offline-model.pt"
    made.parent.mkdir()
    torch.save({"model": build_sam2_model(LIT_TINY_CONFIG, target="base").state_dict()}, made)
    digest = hashlib.sha256(made.read_bytes()).hexdigest()
    url = f"http://127.0.0.1:{_closed_port()}/offline-model.pt"
    spec = catalogue.ModelSpec("offline-model", str(LIT_TINY_CONFIG), "offline-model.pt", url, digest)
    monkeypatch.setitem(MODELS, "offline-model", spec)
    widget.model_combo.addItem("offline-model")
    widget.model_combo.setCurrentText("offline-model")

    started = time.perf_counter()
    widget.start()
    qtbot.waitUntil(lambda: not widget.busy, timeout=10_000)
    assert time.perf_counter() - started < 10
    target = tmp_path / "cache" / "offline-model.pt"
    status = widget.status_label.text()
    assert status.startswith("error: cannot download offline-model") and str(target) in status, status
    assert digest in status
    box = widget.model_dialog
    assert box is not None and box.isVisible()
    assert url in box.text() and str(target) in box.text() and digest in box.informativeText()
    assert not _thread_warnings(caplog, capfd)
    assert not target.exists()

    # a second start is not refused ("a model call is running"): it fails the same way, at once
    widget.start()
    qtbot.waitUntil(lambda: not widget.busy, timeout=10_000)
    assert "cannot download" in widget.status_label.text()

    # the user places the file and presses Retry in the dialog: the session starts
    target.write_bytes(made.read_bytes())
    box = widget.model_dialog
    box.button(box.Retry).click()
    qtbot.waitUntil(lambda: widget.session is not None and not widget.busy, timeout=60_000)
    assert widget.session.folder.meta["model"]["name"] == "offline-model"
    assert not _thread_warnings(caplog, capfd)


class _Trickle(http.server.BaseHTTPRequestHandler):
    """Serves ``size`` bytes, 64 KiB every 20 ms (about 3 MB/s): a download takes seconds."""

    size = 64 << 20

    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Length", str(self.size))
        self.end_headers()
        block = b"\0" * (1 << 16)
        try:
            for _ in range(self.size // len(block)):
                self.wfile.write(block)
                time.sleep(0.02)
        except (BrokenPipeError, ConnectionResetError):
            pass

    def log_message(self, *args):
        pass


def test_cancel_interrupts_a_download_and_keeps_no_partial_file(widget, qtbot, tmp_path, monkeypatch, caplog, capfd):
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Trickle)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/slow.pt"
        spec = replace(MODELS["sam2.1_hiera_tiny"], name="slow-model", filename="slow.pt", url=url)
        monkeypatch.setitem(MODELS, "slow-model", spec)
        widget.model_combo.addItem("slow-model")
        widget.model_combo.setCurrentText("slow-model")
        widget.start()
        # the GUI shows the bytes as they come (copied from the worker by a GUI timer)
        qtbot.waitUntil(lambda: "MB" in widget.status_label.text() and widget.progress_bar.value() > 0, timeout=10_000)
        assert widget.status_label.text().startswith("downloading slow-model:")
        assert widget.busy
        cancelled = time.perf_counter()
        widget.cancel()
        qtbot.waitUntil(lambda: not widget.busy, timeout=5_000)
        assert time.perf_counter() - cancelled < 2
        assert widget.status_label.text().startswith("download of slow-model cancelled"), widget.status_label.text()
        assert widget.model_dialog is None  # a cancel is not an error: no dialog
        assert not any((tmp_path / "cache").iterdir())  # pooch's temporary file is gone too
        assert not _thread_warnings(caplog, capfd)
    finally:
        server.shutdown()
