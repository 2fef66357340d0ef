"""Training the neural generator: loss falls, weights round-trip, holdout untouched, resume, publishing."""

import json
import shutil
from dataclasses import replace

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import save_file

from runtime.errors import InputError, PackageError
from runtime.features import mel_index
from runtime.neural.model import (SIZES, LipSyncUNet, fuse_for_inference, load_weights, prepare_inputs,
                                  save_weights, to_crops)
from runtime.package import FLAG_LOST, Package, sha256_file, verify
from runtime.stream import CONTEXT_AFTER
from toolkit.train.dataset import APART, NEAREST, PackageDataset, nearest_shapes, step_batches
from toolkit.train.loop import CHECKPOINT_DIR, WEIGHTS, TrainConfig, main, train

TINY = TrainConfig(size="tiny", batch=4, lr=2e-3, seed=3, checkpoint_every=1000, minutes=5, reference="base")


@pytest.fixture
def short(built, tmp_path):
    """A private copy of the 153-frame face_1 package (130 training frames) that training may write to."""
    dest = tmp_path / "face_1"
    shutil.copytree(built("face_1").path, dest)
    return dest


def test_tiny_model_loss_falls(short):
    result = train(short, TrainConfig(**{**TINY.__dict__, "max_steps": 30}), progress=False)
    assert result.steps == len(result.losses) == 30
    first, last = np.mean(result.losses[:5]), np.mean(result.losses[-5:])
    assert last < 0.8 * first, (first, last)


def test_save_load_is_bit_identical(tmp_path):
    cfg = SIZES["tiny"]
    torch.manual_seed(0)
    model = LipSyncUNet(cfg)
    for name, buf in model.named_buffers():            # non-default BatchNorm statistics
        if buf.is_floating_point():
            buf.copy_(torch.rand_like(buf) + 0.5)
    path = tmp_path / "w.safetensors"
    save_weights(model, cfg, path, metadata={"steps": 7})
    loaded, cfg2 = load_weights(path)
    assert cfg2 == cfg
    a, b = model.state_dict(), loaded.state_dict()
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) and a[k].dtype == b[k].dtype for k in a)

    rng = np.random.default_rng(0)
    crops = rng.integers(0, 256, (2, 328, 328, 3), dtype=np.uint8)
    mel = rng.uniform(-4, 4, (2, 12, 80)).astype(np.float32)
    images, mel_t, _ = prepare_inputs(crops[::-1], crops, mel, cfg)
    assert images.shape == (2, 6, 64, 64) and mel_t.shape == (2, 12, 80)
    with torch.inference_mode():
        out1, out2 = model.eval()(images, mel_t), loaded(images, mel_t)
    assert out1.shape == (2, 3, 64, 64) and torch.equal(out1, out2)
    with torch.inference_mode():
        fused = fuse_for_inference(loaded)(images, mel_t)
    assert torch.allclose(fused, out1, atol=1e-5)
    pasted = to_crops(out1, crops, cfg)
    assert pasted.shape == crops.shape and pasted.dtype == np.uint8
    assert np.array_equal(pasted[:, :150], crops[:, :150])          # above the mask box: untouched


class Spy:
    """Wraps a package array and records which rows are read."""

    def __init__(self, arr):
        self.arr, self.rows = arr, set()

    def __getitem__(self, key):
        first = key[0] if isinstance(key, tuple) else key
        if isinstance(first, np.ndarray):                  # fancy indexing: the listed rows
            self.rows.update(np.arange(len(self.arr))[first].tolist())
        else:
            rows = range(len(self.arr))[first]
            self.rows.update([rows] if isinstance(rows, int) else rows)
        return self.arr[key]

    def __len__(self):
        return len(self.arr)

    shape = property(lambda self: self.arr.shape)
    dtype = property(lambda self: self.arr.dtype)


