"""cli/batch.py's Runner against in-process fake ComfyUI servers (no ComfyUI, no sockets): a slow
server is kept, a silent one is dropped and its prompts are removed there when it answers again,
a prompt that finished where it was left behind is used, downloads are retried, and every photo
executes exactly once. The fakes keep their own record of what they executed, as a real server's
/history does; the e2e twins with real servers behind a loopback proxy are in
tests/e2e/test_remote.py."""
from __future__ import annotations

import collections
import io
import queue
import threading
import time
import urllib.error

import pytest

from cli import batch, prompts
from cli.remote import Unreachable

STEPS = 4


def template() -> dict:
    return {"1": {"class_type": "LoadImage", "inputs": {"image": "x.png"}},
            "2": {"class_type": "WPlusFaceAlign", "inputs": {"image": ["1", 0]}},
            "3": {"class_type": "VAEDecode", "inputs": {"samples": ["2", 0], "vae": ["2", 1]}},
            "4": {"class_type": "SaveImage", "inputs": {"images": ["3", 0], "filename_prefix": "wplus"}}}


class FakeComfy:
    """One ComfyUI server: a queue worked by a thread (``step`` seconds per sampling step),
    /history, /view, the websocket, and faults switched on by the test: ``stall()`` (every request
    and websocket frame waits until ``recover()``, while prompts go on executing, as behind a
    stalled network), ``http_delay`` (each answer that late), ``kill()`` (connections refused,
    the queue gone), ``fail_views`` (the next n /view requests answer 503)."""

    def __init__(self, name: str, step: float = 0.05):
        self.url = f"http://{name}:8188"
        self.step = step
        self.cv = threading.Condition()
        self.pending: list[tuple[str, dict, str]] = []  # (prompt id, prompt, client id)
        self.running: str | None = None
        self.interrupt_flag = False
        self.history: dict[str, dict] = {}
        self.images: dict[str, bytes] = {}
        self.clients: dict[str, queue.Queue] = collections.defaultdict(queue.Queue)
        self.started: list[str] = []
        self.deleted: list[str] = []
        self.interrupted: list[str] = []
        self.views = 0
        self.fail_views = 0
        self.http_delay = 0.0
        self.ws_delay = 0.0
        self.stalled = threading.Event()
        self.recovered = threading.Event()
        self.recovered.set()
        self.dead = False
        self.hold_start = threading.Event()  # set: the worker starts nothing new
        self.worker = threading.Thread(target=self._work, daemon=True)
        self.worker.start()

    # ---- test controls
    def stall(self):
        self.recovered.clear()
        self.stalled.set()

    def recover(self):
        self.stalled.clear()
        self.recovered.set()

    def kill(self):
        with self.cv:
            self.dead = True
            self.pending.clear()
            self.interrupt_flag = True
            self.cv.notify_all()

    def successes(self) -> collections.Counter:
        """photo -> executions that finished successfully here (from our /history)."""
        return collections.Counter(e["photo"] for e in self.history.values() if e["status"]["status_str"] == "success")

    # ---- the server side
    def _work(self):
        while True:
            with self.cv:
                while (not self.pending or self.hold_start.is_set()) and not self.dead:
                    self.cv.wait(0.05)
                if self.dead:
                    return
                pid, prompt, client = self.pending.pop(0)
                self.running, self.interrupt_flag = pid, False
                self.started.append(pid)
            photo = prompt["1"]["inputs"]["image"]
            send = self.clients[client].put
            send({"type": "execution_start", "data": {"prompt_id": pid}})
            ok = True
            for i in range(1, STEPS + 1):
                time.sleep(self.step)
                if self.interrupt_flag:
                    ok = False
                    break
                send({"type": "progress", "data": {"prompt_id": pid, "value": i, "max": STEPS, "node": "3"}})
            with self.cv:
                if self.dead:
                    return
                self.running = None
                if ok:
                    name = f"wplus_{len(self.images):05d}_.png"
                    self.images[name] = f"{photo}|{pid}".encode()
                    self.history[pid] = {"photo": photo, "status": {"status_str": "success", "messages": []},
                                         "outputs": {"4": {"images": [{"filename": name, "subfolder": "",
                                                                       "type": "output"}]}}}
                    send({"type": "execution_success", "data": {"prompt_id": pid}})
                else:
                    self.interrupted.append(pid)
                    self.history[pid] = {"photo": photo, "status": {"status_str": "error", "messages": [
                        ["execution_interrupted", {"prompt_id": pid, "node_id": "3"}]]}, "outputs": {}}
                    send({"type": "execution_interrupted", "data": {"prompt_id": pid}})

    def answer(self, timeout=None):
        """The network in front of every request: dead, stalled or slow."""
        if self.dead:
            raise Unreachable(self.url, "Connection refused", refused=True)
        if self.stalled.is_set():
            if not self.recovered.wait(timeout or 10):
                raise Unreachable(self.url, "timed out")
        if self.http_delay:
            if self.http_delay > (timeout or 30):
                time.sleep(timeout or 30)
                raise Unreachable(self.url, "timed out")
            time.sleep(self.http_delay)
        if self.dead:
            raise Unreachable(self.url, "Connection refused", refused=True)


