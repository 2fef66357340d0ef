"""runtime.features against librosa, on real speech."""

import numpy as np
import pytest
import scipy.signal

from runtime import features as F
from tests.conftest import AUDIO

librosa = pytest.importorskip("librosa")


@pytest.fixture(scope="module")
def speech():
    wav, _ = librosa.load(AUDIO["demo1_audio"], sr=F.SAMPLE_RATE)
    return wav


def librosa_log_mel(wav):
    """The same recipe written with librosa and scipy, as the field's models compute it."""
    emphasised = scipy.signal.lfilter([1, -F.PREEMPHASIS], [1], wav)
    mag = np.abs(librosa.stft(emphasised, n_fft=F.N_FFT, hop_length=F.HOP_LENGTH, win_length=F.WIN_LENGTH,
                              center=True, pad_mode="constant"))
    mel = librosa.filters.mel(sr=F.SAMPLE_RATE, n_fft=F.N_FFT, n_mels=F.N_MELS, fmin=F.FMIN, fmax=F.FMAX) @ mag
    db = 20 * np.log10(np.maximum(1e-5, mel)) - F.REF_LEVEL_DB
    return np.clip(2 * F.MAX_ABS_VALUE * (db - F.MIN_LEVEL_DB) / -F.MIN_LEVEL_DB - F.MAX_ABS_VALUE,
                   -F.MAX_ABS_VALUE, F.MAX_ABS_VALUE).T


def test_matches_librosa_on_speech(speech):
    ours, ref = F.log_mel(speech), librosa_log_mel(speech)
    assert ours.shape == ref.shape == (1 + len(speech) // F.HOP_LENGTH, F.N_MELS)
    assert ours.dtype == np.float32
    np.testing.assert_allclose(ours, ref, atol=1e-4)
    assert ours.min() >= -4 and ours.max() <= 4 and ours.std() > 0.5     # real speech spans the range


def test_filterbank_matches_librosa():
    ref = librosa.filters.mel(sr=16000, n_fft=800, n_mels=80, fmin=55, fmax=7600)
    np.testing.assert_allclose(F.mel_filterbank(), ref, rtol=1e-5, atol=1e-8)


def test_mel_scale_round_trip():
    hz = np.array([0.0, 55.0, 999.0, 1000.0, 4000.0, 7600.0])
    np.testing.assert_allclose(F.mel_to_hz(F.hz_to_mel(hz)), hz, rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(F.hz_to_mel(hz), librosa.hz_to_mel(hz), rtol=1e-9)


def test_alignment_constants():
    assert F.MEL_FPS == 80.0
    assert F.samples_per_frame(25) == 640
    assert F.mel_frames_per_video_frame(25) == pytest.approx(3.2)
    assert list(F.mel_index(np.arange(6), 25)) == [0, 3, 6, 9, 12, 16]
    with pytest.raises(ValueError):
        F.samples_per_frame(30)      # 533.33 samples: audio would drift


def test_silence_is_the_floor():
    assert np.all(F.log_mel(np.zeros(16000, np.float32)) == -F.MAX_ABS_VALUE)


def test_rejects_stereo():
    with pytest.raises(ValueError, match="mono"):
        F.log_mel(np.zeros((2, 1600), np.float32))
