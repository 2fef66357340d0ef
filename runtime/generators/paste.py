"""Lower-face transplant: one package frame's mouth, jaw and chin onto another frame's face.

Used by ``retrieval`` (the chosen frame's mouth) and by the resting mouth (the
rest frame's closed mouth) of every tier:

1. **Alignment.** A similarity transform (Umeyama, least squares) from the
   source frame's nose and eye landmarks (27-47, which do not move with the
   mouth) to the base frame's maps the source's lower face into place.
2. **Mask.** The union of both frames' lower-face hulls (jaw points 3-13 and
   the nose base 31-35), eroded and feathered by a Gaussian blur (sigma
   FEATHER x crop size), so the seam fades out inside the face; only the
   hulls' bounding box is touched.
3. **Blend.** ``out = base + mask * (source - base)``: exactly one source
   frame's lower face per output frame, so there are never two mouths.
"""

from __future__ import annotations

import cv2
import numpy as np

from ..landmarks import JAW, NOSE_BASE
from ..mouth import STABLE, for_package, similarity
from ..package import FLAG_LOST

FEATHER = 0.025                # mask blur sigma as a fraction of the crop size (8 px at 328)
LOWER_FACE = np.r_[np.r_[JAW][3:14], np.r_[NOSE_BASE][::-1]]   # jaw 3-13, then the nose base right to left


def transplant(package, base: int, source: int) -> np.ndarray:
    """Base frame ``base``'s crop with frame ``source``'s lower face: uint8 (S, S, 3), a new array."""
    out = np.array(package.crops[base])
    if source == base or package.flags[base] == FLAG_LOST:     # no face on the base frame: nothing to paste on
        return out
    lm = package.landmarks
    base_lm, src_lm = np.asarray(lm[base]), np.asarray(lm[source])
    m = similarity(src_lm[STABLE], base_lm[STABLE])
    warped_lm = src_lm[LOWER_FACE] @ m[:, :2].T + m[:, 2]
    size = out.shape[0]
    x0, y0, x1, y1 = _box(np.vstack([base_lm[LOWER_FACE], warped_lm]), size)
    if x1 <= x0 or y1 <= y0:
        return out
    shift = m.copy()
    shift[:, 2] -= (x0, y0)
    warped = cv2.warpAffine(np.asarray(package.crops[source]), shift, (x1 - x0, y1 - y0),
                            flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE).astype(np.float32)
    mask = _mask(base_lm[LOWER_FACE], warped_lm, (x0, y0, x1, y1))
    roi = out[y0:y1, x0:x1].astype(np.float32)
    out[y0:y1, x0:x1] = np.clip(roi + mask[..., None] * (warped - roi) + 0.5, 0, 255).astype(np.uint8)
    return out


def resting(package, base: int) -> np.ndarray:
    """Base frame ``base`` with the speaker's resting mouth (the mouth-shape model's ``rest_frame``)."""
    return transplant(package, base, for_package(package).rest_frame)


def blend(a: np.ndarray, b: np.ndarray, weight: float) -> np.ndarray:
    """``(1 - weight) * a + weight * b`` for uint8 images; ``a`` or ``b`` itself at the ends."""
    if weight <= 0.0:
        return a
    if weight >= 1.0:
        return b
    return cv2.addWeighted(a, 1.0 - weight, b, weight, 0.0)


def _box(points: np.ndarray, size: int) -> tuple[int, int, int, int]:
    pad = int(round(3 * FEATHER * size))
    x0, y0 = np.floor(points.min(0)).astype(int) - pad
    x1, y1 = np.ceil(points.max(0)).astype(int) + pad
    return max(x0, 0), max(y0, 0), min(x1, size), min(y1, size)


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