class FakeRemote:
    """cli.remote.Remote's interface, talking to a FakeComfy."""

    def __init__(self, server: FakeComfy, client_id: str = "us"):
        self.server, self.client_id, self.url = server, client_id, server.url
        self.last_heard = 0.0

    def _ok(self, timeout=None):
        self.server.answer(timeout)
        self.last_heard = time.monotonic()

    def queue_remaining(self, timeout=None):
        self._ok(timeout)
        with self.server.cv:
            return len(self.server.pending) + (self.server.running is not None)

    def queue_ids(self, timeout=None):
        self._ok(timeout)
        with self.server.cv:
            return ([self.server.running] if self.server.running else []), [p for p, _, _ in self.server.pending]

    def history(self, pid, timeout=None):
        self._ok(timeout)
        return self.server.history.get(pid)

    def upload_image(self, path):
        self._ok()
        return f"wplus-headless/{path}"

    def submit(self, prompt, pid):
        self._ok()
        with self.server.cv:
            self.server.pending.append((pid, prompt, self.client_id))
            self.server.cv.notify_all()
        return pid

    def delete_queued(self, ids, timeout=None):
        self._ok(timeout)
        with self.server.cv:
            for p in ids:
                if any(q[0] == p for q in self.server.pending):
                    self.server.deleted.append(p)
            self.server.pending = [q for q in self.server.pending if q[0] not in ids]

    def interrupt(self, pid, timeout=None):
        self._ok(timeout)
        with self.server.cv:
            if self.server.running != pid:
                return False
            self.server.interrupt_flag = True
            return True

    def view(self, ref, timeout=None):
        self._ok(timeout)
        self.server.views += 1
        if self.server.fail_views > 0:
            self.server.fail_views -= 1
            raise Unreachable(self.url, "HTTP 503 on /view")
        return self.server.images[ref["filename"]]

    def messages(self, stop, recv_timeout=1.0, ping_every=None):
        if self.server.dead:
            raise ConnectionRefusedError("refused")
        inbox = self.server.clients[self.client_id]
        pinged = 0.0
        while not stop.is_set():
            if self.server.dead:
                raise ConnectionResetError("gone")
            if self.server.stalled.is_set():
                time.sleep(0.02)
                continue
            if ping_every and time.monotonic() - pinged >= ping_every:
                pinged = time.monotonic()
                time.sleep(self.server.ws_delay)
                self.last_heard = time.monotonic()  # the pong
            try:
                msg = inbox.get(timeout=0.02)
            except queue.Empty:
                continue
            self.last_heard = time.monotonic()
            yield msg


def make_jobs(n):
    return [batch.Job(i, f"p{i}.jpg", {prompts.PHOTO: f"p{i}.jpg"}, template()) for i in range(n)]


class Notes:
    """Progress stand-in that keeps the notes."""

    def __init__(self):
        self.lines = []

    def note(self, text):
        self.lines.append(text)

    def __getattr__(self, name):
        return lambda *a: None

    def text(self):
        return "\n".join(self.lines)


def run(servers, n, tmp_path, *, server_timeout=10.0, action=None, **kw):
    jobs = make_jobs(n)
    ui = Notes()
    runner = batch.Runner([FakeRemote(s) for s in servers], jobs, tmp_path / "out", ui=ui,
                          server_timeout=server_timeout, poll_interval=0.05, retry_delay=0.05, **kw)
    if action:
        threading.Thread(target=action, args=(runner,), daemon=True).start()
    runner.run()
    return runner, jobs, ui


