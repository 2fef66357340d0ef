"""Log-mel audio features: the one implementation used by toolkit/ and runtime/.

The parameters are those shared by the field's lip-sync models (Wav2Lip,
SyncTalk_2D, Ultralight-Digital-Human): 16 kHz audio, 800-sample windows with a
200-sample hop, 80 Slaney mel bands between 55 and 7600 Hz, pre-emphasis 0.97,
magnitudes in dB relative to 20 dB and scaled to [-4, 4].

Written in numpy only (no librosa) so that the runtime stays small; the tests
check it against librosa.
"""

from __future__ import annotations

import numpy as np

SAMPLE_RATE = 16_000          # Hz, mono
N_FFT = 800                   # 50 ms
HOP_LENGTH = 200              # 12.5 ms
WIN_LENGTH = 800              # 50 ms, periodic Hann
N_MELS = 80
FMIN = 55.0                   # Hz
FMAX = 7_600.0                # Hz
PREEMPHASIS = 0.97
REF_LEVEL_DB = 20.0
MIN_LEVEL_DB = -100.0         # floor of the dB scale: amplitude 1e-5
MAX_ABS_VALUE = 4.0           # features lie in [-4, 4]
MEL_FPS = SAMPLE_RATE / HOP_LENGTH   # 80.0 mel frames per second

FEATURE_PARAMS = {
    "sample_rate": SAMPLE_RATE,
    "n_fft": N_FFT,
    "hop_length": HOP_LENGTH,
    "win_length": WIN_LENGTH,
    "n_mels": N_MELS,
    "fmin": FMIN,
    "fmax": FMAX,
    "preemphasis": PREEMPHASIS,
    "ref_level_db": REF_LEVEL_DB,
    "min_level_db": MIN_LEVEL_DB,
    "max_abs_value": MAX_ABS_VALUE,
    "mel_frames_per_second": MEL_FPS,
    "center": True,
    "pad_mode": "constant",
    "window": "hann",
    "mel_norm": "slaney",
}


def samples_per_frame(fps: float) -> int:
    """Audio samples per video frame at :data:`SAMPLE_RATE` (640 at 25 fps).

    Raises ``ValueError`` where fps does not divide the sample rate, because a
    fractional count would let audio and video drift apart.
    """
    spf = SAMPLE_RATE / fps
    if abs(spf - round(spf)) > 1e-9:
        raise ValueError(f"fps {fps} does not divide {SAMPLE_RATE} Hz into whole samples")
    return int(round(spf))


def mel_frames_per_video_frame(fps: float) -> float:
    """Mel frames per video frame: 80 / fps (3.2 at 25 fps)."""
    return MEL_FPS / fps


def mel_index(frame: int | np.ndarray, fps: float) -> int | np.ndarray:
    """First mel frame belonging to video frame ``frame``: floor(frame * 80 / fps).

    Mel frame ``m`` is centred on sample ``m * HOP_LENGTH``, so this mel frame
    is centred on the start of the video frame.
    """
    return np.floor(np.asarray(frame) * (MEL_FPS / fps) + 1e-9).astype(np.int64)


def hz_to_mel(hz: np.ndarray | float) -> np.ndarray:
    """Slaney mel scale: linear below 1 kHz, logarithmic above."""
    hz = np.asarray(hz, dtype=np.float64)
    f_sp = 200.0 / 3
    mels = hz / f_sp
    min_log_hz, min_log_mel, logstep = 1000.0, 1000.0 / f_sp, np.log(6.4) / 27.0
    log_part = min_log_mel + np.log(np.maximum(hz, min_log_hz) / min_log_hz) / logstep
    return np.where(hz >= min_log_hz, log_part, mels)


def mel_to_hz(mels: np.ndarray | float) -> np.ndarray:
    """Inverse of :func:`hz_to_mel`."""
    mels = np.asarray(mels, dtype=np.float64)
    f_sp = 200.0 / 3
    min_log_hz, min_log_mel, logstep = 1000.0, 1000.0 / f_sp, np.log(6.4) / 27.0
    log_part = min_log_hz * np.exp(logstep * (mels - min_log_mel))
    return np.where(mels >= min_log_mel, log_part, f_sp * mels)


