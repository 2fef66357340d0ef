"""The browser client (runtime/web) end to end: a real ``lipsync-serve`` in a subprocess and
Debian's chromium driven by Playwright.

Chromium's fake capture device plays a speech wav into getUserMedia, so the page streams
real speech through the microphone path (AudioWorklet, 40 ms int16 chunks, AUDIO_CHUNK) and
paints the FRAMEs it gets back. The first test clicks the Microphone button; the second opens
the page with ``?autostart=mic``, which starts the microphone on load.

Skipped only when /usr/bin/chromium or Playwright is missing (``playwright install`` is never
run: the browser is the system one).
"""

from __future__ import annotations

import json
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import cv2
import pytest

from tests.conftest import AUDIO, ROOT, ffmpeg, link_package
from tests.runtime.pageview import base_match, capture, seam_steps, video_frames

CHROMIUM = Path("/usr/bin/chromium")
READY_RE = re.compile(r"^lipsync-serve \S+: .* on https?://127\.0\.0\.1:(\d+)/")

try:
    from playwright.sync_api import sync_playwright
except ImportError:                      # pragma: no cover - depends on the machine
    sync_playwright = None


class Server:
    """``python -m runtime.cli PACKAGE --port P`` in a subprocess; ready once it prints its URL."""

    def __init__(self, package: Path, log_path: Path, *options: str):
        self.package = package
        self.options = options
        self.log_path = log_path
        self.proc: subprocess.Popen | None = None
        self.port = 0

    @property
    def url(self) -> str:
        scheme = "https" if "--certfile" in self.options else "http"
        return f"{scheme}://127.0.0.1:{self.port}/"

    def start(self, port: int = 0, timeout: float = 60) -> None:
        env = dict(os.environ, PYTHONPATH=str(ROOT))
        # stderr (the log) goes to a file: a pipe nobody reads would fill up and stall the server
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "runtime.cli", str(self.package), "--port", str(port), "--host", "127.0.0.1",
             *self.options],
            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=self.log_path.open("a"), text=True)
        lines: queue.Queue = queue.Queue()

        def read(stream):                # drains stdout for the server's whole life
            for line in stream:
                lines.put(line)
            lines.put(None)

        threading.Thread(target=read, args=(self.proc.stdout,), daemon=True).start()
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                self.proc.kill()
                pytest.fail(f"lipsync-serve printed no ready line in {timeout:.0f} s; log: {self.log()}")
            if line is None:
                pytest.fail(f"lipsync-serve exited with {self.proc.wait()} before it was ready; log: {self.log()}")
            m = READY_RE.match(line)
            if m:
                self.port = int(m.group(1))
                return

    def stop(self) -> int:
        """SIGTERM; the server must be gone within 2 s. Returns its exit code."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        try:
            code = self.proc.wait(timeout=2)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            pytest.fail(f"lipsync-serve still running 2 s after SIGTERM; log: {self.log()}")
        self.proc = None
        return code

    def log(self) -> str:
        return self.log_path.read_text()[-2000:]

    def get_json(self, path: str):
        with urllib.request.urlopen(self.url + path.lstrip("/"), timeout=5) as res:
            return json.loads(res.read())


@pytest.fixture(scope="module")
def fake_wav(tmp_path_factory) -> Path:
    """The speech clip as the fake capture device wants it: 16-bit PCM wav, mono, 48 kHz."""
    out = tmp_path_factory.mktemp("browser") / "speech.wav"
    ffmpeg("-i", str(AUDIO["demo1_audio"]), "-ac", "1", "-ar", "48000", "-c:a", "pcm_s16le", str(out))
    return out


@pytest.fixture(scope="module")
def browser(fake_wav):
    if sync_playwright is None:
        pytest.skip("playwright is not installed in this environment")
    if not CHROMIUM.is_file():
        pytest.skip(f"{CHROMIUM} is missing (apt-get install chromium)")
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), args=[
            "--no-sandbox", "--disable-gpu", "--use-fake-ui-for-media-stream",
            "--use-fake-device-for-media-stream", f"--use-file-for-fake-audio-capture={fake_wav}",
            "--autoplay-policy=no-user-gesture-required", "--disable-background-networking",
            "--disable-component-update", "--disable-sync", "--no-first-run"])
        yield b
        b.close()


@pytest.fixture
def cli_server(built, tmp_path):
    """A running server of the German_20s package; stopped (and checked) after the test."""
    srv = Server(built("German_20s").path, tmp_path / "server.log")
    srv.start()
    yield srv
    if srv.proc is not None:
        assert srv.stop() == 0, srv.log()


@pytest.fixture
def page(browser):
    context = browser.new_context(viewport={"width": 1100, "height": 860})
    pg = context.new_page()
    pg.errors = []                       # uncaught exceptions in the page
    pg.on("pageerror", lambda exc: pg.errors.append(str(exc)))
    yield pg
    context.close()


# The canvas's luminance spread and alpha, and how well the face crop now painted lines up
# with the base video frame it was rendered onto: the mean abs difference between the canvas
# and that frame in a band inside the crop's top half (no mouth there), at offsets of the
# reference. A crop pasted in the right place matches best at offset (0, 0).
PIXELS_JS = """async () => {
  const face = document.getElementById('face'), W = face.width, H = face.height;
  const painted = window.lipsync.lastPainted;          // read together with the pixels
  const img = face.getContext('2d').getImageData(0, 0, W, H).data;
  let sum = 0, sq = 0, minAlpha = 255;
  for (let i = 0; i < img.length; i += 4) {
    const l = 0.299 * img[i] + 0.587 * img[i + 1] + 0.114 * img[i + 2];
    sum += l; sq += l * l; minAlpha = Math.min(minAlpha, img[i + 3]);
  }
  const n = img.length / 4, std = Math.sqrt(sq / n - (sum / n) ** 2);

  const pkg = window.lipsync.package;
  const info = (await (await fetch('/packages')).json()).find((p) => p.name === pkg);
  const video = document.createElement('video');
  video.muted = true;
  // the whole video, in the Range parts the server answers (a long video is never sent in one piece)
  const parts = [];
  for (let start = 0, total = Infinity; start < total;) {
    const res = await fetch(info.video, { headers: { Range: `bytes=${start}-` } });
    const part = new Uint8Array(await res.arrayBuffer());
    total = Number(/\/(\d+)$/.exec(res.headers.get('Content-Range'))[1]);
    parts.push(part);
    start += part.length;
  }
  video.src = URL.createObjectURL(new Blob(parts, { type: 'video/mp4' }));
  await new Promise((r) => video.addEventListener('loadeddata', r, { once: true }));
  await new Promise((r) => { video.addEventListener('seeked', r, { once: true });
                             video.currentTime = (painted.base + 0.5) / info.fps; });
  const c = document.createElement('canvas'); c.width = W; c.height = H;
  const cx = c.getContext('2d'); cx.drawImage(video, 0, 0, W, H);
  const ref = cx.getImageData(0, 0, W, H).data;
  const [x0, y0, x1, y1] = painted.bounds;
  const diff = {};
  for (const [dx, dy] of [[0, 0], [-3, 0], [3, 0], [0, -3], [0, 3]]) {
    let s = 0, m = 0;
    for (let y = y0 + 8; y < (y0 + y1) / 2; y++) {
      for (let x = x0 + 8; x < x1 - 8; x++) {
        if (x >= x0 + 40 && x < x1 - 40 && y >= y0 + 40) continue;   // a band along the edges
        if (x < 4 || y < 4 || x >= W - 4 || y >= H - 4) continue;    // clip (and room to shift)
        const i = (y * W + x) * 4, j = ((y + dy) * W + (x + dx)) * 4;
        for (let k = 0; k < 3; k++) s += Math.abs(img[i + k] - ref[j + k]);
        m += 3;
      }
    }
    diff[`${dx},${dy}`] = s / m;
  }
  return { std, minAlpha, width: W, height: H, painted, diff };
}"""


def frames(page) -> int:
    return page.evaluate("window.lipsync.framesReceived")


def test_page_streams_microphone_and_paints_frames(page, cli_server, tmp_path):
    started = time.monotonic()
    page.goto(cli_server.url)
    page.wait_for_function("window.lipsync && window.lipsync.connected", timeout=15_000)
    assert page.text_content("#status") == "connected"
    page.click("#mic")
    page.wait_for_function("window.lipsync.framesReceived >= 25", timeout=30_000)
    first_frame_s = time.monotonic() - started

    def painted() -> int:                # "#frame-count" reads "received / painted"
        return int(page.text_content("#frame-count").split("/")[1])

    before = painted()
    time.sleep(1.0)
    after = painted()
    assert after > before, f"#frame-count stuck at {before}"
    assert after - before >= 10, f"only {after - before} frames painted in 1 s; expected about 25"
    assert page.text_content("#offset") == "not played back"      # the microphone is not played back

    px = page.evaluate(PIXELS_JS)
    info = cli_server.get_json("/packages")[0]
    assert (px["width"], px["height"]) == (info["width"], info["height"])
    assert px["minAlpha"] == 255, "canvas has transparent pixels"
    assert px["std"] > 10, f"canvas looks blank (luminance std {px['std']:.1f})"
    x0, y0, x1, y1 = px["painted"]["bounds"]
    assert 32 <= x1 - x0 <= info["width"] * 2 and 32 <= y1 - y0 <= info["height"] * 2
    assert x0 < info["width"] and y0 < info["height"] and x1 > 0 and y1 > 0
    d = px["diff"]
    assert d["0,0"] < 8, f"face crop does not match its base frame: {d}"
    assert all(d["0,0"] < v for k, v in d.items() if k != "0,0"), f"face crop is pasted off its place: {d}"

    stats = cli_server.get_json("/stats")
    name = page.evaluate("window.lipsync.package")
    assert stats["frames_served"] > 0
    assert stats["packages"][name]["frames"] > 0

    lipsync = page.evaluate("window.lipsync")
    assert lipsync["errors"] == 0, page.inner_text("#log")
    assert lipsync["lastBounds"] is not None and len(lipsync["lastBounds"]) == 4
    assert page.errors == []
    page.screenshot(path=str(tmp_path / "browser.png"))
    print(f"first 25 frames after {first_frame_s:.1f} s; latency {page.text_content('#latency')}, "
          f"background {page.text_content('#bg-sync')}, crop diff {d}")


def test_page_reconnects_after_socket_close_and_server_restart(page, cli_server):
    page.goto(cli_server.url + "?autostart=mic")
    page.wait_for_function("window.lipsync.framesReceived >= 10", timeout=30_000)

    # 1. the socket drops (closed from the page): the client reconnects and streams on
    n = frames(page)
    page.evaluate("window.lipsync.closeSocket()")
    page.wait_for_function(f"window.lipsync.connects >= 2 && window.lipsync.framesReceived >= {n + 10}",
                           timeout=15_000)

    # 2. the server goes away and comes back on the same port
    assert cli_server.stop() == 0, cli_server.log()
    page.wait_for_function("document.getElementById('status').textContent.startsWith('reconnecting')",
                           timeout=5_000)
    assert page.evaluate("window.lipsync.connected") is False
    cli_server.start(port=cli_server.port)
    n = frames(page)
    page.wait_for_function(f"window.lipsync.connects >= 3 && window.lipsync.framesReceived >= {n + 10}",
                           timeout=30_000)
    assert page.text_content("#status") == "connected"
    assert page.evaluate("window.lipsync.package") == cli_server.get_json("/packages")[0]["name"]
    assert page.errors == []


def test_page_waits_after_an_idle_close_and_reconnects_when_audio_starts(page, built, tmp_path):
    srv = Server(built("German_20s").path, tmp_path / "server.log", "--idle-timeout", "1")
    srv.start()
    try:
        page.goto(srv.url)
        page.wait_for_function("window.lipsync && window.lipsync.connected", timeout=15_000)
        page.wait_for_function("document.getElementById('status').dataset.state === 'idle'", timeout=10_000)
        time.sleep(1.5)                                   # no reconnect loop while idle
        assert page.evaluate("window.lipsync.connects") == 1
        assert srv.get_json("/stats")["sessions"]["closed_idle"] == 1
        page.click("#mic")
        page.wait_for_function("window.lipsync.connects >= 2 && window.lipsync.framesReceived >= 10",
                               timeout=30_000)
        assert page.errors == []
    finally:
        assert srv.stop() == 0, srv.log()


@pytest.fixture(scope="module")
def self_signed(tmp_path_factory) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1, made with the one-liner docs/serving.md gives."""
    d = tmp_path_factory.mktemp("tls")
    cert, key = d / "cert.pem", d / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "30", "-subj", "/CN=127.0.0.1",
                    "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost", "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True, timeout=60)
    return cert, key


