"""Hostile and careless clients beside real-time sessions, on one server, for a minute (issue 24).

Run with ``make bench`` (or ``pytest benchmarks/test_abuse_bench.py --benchmark-only -s``).
One ``lipsync-serve German_20s --grpc-port 0`` process (render processes fitted to the cores);
every client runs in this process, on 127.0.0.1, in loops that stop on their own.

First 4 real-time websocket sessions alone (10 s of audio each): the unloaded round trip.
Then the same 4 sessions for ``SECONDS`` while, all the time:

* 2 gRPC streams send 10 chunks, pause 0.3 s, and again (every chunk must get its frame);
* 2 callers send GenerateBatch calls of the documented maximum, back to back;
* 2 gRPC streams send STATS requests and never read; 2 websockets send audio and never read
  (each opened again when the server closes it);
* plain downloads of video.mp4 without a Range header, never read, 2 a second.

Reported (one JSON line, and benchmarks.json's extra_info): the real-time sessions' round trip
p50/p95 against the unloaded one (goal: p95 no more than 2x), the share of their frames
delivered (goal 100 %), the server's RSS growth and its slope over the last 30 s (goal: at most
50 MB, flat), and the frames the paused streams got against the chunks they sent. Nothing fails
on these figures; on a 2-core machine the clients here take CPU from the server too.
"""

from __future__ import annotations

import asyncio
import json
import socket
import time

import grpc
import numpy as np
import pytest

from benchmarks.test_grpc_bench import server  # noqa: F401  (fixture: the lipsync-serve process)
from benchmarks.test_serve_bench import PACKAGE, RATE, speech
from runtime.client import Client, window_around
from runtime.protocol import CHUNK_MS, AudioChunk, encode, float32_to_pcm
from runtime.rpc import lipsync_pb2 as pb
from runtime.rpc import lipsync_pb2_grpc as pb_grpc
from runtime.rpc.client import GrpcClient
from runtime.rpc.service import MAX_BATCH

SECONDS = 60
STEP = RATE * CHUNK_MS // 1000


def _rss_mb(pid: int) -> float:
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


async def _realtime(ws_url: str, seconds: float, offset: int) -> tuple[list[float], int]:
    """One real-time websocket session: round trips, and the chunks it sent."""
    x = speech()[offset * RATE:offset * RATE + int(seconds * RATE)]
    async with Client(ws_url, package=PACKAGE, timeout=30) as c:
        rtts = [rt async for _, rt in c.stream(x, RATE, realtime=True)]
    return rtts, len(Client.chunks(x, RATE))


async def _paused_stream(grpc_url: str, until: float) -> tuple[int, int]:
    """Chunks sent in bursts of 10 with 0.3 s pauses; (chunks sent, frames received)."""
    pcm = float32_to_pcm(speech()[RATE * 5:RATE * 6], 1)
    target = grpc_url.split("//")[1]
    sent = got = 0
    async with grpc.aio.insecure_channel(target) as ch:
        async def requests():
            nonlocal sent
            while time.monotonic() < until:
                for _ in range(10):
                    k = sent % 25
                    yield pb.StreamRequest(audio=pb.AudioChunk(seq=sent, sample_rate=RATE,
                                                               pcm=pcm[2 * k * STEP:2 * (k + 1) * STEP]))
                    sent += 1
                    await asyncio.sleep(CHUNK_MS / 1000)
                await asyncio.sleep(0.3)

        async for reply in pb_grpc.LipsyncStub(ch).Stream(requests()):
            got += reply.WhichOneof("message") == "frame"
    return sent, got


async def _batches(grpc_url: str, until: float) -> int:
    clip = speech()[RATE * 2:RATE * 6]
    windows = [(k, window_around(clip, k)) for k in range(5, 5 + MAX_BATCH)]
    calls = 0
    async with GrpcClient(grpc_url, package=PACKAGE, timeout=60) as c:
        while time.monotonic() < until:
            await c.windows(windows)
            calls += 1
    return calls


async def _unread_grpc(grpc_url: str, until: float) -> int:
    """STATS requests, never a reply read; a new stream when the server ends one."""
    target = grpc_url.split("//")[1]
    sent = 0
    while time.monotonic() < until:
        async with grpc.aio.insecure_channel(target) as ch:
            async def requests():
                nonlocal sent
                while time.monotonic() < until:
                    sent += 1
                    yield pb.StreamRequest(stats=pb.StatsRequest(seq=sent & 0xFFFF))
                    await asyncio.sleep(0.002)

            call = pb_grpc.LipsyncStub(ch).Stream(requests())
            while time.monotonic() < until and not call.done():
                await asyncio.sleep(0.5)
            call.cancel()
    return sent


