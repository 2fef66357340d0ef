"""runtime.package: manifest validation, mmap opening and verification of a real package."""

import json

import numpy as np
import pytest

from runtime.errors import PackageError
from runtime.package import NAME_RE, SCHEMA_PATH, Package, read_manifest, validate_manifest, verify


def test_open_maps_arrays_without_reading(built):
    pkg = Package.open(built("German_20s").path)
    crops = pkg.crops
    assert isinstance(crops, np.memmap) and not crops.flags.writeable
    assert crops.shape == (pkg.frames, 328, 328, 3)
    assert pkg.train_range.stop == pkg.holdout_range.start
    assert pkg.holdout_range.stop == pkg.frames


def test_name_pattern_is_the_schemas():
    schema = json.loads(SCHEMA_PATH.read_text(encoding="utf-8"))
    assert schema["properties"]["name"]["pattern"] == NAME_RE.pattern


def test_verify_passes_on_fresh_package(built):
    checked = verify(built("German_20s").path)
    assert {"crops.npy", "mel.npy", "audio.wav", "video.mp4", "preview.png"} <= set(checked)


@pytest.mark.parametrize("name", ["crops.npy", "landmarks.npy", "boxes.npy", "mouth_boxes.npy", "flags.npy",
                                  "mel.npy", "audio.wav", "video.mp4", "preview.png"])
def test_verify_catches_flipped_byte(package_copy, name):
    path = package_copy / name
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(PackageError, match=name):
        verify(package_copy)


def test_verify_catches_missing_file(package_copy):
    (package_copy / "mel.npy").unlink()
    with pytest.raises(PackageError, match="mel.npy: missing"):
        verify(package_copy)


def test_manifest_schema_rejects_bad_fields(package_copy):
    manifest = read_manifest(package_copy)
    bad_major = dict(manifest, format_version="2.0")
    with pytest.raises(PackageError, match="format_version"):
        validate_manifest(bad_major)
    extra = dict(manifest, surprise=1)
    with pytest.raises(PackageError, match="surprise"):
        validate_manifest(extra)
    no_video = {k: v for k, v in manifest.items() if k != "video"}
    with pytest.raises(PackageError, match="video"):
        validate_manifest(no_video)


def test_open_refuses_corrupt_manifest(package_copy):
    (package_copy / "manifest.json").write_text("{not json")
    with pytest.raises(PackageError, match="not valid JSON"):
        Package.open(package_copy)


def test_array_header_must_match_manifest(package_copy):
    manifest = json.loads((package_copy / "manifest.json").read_text())
    np.save(package_copy / "flags.npy", np.zeros(3, np.uint8))
    with pytest.raises(PackageError, match="flags.npy"):
        Package(root=package_copy, manifest=manifest).flags


def test_pickled_arrays_are_refused(package_copy):
    np.save(package_copy / "flags.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(PackageError, match="flags.npy"):
        Package.open(package_copy).flags


def test_package_without_split_trains_on_everything_and_says_so(package_copy):
    import json

    from runtime.errors import PackageError
    from runtime.package import Package

    mpath = package_copy / "manifest.json"
    manifest = json.loads(mpath.read_text())
    del manifest["split"]
    mpath.write_text(json.dumps(manifest))
    pkg = Package.open(package_copy)
    assert pkg.train_range == range(pkg.frames)
    import pytest
    with pytest.raises(PackageError, match="no held-out split.*rebuild"):
        pkg.holdout_range
