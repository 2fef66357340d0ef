"""Flag parsing and output of lipsync-pack, through click's CliRunner."""

import json

from click.testing import CliRunner

from toolkit.cli import main


def test_build_help_shows_defaults():
    result = CliRunner().invoke(main, ["build", "--help"], terminal_width=200)
    assert result.exit_code == 0
    for text in ("--fps", "default: 25", "--crop-size", "default: 328", "--holdout", "default: 0.15",
                 "--landmarks", "auto|dlib|face-alignment", "--force", "--audio"):
        assert text in result.output


def test_unknown_backend_is_a_usage_error(tmp_path):
    result = CliRunner().invoke(main, ["build", "x.mp4", "--landmarks", "mediapipe"])
    assert result.exit_code == 2 and "mediapipe" in result.output


def test_bad_fps_is_one_clear_line(tmp_path):
    from tests.conftest import VIDEOS

    result = CliRunner().invoke(main, ["build", str(VIDEOS["face_1"]), "-o", str(tmp_path / "p"), "--fps", "30"])
    assert result.exit_code != 0
    assert result.output.strip().startswith("error: --fps 30") and not (tmp_path / "p").exists()


def test_options_from_environment(tmp_path):
    from tests.conftest import VIDEOS

    env = {"LIPSYNC_PACK_BUILD_HOLDOUT": "0.9"}
    result = CliRunner(env=env).invoke(main, ["build", str(VIDEOS["face_1"]), "-o", str(tmp_path / "p")])
    assert result.exit_code == 2 and "--holdout 0.9" in result.output


def test_inspect_and_verify(built):
    path = str(built("German_20s").path)
    result = CliRunner().invoke(main, ["inspect", path, "--json"])
    assert result.exit_code == 0
    info = json.loads(result.output)
    assert info["frames"] == 500 and info["lost"] == 0 and info["mel_frames"] == 1601
    assert info["jitter_px"]["smoothed"] < info["jitter_px"]["raw"]
    text = CliRunner().invoke(main, ["inspect", path]).output
    assert "jitter" in text and "crops.npy" in text
    ok = CliRunner().invoke(main, ["verify", path])
    assert ok.exit_code == 0 and "10 files match" in ok.output


def test_verify_names_the_bad_file(package_copy):
    (package_copy / "boxes.npy").unlink()
    result = CliRunner().invoke(main, ["verify", str(package_copy)])
    assert result.exit_code == 5 and "boxes.npy" in result.output


def test_inspect_missing_package(tmp_path):
    result = CliRunner().invoke(main, ["inspect", str(tmp_path / "nope")])
    assert result.exit_code == 5 and "no such package" in result.output
