"""``lipsync-pack``: build, inspect and verify model packages.

A thin shell: each command parses options and calls the same function the
Python API exposes (:func:`toolkit.build.build_package`,
:func:`runtime.package.verify`). Expected failures print one line,
``error: ...``, and exit with the error's code (see :mod:`runtime.errors`).
Options follow :mod:`runtime.cliutil`; each can also be set from the
environment as ``LIPSYNC_PACK_<COMMAND>_<OPTION>``, e.g. ``LIPSYNC_PACK_BUILD_FPS=25``.
"""

from __future__ import annotations

import json
import signal
import sys
from pathlib import Path

import click

from runtime import cliutil
from runtime.errors import LipsyncError
from runtime.package import Package, verify

from . import faces


def _fail(exc: LipsyncError) -> None:
    click.echo(f"error: {exc}", err=True)
    sys.exit(exc.exit_code)


class Terminated(Exception):
    """SIGTERM arrived; raised so the writer's cleanup runs before the exit."""


def _sigterm(signum, frame):
    raise Terminated()


class _Group(click.Group):
    """Adds ``train`` on demand: it imports torch, which the other commands do not need."""

    def list_commands(self, ctx):
        return sorted([*super().list_commands(ctx), "train"])

    def get_command(self, ctx, name):
        if name == "train":
            try:
                from .train.loop import main as train_main
            except ModuleNotFoundError as exc:
                return _unavailable("train", exc, "train")
            return cliutil.show_envvars(train_main)
        return super().get_command(ctx, name)


def _unavailable(name: str, exc: ModuleNotFoundError, extra: str) -> click.Command:
    """A stand-in for a command whose extra is not installed: listed in --help, fails in one line."""
    if cliutil.missing_extra(exc, extra) is None:
        raise exc
    return click.Command(name, callback=lambda: cliutil.exit_missing_extra(exc, extra), add_help_option=False,
                         help=f"(not installed: pip install 'lipsync-toolkit[{extra}]')",
                         context_settings={"ignore_unknown_options": True, "allow_extra_args": True})


@click.group(cls=_Group, context_settings=cliutil.context_settings("LIPSYNC_PACK"))
@cliutil.version_option("lipsync-pack")
def main():
    """Turn speaker videos into lip-sync model packages, and check them."""
    signal.signal(signal.SIGTERM, _sigterm)


@main.command()
@click.argument("video", type=click.Path(path_type=Path))
@click.option("-o", "--out", type=click.Path(path_type=Path), default=None,
              help="Package folder to create; its name is the package name.  [default: models/<video name>]")
@click.option("--fps", type=float, default=25.0, show_default=True, help="Package frame rate, 1-120 (25 to serve).")
@click.option("--crop-size", type=int, default=328, show_default=True, help="Side of the square face crops, px (320-1024).")
@click.option("--holdout", type=float, default=0.15, show_default=True,
              help="Trailing fraction of frames kept out of generators and training.")
@click.option("--landmarks", type=click.Choice(faces.CHOICES), default="auto", show_default=True,
              help="Landmark backend; auto takes face-alignment when its weights are on disk, else dlib.")
@click.option("--device", default="cpu", show_default=True, help="Torch device for face-alignment (cpu, cuda).")
@click.option("--audio", type=click.Path(path_type=Path), default=None,
              help="Take the speech from this file instead of the video's own audio.")
@click.option("--force", is_flag=True, help="Replace an existing package.")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
@cliutil.logging_options("No progress bars or summary.")
def build(video, out, fps, crop_size, holdout, landmarks, device, audio, force, as_json, quiet, log_level):
    """Build a package from VIDEO: landmarks, crops, audio features, preview."""
    try:
        from .build import BuildConfig, build_package
    except ModuleNotFoundError as exc:
        cliutil.exit_missing_extra(exc, "build")

    cliutil.setup_logging(log_level, quiet)
    out = out or Path("models") / video.stem
    notes: list[str] = []          # printed after a successful build, so a failure prints one line
    try:
        cfg = BuildConfig(fps=fps, crop_size=crop_size, holdout=holdout, landmarks=landmarks, device=device)
        result = build_package(video, out, cfg, audio=audio, force=force,
                               progress=not quiet and not as_json and sys.stderr.isatty(), log=notes.append)
    except LipsyncError as exc:
        _fail(exc)
    except (KeyboardInterrupt, Terminated) as exc:
        click.echo("error: interrupted; no package was written", err=True)
        sys.exit(143 if isinstance(exc, Terminated) else 130)
    if not quiet and not as_json:
        for note in notes:
            click.echo(note, err=True)
    if as_json:
        click.echo(json.dumps(result.summary(), indent=2))
    elif not quiet:
        click.echo(_format_summary(result.summary()))


