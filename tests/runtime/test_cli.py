"""lipsync-serve's command line: flag parsing through click's CliRunner, and a real server
started as ``python -m runtime`` with the toolkit's heavy modules made unimportable."""

from __future__ import annotations

import asyncio
import logging
import os
import re
import select
import signal
import subprocess
import sys
import time
from types import SimpleNamespace

import pytest
from click.testing import CliRunner

from runtime import __version__
from runtime.cli import main
from runtime.client import Client, decode_jpeg
from runtime.errors import InputError, PackageError
from runtime.options import RenderOptions, ServeOptions
from tests.conftest import ROOT

READY_RE = re.compile(r"^lipsync-serve \S+: .* on http://127\.0\.0\.1:(\d+)/")


pytestmark = pytest.mark.usefixtures("restore_log_levels")   # the commands set the root logger's level


@pytest.fixture
def calls(monkeypatch):
    """Replace runtime.server.serve; each call's (path, options, ready) is appended to the list."""
    seen = []

    def fake_serve(path, options=ServeOptions(), ready=None):
        seen.append(SimpleNamespace(path=path, options=options, ready=ready, level=logging.getLogger().level))

    monkeypatch.setattr("runtime.server.serve", fake_serve)
    return seen


def test_version():
    result = CliRunner().invoke(main, ["--version"])
    assert result.exit_code == 0 and result.output == f"lipsync-serve {__version__}\n"


def test_help_shows_environment_variables_and_defaults():
    result = CliRunner().invoke(main, ["--help"], terminal_width=200)
    assert result.exit_code == 0
    for name in ("HOST", "PORT", "TOKEN", "GENERATOR", "DEVICE", "THREADS", "COMPILE", "WORKERS", "MAX_SESSIONS",
                 "QUEUE", "JPEG_QUALITY", "QUIET", "LOG_LEVEL"):
        assert f"LIPSYNC_SERVE_{name}" in result.output, name
    for text in ("default: 8765", "default: 127.0.0.1", "default: auto", "Render processes (not threads)",
                 "-q, --quiet", "--log-level [debug|info|warning|error]", "--version"):
        assert text in result.output, text


def test_defaults_are_serve_options_defaults(calls):
    result = CliRunner().invoke(main, ["models/anchor"])
    assert result.exit_code == 0, result.output
    assert calls[0].path == "models/anchor"
    assert calls[0].options == ServeOptions(render=RenderOptions(threads=1))
    assert calls[0].level == logging.INFO


