"""Render processes: rendering runs in worker processes, so it uses every core.

Rendering a retrieval frame is a few milliseconds of numpy and OpenCV with
Python in between; threads in one process share one interpreter lock and
reached about one core on a 2-core machine. So the server keeps the sockets
and the sessions in its event loop, and sends each :class:`RenderJob` to a
render process, which renders it with its own :class:`Renderers` and sends
back the frames and the job's updated render state. Render processes keep no
session state: any of them can render any job, and one that dies loses only
the jobs it was rendering.

Each render process memory-maps the packages itself; the operating system
shares the pages, so a second process costs little memory. A process takes
every job waiting in its pipe (up to GATHER) and renders them together, so
frames of several sessions on one package share a generator batch.

Pipe messages (between our own processes, never from a client)::

    main -> render   (job_id, RenderJob)
    render -> main   ("ready", names) once, then per job:
                     (job_id, [Rendered, ...] | None, state dict, error text | None)
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing as mp
import signal
import threading
import time
from dataclasses import dataclass, field, replace

from .errors import LipsyncError
from .options import RenderOptions
from .render import Renderers, RenderJob
from .store import PackageStore
from .threads import Plan, environment, limit_this_process, plan

log = logging.getLogger("lipsync.workers")
START_TIMEOUT_S = 60.0
FAILOVER_S = 1.0             # a job not back by then goes to another render process (the first is marked stalled)
STALLED_KILL_S = 60.0        # a render process silent this long with work given is killed and replaced
GATHER = 16                  # jobs a render process takes at once, so frames of several sessions share a batch


class WorkerDied(LipsyncError):
    """A render process exited while rendering a job; it is replaced."""


class RenderFailed(LipsyncError):
    """A render process could not render a job (a damaged package, a bug); it goes on with the next."""


def _render_main(conn, path: str, options: RenderOptions) -> None:
    """Render process body: render jobs until the pipe closes."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)      # Ctrl-C reaches the group; the main process drains
    if options.threads is None:                       # one process per core: one thread each
        options = replace(options, threads=1)
    limit_this_process(options.threads)               # OpenCV is loaded by now; torch reads the options
    store = PackageStore(path)
    renderers = Renderers(store, options)
    for name in store.names():
        try:
            renderers.get(name)                        # map now, build the retrieval index now
        except Exception as exc:                       # a damaged package must not take the process down
            log.warning("render process: skipping %s: %s", name, " ".join(str(exc).split())[:300])
    conn.send(("ready", store.names()))
    while True:
        try:
            batch = [conn.recv()]
            while len(batch) < GATHER and conn.poll(0):      # whatever else is waiting: render it together
                batch.append(conn.recv())
        except (EOFError, OSError):
            break
        jobs = [job for _, job in batch]
        try:
            results = renderers.render(jobs)
        except Exception as exc:                  # a bug must not kill the process
            log.exception("render process: rendering failed")
            results = [exc] * len(jobs)
        together = tuple(job_id for job_id, _ in batch)
        for (job_id, job), result in zip(batch, results):
            if isinstance(result, BaseException):
                conn.send((job_id, None, job.state, " ".join(str(result).split())[:500] or type(result).__name__,
                           together))
            else:
                conn.send((job_id, result, job.state, None, together))
    renderers.close()


@dataclass
class Worker:
    index: int
    process: mp.Process
    conn: object
    waiting: dict = field(default_factory=dict)       # job id -> future
    alive: bool = True
    stalled_since: float | None = None                # monotonic time of a missed FAILOVER_S, until it answers