def _format_summary(s: dict) -> str:
    lost = ", ".join(f"{a}-{b - 1}" for a, b in s["lost_ranges"]) or "none"
    stages = "  ".join(f"{k} {v:.2f}s" for k, v in s["seconds"].items())
    lines = [
        f"built      {s['package']}",
        f"frames     {s['frames']} at {s['fps']:g} fps: {s['measured']} measured, {s['interpolated']} interpolated,"
        f" {s['lost']} lost (lost frames: {lost})",
        f"jitter     crop centre {s['jitter_px']['raw']:.2f} px RMS raw -> {s['jitter_px']['smoothed']:.2f} px smoothed",
        f"landmarks  {s['landmarks']}",
        f"mouth      shape model: cross-validated opening r {s['mouth']['cv_opening_r']:.2f} on"
        f" {s['mouth']['frames']} frames in {s['mouth']['seconds']:.2f} s",
        f"time       {sum(s['seconds'].values()):.2f}s total: {stages}",
    ]
    lines += [f"note       {n}" for n in s["notes"]]
    return "\n".join(lines)


def describe(pkg: Package) -> dict:
    """What ``inspect`` shows, as a dict."""
    m = pkg.manifest
    q, v, split = m["quality"], m["video"], m["split"]
    return {
        "package": str(pkg.root), "name": m["name"], "format": f"{m['format']} {m['format_version']}",
        "created": m["created"], "tool": f"{m['tool']['name']} {m['tool']['version']}",
        "source": m["source"], "frames": v["frames"], "fps": v["fps"], "duration_s": v["duration_s"],
        "frame_size": [v["width"], v["height"]], "train_frames": split["train_frames"],
        "holdout_frames": split["holdout_frames"], "crop": m["crop"],
        "landmarks": m["landmarks"], "measured": q["measured"], "interpolated": q["interpolated"],
        "lost": q["lost"], "lost_ranges": q["lost_ranges"], "interpolated_ranges": q["interpolated_ranges"],
        "jitter_px": q["jitter_px"], "face_size_px": q["face_size_px"], "notes": q["notes"],
        "mel_frames": pkg.mel.shape[0], "build_seconds": m["build"]["seconds"],
        "mouth": m.get("extra", {}).get("mouth"),
        "files": {k: {kk: e[kk] for kk in ("bytes", "dtype", "shape", "media_type") if kk in e}
                  for k, e in m["files"].items()},
    }


def _format_description(d: dict) -> str:
    src, crop, lmk = d["source"], d["crop"], d["landmarks"]
    ranges = lambda rs: ", ".join(f"{a}-{b - 1}" for a, b in rs) or "none"
    lines = [
        f"package    {d['package']} ({d['format']}, built {d['created']} by {d['tool']})",
        f"source     {src['file']} ({src['width']}x{src['height']}, {src['duration_s']:.2f} s, {src['fps']:.3g} fps,"
        f" rotation {src['rotation']})",
        f"frames     {d['frames']} at {d['fps']:g} fps ({d['duration_s']:.2f} s); train {ranges([d['train_frames']])},"
        f" held out {ranges([d['holdout_frames']])}",
        f"faces      {d['measured']} measured, {d['interpolated']} interpolated, {d['lost']} lost;"
        f" face about {d['face_size_px']:.0f} px",
        f"lost       {ranges(d['lost_ranges'])}",
        f"jitter     crop centre {d['jitter_px']['raw']:.2f} px RMS raw -> {d['jitter_px']['smoothed']:.2f} px smoothed",
        f"crop       {crop['size']} px (inner {crop['inner']}), mouth region {crop['mouth_region']}",
        f"landmarks  {lmk['backend']} {lmk['backend_version']} ({lmk['model']})",
        f"audio      {d['mel_frames']} mel frames (80 per second)",
    ]
    mouth = d.get("mouth")
    lines.append(f"mouth      shape model on {mouth['frames']} frames: cross-validated opening r {mouth['cv_opening_r']:.2f}"
                 f"{' (weak: retrieval will follow the audio loosely)' if mouth['cv_opening_r'] < 0.3 else ''};"
                 f" resting mouth from frame {mouth['rest_frame']}" if mouth else
                 "mouth      no mouth-shape model (format 1.0): `lipsync-pack train PACKAGE --mouth-only` adds one")
    for name, e in d["files"].items():
        kind = f"{e['dtype']}{e['shape']}" if "dtype" in e else e["media_type"]
        lines.append(f"file       {name:<16} {e['bytes'] / 1e6:9.2f} MB  {kind}")
    lines += [f"note       {n}" for n in d["notes"]]
    return "\n".join(lines)


@main.command()
@click.argument("package", type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
@cliutil.logging_options("Log warnings and errors only.")
def inspect(package, as_json, quiet, log_level):
    """Show what is inside PACKAGE: frames, lost frames, jitter, files."""
    cliutil.setup_logging(log_level, quiet)
    try:
        d = describe(Package.open(package))
    except LipsyncError as exc:
        _fail(exc)
    click.echo(json.dumps(d, indent=2) if as_json else _format_description(d))


@main.command("verify")
@click.argument("package", type=click.Path(path_type=Path))
@cliutil.logging_options("Print nothing on success.")
def verify_cmd(package, quiet, log_level):
    """Check every file of PACKAGE against its manifest's sha256; exit non-zero naming the bad file."""
    cliutil.setup_logging(log_level, quiet)
    try:
        checked = verify(package)
    except LipsyncError as exc:
        _fail(exc)
    if not quiet:
        click.echo(f"ok: {package}: {len(checked)} files match the manifest")


cliutil.show_envvars(main)

if __name__ == "__main__":
    main(prog_name="lipsync-pack")
