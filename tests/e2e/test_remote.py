"""`python -m cli run --server URL ...` against real ComfyUI servers on loopback (the session's
server plus ones started here), with the random-weight model files: many photos over two servers
(also with both cores busy), a server killed mid-run, a photo without a face, a second run into the
same folder, Ctrl-C. Tiny sizes and 2 steps keep each prompt at seconds on a CPU.

Faults that do not depend on the machine's load come from a loopback proxy in front of server B
(tests/e2e/proxy.py), switched by the test: every answer of B later than --server-timeout (slow,
not dead), B stalled until it has been given up and then recovering, /view failing a few times.
Each of those asserts, from every server's own /history, exactly one successful execution per
photo, every image written, nothing overwritten."""
from __future__ import annotations

import collections
import contextlib
import io
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import uuid

import numpy as np
import pytest
from PIL import Image

from cli.comfy_server import ComfyServer
from cli.remote import UPLOAD_SUBFOLDER, Remote, upload_name
from tests.e2e.conftest import ROOT
from tests.e2e.proxy import FaultProxy

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
    return server.get_json("/queue", timeout=120)  # a loaded machine answers slowly, not wrongly


def _wait(cond, timeout, what, step=0.2):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = cond()
        if value:
            return value
        time.sleep(step)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def _check_images(files, size=64):
    for f in files:
        a = np.asarray(Image.open(f).convert("RGB"), dtype=np.float64)
        assert a.shape == (size, size, 3) and a.std() > 2.0, f


def _uploads(photos) -> dict:
    """Our LoadImage value for each photo (its upload name) -> the photo's file name."""
    return {f"{UPLOAD_SUBFOLDER}/{upload_name(p, p.read_bytes())}": p.name for p in photos}


def _photo_of(prompt: dict, uploads: dict):
    for node in prompt.values():
        if node.get("class_type") == "LoadImage" and str(node["inputs"].get("image", "")) in uploads:
            return uploads[str(node["inputs"]["image"])]
    return None


def _mine(item, uploads) -> bool:
    """A /queue item of this test's run (one of its photos)."""
    return _photo_of(item[2], uploads) is not None


def _outcome(entry) -> str:
    status = entry.get("status", {})
    if status.get("status_str") == "success":
        return "success"
    if any(kind == "execution_interrupted" for kind, _ in status.get("messages", [])):
        return "interrupted"
    return "error"


def executions(photos, servers, snapshots=None) -> dict:
    """photo name -> [(server url, 'success' | 'interrupted' | 'error')] for every execution of it that
    the servers' own /history holds (``snapshots``: url -> /history read earlier, for a server that
    is gone)."""
    uploads = _uploads(photos)
    runs = {p.name: [] for p in photos}
    for srv in servers:
        entries = (snapshots or {}).get(srv.url)
        if entries is None:
            entries = srv.get_json("/history", timeout=60)
        for entry in entries.values():
            photo = _photo_of(entry["prompt"][2], uploads)
            if photo is not None:
                runs[photo].append((srv.url, _outcome(entry)))
    return runs


def _successes(runs: dict) -> dict:
    return {photo: sum(kind == "success" for _, kind in r) for photo, r in runs.items()}


def _report(artifacts, scenario: str, runs: dict, seconds: float) -> None:
    """Executions per photo, printed (pytest -s) and kept in artifacts/remote_executions.jsonl."""
    per_photo = {photo: len(r) for photo, r in runs.items()}
    line = {"scenario": scenario, "executions_per_photo": per_photo, "successes_per_photo": _successes(runs),
            "runs": runs, "seconds": round(seconds, 1)}
    print(json.dumps(line))
    with open(artifacts / "remote_executions.jsonl", "a") as f:
        f.write(json.dumps(line) + "\n")


SENTINEL = b"an earlier run's image: never overwritten"


def _occupy(out, photo):
    """out/<photo>.png already there (an earlier run): the run must write <photo>-2.png instead."""
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{photo.stem}.png").write_bytes(SENTINEL)


def _check_out(out, photos, occupied):
    names = sorted(f.name for f in out.iterdir())
    want = sorted([f"{p.stem}.png" for p in photos if p != occupied] + [f"{occupied.stem}.png", f"{occupied.stem}-2.png"])
    assert names == want, names
    assert (out / f"{occupied.stem}.png").read_bytes() == SENTINEL
    _check_images([out / n for n in names if n != f"{occupied.stem}.png"])


