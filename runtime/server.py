"""The asyncio server: websocket sessions and a few HTTP routes on one port.

A thin layer over :mod:`runtime.session` (what to answer),
:mod:`runtime.workers` (render processes) and :mod:`runtime.protocol`
(bytes): this module reads a message, decodes it, lets the connection's
:class:`runtime.session.Session` answer it, has the render processes render
the frames it makes due, encodes the replies and queues them for sending.

:func:`serve` is the API that ``lipsync-serve``, tests and embedders call.

HTTP routes (GET only)::

    /                      the browser client (runtime/web/index.html)
    /app.js                its script (and /protocol.js, /basevideo.js: its codec and base-frame decoder)
    /health                {"status": "ok", ...}; never needs the token
    /stats                 Metrics.snapshot(): sessions, frames, latency p50/p95/p99 per package
    /metrics               the same counters in the Prometheus text format (runtime.exposition)
    /packages              [{name, frames, fps, width, height, train_frames, video}, ...]
    /packages/NAME/video   the package's base video.mp4 (Range requests supported)
    /ws                    the websocket endpoint (docs/protocol.md)

With a token set, every route but /health wants ``?token=T`` or
``Authorization: Bearer T``.
"""

from __future__ import annotations

import asyncio
import email.utils
import hmac
import http
import json
import logging
import mimetypes
import re
import signal
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

from websockets.asyncio.server import ServerConnection
from websockets.asyncio.server import serve as websocket_serve
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from . import __version__, threads
from .errors import LipsyncError, PackageError
from .exposition import CONTENT_TYPE_LATEST, registry_for, render_text
from .metrics import Metrics
from .mouth import for_package
from .options import ServeOptions, is_loopback
from .package import read_manifest
from .protocol import ErrorCode, ProtocolError, decode, decode_json, encode_as
from .render import check_servable
from .session import Session
from .sessionloop import Closed, OutQueue, run_connection
from .store import PackageStore
from .workers import WorkerPool

log = logging.getLogger("lipsync.server")

WEB_DIR = Path(__file__).with_name("web")
STATIC = {"/": "index.html", "/index.html": "index.html", "/app.js": "app.js", "/protocol.js": "protocol.js",
          "/basevideo.js": "basevideo.js",
          "/style.css": "style.css"}
VIDEO_RE = re.compile(r"^/packages/([^/]+)/video$")
RANGE_RE = re.compile(r"^bytes=(\d{0,18})-(\d{0,18})$")    # one range; 18 digits is past any file
SINGLE_HEADERS = ("Host", "Origin", "Authorization", "Range", "Upgrade")   # more than one of these: 400
LOOPBACK_NAMES = {"localhost", "127.0.0.1", "::1"}
WILDCARD_HOSTS = {"0.0.0.0", "::", ""}
MAX_RANGE_BYTES = 4 << 20     # the most bytes one Range answer holds
CLOSE_IDLE = 4001             # websocket close code: no message for idle_timeout_s
CLOSE_UNREAD = 4002           # websocket close code: queue_replies control replies left unread


def _decode(data: bytes | str, max_size: int):
    """A websocket message -> Message; ProtocolError for anything wrong, a decoder bug included."""
    try:
        return decode(data, max_size) if isinstance(data, bytes) else decode_json(data, max_size)
    except ProtocolError:
        raise
    except Exception as exc:                  # a decoder bug must not end the session
        log.exception("decoding a message failed")
        raise ProtocolError(ErrorCode.MALFORMED, f"undecodable message ({type(exc).__name__})") from None


async def _close(ws: ServerConnection, code: int, reason: str) -> None:
    """Close with ``code``; a peer that does not read cannot hold us: after 2 s the TCP connection is dropped."""
    try:
        await asyncio.wait_for(ws.close(code, reason), 2.0)
    except (TimeoutError, ConnectionClosed):
        ws.transport.abort()


def _read_range(path: Path, start: int, length: int) -> bytes:
    """Read ``length`` bytes of ``path`` from ``start`` (only those bytes)."""
    with open(path, "rb") as f:
        f.seek(start)
        return f.read(length)


def _host_name(host: str) -> str:
    """``Host``-style ``name[:port]`` or ``[v6]:port`` -> the lower-case name alone."""
    host = host.strip().lower()
    if host.startswith("["):
        return host[1:host.find("]")] if "]" in host else host
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host



def _response(status: int, body: bytes, ctype: str, extra: list[tuple[str, str]] | None = None) -> Response:
    headers = Headers([("Date", email.utils.formatdate(usegmt=True)), ("Connection", "close"),
                       ("Content-Length", str(len(body))), ("Content-Type", ctype),
                       ("Cache-Control", "no-store")] + (extra or []))
    return Response(status, http.HTTPStatus(status).phrase, headers, body)


