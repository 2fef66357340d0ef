"""``lipsync-eval``: the whole evaluation, from package and audio to a report folder.

:func:`evaluate` is the API; the CLI (``toolkit/evaluate/cli.py``) only parses
options and calls it. Steps:

1. open the package, read the audio (a file, or with ``holdout`` the package's
   own audio of its held-out tail);
2. for each generator, render every frame in real-time order
   (:mod:`toolkit.evaluate.harness`), compose full frames over the package video
   and write ``output.mp4`` with the audio muxed in;
3. measure quality (:mod:`toolkit.evaluate.quality`, SyncNet if weights are given);
   with ``holdout``, also how the mouth-shape model grows with footage
   (:mod:`toolkit.evaluate.footage`);
4. write ``report.json``, the plots and ``report.html`` into a hidden folder and
   rename it to ``reports/<package>-<timestamp>/``.

With ``holdout``, the generators render onto training frames (walked ping-pong,
as the server does) driven by the held-out audio, and are compared with the real
held-out frames; a pseudo-generator ``real`` (the held-out frames themselves)
gives the reference row.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
from tqdm import tqdm

from runtime.errors import InputError, LipsyncError, PackageError
from runtime.features import SAMPLE_RATE, samples_per_frame
from runtime.generators import GENERATORS, has_weights
from runtime.mouth import for_package as mouth_model
from runtime.package import Package
from runtime.stream import IDLE_RMS, frame_rms
from runtime.render import base_frame

from .. import video
from ..audio import wav_bytes
from ..faces import create as create_backend
from . import harness, quality, stats
from .footage import footage_curve
from .report import write_report

SILENCE_S = 2.0                # seconds of digital silence, then of room noise, per generator
ROOM_NOISE_DBFS = -50.0        # a quiet room through a desk microphone


@dataclass(frozen=True)
class EvalConfig:
    """What to evaluate and how."""

    generators: tuple[str, ...] = ("retrieval",)    # side by side in one report
    holdout: bool = False                            # self-reenactment on the held-out tail
    reference: str | None = None                     # a real video of the speaker, driven by its own audio
    server: str | None = None                        # ws://HOST:PORT/ws or grpc://HOST:PORT of a running lipsync-serve
    syncnet_weights: str | None = None               # syncnet_v2.model: LSE-D / LSE-C
    landmarks: str = "dlib"                          # backend measuring mouths on the frames
    out_dir: str = "reports"
    progress: bool = True


@dataclass
class Evaluation:
    path: Path                                       # the report folder
    report: dict
    seconds: float = 0.0
    notes: list = field(default_factory=list)


def _open(path: str | Path) -> Package:
    try:
        return Package.open(path)
    except PackageError as exc:
        raise PackageError(f"{exc} (lipsync-eval needs a package built by `lipsync-pack build`)") from None


def _audio(config: EvalConfig, audio: str | Path | None, pkg: Package) -> tuple[np.ndarray, str]:
    spf = samples_per_frame(pkg.fps)
    if config.holdout:
        if audio is not None:
            raise InputError("give either --audio or --holdout (which uses the package's own held-out audio)")
        hold = pkg.holdout_range
        if len(hold) == 0:
            raise PackageError(f"{pkg.root}: the held-out split is empty; rebuild with --holdout 0.15")
        wav = video.read_audio(pkg.root / "audio.wav", SAMPLE_RATE)
        return wav[hold.start * spf:hold.stop * spf], f"{pkg.root / 'audio.wav'} (held-out frames {hold.start}-{hold.stop - 1})"
    if audio is None:
        raise InputError("no audio: give --audio FILE (any format ffmpeg reads), or --holdout")
    path = Path(audio)
    if not path.is_file():
        raise InputError(f"{path}: no such audio file")
    try:
        wav = video.read_audio(path, SAMPLE_RATE)
    except LipsyncError as exc:
        raise InputError(f"{path}: unreadable audio ({str(exc).splitlines()[0]}); give a wav, mp3, m4a, ...") from None
    if len(wav) < spf:
        raise InputError(f"{path}: {len(wav) / SAMPLE_RATE * 1000:.0f} ms of audio is shorter than one video "
                         f"frame ({1000 / pkg.fps:.0f} ms); give a longer clip")
    return wav, str(path)


class BaseFrames:
    """The package video's frames that the output needs, decoded once into a memory map."""

    def __init__(self, pkg: Package, needed: np.ndarray, work: Path):
        uniq = np.unique(needed)
        self.slot = {int(b): i for i, b in enumerate(uniq)}
        info = video.probe(pkg.root / "video.mp4")
        self.frames = np.lib.format.open_memmap(work / "base_frames.npy", mode="w+", dtype=np.uint8,
                                                shape=(len(uniq), info.height, info.width, 3))
        wanted = set(self.slot)
        for k, frame in enumerate(video.iter_frames(info, pkg.fps)):
            if k in wanted:
                self.frames[self.slot[k]] = frame
            if k >= uniq[-1]:
                break
        self.width, self.height = info.width, info.height

    def __getitem__(self, base: int) -> np.ndarray:
        return self.frames[self.slot[int(base)]]


