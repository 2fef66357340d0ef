"""``lipsync-serve PATH``: serve one package, or every package in a folder.

A thin shell over :func:`runtime.server.serve`: it turns the options into a
:class:`runtime.options.ServeOptions` and maps what ``serve`` raises to one
``error: ...`` line and an exit code. Options follow :mod:`runtime.cliutil`;
each can come from the environment as ``LIPSYNC_SERVE_<OPTION>``
(``LIPSYNC_SERVE_PORT=9000``, ``LIPSYNC_SERVE_TOKEN=...``).
"""

from __future__ import annotations

import sys

import click

from . import __version__, cliutil
from .errors import LipsyncError
from .options import RenderOptions, ServeOptions

_SERVE = ServeOptions()
_RENDER = RenderOptions()


@click.command(context_settings=cliutil.context_settings("LIPSYNC_SERVE"))
@click.argument("path", type=click.Path())
@click.option("--host", default=_SERVE.host, show_default=True,
              help="Address to bind; one reachable from other machines needs --token.")
@click.option("--port", type=int, default=_SERVE.port, show_default=True, help="TCP port; 0 takes any free port.")
@click.option("--token", default=None, help="Shared secret that clients pass as ?token=.")
@click.option("--generator", default="auto", show_default=True,
              help="Generator fallback chain, first choice first, e.g. retrieval,static; auto: the default chain.")
@click.option("--device", default="auto", show_default=True,
              help="Torch device of the neural generator (cpu, cuda, cuda:1); auto: cuda if present, else cpu.")
@click.option("--threads", type=int, default=1, show_default=True,
              help="Torch (and OpenMP, BLAS, OpenCV) threads in each render process.")
@click.option("--compile", is_flag=True,
              help="torch.compile the neural generator (about 1.35x faster frames on CPU, ~30 s longer start).")
@click.option("--workers", type=int, default=None, show_default="usable cores / --threads",
              help="Render processes (not threads).")
@click.option("--max-sessions", type=int, default=_SERVE.max_sessions, show_default=True,
              help="Concurrent sessions, websocket and gRPC together.")
@click.option("--queue", type=int, default=_SERVE.queue_frames, show_default=True,
              help="Frames queued per session before the oldest is dropped.")
@click.option("--jpeg-quality", type=int, default=_RENDER.jpeg_quality, show_default=True,
              help="JPEG quality of the frames, 1-100.")
@click.option("--idle-timeout", type=float, default=_SERVE.idle_timeout_s, show_default=True,
              help="Seconds without a message after which a session is closed (code 4001).")
@click.option("--allow-origin", "allow_origins", multiple=True, metavar="ORIGIN",
              help="A web page origin (https://app.example.com) allowed to connect besides the server's own "
                   "page; repeat for more, * for any. Env: space-separated.")
@click.option("--certfile", type=click.Path(), default=None,
              help="PEM certificate: serve HTTPS and WSS (browsers on other machines need it for the microphone).")
@click.option("--keyfile", type=click.Path(), default=None, help="PEM private key of --certfile.")
@click.option("--grpc-port", type=int, default=None,
              help="Also serve gRPC (docs/lipsync.proto) on this port, same host, token and TLS; 0: any free port.")
@cliutil.logging_options("Log warnings and errors only; the address line is still printed.")
@cliutil.version_option("lipsync-serve")
def main(path, host, port, token, generator, device, threads, compile, workers, max_sessions, queue, jpeg_quality,
         idle_timeout, allow_origins, certfile, keyfile, grpc_port, quiet, log_level):
    """Serve lip-synced face frames over a websocket (and gRPC), with a browser client at /.

    PATH is a package folder (models/anchor) or a folder of packages (models/).
    """
    from .server import serve

    cliutil.setup_logging(log_level, quiet)
    render = RenderOptions(chain=None if generator == "auto" else generator, jpeg_quality=jpeg_quality,
                           device=None if device == "auto" else device, threads=threads, compile=compile)
    options = ServeOptions(host=host, port=port, token=token, workers=workers, max_sessions=max_sessions,
                           queue_frames=queue, idle_timeout_s=idle_timeout, allow_origins=tuple(allow_origins),
                           certfile=certfile, keyfile=keyfile, grpc_port=grpc_port, render=render)

    def host_port(p: int) -> str:
        return f"[{host}]:{p}" if ":" in host else f"{host}:{p}"

    def ready(server):
        where = host_port(server.port)
        click.echo(f"lipsync-serve {__version__}: {', '.join(server.store.names())} on "
                   f"{'https' if options.tls else 'http'}://{where}/  "
                   f"(websocket {'wss' if options.tls else 'ws'}://{where}/ws"
                   + (f", gRPC {host_port(server.grpc_port)}" if server.grpc_port else "") + ")")

    try:
        serve(path, options, ready=ready)
    except LipsyncError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(exc.exit_code)
    except OSError as exc:
        click.echo(f"error: cannot listen on {host}:{port}: {exc.strerror or exc}; "
                   "pick another --port or stop the other server", err=True)
        sys.exit(1)
    except KeyboardInterrupt:
        sys.exit(130)


cliutil.show_envvars(main)

if __name__ == "__main__":
    main(prog_name="lipsync-serve")
