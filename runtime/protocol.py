"""Wire protocol of ``lipsync-serve``, sans I/O: pure encode and decode of messages.

Nothing here touches a socket or an event loop (the style of python-websockets'
``frames.py``): a transport hands bytes (websocket binary frames) or text
(websocket text frames) to :func:`decode` / :func:`decode_json` and sends what
:func:`encode` / :func:`encode_json` return. ``docs/protocol.md`` is the spec.

Every binary message is little-endian::

    offset 0   4s   magic b"LSYN"
           4   u8   version (1)
           5   u8   message type
           6   u32  sequence number
          10   ...  body (below)
          -4   u32  CRC32 (zlib.crc32) of every preceding byte

    type                  dir  body
    1  HELLO              c>s  u32 len + UTF-8 JSON {client, version, encoding}
    2  CAPABILITIES       s>c  u32 len + UTF-8 JSON {protocol_version, packages,
                               sample_rates, chunk_ms, window_ms, max_message_bytes}
    3  AUDIO_CHUNK        c>s  u32 sample_rate, u8 sample_format, u8 len + package,
                               u32 len + PCM (one 40 ms chunk)
    4  WINDOW_REQUEST     c>s  u32 frame_id, then as AUDIO_CHUNK (a 640 ms window)
    5  FRAME              s>c  u8 status, u32 base_frame, u32 server_us,
                               4 x i32 bounds (x0, y0, x1, y1), u32 len + JPEG
    6  SWITCH_PACKAGE     c>s  u8 len + package
    7  STATS_REQUEST      c>s  (empty)
    8  STATS              s>c  u32 len + UTF-8 JSON {stats}
    9  ERROR              s>c  u16 code, u16 len + UTF-8 text

The JSON fallback (:func:`encode_json`) carries the same fields as one object
with ``"v": 1`` and ``"type"`` (the lowercase type name); PCM and JPEG bytes
are base64. Failures raise :class:`ProtocolError` with an :class:`ErrorCode`.
"""

from __future__ import annotations

import base64
import binascii
import enum
import json
import struct
import zlib
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from .errors import LipsyncError
from .features import SAMPLE_RATE

MAGIC = b"LSYN"
VERSION = 1
MAX_MESSAGE_BYTES = 1 << 20          # 1 MiB, whole message including header and CRC
SAMPLE_RATES = (SAMPLE_RATE, 24_000, 48_000)   # the features' 16 kHz (no resampling), and two capture rates
CHUNK_MS = 40                        # one AUDIO_CHUNK = one video frame at 25 fps
WINDOW_MS = 640                      # one WINDOW_REQUEST window
MAX_PACKAGE_NAME_BYTES = 64
NO_SEQ = 0xFFFF_FFFF                 # ERROR.seq when the offending message's seq is unknown

_HEADER = struct.Struct("<4sBBI")    # magic, version, type, seq
HEADER_SIZE = _HEADER.size           # 10
CRC_SIZE = 4
_CRC = struct.Struct("<I")
_FIXED = {"u8": struct.Struct("<B"), "u16": struct.Struct("<H"), "u32": struct.Struct("<I"),
          "bounds": struct.Struct("<4i")}
_RANGES = {"u8": (0, 0xFF), "u16": (0, 0xFFFF), "u32": (0, 0xFFFF_FFFF), "i32": (-(1 << 31), (1 << 31) - 1)}


class MessageType(enum.IntEnum):
    HELLO = 1
    CAPABILITIES = 2
    AUDIO_CHUNK = 3
    WINDOW_REQUEST = 4
    FRAME = 5
    SWITCH_PACKAGE = 6
    STATS_REQUEST = 7
    STATS = 8
    ERROR = 9


class ErrorCode(enum.IntEnum):
    """The codes a server sends. 8 and 10 are reserved (docs/protocol.md): never sent, never reused."""

    MALFORMED = 1
    BAD_CRC = 2
    UNKNOWN_TYPE = 3
    UNKNOWN_PACKAGE = 4
    TOO_BIG = 5
    UNSUPPORTED_VERSION = 6
    BAD_AUDIO = 7
    INTERNAL = 9