def test_https_and_wss_with_a_self_signed_certificate(browser, built, tmp_path, self_signed, speech):
    import asyncio
    import ssl

    from runtime.client import Client

    cert, key = self_signed
    srv = Server(built("German_20s").path, tmp_path / "server.log", "--certfile", str(cert), "--keyfile", str(key))
    srv.start()
    try:
        assert srv.url.startswith("https://")
        trust = ssl.create_default_context(cafile=str(cert))
        with urllib.request.urlopen(srv.url + "health", timeout=10, context=trust) as res:
            assert json.loads(res.read())["status"] == "ok"

        async def stream():
            async with Client(f"wss://127.0.0.1:{srv.port}/ws", ssl=trust) as c:
                return [f async for f, _ in c.stream(speech[16_000 * 5:16_000 * 5 + 6400], 16_000)]

        got = []                                  # in a thread: playwright's loop owns this one
        t = threading.Thread(target=lambda: got.extend(asyncio.run(asyncio.wait_for(stream(), 60))))
        t.start()
        t.join(70)
        assert len(got) == 10
        context = browser.new_context(ignore_https_errors=True)       # the browser does not know our CA
        page = context.new_page()
        errors = []
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        page.goto(srv.url)
        page.wait_for_function("window.lipsync && window.lipsync.connected", timeout=15_000)
        page.click("#mic")                                   # a secure origin: the microphone is allowed
        page.wait_for_function("window.lipsync.framesReceived >= 10", timeout=30_000)
        assert page.evaluate("location.protocol") == "https:" and errors == []
        context.close()
    finally:
        assert srv.stop() == 0, srv.log()


