"""Lip-sync quality measures, all computable offline from frames, landmarks and audio.

Conventions: frames are RGB uint8 face crops in the package's crop geometry;
landmarks are 68 iBUG points in crop pixels; one value per video frame.

- **Mouth opening**: mean gap of the three inner-lip pairs (61-67, 62-66,
  63-65) divided by the outer-eye-corner distance (36-45), so it does not
  depend on the face's size. Typical speech: 0.02 (closed) to 0.10 (open).
- **LMD**: mean Euclidean distance between generated and real mouth points
  (48-67), in crop pixels, after aligning each pair's mouth centroids.
- **Sync offset**: the package's mouth-shape model (:mod:`runtime.mouth`)
  predicts each frame's mouth opening from the audio; the measured opening is
  cross-correlated with that prediction over +-6 frames, and the peak (refined
  to a fraction of a frame) is the offset, with a block-bootstrap interval.
  Positive: the audio comes after the mouth. The model was fitted on real
  frames with the audio under them, so real footage in sync scores 0 (checked
  on the shared clips: see :func:`sync_offset`). The envelope of the audio
  against the opening (the estimator this replaced) scored real, in-sync
  frames at +80 to +400 ms: loudness peaks on vowels, after the mouth opens,
  and varies with the phonemes, so its lag is not the offset.
- **Open in silence**: the share of silent frames (RMS below the server's idle
  threshold) whose mouth opening exceeds OPEN_THRESHOLD.
- **Flicker**: mean absolute change of the mouth region's grey level between
  consecutive frames (0-255).
"""

from __future__ import annotations

import cv2
import numpy as np

from runtime import features as F
from runtime.landmarks import EYE_CORNERS, INNER_LIP_PAIRS, LIPS
from runtime.stream import IDLE_RMS, window_features

from . import stats

OPEN_THRESHOLD = 0.04          # mouth opening above this counts as open (closed lips measure 0.01-0.03)
SYNC_MAX_LAG = 6               # frames each way for the offset search (+-240 ms)
MIN_SYNC_PEAK = 0.15           # a peak correlation below this says nothing about the offset
MAX_SYNC_CI_MS = 120.0         # an offset whose 95 % interval is wider than this is reported as undetermined
MIN_SYNC_S = 4.0               # seconds of frames the offset needs (several bootstrap blocks)
ENVELOPE_BANDS = slice(5, 45)  # mel bands of the audio envelope (~150-2300 Hz: voiced speech)


def mouth_opening(landmarks: np.ndarray) -> np.ndarray:
    """Inner-lip gap over eye-corner distance.

    Parameters
    ----------
    landmarks : np.ndarray [shape=(T, 68, 2)]

    Returns
    -------
    np.ndarray [shape=(T,), dtype=float64]
    """
    lm = np.asarray(landmarks, dtype=np.float64)
    gap = np.mean([np.linalg.norm(lm[:, a] - lm[:, b], axis=1) for a, b in INNER_LIP_PAIRS], axis=0)
    eyes = np.linalg.norm(lm[:, EYE_CORNERS[0]] - lm[:, EYE_CORNERS[1]], axis=1)
    return gap / np.maximum(eyes, 1e-6)


def lmd_per_frame(generated: np.ndarray, real: np.ndarray) -> np.ndarray:
    """Per-frame LMD after moving each generated mouth's centroid onto the real one's: (T,) crop pixels.

    The generated frames sit on other base frames than the real ones (the head
    is elsewhere by a few pixels), so the mouth's shape is compared, not its place.
    """
    g, r = np.asarray(generated, np.float64)[:, LIPS], np.asarray(real, np.float64)[:, LIPS]
    g = g - g.mean(axis=1, keepdims=True) + r.mean(axis=1, keepdims=True)
    return np.linalg.norm(g - r, axis=2).mean(axis=1)


