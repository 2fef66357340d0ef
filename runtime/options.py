"""How a server runs: one frozen object from the CLI (or an embedder) down to each generator.

``ServeOptions`` is what :func:`runtime.server.serve` takes. Its ``render`` part,
``RenderOptions``, travels to every render process and from there through the
generator chain to each tier (``Tier(package, render_options)``), so nothing
is passed through environment variables.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field

from .errors import InputError
from .jpeg import QUALITY
from .protocol import MAX_MESSAGE_BYTES


_ORIGIN_RE = re.compile(r"^https?://[^/\s]+$")


@dataclass(frozen=True)
class RenderOptions:
    """What a render process needs to render: the chain and how each tier runs."""

    chain: str | None = None         # generator order, first choice first, e.g. "retrieval,static"; None = default
    jpeg_quality: int = QUALITY      # 1-100
    device: str | None = None        # torch device of the neural tier ("cpu", "cuda", "cuda:1"); None = cuda if present
    threads: int | None = None       # torch threads of the neural tier; None: 1 in each render process
                                     # (runtime/threads.py), torch's own choice in-process
    compile: bool = False            # torch.compile the neural tier (1.35x faster frames on CPU, ~30 s longer start)

    def check(self) -> None:
        if not 1 <= self.jpeg_quality <= 100:
            raise InputError(f"--jpeg-quality {self.jpeg_quality}: expected 1 ... 100")
        if self.threads is not None and self.threads < 1:
            raise InputError(f"--threads {self.threads}: expected 1 or more")
        from .generators import parse_chain

        parse_chain(self.chain)


@dataclass(frozen=True)
class ServeOptions:
    """How ``lipsync-serve`` runs; every field has the CLI's default."""

    host: str = "127.0.0.1"                  # loopback unless asked otherwise
    port: int = 8765                         # 0 = any free port
    token: str | None = None                 # shared secret; required for non-loopback hosts
    workers: int | None = None               # render processes; None: one per usable core per thread
    max_sessions: int = 64                   # concurrent websocket sessions
    queue_frames: int = 32                   # per-session outgoing frames before the oldest is dropped
    flush_ms: int = 120                      # answer look-ahead-pending chunks after this much quiet
    max_message_bytes: int = MAX_MESSAGE_BYTES
    drain_s: float = 1.0                     # SIGTERM: time to send queued frames before closing
    idle_timeout_s: float = 60.0             # a session that sends nothing for this long is closed (4001)
    queue_replies: int = 256                 # per-session unsent control replies before the session is closed (4002)
    allow_origins: tuple[str, ...] = ()      # web page origins allowed besides the server's own ("*": any)
    certfile: str | None = None              # PEM certificate (chain): serve HTTPS and WSS
    keyfile: str | None = None               # its PEM private key (None: the key is in certfile)
    grpc_port: int | None = None             # also serve gRPC (docs/lipsync.proto) on this port; 0 = any free
    render: RenderOptions = field(default_factory=RenderOptions)

    def check(self) -> None:
        """InputError, naming the option, for a value the server cannot run with."""
        if not is_loopback(self.host) and not self.token:
            raise InputError(f"--host {self.host} is reachable from other machines; set --token SECRET "
                             "(clients then pass ?token=SECRET), or bind 127.0.0.1")
        if not 0 <= self.port <= 65535:
            raise InputError(f"--port {self.port} is not a TCP port; expected 0 ... 65535")
        if self.grpc_port is not None and not 0 <= self.grpc_port <= 65535:
            raise InputError(f"--grpc-port {self.grpc_port} is not a TCP port; expected 0 ... 65535")
        if self.grpc_port and self.grpc_port == self.port:
            raise InputError(f"--grpc-port {self.grpc_port} is --port too; give gRPC a port of its own")
        if self.keyfile and not self.certfile:
            raise InputError("--keyfile needs --certfile (the certificate to serve with that key)")
        if self.certfile:
            self.ssl_context()
        if not self.idle_timeout_s > 0:
            raise InputError(f"--idle-timeout {self.idle_timeout_s}: expected seconds > 0")
        for origin in self.allow_origins:
            if origin != "*" and not _ORIGIN_RE.match(origin):
                raise InputError(f"--allow-origin {origin!r}: expected scheme://host[:port] "
                                 "(e.g. https://app.example.com), or * for any page")
        for name in ("workers", "max_sessions", "queue_frames", "queue_replies", "flush_ms"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise InputError(f"--{name.replace('_', '-')} {getattr(self, name)}: expected 1 or more")
        self.render.check()


    @property
    def tls(self) -> bool:
        return self.certfile is not None

    def ssl_context(self):
        """The server's TLS context from certfile/keyfile; InputError naming the file if it cannot load."""
        import ssl

        from pathlib import Path

        for flag, path in (("--certfile", self.certfile), ("--keyfile", self.keyfile)):
            if path is not None and not Path(path).is_file():
                raise InputError(f"{flag} {path}: no such file")
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        try:
            ctx.load_cert_chain(self.certfile, self.keyfile)
        except (ssl.SSLError, OSError) as exc:
            raise InputError(f"--certfile {self.certfile}" + (f" --keyfile {self.keyfile}" if self.keyfile else "")
                             + f": cannot load a certificate and key ({exc}); give PEM files, e.g. made with the "
                             "openssl line in docs/serving.md") from None
        return ctx


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
