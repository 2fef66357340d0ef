"""The streaming audio front end: same features as the toolkit, bounded look-ahead, resampling."""

from __future__ import annotations

import numpy as np
import pytest

from runtime import features as F
from runtime.stream import (CONTEXT_ROWS, IDLE_RMS, LOOKAHEAD_MS, AudioStream, Resampler, frame_window,
                            window_features, window_from_pcm)


def stream_all(x: np.ndarray, chunk: int, rate: int = 16_000) -> list:
    s = AudioStream(25)
    out = []
    for i in range(0, len(x), chunk):
        s.push(x[i:i + chunk], rate)
        out += s.pop()
    s.flush()
    return out + s.pop()


@pytest.mark.parametrize("chunk", [640, 333, 4000])
def test_streamed_windows_equal_offline_features(speech, chunk):
    x = speech[: 16_000 * 6]
    mel = F.log_mel(x)
    frames = stream_all(x, chunk)
    assert [f.index for f in frames] == list(range(len(x) // 640))
    for f in frames:
        np.testing.assert_allclose(f.mel, frame_window(mel, f.index, 25), atol=1e-5)
    batch = window_features(mel, range(len(frames)), 25)
    np.testing.assert_allclose(batch, np.stack([f.mel for f in frames]), atol=1e-5)


def test_lookahead_is_two_chunks_and_documented_bound(speech):
    assert LOOKAHEAD_MS <= 120
    s = AudioStream(25)
    ready = []
    for k in range(10):
        s.push(speech[k * 640:(k + 1) * 640])
        ready.append([f.index for f in s.pop()])
    # frame k is out once chunk k + 2 is in, never earlier
    assert ready[0] == [] and ready[1] == [] and ready[2] == [0] and ready[9] == [7]
    # and its window needs no audio past chunk k + 2: the same window with the future cut there
    x = speech[: 640 * 3]
    np.testing.assert_allclose(frame_window(F.log_mel(speech[:16_000]), 0, 25)[:CONTEXT_ROWS],
                               stream_all(x, 640)[0].mel, atol=1e-5)


@pytest.mark.parametrize("rate", [24_000, 48_000])
def test_resampler_passes_a_tone_and_is_chunk_independent(rate):
    t = np.arange(rate) / rate
    tone = (0.5 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
    whole = Resampler(rate)(tone)
    step = rate * 40 // 1000
    r = Resampler(rate)
    chunked = np.concatenate([r(tone[i:i + step]) for i in range(0, rate, step)])
    assert len(whole) == len(chunked) == 16_000
    np.testing.assert_allclose(whole, chunked, atol=1e-6)
    out_t = np.arange(16_000) / 16_000
    best = min(np.abs(chunked[800:-800] - 0.5 * np.sin(2 * np.pi * 440 * (out_t[800:-800] - d / rate))).max()
               for d in range(0, 200))
    assert best < 1e-3                       # a pure delay of under 200 input samples, no distortion


def test_resampler_removes_content_above_8khz():
    rate = 48_000
    t = np.arange(rate) / rate
    high = np.sin(2 * np.pi * 12_000 * t).astype(np.float32)       # would alias to 4 kHz at 16 kHz
    out = Resampler(rate)(high)
    assert np.sqrt(np.mean(out[1000:] ** 2)) < 0.01


def test_48k_stream_features_match_16k(speech):
    x = speech[16_000 * 5:16_000 * 9]
    from scipy.signal import resample_poly      # an independent, band-limited upsampler
    up = resample_poly(x, 3, 1).astype(np.float32)
    a = np.stack([f.mel for f in stream_all(x, 640)])
    b = np.stack([f.mel for f in stream_all(up, 1920, 48_000)])
    assert a.shape == b.shape
    assert np.abs(a - b).mean() < 0.1        # features on a [-4, 4] scale


def test_idle_threshold(speech):
    frames = stream_all(np.zeros(6400, np.float32), 640)
    assert all(f.silent and f.rms == 0 for f in frames)
    loud = stream_all(speech[16_000 * 5:16_000 * 6], 640)
    assert np.mean([f.rms > IDLE_RMS for f in loud]) > 0.5


def test_a_frame_knows_whether_speech_starts_in_its_lookahead(speech):
    """FrameAudio.ahead_rms is the loudest of the next two frames' own audio: the two frames before speech
    starts are silent but not quiet; audio that never came (after a flush) counts as silence."""
    x = np.concatenate([np.zeros(640 * 6, np.float32), speech[16_000 * 5:16_000 * 5 + 640 * 4]])
    frames = stream_all(x, 640)
    assert len(frames) == 10 and frames[6].rms > IDLE_RMS
    assert [f.quiet for f in frames[:6]] == [True] * 4 + [False] * 2
    assert all(f.silent for f in frames[:6])
    assert frames[5].ahead_rms == max(frames[6].rms, frames[7].rms)


def test_window_request_features_match_streaming_on_the_grid(speech):
    mel = F.log_mel(speech[: 16_000 * 8])
    for k in (50, 100, 155):                # k * 3.2 is whole: the two grids coincide
        centre = (k * 40 + 20) * 16
        win = speech[centre - 5120:centre + 5120]
        np.testing.assert_allclose(window_from_pcm(win), frame_window(mel, k, 25), atol=1e-4)
