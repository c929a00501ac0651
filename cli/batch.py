"""Many prompts over one or more running ComfyUI servers: spread, follow, survive, cancel.

    jobs = [Job(i, photo, images={"photo": photo}, prompt=template) for i, photo in enumerate(photos)]
    runner = Runner([Remote(url, client_id) for url in urls], jobs, out_dir, ui=Progress(quiet))
    runner.run()            # returns when every job is done, failed or cancelled (Ctrl-C)

Every photo is one job; each time a job is queued on a server that is one ``Run`` (its own prompt
id). The aim is that every job executes exactly once, also when a server is only slow.

- Spreading: a job goes to the live server whose queue is shortest (its exec_info.queue_remaining,
  which counts everyone's prompts, or our own prompts there if more), and only while that queue is
  shorter than ``depth`` (2: one running, one waiting, so no server idles between prompts); the
  rest stay here, so a server that goes away takes at most ``depth`` of ours with it, and a queue
  full of other people's prompts gets none of ours while another server has room. When every
  server is busier than that and none holds one of ours, the least busy one gets the next job.
  Uploads and POST /prompt run in a thread per submission, downloads in a thread per result: a
  slow or stalled server never holds up the others.
- Following: one websocket per server (/ws?clientId=ours) for progress (step value/max), start,
  errors, pinged every few seconds; a poll thread per server asks GET /prompt every second (queue
  length), GET /queue for where our prompts are, and GET /history/<id> for those that left the
  queue, so a lost websocket only costs the progress bars.
- Alive: a server is given up ("dropped") only when it refuses connections 3 times in a row, or
  when nothing at all came from it for ``server_timeout`` seconds: no HTTP answer and no websocket
  frame (progress, status, or the pong to our ping). A slow server keeps answering pings, so it is
  kept. A dropped server's unfinished jobs go back to the front of the queue for the others (up
  to ``max_attempts`` tries per job).
- Moving cancels: a run that a job left behind (its server was dropped, its submission's answer
  was lost, it ran past --timeout, or another run of the job won) is "abandoned": that server's
  poll thread deletes it from the queue (POST /queue delete, our prompt ids only) or interrupts it
  if it is the one running (POST /interrupt with its id), as soon as the server answers again. If
  an abandoned run finishes successfully before the job's new run has, its result is used and
  the new run is abandoned instead. A dropped server that answers again rejoins the rotation; one
  that refused connections is gone for good (its queue went with it).
- Downloads: a finished prompt's images are read from the same server's /view; a failure is
  retried with backoff (``download_tries`` tries); the job runs again elsewhere only when that
  server is gone for good or the tries are used up.
- At the end we wait (up to ``server_timeout``) until every abandoned run is removed, and say so
  when one could not be. ``summary`` counts executions per job (runs that started on a server) and
  names the jobs that executed more than once.
- Ctrl-C (KeyboardInterrupt): every run of ours is abandoned, so our waiting prompts are deleted
  from each queue (POST /queue delete with our ids only) and our running prompt is interrupted
  only while it is ours (Remote.interrupt); then we wait until none of ours is left running or
  waiting (a prompt that finishes meanwhile keeps its images).
"""
from __future__ import annotations

import collections
import queue
import sys
import threading
import time
import urllib.error
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from . import prompts
from .comfy_server import PromptRejected, output_images
from .remote import Remote, Unreachable

# job states
PENDING, QUEUED, RUNNING, FETCHING, DONE, FAILED, CANCELLED = \
    "pending", "queued", "running", "fetching", "done", "failed", "cancelled"
# run states: SUBMITTING (POST /prompt on its way), UNCONFIRMED (its answer was lost: maybe queued),
# QUEUED, RUNNING, FETCHING (finished, images being downloaded), then settled:
SUBMITTING, UNCONFIRMED = "submitting", "unconfirmed"
SUCCESS, ERROR, INTERRUPTED, REMOVED, LOST = "success", "error", "interrupted", "removed", "lost"
SETTLED = (SUCCESS, ERROR, INTERRUPTED, REMOVED, LOST)