def _none_of_ours_left(photos, *servers):
    uploads = _uploads(photos)
    for s in servers:
        q = _queue(s)
        assert not [i for i in q["queue_running"] + q["queue_pending"] if _mine(i, uploads)], (s.url, q)


@contextlib.contextmanager
def busy_cores(seconds: float = 900.0):
    """One busy loop per core for the duration of the block (each ends by itself after ``seconds``)."""
    code = f"import time\nend = time.monotonic() + {seconds}\nwhile time.monotonic() < end:\n    pass\n"
    procs = [subprocess.Popen([sys.executable, "-c", code]) for _ in range(os.cpu_count() or 2)]
    try:
        yield
    finally:
        for proc in procs:
            proc.kill()
            proc.wait()


def _start_runner(photos, urls, out, *, seed, server_timeout, **kw):
    """cli/batch.py's Runner in a thread, as `cli run` builds it (workflow 1, 64 px, 2 steps), with
    its notes collected; returns (runner, jobs, log, thread)."""
    from cli import batch, prompts, run
    opts = {k: None for k in run.OPTION_NAMES}
    opts.update(steps=2, width=64, height=64, seed=seed, no_freeu=False)
    template = prompts.headless(prompts.apply_options(prompts.resolve(None)[1], opts))
    jobs = [batch.Job(i, p.name, {prompts.PHOTO: p}, template) for i, p in enumerate(photos)]
    log = io.StringIO()
    client = uuid.uuid4().hex
    runner = batch.Runner([Remote(u, client) for u in urls], jobs, out, server_timeout=server_timeout,
                          ui=batch.Progress(stream=log, bars=False), **kw)
    thread = threading.Thread(target=runner.run, name="runner", daemon=True)
    thread.start()
    return runner, jobs, log, thread


def _finish(runner, jobs, log, thread, timeout=900):
    from cli import batch
    thread.join(timeout)
    assert not thread.is_alive(), "the run did not end:\n" + log.getvalue()
    line, failures = batch.summary(jobs, 0)
    print(log.getvalue() + line)
    assert all(j.state == batch.DONE for j in jobs), (line, failures, log.getvalue())
    return log.getvalue() + "\n" + line


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


@pytest.fixture
def proxy_b(server_b):
    """A FaultProxy in front of server B: the runner talks to B only through proxy_b.url."""
    with FaultProxy(server_b.port) as proxy:
        yield proxy


def test_two_servers_six_photos_then_a_rerun_overwrites_nothing(server, server_b, reference_dir, tmp_path,
                                                                 artifacts):
    """Also while every core is busy with something else (a busy loop per core, as on a loaded CI
    machine): each photo executes exactly once."""
    photos = make_photos(reference_dir, tmp_path / "photos", 6)
    out = tmp_path / "out"
    t0 = time.monotonic()
    with busy_cores():
        proc = _cli("--photo", tmp_path / "photos", "--out", out, "--server", server.url, "--server", server_b.url,
                    *FAST, "--seed", 7)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    files = sorted(out.iterdir())
    assert [f.name for f in files] == sorted(p.stem + ".png" for p in photos), proc.stdout
    _check_images(files)
    for f in files:
        assert str(f) in proc.stdout
    assert "6 done, 0 failed of 6 prompt(s)" in proc.stdout
    assert "6 execution(s), each prompt at most once" in proc.stdout, proc.stdout + proc.stderr
    # exactly one execution of each photo, and both servers took part (their own /history says so)
    runs = executions(photos, (server, server_b))
    _report(artifacts, "two servers, both cores busy", runs, time.monotonic() - t0)
    assert {photo: len(r) for photo, r in runs.items()} == {p.name: 1 for p in photos}, runs
    assert _successes(runs) == {p.name: 1 for p in photos}, runs
    assert {url for r in runs.values() for url, _ in r} == {server.url, server_b.url}, runs
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
        stdout, stderr = cli.communicate(timeout=600)
    finally:
        if cli.poll() is None:
            cli.kill()
    assert cli.returncode == 130, stdout + stderr
    assert "cancelled" in stdout, stdout
    for s in (server, server_b):  # nothing of ours left waiting; ours running stops at ComfyUI's next
        q = _queue(s)             # interrupt check (a long node such as e4e finishes first on a slow machine)
        assert not [i for i in q["queue_pending"] if _ours(i)], (s.url, q)
        _wait(lambda: not [i for i in _queue(s)["queue_running"] if _ours(i)], 600, f"ours interrupted on {s.url}")
    # the other client's prompt was neither deleted nor interrupted: it runs to success
    entry = _wait(lambda: server.get_json(f"/history/{foreign}").get(foreign), 900, "the foreign prompt")  # loads the checkpoint
    assert entry["status"]["status_str"] == "success", entry["status"]
    for s in (server, server_b):
        _wait(lambda: not any(_queue(s).values()), 600, f"{s.url} idle")


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
    batch.Runner([Remote(server.url, str(uuid.uuid4()))], [job], tmp_path / "out", ui=ui,
                 server_timeout=600).run()  # not a test of giving up: a loaded machine may be silent long
    assert job.state == batch.DONE, job.error
    assert ("running",) in ui.calls and ("finished",) in ui.calls
    steps = [c for c in ui.calls if c[0] == "progress" and c[3] == "KSampler"]
    values = [c[1] for c in steps]
    assert values and values[-1] == 3 and values == sorted(values) and {c[2] for c in steps} == {3}, ui.calls


