"""The sans-I/O session: what the server answers, without sockets."""

from __future__ import annotations

import shutil
import time

import numpy as np

from runtime.protocol import AudioChunk, Capabilities, Error, ErrorCode, Frame, FrameStatus, Hello, float32_to_pcm
from runtime.metrics import Metrics
from runtime.render import HOLD_FRAMES, Renderers, pingpong
from runtime.session import OVERLOAD_S, Session
from runtime.store import PackageStore


def chunk(seq, samples):
    return AudioChunk(seq=seq, pcm=float32_to_pcm(samples))


def test_pingpong_walks_back_and_forth():
    assert [pingpong(t, 4) for t in range(10)] == [0, 1, 2, 3, 2, 1, 0, 1, 2, 3]
    assert [pingpong(t, 1) for t in range(3)] == [0, 0, 0]


def test_frames_follow_chunks_after_two_chunks_of_lookahead(packages_dir, speech):
    s = Session(PackageStore(packages_dir), Metrics())
    assert isinstance(s.handle(Hello(seq=0))[0], Capabilities)
    x = speech[16_000 * 5:]
    answers = [s.handle(chunk(100 + i, x[i * 640:(i + 1) * 640])) for i in range(6)]
    assert [len(a) for a in answers] == [0, 0, 1, 1, 1, 1]
    assert [a[0].seq for a in answers[2:]] == [100, 101, 102, 103]
    tail = s.flush()                            # the client went quiet: the last two chunks
    assert [f.seq for f in tail] == [104, 105]
    assert [f.base_frame for a in answers[2:] for f in a] + [f.base_frame for f in tail] == list(range(6))


def test_overload_uses_the_cheapest_tier(packages_dir, speech):
    metrics = Metrics()
    s = Session(PackageStore(packages_dir), metrics)
    x = speech[16_000 * 5:]
    late = time.perf_counter() - OVERLOAD_S - 0.05          # as if it waited in a queue
    out = []
    for i in range(8):
        out += s.handle(chunk(i, x[i * 640:(i + 1) * 640]), received_at=late)
    assert all(isinstance(f, Frame) for f in out)
    assert all(f.server_us > OVERLOAD_S * 1e6 for f in out)  # the wait is part of the server time
    tiers = metrics.snapshot()["packages"]["anchor"]["tiers"]
    assert set(tiers) <= {"static:overload", "idle"} and tiers.get("static:overload", 0) > 0


def test_unknown_package_in_a_chunk_keeps_the_session(packages_dir, speech):
    s = Session(PackageStore(packages_dir), Metrics())
    err = s.handle(AudioChunk(seq=3, package="face1/../anchor", pcm=float32_to_pcm(speech[:640])))[0]
    assert isinstance(err, Error) and err.code == ErrorCode.UNKNOWN_PACKAGE and err.seq == 3
    assert s.package == "anchor"


def test_idle_frames_for_silence(packages_dir):
    s = Session(PackageStore(packages_dir), Metrics())
    out = []
    for i in range(5):
        out += s.handle(chunk(i, np.zeros(640, np.float32)))
    assert len(out) == 3 and all(f.status == FrameStatus.IDLE for f in out)


def test_batching_across_sessions_gives_the_same_frames(packages_dir, speech):
    store = PackageStore(packages_dir)
    renderers = Renderers(store)
    x = speech[16_000 * 5:]
    one = [Session(store, Metrics()) for _ in range(2)]
    together = [Session(store, Metrics()) for _ in range(2)]
    alone_frames, batch_frames = [], []
    for i in range(20):
        for s, off in zip(one, (0, 16_000)):
            alone_frames += s.handle(chunk(i, x[off + i * 640:off + (i + 1) * 640]))
        prepared = [s.prepare(chunk(i, x[off + i * 640:off + (i + 1) * 640]))
                    for s, off in zip(together, (0, 16_000))]
        works = [(s, work) for s, (_, work) in zip(together, prepared) if work is not None]
        for (s, work), rendered in zip(works, renderers.render([w.job for _, w in works])):
            batch_frames += s.finish(work, rendered)
    assert len(alone_frames) == len(batch_frames) == 36
    for a, b in zip(alone_frames, batch_frames):
        assert (a.seq, a.base_frame, a.status, a.jpeg) == (b.seq, b.base_frame, b.status, b.jpeg)