@dataclass(eq=False)
class Job:
    index: int
    name: str                 # what the summary calls it (the photo's file name)
    images: dict              # role -> local file (prompts.PHOTO, PHOTO_B, CONTROL)
    prompt: dict              # API prompt with every option applied; images filled per server
    stem: str = ""            # base of the output file names
    state: str = PENDING
    server: "ServerState | None" = None   # where its current run is
    prompt_id: str | None = None          # its current run's prompt id
    run: "Run | None" = None              # its current run
    runs: list = field(default_factory=list)  # every run, current and abandoned
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

    def executions(self) -> list["Run"]:
        """The runs that started executing on a server (finished, failed, interrupted or lost)."""
        return [r for r in self.runs if r.executed]

    @property
    def finished_state(self) -> bool:
        return self.state in (DONE, FAILED, CANCELLED)


@dataclass(eq=False)
class Run:
    job: Job
    server: "ServerState"
    pid: str
    state: str = SUBMITTING
    active: bool = True       # the job's current run; False: abandoned, to be removed from its server
    why: str = ""             # why it was abandoned
    started: bool = False     # seen executing (websocket or GET /queue)
    absent: int = 0           # sweeps in a row that found it neither queued nor in /history
    removal_sent: bool = False

    @property
    def settled(self) -> bool:
        return self.state in SETTLED

    @property
    def executed(self) -> bool:
        return self.started or self.state in (FETCHING, SUCCESS, ERROR, INTERRUPTED)