def pearson(a: np.ndarray, b: np.ndarray) -> float:
    """Correlation coefficient; 0.0 where either signal is constant."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    sa, sb = a.std(), b.std()
    if sa < 1e-12 or sb < 1e-12:
        return 0.0
    return float(((a - a.mean()) * (b - b.mean())).mean() / (sa * sb))


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """Peak signal-to-noise ratio in dB between uint8 images (inf when identical)."""
    mse = np.mean((np.asarray(a, np.float64) - np.asarray(b, np.float64)) ** 2)
    return float("inf") if mse == 0 else float(10 * np.log10(255.0 ** 2 / mse))


def ssim(a: np.ndarray, b: np.ndarray) -> float:
    """Structural similarity of two RGB uint8 images, on grey levels.

    Wang et al. (2004): Gaussian window sigma 1.5, K1 = 0.01, K2 = 0.03, L = 255;
    the mean of the SSIM map.
    """
    ga = cv2.cvtColor(np.ascontiguousarray(a), cv2.COLOR_RGB2GRAY).astype(np.float64)
    gb = cv2.cvtColor(np.ascontiguousarray(b), cv2.COLOR_RGB2GRAY).astype(np.float64)
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    blur = lambda x: cv2.GaussianBlur(x, (11, 11), 1.5)
    mu_a, mu_b = blur(ga), blur(gb)
    var_a = blur(ga * ga) - mu_a ** 2
    var_b = blur(gb * gb) - mu_b ** 2
    cov = blur(ga * gb) - mu_a * mu_b
    num = (2 * mu_a * mu_b + c1) * (2 * cov + c2)
    den = (mu_a ** 2 + mu_b ** 2 + c1) * (var_a + var_b + c2)
    return float(np.mean(num / den))


def audio_envelope(audio16k: np.ndarray, frames: int, fps: float = 25.0) -> np.ndarray:
    """Speech-band loudness per video frame: mean log-mel of ENVELOPE_BANDS over the frame's rows."""
    mel = F.log_mel(np.asarray(audio16k, np.float32))
    band = mel[:, ENVELOPE_BANDS].mean(axis=1)
    per = F.mel_frames_per_video_frame(fps)
    starts = np.floor(np.arange(frames) * per + 1e-9).astype(int)
    out = np.full(frames, band.min() if len(band) else 0.0)
    for k, s in enumerate(starts):
        rows = band[s:s + int(np.ceil(per))]
        if len(rows):
            out[k] = rows.mean()
    return out


def predicted_opening(model, audio16k: np.ndarray, frames: int, fps: float = 25.0) -> np.ndarray:
    """Mouth opening the package's mouth-shape model expects from the audio, per video frame.

    The same mel windows the server hands the generators (:func:`runtime.stream.window_features`).
    """
    mel = F.log_mel(np.asarray(audio16k, np.float32))
    windows = window_features(mel, np.arange(frames), fps)
    return model.opening(model.predict(windows, restore=False))


