"""The report folder: ``report.json`` (schema: report.schema.json, docs/report-format.md),
plots, a contact sheet and ``report.html`` that shows them.

Plots are PNG files next to the page (matplotlib, Agg backend), so the folder
can be copied or served as it is.
"""

from __future__ import annotations

import html
import json
import os
import platform
from datetime import datetime, timezone
from pathlib import Path

import cv2
import numpy as np

from runtime import __version__ as runtime_version
from runtime.features import SAMPLE_RATE
from runtime.files import write_atomic
from runtime.stream import IDLE_RMS, LOOKAHEAD_MS

from .. import __version__

FORMAT = "lipsync-eval-report"
FORMAT_VERSION = "2.1"     # 2.0: sync_offset replaced av_offset; intervals, articulation, silence, comparisons; 2.1: footage
SCHEMA_PATH = Path(__file__).with_name("report.schema.json")
PCTS = (50, 95, 99)


def _stats(values: np.ndarray) -> dict:
    v = np.asarray(values, np.float64)
    if not len(v):
        return {"p50": None, "p95": None, "p99": None, "max": None, "mean": None}
    p = np.percentile(v, PCTS)
    return {"p50": round(p[0], 3), "p95": round(p[1], 3), "p99": round(p[2], 3), "max": round(v.max(), 3),
            "mean": round(v.mean(), 3)}


def machine() -> dict:
    import cv2 as _cv2
    cpu = ""
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return {"platform": platform.platform(), "python": platform.python_version(), "cpu": cpu,
            "cores": os.cpu_count(), "numpy": np.__version__, "opencv": _cv2.__version__,
            "toolkit": __version__, "runtime": runtime_version}


def _generator_entry(run, q, seconds_audio: float) -> dict:
    has_timing = bool(run.stages)
    spoken = run.status == 0
    entry = {"mode": run.mode, "frames": int(len(run.crops)),
             "idle_frames": int((run.status == 1).sum()), "quality": q}
    if has_timing:
        total = run.stages["total"]
        entry.update({
            "latency_ms": _stats(total),
            "stages_ms": {name: _stats(run.stages[name][spoken] if name == "generator" else run.stages[name])
                          for name in ("features", "generator", "jpeg", "paste") if name in run.stages},
            "first_frame_ms": round(run.first_frame_ms, 3),
            "fps": round(len(total) / run.wall_s, 2) if run.wall_s else None,
            "realtime_factor": round(run.wall_s / seconds_audio, 4) if seconds_audio else None,
            "peak_rss_mb": round(run.peak_rss_mb, 1),
            "tiers": run.tiers,
            "output": getattr(run, "output", None),
        })
    if run.client:
        entry["client"] = {k: _stats(v) for k, v in run.client.items()}
        entry["client"]["lookahead_ms"] = LOOKAHEAD_MS
    return entry


def write_report(folder: Path, pkg, audio_desc: str, samples: np.ndarray, config, results: dict,
                 envelope: np.ndarray, rms: np.ndarray, seconds: float, comparisons: list | None = None,
                 footage: dict | None = None) -> dict:
    """Write report.json, plots and report.html into ``folder``; returns the report.

    ``footage``: :func:`toolkit.evaluate.footage.footage_curve` (self-reenactment only)."""
    fps = pkg.fps
    audio_s = len(samples) / SAMPLE_RATE
    gens = {name: _generator_entry(run, q, audio_s) for name, (run, q) in results.items()}
    primary = next(iter(results))
    first = gens[primary]
    report = {
        "format": FORMAT, "format_version": FORMAT_VERSION,
        "created": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "tool": {"name": "lipsync-eval", "version": __version__},
        "package": {"name": pkg.root.name, "path": str(pkg.root), "frames": pkg.frames, "fps": fps,
                    "train_frames": [pkg.train_range.start, pkg.train_range.stop]},
        "audio": {"source": audio_desc, "seconds": round(audio_s, 3), "sample_rate": SAMPLE_RATE,
                  "silent_frames": int((rms < IDLE_RMS).sum())},
        "mode": "server" if config.server else "in-process", "server": config.server,
        "holdout": bool(config.holdout),
        "generator": primary,
        "frames": first["frames"],
        "latency_ms": first.get("latency_ms"),
        "realtime_factor": first.get("realtime_factor"),
        "quality": first["quality"],
        "generators": gens,
        "comparisons": comparisons or [],
        "footage": footage,
        "machine": machine(),
        "seconds": round(seconds, 2),
        "files": {"html": "report.html", "video": "output.mp4", "plots": []},
    }
    plots = folder / "plots"
    plots.mkdir(exist_ok=True)
    report["files"]["plots"] = _plots(plots, results, envelope, rms, fps)
    report["files"]["plots"].append(_contact_sheet(plots, results))
    if footage:
        report["files"]["plots"].append(_footage_plot(plots, footage))
    write_atomic(folder / "report.json", json.dumps(report, indent=1, allow_nan=False).encode("utf-8"))
    write_atomic(folder / "report.html", _html(report).encode("utf-8"))
    return report


