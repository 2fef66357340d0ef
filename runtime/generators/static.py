"""The ``static`` tier: the base frame with the speaker's resting mouth; no lip motion.

It is the no-lip-sync baseline that ``lipsync-eval`` compares the other tiers
with, and the tier a late server falls back on. It cannot fail.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from .base import Generator, Request
from .paste import resting


class StaticGenerator(Generator):
    name = "static"

    def render(self, requests: Sequence[Request]) -> list[np.ndarray]:
        return [resting(self.package, r.base) for r in requests]