class SampleFormat(enum.IntEnum):
    INT16 = 1       # signed 16-bit little-endian, full scale 32768
    FLOAT32 = 2     # IEEE 754 32-bit little-endian, full scale 1.0


class FrameStatus(enum.IntEnum):
    OK = 0          # mouth re-rendered from the audio
    IDLE = 1        # silence: the base frame with the speaker's resting mouth, no generator call


SAMPLE_SIZES = {SampleFormat.INT16: 2, SampleFormat.FLOAT32: 4}


class ProtocolError(LipsyncError):
    """A message could not be encoded or decoded.

    ``code`` is the :class:`ErrorCode` to send back in an ERROR message;
    ``seq`` is the offending message's sequence number, or None where it
    could not be read.
    """

    exit_code = 6

    def __init__(self, code: ErrorCode | int, message: str, seq: int | None = None):
        self.code = ErrorCode(code)
        self.seq = seq
        super().__init__(message if seq is None else f"{message} (seq {seq})")


# --------------------------------------------------------------------------- messages


@dataclass(frozen=True)
class Message:
    """Base of every message. ``_layout`` lists the body fields in wire order.

    Kinds: u8, u16, u32, bounds (4 x i32), name (u8 length + UTF-8), bytes
    (u32 length + raw), text (u16 length + UTF-8). Classes with ``_json_body``
    instead carry their fields as one u32-length UTF-8 JSON object.
    """

    seq: int

    type: ClassVar[MessageType]
    _layout: ClassVar[tuple[tuple[str, str], ...]] = ()
    _json_body: ClassVar[dict[str, str] | None] = None

    def __post_init__(self):
        _check_int(self, "seq", self.seq, "u32")
        for name, kind in self._body_fields():
            _normalise(self, name, kind)
        self._validate()

    @classmethod
    def _body_fields(cls) -> tuple[tuple[str, str], ...]:
        return tuple(cls._json_body.items()) if cls._json_body is not None else cls._layout

    def _validate(self) -> None:
        pass


class _AudioMixin:
    def _validate(self) -> None:
        if self.sample_rate not in SAMPLE_RATES:
            raise ProtocolError(ErrorCode.BAD_AUDIO, f"sample rate {self.sample_rate} Hz is not supported; "
                                f"expected one of {', '.join(map(str, SAMPLE_RATES))}", self.seq)
        try:
            fmt = SampleFormat(self.sample_format)
        except ValueError:
            raise ProtocolError(ErrorCode.BAD_AUDIO, f"sample format {self.sample_format} is unknown; "
                                "expected 1 (int16 LE) or 2 (float32 LE)", self.seq) from None
        object.__setattr__(self, "sample_format", fmt)
        size = SAMPLE_SIZES[fmt]
        if len(self.pcm) % size:
            raise ProtocolError(ErrorCode.BAD_AUDIO, f"PCM payload of {len(self.pcm)} bytes is not a whole number "
                                f"of {fmt.name.lower()} samples; expected a multiple of {size} bytes", self.seq)


@dataclass(frozen=True)
class Hello(Message):
    """Client -> server, first message: who the client is and which encoding it wants back."""

    client: str = ""
    version: str = ""
    encoding: str = "binary"            # "binary" or "json"

    type: ClassVar[MessageType] = MessageType.HELLO
    _json_body: ClassVar[dict[str, str]] = {"client": "str", "version": "str", "encoding": "str"}

    def _validate(self) -> None:
        if self.encoding not in ("binary", "json"):
            raise ProtocolError(ErrorCode.MALFORMED, f"HELLO encoding {self.encoding!r} is unknown; "
                                "expected 'binary' or 'json'", self.seq)


@dataclass(frozen=True)
class Capabilities(Message):
    """Server -> client, reply to HELLO: what this server offers."""

    protocol_version: int = VERSION
    packages: tuple[str, ...] = ()
    sample_rates: tuple[int, ...] = SAMPLE_RATES
    chunk_ms: int = CHUNK_MS
    window_ms: int = WINDOW_MS
    max_message_bytes: int = MAX_MESSAGE_BYTES

    type: ClassVar[MessageType] = MessageType.CAPABILITIES
    _json_body: ClassVar[dict[str, str]] = {"protocol_version": "u32", "packages": "strs", "sample_rates": "ints",
                                            "chunk_ms": "u32", "window_ms": "u32", "max_message_bytes": "u32"}


