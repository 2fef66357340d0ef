"""LSE-D and LSE-C lip-sync scores with SyncNet, computed the way syncnet_python computes them.

SyncNet (Chung & Zisserman, "Out of time", 2016) embeds 0.2 s of mouth video (5 frames at
25 fps) and the 0.2 s of audio around it (20 MFCC frames) into one 1024-d space, trained
so that matching pairs lie close together. Sliding the audio against the video by
``-vshift .. +vshift`` frames and averaging, over the clip, the distance at each shift
gives a curve ``mean_dists``:

* **LSE-D** (lip-sync error, distance) = ``min(mean_dists)``: lower is better.
* **LSE-C** (lip-sync error, confidence) = ``median(mean_dists) - min(mean_dists)``: how
  clearly the best shift beats a typical one; higher is better, 0 means no sync signal.
* The AV offset is ``vshift - argmin(mean_dists)`` frames.

This module re-implements, without copying, syncnet_python's ``SyncNetModel.S`` (same
layers and parameter names, so its released ``syncnet_v2.model`` loads as is) and
``SyncNetInstance.evaluate`` (``vshift`` 15, batch 20, MFCCs from python_speech_features
of the 16-bit samples, BGR frames with values 0..255, zero-padded audio embeddings, the
same number of windows). Only the face crop differs: see
:func:`face_region`.
"""

from __future__ import annotations

import re
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from runtime.errors import InputError
from runtime.features import SAMPLE_RATE, samples_per_frame

FPS = 25                 # SyncNet's only frame rate
SAMPLES_PER_FRAME = samples_per_frame(FPS)   # 640 at 16 kHz, as in syncnet_python's length check
MFCC_PER_FRAME = 4       # 10 ms MFCC hop: 4 per 40 ms video frame
MFCC_WINDOW = 20         # MFCC frames per audio window (0.2 s)
VIDEO_WINDOW = 5         # video frames per lip window (0.2 s)
SIZE = 224               # side of syncnet_python's face crops
PAD_VALUE = 110          # grey syncnet_python pads frames with before cropping
SYNCNET_CROP_SCALE = 0.4  # run_pipeline.py --crop_scale
WEIGHTS_HINT = "get syncnet_v2.model from syncnet_python's download_model.sh"


def _conv(dims: int, cin: int, cout: int, kernel, stride=1, padding=0) -> list[nn.Module]:
    conv, norm = (nn.Conv2d, nn.BatchNorm2d) if dims == 2 else (nn.Conv3d, nn.BatchNorm3d)
    return [conv(cin, cout, kernel, stride=stride, padding=padding), norm(cout), nn.ReLU(inplace=True)]


def _head(dim: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(512, 512), nn.BatchNorm1d(512), nn.ReLU(), nn.Linear(512, dim))


class SyncNet(nn.Module):
    """syncnet_python's ``SyncNetModel.S``: same layers, order and parameter names.

    Sequential indices matter (they are the state-dict names): every conv is followed by
    its batch norm and ReLU, pooling layers sit between, as in the original.
    """

    def __init__(self, embedding: int = 1024):
        super().__init__()
        self.netcnnaud = nn.Sequential(
            *_conv(2, 1, 64, 3, padding=1), nn.MaxPool2d(1, stride=1),          # 0-3
            *_conv(2, 64, 192, 3, padding=1), nn.MaxPool2d(3, stride=(1, 2)),   # 4-7
            *_conv(2, 192, 384, 3, padding=1),                                  # 8-10
            *_conv(2, 384, 256, 3, padding=1),                                  # 11-13
            *_conv(2, 256, 256, 3, padding=1), nn.MaxPool2d(3, stride=2),       # 14-17
            *_conv(2, 256, 512, (5, 4)),                                        # 18-20
        )
        self.netfcaud = _head(embedding)
        self.netfclip = _head(embedding)
        self.netcnnlip = nn.Sequential(
            *_conv(3, 3, 96, (5, 7, 7), stride=(1, 2, 2)),
            nn.MaxPool3d((1, 3, 3), stride=(1, 2, 2)),                          # 0-3
            *_conv(3, 96, 256, (1, 5, 5), stride=(1, 2, 2), padding=(0, 1, 1)),
            nn.MaxPool3d((1, 3, 3), stride=(1, 2, 2), padding=(0, 1, 1)),       # 4-7
            *_conv(3, 256, 256, (1, 3, 3), padding=(0, 1, 1)),                  # 8-10
            *_conv(3, 256, 256, (1, 3, 3), padding=(0, 1, 1)),                  # 11-13
            *_conv(3, 256, 256, (1, 3, 3), padding=(0, 1, 1)),
            nn.MaxPool3d((1, 3, 3), stride=(1, 2, 2)),                          # 14-17
            *_conv(3, 256, 512, (1, 6, 6)),                                     # 18-20
        )

    def forward_aud(self, x: torch.Tensor) -> torch.Tensor:
        """Audio embedding: (B, 1, 13, 20) MFCC windows -> (B, 512, 1, 1) -> (B, 1024)."""
        return self.netfcaud(self.netcnnaud(x).flatten(1))

    def forward_lip(self, x: torch.Tensor) -> torch.Tensor:
        """Lip embedding: (B, 3, 5, 224, 224) BGR 0..255 -> (B, 512, 1, 1, 1) -> (B, 1024)."""
        return self.netfclip(self.netcnnlip(x).flatten(1))


