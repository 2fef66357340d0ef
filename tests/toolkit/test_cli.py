"""Flag parsing and output of lipsync-pack and lipsync-eval, through click's CliRunner."""

import json
import logging
import subprocess
import sys
from types import SimpleNamespace

import pytest
from click.testing import CliRunner

from runtime import __version__
from tests.conftest import ROOT
from toolkit.cli import main
from toolkit.evaluate.cli import main as eval_main


pytestmark = pytest.mark.usefixtures("restore_log_levels")   # the commands set the root logger's level


@pytest.mark.parametrize("command,prog", [(main, "lipsync-pack"), (eval_main, "lipsync-eval")])
def test_version(command, prog):
    result = CliRunner().invoke(command, ["--version"])
    assert result.exit_code == 0 and result.output == f"{prog} {__version__}\n"


@pytest.mark.parametrize("command,args,names", [
    (main, ["build", "--help"], ["LIPSYNC_PACK_BUILD_FPS", "LIPSYNC_PACK_BUILD_QUIET", "LIPSYNC_PACK_BUILD_LOG_LEVEL"]),
    (main, ["inspect", "--help"], ["LIPSYNC_PACK_INSPECT_QUIET", "LIPSYNC_PACK_INSPECT_LOG_LEVEL"]),
    (main, ["verify", "--help"], ["LIPSYNC_PACK_VERIFY_QUIET", "LIPSYNC_PACK_VERIFY_LOG_LEVEL"]),
    (eval_main, ["--help"], ["LIPSYNC_EVAL_GENERATOR", "LIPSYNC_EVAL_QUIET", "LIPSYNC_EVAL_LOG_LEVEL"]),
])
def test_help_shows_environment_variables(command, args, names):
    result = CliRunner().invoke(command, args, terminal_width=200)
    assert result.exit_code == 0
    assert "-q, --quiet" in result.output and "--log-level [debug|info|warning|error]" in result.output
    for name in names:
        assert f"env var: {name}" in result.output, name


def test_train_help_shows_environment_variables():
    result = CliRunner().invoke(main, ["train", "--help"], terminal_width=200)
    assert result.exit_code == 0 and "env var: LIPSYNC_" in result.output


def test_python_dash_m_toolkit_is_lipsync_pack():
    out = subprocess.run([sys.executable, "-m", "toolkit", "--version"], capture_output=True, text=True, cwd=ROOT,
                         timeout=60)
    assert out.returncode == 0 and out.stdout == f"lipsync-pack {__version__}\n"


def test_build_quiet_prints_nothing(monkeypatch, tmp_path):
    levels = []

    def fake_build(video, out, cfg, audio=None, force=False, progress=True, log=print):
        levels.append((logging.getLogger().level, progress))
        log("a note")
        return SimpleNamespace(summary=lambda: {})

    monkeypatch.setattr("toolkit.build.build_package", fake_build)
    result = CliRunner().invoke(main, ["build", "v.mp4", "-o", str(tmp_path / "p"), "-q"])
    assert result.exit_code == 0 and result.output == ""
    assert levels == [(logging.WARNING, False)]


def test_eval_quiet_prints_only_the_report_folder(monkeypatch, tmp_path):
    seen = []

    def fake_evaluate(package, audio, config):
        seen.append((config.progress, logging.getLogger().level))
        return SimpleNamespace(path=tmp_path / "r")

    monkeypatch.setattr("toolkit.evaluate.run.evaluate", fake_evaluate)
    result = CliRunner().invoke(eval_main, ["pkg", "--audio", "a.wav", "-q"])
    assert result.exit_code == 0 and result.output == f"{tmp_path / 'r'}\n"
    assert seen == [(False, logging.WARNING)]
    CliRunner(env={"LIPSYNC_EVAL_LOG_LEVEL": "error"}).invoke(eval_main, ["pkg", "--quiet"])
    assert seen[-1] == (False, logging.ERROR)


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
    quiet = CliRunner().invoke(main, ["verify", path, "-q"])
    assert quiet.exit_code == 0 and quiet.output == ""


def test_verify_names_the_bad_file(package_copy):
    (package_copy / "boxes.npy").unlink()
    result = CliRunner().invoke(main, ["verify", str(package_copy)])
    assert result.exit_code == 5 and "boxes.npy" in result.output


def test_inspect_missing_package(tmp_path):
    result = CliRunner().invoke(main, ["inspect", str(tmp_path / "nope")])
    assert result.exit_code == 5 and "no such package" in result.output


def test_a_missing_extra_is_one_line(monkeypatch):
    """Without the extras (a plain `pip install .`), build, train and eval say what to install."""
    for module in ("toolkit.build", "toolkit.train.loop", "toolkit.train.mouth", "toolkit.evaluate.run"):
        monkeypatch.delitem(sys.modules, module, raising=False)
    monkeypatch.setitem(sys.modules, "tqdm", None)          # as if not installed
    result = CliRunner().invoke(main, ["build", "v.mp4"])
    assert result.exit_code == 1
    assert result.output == "error: tqdm is not installed; this command needs pip install 'lipsync-toolkit[build]'\n"
    listing = CliRunner().invoke(main, ["--help"], terminal_width=200)
    assert listing.exit_code == 0 and "(not installed: pip install 'lipsync-toolkit[train]')" in listing.output
    train = CliRunner().invoke(main, ["train", "models/anchor", "--size", "tiny"])
    assert train.exit_code == 1 and "lipsync-toolkit[train]" in train.output
    evaluation = CliRunner().invoke(eval_main, ["models/anchor", "--holdout"])
    assert evaluation.exit_code == 1 and "lipsync-toolkit[eval]" in evaluation.output