# ---------------------------------------------------------------------------- WAV playback
def quantile(values, q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(q * len(s)))]


@pytest.mark.parametrize("name", ["German_20s", "demo2_video"])
def test_wav_plays_in_sync_on_exact_base_frames_without_seams(browser, built, tmp_path, fake_wav, name):
    """Issue 12's targets: |lips after sound| p50 <= 20 ms and p95 <= 40 ms on the page's clocks,
    base frames exact on >= 99 % of painted frames (and checked with ffmpeg's decode), the step at
    the paste edge <= 1.2x the step just inside it, and the video read in parts."""
    pkg = built(name)
    man = json.loads((pkg.path / "manifest.json").read_text())
    width, height = man["video"]["width"], man["video"]["height"]
    srv = Server(pkg.path, tmp_path / "server.log")
    srv.start()
    context = browser.new_context(viewport={"width": 1100, "height": 860})
    page = context.new_page()
    errors = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    try:
        page.goto(srv.url)
        page.wait_for_function("window.lipsync && window.lipsync.connected && window.lipsync.base()", timeout=15_000)
        page.set_input_files("#wav", str(fake_wav))
        page.wait_for_function("window.lipsync.sync().painted >= 1", timeout=30_000)
        first = page.evaluate("window.lipsync.base()")
        page.wait_for_function("window.lipsync.sync().painted >= 25", timeout=30_000)
        captures = []
        for _ in range(8):
            time.sleep(0.4)
            captures.append(capture(page))
        page.wait_for_function("window.lipsync.sync().painted >= 150", timeout=60_000)
        sync = page.evaluate("window.lipsync.sync()")
    finally:
        context.close()
        assert srv.stop() == 0, srv.log()
    assert errors == []

    # the video is read in parts: the first frame was on screen before the whole file came
    assert first["kind"] == "webcodecs", first
    assert first["bytes"] < first["fileBytes"], first

    offsets = sync["offsets"]
    p50, p95 = quantile(offsets, 0.5), quantile(offsets, 0.95)
    assert min(offsets) >= -1, f"a frame was painted before its sound: {min(offsets):.1f} ms"
    assert abs(p50) <= 20 and abs(p95) <= 40, f"lips after sound p50 {p50:.1f} ms, p95 {p95:.1f} ms"
    assert sync["exact"] >= 0.99 * sync["painted"], sync

    refs = video_frames(pkg.path / "video.mp4", [p["base"] + d for _, p in captures for d in range(-2, 3)
                                                 if 0 <= p["base"] + d < man["video"]["frames"]], width, height)
    edge = inner = 0.0
    for i, (canvas, painted) in enumerate(captures):
        assert canvas.shape == (height, width, 3)
        diffs = base_match(canvas, painted["bounds"], refs, painted["base"])
        # where the neighbours differ from frame b, the canvas is frame b and not a neighbour
        others = {d: v for d, v in diffs.items() if d != 0}
        assert diffs[0] < 2, f"capture {i}: the canvas outside the crop is not base frame {painted['base']}: {diffs}"
        assert all(diffs[0] < v for v in others.values()), f"capture {i}: a neighbour matches better: {diffs}"
        e, n = seam_steps(canvas, painted["bounds"])
        edge, inner = edge + e, inner + n
    ratio = edge / inner
    assert ratio <= 1.2, f"the step at the paste edge is {ratio:.2f}x the step inside it"
    cv2.imwrite(str(tmp_path / f"{name}.png"), cv2.cvtColor(captures[-1][0], cv2.COLOR_RGB2BGR))
    print(f"{name}: lips after sound p50 {p50:.1f} ms p95 {p95:.1f} ms over {len(offsets)} frames; "
          f"exact {sync['exact']}/{sync['painted']}; late {sync['late']}; jitter buffer {sync['delayMs']} ms; "
          f"edge/inside step {ratio:.2f}; first frame after {sync['firstPaintMs']:.0f} ms having read "
          f"{first['bytes'] / 1e6:.2f} of {first['fileBytes'] / 1e6:.2f} MB")


