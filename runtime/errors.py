"""One exception family for the whole project.

::

    LipsyncError                 root: catch this to handle any expected failure
     ├── InputError              a user-supplied file or option is unusable
     │    ├── FaceError          no usable face (none, too small, too few frames)
     │    └── MediaError         a media file ffmpeg cannot decode (damaged, truncated, empty)
     ├── FFmpegError             ffmpeg/ffprobe missing or failing; carries its stderr
     └── PackageError            a model package is missing, malformed or corrupt

Every message says what was received, what was expected and how to fix it,
on one line, so a command line tool can print ``error: <message>`` and exit.
"""

from __future__ import annotations


class LipsyncError(Exception):
    """Root of every error this project raises on purpose."""

    exit_code = 1


class InputError(LipsyncError):
    """A file or option given by the user cannot be used."""

    exit_code = 2


class FaceError(InputError):
    """The video holds no usable face (none, too small, or lost too often)."""

    exit_code = 3


class FFmpegError(LipsyncError):
    """ffmpeg or ffprobe failed.

    Parameters
    ----------
    message : str
        What was being done, in the user's terms.
    stderr : str
        ffmpeg's own error output; its last line is appended to the message.
    """

    exit_code = 4

    def __init__(self, message: str, stderr: str = ""):
        self.stderr = stderr
        tail = last_line(stderr)
        super().__init__(f"{message} (ffmpeg: {tail})" if tail else message)


class MediaError(InputError):
    """A user's media file cannot be decoded: damaged, truncated or empty (an input error, exit 2).

    ``stderr``: ffmpeg's own error output; its last line is appended to the message.
    """

    def __init__(self, message: str, stderr: str = ""):
        self.stderr = stderr
        tail = last_line(stderr)
        super().__init__(f"{message} (ffmpeg: {tail})" if tail else message)


class PackageError(LipsyncError):
    """A model package is missing, malformed, of another version, or corrupt."""

    exit_code = 5


def last_line(text: str) -> str:
    """The last non-blank line of a tool's output (ffmpeg puts the reason there)."""
    lines = [ln.strip() for ln in (text or "").splitlines() if ln.strip()]
    return lines[-1] if lines else ""
