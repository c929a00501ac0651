"""Many prompts over one or more running ComfyUI servers: spread, follow, survive, cancel.

    jobs = [Job(i, photo, images={"photo": photo}, prompt=template) for i, photo in enumerate(photos)]
    runner = Runner([Remote(url, client_id) for url in urls], jobs, out_dir, ui=Progress(quiet))
    runner.run()            # returns when every job is done, failed or cancelled (Ctrl-C)

- Spreading: a job goes to the live server whose queue is shortest (its exec_info.queue_remaining,
  which counts everyone's prompts, or our own prompts there if more), and only while that queue is
  shorter than ``depth`` (2: one running, one waiting, so no server idles between prompts); the
  rest stay here, so a server that goes away takes at most ``depth`` of ours with it, and a queue
  full of other people's prompts gets none of ours while another server has room. When every
  server is busier than that and none holds one of ours, the least busy one gets the next job.
- Following: one websocket per server (/ws?clientId=ours) for progress (step value/max), start,
  errors; a poll thread per server asks GET /prompt every second (queue length, reachability) and
  GET /history/<id> for our prompts there, so a lost websocket only costs the progress bars.
- A server that refuses connections 3 times in a row or has not answered for ``server_timeout``
  seconds is dropped: its unfinished jobs go back to the front of the queue for the others (up to
  ``max_attempts`` tries per job). A failed upload or POST /prompt only pauses new submissions to
  that server until it answers a poll again; the job waits for the next server that has room.
- Ctrl-C (KeyboardInterrupt): our waiting prompts are deleted from each queue (POST /queue
  delete with our ids only) and our running prompt is interrupted only while it is ours
  (Remote.interrupt); then we wait until none of ours is left running or waiting.
"""
from __future__ import annotations

import collections
import queue
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from . import prompts
from .comfy_server import PromptRejected, output_images
from .remote import Remote, Unreachable

PENDING, QUEUED, RUNNING, DONE, FAILED, CANCELLED = "pending", "queued", "running", "done", "failed", "cancelled"


@dataclass
class Job:
    index: int
    name: str                 # what the summary calls it (the photo's file name)
    images: dict              # role -> local file (prompts.PHOTO, PHOTO_B, CONTROL)
    prompt: dict              # API prompt with every option applied; images filled per server
    stem: str = ""            # base of the output file names
    state: str = PENDING
    server: "ServerState | None" = None
    prompt_id: str | None = None
    attempts: int = 0         # runs lost with a server
    submit_failures: int = 0
    error: str | None = None
    no_image: bool = False
    outputs: list = field(default_factory=list)
    started: float | None = None
    queued_at: float | None = None
    finished: float | None = None
    progress: tuple = (0, 0, None)   # (value, max, node id)

    def __post_init__(self):
        if not self.stem:
            self.stem = Path(self.images.get(prompts.PHOTO) or self.name).stem


class ServerState:
    def __init__(self, index: int, remote: Remote, events: "queue.Queue", poll_interval: float):
        self.index, self.remote, self.events = index, remote, events
        self.poll_interval = poll_interval
        self.alive = True
        self.suspect = False           # a submission failed: wait for the next good poll
        self.reported = 0              # queue_remaining as last reported (everyone's prompts)
        self.jobs: dict[str, Job] = {}  # prompt id -> our job there
        self.uploads: dict[Path, str] = {}
        self.last_ok = time.monotonic()
        self.refused = 0
        self.error = ""
        self.orphans: set[str] = set()  # submissions whose answer was lost: delete if they show up
        self.stop = threading.Event()
        self.wake = threading.Event()
        self.lock = threading.Lock()
        self.ws_ok = False
        self.threads = []

    @property
    def label(self) -> str:
        return self.remote.url

    def start(self, websocket: bool = True) -> None:
        targets = [self._poll] + ([self._listen] if websocket else [])
        for target in targets:
            t = threading.Thread(target=target, name=f"{target.__name__}-{self.index}", daemon=True)
            t.start()
            self.threads.append(t)

    def close(self) -> None:
        self.stop.set()
        self.wake.set()
        for t in self.threads:
            t.join(timeout=3)

    def watched(self) -> list[str]:
        with self.lock:
            return list(self.jobs)

    # ---- threads: they only talk to the server and post events; the main thread decides
    def _poll(self) -> None:
        while not self.stop.is_set():
            try:
                remaining = self.remote.queue_remaining(timeout=10)
                self.events.put(("poll", self, remaining))
                for pid in self.watched():
                    entry = self.remote.history(pid)
                    if entry is not None:
                        self.events.put(("history", self, pid, entry))
            except Unreachable as e:
                self.events.put(("poll_failed", self, e))
            except Exception as e:  # a malformed answer: count it as not answering
                self.events.put(("poll_failed", self, Unreachable(self.remote.url, repr(e))))
            self.wake.wait(self.poll_interval)
            self.wake.clear()

    def _listen(self) -> None:
        backoff = 1.0
        while not self.stop.is_set():
            try:
                for msg in self.remote.messages(self.stop):
                    self.ws_ok, backoff = True, 1.0
                    kind = msg.get("type")
                    data = msg.get("data") or {}
                    if kind in ("executing", "execution_success", "execution_error", "execution_interrupted") \
                            and (kind != "executing" or data.get("node") is None):
                        self.wake.set()  # finished: let the poller read /history now
                    self.events.put(("ws", self, kind, data))
            except ImportError:
                self.events.put(("no_websocket", self))
                return
            except Exception:  # dropped or refused: the poller decides whether the server is gone
                self.ws_ok = False
            if self.stop.wait(backoff):
                return
            backoff = min(backoff * 2, 10.0)


