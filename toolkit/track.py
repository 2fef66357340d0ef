"""Follow one face through a video without running the detector on every frame.

Per frame the tracker places landmarks in a box predicted from the previous
frame's landmarks (about 1 ms with dlib). The detector runs only:

* on a whole frame scaled so its longest side is ``detect_size`` (640 px) when
  there is no track yet, retrying every ``reacquire_every`` frames while lost;
* every ``redetect_every`` frames, in a region around the face scaled so the face
  is about ``roi_face_px`` wide (a few ms whatever the video's resolution);
* when the landmarks jump (drift) by more than ``max_shift`` of the face size or
  change size by more than ``max_scale``.

Which face is kept when several are visible: the largest one the first time a
face is found; after that, the one nearest the tracked face.

:func:`fill_gaps` then turns the per-frame result into landmarks for every frame
and a flag per frame (measured, interpolated, lost).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import cv2
import numpy as np

from runtime.package import FLAG_INTERPOLATED, FLAG_LOST, FLAG_MEASURED

from .faces import LandmarkBackend

NO_FACE = np.empty((0, 2), np.float32)


@dataclass(frozen=True)
class TrackConfig:
    detect_size: int = 640        # px, longest side of a whole-frame search (HOG: 47 ms at 640x640)
    roi_face_px: int = 100        # px, face width in the re-detection region (HOG finds >= 80 px)
    redetect_every: int = 5       # frames between re-detections around the tracked face
    reacquire_every: int = 5      # frames between whole-frame searches while no face is tracked
    max_shift: float = 0.25       # fraction of face size the centre may move between frames
    max_scale: float = 1.25       # factor the face size may change between frames


@dataclass
class TrackStats:
    searches: int = 0             # whole-frame detector runs
    roi_detections: int = 0       # detector runs around the face
    drift_redetections: int = 0
    faces_seen_max: int = 0
    notes: list = field(default_factory=list)


def _bbox(lm: np.ndarray) -> tuple[np.ndarray, float]:
    """Centre [2] and size (larger side) of the landmarks' bounding box."""
    lo, hi = lm.min(axis=0), lm.max(axis=0)
    return (lo + hi) / 2, float(max(hi - lo))


class FaceTracker:
    """Detect once, then track; call :meth:`step` once per frame, in order."""

    def __init__(self, backend: LandmarkBackend, config: TrackConfig = TrackConfig()):
        self.backend, self.cfg = backend, config
        self.stats = TrackStats()
        self._lm: np.ndarray | None = None      # previous frame's landmarks
        self._calib = (np.zeros(2), 1.0)        # detector box vs landmark box: centre offset, size ratio
        self._last_detect = -10**9
        self._last_search = -10**9
        self._ever_found = False
        self._index = -1

    def step(self, frame: np.ndarray) -> np.ndarray:
        """Landmarks of the tracked face in ``frame``.

        Returns
        -------
        np.ndarray [shape=(68, 2) or (0, 2), dtype=float32]
            Empty when the face is not found in this frame.
        """
        self._index += 1
        i = self._index
        if self._lm is None:
            if i - self._last_search < self.cfg.reacquire_every:
                return NO_FACE
            return self._fit_detected(frame, self._search(frame))
        if i - self._last_detect >= self.cfg.redetect_every:
            return self._fit_detected(frame, self._redetect(frame))
        lm = self.backend.landmarks(frame, self._predicted_box())
        if len(lm) == 0 or self._drifted(lm):
            self.stats.drift_redetections += 1
            return self._fit_detected(frame, self._redetect(frame))
        self._lm = lm
        return lm

    # -- detection ---------------------------------------------------------------------------

    def _redetect(self, frame: np.ndarray) -> np.ndarray | None:
        box = self._roi_detect(frame)
        return box if box is not None else self._search(frame)

    def _fit_detected(self, frame: np.ndarray, box: np.ndarray | None) -> np.ndarray:
        if box is None:
            self._lm = None
            return NO_FACE
        lm = self.backend.landmarks(frame, box)
        if len(lm) == 0:
            self._lm = None
            return NO_FACE
        centre, size = _bbox(lm)
        det_centre = (box[:2] + box[2:4]) / 2
        det_size = float((box[2] - box[0] + box[3] - box[1]) / 2)
        self._calib = ((det_centre - centre) / size, det_size / size)
        self._lm, self._last_detect, self._ever_found = lm, self._index, True
        return lm

    def _search(self, frame: np.ndarray) -> np.ndarray | None:
        """Whole-frame detection at a reduced scale; picks one face among several."""
        self._last_search = self._index
        self.stats.searches += 1
        h, w = frame.shape[:2]
        scale = min(1.0, self.cfg.detect_size / max(h, w))
        tries = [(scale, 0), (scale, 1)]
        if not self._ever_found and scale < 1.0:
            tries.append((min(1.0, 2 * scale), 1))      # small faces in large frames, first search only
        for s, up in tries:
            small = frame if s == 1.0 else cv2.resize(frame, (round(w * s), round(h * s)), interpolation=cv2.INTER_AREA)
            boxes = self.backend.detect(small, upsample=up)
            if len(boxes):
                boxes = boxes.copy()
                boxes[:, :4] /= s
                return self._choose(boxes)
        return None

    def _roi_detect(self, frame: np.ndarray) -> np.ndarray | None:
        """Detection in a square around the tracked face, scaled so the face is ``roi_face_px`` wide."""
        self.stats.roi_detections += 1
        centre, size = _bbox(self._lm)
        half = 1.1 * size
        h, w = frame.shape[:2]
        x0, y0 = int(max(0, centre[0] - half)), int(max(0, centre[1] - half))
        x1, y1 = int(min(w, centre[0] + half)), int(min(h, centre[1] + half))
        if x1 - x0 < 8 or y1 - y0 < 8:
            return None
        s = min(2.0, self.cfg.roi_face_px / max(size, 1.0))
        roi = cv2.resize(frame[y0:y1, x0:x1], (max(1, round((x1 - x0) * s)), max(1, round((y1 - y0) * s))),
                         interpolation=cv2.INTER_AREA if s < 1 else cv2.INTER_LINEAR)
        boxes = self.backend.detect(roi, upsample=0)
        if not len(boxes):
            return None
        boxes = boxes.copy()
        boxes[:, :4] = boxes[:, :4] / s + np.array([x0, y0, x0, y0], np.float32)
        return self._choose(boxes)

    def _choose(self, boxes: np.ndarray) -> np.ndarray:
        n = len(boxes)
        self.stats.faces_seen_max = max(self.stats.faces_seen_max, n)
        centres = (boxes[:, :2] + boxes[:, 2:4]) / 2
        if self._lm is None and not self._ever_found:
            pick = int(np.argmax((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])))
            rule = "the largest"
        else:
            ref = _bbox(self._lm)[0] if self._lm is not None else centres.mean(axis=0)
            pick = int(np.argmin(np.linalg.norm(centres - ref, axis=1)))
            rule = "the one nearest the tracked face"
        if n > 1 and len(self.stats.notes) < 5:
            b = boxes[pick]
            self.stats.notes.append(f"frame {self._index}: {n} faces seen; kept {rule}"
                                    f" ({b[2] - b[0]:.0f} px wide at x={b[0]:.0f}, y={b[1]:.0f})")
        return boxes[pick]

    # -- tracking ----------------------------------------------------------------------------

    def _predicted_box(self) -> np.ndarray:
        centre, size = _bbox(self._lm)
        offset, ratio = self._calib
        c = centre + offset * size
        half = ratio * size / 2
        return np.array([c[0] - half, c[1] - half, c[0] + half, c[1] + half], np.float32)

    def _drifted(self, lm: np.ndarray) -> bool:
        (c0, s0), (c1, s1) = _bbox(self._lm), _bbox(lm)
        moved = np.linalg.norm(c1 - c0) > self.cfg.max_shift * s0
        resized = max(s1, 1e-6) / max(s0, 1e-6)
        return bool(moved or resized > self.cfg.max_scale or resized < 1 / self.cfg.max_scale)


