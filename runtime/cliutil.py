"""The command-line convention of ``lipsync-serve``, ``lipsync-pack`` and ``lipsync-eval``.

Every command takes ``-q/--quiet``, ``--log-level`` and ``--version``, and reads
each option from an environment variable under its prefix, which ``--help``
shows beside the option: ``LIPSYNC_SERVE_PORT``, ``LIPSYNC_PACK_BUILD_FPS``,
``LIPSYNC_EVAL_GENERATOR``. ``--quiet`` drops progress bars, summaries and
log records below warning; what is left is errors, warnings and the one line a
script needs (the server's address, the report folder).

It lives in the runtime, importing only click and the standard library, so
``lipsync-serve`` can use it without the toolkit; the toolkit's commands import
it from here.
"""

from __future__ import annotations

import logging
import sys
from typing import NoReturn

import click

LOG_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def context_settings(prefix: str) -> dict:
    """click ``context_settings`` for a top-level command: ``-h/--help`` and the ``prefix_*`` variables."""
    return {"auto_envvar_prefix": prefix, "help_option_names": ["-h", "--help"]}


def show_envvars(command: click.Command) -> click.Command:
    """Make ``--help`` name each option's environment variable, in ``command`` and its subcommands.

    Subcommands that a group loads on demand are not reached here; pass them
    through this function when the group loads them.
    """
    for param in command.params:
        if isinstance(param, click.Option) and param.allow_from_autoenv:
            param.show_envvar = True
    for sub in getattr(command, "commands", {}).values():
        show_envvars(sub)
    return command


def version_option(prog_name: str):
    """``--version``: print ``PROG VERSION`` and exit (never read from the environment)."""
    from . import __version__

    return click.version_option(__version__, "--version", prog_name=prog_name, message="%(prog)s %(version)s",
                                allow_from_autoenv=False)


def logging_options(quiet_help: str):
    """``-q/--quiet`` (described by ``quiet_help``) and ``--log-level``; the command receives
    ``quiet`` and ``log_level`` and passes them to :func:`setup_logging`."""

    def decorate(f):
        f = click.option("--log-level", type=click.Choice(list(LOG_LEVELS)), default="info", show_default=True,
                         help="Lowest level of log records printed to stderr.")(f)
        return click.option("-q", "--quiet", is_flag=True, help=quiet_help)(f)

    return decorate


def missing_extra(exc: ImportError, extra: str) -> str | None:
    """The one-line message for a command whose optional dependencies are not installed.

    None when ``exc`` is not a missing third-party module (a bug in this project, to be
    shown in full).
    """
    module = (exc.name or "").split(".")[0]
    if not isinstance(exc, ModuleNotFoundError) or not module or module in ("runtime", "toolkit"):
        return None
    return f"{module} is not installed; this command needs pip install 'lipsync-toolkit[{extra}]'"


def exit_missing_extra(exc: ImportError, extra: str) -> NoReturn:
    """Print :func:`missing_extra`'s ``error:`` line and exit 1; re-raise ``exc`` where it has none."""
    message = missing_extra(exc, extra)
    if message is None:
        raise exc
    click.echo(f"error: {message}", err=True)
    sys.exit(1)


def setup_logging(level: str = "info", quiet: bool = False) -> None:
    """Send log records of ``level`` and above (warning and above when ``quiet``) to stderr.

    websockets' own records stay at warning and above: at info it logs every connection.
    """
    threshold = max(LOG_LEVELS[level], logging.WARNING) if quiet else LOG_LEVELS[level]
    logging.basicConfig(format=LOG_FORMAT)        # a no-op where a handler exists (tests, embedders)
    logging.getLogger().setLevel(threshold)
    logging.getLogger("websockets").setLevel(max(threshold, logging.WARNING))