class Runner:
    def __init__(self, remotes, jobs, out_dir: Path, *, ui=None, depth: int = 2, server_timeout: float = 60.0,
                 max_attempts: int = 3, prompt_timeout: float | None = None, poll_interval: float = 1.0,
                 websocket: bool = True):
        self.events: queue.Queue = queue.Queue()
        self.servers = [ServerState(i, r, self.events, poll_interval) for i, r in enumerate(remotes)]
        self.jobs = list(jobs)
        self.pending = collections.deque(self.jobs)
        self.out_dir = Path(out_dir)
        self.ui = ui or Progress(quiet=True)
        self.depth, self.server_timeout, self.max_attempts = depth, server_timeout, max_attempts
        self.prompt_timeout = prompt_timeout
        self.websocket = websocket
        self.cancelled = False
        self.claimed: set[Path] = set()

    # ------------------------------------------------------------------ main loop
    def run(self) -> list[Job]:
        self.ui.start(len(self.jobs))
        for s in self.servers:
            s.start(websocket=self.websocket)
        try:
            while self._unfinished():
                self._dispatch()
                self._handle_events(timeout=0.25)
                self._check_timeouts()
        except KeyboardInterrupt:
            self.cancel()
        finally:
            for s in self.servers:
                s.close()
            self.ui.close()
        return self.jobs

    def _unfinished(self) -> bool:
        return any(j.state in (PENDING, QUEUED, RUNNING) for j in self.jobs)

    def _alive(self):
        return [s for s in self.servers if s.alive]

    def _dispatch(self) -> None:
        while self.pending:
            alive = self._alive()
            if not alive:
                for job in list(self.pending):
                    self._fail(job, "no server left that answers: " +
                               "; ".join(f"{s.label}: {s.error}" for s in self.servers))
                self.pending.clear()
                return
            ready = [s for s in alive if not s.suspect]
            k = choose_server([(s.reported, len(s.jobs)) for s in ready], self.depth)
            if k is None:
                return
            self._submit(self.pending.popleft(), ready[k])

    def _submit(self, job: Job, s: ServerState) -> None:
        pid = str(uuid.uuid4())  # canonical form: ComfyUI 0.28 refuses others
        try:
            values = {}
            for role, path in job.images.items():
                if path not in s.uploads:
                    s.uploads[path] = s.remote.upload_image(path)
                values[role] = s.uploads[path]
            prompt = prompts.fill_images(_copy(job.prompt), values)
            # an orphan until registered below: a lost answer or Ctrl-C in between still finds it
            s.orphans.add(pid)
            given = s.remote.submit(prompt, pid)
            if given != pid:  # a server too old to take our id answers with its own
                s.orphans.discard(pid)
                pid = given
                s.orphans.add(pid)
        except PromptRejected as e:
            s.orphans.discard(pid)
            self._fail(job, f"ComfyUI on {s.label} rejected the workflow: {e}")
            return
        except Unreachable as e:
            # no new prompts for this server until it answers a poll again (or is dropped)
            s.suspect = True
            job.submit_failures += 1
            self._note_failure(s, e)
            if job.submit_failures >= 5:
                self._fail(job, f"could not queue it after {job.submit_failures} tries: {e}")
                return
            self.pending.appendleft(job)
            return
        except OSError as e:  # an unreadable photo
            self._fail(job, f"cannot read {e.filename or ''}: {e.strerror or e}")
            return
        job.state, job.server, job.prompt_id, job.queued_at = QUEUED, s, pid, time.monotonic()
        job.progress = (0, 0, None)
        with s.lock:
            s.jobs[pid] = job
        s.orphans.discard(pid)
        s.reported += 1  # until the server's next report
        self.ui.queued(job, s)

    def _handle_events(self, timeout: float) -> None:
        try:
            ev = self.events.get(timeout=timeout)
        except queue.Empty:
            return
        while True:
            self._handle(ev)
            try:
                ev = self.events.get_nowait()
            except queue.Empty:
                return

    def _handle(self, ev) -> None:
        kind, s = ev[0], ev[1]
        if not s.alive:
            return
        if kind == "poll":
            s.reported, s.last_ok, s.refused, s.suspect = ev[2], time.monotonic(), 0, False
        elif kind == "poll_failed":
            self._note_failure(s, ev[2])
        elif kind == "history":
            job = s.jobs.get(ev[2])
            if job is not None:
                self._finish(job, s, ev[3])
        elif kind == "no_websocket":
            self.ui.note("websocket-client is not installed: no step progress (pip install websocket-client)")
        elif kind == "ws":
            self._ws(s, ev[2], ev[3])

    def _ws(self, s: ServerState, kind: str, data: dict) -> None:
        if kind == "status":
            info = (data.get("status") or {}).get("exec_info") or {}
            if "queue_remaining" in info:
                s.reported, s.last_ok = int(info["queue_remaining"]), time.monotonic()
            return
        job = s.jobs.get(data.get("prompt_id"))
        if job is None:
            return
        if kind == "execution_start" and job.state == QUEUED:
            job.state, job.started = RUNNING, time.monotonic()
            self.ui.running(job, s)
        elif kind == "progress":
            if job.state == QUEUED:
                job.state, job.started = RUNNING, time.monotonic()
                self.ui.running(job, s)
            job.progress = (int(data.get("value", 0)), int(data.get("max", 0)), data.get("node"))
            self.ui.progress(job, job.prompt.get(str(data.get("node")), {}).get("class_type", ""))
        elif kind == "executing" and data.get("node") is not None and job.state == QUEUED:
            job.state, job.started = RUNNING, time.monotonic()
            self.ui.running(job, s)

    def _note_failure(self, s: ServerState, err: Unreachable) -> None:
        s.error = str(err)
        s.refused = s.refused + 1 if getattr(err, "refused", False) else s.refused
        if s.refused >= 3 or time.monotonic() - s.last_ok > self.server_timeout:
            self._drop(s)

    def _drop(self, s: ServerState) -> None:
        s.alive = False
        s.stop.set()
        s.wake.set()
        lost = sorted(s.jobs.values(), key=lambda j: j.index, reverse=True)
        with s.lock:
            s.jobs.clear()
        for job in lost:
            self._requeue(job, s)
        others = ", ".join(x.label for x in self._alive()) or "none left"
        self.ui.note(f"{s.label} stopped answering ({s.error}); {len(lost)} unfinished prompt(s) "
                     f"re-queued on the others ({others})")

    def _requeue(self, job: Job, s: ServerState) -> None:
        self.ui.done_bar(job)
        job.attempts += 1
        job.state, job.server, job.prompt_id = PENDING, None, None
        if job.attempts >= self.max_attempts:
            self._fail(job, f"tried {job.attempts} times; the last server, {s.label}, stopped answering")
        else:
            self.pending.appendleft(job)

    def _finish(self, job: Job, s: ServerState, entry: dict) -> None:
        with s.lock:
            s.jobs.pop(job.prompt_id, None)
        status = entry.get("status", {})
        self.ui.done_bar(job)
        if status.get("status_str") != "success":
            job.error = describe_failure(entry)
            interrupted = any(kind == "execution_interrupted" for kind, _ in status.get("messages", []))
            if interrupted and self.cancelled:
                job.state, job.finished = CANCELLED, time.monotonic()
                return
            self._fail(job, job.error)
            return
        try:
            job.outputs = self._download(job, s, entry)
        except Unreachable as e:  # finished, but the images cannot be fetched: run it again
            self._requeue(job, s)
            self._note_failure(s, e)
            return
        job.finished = time.monotonic()
        if not job.outputs:
            job.no_image = True
            self._fail(job, "the workflow finished without saving an image")
            return
        job.state = DONE
        self.ui.finished(job)

    def _fail(self, job: Job, message: str) -> None:
        job.state, job.error, job.finished = FAILED, message, time.monotonic()
        self.ui.finished(job)

    def _check_timeouts(self) -> None:
        if not self.prompt_timeout:
            return
        now = time.monotonic()
        for s in self._alive():
            for pid, job in list(s.jobs.items()):
                if job.state == RUNNING and job.started and now - job.started > self.prompt_timeout:
                    try:
                        s.remote.interrupt(pid)
                        s.remote.delete_queued([pid])
                    except (Unreachable, OSError):
                        pass
                    with s.lock:
                        s.jobs.pop(pid, None)
                    self.ui.done_bar(job)
                    self._fail(job, f"still running on {s.label} after {self.prompt_timeout:.0f} s (--timeout): "
                                    "interrupted")

    # ------------------------------------------------------------------ outputs
    def _download(self, job: Job, s: ServerState, entry: dict) -> list[Path]:
        labels = prompts.output_labels(job.prompt)
        groups = collections.OrderedDict()
        for node_id, ref in output_images(entry):
            if ref.get("type") == "output" and node_id in labels:
                groups.setdefault(node_id, []).append(ref)
        if not groups:
            return []
        data = [(labels[n], i, len(refs), ref, s.remote.view(ref))
                for n, refs in groups.items() for i, ref in enumerate(refs, 1)]
        self.out_dir.mkdir(parents=True, exist_ok=True)
        k = 1
        while True:  # one suffix for the whole job: me.png, me-2.png ... never an existing file
            stem = job.stem if k == 1 else f"{job.stem}-{k}"
            paths = [self.out_dir / output_name(stem, label, i, n, ref) for label, i, n, ref, _ in data]
            if len(set(paths)) == len(paths) and not any(p.exists() or p in self.claimed for p in paths):
                try:
                    written = []
                    for p, (_, _, _, _, blob) in zip(paths, data):
                        with open(p, "xb") as f:  # exclusive: another run writing the same name loses, not us
                            f.write(blob)
                        written.append(p)
                    self.claimed.update(paths)
                    return written
                except FileExistsError:
                    for p in written:
                        p.unlink(missing_ok=True)
            k += 1

    # ------------------------------------------------------------------ Ctrl-C
    def cancel(self, wait: float = 15.0) -> None:
        """Delete our waiting prompts, interrupt our running ones, and wait until none is left."""
        self.cancelled = True
        for job in list(self.pending):
            job.state = CANCELLED
        self.pending.clear()
        self.ui.note("interrupted: removing our prompts from the servers (Ctrl-C again to leave at once)")
        deadline = time.monotonic() + wait
        try:
            while True:
                left = False
                for s in self._alive():
                    ours = set(s.jobs) | s.orphans
                    if not ours:
                        continue
                    try:
                        running, waiting = s.remote.queue_ids(timeout=5)
                        s.remote.delete_queued([p for p in waiting if p in ours])
                        for pid in running:
                            if pid in ours:
                                s.remote.interrupt(pid)
                        running, waiting = s.remote.queue_ids(timeout=5)
                        still = {p for p in running + waiting if p in ours}
                        for pid in ours - still:
                            job = s.jobs.get(pid)
                            if job is None:
                                s.orphans.discard(pid)
                                continue
                            entry = s.remote.history(pid)
                            if entry is None:  # between the queue and the history: look again
                                still.add(pid)
                            else:  # finished (its images are kept) or interrupted (cancelled)
                                self._finish(job, s, entry)
                    except (Unreachable, OSError):
                        continue
                    left = left or bool(still)
                if not left or time.monotonic() > deadline:
                    break
                time.sleep(0.3)
        except KeyboardInterrupt:
            self.ui.note("left at once: some of our prompts may still be queued")
        for job in self.jobs:
            if job.state in (PENDING, QUEUED, RUNNING):
                job.state = CANCELLED


