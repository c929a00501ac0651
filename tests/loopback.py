"""A bounded HTTP server on 127.0.0.1 for download tests (never any other address)."""
import contextlib
import http.server
import threading


@contextlib.contextmanager
def serve(handler, on_stop=None):
    """Serve ``handler`` on a free loopback port; yields the base URL. ``on_stop`` runs before
    shutdown (e.g. to release handlers that are still waiting)."""
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    httpd.daemon_threads = True
    httpd.timeout = 5
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        if on_stop:
            on_stop()
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)
