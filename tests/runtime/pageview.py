"""What the browser page shows, measured from outside the page.

The page's own readouts say its base frames are exact; these helpers check that with another
decoder. A capture is the canvas as a PNG plus ``window.lipsync.lastPainted`` (read in the same
JavaScript turn, so they belong together). The base frames are decoded by ffmpeg from the
package's ``video.mp4``, not by the browser.

Two figures of issue 12:

* **exact base frames** (:func:`base_match`): outside the crop the canvas must be base frame
  ``b`` itself, so it is closer to frame ``b`` than to ``b +- 1`` or ``b +- 2``;
* **seams** (:func:`seam_steps`): the mean luminance step across the crop's edge against the
  mean step 3-8 px inside it. A hard paste on the wrong frame shows a line (2-3x); an exact
  frame and a feathered edge leave the image's own texture (about 1x).
"""

from __future__ import annotations

import base64
import subprocess
from pathlib import Path

import cv2
import numpy as np

CAPTURE_JS = """() => {
  const face = document.getElementById('face');
  return { png: face.toDataURL('image/png'), painted: window.lipsync.lastPainted };
}"""

LUMA = np.array([0.299, 0.587, 0.114])


def capture(page) -> tuple[np.ndarray, dict]:
    """The canvas as RGB uint8 (H, W, 3) and the frame painted on it: {seq, base, bounds, exact}."""
    got = page.evaluate(CAPTURE_JS)
    png = base64.b64decode(got["png"].split(",", 1)[1])
    bgr = cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_COLOR)
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), got["painted"]


def video_frames(path: Path, indices, width: int, height: int) -> dict[int, np.ndarray]:
    """Frames ``indices`` of ``path`` (0-based, presentation order) as RGB uint8, decoded by ffmpeg.

    Converted to RGB with the BT.709 matrix, as Chromium does for these untagged videos
    (mean abs difference to the page's canvas about 1 level; BT.601 would leave 3).
    """
    idx = sorted(set(int(i) for i in indices))
    select = "+".join(f"eq(n\\,{i})" for i in idx)
    proc = subprocess.run(["ffmpeg", "-nostdin", "-v", "error", "-i", str(path), "-vf",
                           f"select='{select}',scale=in_color_matrix=bt709:flags=accurate_rnd+full_chroma_int",
                           "-fps_mode", "passthrough", "-f", "rawvideo", "-pix_fmt", "rgb24", "-"],
                          capture_output=True, check=True, timeout=300)
    frames = np.frombuffer(proc.stdout, np.uint8).reshape(-1, height, width, 3)
    assert len(frames) == len(idx), f"ffmpeg gave {len(frames)} of {len(idx)} frames"
    return dict(zip(idx, frames))


def outside(shape, bounds, margin: int = 4) -> np.ndarray:
    """Mask of the pixels at least ``margin`` px outside the crop ``bounds`` (x0, y0, x1, y1)."""
    mask = np.ones(shape[:2], bool)
    x0, y0, x1, y1 = bounds
    mask[max(y0 - margin, 0):max(y1 + margin, 0), max(x0 - margin, 0):max(x1 + margin, 0)] = False
    return mask


def base_match(canvas: np.ndarray, bounds, refs: dict[int, np.ndarray], base: int) -> dict[int, float]:
    """Mean abs RGB difference outside the crop between the canvas and frame ``base + d``, by d."""
    m = outside(canvas.shape, bounds)
    c = canvas[m].astype(np.int16)
    return {d: float(np.abs(c - refs[base + d][m]).mean()) for d in (-2, -1, 0, 1, 2) if base + d in refs}


def seam_steps(canvas: np.ndarray, bounds, inside=range(3, 9), trim: int = 10) -> tuple[float, float]:
    """(mean luminance step across the crop's edge, mean step ``inside`` px in from it).

    Only edges at least ``trim`` px inside the frame count, each without its ``trim`` px ends.
    """
    lum = canvas.astype(np.float64) @ LUMA
    h, w = lum.shape
    x0, y0, x1, y1 = (int(v) for v in bounds)
    ys = slice(max(y0, 0) + trim, min(y1, h) - trim)
    xs = slice(max(x0, 0) + trim, min(x1, w) - trim)
    edge, inner = [], []

    def steps(a, b):                                     # |a - b| for two same-shape lines
        return np.abs(a - b)

    if x0 >= trim:                                       # left: column x0-1 is outside, x0 inside
        edge.append(steps(lum[ys, x0], lum[ys, x0 - 1]))
        inner += [steps(lum[ys, x0 + d], lum[ys, x0 + d - 1]) for d in inside]
    if x1 <= w - trim:                                   # right: x1-1 inside, x1 outside
        edge.append(steps(lum[ys, x1 - 1], lum[ys, x1]))
        inner += [steps(lum[ys, x1 - 1 - d], lum[ys, x1 - d]) for d in inside]
    if y0 >= trim:
        edge.append(steps(lum[y0, xs], lum[y0 - 1, xs]))
        inner += [steps(lum[y0 + d, xs], lum[y0 + d - 1, xs]) for d in inside]
    if y1 <= h - trim:
        edge.append(steps(lum[y1 - 1, xs], lum[y1, xs]))
        inner += [steps(lum[y1 - 1 - d, xs], lum[y1 - d, xs]) for d in inside]
    if not edge:
        return float("nan"), float("nan")
    return float(np.concatenate(edge).mean()), float(np.concatenate(inner).mean())