def frame_ranges(mask: np.ndarray) -> list[list[int]]:
    """Half-open ``[start, stop)`` ranges of the True runs in a boolean mask."""
    padded = np.concatenate([[False], np.asarray(mask, bool), [False]])
    edges = np.flatnonzero(np.diff(padded.astype(np.int8)))
    return [[int(a), int(b)] for a, b in zip(edges[::2], edges[1::2])]


def fill_gaps(raw: np.ndarray, max_gap: int) -> tuple[np.ndarray, np.ndarray]:
    """Give every frame landmarks, flagging how each was obtained.

    Parameters
    ----------
    raw : np.ndarray [shape=(N, 68, 2), dtype=float32]
        NaN where the face was not found.
    max_gap : int
        Longest run of missing frames that is interpolated; longer runs are lost.

    Returns
    -------
    landmarks : np.ndarray [shape=(N, 68, 2), dtype=float32]
        Gaps between measured frames are linearly interpolated; runs at the
        start or end, and lost runs, hold the nearest measured frame.
    flags : np.ndarray [shape=(N,), dtype=uint8]
        ``FLAG_MEASURED``, ``FLAG_INTERPOLATED`` (gap <= ``max_gap``) or ``FLAG_LOST``.
    """
    n = len(raw)
    found = ~np.isnan(raw).any(axis=(1, 2))
    flags = np.full(n, FLAG_MEASURED, np.uint8)
    if not found.any():
        return np.zeros_like(raw), np.full(n, FLAG_LOST, np.uint8)
    idx = np.flatnonzero(found)
    flat = raw.reshape(n, -1)
    filled = np.empty_like(flat)
    t = np.arange(n)
    for k in range(flat.shape[1]):       # np.interp holds the end values beyond the first/last sample
        filled[:, k] = np.interp(t, idx, flat[idx, k])
    for start, stop in frame_ranges(~found):
        flags[start:stop] = FLAG_INTERPOLATED if stop - start <= max_gap else FLAG_LOST
        if stop - start > max_gap and start > 0 and stop < n:
            mid = (start + stop) // 2      # hold, not interpolate, across a long gap
            filled[start:mid] = flat[start - 1]
            filled[mid:stop] = flat[stop]
    return filled.reshape(raw.shape).astype(np.float32), flags
