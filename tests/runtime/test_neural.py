"""The neural tier in the runtime: loading, the fallback chain, batching, serving."""

from __future__ import annotations

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
    """A copy of the face_1 package with a tiny model trained for a few steps."""
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


def test_batch_equals_one_by_one(trained, speech):
    gen = NeuralGenerator(Package.open(trained))
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
