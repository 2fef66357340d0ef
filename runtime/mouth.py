"""The mouth-shape model: a frame's audio window in, that frame's lip shape out.

Every package holds one (``mouth.safetensors``, see docs/package-format.md).
Retrieval chooses frames by it, the resting mouth comes from it, and
``lipsync-eval`` measures sync against it.

**Shape.** A frame's 20 lip landmarks (48-67), moved by the similarity
transform that best maps the frame's nose and eye points (27-47, which do not
move with the mouth) onto a reference face, the mean of the training frames.
Head motion and face size are gone; only the mouth's own shape is left. PCA
over the training frames reduces the 40 numbers to COMPONENTS coefficients.

**Audio.** The frame's 12-row mel window (the one the server hands every
generator, :mod:`runtime.stream`), averaged over groups of 4 mel bands: 240
numbers, standardised per dimension.

**Fit.** Ridge regression from audio to coefficients, on the usable training
frames whose window does not reach into the held-out audio. The ridge strength
is chosen from ALPHAS by blocked cross-validation (FOLDS contiguous blocks,
so neighbouring frames never sit on both sides), scoring the correlation of
the predicted and true mouth opening. Ridge predictions are shrunk towards the
mean, so a retrieval driven by them mumbles; ``scale`` widens them around the
mean by the factor (from SCALE_GRID) at which nearest-shape retrieval from the
out-of-fold predictions picks mouths that open as wide as the speaker's (same
standard deviation of the opening): articulation calibrated per speaker on
audio the fold never saw. Seconds on CPU for minutes of video.

**Resting mouth.** ``rest_frame``: the speaker's own mouth when they are not
talking. Among the fitted frames whose audio is silent (RMS under the
server's IDLE_RMS), the most closed REST_QUIET_QUANTILE; the one nearest their
median shape is the rest frame: lips together and relaxed, as the speaker
holds them in pauses (the median pause on cnn_71s showed teeth; the most
closed tenth pressed the lips). Clips with fewer than REST_MIN_QUIET silent frames use the
least open REST_QUANTILE of all fitted frames instead.
"""

from __future__ import annotations

import json
import logging
import struct
import time
import wave
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import landmarks as ibug
from .errors import PackageError
from .package import MOUTH_MODEL
from .features import samples_per_frame
from .stream import CONTEXT_ROWS, IDLE_RMS, frame_rms, window_features

log = logging.getLogger("lipsync.mouth")

MOUTH_FILE = MOUTH_MODEL
FORMAT = "lipsync-mouth"
VERSION = "1"
LIPS = np.r_[ibug.LIPS]              # the 20 lip points 48-67, as an index array
STABLE = np.r_[ibug.STABLE]          # nose 27-35, eyes 36-47
INNER_PAIRS = tuple((a - ibug.LIPS.start, b - ibug.LIPS.start) for a, b in ibug.INNER_LIP_PAIRS)
                                     # (13, 19), (14, 18), (15, 17): 61-67, 62-66, 63-65 as indices into LIPS
EYE_CORNERS = tuple(i - ibug.STABLE.start for i in ibug.EYE_CORNERS)   # (9, 18): 36 and 45 into STABLE
BAND_GROUP = 4                       # 80 mel bands -> 20
COMPONENTS = 8
ALPHAS = (10.0, 30.0, 100.0, 300.0, 1000.0, 3000.0)
FOLDS = 5
CALIBRATION_KEYS = 4000             # keys per fold in _calibrate_scale (distance matrix rows x this)
SCALE_GRID = (1.0, 1.25, 1.5, 1.75, 2.0, 2.5, 3.0)   # widening of predictions tried by _calibrate_scale
OPENING_WEIGHT = 1.0                 # retrieval's distance: extra weight on the mouth-opening direction (see opening_metric)
REST_QUANTILE = 0.10
REST_QUIET_QUANTILE = 0.25           # the most closed quarter of the pauses: lips together, no teeth
REST_MIN_QUIET = 10                  # silent frames needed to take the rest mouth from the speaker's pauses
AUDIO_REACH = 3                      # frames: a window reaches 112.5 ms (< 3 frames) past its frame's start
MIN_FRAMES = 25                      # fewer usable training frames (1 s) than this cannot be fitted

_DTYPES = {"float32": "F32", "int64": "I64"}
FEATURES = 20 * CONTEXT_ROWS         # 20 bands (80 / BAND_GROUP) x 12 rows: what predict() takes
TENSORS = ("reference", "lip_mean", "components", "feature_mean", "feature_std", "weights", "bias",
           "scale", "rest_frame")


