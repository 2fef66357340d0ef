"""``lipsync-pack build`` on bad input: one ``error:`` line, non-zero exit, nothing written.

Every test runs the real command line in a fresh interpreter on real media (or
clips cut from them with ffmpeg into pytest's temporary folders) and then checks
that neither the package folder nor a hidden ``.NAME.partial-*`` folder is left.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import AUDIO, LIPSYNC_PACK, ROOT, VIDEOS, ffmpeg, run_cli

GERMAN = VIDEOS["German_20s"]
GERMAN_SIZE = 512                    # German_20s is 512x512
X264 = ("-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p")


# -- helpers -------------------------------------------------------------------------------------


def leftovers(parent: Path, name: str) -> list[str]:
    """Names in ``parent`` that a build of package ``name`` may have left: the package or its partial folder."""
    if not parent.is_dir():
        return []
    return sorted(p.name for p in parent.iterdir() if p.name == name or p.name.startswith(f".{name}.partial-"))


def assert_refused(proc: subprocess.CompletedProcess, out: Path, *words: str) -> str:
    """Check a refused build: exit != 0, exactly one ``error:`` line (the last), all ``words`` in it, nothing written."""
    assert proc.returncode != 0, f"build succeeded on bad input:\n{proc.stdout}\n{proc.stderr}"
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    errors = [ln for ln in lines if ln.startswith("error: ")]
    assert len(errors) == 1, f"expected one 'error: ' line on stderr, got:\n{proc.stderr}"
    assert lines[-1] == errors[0], f"the error line is not the last thing printed:\n{proc.stderr}"
    line = errors[0]
    for word in words:
        assert word.lower() in line.lower(), f"{word!r} not in {line!r}"
    assert proc.stdout == "", f"a failed build printed a summary:\n{proc.stdout}"
    assert leftovers(out.parent, out.name) == [], f"left behind in {out.parent}: {leftovers(out.parent, out.name)}"
    if out.parent.is_dir():          # the writer may create the parent; it must stay empty
        assert list(out.parent.iterdir()) == [], list(out.parent.iterdir())
    return line


def children_of(pid: int) -> list[int]:
    """Pids whose parent is ``pid`` (read from /proc)."""
    kids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if fields and int(fields[1]) == pid:
            kids.append(int(stat.parent.name))
    return kids


def alive(pid: int) -> bool:
    """True while ``pid`` exists and is not a zombie."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def wait_gone(pids: list[int], timeout: float) -> list[int]:
    """Wait up to ``timeout`` s for ``pids`` to end; return those still running."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        left = [p for p in pids if alive(p)]
        if not left:
            return []
        time.sleep(0.05)
    return [p for p in pids if alive(p)]


def start_build(video: Path, out: Path) -> subprocess.Popen:
    """Start ``lipsync-pack build`` in the background, as :func:`run_cli` would run it."""
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.Popen([*LIPSYNC_PACK, "build", str(video), "-o", str(out)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for_partial(proc: subprocess.Popen, out: Path, timeout: float = 60) -> Path:
    """Poll until ``.NAME.partial-*`` in ``out``'s parent holds ``video.mp4``; fail if the build ends first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for partial in out.parent.glob(f".{out.name}.partial-*"):
            if (partial / "video.mp4").is_file():
                return partial
        if proc.poll() is not None:
            stdout, stderr = proc.communicate()
            pytest.fail(f"build ended (exit {proc.returncode}) before its partial folder appeared:\n{stdout}\n{stderr}")
        time.sleep(0.02)
    proc.kill()
    proc.communicate()
    pytest.fail(f"no {out.parent}/.{out.name}.partial-*/video.mp4 within {timeout} s")


def moov_before_mdat(path: Path) -> bool:
    data = path.read_bytes()
    return 0 <= data.find(b"moov") < data.find(b"mdat")


# -- clips ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("clips")


