"""Hostile and careless clients against a real server on 127.0.0.1: memory stays bounded, foreign
pages are refused, silent sessions are closed, Range answers read only what they send."""

from __future__ import annotations

import asyncio
import concurrent.futures
import socket
import time
import urllib.request

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from runtime.protocol import StatsRequest, encode
from runtime.server import CLOSE_IDLE, CLOSE_UNREAD

from tests.conftest import link_package

from .conftest import running_server


def run(coro, timeout=120):
    return asyncio.run(asyncio.wait_for(coro, timeout))


def rss_mb() -> float:
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def bytes_read() -> int:
    """Bytes this process has read through read() and friends (/proc/self/io rchar)."""
    for line in open("/proc/self/io"):
        if line.startswith("rchar:"):
            return int(line.split()[1])
    return 0


def test_a_client_that_never_reads_is_closed_and_memory_stays_flat(packages_dir):
    """100k bad messages and 100k stats requests from a client that reads nothing: the server closes
    it (CLOSE_UNREAD) once queue_replies replies are waiting, frees the session, and its memory does not grow."""
    bad = b"\x00" * 12                       # too short for a header: ERROR MALFORMED each
    stats = encode(StatsRequest(seq=1))
    with running_server(packages_dir, queue_replies=256) as srv:
        before = rss_mb()

        async def flood():
            sent = 0
            # max_queue=1 and a small read limit: the client library stops reading, TCP fills up
            async with connect(srv.ws, max_queue=1, max_size=2**20, open_timeout=10) as ws:
                try:
                    for i in range(100_000):
                        await ws.send(bad)
                        await ws.send(stats)
                        sent += 2
                except ConnectionClosed:
                    pass
                deadline = time.monotonic() + 10                # the server lets go, though this client
                while time.monotonic() < deadline:              # has not read a byte
                    closed_at = srv.json("/stats")["sessions"]
                    if closed_at["active"] == 0:
                        break
                    await asyncio.sleep(0.2)
                try:                                            # now read: the replies, then the close
                    async with asyncio.timeout(30):
                        async for _ in ws:
                            pass
                except ConnectionClosed:
                    pass
                return sent, ws.close_code, closed_at

        sent, code, closed_at = run(flood())
        after = rss_mb()
    print(f"flood: {sent} messages sent, close code {code}, RSS {before:.1f} -> {after:.1f} MB")
    assert closed_at["closed_unread"] == 1 and closed_at["active"] == 0, closed_at
    # the close frame waits behind replies the client never read: it sees 4002 if it reads within 2 s,
    # else the dropped connection (1006)
    assert code in (CLOSE_UNREAD, 1006), (code, sent)
    assert after - before < 50, (before, after)


def test_a_silent_session_is_closed_after_the_idle_timeout(packages_dir):
    with running_server(packages_dir, idle_timeout_s=1.0) as srv:
        async def go():
            async with connect(srv.ws) as quiet, connect(srv.ws) as chatty:
                t0 = time.monotonic()
                for _ in range(6):                                     # 1.8 s of stats requests
                    await chatty.send(encode(StatsRequest(seq=1)))
                    await chatty.recv()
                    await asyncio.sleep(0.3)
                await asyncio.wait_for(quiet.wait_closed(), 5)
                return quiet.close_code, time.monotonic() - t0, chatty.state.name

        code, waited, chatty_state = run(go())
        snap = srv.json("/stats")
    assert code == CLOSE_IDLE and waited < 5
    assert chatty_state == "OPEN"                                      # a session that talks stays
    assert snap["sessions"]["closed_idle"] >= 1


def _handshake(url: str, origin: str | None) -> int | None:
    """The HTTP status a websocket handshake gets (None: accepted)."""
    async def go():
        headers = {"Origin": origin} if origin is not None else None
        try:
            async with connect(url, additional_headers=headers, open_timeout=10):
                return None
        except InvalidStatus as exc:
            return exc.response.status_code
    return run(go(), 30)