def sync_offset(predicted: np.ndarray, opening: np.ndarray, fps: float = 25.0, max_lag: int = SYNC_MAX_LAG,
                resamples: int = stats.RESAMPLES) -> dict:
    """Audio-visual offset: the lag that best lines the mouth up with what the audio predicts.

    ``predicted`` is :func:`predicted_opening` of the audio, ``opening`` the mouth
    opening measured on the frames. For each lag L in -max_lag ... max_lag frames
    the Pearson correlation of ``predicted[k]`` with ``opening[k + L]`` is taken over
    the same k for every lag; the peak is refined by a parabola through it and its
    neighbours. Positive offset: the audio comes after the mouth. The 95 % interval
    is the block bootstrap's (:mod:`toolkit.evaluate.stats`) over the same pairs.

    Returns
    -------
    dict
        ``offset_ms``, ``ci95`` [lo, hi] ms, ``correlation`` at the peak, ``determined``
        (peak correlation >= MIN_SYNC_PEAK, peak inside the lag range and interval no
        wider than MAX_SYNC_CI_MS; otherwise the offset says nothing), ``curve`` [(offset_ms, corr)].
    """
    p, o = np.asarray(predicted, np.float64), np.asarray(opening, np.float64)
    n = min(len(p), len(o))
    p, o = p[:n], o[:n]
    ms = 1000.0 / fps
    if n < 2 * max_lag + 10:
        return {"offset_ms": None, "ci95": [None, None], "correlation": None, "determined": False,
                "undetermined_because": f"only {n} frames", "curve": []}
    if not (np.isfinite(p).all() and np.isfinite(o).all()):
        return {"offset_ms": None, "ci95": [None, None], "correlation": None, "determined": False,
                "undetermined_because": "NaN or infinity in the mouth openings", "curve": []}
    lags = np.arange(-max_lag, max_lag + 1)
    k = np.arange(max_lag, n - max_lag)
    a = p[k]                                       # (m,)
    b = o[k[None, :] + lags[:, None]]              # (lags, m)
    curve = stats.rowwise_pearson(a[None, :], b)
    lag = _peak(curve[None, :], lags)[0]
    idx = stats.block_indices(len(k), fps, resamples)
    boot_lag = np.concatenate([_peak(stats.rowwise_pearson(a[c][:, None, :], b[:, c].transpose(1, 0, 2)), lags)
                               for c in np.array_split(idx, max(1, len(idx) * len(k) // 2_000_000))])  # bounded memory
    lo, hi = stats.interval(-boot_lag * ms)
    best = float(curve.max())
    if p.std() < 1e-12 or o.std() < 1e-12:
        reason = "one of the two series is constant (a still mouth, or audio without speech)"
    elif len(k) < MIN_SYNC_S * fps:
        reason = f"only {len(k) / fps:.1f} s of frames; the offset needs {MIN_SYNC_S:g} s"
    elif best < MIN_SYNC_PEAK:
        reason = f"the mouth does not follow the audio (peak correlation {best:.2f} < {MIN_SYNC_PEAK})"
    elif abs(lag) >= max_lag:
        reason = f"the peak is at the edge of the +-{max_lag * ms:.0f} ms search"
    elif hi - lo > MAX_SYNC_CI_MS:
        reason = f"the 95 % interval is {hi - lo:.0f} ms wide (> {MAX_SYNC_CI_MS:.0f} ms)"
    else:
        reason = ""
    if p.std() < 1e-12 or o.std() < 1e-12:
        return {"offset_ms": None, "ci95": [None, None], "correlation": round(best, 4), "determined": False,
                "undetermined_because": reason, "curve": []}
    return {"offset_ms": round(float(-lag * ms), 1), "ci95": [round(lo, 1), round(hi, 1)],
            "correlation": round(best, 4), "determined": not reason, "undetermined_because": reason or None,
            "curve": [(round(float(-L * ms), 1), round(float(c), 4)) for L, c in zip(lags, curve)]}


def _peak(curves: np.ndarray, lags: np.ndarray) -> np.ndarray:
    """Fractional lag of each row's maximum, refined by a parabola through the peak and its neighbours."""
    i = np.argmax(curves, axis=1)
    inner = (i > 0) & (i < len(lags) - 1)
    j = np.clip(i, 1, len(lags) - 2)
    rows = np.arange(len(curves))
    left, mid, right = curves[rows, j - 1], curves[rows, j], curves[rows, j + 1]
    den = left - 2 * mid + right
    delta = np.where(inner & (den < -1e-12), 0.5 * (left - right) / np.where(den < -1e-12, den, -1.0), 0.0)
    return lags[i] + np.clip(delta, -0.5, 0.5)


def open_in_silence(rms: np.ndarray, opening: np.ndarray, threshold: float = OPEN_THRESHOLD) -> float | None:
    """Share of silent frames whose mouth is open; None when no frame is silent."""
    silent = np.asarray(rms) < IDLE_RMS
    if not silent.any():
        return None
    return float(np.mean(np.asarray(opening)[silent] > threshold))


def flicker(frames: list[np.ndarray] | np.ndarray, region: tuple[int, int, int, int]) -> float:
    """Mean absolute grey-level change of ``region`` (x0, y0, x1, y1) between consecutive frames."""
    x0, y0, x1, y1 = region
    grey = [cv2.cvtColor(np.ascontiguousarray(f[y0:y1, x0:x1]), cv2.COLOR_RGB2GRAY).astype(np.float32)
            for f in frames]
    if len(grey) < 2:
        return 0.0
    return float(np.mean([np.abs(b - a).mean() for a, b in zip(grey, grey[1:])]))


class MouthMeter:
    """Landmarks of face crops with the toolkit's landmark backend.

    The face box of each base frame is detected once on the package's own crop
    and cached: the mouth moves, the face does not.
    """

    def __init__(self, backend, package):
        self.backend = backend
        self.package = package
        self._boxes: dict[int, np.ndarray] = {}

    def box(self, base: int) -> np.ndarray:
        if base not in self._boxes:
            crop = np.asarray(self.package.crops[base])
            found = self.backend.detect(crop)
            if len(found):
                best = found[np.argmax((found[:, 2] - found[:, 0]) * (found[:, 3] - found[:, 1]))]
                self._boxes[base] = best[:4]
            else:                                  # fall back on the package's own landmarks
                lm = np.asarray(self.package.landmarks[base])
                self._boxes[base] = np.r_[lm.min(0), lm.max(0)].astype(np.float32)
        return self._boxes[base]

    def measure(self, crop: np.ndarray, base: int) -> np.ndarray:
        """68 points (crop pixels) of a generated or real crop rendered on ``base``."""
        return self.backend.landmarks(np.ascontiguousarray(crop), self.box(base))
