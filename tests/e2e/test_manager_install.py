"""Installing the pack as a user does with ComfyUI-Manager's real command line (cm-cli, the
comfyui_manager package that ComfyUI 0.28 pins in manager_requirements.txt): from a git URL
served on 127.0.0.1 (git's "dumb" HTTP protocol: a bare clone behind a plain HTTP server) into a
COPY of the host, then the copy's server lists every node of the pack in /object_info.

cm-cli exits 0 even when an install fails, so the result is checked, not the exit code: the clone
is at the served commit, cm-cli reported success, torch was not touched, and the nodes load.
Skips on hosts without manager_requirements.txt (0.3.64: the manager was not a pip package yet)
and when comfyui_manager is not installed in this Python (`pip install -r <host>/manager_requirements.txt`).
"""
from __future__ import annotations

import functools
import http.server
import importlib.metadata
import os
import re
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from cli.comfy_server import ComfyServer
from tests.e2e.conftest import ROOT
from tests.pack_source import node_display_names

FOLDER = "comfyui-wplus-adapter"  # the folder cm-cli makes: the URL's last part without .git


def pack_node_keys() -> set[str]:
    return set(node_display_names())


@pytest.fixture(scope="module")
def cm_cli(comfyui) -> list[str]:
    pins = comfyui / "manager_requirements.txt"
    if not pins.is_file():
        pytest.skip(f"{comfyui} has no manager_requirements.txt (ComfyUI-Manager is pip-installed from 0.28 on): "
                    "manager install test skipped")
    wanted = re.search(r"comfyui[_-]manager\s*==\s*([\w.]+)", pins.read_text(), re.I)
    try:
        have = importlib.metadata.version("comfyui_manager")
    except importlib.metadata.PackageNotFoundError:
        pytest.skip(f"comfyui_manager not installed in {sys.executable} (pip install -r {pins}): "
                    "manager install test skipped")
    if wanted:
        assert have == wanted.group(1), f"comfyui_manager {have} installed, the host pins {wanted.group(1)}"
    exe = Path(sys.executable).with_name("cm-cli")
    return [str(exe)] if exe.is_file() else [sys.executable, "-c", "import sys; from cm_cli import main; sys.exit(main())"]


def _git(*args, cwd):
    return subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True, text=True).stdout.strip()


@pytest.fixture(scope="module")
def served_repo(tmp_path_factory):
    """The pack's tracked files as they are in the working tree, committed into a fresh repository
    and published as a bare clone over HTTP on 127.0.0.1. Yields (url, commit)."""
    if shutil.which("git") is None:
        pytest.skip("git not found: manager install test skipped")
    base = tmp_path_factory.mktemp("served")
    src = base / "src"
    src.mkdir()
    files = _git("ls-files", "-z", cwd=ROOT).split("\0")
    for rel in filter(None, files):
        if (ROOT / rel).is_file():
            (src / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / rel, src / rel)
    _git("init", "-q", "-b", "main", cwd=src)
    _git("add", "-A", cwd=src)
    _git("-c", "user.name=test", "-c", "user.email=test@127.0.0.1", "commit", "-q", "-m", "pack snapshot", cwd=src)
    commit = _git("rev-parse", "HEAD", cwd=src)
    www = base / "www"
    www.mkdir()
    _git("clone", "-q", "--bare", str(src), str(www / f"{FOLDER}.git"), cwd=base)
    _git("update-server-info", cwd=www / f"{FOLDER}.git")  # what git's dumb HTTP clients read
    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=str(www)))
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}/{FOLDER}.git", commit
    finally:
        httpd.shutdown()
        httpd.server_close()


def _copy_host(comfyui: Path, target: Path) -> Path:
    """The host's code without its models, outputs, user data or custom nodes (a clean install)."""
    top = {"models", "output", "input", "user", "temp", ".git"}  # only at the root (comfy/ldm/models is code)

    def ignore(d, names):
        d = Path(d)
        return [n for n in names if n == "__pycache__" or (d == comfyui and n in top)
                or (d == comfyui / "custom_nodes" and (d / n).is_dir())]

    shutil.copytree(comfyui, target, symlinks=True, ignore=ignore)
    for d in ("models", "output", "input", "user"):
        (target / d).mkdir(exist_ok=True)
    return target


def _torch_version() -> str:
    return subprocess.run([sys.executable, "-c", "import torch; print(torch.__version__)"],
                          capture_output=True, text=True, check=True).stdout.strip()


def test_cm_cli_installs_the_pack_from_a_git_url(comfyui, cm_cli, served_repo, tmp_path):
    url, commit = served_repo
    host = _copy_host(comfyui, tmp_path / "ComfyUI")
    torch_before = _torch_version()
    env = dict(os.environ, COMFYUI_PATH=str(host), PIP_DISABLE_PIP_VERSION_CHECK="1", PYTHONUNBUFFERED="1")
    proc = subprocess.run([*cm_cli, "install", url], cwd=host, env=env, capture_output=True, text=True, timeout=1500)
    log = proc.stdout + proc.stderr
    tail = "\n".join(log.splitlines()[-40:])

    # the result, not the exit code (0 on failure too)
    installed = host / "custom_nodes" / FOLDER
    assert "An error occurred while installing" not in log and "Install(git-clone) error" not in log, tail
    assert "Installation was successful." in log and "[INSTALLED]" in log, tail
    assert (installed / "__init__.py").is_file(), f"nothing cloned into {installed}:\n{tail}"
    assert _git("rev-parse", "HEAD", cwd=installed) == commit
    assert _git("remote", "get-url", "origin", cwd=installed) == url  # updates come from where it came from
    # the pack's requirements went through pip, one `pip install` each; torch stayed the host's
    executed = [" ".join(block.split()) for block in re.findall(r"EXECUTE =>\s*(\[.*?\])", log, re.S)]
    installs = [c for c in executed if "'pip', 'install'" in c]
    assert any("numpy" in c for c in installs) and any("facexlib" in c for c in installs), executed
    assert not [c for c in installs if re.search(r"'(torch|torchvision|torchaudio)([<>=!~; ']|')", c)], installs
    assert _torch_version() == torch_before

    # a restart of the copy loads the pack: all of its nodes are in /object_info
    with ComfyServer(host, tmp_path / "run", cpu=True, load_pack=False) as server:
        info = server.get_json("/object_info")
        failures = server.import_failures()
        log_tail = server.log_tail(40)
    assert not failures, "\n".join(failures) + "\n" + log_tail
    keys = pack_node_keys()
    assert len(keys) >= 11
    missing = sorted(keys - set(info))
    assert not missing, f"not in /object_info after the install: {missing}\n{log_tail}"
    assert {info[k]["python_module"] for k in keys} == {f"custom_nodes.{FOLDER}"}
