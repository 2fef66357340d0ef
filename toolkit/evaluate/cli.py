"""``lipsync-eval PACKAGE``: latency and lip-sync quality, written to a report folder.

A thin shell over :func:`toolkit.evaluate.run.evaluate`. Expected failures
print one ``error:`` line and exit non-zero. Options follow
:mod:`runtime.cliutil`; each can come from the environment as
``LIPSYNC_EVAL_<OPTION>`` (``LIPSYNC_EVAL_GENERATOR=static,retrieval``).
"""

from __future__ import annotations

import signal
import sys
from pathlib import Path

import click

from runtime import cliutil
from runtime.errors import InputError, LipsyncError


class Terminated(Exception):
    """SIGTERM arrived; raised so the partial report folder is removed."""


def _sigterm(signum, frame):
    raise Terminated()


@click.command(context_settings=cliutil.context_settings("LIPSYNC_EVAL"))
@click.argument("package", type=click.Path(path_type=Path))
@click.option("--audio", type=click.Path(path_type=Path), default=None,
              help="Speech to drive the face (any format ffmpeg reads).")
@click.option("--holdout", is_flag=True,
              help="Self-reenactment: drive with the package's held-out audio, compare with its held-out frames.")
@click.option("--reference", type=click.Path(path_type=Path), default=None,
              help="A real video of the speaker: driven by its own audio, its frames are the reference.")
@click.option("--generator", default="retrieval", show_default=True,
              help="Generators to compare, comma-separated (static, retrieval, neural).")
@click.option("--server", default=None, help="Evaluate a running lipsync-serve instead: ws://127.0.0.1:8765/ws, or its gRPC port "
                   "grpc://127.0.0.1:50051 (grpcs:// with TLS; ?token=T either way).")
@click.option("--syncnet-weights", type=click.Path(path_type=Path), default=None,
              help="syncnet_v2.model (from syncnet_python) for LSE-D and LSE-C; skipped without it.")
@click.option("-o", "--out", type=click.Path(path_type=Path), default=Path("reports"), show_default=True,
              help="Folder that receives <package>-<time>/.")
@cliutil.logging_options("No progress bars; print only the report folder.")
@cliutil.version_option("lipsync-eval")
def main(package, audio, holdout, reference, generator, server, syncnet_weights, out, quiet, log_level):
    """Evaluate PACKAGE: per-stage latency, quality measures, an output video and an HTML report."""
    try:
        from .run import EvalConfig, evaluate
        from .report import footage_line, format_ci, format_offset
    except ModuleNotFoundError as exc:
        cliutil.exit_missing_extra(exc, "eval")

    cliutil.setup_logging(log_level, quiet)
    signal.signal(signal.SIGTERM, _sigterm)
    try:
        names = tuple(g.strip() for g in generator.split(",") if g.strip())
        if not names:
            raise InputError("--generator is empty; give e.g. static,retrieval")
        config = EvalConfig(generators=names, holdout=holdout, server=server,
                            reference=str(reference) if reference else None,
                            syncnet_weights=str(syncnet_weights) if syncnet_weights else None,
                            out_dir=str(out), progress=not quiet)
        result = evaluate(package, audio, config)
    except LipsyncError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(exc.exit_code)
    except Terminated:
        click.echo("error: terminated; no report written", err=True)
        sys.exit(143)
    except KeyboardInterrupt:
        click.echo("error: interrupted; no report written", err=True)
        sys.exit(130)
    if quiet:
        click.echo(str(result.path))
        return
    r = result.report
    click.echo(f"report     {result.path}/report.html")
    for name, g in r["generators"].items():
        q = g["quality"]
        lat = g.get("latency_ms") or {}
        line = (f"{name:<10} frames {g['frames']}  server p50/p95 {lat.get('p50', '-')}/{lat.get('p95', '-')} ms"
                f"  sync {format_offset(q['sync_offset'])}")
        if "lmd_px" in q:
            line += (f"  opening corr {format_ci(q['opening_correlation'], q['opening_correlation_ci95'])}"
                     f"  LMD {format_ci(q['lmd_px'], q['lmd_px_ci95'])} px")
        if "articulation" in q:
            line += f"  articulation {q['articulation']['std_ratio']['value']}"
        if "silence" in q:
            line += f"  open in silence {q['silence']['digital']}/{q['silence']['room_noise']}"
        click.echo(line)
    for c in r.get("comparisons", []):
        click.echo(f"{c['metric']:<20} {c['a']} - {c['b']}: {format_ci(c['difference'], c['ci95'])}  {c['verdict']}")
    if r.get("footage"):
        click.echo(f"footage    mouth model on the held-out tail: {footage_line(r['footage'])}")
    click.echo(f"time       {result.seconds:.1f}s")


cliutil.show_envvars(main)

if __name__ == "__main__":
    main(prog_name="lipsync-eval")
