"""JPEG coding of face crops: the one place the server, the client and the harness do it."""

from __future__ import annotations

import cv2
import numpy as np

from .errors import LipsyncError

QUALITY = 85                 # the server's default (--jpeg-quality): ~15 KB per 328 px crop


def encode_jpeg(crop: np.ndarray, quality: int = QUALITY) -> bytes:
    """RGB uint8 [H, W, 3] -> JPEG bytes."""
    ok, buf = cv2.imencode(".jpg", cv2.cvtColor(crop, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise LipsyncError("JPEG encoding failed")
    return buf.tobytes()


def decode_jpeg(data: bytes) -> np.ndarray:
    """JPEG bytes -> RGB uint8 [H, W, 3]; LipsyncError if they do not decode."""
    img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if img is None:
        raise LipsyncError("JPEG does not decode")
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)
