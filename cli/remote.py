"""A client for a running ComfyUI server, through its real HTTP and websocket API.

    remote = Remote("http://gpu-box:8188", client_id)
    name = remote.upload_image(Path("me.jpg"))            # POST /upload/image -> LoadImage value
    remote.submit(prompt, prompt_id)                      # POST /prompt {prompt, client_id, prompt_id}
    remote.queue_remaining()                              # GET /prompt -> exec_info.queue_remaining
    remote.queue_ids()                                    # GET /queue -> (running ids, pending ids)
    remote.history(prompt_id)                             # GET /history/<id> -> entry or None
    remote.view(ref)                                      # GET /view?filename&subfolder&type -> bytes
    remote.delete_queued([ids]); remote.interrupt(id)     # POST /queue {"delete"}, POST /interrupt
    for msg in remote.messages(stop, ping_every=5):       # websocket /ws?clientId=... (JSON messages)
    remote.last_heard                                     # time.monotonic() of the last answer (HTTP or websocket)

Only our own prompts are ever touched: deletions name our prompt ids, and an interrupt is sent
only while GET /queue shows one of ours running, with its prompt id in the body (ComfyUI >= 0.3.4x
then interrupts only that prompt; older servers ignore the body, hence the check first).
``last_heard`` is when the server last answered anything: an HTTP response other than a 5xx, a
websocket frame, or a pong to the pings ``messages`` sends; cli/batch.py gives a server up only
when that is older than --server-timeout (a slow server still answers pings between its steps).
The websocket part uses the websocket-client package; everything else is the standard library.
"""
from __future__ import annotations

import base64
import hashlib
import json
import mimetypes
import re
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from pathlib import Path

from .comfy_server import post_prompt

UPLOAD_SUBFOLDER = "wplus-headless"  # our uploads, by content hash: no clash with anyone's files


class Unreachable(OSError):
    """The server did not answer (refused, reset, timed out, or answered 5xx)."""

    def __init__(self, url, reason, refused=False):
        self.refused = refused
        super().__init__(f"{url}: {reason}")


def normalize_url(url: str) -> str:
    """'host:port', 'host' or 'http(s)://host:port/' -> 'http(s)://host:port' (8188 when no port)."""
    url = url.strip()
    if "://" not in url:
        url = "http://" + url
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"--server {url!r}: expected http://HOST:PORT (e.g. http://127.0.0.1:8188)")
    netloc = parts.netloc if parts.port else f"{parts.netloc}:8188"
    return urllib.parse.urlunsplit((parts.scheme, netloc, parts.path.rstrip("/"), "", ""))


def _multipart(fields: dict, file_field: str, filename: str, data: bytes) -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    out = []
    for k, v in fields.items():
        out.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'.encode())
    ctype = mimetypes.guess_type(filename)[0] or "application/octet-stream"
    out.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{file_field}"; filename="{filename}"\r\n'
               f"Content-Type: {ctype}\r\n\r\n".encode() + data + b"\r\n")
    out.append(f"--{boundary}--\r\n".encode())
    return b"".join(out), f"multipart/form-data; boundary={boundary}"


def upload_name(path: Path, data: bytes) -> str:
    """The file name an upload gets: content hash + a safe version of the photo's name."""
    digest = hashlib.sha256(data).hexdigest()[:16]
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", path.name) or "photo.png"
    return f"{digest}-{safe}"