def test_a_slow_server_is_kept_and_runs_nothing_twice(server, server_b, proxy_b, reference_dir, tmp_path, artifacts):
    """Every HTTP answer of B comes 6 s late, more than --server-timeout (5 s); its websocket frames
    (pongs, progress) 1 s late. B is slow, not dead: it is kept, takes part, and nothing runs twice."""
    photos = make_photos(reference_dir, tmp_path / "photos", 2, shift=20)  # one per server
    out = tmp_path / "out"
    _occupy(out, photos[0])
    proxy_b.delay(http=6, ws=1)
    t0 = time.monotonic()
    runner, jobs, log, thread = _start_runner(photos, [server.url, proxy_b.url], out, seed=21, server_timeout=5)
    text = _finish(runner, jobs, log, thread)
    runs = executions(photos, (server, server_b))
    _report(artifacts, "slow server (HTTP 6 s late, websocket 1 s, --server-timeout 5)", runs, time.monotonic() - t0)
    assert "stopped answering" not in text, text
    assert _successes(runs) == {p.name: 1 for p in photos}, runs
    assert all(kind == "success" for r in runs.values() for _, kind in r), runs  # nothing even started twice
    assert any(url == server_b.url for r in runs.values() for url, _ in r), ("B took part", runs)
    assert "2 execution(s), each prompt at most once" in text, text
    _check_out(out, photos, photos[0])
    _none_of_ours_left(photos, server, server_b)


def test_a_stalled_server_that_recovers_runs_nothing_twice(server, server_b, proxy_b, reference_dir, tmp_path,
                                                           artifacts):
    """B stalls (nothing gets through either way; it goes on executing) while one of ours runs there
    and one waits: after --server-timeout (4 s) it is given up and both are queued again (on A, and
    on B once it is back). When B answers again, what of ours is still there is removed (deleted
    from the queue, or interrupted), or, if it finished there first, that result is used and the
    copy cancelled."""
    photos = make_photos(reference_dir, tmp_path / "photos", 3, shift=24)
    uploads = _uploads(photos)
    out = tmp_path / "out"
    _occupy(out, photos[0])
    t0 = time.monotonic()
    # B first: it gets photos 1 and 3 (one runs, one waits), A photo 2
    runner, jobs, log, thread = _start_runner(photos, [proxy_b.url, server.url], out, seed=25, server_timeout=4)

    def one_running_one_waiting():
        q = _queue(server_b)
        return any(_mine(i, uploads) for i in q["queue_running"]) and any(_mine(i, uploads) for i in q["queue_pending"])

    _wait(one_running_one_waiting, 600, "one of ours running and one waiting on B", step=0.05)
    proxy_b.stall()
    _wait(lambda: not runner.servers[0].alive, 60, "B given up")
    proxy_b.recover()
    text = _finish(runner, jobs, log, thread)
    runs = executions(photos, (server, server_b))
    _report(artifacts, "stalled server that recovers (--server-timeout 4)", runs, time.monotonic() - t0)
    moved = re.search(re.escape(proxy_b.url) + r" stopped answering \(nothing heard for \d+ s\); (\d+) unfinished", text)
    assert moved and int(moved.group(1)) >= 2, text
    assert "answers again" in text, text
    # each of the two left on B was removed there, or finished there first and was used
    handled = text.count(f"its prompt on {proxy_b.url} removed from its queue") + \
        text.count(f"its prompt on {proxy_b.url} interrupted") + text.count(f"on {proxy_b.url} after all: using")
    assert handled >= 2, text
    assert _successes(runs) == {p.name: 1 for p in photos}, runs
    _check_out(out, photos, photos[0])
    _none_of_ours_left(photos, server, server_b)


