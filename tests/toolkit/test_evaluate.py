"""lipsync-eval on real packages and real audio: report fields, video, quality measures, errors."""

from __future__ import annotations

import json
import subprocess
import sys
import wave
from pathlib import Path

import numpy as np
import pytest

from runtime import mouth
from runtime.mouth import fit_frames, for_package as mouth_model, normalise, opening_of
from runtime.package import Package
from runtime.render import HOLD_FRAMES
from runtime.protocol import SampleFormat
from runtime.schema import iter_errors, load_schema
from runtime.stream import window_features
from tests.conftest import AUDIO, ROOT, VIDEOS, ffmpeg, link_package
from toolkit.evaluate import quality
from toolkit.evaluate.footage import footage_curve
from toolkit.evaluate.run import EvalConfig, evaluate
from toolkit.evaluate.report import SCHEMA_PATH, footage_line
from toolkit.faces import create as create_backend

EVAL = [sys.executable, "-m", "toolkit.evaluate.cli"]


def run_eval(*args, timeout=600):
    return subprocess.run([*EVAL, *args], capture_output=True, text=True, cwd=ROOT, timeout=timeout,
                          env={**__import__("os").environ, "PYTHONPATH": str(ROOT)})


def streams(path: Path) -> dict:
    out = subprocess.run(["ffprobe", "-v", "error", "-show_entries", "stream=codec_type,duration", "-of", "json",
                          str(path)], capture_output=True, text=True, check=True)
    return {s["codec_type"]: float(s["duration"]) for s in json.loads(out.stdout)["streams"]}


def wav_seconds(path: Path) -> float:
    with wave.open(str(path)) as w:
        return w.getnframes() / w.getframerate()


def check_report(folder: Path) -> dict:
    report = json.loads((folder / "report.json").read_text())
    errors = list(iter_errors(report, load_schema(SCHEMA_PATH)))
    assert not errors, [(e.path, e.message) for e in errors[:3]]
    html = (folder / "report.html").read_text()
    for plot in report["files"]["plots"]:
        assert (folder / plot).is_file() and plot in html
    assert not list(folder.parent.glob(".*partial*")), "a partial report folder was left behind"
    return report


@pytest.fixture(scope="module")
def anchor(built):
    return built("German_20s").path


def test_eval_with_eng_wav(anchor, tmp_path):
    proc = run_eval(str(anchor), "--audio", str(AUDIO["eng"]), "-o", str(tmp_path), "--quiet")
    assert proc.returncode == 0, proc.stderr
    folder = Path(proc.stdout.strip())
    report = check_report(folder)
    seconds = wav_seconds(AUDIO["eng"])
    assert abs(report["frames"] - seconds * 25) <= 1
    assert report["generator"] == "retrieval" and report["mode"] == "in-process"
    lat = report["latency_ms"]
    assert 0 < lat["p50"] <= lat["p95"] <= lat["p99"] <= lat["max"]
    gen = report["generators"]["retrieval"]
    for stage in ("features", "generator", "jpeg", "paste"):
        assert gen["stages_ms"][stage]["p50"] > 0, stage
    assert gen["first_frame_ms"] > 0 and gen["fps"] > 25 and 0 < report["realtime_factor"] < 1
    assert gen["peak_rss_mb"] > 50
    q = report["quality"]
    assert len(q["mouth_opening"]["per_frame"]) == report["frames"]
    assert 0.01 < q["mouth_opening"]["mean"] < 0.2
    assert 0 <= q["open_in_silence"] <= 1
    sync = q["sync_offset"]
    assert sync["determined"] and abs(sync["offset_ms"]) <= 80, sync       # retrieval follows the audio
    assert sync["ci95"][0] <= sync["offset_ms"] <= sync["ci95"][1]
    art = q["articulation"]
    assert "training frames" in art["reference"] and 0.5 < art["std_ratio"]["value"] < 2
    assert q["silence"]["digital"] <= 0.05 and q["silence"]["room_noise"] <= 0.05
    assert "skipped" in q["syncnet"]
    s = streams(folder / "output.mp4")
    assert set(s) == {"video", "audio"}
    assert abs(s["video"] - seconds) < 0.1 and abs(s["audio"] - s["video"]) < 0.1
    assert report["machine"]["cores"] >= 1
    assert report["footage"] is None                       # no held-out frames to score a footage curve on


