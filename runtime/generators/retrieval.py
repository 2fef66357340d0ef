"""The ``retrieval`` tier: training-free lip motion from the package's own frames.

For each frame's mel window, find the training frames whose own audio context
is nearest, and paste the chosen frame's lower face onto the base crop:

1. **Keys.** Each training frame's 12-row mel window, reduced to 20 bands
   (means of 4 adjacent mel bands), standardised per dimension, with rows
   weighted by a Gaussian centred on the frame (sigma 3 rows) so the audio
   under the frame counts most. 240 numbers per frame. Frames flagged LOST and
   the held-out tail are never keys.
2. **Choice with continuity.** The nearest key wins, except that the frame
   after the session's previous choice is kept when its distance is within
   CONTINUITY (15 %) of the best: runs of consecutive real frames move more
   naturally than a jump every 40 ms.
3. **Alignment.** A similarity transform (Umeyama, least squares) from the
   chosen frame's nose and eye landmarks to the base frame's maps its lower face
   into place.
4. **Blend.** The mask is the union of both frames' lower-face hulls (jaw
   points 3-13 and the nose base 31-35), feathered by a Gaussian blur
   (sigma FEATHER x crop size); only its bounding box is touched.
5. **Smoothing.** The pasted lower face is an exponential moving average over
   the session's frames (weight SMOOTHING on the new one), so the mouth does
   not flicker when the choice jumps.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Sequence

import cv2
import numpy as np

from ..package import Package
from ..stream import CONTEXT_BEFORE, CONTEXT_ROWS, window_features
from .base import Generator, NotReady, Request

BAND_GROUP = 4                 # 80 mel bands -> 20
ROW_SIGMA = 3.0                # rows; Gaussian weight over the window's 12 rows
CONTINUITY = 0.15              # keep prev + 1 when within 15 % of the best distance
SMOOTHING = 0.65               # EMA weight of the new lower face
FEATHER = 0.025                # mask blur sigma as a fraction of the crop size (8 px at 328)
MAX_KEYS = 20_000              # longer packages use every n-th training frame as a key
STABLE = np.r_[27:36, 36:48]   # nose bridge and eyes: they do not move with the mouth
LOWER_FACE = np.r_[3:14, 35, 34, 33, 32, 31]   # jaw 3-13, then the nose base right to left


def reduce_bands(mel: np.ndarray) -> np.ndarray:
    """(..., 80) mel rows -> (..., 20) by averaging groups of 4 bands."""
    return mel.reshape(*mel.shape[:-1], mel.shape[-1] // BAND_GROUP, BAND_GROUP).mean(-1)


def similarity(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Least-squares similarity transform (rotation, uniform scale, shift) mapping src onto dst.

    Parameters
    ----------
    src, dst : np.ndarray [shape=(K, 2)]

    Returns
    -------
    np.ndarray [shape=(2, 3), dtype=float64]
        For ``cv2.warpAffine``.
    """
    src, dst = src.astype(np.float64), dst.astype(np.float64)
    mu_s, mu_d = src.mean(0), dst.mean(0)
    s, d = src - mu_s, dst - mu_d
    cov = d.T @ s / len(src)
    u, sig, vt = np.linalg.svd(cov)
    sign = np.ones(2)
    if np.linalg.det(u) * np.linalg.det(vt) < 0:
        sign[-1] = -1
    rot = u @ np.diag(sign) @ vt
    scale = (sig * sign).sum() / max(s.var(0).sum(), 1e-12)
    m = np.empty((2, 3))
    m[:, :2] = scale * rot
    m[:, 2] = mu_d - scale * rot @ mu_s
    return m


@dataclass
class RetrievalState:
    """Per-session memory: the previous choice and the smoothed lower face."""

    prev: int = -1                                  # package frame chosen last, -1 after a reset
    face: np.ndarray | None = None                  # float32 (S, S, 3), valid inside `box`
    box: tuple[int, int, int, int] | None = None


