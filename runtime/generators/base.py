"""The generator interface: what every tier of the fallback chain implements.

A generator turns (base frame, mel window) into a face crop. It works on a
batch of requests so that a neural tier can run one forward pass for frames
of several sessions; the training-free tiers loop.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, ClassVar, Sequence

import numpy as np

from ..errors import LipsyncError
from ..options import RenderOptions
from ..package import Package


class NotReady(LipsyncError):
    """The generator is still loading; the chain serves this frame with the next tier."""


@dataclass
class Request:
    """One frame to render.

    Attributes
    ----------
    base : int
        Package frame the face is rendered onto.
    mel : np.ndarray [shape=(CONTEXT_ROWS, 80), dtype=float32]
        The frame's audio context (see :mod:`runtime.stream`).
    state : Any
        This session's state for this generator, from :meth:`Generator.new_state`.
    rest : float
        Weight of the resting mouth, 0 (speak) to 1 (rest): the renderer eases it
        in and out around pauses (:mod:`runtime.render`), and a generator moves
        its mouth that far towards the package's resting mouth.
    """

    base: int
    mel: np.ndarray
    state: Any = None
    rest: float = 0.0


class Generator(ABC):
    """A tier of the chain. Subclasses set ``name`` and implement :meth:`render`.

    Every tier is built as ``cls(package, options)``; ``options`` are the
    server's :class:`runtime.options.RenderOptions` (device, threads, ...).

    ``render`` must not keep references to the package's memory-mapped arrays
    in its outputs (they are read-only); it returns fresh uint8 arrays.
    """

    name: ClassVar[str]

    def __init__(self, package: Package, options: RenderOptions = RenderOptions()):
        self.package = package
        self.options = options

    def new_state(self) -> Any:
        """Per-session state (temporal smoothing); None for stateless tiers."""
        return None

    def reset(self, state: Any) -> None:
        """Forget the session's history (after silence or a package switch)."""

    @abstractmethod
    def render(self, requests: Sequence[Request]) -> list[np.ndarray]:
        """Render a batch.

        Returns
        -------
        list of np.ndarray [shape=(S, S, 3), dtype=uint8]
            RGB crops in the package's crop geometry, one per request, in order.
        """

    def close(self) -> None:
        """Release resources (threads, weights)."""
