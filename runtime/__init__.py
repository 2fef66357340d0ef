"""Minimal lip-sync runtime: opens model packages and turns audio into face frames.

This package depends on numpy (and, in later stages, torch, opencv and a
websocket library) only. It never imports ``toolkit``, dlib, face-alignment,
librosa or ffmpeg-python, so a server can start in milliseconds.
"""

__version__ = "0.1.0"