class Remote:
    def __init__(self, url: str, client_id: str, timeout: float = 30.0):
        self.url = normalize_url(url)
        parts = urllib.parse.urlsplit(self.url)
        self.headers = {}
        if parts.username:  # http://user:password@host:port behind a reverse proxy with basic auth
            cred = f"{urllib.parse.unquote(parts.username)}:{urllib.parse.unquote(parts.password or '')}"
            self.headers["Authorization"] = "Basic " + base64.b64encode(cred.encode()).decode()
            netloc = parts.netloc.rsplit("@", 1)[1]
            self.url = urllib.parse.urlunsplit((parts.scheme, netloc, parts.path, "", ""))
        self.client_id = client_id
        self.timeout = timeout
        self.last_heard = 0.0  # time.monotonic() of the last answer, HTTP or websocket (0: none yet)

    def __repr__(self):
        return f"Remote({self.url})"

    # ------------------------------------------------------------------ HTTP
    def request(self, path, data: bytes | None = None, content_type=None, timeout=None) -> bytes:
        headers = dict(self.headers)
        if content_type:
            headers["Content-Type"] = content_type
        req = urllib.request.Request(self.url + path, data=data, headers=headers)
        try:
            with urllib.request.urlopen(req, timeout=timeout or self.timeout) as r:
                body = r.read()
            self.last_heard = time.monotonic()
            return body
        except urllib.error.HTTPError as e:
            if e.code >= 500:
                raise Unreachable(self.url, f"HTTP {e.code} on {path}") from None
            self.last_heard = time.monotonic()  # a 4xx is an answer
            raise
        except (urllib.error.URLError, OSError) as e:
            reason = getattr(e, "reason", e)
            refused = isinstance(reason, ConnectionRefusedError) or isinstance(e, ConnectionRefusedError)
            raise Unreachable(self.url, f"{path}: {reason}", refused=refused) from None

    def get_json(self, path, timeout=None):
        return json.loads(self.request(path, timeout=timeout))

    def post_json(self, path, data, timeout=None) -> bytes:
        return self.request(path, json.dumps(data).encode(), "application/json", timeout=timeout)

    def queue_remaining(self, timeout=None) -> int:
        return int(self.get_json("/prompt", timeout=timeout)["exec_info"]["queue_remaining"])

    def queue_ids(self, timeout=None) -> tuple[list[str], list[str]]:
        """(running prompt ids, pending prompt ids) from GET /queue."""
        q = self.get_json("/queue", timeout=timeout)
        return ([item[1] for item in q.get("queue_running", [])],
                [item[1] for item in q.get("queue_pending", [])])

    def object_info(self, class_type: str) -> dict | None:
        try:
            return self.get_json(f"/object_info/{urllib.parse.quote(class_type)}").get(class_type)
        except urllib.error.HTTPError:
            return None

    def upload_image(self, path: Path) -> str:
        """Upload into input/wplus-headless/ under a content-hash name; returns the LoadImage value."""
        data = Path(path).read_bytes()
        name = upload_name(Path(path), data)
        body, ctype = _multipart({"type": "input", "subfolder": UPLOAD_SUBFOLDER, "overwrite": "true"},
                                 "image", name, data)
        info = json.loads(self.request("/upload/image", body, ctype, timeout=max(self.timeout, 120)))
        sub = info.get("subfolder") or ""
        return f"{sub}/{info['name']}" if sub else info["name"]

    def submit(self, prompt: dict, prompt_id: str) -> str:
        """POST /prompt with our client id and prompt id; PromptRejected when ComfyUI refuses it."""
        body = {"prompt": prompt, "client_id": self.client_id, "prompt_id": prompt_id}
        return post_prompt(lambda: self.post_json("/prompt", body)).get("prompt_id", prompt_id)

    def history(self, prompt_id: str, timeout=None) -> dict | None:
        """The finished /history entry, or None while it has not finished (or was never run)."""
        entry = self.get_json(f"/history/{prompt_id}", timeout=timeout).get(prompt_id)
        if entry and entry.get("status", {}).get("status_str") in ("success", "error"):
            return entry
        return None

    def view(self, ref: dict, timeout=None) -> bytes:
        q = urllib.parse.urlencode({k: ref.get(k, "") for k in ("filename", "subfolder", "type")})
        return self.request(f"/view?{q}", timeout=timeout or max(self.timeout, 120))

    def delete_queued(self, prompt_ids, timeout=None) -> None:
        ids = list(prompt_ids)
        if ids:
            self.post_json("/queue", {"delete": ids}, timeout=timeout)

    def interrupt(self, prompt_id: str, timeout=None) -> bool:
        """Interrupt ``prompt_id`` if (and only if) it is the prompt running now."""
        running, _ = self.queue_ids(timeout=timeout)
        if prompt_id not in running:
            return False
        self.post_json("/interrupt", {"prompt_id": prompt_id}, timeout=timeout)
        return True

    # ------------------------------------------------------------------ websocket
    def ws_url(self) -> str:
        parts = urllib.parse.urlsplit(self.url)
        scheme = "wss" if parts.scheme == "https" else "ws"
        return urllib.parse.urlunsplit((scheme, parts.netloc, parts.path + "/ws",
                                        urllib.parse.urlencode({"clientId": self.client_id}), ""))

    def messages(self, stop, recv_timeout: float = 1.0, ping_every: float | None = None):
        """Yield the server's JSON messages ({"type", "data"}) until ``stop`` (a threading.Event) is set.

        Binary frames (previews) are skipped. With ``ping_every`` a websocket ping goes out that often
        (ComfyUI's aiohttp answers it with a pong even while a prompt runs); every frame received,
        pongs included, sets ``last_heard``. Raises ImportError without websocket-client and
        OSError / websocket exceptions when the connection fails or drops.
        """
        import websocket  # websocket-client
        ws = websocket.create_connection(self.ws_url(), timeout=10,
                                         header=[f"{k}: {v}" for k, v in self.headers.items()])
        self.last_heard = time.monotonic()
        try:
            ws.settimeout(min(recv_timeout, ping_every) if ping_every else recv_timeout)
            pinged = time.monotonic()
            while not stop.is_set():
                if ping_every and time.monotonic() - pinged >= ping_every:
                    ws.ping(b"wplus")
                    pinged = time.monotonic()
                try:
                    opcode, data = ws.recv_data(control_frame=True)
                except websocket.WebSocketTimeoutException:
                    continue
                self.last_heard = time.monotonic()
                if opcode == websocket.ABNF.OPCODE_CLOSE:
                    raise ConnectionResetError("the server closed the websocket")
                if opcode != websocket.ABNF.OPCODE_TEXT or not data:
                    continue  # pong, ping, binary preview
                try:
                    yield json.loads(data.decode("utf-8", errors="replace"))
                except ValueError:
                    continue
        finally:
            ws.close()