# ---------------------------------------------------------------------------- layout
VISIBLE_JS = """(selectors) => selectors.map((sel) => {
  const r = document.querySelector(sel).getBoundingClientRect();
  return { sel, left: r.left, top: r.top, right: r.right, bottom: r.bottom, width: r.width, height: r.height };
})"""


@pytest.fixture
def two_packages(built, tmp_path) -> Path:
    root = tmp_path / "served"
    for name in ("German_20s", "demo2_video"):
        link_package(built(name).path, root / name)
    return root


@pytest.mark.parametrize("viewport", [(360, 740), (1280, 800)], ids=["phone-portrait", "desktop-landscape"])
def test_face_controls_and_strip_fit_the_window(browser, two_packages, tmp_path, viewport):
    srv = Server(two_packages, tmp_path / "server.log")
    srv.start()
    width, height = viewport
    context = browser.new_context(viewport={"width": width, "height": height})
    page = context.new_page()
    errors = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    try:
        page.goto(srv.url + "?autostart=mic")
        page.wait_for_function("window.lipsync.framesReceived >= 5", timeout=30_000)
        assert page.is_visible("#package"), "several packages are served: the picker is shown"
        for name in ("German_20s", "demo2_video"):
            page.select_option("#package", name)
            page.wait_for_function(f"window.lipsync.lastPainted && window.lipsync.package === '{name}' && "
                                   f"document.getElementById('face').width === "
                                   f"{json.loads((two_packages / name / 'manifest.json').read_text())['video']['width']}",
                                   timeout=30_000)
            n = page.evaluate("window.lipsync.framesPainted")
            page.wait_for_function(f"window.lipsync.framesPainted >= {n + 10}", timeout=30_000)
            boxes = page.evaluate(VISIBLE_JS, ["#face", "#package", "#mic", "label[for=wav]", "#stop",
                                               ".readouts", "#strip"])
            for b in boxes:
                assert b["width"] > 0 and b["height"] > 0, f"{name} {viewport}: {b['sel']} is not shown"
                assert b["left"] >= 0 and b["top"] >= 0 and b["right"] <= width + 0.5 and b["bottom"] <= height + 0.5, \
                    f"{name} {viewport}: {b['sel']} is outside the window: {b}"
            assert page.evaluate("document.documentElement.scrollWidth") <= width, "the page scrolls sideways"
            man = json.loads((two_packages / name / "manifest.json").read_text())["video"]
            face = boxes[0]
            assert abs(face["width"] / face["height"] - man["width"] / man["height"]) < 0.02, \
                f"{name} {viewport}: the face is stretched: {face}"
            assert face["height"] >= 0.3 * height or face["width"] >= 0.9 * width - 40, \
                f"{name} {viewport}: the face is small: {face}"
            page.screenshot(path=str(tmp_path / f"layout-{width}x{height}-{name}.png"))
    finally:
        context.close()
        assert srv.stop() == 0, srv.log()
    assert errors == []


