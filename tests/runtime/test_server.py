"""A real server on 127.0.0.1 and real websocket clients: both modes, both encodings, bad input."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import struct
import subprocess
import sys
import time
import zlib

import numpy as np
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from runtime.client import Client, ServerError, Unreachable, decode_jpeg, window_around
from runtime.package import Package
from runtime.protocol import (AudioChunk, Error, ErrorCode, Frame, FrameStatus, SampleFormat, encode, float32_to_pcm)
from runtime.render import base_frame
from tests.conftest import ROOT

from .conftest import running_server


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 120))


async def collect(client, samples, rate=16_000, fmt=SampleFormat.INT16, realtime=False, package=""):
    return [f async for f, _ in client.stream(samples, rate, fmt, realtime=realtime, package=package)]


def resample(x: np.ndarray, rate: int) -> np.ndarray:
    """16 kHz -> rate by linear interpolation (test input only; the server has its own resampler)."""
    t = np.arange(int(len(x) * rate / 16_000)) * 16_000 / rate
    return np.interp(t, np.arange(len(x)), x).astype(np.float32)


# ---------------------------------------------------------------- streaming


def test_streaming_binary_one_frame_per_chunk_in_order(server, packages_dir, speech):
    pkg = Package.open(packages_dir / "anchor")
    audio = speech[16_000 * 5:16_000 * 7]                    # 2 s of speech: 50 chunks

    async def go():
        async with Client(server.ws) as c:
            assert "anchor" in c.capabilities.packages and "not-a-package" not in c.capabilities.packages
            first_seq = c._seq + 1
            frames = await collect(c, audio)
            return first_seq, frames

    first_seq, frames = run(go())
    assert len(frames) == 50
    assert [f.seq for f in frames] == list(range(first_seq, first_seq + 50))
    assert [f.base_frame for f in frames] == [base_frame(pkg, t) for t in range(50)]
    assert sum(f.status == FrameStatus.OK for f in frames) > 25     # speech: mostly re-rendered
    for f in frames[::7]:
        assert f.bounds == tuple(int(v) for v in pkg.boxes[f.base_frame])
        img = decode_jpeg(f)
        assert img.shape == (328, 328, 3)
        assert 0 < f.server_us < 5_000_000


def test_json_encoding_gives_the_same_frames(server, speech):
    audio = speech[16_000 * 5:16_000 * 6]

    async def go(encoding):
        async with Client(server.ws, encoding=encoding) as c:
            return await collect(c, audio)

    binary, as_json = run(go("binary")), run(go("json"))
    assert len(binary) == len(as_json) == 25
    assert [f.jpeg for f in binary] == [f.jpeg for f in as_json]
    assert [f.status for f in binary] == [f.status for f in as_json]


@pytest.mark.parametrize("rate,fmt", [(24_000, SampleFormat.INT16), (48_000, SampleFormat.FLOAT32),
                                      (16_000, SampleFormat.FLOAT32)])
def test_other_rates_and_formats(server, speech, rate, fmt):
    audio = resample(speech[16_000 * 5:16_000 * 6], rate)

    async def go():
        async with Client(server.ws) as c:
            return await collect(c, audio, rate, fmt)

    frames = run(go())
    assert len(frames) == 25
    assert sum(f.status == FrameStatus.OK for f in frames) > 10


def test_silence_gives_idle_base_frames(server, packages_dir):
    pkg = Package.open(packages_dir / "anchor")

    async def go():
        async with Client(server.ws) as c:
            return await collect(c, np.zeros(16_000, np.float32))

    frames = run(go())
    assert all(f.status == FrameStatus.IDLE for f in frames)
    base = decode_jpeg(frames[3]).astype(int)
    assert np.abs(base - np.asarray(pkg.crops[frames[3].base_frame], dtype=int)).mean() < 4   # JPEG noise only


def test_window_mode(server, packages_dir, speech):
    pkg = Package.open(packages_dir / "anchor")

    async def go():
        async with Client(server.ws) as c:
            frame = await c.window(123, window_around(speech, 200))
            with pytest.raises(ServerError) as bad:
                await c.window(pkg.frames, window_around(speech, 200))
            with pytest.raises(ServerError) as short:
                await c.window(5, window_around(speech, 200)[:5000])
            again = await c.window(7, window_around(speech, 201), rate=16_000, fmt=SampleFormat.FLOAT32)
            return frame, bad.value.error, short.value.error, again

    frame, bad, short, again = run(go())
    assert frame.base_frame == 123 and frame.bounds == tuple(int(v) for v in pkg.boxes[123])
    assert decode_jpeg(frame).shape == (328, 328, 3)
    assert bad.code == ErrorCode.MALFORMED and "past the end" in bad.text
    assert short.code == ErrorCode.BAD_AUDIO and "640 ms" in short.text
    assert again.base_frame == 7


def test_switch_package(server, packages_dir, speech):
    face1 = Package.open(packages_dir / "face1")
    audio = speech[16_000 * 5:16_000 * 6]

    async def go():
        async with Client(server.ws) as c:
            before = await collect(c, audio)
            await c.switch("face1")
            after = await collect(c, audio)
            await c.switch("../anchor")
            err = await c.recv()
            still = await collect(c, audio[:3200])
            return before, after, err, still

    before, after, err, still = run(go())
    assert before[0].bounds != after[-1].bounds
    for f in after:
        assert f.bounds == tuple(int(v) for v in face1.boxes[f.base_frame])
    assert isinstance(err, Error) and err.code == ErrorCode.UNKNOWN_PACKAGE
    assert len(still) == 5 and all(f.bounds == tuple(int(v) for v in face1.boxes[f.base_frame]) for f in still)


# ---------------------------------------------------------------- bad input


def _raw(msg_type: int, body: bytes, seq: int = 9) -> bytes:
    head = b"LSYN" + struct.pack("<BBI", 1, msg_type, seq) + body
    return head + struct.pack("<I", zlib.crc32(head))


def test_bad_messages_get_errors_and_the_session_goes_on(server, speech):
    good = encode(AudioChunk(seq=5, pcm=float32_to_pcm(speech[:640])))
    bad_crc = bytearray(good)
    bad_crc[-8] ^= 0xFF
    cases = {
        "garbage": (b"hello there, server", ErrorCode.MALFORMED),
        "bad crc": (bytes(bad_crc), ErrorCode.BAD_CRC),
        "unknown type": (_raw(42, b""), ErrorCode.UNKNOWN_TYPE),
        "version 2": (b"LSYN" + struct.pack("<BBI", 2, 3, 1) + b"\0" * 8, ErrorCode.UNSUPPORTED_VERSION),
        "unknown package": (encode(AudioChunk(seq=6, package="nobody", pcm=float32_to_pcm(speech[:640]))),
                            ErrorCode.UNKNOWN_PACKAGE),
        "escaping name": (encode(AudioChunk(seq=6, package="..", pcm=float32_to_pcm(speech[:640]))),
                          ErrorCode.UNKNOWN_PACKAGE),
        "short chunk": (encode(AudioChunk(seq=7, pcm=float32_to_pcm(speech[:600]))), ErrorCode.BAD_AUDIO),
        "odd pcm": (_raw(3, struct.pack("<IBBI", 16000, 1, 0, 3) + b"abc"), ErrorCode.BAD_AUDIO),
        "bad rate": (_raw(3, struct.pack("<IBBI", 44100, 1, 0, 2) + b"ab"), ErrorCode.BAD_AUDIO),
        "server message": (encode(Frame(seq=8, jpeg=b"\xff\xd8\xff\xd9")), ErrorCode.MALFORMED),
        "bad json": ('{"v": 1, "type": "audio_chunk"', ErrorCode.MALFORMED),
        "json unknown type": ('{"v": 1, "type": "dance", "seq": 1}', ErrorCode.UNKNOWN_TYPE),
        "nan float": (encode(AudioChunk(seq=10, sample_format=SampleFormat.FLOAT32,
                                        pcm=np.full(640, np.nan, "<f4").tobytes())), ErrorCode.BAD_AUDIO),
    }

    async def go():
        got = {}
        async with Client(server.ws) as c:
            for name, (data, _) in cases.items():
                await c.send_raw(data)
                reply = await c.recv()
                got[name] = reply
                stats = await c.stats()                # the connection goes on
                assert stats["sessions"]["active"] >= 1
            frames = await collect(c, speech[16_000 * 5:16_000 * 5 + 6400])
        return got, frames

    got, frames = run(go())
    for name, (_, code) in cases.items():
        assert isinstance(got[name], Error), name
        assert got[name].code == code, (name, got[name])
        assert got[name].text, name
    assert len(frames) == 10
    assert server.json("/stats")["errors"]["BAD_AUDIO"] >= 3


def test_oversized_message_is_refused_before_reading_and_server_survives(server):
    async def go():
        async with Client(server.ws) as c:
            await c.send_raw(b"\0" * (2 << 20))
            with pytest.raises(ConnectionClosed) as closed:
                await c.recv()
            return closed.value

    closed = run(go())
    assert closed.rcvd is not None and closed.rcvd.code == 1009      # message too big
    assert server.json("/health")["status"] == "ok"


def test_http_routes(server, packages_dir):
    health = server.json("/health")
    assert health["status"] == "ok" and health["packages"] == 2
    listing = server.json("/packages")
    assert [p["name"] for p in listing] == ["anchor", "face1"]
    assert listing[0]["frames"] == 500 and listing[0]["fps"] == 25.0
    video = (packages_dir / "anchor" / "video.mp4").read_bytes()
    status, body, headers = server.get("/packages/anchor/video")          # 6 MB: in parts only
    assert status == 400 and b"Range" in body, body
    small = (packages_dir / "face1" / "video.mp4").read_bytes()
    assert len(small) <= 4 << 20
    status, body, headers = server.get("/packages/face1/video")           # a short one: whole
    assert status == 200 and body == small and headers["Content-Type"] == "video/mp4"
    status, body, headers = server.get("/packages/anchor/video", {"Range": "bytes=100-199"})
    assert status == 206 and body == video[100:200]
    assert headers["Content-Range"] == f"bytes 100-199/{len(video)}"
    for path in ("/packages/../video", "/packages/..%2Fanchor/video", "/packages/nobody/video",
                 "/packages/not-a-package/video", "/nothing"):
        assert server.get(path)[0] == 404, path
    status, body, _ = server.get("/")
    assert status == 200 and b"<canvas" in body.lower()
    assert server.get("/ws")[0] == 426
    stats = server.json("/stats")
    assert {"sessions", "frames_served", "frames_dropped", "packages"} <= set(stats)


# ---------------------------------------------------------------- sessions


def test_disconnect_mid_stream_frees_the_session(server, speech):
    async def go():
        c = Client(server.ws)
        await c.connect()
        for i in range(20):
            await c.send(AudioChunk(seq=c.next_seq(), pcm=float32_to_pcm(speech[i * 640:(i + 1) * 640])))
        c.ws.transport.abort()                         # no close handshake: the cable is pulled
        deadline = time.monotonic() + 5
        while server.json("/stats")["sessions"]["active"] and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        active = server.json("/stats")["sessions"]["active"]
        async with Client(server.ws) as c2:            # and the server still serves
            frames = await collect(c2, speech[:6400])
        return active, frames

    active, frames = run(go())
    assert active == 0
    assert len(frames) == 10


def test_eight_concurrent_sessions_in_real_time(server, speech):
    async def one(i):
        async with Client(server.ws) as c:
            start = 16_000 * (2 + 3 * i)
            return await collect(c, speech[start:start + 16_000 * 2], realtime=True)

    async def go():
        return await asyncio.gather(*(one(i) for i in range(8)))

    results = run(go())
    for frames in results:
        assert len(frames) == 50
        seqs = [f.seq for f in frames]
        assert seqs == sorted(seqs)
    assert server.json("/stats")["frames_dropped"] == 0


def test_slow_reader_is_capped_by_dropping_oldest_frames(packages_dir, speech):
    with running_server(packages_dir, queue_frames=4) as srv:
        async def go():
            sock = socket.socket()
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)     # a client that reads slowly
            sock.connect(("127.0.0.1", srv.server.port))
            ws = await connect(srv.ws, sock=sock, compression=None, max_queue=1)
            n = 250
            for i in range(n):
                await ws.send(encode(AudioChunk(seq=i, pcm=float32_to_pcm(speech[i * 640:(i + 1) * 640]))))
            deadline = time.monotonic() + 60                # every frame rendered (however busy the machine)
            while srv.json("/stats")["frames_served"] < n and time.monotonic() < deadline:
                await asyncio.sleep(0.2)
            seqs = []
            try:
                while True:
                    data = await asyncio.wait_for(ws.recv(), 1.0)
                    seqs.append(struct.unpack_from("<I", data, 6)[0])
            except (asyncio.TimeoutError, TimeoutError):
                pass
            await ws.close()
            return n, seqs

        n, seqs = run(go())
        stats = srv.json("/stats")
    assert len(seqs) < n                                   # some frames were dropped ...
    assert seqs == sorted(seqs) and seqs[-1] == n - 1      # ... the oldest ones: the newest arrived
    assert stats["frames_dropped"] == n - len(seqs)


def test_token_required(packages_dir, speech):
    with running_server(packages_dir, token="s3cret") as srv:
        assert srv.get("/health")[0] == 200
        assert srv.get("/stats")[0] == 401
        assert srv.get("/packages/anchor/video")[0] == 401
        assert srv.get("/stats?token=s3cret")[0] == 200
        assert srv.get("/stats", {"Authorization": "Bearer s3cret"})[0] == 200

        async def go():
            with pytest.raises(Unreachable, match="401"):
                await Client(srv.ws).connect()
            async with Client(srv.ws + "?token=s3cret") as c:
                return await collect(c, speech[:3200])

        assert len(run(go())) == 5


def test_non_loopback_needs_a_token(packages_dir):
    from runtime.errors import InputError
    from runtime.options import ServeOptions
    with pytest.raises(InputError, match="--token"):
        ServeOptions(host="0.0.0.0").check()
    ServeOptions(host="0.0.0.0", token="t").check()
    ServeOptions(host="::1").check()


# ---------------------------------------------------------------- the command


def _serve(*args, env=None):
    return subprocess.Popen([sys.executable, "-m", "runtime.cli", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd=ROOT,
                            env=dict(os.environ, PYTHONPATH=str(ROOT), **(env or {})))


def test_cli_serves_then_sigterm_drains_within_2s(packages_dir, speech):
    proc = _serve(str(packages_dir / "anchor"), "--port", "0")
    try:
        line = proc.stdout.readline()
        assert "http://127.0.0.1:" in line, proc.stderr.read()
        port = int(line.split("http://127.0.0.1:")[1].split("/")[0])

        async def go():
            async with Client(f"ws://127.0.0.1:{port}/ws") as c:
                return await collect(c, speech[16_000 * 5:16_000 * 6])

        assert len(run(go())) == 25
        t0 = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        rc = proc.wait(5)
        assert time.monotonic() - t0 < 2.0
        assert rc == 0
    finally:
        proc.kill()
        proc.wait()


@pytest.mark.parametrize("args,needle", [
    (["--host", "0.0.0.0"], "--token"),
    (["--generator", "magic"], "unknown generator"),
    (["--jpeg-quality", "0"], "--jpeg-quality"),
])
def test_cli_bad_options_one_line(packages_dir, args, needle):
    proc = _serve(str(packages_dir), "--port", "0", *args)
    try:
        out, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode != 0
    assert needle in err and err.count("\n") == 1 and err.startswith("error:")


def test_cli_missing_path(tmp_path):
    proc = _serve(str(tmp_path / "nothing"), "--port", "0")
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 2 and "no such folder" in err and err.count("\n") == 1
    proc = _serve(str(tmp_path), "--port", "0")
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 2 and "no packages here" in err


def test_runtime_imports_stay_minimal():
    code = ("import sys, runtime.server, runtime.client, runtime.cli, runtime.session, runtime.generators;"
            "bad = {'toolkit', 'face_alignment', 'dlib', 'librosa', 'ffmpeg', 'jsonschema', 'scipy', 'matplotlib'};"
            "print(sorted(m for m in sys.modules if m.split('.')[0] in bad))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert out.stdout.strip() == "[]"


def test_a_dead_render_process_is_replaced(packages_dir, speech):
    with running_server(packages_dir, workers=1) as srv:
        async def go():
            c = Client(srv.ws)
            await c.connect()
            srv.server.pool.workers[0].process.kill()       # a crash in native code, say
            await c.send(AudioChunk(seq=c.next_seq(), pcm=float32_to_pcm(speech[:640])))
            try:
                reply = await c.recv()
            except ConnectionClosed:
                reply = None
            deadline = time.monotonic() + 30
            while not srv.server.pool.workers[0].alive and time.monotonic() < deadline:
                await asyncio.sleep(0.1)
            async with Client(srv.ws) as c2:
                frames = await collect(c2, speech[16_000 * 5:16_000 * 5 + 6400])
            return reply, frames

        reply, frames = run(go())
    assert reply is None or (isinstance(reply, Error) and reply.code == ErrorCode.INTERNAL)
    assert len(frames) == 10


def test_a_stopped_render_process_does_not_freeze_its_sessions(packages_dir, speech):
    """SIGSTOP one of two render processes for 4 s while two sessions stream in real time: its jobs go
    to the other process after a second, every frame arrives, and it is used again once resumed."""
    clip = speech[16_000 * 2:16_000 * 8]                                  # 6 s: 150 chunks
    with running_server(packages_dir, workers=2) as srv:
        stopped = srv.server.pool.workers[0].process.pid

        async def session():
            async with Client(srv.ws, package="anchor") as c:
                got = [(f.seq, rtt) async for f, rtt in c.stream(clip, 16_000, realtime=True)]
                return got, c.lost

        async def go():
            sessions = [asyncio.ensure_future(session()) for _ in range(2)]
            await asyncio.sleep(1.0)
            os.kill(stopped, signal.SIGSTOP)
            try:
                await asyncio.sleep(4.0)
            finally:
                os.kill(stopped, signal.SIGCONT)
            return await asyncio.gather(*sessions)

        results = run(go())
        time.sleep(0.5)
        pool = srv.server.pool
        resumed = pool.workers[0].process.pid == stopped and getattr(pool.workers[0], "stalled_since", None) is None
    for got, lost in results:
        assert len(got) == 150 and not lost, (len(got), lost)
        worst = max(rtt for _, rtt in got)
        assert worst < 2.5, f"a frame took {worst:.1f} s: the session waited on the stopped process"
        print(f"slowest round trip {worst * 1e3:.0f} ms")
    assert resumed and pool.restarts == 0


def test_the_client_stream_goes_on_past_a_lost_frame(packages_dir, speech):
    """The only render process is killed mid-stream: the frames it held are answered ERROR INTERNAL,
    one per frame; Client.stream keeps them in ``lost`` and goes on to the end of the audio."""
    clip = speech[16_000 * 2:16_000 * 6]                                  # 4 s: 100 chunks
    with running_server(packages_dir, workers=1) as srv:
        async def go():
            async with Client(srv.ws, package="anchor") as c:
                frames = []
                async for f, _ in c.stream(clip, 16_000, realtime=True):
                    frames.append(f.seq)
                    if len(frames) == 25:
                        srv.server.pool.workers[0].process.kill()
                return frames, c.lost

        frames, lost = run(go())
    assert lost and all(e.code == ErrorCode.INTERNAL for e in lost)
    assert len(frames) + len(lost) == 100 and len(frames) > 50, (len(frames), len(lost))
    assert sorted(frames + [e.seq for e in lost]) == list(range(frames[0], frames[0] + 100))
