"""Training examples from one package: (reference, target, mel window, mouth weights).

Only *training frames* are ever read: ``package.train_range`` (the held-out
tail excluded, docs/package-format.md "Split") minus frames flagged
``FLAG_LOST`` (their landmarks do not describe the face), minus the last
training frames whose 12-row mel window would reach into the held-out tail's
audio (2 frames at 25 fps). The frame list is fixed in the constructor and
every crop, landmark and mel read goes through it, so no held-out frame, nor
its audio, nor a lost frame is ever touched, as a target or as a reference;
tests/toolkit/test_train.py checks the rows actually read.

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
from runtime.stream import CONTEXT_AFTER, frame_window

MOUTH_DILATE = 0.06        # lip hull grown by 6 % of the image side (~10 px at 160 px): lips, teeth, lip skin


class PackageDataset(Dataset):
    """Examples for :class:`runtime.neural.model.LipSyncUNet`.

    Parameters
    ----------
    package : Package
    cfg : ModelConfig
    augment : bool
        Shift each crop's inner window by up to the crop margin (4 px) in x and y,
        independently for reference and target: the margin exists for this.
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
        frames = package.usable_train_frames
        if package.has_split and len(package.holdout_range):
            first_held_row = mel_index(package.holdout_range.start, package.fps)
            frames = frames[mel_index(frames, package.fps) + CONTEXT_AFTER <= first_held_row]
        if len(frames) < 2:
            raise InputError(f"{package.root}: {len(frames)} usable training frames; training needs at least 2"
                             " (rebuild from a longer video, or one where the face is visible)")
        crop = int(package.manifest["crop"]["size"])
        if (crop, int(package.manifest["crop"]["inner"])) != (cfg.crop, cfg.inner):
            raise InputError(f"{package.root}: crops are {crop} px with inner {package.manifest['crop']['inner']},"
                             f" the model expects {cfg.crop} with inner {cfg.inner}")
        self.package, self.cfg, self.augment = package, cfg, augment
        self.frames = frames
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
        t, r = int(self.frames[i]), int(self.frames[j])
        rng = np.random.default_rng(aug_seed)
        m = self.cfg.margin
        (tx, ty), (rx, ry) = rng.integers(0, 2 * m + 1, size=(2, 2)) if self.augment else ((m, m), (m, m))
        return {
            "reference": self.window(r, rx, ry),
            "target": self.window(t, tx, ty),
            "mel": frame_window(self.package.mel, t, self.package.fps),
            "mouth": self._mouth(t, tx, ty),
            "frame": t,
            "reference_frame": r,
        }

    def window(self, frame: int, x: int, y: int) -> np.ndarray:
        """The inner-sized window of a crop starting at (x, y), copied out of the memory map."""
        n = self.cfg.inner
        return np.array(self.package.crops[frame, y:y + n, x:x + n])

    def _mouth(self, frame: int, x: int, y: int) -> np.ndarray:
        """1 on the lip hull of ``frame``, dilated, at model resolution (window origin (x, y))."""
        px = self.cfg.px
        lips = (np.asarray(self.package.landmarks[frame, LIPS], dtype=np.float64) - (x, y)) * px / self.cfg.inner
        mask = np.zeros((px, px), np.uint8)
        cv2.fillConvexPoly(mask, cv2.convexHull(np.round(lips).astype(np.int32)), 1)
        k = 2 * max(1, round(MOUTH_DILATE * px)) + 1
        mask = cv2.dilate(mask, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (k, k)))
        return mask.astype(np.float32)


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