def _plots(folder: Path, results: dict, envelope, rms, fps) -> list[str]:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = []
    timed = {n: r for n, (r, _) in results.items() if r.stages}
    if timed:
        fig, ax = plt.subplots(figsize=(7, 3.2))
        for name, run in timed.items():
            ax.hist(run.stages["total"], bins=60, alpha=0.6, label=name)
        out.append(_finish(fig, ax, "server time per frame (ms)", "frames", "latency histogram",
                           folder / "latency_hist.png"))
        fig, ax = plt.subplots(figsize=(9, 3.2))
        for name, run in timed.items():
            t = np.arange(len(run.stages["total"])) / fps
            ax.plot(t, run.stages["total"], lw=0.8, label=name)
        out.append(_finish(fig, ax, "audio time (s)", "ms", "latency timeline (server time per frame)",
                           folder / "latency_timeline.png"))
    fig, ax1 = plt.subplots(figsize=(9, 3.6))
    t = np.arange(len(envelope)) / fps
    ax1.fill_between(t, envelope.min(), envelope, color="0.85", label="audio envelope")
    ax1.set_ylabel("audio envelope (log-mel)")
    ax1.set_xlabel("time (s)")
    ax2 = ax1.twinx()
    for name, (_, q) in results.items():
        ax2.plot(t[:len(q["mouth_opening"]["per_frame"])], q["mouth_opening"]["per_frame"], lw=1,
                 label=f"{name} (offset {format_offset(q['sync_offset'])})")
    ax2.set_ylabel("mouth opening")
    ax2.legend(loc="upper right", fontsize=8)
    ax1.set_title("mouth opening against the audio envelope")
    out.append(_save(fig, folder / "mouth_vs_audio.png"))
    fig, ax = plt.subplots(figsize=(7, 3.4))
    for name, (_, q) in results.items():
        curve = q["sync_offset"]["curve"]
        if curve:
            ax.plot([c[0] for c in curve], [c[1] for c in curve], marker="o", ms=3, lw=1,
                    label=f"{name}: {format_offset(q['sync_offset'])}")
    ax.axvline(0, color="0.6", lw=0.8)
    out.append(_finish(fig, ax, "offset (ms; positive: audio after the mouth)",
                       "correlation with the predicted mouth", "sync: measured mouth against the mouth the audio predicts",
                       folder / "sync_curve.png"))
    return out


def _footage_plot(folder: Path, footage: dict) -> str:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pts = footage["points"]
    x = [p["seconds"] for p in pts]
    y = np.array([p["value"] for p in pts])
    err = np.abs(np.array([p["ci95"] for p in pts], np.float64).T - y)
    fig, ax = plt.subplots(figsize=(7, 3.4))
    ax.errorbar(x, y, yerr=err, marker="o", ms=4, capsize=3, lw=1,
                label=(f"{footage['per_doubling']:+.3f} per doubling of the footage"
                       if footage["per_doubling"] is not None else "one length only"))
    ax.set_xscale("log", base=2)
    ax.set_xticks(x, [f"{v:.3g} s" for v in x])
    ax.minorticks_off()
    return _finish(fig, ax, "seconds of the speaker's footage the mouth-shape model learned from",
                   "held-out opening correlation", "would more footage help? (95 % CI)", folder / "footage.png")


def footage_line(footage: dict) -> str:
    """'0.37 (4.9 s) -> 0.45 (9.8 s) -> 0.53 (39 s): +0.052 per doubling of the footage'."""
    steps = " -> ".join(f"{p['value']:.2f} ({p['seconds']:g} s)" for p in footage["points"])
    slope = footage["per_doubling"]
    return steps + (f": {slope:+.3f} per doubling of the footage" if slope is not None else "")


def format_offset(s: dict) -> str:
    """'+12 ms [-3, +30]' or 'undetermined'."""
    if not s.get("determined"):
        return "undetermined"
    lo, hi = s["ci95"]
    return f"{s['offset_ms']:+.0f} ms [{lo:+.0f}, {hi:+.0f}]"


