"""Early stopping: the validation block is never trained on, step 0 is retrieval, the best check is published."""

import json
import shutil
from dataclasses import replace

import numpy as np
import pytest
import torch

from runtime.errors import InputError
from runtime.generators.base import Request
from runtime.generators.retrieval import RetrievalGenerator
from runtime.mouth import for_package
from runtime.neural.model import SIZES, LipSyncUNet, load_weights
from runtime.package import Package
from runtime.render import base_frame
from runtime.stream import frame_window
from toolkit.faces import create as create_backend
from toolkit.train.dataset import PackageDataset, nearest_shapes, training_frames
from toolkit.train.loop import CHECKPOINT_DIR, TrainConfig, train
from toolkit.train.validate import CONFIDENCE, MIN_SECONDS, Score, Selection, Validator, split

# German_20s built with a 15 % tail: 423 frames to train on, so a 35 % block of 148 (5.9 s; 20 % would be
# 85 frames, 3.4 s: too short)
SHARE = 0.35
QUICK = TrainConfig(size="tiny", batch=4, lr=2e-3, seed=3, checkpoint_every=2, minutes=5, validation=SHARE)


@pytest.fixture
def german(package_copy):
    return package_copy


def test_the_block_is_out_of_everything_the_run_fits(built):
    pkg = Package.open(built("German_20s").path)
    usable = training_frames(pkg)
    view, block = split(pkg, SHARE, usable)
    b0 = int(block[0])
    assert len(block) == len(usable[usable >= b0]) >= MIN_SECONDS * pkg.fps
    assert abs(len(block) - SHARE * len(usable)) <= 1 and block[-1] < pkg.holdout_range.start
    assert view.train_range == range(pkg.train_range.start, b0) and view.holdout_range.start == b0
    # the network's targets, their retrieval references and the mouth model: all before the block
    data = PackageDataset(view, SIZES["tiny"])
    assert data.frames.max() < b0 and nearest_shapes(view, data.frames).max() < b0
    assert for_package(view).info["frames"] < b0 <= for_package(pkg).info["frames"]
    assert RetrievalGenerator(view).key_frames.max() < b0
    assert split(pkg, 0.0, usable) is None
    assert split(pkg, 0.2, usable) is None           # 85 frames, 3.4 s: too short to tell weights apart


def test_an_untrained_network_is_scored_as_retrieval(built):
    """With a retrieval reference the untrained network renders the retrieval tier's frames exactly, so the
    first check is retrieval's score on the block."""
    pkg = Package.open(built("German_20s").path)
    view, block = split(pkg, SHARE, training_frames(pkg))
    cfg = replace(SIZES["tiny"], reference="retrieval")
    torch.manual_seed(0)
    validator = Validator(view, block, create_backend("dlib"), torch.device("cpu"))
    crops = validator.render(LipSyncUNet(cfg), cfg)
    tier = RetrievalGenerator(view)
    state = tier.new_state()
    # the block's audio onto the base frames a session shows: the view's training frames, never the block's own
    # (their unmasked chin and cheeks would show the network the real mouth)
    assert np.array_equal(validator.bases, [base_frame(view, k) for k in range(len(block))])
    assert validator.bases.max() < block[0] and len(np.unique(validator.bases)) == len(block)
    expected = tier.render([Request(int(b), frame_window(view.mel, int(t), view.fps), state)
                            for t, b in zip(block, validator.bases)])
    assert len(crops) == len(block) and all(np.array_equal(a, b) for a, b in zip(crops, expected))
    score = validator.score(LipSyncUNet(cfg), cfg, 0)
    assert 0.2 < score.opening_r <= 1 and score.lmd_px > 0       # retrieval follows the speech somewhat
    assert 0.5 < score.articulation < 2                            # and opens about as widely as the speaker
    # a check must beat the best on nearly every paired resample: the real mouths beat retrieval's,
    # retrieval's do not beat the real ones, and a copy does not beat itself
    real = validator.real_opening
    assert validator.wins(real, score.opening) == 1.0 and validator.wins(score.opening, real) == 0.0
    assert validator.wins(score.opening, score.opening) == 0.0 < CONFIDENCE
    # nor may its mouths open clearly less widely: a squeezed copy of the real openings follows them exactly
    # but closes in every resample, and a copy does not close against itself
    squeezed = real.mean() + 0.5 * (real - real.mean())
    assert validator.wins(squeezed, score.opening) == 1.0 and validator.closes(squeezed, score.opening) == 1.0
    assert validator.closes(score.opening, score.opening) == 0.0 and validator.closes(real, squeezed) == 0.0
    # so the selection keeps step 0 over the squeezed mouths and takes the real ones
    selection, model = Selection(SHARE, len(block), 6, []), LipSyncUNet(cfg)
    assert selection.add(score, model, validator).kept
    closing = selection.add(Score(200, 1.0, 0.0, 0.5, 0.0, squeezed), model, validator)
    assert not closing.kept and "open less widely in 100%" in closing.reason() and selection.best["step"] == 0
    assert selection.add(Score(400, 1.0, 0.0, 1.0, 0.0, real), model, validator).reason() == "kept"
    assert selection.best["step"] == 400 and selection.since_best == 0