def _read_state(path: Path) -> object:
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file
        return load_file(str(path), device="cpu")
    # weights_only: plain tensors and containers only, no code runs while unpickling
    return torch.load(path, map_location="cpu", weights_only=True)


def _why(exc: Exception) -> str:
    text = str(exc)
    found = re.search(r"Unsupported global: GLOBAL (\S+)", text)
    if found:
        return f"it pickles the Python object {found.group(1)}, which is never unpickled here; save its state_dict()"
    found = re.search(r"WeightsUnpickler error:\s*(.+)", text)
    detail = found.group(1) if found else (text.strip().splitlines() or [type(exc).__name__])[0]
    return f"not a torch state dict or safetensors file, or corrupt ({detail.strip()[:80]})"


def load_syncnet(path: str | Path) -> SyncNet:
    """Load syncnet_python's ``syncnet_v2.model`` (or a ``.safetensors`` copy) into :class:`SyncNet`.

    The released file is a torch-saved state dict (syncnet_python's ``loadParameters``
    copies it by name, loading only the keys it holds), so BatchNorm's ``num_batches_tracked``
    counters, which newer PyTorch adds and evaluation never reads, may be absent. Every
    other key must be there with its exact shape, and no other key may be.

    Returns
    -------
    SyncNet
        On the CPU, in eval mode.

    Raises
    ------
    InputError
        The file is missing, unreadable without running pickled code, not a state dict,
        or its keys or shapes differ from syncnet_python's model.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such SyncNet weights file; {WEIGHTS_HINT}")
    try:
        state = _read_state(path)
    except Exception as exc:  # noqa: BLE001 - any failure to decode is the same user error
        raise InputError(f"{path}: cannot read SyncNet weights: {_why(exc)}; {WEIGHTS_HINT}") from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise InputError(f"{path}: holds a {type(state).__name__}, not a dict of tensors; {WEIGHTS_HINT}")
    model = SyncNet()
    own = model.state_dict()
    for prefix in ("__S__.", "module."):  # SyncNetInstance / DataParallel wrappers
        if state and all(k.startswith(prefix) for k in state):
            state = {k[len(prefix):]: v for k, v in state.items()}
    unexpected = sorted(set(state) - set(own))
    missing = sorted(k for k in set(own) - set(state) if not k.endswith(".num_batches_tracked"))
    wrong = [f"{k} {tuple(state[k].shape)} (expected {tuple(own[k].shape)})"
             for k in own if k in state and state[k].shape != own[k].shape]
    for label, items in (("unexpected keys", unexpected), ("missing keys", missing), ("wrong shapes", wrong)):
        if items:
            more = f" and {len(items) - 3} more" if len(items) > 3 else ""
            raise InputError(f"{path}: not syncnet_python's SyncNet weights: {label} "
                             f"{', '.join(items[:3])}{more}; {WEIGHTS_HINT}")
    model.load_state_dict({**own, **state}, strict=True)
    return model.eval()


def mfcc_features(audio_16k: np.ndarray) -> np.ndarray:
    """MFCCs as syncnet_python computes them: ``python_speech_features.mfcc(pcm16, 16000)``.

    Parameters
    ----------
    audio_16k : np.ndarray [shape=(n,)]
        Mono 16 kHz audio: int16 samples, or floats in [-1, 1] (stored as 16-bit samples
        first, ``clip(round(x * 32767))`` as in the package's audio.wav, so both give the
        same features).

    Returns
    -------
    np.ndarray [shape=(13, 1 + ceil((n - 400) / 160)), dtype=float32]
        Coefficients x 10 ms frames (25 ms windows); coefficient 0 is the log frame energy.
    """
    import python_speech_features

    return python_speech_features.mfcc(_pcm16(audio_16k), SAMPLE_RATE).T.astype(np.float32)


def _pcm16(audio: np.ndarray) -> np.ndarray:
    audio = np.asarray(audio)
    if audio.ndim != 1:
        raise InputError(f"audio has shape {audio.shape}; expected mono samples, shape (n,)")
    if audio.dtype == np.int16:
        return audio
    return np.clip(np.round(audio.astype(np.float64) * 32767), -32768, 32767).astype(np.int16)


def window_count(frames: int, samples: int) -> int:
    """Lip/audio window pairs syncnet_python scores: ``min(frames, samples // 640) - 5``.

    One fewer than ``frames - 4`` 5-frame windows: with exactly 640 samples per frame the
    MFCCs number ``4 frames - 1``, one short of what window ``frames - 5`` would need.
    """
    return min(frames, samples // SAMPLES_PER_FRAME) - VIDEO_WINDOW


def audio_windows(mfcc: np.ndarray, start: int, stop: int) -> torch.Tensor:
    """Audio windows ``start..stop-1``: window ``v`` is MFCC frames ``4 v .. 4 v + 19``.

    Returns
    -------
    torch.Tensor [shape=(stop - start, 1, 13, 20), dtype=float32]
    """
    if MFCC_PER_FRAME * (stop - 1) + MFCC_WINDOW > mfcc.shape[1]:
        raise InputError(f"audio too short: window {stop - 1} needs {MFCC_PER_FRAME * (stop - 1) + MFCC_WINDOW}"
                         f" MFCC frames, have {mfcc.shape[1]}")
    m = torch.from_numpy(np.ascontiguousarray(mfcc, dtype=np.float32))
    wins = [m[:, MFCC_PER_FRAME * v:MFCC_PER_FRAME * v + MFCC_WINDOW] for v in range(start, stop)]
    return torch.stack(wins)[:, None]


def face_region(crops: np.ndarray, crop_scale: float = 1.6, crop_lift: float = 0.10) -> np.ndarray:
    """Cut syncnet_python's face crop out of package crops and resize it to 224 x 224.

    syncnet_python (run_pipeline.py) takes an S3FD face box of side ``2 bs`` centred on
    ``(mx, my)`` and keeps ``x in mx +- 1.4 bs``, ``y in my - bs .. my + 1.8 bs``: a square
    1.4 times the box, reaching 0.8 bs below it (mouth and chin well inside), padded with grey
    110 where it leaves the frame. Package crops (docs/package-format.md, "Coordinates") are
    ``crop_scale`` times the landmarks' box, lifted by ``crop_lift`` of their side. The
    approximation: the S3FD box is taken to be the 68-landmark box (eyebrows to chin), so in
    an S x S crop the face box has side ``S / crop_scale`` and centre ``(S/2, S/2 + crop_lift S)``.
    With the defaults the region spans about y 94..381 of a 328 crop: the bottom ~16 % lies
    below the crop and is filled with 110, as syncnet_python fills area beyond a frame.

    Parameters
    ----------
    crops : np.ndarray [shape=(T, S, S, 3), dtype=uint8]
        RGB package crops (the manifest's ``crop.scale``; lift is 10 % in this toolkit).

    Returns
    -------
    np.ndarray [shape=(T, 224, 224, 3), dtype=uint8]
        RGB, bilinear resize (cv2's default, as syncnet_python).
    """
    t, h, w = crops.shape[:3]
    bs = w / crop_scale / 2
    cx, cy = w / 2, h / 2 + crop_lift * h
    x0, x1 = int(np.floor(cx - bs * (1 + SYNCNET_CROP_SCALE))), int(np.floor(cx + bs * (1 + SYNCNET_CROP_SCALE)))
    y0, y1 = int(np.floor(cy - bs)), int(np.floor(cy + bs * (1 + 2 * SYNCNET_CROP_SCALE)))
    pad = max(0, -x0, -y0, x1 - w, y1 - h)
    out = np.empty((t, SIZE, SIZE, 3), np.uint8)
    for i in range(t):
        frame = cv2.copyMakeBorder(np.ascontiguousarray(crops[i]), pad, pad, pad, pad,
                                   cv2.BORDER_CONSTANT, value=(PAD_VALUE,) * 3)
        out[i] = cv2.resize(frame[y0 + pad:y1 + pad, x0 + pad:x1 + pad], (SIZE, SIZE))
    return out


def video_windows(faces_rgb: np.ndarray, count: int) -> torch.Tensor:
    """Lip windows ``0..count-1`` of 224 x 224 RGB faces: window ``i`` is frames ``i..i+4``.

    Channels are flipped to BGR because syncnet_python reads frames with ``cv2.imread``;
    values stay 0..255 (no normalisation), as there.

    Returns
    -------
    torch.Tensor [shape=(count, 3, 5, 224, 224), dtype=float32]
    """
    bgr = torch.from_numpy(np.ascontiguousarray(faces_rgb[:count + VIDEO_WINDOW - 1, :, :, ::-1]))
    clip = bgr.permute(3, 0, 1, 2)                               # (3, T, 224, 224) uint8
    return torch.stack([clip[:, i:i + VIDEO_WINDOW] for i in range(count)]).float()


def offset_distances(lip: torch.Tensor, aud: torch.Tensor, vshift: int) -> torch.Tensor:
    """syncnet_python's ``calc_pdist``: distance of lip window ``i`` to audio window ``i + s``.

    Audio embeddings are zero-padded by ``vshift`` at both ends (out-of-range shifts compare
    against a zero vector, as there); distances are ``F.pairwise_distance`` (eps 1e-6).

    Returns
    -------
    torch.Tensor [shape=(N, 2 vshift + 1)]
        Column ``j`` is shift ``s = j - vshift``.
    """
    padded = F.pad(aud, (0, 0, vshift, vshift))
    shifted = padded.unfold(0, 2 * vshift + 1, 1).transpose(1, 2)   # (N, 2v+1, D)
    return F.pairwise_distance(lip[:, None, :].expand_as(shifted), shifted)


def lse(model: SyncNet, crops_rgb: np.ndarray, audio_16k: np.ndarray, fps: float = 25,
        vshift: int = 15, batch: int = 20, face_crop: bool = True) -> dict:
    """LSE-D, LSE-C and AV offset of a clip, as ``SyncNetInstance.evaluate`` computes them.

    Parameters
    ----------
    model : SyncNet
        Put in eval mode; inputs go to its device.
    crops_rgb : np.ndarray [shape=(T, H, W, 3), dtype=uint8]
        RGB package crops (cut with :func:`face_region`), or, with ``face_crop=False``,
        224 x 224 RGB face frames already cropped as syncnet_python crops them.
    audio_16k : np.ndarray [shape=(n,)]
        16 kHz mono audio aligned to frame 0 (int16, or float in [-1, 1]).
    fps : float
        Must be 25, the only rate SyncNet knows.
    vshift : int
        Largest shift tried, in frames (syncnet_python's default 15, +-0.6 s).
    batch : int
        Windows per forward pass.

    Returns
    -------
    dict
        ``lse_d`` (float, min of the mean distances), ``lse_c`` (float, median minus min),
        ``offset_frames`` (int, ``vshift - argmin``, syncnet_python's AV offset; positive:
        the best-matching audio comes that many frames before the lips, i.e. audio leads),
        ``dists`` (list of 2 vshift + 1 mean distances, shift -vshift first), ``windows``
        (int, lip/audio window pairs averaged).
    """
    if fps != FPS:
        raise InputError(f"fps {fps}: SyncNet scores 25 fps video only; rebuild the package with --fps 25")
    if crops_rgb.ndim != 4 or crops_rgb.shape[-1] != 3 or crops_rgb.dtype != np.uint8:
        raise InputError(f"crops: {crops_rgb.dtype}{list(crops_rgb.shape)}; expected uint8 [T, H, W, 3] RGB")
    if not face_crop and crops_rgb.shape[1:3] != (SIZE, SIZE):
        raise InputError(f"face frames are {crops_rgb.shape[2]}x{crops_rgb.shape[1]}; expected 224x224")
    audio = _pcm16(audio_16k)
    n = window_count(len(crops_rgb), len(audio))
    if n < 1:
        raise InputError(f"clip too short for SyncNet: {len(crops_rgb)} frames and {len(audio) / SAMPLE_RATE:.2f} s"
                         f" of audio; need at least {VIDEO_WINDOW + 1} frames (0.24 s) of both")
    mfcc = mfcc_features(audio)
    device = next(model.parameters()).device
    model.eval()
    lips, auds = [], []
    with torch.inference_mode():
        for start in range(0, n, batch):
            stop = min(n, start + batch)
            frames = crops_rgb[start:stop + VIDEO_WINDOW - 1]
            faces = face_region(frames) if face_crop else frames
            lips.append(model.forward_lip(video_windows(faces, stop - start).to(device)).cpu())
            auds.append(model.forward_aud(audio_windows(mfcc, start, stop).to(device)).cpu())
        return scores(torch.cat(lips), torch.cat(auds), vshift)


def scores(lip: torch.Tensor, aud: torch.Tensor, vshift: int = 15) -> dict:
    """LSE-D, LSE-C, offset and mean distances from (N, D) lip and audio embeddings (see :func:`lse`)."""
    mean = offset_distances(lip, aud, vshift).mean(0)            # (2 vshift + 1,)
    minval, minidx = torch.min(mean, 0)
    conf = torch.median(mean) - minval
    return {"lse_d": float(minval), "lse_c": float(conf), "offset_frames": int(vshift - minidx),
            "dists": [float(d) for d in mean], "windows": len(lip)}
