"""Minimal lip-sync runtime: opens model packages and turns audio into face frames.

What ``pip install lipsync-toolkit`` (no extras) installs is what this package
needs: numpy, opencv-python, websockets, safetensors, click, and torch for the
neural tier (imported only when that tier loads). It never imports ``toolkit``,
dlib, face-alignment, librosa, scipy, matplotlib or ffmpeg-python, so a server
starts in milliseconds; tests/runtime/test_cli.py serves with those blocked.
"""

__version__ = "0.1.0"