class VideoWriter:
    """Full frames to an H.264 mp4 with the audio muxed in, through one ffmpeg process."""

    def __init__(self, path: Path, width: int, height: int, fps: float, wav: Path):
        self.path = path
        args = ["ffmpeg", "-nostdin", "-v", "error", "-y", "-f", "rawvideo", "-pix_fmt", "rgb24",
                "-s", f"{width}x{height}", "-r", f"{fps:g}", "-i", "pipe:", "-i", str(wav),
                "-map", "0:v", "-map", "1:a", "-c:v", "libx264", "-preset", "veryfast", "-crf", "20",
                "-pix_fmt", "yuv420p", "-c:a", "aac", "-b:a", "128k", "-movflags", "+faststart", str(path)]
        self.proc = subprocess.Popen(args, stdin=subprocess.PIPE, stderr=subprocess.PIPE)

    def write(self, frame: np.ndarray) -> float:
        t0 = time.perf_counter()
        self.proc.stdin.write(np.ascontiguousarray(frame).tobytes())
        return (time.perf_counter() - t0) * 1e3

    def close(self) -> None:
        self.proc.stdin.close()
        err = self.proc.stderr.read().decode(errors="replace")
        if self.proc.wait() != 0:
            raise LipsyncError(f"ffmpeg could not write {self.path.name}: {err.strip().splitlines()[-1:]}")


def _bases(pkg: Package, frames: int) -> np.ndarray:
    """The base frames a session shows, tick by tick (:func:`runtime.render.base_frame`)."""
    return np.array([base_frame(pkg, t) for t in range(frames)], dtype=np.int64)


def _measure(run: harness.Run, meter: quality.MouthMeter, bases: np.ndarray, desc: str, show: bool) -> np.ndarray:
    out = np.zeros((len(run.crops), 68, 2), np.float32)
    for k in tqdm(range(len(run.crops)), desc=desc, unit="frame", disable=not show, leave=False):
        out[k] = meter.measure(run.crops[k], int(bases[k]))
    return out


@dataclass
class Yardstick:
    """What every generator is measured against: shared by all rows of one report."""

    pkg: Package
    audio: np.ndarray                  # 16 kHz samples of the driving audio
    rms: np.ndarray                    # per frame
    predicted: np.ndarray              # opening the mouth-shape model expects from the audio, per frame
    region: tuple
    idx: np.ndarray                    # block-bootstrap resamples of the frames (stats.block_indices)
    real_lm: np.ndarray | None = None  # landmarks of the real frames (held-out or reference)
    real_crops: np.ndarray | None = None
    speaking_opening: np.ndarray | None = None   # without real frames: training frames' opening, for articulation
    syncnet: object = None