def _json(status: int, obj) -> Response:
    return _response(status, json.dumps(obj, indent=1).encode(), "application/json")


class LipsyncServer:
    """Serve a :class:`PackageStore` over websocket + HTTP.

    Use ``await server.start()``, then ``await server.stop()``; or :func:`run`.
    """

    def __init__(self, store: PackageStore, options: ServeOptions = ServeOptions()):
        options.check()
        self.store = store
        self.config = options
        self.metrics = Metrics()
        self.cpu = threads.plan(options.workers, options.render.threads)
        self.pool = WorkerPool(store.path, self.cpu, options.render)
        self._server = None
        self._sessions: dict[asyncio.Task, OutQueue] = {}     # each session's task and outgoing queue
        self.refused: dict[str, str] = {}                     # packages left out at start, and why
        self._registry = registry_for(self)                  # GET /metrics
        self._grpc = None                                     # the gRPC server, with options.grpc_port
        self._checked = False
        self.port: int | None = None
        self.grpc_port: int | None = None

    # ------------------------------------------------------------ lifecycle

    def check(self) -> None:
        """Check every package (:func:`check_packages`); a lone broken package raises PackageError."""
        self.refused.clear()
        check_packages(self.store, self.refused)
        self._checked = True

    async def start(self) -> None:
        if not self._checked:
            await asyncio.to_thread(self.check)
        log.info("rendering with %s", self.cpu.describe())
        if self.cpu.oversubscribed:
            log.warning("--workers %d x --threads %d is more threads than the %d usable cores: frames slow down "
                        "under load; the defaults fit the cores", self.cpu.workers, self.cpu.threads, self.cpu.cores)
        await self.pool.start()
        self._server = await websocket_serve(
            self._connection, self.config.host, self.config.port,
            process_request=self._http, max_size=self.config.max_message_bytes,
            compression=None, max_queue=8, ping_interval=20, ping_timeout=20, close_timeout=1,
            server_header=f"lipsync-serve/{__version__}",
            ssl=self.config.ssl_context() if self.config.tls else None)
        sock = next(iter(self._server.sockets))
        self.port = sock.getsockname()[1]
        if self.config.grpc_port is not None:
            from .rpc import service as grpc_service       # grpcio is imported only when asked for

            try:
                self._grpc, self.grpc_port = await grpc_service.start(self)
            except BaseException:
                self._server.close()
                await self.pool.stop()
                raise
            log.info("serving gRPC (lipsync.v1.Lipsync) on %s:%d", self.config.host, self.grpc_port)
        scheme = "https" if self.config.tls else "http"
        log.info("serving %s on %s://%s:%d/ (websocket /ws)", ", ".join(self.store.names()), scheme,
                 self.config.host, self.port)
        if not self.config.tls and not is_loopback(self.config.host):
            log.warning("serving plain HTTP on %s: browsers on other machines will not give this page the "
                        "microphone; serve with --certfile/--keyfile (HTTPS)", self.config.host)

    async def stop(self) -> None:
        """Stop accepting, let queued frames go out for up to ``drain_s``, close, release."""
        if self._server is None:
            return
        self._server.close(close_connections=False)      # stop listening; sessions go on
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.config.drain_s
        if self._grpc is not None:                       # gRPC streams get the same drain time
            from .rpc import service as grpc_service

            grpc_stop = asyncio.ensure_future(grpc_service.stop(self._grpc, self.config.drain_s))
        while loop.time() < deadline and any(q.items for q in self._sessions.values()):
            await asyncio.sleep(0.02)
        closers = [asyncio.ensure_future(c.close(1001, "server shutting down")) for c in self._server.connections]
        if closers:
            await asyncio.wait(closers, timeout=0.5)
        for t in list(self._sessions):
            t.cancel()
        if self._sessions:
            await asyncio.wait(list(self._sessions), timeout=0.3)
        self._server = None
        if self._grpc is not None:
            await asyncio.wait({grpc_stop}, timeout=self.config.drain_s + 0.3)
            self._grpc = None
        await self.pool.stop()
        self.store.close()

    def ping_rtts(self) -> list[float]:
        """Keepalive-ping round trips (s) of the open websocket sessions that have had a ping."""
        if self._server is None:
            return []
        return [c.latency for c in list(self._server.connections) if c.latency > 0]

    # ------------------------------------------------------------ HTTP

    def _host_allowed(self, host_header: str) -> bool:
        """Is ``Host`` one of this server's own names? (Refuses DNS-rebinding pages.)

        Loopback binds answer loopback names; a specific address answers itself;
        a wildcard bind (0.0.0.0, ::) any name, since it needs a token anyway.
        Hosts of ``--allow-origin`` pages are allowed too.
        """
        bind = self.config.host.lower()
        if bind in WILDCARD_HOSTS or "*" in self.config.allow_origins:
            return True
        name = _host_name(host_header)
        allowed = {bind} | {_host_name(urlsplit(o).netloc) for o in self.config.allow_origins}
        if is_loopback(bind):
            allowed |= LOOPBACK_NAMES
        return name in allowed

    def _origin_allowed(self, origin: str | None, host_header: str) -> bool:
        """A websocket's ``Origin``: none (not a browser), the server's own page, or an allowed one."""
        if origin is None:
            return True
        origin = origin.strip().lower().rstrip("/")
        allowed = {o.lower().rstrip("/") for o in self.config.allow_origins}
        if "*" in allowed or origin in allowed:
            return True
        host = host_header.strip().lower()
        return bool(host) and origin in (f"http://{host}", f"https://{host}")

    def _authorised(self, request: Request, query: dict) -> bool:
        if not self.config.token:
            return True
        given = (query.get("token") or [""])[0]
        auth = request.headers.get("Authorization", "")
        if auth.startswith("Bearer "):
            given = auth[7:]
        return hmac.compare_digest(given.encode(), self.config.token.encode())

    async def _http(self, conn: ServerConnection, request: Request) -> Response | None:
        for name in SINGLE_HEADERS:
            if (count := len(request.headers.get_all(name))) > 1:
                return _json(400, {"error": f"{count} {name} headers; send one"})
        url = urlsplit(request.path)
        path, query = url.path, parse_qs(url.query)
        if path == "/health":                  # 503 while no package is offered: nothing can be served
            offered = len(self.store.names())
            return _json(200 if offered else 503, {"status": "ok" if offered else "no packages",
                                                   "version": __version__, "packages": offered,
                                                   "refused": self.refused, "sessions": self.metrics.sessions_active})
        host = request.headers.get("Host", "")
        if not self._host_allowed(host):
            self.metrics.count("refused_host")
            return _json(403, {"error": f"Host {host[:100]!r} is not this server's address; open it as "
                                        f"http://{self.config.host}:{self.port}/ or start it with "
                                        "--allow-origin for the page's origin"})
        if not self._authorised(request, query):
            return _json(401, {"error": "missing or wrong token; pass ?token=... or Authorization: Bearer ..."})
        if path == "/ws":
            if "websocket" not in request.headers.get("Upgrade", "").lower():
                return _json(426, {"error": "/ws is the websocket endpoint; connect with a websocket client"})
            origin = request.headers.get("Origin")
            if not self._origin_allowed(origin, host):
                self.metrics.count("refused_origin")
                return _json(403, {"error": f"web page origin {origin[:100]!r} may not use this server; "
                                            "start it with --allow-origin ORIGIN to allow that page"})
            if self.metrics.sessions_active >= self.config.max_sessions:
                return _json(503, {"error": f"server full ({self.config.max_sessions} sessions); retry later"})
            return None
        if path in STATIC:
            name = STATIC[path]
            body = await asyncio.to_thread((WEB_DIR / name).read_bytes)
            ctype = mimetypes.guess_type(name)[0] or "application/octet-stream"
            return _response(200, body, ctype + ("; charset=utf-8" if ctype.startswith("text") else ""))
        if path == "/stats":
            return _json(200, self.metrics.snapshot())
        if path == "/metrics":
            return _response(200, await asyncio.to_thread(render_text, self._registry), CONTENT_TYPE_LATEST)
        if path == "/packages":
            return _json(200, await asyncio.to_thread(self._package_list))
        m = VIDEO_RE.match(path)
        if m:
            return await self._video(m.group(1), request)
        return _json(404, {"error": f"no route {path}; see /packages, /stats, /health, /ws"})

    def _package_list(self) -> list[dict]:
        out = []
        for name in self.store.names():
            try:
                man = read_manifest(self.store.folder(name))
            except KeyError:                   # unloaded since it was listed
                continue
            except Exception as exc:           # a broken package is listed as such, not fatal
                out.append({"name": name, "error": str(exc)})
                continue
            v = man["video"]
            out.append({"name": name, "frames": v["frames"], "fps": v["fps"], "width": v["width"],
                        "height": v["height"], "train_frames": man["split"]["train_frames"],
                        "video": f"/packages/{name}/video"})
        return out

    async def _video(self, name: str, request: Request) -> Response:
        try:
            folder = self.store.folder(name)
        except KeyError:
            return _json(404, {"error": f"no package named {name!r}; see /packages"})
        path = folder / "video.mp4"
        try:
            if not path.resolve(strict=True).is_relative_to(folder.resolve()) or not path.is_file():
                raise OSError
            size = path.stat().st_size
        except OSError:                        # missing, not a file, or a link out of the package
            return _json(404, {"error": f"package {name!r} has no video.mp4 of its own; rebuild it"})
        asked = request.headers.get("Range")
        if asked is None:
            if size > MAX_RANGE_BYTES:         # never a whole long video in memory for one request
                return _json(400, {"error": f"video.mp4 of {name!r} is {size / 1e6:.1f} MB: ask for it in parts of "
                                            f"at most {MAX_RANGE_BYTES >> 20} MB with a Range header "
                                            f"(curl -r 0-{MAX_RANGE_BYTES - 1} URL); players and the page do"})
            data = await asyncio.to_thread(_read_range, path, 0, size)
            return _response(200, data, "video/mp4", [("Accept-Ranges", "bytes")])
        rng = RANGE_RE.match(asked.strip())
        if not rng or not (rng.group(1) or rng.group(2)):     # several ranges, other units, nonsense
            return _response(416, b"", "video/mp4", [("Content-Range", f"bytes */{size}")])
        if rng.group(1):
            start = int(rng.group(1))
            end = min(int(rng.group(2)), size - 1) if rng.group(2) else size - 1
        else:                                   # bytes=-N: the last N bytes
            start, end = max(size - int(rng.group(2)), 0), size - 1
        if start >= size or start > end:
            return _response(416, b"", "video/mp4", [("Content-Range", f"bytes */{size}")])
        end = min(end, start + MAX_RANGE_BYTES - 1)     # a shorter part is a valid answer; players ask again
        data = await asyncio.to_thread(_read_range, path, start, end + 1 - start)
        return _response(206, data, "video/mp4",
                         [("Accept-Ranges", "bytes"), ("Content-Range", f"bytes {start}-{end}/{size}")])

    # ------------------------------------------------------------ websocket

    async def _connection(self, ws: ServerConnection) -> None:
        task = asyncio.current_task()
        queue = OutQueue(self.config.queue_frames, self.metrics, self.config.queue_replies)
        self._sessions[task] = queue
        session = Session(self.store, self.metrics)
        max_size = self.config.max_message_bytes

        async def receive():
            try:
                data = await ws.recv()
            except ConnectionClosed:
                raise Closed from None
            return _decode(data, max_size)

        async def write(data):
            try:
                await ws.send(data)
            except ConnectionClosed:
                raise Closed from None

        try:
            end = await run_connection(session, "websocket", str(ws.remote_address), queue, receive, write,
                                       lambda reply: encode_as(reply, session.encoding), self.pool, self.config)
            if end == "unread":
                await _close(ws, CLOSE_UNREAD, f"{self.config.queue_replies} replies unread; read what the server sends")
            elif end == "idle":
                await _close(ws, CLOSE_IDLE, f"no message for {self.config.idle_timeout_s:g} s")
        except ConnectionClosed:
            pass
        finally:
            self._sessions.pop(task, None)