def choose_server(queues, depth: int) -> int | None:
    """Which server takes the next job: ``queues`` holds (queue_remaining as reported, our prompts
    there) per live server. The shortest queue (the larger of the two numbers: a report may lag
    behind our own submissions) wins, ties going to fewer of ours, then to the first; None (wait)
    when even that queue is ``depth`` long or more while some server still holds one of ours."""
    if not queues:
        return None
    loads = [(max(rep, ours), ours, k) for k, (rep, ours) in enumerate(queues)]
    load, _, k = min(loads)
    if load >= depth and any(ours for _, ours in queues):
        return None
    return k


def _copy(prompt: dict) -> dict:
    import copy
    return copy.deepcopy(prompt)


def output_name(stem: str, label: str, i: int, n: int, ref: dict) -> str:
    suffix = Path(ref.get("filename", "x.png")).suffix or ".png"
    name = stem + (f"_{label}" if label else "")
    if n > 1:
        name += f"_{i:0{len(str(n))}d}"
    return name + suffix


def describe_failure(entry: dict) -> str:
    for kind, data in entry.get("status", {}).get("messages", []):
        if kind == "execution_error":
            title = data.get("node_type", "?")
            msg = str(data.get("exception_message", "")).strip()
            return f"{title} (node {data.get('node_id', '?')}): {msg}"
        if kind == "execution_interrupted":
            return f"interrupted on the server (node {data.get('node_id', '?')})"
    return "the prompt failed (no message from ComfyUI)"