@dataclass(frozen=True)
class AudioChunk(_AudioMixin, Message):
    """Client -> server, streaming mode: one 40 ms chunk; the server answers with one FRAME.

    An empty ``package`` means the session's current package (see SWITCH_PACKAGE).
    """

    sample_rate: int = SAMPLE_RATE
    sample_format: SampleFormat = SampleFormat.INT16
    package: str = ""
    pcm: bytes = b""

    type: ClassVar[MessageType] = MessageType.AUDIO_CHUNK
    _layout: ClassVar = (("sample_rate", "u32"), ("sample_format", "u8"), ("package", "name"), ("pcm", "bytes"))


@dataclass(frozen=True)
class WindowRequest(_AudioMixin, Message):
    """Client -> server, stateless mode: render frame ``frame_id`` from a 640 ms window."""

    frame_id: int = 0
    sample_rate: int = SAMPLE_RATE
    sample_format: SampleFormat = SampleFormat.INT16
    package: str = ""
    pcm: bytes = b""

    type: ClassVar[MessageType] = MessageType.WINDOW_REQUEST
    _layout: ClassVar = (("frame_id", "u32"), ("sample_rate", "u32"), ("sample_format", "u8"),
                         ("package", "name"), ("pcm", "bytes"))


@dataclass(frozen=True)
class Frame(Message):
    """Server -> client: one JPEG face crop and where to paste it, for request ``seq``.

    ``server_us`` is the server's processing time in whole microseconds;
    ``bounds`` is (x0, y0, x1, y1) in full-frame pixels, x1/y1 exclusive.
    """

    status: FrameStatus = FrameStatus.OK
    base_frame: int = 0
    server_us: int = 0
    bounds: tuple[int, int, int, int] = (0, 0, 0, 0)
    jpeg: bytes = b""
    # The generator that rendered it. Not on the websocket wire (neither encoding carries it);
    # the gRPC Frame does (docs/lipsync.proto). Left out of comparisons: a decoded FRAME has "".
    tier: str = field(default="", compare=False)

    type: ClassVar[MessageType] = MessageType.FRAME
    _layout: ClassVar = (("status", "u8"), ("base_frame", "u32"), ("server_us", "u32"),
                         ("bounds", "bounds"), ("jpeg", "bytes"))

    def _validate(self) -> None:
        try:
            object.__setattr__(self, "status", FrameStatus(self.status))
        except ValueError:
            raise ProtocolError(ErrorCode.MALFORMED, f"FRAME status {self.status} is unknown; "
                                "expected 0 (ok) or 1 (idle)", self.seq) from None


@dataclass(frozen=True)
class SwitchPackage(Message):
    """Client -> server, streaming mode: later chunks of this session use ``package``."""

    package: str = ""

    type: ClassVar[MessageType] = MessageType.SWITCH_PACKAGE
    _layout: ClassVar = (("package", "name"),)

    def _validate(self) -> None:
        if not self.package:
            raise ProtocolError(ErrorCode.MALFORMED, "SWITCH_PACKAGE package name is empty; "
                                "expected 1 to 64 UTF-8 bytes", self.seq)


@dataclass(frozen=True)
class StatsRequest(Message):
    """Client -> server: ask for a STATS message."""

    type: ClassVar[MessageType] = MessageType.STATS_REQUEST


@dataclass(frozen=True)
class Stats(Message):
    """Server -> client: free-form counters (a JSON object)."""

    stats: dict = field(default_factory=dict)

    type: ClassVar[MessageType] = MessageType.STATS
    _json_body: ClassVar[dict[str, str]] = {"stats": "obj"}


