"""SyncNet LSE-D / LSE-C: architecture compatible with syncnet_v2.model, safe loading, windowing."""

from __future__ import annotations

import math
import pickle

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy.io import wavfile

from runtime.errors import InputError
from runtime.package import Package
from toolkit.evaluate.syncnet import (SyncNet, audio_windows, face_region, load_syncnet, lse, mfcc_features,
                                      offset_distances, scores, video_windows, window_count)

SECONDS = 3
FRAMES = 25 * SECONDS

# syncnet_python's SyncNetModel.S, layer by layer: (state-dict prefix, kind, weight shape).
# The released syncnet_v2.model holds these names and shapes; do not edit to fit the code.
LAYERS = [
    ("netcnnaud.0", "conv", (64, 1, 3, 3)), ("netcnnaud.1", "bn", (64,)),
    ("netcnnaud.4", "conv", (192, 64, 3, 3)), ("netcnnaud.5", "bn", (192,)),
    ("netcnnaud.8", "conv", (384, 192, 3, 3)), ("netcnnaud.9", "bn", (384,)),
    ("netcnnaud.11", "conv", (256, 384, 3, 3)), ("netcnnaud.12", "bn", (256,)),
    ("netcnnaud.14", "conv", (256, 256, 3, 3)), ("netcnnaud.15", "bn", (256,)),
    ("netcnnaud.18", "conv", (512, 256, 5, 4)), ("netcnnaud.19", "bn", (512,)),
    ("netfcaud.0", "conv", (512, 512)), ("netfcaud.1", "bn", (512,)), ("netfcaud.3", "conv", (1024, 512)),
    ("netfclip.0", "conv", (512, 512)), ("netfclip.1", "bn", (512,)), ("netfclip.3", "conv", (1024, 512)),
    ("netcnnlip.0", "conv", (96, 3, 5, 7, 7)), ("netcnnlip.1", "bn", (96,)),
    ("netcnnlip.4", "conv", (256, 96, 1, 5, 5)), ("netcnnlip.5", "bn", (256,)),
    ("netcnnlip.8", "conv", (256, 256, 1, 3, 3)), ("netcnnlip.9", "bn", (256,)),
    ("netcnnlip.11", "conv", (256, 256, 1, 3, 3)), ("netcnnlip.12", "bn", (256,)),
    ("netcnnlip.14", "conv", (256, 256, 1, 3, 3)), ("netcnnlip.15", "bn", (256,)),
    ("netcnnlip.18", "conv", (512, 256, 1, 6, 6)), ("netcnnlip.19", "bn", (512,)),
]
PARAMETERS = 13_631_616


def expected_state() -> list[tuple[str, tuple]]:
    out = []
    for name, kind, shape in LAYERS:
        if kind == "conv":  # conv or linear: weight, bias
            out += [(f"{name}.weight", shape), (f"{name}.bias", shape[:1])]
        else:
            out += [(f"{name}.{k}", shape) for k in ("weight", "bias", "running_mean", "running_var")]
            out.append((f"{name}.num_batches_tracked", ()))
    return out


def random_model(seed: int = 0) -> SyncNet:
    torch.manual_seed(seed)
    return SyncNet().eval()


@pytest.fixture(scope="module")
def clip(built):
    """First 3 s of the German_20s package: memory-mapped RGB crops and int16 audio."""
    pkg = Package.open(built("German_20s").path)
    rate, audio = wavfile.read(pkg.root / "audio.wav")
    assert rate == 16000 and pkg.fps == 25
    return pkg.crops[:FRAMES], audio[:FRAMES * 640]


def test_architecture_matches_syncnet_python():
    model = SyncNet()
    assert [(k, tuple(v.shape)) for k, v in model.state_dict().items()] == expected_state()
    assert sum(p.numel() for p in model.parameters()) == PARAMETERS
    with torch.inference_mode():
        assert model.eval().forward_aud(torch.zeros(2, 1, 13, 20)).shape == (2, 1024)
        assert model.forward_lip(torch.zeros(2, 3, 5, 224, 224)).shape == (2, 1024)


def test_lse_on_real_clip_is_finite_and_deterministic(clip):
    crops, audio = clip
    first = lse(random_model(0), crops, audio)
    assert first["windows"] == FRAMES - 5
    assert math.isfinite(first["lse_d"]) and math.isfinite(first["lse_c"])
    assert first["lse_d"] > 0 and first["lse_c"] >= 0
    assert -15 <= first["offset_frames"] <= 15
    assert len(first["dists"]) == 31 and all(math.isfinite(d) for d in first["dists"])
    assert first["lse_d"] == min(first["dists"])
    again = lse(random_model(0), crops[:40], audio[:40 * 640])
    assert again == lse(random_model(0), crops[:40], audio[:40 * 640])
    # float audio in [-1, 1], as the package stores it, gives the same MFCCs as int16
    assert lse(random_model(0), crops[:40], audio[:40 * 640] / 32767.0) == again


def test_state_dict_round_trip(tmp_path, clip):
    crops, audio = clip[0][:20], clip[1][:20 * 640]
    model = random_model(3)
    with torch.no_grad():  # non-trivial running statistics, so they are checked too
        for m in model.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 2.0)
    want = lse(model, crops, audio)
    state = model.state_dict()

    torch.save(state, tmp_path / "syncnet_v2.model")
    assert lse(load_syncnet(tmp_path / "syncnet_v2.model"), crops, audio) == want

    from safetensors.torch import save_file
    save_file({k: v.contiguous() for k, v in state.items()}, tmp_path / "syncnet_v2.safetensors")
    assert lse(load_syncnet(tmp_path / "syncnet_v2.safetensors"), crops, audio) == want

    # the released file predates BatchNorm's num_batches_tracked counters: still loads
    old = {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}
    torch.save(old, tmp_path / "old.model")
    assert lse(load_syncnet(tmp_path / "old.model"), crops, audio) == want