@pytest.mark.parametrize("reference", ["base", "retrieval"])
def test_dataset_never_reads_holdout_or_lost_frames(short, reference):
    flags = np.load(short / "flags.npy")
    flags[[5, 6, 7, 60]] = FLAG_LOST                      # lost frames inside the training range
    np.save(short / "flags.npy", flags)
    pkg = Package.open(short)
    spies = {name: Spy(pkg.array(name)) for name in ("crops", "landmarks", "mel")}
    pkg._arrays.update(spies)
    first_held = pkg.holdout_range.start
    allowed = {k for k in pkg.train_range if flags[k] != FLAG_LOST
               and mel_index(k, pkg.fps) + CONTEXT_AFTER <= mel_index(first_held, pkg.fps)}
    assert first_held == 130 and len(allowed) == 130 - 4 - 2   # 4 lost, 2 whose audio reaches the holdout

    data = PackageDataset(pkg, replace(SIZES["tiny"], reference=reference), augment=True, seed=1)
    assert set(data.frames.tolist()) == allowed
    seen = [data[i] for i in range(len(data))]
    batches = step_batches(len(data), 16, seed=2)
    seen += [data[index] for _ in range(40) for index in next(batches)]
    targets = {it["frame"] for it in seen}
    refs = {it["reference_frame"] for it in seen}
    assert targets == allowed and refs <= allowed
    assert all(it["frame"] != it["reference_frame"] for it in seen)
    if reference == "retrieval":                          # a like-shaped frame, never a near copy of the target
        assert all(abs(it["frame"] - it["reference_frame"]) >= APART for it in seen)
        # pasted onto the target's own face, lined up with it: above the mouth, reference = target
        assert all(np.array_equal(it["reference"][:120], it["target"][:120]) for it in seen)
        assert not all(np.array_equal(it["reference"], it["target"]) for it in seen)
    assert spies["crops"].rows <= allowed and spies["landmarks"].rows <= allowed
    assert max(spies["mel"].rows) < mel_index(first_held, pkg.fps)
    item = seen[0]
    assert item["reference"].shape == item["target"].shape == (320, 320, 3)
    assert item["mel"].shape == (12, 80) and item["mouth"].shape == (64, 64) and item["mouth"].any()


def test_resume_continues_and_publishes(short, tmp_path):
    straight = tmp_path / "straight"
    shutil.copytree(short, straight)
    whole = train(straight, TrainConfig(**{**TINY.__dict__, "max_steps": 8}), progress=False)

    half = train(short, TrainConfig(**{**TINY.__dict__, "max_steps": 4}), progress=False)
    assert half.steps == 4 and (short / CHECKPOINT_DIR / "checkpoint.json").is_file()
    resumed = train(short, TrainConfig(**{**TINY.__dict__, "max_steps": 8}), resume=True, progress=False)
    assert resumed.steps == 8 and resumed.losses[:4] == half.losses
    assert resumed.losses == whole.losses                 # batches depend on (seed, step) only
    a, _ = load_weights(resumed.weights)
    b, _ = load_weights(whole.weights)
    assert all(torch.equal(a.state_dict()[k], v) for k, v in b.state_dict().items())

    manifest = json.loads((short / "manifest.json").read_text())
    entry = manifest["files"][WEIGHTS]
    assert entry == {"sha256": sha256_file(short / WEIGHTS), "bytes": (short / WEIGHTS).stat().st_size,
                     "media_type": "application/octet-stream"}
    info = manifest["extra"]["neural"]
    assert info["sha256"] == entry["sha256"] == resumed.sha256 and info["steps"] == 8
    assert info["config"]["size"] == "tiny" and info["train"]["max_steps"] == 8
    assert WEIGHTS in verify(short)
    assert not [p.name for p in short.iterdir() if p.name.startswith(".") and p.name != CHECKPOINT_DIR]


def test_the_landmark_readers_sees_mouths_it_was_not_fitted_on(built):
    """The landmark loss's reader, fitted on a package's first 80 % of training frames, reads the opening of
    the last 20 % (real frames it never saw) and beats a reader that always answers the mean."""
    from runtime import mouth
    from toolkit.train.reader import fit_reader

    pkg = Package.open(built("German_20s").path)
    reader = fit_reader(PackageDataset(pkg, SIZES["tiny"], augment=True), mouth.for_package(pkg), SIZES["tiny"],
                        steps=150)
    info = reader.info
    assert info["validation_frames"] > 50 and info["val_opening_r"] > 0.7, info
    assert info["val_landmark_error"] < 0.5 * info["val_landmark_error_of_mean"], info
    assert not any(p.requires_grad for p in reader.net.parameters())          # frozen


