"""gRPC against the websocket, in one run, on one server, package, audio and generator.

Run with ``make bench`` (or ``pytest benchmarks/test_grpc_bench.py --benchmark-only -s``).
One ``lipsync-serve German_20s --grpc-port 0`` process (2 render processes, the default chain);
the clients run in this process. For 1, 4 and 8 sessions of each transport, one after the
other:

* real time (chunks paced at 25/s, 4 s of eng.wav per session): round trip p50/p95 (chunk sent
  to its frame back, look-ahead wait included), server time p50, bytes per frame on the wire;
* as fast as the server answers (4 s of audio per session): frames per second, all sessions.

Then 100 single windows, one after the other: gRPC ``Generate`` against the websocket's window
mode. The seeds claimed gRPC was about 15 % faster per frame than their websocket; the ratios
below say whether that holds here. Nothing fails on speed; figures are one printed JSON line.
"""

from __future__ import annotations

import asyncio
import json
import re
import select
import signal
import statistics
import subprocess
import sys
import time

import pytest

from benchmarks.test_serve_bench import ENV, PACKAGE, RATE, speech
from runtime.client import open_client, window_around
from runtime.protocol import encode
from runtime.rpc.service import to_reply
from tests.conftest import ROOT

READY = re.compile(r"http://127\.0\.0\.1:(\d+)/.*gRPC 127\.0\.0\.1:(\d+)")
SECONDS = 4


def pct(values, q):
    return round(statistics.quantiles(values, n=100, method="inclusive")[q - 1], 2) if len(values) > 1 else None


@pytest.fixture(scope="module")
def server(built, tmp_path_factory):
    log = tmp_path_factory.mktemp("grpc") / "stderr.log"
    with open(log, "w") as err:
        proc = subprocess.Popen([sys.executable, "-m", "runtime.cli", str(built(PACKAGE).path), "--port", "0",
                                 "--grpc-port", "0", "--log-level", "warning"],
                                stdout=subprocess.PIPE, stderr=err, text=True, env=ENV, cwd=ROOT)
    try:
        line, deadline = "", time.monotonic() + 60
        while not READY.search(line):
            assert time.monotonic() < deadline and proc.poll() is None, f"no ready line: {log.read_text()}"
            if select.select([proc.stdout], [], [], 1.0)[0]:
                line = proc.stdout.readline()
        http, grpc_port = (int(g) for g in READY.search(line).groups())
        yield {"websocket": f"ws://127.0.0.1:{http}/ws", "grpc": f"grpc://127.0.0.1:{grpc_port}", "http_port": http,
               "pid": proc.pid}
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(15) == 0, log.read_text()[-2000:]


def wire_bytes(transport: str, frame) -> int:
    """Bytes of one frame's message: the binary FRAME, or the StreamReply plus gRPC's 5-byte prefix."""
    return len(encode(frame)) if transport == "websocket" else to_reply(frame).ByteSize() + 5


async def sessions(url: str, transport: str, n: int, realtime: bool) -> dict:
    clients = [open_client(url, package=PACKAGE, timeout=30) for _ in range(n)]
    for c in clients:
        await c.__aenter__()
    chunks = SECONDS * 25

    async def one(i, c):
        x = speech()[i * 4 * RATE:i * 4 * RATE + chunks * RATE // 25]
        return [(f, rt) async for f, rt in c.stream(x, RATE, realtime=realtime)]

    t0 = time.perf_counter()
    results = await asyncio.gather(*(one(i, c) for i, c in enumerate(clients)))
    wall = time.perf_counter() - t0
    for c in clients:
        await c.__aexit__(None, None, None)
    frames = [f for r in results for f, _ in r]
    rtt = [rt * 1e3 for r in results for _, rt in r]
    return {"frames": len(frames), "expected": n * chunks, "fps": round(len(frames) / wall, 1),
            "rtt_ms": {"p50": pct(rtt, 50), "p95": pct(rtt, 95)},
            "server_ms_p50": round(statistics.median(f.server_us for f in frames) / 1e3, 2),
            "bytes_per_frame": round(statistics.mean(wire_bytes(transport, f) for f in frames))}


async def windows(url: str, count: int = 100) -> dict:
    x = speech()[RATE * 10:RATE * 30]
    async with open_client(url, package=PACKAGE, timeout=30) as c:
        times, server = [], []
        for k in range(count):
            t0 = time.perf_counter()
            f = await c.window(k, window_around(x, k), package=PACKAGE)
            times.append((time.perf_counter() - t0) * 1e3)
            server.append(f.server_us / 1e3)
    return {"rtt_ms": {"p50": pct(times, 50), "p95": pct(times, 95)}, "server_ms_p50": round(statistics.median(server), 2)}


def test_grpc_against_websocket(benchmark, server):
    out = {}

    def run():
        for n in (1, 4, 8):
            for transport in ("websocket", "grpc"):
                out[f"{transport} x{n} realtime"] = asyncio.run(sessions(server[transport], transport, n, True))
                out[f"{transport} x{n} fast"] = asyncio.run(sessions(server[transport], transport, n, False))
        for transport in ("websocket", "grpc"):
            out[f"{transport} window"] = asyncio.run(windows(server[transport]))

    benchmark.pedantic(run, rounds=1, iterations=1, warmup_rounds=0)
    ratios = {}
    for n in (1, 4, 8):
        ws, g = out[f"websocket x{n} realtime"], out[f"grpc x{n} realtime"]
        ratios[f"x{n} rtt_p50 grpc/ws"] = round(g["rtt_ms"]["p50"] / ws["rtt_ms"]["p50"], 3)
        ratios[f"x{n} server_p50 grpc/ws"] = round(g["server_ms_p50"] / ws["server_ms_p50"], 3)
        ratios[f"x{n} fps grpc/ws"] = round(out[f"grpc x{n} fast"]["fps"] / out[f"websocket x{n} fast"]["fps"], 3)
    ratios["window rtt_p50 grpc/ws"] = round(out["grpc window"]["rtt_ms"]["p50"] / out["websocket window"]["rtt_ms"]["p50"], 3)
    benchmark.extra_info.update({"runs": out, "ratios": ratios})
    print(f"\ngrpc vs websocket: {json.dumps(benchmark.extra_info)}")
    for name, r in out.items():
        if "frames" in r:
            assert r["frames"] == r["expected"], (name, r)
