"""One contract for every landmark backend; backends whose weights are absent are skipped."""

import subprocess
import sys

import numpy as np
import pytest

from runtime.errors import InputError
from tests.conftest import ROOT, VIDEOS
from toolkit import faces, video
from toolkit.faces import fa_backend


@pytest.fixture(scope="module")
def frame():
    return next(video.iter_frames(video.probe(VIDEOS["German_20s"]), 25))


@pytest.fixture(scope="module", params=sorted(faces.BACKENDS))
def backend(request):
    if not faces.AVAILABLE[request.param]():
        pytest.skip(f"{request.param} is not installed or its weights are not on disk")
    return faces.create(request.param)


def test_detects_the_one_face(backend, frame):
    boxes = backend.detect(frame)
    assert boxes.shape == (1, 5) and boxes.dtype == np.float32
    x0, y0, x1, y1, _ = boxes[0]
    assert 100 < x1 - x0 < 400 and 0 <= x0 < x1 <= 512 and 0 <= y0 < y1 <= 512


def test_no_face_is_an_empty_array(backend):
    blank = np.full((240, 320, 3), 127, np.uint8)
    boxes = backend.detect(blank)
    assert boxes.shape == (0, 5)


def test_landmarks_fall_in_the_box_in_ibug_order(backend, frame):
    box = backend.detect(frame)[0]
    lm = backend.landmarks(frame, box)
    assert lm.shape == (68, 2) and lm.dtype == np.float32
    w = box[2] - box[0]
    assert np.all(lm[:, 0] > box[0] - 0.2 * w) and np.all(lm[:, 0] < box[2] + 0.2 * w)
    assert lm[8, 1] > lm[57, 1] > lm[51, 1] > lm[33, 1] > lm[27, 1]    # chin, lower lip, upper lip, nose
    assert lm[36, 0] < lm[45, 0]                                          # eye corners left to right


def test_auto_falls_back_to_dlib_and_says_why(monkeypatch, tmp_path):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    name, reason = faces.resolve("auto")
    assert name == "dlib" and "2DFAN4" in reason


def test_face_alignment_without_weights_names_the_files(monkeypatch, tmp_path):
    pytest.importorskip("face_alignment")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with pytest.raises(InputError) as err:
        faces.create("face-alignment")
    message = str(err.value)
    assert "s3fd-619a316812.pth" in message and str(tmp_path / "hub" / "checkpoints") in message


def test_auto_prefers_face_alignment_when_weights_present(monkeypatch, tmp_path):
    pytest.importorskip("face_alignment")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    folder = tmp_path / "hub" / "checkpoints"
    folder.mkdir(parents=True)
    for name in fa_backend.WEIGHT_FILES:
        (folder / name).write_bytes(b"")
    assert faces.resolve("auto")[0] == "face-alignment"


def test_unknown_backend_is_refused():
    with pytest.raises(InputError, match="choose one of"):
        faces.resolve("mediapipe")


def test_registry_holds_the_classes_and_imports_no_backend_library():
    assert all(issubclass(cls, faces.LandmarkBackend) and cls.name == name for name, cls in faces.BACKENDS.items())
    code = "import sys, toolkit.faces; print(sorted({'dlib', 'face_alignment', 'torch'} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert out.stdout.strip() == "[]"