@pytest.fixture(scope="module")
def german3(clips) -> Path:
    """The first 3 s of German_20s, with its audio."""
    path = clips / "german3.mp4"
    ffmpeg("-t", "3", "-i", str(GERMAN), *X264, "-c:a", "aac", str(path))
    return path


@pytest.fixture(scope="module")
def german3_silent(clips) -> Path:
    """The first 3 s of German_20s without an audio stream."""
    path = clips / "german3_silent.mp4"
    ffmpeg("-t", "3", "-i", str(GERMAN), *X264, "-an", str(path))
    return path


# -- 1. missing file ------------------------------------------------------------------------------


def test_missing_input_file(tmp_path):
    """A path that does not exist is refused with 'no such file'."""
    out = tmp_path / "models" / "pkg"
    line = assert_refused(run_cli("build", str(tmp_path / "nowhere.mp4"), "-o", str(out)), out, "no such file")
    assert "nowhere.mp4" in line


# -- 2. not a video -------------------------------------------------------------------------------


def test_text_file_named_mp4(tmp_path):
    """A text file renamed .mp4 is 'not a readable video'."""
    fake = tmp_path / "notes.mp4"
    fake.write_text("these are meeting notes, not a video\n" * 20)
    out = tmp_path / "models" / "pkg"
    line = assert_refused(run_cli("build", str(fake), "-o", str(out)), out, "not a readable video")
    assert "notes.mp4" in line


def test_audio_file_given_as_video(tmp_path):
    """A wav file given as the video 'has no video stream'."""
    out = tmp_path / "models" / "pkg"
    assert_refused(run_cli("build", str(AUDIO["demo1_audio"]), "-o", str(out)), out, "has no video stream")


# -- 3. truncated files ---------------------------------------------------------------------------


def test_truncated_video_with_moov_first(tmp_path):
    """A faststart mp4 cut to 40 % of its bytes probes fine but decoding stops early: 'truncated'."""
    whole = tmp_path / "faststart.mp4"
    ffmpeg("-i", str(GERMAN), "-c", "copy", "-movflags", "+faststart", str(whole))
    assert moov_before_mdat(whole)
    cut = tmp_path / "cut.mp4"
    data = whole.read_bytes()
    cut.write_bytes(data[: int(len(data) * 0.4)])
    out = tmp_path / "models" / "pkg"
    proc = run_cli("build", str(cut), "-o", str(out))
    line = assert_refused(proc, out, "truncated", "re-export")
    assert "cut.mp4" in line and proc.returncode == 2          # an input error, wherever its index sits


def test_truncated_video_with_moov_at_end(tmp_path):
    """An mp4 whose index (moov) sits at the end, cut to 40 %, is 'not a readable video'."""
    assert not moov_before_mdat(GERMAN)          # German_20s as published keeps moov at the end
    cut = tmp_path / "cut.mp4"
    data = GERMAN.read_bytes()
    cut.write_bytes(data[: int(len(data) * 0.4)])
    out = tmp_path / "models" / "pkg"
    proc = run_cli("build", str(cut), "-o", str(out))
    assert_refused(proc, out, "not a readable video")
    assert proc.returncode == 2


# -- 4. no audio ----------------------------------------------------------------------------------


def test_no_audio_stream_asks_for_audio_option(german3_silent, tmp_path):
    """A video without sound is refused with a hint to pass --audio."""
    out = tmp_path / "models" / "pkg"
    assert_refused(run_cli("build", str(german3_silent), "-o", str(out)), out, "has no audio stream", "--audio")


def test_empty_audio_file_is_an_input_error(german3_silent, tmp_path):
    """A 0-byte --audio file: one line naming it, exit 2 (input), like every other unusable input."""
    empty = tmp_path / "empty.wav"
    empty.write_bytes(b"")
    out = tmp_path / "models" / "pkg"
    proc = run_cli("build", str(german3_silent), "-o", str(out), "--audio", str(empty))
    line = assert_refused(proc, out, "empty.wav")
    assert proc.returncode == 2, line


