"""Streaming audio front end: PCM chunks in, one mel window per video frame out.

A session's audio arrives in 40 ms chunks at 16, 24 or 48 kHz. :class:`AudioStream`
resamples it to 16 kHz, computes log-mel rows incrementally with exactly the
parameters of :mod:`runtime.features` (so a streamed row equals the row the
toolkit stored in ``mel.npy`` for the same audio), keeps them in a ring buffer,
and hands out the mel window of each video frame as soon as its audio is in.

Audio context of video frame ``k`` (at 25 fps, times from the stream's start)::

    mel rows    m_k - 4 ... m_k + 7          (CONTEXT_ROWS = 12, m_k = floor(3.2 k))
    row centres 40k - 50 ms ... 40k + 87.5 ms (row m is centred on m * 12.5 ms)
    audio used  40k - 75 ms ... 40k + 112.5 ms (each row spans its centre +- 25 ms)

so the window is centred on the frame's own 40 ms and needs at most 72.5 ms of
audio past the frame's end: frame ``k`` is ready once chunk ``k + 2`` has
arrived. The look-ahead is LOOKAHEAD_CHUNKS = 2 chunks = 80 ms past the frame's
chunk (target <= 120 ms). Rows before the stream's start or after a flush hold
silence (the feature floor, -4).
"""

from __future__ import annotations

from dataclasses import dataclass
from math import gcd

import numpy as np

from . import features as F
from .protocol import CHUNK_MS                  # one chunk = one video frame at 25 fps
CONTEXT_BEFORE = 4                              # mel rows before m_k
CONTEXT_AFTER = 8                               # rows from m_k on (m_k ... m_k + 7)
CONTEXT_ROWS = CONTEXT_BEFORE + CONTEXT_AFTER   # 12 rows = 150 ms of row centres
LOOKAHEAD_CHUNKS = 2                            # 80 ms: see the module docstring
LOOKAHEAD_MS = LOOKAHEAD_CHUNKS * CHUNK_MS
SILENCE = -F.MAX_ABS_VALUE                      # feature value of digital silence
IDLE_RMS = 0.005                                # -46 dBFS: below it a frame's 40 ms counts as silence
                                                # (quiet speech reaches -45; a quiet room -48; docs/serving.md)
RING_ROWS = 256                                 # 3.2 s of mel rows per session
_RESAMPLE_TAPS_PER_PHASE = 32                   # FIR length per polyphase branch


def rms(samples: np.ndarray) -> float:
    """Root mean square of float samples (full scale 1.0); 0.0 for none."""
    return float(np.sqrt(np.mean(np.square(samples, dtype=np.float64)))) if len(samples) else 0.0


def frame_rms(samples: np.ndarray, frames: int, spf: int) -> np.ndarray:
    """RMS of each video frame's own ``spf`` samples (full scale 1.0), zero-padded at the end: float64 (frames,).

    Compare with IDLE_RMS to find silent frames, as the server does chunk by chunk.
    """
    x = np.zeros(frames * spf, np.float32)
    n = min(len(samples), len(x))
    x[:n] = samples[:n]
    return np.sqrt(np.mean(x.reshape(frames, spf).astype(np.float64) ** 2, axis=1))


def frame_window(mel: np.ndarray, frame: int, fps: float) -> np.ndarray:
    """The CONTEXT_ROWS mel rows of video frame ``frame``, padded with silence.

    Parameters
    ----------
    mel : np.ndarray [shape=(M, 80)]
        Log-mel rows of the whole audio, as :func:`runtime.features.log_mel` gives.
    frame : int
    fps : float

    Returns
    -------
    np.ndarray [shape=(CONTEXT_ROWS, 80), dtype=float32]
    """
    start = int(F.mel_index(frame, fps)) - CONTEXT_BEFORE
    out = np.full((CONTEXT_ROWS, mel.shape[1]), SILENCE, dtype=np.float32)
    lo, hi = max(start, 0), min(start + CONTEXT_ROWS, len(mel))
    if hi > lo:
        out[lo - start:hi - start] = mel[lo:hi]
    return out


def window_features(mel: np.ndarray, frames: range | np.ndarray, fps: float) -> np.ndarray:
    """:func:`frame_window` for many frames: float32 [len(frames), CONTEXT_ROWS, 80]."""
    idx = np.asarray(F.mel_index(np.asarray(frames), fps))[:, None] + np.arange(-CONTEXT_BEFORE, CONTEXT_AFTER)
    padded = np.concatenate([mel, np.full((1, mel.shape[1]), SILENCE, np.float32)])
    idx = np.where((idx < 0) | (idx >= len(mel)), len(mel), idx)     # out of range -> the silence row
    return padded[idx].astype(np.float32, copy=False)


