"""The whole build on the three shared clips: counts, geometry, alignment, files."""

import json
import subprocess
import wave

import numpy as np
import pytest

from runtime import features
from runtime.package import FLAG_LOST, Package, verify
from tests.conftest import VIDEOS, run_cli
from toolkit import video
from toolkit.crop import crop_frame

CLIPS = ["German_20s", "demo2_video", "face_1"]


@pytest.mark.parametrize("name", CLIPS)
def test_frame_count_follows_duration(built, name):
    info = video.probe(VIDEOS[name])
    frames = built(name).manifest["video"]["frames"]
    assert abs(frames - round(info.duration_s * 25)) <= 1
    assert built(name).manifest["video"]["fps"] == 25


def test_30fps_source_is_resampled(built):
    m = built("face_1").manifest
    assert m["source"]["fps"] != 25 and m["video"]["fps"] == 25
    out = video.probe(built("face_1").path / "video.mp4")
    assert out.fps == pytest.approx(25) and out.frames_at(25) == pytest.approx(m["video"]["frames"], abs=1)


@pytest.mark.parametrize("name", CLIPS)
def test_landmarks_inside_their_crops(built, name):
    pkg = Package.open(built(name).path)
    size = pkg.manifest["crop"]["size"]
    lm = np.asarray(pkg.landmarks)
    assert lm.shape == (pkg.frames, 68, 2) and lm.dtype == np.float32
    assert lm.min() >= 0 and lm.max() <= size
    mouth = np.asarray(pkg.mouth_boxes)
    assert np.all(mouth[:, 2] > mouth[:, 0]) and np.all(mouth[:, 3] > mouth[:, 1])
    x0, y0, x1, y1 = pkg.manifest["crop"]["mouth_region"]
    centres = (mouth[:, :2] + mouth[:, 2:]) / 2
    inside = (centres[:, 0] > x0) & (centres[:, 0] < x1) & (centres[:, 1] > y0) & (centres[:, 1] < y1)
    assert inside.mean() > 0.98


@pytest.mark.parametrize("name", CLIPS)
def test_audio_features_aligned_with_frames(built, name):
    pkg = Package.open(built(name).path)
    spf = features.samples_per_frame(pkg.fps)
    with wave.open(str(pkg.root / "audio.wav")) as w:
        assert w.getframerate() == 16000 and w.getnchannels() == 1
        assert w.getnframes() == pkg.frames * spf
    assert pkg.mel.shape == (1 + pkg.frames * spf // features.HOP_LENGTH, 80)
    last_window = features.mel_index(pkg.frames - 1, pkg.fps) + 3
    assert last_window < pkg.mel.shape[0]
    assert pkg.manifest["audio"]["mel_frames_per_video_frame"] == pytest.approx(3.2)


def test_crops_match_the_package_video(built):
    """crops[i] is the box of frame i of video.mp4, so paste-back lines up."""
    pkg = Package.open(built("German_20s").path)
    info = video.probe(pkg.root / "video.mp4")
    for i, frame in enumerate(video.iter_frames(info, pkg.fps)):
        if i == 7:
            break
    again = crop_frame(frame, pkg.boxes[7], pkg.crops.shape[1])
    assert np.abs(again.astype(int) - pkg.crops[7]).max() <= 1


def test_package_video_seeks_cheaply(built):
    """A key frame every KEYINT frames, so a browser can show any base frame quickly."""
    out = subprocess.run(["ffprobe", "-v", "error", "-select_streams", "v", "-show_entries", "frame=key_frame",
                          "-of", "csv=p=0", str(built("German_20s").path / "video.mp4")],
                         capture_output=True, text=True, check=True)
    keys = [i for i, line in enumerate(out.stdout.split()) if line.startswith("1")]
    assert keys[0] == 0 and max(np.diff(keys)) <= video.KEYINT


@pytest.mark.parametrize("name", CLIPS)
def test_every_clip_verifies_and_is_clean(built, name):
    r = built(name)
    assert verify(r.path)
    q = r.manifest["quality"]
    assert q["measured"] + q["interpolated"] + q["lost"] == r.manifest["video"]["frames"]
    assert q["lost"] == 0                                   # all three show one clear face
    assert q["jitter_px"]["smoothed"] < q["jitter_px"]["raw"]
    assert (r.path / "preview.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list(r.path.parent.glob(".*partial*"))


def test_holdout_tail_recorded(built):
    m = built("German_20s").manifest
    n = m["video"]["frames"]
    assert m["split"]["holdout_frames"] == [n - round(0.15 * n), n]
    assert m["split"]["train_frames"] == [0, n - round(0.15 * n)]


def test_short_footage_gets_advice_to_record_longer(built):
    """A 20 s clip trains its mouth on 17 s: the summary advises minutes (the footage curve rose at 39 s)."""
    notes = built("German_20s").manifest["quality"]["notes"]
    advice = [n for n in notes if "mouth-shape model learned from 17 s" in n]
    assert len(advice) == 1 and "record 3-5 minutes" in advice[0]


def test_boxes_are_square_and_in_source_pixels(built):
    pkg = Package.open(built("demo2_video").path)
    boxes = np.asarray(pkg.boxes)
    assert boxes.dtype == np.int32
    assert np.all(boxes[:, 2] - boxes[:, 0] == boxes[:, 3] - boxes[:, 1])
    centre = (boxes[:, :2] + boxes[:, 2:]) / 2
    assert 0 < centre[:, 0].min() and centre[:, 0].max() < 1080     # small face in a 1080x1920 frame
    assert centre[:, 1].max() < 1920 / 2                            # the face is in the upper half
    assert np.all(pkg.flags != FLAG_LOST)


def test_manifest_records_sources_and_config(built):
    m = built("German_20s").manifest
    assert m["source"]["file"] == "German_20s.mp4" and len(m["source"]["sha256"]) == 64
    assert m["landmarks"]["backend"] == "dlib"
    assert m["build"]["config"]["crop_size"] == 328
    assert set(m["build"]["seconds"]) >= {"landmarks", "crop", "audio", "write"}


def test_rotated_phone_video_comes_out_upright(tmp_path):
    """A 90-degree display-rotation tag is honoured: frames come out portrait."""
    from tests.conftest import ffmpeg

    src = tmp_path / "landscape.mp4"
    ffmpeg("-i", str(VIDEOS["German_20s"]), "-t", "3", "-vf", "crop=512:300:0:40", "-c:v", "libx264",
           "-preset", "ultrafast", "-c:a", "copy", str(src))
    rotated = tmp_path / "rotated.mp4"
    ffmpeg("-i", str(src), "-c", "copy", "-metadata:s:v:0", "rotate=90", str(rotated))
    info = video.probe(rotated)
    assert info.rotation in (90, 270) and (info.width, info.height) == (300, 512)
    frame = next(video.iter_frames(info, 25))
    assert frame.shape == (512, 300, 3)


def test_cli_build_json_summary(tmp_path):
    """The console command builds a short clip and prints a JSON summary."""
    from tests.conftest import ffmpeg

    clip = tmp_path / "clip.mp4"
    ffmpeg("-i", str(VIDEOS["German_20s"]), "-t", "2", "-c:v", "libx264", "-preset", "ultrafast", str(clip))
    proc = run_cli("build", str(clip), "-o", str(tmp_path / "models" / "clip"), "--json")
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout)
    assert summary["frames"] == 50 and summary["lost"] == 0
    assert run_cli("verify", str(tmp_path / "models" / "clip")).returncode == 0
