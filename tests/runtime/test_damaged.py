"""Damaged packages are refused at start-up with one line naming the file, across serve, eval and verify."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from runtime.errors import PackageError
from runtime.package import Package, verify
from runtime.server import LipsyncServer, check_packages
from runtime.store import PackageStore
from tests.conftest import AUDIO, ROOT, link_package


def _flip_header_byte(pkg: Path) -> str:
    path = pkg / "crops.npy"
    data = bytearray(path.read_bytes())
    data[20] ^= 0x5A                                   # inside the npy header's dict
    path.write_bytes(bytes(data))
    return "crops.npy"


def _truncate_mel(pkg: Path) -> str:
    path = pkg / "mel.npy"
    data = path.read_bytes()
    path.write_bytes(data[:len(data) * 2 // 3])
    return "mel.npy"


def _unreadable_weights_the_manifest_lists(pkg: Path) -> str:
    """Garbage weights recorded in the manifest, hash and size included: only opening them shows it."""
    garbage = os.urandom(4096)
    (pkg / "neural.safetensors").write_bytes(garbage)
    manifest = json.loads((pkg / "manifest.json").read_text())
    manifest["files"]["neural.safetensors"] = {"bytes": len(garbage), "sha256": hashlib.sha256(garbage).hexdigest()}
    (pkg / "manifest.json").write_text(json.dumps(manifest))
    return "neural.safetensors"


def _video_linked_outside(pkg: Path) -> str:
    outside = pkg.parent / "elsewhere.mp4"
    (pkg / "video.mp4").rename(outside)
    (pkg / "video.mp4").symlink_to(outside)
    return "video.mp4"


def _nan_landmarks(pkg: Path) -> str:
    """Values damaged in place: same size and header, so only a look at the values shows it."""
    import numpy as np

    lm = np.load(pkg / "landmarks.npy")
    lm[123, 50] = np.nan
    np.save(pkg / "landmarks.npy", lm)
    return "landmarks.npy"


def _mel_out_of_range(pkg: Path) -> str:
    import numpy as np

    mel = np.load(pkg / "mel.npy")
    mel[400:410] = 3.0e38                             # a flipped exponent byte, say
    np.save(pkg / "mel.npy", mel)
    return "mel.npy"


DAMAGES = [_flip_header_byte, _truncate_mel, _unreadable_weights_the_manifest_lists, _video_linked_outside,
           _nan_landmarks, _mel_out_of_range]


@pytest.fixture(params=DAMAGES, ids=lambda f: f.__name__.strip("_"))
def damaged(request, package_copy):
    return package_copy, request.param(package_copy)


def test_open_and_verify_name_the_file(damaged):
    pkg, fname = damaged
    for check in (Package.open, verify):
        with pytest.raises(PackageError) as err:
            check(pkg)
        assert fname in str(err.value) and "\n" not in str(err.value), (check.__name__, str(err.value))


def test_the_server_refuses_it_alone_and_leaves_it_out_of_a_folder(damaged, built, tmp_path):
    pkg, fname = damaged
    with pytest.raises(PackageError, match=fname):
        LipsyncServer(PackageStore(pkg)).check()
    served = tmp_path / "served"
    link_package(built("face_1").path, served / "good")
    (served / "bad").mkdir()
    for f in pkg.iterdir():
        target = served / "bad" / f.name
        if f.is_symlink():                            # the damage, as it is
            target.symlink_to(f.resolve())
        else:
            shutil.copy2(f, target)
    store = PackageStore(served)
    refused: dict = {}
    assert check_packages(store, refused) == ["good"]
    assert store.names() == ["good"] and fname in refused["bad"]


def test_lipsync_eval_says_one_line_and_exits_5(damaged, tmp_path):
    pkg, fname = damaged
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    out = subprocess.run([sys.executable, "-m", "toolkit.evaluate.cli", str(pkg), "--audio", str(AUDIO["demo1_audio"]),
                          "--generator", "static", "-o", str(tmp_path / "r")],
                         capture_output=True, text=True, env=env, cwd=ROOT, timeout=300)
    assert out.returncode == 5, out.stderr[-2000:]
    lines = [l for l in out.stderr.splitlines() if l.strip()]
    assert len(lines) == 1 and fname in lines[0] and "Traceback" not in out.stderr, out.stderr[-2000:]
