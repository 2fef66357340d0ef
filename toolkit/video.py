"""Probe and decode videos with ffmpeg, normalised to a fixed frame rate.

Frames are streamed from an ffmpeg pipe one at a time, so memory does not
grow with the video's length. ffmpeg applies rotation metadata itself
(``autorotate``), so phone videos come out upright; :func:`probe` reports the
size after rotation.
"""

from __future__ import annotations

import subprocess
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import ffmpeg
import numpy as np

from runtime.errors import FFmpegError, InputError, MediaError, last_line

MIN_DURATION_S = 1.0
KEYINT = 10                 # frames between key frames of video.mp4 (0.4 s at 25 fps)


@dataclass(frozen=True)
class VideoInfo:
    """What ffprobe says about a file, with width/height as displayed (after rotation)."""

    path: Path
    width: int
    height: int
    fps: float               # the stream's average frame rate
    duration_s: float
    rotation: int            # 0, 90, 180 or 270, clockwise as displayed
    codec: str
    has_audio: bool
    video_start_s: float
    audio_start_s: float

    def frames_at(self, fps: float) -> int:
        """Frames expected after resampling to ``fps``: round(duration x fps)."""
        return int(round(self.duration_s * fps))


def _rotation(stream: dict) -> int:
    angle = 0.0
    for side in stream.get("side_data_list", []) or []:
        if "rotation" in side:
            angle = -float(side["rotation"])   # display matrix angles are counter-clockwise
    if "rotate" in (stream.get("tags") or {}):
        angle = float(stream["tags"]["rotate"])
    return int(round(angle)) % 360


def probe(path: str | Path) -> VideoInfo:
    """Read a video's geometry, rate, duration, rotation and streams.

    Raises
    ------
    InputError
        The file is missing, not a video, or shorter than one second.
    FFmpegError
        ffprobe itself is missing.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such file; give the path of a video (mp4, mov, mkv, ...)")
    try:
        info = ffmpeg.probe(str(path))
    except FileNotFoundError:
        raise FFmpegError("ffprobe is not installed; install ffmpeg (apt-get install ffmpeg)") from None
    except ffmpeg.Error as exc:
        stderr = exc.stderr.decode(errors="replace") if exc.stderr else ""
        raise InputError(f"{path}: not a readable video ({last_line(stderr) or 'no detail'}); give an mp4/mov/mkv file") from None
    streams = info.get("streams", [])
    video = next((s for s in streams if s.get("codec_type") == "video"
                  and not (s.get("disposition") or {}).get("attached_pic")), None)
    if video is None:
        raise InputError(f"{path}: has no video stream; give a video file, not audio or an image")
    audio = next((s for s in streams if s.get("codec_type") == "audio"), None)
    width, height = int(video["width"]), int(video["height"])
    rotation = _rotation(video)
    if rotation in (90, 270):
        width, height = height, width
    duration = float(video.get("duration") or info.get("format", {}).get("duration") or 0.0)
    if duration < MIN_DURATION_S:
        raise InputError(f"{path}: lasts {duration:.2f} s; at least {MIN_DURATION_S:.0f} s of video is needed")
    return VideoInfo(
        path=path, width=width, height=height, fps=_rate(video.get("avg_frame_rate") or video.get("r_frame_rate")),
        duration_s=duration, rotation=rotation, codec=video.get("codec_name", "?"),
        has_audio=audio is not None, video_start_s=float(video.get("start_time") or 0.0),
        audio_start_s=float((audio or {}).get("start_time") or 0.0),
    )


def _rate(text: str | None) -> float:
    try:
        num, _, den = (text or "0/1").partition("/")
        return float(num) / float(den or 1)
    except (ValueError, ZeroDivisionError):
        return 0.0


class _StderrDrain(threading.Thread):
    """Keeps reading ffmpeg's stderr so that a chatty ffmpeg never blocks on a full pipe."""

    def __init__(self, pipe):
        super().__init__(daemon=True)
        self.pipe, self.chunks = pipe, []

    def run(self):
        for line in iter(self.pipe.readline, b""):
            if len(self.chunks) < 2000:
                self.chunks.append(line.decode(errors="replace"))

    @property
    def text(self) -> str:
        return "".join(self.chunks)