def check_packages(store: PackageStore, refused: dict | None = None) -> list[str]:
    """Open every package now (cheap checks, no hashing), so that a broken one shows at start, not mid-session.

    A single package that cannot serve raises its PackageError; in a folder of
    packages, broken ones are left out with one warning line each (and their
    reason put in ``refused``). Returns the servable names.
    """
    good = []
    for name in store.names():
        try:
            package = store.get(name)
            check_servable(package)
            for_package(package)            # the mouth-shape model (fitted now for format 1.0 packages)
        except LipsyncError as exc:
            if store.single:
                raise
            reason = " ".join(str(exc).split())
            log.warning("leaving out %s: %s", name, reason)
            if refused is not None:
                refused[name] = reason
            store.leave_out(name)
            continue
        good.append(name)
    if not good:
        raise PackageError(f"{store.path}: none of its packages can be served: "
                           + "; ".join(f"{n}: {r}" for n, r in (refused or {}).items())[:900])
    return good


async def serve_until_signal(server: LipsyncServer, ready=None) -> None:
    """Start ``server``, run until SIGTERM or SIGINT, then drain and stop (within about 2 s)."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):          # before start: a signal right after "ready" drains too
        loop.add_signal_handler(sig, stop.set)
    await server.start()
    if ready is not None:
        ready(server)
    await stop.wait()
    log.info("signal received: draining")
    await asyncio.wait_for(server.stop(), timeout=1.8)


def serve(path, options: ServeOptions = ServeOptions(), ready=None) -> None:
    """Serve the package (or folder of packages) at ``path`` until SIGTERM or SIGINT.

    Checks everything before listening: the options (InputError naming the
    option), the folder (InputError) and each package (:func:`check_packages`).
    Raises OSError when the port cannot be bound. ``ready(server)`` is called
    once it listens (``server.port``, ``server.store.names()``).
    """
    options.check()
    store = PackageStore(path)
    server = LipsyncServer(store, options)
    server.check()
    asyncio.run(serve_until_signal(server, ready))
