"""face-alignment backend: S3FD detector plus the 2D-FAN landmark network (GPU-capable).

Its weights are fetched by face-alignment into torch's hub cache the first time
it runs. Where that cannot happen (no network), :func:`missing_weights` names
the files to put in place, and the backend refuses to start with that message
instead of hanging on a download.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import numpy as np

from runtime.errors import InputError

from .base import LandmarkBackend

# File names face-alignment 1.5 looks for in <torch hub dir>/checkpoints.
WEIGHT_FILES = {
    "s3fd-619a316812.pth": "face detector (S3FD)",
    "2DFAN4-11f355bf06.pth.tar": "68-point landmark network (2DFAN-4)",
}


def hub_dir() -> Path:
    """torch's hub directory, found without importing torch (same rule as ``torch.hub.get_dir``)."""
    if os.environ.get("TORCH_HUB"):
        return Path(os.environ["TORCH_HUB"])
    torch_home = os.environ.get("TORCH_HOME")
    if not torch_home:
        cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
        torch_home = os.path.join(cache, "torch")
    return Path(torch_home) / "hub"


def missing_weights() -> list[Path]:
    """Weight files face-alignment needs that are not in the hub cache."""
    folder = hub_dir() / "checkpoints"
    return [folder / name for name in WEIGHT_FILES if not (folder / name).is_file()]


def available() -> bool:
    """True when face-alignment is installed and its weights are already on disk."""
    return importlib.util.find_spec("face_alignment") is not None and not missing_weights()


class FaceAlignmentBackend(LandmarkBackend):
    """S3FD + 2D-FAN-4 from the face-alignment package, on CPU or CUDA."""

    name = "face-alignment"

    def __init__(self, device: str = "cpu"):
        if importlib.util.find_spec("face_alignment") is None:
            raise InputError("the face-alignment backend needs `pip install face-alignment`")
        missing = missing_weights()
        if missing:
            names = ", ".join(f"{p.name} ({WEIGHT_FILES[p.name]})" for p in missing)
            raise InputError(f"face-alignment weights not found: put {names} in {missing[0].parent}"
                             " (face-alignment downloads them there on first use where a network is"
                             " available), or use --landmarks dlib")
        import face_alignment
        import torch

        if device.startswith("cuda") and not torch.cuda.is_available():
            raise InputError(f"--device {device}: no CUDA GPU is visible; use --device cpu")
        self._fa = face_alignment.FaceAlignment(face_alignment.LandmarksType.TWO_D, device=device,
                                                face_detector="sfd", flip_input=False)
        self._version = getattr(face_alignment, "__version__", "unknown")

    @property
    def version(self) -> str:
        return str(self._version)

    @property
    def model(self) -> str:
        return " + ".join(WEIGHT_FILES)

    def detect(self, image: np.ndarray, upsample: int = 0) -> np.ndarray:
        # S3FD is multi-scale by design; upsampling the input helps tiny faces only.
        scale = 2 if upsample else 1
        if scale != 1:
            import cv2
            image = cv2.resize(image, None, fx=scale, fy=scale, interpolation=cv2.INTER_LINEAR)
        boxes = self._fa.face_detector.detect_from_image(np.ascontiguousarray(image))
        out = np.asarray(boxes, np.float32).reshape(-1, 5)
        out[:, :4] /= scale
        return out

    def landmarks(self, image: np.ndarray, box: np.ndarray) -> np.ndarray:
        det = [np.asarray(box[:4], np.float32).tolist() + [1.0]]
        result = self._fa.get_landmarks_from_image(np.ascontiguousarray(image), detected_faces=[np.array(det[0])])
        if not result:
            return np.empty((0, 2), np.float32)
        return np.asarray(result[0][:, :2], np.float32)
