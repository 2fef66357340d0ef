"""The interface every landmark backend implements.

A backend does two things on an RGB frame: find faces (boxes with scores) and
place the 68 iBUG points inside a given box. Detection is the slow part, so the
tracker (:mod:`toolkit.track`) calls :meth:`detect` rarely and
:meth:`landmarks` every frame.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import numpy as np

from runtime.landmarks import N_POINTS      # which index is which point: runtime.landmarks


class LandmarkBackend(ABC):
    """Face detector plus 68-point landmark model.

    Attributes
    ----------
    name : str
        Registry name (``dlib``, ``face-alignment``).
    """

    name: str = ""

    @property
    @abstractmethod
    def version(self) -> str:
        """Version of the library doing the work, for the manifest."""

    @property
    @abstractmethod
    def model(self) -> str:
        """File names of the weights used, for the manifest."""

    @abstractmethod
    def detect(self, image: np.ndarray, upsample: int = 0) -> np.ndarray:
        """Find faces.

        Parameters
        ----------
        image : np.ndarray [shape=(H, W, 3), dtype=uint8], RGB
        upsample : int
            Extra detector pyramid levels for small faces (0 or 1).

        Returns
        -------
        np.ndarray [shape=(K, 5), dtype=float32]
            ``x0, y0, x1, y1, score`` in image pixels, K >= 0 (empty when no face).
        """

    @abstractmethod
    def landmarks(self, image: np.ndarray, box: np.ndarray) -> np.ndarray:
        """Place the 68 points of the face in ``box``.

        Parameters
        ----------
        image : np.ndarray [shape=(H, W, 3), dtype=uint8], RGB
        box : np.ndarray [shape=(4,)]
            ``x0, y0, x1, y1`` in image pixels, as :meth:`detect` returns them.

        Returns
        -------
        np.ndarray [shape=(68, 2), dtype=float32]
            ``x, y`` in image pixels.
        """
