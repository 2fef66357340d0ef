"""The ``retrieval`` tier: training-free lip motion from the package's own frames, driven by mouth shape.

For each frame, the package's mouth-shape model (:mod:`runtime.mouth`)
predicts the mouth's shape from the frame's mel window; retrieval shows the
training frame whose real mouth has the nearest shape:

1. **Keys.** The true shape coefficients of every usable training frame
   (LOST frames and the held-out tail are never keys), measured from the
   package's landmarks.
2. **Query.** The predicted coefficients, widened to the speaker's spread
   (``MouthModel.scale``) and moved ``rest`` of the way to the resting mouth
   when the renderer eases into or out of silence.
3. **Choice with continuity.** Distances are taken after one (K, K) map
   (:func:`runtime.mouth.opening_metric`) that weights the mouth-opening direction as much as
   all other shape variance together. The key nearest the query wins, except that
   the frame after the session's previous choice costs JUMP x ``step`` less,
   where ``step`` is the mean squared shape change between consecutive
   training frames: runs of consecutive real frames are kept unless another
   frame is clearly closer.
4. **Paste.** The chosen frame's lower face, aligned and feathered onto the
   base frame (:mod:`runtime.generators.paste`): one source frame per output
   frame, so the mouth opens as wide as the speaker's and never shows two
   mouths.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from ..mouth import for_package, normalise, opening_metric, opening_of
from ..options import RenderOptions
from ..package import Package
from .base import Generator, NotReady, Request
from .paste import transplant

JUMP = 1.0                     # continuity bonus of prev + 1, in units of the typical frame-to-frame change
MAX_KEYS = 20_000              # longer packages use every n-th training frame as a key


def spread(frames: np.ndarray, most: int = MAX_KEYS) -> np.ndarray:
    """``frames``, or ``most`` of them evenly spread when there are more."""
    return frames if len(frames) <= most else frames[np.linspace(0, len(frames) - 1, most).astype(np.int64)]


def shape_space(model, landmarks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Frames' true shape coefficients (T, K) float32 and the (K, K) float64 map of retrieval's distance
    over them (:func:`runtime.mouth.opening_metric`)."""
    coef = model.coefficients(landmarks)
    return coef, opening_metric(coef, opening_of(normalise(landmarks, model.reference), model.reference))


@dataclass
class RetrievalState:
    """Per-session memory: the previous choice."""

    prev: int = -1                                  # package frame chosen last, -1 after a reset


class RetrievalGenerator(Generator):
    """Mouth-shape retrieval with a feathered lower-face paste."""

    name = "retrieval"

    def __init__(self, package: Package, options: RenderOptions = RenderOptions()):
        super().__init__(package, options)
        self.model = for_package(package)
        frames = package.usable_train_frames
        if len(frames) == 0:
            raise NotReady(f"{package.root}: no usable training frames for retrieval")
        frames = spread(frames)
        keys, metric = shape_space(self.model, np.asarray(package.landmarks)[frames])
        # shapes are compared in the metric that weights the opening (runtime.mouth.opening_metric): keys
        # and queries move by one (K, K) matrix, so a choice costs what it did
        self.metric = metric.astype(np.float32)
        space = keys @ self.metric.T
        consecutive = np.diff(frames) == 1
        steps = ((space[1:] - space[:-1]) ** 2).sum(1)[consecutive]
        self.step = float(steps.mean()) if len(steps) else 0.0
        self.row_of = np.full(package.frames, -1, dtype=np.int64)
        self.row_of[frames] = np.arange(len(frames))
        self.key_frames = frames
        self.keys = keys                                # true shape coefficients of the key frames
        self._space = space                             # the same in the choice's metric
        self._norms = (space.astype(np.float64) ** 2).sum(1)

    def targets(self, mels: np.ndarray, rest: np.ndarray) -> np.ndarray:
        """Query coefficients (B, K) for mel windows (B, 12, 80) and rest weights (B,)."""
        pred = self.model.predict(mels)
        w = np.asarray(rest, np.float32)[:, None]
        return (1.0 - w) * pred + w * self.model.rest_coefficients

    def choose(self, target: np.ndarray, state: RetrievalState) -> int:
        """The package frame whose mouth is nearest ``target`` (K,), with continuity."""
        target = self.metric @ np.asarray(target, np.float32)
        d = self._norms - 2.0 * (self._space @ target) + float(target @ target)
        if state.prev >= 0 and state.prev + 1 < len(self.row_of):
            row = self.row_of[state.prev + 1]
            if row >= 0:
                d[row] -= JUMP * self.step
        return int(self.key_frames[int(np.argmin(d))])

    def new_state(self) -> RetrievalState:
        return RetrievalState()

    def reset(self, state: RetrievalState) -> None:
        state.prev = -1

    def pick(self, requests: Sequence[Request]) -> list[int]:
        """The source frame of each request, in order, each session's state moved on.

        ``request.state`` is a :class:`RetrievalState`, or None for a stateless choice
        (no continuity); the neural tier with a retrieval reference calls this with its
        own requests.
        """
        if not requests:
            return []
        targets = self.targets(np.stack([r.mel for r in requests]), np.array([r.rest for r in requests]))
        sources = []
        for req, target in zip(requests, targets):
            state = req.state if req.state is not None else RetrievalState()
            state.prev = self.choose(target, state)
            sources.append(state.prev)
        return sources

    def render(self, requests: Sequence[Request]) -> list[np.ndarray]:
        return [transplant(self.package, req.base, src) for req, src in zip(requests, self.pick(requests))]