def test_flags_reach_serve_options(calls):
    args = ["p", "--host", "0.0.0.0", "--port", "9001", "--token", "s3", "--generator", "retrieval,static",
            "--device", "cuda:1", "--threads", "4", "--compile", "--workers", "3", "--max-sessions", "5",
            "--queue", "7", "--jpeg-quality", "60", "-q"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    assert calls[0].options == ServeOptions(
        host="0.0.0.0", port=9001, token="s3", workers=3, max_sessions=5, queue_frames=7,
        render=RenderOptions(chain="retrieval,static", jpeg_quality=60, device="cuda:1", threads=4, compile=True))
    assert calls[0].level == logging.WARNING          # -q: warnings and errors only


def test_options_from_environment(calls):
    env = {"LIPSYNC_SERVE_PORT": "9002", "LIPSYNC_SERVE_TOKEN": "t", "LIPSYNC_SERVE_COMPILE": "1",
           "LIPSYNC_SERVE_DEVICE": "cpu", "LIPSYNC_SERVE_LOG_LEVEL": "debug"}
    result = CliRunner(env=env).invoke(main, ["p"])
    assert result.exit_code == 0, result.output
    options = calls[0].options
    assert (options.port, options.token, options.render.compile, options.render.device) == (9002, "t", True, "cpu")
    assert calls[0].level == logging.DEBUG


def test_ready_line(calls):
    def fake_serve(path, options, ready):
        ready(SimpleNamespace(port=4321, grpc_port=None if options.grpc_port is None else 5432,
                              store=SimpleNamespace(names=lambda: ["anchor", "face1"])))

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr("runtime.server.serve", fake_serve)
        out = CliRunner().invoke(main, ["p"]).output
        ipv6 = CliRunner().invoke(main, ["p", "--host", "::1"]).output
        grpc = CliRunner().invoke(main, ["p", "--grpc-port", "0"]).output
    assert out == (f"lipsync-serve {__version__}: anchor, face1 on http://127.0.0.1:4321/"
                   "  (websocket ws://127.0.0.1:4321/ws)\n")
    assert grpc.endswith("(websocket ws://127.0.0.1:4321/ws, gRPC 127.0.0.1:5432)\n"), grpc
    assert READY_RE.match(out)
    assert "http://[::1]:4321/" in ipv6


@pytest.mark.parametrize("raised,code,needle", [
    (InputError("--jpeg-quality 0: expected 1 ... 100"), 2, "error: --jpeg-quality 0"),
    (PackageError("p: no such package folder"), 5, "error: p: no such package folder"),
    (OSError(98, "Address already in use"), 1, "error: cannot listen on 127.0.0.1:8765: Address already in use"),
    (KeyboardInterrupt(), 130, ""),
])
def test_failures_are_one_line_and_an_exit_code(monkeypatch, raised, code, needle):
    def fake_serve(path, options, ready):
        raise raised

    monkeypatch.setattr("runtime.server.serve", fake_serve)
    result = CliRunner().invoke(main, ["p"])
    assert result.exit_code == code
    assert result.output.startswith(needle) and result.output.count("\n") == (1 if needle else 0)


# ---------------------------------------------------------------- a real server, heavy modules blocked

BLOCKED = ("toolkit", "dlib", "face_alignment", "librosa", "scipy", "matplotlib", "ffmpeg", "jsonschema",
           "python_speech_features")

# Run as a script, not with -c: the render processes are spawned, and a spawned process
# re-runs its parent's main script, so the blocker is installed in them too.
BLOCKING_SCRIPT = f'''
import importlib.abc, runpy, sys

BLOCKED = {BLOCKED!r}


class Blocker(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            print(f"blocked import: {{name}}", file=sys.stderr, flush=True)
            raise ImportError(f"{{name}} is blocked: serving must not need it")
        return None


sys.meta_path.insert(0, Blocker())
if __name__ == "__main__":
    runpy.run_module("runtime", run_name="__main__")
'''


def _ready_port(proc: subprocess.Popen, timeout: float) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"python -m runtime exited with {proc.returncode}: {proc.stderr.read()}")
        if select.select([proc.stdout], [], [], 0.2)[0]:
            match = READY_RE.match(proc.stdout.readline())
            if match:
                return int(match.group(1))
    pytest.fail(f"python -m runtime printed no address within {timeout:.0f} s")


def test_serving_imports_none_of_the_heavy_modules(built, speech, tmp_path):
    script = tmp_path / "serve_blocked.py"
    script.write_text(BLOCKING_SCRIPT)
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    probe = subprocess.run([sys.executable, "-c", f"import runpy; runpy.run_path({str(script)!r}); import toolkit"],
                           capture_output=True, text=True, cwd=ROOT, env=env, timeout=60)
    assert probe.returncode != 0 and "blocked import: toolkit" in probe.stderr     # the blocker works

    package = built("face_1").path
    proc = subprocess.Popen([sys.executable, str(script), str(package), "--host", "127.0.0.1", "--port", "0",
                             "--workers", "1"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT,
                            env=env)
    try:
        port = _ready_port(proc, timeout=90)

        async def one_frame():
            async with Client(f"ws://127.0.0.1:{port}/ws") as c:
                return [f async for f, _ in c.stream(speech[16_000 * 5:16_000 * 5 + 1280])]

        frames = asyncio.run(asyncio.wait_for(one_frame(), 60))
        assert len(frames) == 2 and decode_jpeg(frames[0]).ndim == 3
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == 0
        err = proc.stderr.read()
        assert "blocked import" not in err, err
    finally:
        proc.kill()
        proc.wait()


def test_unusable_certificate_is_one_line(tmp_path):
    from runtime.options import ServeOptions

    with pytest.raises(InputError, match="--certfile .*no such file"):
        ServeOptions(certfile=str(tmp_path / "nope.pem")).check()
    bad = tmp_path / "cert.pem"
    bad.write_text("not a certificate\n")
    with pytest.raises(InputError, match="cannot load a certificate"):
        ServeOptions(certfile=str(bad)).check()
    with pytest.raises(InputError, match="--keyfile needs --certfile"):
        ServeOptions(keyfile=str(bad)).check()