def _quality(run, lm, ys: Yardstick) -> tuple[dict, dict]:
    """A generator's quality entry, and its bootstrap samples for the paired comparisons."""
    opening = quality.mouth_opening(lm)
    n = len(opening)
    idx = ys.idx if ys.idx.shape[1] == n else stats.block_indices(n, ys.pkg.fps)
    q = {"mouth_opening": {"mean": round(float(opening.mean()), 4), "std": round(float(opening.std()), 4),
                           "per_frame": [round(float(v), 4) for v in opening]},
         "sync_offset": quality.sync_offset(ys.predicted[:n], opening, ys.pkg.fps),
         "open_in_silence": quality.open_in_silence(ys.rms[:n], opening),
         "flicker": round(quality.flicker(run.crops, ys.region), 3)}
    boot: dict = {}
    if ys.real_lm is not None:
        real_open = quality.mouth_opening(ys.real_lm)
        corr, corr_s = stats.correlation(opening, real_open, idx)
        lmd, lmd_s = stats.mean(quality.lmd_per_frame(lm, ys.real_lm), idx)
        std_r, std_s = stats.spread_ratio(opening, real_open, idx)
        p90_r, p90_s = stats.spread_ratio(opening, real_open, idx, stats.p90_spread)
        boot = {"opening_correlation": (corr, corr_s), "lmd_px": (lmd, lmd_s)}
        x0, y0, x1, y1 = ys.region
        cap = lambda v: min(v, 100.0)            # identical images: PSNR is infinite; report 100 dB
        real_crops = ys.real_crops# 
        q.update({
            "lmd_px": round(lmd, 3),
            "lmd_px_ci95": stats.summary(lmd, lmd_s, 3)["ci95"],
            "opening_correlation": round(corr, 4),
            "opening_correlation_ci95": stats.summary(corr, corr_s)["ci95"],
            "articulation": {"reference": "the real frames", "std_ratio": stats.summary(std_r, std_s),
                             "p90_spread_ratio": stats.summary(p90_r, p90_s)},
            "psnr_mouth_db": round(float(np.mean([cap(quality.psnr(g[y0:y1, x0:x1], r[y0:y1, x0:x1]))
                                                  for g, r in zip(run.crops, real_crops)])), 3),
            "ssim_mouth": round(float(np.mean([quality.ssim(g[y0:y1, x0:x1], r[y0:y1, x0:x1])
                                               for g, r in zip(run.crops, real_crops)])), 4),
            "psnr_face_db": round(float(np.mean([cap(quality.psnr(g, r)) for g, r in zip(run.crops, real_crops)])), 3),
            "ssim_face": round(float(np.mean([quality.ssim(g, r) for g, r in zip(run.crops, real_crops)])), 4),
        })
    elif ys.speaking_opening is not None:
        speaking = ys.rms[:n] >= IDLE_RMS
        if speaking.sum() >= 10:
            sub = opening[speaking]
            sub_idx = stats.block_indices(len(sub), ys.pkg.fps)
            std_r, std_s = stats.spread_ratio(sub, ys.speaking_opening, sub_idx, paired=False)
            p90_r, p90_s = stats.spread_ratio(sub, ys.speaking_opening, sub_idx, stats.p90_spread, paired=False)
            q["articulation"] = {"reference": "the package's training frames while the speaker talks",
                                 "std_ratio": stats.summary(std_r, std_s),
                                 "p90_spread_ratio": stats.summary(p90_r, p90_s)}
    if ys.syncnet is not None:
        from .syncnet import lse
        try:
            q["syncnet"] = {k: v for k, v in lse(ys.syncnet, np.asarray(run.crops), ys.audio, fps=ys.pkg.fps).items()
                            if k != "dists"}
        except InputError as exc:
            q["syncnet"] = {"skipped": str(exc)}
    else:
        q["syncnet"] = {"skipped": "no --syncnet-weights given (syncnet_v2.model from syncnet_python)"}
    return q, boot


def _comparisons(boots: dict) -> list[dict]:
    """Each pair of generators on the same resamples: can their opening correlation and LMD be told apart?"""
    out = []
    names = [n for n in boots if n != "real" and boots[n]]
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            for metric in ("opening_correlation", "lmd_px"):
                (va, sa), (vb, sb) = boots[a][metric], boots[b][metric]
                out.append(stats.compare(a, b, metric, sa, sb, va, vb))
    return out


def silence_audio(seconds: float = SILENCE_S, noise_dbfs: float = ROOM_NOISE_DBFS, seed: int = 0) -> np.ndarray:
    """``seconds`` of digital silence, then ``seconds`` of room noise (pink-ish, ``noise_dbfs`` RMS)."""
    n = int(seconds * SAMPLE_RATE)
    white = np.random.default_rng(seed).standard_normal(n + 64)
    noise = np.convolve(white, np.full(64, 1 / 64), mode="valid")[:n]        # rumble, like a quiet room
    noise *= 10 ** (noise_dbfs / 20) / np.sqrt(np.mean(noise ** 2))
    return np.concatenate([np.zeros(n), noise]).astype(np.float32)


