"""Training examples from one package: (reference, target, mel window, mouth weights).

Only *training frames* are ever read: ``package.train_range`` (the held-out
tail excluded, docs/package-format.md "Split") minus frames flagged
``FLAG_LOST`` (their landmarks do not describe the face), minus the last
training frames whose 12-row mel window would reach into the held-out tail's
audio (2 frames at 25 fps). The frame list is fixed in the constructor and
every crop, landmark and mel read goes through it, so no held-out frame, nor
its audio, nor a lost frame is ever touched, as a target or as a reference;
tests/toolkit/test_train.py checks the rows actually read.

With ``cfg.reference == "retrieval"`` the reference is the target frame with
another training frame's lower face transplanted onto it, as the retrieval
tier renders it: that frame is one of the NEAREST training frames whose true
mouth shape (the mouth-shape model's coefficients, in retrieval's distance) is
closest to the target's, at least APART frames away from it, so it is never
the target itself or its near-copy.

Crops stay in the package's memory map and are read per item, so a dataset
over an hour of video costs no more memory than one over ten seconds.

Batches are a pure function of ``(seed, step)`` (:func:`step_batches`), so a
resumed run draws exactly the batches an uninterrupted one would, with no
random-generator state to checkpoint, and worker processes change nothing.
"""

from __future__ import annotations

from typing import Iterator

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

from runtime.errors import InputError
from runtime.neural.model import ModelConfig
from runtime.features import mel_index
from runtime.landmarks import LIPS
from runtime.package import Package
from runtime.generators.paste import transplant
from runtime.generators.retrieval import shape_space, spread
from runtime.mouth import for_package
from runtime.stream import CONTEXT_AFTER, frame_window

NEAREST = 4                # retrieval reference: drawn from the target's 4 nearest mouth shapes ...
APART = 12                 # ... among training frames at least 12 frames (0.48 s at 25 fps) away from it
MOUTH_DILATE = 0.06        # lip hull grown by 6 % of the image side (~10 px at 160 px): lips, teeth, lip skin


class PackageDataset(Dataset):
    """Examples for :class:`runtime.neural.model.LipSyncUNet`.

    Parameters
    ----------
    package : Package
    cfg : ModelConfig
    augment : bool
        Shift each crop's inner window by up to the crop margin (4 px) in x and y,
        independently for reference and target (together for a retrieval
        reference, which is the target's own face): the margin exists for this.
    seed : int
        For items fetched with a plain integer index (random reference and shift).

    Items are dicts, indexed either by an int ``i`` (target ``frames[i]``, a random
    reference) or by a tuple ``(i, j, aug_seed)`` from :func:`step_batches`:

    ``reference``, ``target`` : np.ndarray [shape=(inner, inner, 3), dtype=uint8]
    ``mel`` : np.ndarray [shape=(12, 80), dtype=float32], the target's window
    ``mouth`` : np.ndarray [shape=(px, px), dtype=float32], 1 on the dilated lip hull
    ``frame``, ``reference_frame`` : int, package frame numbers
    """

    def __init__(self, package: Package, cfg: ModelConfig, augment: bool = False, seed: int = 0):
        frames = training_frames(package)
        if len(frames) < 2:
            raise InputError(f"{package.root}: {len(frames)} usable training frames; training needs at least 2"
                             " (rebuild from a longer video, or one where the face is visible)")
        crop = int(package.manifest["crop"]["size"])
        if (crop, int(package.manifest["crop"]["inner"])) != (cfg.crop, cfg.inner):
            raise InputError(f"{package.root}: crops are {crop} px with inner {package.manifest['crop']['inner']},"
                             f" the model expects {cfg.crop} with inner {cfg.inner}")
        self.package, self.cfg, self.augment = package, cfg, augment
        self.frames = frames
        self.sources = nearest_shapes(package, frames) if cfg.reference == "retrieval" else None
        self._rng = np.random.default_rng(seed)

    def __getstate__(self) -> dict:
        """For DataLoader workers: send the manifest, not the memory-mapped arrays (each worker maps its own)."""
        state = dict(self.__dict__)
        state["package"] = Package(root=self.package.root, manifest=self.package.manifest)
        return state

    def __len__(self) -> int:
        return len(self.frames)

    def __getitem__(self, index) -> dict:
        if isinstance(index, tuple):
            i, j, aug_seed = index
        else:
            i = index
            j = (i + self._rng.integers(1, len(self.frames))) % len(self.frames)   # any other frame
            aug_seed = int(self._rng.integers(2 ** 31))
        rng = np.random.default_rng(aug_seed)
        t = int(self.frames[i])
        r = int(self.frames[j]) if self.sources is None else int(self.sources[i, rng.integers(NEAREST)])
        m = self.cfg.margin
        (tx, ty), (rx, ry) = rng.integers(0, 2 * m + 1, size=(2, 2)) if self.augment else ((m, m), (m, m))
        if self.sources is None:
            reference = self.window(r, rx, ry)
        else:       # the target's own face, lined up with it, as the served reference is the base frame's
            reference = cut(transplant(self.package, t, r), tx, ty, self.cfg.inner)
        return {
            "reference": reference,
            "target": self.window(t, tx, ty),
            "mel": frame_window(self.package.mel, t, self.package.fps),
            "mouth": self._mouth(t, tx, ty),
            "frame": t,
            "reference_frame": r,
        }

    def window(self, frame: int, x: int, y: int) -> np.ndarray:
        """The inner-sized window starting at (x, y) of package frame ``frame``'s crop, as a new array."""
        return cut(self.package.crops[frame], x, y, self.cfg.inner)

    def _mouth(self, frame: int, x: int, y: int) -> np.ndarray:
        """1 on the lip hull of ``frame``, dilated, at model resolution (window origin (x, y))."""
        px = self.cfg.px
        lips = (np.asarray(self.package.landmarks[frame, LIPS], dtype=np.float64) - (x, y)) * px / self.cfg.inner
        mask = np.zeros((px, px), np.uint8)
        cv2.fillConvexPoly(mask, cv2.convexHull(np.round(lips).astype(np.int32)), 1)
        k = 2 * max(1, round(MOUTH_DILATE * px)) + 1
        mask = cv2.dilate(mask, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (k, k)))
        return mask.astype(np.float32)


