"""The landmark loss's reader: a small network that reads the mouth's shape off an image.

``lipsync-pack train --landmark-loss W`` asks the generator for mouths of the
right *shape*, not only the right pixels. Landmarks come from dlib, which has
no gradient, so training first fits a :class:`ShapeReader` that maps the mask
box of a model-resolution image (the region the generator paints) to the
package's mouth-shape coefficients (:mod:`runtime.mouth`). It learns from the
package's own training frames, whose true coefficients come from their
landmarks, then is frozen; the generator's loss gains ``W x`` the landmark
error of what the reader sees in the generated box against the target frame.

The landmark error is the mean squared distance of the 20 lip points in the
mouth model's face-normalised frame (crop pixels of the reference face): the
PCA axes are orthonormal, so it is the squared coefficient difference summed
over the K axes, divided by 20. Shape differences count as many pixels as they
move the lips, whatever axis they lie on.

The reader's validation error on real frames it did not fit (the last
VALIDATION share of the training frames, a contiguous block) is recorded, with
the correlation of the opening it reads with the true opening, so a reader
that cannot read the mouth is visible before its loss steers anything.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from runtime.neural.model import ModelConfig, to_model_pixels

LIP_POINTS = 20             # iBUG 48-67
VALIDATION = 0.2            # last share of the training frames, kept out of the reader's fit
STEPS = 300                 # reader fit: 300 steps of 32 crops (~15 s for small on 2 cores)
BATCH = 32
LR = 2e-3


class ShapeReader(nn.Module):
    """Mask box (B, 3, h, w) in [0, 1] -> (B, K) standardised mouth-shape coefficients."""

    def __init__(self, k: int, width: int = 16):
        super().__init__()
        chans = (3, width, 2 * width, 4 * width, 4 * width)
        self.convs = nn.ModuleList(nn.Conv2d(a, b, 3, stride=2, padding=1) for a, b in zip(chans, chans[1:]))
        self.norms = nn.ModuleList(nn.BatchNorm2d(b) for b in chans[1:])
        self.head = nn.Linear(chans[-1], k)

    def forward(self, box: torch.Tensor) -> torch.Tensor:
        h = box * 2 - 1
        for conv, norm in zip(self.convs, self.norms):
            h = F.silu(norm(conv(h)))
        return self.head(h.mean((2, 3)))


def landmark_error(coefficients: torch.Tensor, true: torch.Tensor) -> torch.Tensor:
    """Mean squared lip-point distance (px^2) between two (B, K) sets of shape coefficients, over the batch."""
    return ((coefficients - true) ** 2).sum(1).mean() / LIP_POINTS


def mask_region(images: torch.Tensor, cfg: ModelConfig) -> torch.Tensor:
    """The mask box of (B, 3, px, px) images: what the generator paints and the reader reads."""
    x0, y0, x1, y1 = cfg.mask_box(cfg.px)
    return images[:, :, y0:y1, x0:x1]


@dataclass
class Reader:
    """A fitted, frozen reader with the coefficient statistics it was fitted to."""

    net: ShapeReader
    mean: torch.Tensor          # (K,) coefficient mean over the fitted frames
    std: torch.Tensor           # (K,)
    info: dict                  # validation figures

    def read(self, images: torch.Tensor, cfg: ModelConfig) -> torch.Tensor:
        """Mouth-shape coefficients (B, K) read off (B, 3, px, px) images."""
        return self.net(mask_region(images, cfg)) * self.std + self.mean

    def loss(self, images: torch.Tensor, coefficients: torch.Tensor, cfg: ModelConfig) -> torch.Tensor:
        """Landmark error (px^2, see the module docstring) of the mouths read off ``images``."""
        return landmark_error(self.read(images, cfg), coefficients)

    def tensors(self) -> dict[str, torch.Tensor]:
        out = {f"net.{k}": v for k, v in self.net.state_dict().items()}
        out.update(mean=self.mean, std=self.std)
        return out

    @classmethod
    def from_tensors(cls, tensors: dict[str, torch.Tensor], k: int, info: dict,
                     device: torch.device = torch.device("cpu")) -> "Reader":
        """The reader :meth:`tensors` saved (a checkpoint's), on ``device``."""
        net = ShapeReader(k)
        net.load_state_dict({key[4:]: v for key, v in tensors.items() if key.startswith("net.")}, strict=True)
        return cls(_frozen(net.to(device)), tensors["mean"].to(device), tensors["std"].to(device), info)


def _frozen(net: ShapeReader) -> ShapeReader:
    net.eval()
    for p in net.parameters():
        p.requires_grad_(False)
    return net


def fit_reader(dataset, shape_model, cfg: ModelConfig, seed: int = 0, steps: int = STEPS,
               device: torch.device = torch.device("cpu")) -> Reader:
    """Fit a reader on ``dataset``'s target frames (a :class:`toolkit.train.dataset.PackageDataset`).

    The last VALIDATION share of its frames is held out for the figures in ``info``:
    ``val_mse`` (standardised) and ``val_opening_r`` (the opening the reader reads
    against the true opening, over held-out real frames).
    """
    frames = np.asarray(dataset.frames)
    lm = np.asarray(dataset.package.landmarks)
    coef = torch.from_numpy(shape_model.coefficients(lm[frames]).astype(np.float32))
    n_fit = max(1, int(round(len(frames) * (1 - VALIDATION))))
    fit_idx, val_idx = np.arange(n_fit), np.arange(n_fit, len(frames))
    mean, std = coef[:n_fit].mean(0).to(device), coef[:n_fit].std(0).clamp_min(1e-6).to(device)
    torch.manual_seed(seed)
    net = ShapeReader(coef.shape[1]).to(device)
    opt = torch.optim.AdamW(net.parameters(), lr=LR, weight_decay=1e-4)
    rng = np.random.default_rng([seed, 7])
    net.train()
    for _ in range(steps):
        idx = rng.choice(fit_idx, size=min(BATCH, len(fit_idx)), replace=len(fit_idx) < BATCH)
        images = _batch(dataset, idx, cfg, rng, augment=True).to(device)
        loss = landmark_error(net(mask_region(images, cfg)) * std + mean, coef[idx].to(device))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    reader = Reader(_frozen(net), mean, std, {"steps": steps, "frames": int(n_fit),
                                               "validation_frames": int(len(val_idx))})
    if len(val_idx) >= 2:
        with torch.inference_mode():
            read = torch.cat([reader.read(_batch(dataset, chunk, cfg, rng, augment=False).to(device), cfg).cpu()
                              for chunk in np.array_split(val_idx, -(-len(val_idx) // 64))])
        true = coef[val_idx]
        still = true.mean(0, keepdim=True).expand_as(true)            # a reader that always answers the mean
        reader.info.update(
            val_landmark_error=round(float(landmark_error(read, true)), 4),
            val_landmark_error_of_mean=round(float(landmark_error(still, true)), 4),
            val_opening_r=round(float(np.corrcoef(shape_model.opening(read.numpy()),
                                                  shape_model.opening(true.numpy()))[0, 1]), 4))
    return reader


def _batch(dataset, idx, cfg: ModelConfig, rng: np.random.Generator, augment: bool) -> torch.Tensor:
    """Model-pixel images (B, 3, px, px) of the dataset's target frames ``idx`` (shifted within the margin)."""
    m = cfg.margin
    crops = []
    for i in idx:
        x, y = rng.integers(0, 2 * m + 1, size=2) if augment else (m, m)
        crops.append(dataset.window(int(dataset.frames[i]), int(x), int(y)))
    return to_model_pixels(torch.from_numpy(np.stack(crops)), cfg)