def _silence(pkg: Package, name: str, meter, progress: bool) -> dict:
    """Share of open mouths when ``name`` is driven by digital silence, then by quiet room noise."""
    clip = silence_audio()
    run = harness.run_inprocess(pkg, clip, name)
    lm = _measure(run, meter, run.bases, f"silence {name}", progress)
    opening = quality.mouth_opening(lm)
    half = len(opening) // 2
    share = lambda x: round(float(np.mean(x > quality.OPEN_THRESHOLD)), 4)
    return {"digital": share(opening[:half]), "room_noise": share(opening[half:]), "frames": int(len(opening)),
            "seconds": SILENCE_S, "room_noise_dbfs": ROOM_NOISE_DBFS, "threshold": quality.OPEN_THRESHOLD}


def _speaking_opening(pkg: Package, meter, progress: bool, limit: int = 300) -> np.ndarray | None:
    """Mouth opening measured (as generated frames are) on training frames where the speaker talks."""
    frames = pkg.usable_train_frames
    wav = video.read_audio(pkg.root / "audio.wav", SAMPLE_RATE)
    spf = samples_per_frame(pkg.fps)
    rms = frame_rms(wav, pkg.frames, spf)
    frames = frames[rms[frames] >= IDLE_RMS]
    if len(frames) < 10:
        return None
    frames = frames[np.linspace(0, len(frames) - 1, min(limit, len(frames))).astype(int)]
    out = [quality.mouth_opening(meter.measure(np.asarray(pkg.crops[k]), int(k))[None])[0]
           for k in tqdm(frames, desc="landmarks training", unit="frame", disable=not progress, leave=False)]
    return np.asarray(out)


def evaluate(package: str | Path, audio: str | Path | None = None, config: EvalConfig = EvalConfig()) -> Evaluation:
    """Evaluate generators on a package; returns the report folder and the report dict."""
    t_start = time.perf_counter()
    pkg = _open(package)
    unknown = [g for g in config.generators if g not in GENERATORS]
    if unknown:
        raise InputError(f"--generator {unknown[0]}: unknown; choose from {', '.join(GENERATORS)}")
    if "neural" in config.generators and not has_weights(pkg):
        raise InputError(f"--generator neural: {pkg.root} holds no trained weights; "
                         f"run `lipsync-pack train {pkg.root}` first")
    if config.server and len(config.generators) > 1:
        raise InputError("with --server the server's own chain renders; choose it with lipsync-serve --generator")
    ref_dir = ref = None
    if config.reference:
        if audio is not None or config.holdout:
            raise InputError("--reference is driven by the reference video's own audio; drop --audio and --holdout")
        ref_dir = Path(tempfile.mkdtemp(prefix="lipsync-eval-reference-"))
        ref = _reference(config.reference, ref_dir / "reference", pkg, config.progress)
        samples = video.read_audio(ref.root / "audio.wav", SAMPLE_RATE)
        audio_desc = f"{config.reference} (its own audio; frames cut by lipsync-pack build)"
    else:
        samples, audio_desc = _audio(config, audio, pkg)
    if config.server:
        _check_server(config.server, pkg.root.name)
    syncnet = None
    if config.syncnet_weights:
        from .syncnet import load_syncnet
        syncnet = load_syncnet(config.syncnet_weights)
    spf = samples_per_frame(pkg.fps)
    frames = int(np.ceil(len(samples) / spf))
    samples = np.pad(samples, (0, frames * spf - len(samples)))

    out_root = Path(config.out_dir)
    stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
    final = out_root / f"{pkg.root.name}-{stamp}"
    work = out_root / f".{final.name}.partial-{os.getpid()}"
    scratch = work / "scratch"
    try:
        scratch.mkdir(parents=True)
        wav_path = scratch / "audio.wav"
        wav_path.write_bytes(wav_bytes(samples))
        bases = _bases(pkg, frames)
        hold = np.arange(pkg.holdout_range.start, pkg.holdout_range.start + frames) if config.holdout else None
        needed = np.concatenate([bases, hold if hold is not None else []]).astype(np.int64)
        if config.server:
            needed = np.arange(pkg.frames)               # the server picks the base frames
        base_video = BaseFrames(pkg, needed, scratch)
        runs = _run_all(pkg, samples, frames, bases, hold, config, base_video, work, wav_path)
        backend = create_backend(config.landmarks)
        meter = quality.MouthMeter(backend, pkg)
        env = quality.audio_envelope(samples, frames, pkg.fps)
        rms = frame_rms(samples, frames, spf)
        y = Yardstick(pkg, samples, rms, quality.predicted_opening(mouth_model(pkg), samples, frames, pkg.fps),
                      tuple(int(round(v)) for v in pkg.manifest["crop"]["mouth_region"]),
                      stats.block_indices(frames, pkg.fps), syncnet=syncnet)
        if hold is not None or ref is not None:
            source = ref if ref is not None else pkg
            real_idx = hold if hold is not None else np.arange(min(frames, ref.frames))
            y.real_crops = np.asarray(source.crops[real_idx[0]:real_idx[-1] + 1])
            real_run = harness.Run("real", "reference", real_idx, np.zeros(len(real_idx), np.uint8), y.real_crops,
                                   {}, 0.0, 0.0, 0.0)
            real_meter = quality.MouthMeter(backend, source)
            y.real_lm = _measure(real_run, real_meter, real_idx, "landmarks real", config.progress)
        else:
            y.speaking_opening = _speaking_opening(pkg, meter, config.progress)
        results, boots = {}, {}
        for run in runs:
            lm = _measure(run, meter, run.bases, f"landmarks {run.generator}", config.progress)
            q, boots[run.generator] = _quality(run, lm, y)
            if not config.server:
                q["silence"] = _silence(pkg, run.generator, meter, config.progress)
            results[run.generator] = (run, q)
        if y.real_lm is not None:
            q, boots["real"] = _quality(real_run, y.real_lm, y)
            results["real"] = (real_run, q)
        shutil.rmtree(scratch)
        report = write_report(work, pkg, audio_desc, samples, config, results, env, rms, time.perf_counter() - t_start,
                              _comparisons(boots), footage_curve(pkg) if config.holdout else None)
        work.rename(final)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    finally:
        if ref_dir is not None:
            shutil.rmtree(ref_dir, ignore_errors=True)
    return Evaluation(final, report, time.perf_counter() - t_start)


