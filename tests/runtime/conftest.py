"""Fixtures for the runtime tests: a folder of real packages and a real server on 127.0.0.1."""

from __future__ import annotations

import asyncio
import json
import threading
import urllib.error
import urllib.request
import wave
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import AUDIO, link_package


def read_wav(path: Path) -> tuple[np.ndarray, int]:
    """Mono float32 samples in [-1, 1] and the rate of a 16-bit PCM wav (first channel)."""
    with wave.open(str(path)) as w:
        ch, rate = w.getnchannels(), w.getframerate()
        x = np.frombuffer(w.readframes(w.getnframes()), np.int16).reshape(-1, ch)[:, 0]
    return x.astype(np.float32) / 32768.0, rate


@pytest.fixture(scope="session")
def speech() -> np.ndarray:
    """eng.wav at 16 kHz: 60 s of English speech the package speaker never said."""
    x, rate = read_wav(AUDIO["eng"])
    assert rate == 16_000
    return x


@pytest.fixture(scope="session")
def packages_dir(built, tmp_path_factory) -> Path:
    """A folder serving two real packages: anchor (German_20s, 500 frames) and face1 (face_1, 153 frames)."""
    root = tmp_path_factory.mktemp("served")
    link_package(built("German_20s").path, root / "anchor")
    link_package(built("face_1").path, root / "face1")
    (root / "not-a-package").mkdir()
    return root


class RunningServer:
    """A LipsyncServer running on its own event loop in a background thread."""

    def __init__(self, server):
        self.server = server

    @property
    def http(self) -> str:
        return f"http://127.0.0.1:{self.server.port}"

    @property
    def ws(self) -> str:
        return f"ws://127.0.0.1:{self.server.port}/ws"

    def get(self, path: str, headers: dict | None = None) -> tuple[int, bytes, dict]:
        req = urllib.request.Request(self.http + path, headers=headers or {})
        try:
            with urllib.request.urlopen(req, timeout=10) as r:
                return r.status, r.read(), dict(r.headers)
        except urllib.error.HTTPError as e:
            return e.code, e.read(), dict(e.headers)

    def json(self, path: str):
        status, body, _ = self.get(path)
        assert status == 200, body
        return json.loads(body)


@contextmanager
def running_server(path: Path, **config):
    """Start a real server on 127.0.0.1 (any free port); stop it afterwards.

    ``config``: ServeOptions fields, and RenderOptions fields (``chain=...``) for its render part.
    """
    from dataclasses import fields

    from runtime.options import RenderOptions, ServeOptions
    from runtime.server import LipsyncServer
    from runtime.store import PackageStore

    render_keys = {f.name for f in fields(RenderOptions)}
    render = RenderOptions(**{k: v for k, v in config.items() if k in render_keys})
    options = ServeOptions(port=0, render=render, **{k: v for k, v in config.items() if k not in render_keys})
    store = PackageStore(path)
    server = LipsyncServer(store, options)
    loop = asyncio.new_event_loop()
    started = threading.Event()

    def main():
        asyncio.set_event_loop(loop)
        loop.run_until_complete(server.start())
        started.set()
        loop.run_forever()

    thread = threading.Thread(target=main, daemon=True)
    thread.start()
    assert started.wait(20), "server did not start"
    try:
        yield RunningServer(server)
    finally:
        asyncio.run_coroutine_threadsafe(server.stop(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()


@pytest.fixture(scope="module")
def server(packages_dir):
    with running_server(packages_dir) as s:
        yield s