def window_from_pcm(samples16k: np.ndarray) -> np.ndarray:
    """Mel window of the frame at the centre of a stateless 640 ms request.

    The window's centre is the middle of the frame, so the frame starts 300 ms
    in; rows 20 ... 31 of the window's log-mel are centred 50 ms before to
    87.5 ms after the frame's start, as in streaming.

    Parameters
    ----------
    samples16k : np.ndarray [shape=(10240,), dtype=float32]

    Returns
    -------
    np.ndarray [shape=(CONTEXT_ROWS, 80), dtype=float32]
    """
    mel = F.log_mel(samples16k)
    first = (300 - CONTEXT_BEFORE * 12.5) / 12.5       # row 20
    return mel[int(first):int(first) + CONTEXT_ROWS]


class Resampler:
    """Streaming polyphase resampler from ``rate`` to 16 kHz (24 -> 16: x2/3, 48 -> 16: /3).

    A Kaiser-windowed sinc low-pass at 0.9 of the output Nyquist; its delay is
    half the filter length (below 1 ms at these rates), which is not
    compensated. State carries across calls, so chunking does not change the
    output.
    """

    def __init__(self, rate: int, target: int = F.SAMPLE_RATE):
        g = gcd(rate, target)
        self.up, self.down = target // g, rate // g
        self.rate = rate
        n = _RESAMPLE_TAPS_PER_PHASE * max(self.up, self.down) | 1
        cutoff = 0.9 / max(self.up, self.down)             # in units of the upsampled Nyquist
        t = np.arange(n) - (n - 1) / 2
        h = cutoff * np.sinc(cutoff * t) * np.kaiser(n, 8.0)
        self.h = (h * self.up / h.sum() * 1.0).astype(np.float64)
        self.hist = np.zeros(0)          # tail of the upsampled signal, len(h) - 1 samples
        self.phase = 0                   # index of the next output sample in the upsampled signal

    def __call__(self, x: np.ndarray) -> np.ndarray:
        if self.up == self.down == 1:
            return np.asarray(x, dtype=np.float32)
        up = np.zeros(len(x) * self.up)
        up[::self.up] = x
        buf = np.concatenate([self.hist if len(self.hist) else np.zeros(len(self.h) - 1), up])
        y = np.convolve(buf, self.h, mode="valid")          # y[i] = output at upsampled time i
        out = y[self.phase::self.down]
        self.phase = (self.phase - len(y)) % self.down
        self.hist = buf[len(buf) - (len(self.h) - 1):]
        return out.astype(np.float32)


@dataclass
class FrameAudio:
    """One video frame's audio, ready for a generator.

    Attributes
    ----------
    index : int
        Frame number since the stream's start.
    mel : np.ndarray [shape=(CONTEXT_ROWS, 80), dtype=float32]
    rms : float
        RMS of the frame's own 40 ms of 16 kHz audio (full scale 1.0).
    ahead_rms : float
        The loudest RMS among the next LOOKAHEAD_CHUNKS frames' own 40 ms (audio
        that never came counts as silence).
    """

    index: int
    mel: np.ndarray
    rms: float
    ahead_rms: float = 0.0

    @property
    def silent(self) -> bool:
        """The frame's own 40 ms is below IDLE_RMS."""
        return self.rms < IDLE_RMS

    @property
    def quiet(self) -> bool:
        """Silent, and so is the look-ahead: no speech starts within 80 ms. The renderer's
        rest target; speech in the look-ahead starts opening the mouth before the sound."""
        return self.rms < IDLE_RMS and self.ahead_rms < IDLE_RMS


