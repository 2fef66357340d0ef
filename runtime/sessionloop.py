"""One session's message loop, whatever transport carries it (websocket or gRPC).

The transport hands :func:`run_session` a ``receive`` coroutine (the next decoded
message; :class:`Closed` when the peer is gone, ProtocolError for a bad one) and an
``encode`` function (a reply -> what the transport sends). The loop owns the rules
that must not differ between transports:

* a bad message is answered with ERROR and the session goes on;
* when chunks wait for look-ahead and nothing arrives for ``flush_ms``, or the
  client ends its stream, they are answered as if silence followed;
* no message for ``idle_timeout_s`` ends the session ("idle");
* frames are rendered by the server's one :class:`runtime.workers.WorkerPool`, so
  jobs of websocket and gRPC sessions wait in the same pipes and are batched
  together; a render process that dies costs one ERROR INTERNAL;
* replies go into a bounded :class:`OutQueue`: frames drop oldest first, control
  replies left unread past a limit set ``overflow`` and the transport closes.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from typing import Any, Awaitable, Callable

from .metrics import Metrics
from .options import ServeOptions
from .protocol import Frame, Message, ProtocolError
from .session import Session
from .workers import RenderFailed, WorkerDied, WorkerPool

log = logging.getLogger("lipsync.server")


class Closed(Exception):
    """The transport is gone: the peer closed, or its stream of requests ended."""


class OutQueue:
    """A session's outgoing messages, encoded, bounded.

    Items are ``(is_frame, data)``. Over ``limit`` frames, the oldest frame is
    dropped (counted in ``metrics`` at once). Control messages (CAPABILITIES,
    STATS, ERROR) are never dropped; over ``replies`` of them unsent, the
    client is not reading, ``overflow`` is set and the session is closed.
    """

    def __init__(self, limit: int, metrics: Metrics, replies: int = 256):
        self.limit = limit
        self.replies = replies
        self.metrics = metrics
        self.items: deque[tuple[bool, Any]] = deque()
        self.overflow = asyncio.Event()
        self.frames = 0              # frames queued now
        self.frames_out = 0          # frames queued in all
        self.dropped = 0
        self.ready = asyncio.Event()

    def put(self, is_frame: bool, data: Any) -> None:
        if is_frame:
            if self.frames >= self.limit:
                for i, (old_is_frame, _) in enumerate(self.items):
                    if old_is_frame:
                        del self.items[i]
                        self.frames -= 1
                        self.dropped += 1
                        self.metrics.count("dropped")
                        break
            self.frames += 1
            self.frames_out += 1
        elif len(self.items) - self.frames >= self.replies:
            self.overflow.set()                  # not reading: the session closes; nothing more is kept
            return
        self.items.append((is_frame, data))
        self.ready.set()

    def pop(self) -> Any | None:
        if not self.items:
            self.ready.clear()
            return None
        is_frame, data = self.items.popleft()
        self.frames -= is_frame
        return data


async def run_session(session: Session, receive: Callable[[], Awaitable[Message]], queue: OutQueue,
                      encode: Callable[[Message], Any], pool: WorkerPool, options: ServeOptions,
                      transport: str, peer: str = "") -> str:
    """Answer ``session``'s messages until the transport closes ("closed") or it goes idle ("idle").

    One ``receive()`` is in flight at a time and is never cancelled by a timeout: it is awaited
    again after the flush or the idle check. (Cancelling it would close a gRPC request
    iterator, which the server then takes for the client's half-close.)
    """
    incoming: asyncio.Future | None = None
    try:
        while True:
            timeout = options.flush_ms / 1000 if session.pending else options.idle_timeout_s
            if incoming is None:
                incoming = asyncio.ensure_future(receive())
            end = None
            try:
                done, _ = await asyncio.wait({incoming}, timeout=timeout)
                if not done:
                    raise TimeoutError
                arrived, incoming = incoming, None
                msg = arrived.result()
            except Closed:
                # The audio ended (a gRPC client half-closes after its last chunk): answer the chunks
                # still waiting for look-ahead as if silence followed. A websocket that is gone just
                # never sends them.
                end = "closed"
                replies, work = session.prepare_flush()
            except TimeoutError:
                if not session.pending:
                    return "idle"
                replies, work = session.prepare_flush()
            except ProtocolError as exc:
                replies, work = [session.refuse(exc)], None
            else:
                replies, work = session.prepare(msg, time.perf_counter())
            if work is not None:
                replies += session.finish(work, await render(pool, work.job, transport, peer))
            for reply in replies:
                queue.put(isinstance(reply, Frame), encode(reply))
            if end is not None:
                return end
    finally:
        if incoming is not None:
            incoming.cancel()


async def run_connection(session: Session, transport: str, peer: str, queue: OutQueue,
                         receive: Callable[[], Awaitable[Message]], write: Callable[[Any], Awaitable[None]],
                         encode: Callable[[Message], Any], pool: WorkerPool, options: ServeOptions,
                         stopping: asyncio.Event | None = None) -> str:
    """One session from open to end, for any transport; returns how it ended.

    ``receive`` gives the next message (:class:`Closed` when the peer is gone), ``write``
    sends one encoded reply (:class:`Closed` when it cannot). Counts the session in the
    metrics while it runs. Returns "closed" (the peer closed, or its stream of requests
    ended: the replies left are sent first), "idle" (nothing for ``idle_timeout_s``),
    "unread" (``queue_replies`` control replies left unread) or "shutdown" (``stopping``
    was set: the server is stopping; the replies already queued are sent first, for up to
    ``drain_s``); the transport then closes in its own way (close code, gRPC status).
    """
    metrics = session.metrics
    receiving = asyncio.Event()
    receiving.set()

    async def send():                                         # the only writer of this session
        while True:
            item = queue.pop()
            if item is None:
                if not receiving.is_set():
                    return
                await queue.ready.wait()
                continue
            try:
                await write(item)
            except Closed:                                    # the peer is gone: nothing more goes out
                return

    metrics.session(transport, True)
    log.info("%s session open from %s", transport, peer)
    receiver = asyncio.create_task(run_session(session, receive, queue, encode, pool, options, transport, peer))
    sender = asyncio.create_task(send())
    overflow = asyncio.create_task(queue.overflow.wait())
    stop = asyncio.create_task(stopping.wait() if stopping is not None else asyncio.Event().wait())
    end = "closed"
    try:
        await asyncio.wait({receiver, sender, overflow, stop}, return_when=asyncio.FIRST_COMPLETED)
        if stop.done() and not receiver.done():
            end = "shutdown"
            receiver.cancel()
            receiving.clear()                                 # send what is queued, then end
            queue.ready.set()
            await asyncio.wait({sender}, timeout=options.drain_s)
        elif overflow.done():
            end = "unread"
            metrics.count("closed_unread")
            log.warning("%s session from %s closed: %d replies left unread", transport, peer, options.queue_replies)
        elif receiver.done():
            end = receiver.result()
            receiving.clear()                                 # the sender sends what is left, then ends
            queue.ready.set()
            await asyncio.wait({sender}, timeout=options.drain_s + 5)   # a peer that does not read: give up
            if end == "idle":
                metrics.count("closed_idle")
                log.info("%s session from %s closed: idle for %g s", transport, peer, options.idle_timeout_s)
        else:
            sender.result()                                   # the writes stopped: the peer is gone, or why not
        return end
    finally:
        for task in (receiver, sender, overflow, stop):
            task.cancel()
        if sender.done() and not sender.cancelled():
            sender.exception()                                # seen: a failed write while draining ends nothing
        metrics.session(transport, False)
        log.info("%s session closed from %s: %d frames out, %d dropped", transport, peer, queue.frames_out,
                 queue.dropped)


async def render(pool: WorkerPool, job, transport: str, peer: str = ""):
    """The job's rendered frames, or the exception that says why there are none."""
    try:
        return await pool.render(job, transport)
    except (WorkerDied, RenderFailed) as exc:
        log.error("session from %s: %s", peer, exc)
        return exc
