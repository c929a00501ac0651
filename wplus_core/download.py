"""Fetch a weights file on demand: progress, sha256 check, atomic write, clear offline errors.

Public API
    ensure_file(folder, filename, url, sha256=None, progress=None) -> str (the file's path)
    ensure_known_file(folder, filename, progress=None) -> str   (url/sha256 from model_files.FILES)
    OFFLINE_ENV = "WPLUS_OFFLINE"  (set to 1 to forbid every download)

``progress(done_bytes, total_bytes)`` is called as bytes arrive (``total_bytes`` is 0 when the
server does not announce a length); the node layer hooks ComfyUI's ProgressBar to it. An
exception raised by the callback (e.g. an interrupt) aborts the download and propagates as is.

The file is streamed to ``<final>.part-<random>`` in the same folder and moved into place with
``os.replace`` only once complete and verified (announced length, sha256 when known, else an
intact zip archive for torch files), so the final name never holds a partial file and
two processes downloading at once cannot corrupt each other. Every failure is a WPlusError naming
the file, the folder and the URL, and telling the user how to place the file by hand.
"""
from __future__ import annotations

import hashlib
import http.client
import os
import secrets
import urllib.error
import urllib.request
import zipfile

from . import model_files
from .errors import WPlusError

__all__ = ["OFFLINE_ENV", "ensure_file", "ensure_known_file", "is_offline"]

OFFLINE_ENV = "WPLUS_OFFLINE"
_CHUNK = 1 << 20
_TIMEOUT_S = 30


def is_offline() -> bool:
    return os.environ.get(OFFLINE_ENV, "").strip().lower() not in ("", "0", "false", "no", "off")


def _manual_hint(folder: str, filename: str, url: str, lead: str = "Download") -> str:
    return (f"{lead} it manually from {url} and put it in {folder} "
            f"(the file must be named {filename}).")


def ensure_file(folder, filename: str, url: str, sha256: str | None = None, progress=None) -> str:
    """Path of ``folder/filename``, downloading it from ``url`` first if it is absent."""
    folder = os.path.abspath(os.fspath(folder))
    final = os.path.join(folder, filename)
    if os.path.isfile(final):
        if os.path.getsize(final) > 0:
            return final
        os.remove(final)  # an empty file is a leftover of some failed copy: fetch it again
    if is_offline():
        raise WPlusError(f"{filename} is missing from {folder} and downloads are disabled "
                         f"({OFFLINE_ENV}=1). " + _manual_hint(folder, filename, url))
    try:
        os.makedirs(folder, exist_ok=True)
    except OSError as e:
        raise WPlusError(f"cannot create the folder {folder} for {filename} ({e}). "
                         + _manual_hint(folder, filename, url)) from e
    tmp = f"{final}.part-{secrets.token_hex(4)}"
    try:
        digest = _download(url, tmp, progress, filename, folder)
        if sha256 is not None and digest != sha256.lower():
            raise WPlusError(f"{filename} downloaded from {url} is corrupt: sha256 {digest}, "
                             f"expected {sha256.lower()}; nothing was saved in {folder}. Try again, "
                             "or " + _manual_hint(folder, filename, url, "download"))
        if sha256 is None and _cut_zip(tmp):
            raise WPlusError(f"the download of {filename} from {url} is incomplete (the archive ends "
                             f"early); nothing was saved in {folder}. Try again, or "
                             + _manual_hint(folder, filename, url, "download"))
        os.replace(tmp, final)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return final


def _cut_zip(path: str) -> bool:
    """True for a zip archive (torch.save's format) without its closing central directory: a
    download cut short by a server that announced no length. Files without a checksum (the W+
    release publishes none) get at least this check before they take the final name."""
    with open(path, "rb") as f:
        if f.read(4) != b"PK\x03\x04":
            return False
    return not zipfile.is_zipfile(path)


def ensure_known_file(folder, filename: str, progress=None) -> str:
    """:func:`ensure_file` with the URL and checksum the table of model files gives ``filename``."""
    known = model_files.by_name(filename)
    if known is None:
        raise WPlusError(f"no download location is known for {filename}; put it in "
                         f"{os.path.abspath(os.fspath(folder))} yourself")
    return ensure_file(folder, filename, known.url, sha256=known.sha256, progress=progress)


def _download(url: str, dest: str, progress, filename: str, folder: str) -> str:
    """Stream ``url`` into ``dest``; return the sha256 hex digest of what was written."""
    hasher = hashlib.sha256()
    done = 0
    total = 0
    try:
        request = urllib.request.Request(url, headers={"User-Agent": "wplus-adapter/1"})
        with urllib.request.urlopen(request, timeout=_TIMEOUT_S) as response:
            total = int(response.headers.get("Content-Length") or 0)
            with open(dest, "wb") as out:
                if progress is not None:
                    progress(0, total)
                while True:
                    chunk = response.read(_CHUNK)
                    if not chunk:
                        break
                    out.write(chunk)
                    hasher.update(chunk)
                    done += len(chunk)
                    if progress is not None:
                        progress(done, total)
    except (urllib.error.URLError, OSError, ValueError, http.client.HTTPException) as e:
        # Refused connections, timeouts, HTTP errors, cut connections (IncompleteRead,
        # RemoteDisconnected) and disk errors all land here.
        reason = getattr(e, "reason", None) or e
        if isinstance(e, urllib.error.HTTPError):
            reason = f"HTTP {e.code} {e.reason}"
        raise WPlusError(f"could not download {filename} into {folder} from {url} "
                         f"({type(e).__name__}: {reason}). "
                         + _manual_hint(folder, filename, url)) from e
    if total and done != total:
        raise WPlusError(f"the download of {filename} from {url} stopped after {done} of {total} "
                         f"bytes; nothing was saved in {folder}. Try again, or "
                         + _manual_hint(folder, filename, url, "download"))
    if done == 0:
        raise WPlusError(f"the server sent an empty file for {filename} ({url}); nothing was saved "
                         f"in {folder}. " + _manual_hint(folder, filename, url))
    return hasher.hexdigest()
