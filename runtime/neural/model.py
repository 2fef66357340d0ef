"""LipSyncUNet: a small audio-conditioned UNet that redraws the lower face of a crop.

In the style of SyncTalk_2D and Ultralight-Digital-Human, written from scratch:

* **Input.** Six image channels: a *reference* crop (any frame of the speaker,
  unmasked: it shows what the mouth and teeth look like) and the *target* crop
  with its mouth region blanked (it fixes pose, lighting and everything above
  the nose). Both are the crop's inner region (``crop.inner`` = 320 px of the
  328 px crop, 4 px margin each side) resized to ``px``. Plus the target
  frame's audio context: the 12-row mel window of :mod:`runtime.stream`, the
  same window the server hands every generator, so no other features exist.
* **Output.** The whole inner region at ``px`` as RGB in [0, 1]. Only the
  masked box is new; :func:`to_crops` pastes it back into a 328 px crop.
* **Training vs serving.** ``reference`` = ``"base"``: training takes the
  reference from a random *other* frame, so the network learns that the
  reference mouth says nothing about the target mouth and the audio must;
  serving passes the base frame itself as the reference (as
  Ultralight-Digital-Human does). ``reference`` = ``"retrieval"``: the
  reference is the base frame with another frame's lower face transplanted
  onto it (:mod:`runtime.generators.paste`); in training that frame has a
  mouth shape near the target's true one (:mod:`toolkit.train.dataset`), when
  serving it is the retrieval tier's choice from the audio. Such a network is
  *residual*: its output is the reference plus a learned change (the last
  layer starts at zero, so an untrained one serves retrieval's frame), and
  :func:`to_crops` pastes only the change, upsampled, onto the full-resolution
  reference, so the mouth keeps the retrieved frame's detail where the network
  leaves it. The mouth-shape model's choice drives the lips; training teaches
  the network to correct them towards the target with the audio.

The mask is one fixed box in inner-region fractions, not derived per frame from
landmarks, so its outline leaks nothing about the mouth it hides. Its top edge
(0.60) is the nose line: the nose tip sits at 0.61-0.63 of the inner height in
the shared videos (crops are scaled to 1.6 face sizes and centred on the
landmarks, so these fractions hold across speakers); its bottom edge (0.97)
lies below the chin at its lowest (0.94).

Weights are stored as safetensors with the config as JSON in the header's
metadata: no pickle, and a file carries everything needed to rebuild its model.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors import SafetensorError, safe_open
from safetensors.torch import save as safetensors_bytes
from torch.nn.utils.fusion import fuse_conv_bn_eval

from ..errors import PackageError
from ..features import MAX_ABS_VALUE, N_MELS
from ..files import write_atomic
from ..stream import CONTEXT_ROWS

WEIGHTS_FORMAT = "lipsync-neural"   # metadata "format" of a weights file
WEIGHTS_VERSION = "1"               # bump when the architecture changes incompatibly


REFERENCES = {
    "base": "the base frame itself; trained with a random other frame as the reference",
    "retrieval": "the retrieval tier's output for the frame (its chosen frame's lower face on the base frame); "
                 "trained with a nearby-shaped frame's lower face on the target",
}


@dataclass(frozen=True)
class ModelConfig:
    """Everything that shapes the network; stored as JSON beside its weights."""

    size: str = "small"             # name in SIZES; informative
    px: int = 160                   # side the network works at; small: half of inner, trains on 2 CPU cores
    base: int = 12                  # channels at full resolution; 16 costs 1.4x the time (p95 19 ms, not 14)
    mult: tuple = (1, 2, 4, 8, 8)   # channels per level = base x mult; len = levels (px halves per level)
    depths: tuple = (1, 1, 2, 2, 2) # 3x3 convs per level; one at the costly fine levels, two below
    audio_dim: int = 128            # width of the audio encoder and its output vector
    audio_level: int = 2            # decoder level that also gets the audio vector added (1/4 px: mouth ~15 px)
    mel_rows: int = CONTEXT_ROWS    # 12 rows: runtime.stream's window per frame, all the audio the server has
    mel_bands: int = N_MELS         # 80 log-mel bands, as in mel.npy
    crop: int = 328                 # package crop.size
    inner: int = 320                # package crop.inner: the centred region the model sees (margin 4 px)
    mask: tuple = (0.15, 0.60, 0.85, 0.97)  # x0, y0, x1, y1 of the blanked box, fractions of the inner side
    shape_dim: int = 0              # mouth-shape conditioning: coefficients of runtime.mouth's prediction (0: off)
    shape_scale: tuple = ()         # their spread over the training frames; inputs are divided by it
    reference: str = "base"         # what the reference crop is when serving: see REFERENCES

    def __post_init__(self):
        levels = len(self.mult)
        problems = [msg for bad, msg in [
            (len(self.depths) != levels, f"depths has {len(self.depths)} entries, mult {levels}"),
            (self.px % 2 ** (levels - 1) != 0, f"px {self.px} is not divisible by 2^{levels - 1}"),
            (not 0 <= self.audio_level < levels - 1, f"audio_level {self.audio_level} is not a decoder level"),
            ((self.crop - self.inner) % 2 != 0 or self.inner > self.crop, f"inner {self.inner} in crop {self.crop}"),
            (not (0 <= self.mask[0] < self.mask[2] <= 1 and 0 <= self.mask[1] < self.mask[3] <= 1),
             f"mask {self.mask} is not a box inside [0, 1]"),
            (min(self.base, self.audio_dim, *self.mult, *self.depths) < 1, "sizes must be positive"),
            (self.shape_dim < 0 or len(self.shape_scale) != self.shape_dim or min(self.shape_scale, default=1) <= 0,
             f"shape_scale needs {self.shape_dim} positive entries"),
            (self.reference not in REFERENCES, f"reference {self.reference!r} is not one of {sorted(REFERENCES)}"),
        ] if bad]
        if problems:
            raise ValueError(f"invalid ModelConfig: {problems[0]}")

    @property
    def widths(self) -> tuple:
        return tuple(self.base * m for m in self.mult)

    @property
    def margin(self) -> int:
        return (self.crop - self.inner) // 2

    def mask_box(self, side: int) -> tuple:
        """The mask box in pixels of an image of ``side`` px: x0, y0, x1, y1 (half-open)."""
        return tuple(int(round(f * side)) for f in self.mask)

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "ModelConfig":
        """Rebuild from :meth:`to_json`; ValueError or TypeError on unknown keys or invalid values."""
        raw = json.loads(text)
        if not isinstance(raw, dict):
            raise ValueError(f"config is a JSON {type(raw).__name__}, expected an object")
        unknown = sorted(set(raw) - {f.name for f in fields(cls)})
        if unknown:
            raise ValueError(f"unexpected config keys {unknown}")
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in raw.items()})


SIZES = {
    "tiny": ModelConfig(size="tiny", px=64, base=8, mult=(1, 2, 4, 4), depths=(1, 1, 1, 1), audio_dim=32),
    "small": ModelConfig(),
    "full": ModelConfig(size="full", px=320, base=32, mult=(1, 2, 4, 8, 8, 8), depths=(1, 1, 2, 2, 2, 2),
                        audio_dim=256),
}


def conv_stage(cin: int, cout: int, depth: int, stride: int = 1) -> nn.Sequential:
    """``depth`` x (3x3 conv, BatchNorm, ReLU); the first conv may stride."""
    layers = []
    for i in range(depth):
        layers += [nn.Conv2d(cin if i == 0 else cout, cout, 3, stride if i == 0 else 1, 1, bias=False),
                   nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]
    return nn.Sequential(*layers)


class LipSyncUNet(nn.Module):
    """Audio encoder + UNet; small: 1.0 M parameters, 10x10 bottleneck, ~11 ms a frame on 2 CPU cores."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        w, a = cfg.widths, cfg.audio_dim
        rows = math.ceil(math.ceil(cfg.mel_rows / 2) / 2)      # time steps left after two stride-2 convs
        # Audio: bands are channels, convolve over the window's time axis.
        self.audio = nn.Sequential(
            nn.Conv1d(cfg.mel_bands, a, 3, padding=1), nn.LeakyReLU(0.2),
            nn.Conv1d(a, a, 3, stride=2, padding=1), nn.LeakyReLU(0.2),
            nn.Conv1d(a, a, 3, stride=2, padding=1), nn.LeakyReLU(0.2),
            nn.Flatten(), nn.Linear(a * rows, a), nn.LeakyReLU(0.2))
        self.stem = conv_stage(6, w[0], cfg.depths[0])
        self.down = nn.ModuleList(conv_stage(w[i - 1], w[i], cfg.depths[i], stride=2) for i in range(1, len(w)))
        self.fuse = conv_stage(w[-1] + a, w[-1], 1)            # bottleneck: image features + audio vector
        # Decoder: narrow to the skip's width with a 1x1 conv *before* upsampling, so the bilinear
        # upsample and the 3x3 convs run on half the channels (~1.4x faster at small than after).
        self.narrow = nn.ModuleList(nn.Conv2d(w[i + 1], w[i], 1, bias=False) for i in range(len(w) - 1))
        self.up = nn.ModuleList(conv_stage(2 * w[i], w[i], cfg.depths[i]) for i in range(len(w) - 1))
        self.audio_add = nn.Linear(a, w[cfg.audio_level])
        if cfg.shape_dim:                                       # the mouth shape the audio predicts, added in
            self.shape = nn.Sequential(nn.Linear(cfg.shape_dim, a), nn.LeakyReLU(0.2), nn.Linear(a, a))
            self.register_buffer("shape_scale", torch.tensor(cfg.shape_scale, dtype=torch.float32), persistent=False)
        self.head = nn.Conv2d(w[0], 3, 1)
        self.residual = cfg.reference == "retrieval"            # output = reference + a learned change
        if self.residual:                                       # starts as the reference: retrieval's frame
            nn.init.zeros_(self.head.weight)
            nn.init.zeros_(self.head.bias)
        self.to(memory_format=torch.channels_last)            # ~1.4x faster 3x3 convs on CPU

    def forward(self, images: torch.Tensor, mel: torch.Tensor, shape: torch.Tensor | None = None) -> torch.Tensor:
        """
        Parameters
        ----------
        images : torch.Tensor [shape=(B, 6, px, px), float32 in [0, 1]]
            Reference RGB, then the masked target RGB (see :func:`prepare_inputs`).
        mel : torch.Tensor [shape=(B, mel_rows, mel_bands), float32 in [-4, 4]]
        shape : torch.Tensor [shape=(B, shape_dim)], optional
            With ``shape_dim``: the mouth-shape coefficients the package's mouth model
            predicts from ``mel`` (:meth:`runtime.mouth.MouthModel.predict`); required then.

        Returns
        -------
        torch.Tensor [shape=(B, 3, px, px), float32 in [0, 1]]
        """
        a = self.audio((mel / MAX_ABS_VALUE).transpose(1, 2))          # (B, 80, 12) -> (B, A)
        if self.cfg.shape_dim:
            if shape is None:
                raise ValueError("this model is conditioned on the mouth shape: pass shape=")
            a = a + self.shape(shape.float() / self.shape_scale)
        x = (images * 2 - 1).contiguous(memory_format=torch.channels_last)
        skips = [self.stem(x)]                                          # (B, w0, px, px)
        for down in self.down:
            skips.append(down(skips[-1]))                               # (B, w_i, px / 2^i, px / 2^i)
        h = skips.pop()                                                 # (B, wL, px / 2^L, px / 2^L)
        h = self.fuse(torch.cat([h, a[:, :, None, None].expand(-1, -1, *h.shape[2:])], 1))
        for level in reversed(range(len(self.up))):
            h = self.narrow[level](h)                                   # (B, w_level, px / 2^(level+1), ...)
            h = F.interpolate(h, scale_factor=2, mode="bilinear", align_corners=False)
            h = self.up[level](torch.cat([h, skips.pop()], 1))          # (B, w_level, px / 2^level, ...)
            if level == self.cfg.audio_level:
                h = h + self.audio_add(a)[:, :, None, None]             # broadcast over the image
        if self.residual:
            return (images[:, :3] + self.head(h)).clamp(0.0, 1.0)      # (B, 3, px, px)
        return torch.sigmoid(self.head(h))                              # (B, 3, px, px)


