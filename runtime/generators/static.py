"""The ``static`` tier: the base frame with the speaker's resting mouth; no lip motion.

It is the no-lip-sync baseline that ``lipsync-eval`` compares the other tiers
with, and the tier a late server falls back on. It cannot fail.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from ..mouth import for_package
from .base import Generator, Request
from .paste import transplant


class StaticGenerator(Generator):
    name = "static"

    def __init__(self, package):
        super().__init__(package)
        self.rest_frame = for_package(package).rest_frame

    def render(self, requests: Sequence[Request]) -> list[np.ndarray]:
        return [transplant(self.package, r.base, self.rest_frame) for r in requests]
