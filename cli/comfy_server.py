"""Drive a real ComfyUI server on loopback: start it with the pack loaded, submit prompts, fetch images.

    with ComfyServer(comfyui_root, workdir, models_dir=..., cpu=True) as server:
        prompt_id = server.queue(api_workflow)        # POST /prompt; PromptRejected on a 400
        entry = server.wait(prompt_id, timeout=600)   # polls GET /history/<id>
        for ref in output_images(entry):              # {"filename", "subfolder", "type"}
            png_bytes = server.view(ref)              # GET /view

The pack is loaded from outside ComfyUI's custom_nodes/ through the extra_model_paths YAML key
`custom_nodes` (honoured by ComfyUI's utils/extra_config.py): the YAML names a folder that holds
one symlink, <workdir>/custom_nodes/comfyui-wplus-adapter -> the pack. When the pack already lives
in <comfyui>/custom_nodes it is not linked again (ComfyUI would import it twice).
Only the standard library: usable before any dependency is installed.
"""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from pathlib import Path

PACK_ROOT = Path(__file__).resolve().parents[1]
PACK_LINK_NAME = "comfyui-wplus-adapter"
HOST = "127.0.0.1"
# models sub-folders mapped in the YAML when a models folder is given (ComfyUI's names on the left)
MODEL_FOLDERS = ("checkpoints", "loras", "controlnet", "vae", "embeddings", "wplus", "e4e", "psfrgan", "facexlib",
                 "wplus_directions")


class ServerError(RuntimeError):
    """The server did not start, died, or did not answer in time (the message has the log tail)."""


def post_prompt(send) -> dict:
    """ComfyUI's answer to POST /prompt (``send()`` makes the request and returns the body), or
    PromptRejected with its error body when it refuses the prompt (HTTP 400 or node_errors)."""
    try:
        data = json.loads(send())
    except urllib.error.HTTPError as e:
        body = e.read()
        try:
            raise PromptRejected(json.loads(body)) from None
        except ValueError:
            raise PromptRejected(body.decode(errors="replace")) from None
    if data.get("node_errors"):
        raise PromptRejected(data)
    return data


class PromptRejected(RuntimeError):
    """POST /prompt answered 400 (validation): .data is ComfyUI's JSON error body."""

    def __init__(self, data):
        self.data = data
        super().__init__(describe_rejection(data))


class ExecutionFailed(RuntimeError):
    """The prompt ran and failed: .entry is the /history entry, .error the execution_error message."""

    def __init__(self, entry, error):
        self.entry, self.error = entry, error or {}
        e = self.error
        super().__init__(f"{e.get('node_type', '?')} (node {e.get('node_id', '?')}): "
                         f"{e.get('exception_type', '')}: {e.get('exception_message', '').strip()}")


def describe_rejection(data) -> str:
    if not isinstance(data, dict):
        return str(data)
    lines = [str((data.get("error") or {}).get("message", "prompt rejected"))]
    for node_id, node in (data.get("node_errors") or {}).items():
        for err in node.get("errors", []):
            lines.append(f"  node {node_id} ({node.get('class_type')}): {err.get('message')}: {err.get('details')}")
    return "\n".join(lines)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def find_comfyui(explicit=None) -> Path | None:
    """$COMFYUI_PATH, the folder two levels above the pack (custom_nodes/<pack>), ~/comfy/ComfyUI."""
    for cand in (explicit, os.environ.get("COMFYUI_PATH"), PACK_ROOT.parent.parent,
                 Path.home() / "comfy" / "ComfyUI"):
        if cand and (Path(cand) / "main.py").is_file() and (Path(cand) / "comfy" / "model_patcher.py").is_file():
            return Path(cand).resolve()
    return None


def pack_is_installed_in(comfyui: Path) -> bool:
    nodes_dir = (comfyui / "custom_nodes").resolve()
    if PACK_ROOT.parent.resolve() == nodes_dir:
        return True
    return any(p.resolve() == PACK_ROOT for p in nodes_dir.iterdir() if p.is_dir()) if nodes_dir.is_dir() else False


def output_images(entry: dict):
    """Image references ({filename, subfolder, type}) of every output node, in node order."""
    for node_id, out in (entry.get("outputs") or {}).items():
        for ref in out.get("images", []) or []:
            yield node_id, ref