def format_ci(value, ci) -> str:
    if value is None:
        return "-"
    if not ci or ci[0] is None:
        return _fmt(value)
    return f"{_fmt(value)} [{_fmt(ci[0])}, {_fmt(ci[1])}]"


def _finish(fig, ax, xlabel: str, ylabel: str, title: str, path: Path) -> str:
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.legend()
    ax.set_title(title)
    return _save(fig, path)


def _save(fig, path: Path) -> str:
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    import matplotlib.pyplot as plt
    plt.close(fig)
    return f"plots/{path.name}"


def _contact_sheet(folder: Path, results: dict, columns: int = 8, size: int = 128) -> str:
    """One row per generator (and the real frames), the same frames in each column."""
    n = min(len(r.crops) for r, _ in results.values())
    picks = np.linspace(0, n - 1, min(columns, n)).astype(int)
    rows = []
    for name, (run, _) in results.items():
        tiles = [cv2.resize(np.asarray(run.crops[k]), (size, size), interpolation=cv2.INTER_AREA) for k in picks]
        row = np.hstack(tiles)
        label = np.full((22, row.shape[1], 3), 255, np.uint8)
        cv2.putText(label, name, (4, 16), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 0, 0), 1, cv2.LINE_AA)
        rows.append(np.vstack([label, row]))
    sheet = np.vstack(rows)
    cv2.imwrite(str(folder / "contact_sheet.png"), cv2.cvtColor(sheet, cv2.COLOR_RGB2BGR))
    return "plots/contact_sheet.png"


def _fmt(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.3g}" if abs(v) < 1000 else f"{v:.0f}"
    return html.escape(str(v))


def _art(g: dict, key: str) -> tuple:
    a = g["quality"].get("articulation")
    return (a[key]["value"], a[key]["ci95"]) if a else (None, None)


def _footage_html(footage: dict | None) -> str:
    if not footage:
        return ""
    rows = "".join(f"<tr><td>{p['seconds']:g} s ({p['stretches']} stretch{'es' if p['stretches'] > 1 else ''})</td>"
                   f"<td>{format_ci(p['value'], p['ci95'])}</td></tr>" for p in footage["points"])
    return ("<h2>Would more footage help?</h2><p>The package's mouth-shape model, refitted on shorter stretches of "
            "the training footage, predicting the held-out mouth opening from the held-out audio (correlation with "
            "the real landmarks, 95 % CI). Retrieval and the neural tier follow the speech only as well as this "
            "model does. "
            + (f"Each doubling of the footage added {html.escape(_fmt(footage['per_doubling']))}; "
               if footage["per_doubling"] is not None else "")
            + "A curve still rising at the full length says a longer recording of the speaker would help "
            "(<code>lipsync-pack build</code> on a longer video).</p>"
            f"<table><tr><th>footage</th><th>opening correlation [95 % CI]</th></tr>{rows}</table>")