def iter_frames(info: VideoInfo, fps: float, encode_to: str | Path | None = None,
                crf: int = 18, preset: str = "ultrafast") -> Iterator[np.ndarray]:
    """Decode a video at ``fps`` frames per second, upright, as RGB frames.

    Parameters
    ----------
    info : VideoInfo
    fps : float
        Output rate; frames are dropped or repeated by ffmpeg's ``fps`` filter.
    encode_to : path, optional
        Also write the same normalised frames as H.264 (yuv420p, no audio) to this
        path, from the same decode.

    Yields
    ------
    np.ndarray [shape=(H, W, 3), dtype=uint8]

    Raises
    ------
    FFmpegError
        ffmpeg failed, or stopped after far fewer frames than the duration implies
        (a truncated file).
    """
    stream = ffmpeg.input(str(info.path)).video.filter("fps", fps=fps)
    if encode_to is None:
        graph = ffmpeg.output(stream, "pipe:", format="rawvideo", pix_fmt="rgb24")
    else:
        split = stream.split()          # a node indexed by output, not a tuple
        to_pipe, to_file = split[0], split[1]
        graph = ffmpeg.merge_outputs(
            ffmpeg.output(to_pipe, "pipe:", format="rawvideo", pix_fmt="rgb24"),
            # a key frame every KEYINT frames: browsers seek to any base frame by decoding at most that many
            ffmpeg.output(to_file, str(encode_to), vcodec="libx264", crf=crf, preset=preset, g=KEYINT,
                          pix_fmt="yuv420p", movflags="+faststart", an=None))
    args = graph.global_args("-nostdin", "-v", "error", "-y").compile()
    yield from _read_raw(args, info, fps)


def _read_raw(args: list[str], info: VideoInfo, fps: float) -> Iterator[np.ndarray]:
    frame_bytes = info.width * info.height * 3
    try:
        proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)
    except FileNotFoundError:
        raise FFmpegError("ffmpeg is not installed; install it (apt-get install ffmpeg)") from None
    drain = _StderrDrain(proc.stderr)
    drain.start()
    count = 0
    try:
        while True:
            buf = proc.stdout.read(frame_bytes)
            if len(buf) < frame_bytes:
                break
            count += 1
            yield np.frombuffer(buf, np.uint8).reshape(info.height, info.width, 3)
    finally:
        if proc.poll() is None:
            proc.stdout.close()
            proc.kill()
        proc.wait()
        drain.join(timeout=5)
    expected = info.frames_at(fps)
    if proc.returncode != 0:
        raise MediaError(f"{info.path}: decoding failed after {count} frames; the file is damaged or truncated,"
                         " re-export or re-download it", drain.text)
    if count < expected - max(2, 0.02 * expected):
        raise MediaError(f"{info.path}: decoded {count} of {expected} frames; the file looks truncated,"
                         " re-export or re-download it", drain.text)


def read_audio(path: str | Path, sample_rate: int, start_s: float = 0.0) -> np.ndarray:
    """Decode the first audio stream of any file ffmpeg reads, mono, at ``sample_rate``.

    Parameters
    ----------
    start_s : float
        Skip this many seconds (may be negative: that many seconds of silence are
        prepended), to line the audio up with the first video frame.

    Returns
    -------
    np.ndarray [shape=(n,), dtype=float32] in [-1, 1]
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such audio file")
    args = (ffmpeg.input(str(path)).audio
            .output("pipe:", format="s16le", acodec="pcm_s16le", ac=1, ar=sample_rate)
            .global_args("-nostdin", "-v", "error").compile())
    try:
        proc = subprocess.run(args, capture_output=True, check=False)
    except FileNotFoundError:
        raise FFmpegError("ffmpeg is not installed; install it (apt-get install ffmpeg)") from None
    stderr = proc.stderr.decode(errors="replace")
    if proc.returncode != 0:
        if "does not contain any stream" in stderr or "matches no streams" in stderr:
            raise InputError(f"{path}: has no audio stream; give one with --audio FILE")
        raise MediaError(f"{path}: could not decode its audio; give a readable audio file (wav, mp3, ...)", stderr)
    wav = np.frombuffer(proc.stdout, np.int16).astype(np.float32) / 32768.0
    shift = int(round(start_s * sample_rate))
    if shift > 0:
        wav = wav[shift:]
    elif shift < 0:
        wav = np.concatenate([np.zeros(-shift, np.float32), wav])
    return wav