class ComfyServer:
    def __init__(self, comfyui, workdir, *, models_dir=None, cpu=True, port=None, load_pack=True,
                 extra_args=(), python=None, env=None):
        self.comfyui = Path(comfyui).resolve()
        self.workdir = Path(workdir).resolve()
        self.models_dir = Path(models_dir).resolve() if models_dir else None
        self.cpu, self.load_pack, self.extra_args = cpu, load_pack, list(extra_args)
        self.python = python or sys.executable
        self.env = dict(env or {})  # added to this process's environment
        self.port = port or free_port()
        self.url = f"http://{HOST}:{self.port}"
        self.input_dir = self.workdir / "input"
        self.output_dir = self.workdir / "output"
        self.log_path = self.workdir / "comfyui.log"
        self.client_id = uuid.uuid4().hex
        self.proc = None

    # ------------------------------------------------------------------ process
    def _yaml(self) -> Path | None:
        lines = []
        if self.load_pack and not pack_is_installed_in(self.comfyui):
            nodes = self.workdir / "custom_nodes"
            nodes.mkdir(parents=True, exist_ok=True)
            link = nodes / PACK_LINK_NAME
            if not link.exists():
                try:
                    link.symlink_to(PACK_ROOT, target_is_directory=True)
                except OSError as e:  # e.g. Windows without the symlink privilege
                    raise ServerError(f"cannot link the pack into {nodes} ({e}); install it in "
                                      f"{self.comfyui / 'custom_nodes'} instead") from None
            lines += ["wplus_pack:", f"    custom_nodes: {json.dumps(str(nodes))}"]
        if self.models_dir:
            lines += ["wplus_models:", f"    base_path: {json.dumps(str(self.models_dir))}"]
            lines += [f"    {name}: {name}" for name in MODEL_FOLDERS]
        if not lines:
            return None
        path = self.workdir / "extra_model_paths.yaml"
        path.write_text("\n".join(lines) + "\n")
        return path

    def command(self) -> list[str]:
        for d in (self.input_dir, self.output_dir, self.workdir / "user"):
            d.mkdir(parents=True, exist_ok=True)
        cmd = [self.python, "main.py", "--listen", HOST, "--port", str(self.port),
               "--output-directory", str(self.output_dir), "--input-directory", str(self.input_dir),
               "--temp-directory", str(self.workdir), "--user-directory", str(self.workdir / "user"),
               "--database-url", "sqlite:///:memory:", "--disable-auto-launch"]
        if self.cpu:
            cmd.append("--cpu")
        yaml = self._yaml()
        if yaml:
            cmd += ["--extra-model-paths-config", str(yaml)]
        return cmd + self.extra_args

    def start(self, timeout: float = 240.0) -> "ComfyServer":
        self.workdir.mkdir(parents=True, exist_ok=True)
        cmd = self.command()
        self._log = open(self.log_path, "wb")
        env = dict(os.environ, PYTHONUNBUFFERED="1", **self.env)
        # its own process group, so that stop() ends main.py and whatever it started, and only that
        group = ({"creationflags": subprocess.CREATE_NEW_PROCESS_GROUP} if os.name == "nt"
                 else {"start_new_session": True})
        self.proc = subprocess.Popen(cmd, cwd=self.comfyui, stdout=self._log, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, env=env, **group)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise ServerError(f"ComfyUI exited with code {self.proc.returncode} while starting:\n{self.log_tail()}")
            try:
                self.get_json("/system_stats", timeout=2)
                return self
            except (OSError, urllib.error.URLError, ValueError):
                time.sleep(0.5)
        self.stop()
        raise ServerError(f"ComfyUI did not answer on {self.url} within {timeout:.0f} s:\n{self.log_tail()}")

    def stop(self, timeout: float = 20.0) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self._signal(kill=False)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self._signal(kill=True)
                self.proc.wait(timeout)
        self._log.close()
        self.proc = None

    def _signal(self, kill: bool) -> None:
        try:
            if os.name == "nt":
                self.proc.kill() if kill else self.proc.terminate()
            else:  # the group started in start(): main.py and its children
                os.killpg(self.proc.pid, signal.SIGKILL if kill else signal.SIGTERM)
        except (ProcessLookupError, PermissionError):
            pass

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def log_tail(self, n: int = 40) -> str:
        return "\n".join(self.log_text().splitlines()[-n:])

    def import_failures(self) -> list[str]:
        """Lines of the import report that name this pack as failed."""
        return [l for l in self.log_text().splitlines()
                if "IMPORT FAILED" in l and (PACK_LINK_NAME in l or str(PACK_ROOT) in l)]

    # ------------------------------------------------------------------ HTTP
    def _request(self, path, data=None, timeout=30.0):
        body = None if data is None else json.dumps(data).encode()
        req = urllib.request.Request(self.url + path, data=body,
                                     headers={"Content-Type": "application/json"} if body else {})
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.read()

    def get_json(self, path, timeout=30.0):
        return json.loads(self._request(path, timeout=timeout))

    def queue(self, prompt: dict) -> str:
        body = {"prompt": prompt, "client_id": self.client_id}
        return post_prompt(lambda: self._request("/prompt", body))["prompt_id"]

    def wait(self, prompt_id: str, timeout: float = 600.0, poll: float = 0.5) -> dict:
        """The finished /history entry; ExecutionFailed when the run failed, ServerError on timeout."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.alive():
                raise ServerError(f"ComfyUI died while running {prompt_id}:\n{self.log_tail()}")
            hist = self.get_json(f"/history/{prompt_id}")
            entry = hist.get(prompt_id)
            if entry and entry.get("status", {}).get("completed") is not None and \
                    entry["status"].get("status_str") in ("success", "error"):
                if entry["status"]["status_str"] == "error":
                    raise ExecutionFailed(entry, execution_error(entry))
                return entry
            time.sleep(poll)
        raise ServerError(f"prompt {prompt_id} did not finish within {timeout:.0f} s:\n{self.log_tail()}")

    def run(self, prompt: dict, timeout: float = 600.0) -> dict:
        return self.wait(self.queue(prompt), timeout)

    def view(self, ref: dict) -> bytes:
        q = urllib.parse.urlencode({k: ref.get(k, "") for k in ("filename", "subfolder", "type")})
        return self._request(f"/view?{q}", timeout=60)


def execution_error(entry: dict) -> dict | None:
    for kind, data in entry.get("status", {}).get("messages", []):
        if kind == "execution_error":
            return data
    return None