def test_foreign_pages_and_hosts_are_refused(packages_dir):
    with running_server(packages_dir) as srv:
        own = f"http://127.0.0.1:{srv.server.port}"
        assert _handshake(srv.ws, None) is None                        # not a browser
        assert _handshake(srv.ws, own) is None                         # the server's own page
        assert _handshake(srv.ws, "http://evil.example") == 403
        assert _handshake(srv.ws, "null") == 403
        assert _handshake(srv.ws, f"http://evil.example:{srv.server.port}") == 403
        # DNS rebinding: a foreign name that resolves to 127.0.0.1
        status, body, _ = srv.get("/packages", {"Host": f"evil.example:{srv.server.port}"})
        assert status == 403 and b"Host" in body
        assert srv.get("/packages", {"Host": f"localhost:{srv.server.port}"})[0] == 200
        assert srv.get("/health", {"Host": "evil.example"})[0] == 200    # health checks need no name
        snap = srv.json("/stats")
        assert snap["refused"]["origin"] == 3 and snap["refused"]["host"] == 1
    with running_server(packages_dir, allow_origins=("http://app.example:3000",)) as srv:
        assert _handshake(srv.ws, "http://app.example:3000") is None
        assert _handshake(srv.ws, "http://evil.example") == 403


def test_range_requests_read_only_the_bytes_they_answer(server, packages_dir):
    video = (packages_dir / "anchor" / "video.mp4").read_bytes()
    assert len(video) > 1_000_000

    def one(i: int) -> bytes:
        req = urllib.request.Request(server.http + "/packages/anchor/video", headers={"Range": f"bytes={i}-{i}"})
        with urllib.request.urlopen(req, timeout=30) as r:
            assert r.status == 206
            return r.read()

    read0 = bytes_read()
    with concurrent.futures.ThreadPoolExecutor(200) as pool:
        bodies = list(pool.map(one, range(200)))
    read = bytes_read() - read0
    assert bodies == [video[i:i + 1] for i in range(200)]
    assert read < 20 * 2**20, read                # the old code read the whole file per request: 200 x 6 MB
    status, body, headers = server.get("/packages/anchor/video", {"Range": "bytes=0-"})
    assert status == 206 and body == video[:len(body)] and len(body) <= 4 << 20
    assert headers["Content-Range"] == f"bytes 0-{len(body) - 1}/{len(video)}"


def test_a_link_out_of_the_served_folder_is_refused(built, tmp_path):
    from runtime.errors import PackageError
    from runtime.server import check_packages
    from runtime.store import PackageStore
    from tests.conftest import link_package

    served = tmp_path / "served"
    link_package(built("face_1").path, served / "inside")
    (served / "outside").symlink_to(built("German_20s").path, target_is_directory=True)
    with pytest.raises(PackageError, match="outside the served folder"):
        PackageStore(served).folder("outside")
    store = PackageStore(served)
    assert check_packages(store) == ["inside"]                  # the link is left out, with a warning
    assert store.names() == ["inside"]


def test_fuzzed_messages_get_answers_and_the_session_goes_on(server, speech):
    """3000 mutated client messages on one connection: each is answered (ERROR or a reply) or ignored,
    the connection stays open, and afterwards a clean stream on it still gets its frames."""
    from runtime.protocol import AudioChunk, Frame, Hello, decode, float32_to_pcm

    from .fuzz import messages

    async def go():
        async with connect(server.ws, max_size=2**21) as ws:
            await ws.send(encode(Hello(seq=0)))                 # binary replies, whatever the fuzz asks
            await ws.recv()
            for payload in messages(seed=11, n=3000):
                await ws.send(payload)
            await ws.send(encode(Hello(seq=0)))                 # back to binary replies
            await ws.send(encode(StatsRequest(seq=424242)))     # a marker: everything before it is answered
            replies = 0
            while True:
                data = await asyncio.wait_for(ws.recv(), 30)
                replies += 1
                if isinstance(data, bytes) and decode(data).seq == 424242:
                    break
            x = speech[16_000 * 5:16_000 * 5 + 6400]
            frames = []
            for i in range(10):
                await ws.send(encode(AudioChunk(seq=1000 + i, pcm=float32_to_pcm(x[i * 640:(i + 1) * 640]))))
            while len(frames) < 8:
                msg = decode(await asyncio.wait_for(ws.recv(), 30))
                if isinstance(msg, Frame) and msg.seq >= 1000:   # (fuzzed chunks that were valid get frames too)
                    frames.append(msg)
            return replies, [f.seq for f in frames]

    replies, seqs = run(go())
    assert replies > 1000
    assert seqs == list(range(1000, 1008))
    assert server.json("/health")["status"] == "ok"