def test_holdout_side_by_side(anchor, tmp_path):
    result = evaluate(anchor, None, EvalConfig(generators=("static", "retrieval"), holdout=True,
                                               out_dir=str(tmp_path), progress=False))
    report = check_report(result.path)
    pkg = Package.open(anchor)
    assert report["frames"] == len(pkg.holdout_range)
    gens = report["generators"]
    assert set(gens) == {"static", "retrieval", "real"}
    real, static = gens["real"]["quality"], gens["static"]["quality"]
    assert real["opening_correlation"] == 1.0 and real["lmd_px"] == 0.0      # the real frames against themselves
    assert abs(static["opening_correlation"]) < 0.35                         # a still mouth does not follow
    for name in ("static", "retrieval"):
        q = gens[name]["quality"]
        assert q["lmd_px"] > 0 and 0 < q["ssim_face"] < 1 and q["psnr_mouth_db"] > 10
    for name in ("static", "retrieval"):
        q = gens[name]["quality"]
        lo, hi = q["opening_correlation_ci95"]
        assert lo <= q["opening_correlation"] <= hi and q["lmd_px_ci95"][0] <= q["lmd_px"] <= q["lmd_px_ci95"][1]
        assert q["silence"]["digital"] <= 0.05 and q["silence"]["room_noise"] <= 0.05
        assert not q["sync_offset"]["determined"]          # 3 s of frames: too short, and the report says so
        assert "s of frames" in q["sync_offset"]["undetermined_because"]
    assert gens["static"]["quality"]["articulation"]["std_ratio"]["value"] < 0.5     # the still mouth
    metrics = {(c["a"], c["b"], c["metric"]) for c in report["comparisons"]}
    assert metrics == {("static", "retrieval", "opening_correlation"), ("static", "retrieval", "lmd_px")}
    assert (result.path / "output.mp4").is_file() and (result.path / "output-retrieval.mp4").is_file()
    assert max(gens["retrieval"]["tiers"]) == "retrieval"
    # would more footage help: the mouth model refitted on growing stretches, scored on the tail
    footage = report["footage"]
    points = footage["points"]
    assert [p["share"] for p in points] == [0.125, 0.25, 0.5, 1.0] and "plots/footage.png" in report["files"]["plots"]
    assert all(p["ci95"][0] <= p["value"] <= p["ci95"][1] for p in points)
    assert points[-1]["stretches"] == 1 and all(p["stretches"] == 4 for p in points[:-1])
    # all of the footage is the package's own model: the same prediction, the same score
    model, tail = mouth_model(pkg), np.arange(pkg.holdout_range.start, pkg.holdout_range.stop)
    truth = opening_of(normalise(np.asarray(pkg.landmarks)[tail], model.reference), model.reference)
    own = model.opening(model.predict(window_features(np.asarray(pkg.mel), tail, pkg.fps), restore=False))
    assert points[-1]["seconds"] == len(fit_frames(pkg.flags, pkg.train_range.stop)) / pkg.fps
    assert abs(points[-1]["value"] - np.corrcoef(own, truth)[0, 1]) < 1e-3
    assert footage["tail_frames"] == len(tail) and "Would more footage help?" in (result.path / "report.html").read_text()
    line = footage_line(footage)                           # the CLI's footage line
    assert line.count(" -> ") == 3 and line.endswith("per doubling of the footage")


def test_more_footage_predicts_the_held_out_mouth_better_on_cnn(built):
    """On cnn_71s's 32 s tail the curve rises: 39 s of footage predict the tail's mouth better than 5 s do."""
    footage = footage_curve(Package.open(built("cnn_71s").path))
    first, last = footage["points"][0], footage["points"][-1]
    assert last["seconds"] > 35 and first["seconds"] < 6
    assert last["value"] > first["value"] + 0.1 and footage["per_doubling"] > 0.02
    assert footage_curve(Package.open(built("face_1").path)) is None      # no held-out tail to score on


@pytest.fixture(scope="module")
def cnn_real(built):
    """cnn_71s's 32 s held-out tail: the mouth opening measured on the real frames, and the audio."""
    pkg = Package.open(built("cnn_71s").path)
    meter = quality.MouthMeter(create_backend("dlib"), pkg)
    hold = pkg.holdout_range
    opening = quality.mouth_opening(np.stack([meter.measure(np.asarray(pkg.crops[k]), k) for k in hold]))
    with wave.open(str(pkg.root / "audio.wav")) as w:
        audio = np.frombuffer(w.readframes(w.getnframes()), np.int16).astype(np.float32) / 32768
    return pkg, opening, audio


@pytest.mark.parametrize("delay_ms", [0, 80, 160, -80])
def test_offset_estimator_recovers_known_shifts_on_real_footage(cnn_real, delay_ms):
    """Real frames in sync score 0 +- 40 ms; delaying the audio moves the estimate by the delay +- 40 ms."""
    pkg, opening, audio = cnn_real
    hold = pkg.holdout_range
    d = delay_ms * 16                                   # samples at 16 kHz
    segment = audio[hold.start * 640 - d:hold.stop * 640 - d]
    sync = quality.sync_offset(quality.predicted_opening(mouth.for_package(pkg), segment, len(hold)), opening)
    assert sync["determined"], sync["undetermined_because"]
    assert abs(sync["offset_ms"] - delay_ms) <= 40, sync["offset_ms"]
    assert sync["ci95"][0] <= sync["offset_ms"] <= sync["ci95"][1]