def fuse_for_inference(model: LipSyncUNet) -> LipSyncUNet:
    """Fold every BatchNorm into the conv before it, in place: ~20 % faster on CPU, same outputs.

    For serving only: the result neither trains nor saves in the weights-file layout.
    """
    model.eval()
    for stage in [model.stem, *model.down, model.fuse, *model.up]:
        for i, layer in enumerate(stage):
            if isinstance(layer, nn.BatchNorm2d):
                stage[i - 1], stage[i] = fuse_conv_bn_eval(stage[i - 1], layer), nn.Identity()
    return model.to(memory_format=torch.channels_last)


def to_model_pixels(crops, cfg: ModelConfig) -> torch.Tensor:
    """Crops -> the model's view of them.

    Parameters
    ----------
    crops : np.ndarray or torch.Tensor [shape=(B, S, S, 3), dtype=uint8]
        RGB; ``S`` is ``cfg.crop`` (the margin is cut off) or ``cfg.inner``.

    Returns
    -------
    torch.Tensor [shape=(B, 3, px, px), float32 in [0, 1]]
    """
    x = crops if isinstance(crops, torch.Tensor) else torch.from_numpy(np.array(crops, dtype=np.uint8))
    if x.shape[1] == cfg.crop:
        x = x[:, cfg.margin:cfg.margin + cfg.inner, cfg.margin:cfg.margin + cfg.inner]
    if x.ndim != 4 or x.shape[1:] != (cfg.inner, cfg.inner, 3):
        raise ValueError(f"crops of shape {tuple(x.shape)}: expected (B, {cfg.crop} or {cfg.inner}, same, 3)")
    x = x.permute(0, 3, 1, 2).float() / 255                     # (B, 3, inner, inner)
    if cfg.px != cfg.inner:
        x = F.interpolate(x, size=(cfg.px, cfg.px), mode="area")    # 320 -> 160: 2x2 means
    return x


