"""Shared fixtures: the real media in ../shared/data and packages built from it once per session."""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("LIPSYNC_DATA", ROOT.parent / "shared" / "data"))
VIDEOS = {name: DATA / "video" / f"{name}.mp4" for name in ("German_20s", "demo2_video", "face_1", "cnn_71s")}
HOLDOUT = {"cnn_71s": 0.45}     # the long clip: a 32 s held-out tail, where quality figures can be trusted
AUDIO = {name: DATA / "audio" / f"{name}.wav" for name in ("eng", "RD_Radio31_000", "demo1_audio")}
LIPSYNC_PACK = [sys.executable, "-m", "toolkit.cli"]


def pytest_configure(config):
    missing = [str(p) for p in [*VIDEOS.values(), *AUDIO.values()] if not p.is_file()]
    if missing:
        raise pytest.UsageError(f"test media missing: {missing[0]}; set LIPSYNC_DATA to the shared/data folder")
    if shutil.which("ffmpeg") is None:
        raise pytest.UsageError("ffmpeg is not installed; run `make setup` (or apt-get install ffmpeg)")


def ffmpeg(*args: str) -> None:
    """Run ffmpeg quietly; fail the test with its stderr on error."""
    proc = subprocess.run(["ffmpeg", "-nostdin", "-v", "error", "-y", *args], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


def run_cli(*args: str, cwd: Path | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    """Run ``lipsync-pack`` as a user would, in a fresh interpreter."""
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run([*LIPSYNC_PACK, *args], capture_output=True, text=True, cwd=cwd, env=env, timeout=timeout)


@pytest.fixture(scope="session")
def built(tmp_path_factory):
    """Build each shared video once (API call), keyed by video name: {name: BuildResult}."""
    from toolkit.build import BuildConfig, build_package

    out = tmp_path_factory.mktemp("packages")
    cache = {}

    def get(name: str):
        if name not in cache:
            cache[name] = build_package(VIDEOS[name], out / name, BuildConfig(holdout=HOLDOUT.get(name, 0.15)))
        return cache[name]

    return get


def link_package(src: Path, dest: Path) -> Path:
    """``dest``: a package folder holding hard links to ``src``'s files (a copy across file systems).

    A served folder may not hold symbolic links to packages outside it (the server refuses them).
    """
    dest.mkdir(parents=True)
    for f in Path(src).iterdir():
        try:
            os.link(f, dest / f.name)
        except OSError:
            shutil.copy2(f, dest / f.name)
    return dest


@pytest.fixture
def restore_log_levels():
    """The commands set the root logger's level; put it back for the tests that follow."""
    loggers = [logging.getLogger(), logging.getLogger("websockets")]
    levels = [lg.level for lg in loggers]
    yield
    for lg, level in zip(loggers, levels):
        lg.setLevel(level)


@pytest.fixture
def package_copy(built, tmp_path):
    """A private copy of the German_20s package that a test may damage."""
    dest = tmp_path / "anchor"
    shutil.copytree(built("German_20s").path, dest)
    return dest
