"""Would more footage help? The mouth-shape model refitted on shorter stretches of the training frames.

Retrieval and the neural tier follow the speech only as well as the package's
mouth-shape model (:mod:`runtime.mouth`) predicts the mouth from the audio, and
that model learns from the speaker's own footage. To show a user how much
their recording limits it, :func:`footage_curve` refits the model, exactly as
``lipsync-pack build`` fits it, on contiguous stretches of SHARES of the
training frames (WINDOWS stretches spread over the training part for each
share, so one lucky stretch does not decide) and scores each on the held-out
tail: the Pearson correlation of the opening it predicts from the tail's audio
with the opening of the tail's real landmarks (the package's), with a 95 %
moving-block bootstrap interval (:mod:`.stats`) for the mean over stretches.

``per_doubling`` is the least-squares slope of that mean against log2 of the
seconds of footage: what each doubling of the recording added. A curve still
rising at the full length says that a longer recording of the speaker is the
way to a mouth that follows new speech more closely.
"""

from __future__ import annotations

import numpy as np

from runtime import mouth
from runtime.package import Package
from runtime.stream import window_features

from . import stats

SHARES = (0.125, 0.25, 0.5, 1.0)     # of the training frames; each point doubles the footage
WINDOWS = 4                          # stretches per share below 1, spread evenly over the training part
MIN_TAIL_S = 2.0                     # a shorter held-out tail cannot score a correlation


def footage_curve(pkg: Package) -> dict | None:
    """Held-out opening r of the mouth-shape model against seconds of training footage.

    None when the package has no held-out tail of MIN_TAIL_S usable seconds.
    """
    flags = np.asarray(pkg.flags)
    tail = np.arange(pkg.holdout_range.start, pkg.holdout_range.stop)
    tail = tail[flags[tail] != 2] if len(tail) else tail
    if len(tail) < MIN_TAIL_S * pkg.fps:
        return None
    frames = mouth.fit_frames(flags, pkg.train_range.stop)
    landmarks = np.asarray(pkg.landmarks)
    mel = np.asarray(pkg.mel, np.float32)
    rms = mouth.package_rms(pkg)
    windows = window_features(mel, tail, pkg.fps)
    full = mouth.for_package(pkg)
    truth = mouth.opening_of(mouth.normalise(landmarks[tail], full.reference), full.reference)
    idx = stats.block_indices(len(tail), pkg.fps)
    points = []
    for share in SHARES:
        k = int(round(share * len(frames)))
        if k < mouth.MIN_FRAMES:
            continue
        starts = [0] if k == len(frames) else np.unique(np.linspace(0, len(frames) - k, WINDOWS).astype(int))
        preds = []
        for s0 in starts:
            model = mouth.fit_arrays(landmarks, mel, pkg.fps, frames[s0:s0 + k], rms, str(pkg.root))
            preds.append(model.opening(model.predict(windows, restore=False)))
        scores = [stats.correlation(p, truth, idx) for p in preds]      # (value, bootstrap samples) each
        points.append({"share": share, "seconds": round(k / pkg.fps, 2), "stretches": len(starts),
                       **stats.summary(float(np.mean([v for v, _ in scores])),
                                       np.mean([b for _, b in scores], axis=0))})
    if not points:
        return None
    slope = None
    if len(points) >= 2:
        x = np.log2([p["seconds"] for p in points])
        y = np.array([p["value"] for p in points], np.float64)
        slope = round(float(np.polyfit(x, y, 1)[0]), 4)
    return {"measure": "opening correlation of the mouth-shape model's prediction with the held-out landmarks",
            "tail_frames": int(len(tail)), "points": points, "per_doubling": slope}