def prepare_inputs(ref_crops, target_crops, mels, cfg: ModelConfig) -> tuple:
    """Assemble a batch for :class:`LipSyncUNet`.

    Parameters
    ----------
    ref_crops, target_crops : [shape=(B, S, S, 3), dtype=uint8]
        See :func:`to_model_pixels`. When serving, both are the base frame.
    mels : [shape=(B, mel_rows, mel_bands), dtype=float32]

    Returns
    -------
    images : torch.Tensor [shape=(B, 6, px, px)]
    mel : torch.Tensor [shape=(B, mel_rows, mel_bands)]
    target : torch.Tensor [shape=(B, 3, px, px)]
        The unmasked target: the training label; serving ignores it.
    """
    target = to_model_pixels(target_crops, cfg)
    ref = target if ref_crops is target_crops else to_model_pixels(ref_crops, cfg)     # serving: one conversion
    masked = target.clone()
    x0, y0, x1, y1 = cfg.mask_box(cfg.px)
    masked[:, :, y0:y1, x0:x1] = 0
    mel = mels.float() if isinstance(mels, torch.Tensor) else torch.from_numpy(np.array(mels, dtype=np.float32))
    if mel.shape[1:] != (cfg.mel_rows, cfg.mel_bands):
        raise ValueError(f"mel windows of shape {tuple(mel.shape)}: expected (B, {cfg.mel_rows}, {cfg.mel_bands})")
    return torch.cat([ref, masked], 1), mel, target


