"""The neural tier in the runtime: loading, the fallback chain, batching, serving."""

from __future__ import annotations

import dataclasses
import json
import shutil

import numpy as np
import pytest

from runtime import features as F
from runtime.errors import PackageError
from runtime.generators import Request, build_chain
from runtime.generators.neural import NeuralGenerator
from runtime.package import Package
from runtime.stream import frame_window

from .conftest import running_server


@pytest.fixture(scope="module")
def trained(built, tmp_path_factory):
    """A copy of the face_1 package with a tiny model trained for a few steps (retrieval reference, the default)."""
    from toolkit.train.loop import TrainConfig, train

    root = tmp_path_factory.mktemp("neural") / "face1"
    shutil.copytree(built("face_1").path, root)
    train(root, TrainConfig(size="tiny", max_steps=6, batch=4, checkpoint_every=100), progress=False)
    return root


def windows(speech, n):
    mel = F.log_mel(speech[16_000 * 5:16_000 * 5 + 640 * (n + 8)])
    return [frame_window(mel, k, 25) for k in range(n)]


def test_neural_leads_the_chain_when_weights_exist(trained, built, speech):
    pkg = Package.open(trained)
    chain = build_chain(pkg)
    assert chain.names == ["neural", "retrieval", "static"]
    state = chain.new_state()
    crops, tier = chain.render([3, 40], windows(speech, 2), [state, state])
    assert tier == "neural"
    for base, img in zip((3, 40), crops):
        assert img.shape == pkg.crops.shape[1:] and img.dtype == np.uint8
        eyes_bottom = int(np.asarray(pkg.landmarks[base])[36:48, 1].max()) + 4
        np.testing.assert_array_equal(img[:eyes_bottom], np.asarray(pkg.crops[base])[:eyes_bottom])
    assert build_chain(Package.open(built("German_20s").path)).names == ["retrieval", "static"]
    cfg = pkg.manifest["extra"]["neural"]["config"]
    assert cfg["shape_dim"] == 8 and len(cfg["shape_scale"]) == 8     # conditioned on the mouth-shape model
    assert cfg["reference"] == "retrieval"                            # the default


def test_chain_falls_back_to_retrieval_without_weights(trained, tmp_path, speech):
    root = tmp_path / "pkg"
    shutil.copytree(trained, root)
    (root / "neural.safetensors").unlink()
    chain = build_chain(Package.open(root))
    state = chain.new_state()
    _, tier = chain.render([5], windows(speech, 1), [state])
    assert tier == "retrieval"
    assert chain.names == ["retrieval", "static"] or chain.failures["neural"] >= 1


@pytest.mark.parametrize("damage", ["corrupt", "truncated", "same size, bad header"])
def test_damaged_weights_refuse_the_package_at_open(trained, tmp_path, damage):
    root = tmp_path / "pkg"
    shutil.copytree(trained, root)
    weights = root / "neural.safetensors"
    data = weights.read_bytes()
    if damage == "corrupt":
        weights.write_bytes(b"\x00" * 64)
    elif damage == "truncated":
        weights.write_bytes(data[:1000])
    else:
        weights.write_bytes(b"\xff" * 8 + data[8:])
    with pytest.raises(PackageError, match="neural.safetensors") as err:
        Package.open(root)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("weights", ["trained", "trained_base"])
def test_batch_equals_one_by_one(weights, speech, request):
    gen = NeuralGenerator(Package.open(request.getfixturevalue(weights)))
    mels = windows(speech, 4)
    bases = [0, 17, 60, 99]
    together = gen.render([Request(b, m) for b, m in zip(bases, mels)])
    for b, m, img in zip(bases, mels, together):
        alone = gen.render([Request(b, m)])[0]
        assert np.abs(alone.astype(int) - img.astype(int)).max() <= 1      # float rounding only


