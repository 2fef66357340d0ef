"""The mouth-shape model: fitted at build time on real footage, stored in the package, and the resting mouth."""

from __future__ import annotations

import json
import logging
import struct

import numpy as np
import pytest

from runtime import mouth
from runtime.errors import PackageError
from runtime.package import Package, verify
from runtime.protocol import AudioChunk, FrameStatus, float32_to_pcm
from runtime.metrics import Metrics
from runtime.server import check_packages
from runtime.session import Session
from runtime.store import PackageStore
from runtime.stream import IDLE_RMS, frame_rms, window_features


def test_build_stores_a_model_that_predicts_held_out_mouths(built):
    pkg = Package.open(built("cnn_71s").path)
    assert pkg.manifest["format_version"] == "1.1" and mouth.MOUTH_FILE in pkg.manifest["files"]
    info = pkg.manifest["extra"]["mouth"]
    assert info["cv_opening_r"] > 0.4 and info["frames"] > 900
    model = mouth.load(pkg)
    hold = np.arange(pkg.holdout_range.start, pkg.holdout_range.stop)          # 32 s never fitted on
    pred = model.opening(model.predict(window_features(np.asarray(pkg.mel), hold, pkg.fps)))
    real = model.opening(model.coefficients(np.asarray(pkg.landmarks)[hold]))
    assert np.corrcoef(pred, real)[0, 1] > 0.45
    rest = model.opening(model.rest_coefficients[None])[0]
    assert rest < np.median(real) and rest < 0.03                 # closed (0.04 counts as open), relaxed
    assert model.rest_frame in pkg.usable_train_frames
    rms = frame_rms(mouth.read_wav(pkg.root / "audio.wav"), pkg.frames, 640)
    assert rms[model.rest_frame] < IDLE_RMS                       # taken from one of the speaker's pauses


def test_model_round_trips_bit_identically(built):
    pkg = Package.open(built("German_20s").path)
    stored = (pkg.root / mouth.MOUTH_FILE).read_bytes()
    loaded = mouth.load(pkg)
    refit = mouth.fit(pkg)
    assert loaded.to_bytes() == stored                    # read then written: the same bytes
    for name, arr in refit.tensors().items():             # and the same numbers as a fresh fit
        np.testing.assert_array_equal(loaded.tensors()[name], arr, err_msg=name)


@pytest.mark.parametrize("damage", ["garbage", "truncated", "nan", "float64", "deep info", "deleted"])
def test_damaged_model_fails_with_one_clear_line(package_copy, damage):
    path = package_copy / mouth.MOUTH_FILE
    data = path.read_bytes()
    if damage == "garbage":
        path.write_bytes(b"\x00" * 64)
    elif damage == "truncated":
        path.write_bytes(data[:len(data) // 2])
    elif damage == "deleted":
        path.unlink()
    else:
        model = mouth.MouthModel.from_bytes(data)
        if damage == "nan":
            model.weights = np.full_like(model.weights, np.nan)
        elif damage == "float64":
            model.weights = model.weights.astype(np.float64)
            mouth._DTYPES["float64"] = "F64"
        blob = model.to_bytes()
        if damage == "deep info":      # a fit report nested past Python's recursion limit
            n = struct.unpack("<Q", blob[:8])[0]
            header = json.loads(blob[8:8 + n])
            header["__metadata__"]["info"] = "[" * 100_000
            head = json.dumps(header).encode()
            head += b" " * (-len(head) % 8)
            blob = struct.pack("<Q", len(head)) + head + blob[8 + n:]
        path.write_bytes(blob)
        mouth._DTYPES.pop("float64", None)
    if damage == "deep info":          # informational header only: the model still reads
        assert mouth.MouthModel.from_bytes(blob).rest_frame >= 0
        return
    with pytest.raises(PackageError) as err:     # at open (its size or header) or when the model is read
        mouth.for_package(Package.open(package_copy))
    assert mouth.MOUTH_FILE in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(PackageError):
        verify(package_copy)                               # the hash no longer matches
    with pytest.raises(PackageError):
        check_packages(PackageStore(package_copy))         # the server refuses the package, cleanly


def test_previous_format_still_serves(package_copy, speech, caplog):
    """A 1.0 package (no mouth model) opens: the model is fitted on open, with a warning."""
    (package_copy / mouth.MOUTH_FILE).unlink()
    manifest = json.loads((package_copy / "manifest.json").read_text())
    manifest["format_version"] = "1.0"
    del manifest["files"][mouth.MOUTH_FILE]
    del manifest["extra"]
    (package_copy / "manifest.json").write_text(json.dumps(manifest))
    verify(package_copy)
    session = Session(PackageStore(package_copy), Metrics())
    frames = []
    with caplog.at_level(logging.WARNING, logger="lipsync.mouth"):
        for i in range(60):
            frames += session.handle(AudioChunk(seq=i, pcm=float32_to_pcm(speech[16_000 * 5 + i * 640:][:640])))
    assert "fitted one on open" in caplog.text
    assert len(frames) == 58 and sum(f.status == FrameStatus.OK for f in frames) > 40