def test_training_publishes_the_best_check_and_stops_when_it_stops_improving(german):
    result = train(german, TrainConfig(**{**QUICK.__dict__, "max_steps": 40, "patience": 2}), progress=False)
    v = result.validation
    steps = [h["step"] for h in v["history"]]
    assert steps == list(range(0, result.steps + 1, 2)) and steps[0] == 0
    kept = v["history"].index(v["best"])
    assert v["since_best"] == len(steps) - 1 - kept
    assert (v["since_best"] >= v["patience"]) == (result.steps < 40)
    # the published weights are the best check's: scored again, they give its figures exactly
    model, cfg = load_weights(result.weights)
    view, block = split(Package.open(german), SHARE, training_frames(Package.open(german)))
    again = Validator(view, block, create_backend("dlib"), torch.device("cpu")).score(model, cfg, v["best"]["step"])
    assert again.row() == v["best"]
    info = json.loads((german / "manifest.json").read_text())["extra"]["neural"]
    assert info["validation"] == v and info["train"]["validation"] == SHARE and info["steps"] == result.steps


def test_a_resumed_run_checks_and_chooses_as_an_uninterrupted_one(german, tmp_path):
    straight = tmp_path / "straight"
    shutil.copytree(german, straight)
    cfg = {**QUICK.__dict__, "patience": 100}
    whole = train(straight, TrainConfig(**{**cfg, "max_steps": 6}), progress=False)
    train(german, TrainConfig(**{**cfg, "max_steps": 3}), progress=False)
    resumed = train(german, TrainConfig(**{**cfg, "max_steps": 6}), resume=True, progress=False)
    assert resumed.losses == whole.losses
    history = resumed.validation["history"]
    assert [h["step"] for h in history] == [0, 2, 3, 4, 6]          # 3: where the first run ended
    assert whole.validation["history"] == [h for h in history if h["step"] != 3]
    with pytest.raises(InputError, match="pass --validation 0.35"):
        train(german, TrainConfig(**{**cfg, "max_steps": 8, "validation": 0.0}), resume=True, progress=False)
    assert (german / CHECKPOINT_DIR / "checkpoint.json").is_file()


def test_cli_says_which_weights_it_kept(german):
    from click.testing import CliRunner

    from toolkit.train.loop import main

    result = CliRunner().invoke(main, [str(german), "--size", "tiny", "--max-steps", "4", "--checkpoint-every", "2",
                                       "--validation", str(SHARE), "--quiet"])
    assert result.exit_code == 0, result.output
    assert "kept the weights of step" in result.output and "on 148 held-back frames" in result.output
    bad = CliRunner().invoke(main, [str(german), "--size", "tiny", "--validation", "1"])
    assert bad.exit_code == 2 and "--validation" in bad.output


def test_a_clip_too_short_to_hold_back_trains_on_everything_with_a_warning(built, tmp_path, caplog):
    dest = tmp_path / "face_1"
    shutil.copytree(built("face_1").path, dest)             # 130 training frames: a 46-frame block
    result = train(dest, TrainConfig(**{**QUICK.__dict__, "max_steps": 2}), progress=False)
    assert result.validation is None and result.steps == 2
    assert f"too few training frames to hold back {SHARE:g}" in caplog.text
    assert "validation" not in json.loads((dest / "manifest.json").read_text())["extra"]["neural"]
