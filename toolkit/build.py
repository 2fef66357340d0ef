"""The build pipeline: video in, verified package out.

:func:`build_package` is the Python API that ``lipsync-pack build`` calls. Two
passes over the frames keep memory flat whatever the video's length:

1. decode the source at ``fps`` (ffmpeg also writes the same frames to
   ``video.mp4``) and track landmarks;
2. after gap filling and smoothing, decode ``video.mp4`` and cut the crops into
   a memory-mapped ``crops.npy``, so crops match the package's video exactly.
"""

from __future__ import annotations

import dataclasses
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
from tqdm import tqdm

from runtime import __version__, features, mouth
from runtime.errors import FaceError, InputError
from runtime.landmarks import N_POINTS
from runtime.package import FLAG_INTERPOLATED, FLAG_LOST, FLAG_MEASURED, FORMAT_NAME, FORMAT_VERSION
from runtime.package import sha256_file
from runtime.stream import frame_rms

from . import faces, preview, video
from .audio import prepare_audio, wav_bytes
from .crop import crop_frame, mouth_boxes, mouth_region, to_crop_coords
from .smooth import SmoothConfig, smooth_track
from .track import FaceTracker, TrackConfig, fill_gaps, frame_ranges
from .writer import PackageWriter


MIN_FPS, MAX_FPS = 1, 120          # package frame rates a build accepts
MIN_CROP, MAX_CROP = 64, 1024      # face crop sides a build accepts, px
ADVISED_FOOTAGE_S = 180            # below this much training footage the summary advises a longer recording: the
                                   # mouth-shape model's held-out r still rose +0.05 per doubling at cnn_71s's 39 s


@dataclass(frozen=True)
class BuildConfig:
    """Everything that decides a package's contents; stored in its manifest."""

    fps: float = 25.0              # package frame rate; must divide 16 kHz (640 samples at 25 fps)
    crop_size: int = 328           # px; the models take the inner 320 (4 px margin for augmentation)
    crop_inner: int = 320          # px; recorded for generators
    holdout: float = 0.15          # trailing fraction of frames kept out of retrieval and training
    landmarks: str = "auto"        # backend name, or auto (face-alignment if its weights exist, else dlib)
    device: str = "cpu"            # torch device for the face-alignment backend
    max_gap_s: float = 0.4         # s; longer runs without a face are flagged lost, not interpolated
    min_usable: float = 0.5        # fraction of frames that must be usable (measured or interpolated)
    min_face_px: int = 64          # px; median face size below this fails the build
    video_crf: int = 18            # x264 quality of video.mp4 (lower is better, 18 is near lossless)
    video_preset: str = "ultrafast"  # x264 speed; ultrafast keeps a 1080x1920 clip under 5 s
    track: TrackConfig = field(default_factory=TrackConfig)
    smooth: SmoothConfig = field(default_factory=SmoothConfig)

    def __post_init__(self):
        if not (isinstance(self.fps, (int, float)) and MIN_FPS <= self.fps <= MAX_FPS):
            raise InputError(f"--fps {self.fps}: expected {MIN_FPS} ... {MAX_FPS} frames per second (25 to serve)")
        if not MIN_CROP <= self.crop_size <= MAX_CROP:
            raise InputError(f"--crop-size {self.crop_size}: expected {MIN_CROP} ... {MAX_CROP} px")
        try:
            features.samples_per_frame(self.fps)
        except ValueError:
            raise InputError(f"--fps {self.fps}: must divide {features.SAMPLE_RATE} into whole samples (e.g. 25, 20, 32, 40, 50)") from None
        if not 0 <= self.holdout <= 0.5:
            raise InputError(f"--holdout {self.holdout}: must lie between 0 and 0.5")
        if not 16 <= self.crop_inner <= self.crop_size:
            raise InputError(f"--crop-size {self.crop_size}: must be at least {max(16, self.crop_inner)}")


