"""The gRPC service (docs/lipsync.proto) of ``lipsync-serve --grpc-port``.

It runs on the websocket server's event loop and shares everything behind the
transport with it: :class:`runtime.session.Session` (what to answer),
:func:`runtime.sessionloop.run_session` (flush, idle and error rules, bounded
reply queue), the one :class:`runtime.workers.WorkerPool` (so websocket and gRPC
jobs are batched together), the package store and the metrics. This module only
turns protobuf messages into protocol messages and back, maps error codes to
gRPC status codes (docs/grpc.md) and enforces the token.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import time

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from ..errors import InputError, LipsyncError
from ..generators import parse_chain
from ..protocol import (AudioChunk, Error, ErrorCode, Frame, ProtocolError, SampleFormat, Stats, StatsRequest,
                        SwitchPackage, WindowRequest)
from ..render import check_servable
from ..session import Session
from ..sessionloop import Closed, OutQueue, render, run_connection
from . import lipsync_pb2 as pb
from . import lipsync_pb2_grpc as pb_grpc

log = logging.getLogger("lipsync.grpc")

SERVICE = "lipsync.v1.Lipsync"
# Windows in one GenerateBatch: 48 windows of 640 ms of 16 kHz int16 PCM (20 kB each) fit the
# 1 MiB message limit with room for the rest; at higher rates or float32 fewer fit.
MAX_BATCH = 48
# protocol error code -> gRPC status code (docs/grpc.md has the table)
STATUS = {
    ErrorCode.MALFORMED: grpc.StatusCode.INVALID_ARGUMENT,
    ErrorCode.BAD_CRC: grpc.StatusCode.DATA_LOSS,
    ErrorCode.UNKNOWN_TYPE: grpc.StatusCode.INVALID_ARGUMENT,
    ErrorCode.UNKNOWN_PACKAGE: grpc.StatusCode.NOT_FOUND,
    ErrorCode.TOO_BIG: grpc.StatusCode.RESOURCE_EXHAUSTED,
    ErrorCode.UNSUPPORTED_VERSION: grpc.StatusCode.FAILED_PRECONDITION,
    ErrorCode.BAD_AUDIO: grpc.StatusCode.INVALID_ARGUMENT,
    ErrorCode.INTERNAL: grpc.StatusCode.INTERNAL,
}


# ---------------------------------------------------------------------------- conversions

def _format(value: int) -> int:
    """proto3's unset enum (0) means INT16; any other value is checked by runtime.protocol."""
    return value or SampleFormat.INT16


def to_message(req: pb.StreamRequest):
    """A StreamRequest -> the protocol message it carries (ProtocolError when it carries none)."""
    kind = req.WhichOneof("message")
    if kind == "audio":
        a = req.audio
        return AudioChunk(seq=a.seq, sample_rate=a.sample_rate, sample_format=_format(a.sample_format),
                          package=a.package, pcm=a.pcm)
    if kind == "switch_package":
        return SwitchPackage(seq=req.switch_package.seq, package=req.switch_package.package)
    if kind == "stats":
        return StatsRequest(seq=req.stats.seq)
    raise ProtocolError(ErrorCode.UNKNOWN_TYPE, "a StreamRequest must hold audio, switch_package or stats")


def to_window(w: pb.WindowRequest) -> WindowRequest:
    return WindowRequest(seq=w.seq, frame_id=w.frame_id, sample_rate=w.sample_rate,
                         sample_format=_format(w.sample_format), package=w.package, pcm=w.pcm)


def to_frame(f: Frame) -> pb.Frame:
    x0, y0, x1, y1 = f.bounds
    return pb.Frame(seq=f.seq, status=int(f.status), base_frame=f.base_frame, server_us=f.server_us,
                    bounds=pb.Bounds(x0=x0, y0=y0, x1=x1, y1=y1), jpeg=f.jpeg, tier=f.tier)


def to_reply(msg) -> pb.StreamReply:
    if isinstance(msg, Frame):
        return pb.StreamReply(frame=to_frame(msg))
    if isinstance(msg, Error):
        return pb.StreamReply(error=pb.Error(seq=msg.seq, code=int(msg.code), name=ErrorCode(msg.code).name,
                                             text=msg.text))
    if isinstance(msg, Stats):
        return pb.StreamReply(stats=pb.Stats(seq=msg.seq, json=json.dumps(msg.stats)))
    raise TypeError(f"no gRPC reply for {type(msg).__name__}")


# ---------------------------------------------------------------------------- token