class WorkerPool:
    """``n`` render processes rendering the packages under ``path``.

    Parameters
    ----------
    path : str
        As given to ``lipsync-serve``.
    cpu : Plan, optional
        Render processes and threads each (:func:`runtime.threads.plan`; by default one
        single-threaded process per usable core).
    options : RenderOptions
        How each process renders (chain, JPEG quality, torch device and threads).
    """

    def __init__(self, path: str, cpu: Plan | None = None, options: RenderOptions = RenderOptions()):
        self.cpu = cpu or plan(None, options.threads)
        self.path, self.n = str(path), self.cpu.workers
        self.options = replace(options, threads=self.cpu.threads)
        self._child_env = self.cpu.environment()       # fixed now: spawning sets it in os.environ for a moment
        self.workers: list[Worker] = []
        self._ctx = mp.get_context("spawn")            # no fork of a threaded event loop
        self._loop: asyncio.AbstractEventLoop | None = None
        self._next_job = 0
        self._closing = False
        self.restarts = 0                              # render processes replaced after dying
        self.batches: dict[int, int] = {}              # jobs in one batch -> batches rendered
        self.mixed_batches = 0                         # batches holding jobs of more than one transport
        self._transport: dict[int, str] = {}           # job id -> transport, until its result

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self.workers = await asyncio.gather(*(asyncio.to_thread(self._spawn, i) for i in range(self.n)))

    def _spawn(self, index: int) -> Worker:
        parent, child = self._ctx.Pipe()
        proc = self._ctx.Process(target=_render_main, args=(child, self.path, self.options),
                                 name=f"lipsync-render-{index}", daemon=True)
        with environment(self._child_env):              # thread pools sized before they load
            proc.start()
        child.close()
        if not parent.poll(START_TIMEOUT_S):
            proc.kill()
            raise WorkerDied(f"render process {index} did not start within {START_TIMEOUT_S:.0f} s")
        try:
            parent.recv()
        except EOFError:
            raise WorkerDied(f"render process {index} exited at start (exit code {proc.exitcode})") from None
        worker = Worker(index, proc, parent)
        threading.Thread(target=self._read, args=(worker,), name=f"render-reader-{index}", daemon=True).start()
        return worker

    def _read(self, worker: Worker) -> None:
        """Reader thread: hand each result to the future waiting for it."""
        while True:
            try:
                result = worker.conn.recv()
            except (EOFError, OSError, TypeError, ValueError):   # closed; TypeError: closed while reading
                break
            self._post(self._deliver, worker, result)
        self._post(self._died, worker)

    def _post(self, fn, *args) -> None:
        try:
            self._loop.call_soon_threadsafe(fn, *args)
        except RuntimeError:                  # the loop has closed: the server is gone
            pass

    def _deliver(self, worker: Worker, result: tuple) -> None:
        job_id, rendered, state, error, together = result
        if worker.stalled_since is not None:
            log.info("render process %d answers again after %.1f s", worker.index,
                     time.monotonic() - worker.stalled_since)
            worker.stalled_since = None
        if job_id == together[0]:                      # the batch's first result: count the batch once
            self.batches[len(together)] = self.batches.get(len(together), 0) + 1
            self.mixed_batches += len({self._transport.get(j) for j in together}) > 1
        self._transport.pop(job_id, None)
        fut = worker.waiting.pop(job_id, None)
        if fut is None or fut.done():
            return
        if error is not None:
            fut.set_exception(RenderFailed(error))
        else:
            fut.set_result((rendered, state))

    def _died(self, worker: Worker) -> None:
        worker.alive = False
        for fut in worker.waiting.values():
            if not fut.done():
                fut.set_exception(WorkerDied(f"render process {worker.index} exited "
                                             f"(exit code {worker.process.exitcode})"))
        for job_id in worker.waiting:
            self._transport.pop(job_id, None)
        worker.waiting.clear()
        if not self._closing:
            self.restarts += 1
            log.error("render process %d died (exit code %s); starting a new one",
                      worker.index, worker.process.exitcode)
            asyncio.ensure_future(self._replace(worker))

    async def _replace(self, worker: Worker) -> None:
        new = await asyncio.to_thread(self._spawn, worker.index)
        self.workers[worker.index] = new

    # ------------------------------------------------------------ rendering

    async def render(self, job: RenderJob, transport: str = ""):
        """Render ``job`` in the least busy render process; returns its frames.

        ``transport`` ("websocket", "grpc") labels the job for the batch counts.

        ``job.state`` is replaced by the state the render process sends back. A job
        not back within FAILOVER_S is sent to another live process, and the first is
        passed over until it answers again (a process stopped or stuck in native
        code must not freeze its sessions); one that stays silent for STALLED_KILL_S
        is killed and replaced. Raises WorkerDied when no process is running or the
        one rendering exits (or is replaced), RenderFailed when the process could not
        render it.
        """
        self._replace_silent()
        tried: set[int] = set()
        while True:
            live = [w for w in self.workers if w.alive]
            if not live:
                raise WorkerDied("no render process is running; a new one is starting, retry shortly")
            fresh = [w for w in live if w.stalled_since is None and w.index not in tried]
            worker = min(fresh or [w for w in live if w.index not in tried] or live, key=lambda w: len(w.waiting))
            job_id, fut = self._send(worker, job, transport)
            others = [w for w in live if w is not worker and w.stalled_since is None and w.index not in tried]
            try:
                rendered, job.state = await asyncio.wait_for(asyncio.shield(fut),
                                                             FAILOVER_S if others else STALLED_KILL_S)
                return rendered
            except TimeoutError:
                worker.waiting.pop(job_id, None)           # a late answer is dropped
                self._transport.pop(job_id, None)
                if not others:                             # nobody to hand it to, and silent all this time
                    self._kill(worker, f"no answer in {STALLED_KILL_S:.0f} s")
                    raise WorkerDied(f"render process {worker.index} did not answer in {STALLED_KILL_S:.0f} s; "
                                     "it is replaced") from None
                if worker.stalled_since is None:
                    worker.stalled_since = time.monotonic()
                    log.warning("render process %d has not answered in %.1f s; its jobs go to the others",
                                worker.index, FAILOVER_S)
                tried.add(worker.index)

    def _send(self, worker: Worker, job: RenderJob, transport: str):
        self._next_job += 1
        job_id = self._next_job
        fut = self._loop.create_future()
        worker.waiting[job_id] = fut
        self._transport[job_id] = transport
        try:
            worker.conn.send((job_id, job))
        except OSError as exc:
            worker.waiting.pop(job_id, None)
            self._transport.pop(job_id, None)
            raise WorkerDied(f"render process {worker.index}: {exc}") from None
        return job_id, fut

    def _replace_silent(self) -> None:
        """Kill the render processes passed over for STALLED_KILL_S (their reader thread replaces them)."""
        now = time.monotonic()
        for w in self.workers:
            if w.alive and w.stalled_since is not None and now - w.stalled_since > STALLED_KILL_S:
                self._kill(w, f"silent for {now - w.stalled_since:.0f} s")

    def _kill(self, worker: Worker, why: str) -> None:
        log.error("render process %d: %s; killing it", worker.index, why)
        worker.stalled_since = None
        try:
            worker.process.kill()
        except (OSError, AttributeError):
            pass

    async def stop(self) -> None:
        self._closing = True
        for w in self.workers:
            try:
                w.conn.close()
            except OSError:
                pass
        deadline = time.monotonic() + 0.5
        for w in self.workers:
            await asyncio.to_thread(w.process.join, max(0.0, deadline - time.monotonic()))
            if w.process.is_alive():
                w.process.kill()