@pytest.mark.parametrize("option", [("--fps", "0"), ("--fps", "inf"), ("--fps", "1e-300"), ("--fps", "16000"),
                                    ("--fps", "nan"), ("--crop-size", "100000"), ("--crop-size", "8")])
def test_option_out_of_range_is_refused_at_once(option, tmp_path):
    """Options outside their documented range (fps 1-120, crop size 64-1024): one line, exit 2, in seconds."""
    out = tmp_path / "models" / "pkg"
    proc = run_cli("build", str(GERMAN), "-o", str(out), *option, timeout=60)
    line = assert_refused(proc, out, option[0])
    assert proc.returncode == 2, line


def test_no_audio_stream_with_audio_option_builds(german3_silent, tmp_path):
    """The same silent video builds when --audio gives the speech."""
    out = tmp_path / "models" / "pkg"
    proc = run_cli("build", str(german3_silent), "-o", str(out), "--audio", str(AUDIO["demo1_audio"]))
    assert proc.returncode == 0, proc.stderr
    assert "error:" not in proc.stderr
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["source"]["audio_file"] == "demo1_audio.wav"
    assert (out / "audio.wav").is_file() and (out / "mel.npy").is_file()
    assert leftovers(out.parent, out.name) == ["pkg"]


# -- 5. no face -----------------------------------------------------------------------------------


def test_no_face(tmp_path):
    """A test pattern with a sine tone has 'no face'."""
    clip = tmp_path / "pattern.mp4"
    ffmpeg("-f", "lavfi", "-i", "testsrc2=size=320x240:rate=25", "-f", "lavfi", "-i", "sine=frequency=440:sample_rate=44100",
           "-t", "3", *X264, "-c:a", "aac", str(clip))
    out = tmp_path / "models" / "pkg"
    assert_refused(run_cli("build", str(clip), "-o", str(out)), out, "no face")


# -- 6. several faces -----------------------------------------------------------------------------


def test_two_faces_keeps_the_largest(tmp_path):
    """Full-size and half-size copies side by side build, keep the large left face, and say so."""
    clip = tmp_path / "two.mp4"
    half = GERMAN_SIZE // 2
    graph = (f"[0:v]split[big][s];[s]scale={half}:{half},pad={half}:{GERMAN_SIZE}:0:{half // 2}[small];"
             "[big][small]hstack[v]")
    ffmpeg("-t", "3", "-i", str(GERMAN), "-filter_complex", graph, "-map", "[v]", "-map", "0:a",
           *X264, "-c:a", "aac", str(clip))
    out = tmp_path / "models" / "pkg"
    proc = run_cli("build", str(clip), "-o", str(out))
    assert proc.returncode == 0, proc.stderr
    said = proc.stdout + proc.stderr
    assert "2 faces" in said and "kept the largest" in said, said
    boxes = np.load(out / "boxes.npy", allow_pickle=False)
    assert boxes.ndim == 2 and boxes.shape[1] == 4 and len(boxes) > 0
    centres_x = (boxes[:, 0] + boxes[:, 2]) / 2
    assert (centres_x < GERMAN_SIZE).all(), f"crop moved to the small face: centre x up to {centres_x.max()}"
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["quality"]["faces_seen_max"] >= 2


# -- 7. face too small ----------------------------------------------------------------------------


def test_face_too_small(tmp_path):
    """German_20s scaled to 120x120 has a face 'too small' to use."""
    clip = tmp_path / "tiny.mp4"
    ffmpeg("-t", "3", "-i", str(GERMAN), "-vf", "scale=120:120", *X264, "-c:a", "aac", str(clip))
    out = tmp_path / "models" / "pkg"
    assert_refused(run_cli("build", str(clip), "-o", str(out)), out, "too small", "px")


# -- 8. too short ---------------------------------------------------------------------------------


def test_shorter_than_one_second(tmp_path):
    """A 0.6 s clip is refused, naming its duration and the 1 s minimum."""
    clip = tmp_path / "blink.mp4"
    ffmpeg("-t", "0.6", "-i", str(GERMAN), *X264, "-c:a", "aac", str(clip))
    out = tmp_path / "models" / "pkg"
    assert_refused(run_cli("build", str(clip), "-o", str(out)), out, "lasts 0.6", "1 s")