def test_jitter_buffer_grows_when_frames_come_late_and_never_shows_them_out_of_time(page, cli_server, fake_wav):
    """?delay=40 leaves a frame 40 ms, and it needs at least the 80 ms look-ahead: frames come late.
    They are dropped (counted), the buffer grows until they are in time, and every frame painted
    is painted while its own 40 ms are heard."""
    page.goto(cli_server.url + "?delay=40")
    page.wait_for_function("window.lipsync && window.lipsync.connected && window.lipsync.base()", timeout=15_000)
    page.set_input_files("#wav", str(fake_wav))
    page.wait_for_function("window.lipsync.sync().painted >= 50", timeout=30_000)
    sync = page.evaluate("window.lipsync.sync()")
    assert sync["late"] >= 3, sync
    assert 120 <= sync["delayMs"] <= 1000, sync
    offsets = sync["offsets"]
    assert min(offsets) >= -1 and max(offsets) < 40 + 20, f"painted out of its 40 ms: {min(offsets)}..{max(offsets)}"
    assert "jitter buffer grows" in page.inner_text("#log")
    assert page.errors == []
    print(f"delay 40 ms grew to {sync['delayMs']} ms after {sync['late']} late frames; "
          f"lips after sound p50 {quantile(offsets, 0.5):.1f} ms")