class ServerState:
    def __init__(self, index: int, remote: Remote, events: "queue.Queue", poll_interval: float,
                 ping_every: float | None = 5.0, http_timeout: float = 10.0):
        self.index, self.remote, self.events = index, remote, events
        self.poll_interval, self.ping_every, self.http_timeout = poll_interval, ping_every, http_timeout
        self.alive = True              # in the rotation
        self.dead = False              # refused connections: gone for good
        self.suspect = False           # a submission failed: wait for the next good poll
        self.reported = 0              # queue_remaining as last reported (everyone's prompts)
        self.runs: dict[str, Run] = {}  # prompt id -> our unsettled run there (current or abandoned)
        self.uploads: dict[Path, str] = {}
        self.since = time.monotonic()  # started, or back in the rotation
        self.refused = 0
        self.error = ""
        self.stop = threading.Event()
        self.wake = threading.Event()
        self.lock = threading.Lock()
        self.ws_ok = False
        self.threads = []

    @property
    def label(self) -> str:
        return self.remote.url

    @property
    def jobs(self) -> dict[str, Job]:
        """Our jobs whose current run occupies this server's queue (submitting, queued, running)."""
        with self.lock:
            return {pid: r.job for pid, r in self.runs.items()
                    if r.active and r.state in (SUBMITTING, UNCONFIRMED, QUEUED, RUNNING)}

    def heard(self) -> float:
        """When the server last answered anything (HTTP or websocket), or when we started to wait."""
        return max(getattr(self.remote, "last_heard", 0.0) or 0.0, self.since)

    def add(self, run: Run) -> None:
        with self.lock:
            self.runs[run.pid] = run

    def discard(self, run: Run) -> None:
        with self.lock:
            if self.runs.get(run.pid) is run:
                del self.runs[run.pid]

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

    def watched(self) -> list[tuple[str, bool, str]]:
        """(prompt id, current?, state) of the runs the poll thread looks after."""
        with self.lock:
            return [(pid, r.active, r.state) for pid, r in self.runs.items()
                    if r.state in (QUEUED, RUNNING, UNCONFIRMED)]

    # ---- threads: they only talk to the server and post events; the main thread decides
    def _poll(self) -> None:
        while not self.stop.is_set():
            try:
                remaining = self.remote.queue_remaining(timeout=self.http_timeout)
                self.events.put(("poll", self, remaining))
                self._sweep()
            except Unreachable as e:
                self.events.put(("poll_failed", self, e))
            except Exception as e:  # a malformed answer: count it as not answering
                self.events.put(("poll_failed", self, Unreachable(self.remote.url, repr(e))))
            self.wake.wait(self.poll_interval)
            self.wake.clear()

    def _sweep(self) -> None:
        """Where are our runs? Remove the abandoned ones; read /history for those that left the queue."""
        runs = self.watched()
        if not runs:
            return
        running, pending = self.remote.queue_ids(timeout=self.http_timeout)
        abandoned = {pid for pid, current, _ in runs if not current}
        deleted = [p for p in pending if p in abandoned]
        if deleted:
            self.remote.delete_queued(deleted, timeout=self.http_timeout)
        interrupted = [p for p in running if p in abandoned and self.remote.interrupt(p, timeout=self.http_timeout)]
        self.events.put(("queue", self, running, pending, deleted, interrupted))
        present = set(running) | set(pending)
        for pid, _, _ in runs:
            if pid in present:
                continue
            entry = self.remote.history(pid, timeout=self.http_timeout)
            self.events.put(("history", self, pid, entry) if entry is not None else ("absent", self, pid))

    def _listen(self) -> None:
        backoff = 1.0
        while not self.stop.is_set():
            try:
                for msg in self.remote.messages(self.stop, ping_every=self.ping_every):
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
                 websocket: bool = True, download_tries: int = 8, retry_delay: float = 1.0,
                 http_timeout: float | None = None):
        self.events: queue.Queue = queue.Queue()
        ping_every = min(5.0, max(0.25, server_timeout / 4))
        # a poll may take as long as a server may stay silent: a slow server's answers still count
        http_timeout = http_timeout or max(10.0, server_timeout)
        self.servers = [ServerState(i, r, self.events, poll_interval, ping_every, http_timeout)
                        for i, r in enumerate(remotes)]
        self.jobs = list(jobs)
        self.pending = collections.deque(self.jobs)
        self.out_dir = Path(out_dir)
        self.ui = ui or Progress(quiet=True)
        self.depth, self.server_timeout, self.max_attempts = depth, server_timeout, max_attempts
        self.prompt_timeout = prompt_timeout
        self.websocket = websocket
        self.download_tries, self.retry_delay = download_tries, retry_delay
        self.cancelled = False
        self.stopping = threading.Event()  # the run is over: download threads give up
        self.claimed: set[Path] = set()

    # ------------------------------------------------------------------ main loop
    def run(self) -> list[Job]:
        self.ui.start(len(self.jobs))
        now = time.monotonic()
        for s in self.servers:
            s.since = now
            s.start(websocket=self.websocket)
        try:
            try:
                while self._unfinished():
                    self._step()
                self._settle_abandoned()
            except KeyboardInterrupt:
                self.cancel()
        finally:
            self.stopping.set()
            for s in self.servers:
                s.close()
            self.ui.close()
        return self.jobs

    def _step(self, dispatch: bool = True) -> None:
        if dispatch and not self.cancelled:
            self._dispatch()
        self._handle_events(timeout=0.25)
        self._check_servers()
        self._check_timeouts()

    def _unfinished(self) -> bool:
        return any(j.state in (PENDING, QUEUED, RUNNING, FETCHING) for j in self.jobs)

    def _alive(self):
        return [s for s in self.servers if s.alive]

    def _dispatch(self) -> None:
        while self.pending:
            alive = self._alive()
            if not alive:
                for job in list(self.pending):
                    self._fail(job, "no server left that answers: " +
                               "; ".join(f"{s.label}: {s.error or 'no answer'}" for s in self.servers))
                self.pending.clear()
                return
            ready = [s for s in alive if not s.suspect]
            k = choose_server([(s.reported, len(s.jobs)) for s in ready], self.depth)
            if k is None:
                return
            self._submit(self.pending.popleft(), ready[k])

    # ------------------------------------------------------------------ submitting
    def _submit(self, job: Job, s: ServerState) -> None:
        """Start a run of ``job`` on ``s``: upload and POST /prompt in a thread (a slow server holds up
        nobody); the run is registered first, so a drop or Ctrl-C meanwhile still finds it."""
        run = Run(job, s, str(uuid.uuid4()))  # canonical form: ComfyUI 0.28 refuses others
        job.runs.append(run)
        job.run, job.server, job.prompt_id = run, s, run.pid
        job.state, job.queued_at, job.progress = QUEUED, time.monotonic(), (0, 0, None)
        s.add(run)
        threading.Thread(target=self._submit_thread, args=(run,), name=f"submit-{job.index}", daemon=True).start()

    def _submit_thread(self, run: Run) -> None:
        s, job = run.server, run.job
        try:
            values = {}
            for role, path in job.images.items():
                name = s.uploads.get(path)
                if name is None:
                    name = s.uploads[path] = s.remote.upload_image(path)
                values[role] = name
            prompt = prompts.fill_images(_copy(job.prompt), values)
            given = s.remote.submit(prompt, run.pid)
            self.events.put(("submitted", s, run, given))
        except PromptRejected as e:
            self.events.put(("rejected", s, run, e))
        except (Unreachable, urllib.error.HTTPError) as e:
            self.events.put(("submit_failed", s, run, e))
        except OSError as e:  # an unreadable photo
            self.events.put(("unreadable", s, run, e))
        except Exception as e:  # a malformed answer: as if it were lost
            self.events.put(("submit_failed", s, run, Unreachable(s.label, repr(e))))

    def _submitted(self, s: ServerState, run: Run, given: str) -> None:
        if given and given != run.pid:  # a server too old to take our id answers with its own
            with s.lock:
                s.runs.pop(run.pid, None)
                run.pid = given
                if not run.settled:
                    s.runs[given] = run
            if run.job.run is run:
                run.job.prompt_id = given
        if run.settled:
            return
        run.state = QUEUED
        if run.active:
            s.reported += 1  # until the server's next report
            self.ui.queued(run.job, s)
        else:
            s.wake.set()  # abandoned while it was on its way: remove it now

    def _submit_failed(self, s: ServerState, run: Run, err) -> None:
        """No answer to the upload or POST /prompt: the prompt may have been queued all the same, so
        the run is abandoned (removed if it shows up) and the job waits for the next server."""
        s.error = str(err)
        refused = getattr(err, "refused", False)
        if refused:
            s.refused += 1
        job = run.job
        current = run.active
        if run.state == SUBMITTING:
            if refused or isinstance(err, urllib.error.HTTPError):
                self._settle(run, REMOVED)  # it never got there
            else:
                run.state, run.active, run.why = UNCONFIRMED, False, "its submission got no answer"
        if current and s.alive:
            s.suspect = True  # no new prompts for this server until it answers a poll again (or is dropped)
            job.submit_failures += 1
            self._detach(job)
            if job.submit_failures >= 5:
                self._fail(job, f"could not queue it after {job.submit_failures} tries: {err}")
            else:
                self.pending.appendleft(job)
        if s.refused >= 3 and not s.dead:
            self._drop(s, dead=True)

    def _detach(self, job: Job) -> None:
        self.ui.done_bar(job)
        job.run, job.server, job.prompt_id = None, None, None
        job.state = PENDING

    # ------------------------------------------------------------------ events
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
        if kind == "submitted":
            self._submitted(s, ev[2], ev[3])
        elif kind == "submit_failed":
            self._submit_failed(s, ev[2], ev[3])
        elif kind == "rejected":
            run = ev[2]
            self._settle(run, REMOVED)
            if run.active and not run.job.finished_state:
                self._fail(run.job, f"ComfyUI on {s.label} rejected the workflow: {ev[3]}")
        elif kind == "unreadable":
            run, e = ev[2], ev[3]
            self._settle(run, REMOVED)
            if run.active and not run.job.finished_state:
                self._fail(run.job, f"cannot read {e.filename or ''}: {e.strerror or e}")
        elif kind == "fetched":
            self._fetched(s, ev[2], ev[3])
        elif kind == "fetch_retry":
            run, err, delay = ev[2], ev[3], ev[4]
            self.ui.note(f"{run.job.name}: downloading its images from {s.label} failed ({err}); "
                         f"trying again in {delay:g} s")
        elif kind == "fetch_failed":
            self._fetch_failed(s, ev[2], ev[3])
        elif kind == "poll":
            self._answered(s)
            s.reported, s.refused, s.suspect = ev[2], 0, False
        elif kind == "poll_failed":
            s.error = str(ev[2])
            s.refused = s.refused + 1 if getattr(ev[2], "refused", False) else 0
            if s.refused >= 3 and not s.dead:
                self._drop(s, dead=True)
        elif kind == "queue":
            self._queue_seen(s, *ev[2:])
        elif kind == "history":
            run = s.runs.get(ev[2])
            if run is not None:
                self._finished(run, ev[3])
        elif kind == "absent":
            run = s.runs.get(ev[2])
            if run is not None:
                self._absent(run)
        elif kind == "no_websocket":
            self.ui.note("websocket-client is not installed: no step progress (pip install websocket-client)")
        elif kind == "ws":
            self._ws(s, ev[2], ev[3])

    def _answered(self, s: ServerState) -> None:
        """A poll succeeded. A dropped (not refused) server rejoins the rotation; its abandoned runs
        are being removed by the same poll."""
        if s.alive or s.dead or self.cancelled:
            return
        s.alive, s.since = True, time.monotonic()
        s.uploads.clear()
        self.ui.note(f"{s.label} answers again: back in the rotation")

    def _ws(self, s: ServerState, kind: str, data: dict) -> None:
        if kind == "status":
            info = (data.get("status") or {}).get("exec_info") or {}
            if "queue_remaining" in info:
                s.reported = int(info["queue_remaining"])
            return
        run = s.runs.get(data.get("prompt_id"))
        if run is None:
            return
        starting = kind in ("execution_start", "progress") or (kind == "executing" and data.get("node") is not None)
        if starting:
            self._started(run)
        if kind == "progress" and run.active and run.job.run is run:
            job = run.job
            job.progress = (int(data.get("value", 0)), int(data.get("max", 0)), data.get("node"))
            self.ui.progress(job, job.prompt.get(str(data.get("node")), {}).get("class_type", ""))

    def _started(self, run: Run) -> None:
        run.started = True
        if run.state == QUEUED:
            run.state = RUNNING
        job = run.job
        if run.active and job.run is run and job.state == QUEUED:
            job.state, job.started = RUNNING, time.monotonic()
            self.ui.running(job, run.server)

    def _queue_seen(self, s: ServerState, running, pending, deleted, interrupted) -> None:
        for pid in list(running) + list(pending):
            run = s.runs.get(pid)
            if run is None:
                continue
            run.absent = 0
            if run.state == UNCONFIRMED:
                run.state = QUEUED  # it did get there
            if pid in running:
                self._started(run)
        for pid in list(deleted) + list(interrupted):
            run = s.runs.get(pid)
            if run is not None and not run.removal_sent:
                run.removal_sent = True
                how = "removed from its queue" if pid in deleted else "interrupted"
                self.ui.note(f"{run.job.name}: its prompt on {s.label} {how} ({run.why})")

    def _absent(self, run: Run) -> None:
        """Neither queued nor in /history: deleted (by us or someone), never arrived, or the server
        restarted. Settled after a few sweeps in a row (a prompt between two lists is not lost)."""
        run.absent += 1
        if run.absent < (3 if run.state == UNCONFIRMED else 2):
            return
        job, s = run.job, run.server
        self._settle(run, LOST if run.started else REMOVED)
        if run.active and job.run is run and not job.finished_state and not self.cancelled:
            self.ui.note(f"{job.name}: its prompt vanished from {s.label}'s queue (deleted there, or the server "
                         "restarted): queuing it again")
            self._requeue(job, f"its prompt vanished from {s.label}'s queue")

    # ------------------------------------------------------------------ servers
    def _check_servers(self) -> None:
        """Drop a server from which nothing at all (HTTP or websocket) came for server_timeout."""
        now = time.monotonic()
        for s in self._alive():
            silent = now - s.heard()
            if silent > self.server_timeout:
                s.error = s.error or "no answer"
                self._drop(s, why=f"nothing heard for {silent:.0f} s")

    def _drop(self, s: ServerState, dead: bool = False, why: str = "") -> None:
        """Take ``s`` out of the rotation: its unfinished jobs go back to the queue for the others and
        its runs are abandoned (removed there when it answers again). ``dead``: it refuses
        connections, so its queue is gone and nothing needs removing."""
        was_alive = s.alive
        s.alive = False
        s.uploads.clear()
        if dead:
            s.dead = True
            s.stop.set()
            s.wake.set()
        with s.lock:
            runs = list(s.runs.values())
        moved = sorted((r for r in runs if r.active and r.job.run is r and not r.job.finished_state),
                       key=lambda r: r.job.index, reverse=True)
        reason = f"{s.label} stopped answering ({why or s.error})"
        for r in runs:
            if r.active:
                r.active, r.why = False, "left behind when the server did not answer" if not dead else "server gone"
            if dead and r.state in (QUEUED, RUNNING, UNCONFIRMED):
                self._settle(r, LOST)
        for r in moved:
            self._requeue(r.job, reason)
        if not was_alive and not moved:
            return
        others = ", ".join(x.label for x in self._alive()) or "none left"
        fetching = sum(r.state == FETCHING for r in moved)
        tail = f" ({fetching} of them finished there, their images not downloaded yet)" if fetching else ""
        if moved and not dead:
            tail += f"; they are removed from {s.label} if it answers again"
        self.ui.note(f"{reason}; {len(moved)} unfinished prompt(s) re-queued on the others ({others}){tail}")

    def _requeue(self, job: Job, why: str) -> None:
        self._detach(job)
        job.attempts += 1
        if job.attempts >= self.max_attempts:
            self._fail(job, f"tried {job.attempts} times; the last time: {why}")
        elif not self.cancelled:
            self.pending.appendleft(job)
        else:
            job.state = CANCELLED

    def _abandon(self, run: Run, why: str) -> None:
        """The job does not need this run any more: remove it from its server (the poll thread does)."""
        if run.settled or not run.active:
            return
        run.active, run.why = False, why
        if run.state == FETCHING:
            return  # finished there already: its download thread gives up
        if run.server.dead:
            self._settle(run, LOST)
        run.server.wake.set()

    def _settle(self, run: Run, state: str) -> None:
        run.state = state
        run.server.discard(run)

    # ------------------------------------------------------------------ results
    def _finished(self, run: Run, entry: dict) -> None:
        """/history has the run: success, error or interrupted."""
        job, s = run.job, run.server
        if run.state not in (SUBMITTING, UNCONFIRMED, QUEUED, RUNNING):
            return  # already seen (two sweeps may report it before this thread reads the first)
        status = entry.get("status", {})
        run.started = True
        if status.get("status_str") != "success":
            interrupted = any(kind == "execution_interrupted" for kind, _ in status.get("messages", []))
            self._settle(run, INTERRUPTED if interrupted else ERROR)
            if job.run is not run or not run.active:
                return  # an abandoned run: nobody waits for it
            self.ui.done_bar(job)
            job.error = describe_failure(entry)
            if interrupted and self.cancelled:
                job.state, job.finished = CANCELLED, time.monotonic()
                return
            self._fail(job, job.error)
            return
        if job.finished_state or job.state == FETCHING:
            # another run of this job finished first, or the job failed/timed out meanwhile
            self._settle(run, SUCCESS)
            if job.state in (DONE, FETCHING):
                self.ui.note(f"{job.name}: also finished on {s.label} (it executed twice; that result is not used)")
            return
        if job.run is not run:
            self._adopt(run, "finished")
        self.ui.done_bar(job)
        labels = prompts.output_labels(job.prompt)
        groups = collections.OrderedDict()
        for node_id, ref in output_images(entry):
            if ref.get("type") == "output" and node_id in labels:
                groups.setdefault(node_id, []).append(ref)
        items = [(labels[n], i, len(refs), ref) for n, refs in groups.items() for i, ref in enumerate(refs, 1)]
        if not items:
            self._settle(run, SUCCESS)
            job.finished, job.no_image = time.monotonic(), True
            self._fail(job, "the workflow finished without saving an image")
            return
        run.state, job.state = FETCHING, FETCHING
        threading.Thread(target=self._fetch_thread, args=(run, items), name=f"fetch-{job.index}", daemon=True).start()

    def _adopt(self, run: Run, what: str) -> None:
        """A run the job had left behind finished first: use it, and abandon the job's current run."""
        job, s = run.job, run.server
        other = job.run
        where = f" on {other.server.label}" if other is not None else " waiting here"
        self.ui.note(f"{job.name}: {what} on {s.label} after all: using that result; cancelling its copy{where}")
        if other is not None:
            self._abandon(other, f"{job.name} finished on {s.label} first")
        if job in self.pending:
            self.pending.remove(job)
        self.ui.done_bar(job)
        run.active, run.why = True, ""
        job.run, job.server, job.prompt_id = run, s, run.pid
        job.state = FETCHING if run.state == FETCHING else job.state

    def _fetch_thread(self, run: Run, items) -> None:
        """Download a finished run's images from its server, retrying with backoff."""
        s, delay = run.server, self.retry_delay
        for attempt in range(1, self.download_tries + 1):
            try:
                blobs = [s.remote.view(ref) for _, _, _, ref in items]
                self.events.put(("fetched", s, run, [item + (blob,) for item, blob in zip(items, blobs)]))
                return
            except (OSError, ValueError) as e:  # Unreachable, HTTPError, a reset connection
                gone = s.dead or self.stopping.is_set() or (not run.active and run.job.finished_state)
                if gone or attempt == self.download_tries:
                    self.events.put(("fetch_failed", s, run, e))
                    return
                self.events.put(("fetch_retry", s, run, e, delay))
                if self.stopping.wait(delay):
                    self.events.put(("fetch_failed", s, run, e))
                    return
                delay = min(delay * 2, 30.0)

    def _fetched(self, s: ServerState, run: Run, data) -> None:
        job = run.job
        if job.finished_state:
            self._settle(run, SUCCESS)
            return  # another run of the job won meanwhile
        if job.run is not run:  # left behind when its server was dropped, but downloaded first
            self._adopt(run, "downloaded")
        self._settle(run, SUCCESS)
        try:
            job.outputs = self._write(job, data)
        except OSError as e:
            self._fail(job, f"cannot write its images to {self.out_dir}: {e}")
            return
        job.finished, job.state = time.monotonic(), DONE
        self.ui.finished(job)

    def _fetch_failed(self, s: ServerState, run: Run, err) -> None:
        job = run.job
        self._settle(run, SUCCESS)  # it did execute
        if job.finished_state or job.run is not run:
            return
        where = "it is gone" if s.dead else ("it stopped answering" if not s.alive else
                                             f"{self.download_tries} tries")
        self.ui.note(f"{job.name}: finished on {s.label} but its images could not be downloaded ({where}: {err}); "
                     "running it again")
        self._requeue(job, f"its images could not be downloaded from {s.label} ({err})")

    def _fail(self, job: Job, message: str) -> None:
        if job.run is not None and not job.run.settled:
            self._abandon(job.run, f"{job.name} failed")
        job.state, job.error, job.finished = FAILED, message, time.monotonic()
        self.ui.finished(job)

    def _check_timeouts(self) -> None:
        if not self.prompt_timeout:
            return
        now = time.monotonic()
        for job in self.jobs:
            if job.state == RUNNING and job.started and now - job.started > self.prompt_timeout:
                s = job.server
                self.ui.done_bar(job)
                self._fail(job, f"still running on {s.label} after {self.prompt_timeout:.0f} s (--timeout): "
                                "interrupted")

    # ------------------------------------------------------------------ outputs
    def _write(self, job: Job, data) -> list[Path]:
        """Write (label, i, n, ref, bytes) items as <stem>[_label][_i].ext, one suffix for the whole
        job (me.png, me-2.png ...), never over an existing file."""
        self.out_dir.mkdir(parents=True, exist_ok=True)
        k = 1
        while True:
            stem = job.stem if k == 1 else f"{job.stem}-{k}"
            paths = [self.out_dir / output_name(stem, label, i, n, ref) for label, i, n, ref, _ in data]
            if len(set(paths)) == len(paths) and not any(p.exists() or p in self.claimed for p in paths):
                written = []
                try:
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

    # ------------------------------------------------------------------ the end
    def _abandoned_left(self):
        """Abandoned runs still on a server that may answer (not dead)."""
        left = []
        for s in self.servers:
            if s.dead:
                continue
            with s.lock:
                left += [r for r in s.runs.values() if not r.active and r.state in (SUBMITTING, UNCONFIRMED, QUEUED,
                                                                                    RUNNING)]
        return left

    def _settle_abandoned(self, wait: float | None = None) -> None:
        """Every job is over: wait until the runs left behind are removed from their servers (a
        server that does not answer is waited for up to server_timeout), and say what is left."""
        deadline = time.monotonic() + (self.server_timeout if wait is None else wait)
        while self._abandoned_left() and time.monotonic() < deadline:
            self._step(dispatch=False)
        left = self._abandoned_left()
        by_server = collections.defaultdict(list)
        for r in left:
            by_server[r.server.label].append(r.job.name)
        for label, names in by_server.items():
            self.ui.note(f"could not remove {len(names)} prompt(s) of ours from {label} (no answer): they may "
                         f"still run there: {', '.join(sorted(names))}")

    # ------------------------------------------------------------------ Ctrl-C
    def cancel(self, wait: float = 15.0) -> None:
        """Delete our waiting prompts, interrupt our running ones, and wait until none is left."""
        self.cancelled = True
        for job in list(self.pending):
            job.state = CANCELLED
        self.pending.clear()
        self.ui.note("interrupted: removing our prompts from the servers (Ctrl-C again to leave at once)")
        for s in self.servers:
            with s.lock:
                runs = list(s.runs.values())
            for r in runs:
                if r.state != FETCHING:  # a finished one keeps its images
                    r.active, r.why = False, "Ctrl-C"
            s.wake.set()
        deadline = time.monotonic() + wait
        try:
            while (self._abandoned_left() or any(j.state == FETCHING for j in self.jobs)) \
                    and time.monotonic() < deadline:
                self._step(dispatch=False)
        except KeyboardInterrupt:
            self.ui.note("left at once: some of our prompts may still be queued")
        for job in self.jobs:
            if job.state in (PENDING, QUEUED, RUNNING, FETCHING):
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
    """(the summary's counts line, the failures block) for the end of a run. The counts line ends
    with the number of executions (runs that started on a server) and, when a job executed more
    than once, a line for each such job saying where and how each run ended."""
    done = [j for j in jobs if j.state == DONE]
    failed = [j for j in jobs if j.state == FAILED]
    cancelled = [j for j in jobs if j.state == CANCELLED]
    images = sum(len(j.outputs) for j in done)
    parts = [f"{len(done)} done", f"{len(failed)} failed"] + ([f"{len(cancelled)} cancelled"] if cancelled else [])
    line = f"{', '.join(parts)} of {len(jobs)} prompt(s); {images} image(s) in {elapsed:.0f} s"
    runs = {j.index: j.executions() for j in jobs}
    total = sum(len(r) for r in runs.values())
    twice = [j for j in jobs if len(runs[j.index]) > 1]
    line += f"; {total} execution(s)"
    if twice:
        line += f", {len(twice)} prompt(s) executed more than once:"
        for j in twice:
            line += f"\n  {j.name}: {len(runs[j.index])} executions (" + \
                    ", ".join(f"{RUN_OUTCOME.get(r.state, r.state)} on {r.server.label}" for r in runs[j.index]) + ")"
    elif total:
        line += ", each prompt at most once"
    block = "\n".join(f"  {j.name} ({j.images.get(prompts.PHOTO, '')}): {j.error}" for j in failed)
    return line, block


def repeated(line: str) -> str:
    """The part of a summary line that names prompts executed more than once ("" when none):
    what ``--quiet`` still prints (on stderr, with the failures)."""
    head, _, details = line.partition("\n")
    return ("executed more than once:\n" + details) if details else ""


RUN_OUTCOME = {SUCCESS: "finished", FETCHING: "finished", ERROR: "failed", INTERRUPTED: "interrupted",
               LOST: "lost with the server", RUNNING: "still running"}