@pytest.mark.parametrize("content, words", [
    (b"\x00\x13not a torch file at all" * 7, "not a torch state dict or safetensors file"),
    ({"foo.weight": torch.zeros(3)}, "unexpected keys foo.weight"),
    ("missing", "missing keys netcnnaud.0.bias, netcnnaud.0.weight;"),
    ("shape", "wrong shapes netfcaud.3.weight (512, 512) (expected (1024, 512))"),
    ([torch.zeros(3)], "not a dict of tensors"),
    ("module", "pickles the Python object toolkit.evaluate.syncnet.SyncNet"),
])
def test_bad_weights_are_input_errors(tmp_path, content, words):
    path = tmp_path / "syncnet_v2.model"
    state = SyncNet().state_dict()
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif content == "missing":
        torch.save({k: v for k, v in state.items() if not k.startswith("netcnnaud.0.")}, path)
    elif content == "shape":
        torch.save({**state, "netfcaud.3.weight": torch.zeros(512, 512)}, path)
    elif content == "module":  # a pickled model object: refused, its code is never run
        torch.save(SyncNet(), path)
    else:
        torch.save(content, path)
    with pytest.raises(InputError) as err:
        load_syncnet(path)
    message = str(err.value)
    assert words in message and "download_model.sh" in message and "\n" not in message


def test_missing_weights_file(tmp_path):
    with pytest.raises(InputError, match="no such SyncNet weights file.*download_model.sh"):
        load_syncnet(tmp_path / "nowhere" / "syncnet_v2.model")


def test_module_pickle_is_not_executed(tmp_path):
    class Boom:
        def __reduce__(self):
            return (exec, ("raise SystemExit('pickle code ran')",))
    path = tmp_path / "evil.model"
    with open(path, "wb") as f:
        pickle.dump({"netcnnaud.0.weight": Boom()}, f, protocol=2)
    with pytest.raises(InputError):
        load_syncnet(path)


@pytest.mark.parametrize("frames", [6, 11, 75, 126])
def test_audio_windows_arrangement(frames):
    audio = (np.random.default_rng(frames).standard_normal(frames * 640) * 2000).astype(np.int16)
    mfcc = mfcc_features(audio)
    assert mfcc.shape == (13, 4 * frames - 1)            # 10 ms hop, 25 ms window
    n = window_count(frames, len(audio))
    assert n == frames - 5                                # syncnet_python's loop bound
    windows = audio_windows(mfcc, 0, n)
    assert windows.shape == (n, 1, 13, 20)
    assert torch.equal(windows[-1, 0], torch.from_numpy(mfcc[:, 4 * (n - 1):4 * (n - 1) + 20]))
    assert window_count(frames + 10, len(audio)) == n    # the shorter stream decides
    assert window_count(frames, len(audio) + 639) == n


def test_video_windows_are_bgr_and_five_frames():
    faces = np.random.default_rng(1).integers(0, 256, (9, 224, 224, 3), dtype=np.uint8)
    windows = video_windows(faces, 5)
    assert windows.shape == (5, 3, 5, 224, 224) and windows.dtype == torch.float32
    assert torch.equal(windows[2, :, 4], torch.from_numpy(faces[6, :, :, ::-1].copy()).permute(2, 0, 1).float())


def test_face_region_geometry():
    crops = np.zeros((2, 328, 328, 3), np.uint8)
    faces = face_region(crops)
    assert faces.shape == (2, 224, 224, 3) and faces.dtype == np.uint8
    # region spans crop rows 94..381: its bottom sixth lies below the crop, padded grey as syncnet_python pads
    assert (faces[:, :180] == 0).all() and (faces[:, -30:] == 110).all()


def test_offset_distances_match_calc_pdist_and_sign():
    torch.manual_seed(0)
    lip, aud = torch.randn(30, 16), torch.randn(30, 16)
    padded = F.pad(aud, (0, 0, 4, 4))
    naive = torch.stack([F.pairwise_distance(lip[[i]].repeat(9, 1), padded[i:i + 9]) for i in range(30)])
    assert torch.allclose(offset_distances(lip, aud, 4), naive)
    # audio that lags: lip window i matches audio window i + 3 -> syncnet_python reports offset -3
    lagging = torch.cat([torch.randn(3, 16), lip[:-3]])
    result = scores(lip, lagging, vshift=15)
    assert result["offset_frames"] == -3 and result["lse_c"] > 1
    # the last 3 lip windows meet the zero padding, as in syncnet_python: only they add distance
    beyond = F.pairwise_distance(lip[-3:], torch.zeros(3, 16)).sum() / 30
    assert result["lse_d"] == pytest.approx(float(beyond), abs=1e-4)


def test_short_clip_and_bad_inputs(clip):
    crops, audio = clip
    model = random_model()
    with pytest.raises(InputError, match="too short"):
        lse(model, crops[:5], audio)
    with pytest.raises(InputError, match="too short"):
        lse(model, crops, audio[:5 * 640])
    with pytest.raises(InputError, match="25 fps"):
        lse(model, crops, audio, fps=30)
    with pytest.raises(InputError, match="uint8"):
        lse(model, crops.astype(np.float32), audio)
    assert lse(model, crops[:6], audio[:6 * 640])["windows"] == 1
