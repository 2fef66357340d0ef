"""runtime.schema: the stdlib validator agrees with jsonschema on the manifest schema and refuses what it lacks."""

import copy
import json
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest

from runtime.package import SCHEMA_PATH
from runtime.schema import SchemaDefinitionError, check_schema, iter_errors, load_schema

ROOT = Path(__file__).resolve().parents[2]
SCHEMA = load_schema(SCHEMA_PATH)
DROP = object()  # marks a key to delete instead of set


def errors_both(instance, schema):
    """(path, message) of every error, from our validator and from jsonschema's, in one order."""
    ours = sorted((e.path, e.message) for e in iter_errors(instance, schema))
    theirs = sorted((tuple(e.path), e.message)
                    for e in jsonschema.Draft202012Validator(schema).iter_errors(instance))
    return ours, theirs


@pytest.fixture
def manifest(built):
    return json.loads((built("German_20s").path / "manifest.json").read_text())


# Each case: {path: new value or DROP}, applied to a real manifest.
MUTATIONS = {
    "unchanged": {},
    "format_version_int": {("format_version",): 1},
    "format_version_pattern": {("format_version",): "1.x"},
    "name_pattern": {("name",): "-bad name"},
    "created_pattern": {("created",): "yesterday"},
    "format_const": {("format",): "other-package"},
    "missing_split_ok": {("split",): DROP},
    "extra_top_level": {("surprise",): 1},
    "extra_nested": {("tool", "extra"): "x"},
    "missing_nested": {("source", "sha256"): DROP},
    "sha256_ref_pattern": {("source", "sha256"): "ABC"},
    "width_zero": {("source", "width"): 0},
    "width_integral_float_ok": {("source", "width"): 640.0},
    "width_fraction": {("source", "width"): 640.5},
    "width_bool": {("source", "width"): True},
    "width_string": {("source", "width"): "640"},
    "duration_zero": {("source", "duration_s"): 0},
    "duration_negative": {("source", "duration_s"): -1.5},
    "duration_bool": {("source", "duration_s"): True},
    "rotation_enum": {("source", "rotation"): 45},
    "rotation_float_ok": {("source", "rotation"): 90.0},
    "rotation_bool": {("source", "rotation"): False},
    "sample_rate_const_float_ok": {("audio", "sample_rate"): 16000.0},
    "sample_rate_const_string": {("audio", "sample_rate"): "16000"},
    "points_const_bool": {("landmarks", "points"): True},
    "center_int": {("audio", "center"): 1},
    "holdout_too_big": {("split", "holdout_fraction"): 0.6},
    "holdout_negative": {("split", "holdout_fraction"): -0.1},
    "range_too_short": {("split", "train_frames"): [0]},
    "range_too_long": {("split", "train_frames"): [0, 1, 2]},
    "range_negative_item": {("split", "train_frames"): [0, -1]},
    "range_float_item": {("split", "holdout_frames"): [0, 1.5]},
    "range_string": {("split", "holdout_frames"): "0-10"},
    "box_short": {("crop", "mouth_region"): [1, 2, 3]},
    "box_bad_item": {("crop", "mouth_region"): [1, 2, 3, "4"]},
    "crop_size_min": {("crop", "size"): 15},
    "nested_range_in_list": {("quality", "lost_ranges"): [[0, 5], [7]]},
    "notes_not_strings": {("quality", "notes"): ["ok", 1]},
    "jitter_negative": {("quality", "jitter_px", "raw"): -1},
    "seconds_negative": {("build", "seconds", "track"): -1},
    "seconds_string": {("build", "seconds", "track"): "slow"},
    "config_not_object": {("build", "config"): []},
    "file_unmatched_name": {("files", "notes.txt"): {"sha256": "0" * 64, "bytes": 1, "media_type": "text/plain"}},
    "files_two_unmatched": {("files", "a.txt"): {}, ("files", "B.npy"): {}},
    "array_file_missing_keys": {("files", "extra.npy"): {"sha256": "0" * 64, "bytes": 1, "media_type": "x"}},
    "dtype_enum": {("files", "mel.npy", "dtype"): "float64"},
    "shape_negative": {("files", "mel.npy", "shape"): [-1, 80]},
    "blob_bytes_negative": {("files", "audio.wav", "bytes"): -1},
    "blob_media_type_null": {("files", "preview.png", "media_type"): None},
    "missing_required_file": {("files", "video.mp4"): DROP},
    "extra_free_form_ok": {("extra",): {"anything": [1, {"x": None}]}},
    "extra_not_object": {("extra",): []},
    "many_at_once": {("name",): 3, ("video", "frames"): 0, ("video", "fps"): DROP, ("quality", "lost"): None},
}