def wait_for(cond, timeout=20.0, what="a condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(0.01)
    raise AssertionError(f"timed out waiting for {what}")


def assert_once(servers, jobs, tmp_path):
    """Every job done with one image, and exactly one successful execution of each photo over all
    servers (their own records); nothing left in any queue."""
    assert all(j.state == batch.DONE for j in jobs), [(j.name, j.state, j.error) for j in jobs]
    total = collections.Counter()
    for s in servers:
        total += s.successes()
    assert total == collections.Counter({f"wplus-headless/{j.name}": 1 for j in jobs}), total
    files = sorted((tmp_path / "out").iterdir())
    assert [f.name for f in files] == sorted(f"p{j.index}.png" for j in jobs)
    for j, f in zip(sorted(jobs, key=lambda j: f"p{j.index}.png"), files):
        assert f.read_bytes().startswith(f"wplus-headless/{j.name}|".encode())
    for s in servers:
        assert not s.pending and s.running is None or s.dead, (s.url, s.pending, s.running)


def test_all_on_two_healthy_servers(tmp_path):
    a, b = FakeComfy("a"), FakeComfy("b")
    runner, jobs, ui = run([a, b], 6, tmp_path)
    assert_once([a, b], jobs, tmp_path)
    assert a.successes() and b.successes()
    line, block = batch.summary(jobs, 1.0)
    assert "6 done, 0 failed of 6 prompt(s); 6 image(s)" in line and "6 execution(s), each prompt at most once" in line
    assert not block and "stopped answering" not in ui.text()


def test_a_slow_server_is_kept_while_its_websocket_answers(tmp_path):
    """Every HTTP answer of B takes longer than --server-timeout, but its websocket answers pings:
    B is slow, not dead. Without the websocket the same B is given up."""
    a, b = FakeComfy("a"), FakeComfy("b")
    b.http_delay = 1.2  # pings every 0.25 s
    runner, jobs, ui = run([a, b], 2, tmp_path, server_timeout=1.0)
    assert_once([a, b], jobs, tmp_path)
    assert b.successes(), "the slow server took part"
    assert "stopped answering" not in ui.text(), ui.text()

    a2, b2 = FakeComfy("a2"), FakeComfy("b2")
    b2.http_delay = 1.2
    out = tmp_path / "nows"
    out.mkdir()
    runner, jobs, ui = run([a2, b2], 2, out, server_timeout=1.0, websocket=False)
    assert "b2:8188 stopped answering (nothing heard for" in ui.text(), ui.text()


def test_a_stalled_server_is_dropped_and_its_prompts_removed_when_it_answers_again(tmp_path):
    """B stalls (nothing comes through, but it goes on executing) with one of ours running and one
    waiting: both move to A. When B answers again, the waiting one is deleted there and the running
    one is interrupted, unless it finished first: then its result is used and A's copy cancelled."""
    a, b = FakeComfy("a", step=0.1), FakeComfy("b", step=0.1)

    def stall_then_recover(runner):
        wait_for(lambda: b.running and len(b.pending) == 1, what="one running and one waiting on B")
        b.hold_start.set()  # B finishes what runs but starts nothing else: the waiting one must be deleted
        b.stall()
        wait_for(lambda: not runner.servers[1].alive, what="B dropped")
        b.recover()
        b.hold_start.clear()

    runner, jobs, ui = run([a, b], 6, tmp_path, server_timeout=1.5, action=stall_then_recover)
    text = ui.text()
    assert "b:8188 stopped answering (nothing heard for" in text, text
    assert len(b.deleted) == 1 and "removed from its queue" in text, (b.deleted, text)
    assert "answers again" in text
    assert_once([a, b], jobs, tmp_path)
    # the run that was going on B when it stalled either finished there first (used; A's copy
    # cancelled) or was interrupted: never both successes
    line, _ = batch.summary(jobs, 1.0)
    assert "6 done" in line


def test_a_run_left_behind_that_finishes_first_is_used_and_the_copy_cancelled(tmp_path):
    """B stalls while ours runs there; B finishes it during the stall; A has started the copy but
    is slower. When B answers again its result is used and A's copy is interrupted."""
    a, b = FakeComfy("a", step=0.6), FakeComfy("b", step=0.05)

    def scenario(runner):
        wait_for(lambda: b.running, what="ours running on B")
        b.hold_start.set()
        b.stall()
        first = b.running
        wait_for(lambda: first in b.history, what="B finishing during the stall")
        wait_for(lambda: not runner.servers[1].alive, what="B dropped")
        job = next(j for j in runner.jobs if any(r.pid == first for r in j.runs))
        wait_for(lambda: job.run is not None and job.run.server is runner.servers[0] and job.run.state == batch.RUNNING,
                 what="the copy running on A")
        b.recover()
        b.hold_start.clear()

    runner, jobs, ui = run([a, b], 3, tmp_path, server_timeout=1.0, depth=1, action=scenario)
    text = ui.text()
    assert "finished on http://b:8188 after all: using that result; cancelling its copy on http://a:8188" in text, text
    assert a.interrupted, "A's copy was interrupted"
    assert_once([a, b], jobs, tmp_path)
    line, _ = batch.summary(jobs, 1.0)
    assert "executed more than once" in line and "interrupted on http://a:8188" in line, line


def test_flaky_downloads_are_retried_from_the_same_server(tmp_path):
    a = FakeComfy("a")
    a.fail_views = 3
    runner, jobs, ui = run([a], 3, tmp_path)
    assert_once([a], jobs, tmp_path)
    assert a.views == 3 + 3 and ui.text().count("trying again in") == 3, ui.text()
    assert len(a.started) == 3


def test_images_that_cannot_be_downloaded_from_a_server_gone_for_good_run_again(tmp_path):
    a, b = FakeComfy("a"), FakeComfy("b")
    b.fail_views = 10 ** 6

    def kill_b(runner):
        wait_for(lambda: b.views >= 2, what="a failed download from B")
        b.kill()

    runner, jobs, ui = run([a, b], 4, tmp_path, action=kill_b)
    assert all(j.state == batch.DONE for j in jobs)
    assert "of them finished there, their images not downloaded yet" in ui.text(), ui.text()
    line, _ = batch.summary(jobs, 1.0)
    assert "executed more than once" in line and "finished on http://b:8188" in line, line


def test_a_killed_server_loses_nothing(tmp_path):
    a, b = FakeComfy("a", step=0.1), FakeComfy("b", step=0.1)

    def kill_b(runner):
        wait_for(lambda: b.running, what="ours running on B")
        b.kill()

    runner, jobs, ui = run([a, b], 6, tmp_path, server_timeout=30, action=kill_b)
    assert "b:8188 stopped answering" in ui.text()
    assert_once([a, b], jobs, tmp_path)
    line, _ = batch.summary(jobs, 1.0)
    assert "lost with the server on http://b:8188" in line, line


def test_ctrl_c_removes_ours_everywhere(tmp_path):
    a, b = FakeComfy("a", step=0.2), FakeComfy("b", step=0.2)
    jobs = make_jobs(6)
    runner = batch.Runner([FakeRemote(a), FakeRemote(b)], jobs, tmp_path / "out", ui=Notes(), poll_interval=0.05)

    def interrupt():
        wait_for(lambda: a.running and b.running, what="ours running on both")
        import _thread
        _thread.interrupt_main()

    threading.Thread(target=interrupt, daemon=True).start()
    t0 = time.monotonic()
    runner.run()
    assert runner.cancelled and time.monotonic() - t0 < 10
    assert all(j.state in (batch.CANCELLED, batch.DONE) for j in jobs)
    for s in (a, b):
        assert not s.pending and s.running is None


def test_summary_counts_executions():
    a = FakeComfy("a")
    job = make_jobs(1)[0]
    srv = batch.ServerState(0, FakeRemote(a), None, 1.0)
    job.runs = [batch.Run(job, srv, "1", state=batch.INTERRUPTED), batch.Run(job, srv, "2", state=batch.SUCCESS),
                batch.Run(job, srv, "3", state=batch.REMOVED)]
    job.state, job.outputs = batch.DONE, ["x.png"]
    line, _ = batch.summary([job], 3.0)
    assert line.endswith("2 execution(s), 1 prompt(s) executed more than once:\n"
                         "  p0.jpg: 2 executions (interrupted on http://a:8188, finished on http://a:8188)"), line
    # --quiet prints only this part (stderr); a run where every prompt ran once has none
    assert batch.repeated(line) == ("executed more than once:\n"
                                    "  p0.jpg: 2 executions (interrupted on http://a:8188, finished on http://a:8188)")
    job.runs = job.runs[1:]
    assert batch.repeated(batch.summary([job], 3.0)[0]) == ""
