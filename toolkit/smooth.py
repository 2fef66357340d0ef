"""Temporal smoothing of landmarks and crop boxes, and the jitter measure.

The build is offline, so smoothing is zero-phase (a Gaussian over time, run
forward and backward), applied inside each run of usable frames only: a lost
stretch is never smoothed across.

Jitter is the RMS frame-to-frame noise of the crop centre in source pixels,
estimated from the second difference: for a smooth path plus white noise of
standard deviation sigma, ``x[t+1] - 2 x[t] + x[t-1]`` has variance ``6 sigma^2``,
so ``jitter = rms(second difference) / sqrt(6)``. Steady motion of the head
does not count; shake does.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .track import frame_ranges


@dataclass(frozen=True)
class SmoothConfig:
    landmark_sigma: float = 1.0   # frames; light, so lip motion survives (-3 dB near 5 Hz at 25 fps)
    centre_sigma: float = 2.0     # frames; crop centre
    size_sigma: float = 6.0       # frames; crop size changes slowly
    crop_scale: float = 1.6       # crop side / larger side of the landmarks' bounding box
    crop_lift: float = 0.10       # shift the crop up by this fraction of its side (forehead in view)


def gaussian1d(x: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian filter along axis 0, edges extended by repetition (scipy's ``mode="nearest"``).

    The kernel reaches 4 sigma each side, as scipy's ``gaussian_filter1d`` does;
    written here so the build does not import scipy.ndimage (0.14 s) for it.
    """
    radius = int(4.0 * sigma + 0.5)
    taps = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2)
    taps /= taps.sum()
    n = len(x)
    padded = np.concatenate([np.repeat(x[:1], radius, axis=0), x, np.repeat(x[-1:], radius, axis=0)])
    out = np.zeros_like(x, dtype=np.float64)
    for k, w in enumerate(taps):
        out += w * padded[k:k + n]
    return out


def smooth_runs(x: np.ndarray, sigma: float, usable: np.ndarray) -> np.ndarray:
    """Gaussian-smooth ``x`` along axis 0 within each run of usable frames.

    Parameters
    ----------
    x : np.ndarray [shape=(N, ...)]
    sigma : float
        Standard deviation in frames; 0 leaves ``x`` as is.
    usable : np.ndarray [shape=(N,), dtype=bool]
    """
    out = np.array(x, dtype=np.float64, copy=True)
    if sigma <= 0:
        return out.astype(x.dtype)
    for start, stop in frame_ranges(usable):
        if stop - start > 1:
            out[start:stop] = gaussian1d(out[start:stop], sigma)
    return out.astype(x.dtype)


def raw_crop_squares(landmarks: np.ndarray, cfg: SmoothConfig) -> tuple[np.ndarray, np.ndarray]:
    """Crop centre and side for each frame, from its landmarks.

    Returns
    -------
    centres : np.ndarray [shape=(N, 2), dtype=float64] source pixels
    sides : np.ndarray [shape=(N,), dtype=float64] source pixels
    """
    lo, hi = landmarks.min(axis=1), landmarks.max(axis=1)
    sides = cfg.crop_scale * (hi - lo).max(axis=1).astype(np.float64)
    centres = (lo + hi).astype(np.float64) / 2
    centres[:, 1] -= cfg.crop_lift * sides
    return centres, sides


def to_boxes(centres: np.ndarray, sides: np.ndarray) -> np.ndarray:
    """Integer square boxes ``x0, y0, x1, y1`` (x1 - x0 == y1 - y0), in source pixels.

    Returns
    -------
    np.ndarray [shape=(N, 4), dtype=int32]
    """
    side = np.maximum(2, np.round(sides)).astype(np.int64)
    x0 = np.round(centres[:, 0] - side / 2).astype(np.int64)
    y0 = np.round(centres[:, 1] - side / 2).astype(np.int64)
    return np.stack([x0, y0, x0 + side, y0 + side], axis=1).astype(np.int32)


def jitter_px(centres: np.ndarray, usable: np.ndarray | None = None) -> float:
    """RMS frame-to-frame noise of a path, in its units (see the module docstring)."""
    if usable is None:
        usable = np.ones(len(centres), bool)
    diffs = []
    for start, stop in frame_ranges(usable):
        if stop - start >= 3:
            seg = np.asarray(centres[start:stop], np.float64)
            diffs.append(seg[2:] - 2 * seg[1:-1] + seg[:-2])
    if not diffs:
        return 0.0
    d = np.concatenate(diffs)
    return float(np.sqrt(np.mean(np.sum(d ** 2, axis=-1)) / 6.0))


@dataclass
class Smoothed:
    landmarks: np.ndarray         # (N, 68, 2) float32, source pixels
    boxes: np.ndarray             # (N, 4) int32, source pixels
    jitter_raw: float             # px RMS, crop centre before smoothing
    jitter_smoothed: float        # px RMS, after


def smooth_track(landmarks: np.ndarray, usable: np.ndarray, cfg: SmoothConfig = SmoothConfig()) -> Smoothed:
    """Smooth landmarks and derive smoothed square crop boxes."""
    lm = smooth_runs(landmarks, cfg.landmark_sigma, usable)
    raw_c, raw_s = raw_crop_squares(landmarks, cfg)
    centres = smooth_runs(raw_c, cfg.centre_sigma, usable)
    sides = smooth_runs(raw_s, cfg.size_sigma, usable)
    return Smoothed(landmarks=lm.astype(np.float32), boxes=to_boxes(centres, sides),
                    jitter_raw=jitter_px(raw_c, usable), jitter_smoothed=jitter_px(centres, usable))
