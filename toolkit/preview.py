"""Contact sheet: sample frames with their crop box and landmarks drawn, as one PNG.

Each tile shows the full frame (crop box in green, yellow when the frame's
landmarks were interpolated, red when lost) beside the crop with its 68 points
(lips in magenta) and the package's fixed mouth region.
"""

from __future__ import annotations

import cv2
import numpy as np

from runtime.landmarks import LIPS
from runtime.package import FLAG_INTERPOLATED, FLAG_LOST

TILE_H = 200          # px, height of one tile
COLUMNS = 3
FLAG_COLOURS = {FLAG_INTERPOLATED: (255, 200, 0), FLAG_LOST: (255, 40, 40)}   # RGB
OK_COLOUR = (40, 220, 40)


def sample_indices(frames: int, count: int = 12) -> list[int]:
    """``count`` frame indices spread evenly over the clip."""
    return sorted(set(np.linspace(0, frames - 1, min(count, frames)).round().astype(int).tolist()))


def tile(frame: np.ndarray, crop: np.ndarray, box: np.ndarray, lm_crop: np.ndarray, flag: int,
         mouth_region: list[float], index: int) -> np.ndarray:
    """One tile: [full frame with box | crop with landmarks], both TILE_H high, RGB."""
    colour = FLAG_COLOURS.get(int(flag), OK_COLOUR)
    h, w = frame.shape[:2]
    s = TILE_H / h
    full = cv2.resize(frame, (max(1, round(w * s)), TILE_H), interpolation=cv2.INTER_AREA)
    x0, y0, x1, y1 = (int(round(v * s)) for v in box)
    cv2.rectangle(full, (x0, y0), (x1, y1), colour, 2)
    cv2.putText(full, f"#{index}", (5, 18), cv2.FONT_HERSHEY_SIMPLEX, 0.55, (255, 255, 255), 2, cv2.LINE_AA)
    c = TILE_H / crop.shape[0]
    face = cv2.resize(crop, (TILE_H, TILE_H), interpolation=cv2.INTER_AREA)
    mx0, my0, mx1, my1 = (int(round(v * c)) for v in mouth_region)
    cv2.rectangle(face, (mx0, my0), (mx1, my1), (0, 180, 255), 1)
    for k, (px, py) in enumerate(lm_crop * c):
        dot = (255, 0, 255) if LIPS.start <= k < LIPS.stop else colour
        cv2.circle(face, (int(round(px)), int(round(py))), 1, dot, -1, cv2.LINE_AA)
    return np.concatenate([full, face], axis=1)


def contact_sheet(tiles: list[np.ndarray], title: str) -> bytes:
    """Lay tiles out in rows of :data:`COLUMNS` under a title; returns PNG bytes."""
    width = max(t.shape[1] for t in tiles)
    padded = [np.pad(t, ((4, 4), (4, 4 + width - t.shape[1]), (0, 0)), constant_values=24) for t in tiles]
    while len(padded) % COLUMNS:
        padded.append(np.full_like(padded[0], 24))
    rows = [np.concatenate(padded[i:i + COLUMNS], axis=1) for i in range(0, len(padded), COLUMNS)]
    sheet = np.concatenate(rows, axis=0)
    header = np.full((32, sheet.shape[1], 3), 24, np.uint8)
    cv2.putText(header, title, (8, 22), cv2.FONT_HERSHEY_SIMPLEX, 0.6, (235, 235, 235), 1, cv2.LINE_AA)
    sheet = np.concatenate([header, sheet], axis=0)
    ok, png = cv2.imencode(".png", cv2.cvtColor(sheet, cv2.COLOR_RGB2BGR))
    if not ok:
        raise RuntimeError("PNG encoding of the contact sheet failed")
    return png.tobytes()