@dataclass
class BuildResult:
    path: Path
    manifest: dict
    seconds: dict                  # stage -> wall seconds
    backend_reason: str = ""

    def summary(self) -> dict:
        """What the command line prints: frames, losses, jitter, time per stage."""
        m, q = self.manifest, self.manifest["quality"]
        return {"package": str(self.path), "frames": m["video"]["frames"], "fps": m["video"]["fps"],
                "measured": q["measured"], "interpolated": q["interpolated"], "lost": q["lost"],
                "lost_ranges": q["lost_ranges"], "jitter_px": q["jitter_px"],
                "landmarks": m["landmarks"]["backend"], "mouth": m["extra"]["mouth"], "notes": q["notes"],
                "seconds": self.seconds}


class _Clock:
    def __init__(self):
        self.seconds: dict[str, float] = {}

    @contextmanager
    def stage(self, name: str):
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = round(self.seconds.get(name, 0.0) + time.perf_counter() - t0, 4)


def _bar(total: int, desc: str, show: bool) -> tqdm:
    return tqdm(total=total, desc=f"{desc:<10}", unit="frame", disable=not show, leave=False, dynamic_ncols=True)


def track_landmarks(info: video.VideoInfo, backend: faces.LandmarkBackend, cfg: BuildConfig,
                    encode_to: Path, show: bool = False) -> tuple[np.ndarray, FaceTracker]:
    """Pass 1: decode at ``cfg.fps``, write ``encode_to``, and track the face.

    Returns
    -------
    raw : np.ndarray [shape=(N, 68, 2), dtype=float32]
        Source-pixel landmarks, NaN where no face was found.
    tracker : FaceTracker
        With its statistics and notes.
    """
    tracker = FaceTracker(backend, cfg.track)
    expected = info.frames_at(cfg.fps)
    allowed_lost = (1 - cfg.min_usable) * expected + cfg.max_gap_s * cfg.fps
    rows, lost = [], 0
    with _bar(expected, "landmarks", show) as bar:
        for frame in video.iter_frames(info, cfg.fps, encode_to, cfg.video_crf, cfg.video_preset):
            lm = tracker.step(frame)
            rows.append(lm if len(lm) else np.full((N_POINTS, 2), np.nan, np.float32))
            lost += not len(lm)
            bar.update()
            if lost > allowed_lost:       # cannot reach min_usable any more: stop early
                _raise_unusable(np.stack(rows), cfg, info.path, expected, early=True)
    return np.stack(rows), tracker


def _raise_unusable(raw: np.ndarray, cfg: BuildConfig, path: Path, frames: int, early: bool = False):
    missing = np.isnan(raw).any(axis=(1, 2))
    if missing.all():
        seen = f"the first {len(raw)}" if early else f"all {len(raw)}"
        raise FaceError(f"{path}: no face found in {seen} frames; give a video with a frontal face")
    ranges = frame_ranges(missing)
    shown = ", ".join(f"{a}-{b - 1}" for a, b in ranges[:8]) + (" ..." if len(ranges) > 8 else "")
    raise FaceError(f"{path}: too few usable frames: face missing in {int(missing.sum())} of {frames}"
                    f" (need {cfg.min_usable:.0%} usable); frames without a face: {shown}")


def crop_all(normalised: Path, boxes: np.ndarray, size: int, crops: np.ndarray,
             keep: set[int], show: bool = False) -> dict[int, np.ndarray]:
    """Pass 2: cut ``crops[i]`` from frame ``i`` of the package's own video.

    Returns the full frames listed in ``keep`` (for the contact sheet).
    """
    info = video.probe(normalised)
    kept, n, done = {}, len(boxes), 0
    with _bar(n, "crop", show) as bar:
        for i, frame in enumerate(video.iter_frames(info, info.fps)):
            if i >= n:
                break
            crops[i] = crop_frame(frame, boxes[i], size)
            if i in keep:
                kept[i] = frame.copy()
            done += 1
            bar.update()
    if done < n:
        raise InputError(f"{normalised}: re-reading the normalised video gave {done} of {n} frames")
    return kept


