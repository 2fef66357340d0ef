"""``lipsync-serve PATH``: serve one package, or every package in a folder.

argparse rather than click keeps the runtime's dependencies to numpy, opencv,
torch and websockets. Every option can also come from an environment variable
LIPSYNC_SERVE_<OPTION> (e.g. LIPSYNC_SERVE_PORT=9000).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys

from . import __version__
from .errors import LipsyncError
from .generators import parse_chain
from .server import ServerConfig, serve_until_signal
from .package import Package
from .store import PackageStore, check_servable

ENV_PREFIX = "LIPSYNC_SERVE_"


def _env(name: str, default, cast=str):
    raw = os.environ.get(ENV_PREFIX + name.upper())
    if raw is None:
        return default
    try:
        return cast(raw)
    except ValueError:
        raise SystemExit(f"error: {ENV_PREFIX + name.upper()}={raw!r} is not a valid {cast.__name__}")


def parser() -> argparse.ArgumentParser:
    d = ServerConfig()
    p = argparse.ArgumentParser(
        prog="lipsync-serve", formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        description="Serve lip-synced face frames over a websocket, with a browser client at /.")
    p.add_argument("path", help="a package folder (models/anchor) or a folder of packages (models/)")
    p.add_argument("--host", default=_env("host", d.host), help="address to bind; non-loopback needs --token")
    p.add_argument("--port", type=int, default=_env("port", d.port, int), help="TCP port (0: any free port)")
    p.add_argument("--token", default=_env("token", None), help="shared secret clients pass as ?token=")
    p.add_argument("--generator", default=_env("generator", "auto"),
                   help="fallback chain, first choice first, e.g. retrieval,static")
    p.add_argument("--queue", type=int, default=_env("queue", d.queue_frames, int),
                   help="frames queued per session before the oldest is dropped")
    p.add_argument("--workers", type=int, default=_env("workers", d.workers, int), help="render threads")
    p.add_argument("--max-sessions", type=int, default=_env("max_sessions", d.max_sessions, int),
                   help="concurrent websocket sessions")
    p.add_argument("--jpeg-quality", type=int, default=_env("jpeg_quality", d.jpeg_quality, int),
                   help="JPEG quality of the frames, 1-100")
    p.add_argument("--compile", action="store_true", default=_env("compile", "") == "1",
                   help="torch.compile the neural tier (about 1.35x faster frames, ~30 s longer start)")
    p.add_argument("--log-level", default=_env("log_level", "info"),
                   choices=["debug", "info", "warning", "error"], help="logging verbosity")
    p.add_argument("--version", action="version", version=f"lipsync-serve {__version__}")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("websockets").setLevel(logging.WARNING)
    if args.compile:
        os.environ["LIPSYNC_TORCH_COMPILE"] = "1"          # read by the neural tier in each render process
    try:
        if not 1 <= args.jpeg_quality <= 100:
            raise LipsyncError(f"--jpeg-quality {args.jpeg_quality}: expected 1 ... 100")
        config = ServerConfig(host=args.host, port=args.port, token=args.token,
                              chain=None if args.generator == "auto" else args.generator,
                              queue_frames=max(1, args.queue), workers=max(1, args.workers),
                              max_sessions=max(1, args.max_sessions), jpeg_quality=args.jpeg_quality)
        config.check()
        parse_chain(config.chain)
        store = PackageStore(args.path, chain=config.chain, jpeg_quality=config.jpeg_quality)
        for name in store.names():       # open each now: a broken package shows here, not mid-session
            try:
                check_servable(Package.open(store.folder(name)))
            except LipsyncError as exc:
                if store.single:
                    raise
                logging.getLogger("lipsync.server").warning("skipping %s: %s", name, exc)

        def ready(server):
            print(f"lipsync-serve {__version__}: {', '.join(store.names())} on "
                  f"http://{config.host}:{server.port}/  (websocket ws://{config.host}:{server.port}/ws)",
                  flush=True)

        asyncio.run(serve_until_signal(store, config, ready))
    except LipsyncError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    except OSError as exc:
        print(f"error: cannot listen on {args.host}:{args.port}: {exc.strerror or exc}; "
              "pick another --port or stop the other server", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
