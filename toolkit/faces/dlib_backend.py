"""dlib HOG face detector plus the iBUG 68-point shape predictor: the offline default.

The predictor file ships in the ``face-recognition-models`` package. That
package's ``__init__`` imports ``pkg_resources``, which current setuptools no
longer provides, so the file is located without importing it.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np

from runtime.errors import InputError

from .base import LandmarkBackend

PREDICTOR_FILE = "shape_predictor_68_face_landmarks.dat"


def predictor_path() -> Path:
    """Path of the 68-point model inside the installed face-recognition-models package."""
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or not spec.submodule_search_locations:
        raise InputError("the dlib backend needs the face-recognition-models package;"
                         " run `pip install face-recognition-models`")
    path = Path(list(spec.submodule_search_locations)[0]) / "models" / PREDICTOR_FILE
    if not path.is_file():
        raise InputError(f"{path}: missing; reinstall face-recognition-models")
    return path


def available() -> bool:
    """True when dlib and the predictor file can be loaded."""
    try:
        predictor_path()
    except InputError:
        return False
    return importlib.util.find_spec("dlib") is not None


class DlibBackend(LandmarkBackend):
    """HOG detector (CPU) and ensemble-of-regression-trees landmarks (about 1 ms a face)."""

    name = "dlib"

    def __init__(self, device: str = "cpu"):
        try:
            import dlib
        except ImportError:
            raise InputError("the dlib backend needs dlib; run `pip install dlib-bin`") from None
        if device != "cpu":
            raise InputError(f"--device {device}: the dlib backend runs on the CPU only;"
                             " use --landmarks face-alignment for a GPU")
        self._dlib = dlib
        self._detector = dlib.get_frontal_face_detector()
        self._predictor = dlib.shape_predictor(str(predictor_path()))

    @property
    def version(self) -> str:
        return str(getattr(self._dlib, "__version__", "unknown"))

    @property
    def model(self) -> str:
        return f"HOG frontal face detector + {PREDICTOR_FILE}"

    def detect(self, image: np.ndarray, upsample: int = 0) -> np.ndarray:
        rects, scores, _ = self._detector.run(np.ascontiguousarray(image), upsample, 0.0)
        out = [(r.left(), r.top(), r.right(), r.bottom(), s) for r, s in zip(rects, scores)]
        return np.asarray(out, np.float32).reshape(-1, 5)

    def landmarks(self, image: np.ndarray, box: np.ndarray) -> np.ndarray:
        x0, y0, x1, y1 = (int(round(v)) for v in box[:4])
        shape = self._predictor(np.ascontiguousarray(image), self._dlib.rectangle(x0, y0, x1, y1))
        return np.array([(p.x, p.y) for p in shape.parts()], np.float32)