def _reference(video_path: str, out: Path, pkg: Package, progress: bool) -> Package:
    """Cut the reference video into crops with the target package's geometry (a throw-away package)."""
    from ..build import BuildConfig, build_package

    size = int(pkg.crops.shape[1])
    build_package(video_path, out, BuildConfig(crop_size=size, holdout=0.0), progress=progress)
    return Package.open(out)


def _check_server(url: str, name: str) -> None:
    """Fail before any work when the server is unreachable or does not serve this package."""
    import asyncio

    from runtime.client import open_client

    async def probe():
        async with open_client(url, timeout=5.0) as c:
            return c.capabilities.packages

    packages = asyncio.run(probe())
    if name not in packages:
        raise InputError(f"{url} serves {', '.join(packages) or 'nothing'}, not {name!r}; start it with "
                         f"`lipsync-serve` on the folder that holds {name}")


def _run_all(pkg, samples, frames, bases, hold, config, base_video, work, wav_path) -> list:
    runs = []
    names = ("server",) if config.server else config.generators
    for i, name in enumerate(names):
        out_name = "output.mp4" if i == 0 else f"output-{name}.mp4"
        writer = VideoWriter(work / out_name, base_video.width, base_video.height, pkg.fps, wav_path)

        def on_frame(k, crop, bounds, base, _writer=writer):
            frame = np.array(base_video[base])
            harness.paste(frame, crop, bounds)
            return _writer.write(frame)

        bar = tqdm(total=frames, desc=f"render {name}", unit="frame", disable=not config.progress, leave=False)
        try:
            if config.server:
                run = harness.run_server(config.server, pkg, pkg.root.name, samples, frames,
                                         holdout_bases=bases if hold is not None else None,
                                         on_frame=on_frame, progress=bar)
            else:
                run = harness.run_inprocess(pkg, samples, name, on_frame=on_frame, progress=bar)
        finally:
            bar.close()
            writer.close()
        run.output = out_name
        runs.append(run)
    return runs
