"""Render processes: each session lives in one worker process, so rendering uses every core.

Rendering a retrieval frame is a few milliseconds of numpy and OpenCV with
Python in between; threads in one process share one interpreter lock and
reached about one core on a 2-core machine. So the server keeps the sockets
in its event loop and hands each session to a worker process, which owns the
session's :class:`runtime.session.Session` (its audio ring buffer and generator
state), renders, encodes the replies and sends back bytes.

Each worker memory-maps the packages itself; the operating system shares the
pages, so a second worker costs little memory. Per worker, requests are
answered in the order they were sent, so a session's frames stay in order.

Internal pipe messages (between our own processes, never from a client)::

    main -> worker   (op, session_id, payload, received_at)
                     op: "open" | "msg" (a decoded Message) | "flush" | "close"
    worker -> main   ("ready", names) once, then per "msg"/"flush":
                     ("out", session_id, [(is_frame, bytes | str), ...], records, pending)
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing as mp
import os
import signal
import threading
import time
from collections import deque
from dataclasses import dataclass, field

from .errors import LipsyncError
from .protocol import NO_SEQ, ErrorCode, Frame, ProtocolError, encode_as, error_reply
from .store import Metrics, PackageStore

log = logging.getLogger("lipsync.workers")
START_TIMEOUT_S = 60.0
GATHER = 16                  # requests a worker takes at once, so frames of several sessions share a batch


class WorkerDied(LipsyncError):
    """A render process exited; its sessions are closed and it is replaced."""


class RecordingMetrics(Metrics):
    """Metrics inside a worker: records events for the main process to apply."""

    def __init__(self):
        super().__init__()
        self.records: list[tuple] = []

    def frame(self, package, server_us, status, tier) -> None:
        self.records.append(("frame", package, server_us, int(status), tier))

    def error(self, code_name) -> None:
        self.records.append(("error", code_name))

    def drain(self) -> list[tuple]:
        out, self.records = self.records, []
        return out


def _worker_main(conn, path: str, chain: str | None, jpeg_quality: int) -> None:
    """Worker process body: serve sessions until the pipe closes."""
    from .session import Session, render_jobs

    signal.signal(signal.SIGINT, signal.SIG_IGN)      # Ctrl-C reaches the group; the main process drains
    os.environ.setdefault("LIPSYNC_RENDER_THREADS", "1")  # one process per core: one torch thread each
    store = PackageStore(path, chain=chain, jpeg_quality=jpeg_quality)
    for name in store.names():
        try:
            store.get(name)                            # map now, build the retrieval index now
        except Exception as exc:                       # a damaged package must not take the worker down
            log.warning("worker: skipping %s: %s", name, " ".join(str(exc).split())[:300])
    metrics = RecordingMetrics()
    sessions: dict[int, Session] = {}
    conn.send(("ready", store.names()))
    while True:
        try:
            batch = [conn.recv()]
            while len(batch) < GATHER and conn.poll(0):      # whatever else is waiting: render it together
                batch.append(conn.recv())
        except (EOFError, OSError):
            break
        entries = []
        for op, sid, payload, received_at in batch:
            if op == "open":
                sessions[sid] = Session(store, metrics)
            elif op == "close":
                sessions.pop(sid, None)
            else:
                entries.append(_prepare(sessions[sid], sid, op, payload, received_at))
        jobs = [e[3] for e in entries if e[3] is not None]
        try:
            results = iter(render_jobs(jobs))
        except Exception as exc:                  # a bug must not kill the worker, nor the sessions
            log.exception("render process: rendering failed")
            results = iter([[error_reply(ProtocolError(ErrorCode.INTERNAL, f"server error: {exc}"))]] * len(jobs))
        for session, sid, replies, job in entries:
            if job is not None:
                replies = replies + next(results)
            out = [(isinstance(r, Frame), encode_as(r, session.encoding)) for r in replies]
            conn.send(("out", sid, out, metrics.drain(), len(session.chunk_seqs)))
    store.close()


def _prepare(session, sid: int, op: str, payload, received_at: float):
    """(session, sid, immediate replies, render job or None) for one request."""
    try:
        if op == "msg":
            replies, job = session.prepare(payload, received_at=received_at)
        else:
            replies, job = [], session.prepare_flush()
    except Exception as exc:                      # a bug must not kill the worker, nor the session
        log.exception("render process: session failed")
        seq = getattr(payload, "seq", NO_SEQ)
        replies, job = [error_reply(ProtocolError(ErrorCode.INTERNAL, f"server error: {exc}", seq))], None
    return session, sid, replies, job


@dataclass
class Reply:
    out: list                 # [(is_frame, bytes | str)]
    pending: int              # chunks still waiting for look-ahead in this session


@dataclass
class Worker:
    index: int
    process: mp.Process
    conn: object
    waiting: deque = field(default_factory=deque)     # futures, in send order
    sessions: int = 0
    alive: bool = True


class WorkerPool:
    """``n`` render processes serving the packages under ``path``.

    Parameters
    ----------
    path : str
        As given to ``lipsync-serve``.
    metrics : Metrics
        The server's counters; workers' records are applied to it.
    """

    def __init__(self, path: str, metrics: Metrics, n: int = 2, chain: str | None = None,
                 jpeg_quality: int = 85):
        self.path, self.metrics, self.n = str(path), metrics, max(1, n)
        self.chain, self.jpeg_quality = chain, jpeg_quality
        self.workers: list[Worker] = []
        self._ctx = mp.get_context("spawn")            # no fork of a threaded event loop
        self._loop: asyncio.AbstractEventLoop | None = None
        self._next_sid = 0
        self._closing = False

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self.workers = await asyncio.gather(*(asyncio.to_thread(self._spawn, i) for i in range(self.n)))

    def _spawn(self, index: int) -> Worker:
        parent, child = self._ctx.Pipe()
        proc = self._ctx.Process(target=_worker_main, args=(child, self.path, self.chain, self.jpeg_quality),
                                 name=f"lipsync-render-{index}", daemon=True)
        proc.start()
        child.close()
        if not parent.poll(START_TIMEOUT_S):
            proc.kill()
            raise WorkerDied(f"render process {index} did not start within {START_TIMEOUT_S:.0f} s")
        try:
            kind, _ = parent.recv()
        except EOFError:
            raise WorkerDied(f"render process {index} exited at start (exit code {proc.exitcode})") from None
        worker = Worker(index, proc, parent)
        threading.Thread(target=self._read, args=(worker,), name=f"render-reader-{index}", daemon=True).start()
        return worker

    def _read(self, worker: Worker) -> None:
        """Reader thread: hand each reply to the future waiting for it, in order."""
        while True:
            try:
                _, _, out, records, pending = worker.conn.recv()
            except (EOFError, OSError):
                break
            self._post(self._deliver, worker, Reply(out, pending), records)
        self._post(self._died, worker)

    def _post(self, fn, *args) -> None:
        try:
            self._loop.call_soon_threadsafe(fn, *args)
        except RuntimeError:                  # the loop has closed: the server is gone
            pass

    def _deliver(self, worker: Worker, reply: Reply, records: list) -> None:
        for rec in records:
            if rec[0] == "frame":
                self.metrics.frame(*rec[1:])
            else:
                self.metrics.error(rec[1])
        fut = worker.waiting.popleft()
        if not fut.done():
            fut.set_result(reply)

    def _died(self, worker: Worker) -> None:
        worker.alive = False
        while worker.waiting:
            fut = worker.waiting.popleft()
            if not fut.done():
                fut.set_exception(WorkerDied(f"render process {worker.index} exited "
                                             f"(exit code {worker.process.exitcode})"))
        if not self._closing:
            log.error("render process %d died (exit code %s); starting a new one",
                      worker.index, worker.process.exitcode)
            asyncio.ensure_future(self._replace(worker))

    async def _replace(self, worker: Worker) -> None:
        new = await asyncio.to_thread(self._spawn, worker.index)
        self.workers[worker.index] = new

    # ------------------------------------------------------------ sessions

    def open(self) -> tuple[Worker, int]:
        """Pin a new session to the least-loaded live worker."""
        live = [w for w in self.workers if w.alive]
        if not live:
            raise WorkerDied("no render process is running")
        worker = min(live, key=lambda w: w.sessions)
        self._next_sid += 1
        worker.sessions += 1
        worker.conn.send(("open", self._next_sid, None, None))
        return worker, self._next_sid

    def close(self, worker: Worker, sid: int) -> None:
        worker.sessions -= 1
        if worker.alive:
            try:
                worker.conn.send(("close", sid, None, None))
            except OSError:
                pass

    async def call(self, worker: Worker, sid: int, op: str, payload=None, received_at: float | None = None) -> Reply:
        """Send one request for session ``sid`` and wait for its reply."""
        if not worker.alive:
            raise WorkerDied(f"render process {worker.index} is gone")
        fut = self._loop.create_future()
        worker.waiting.append(fut)
        try:
            worker.conn.send((op, sid, payload, received_at if received_at is not None else time.perf_counter()))
        except OSError as exc:
            worker.waiting.remove(fut)
            raise WorkerDied(f"render process {worker.index}: {exc}") from None
        return await fut

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
