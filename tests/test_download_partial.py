"""Downloads never leave a partial file under the final name (complements test_download.py).

Loopback HTTP servers only: the final name is absent during the whole transfer, a process killed
mid-download leaves only its .part file (and the next attempt completes), a cut chunked transfer
and a cut length-less transfer (caught by the checksum, or for checksum-less torch files by the
zip check) save nothing, and two downloads of one file at once both end with the complete file.
"""
import hashlib
import http.server
import io
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import zipfile
from pathlib import Path

import pytest
import torch

from loopback import serve
from wplus_core.download import ensure_file
from wplus_core.errors import WPlusError

ROOT = Path(__file__).resolve().parents[1]
PAYLOAD = os.urandom(2 * 1024 * 1024 + 77)
SHA = hashlib.sha256(PAYLOAD).hexdigest()
_buf = io.BytesIO()
torch.save({"w": torch.arange(300_000, dtype=torch.float32)}, _buf)
ZIP_PAYLOAD = _buf.getvalue()  # what torch.save writes: a zip archive
RELEASE = threading.Event()     # lets /hang.bin finish when the test is over


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def _head(self, length=None, chunked=False):
        self.send_response(200)
        if length is not None:
            self.send_header("Content-Length", str(length))
        if chunked:
            self.send_header("Transfer-Encoding", "chunked")
        if length is None and not chunked:
            self.send_header("Connection", "close")  # body ends when the connection closes
        self.end_headers()

    def _hang_up(self):
        self.wfile.flush()
        self.close_connection = True
        try:
            self.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def do_GET(self):
        if self.path == "/slow.bin":  # the whole file, in 16 pieces, slowly
            self._head(len(PAYLOAD))
            step = len(PAYLOAD) // 16 + 1
            for i in range(0, len(PAYLOAD), step):
                self.wfile.write(PAYLOAD[i:i + step])
                self.wfile.flush()
                time.sleep(0.02)
        elif self.path == "/hang.bin":  # half the file, then nothing until released
            self._head(len(PAYLOAD))
            self.wfile.write(PAYLOAD[: len(PAYLOAD) // 2])
            self.wfile.flush()
            RELEASE.wait(30)
            self._hang_up()
        elif self.path == "/chunked_cut.bin":  # chunked, without the closing 0-length chunk
            self._head(chunked=True)
            for part in (PAYLOAD[:100_000], PAYLOAD[100_000:200_000]):
                self.wfile.write(f"{len(part):x}\r\n".encode() + part + b"\r\n")
            self._hang_up()
        elif self.path in ("/nolength_cut.bin", "/nolength_cut_zip.bin"):  # no length: EOF looks final
            data = PAYLOAD if self.path == "/nolength_cut.bin" else ZIP_PAYLOAD
            self._head()
            self.wfile.write(data[: len(data) // 2])
            self._hang_up()
        elif self.path == "/nolength_zip.bin":  # no length, complete
            self._head()
            self.wfile.write(ZIP_PAYLOAD)
            self._hang_up()
        else:
            self.send_error(404)


@pytest.fixture(scope="module")
def server():
    RELEASE.clear()
    with serve(_Handler, on_stop=RELEASE.set) as url:
        yield url


from test_download import online  # noqa: E402,F401  (autouse: downloads allowed here)


def test_final_name_is_absent_during_the_whole_transfer(server, tmp_path):
    final = tmp_path / "w.pth"
    seen = []

    def progress(done, total):
        parts = [p for p in os.listdir(tmp_path) if p.startswith("w.pth.part-")]
        seen.append((done, final.exists(), len(parts)))

    path = ensure_file(tmp_path, "w.pth", f"{server}/slow.bin", sha256=SHA, progress=progress)
    assert len(seen) >= 3 and seen[-1][0] == len(PAYLOAD)
    assert all(not exists and parts == 1 for _, exists, parts in seen), seen
    assert Path(path).read_bytes() == PAYLOAD and os.listdir(tmp_path) == ["w.pth"]


def test_killed_download_leaves_no_final_file(server, tmp_path):
    code = ("import sys; from wplus_core.download import ensure_file; "
            "ensure_file(sys.argv[1], 'w.pth', sys.argv[2])")
    proc = subprocess.Popen([sys.executable, "-c", code, str(tmp_path), f"{server}/hang.bin"], cwd=ROOT)
    try:
        deadline = time.monotonic() + 60
        while True:
            parts = [p for p in tmp_path.iterdir() if p.name.startswith("w.pth.part-")]
            if parts and parts[0].stat().st_size >= 1 << 20:  # bytes are arriving
                break
            assert proc.poll() is None and time.monotonic() < deadline, "the download did not start"
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)  # no cleanup code can run
        proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    assert not (tmp_path / "w.pth").exists()
    stale = parts[0]
    assert stale.is_file()  # the killed process's own temporary name, never the final one
    # the next attempt is not fooled by the leftover and completes
    path = ensure_file(tmp_path, "w.pth", f"{server}/slow.bin", sha256=SHA)
    assert Path(path).read_bytes() == PAYLOAD
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["w.pth", stale.name])


def test_cut_chunked_transfer_saves_nothing(server, tmp_path):
    with pytest.raises(WPlusError) as e:
        ensure_file(tmp_path, "w.pth", f"{server}/chunked_cut.bin")
    assert "w.pth" in str(e.value) and "manually" in str(e.value)
    assert os.listdir(tmp_path) == []


def test_cut_transfer_without_length_is_caught_by_the_checksum(server, tmp_path):
    with pytest.raises(WPlusError, match="corrupt"):
        ensure_file(tmp_path, "w.pth", f"{server}/nolength_cut.bin", sha256=SHA)
    assert os.listdir(tmp_path) == []


def test_cut_torch_file_without_length_or_checksum_is_caught(server, tmp_path):
    """The W+ release publishes no checksum: a torch (zip) file cut short is still refused."""
    assert zipfile.is_zipfile(io.BytesIO(ZIP_PAYLOAD))
    with pytest.raises(WPlusError, match="incomplete") as e:
        ensure_file(tmp_path, "wplus_adapter.bin", f"{server}/nolength_cut_zip.bin")
    assert str(tmp_path) in str(e.value) and "manually" in str(e.value)
    assert os.listdir(tmp_path) == []
    path = ensure_file(tmp_path, "wplus_adapter.bin", f"{server}/nolength_zip.bin")
    assert Path(path).read_bytes() == ZIP_PAYLOAD
    assert torch.load(path, weights_only=True)["w"].shape == (300_000,)


def test_two_downloads_of_one_file_at_once(server, tmp_path):
    results, errors = [], []

    def fetch():
        try:
            results.append(ensure_file(tmp_path, "w.pth", f"{server}/slow.bin", sha256=SHA))
        except Exception as e:  # reported below
            errors.append(e)

    threads = [threading.Thread(target=fetch) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors and results == [str(tmp_path / "w.pth")] * 2
    assert (tmp_path / "w.pth").read_bytes() == PAYLOAD
    assert os.listdir(tmp_path) == ["w.pth"]
