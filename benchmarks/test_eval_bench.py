"""lipsync-eval's own overhead per frame, against the bare generator.

The harness adds the streaming front end, JPEG round trip, paste into the full
frame, video encoding and landmark measurement around each generator call.
Reported: the bare ``Chain.render`` time per frame, the harness's in-loop time
per frame (stages) and the whole command's wall time per frame.
"""

import json
import time

import numpy as np

from runtime import features as F
from runtime.package import Package
from runtime.stream import frame_window
from tests.conftest import AUDIO
from tests.runtime.conftest import read_wav
from toolkit.audio import wav_bytes
from toolkit.evaluate.run import EvalConfig, evaluate
from runtime.generators import Chain, GENERATORS


def _speech(seconds: float) -> np.ndarray:
    x, _ = read_wav(AUDIO["eng"])
    return x[16_000 * 5:16_000 * 5 + int(16_000 * seconds)]


def test_harness_overhead(benchmark, built, tmp_path):
    path = built("German_20s").path
    pkg = Package.open(path)
    audio = _speech(20.0)
    frames = len(audio) // 640
    mel = F.log_mel(audio)
    chain = Chain(pkg, [GENERATORS["retrieval"]])
    state = chain.new_state()
    t0 = time.perf_counter()
    for k in range(frames):
        chain.render([k % 425], [frame_window(mel, k, 25)], [state])
    bare_ms = (time.perf_counter() - t0) * 1e3 / frames

    results = []

    def run():
        t = time.perf_counter()
        wav = tmp_path / "speech.wav"
        if not wav.exists():
            wav.write_bytes(wav_bytes(audio))
        r = evaluate(path, wav, EvalConfig(out_dir=str(tmp_path / "r"), progress=False))
        results.append((time.perf_counter() - t, r.report))

    benchmark.pedantic(run, rounds=2, iterations=1)
    wall, report = min(results, key=lambda t: t[0])
    g = report["generators"]["retrieval"]
    in_loop = sum(g["stages_ms"][s]["mean"] for s in ("features", "jpeg", "paste")) + \
        g["stages_ms"]["generator"]["mean"] * (1 - g["idle_frames"] / g["frames"])
    benchmark.extra_info.update({
        "frames": frames, "bare_generator_ms_per_frame": round(bare_ms, 3),
        "harness_stages_ms_per_frame": round(in_loop, 3),
        "harness_render_loop_ms_per_frame": round(1e3 / g["fps"], 3),
        "whole_command_ms_per_frame": round(wall * 1e3 / frames, 3),
        "overhead_ratio_render_loop": round((1e3 / g["fps"]) / bare_ms, 2),
        "overhead_ratio_whole_command": round(wall * 1e3 / frames / bare_ms, 2),
    })
    print("\neval overhead:", json.dumps(benchmark.extra_info))
