"""download.ensure_file against a loopback HTTP server: success, bad checksum, cut connection,
unreachable server, WPLUS_OFFLINE. No real network."""
import hashlib
import http.server
import os
import socket

import pytest

from loopback import serve
from wplus_core import download
from wplus_core import model_files
from wplus_core.download import ensure_file, ensure_known_file
from wplus_core.errors import WPlusError

PAYLOAD = os.urandom(3 * 1024 * 1024 + 123)  # > 1 chunk so progress is called several times
SHA = hashlib.sha256(PAYLOAD).hexdigest()


class _Handler(http.server.BaseHTTPRequestHandler):
    def log_message(self, *args):  # keep pytest output clean
        pass

    def do_GET(self):
        if self.path == "/good.bin":
            self.send_response(200)
            self.send_header("Content-Length", str(len(PAYLOAD)))
            self.end_headers()
            self.wfile.write(PAYLOAD)
        elif self.path == "/cut.bin":  # announces the full length, sends half, hangs up
            self.send_response(200)
            self.send_header("Content-Length", str(len(PAYLOAD)))
            self.end_headers()
            self.wfile.write(PAYLOAD[: len(PAYLOAD) // 2])
            self.wfile.flush()
            self.close_connection = True
            self.connection.shutdown(socket.SHUT_RDWR)
        else:
            self.send_error(404)


@pytest.fixture(scope="module")
def server():
    with serve(_Handler) as url:
        yield url


@pytest.fixture(autouse=True)
def online(monkeypatch):
    monkeypatch.delenv(download.OFFLINE_ENV, raising=False)


def _leftovers(folder):
    return sorted(os.listdir(folder)) if os.path.isdir(folder) else []


def test_download_ok_with_progress_and_checksum(server, tmp_path):
    calls = []
    folder = tmp_path / "models" / "facexlib"  # created on demand
    path = ensure_file(folder, "w.pth", f"{server}/good.bin", sha256=SHA,
                       progress=lambda d, t: calls.append((d, t)))
    assert path == str(folder / "w.pth")
    assert open(path, "rb").read() == PAYLOAD
    assert _leftovers(folder) == ["w.pth"]  # no .part file left
    assert calls[0] == (0, len(PAYLOAD)) and calls[-1] == (len(PAYLOAD), len(PAYLOAD))
    assert len(calls) >= 4 and all(a[0] <= b[0] for a, b in zip(calls, calls[1:]))

    # Present file: returned as is, no download (the URL would 404).
    calls.clear()
    assert ensure_file(folder, "w.pth", f"{server}/missing.bin", progress=lambda d, t: calls.append(d)) == path
    assert calls == []


def test_empty_existing_file_is_fetched_again(server, tmp_path):
    (tmp_path / "w.pth").write_bytes(b"")
    path = ensure_file(tmp_path, "w.pth", f"{server}/good.bin", sha256=SHA.upper())
    assert os.path.getsize(path) == len(PAYLOAD)


def test_wrong_checksum_refused(server, tmp_path):
    wrong = "0" * 64
    with pytest.raises(WPlusError) as e:
        ensure_file(tmp_path, "w.pth", f"{server}/good.bin", sha256=wrong)
    msg = str(e.value)
    assert wrong in msg and SHA in msg and "w.pth" in msg and str(tmp_path) in msg
    assert _leftovers(tmp_path) == []


def test_connection_cut_midway(server, tmp_path):
    with pytest.raises(WPlusError) as e:
        ensure_file(tmp_path, "w.pth", f"{server}/cut.bin")
    msg = str(e.value)
    assert "w.pth" in msg and str(tmp_path) in msg and f"{server}/cut.bin" in msg
    assert "manually" in msg
    assert _leftovers(tmp_path) == []


def test_http_error(server, tmp_path):
    with pytest.raises(WPlusError, match="404"):
        ensure_file(tmp_path, "w.pth", f"{server}/nope.bin")
    assert _leftovers(tmp_path) == []


def _closed_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def test_unreachable_server(tmp_path):
    url = f"http://127.0.0.1:{_closed_port()}/detection_Resnet50_Final.pth"
    with pytest.raises(WPlusError) as e:
        ensure_file(tmp_path, "detection_Resnet50_Final.pth", url)
    msg = str(e.value)
    assert "detection_Resnet50_Final.pth" in msg and str(tmp_path) in msg and url in msg
    assert "manually" in msg
    assert _leftovers(tmp_path) == []


def test_offline_env_forbids_download(server, tmp_path, monkeypatch):
    monkeypatch.setenv(download.OFFLINE_ENV, "1")
    with pytest.raises(WPlusError) as e:
        ensure_file(tmp_path, "w.pth", f"{server}/good.bin")
    msg = str(e.value)
    assert "WPLUS_OFFLINE" in msg and "w.pth" in msg and str(tmp_path) in msg and "good.bin" in msg
    assert _leftovers(tmp_path) == []
    # an already present file is still served offline
    (tmp_path / "w.pth").write_bytes(b"x")
    assert ensure_file(tmp_path, "w.pth", f"{server}/good.bin") == str(tmp_path / "w.pth")


def test_progress_exception_propagates_and_cleans_up(server, tmp_path):
    class Interrupted(Exception):
        pass

    def progress(done, total):
        if done > 1024 * 1024:
            raise Interrupted()

    with pytest.raises(Interrupted):
        ensure_file(tmp_path, "w.pth", f"{server}/good.bin", progress=progress)
    assert _leftovers(tmp_path) == []


def test_known_files_registry(tmp_path, monkeypatch):
    for name in ("detection_Resnet50_Final.pth", "detection_mobilenet0.25_Final.pth",
                 "parsing_parsenet.pth", "parsing_bisenet.pth", "wplus_adapter.bin",
                 "wplus_adapter_stage1.bin", "e4e_ffhq_encode.pt"):
        known = model_files.by_name(name)
        url, sha, size = known.url, known.sha256, known.size
        assert url.startswith("https://github.com/") and url.endswith("/" + name)
        assert sha is None or (len(sha) == 64 and int(sha, 16) >= 0)
        assert size is None or size > 0
    monkeypatch.setenv(download.OFFLINE_ENV, "1")
    with pytest.raises(WPlusError, match="xinntao/facexlib/releases"):
        ensure_known_file(tmp_path, "parsing_parsenet.pth")
    with pytest.raises(WPlusError, match="no download location"):
        ensure_known_file(tmp_path, "something_else.pth")