def _combo_options(spec) -> list | None:
    if not isinstance(spec, list) or not spec:
        return None
    if isinstance(spec[0], list):
        return spec[0]
    if spec[0] == "COMBO" and len(spec) > 1 and isinstance(spec[1], dict):
        return spec[1].get("options")
    return None


def problems_on_server(remote: Remote, prompt: dict) -> list[str]:
    """What this server lacks for ``prompt``: node types it does not know, and choices (model files,
    directions, sampler names...) that are not among its options. Uploaded images are not checked."""
    problems, infos = [], {}
    for key, node in sorted(prompt.items()):
        ct = node["class_type"]
        if ct not in infos:
            infos[ct] = remote.object_info(ct)
            if infos[ct] is None:
                problems.append(f"node type {ct} is unknown there (install the W+ Adapter pack, and the pack "
                                f"that provides {ct}, in that ComfyUI)")
        info = infos[ct]
        if not info or ct == "LoadImage":
            continue
        specs = dict((info.get("input") or {}).get("optional") or {}, **((info.get("input") or {}).get("required") or {}))
        for name, value in node["inputs"].items():
            options = _combo_options(specs.get(name))
            if isinstance(value, str) and options is not None and value not in options:
                shown = ", ".join(map(str, options[:8])) + (" ..." if len(options) > 8 else "")
                problems.append(f"node {key} ({ct}): {name} {value!r} is not there (it has: {shown or 'none'})")
    return problems