class AudioStream:
    """One session's audio: push PCM, pop frames whose audio context is complete.

    Parameters
    ----------
    fps : float
        Video frame rate of the package (25: 640 samples per frame).
    """

    def __init__(self, fps: float = 25.0):
        self.fps = fps
        self.spf = F.samples_per_frame(fps)
        self._resampler: Resampler | None = None
        pad = F.N_FFT // 2
        self._pre = np.zeros(pad)          # pre-emphasised samples not yet fully consumed, zero-padded start
        self._pre_start = -pad             # stream sample index of self._pre[0]
        self._last = None                  # last raw sample, for pre-emphasis across chunks
        self._raw = np.zeros(0, np.float32)  # raw 16 kHz samples of frames not yet popped
        self._raw_start = 0                # stream sample index of self._raw[0]
        self._ring = np.full((RING_ROWS, F.N_MELS), SILENCE, np.float32)
        self.rows = 0                      # mel rows computed so far
        self.samples = 0                   # 16 kHz samples received so far
        self.next_frame = 0                # next frame to pop
        self._flushed = False

    def push(self, samples: np.ndarray, rate: int = F.SAMPLE_RATE) -> None:
        """Add mono float samples at ``rate`` Hz (16000, 24000 or 48000)."""
        if self._resampler is None or self._resampler.rate != rate:
            self._resampler = Resampler(rate)
        x = self._resampler(np.asarray(samples, dtype=np.float32))
        if not len(x):
            return
        xd = x.astype(np.float64)
        pre = xd.copy()
        pre[1:] -= F.PREEMPHASIS * xd[:-1]
        if self._last is not None:
            pre[0] -= F.PREEMPHASIS * self._last
        self._last = xd[-1]
        self._pre = np.concatenate([self._pre, pre])
        self._raw = np.concatenate([self._raw, x])
        self.samples += len(x)
        self._compute_rows()

    def flush(self) -> None:
        """End of stream: pad with silence so every pushed frame can be popped."""
        if self._flushed:
            return
        self._flushed = True
        pad = F.N_FFT // 2 + LOOKAHEAD_CHUNKS * self.spf + self.spf
        self._pre = np.concatenate([self._pre, np.zeros(pad)])
        self._compute_rows(limit=1 + self.samples // F.HOP_LENGTH)

    def _compute_rows(self, limit: int | None = None) -> None:
        """Compute every mel row whose 800-sample window is complete."""
        end = self._pre_start + len(self._pre)             # one past the last sample held
        last = (end - F.N_FFT // 2) // F.HOP_LENGTH         # row m needs samples < m * 200 + 400
        if limit is not None:
            last = min(last, limit - 1)
        if last < self.rows:
            return
        first = self.rows
        offset = first * F.HOP_LENGTH - F.N_FFT // 2 - self._pre_start
        seg = self._pre[offset:offset + (last - first) * F.HOP_LENGTH + F.N_FFT]
        frames = np.lib.stride_tricks.sliding_window_view(seg, F.N_FFT)[::F.HOP_LENGTH]
        rows = F.mel_rows(frames)
        for i, row in enumerate(rows):
            self._ring[(first + i) % RING_ROWS] = row
        self.rows = first + len(rows)
        keep = self.rows * F.HOP_LENGTH - F.N_FFT // 2 - self._pre_start   # first sample still needed
        self._pre = self._pre[keep:]
        self._pre_start += keep

    def _rows_of(self, frame: int) -> np.ndarray:
        start = int(F.mel_index(frame, self.fps)) - CONTEXT_BEFORE
        out = np.full((CONTEXT_ROWS, F.N_MELS), SILENCE, np.float32)
        m = start + np.arange(CONTEXT_ROWS)
        held = (m >= 0) & (m < self.rows) & (m > self.rows - RING_ROWS)      # computed and still in the ring
        out[held] = self._ring[m[held] % RING_ROWS]
        return out

    def _ready(self, frame: int) -> bool:
        if self._flushed:                 # silence follows: any frame holding audio can go, even a partial one
            return frame * self.spf < self.samples
        last_row = int(F.mel_index(frame, self.fps)) + CONTEXT_AFTER - 1
        return (frame + 1) * self.spf <= self.samples and last_row < self.rows

    def pop(self) -> list[FrameAudio]:
        """Frames whose audio context is complete, in order; each is returned once."""
        out = []
        while self._ready(self.next_frame):
            k = self.next_frame
            lo = k * self.spf - self._raw_start
            ahead = frame_rms(self._raw[lo + self.spf:lo + (LOOKAHEAD_CHUNKS + 1) * self.spf], LOOKAHEAD_CHUNKS,
                              self.spf)
            out.append(FrameAudio(index=k, mel=self._rows_of(k), rms=rms(self._raw[lo:lo + self.spf]),
                                  ahead_rms=float(ahead.max())))
            self.next_frame += 1
        drop = self.next_frame * self.spf - self._raw_start
        if drop > 0:
            self._raw = self._raw[drop:]
            self._raw_start += drop
        return out

    @property
    def pending(self) -> int:
        """Frames whose own audio is in but whose look-ahead is not."""
        return self.samples // self.spf - self.next_frame
