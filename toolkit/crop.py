"""Square face crops, landmarks in crop pixels, and mouth geometry.

A crop box is ``x0, y0, x1, y1`` in source-frame pixels with ``x1 - x0 ==
y1 - y0 == side``; the crop is that square resized to ``size x size``. Parts of
the box outside the frame are filled by repeating the edge pixels. To paste a
generated crop back: resize it to ``side x side`` and place it at ``(x0, y0)``,
clipping to the frame.
"""

from __future__ import annotations

import cv2
import numpy as np

from runtime.landmarks import LIPS


def crop_frame(frame: np.ndarray, box: np.ndarray, size: int) -> np.ndarray:
    """Cut the square ``box`` out of ``frame`` and resize it to ``size``.

    Parameters
    ----------
    frame : np.ndarray [shape=(H, W, 3), dtype=uint8]
    box : np.ndarray [shape=(4,), dtype=int]
    size : int

    Returns
    -------
    np.ndarray [shape=(size, size, 3), dtype=uint8]
    """
    h, w = frame.shape[:2]
    x0, y0, x1, y1 = (int(v) for v in box)
    pad_l, pad_t = max(0, -x0), max(0, -y0)
    pad_r, pad_b = max(0, x1 - w), max(0, y1 - h)
    patch = frame[max(0, y0):min(h, y1), max(0, x0):min(w, x1)]
    if pad_l or pad_t or pad_r or pad_b:
        patch = cv2.copyMakeBorder(patch, pad_t, pad_b, pad_l, pad_r, cv2.BORDER_REPLICATE)
    # INTER_AREA only where shrinking enough to alias; it is 3x slower than bilinear at mild factors.
    shrink = patch.shape[0] / size
    interp = cv2.INTER_AREA if shrink > 1.5 else cv2.INTER_LINEAR if shrink >= 1 else cv2.INTER_CUBIC
    return cv2.resize(patch, (size, size), interpolation=interp)


def to_crop_coords(points: np.ndarray, boxes: np.ndarray, size: int) -> np.ndarray:
    """Source-pixel points to crop pixels.

    Parameters
    ----------
    points : np.ndarray [shape=(N, P, 2)]
    boxes : np.ndarray [shape=(N, 4)]

    Returns
    -------
    np.ndarray [shape=(N, P, 2), dtype=float32]
    """
    origin = boxes[:, None, :2].astype(np.float64)
    scale = size / (boxes[:, 2] - boxes[:, 0]).astype(np.float64)
    return ((points - origin) * scale[:, None, None]).astype(np.float32)


def mouth_boxes(landmarks_crop: np.ndarray) -> np.ndarray:
    """Bounding box of the 20 lip points per frame, ``x0, y0, x1, y1`` in crop pixels.

    Returns
    -------
    np.ndarray [shape=(N, 4), dtype=float32]
    """
    lips = landmarks_crop[:, LIPS]
    return np.concatenate([lips.min(axis=1), lips.max(axis=1)], axis=1).astype(np.float32)


def mouth_region(boxes: np.ndarray, usable: np.ndarray, size: int, margin: float = 0.15) -> list[float]:
    """One fixed rectangle that holds the mouth in (nearly) every frame, in crop pixels.

    The 1st/99th percentiles of the per-frame lip boxes, widened by ``margin`` of
    their size on each side and clipped to the crop: what a generator masks.
    """
    b = boxes[usable] if usable.any() else boxes
    x0, y0 = np.percentile(b[:, 0], 1), np.percentile(b[:, 1], 1)
    x1, y1 = np.percentile(b[:, 2], 99), np.percentile(b[:, 3], 99)
    mx, my = margin * (x1 - x0), margin * (y1 - y0)
    return [float(max(0, x0 - mx)), float(max(0, y0 - my)), float(min(size, x1 + mx)), float(min(size, y1 + my))]
