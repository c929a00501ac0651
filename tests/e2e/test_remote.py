"""`python -m cli run --server URL ...` against real ComfyUI servers on loopback (the session's
server plus ones started here), with the random-weight model files: many photos over two servers,
a server killed mid-run, a photo without a face, a second run into the same folder, Ctrl-C.
Tiny sizes and 2 steps keep each prompt at seconds on a CPU."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid

import numpy as np
import pytest
from PIL import Image

from cli.comfy_server import ComfyServer
from cli.remote import UPLOAD_SUBFOLDER, Remote
from tests.e2e.conftest import ROOT

FAST = ("--steps", 2, "--width", 64, "--height", 64)


def _cli_cmd(*args):
    return [sys.executable, "-m", "cli", "run", *map(str, args)]


def _cli(*args, timeout=900):
    return subprocess.run(_cli_cmd(*args), cwd=ROOT, capture_output=True, text=True, timeout=timeout)


def make_photos(reference_dir, folder, n, shift=0):
    """n distinct photos with a face: the reference photos (wild_1.jpg, aligned_1.png), mirrored
    and brightened copies, so no two prompts are the same to ComfyUI's cache."""
    folder.mkdir(parents=True, exist_ok=True)
    bases = [np.asarray(Image.open(reference_dir / "photos" / name).convert("RGB"), dtype=np.int16)
             for name in ("wild_1.jpg", "aligned_1.png")]
    out = []
    for i in range(n):
        a = bases[i % 2]
        k = i // 2 + shift
        a = a[:, ::-1] if k % 2 else a
        a = np.clip(a + 3 * k, 0, 255).astype(np.uint8)
        path = folder / f"person_{i + 1}{'.jpg' if i % 2 == 0 else '.png'}"
        Image.fromarray(a).save(path, quality=95)
        out.append(path)
    return out


def _ours(item) -> bool:
    """A /queue item that this CLI queued: its photo was uploaded into our subfolder."""
    prompt = item[2]
    return any(n["class_type"] == "LoadImage" and str(n["inputs"].get("image", "")).startswith(UPLOAD_SUBFOLDER + "/")
               for n in prompt.values())


def _queue(server):
    return server.get_json("/queue", timeout=10)


def _wait(cond, timeout, what, step=0.2):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = cond()
        if value:
            return value
        time.sleep(step)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def _our_history(server) -> list[dict]:
    return [e for e in server.get_json("/history", timeout=30).values() if _ours(e["prompt"])]


def _check_images(files, size=64):
    for f in files:
        a = np.asarray(Image.open(f).convert("RGB"), dtype=np.float64)
        assert a.shape == (size, size, 3) and a.std() > 2.0, f


@pytest.fixture(scope="module", autouse=True)
def vae_files(models_dir):
    write_vae_files(models_dir)


def write_vae_files(models_dir):
    """Workflows 1 and 4 load a separate VAE file: until the e2e model set has one, write it from the
    random checkpoint's own VAE (the same network and key layout as a standalone SD VAE file)."""
    from safetensors import safe_open
    from safetensors.torch import save_file
    from cli import workflows
    from tests.e2e import modelfiles
    names = {n["inputs"]["vae_name"] for f in sorted(workflows.API_DIR.glob("*.json"))
             for n in json.loads(f.read_text()).values() if n["class_type"] == "VAELoader"}
    ckpt = models_dir / modelfiles.CHECKPOINT[0] / modelfiles.CHECKPOINT[1]
    for name in names:
        target = models_dir / "vae" / name
        if target.exists():
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        prefix = "first_stage_model."
        with safe_open(str(ckpt), framework="pt") as f:
            sd = {k[len(prefix):]: f.get_tensor(k) for k in f.keys() if k.startswith(prefix)}
        assert sd, f"no VAE keys in {ckpt}"
        save_file(sd, str(target))


@pytest.fixture(scope="module")
def server_b(comfyui, models_dir, tmp_path_factory, vae_files):
    srv = ComfyServer(comfyui, tmp_path_factory.mktemp("comfyui_b"), models_dir=models_dir, cpu=True,
                      env={"WPLUS_OFFLINE": "1"})
    srv.start()
    try:
        assert not srv.import_failures(), srv.log_tail(60)
        yield srv
    finally:
        srv.stop()


def test_two_servers_six_photos_then_a_rerun_overwrites_nothing(server, server_b, reference_dir, tmp_path):
    photos = make_photos(reference_dir, tmp_path / "photos", 6)
    out = tmp_path / "out"
    before = {s.url: len(_our_history(s)) for s in (server, server_b)}
    proc = _cli("--photo", tmp_path / "photos", "--out", out, "--server", server.url, "--server", server_b.url,
                *FAST, "--seed", 7)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    files = sorted(out.iterdir())
    assert [f.name for f in files] == sorted(p.stem + ".png" for p in photos), proc.stdout
    _check_images(files)
    for f in files:
        assert str(f) in proc.stdout
    assert "6 done, 0 failed of 6 prompt(s)" in proc.stdout
    # both servers took part (their own /history says so)
    ran = {s.url: len(_our_history(s)) - before[s.url] for s in (server, server_b)}
    assert all(n >= 1 for n in ran.values()) and sum(ran.values()) == 6, ran
    first = {f.name: f.read_bytes() for f in files}

    # a second run into the same folder: two of the photos again and one without a face
    no_face = tmp_path / "photos2" / "pose_1.png"
    no_face.parent.mkdir()
    no_face.write_bytes((reference_dir / "photos" / "pose_1.png").read_bytes())
    proc = _cli("--photo", photos[0], "--photo", photos[1], "--photo", no_face, "--out", out,
                "--server", server.url, "--server", server_b.url, *FAST, "--seed", 8)
    assert proc.returncode == 4, proc.stdout + proc.stderr
    assert "2 done, 1 failed of 3 prompt(s)" in proc.stdout
    failed = [line for line in proc.stderr.splitlines() if "pose_1.png" in line]
    assert failed and "WPlusFaceAlign" in failed[-1] and "no face" in failed[-1], proc.stderr
    assert {f.name: f.read_bytes() for f in out.iterdir() if f.name in first} == first  # nothing overwritten
    new = sorted(set(f.name for f in out.iterdir()) - set(first))
    assert new == sorted(f"{p.stem}-2.png" for p in photos[:2]), new
    _check_images([out / n for n in new])