def mel_filterbank(sr: int = SAMPLE_RATE, n_fft: int = N_FFT, n_mels: int = N_MELS,
                   fmin: float = FMIN, fmax: float = FMAX) -> np.ndarray:
    """Triangular Slaney-normalised mel filters.

    Returns
    -------
    np.ndarray [shape=(n_mels, n_fft // 2 + 1), dtype=float64]
    """
    fft_freqs = np.fft.rfftfreq(n_fft, d=1.0 / sr)
    mel_f = mel_to_hz(np.linspace(hz_to_mel(fmin), hz_to_mel(fmax), n_mels + 2))
    fdiff = np.diff(mel_f)
    ramps = mel_f[:, None] - fft_freqs[None, :]
    lower = -ramps[:-2] / fdiff[:-1, None]
    upper = ramps[2:] / fdiff[1:, None]
    weights = np.maximum(0.0, np.minimum(lower, upper))
    weights *= (2.0 / (mel_f[2:] - mel_f[:-2]))[:, None]
    return weights


_MEL_BASIS = mel_filterbank()
_WINDOW = 0.5 - 0.5 * np.cos(2.0 * np.pi * np.arange(WIN_LENGTH) / WIN_LENGTH)  # periodic Hann


def preemphasis(wav: np.ndarray, coef: float = PREEMPHASIS) -> np.ndarray:
    """y[n] = x[n] - coef * x[n-1], with y[0] = x[0]."""
    wav = np.asarray(wav, dtype=np.float64)
    out = wav.copy()
    out[1:] -= coef * wav[:-1]
    return out


def _stft_frames(wav: np.ndarray) -> np.ndarray:
    """The STFT's windows, one centred on each hop (zero padding at both ends): a (T, N_FFT) float64 view,
    T = 1 + len(wav) // HOP_LENGTH."""
    pad = N_FFT // 2
    padded = np.pad(np.asarray(wav, dtype=np.float64), (pad, pad))
    n_frames = 1 + (len(padded) - N_FFT) // HOP_LENGTH
    return np.lib.stride_tricks.sliding_window_view(padded, N_FFT)[::HOP_LENGTH][:n_frames]


def mel_rows(frames: np.ndarray) -> np.ndarray:
    """Log-mel rows of audio already cut into STFT windows: Hann window, |FFT|, mel bands, dB scale.

    :func:`log_mel` cuts the windows from a whole signal; the streaming front
    end (:mod:`runtime.stream`) cuts them as audio arrives. Both end here, so a
    streamed row equals the stored one.

    Parameters
    ----------
    frames : np.ndarray [shape=(T, N_FFT), dtype=float64]
        Pre-emphasised samples; row ``m`` is centred on sample ``m * HOP_LENGTH``.

    Returns
    -------
    np.ndarray [shape=(T, N_MELS), dtype=float32]
    """
    mag = np.abs(np.fft.rfft(frames * _WINDOW, axis=1))     # (T, 401)
    return normalize_db(mag @ _MEL_BASIS.T).astype(np.float32)


def normalize_db(mel_amp: np.ndarray) -> np.ndarray:
    """Mel amplitudes to dB, re 20 dB, scaled from [-100, 0] dB to [-4, 4]."""
    min_level = 10.0 ** (MIN_LEVEL_DB / 20.0)
    db = 20.0 * np.log10(np.maximum(min_level, mel_amp)) - REF_LEVEL_DB
    scaled = 2.0 * MAX_ABS_VALUE * (db - MIN_LEVEL_DB) / -MIN_LEVEL_DB - MAX_ABS_VALUE
    return np.clip(scaled, -MAX_ABS_VALUE, MAX_ABS_VALUE)


def log_mel(wav: np.ndarray) -> np.ndarray:
    """Log-mel features of mono 16 kHz audio.

    Parameters
    ----------
    wav : np.ndarray [shape=(n,), dtype=float]
        Samples in [-1, 1] at :data:`SAMPLE_RATE`.

    Returns
    -------
    np.ndarray [shape=(1 + n // HOP_LENGTH, N_MELS), dtype=float32]
        Time-major; row ``m`` describes the 50 ms centred on sample ``m * 200``.
    """
    wav = np.asarray(wav)
    if wav.ndim != 1:
        raise ValueError(f"log_mel wants mono audio of shape (n,), got {wav.shape}")
    return mel_rows(_stft_frames(preemphasis(wav)))
