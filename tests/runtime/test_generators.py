"""Generators: one contract for every tier, retrieval's rules, and the fallback chain."""

from __future__ import annotations

import numpy as np
import pytest

from runtime import features as F
from runtime.generators import GENERATORS, Chain, Generator, Request, parse_chain
from runtime import mouth
from runtime.generators.paste import transplant
from runtime.generators.retrieval import RetrievalGenerator, RetrievalState
from runtime.generators.static import StaticGenerator
from runtime.package import FLAG_LOST, Package
from runtime.stream import frame_window


@pytest.fixture(scope="module")
def pkg(built):
    return Package.open(built("German_20s").path)


def ready(cls, pkg):
    return cls(pkg)


@pytest.mark.parametrize("name", sorted(set(GENERATORS) - {"neural"}))   # neural: tests/runtime/test_neural.py
def test_contract(pkg, speech, name):
    g = ready(GENERATORS[name], pkg)
    mel = F.log_mel(speech[: 16_000 * 4])
    reqs = [Request(base=b, mel=frame_window(mel, k, 25), state=g.new_state()) for k, b in
            [(30, 0), (31, 499), (60, 250)]]
    out = g.render(reqs)
    assert len(out) == 3
    for r, img in zip(reqs, out):
        assert img.shape == pkg.crops.shape[1:] and img.dtype == np.uint8 and img.flags.writeable
        # outside the lower face nothing changes: the eyes are the base frame's
        eyes_bottom = int(np.asarray(pkg.landmarks[r.base])[36:48, 1].max()) + 4
        np.testing.assert_array_equal(img[:eyes_bottom], np.asarray(pkg.crops[r.base])[:eyes_bottom])
    again = g.render([Request(r.base, r.mel, g.new_state()) for r in reqs])
    for a, b in zip(out, again):
        np.testing.assert_array_equal(a, b)                  # deterministic from a fresh state


def test_static_is_the_base_frame_with_the_resting_mouth(pkg):
    rest = mouth.for_package(pkg).rest_frame
    out = StaticGenerator(pkg).render([Request(base=42, mel=np.zeros((12, 80), np.float32))])
    np.testing.assert_array_equal(out[0], transplant(pkg, 42, rest))
    eyes_bottom = int(np.asarray(pkg.landmarks[42])[36:48, 1].max()) + 4
    np.testing.assert_array_equal(out[0][:eyes_bottom], np.asarray(pkg.crops[42])[:eyes_bottom])


def test_retrieval_finds_a_frame_from_its_own_mouth_shape(pkg):
    g = ready(RetrievalGenerator, pkg)
    frames = np.arange(20, 400, 7)
    coef = g.model.coefficients(np.asarray(pkg.landmarks)[frames])
    hits = [g.choose(c, RetrievalState()) == k for c, k in zip(coef, frames)]
    assert np.mean(hits) > 0.9


def test_retrieval_never_uses_the_holdout_or_lost_frames(package_copy):
    flags = np.load(package_copy / "flags.npy")
    flags[100:150] = FLAG_LOST                  # as if the face had been lost for two seconds
    np.save(package_copy / "flags.npy", flags)
    p = Package.open(package_copy)
    g = ready(RetrievalGenerator, p)
    assert g.key_frames.max() < p.train_range.stop
    assert not np.isin(g.key_frames, np.arange(100, 150)).any()
    state = g.new_state()
    mel = np.asarray(p.mel)
    picks = []
    for k in [*range(100, 150), *p.holdout_range]:     # the lost and held-out frames' own audio
        g.render([Request(base=k, mel=frame_window(mel, k, 25), state=state)])
        picks.append(state.prev)
    assert max(picks) < p.train_range.stop
    assert not np.isin(picks, np.arange(100, 150)).any()


def test_retrieval_shows_one_source_frame_and_moves_the_mouth(pkg, speech):
    """No cross-fade: each output is exactly one chosen frame's lower face on the base (no double lips)."""
    g = ready(RetrievalGenerator, pkg)
    mel = F.log_mel(speech[16_000 * 5:16_000 * 9])
    state = g.new_state()
    openings, chosen = [], []
    for k in range(80):
        img = g.render([Request(base=100, mel=frame_window(mel, k, 25), state=state)])[0]
        np.testing.assert_array_equal(img, transplant(pkg, 100, state.prev))
        chosen.append(state.prev)
    openings = g.model.opening(g.keys[g.row_of[chosen]])
    assert len(set(chosen)) > 10 and openings.std() > 0.01             # the mouth moves with the speech
    runs = np.mean(np.diff(chosen) == 1)
    assert runs > 0.2                                                     # continuity: runs of real frames


def test_retrieval_opens_as_wide_as_the_speaker(built):
    """On cnn_71s's 32 s held-out tail, the chosen mouths follow the real ones and open as wide."""
    p = Package.open(built("cnn_71s").path)
    g = ready(RetrievalGenerator, p)
    hold = np.arange(p.holdout_range.start, p.holdout_range.stop)
    state = g.new_state()
    picks = []
    for k in hold:
        g.render([Request(base=int(p.train_range.start), mel=frame_window(np.asarray(p.mel), k, 25),
                          state=state)])
        picks.append(state.prev)
    chosen = g.model.opening(g.keys[g.row_of[picks]])
    real = g.model.opening(g.model.coefficients(np.asarray(p.landmarks)[hold]))
    assert np.corrcoef(chosen, real)[0, 1] > 0.35
    assert 0.7 < chosen.std() / real.std() < 1.3


class Broken(Generator):
    """A tier that always fails, to exercise the fallback."""

    name = "broken"

    def render(self, requests):
        raise RuntimeError("weights corrupt")


def test_chain_falls_back_on_failure(pkg):
    chain = Chain(pkg, [Broken, StaticGenerator])
    state = chain.new_state()
    out, tier = chain.render([3, 4], [np.zeros((12, 80), np.float32)] * 2, [state, state])
    assert tier == "static" and chain.failures["broken"] == 1 and chain.served["static"] == 2
    np.testing.assert_array_equal(out[1], transplant(pkg, 4, mouth.for_package(pkg).rest_frame))


def test_parse_chain():
    assert parse_chain(None) == parse_chain("auto") == ("retrieval", "static")
    assert parse_chain("static") == ("static",)
    assert parse_chain("neural,static") == ("neural", "static")
    with pytest.raises(Exception, match="unknown generator 'magic'"):
        parse_chain("magic,static")
