"""The ``static`` tier: the base frame itself, no lip motion. It cannot fail."""

from __future__ import annotations

from typing import Sequence

import numpy as np

from .base import Generator, Request


class StaticGenerator(Generator):
    name = "static"

    def render(self, requests: Sequence[Request]) -> list[np.ndarray]:
        crops = self.package.crops
        return [np.array(crops[r.base]) for r in requests]