@dataclass(frozen=True)
class Error(Message):
    """Server -> client: request ``seq`` (or :data:`NO_SEQ`) failed with ``code``."""

    code: int = ErrorCode.INTERNAL
    text: str = ""

    type: ClassVar[MessageType] = MessageType.ERROR
    _layout: ClassVar = (("code", "u16"), ("text", "text"))

    def _validate(self) -> None:
        try:
            object.__setattr__(self, "code", ErrorCode(self.code))
        except ValueError:
            pass                        # codes from a newer server stay plain ints


MESSAGE_CLASSES: dict[MessageType, type[Message]] = {
    cls.type: cls for cls in (Hello, Capabilities, AudioChunk, WindowRequest, Frame, SwitchPackage,
                              StatsRequest, Stats, Error)
}
_BY_NAME = {t.name.lower(): t for t in MessageType}


def error_reply(exc: ProtocolError, limit: int = 1024) -> Error:
    """The ERROR message answering ``exc``; text cut to ``limit`` UTF-8 bytes."""
    text = str(exc).encode("utf-8")[:limit].decode("utf-8", "ignore")
    return Error(seq=NO_SEQ if exc.seq is None else exc.seq, code=exc.code, text=text)


# --------------------------------------------------------------------------- field checks


def _check_int(msg, name: str, value, kind: str) -> None:
    lo, hi = _RANGES[kind]
    if not isinstance(value, int) or isinstance(value, bool) or not lo <= value <= hi:
        raise ProtocolError(ErrorCode.MALFORMED, f"{_tname(msg)} field {name} is {value!r}; "
                            f"expected an integer in [{lo}, {hi}]", _seq_of(msg))


def _normalise(msg, name: str, kind: str) -> None:
    value = getattr(msg, name)
    seq = _seq_of(msg)

    def bad(expected: str):
        return ProtocolError(ErrorCode.MALFORMED, f"{_tname(msg)} field {name} is {_short(value)}; "
                             f"expected {expected}", seq)

    if kind in ("u8", "u16", "u32"):
        _check_int(msg, name, value, kind)
    elif kind == "bounds":
        if not isinstance(value, (tuple, list)) or len(value) != 4:
            raise bad("4 integers (x0, y0, x1, y1)")
        for v in value:
            _check_int(msg, name, v, "i32")
        object.__setattr__(msg, name, tuple(value))
    elif kind in ("name", "text", "str"):
        if not isinstance(value, str):
            raise bad("a string")
        size = len(value.encode("utf-8"))
        limit = {"name": MAX_PACKAGE_NAME_BYTES, "text": 0xFFFF}.get(kind)
        if limit is not None and size > limit:
            raise bad(f"at most {limit} UTF-8 bytes, got {size}")
    elif kind == "bytes":
        if not isinstance(value, (bytes, bytearray, memoryview)):
            raise bad("bytes")
        object.__setattr__(msg, name, bytes(value))
    elif kind == "strs":
        if not isinstance(value, (tuple, list)) or not all(isinstance(v, str) for v in value):
            raise bad("a list of strings")
        object.__setattr__(msg, name, tuple(value))
    elif kind == "ints":
        if not isinstance(value, (tuple, list)):
            raise bad("a list of integers")
        for v in value:
            _check_int(msg, name, v, "u32")
        object.__setattr__(msg, name, tuple(value))
    elif kind == "obj":
        if not isinstance(value, dict):
            raise bad("a JSON object")
    else:  # pragma: no cover - a layout typo
        raise AssertionError(kind)


def _seq_of(msg) -> int | None:
    seq = getattr(msg, "seq", None)
    return seq if isinstance(seq, int) and not isinstance(seq, bool) and 0 <= seq <= 0xFFFF_FFFF else None


def _tname(msg) -> str:
    return type(msg).type.name


def _short(value) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


# --------------------------------------------------------------------------- binary