class TokenCheck(grpc.aio.ServerInterceptor):
    """Every call but the health service needs ``authorization: Bearer TOKEN``."""

    def __init__(self, token: str, metrics):
        self.token = token.encode()
        self.metrics = metrics

        async def refuse(request, context):
            self.metrics.error("UNAUTHENTICATED")
            await context.abort(grpc.StatusCode.UNAUTHENTICATED,
                                "missing or wrong token: send the metadata 'authorization: Bearer TOKEN'")

        self._refuse_unary = grpc.unary_unary_rpc_method_handler(refuse)

        async def refuse_stream(request_iterator, context):    # a coroutine: nothing is ever written
            await refuse(None, context)

        self._refuse_stream = grpc.stream_stream_rpc_method_handler(refuse_stream)

    async def intercept_service(self, continuation, details):
        if details.method.startswith("/grpc.health.v1.Health/"):
            return await continuation(details)
        given = ""
        for key, value in details.invocation_metadata or ():
            if key == "authorization" and isinstance(value, str) and value.startswith("Bearer "):
                given = value[7:]
        if hmac.compare_digest(given.encode(), self.token):
            return await continuation(details)
        return self._refuse_stream if details.method.endswith("/Stream") else self._refuse_unary


# ---------------------------------------------------------------------------- the service

class LipsyncService(pb_grpc.LipsyncServicer):
    """The calls of docs/lipsync.proto over a running :class:`runtime.server.LipsyncServer`."""

    def __init__(self, server):
        self.server = server
        self.store = server.store
        self.metrics = server.metrics
        self.options = server.config
        # Window mode keeps no state in a session: one serves every Generate call.
        self.windows = Session(self.store, self.metrics)
        # Batch windows are prepared and rendered a few at a time (one per render process), so a
        # flood of batches waits its turn behind real-time sessions instead of filling every pipe.
        self.batch_slots = asyncio.Semaphore(max(1, server.pool.n))
        self.stopping = asyncio.Event()            # set by stop(): open streams end with UNAVAILABLE

    async def _abort(self, context, exc: ProtocolError | LipsyncError):
        code = exc.code if isinstance(exc, ProtocolError) else ErrorCode.INTERNAL
        self.metrics.error(code.name)
        await context.abort(STATUS[code], str(exc)[:1024])

    # ------------------------------------------------------------ streaming
    async def Stream(self, request_iterator, context):
        if self.metrics.sessions_active >= self.options.max_sessions:
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED,
                                f"server full ({self.options.max_sessions} sessions); retry later")
        # Initial metadata at once: a client may wait for it before writing, so that a refused call
        # (token, capacity) is seen as its status rather than as a failed write.
        await context.send_initial_metadata(())
        queue = OutQueue(self.options.queue_frames, self.metrics, self.options.queue_replies)
        session = Session(self.store, self.metrics)
        requests = request_iterator.__aiter__()

        async def receive():
            try:
                req = await requests.__anext__()
            except StopAsyncIteration:
                raise Closed from None
            return to_message(req)

        end = await run_connection(session, "grpc", context.peer(), queue, receive, context.write, to_reply,
                                   self.server.pool, self.options, self.stopping)
        if end == "shutdown":
            await context.abort(grpc.StatusCode.UNAVAILABLE, "server shutting down; connect again")
        elif end == "unread":
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED,
                                f"{self.options.queue_replies} replies unread; read what the server sends")
        elif end == "idle":
            await context.abort(grpc.StatusCode.DEADLINE_EXCEEDED, f"no message for {self.options.idle_timeout_s:g} s")

    # ------------------------------------------------------------ windows
    async def _window(self, w: pb.WindowRequest, received: float) -> Frame | Error:
        """One window -> its Frame, or the ERROR it earned (counted in the metrics)."""
        try:
            msg = to_window(w)
        except ProtocolError as exc:
            return self.windows.refuse(exc)
        replies, work = self.windows.prepare(msg, received)
        if work is None:
            return replies[0]
        return self.windows.finish(work, await render(self.server.pool, work.job, "grpc"))[0]

    async def Generate(self, request, context):
        reply = await self._window(request, time.perf_counter())
        if isinstance(reply, Error):
            await context.abort(STATUS[ErrorCode(reply.code)], reply.text)
        return to_frame(reply)

    async def GenerateBatch(self, request, context):
        if len(request.windows) > MAX_BATCH:
            self.metrics.error(ErrorCode.TOO_BIG.name)
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                                f"{len(request.windows)} windows in one GenerateBatch; send at most {MAX_BATCH}")
        replies = await asyncio.gather(*(self._batched(w) for w in request.windows))
        return pb.GenerateBatchReply(results=[to_reply(r) for r in replies])

    async def _batched(self, w: pb.WindowRequest) -> Frame | Error:
        """One window of a batch, in its turn (``server_us`` counts from then: batches are not real time)."""
        async with self.batch_slots:
            return await self._window(w, time.perf_counter())

    # ------------------------------------------------------------ packages
    def _info(self, name: str) -> pb.PackageInfo:
        package = self.store.get(name)
        m = package.manifest
        return pb.PackageInfo(name=name, frames=package.frames, fps=float(package.fps),
                              width=int(m["video"]["width"]), height=int(m["video"]["height"]),
                              crop_size=int(m["crop"]["size"]), train_frames=len(range(*m["split"]["train_frames"])),
                              tiers=list(parse_chain(self.options.render.chain, package)),
                              loaded=self.store.is_open(name))

    async def _named(self, name: str, context, load: bool = False) -> pb.PackageInfo:
        try:
            if load:
                await asyncio.to_thread(self.store.load, name, check_servable)
            return await asyncio.to_thread(self._info, name)
        except KeyError:
            self.metrics.error(ErrorCode.UNKNOWN_PACKAGE.name)
            await context.abort(grpc.StatusCode.NOT_FOUND, f"no package named {name!r} in the served folder; "
                                f"it offers {', '.join(self.store.names())}")
        except LipsyncError as exc:
            self.metrics.error(ErrorCode.INTERNAL.name)
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, " ".join(str(exc).split())[:1024])

    async def ListPackages(self, request, context):
        infos = []
        for name in self.store.names():
            try:
                infos.append(await asyncio.to_thread(self._info, name))
            except KeyError:                                 # unloaded since it was listed
                continue
            except LipsyncError as exc:                      # a broken package is left out of the list
                log.warning("ListPackages: %s: %s", name, exc)
        return pb.ListPackagesReply(packages=infos)

    async def GetPackageInfo(self, request, context):
        return await self._named(request.name, context)

    async def LoadPackage(self, request, context):
        return await self._named(request.name, context, load=True)

    async def UnloadPackage(self, request, context):
        if not self.store.unload(request.name):
            self.metrics.error(ErrorCode.UNKNOWN_PACKAGE.name)
            await context.abort(grpc.StatusCode.NOT_FOUND, f"no package named {request.name!r} is offered")
        return pb.UnloadPackageReply(name=request.name)