def test_quality_measures_on_known_inputs():
    img = np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)
    assert quality.ssim(img, img) == pytest.approx(1.0) and quality.psnr(img, img) == float("inf")
    noisy = np.clip(img.astype(int) + 10, 0, 255).astype(np.uint8)
    assert 20 < quality.psnr(img, noisy) < 40
    t = np.sin(np.arange(200) / 3.0)
    sync = quality.sync_offset(t, np.roll(t, 2) + 0.05 * np.cos(np.arange(200) * 1.7))
    assert sync["offset_ms"] == pytest.approx(-80, abs=5)                      # mouth 2 frames after the audio
    assert quality.pearson(t, t) == pytest.approx(1.0) and quality.pearson(t, np.ones(200)) == 0.0
    assert quality.open_in_silence(np.zeros(4), np.array([0.1, 0.0, 0.0, 0.0])) == 0.25
    assert quality.open_in_silence(np.ones(4), np.zeros(4)) is None


@pytest.mark.parametrize("transport", ["websocket", "grpc"])
def test_eval_against_a_running_server(built, anchor, tmp_path, transport):
    from tests.runtime.conftest import running_server

    served = tmp_path / "served"
    served.mkdir()
    link_package(anchor, served / anchor.name)
    clip = tmp_path / "clip.wav"
    ffmpeg("-i", str(AUDIO["demo1_audio"]), "-t", "3", "-ar", "16000", "-ac", "1", str(clip))
    with running_server(served, grpc_port=0) as srv:
        url = srv.ws if transport == "websocket" else f"grpc://127.0.0.1:{srv.server.grpc_port}"
        result = evaluate(anchor, clip, EvalConfig(server=url, out_dir=str(tmp_path / "r"), progress=False))
        assert srv.json("/stats")["sessions"]["by_transport"][transport]["total"] >= 1   # it went that way
    report = check_report(result.path)
    assert report["mode"] == "server" and report["frames"] == 75
    client = report["generators"]["server"]["client"]
    assert client["rtt_ms"]["p50"] > 0
    assert client["audio_to_frame_ms"]["p50"] >= client["rtt_ms"]["p50"] + 40 - 1e-6
    assert client["lookahead_ms"] == 80
    assert set(streams(result.path / "output.mp4")) == {"video", "audio"}


@pytest.mark.parametrize("case", ["missing package", "corrupt package", "unreadable audio", "too short",
                                  "no audio", "unreachable server", "no split", "unknown generator"])