def _raw_http(port: int, request: bytes, read: bool = True) -> tuple[int, bytes] | socket.socket:
    """Send ``request`` as it is; the status and body, or (read=False) the socket, never read."""
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    s.sendall(request)
    if not read:
        return s
    data = b""
    with s:
        while chunk := s.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), body


def test_video_downloads_without_a_range_hold_no_memory(server, packages_dir):
    """60 GETs of a 6 MB video.mp4 without a Range header, none of them read: the server answers each
    with a short 400 that says to ask in parts, so its memory does not grow by the file's size each."""
    port = server.server.port
    before = rss_mb()
    sockets = [_raw_http(port, f"GET /packages/anchor/video HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n".encode(),
                         read=False) for _ in range(60)]
    time.sleep(1.0)
    grown = rss_mb() - before
    for s in sockets:
        s.close()
    status, body = _raw_http(port, f"GET /packages/anchor/video HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
                                   "Connection: close\r\n\r\n".encode())
    assert status == 400 and b"Range header" in body
    assert grown < 50, f"{grown:.0f} MB for 60 unread downloads (the old code: one whole file each, 360 MB)"


def test_bad_headers_and_ranges_get_4xx_not_500(server, packages_dir):
    port = server.server.port
    host = f"Host: 127.0.0.1:{port}\r\n"
    size = (packages_dir / "anchor" / "video.mp4").stat().st_size
    cases = {
        "two Host headers": (f"GET /health HTTP/1.1\r\n{host}{host}Connection: close\r\n\r\n", 400),
        "two Origin headers": (f"GET /ws HTTP/1.1\r\n{host}Origin: http://a\r\nOrigin: http://b\r\n"
                               "Connection: close\r\n\r\n", 400),
        "5,000-digit range": (f"GET /packages/anchor/video HTTP/1.1\r\n{host}Range: bytes={'9' * 5000}-\r\n"
                              "Connection: close\r\n\r\n", 416),
        "several ranges": (f"GET /packages/anchor/video HTTP/1.1\r\n{host}Range: bytes=0-1,5-9\r\n"
                           "Connection: close\r\n\r\n", 416),
        "overlapping ranges": (f"GET /packages/anchor/video HTTP/1.1\r\n{host}Range: bytes=0-100,50-150\r\n"
                               "Connection: close\r\n\r\n", 416),
        "other units": (f"GET /packages/anchor/video HTTP/1.1\r\n{host}Range: frames=0-1\r\n"
                        "Connection: close\r\n\r\n", 416),
    }
    got = {name: _raw_http(port, request.encode())[0] for name, (request, _) in cases.items()}
    assert got == {name: want for name, (_, want) in cases.items()}
    status, _, headers = server.get("/packages/anchor/video", {"Range": "bytes=0-1,5-9"})
    assert status == 416 and headers["Content-Range"] == f"bytes */{size}"
    assert server.json("/health")["status"] == "ok"                 # and the server goes on


def test_a_package_added_later_cannot_serve_a_linked_video(built, tmp_path):
    """In folder mode a package folder that appears after start, whose video.mp4 is a link to a file
    outside it, is not served that file."""
    root = tmp_path / "served"
    link_package(built("German_20s").path, root / "anchor")
    secret = tmp_path / "secret.txt"
    secret.write_text("not for the web")
    with running_server(root) as srv:
        late = root / "late"
        late.mkdir()
        (late / "manifest.json").write_text("{}")
        (late / "video.mp4").symlink_to(secret)
        status, body, _ = srv.get("/packages/late/video")
        assert status == 404 and b"not for the web" not in body
        status, body, _ = srv.get("/packages/late/video", {"Range": "bytes=0-3"})
        assert status == 404 and b"not for the web" not in body