class RetrievalGenerator(Generator):
    """Nearest-audio frame retrieval with a feathered lower-face paste."""

    name = "retrieval"

    def __init__(self, package: Package, background: bool = True):
        super().__init__(package)
        self.keys: np.ndarray | None = None          # float32 (n, 240)
        self.key_frames: np.ndarray | None = None    # int64 (n,) package frame of each key
        self._row_of = None                           # package frame -> key row, -1 if none
        self._error: BaseException | None = None
        if background:
            self._thread = threading.Thread(target=self._build_safe, name=f"keys-{package.name}", daemon=True)
            self._thread.start()
        else:
            self._thread = None
            self._build()

    # ---------------------------------------------------------------- index

    def _build_safe(self) -> None:
        try:
            self._build()
        except BaseException as exc:       # reported on the next render
            self._error = exc

    def _build(self) -> None:
        pkg = self.package
        frames = pkg.usable_train_frames
        if len(frames) == 0:
            raise NotReady(f"{pkg.root}: no usable training frames for retrieval")
        if len(frames) > MAX_KEYS:
            frames = frames[np.linspace(0, len(frames) - 1, MAX_KEYS).astype(np.int64)]
        mel = reduce_bands(np.asarray(pkg.mel, dtype=np.float32))
        feats = window_features(mel, frames, pkg.fps).reshape(len(frames), -1)
        self._mu = feats.mean(0)
        self._sd = feats.std(0) + 1e-3
        rows = np.arange(CONTEXT_ROWS) - (CONTEXT_BEFORE + 1.6)      # 0 = the frame's centre
        self._w = np.repeat(np.exp(-0.5 * (rows / ROW_SIGMA) ** 2), mel.shape[1]).astype(np.float32)
        keys = ((feats - self._mu) / self._sd * self._w).astype(np.float32)
        row_of = np.full(pkg.frames, -1, dtype=np.int64)
        row_of[frames] = np.arange(len(frames))
        self._norms = (keys ** 2).sum(1)
        self.key_frames, self._row_of = frames, row_of
        self.keys = keys                      # set last: it marks the index as ready

    def wait_ready(self, timeout: float | None = None) -> bool:
        if self._thread is not None:
            self._thread.join(timeout)
        return self.keys is not None

    def query(self, mel: np.ndarray) -> np.ndarray:
        """Squared distances from one mel window (12, 80) to every key: float32 (n,)."""
        q = ((reduce_bands(mel).reshape(-1) - self._mu) / self._sd * self._w).astype(np.float32)
        return self._norms - 2.0 * (self.keys @ q) + float(q @ q)

    def choose(self, mel: np.ndarray, state: RetrievalState) -> int:
        """The package frame to take the lower face from."""
        d = self.query(mel)
        best = int(np.argmin(d))
        if state.prev >= 0 and state.prev + 1 < len(self._row_of):
            row = self._row_of[state.prev + 1]
            if row >= 0 and d[row] <= d[best] + CONTINUITY * abs(d[best]) + 1e-6:
                return state.prev + 1
        return int(self.key_frames[best])

    # ---------------------------------------------------------------- render

    def new_state(self) -> RetrievalState:
        return RetrievalState()

    def reset(self, state: RetrievalState) -> None:
        state.prev, state.face, state.box = -1, None, None

    def render(self, requests: Sequence[Request]) -> list[np.ndarray]:
        if self.keys is None:
            if self._error is not None:
                raise self._error
            raise NotReady(f"retrieval index for {self.package.name} is still being built")
        return [self._render_one(r) for r in requests]

    def _render_one(self, req: Request) -> np.ndarray:
        pkg, state = self.package, req.state
        src = self.choose(req.mel, state)
        lm = pkg.landmarks
        base_lm, src_lm = np.asarray(lm[req.base]), np.asarray(lm[src])
        m = similarity(src_lm[STABLE], base_lm[STABLE])
        warped_lm = src_lm[LOWER_FACE] @ m[:, :2].T + m[:, 2]
        size = pkg.crops.shape[1]
        x0, y0, x1, y1 = self._box(np.vstack([base_lm[LOWER_FACE], warped_lm]), size)
        shift = m.copy()
        shift[:, 2] -= (x0, y0)
        warped = cv2.warpAffine(np.asarray(pkg.crops[src]), shift, (x1 - x0, y1 - y0),
                                flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE).astype(np.float32)
        if state.face is None:      # after a reset: start from the base frame, no smoothing
            state.face = np.asarray(pkg.crops[req.base], dtype=np.float32)
        else:
            warped = SMOOTHING * warped + (1.0 - SMOOTHING) * state.face[y0:y1, x0:x1]
        state.face[y0:y1, x0:x1] = warped
        state.box = (x0, y0, x1, y1)
        state.prev = src
        mask = self._mask(base_lm[LOWER_FACE], warped_lm, (x0, y0, x1, y1))
        out = np.array(pkg.crops[req.base])
        roi = out[y0:y1, x0:x1].astype(np.float32)
        out[y0:y1, x0:x1] = np.clip(roi + mask[..., None] * (warped - roi) + 0.5, 0, 255).astype(np.uint8)
        return out

    @staticmethod
    def _box(points: np.ndarray, size: int) -> tuple[int, int, int, int]:
        pad = int(round(3 * FEATHER * size))
        x0, y0 = np.floor(points.min(0)).astype(int) - pad
        x1, y1 = np.ceil(points.max(0)).astype(int) + pad
        return max(x0, 0), max(y0, 0), min(x1, size), min(y1, size)

    @staticmethod
    def _mask(base_pts: np.ndarray, src_pts: np.ndarray, box: tuple[int, int, int, int]) -> np.ndarray:
        """Feathered union of the two lower-face hulls, float32 in [0, 1], inside ``box``."""
        x0, y0, x1, y1 = box
        size_hint = max(x1 - x0, y1 - y0)
        mask = np.zeros((y1 - y0, x1 - x0), np.uint8)
        for pts in (base_pts, src_pts):
            hull = cv2.convexHull(np.round(pts - (x0, y0)).astype(np.int32))
            cv2.fillConvexPoly(mask, hull, 255)
        sigma = max(1.0, FEATHER * size_hint * 2.0)
        # shrink first so the feather fades out inside the hull, not over the neck
        k = max(1, int(sigma))
        mask = cv2.erode(mask, np.ones((k, k), np.uint8))
        # blur at a quarter of the size: the feather is smooth, and a full-size blur of this
        # width was two thirds of the frame time
        h, w = mask.shape
        small = cv2.resize(mask, (max(1, w // 4), max(1, h // 4)), interpolation=cv2.INTER_AREA)
        small = cv2.GaussianBlur(small, (0, 0), sigma / 4)
        return cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR).astype(np.float32) / 255.0