def _check_face_size(raw: np.ndarray, flags: np.ndarray, cfg: BuildConfig, path: Path) -> float:
    measured = raw[flags == FLAG_MEASURED]
    size = float(np.median((measured.max(axis=1) - measured.min(axis=1)).max(axis=1)))
    if size < cfg.min_face_px:
        raise FaceError(f"{path}: the face is about {size:.0f} px wide, too small to use (need at least"
                        f" {cfg.min_face_px} px); record closer or at a higher resolution")
    return size


def _split(frames: int, holdout: float) -> dict:
    start = frames - int(round(frames * holdout))
    return {"holdout_fraction": holdout, "train_frames": [0, start], "holdout_frames": [start, frames]}


def _quality(flags, smoothed, tracker, face_size, audio) -> dict:
    notes = list(tracker.stats.notes)
    if audio.padded_s > 0.05:
        notes.append(f"audio ended {audio.padded_s:.2f} s before the video; padded with silence")
    return {
        "measured": int((flags == FLAG_MEASURED).sum()),
        "interpolated": int((flags == FLAG_INTERPOLATED).sum()),
        "lost": int((flags == FLAG_LOST).sum()),
        "lost_ranges": frame_ranges(flags == FLAG_LOST),
        "interpolated_ranges": frame_ranges(flags == FLAG_INTERPOLATED),
        "jitter_px": {"raw": round(smoothed.jitter_raw, 4), "smoothed": round(smoothed.jitter_smoothed, 4)},
        "faces_seen_max": int(tracker.stats.faces_seen_max),
        "face_size_px": round(face_size, 1),
        "notes": notes,
    }


def _manifest(name, info, cfg, backend, frames, region, quality, audio, seconds) -> dict:
    return {
        "format": FORMAT_NAME, "format_version": FORMAT_VERSION, "name": name,
        "tool": {"name": "lipsync-toolkit", "version": __version__},
        "created": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "source": {"file": info.path.name, "sha256": sha256_file(info.path), "duration_s": info.duration_s,
                   "width": info.width, "height": info.height, "fps": round(info.fps, 6),
                   "rotation": info.rotation, "audio_file": audio.source.name,
                   "audio_offset_s": round(audio.offset_s, 6)},
        "video": {"fps": cfg.fps, "frames": frames, "width": info.width, "height": info.height,
                  "duration_s": frames / cfg.fps},
        "crop": {"size": cfg.crop_size, "inner": cfg.crop_inner, "scale": cfg.smooth.crop_scale,
                 "mouth_region": [round(v, 2) for v in region]},
        "audio": {**features.FEATURE_PARAMS,
                  "mel_frames_per_video_frame": features.mel_frames_per_video_frame(cfg.fps),
                  "samples_per_video_frame": features.samples_per_frame(cfg.fps)},
        "landmarks": {"backend": backend.name, "backend_version": backend.version, "model": backend.model,
                      "points": N_POINTS, "coordinates": "crop"},
        "split": _split(frames, cfg.holdout),
        "quality": quality,
        "build": {"config": dataclasses.asdict(cfg), "seconds": seconds},
    }


def mouth_entry(model: "mouth.MouthModel") -> dict:
    """The manifest's ``extra.mouth``: what the stored mouth-shape model is and how well it fitted."""
    return {"file": mouth.MOUTH_FILE, "rest_frame": model.rest_frame, "scale": round(model.scale, 4), **model.info}