def to_crops(pred: torch.Tensor, base_crops: np.ndarray, cfg: ModelConfig, feather: int = 6,
             change_from: torch.Tensor | None = None) -> np.ndarray:
    """Paste the predicted mask box into copies of the base crops.

    Parameters
    ----------
    pred : torch.Tensor [shape=(B, 3, px, px), float in [0, 1]]
    base_crops : np.ndarray [shape=(B, crop, crop, 3), dtype=uint8]
    feather : int
        Width in crop pixels of the linear blend at the box's edges.
    change_from : torch.Tensor [shape=(B, 3, px, px)], optional
        Paste only the change ``pred - change_from``, upsampled, onto the base crops
        (which show ``change_from`` at full resolution): a residual model keeps the
        reference's detail where it leaves the reference as it is.

    Returns
    -------
    np.ndarray [shape=(B, crop, crop, 3), dtype=uint8]
    """
    x0, y0, x1, y1 = cfg.mask_box(cfg.inner)
    pred = pred.detach().float().cpu()
    if change_from is not None:
        pred = pred - change_from.detach().float().cpu()
    up = F.interpolate(pred, size=(cfg.inner, cfg.inner), mode="bilinear",
                       align_corners=False)[:, :, y0:y1, x0:x1]       # (B, 3, h, w)
    patch = up.permute(0, 2, 3, 1).numpy() * 255                     # (B, h, w, 3)

    def ramp(n: int) -> np.ndarray:                                   # 0 -> 1 over `feather` px at both ends
        i = np.arange(n)
        return np.minimum(np.minimum(i + 1, n - i) / (feather + 1), 1.0)

    alpha = (ramp(y1 - y0)[:, None] * ramp(x1 - x0)[None, :])[None, :, :, None]   # (1, h, w, 1)
    out = np.array(base_crops, dtype=np.uint8)
    m = cfg.margin
    region = out[:, m + y0:m + y1, m + x0:m + x1].astype(np.float32)
    if change_from is not None:
        patch = patch + region
    out[:, m + y0:m + y1, m + x0:m + x1] = np.rint(alpha * patch.clip(0, 255) + (1 - alpha) * region).astype(np.uint8)
    return out