def _html(r: dict) -> str:
    rows = [("frames", lambda g: g["frames"]),
            ("server p50 / p95 ms", lambda g: f"{_fmt(g['latency_ms']['p50'])} / {_fmt(g['latency_ms']['p95'])}"
             if g.get("latency_ms") else "-"),
            ("generator p95 ms", lambda g: _fmt(g["stages_ms"]["generator"]["p95"]) if g.get("stages_ms") else "-"),
            ("first frame ms", lambda g: _fmt(g.get("first_frame_ms"))),
            ("frames/s", lambda g: _fmt(g.get("fps"))),
            ("real-time factor", lambda g: _fmt(g.get("realtime_factor"))),
            ("mouth opening mean", lambda g: _fmt(g["quality"]["mouth_opening"]["mean"])),
            ("sync offset [95 % CI]", lambda g: format_offset(g["quality"]["sync_offset"])),
            ("opening correlation [95 % CI]", lambda g: format_ci(g["quality"].get("opening_correlation"),
                                                            g["quality"].get("opening_correlation_ci95"))),
            ("mouth LMD px [95 % CI]", lambda g: format_ci(g["quality"].get("lmd_px"), g["quality"].get("lmd_px_ci95"))),
            ("articulation: std ratio", lambda g: format_ci(*_art(g, "std_ratio"))),
            ("articulation: p90-p10 ratio", lambda g: format_ci(*_art(g, "p90_spread_ratio"))),
            ("open in silent stretches", lambda g: _fmt(g["quality"]["open_in_silence"])),
            ("open in digital silence / room noise", lambda g: (
                f"{_fmt(g['quality']['silence']['digital'])} / {_fmt(g['quality']['silence']['room_noise'])}"
                if "silence" in g["quality"] else "-")),
            ("mouth flicker", lambda g: _fmt(g["quality"]["flicker"])),
            ("PSNR mouth / face dB", lambda g: f"{_fmt(g['quality'].get('psnr_mouth_db'))} / "
             f"{_fmt(g['quality'].get('psnr_face_db'))}"),
            ("SSIM mouth / face", lambda g: f"{_fmt(g['quality'].get('ssim_mouth'))} / "
             f"{_fmt(g['quality'].get('ssim_face'))}"),
            ("LSE-D / LSE-C", lambda g: (f"{_fmt(g['quality']['syncnet'].get('lse_d'))} / "
                                         f"{_fmt(g['quality']['syncnet'].get('lse_c'))}")
             if "lse_d" in g["quality"]["syncnet"] else "skipped")]
    comparisons = "".join(f"<tr><td>{html.escape(c['metric'])}</td><td>{html.escape(c['a'])} - {html.escape(c['b'])}"
                          f"</td><td>{format_ci(c['difference'], c['ci95'])}</td><td>{html.escape(c['verdict'])}</td></tr>"
                          for c in r.get("comparisons", []))
    if comparisons:
        comparisons = ("<h2>Can the generators be told apart?</h2><p>Paired block bootstrap (1 s blocks, "
                       "1000 resamples): the 95 % interval of the difference; it excludes 0 when they can.</p>"
                       "<table><tr><th>metric</th><th>pair</th><th>difference [95 % CI]</th><th>verdict</th></tr>"
                       f"{comparisons}</table>")
    names = list(r["generators"])
    head = "".join(f"<th>{html.escape(n)}</th>" for n in names)
    body = "".join(f"<tr><td>{html.escape(label)}</td>" + "".join(f"<td>{fn(r['generators'][n])}</td>"
                                                                    for n in names) + "</tr>"
                   for label, fn in rows)
    client = ""
    for n, g in r["generators"].items():
        if "client" in g:
            c = g["client"]
            client += (f"<p>Client side ({html.escape(n)}): round trip p50 {_fmt(c['rtt_ms']['p50'])} ms, "
                       f"p95 {_fmt(c['rtt_ms']['p95'])} ms")
            if "audio_to_frame_ms" in c:
                client += (f"; audio to frame p50 {_fmt(c['audio_to_frame_ms']['p50'])} ms "
                           f"(includes {c['lookahead_ms']} ms look-ahead and the 40 ms chunk)")
            client += ".</p>"
    imgs = "".join(f'<figure><img src="{html.escape(p)}" alt="{html.escape(p)}"></figure>' for p in r["files"]["plots"])
    videos = "".join(f'<li><a href="{html.escape(g["output"])}">{html.escape(g["output"])}</a> ({html.escape(n)})</li>'
                     for n, g in r["generators"].items() if g.get("output"))
    sync = r["quality"]["syncnet"].get("skipped")
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>lipsync-eval: {html.escape(r['package']['name'])}</title>
<style>
body {{ font: 14px/1.45 system-ui, sans-serif; margin: 24px auto; max-width: 1000px; color: #222; }}
table {{ border-collapse: collapse; margin: 12px 0; }}
td, th {{ border: 1px solid #ccc; padding: 4px 10px; text-align: right; }}
td:first-child {{ text-align: left; }}
img {{ max-width: 100%; border: 1px solid #ddd; }}
figure {{ margin: 12px 0; }} code {{ background: #f3f3f3; padding: 1px 4px; }}
</style></head><body>
<h1>lipsync-eval: {html.escape(r['package']['name'])}</h1>
<p>{r['frames']} frames at {r['package']['fps']:g} fps from <code>{html.escape(r['audio']['source'])}</code>
({r['audio']['seconds']} s, {r['audio']['silent_frames']} silent frames); mode {html.escape(r['mode'])}
{'(self-reenactment on the held-out frames; "real" is the held-out video itself)' if r['holdout'] else ''};
{html.escape(r['created'])}; {html.escape(r['machine']['cpu'] or r['machine']['platform'])}, {r['machine']['cores']} cores.</p>
<h2>Generators side by side</h2>
<table><tr><th></th>{head}</tr>{body}</table>
{comparisons}
{_footage_html(r.get("footage"))}
{client}
{f'<p>SyncNet scores skipped: {html.escape(sync)}.</p>' if sync else ''}
<h2>Videos</h2><ul>{videos}</ul>
<h2>Plots</h2>{imgs}
<p>Definitions: docs/report-format.md. Raw numbers: <a href="report.json">report.json</a>.</p>
</body></html>
"""