def test_flaky_downloads_are_fetched_again_not_run_again(server, server_b, proxy_b, reference_dir, tmp_path,
                                                         artifacts):
    """B's /view fails 3 times (503, reset, 503): the images are downloaded again from B, with
    backoff, and nothing runs a second time."""
    photos = make_photos(reference_dir, tmp_path / "photos", 2, shift=28)  # one per server
    out = tmp_path / "out"
    _occupy(out, photos[0])
    proxy_b.fail_views(3)
    t0 = time.monotonic()
    runner, jobs, log, thread = _start_runner(photos, [server.url, proxy_b.url], out, seed=29, server_timeout=30)
    text = _finish(runner, jobs, log, thread)
    runs = executions(photos, (server, server_b))
    _report(artifacts, "flaky downloads (3 failed /view on B)", runs, time.monotonic() - t0)
    assert proxy_b.views_failed == 3
    assert text.count(f"downloading its images from {proxy_b.url} failed") == 3, text
    assert {photo: len(r) for photo, r in runs.items()} == {p.name: 1 for p in photos}, runs
    assert _successes(runs) == {p.name: 1 for p in photos}, runs
    assert "could not be downloaded" not in text and "stopped answering" not in text, text
    _check_out(out, photos, photos[0])


def _our_pngs(output_dir, photos) -> collections.Counter:
    """photo name -> images our prompts saved in a server's output folder (the prompt is in each PNG)."""
    uploads = _uploads(photos)
    found = collections.Counter()
    for f in output_dir.rglob("*.png"):
        prompt = Image.open(f).text.get("prompt")
        photo = _photo_of(json.loads(prompt), uploads) if prompt else None
        if photo:
            found[photo] += 1
    return found


def test_a_server_killed_mid_run_loses_nothing(server, server_b, reference_dir, tmp_path, artifacts):
    """Last test of the module: it kills server B (memory allows two servers here, not three).
    B is killed while one of ours runs there, once B has finished one of ours and the run has
    downloaded every image B finished (a result B finished but nobody fetched dies with B and is
    rightly run again): the running one is lost and runs again on A, and every photo has exactly
    one successful execution (A's /history, and B's read just before the kill, which B's output
    folder confirms)."""
    photos = make_photos(reference_dir, tmp_path / "photos", 6, shift=3)
    uploads = _uploads(photos)
    out = tmp_path / "out"
    t0 = time.monotonic()
    cli = subprocess.Popen(_cli_cmd("--photo", tmp_path / "photos", "--out", out, "--server", server.url,
                                    "--server", server_b.url, *FAST, "--seed", 9, "--server-timeout", 20),
                           cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def time_to_kill():
        """B's /history when one of ours runs on B and all it finished of ours is in out/."""
        if not any(_mine(i, uploads) for i in _queue(server_b)["queue_running"]):
            return None
        history = server_b.get_json("/history", timeout=30)
        done = {_photo_of(e["prompt"][2], uploads) for e in history.values() if _outcome(e) == "success"} - {None}
        fetched = all((out / (os.path.splitext(photo)[0] + ".png")).exists() for photo in done)
        return history if done and fetched else None

    try:
        snapshot = _wait(time_to_kill, 600, "one of ours running on B, B's finished ones downloaded", step=0.1)
        os.killpg(server_b.proc.pid, signal.SIGKILL)  # gone mid-prompt, without a goodbye
        stdout, stderr = cli.communicate(timeout=1200)
    finally:
        if cli.poll() is None:
            cli.kill()
    print(stdout, stderr)
    assert cli.returncode == 0, stdout + stderr
    assert "stopped answering" in stderr and server_b.url in stderr, stderr
    files = sorted(out.iterdir())
    assert len(files) == 6 and "6 done, 0 failed" in stdout, (files, stdout, stderr)
    _check_images(files)
    runs = executions(photos, (server, server_b), snapshots={server_b.url: snapshot})
    _report(artifacts, "a server killed mid-run", runs, time.monotonic() - t0)
    assert _successes(runs) == {p.name: 1 for p in photos}, (runs, stdout, stderr)
    b_done = collections.Counter(photo for photo, r in runs.items() for url, kind in r
                                 if url == server_b.url and kind == "success")
    assert b_done and _our_pngs(server_b.output_dir, photos) == b_done, "B finished more than its /history said"
    assert "lost with the server" in stdout, stdout  # the summary names the prompt that ran on B when it died