def test_server_serves_the_neural_tier(trained, speech):
    from runtime.client import Client

    import asyncio

    async def go(url):
        async with Client(url) as c:
            return [f async for f, _ in c.stream(speech[16_000 * 5:16_000 * 6], 16_000)]

    with running_server(trained) as srv:
        frames = asyncio.run(go(srv.ws))
        tiers = srv.json("/stats")["packages"]["face1"]["tiers"]
    assert len(frames) == 25 and tiers.get("neural", 0) > 0


def test_silence_gives_a_closed_mouth(trained):
    from tests.toolkit.test_evaluate import closed_after_speech

    share, status = closed_after_speech(trained, "neural")
    assert share <= 0.05 and (status == 1).all()


@pytest.fixture(scope="module")
def trained_base(trained, tmp_path_factory):
    """The face_1 copy again, its tiny model trained with the base frame as the reference."""
    from toolkit.train.loop import TrainConfig, train

    root = tmp_path_factory.mktemp("neural_base") / "face1"
    shutil.copytree(trained, root)
    train(root, TrainConfig(size="tiny", max_steps=6, batch=4, checkpoint_every=100, reference="base"),
          progress=False)
    return root


def test_retrieval_reference_is_the_retrieval_tiers_output(trained, speech, monkeypatch):
    from runtime.generators.retrieval import RetrievalGenerator, RetrievalState

    pkg = Package.open(trained)
    gen, retrieval = NeuralGenerator(pkg), RetrievalGenerator(pkg)
    assert gen.cfg.reference == "retrieval"
    shown = []
    original = gen.references
    monkeypatch.setattr(gen, "references", lambda reqs, crops: shown.append(original(reqs, crops)) or shown[-1])
    ours, theirs = gen.new_state(), retrieval.new_state()
    assert isinstance(ours, RetrievalState)
    for base, mel in zip(range(10, 16), windows(speech, 6)):
        out = gen.render([Request(base, mel, ours)])[0]
        expected = retrieval.render([Request(base, mel, theirs)])[0]
        np.testing.assert_array_equal(shown[-1][0], expected)          # the network saw retrieval's frame
        assert ours.prev == theirs.prev >= 0 and out.shape == expected.shape
    gen.reset(ours)
    assert ours.prev == -1


def test_base_reference_rests_the_mouth_in_silence(trained_base):
    from tests.toolkit.test_evaluate import closed_after_speech

    share, status = closed_after_speech(trained_base, "neural")
    assert share <= 0.05 and (status == 1).all()


def test_an_untrained_retrieval_reference_model_serves_retrievals_frame(built, tmp_path, speech):
    """The residual model starts at zero change: before training, neural shows exactly what retrieval shows,
    easing into and out of pauses included (one move towards the resting mouth, not two)."""
    import torch

    from runtime.generators.retrieval import RetrievalGenerator
    from runtime.neural.model import SIZES, LipSyncUNet, save_weights
    from toolkit.writer import add_file

    root = tmp_path / "face1"
    shutil.copytree(built("face_1").path, root)
    cfg = dataclasses.replace(SIZES["tiny"], reference="retrieval")
    torch.manual_seed(0)
    save_weights(LipSyncUNet(cfg), cfg, tmp_path / "w.safetensors")
    add_file(root, "neural.safetensors", (tmp_path / "w.safetensors").read_bytes(), "neural",
             {"config": json.loads(cfg.to_json())})
    pkg = Package.open(root)
    gen, retrieval = NeuralGenerator(pkg), RetrievalGenerator(pkg)
    ours, theirs = gen.new_state(), retrieval.new_state()
    for base, mel, rest in zip(range(30, 36), windows(speech, 6), (0.0, 0.4, 0.8, 1.0, 0.6, 0.2)):
        out = gen.render([Request(base, mel, ours, rest)])[0]
        expected = retrieval.render([Request(base, mel, theirs, rest)])[0]
        assert np.abs(out.astype(int) - expected.astype(int)).max() <= 1       # rounding only
