"""The audio stage: 16 kHz mono audio cut to the video's length, and its log-mel features.

The audio is trimmed or zero-padded to exactly ``frames x 640`` samples (at
25 fps), so audio sample ``k * 640`` is the start of video frame ``k`` and the
features have ``frames x 3.2 + 1`` rows. The features themselves come from
:mod:`runtime.features`, the implementation the server also uses.
"""

from __future__ import annotations

import io
import wave
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from runtime import features

from .video import VideoInfo, read_audio


@dataclass
class AudioTrack:
    wav: np.ndarray         # (frames * samples_per_frame,) float32 in [-1, 1], 16 kHz
    mel: np.ndarray         # (1 + len(wav) // 200, 80) float32
    source: Path            # the file the audio came from
    offset_s: float         # seconds skipped at the start of that file to line up with frame 0
    padded_s: float         # seconds of silence appended because the audio ended early


def prepare_audio(info: VideoInfo, frames: int, fps: float, audio_path: str | Path | None = None) -> AudioTrack:
    """Decode, align and featurise the audio for ``frames`` video frames.

    The video's own audio is shifted by the difference of the streams' start
    times; a separate ``audio_path`` is taken to start with the video.
    """
    spf = features.samples_per_frame(fps)
    if audio_path is None:
        source, offset = info.path, info.video_start_s - info.audio_start_s
    else:
        source, offset = Path(audio_path), 0.0
    wav = read_audio(source, features.SAMPLE_RATE, start_s=offset)
    want = frames * spf
    padded = max(0, want - len(wav))
    wav = np.pad(wav, (0, padded))[:want].astype(np.float32)
    return AudioTrack(wav=wav, mel=features.log_mel(wav), source=source, offset_s=offset,
                      padded_s=padded / features.SAMPLE_RATE)


def wav_bytes(wav: np.ndarray, sample_rate: int = features.SAMPLE_RATE) -> bytes:
    """16-bit PCM mono WAV file contents."""
    pcm = np.clip(np.round(wav * 32767.0), -32768, 32767).astype("<i2")
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(sample_rate)
        w.writeframes(pcm.tobytes())
    return buf.getvalue()
