"""Early stopping: the network's lip sync on training frames it never trains on.

On 2 CPU cores a network trained on one clip follows the speech of audio it
has not heard *less* well after a few minutes: on cnn_71s's held-out tail the
neural tier matched retrieval after 3 minutes of training and fell behind it
after 7 (opening r 0.41 against 0.31). So ``lipsync-pack train`` holds back the
last ``share`` of the training frames (a contiguous block; 20 % by default) as
a validation block, and picks the weights by how well they do there:

1. **Split.** :func:`split` gives a view of the package whose training frames
   stop where the block begins and whose held-out tail is the block. Everything
   the run fits uses the view: the network's examples, their retrieval
   references, the mouth-shape model that conditions it and drives the
   retrieval picks. The block's images and their audio never train anything.
2. **Score.** :class:`Validator` renders the block as the server would (the
   neural tier itself, :class:`runtime.generators.neural.NeuralGenerator`, with
   the model being trained: the block's audio onto the base frames a session
   shows, ping-pong over the view's training frames
   (:func:`runtime.render.base_frame`), the retrieval reference picked from the
   audio with continuity), measures the mouths with
   the landmark backend ``lipsync-eval`` uses (dlib), and scores the opening's
   correlation with the real frames' (higher is better), with the mouth LMD and
   the articulation (the opening's spread over the real one's; informative).
3. **Choice.** Step 0 is scored first. With a retrieval reference the untrained
   network renders exactly the retrieval tier's frame, so step 0 is retrieval's
   score. A later check replaces the best one only if its opening correlation
   is higher in at least CONFIDENCE (95 %) of the block's paired moving-block
   resamples (1 s blocks, as ``lipsync-eval``'s intervals): a check that is
   merely luckier on a few seconds of audio does not move the choice. Nor does
   one whose mouths open less widely than the best one's (a smaller spread of
   the opening) in CONFIDENCE of the same resamples: on CPU the network's mouths
   close as it trains. Over the 26 checks of a 15-minute run on cnn_71s, the
   block's articulation followed the held-out tail's (correlation 0.82 across
   checks), and every trained check articulated less on the tail than step 0
   (0.60-0.73 against 0.77). Step 3800 beat step 0 on the block in 96 % of the
   resamples; on the tail it scored r 0.38 against 0.42, articulation 0.63. Training
   stops once ``patience`` checks in a row have not replaced the best one (or
   at the time budget), and the best one's weights are published.

The base frames matter. The network is trained to redraw a frame's own
masked lower face, and the unmasked rest of that frame (the chin below the
box, the cheeks beside it) shows how far the jaw is open. Rendered onto the
block's own real frames, as the first version of these checks did, the
network could read the real mouth from there: on cnn_71s's tail that scored
step 0 at r 0.46 and the last weights of a 15-minute run (step 4842) at 0.53;
rendered onto the base frames as served they score 0.42 and 0.43
(``lipsync-eval``: 0.41 for step 0). Across that run's 26 checks the block's
r rendered the old way did not track the tail's served r (correlation -0.07).

A block shorter than MIN_SECONDS (5 s) cannot tell weights apart: on
German_20s a 2.6 s block (rendered onto its own frames, then) chose weights
that scored r 0.70 there against retrieval's 0.59, and 0.50 against
retrieval's 0.61 on the 7 s held-out tail. Below that, validation is off and
the last weights are kept.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field

import numpy as np
import torch

from runtime.generators.base import Request
from runtime.generators.neural import NeuralGenerator
from runtime.mouth import fit as fit_mouth
from runtime.neural.model import LipSyncUNet, ModelConfig
from runtime.options import RenderOptions
from runtime.package import Package
from runtime.render import base_frame
from runtime.stream import frame_window
from toolkit.evaluate.quality import MouthMeter, lmd_per_frame, mouth_opening, pearson
from toolkit.evaluate.stats import block_indices, correlation, spread_ratio

SHARE = 0.2                 # default share of the training frames held back
MIN_SECONDS = 5.0           # a shorter block cannot tell checkpoints apart: validation is off
CONFIDENCE = 0.95           # a check replaces the best one only if it beats it in 95 % of paired resamples
BATCH = 32                  # frames per forward pass when scoring


def split(package: Package, share: float, usable: np.ndarray) -> tuple[Package, np.ndarray] | None:
    """The package seen without its last ``share`` of training frames, and the block's frames.

    Parameters
    ----------
    usable : np.ndarray [shape=(T,), dtype=int64]
        The frames training may use as targets (:class:`toolkit.train.dataset.PackageDataset`'s).

    Returns
    -------
    (view, block) or None when the block would last less than MIN_SECONDS. ``view`` is a
    :class:`Package` on the same folder whose split is ``train_frames [start, b0)``,
    ``holdout_frames [b0, stop)``, with a mouth-shape model fitted on its training frames only;
    ``block`` is the usable frames from ``b0`` on.
    """
    if share <= 0 or not len(usable):
        return None
    b0 = int(usable[int(round(len(usable) * (1 - share)))])
    block = usable[usable >= b0]
    if len(block) < MIN_SECONDS * package.fps:
        return None
    manifest = copy.deepcopy(package.manifest)
    stop = package.train_range.stop
    manifest["split"] = dict(manifest.get("split", {}), train_frames=[package.train_range.start, b0],
                             holdout_frames=[b0, stop])
    view = Package(root=package.root, manifest=manifest)
    view._mouth_model = fit_mouth(view)     # runtime.mouth.for_package's cache: the view's own model
    return view, block


@dataclass
class Score:
    step: int
    opening_r: float            # correlation of the rendered mouths' opening with the real frames'
    lmd_px: float               # mean mouth LMD against the real frames (crop pixels)
    articulation: float         # spread (std) of the rendered mouths' opening over the real ones'
    seconds: float = 0.0        # time the check took
    opening: np.ndarray | None = field(default=None, repr=False)     # per block frame, for the comparison

    def row(self) -> dict:
        return {"step": self.step, "opening_r": round(self.opening_r, 4), "lmd_px": round(self.lmd_px, 3),
                "articulation": round(self.articulation, 3)}


class Validator:
    """Scores a network on the validation block, as it would be served.

    Parameters
    ----------
    view : the package seen by training (:func:`split`)
    block : the block's frames
    backend : a landmark backend (:mod:`toolkit.faces`), the one lipsync-eval measures with
    """

    def __init__(self, view: Package, block: np.ndarray, backend, device: torch.device):
        self.view, self.block, self.device = view, np.asarray(block, np.int64), device
        self.meter = MouthMeter(backend, view)
        self.real = np.stack([self.meter.measure(np.asarray(view.crops[t]), int(t)) for t in self.block])
        self.real_opening = mouth_opening(self.real)
        self.mels = [frame_window(view.mel, int(t), view.fps) for t in self.block]
        self.bases = np.array([base_frame(view, k) for k in range(len(self.block))], np.int64)   # as served
        self.idx = block_indices(len(self.block), view.fps)     # 1 s blocks, seeded: the same every check
        self._tier: NeuralGenerator | None = None               # built once per model: its retrieval keys

    def render(self, model: LipSyncUNet, cfg: ModelConfig) -> list[np.ndarray]:
        """The block's frames as the neural tier serves them with ``model`` (left in the mode it was in)."""
        was_training = model.training
        model.eval()
        try:
            if self._tier is None or self._tier.model is not model or self._tier.cfg != cfg:
                self._tier = NeuralGenerator(self.view, RenderOptions(device=str(self.device)), network=(model, cfg))
            tier = self._tier
            state = tier.new_state()        # one session over the block: the retrieval picks' continuity
            crops = []
            for start in range(0, len(self.block), BATCH):
                rows = range(start, min(start + BATCH, len(self.block)))
                crops += tier.render([Request(base=int(self.bases[i]), mel=self.mels[i], state=state) for i in rows])
        finally:
            model.train(was_training)
        return crops

    def score(self, model: LipSyncUNet, cfg: ModelConfig, step: int) -> Score:
        """Render the block with ``model`` and measure its mouths against the real frames'."""
        t0 = time.perf_counter()
        crops = self.render(model, cfg)
        lm = np.stack([self.meter.measure(c, int(b)) for c, b in zip(crops, self.bases)])
        opening = mouth_opening(lm)
        return Score(step, pearson(opening, self.real_opening), float(lmd_per_frame(lm, self.real).mean()),
                     float(opening.std() / max(self.real_opening.std(), 1e-9)), time.perf_counter() - t0, opening)

    def wins(self, opening: np.ndarray, best: np.ndarray) -> float:
        """The share of the block's paired moving-block resamples (:mod:`toolkit.evaluate.stats`) in which
        mouths opening as ``opening`` follow the real ones better than ``best`` does."""
        _, a = correlation(opening, self.real_opening, self.idx)
        _, b = correlation(best, self.real_opening, self.idx)
        return float(np.mean(a > b))

    def closes(self, opening: np.ndarray, best: np.ndarray) -> float:
        """The share of the same resamples in which mouths opening as ``opening`` open less widely (a smaller
        spread of the opening: lower articulation) than ``best``."""
        _, ratio = spread_ratio(opening, best, self.idx)
        return float(np.mean(ratio < 1.0))


@dataclass(frozen=True)
class Verdict:
    """How a check compared with the best one before it (:meth:`Selection.add`)."""

    wins: float                     # share of resamples in which it follows the real mouths better
    closes: float                   # share of resamples in which its mouths open less widely
    kept: bool                      # it became the best

    def reason(self) -> str:
        """Why it was or was not kept, in words."""
        if self.kept:
            return "kept"
        if self.wins < CONFIDENCE:
            return f"not kept (needs {CONFIDENCE:.0%})"
        return f"not kept (its mouths open less widely in {self.closes:.0%} of resamples)"


@dataclass
class Selection:
    """The checks so far, and the best weights among them (kept in memory and in the checkpoint)."""

    share: float
    frames: int
    patience: int
    history: list
    best: dict | None = None        # the best check's Score.row()
    since_best: int = 0             # checks since the best one
    weights: dict | None = None     # the best check's model state (tensors, cloned)
    opening: np.ndarray | None = None   # the best check's mouth opening per block frame

    @property
    def stop(self) -> bool:
        return self.since_best >= self.patience

    def add(self, score: Score, model: LipSyncUNet, validator: Validator) -> Verdict:
        """Record a check. The first becomes the best; a later one replaces the best (its weights kept) when
        it follows the real mouths better in at least CONFIDENCE of the resamples (:meth:`Validator.wins`)
        and its mouths do not open less widely in CONFIDENCE of them (:meth:`Validator.closes`)."""
        self.history.append(score.row())
        if self.best is None:
            verdict = Verdict(1.0, 0.0, True)
        else:
            wins, closes = validator.wins(score.opening, self.opening), validator.closes(score.opening, self.opening)
            verdict = Verdict(wins, closes, wins >= CONFIDENCE and closes < CONFIDENCE)
        if verdict.kept:
            self.best, self.since_best, self.opening = score.row(), 0, score.opening
            self.weights = {k: v.detach().clone() for k, v in model.state_dict().items()}
        else:
            self.since_best += 1
        return verdict

    def to_json(self) -> dict:
        """What the checkpoint's JSON and the manifest's ``extra.neural.validation`` record."""
        return {"share": self.share, "frames": self.frames, "patience": self.patience, "history": self.history,
                "best": self.best, "since_best": self.since_best}

    def tensors(self) -> dict[str, torch.Tensor]:
        """What the checkpoint's tensors file keeps: the best check's weights and mouth opening."""
        out = {f"best.{k}": v.detach().cpu().contiguous() for k, v in (self.weights or {}).items()}
        if self.opening is not None:
            out["best_opening"] = torch.from_numpy(np.ascontiguousarray(self.opening, np.float64))
        return out

    @classmethod
    def from_checkpoint(cls, data: dict, tensors: dict[str, torch.Tensor]) -> "Selection":
        """The selection :meth:`to_json` and :meth:`tensors` saved."""
        weights = {k[5:]: v for k, v in tensors.items() if k.startswith("best.")} or None
        opening = tensors["best_opening"].numpy() if "best_opening" in tensors else None
        return cls(float(data["share"]), int(data["frames"]), int(data["patience"]), list(data["history"]),
                   data["best"], int(data["since_best"]), weights, opening)