def test_a_batch_renders_as_frames_one_by_one(packages_dir, speech):
    """A session's frames batched together (speech, a pause long enough to rest, speech again) give the
    same JPEGs as the same frames rendered one at a time: the reset at rest happens in frame order."""
    from runtime.stream import window_from_pcm

    renderer = Renderers(PackageStore(packages_dir)).get("anchor")
    x = speech[16_000 * 5:]
    quiet = [False] * 2 + [True] * (HOLD_FRAMES + 4) + [False] * 3
    n = len(quiet)
    mels = [window_from_pcm(x[k * 640:k * 640 + 10_240]) for k in range(n)]
    bases = list(range(n))
    one_state, batch_state = {"rest": 0.0}, {"rest": 0.0}
    one = [renderer.render([b], [m], [one_state], [q])[0] for b, m, q in zip(bases, mels, quiet)]
    batch = renderer.render(bases, mels, [batch_state] * n, quiet)
    assert [r.status for r in batch] == [r.status for r in one] and one[n - 4].status == FrameStatus.IDLE
    assert [r.jpeg for r in batch] == [r.jpeg for r in one]
    assert batch_state["retrieval"].prev == one_state["retrieval"].prev >= 0    # the speech after the pause counts


def test_the_mouth_holds_through_short_pauses_and_rests_in_long_ones(packages_dir, speech):
    """Quiet frames keep the generator running for HOLD_FRAMES (lips stay where speech left them between
    words); after that the mouth eases to rest in three frames, and out of it in three."""
    renderer = Renderers(PackageStore(packages_dir)).get("anchor")
    from runtime.stream import window_from_pcm

    mel = window_from_pcm(speech[16_000 * 5:16_000 * 5 + 10_240])
    quiet = [False] * 3 + [True] * HOLD_FRAMES + [False] * 2 + [True] * (HOLD_FRAMES + 5) + [False] * 4
    state = renderer.new_state(rest=0.0)
    frames = [renderer.render([k], [mel], [state], [q])[0] for k, q in enumerate(quiet)]
    rest = [f.status == FrameStatus.IDLE for f in frames]
    short = slice(3, 3 + HOLD_FRAMES + 2)                 # a pause of HOLD_FRAMES: never rests
    assert not any(rest[short]) and all(f.tier == "retrieval" for f in frames[short])
    start = 3 + HOLD_FRAMES + 2                           # the long pause: HOLD_FRAMES held, 2 easing, then rest
    assert rest[start:start + HOLD_FRAMES + 5] == [False] * (HOLD_FRAMES + 2) + [True] * 3
    assert not any(rest[-4:])                             # speech again: out of rest at once
    assert state["quiet"] == 0 and state["rest"] == 0.0


def test_speech_in_the_lookahead_starts_opening_the_mouth(packages_dir, speech):
    """A silent frame whose 80 ms look-ahead holds speech is not quiet: the mouth leaves rest before the sound."""
    s = Session(PackageStore(packages_dir), Metrics())
    x = np.concatenate([np.zeros(640 * 12, np.float32), speech[16_000 * 5:16_000 * 5 + 640 * 6]])
    out = [f for i in range(18) for f in s.handle(chunk(i, x[i * 640:(i + 1) * 640]))]
    status = [f.status for f in out]
    assert status[:10] == [FrameStatus.IDLE] * 10        # silence, and nothing ahead yet
    assert status[10] == FrameStatus.OK                   # silent itself, speech starts 80 ms later


def test_a_single_package_folder_may_have_any_name(built, tmp_path, speech):
    folder = tmp_path / "my speaker (take 2)"
    shutil.copytree(built("face_1").path, folder)
    store = PackageStore(folder)
    assert store.names() == ["my speaker (take 2)"]
    s = Session(store, Metrics())
    out = [f for i in range(4) for f in s.handle(chunk(i, speech[16_000 * 5 + i * 640:][:640]))]
    assert len(out) == 2 and all(isinstance(f, Frame) for f in out)
