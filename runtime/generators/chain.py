"""The fallback chain: try each tier in order, serve the first that succeeds.

A tier that raises (weights missing, index still loading, a bug) is skipped
for that batch and counted; the last tier, ``static``, cannot fail.
"""

from __future__ import annotations

import logging
from collections import Counter
from typing import Sequence

import numpy as np

from ..errors import InputError
from ..options import RenderOptions
from ..package import Package
from .base import Generator, NotReady, Request

log = logging.getLogger("lipsync.generators")


class Chain:
    """Generators tried in order for each batch.

    Parameters
    ----------
    package : Package
    tiers : sequence of Generator classes
        First choice first; ``static`` should be last.
    options : RenderOptions
        Handed to each tier.
    """

    def __init__(self, package: Package, tiers: Sequence[type[Generator]], options: RenderOptions = RenderOptions()):
        if not tiers:
            raise InputError("a generator chain needs at least one tier, e.g. 'retrieval,static'")
        self.package = package
        self.tiers: list[Generator] = []
        self.failures: Counter = Counter()     # tier name -> batches it failed
        self.served: Counter = Counter()       # tier name -> frames it rendered
        for cls in tiers:
            try:
                self.tiers.append(cls(package, options))
            except Exception as exc:           # a tier that cannot load is left out, loudly
                log.warning("%s: generator %s unavailable: %s", package.name, cls.name, exc)
                self.failures[cls.name] += 1
        if not self.tiers:
            raise InputError(f"{package.name}: no generator of the chain could load")

    @property
    def names(self) -> list[str]:
        return [g.name for g in self.tiers]

    def new_state(self) -> dict:
        return {g.name: g.new_state() for g in self.tiers}

    def reset(self, state: dict) -> None:
        for g in self.tiers:
            g.reset(state[g.name])

    def render(self, bases: Sequence[int], mels: Sequence[np.ndarray], states: Sequence[dict],
               degrade: bool = False, rest: Sequence[float] | None = None) -> tuple[list[np.ndarray], str]:
        """Render a batch with the first tier that succeeds; returns (crops, tier name).

        ``rest``: each frame's resting-mouth weight (:attr:`Request.rest`), 0 if None.
        With ``degrade`` (the server is behind), only the last, cheapest tier is tried.
        """
        last: Exception | None = None
        rest = [0.0] * len(bases) if rest is None else rest
        for g in (self.tiers[-1:] if degrade else self.tiers):
            reqs = [Request(b, m, s[g.name], w) for b, m, s, w in zip(bases, mels, states, rest)]
            try:
                out = g.render(reqs)
            except NotReady as exc:
                last = exc
                self.failures[g.name] += 1
                continue
            except Exception as exc:
                last = exc
                self.failures[g.name] += 1
                if self.failures[g.name] in (1, 10, 100) or self.failures[g.name] % 1000 == 0:
                    log.warning("%s: generator %s failed (%d times), falling back: %s",
                                self.package.name, g.name, self.failures[g.name], exc)
                continue
            self.served[g.name] += len(out)
            return out, g.name
        raise RuntimeError(f"{self.package.name}: every generator failed; last error: {last}")

    def close(self) -> None:
        for g in self.tiers:
            g.close()