def test_landmark_loss_trains_resumes_and_is_recorded(short, tmp_path):
    """With a landmark loss, a resumed run equals an uninterrupted one (the reader travels in the checkpoint),
    its figures reach extra.neural, and resuming without the loss says how to fix it."""
    cfg = {**TINY.__dict__, "landmark_weight": 0.01}
    straight = tmp_path / "straight"
    shutil.copytree(short, straight)
    whole = train(straight, TrainConfig(**{**cfg, "max_steps": 6}), progress=False)
    train(short, TrainConfig(**{**cfg, "max_steps": 3}), progress=False)
    resumed = train(short, TrainConfig(**{**cfg, "max_steps": 6}), resume=True, progress=False)
    assert resumed.losses == whole.losses
    plain = train(tmp_path / "straight", TrainConfig(**{**TINY.__dict__, "max_steps": 6}), progress=False)
    assert plain.losses[0] < whole.losses[0]              # the same first batch: the landmark term adds to it
    info = json.loads((short / "manifest.json").read_text())["extra"]["neural"]
    assert info["train"]["landmark_weight"] == 0.01 and info["landmark_reader"]["frames"] > 0
    with pytest.raises(InputError, match="--landmark-loss"):
        train(short, TrainConfig(**{**TINY.__dict__, "max_steps": 7}), resume=True, progress=False)


def test_retrieval_references_show_the_targets_mouth_shape(built):
    """The training reference's mouth is shaped like the target's (what retrieval would pick), from afar."""
    from runtime.mouth import for_package

    pkg = Package.open(built("German_20s").path)
    frames = pkg.usable_train_frames
    near = nearest_shapes(pkg, frames)
    assert near.shape == (len(frames), NEAREST) and np.isin(near, frames).all()
    assert (np.abs(near - frames[:, None]) >= APART).all()
    model = for_package(pkg)
    opening = model.opening(model.coefficients(np.asarray(pkg.landmarks)))
    assert np.corrcoef(opening[frames], opening[near[:, 0]])[0, 1] > 0.9
    shuffled = np.random.default_rng(0).permutation(frames)
    gap = lambda src: np.abs(opening[frames] - opening[src]).mean()
    assert gap(near[:, -1]) < 0.3 * gap(shuffled)


def test_retrieval_reference_trains_and_resumes_only_as_itself(short):
    result = train(short, TrainConfig(**{**TINY.__dict__, "max_steps": 4, "reference": "retrieval",
                                         "checkpoint_every": 2}), progress=False)
    assert result.steps == 4 and np.isfinite(result.losses).all()
    _, cfg = load_weights(result.weights)
    manifest = json.loads((short / "manifest.json").read_text())
    assert cfg.reference == manifest["extra"]["neural"]["config"]["reference"] == "retrieval"
    with pytest.raises(InputError, match="pass --reference retrieval"):
        train(short, TrainConfig(**{**TINY.__dict__, "max_steps": 6}), resume=True, progress=False)
    with pytest.raises(InputError, match="reference 'mirror'"):
        train(short, TrainConfig(**{**TINY.__dict__, "reference": "mirror"}), progress=False)


def test_resume_without_checkpoint_fails(short):
    with pytest.raises(InputError, match="no checkpoint"):
        train(short, TrainConfig(**{**TINY.__dict__, "max_steps": 1}), resume=True, progress=False)


def _valid_file(path):
    save_weights(LipSyncUNet(SIZES["tiny"]), SIZES["tiny"], path)
    return path.read_bytes()


@pytest.mark.parametrize("damage", ["garbage", "truncated", "no_metadata", "wrong_config", "missing"])
def test_corrupt_weights_give_one_line_package_error(tmp_path, damage):
    path = tmp_path / "neural.safetensors"
    data = _valid_file(path)
    if damage == "garbage":
        path.write_bytes(b"\x00\x01not safetensors at all" * 10)
    elif damage == "truncated":
        path.write_bytes(data[: len(data) // 2])
    elif damage == "no_metadata":
        save_file({"x": torch.zeros(3)}, str(path))
    elif damage == "missing":
        path.unlink()
    else:                                                  # tiny tensors under the small config
        meta = {"format": "lipsync-neural", "format_version": "1", "config": SIZES["small"].to_json()}
        save_file({k: v.contiguous() for k, v in LipSyncUNet(SIZES["tiny"]).state_dict().items()}, str(path), meta)
    with pytest.raises(PackageError) as info:
        load_weights(path)
    message = str(info.value)
    assert "\n" not in message and str(path) in message


def test_cli_trains_and_rejects_unknown_size(short):
    runner = CliRunner()
    ok = runner.invoke(main, [str(short), "--size", "tiny", "--max-steps", "2", "--batch", "2", "-q"])
    assert ok.exit_code == 0, ok.output
    assert "2 steps" in ok.output and (short / WEIGHTS).is_file()
    bad = runner.invoke(main, [str(short), "--size", "huge"])
    assert bad.exit_code == 2 and "huge" in bad.output
    missing = runner.invoke(main, [str(short / "nope"), "--size", "tiny"])
    assert missing.exit_code == PackageError.exit_code and missing.output.count("\n") == 1