def _foreign_prompt(server) -> str:
    """Someone else's prompt (another client id): decode an empty latent and save it."""
    prompt = {"1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "v1-5-pruned-emaonly-fp16.safetensors"}},
              "2": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
              "3": {"class_type": "VAEDecode", "inputs": {"samples": ["2", 0], "vae": ["1", 2]}},
              "4": {"class_type": "SaveImage", "inputs": {"images": ["3", 0], "filename_prefix": "someone_else"}}}
    return Remote(server.url, uuid.uuid4().hex).submit(prompt, str(uuid.uuid4()))


def test_ctrl_c_removes_only_our_prompts(server, server_b, reference_dir, tmp_path):
    make_photos(reference_dir, tmp_path / "photos", 6, shift=6)
    cli = subprocess.Popen(_cli_cmd("--photo", tmp_path / "photos", "--out", tmp_path / "out",
                                    "--server", server.url, "--server", server_b.url,
                                    "--steps", 40, "--width", 64, "--height", 64, "--seed", 10),
                           cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        _wait(lambda: any(_ours(i) for i in _queue(server)["queue_running"]), 300, "ours running on server A")
        foreign = _foreign_prompt(server)  # queued behind ours on A
        assert foreign in [i[1] for i in _queue(server)["queue_pending"]]
        cli.send_signal(signal.SIGINT)
        stdout, stderr = cli.communicate(timeout=120)
    finally:
        if cli.poll() is None:
            cli.kill()
    assert cli.returncode == 130, stdout + stderr
    assert "cancelled" in stdout, stdout
    for s in (server, server_b):  # nothing of ours left, running or waiting
        q = _queue(s)
        assert not [i for i in q["queue_running"] + q["queue_pending"] if _ours(i)], (s.url, q)
    # the other client's prompt was neither deleted nor interrupted: it runs to success
    entry = _wait(lambda: server.get_json(f"/history/{foreign}").get(foreign), 120, "the foreign prompt")
    assert entry["status"]["status_str"] == "success", entry["status"]
    for s in (server, server_b):
        _wait(lambda: not any(_queue(s).values()), 60, f"{s.url} idle")


class _Recorder:
    """The Runner's progress interface, recording what the websocket brought."""

    def __init__(self):
        self.calls = []

    def __getattr__(self, name):
        def record(*args):
            if name == "progress":
                job, node_class = args
                self.calls.append(("progress", job.progress[0], job.progress[1], node_class))
            else:
                self.calls.append((name,))
        return record


def test_steps_come_from_the_websocket(server, reference_dir, tmp_path):
    from cli import batch, prompts, run
    (photo,) = make_photos(reference_dir, tmp_path / "photos", 1, shift=11)
    opts = {k: None for k in run.OPTION_NAMES}
    opts.update(steps=3, width=64, height=64, seed=12, no_freeu=False)
    template = prompts.headless(prompts.apply_options(prompts.resolve(None)[1], opts))
    job = batch.Job(0, photo.name, {prompts.PHOTO: photo}, template)
    ui = _Recorder()
    batch.Runner([Remote(server.url, str(uuid.uuid4()))], [job], tmp_path / "out", ui=ui).run()
    assert job.state == batch.DONE, job.error
    assert ("running",) in ui.calls and ("finished",) in ui.calls
    steps = [c for c in ui.calls if c[0] == "progress" and c[3] == "KSampler"]
    values = [c[1] for c in steps]
    assert values and values[-1] == 3 and values == sorted(values) and {c[2] for c in steps} == {3}, ui.calls


def test_a_server_killed_mid_run_loses_nothing(server, server_b, reference_dir, tmp_path):
    """Last test of the module: it kills server B (memory allows two servers here, not three)."""
    make_photos(reference_dir, tmp_path / "photos", 6, shift=3)
    out = tmp_path / "out"
    cli = subprocess.Popen(_cli_cmd("--photo", tmp_path / "photos", "--out", out, "--server", server.url,
                                    "--server", server_b.url, *FAST, "--seed", 9, "--server-timeout", 20),
                           cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        _wait(lambda: any(_ours(i) for i in _queue(server_b)["queue_running"]), 600,
              "one of our prompts running on the server to kill")
        os.killpg(server_b.proc.pid, signal.SIGKILL)  # gone mid-prompt, without a goodbye
        stdout, stderr = cli.communicate(timeout=1200)
    finally:
        if cli.poll() is None:
            cli.kill()
    assert cli.returncode == 0, stdout + stderr
    assert "stopped answering" in stderr and server_b.url in stderr, stderr
    files = sorted(out.iterdir())
    assert len(files) == 6 and "6 done, 0 failed" in stdout, (files, stdout, stderr)
    _check_images(files)
