"""`python -m cli run --download`: every file the chosen workflow needs and nothing else, from the
one table of model files, against a loopback server serving stand-in files (no network)."""
from __future__ import annotations

import dataclasses
import hashlib
import http.server
import json
from pathlib import Path

import pytest

from cli import run, workflows
from wplus_core import download, model_files
from wplus_core.errors import WPlusError
from loopback import serve

STAND_IN = {f.name: f"stand-in for {f.name}\n".encode() * 64 for f in model_files.FILES.values()}


class Handler(http.server.BaseHTTPRequestHandler):
    requested: list = []

    def log_message(self, *args):
        pass

    def do_GET(self):
        name = self.path.rsplit("/", 1)[-1]
        Handler.requested.append(name)
        body = STAND_IN.get(name)
        if body is None:
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@pytest.fixture
def local_table(monkeypatch):
    """The table with every URL on the loopback server (same file names) and each sha256 that of
    the stand-in, so the checksum path runs; the files' names, folders and licences are unchanged."""
    with serve(Handler) as base:
        for key, f in list(model_files.FILES.items()):
            sha = hashlib.sha256(STAND_IN[f.name]).hexdigest() if f.sha256 else None
            local = dataclasses.replace(f, urls=(f"{base}/{key}/{f.name}",), sha256=sha,
                                        size=len(STAND_IN[f.name]) if sha else None)
            monkeypatch.setitem(model_files.FILES, key, local)
            monkeypatch.setitem(model_files._BY_NAME, f.name, local)
        monkeypatch.setattr(model_files, "package_model_dir", lambda package=None: None)
        monkeypatch.delenv(download.OFFLINE_ENV, raising=False)
        Handler.requested = []
        yield base


@pytest.mark.parametrize("path", sorted(workflows.API_DIR.glob("*.json")), ids=lambda p: p.stem)
def test_download_fetches_exactly_the_missing_files_of_each_workflow(path, local_table, tmp_path, capsys):
    prompt = json.loads(path.read_text())
    comfy, models = tmp_path / "ComfyUI", tmp_path / "models"
    # one file the workflow needs is already there: it must not be fetched again
    present_folder, present = next((f, n) for f, n in run.required_files(prompt) if model_files.by_name(n))
    run.folder_path(models, present_folder).mkdir(parents=True)
    (run.folder_path(models, present_folder) / present).write_bytes(b"mine")
    missing = run.missing_files(prompt, comfy, models)
    assert (present_folder, present) not in missing
    left = run.download(missing, comfy, models, quiet=True)
    known = [(f, n) for f, n in missing if model_files.by_name(n)]
    assert sorted(Handler.requested) == sorted(n for _, n in known)      # exactly those, each once
    assert left == [(f, n) for f, n in missing if not model_files.by_name(n)]  # the user's own (LoRA)
    for folder, name in known:
        assert (run.folder_path(models, folder) / name).read_bytes() == STAND_IN[name]
    assert (run.folder_path(models, present_folder) / present).read_bytes() == b"mine"
    written = sorted(p.relative_to(models) for p in models.rglob("*") if p.is_file())
    assert written == sorted(Path(model_files.FOLDERS.get(f, (f,))[0]) / n for f, n in known + [(present_folder, present)])
    assert run.missing_files(prompt, comfy, models) == left
    out = capsys.readouterr().out
    for _, name in known:  # size and licence said before the downloads
        f = model_files.by_name(name)
        assert f"{name}  {f.approx_size}  licence: {f.licence}" in out


def test_a_file_whose_checksum_differs_is_refused_and_not_kept(local_table, tmp_path, monkeypatch):
    f = model_files.FILES["parsenet"]
    monkeypatch.setitem(model_files._BY_NAME, f.name, dataclasses.replace(f, sha256="0" * 64))
    with pytest.raises(WPlusError, match="corrupt"):
        run.download([("facexlib", f.name)], tmp_path / "ComfyUI", tmp_path / "models", quiet=True)
    assert not any((tmp_path / "models").rglob("*.pth*"))


def test_offline_download_says_which_file_and_where(local_table, tmp_path, monkeypatch):
    monkeypatch.setenv(download.OFFLINE_ENV, "1")
    name = model_files.name_of("dlib_68")
    with pytest.raises(WPlusError) as e:
        run.download([("dlib", name)], tmp_path / "ComfyUI", tmp_path / "models", quiet=True)
    text = str(e.value)
    assert name in text and str(tmp_path / "models" / "dlib") in text and model_files.by_name(name).url in text
    assert Handler.requested == []