# -- 9. unwritable output -------------------------------------------------------------------------


def test_output_below_a_regular_file(german3, tmp_path):
    """-o below a regular file 'cannot write' the package and leaves the file alone."""
    afile = tmp_path / "afile"
    afile.write_bytes(b"keep me")
    out = afile / "pkg"
    proc = run_cli("build", str(german3), "-o", str(out))
    assert_refused(proc, out, "cannot write", "-o")
    assert afile.is_file() and afile.read_bytes() == b"keep me"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile"]


# -- 10. existing package -------------------------------------------------------------------------


def test_existing_package_needs_force(german3, tmp_path):
    """A second build into an existing package is refused and leaves it intact; --force replaces it."""
    out = tmp_path / "models" / "pkg"
    first = run_cli("build", str(german3), "-o", str(out))
    assert first.returncode == 0, first.stderr
    manifest = (out / "manifest.json").read_bytes()
    files = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}

    again = run_cli("build", str(german3), "-o", str(out), "--holdout", "0.2")
    assert again.returncode != 0
    errors = [ln for ln in again.stderr.splitlines() if ln.startswith("error: ")]
    assert len(errors) == 1 and "already exists" in errors[0] and "--force" in errors[0], again.stderr
    assert again.stderr.strip().splitlines()[-1] == errors[0]
    assert (out / "manifest.json").read_bytes() == manifest
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == files
    assert leftovers(out.parent, out.name) == ["pkg"]

    forced = run_cli("build", str(german3), "-o", str(out), "--holdout", "0.2", "--force")
    assert forced.returncode == 0, forced.stderr
    assert json.loads((out / "manifest.json").read_text())["split"]["holdout_fraction"] == 0.2
    assert sorted(p.name for p in out.parent.iterdir()) == ["pkg"]      # no partial or .old folder left
    assert run_cli("verify", str(out), "-q").returncode == 0


# -- 11. interruption -----------------------------------------------------------------------------


def test_sigterm_removes_partial_folder(tmp_path):
    """SIGTERM mid-build exits within 10 s, stops ffmpeg, and leaves neither package nor partial folder."""
    out = tmp_path / "models" / "pkg"
    proc = start_build(VIDEOS["demo2_video"], out)
    try:
        wait_for_partial(proc, out)
        kids = children_of(proc.pid)
        proc.send_signal(signal.SIGTERM)
        try:
            _, stderr = proc.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            pytest.fail("build still running 10 s after SIGTERM")
        assert proc.returncode != 0
        assert "Traceback" not in stderr, stderr
        assert wait_gone(kids, 10) == [], "ffmpeg kept running after the build was stopped"
        assert not out.exists()
        assert leftovers(out.parent, out.name) == []
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


def test_sigkill_then_next_build_cleans_up(german3, tmp_path):
    """SIGKILL mid-build leaves no package; the next build into the same place removes the stale partial folder."""
    out = tmp_path / "models" / "pkg"
    proc = start_build(VIDEOS["demo2_video"], out)
    kids: list[int] = []
    try:
        wait_for_partial(proc, out)
        kids = children_of(proc.pid)
        proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=10)
        assert proc.returncode == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
        for pid in wait_gone(kids, 15):       # ffmpeg orphaned by the kill; it should die of a broken pipe
            os.kill(pid, signal.SIGKILL)
    assert not out.exists()
    stale = sorted(p.name for p in out.parent.iterdir())
    assert stale == [f".pkg.partial-{proc.pid}"], stale         # a killed build cannot clean up after itself

    again = run_cli("build", str(german3), "-o", str(out))
    assert again.returncode == 0, again.stderr
    assert (out / "manifest.json").is_file()
    assert sorted(p.name for p in out.parent.iterdir()) == ["pkg"]