def encode(msg: Message, max_size: int = MAX_MESSAGE_BYTES) -> bytes:
    """The binary form of ``msg``; ProtocolError(TOO_BIG) if longer than ``max_size``."""
    parts = [_HEADER.pack(MAGIC, VERSION, msg.type, msg.seq)]
    if msg._json_body is not None:
        body = json.dumps(_json_fields(msg), separators=(",", ":"), ensure_ascii=False).encode("utf-8")
        parts += [_FIXED["u32"].pack(len(body)), body]
    for name, kind in msg._layout:
        value = getattr(msg, name)
        if kind in _FIXED:
            parts.append(_FIXED[kind].pack(*value) if kind == "bounds" else _FIXED[kind].pack(value))
        elif kind == "name":
            raw = value.encode("utf-8")
            parts += [_FIXED["u8"].pack(len(raw)), raw]
        elif kind == "text":
            raw = value.encode("utf-8")
            parts += [_FIXED["u16"].pack(len(raw)), raw]
        else:  # bytes
            parts += [_FIXED["u32"].pack(len(value)), value]
    data = b"".join(parts)
    if len(data) + CRC_SIZE > max_size:
        raise ProtocolError(ErrorCode.TOO_BIG, f"{msg.type.name} message would be {len(data) + CRC_SIZE} bytes; "
                            f"expected at most {max_size}", msg.seq)
    return data + _CRC.pack(zlib.crc32(data))


def decode(data: bytes | bytearray | memoryview, max_size: int = MAX_MESSAGE_BYTES) -> Message:
    """Parse one binary message; ProtocolError on any defect.

    Checks, in order: size <= ``max_size`` (TOO_BIG), header present
    (MALFORMED), magic (MALFORMED), version (UNSUPPORTED_VERSION), CRC32
    (BAD_CRC), type (UNKNOWN_TYPE), then the body: a declared length beyond
    the bytes left gives TOO_BIG, anything else wrong MALFORMED or BAD_AUDIO.
    """
    view = memoryview(data).cast("B")
    n = len(view)
    seq = _HEADER.unpack_from(view)[3] if n >= HEADER_SIZE and bytes(view[:4]) == MAGIC else None
    if n > max_size:
        raise ProtocolError(ErrorCode.TOO_BIG, f"message of {n} bytes received; expected at most {max_size}", seq)
    if n < HEADER_SIZE + CRC_SIZE:
        raise ProtocolError(ErrorCode.MALFORMED, f"message of {n} bytes received; expected at least "
                            f"{HEADER_SIZE + CRC_SIZE} (header and CRC)", seq)
    magic, version, mtype, seq = _HEADER.unpack_from(view)
    if magic != MAGIC:
        raise ProtocolError(ErrorCode.MALFORMED, f"magic {magic!r} received; expected {MAGIC!r}")
    if version != VERSION:
        raise ProtocolError(ErrorCode.UNSUPPORTED_VERSION, f"protocol version {version} received; "
                            f"expected {VERSION}", seq)
    (crc,) = _CRC.unpack_from(view, n - CRC_SIZE)
    actual = zlib.crc32(view[: n - CRC_SIZE])
    if crc != actual:
        raise ProtocolError(ErrorCode.BAD_CRC, f"CRC32 {crc:08x} received; expected {actual:08x} "
                            "computed over the preceding bytes", seq)
    try:
        cls = MESSAGE_CLASSES[MessageType(mtype)]
    except ValueError:
        raise ProtocolError(ErrorCode.UNKNOWN_TYPE, f"message type {mtype} received; expected one of "
                            f"{', '.join(f'{t.value} ({t.name})' for t in MessageType)}", seq) from None

    reader = _Reader(view[: n - CRC_SIZE], HEADER_SIZE, cls.type.name, seq)
    values: dict[str, Any] = {}
    if cls._json_body is not None:
        raw = reader.take(reader.fixed("u32", "JSON body length"), "JSON body")
        values = _load_body(cls, raw, seq)
    for name, kind in cls._layout:
        if kind in _FIXED:
            values[name] = reader.fixed(kind, name)
        elif kind == "name":
            values[name] = _utf8(cls, name, reader.take(reader.fixed("u8", f"{name} length"), name), seq)
        elif kind == "text":
            values[name] = _utf8(cls, name, reader.take(reader.fixed("u16", f"{name} length"), name), seq)
        else:
            values[name] = reader.take(reader.fixed("u32", f"{name} length"), name)
    if reader.pos != reader.end:
        raise ProtocolError(ErrorCode.MALFORMED, f"{cls.type.name} has {reader.end - reader.pos} bytes after its "
                            "last field; expected the CRC32 to follow immediately", seq)
    return cls(seq=seq, **values)