def test_bad_input_one_line_and_no_report(case, anchor, package_copy, tmp_path):
    out = tmp_path / "reports"
    args = [str(anchor), "--audio", str(AUDIO["demo1_audio"])]
    if case == "missing package":
        args[0] = str(tmp_path / "nope")
    elif case == "corrupt package":
        (package_copy / "manifest.json").write_text("{ not json")
        args[0] = str(package_copy)
    elif case == "unreadable audio":
        bad = tmp_path / "bad.wav"
        bad.write_text("this is not audio")
        args[2] = str(bad)
    elif case == "too short":
        short = tmp_path / "short.wav"
        ffmpeg("-i", str(AUDIO["demo1_audio"]), "-t", "0.02", str(short))
        args[2] = str(short)
    elif case == "no audio":
        args = [str(anchor)]
    elif case == "unreachable server":
        args += ["--server", "ws://127.0.0.1:9/ws"]
    elif case == "no split":
        manifest = json.loads((package_copy / "manifest.json").read_text())
        del manifest["split"]
        (package_copy / "manifest.json").write_text(json.dumps(manifest))
        args = [str(package_copy), "--holdout"]
    elif case == "unknown generator":
        args += ["--generator", "magic"]
    proc = run_eval(*args, "-o", str(out))
    assert proc.returncode != 0
    lines = [line for line in proc.stderr.strip().splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error:")]
    assert len(errors) == 1 and lines[-1] == errors[0], proc.stderr
    assert not out.exists() or not any(out.iterdir())


def test_lse_through_the_report_with_a_random_syncnet(anchor, tmp_path):
    import torch

    from toolkit.evaluate.syncnet import SyncNet

    torch.manual_seed(0)
    weights = tmp_path / "syncnet_random.model"
    torch.save(SyncNet().state_dict(), weights)
    result = evaluate(anchor, None, EvalConfig(generators=("static",), holdout=True, syncnet_weights=str(weights),
                                               out_dir=str(tmp_path / "r"), progress=False))
    report = check_report(result.path)
    for name in ("static", "real"):
        s = report["generators"][name]["quality"]["syncnet"]
        assert np.isfinite(s["lse_d"]) and s["lse_c"] >= 0 and -15 <= s["offset_frames"] <= 15


def test_reference_video_with_its_own_audio(anchor, tmp_path):
    ref = tmp_path / "reference.mp4"        # 4 s of the same speaker, cut from the source clip
    ffmpeg("-ss", "15", "-i", str(VIDEOS["German_20s"]),
           "-t", "4", "-c:v", "libx264", "-preset", "ultrafast", "-c:a", "aac", str(ref))
    proc = run_eval(str(anchor), "--reference", str(ref), "--generator", "static,retrieval",
                    "-o", str(tmp_path / "r"), "--quiet")
    assert proc.returncode == 0, proc.stderr
    report = check_report(Path(proc.stdout.strip()))
    assert report["frames"] == 100 and set(report["generators"]) == {"static", "retrieval", "real"}
    assert report["generators"]["real"]["quality"]["opening_correlation"] == 1.0
    for name in ("static", "retrieval"):
        assert report["generators"][name]["quality"]["lmd_px"] > 0


def closed_after_speech(package_root, generator: str) -> tuple[float, np.ndarray]:
    """Drive a real session with 2 s of speech, then digital silence and room noise; the share of open
    mouths (measured on the served JPEGs) once the resting mouth has eased in, and the frames' statuses."""
    from toolkit.evaluate import harness
    from toolkit.evaluate.run import silence_audio

    with wave.open(str(AUDIO["eng"])) as w:
        speech = np.frombuffer(w.readframes(w.getnframes()), np.int16).astype(np.float32) / 32768
    audio = np.concatenate([speech[16_000 * 5:16_000 * 7], silence_audio()])
    pkg = Package.open(package_root)
    run = harness.run_inprocess(pkg, audio, generator)
    meter = quality.MouthMeter(create_backend("dlib"), pkg)
    quiet = np.arange(50 + HOLD_FRAMES + 3, len(run.crops))    # after 2 s of speech, the hold and 3 frames of easing
    opening = quality.mouth_opening(np.stack([meter.measure(run.crops[k], int(run.bases[k])) for k in quiet]))
    assert (opening[:5] < 1).all()
    return float(np.mean(opening > quality.OPEN_THRESHOLD)), run.status[quiet]


@pytest.mark.parametrize("generator", ["static", "retrieval"])
def test_silence_gives_a_closed_mouth(anchor, generator):
    share, status = closed_after_speech(anchor, generator)
    assert share <= 0.05 and (status == 1).all()          # 1: IDLE, the resting mouth without a generator call


def test_eval_renders_the_bytes_the_server_sends(anchor, tmp_path):
    """The in-process harness and a real server (render processes, websocket) give byte-identical JPEGs."""
    import asyncio

    from runtime.client import Client
    from tests.runtime.conftest import running_server
    from toolkit.evaluate import harness

    with wave.open(str(AUDIO["eng"])) as w:
        speech = np.frombuffer(w.readframes(w.getnframes()), np.int16).astype(np.float32) / 32768
    audio = np.concatenate([speech[16_000 * 4:16_000 * 8], np.zeros(16_000, np.float32)])   # speech, then silence
    run = harness.run_inprocess(Package.open(anchor), audio, "retrieval")
    served = tmp_path / "served"
    served.mkdir()
    link_package(anchor, served / anchor.name)

    async def stream(url):
        async with Client(url) as c:
            return [frame async for frame, _ in c.stream(audio, 16_000, SampleFormat.FLOAT32, realtime=True)]

    with running_server(served, chain="retrieval") as srv:
        frames = asyncio.run(stream(srv.ws))
    assert len(frames) == len(run.crops) == 125
    assert [f.base_frame for f in frames] == run.bases.tolist()
    assert [int(f.status) for f in frames] == run.status.tolist() and 10 < run.status.sum() < 30   # IDLE: at rest
    assert all(f.jpeg == j for f, j in zip(frames, run.crops.data))


def test_block_bootstrap_on_short_runs():
    from toolkit.evaluate import stats

    assert stats.block_indices(0, 25).shape == (stats.RESAMPLES, 0)
    for n in (1, 5, 23, 60):
        idx = stats.block_indices(n, 25)
        assert idx.shape == (stats.RESAMPLES, n) and idx.min() >= 0 and idx.max() < n
        if n >= 5:
            assert len({tuple(r) for r in idx[:50]}) > 10        # resamples differ, even under one block
    same = stats.compare("a", "b", "lmd_px", np.ones(10), np.zeros(10), 1.0, 0.0)
    assert not same["distinguishable"]                            # a zero-width interval tells nothing