async def _unread_ws(ws_url: str, until: float) -> int:
    """Audio chunks, never a frame read; a new connection when the server closes this one."""
    from websockets.asyncio.client import connect
    from websockets.exceptions import ConnectionClosed

    chunk = encode(AudioChunk(seq=1, sample_rate=RATE, pcm=float32_to_pcm(speech()[:STEP], 1)))
    sent = 0
    while time.monotonic() < until:
        try:
            async with connect(ws_url, max_size=None, max_queue=1) as ws:
                while time.monotonic() < until:
                    await ws.send(chunk)
                    sent += 1
                    await asyncio.sleep(CHUNK_MS / 1000)
        except (ConnectionClosed, OSError):
            await asyncio.sleep(0.2)
    return sent


async def _downloads(http_port: int, until: float) -> int:
    """GETs of video.mp4 without Range, never read; each socket is held 5 s."""
    held: list[tuple[float, socket.socket]] = []
    n = 0
    while time.monotonic() < until:
        s = socket.create_connection(("127.0.0.1", http_port), timeout=5)
        s.sendall(f"GET /packages/{PACKAGE}/video HTTP/1.1\r\nHost: 127.0.0.1:{http_port}\r\n\r\n".encode())
        held.append((time.monotonic(), s))
        n += 1
        while held and time.monotonic() - held[0][0] > 5:
            held.pop(0)[1].close()
        await asyncio.sleep(0.5)
    for _, s in held:
        s.close()
    return n


@pytest.mark.parametrize("seconds", [SECONDS])
def test_mixed_abuse_beside_real_time_sessions(benchmark, server, seconds):  # noqa: F811
    http_port, pid = server["http_port"], server["pid"]

    async def go():
        unloaded = await asyncio.gather(*(_realtime(server["websocket"], 10, 2 + 2 * i) for i in range(4)))
        rss = [(0.0, _rss_mb(pid))]
        t0 = time.monotonic()
        until = t0 + seconds

        async def sample():
            while time.monotonic() < until + 2:
                await asyncio.sleep(1.0)
                rss.append((time.monotonic() - t0, _rss_mb(pid)))

        abuse = [asyncio.ensure_future(c) for c in (
            *(_paused_stream(server["grpc"], until) for _ in range(2)),
            *(_batches(server["grpc"], until) for _ in range(2)),
            *(_unread_grpc(server["grpc"], until) for _ in range(2)),
            *(_unread_ws(server["websocket"], until) for _ in range(2)),
            _downloads(http_port, until), sample())]
        await asyncio.sleep(2.0)
        loaded = await asyncio.gather(*(_realtime(server["websocket"], seconds - 6, 2 + 2 * i) for i in range(4)))
        results = await asyncio.gather(*abuse)
        return unloaded, loaded, results, rss

    unloaded, loaded, results, rss = asyncio.run(asyncio.wait_for(go(), seconds + 180))
    benchmark.pedantic(lambda: None, rounds=1, iterations=1)
    base = [r for rtts, _ in unloaded for r in rtts]
    rtts = [r for got, _ in loaded for r in got]
    expected = sum(n for _, n in loaded)
    paused = results[0:2]
    times, mbs = np.array([t for t, _ in rss]), np.array([m for _, m in rss])
    last = times >= times[-1] - 30
    slope = float(np.polyfit(times[last], mbs[last], 1)[0]) * 30 if last.sum() > 2 else None
    info = {
        "seconds": seconds,
        "unloaded_rtt_ms": {"p50": round(float(np.median(base)) * 1e3), "p95": round(float(np.percentile(base, 95)) * 1e3)},
        "loaded_rtt_ms": {"p50": round(float(np.median(rtts)) * 1e3), "p95": round(float(np.percentile(rtts, 95)) * 1e3)},
        "rtt_p95_ratio": round(float(np.percentile(rtts, 95) / np.percentile(base, 95)), 2),
        "realtime_frames_delivered": f"{len(rtts)}/{expected}",
        "paused_streams_frames_of_chunks": [f"{got}/{sent}" for sent, got in paused],
        "batch_calls": results[2:4], "unread_grpc_requests": results[4:6], "unread_ws_chunks": results[6:8],
        "video_downloads": results[8],
        "server_rss_mb": {"start": round(mbs[0]), "end": round(mbs[-1]), "max": round(mbs.max()),
                          "growth": round(float(mbs[-1] - mbs[0]), 1),
                          "slope_last_30s_mb": None if slope is None else round(slope, 1)},
        "goals": {"rtt_p95_ratio": 2.0, "realtime_frames": "100 %", "rss_growth_mb": 50},
    }
    benchmark.extra_info.update(info)
    print("\nabuse:", json.dumps(info))
    assert expected > 0 and len(rtts) > 0