def mutate(manifest, changes):
    m = copy.deepcopy(manifest)
    for path, value in changes.items():
        parent = m
        for key in path[:-1]:
            parent = parent[key]
        if value is DROP:
            del parent[path[-1]]
        else:
            parent[path[-1]] = value
    return m


@pytest.mark.parametrize("case", MUTATIONS)
def test_matches_jsonschema_on_manifest(manifest, case):
    ours, theirs = errors_both(mutate(manifest, MUTATIONS[case]), SCHEMA)
    assert ours == theirs
    # A case named *_ok, and the untouched manifest, must pass; every other one must fail.
    assert (not ours) == (case == "unchanged" or case.endswith("_ok"))


@pytest.mark.parametrize("instance", [[], "manifest", None, 3])
def test_matches_jsonschema_on_non_objects(instance):
    ours, theirs = errors_both(instance, SCHEMA)
    assert ours == theirs and ours


@pytest.mark.parametrize("schema", [
    {"type": "integer"}, {"type": "number"}, {"type": "boolean"}, {"type": ["string", "null"]},
    {"enum": [0, 1]}, {"const": False}, {"const": [1, {"a": True}]}, {"minimum": 0}, {"exclusiveMinimum": 0},
])
@pytest.mark.parametrize("instance", [3, 3.0, 3.5, 0, 0.0, -1, True, False, "3", None, [1, {"a": True}], [1, {"a": 1}]])
def test_matches_jsonschema_on_json_types(schema, instance):
    ours, theirs = errors_both(instance, schema)
    assert ours == theirs


@pytest.mark.parametrize("schema", [
    {"type": "object", "properties": {"a": {"type": "string", "maxLength": 3}}},   # unknown keyword, nested
    {"$defs": {"x": {"format": "date"}}},       # unknown keyword inside a definition
    {"type": "array", "items": True},            # boolean subschemas are not implemented
    {"type": "decimal"},                         # not a JSON type
    {"$ref": "other.json#/x"},                   # remote reference
    {"$ref": "#/$defs/missing"},                 # dangling reference
    {"pattern": "("},                            # bad regex
])
def test_unsupported_schema_refused_at_load(tmp_path, schema):
    path = tmp_path / "schema.json"
    path.write_text(json.dumps(schema))
    with pytest.raises(SchemaDefinitionError):
        load_schema(path)


def test_unknown_keyword_refused_during_validation():
    # A schema that skipped load_schema still cannot pass an instance past a keyword it does not know.
    with pytest.raises(SchemaDefinitionError, match="minLength"):
        list(iter_errors({"a": ""}, {"properties": {"a": {"minLength": 1}}}))


def test_property_named_like_a_keyword_is_accepted():
    # The manifest has a property called "format"; only schema keys are keywords, not property names.
    check_schema({"properties": {"format": {"const": "x"}, "maxLength": {"type": "integer"}}})


def test_runtime_does_not_import_jsonschema(built):
    manifest = built("German_20s").path / "manifest.json"
    code = ("import json, sys, runtime.package as p;"
            f"p.read_manifest({str(manifest.parent)!r});"
            "print(sorted(m for m in sys.modules if m.split('.')[0] == 'jsonschema'))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"