async def start(server) -> tuple[grpc.aio.Server, int]:
    """Start the gRPC server for ``server`` (a started LipsyncServer) on its options' host and grpc_port.

    Returns the gRPC server and the port it listens on. Same host, token and TLS
    certificate as the websocket server; messages over ``max_message_bytes`` are
    refused by gRPC before they are read (RESOURCE_EXHAUSTED).
    """
    opts = server.config
    g = grpc.aio.server(
        interceptors=[TokenCheck(opts.token, server.metrics)] if opts.token else [],
        options=[("grpc.max_receive_message_length", opts.max_message_bytes),
                 ("grpc.max_send_message_length", 64 << 20),
                 ("grpc.so_reuseport", 0),
                 ("grpc.max_concurrent_streams", opts.max_sessions + 16)])
    service = LipsyncService(server)
    pb_grpc.add_LipsyncServicer_to_server(service, g)
    checker = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(checker, g)
    address = f"[{opts.host}]:{opts.grpc_port}" if ":" in opts.host else f"{opts.host}:{opts.grpc_port}"
    try:
        if opts.tls:
            key = open(opts.keyfile or opts.certfile, "rb").read()
            chain = open(opts.certfile, "rb").read()
            port = g.add_secure_port(address, grpc.ssl_server_credentials([(key, chain)]))
        else:
            port = g.add_insecure_port(address)
    except RuntimeError:
        port = 0
    if not port:
        raise InputError(f"--grpc-port {opts.grpc_port}: cannot listen for gRPC on {address} (in use by "
                         "another program?); pick another --grpc-port")
    await g.start()
    for name in ("", SERVICE):
        await checker.set(name, health_pb2.HealthCheckResponse.SERVING)
    g.lipsync_service = service
    g.lipsync_health = checker
    return g, port


async def stop(g: grpc.aio.Server, grace_s: float) -> None:
    """Refuse new calls, give running ones ``grace_s``, then cancel them."""
    checker = getattr(g, "lipsync_health", None)
    if checker is not None:
        await checker.enter_graceful_shutdown()
    service = getattr(g, "lipsync_service", None)
    if service is not None:
        service.stopping.set()                    # each open stream sends what it has queued, then UNAVAILABLE
    await g.stop(grace_s)
