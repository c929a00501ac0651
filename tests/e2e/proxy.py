"""A loopback TCP proxy in front of one HTTP server (a real ComfyUI), with network faults on command.
Standard library only (socket, threading).

    proxy = FaultProxy(server.port).start()     # proxy.url: http://127.0.0.1:<its port>
    proxy.delay(http=6, ws=1)   # every answer (HTTP response bytes, websocket frames) that much later
    proxy.stall()               # nothing goes through, either way, on old or new connections ...
    proxy.recover()             # ... until now: what was held goes on, in order
    proxy.fail_views(3)         # the next 3 GET /view: 503, connection reset, 503 (no upstream)
    proxy.reset(); proxy.close()

Each client connection gets its own upstream connection. Its first request head is read to tell
a websocket upgrade (/ws) from plain HTTP (urllib sends one request per connection); after that
bytes are forwarded as they are, each direction in order. A delay is latency, not bandwidth: every
chunk from the server leaves ``delay`` seconds after it arrived, so a slow server's pongs and
progress still come at their own pace, only late. A stall holds every chunk both ways (the server
goes on executing what it has, as behind a broken link) and releases them on recover(), also a
request whose client has given up meanwhile, as a stalled server would still read it from its
socket.
"""
from __future__ import annotations

import collections
import socket
import struct
import threading
import time

HOST = "127.0.0.1"


class FaultProxy:
    def __init__(self, target_port: int, target_host: str = HOST):
        self.target = (target_host, target_port)
        self.cond = threading.Condition()
        self.http_delay = 0.0
        self.ws_delay = 0.0
        self.stalled = False
        self.view_faults: collections.deque = collections.deque()
        self.views_failed = 0
        self.requests: list[tuple[str, str]] = []  # (method, path) of every request head seen
        self.closed = False
        self.sockets: set = set()
        self.listener = socket.create_server((HOST, 0))
        self.port = self.listener.getsockname()[1]
        self.url = f"http://{HOST}:{self.port}"

    # ------------------------------------------------------------------ commands
    def start(self) -> "FaultProxy":
        threading.Thread(target=self._accept, name="proxy-accept", daemon=True).start()
        return self

    def delay(self, http: float = 0.0, ws: float = 0.0) -> None:
        with self.cond:
            self.http_delay, self.ws_delay = float(http), float(ws)
            self.cond.notify_all()

    def stall(self) -> None:
        with self.cond:
            self.stalled = True

    def recover(self) -> None:
        with self.cond:
            self.stalled = False
            self.cond.notify_all()

    def fail_views(self, n: int, kinds=("503", "reset")) -> None:
        """The next ``n`` GET /view requests fail without reaching the server, cycling through
        ``kinds``: "503" (an HTTP 503 answer) or "reset" (the connection reset)."""
        with self.cond:
            self.view_faults.extend(kinds[i % len(kinds)] for i in range(n))

    def reset(self) -> None:
        with self.cond:
            self.http_delay = self.ws_delay = 0.0
            self.view_faults.clear()
            self.stalled = False
            self.cond.notify_all()

    def close(self) -> None:
        with self.cond:
            self.closed = True
            self.stalled = False
            self.cond.notify_all()
            socks = list(self.sockets)
        for s in [self.listener] + socks:
            try:
                s.close()
            except OSError:
                pass

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.close()

    # ------------------------------------------------------------------ plumbing
    def _accept(self) -> None:
        while not self.closed:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(client,), name="proxy-conn", daemon=True).start()

    def _track(self, s: socket.socket) -> socket.socket:
        with self.cond:
            self.sockets.add(s)
        return s

    def _serve(self, client: socket.socket) -> None:
        self._track(client)
        head = b""
        try:
            while b"\r\n\r\n" not in head and len(head) < 65536:
                chunk = client.recv(65536)
                if not chunk:
                    break
                head += chunk
        except OSError:
            self._close(client)
            return
        if not head:
            self._close(client)
            return
        first = head.split(b"\r\n", 1)[0].decode("latin-1").split(" ")
        method, path = (first + ["", ""])[:2]
        is_ws = b"upgrade: websocket" in head.split(b"\r\n\r\n", 1)[0].lower()
        with self.cond:
            self.requests.append((method, path))
            fault = self.view_faults.popleft() if path.startswith("/view") and self.view_faults else None
            if fault:
                self.views_failed += 1
        if fault:
            self._wait_not_stalled()
            self._fail(client, fault)
            return
        try:
            upstream = self._track(socket.create_connection(self.target, timeout=10))
            upstream.settimeout(None)
        except OSError:
            self._fail(client, "reset")
            return
        done = threading.Event()
        up = _Pipe(self, client, upstream, lambda: 0.0, head, done)
        down = _Pipe(self, upstream, client, (lambda: self.ws_delay) if is_ws else (lambda: self.http_delay), b"", done)
        up.start()
        down.start()

    def _wait_not_stalled(self) -> None:
        with self.cond:
            while self.stalled and not self.closed:
                self.cond.wait(0.5)

    def _fail(self, client: socket.socket, kind: str) -> None:
        try:
            if kind == "503":
                client.sendall(b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain\r\n"
                               b"Content-Length: 16\r\nConnection: close\r\n\r\nproxy: /view 503")
                client.shutdown(socket.SHUT_WR)
            else:  # reset: RST instead of FIN
                client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        except OSError:
            pass
        self._close(client)

    def _close(self, s: socket.socket) -> None:
        with self.cond:
            self.sockets.discard(s)
        try:
            s.close()
        except OSError:
            pass


class _Pipe:
    """One direction of one connection: a reader thread stamps chunks as they arrive, a writer
    thread sends each once it is ``delay()`` seconds old and the proxy is not stalled."""

    def __init__(self, proxy: FaultProxy, src, dst, delay, first: bytes, done: threading.Event):
        self.proxy, self.src, self.dst, self.delay, self.done = proxy, src, dst, delay, done
        self.chunks: collections.deque = collections.deque()
        if first:
            self.chunks.append((time.monotonic(), first))

    def start(self) -> None:
        threading.Thread(target=self._read, name="proxy-read", daemon=True).start()
        threading.Thread(target=self._write, name="proxy-write", daemon=True).start()

    def _read(self) -> None:
        cond = self.proxy.cond
        while True:
            try:
                data = self.src.recv(65536)
            except OSError:
                data = b""
            with cond:
                self.chunks.append((time.monotonic(), data))
                cond.notify_all()
            if not data:
                return

    def _write(self) -> None:
        cond = self.proxy.cond
        while True:
            with cond:
                while True:
                    if self.proxy.closed:
                        return
                    if self.chunks and not self.proxy.stalled:
                        left = self.chunks[0][0] + self.delay() - time.monotonic()
                        if left <= 0:
                            _, data = self.chunks.popleft()
                            break
                        cond.wait(left)
                    else:
                        cond.wait(0.5)
            try:
                if data:
                    self.dst.sendall(data)
                    continue
                self.dst.shutdown(socket.SHUT_WR)  # the source is done: pass the end on
            except OSError:
                pass
            if self.done.is_set():  # both directions ended: close the connection
                self.proxy._close(self.src)
                self.proxy._close(self.dst)
            self.done.set()
            return