def reduce_bands(mel: np.ndarray) -> np.ndarray:
    """(..., 80) mel rows -> (..., 20) by averaging groups of BAND_GROUP bands."""
    return mel.reshape(*mel.shape[:-1], mel.shape[-1] // BAND_GROUP, BAND_GROUP).mean(-1)


def similarity(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Least-squares similarity transform (rotation, uniform scale, shift) mapping src (K, 2) onto dst (K, 2).

    A (2, 3) float64 matrix for ``cv2.warpAffine`` (``x' = M[:, :2] @ x + M[:, 2]``); see :func:`_align_all`.
    """
    return _align_all(np.asarray(src, np.float64)[None], np.asarray(dst, np.float64))[0]


def _align_all(stable: np.ndarray, ref: np.ndarray) -> np.ndarray:
    """Similarity transforms of many frames onto ``ref`` at once: (T, 2, 3).

    The closed form for 2-D points: with centred points as complex numbers,
    the best ``a`` in ``d = a s`` is ``sum(conj(s) d) / sum(|s|^2)``.
    """
    s = stable[..., 0] + 1j * stable[..., 1]
    d = ref[:, 0] + 1j * ref[:, 1]
    mu_s, mu_d = s.mean(1, keepdims=True), d.mean()
    sc, dc = s - mu_s, d - mu_d
    a = (np.conj(sc) * dc).sum(1) / np.maximum((np.abs(sc) ** 2).sum(1), 1e-12)
    t = mu_d - a * mu_s[:, 0]
    m = np.empty((len(stable), 2, 3))
    m[:, 0, 0], m[:, 0, 1], m[:, 0, 2] = a.real, -a.imag, t.real
    m[:, 1, 0], m[:, 1, 1], m[:, 1, 2] = a.imag, a.real, t.imag
    return m


def normalise(landmarks: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Lip points in the reference face's frame.

    Parameters
    ----------
    landmarks : np.ndarray [shape=(T, 68, 2)]
    reference : np.ndarray [shape=(21, 2)]
        The reference face's STABLE points.

    Returns
    -------
    np.ndarray [shape=(T, 40), dtype=float64]
    """
    lm = np.asarray(landmarks, np.float64)
    m = _align_all(lm[:, STABLE], np.asarray(reference, np.float64))
    lips = np.einsum("tij,tkj->tki", m[:, :, :2], lm[:, LIPS]) + m[:, None, :, 2]
    return lips.reshape(len(lm), -1)


def _reference(landmarks: np.ndarray) -> np.ndarray:
    """Mean STABLE points after aligning every frame onto the running mean (two passes)."""
    stable = np.asarray(landmarks, np.float64)[:, STABLE]
    ref = stable.mean(0)
    for _ in range(2):
        m = _align_all(stable, ref)
        ref = (np.einsum("tij,tkj->tki", m[:, :, :2], stable) + m[:, None, :, 2]).mean(0)
    return ref


def opening_of(lips: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Mouth opening of normalised lips (T, 40): inner-lip gap over the reference's eye-corner distance.

    The same measure as :func:`toolkit.evaluate.quality.mouth_opening`, in the reference frame.
    """
    p = np.asarray(lips, np.float64).reshape(len(lips), 20, 2)
    gap = np.mean([np.linalg.norm(p[:, a] - p[:, b], axis=1) for a, b in INNER_PAIRS], axis=0)
    eyes = np.linalg.norm(reference[EYE_CORNERS[0]] - reference[EYE_CORNERS[1]])
    return gap / max(float(eyes), 1e-6)


def _pearson(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a - a.mean(), b - b.mean()
    den = np.sqrt((a * a).sum() * (b * b).sum())
    return float((a * b).sum() / den) if den > 1e-12 else 0.0


def _ridge_path(x: np.ndarray, y: np.ndarray, alphas) -> list[np.ndarray]:
    """Ridge weights for every alpha from one SVD (x and y centred)."""
    u, s, vt = np.linalg.svd(x, full_matrices=False)
    uty = u.T @ y
    return [vt.T @ ((s / (s * s + a))[:, None] * uty) for a in alphas]


@dataclass
class MouthModel:
    """A fitted mouth-shape model; see the module docstring. All arrays float32 except rest_frame."""

    reference: np.ndarray        # (21, 2) STABLE points of the reference face, crop pixels
    lip_mean: np.ndarray         # (40,) mean normalised lips
    components: np.ndarray       # (K, 40) PCA axes, orthonormal rows
    feature_mean: np.ndarray     # (240,)
    feature_std: np.ndarray      # (240,)
    weights: np.ndarray          # (240, K) ridge weights on standardised features
    bias: np.ndarray             # (K,) coefficient mean
    scale: float                 # spread restoration of predictions
    rest_frame: int              # package frame with the resting mouth
    info: dict                   # fit report: alpha, cv opening correlation, frames, seconds

    # ------------------------------------------------------------ use

    def features(self, windows: np.ndarray) -> np.ndarray:
        """Mel windows (T, 12, 80) -> standardised features (T, 240) float32."""
        w = np.asarray(windows, np.float32)
        f = reduce_bands(w).reshape(len(w), -1)
        return (f - self.feature_mean) / self.feature_std

    def predict(self, windows: np.ndarray, restore: bool = True) -> np.ndarray:
        """Shape coefficients (T, K) float32 predicted from mel windows (T, 12, 80).

        ``restore``: widen by ``scale`` around the mean (articulation as the speaker's).
        """
        raw = self.features(windows) @ self.weights
        return (raw * (self.scale if restore else 1.0) + self.bias).astype(np.float32)

    def coefficients(self, landmarks: np.ndarray) -> np.ndarray:
        """True shape coefficients (T, K) float32 of frames' 68-point landmarks."""
        lips = normalise(landmarks, self.reference)
        return ((lips - self.lip_mean) @ self.components.T).astype(np.float32)

    def lips(self, coefficients: np.ndarray) -> np.ndarray:
        """Normalised lips (T, 40) float64 of shape coefficients."""
        return np.asarray(coefficients, np.float64) @ self.components + self.lip_mean

    def opening(self, coefficients: np.ndarray) -> np.ndarray:
        """Mouth opening (T,) of shape coefficients; see :func:`opening_of`."""
        return opening_of(self.lips(coefficients), self.reference)

    @property
    def rest_coefficients(self) -> np.ndarray:
        """(K,) shape coefficients of the resting mouth (after :meth:`bind`)."""
        if self._rest is None:
            raise RuntimeError("MouthModel.bind(landmarks) first")
        return self._rest

    # ------------------------------------------------------------ storage

    def tensors(self) -> dict[str, np.ndarray]:
        return {"reference": self.reference, "lip_mean": self.lip_mean, "components": self.components,
                "feature_mean": self.feature_mean, "feature_std": self.feature_std, "weights": self.weights,
                "bias": self.bias, "scale": np.array([self.scale], np.float32),
                "rest_frame": np.array([self.rest_frame], np.int64)}

    def to_bytes(self) -> bytes:
        """The safetensors file: tensors in name order, header keys sorted, so equal models give equal bytes."""
        meta = {"format": FORMAT, "version": VERSION, "info": json.dumps(self.info, sort_keys=True)}
        header: dict = {"__metadata__": meta}
        blobs, offset = [], 0
        for name, arr in sorted(self.tensors().items()):
            data = np.ascontiguousarray(arr).astype(arr.dtype.newbyteorder("<"), copy=False).tobytes()
            header[name] = {"dtype": _DTYPES[arr.dtype.name], "shape": list(arr.shape),
                            "data_offsets": [offset, offset + len(data)]}
            blobs.append(data)
            offset += len(data)
        head = json.dumps(header, sort_keys=True, separators=(",", ":")).encode()
        head += b" " * (-len(head) % 8)
        return struct.pack("<Q", len(head)) + head + b"".join(blobs)

    @classmethod
    def from_bytes(cls, data: bytes, where: str = MOUTH_FILE, frames: int | None = None) -> "MouthModel":
        """Read a stored model; PackageError naming what is wrong and how to fix it."""
        from safetensors.numpy import load

        hint = "refit it with `lipsync-pack train PACKAGE --mouth-only` or rebuild the package"
        try:
            t = load(data)
            n = struct.unpack("<Q", data[:8])[0]
            meta = json.loads(data[8:8 + n]).get("__metadata__", {})
        except Exception as exc:      # safetensors raises several types for damaged bytes
            reason = " ".join(str(exc).split())[:200]
            raise PackageError(f"{where}: not a readable mouth model ({reason}); {hint}") from None
        if meta.get("format") != FORMAT or meta.get("version") != VERSION:
            raise PackageError(f"{where}: format {meta.get('format')!r} version {meta.get('version')!r}, "
                               f"expected {FORMAT!r} version {VERSION!r}; {hint}")
        missing = [k for k in TENSORS if k not in t]
        if missing:
            raise PackageError(f"{where}: tensor {missing[0]!r} missing; {hint}")
        for name in TENSORS:
            want_dtype = np.int64 if name == "rest_frame" else np.float32
            if t[name].dtype != want_dtype:
                raise PackageError(f"{where}: tensor {name!r} is {t[name].dtype}, expected {np.dtype(want_dtype)}; "
                                   f"{hint}")
        k = t["components"].shape[0] if t["components"].ndim == 2 else 0
        d = FEATURES
        if k < 1:
            raise PackageError(f"{where}: tensor 'components' has shape {list(t['components'].shape)}, "
                               f"expected [K, {2 * len(LIPS)}] with K >= 1; {hint}")
        want = {"reference": (len(STABLE), 2), "lip_mean": (2 * len(LIPS),), "components": (k, 2 * len(LIPS)),
                "feature_mean": (d,), "feature_std": (d,), "weights": (d, k), "bias": (k,), "scale": (1,),
                "rest_frame": (1,)}
        for name, shape in want.items():
            if t[name].shape != shape:
                raise PackageError(f"{where}: tensor {name!r} has shape {list(t[name].shape)}, "
                                   f"expected {list(shape)}; {hint}")
            if t[name].dtype.kind == "f" and not np.isfinite(t[name]).all():
                raise PackageError(f"{where}: tensor {name!r} holds NaN or infinity; {hint}")
        if (t["feature_std"] <= 0).any() or t["scale"][0] <= 0:
            raise PackageError(f"{where}: feature_std and scale must be positive; {hint}")
        rest = int(t["rest_frame"][0])
        if frames is not None and not 0 <= rest < frames:
            raise PackageError(f"{where}: rest frame {rest} is outside the package's {frames} frames; {hint}")
        try:
            info = json.loads(meta.get("info", "{}"))
        except Exception:                # informational only: a damaged report must not refuse the model
            info = {}
        info = info if isinstance(info, dict) else {}
        return cls(t["reference"], t["lip_mean"], t["components"], t["feature_mean"], t["feature_std"],
                   t["weights"], t["bias"], float(t["scale"][0]), rest, info)

    def __post_init__(self):
        self._rest: np.ndarray | None = None

    def bind(self, landmarks: np.ndarray) -> "MouthModel":
        """Remember the rest frame's coefficients (needs the package's landmarks)."""
        self._rest = self.coefficients(np.asarray(landmarks[self.rest_frame])[None])[0]
        return self


def opening_metric(coef: np.ndarray, opening: np.ndarray, weight: float = OPENING_WEIGHT) -> np.ndarray:
    """The (K, K) matrix T of retrieval's shape distance ``|T (q - k)|^2``.

    ``|T x|^2 = |x|^2 + weight * sum(var(coef)) * ((g . x) / std(g . coef))^2``, where ``g`` is the
    least-squares gradient of the opening over the (centred) coefficients: a difference of one standard
    deviation of opening costs ``weight`` times the whole shape variance. The plain distance lets the
    poorly predicted shape components (width, asymmetry) outvote the opening, which is what the audio
    predicts best. Weight 1 raised the opening r that retrieval serves on cnn_71s's held-out 32 s
    (+0.05 simulated, +0.02 in lipsync-eval) and on its first 32 s held out instead (+0.06 [+0.01, +0.13]),
    and left German_20s's 7 s tail as it was (+0.00 [-0.03, +0.03]).
    """
    c = np.asarray(coef, np.float64)
    c = c - c.mean(0)
    o = np.asarray(opening, np.float64)
    k = c.shape[1]
    if weight <= 0 or len(c) <= k:
        return np.eye(k)
    g = np.linalg.lstsq(c, o - o.mean(), rcond=None)[0]
    gn, gv = float(np.linalg.norm(g)), float((c @ g).var())
    if gn < 1e-12 or gv < 1e-24:
        return np.eye(k)
    u = g / gn
    a = np.sqrt(weight * c.var(0).sum() / gv) * gn
    return np.eye(k) + (np.sqrt(1.0 + a * a) - 1.0) * np.outer(u, u)


def _calibrate_scale(oof, y, folds, true_open) -> tuple[float, float]:
    """The widening of predictions at which nearest-shape retrieval opens as wide as the speaker.

    For each scale in SCALE_GRID, every frame's out-of-fold prediction, widened around
    the mean, picks the nearest true shape among the other folds' frames (what
    retrieval does with unseen audio); the scale whose picks' opening spread (std) is
    nearest the true spread wins. Returns (scale, picks' spread over the true one at it).
    """
    ratios = []
    for s in SCALE_GRID:
        rng = np.random.default_rng(0)                    # the same keys for every scale
        picked = np.empty(len(y), dtype=np.int64)
        for test in folds:
            keys = np.setdiff1d(np.arange(len(y)), test)
            if len(keys) > CALIBRATION_KEYS:               # bounded time and memory for long packages
                keys = np.sort(rng.choice(keys, CALIBRATION_KEYS, replace=False))
            norms = (y[keys] ** 2).sum(1)[None]
            for rows in np.array_split(test, -(-len(test) // 2000)):
                q = oof[rows] * s                                 # predictions (centred), widened
                d = (q ** 2).sum(1)[:, None] - 2 * q @ y[keys].T + norms
                picked[rows] = keys[np.argmin(d, axis=1)]
        ratios.append(true_open[picked].std() / max(true_open.std(), 1e-12))
    i = int(np.argmin([abs(np.log(max(r, 1e-6))) for r in ratios]))
    return float(SCALE_GRID[i]), float(ratios[i])


def fit_frames(flags: np.ndarray, train_stop: int) -> np.ndarray:
    """The frames a model is fitted on: training frames (before ``train_stop``) not flagged lost
    (2), whose audio window stays out of the held-out tail."""
    flags = np.asarray(flags)
    stop = train_stop - AUDIO_REACH if train_stop < len(flags) else train_stop
    return np.flatnonzero(flags[:max(stop, 0)] != 2).astype(np.int64)


def fit(package) -> MouthModel:
    """Fit a mouth-shape model on an open package (see :func:`fit_arrays`), bound to its landmarks."""
    return fit_arrays(package.landmarks, package.mel, package.fps, fit_frames(package.flags, package.train_range.stop),
                      package_rms(package), str(package.root))


def package_rms(package) -> np.ndarray:
    """Each package frame's audio RMS (:func:`runtime.stream.frame_rms` of its ``audio.wav``)."""
    return frame_rms(read_wav(Path(package.root) / "audio.wav"), package.frames, samples_per_frame(package.fps))


def read_wav(path: Path) -> np.ndarray:
    """A package's ``audio.wav`` (16-bit PCM mono, as the builder writes it) as float32 in [-1, 1]."""
    try:
        with wave.open(str(path)) as w:
            if w.getsampwidth() != 2 or w.getnchannels() != 1:
                raise PackageError(f"{path}: expected 16-bit mono PCM; rebuild the package")
            return np.frombuffer(w.readframes(w.getnframes()), "<i2").astype(np.float32) / 32768.0
    except (OSError, EOFError, wave.Error) as exc:
        raise PackageError(f"{path}: unreadable ({exc}); run `lipsync-pack verify`") from None


def fit_arrays(landmarks: np.ndarray, mel: np.ndarray, fps: float, frames: np.ndarray,
               rms: np.ndarray | None = None, where: str = "package") -> MouthModel:
    """Fit a mouth-shape model (see the module docstring) on ``frames``.

    Parameters
    ----------
    landmarks : np.ndarray [shape=(N, 68, 2)]
        The package's landmarks in crop pixels.
    mel : np.ndarray [shape=(M, 80)]
        The package's log-mel rows.
    frames : np.ndarray [shape=(T,), dtype=int]
        Frames to fit on (:func:`fit_frames`).
    rms : np.ndarray [shape=(N,)], optional
        Each package frame's audio RMS (:func:`runtime.stream.frame_rms`), to find the speaker's pauses.

    Raises
    ------
    PackageError
        When there are fewer than MIN_FRAMES frames.
    """
    t0 = time.perf_counter()
    frames = np.asarray(frames, np.int64)
    if len(frames) < MIN_FRAMES:
        raise PackageError(f"{where}: {len(frames)} usable training frames, a mouth model needs "
                           f"{MIN_FRAMES} (1 s); build from a longer video or with a smaller --holdout")
    all_lm = landmarks
    lm = np.asarray(landmarks)[frames]
    reference = _reference(lm)
    lips = normalise(lm, reference)
    lip_mean = lips.mean(0)
    _, _, vt = np.linalg.svd(lips - lip_mean, full_matrices=False)
    components = vt[:COMPONENTS]
    coef = (lips - lip_mean) @ components.T
    true_open = opening_of(lips, reference)

    windows = window_features(np.asarray(mel, np.float32), frames, fps)
    feats = reduce_bands(windows).reshape(len(frames), -1).astype(np.float64)
    f_mean, f_std = feats.mean(0), feats.std(0) + 1e-3
    x = (feats - f_mean) / f_std
    bias = coef.mean(0)
    y = coef - bias

    # blocked cross-validation over ALPHAS
    folds = np.array_split(np.arange(len(frames)), FOLDS)
    oof = np.zeros((len(ALPHAS), *y.shape))
    for test in folds:
        train = np.setdiff1d(np.arange(len(frames)), test)
        xm = x[train].mean(0)
        ym = y[train].mean(0)
        for i, w in enumerate(_ridge_path(x[train] - xm, y[train] - ym, ALPHAS)):
            oof[i, test] = (x[test] - xm) @ w + ym
    scores = [_pearson(opening_of((o + bias) @ components + lip_mean, reference), true_open) for o in oof]
    best = int(np.argmax(scores))
    pred_open = opening_of((oof[best] + bias) @ components + lip_mean, reference)
    spread = float(true_open.std() / max(pred_open.std(), 1e-9))
    metric = opening_metric(y, true_open)             # retrieval's distance (runtime.generators.retrieval)
    scale, chosen_spread = _calibrate_scale(oof[best] @ metric.T, y @ metric.T, folds, true_open)
    weights = _ridge_path(x, y, [ALPHAS[best]])[0]

    # resting mouth: the most typical of the speaker's closed mouths in pauses
    quiet = np.flatnonzero(np.asarray(rms)[frames] < IDLE_RMS) if rms is not None else np.array([], np.int64)
    if len(quiet) >= REST_MIN_QUIET:
        low = quiet[true_open[quiet] <= np.quantile(true_open[quiet], REST_QUIET_QUANTILE)]
    else:
        low = np.flatnonzero(true_open <= np.quantile(true_open, REST_QUANTILE))
    median = np.median(lips[low], axis=0)
    pick = low[np.argmin(np.linalg.norm(lips[low] - median, axis=1))]
    rest = int(frames[pick])

    info = {"alpha": ALPHAS[best], "cv_opening_r": round(scores[best], 4),
            "cv_scores": {f"{a:g}": round(s, 4) for a, s in zip(ALPHAS, scores)},
            "folds": FOLDS, "frames": int(len(frames)), "components": COMPONENTS,
            "explained_variance": round(float((coef.var(0)).sum() / max((lips - lip_mean).var(0).sum(), 1e-12)), 4),
            "spread_ratio": round(spread, 4), "retrieved_spread_ratio": round(chosen_spread, 4), "rest_opening": round(float(true_open[pick]), 4),
            "seconds": round(time.perf_counter() - t0, 3)}
    f32 = lambda a: np.ascontiguousarray(a, dtype=np.float32)
    model = MouthModel(f32(reference), f32(lip_mean), f32(components), f32(f_mean), f32(f_std),
                       f32(weights), f32(bias), scale, rest, info)
    return model.bind(all_lm)


def load(package) -> MouthModel:
    """The package's stored model, bound to its landmarks. PackageError when the file is damaged."""
    path = Path(package.root) / MOUTH_FILE
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise PackageError(f"{path}: unreadable ({exc.strerror}); run `lipsync-pack verify {package.root}`") from None
    return MouthModel.from_bytes(data, str(path), package.frames).bind(package.landmarks)


def for_package(package) -> MouthModel:
    """The stored model; for packages built before mouth models existed, one fitted now (with a warning)."""
    cached = getattr(package, "_mouth_model", None)
    if cached is not None:
        return cached
    if MOUTH_FILE in package.manifest["files"]:
        model = load(package)
    else:
        model = fit(package)
        log.warning("%s: package has no %s (built before format 1.1); fitted one on open in %.2f s. "
                    "Rebuild it, or run `lipsync-pack train %s --mouth-only`, to store it",
                    package.root, MOUTH_FILE, model.info["seconds"], package.root)
    package._mouth_model = model
    return model
