"""Generators: one contract for every tier, retrieval's rules, and the fallback chain."""

from __future__ import annotations

import numpy as np
import pytest

from runtime import features as F
from runtime.generators import GENERATORS, Chain, Generator, Request, build_chain, parse_chain
from runtime.generators.retrieval import RetrievalGenerator
from runtime.generators.static import StaticGenerator
from runtime.package import Package
from runtime.stream import frame_window


@pytest.fixture(scope="module")
def pkg(built):
    return Package.open(built("German_20s").path)


def ready(cls, pkg):
    g = cls(pkg)
    if hasattr(g, "wait_ready"):
        assert g.wait_ready(10)
    return g


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


def test_static_is_the_base_frame(pkg):
    out = StaticGenerator(pkg).render([Request(base=42, mel=np.zeros((12, 80), np.float32))])
    np.testing.assert_array_equal(out[0], pkg.crops[42])


def test_retrieval_finds_a_frame_from_its_own_audio(pkg):
    g = ready(RetrievalGenerator, pkg)
    mel = np.asarray(pkg.mel)
    frames = list(range(20, 400, 7))
    hits = [int(g.key_frames[np.argmin(g.query(frame_window(mel, k, 25)))]) == k for k in frames]
    assert np.mean(hits) > 0.9


def test_retrieval_never_uses_the_holdout(pkg, speech):
    g = ready(RetrievalGenerator, pkg)
    assert g.key_frames.max() < pkg.train_range.stop
    state = g.new_state()
    mel = np.asarray(pkg.mel)
    picks = []
    for k in pkg.holdout_range:                 # the held-out frames' own audio
        g.render([Request(base=k, mel=frame_window(mel, k, 25), state=state)])
        picks.append(state.prev)
    assert max(picks) < pkg.train_range.stop


def test_retrieval_moves_the_mouth_and_smooths_it(pkg, speech):
    g = ready(RetrievalGenerator, pkg)
    mel = F.log_mel(speech[16_000 * 5:16_000 * 9])
    lm = np.asarray(pkg.landmarks[100])
    x0, y0 = lm[48:68].min(0).astype(int)
    x1, y1 = lm[48:68].max(0).astype(int)
    base = np.asarray(pkg.crops[100], dtype=np.float32)[y0:y1, x0:x1]

    def mouths(state):
        out = []
        for k in range(80):
            img = g.render([Request(base=100, mel=frame_window(mel, k, 25), state=state)])[0]
            out.append(img[y0:y1, x0:x1].astype(np.float32))
        return np.stack(out)

    smooth = mouths(g.new_state())
    assert np.abs(smooth - base).mean(axis=(1, 2, 3)).max() > 5          # the mouth is re-rendered
    assert np.std(smooth.mean(axis=(1, 2, 3))) > 0.5                     # and it moves over time
    state = g.new_state()
    raw = []
    for k in range(80):                         # reset each frame: no smoothing
        g.reset(state)
        raw.append(g.render([Request(base=100, mel=frame_window(mel, k, 25), state=state)])[0][y0:y1, x0:x1])
    flicker = lambda a: np.abs(np.diff(np.asarray(a, np.float32), axis=0)).mean()
    assert flicker(smooth) < flicker(raw)


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
    np.testing.assert_array_equal(out[1], pkg.crops[4])


def test_chain_serves_static_while_retrieval_loads(pkg):
    chain = build_chain(pkg)
    assert chain.names == ["retrieval", "static"]
    retrieval = chain.tiers[0]
    retrieval.keys = None                       # as if its index were still being built
    _, tier = chain.render([0], [np.zeros((12, 80), np.float32)], [chain.new_state()])
    assert tier == "static"


def test_parse_chain():
    assert parse_chain(None) == parse_chain("auto") == ("retrieval", "static")
    assert parse_chain("static") == ("static",)
    assert parse_chain("neural,static") == ("neural", "static")
    with pytest.raises(Exception, match="unknown generator 'magic'"):
        parse_chain("magic,static")