def cut(image: np.ndarray, x: int, y: int, size: int) -> np.ndarray:
    """The ``size`` x ``size`` window of ``image`` starting at (x, y), as a new array."""
    return np.array(image[y:y + size, x:x + size])


def training_frames(package: Package) -> np.ndarray:
    """The frames training may use as targets: usable training frames whose mel window stays out of the
    held-out tail's audio."""
    frames = package.usable_train_frames
    if package.has_split and len(package.holdout_range):
        first_held_row = mel_index(package.holdout_range.start, package.fps)
        frames = frames[mel_index(frames, package.fps) + CONTEXT_AFTER <= first_held_row]
    return frames


def nearest_shapes(package: Package, frames: np.ndarray) -> np.ndarray:
    """For each of ``frames``, the NEAREST other training frames with the closest true mouth shape.

    Shapes are the package's mouth-shape coefficients, compared in the retrieval tier's
    distance (:func:`runtime.generators.retrieval.shape_space`); candidates are ``frames``
    (at most retrieval's MAX_KEYS of them, evenly spread) at least APART frames from the target.

    Returns
    -------
    np.ndarray [shape=(len(frames), NEAREST), dtype=int64]
        Package frame numbers, nearest first.
    """
    coef, metric = shape_space(for_package(package), np.asarray(package.landmarks[frames]))
    space = (coef @ metric.T).astype(np.float64)
    keys = spread(np.arange(len(frames)))
    if (np.abs(frames[keys][None] - frames[keys][:, None]) >= APART).sum(1).min() < NEAREST:
        raise InputError(f"{package.root}: too few training frames for a retrieval reference (each frame needs "
                         f"{NEAREST} others at least {APART} frames away); train with --reference base")
    out = np.empty((len(frames), NEAREST), np.int64)
    key_space, key_frames = space[keys], frames[keys]
    norms = (key_space ** 2).sum(1)
    for rows in np.array_split(np.arange(len(frames)), -(-len(frames) // 512)):
        d = norms[None] - 2.0 * space[rows] @ key_space.T
        d[np.abs(key_frames[None] - frames[rows][:, None]) < APART] = np.inf
        near = np.argpartition(d, NEAREST - 1, axis=1)[:, :NEAREST]
        order = np.argsort(np.take_along_axis(d, near, 1), axis=1)
        out[rows] = key_frames[np.take_along_axis(near, order, 1)]
    return out


def step_batches(n: int, batch: int, seed: int, start: int = 0) -> Iterator[list]:
    """Endless batches of ``(target, reference, aug_seed)`` indices, step ``start`` first.

    Batch ``s`` depends only on ``(seed, s)``: targets uniform with replacement,
    each reference uniform over the other ``n - 1`` frames.
    """
    step = start
    while True:
        rng = np.random.default_rng([seed, step])
        targets = rng.integers(0, n, size=batch)
        refs = (targets + rng.integers(1, n, size=batch)) % n
        augs = rng.integers(0, 2 ** 31, size=batch)
        yield [(int(t), int(r), int(a)) for t, r, a in zip(targets, refs, augs)]
        step += 1


def collate(items: list) -> dict:
    """Stack a list of items into a batch of tensors (uint8 crops stay uint8)."""
    return {key: torch.as_tensor(np.stack([it[key] for it in items])) for key in items[0]}
