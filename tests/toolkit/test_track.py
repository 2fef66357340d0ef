"""Tracking, gap filling and smoothing."""

import numpy as np
import pytest

from runtime.package import FLAG_INTERPOLATED, FLAG_LOST, FLAG_MEASURED
from tests.conftest import VIDEOS
from toolkit import faces, video
from toolkit.smooth import jitter_px, smooth_runs
from toolkit.track import FaceTracker, fill_gaps, frame_ranges


def test_tracker_detects_rarely_on_a_real_clip():
    info = video.probe(VIDEOS["face_1"])
    tracker = FaceTracker(faces.create("dlib"))
    found = [len(tracker.step(f)) == 68 for f in video.iter_frames(info, 25)]
    assert all(found)
    n = len(found)
    assert tracker.stats.searches == 1                      # one whole-frame search
    assert tracker.stats.roi_detections <= n // 5 + 1       # then a small region every 5 frames


def test_tracker_loses_a_vanished_face_and_finds_it_again():
    info = video.probe(VIDEOS["German_20s"])
    tracker = FaceTracker(faces.create("dlib"))
    found = []
    for i, frame in enumerate(video.iter_frames(info, 25)):
        if i >= 60:
            break
        shown = frame if not 20 <= i < 35 else np.zeros_like(frame)     # the face leaves for 15 frames
        found.append(len(tracker.step(shown)) == 68)
    found = np.array(found)
    assert found[:20].all() and not found[21:35].any()
    assert found[45:].all()                                  # re-acquired within reacquire_every frames


def test_frame_ranges():
    assert frame_ranges(np.array([0, 1, 1, 0, 1], bool)) == [[1, 3], [4, 5]]
    assert frame_ranges(np.zeros(4, bool)) == []


def test_fill_gaps_interpolates_short_and_flags_long():
    n = 40
    raw = np.tile(np.arange(n, dtype=np.float32)[:, None, None], (1, 68, 2))
    raw[5:8] = np.nan        # 3 frames: interpolated
    raw[20:32] = np.nan      # 12 frames: lost
    filled, flags = fill_gaps(raw, max_gap=4)
    assert np.all(flags[5:8] == FLAG_INTERPOLATED) and np.all(flags[20:32] == FLAG_LOST)
    assert np.all(flags[:5] == FLAG_MEASURED)
    np.testing.assert_allclose(filled[5:8, 0, 0], [5, 6, 7])           # linear between 4 and 8
    assert np.all(filled[20:26, 0, 0] == 19) and np.all(filled[26:32, 0, 0] == 32)   # held, not invented
    assert not np.isnan(filled).any()


def test_fill_gaps_with_no_face_at_all():
    _, flags = fill_gaps(np.full((5, 68, 2), np.nan, np.float32), max_gap=2)
    assert np.all(flags == FLAG_LOST)


def test_jitter_estimates_noise_std():
    rng = np.random.default_rng(0)
    t = np.arange(2000)
    path = np.stack([100 + 30 * np.sin(t / 50), 80 + 0.05 * t], axis=1)   # smooth head motion
    noisy = path + rng.normal(0, 1.5, path.shape) / np.sqrt(2)            # 1.5 px RMS over x and y
    assert jitter_px(path) < 0.05
    assert jitter_px(noisy) == pytest.approx(1.5, rel=0.1)


def test_smoothing_stays_inside_runs():
    x = np.r_[np.zeros(10), np.full(10, 100.0)]
    usable = np.r_[np.ones(10, bool), np.ones(10, bool)]
    usable[10] = False
    out = smooth_runs(x, 3.0, usable)
    assert np.all(out[:10] == 0)           # the jump to 100 never leaks back across the gap


def test_gaussian_matches_scipy():
    from scipy.ndimage import gaussian_filter1d

    from toolkit.smooth import gaussian1d

    x = np.random.default_rng(1).normal(size=(50, 3))
    for sigma in (1.0, 2.0, 6.0):
        np.testing.assert_allclose(gaussian1d(x, sigma), gaussian_filter1d(x, sigma, axis=0, mode="nearest"),
                                   atol=1e-12)
    short = x[:3]                          # shorter than the kernel: edges repeat
    np.testing.assert_allclose(gaussian1d(short, 6.0), gaussian_filter1d(short, 6.0, axis=0, mode="nearest"),
                               atol=1e-12)