def weights_bytes(model: LipSyncUNet, cfg: ModelConfig, metadata: dict | None = None) -> bytes:
    """The weights and config as a safetensors file's bytes (what :func:`load_weights` reads).

    ``metadata`` adds string entries to the header (training steps, loss); the keys
    ``format``, ``format_version`` and ``config`` are reserved.
    """
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    meta = {str(k): str(v) for k, v in (metadata or {}).items()}
    meta.update(format=WEIGHTS_FORMAT, format_version=WEIGHTS_VERSION, config=cfg.to_json())
    return safetensors_bytes(tensors, metadata=meta)


def save_weights(model: LipSyncUNet, cfg: ModelConfig, path: str | Path, metadata: dict | None = None) -> None:
    """Write :func:`weights_bytes` to ``path`` atomically (:func:`runtime.files.write_atomic`)."""
    write_atomic(path, weights_bytes(model, cfg, metadata))


def load_weights(path: str | Path, device: str | torch.device = "cpu") -> tuple:
    """Rebuild a model from :func:`save_weights`' file, in eval mode.

    Returns
    -------
    (LipSyncUNet, ModelConfig)

    Raises
    ------
    PackageError
        One line naming the file and what is wrong with it.
    """
    path = Path(path)
    hint = "retrain with `lipsync-pack train PACKAGE`"
    if not path.is_file():
        raise PackageError(f"{path}: no such weights file; train one with `lipsync-pack train PACKAGE`")
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError, ValueError) as exc:
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise PackageError(f"{path}: not a readable safetensors file ({reason}); {hint}") from None
    if meta.get("format") != WEIGHTS_FORMAT or meta.get("format_version") != WEIGHTS_VERSION:
        raise PackageError(f"{path}: format {meta.get('format')!r} version {meta.get('format_version')!r},"
                           f" expected {WEIGHTS_FORMAT!r} version {WEIGHTS_VERSION!r}; {hint}")
    try:
        cfg = ModelConfig.from_json(meta.get("config", ""))
    except (ValueError, TypeError) as exc:
        raise PackageError(f"{path}: bad model config in the metadata ({' '.join(str(exc).split())}); {hint}") from None
    model = LipSyncUNet(cfg)
    want = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    have = {k: tuple(v.shape) for k, v in tensors.items()}
    missing, unknown = sorted(want.keys() - have.keys()), sorted(have.keys() - want.keys())
    reshaped = sorted(k for k in want.keys() & have.keys() if want[k] != have[k])
    if missing or unknown or reshaped:
        first = (missing or unknown or reshaped)[0]
        raise PackageError(f"{path}: tensors do not match the {cfg.size!r} config: {len(missing)} missing,"
                           f" {len(unknown)} unexpected, {len(reshaped)} of another shape (first: {first});"
                           f" {hint}")
    model.load_state_dict(tensors, strict=True)
    return model.to(device).eval(), cfg
