"""Landmark backends, chosen by name from an explicit registry.

=================  ==============================================  ==========
name               what it runs                                    device
=================  ==============================================  ==========
``dlib``           HOG detector + 68-point shape predictor         CPU
``face-alignment`` S3FD detector + 2D-FAN-4 network (torch)        CPU, CUDA
``auto``           face-alignment when its weights are on disk,
                   else dlib
=================  ==============================================  ==========
"""

from __future__ import annotations

from typing import Callable

from runtime.errors import InputError

from . import dlib_backend, fa_backend
from .base import N_POINTS, LandmarkBackend

# The backend modules are light: each imports its library (dlib; face_alignment
# and torch) only when its class is instantiated, so listing the classes here
# loads neither, and face-alignment stays an optional install.
BACKENDS: dict[str, type[LandmarkBackend]] = {
    "dlib": dlib_backend.DlibBackend,
    "face-alignment": fa_backend.FaceAlignmentBackend,
}
AVAILABLE: dict[str, Callable[[], bool]] = {      # installed, and weights on disk: cheap checks, nothing imported
    "dlib": dlib_backend.available,
    "face-alignment": fa_backend.available,
}
CHOICES = ("auto", *BACKENDS)


def resolve(name: str) -> tuple[str, str]:
    """Turn ``auto`` into a concrete backend name.

    Returns
    -------
    (name, reason) : tuple of str
        ``reason`` says why ``auto`` chose it (empty for an explicit name).
    """
    if name != "auto":
        if name not in BACKENDS:
            raise InputError(f"--landmarks {name}: unknown backend; choose one of {', '.join(CHOICES)}")
        return name, ""
    if AVAILABLE["face-alignment"]():
        return "face-alignment", "auto: face-alignment weights found"
    missing = ", ".join(p.name for p in fa_backend.missing_weights())
    return "dlib", f"auto: using dlib (face-alignment weights not on disk: {missing})"


def create(name: str, device: str = "cpu") -> LandmarkBackend:
    """Instantiate the backend registered under ``name`` (not ``auto``)."""
    return BACKENDS[name](device=device)


__all__ = ["BACKENDS", "CHOICES", "LandmarkBackend", "N_POINTS", "create", "resolve"]