# ---------------------------------------------------------------------------- progress and summary
class Progress:
    """tqdm bars on stderr: one overall, one per running prompt (node steps from the websocket).
    Lines instead of bars when stderr is not a terminal; nothing but the summary's failures and
    the written paths with quiet=True."""

    def __init__(self, quiet: bool = False, stream=None, bars: bool | None = None):
        self.quiet = quiet
        self.stream = stream or sys.stderr
        self.bars = (not quiet) and (self.stream.isatty() if bars is None else bars)
        self.overall = None
        self.per_job = {}
        self.free_rows = []
        self.rows = 0
        self.t0 = time.monotonic()

    def start(self, total: int) -> None:
        if self.bars:
            from tqdm import tqdm
            self.overall = tqdm(total=total, desc="photos", unit="photo", position=0, file=self.stream,
                                dynamic_ncols=True)

    def _write(self, text: str, stream=None) -> None:
        stream = stream or self.stream
        if self.bars:
            from tqdm import tqdm
            tqdm.write(text, file=stream)
        else:
            print(text, file=stream, flush=True)

    def note(self, text: str) -> None:
        if not self.quiet:
            self._write(text)

    def queued(self, job: Job, s: ServerState) -> None:
        pass

    def running(self, job: Job, s: ServerState) -> None:
        if self.bars:
            from tqdm import tqdm
            row = self.free_rows.pop(0) if self.free_rows else self._new_row()
            host = s.label.split("://", 1)[-1]
            self.per_job[job.index] = (tqdm(total=1, desc=f"{job.name} @ {host}", position=row, leave=False,
                                            file=self.stream, dynamic_ncols=True, unit="step"), row)
        elif not self.quiet:
            self._write(f"running {job.name} on {s.label}")

    def _new_row(self) -> int:
        self.rows += 1
        return self.rows

    def progress(self, job: Job, node_class: str) -> None:
        if job.index in self.per_job:
            bar, _ = self.per_job[job.index]
            value, total, _ = job.progress
            bar.total = max(total, 1)
            bar.n = value
            bar.set_postfix_str(node_class, refresh=False)
            bar.refresh()

    def done_bar(self, job: Job) -> None:
        if job.index in self.per_job:
            bar, row = self.per_job.pop(job.index)
            bar.close()
            self.free_rows.append(row)
            self.free_rows.sort()

    def finished(self, job: Job) -> None:
        if self.overall is not None:
            self.overall.update(1)
        for p in job.outputs:
            self._write(str(p), sys.stdout)
        if job.state == FAILED and not self.quiet:
            self._write(f"failed {job.name}: {job.error}")

    def close(self) -> None:
        for bar, _ in self.per_job.values():
            bar.close()
        self.per_job.clear()
        if self.overall is not None:
            self.overall.close()
            self.overall = None


def summary(jobs, elapsed: float) -> tuple[str, str]:
    """(the summary's counts line, the failures block) for the end of a run."""
    done = [j for j in jobs if j.state == DONE]
    failed = [j for j in jobs if j.state == FAILED]
    cancelled = [j for j in jobs if j.state == CANCELLED]
    images = sum(len(j.outputs) for j in done)
    parts = [f"{len(done)} done", f"{len(failed)} failed"] + ([f"{len(cancelled)} cancelled"] if cancelled else [])
    line = f"{', '.join(parts)} of {len(jobs)} prompt(s); {images} image(s) in {elapsed:.0f} s"
    block = "\n".join(f"  {j.name} ({j.images.get(prompts.PHOTO, '')}): {j.error}" for j in failed)
    return line, block