class _Reader:
    def __init__(self, view: memoryview, pos: int, tname: str, seq: int):
        self.view, self.pos, self.end, self.tname, self.seq = view, pos, len(view), tname, seq

    def fixed(self, kind: str, what: str):
        st = _FIXED[kind]
        if self.end - self.pos < st.size:
            raise ProtocolError(ErrorCode.MALFORMED, f"{self.tname} ends {self.end - self.pos} bytes into {what}; "
                                f"expected {st.size} bytes", self.seq)
        value = st.unpack_from(self.view, self.pos)
        self.pos += st.size
        return value if kind == "bounds" else value[0]

    def take(self, size: int, what: str) -> bytes:
        left = self.end - self.pos
        if size > left:
            raise ProtocolError(ErrorCode.TOO_BIG, f"{self.tname} declares {what} of {size} bytes; "
                                f"expected at most the {left} bytes left before the CRC", self.seq)
        out = bytes(self.view[self.pos:self.pos + size])
        self.pos += size
        return out


def _utf8(cls, name: str, raw: bytes, seq: int) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise ProtocolError(ErrorCode.MALFORMED, f"{cls.type.name} field {name} is not valid UTF-8 "
                            f"({_short(raw)}); expected UTF-8 text", seq) from None


def _parse_json(raw: bytes, what: str, seq: int | None) -> Any:
    """UTF-8 JSON text -> value; MALFORMED (never an exception of the parser) for anything else.

    Nesting is limited by Python's recursion limit (about 1000 levels): deeper
    text is refused as MALFORMED, not left to crash the caller.
    """
    try:
        return json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        why = " ".join(str(exc).split())[:120]
        raise ProtocolError(ErrorCode.MALFORMED, f"{what} is not UTF-8 JSON ({why}); expected a JSON object",
                            seq) from None
    except RecursionError:
        raise ProtocolError(ErrorCode.MALFORMED, f"{what} is JSON nested too deeply; expected a flat JSON object",
                            seq) from None


def _load_body(cls, raw: bytes, seq: int) -> dict[str, Any]:
    return _pick_fields(cls, _parse_json(raw, f"{cls.type.name} body", seq), seq, set())


def _pick_fields(cls, obj, seq, extra_ok: set[str]) -> dict[str, Any]:
    """The constructor arguments of ``cls`` from a JSON object; exactly its fields, no others."""
    if not isinstance(obj, dict):
        raise ProtocolError(ErrorCode.MALFORMED, f"{cls.type.name} body is {_short(obj)}; "
                            "expected a JSON object", seq)
    names = [name for name, _ in cls._body_fields()]
    missing = [n for n in names if n not in obj]
    unknown = sorted(set(obj) - set(names) - extra_ok)
    if missing or unknown:
        raise ProtocolError(ErrorCode.MALFORMED, f"{cls.type.name} fields {sorted(obj)} received; expected "
                            f"{names} (missing {missing}, unknown {unknown})", seq)
    return {n: obj[n] for n in names}


def _json_fields(msg: Message) -> dict[str, Any]:
    return {name: (list(getattr(msg, name)) if kind in ("strs", "ints") else getattr(msg, name))
            for name, kind in msg._body_fields()}


# --------------------------------------------------------------------------- JSON fallback


def encode_json(msg: Message) -> str:
    """The JSON-fallback form of ``msg``: one object, bytes as base64."""
    obj: dict[str, Any] = {"v": VERSION, "type": msg.type.name.lower(), "seq": msg.seq}
    for name, kind in msg._body_fields():
        value = getattr(msg, name)
        if kind == "bytes":
            value = base64.b64encode(value).decode("ascii")
        elif kind in ("bounds", "strs", "ints"):
            value = list(value)
        elif isinstance(value, enum.IntEnum):
            value = int(value)
        obj[name] = value
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False)


def encode_as(msg: Message, encoding: str) -> bytes | str:
    """``msg`` in the encoding a HELLO asked for: bytes for "binary", text for "json"."""
    return encode_json(msg) if encoding == "json" else encode(msg)