def build_package(source: str | Path, out: str | Path, config: BuildConfig = BuildConfig(),
                  audio: str | Path | None = None, force: bool = False, progress: bool = False,
                  log=lambda msg: None) -> BuildResult:
    """Turn a speaker video into a model package at ``out``.

    Parameters
    ----------
    source : path
        Any video ffmpeg reads, at least one second long, with a visible face.
    out : path
        Package folder to create; its name is the package name.
    audio : path, optional
        Audio to use instead of the video's own (required when it has none).
    force : bool
        Replace an existing package at ``out``.
    progress : bool
        Show per-stage progress bars on stderr.
    log : callable
        Receives one-line messages (which backend ``auto`` chose, and so on).

    Raises
    ------
    InputError, FaceError, FFmpegError
        Before anything is written at ``out``.
    """
    clock = _Clock()
    with clock.stage("probe"):
        info = video.probe(source)
        if audio is None and not info.has_audio:
            raise InputError(f"{source}: has no audio stream; give the speech with --audio FILE")
        if audio is not None and not Path(audio).is_file():
            raise InputError(f"--audio {audio}: no such file")
        backend_name, reason = faces.resolve(config.landmarks)
        if reason:
            log(reason)
    with PackageWriter(out, force=force) as writer:
        with clock.stage("load_backend"):
            backend = faces.create(backend_name, config.device)
        with clock.stage("landmarks"):
            raw, tracker = track_landmarks(info, backend, config, writer.path("video.mp4"), progress)
        n = len(raw)
        with clock.stage("smooth"):
            lm_src, flags = fill_gaps(raw, max_gap=int(round(config.max_gap_s * config.fps)))
            usable = flags != FLAG_LOST
            if usable.sum() < max(config.min_usable * n, config.fps):
                _raise_unusable(raw, config, info.path, n)
            face_size = _check_face_size(raw, flags, config, info.path)
            smoothed = smooth_track(lm_src, usable, config.smooth)
        with clock.stage("audio"):
            track = prepare_audio(info, n, config.fps, audio)
            writer.path("audio.wav").write_bytes(wav_bytes(track.wav))
            writer.save("mel.npy", track.mel)
        with clock.stage("crop"):
            crops = writer.array("crops.npy", (n, config.crop_size, config.crop_size, 3), np.uint8)
            keep = preview.sample_indices(n)
            frames = crop_all(writer.path("video.mp4"), smoothed.boxes, config.crop_size, crops, set(keep), progress)
            crops.flush()
            lm_crop = to_crop_coords(smoothed.landmarks, smoothed.boxes, config.crop_size)
            mouths = mouth_boxes(lm_crop)
            region = mouth_region(mouths, usable, config.crop_size)
            for name, arr in [("landmarks", lm_crop), ("boxes", smoothed.boxes), ("mouth_boxes", mouths), ("flags", flags)]:
                writer.save(f"{name}.npy", arr)
        with clock.stage("mouth"):
            split = _split(n, config.holdout)
            fit_on = mouth.fit_frames(flags, split["train_frames"][1])
            if len(fit_on) < mouth.MIN_FRAMES:
                raise FaceError(f"{info.path}: only {len(fit_on)} training frames show the face; the mouth model "
                                f"needs {mouth.MIN_FRAMES} (1 s); use a longer video or a smaller --holdout")
            rms = frame_rms(track.wav, n, features.samples_per_frame(config.fps))
            shape = mouth.fit_arrays(lm_crop, track.mel, config.fps, fit_on, rms, str(info.path))
            writer.path(mouth.MOUTH_FILE).write_bytes(shape.to_bytes())
        with clock.stage("preview"):
            tiles = [preview.tile(frames[i], crops[i], smoothed.boxes[i], lm_crop[i], flags[i], region, i) for i in keep]
            title = f"{writer.name}: {info.path.name}, {n} frames at {config.fps:g} fps, {backend.name} landmarks"
            writer.path("preview.png").write_bytes(preview.contact_sheet(tiles, title))
            del crops
        quality = _quality(flags, smoothed, tracker, face_size, track)
        if len(fit_on) < ADVISED_FOOTAGE_S * config.fps:
            quality["notes"].append(
                f"the mouth-shape model learned from {len(fit_on) / config.fps:.0f} s of the speaker; lip sync keeps "
                f"improving with footage (`lipsync-eval PACKAGE --holdout` plots how much): record "
                f"{ADVISED_FOOTAGE_S // 60}-5 minutes of them talking for a mouth that follows new speech closely")
        with clock.stage("write"):
            manifest = _manifest(writer.name, info, config, backend, n, region, quality, track, clock.seconds)
            manifest["extra"] = {"mouth": mouth_entry(shape)}
            manifest = writer.commit(manifest)
    return BuildResult(path=writer.dest, manifest=manifest, seconds=clock.seconds, backend_reason=reason)