def test_range_request_from_the_page_gets_only_its_bytes(page, cli_server, built):
    """What basevideo.js relies on: a Range request from the browser answers 206 with exactly
    the bytes asked for (and a bytes=N- request at most 4 MiB of them)."""
    page.goto(cli_server.url)
    page.wait_for_function("window.lipsync && window.lipsync.connected", timeout=15_000)
    data = (built("German_20s").path / "video.mp4").read_bytes()
    got = page.evaluate("""async () => {
      const ask = async (range) => {
        const res = await fetch('/packages/German_20s/video', { headers: { Range: range } });
        const body = new Uint8Array(await res.arrayBuffer());
        return { status: res.status, range: res.headers.get('Content-Range'), length: body.length,
                 bytes: body.length <= 1000 ? Array.from(body) : null };
      };
      return [await ask('bytes=100-199'), await ask('bytes=0-')];
    }""")
    assert got[0]["status"] == 206 and got[0]["range"] == f"bytes 100-199/{len(data)}"
    assert bytes(got[0]["bytes"]) == data[100:200]
    assert got[1]["status"] == 206 and got[1]["length"] == min(len(data), 4 << 20)
    assert page.errors == []


def test_page_codec_speaks_the_spec_golden_bytes(page, cli_server):
    """runtime/web/protocol.js encodes and decodes the golden bytes of docs/protocol.md, and
    decodes what runtime/protocol.py encodes (ERROR, CAPABILITIES); bad bytes raise."""
    from runtime.protocol import Capabilities, Error, ErrorCode, encode
    from tests.runtime.test_protocol import GOLDEN_CHUNK, GOLDEN_FRAME

    page.goto(cli_server.url)
    page.wait_for_function("window.LipsyncProtocol !== undefined", timeout=15_000)
    others = [encode(Error(seq=3, code=ErrorCode.BAD_AUDIO, text="wrong length é")).hex(),
              encode(Capabilities(seq=4, packages=("anchor", "face1"))).hex()]
    got = page.evaluate("""([frameHex, others]) => {
      const P = window.LipsyncProtocol;
      const hex = (buf) => Array.from(new Uint8Array(buf), (b) => b.toString(16).padStart(2, '0')).join('');
      const bytes = (h) => new Uint8Array(h.match(/../g).map((x) => parseInt(x, 16))).buffer;
      const chunk = hex(P.encodeAudio(7, Int16Array.from([0, 1, -1, 32767]), 16000, 'anchor'));
      const frame = P.decode(bytes(frameHex));
      const decoded = others.map((h) => { const m = P.decode(bytes(h)); delete m.jpeg; return m; });
      const broken = bytes(frameHex); new Uint8Array(broken)[20] ^= 1;
      let crcError = null;
      try { P.decode(broken); } catch (err) { crcError = err.message; }
      return { chunk, frame: { type: frame.type, seq: frame.seq, status: frame.status, base: frame.base, us: frame.us,
                               bounds: frame.bounds, jpeg: hex(frame.jpeg) }, decoded, crcError };
    }""", [GOLDEN_FRAME, others])
    assert got["chunk"] == GOLDEN_CHUNK
    assert got["frame"] == {"type": 5, "seq": 7, "status": 0, "base": 123, "us": 8500, "bounds": [100, 80, 228, 208],
                            "jpeg": "ffd8ffd9"}
    assert got["decoded"][0] == {"type": 9, "seq": 3, "code": 7, "text": "wrong length é"}
    assert got["decoded"][1]["body"]["packages"] == ["anchor", "face1"]
    assert "CRC32" in got["crcError"]
    assert page.errors == []