def decode_json(text: str | bytes, max_size: int = MAX_MESSAGE_BYTES) -> Message:
    """Parse one JSON-fallback message; same error codes as :func:`decode` (no CRC: JSON has none)."""
    raw = text.encode("utf-8") if isinstance(text, str) else bytes(text)
    if len(raw) > max_size:
        raise ProtocolError(ErrorCode.TOO_BIG, f"JSON message of {len(raw)} bytes received; "
                            f"expected at most {max_size}")
    obj = _parse_json(raw, "text", None)
    if not isinstance(obj, dict):
        raise ProtocolError(ErrorCode.MALFORMED, f"JSON {_short(obj)} received; expected a JSON object")
    seq = obj.get("seq")
    seq = seq if isinstance(seq, int) and not isinstance(seq, bool) and 0 <= seq <= 0xFFFF_FFFF else None
    v = obj.get("v")
    if type(v) is not int or v != VERSION:          # true and 1.0 are not the integer 1
        raise ProtocolError(ErrorCode.UNSUPPORTED_VERSION, f"protocol version {_short(obj.get('v'))} received; "
                            f"expected \"v\": {VERSION}", seq)
    name = obj.get("type")
    if name not in _BY_NAME:
        raise ProtocolError(ErrorCode.UNKNOWN_TYPE, f"message type {_short(name)} received; expected one of "
                            f"{', '.join(_BY_NAME)}", seq)
    cls = MESSAGE_CLASSES[_BY_NAME[name]]
    if seq is None:
        raise ProtocolError(ErrorCode.MALFORMED, f"{cls.type.name} seq is {_short(obj.get('seq'))}; "
                            "expected an integer in [0, 4294967295]")
    values = _pick_fields(cls, obj, seq, {"v", "type", "seq"})
    for fname, kind in cls._body_fields():
        if kind == "bytes":
            try:
                values[fname] = base64.b64decode(values[fname], validate=True)
            except (TypeError, ValueError, binascii.Error):
                raise ProtocolError(ErrorCode.MALFORMED, f"{cls.type.name} field {fname} is "
                                    f"{_short(values[fname])}; expected base64 text", seq) from None
    return cls(seq=seq, **values)


# --------------------------------------------------------------------------- PCM


def pcm_to_float32(payload: bytes, sample_format: SampleFormat | int) -> np.ndarray:
    """Decode a PCM payload to mono float32 in [-1, 1] (int16 is divided by 32768).

    ProtocolError(BAD_AUDIO) for an unknown format, a length that is not a
    whole number of samples, or non-finite float32 samples.
    """
    try:
        fmt = SampleFormat(sample_format)
    except ValueError:
        raise ProtocolError(ErrorCode.BAD_AUDIO, f"sample format {sample_format} is unknown; "
                            "expected 1 (int16 LE) or 2 (float32 LE)") from None
    size = SAMPLE_SIZES[fmt]
    if len(payload) % size:
        raise ProtocolError(ErrorCode.BAD_AUDIO, f"PCM payload of {len(payload)} bytes is not a whole number of "
                            f"{fmt.name.lower()} samples; expected a multiple of {size} bytes")
    if fmt is SampleFormat.INT16:
        return np.frombuffer(payload, dtype="<i2").astype(np.float32) / np.float32(32768.0)
    out = np.frombuffer(payload, dtype="<f4").astype(np.float32)
    if not np.isfinite(out).all():
        raise ProtocolError(ErrorCode.BAD_AUDIO, "float32 PCM payload holds NaN or infinity; expected finite samples")
    return out


def float32_to_pcm(samples: np.ndarray, sample_format: SampleFormat | int = SampleFormat.INT16) -> bytes:
    """Encode mono float32 samples as a PCM payload (int16: scaled by 32768, clipped)."""
    samples = np.asarray(samples, dtype=np.float32).reshape(-1)
    if SampleFormat(sample_format) is SampleFormat.INT16:
        return np.clip(np.round(samples * 32768.0), -32768, 32767).astype("<i2").tobytes()
    return samples.astype("<f4").tobytes()
