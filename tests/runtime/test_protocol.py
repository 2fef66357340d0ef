"""runtime.protocol: round trips, golden bytes pinned in docs/protocol.md, and every decode error code."""

import json
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest

from runtime.errors import LipsyncError
from runtime.protocol import (
    MAX_MESSAGE_BYTES, NO_SEQ, AudioChunk, Capabilities, Error, ErrorCode, Frame, FrameStatus, Hello,
    MessageType, ProtocolError, SampleFormat, Stats, StatsRequest, SwitchPackage, WindowRequest, decode,
    decode_json, encode, encode_json, error_reply, float32_to_pcm, pcm_to_float32,
)

DOC = Path(__file__).resolve().parents[2] / "docs" / "protocol.md"
PCM4 = np.array([0, 1, -1, 32767], dtype="<i2").tobytes()
GOLDEN_CHUNK = "4c53594e010307000000803e00000106616e63686f720800000000000100ffffff7f4d090752"
GOLDEN_FRAME = ("4c53594e010507000000007b000000342100006400000050000000e4000000d000000004000000"
                "ffd8ffd946b16fbc")
GOLDEN_CHUNK_JSON = ('{"v":1,"type":"audio_chunk","seq":7,"sample_rate":16000,"sample_format":1,'
                     '"package":"anchor","pcm":"AAABAP///38="}')

MESSAGES = [
    Hello(seq=0, client="lipsync-client", version="0.1.0", encoding="json"),
    Capabilities(seq=0, packages=("anchor", "Ünïcode-pkg")),
    AudioChunk(seq=7, sample_rate=16000, sample_format=SampleFormat.INT16, package="anchor", pcm=PCM4),
    AudioChunk(seq=8, sample_rate=48000, sample_format=SampleFormat.FLOAT32, package="",
               pcm=np.linspace(-1, 1, 1920, dtype="<f4").tobytes()),
    WindowRequest(seq=0xFFFF_FFFE, frame_id=4242, sample_rate=24000, sample_format=1, package="anchor",
                  pcm=bytes(range(256)) * 4),
    Frame(seq=7, status=FrameStatus.OK, base_frame=123, server_us=8500, bounds=(100, 80, 228, 208),
          jpeg=b"\xff\xd8\xff\xd9"),
    Frame(seq=9, status=FrameStatus.IDLE, base_frame=0, server_us=0, bounds=(-5, -6, 2_000_000, 7), jpeg=b""),
    SwitchPackage(seq=3, package="other.pkg_2"),
    StatsRequest(seq=4),
    Stats(seq=4, stats={"frames": 12, "mean_server_us": 8123.5, "packages": ["anchor"]}),
    Error(seq=NO_SEQ, code=ErrorCode.UNKNOWN_PACKAGE, text="package 'x' received; expected one of anchor"),
]


def recrc(data: bytes) -> bytes:
    """Replace the trailing CRC32 so that a deliberately broken message gets past the CRC check."""
    body = bytes(data[:-4])
    return body + struct.pack("<I", zlib.crc32(body))


def code_of(fn, *args, **kwargs) -> ProtocolError:
    with pytest.raises(ProtocolError) as info:
        fn(*args, **kwargs)
    return info.value


@pytest.mark.parametrize("msg", MESSAGES, ids=lambda m: f"{m.type.name}-{m.seq}")
def test_binary_round_trip(msg):
    data = encode(msg)
    assert data[:4] == b"LSYN" and data[4] == 1 and data[5] == msg.type
    assert struct.unpack_from("<I", data, len(data) - 4)[0] == zlib.crc32(data[:-4])
    back = decode(data)
    assert type(back) is type(msg) and back == msg
    assert decode(bytearray(data)) == msg and decode(memoryview(data)) == msg


@pytest.mark.parametrize("msg", MESSAGES, ids=lambda m: f"{m.type.name}-{m.seq}")
def test_json_round_trip(msg):
    text = encode_json(msg)
    obj = json.loads(text)
    assert obj["v"] == 1 and obj["type"] == msg.type.name.lower() and obj["seq"] == msg.seq
    back = decode_json(text)
    assert type(back) is type(msg) and back == msg
    assert decode_json(text.encode("utf-8")) == msg
    assert decode(encode(decode_json(text))) == msg          # both encodings carry the same fields


def test_every_type_covered():
    assert {m.type for m in MESSAGES} == set(MessageType)
    assert [t.value for t in MessageType] == list(range(1, 10))
    assert [c.value for c in ErrorCode] == [1, 2, 3, 4, 5, 6, 7, 9]        # 8 and 10 are reserved


def test_golden_audio_chunk():
    msg = AudioChunk(seq=7, sample_rate=16000, sample_format=SampleFormat.INT16, package="anchor", pcm=PCM4)
    assert encode(msg).hex() == GOLDEN_CHUNK
    assert decode(bytes.fromhex(GOLDEN_CHUNK)) == msg
    assert encode_json(msg) == GOLDEN_CHUNK_JSON
    doc = DOC.read_text(encoding="utf-8")
    assert GOLDEN_CHUNK in doc and GOLDEN_CHUNK_JSON in doc


def test_golden_frame():
    msg = Frame(seq=7, status=FrameStatus.OK, base_frame=123, server_us=8500, bounds=(100, 80, 228, 208),
                jpeg=b"\xff\xd8\xff\xd9")
    assert encode(msg).hex() == GOLDEN_FRAME
    assert decode(bytes.fromhex(GOLDEN_FRAME)) == msg
    assert GOLDEN_FRAME in DOC.read_text(encoding="utf-8")


def test_doc_lists_every_type_and_code():
    doc = DOC.read_text(encoding="utf-8")
    for t in MessageType:
        assert f"| {t.value} | {t.name} |" in doc
    for c in ErrorCode:
        assert f"| {c.value} | {c.name} |" in doc


@pytest.mark.parametrize("pos", range(5, len(bytes.fromhex(GOLDEN_CHUNK))))
def test_flipped_byte_is_bad_crc(pos):
    data = bytearray.fromhex(GOLDEN_CHUNK)
    data[pos] ^= 0x01
    err = code_of(decode, bytes(data))
    assert err.code == ErrorCode.BAD_CRC and "CRC32" in str(err)


def test_error_is_a_lipsync_error_with_seq():
    data = bytearray.fromhex(GOLDEN_FRAME)
    data[20] ^= 0xFF
    err = code_of(decode, bytes(data))
    assert isinstance(err, LipsyncError) and err.exit_code == 6
    assert err.seq == 7 and "(seq 7)" in str(err) and "\n" not in str(err)
    reply = error_reply(err)
    assert reply == Error(seq=7, code=ErrorCode.BAD_CRC, text=str(err))
    assert error_reply(code_of(decode, b"junk")).seq == NO_SEQ


def test_bad_magic():
    data = bytearray.fromhex(GOLDEN_CHUNK)
    data[0:4] = b"LSYX"
    err = code_of(decode, recrc(data))
    assert err.code == ErrorCode.MALFORMED and err.seq is None and "LSYX" in str(err)


@pytest.mark.parametrize("n", [0, 1, 9, 13])
def test_shorter_than_header_and_crc(n):
    err = code_of(decode, bytes.fromhex(GOLDEN_CHUNK)[:n])
    assert err.code == ErrorCode.MALFORMED and f"{n} bytes" in str(err)


def test_truncated_message_fails_crc():
    assert code_of(decode, bytes.fromhex(GOLDEN_CHUNK)[:-3]).code == ErrorCode.BAD_CRC


def test_truncated_fixed_field_is_malformed():
    data = bytes.fromhex(GOLDEN_FRAME)[:20] + b"\0\0\0\0"       # header + part of FRAME's fixed fields
    err = code_of(decode, recrc(data))
    assert err.code == ErrorCode.MALFORMED and err.seq == 7


def test_declared_length_beyond_message_is_too_big():
    data = bytearray.fromhex(GOLDEN_CHUNK)
    struct.pack_into("<I", data, 22, 9)                          # PCM length 9, only 8 bytes follow
    err = code_of(decode, recrc(data))
    assert err.code == ErrorCode.TOO_BIG and err.seq == 7 and "9 bytes" in str(err)
    data = bytearray.fromhex(GOLDEN_CHUNK)
    data[15] = 200                                               # package name length 200
    assert code_of(decode, recrc(data)).code == ErrorCode.TOO_BIG


def test_trailing_bytes_are_malformed():
    data = bytes.fromhex(GOLDEN_CHUNK)[:-4] + b"\0\0"
    assert code_of(decode, recrc(data + b"\0\0\0\0")).code == ErrorCode.MALFORMED


def test_unknown_type():
    data = bytearray.fromhex(GOLDEN_CHUNK)
    for t in (0, 10, 255):
        data[5] = t
        err = code_of(decode, recrc(data))
        assert err.code == ErrorCode.UNKNOWN_TYPE and err.seq == 7 and f"type {t}" in str(err)


@pytest.mark.parametrize("version", [0, 2, 255])
def test_other_version(version):
    data = bytearray.fromhex(GOLDEN_CHUNK)
    data[4] = version
    err = code_of(decode, bytes(data))                          # rejected before the CRC is looked at
    assert err.code == ErrorCode.UNSUPPORTED_VERSION and f"version {version}" in str(err)


def test_oversized_checked_before_parsing():
    data = bytes.fromhex(GOLDEN_CHUNK)
    err = code_of(decode, data, max_size=len(data) - 1)
    assert err.code == ErrorCode.TOO_BIG and err.seq == 7
    assert decode(data, max_size=len(data)).seq == 7
    huge = b"garbage" * (MAX_MESSAGE_BYTES // 7 + 1)             # never parsed, so no MALFORMED
    assert code_of(decode, huge).code == ErrorCode.TOO_BIG
    big = AudioChunk(seq=1, sample_rate=16000, package="anchor", pcm=bytes(MAX_MESSAGE_BYTES))
    assert code_of(encode, big).code == ErrorCode.TOO_BIG
    assert decode(encode(big, max_size=2 * MAX_MESSAGE_BYTES), max_size=2 * MAX_MESSAGE_BYTES) == big
    assert code_of(decode_json, encode_json(big)).code == ErrorCode.TOO_BIG


def test_bad_audio_fields():
    data = bytearray.fromhex(GOLDEN_CHUNK)
    struct.pack_into("<I", data, 10, 44100)
    err = code_of(decode, recrc(data))
    assert err.code == ErrorCode.BAD_AUDIO and "44100" in str(err) and err.seq == 7
    data = bytearray.fromhex(GOLDEN_CHUNK)
    data[14] = 3
    assert code_of(decode, recrc(data)).code == ErrorCode.BAD_AUDIO
    with pytest.raises(ProtocolError) as info:
        WindowRequest(seq=1, frame_id=0, sample_rate=16000, sample_format=SampleFormat.FLOAT32, pcm=b"\0" * 6)
    assert info.value.code == ErrorCode.BAD_AUDIO


def test_malformed_fields():
    with pytest.raises(ProtocolError) as info:
        AudioChunk(seq=1, package="x" * 65, pcm=b"")
    assert info.value.code == ErrorCode.MALFORMED
    for bad in (dict(seq=-1), dict(seq=1 << 32), dict(seq=True)):
        assert code_of(StatsRequest, **bad).code == ErrorCode.MALFORMED
    assert code_of(SwitchPackage, seq=1, package="").code == ErrorCode.MALFORMED
    assert code_of(Hello, seq=1, client="c", version="1", encoding="xml").code == ErrorCode.MALFORMED
    data = bytearray(encode(SwitchPackage(seq=5, package="ab")))
    data[11] = 0xFF                                              # not UTF-8
    err = code_of(decode, recrc(data))
    assert err.code == ErrorCode.MALFORMED and err.seq == 5
    hello = bytearray(encode(Hello(seq=2, client="c", version="1")))
    body = b'{"client":"c"}'
    bad = bytes(hello[:10]) + struct.pack("<I", len(body)) + body + b"\0\0\0\0"
    assert code_of(decode, recrc(bad)).code == ErrorCode.MALFORMED


def test_unknown_error_code_survives():
    msg = decode(encode(Error(seq=1, code=999, text="from the future")))
    assert msg.code == 999 and not isinstance(msg.code, ErrorCode)


def test_reserved_error_codes_are_never_named():
    assert "| 8 | | reserved |" in DOC.read_text(encoding="utf-8")
    msg = decode(encode(Error(seq=1, code=8, text="an old draft's OVERLOADED")))
    assert msg.code == 8 and not isinstance(msg.code, ErrorCode)


def test_json_equal_objects_and_errors():
    msg = decode_json(GOLDEN_CHUNK_JSON)
    assert msg == decode(bytes.fromhex(GOLDEN_CHUNK))
    obj = json.loads(GOLDEN_CHUNK_JSON)
    assert code_of(decode_json, "{not json").code == ErrorCode.MALFORMED
    assert code_of(decode_json, "[1, 2]").code == ErrorCode.MALFORMED
    assert code_of(decode_json, json.dumps({**obj, "v": 2})).code == ErrorCode.UNSUPPORTED_VERSION
    err = code_of(decode_json, json.dumps({**obj, "type": "teleport"}))
    assert err.code == ErrorCode.UNKNOWN_TYPE and err.seq == 7
    assert code_of(decode_json, json.dumps({**obj, "type": "AUDIO_CHUNK"})).code == ErrorCode.UNKNOWN_TYPE
    assert code_of(decode_json, json.dumps({**obj, "pcm": "***"})).code == ErrorCode.MALFORMED
    assert code_of(decode_json, json.dumps({**obj, "extra": 1})).code == ErrorCode.MALFORMED
    assert code_of(decode_json, json.dumps({k: v for k, v in obj.items() if k != "package"})).code \
        == ErrorCode.MALFORMED
    assert code_of(decode_json, json.dumps({**obj, "seq": "7"})).code == ErrorCode.MALFORMED
    assert code_of(decode_json, json.dumps({**obj, "sample_rate": 8000})).code == ErrorCode.BAD_AUDIO
    assert code_of(decode_json, json.dumps({**obj, "pcm": "AAAA"})).code == ErrorCode.BAD_AUDIO  # 3 bytes
    assert code_of(decode_json, json.dumps({**obj, "sample_rate": 1.5})).code == ErrorCode.MALFORMED


def test_pcm_to_float32_int16():
    out = pcm_to_float32(PCM4, SampleFormat.INT16)
    assert out.dtype == np.float32 and out.shape == (4,)
    np.testing.assert_array_equal(out, np.array([0, 1, -1, 32767], np.float32) / 32768)
    assert pcm_to_float32(b"", 1).shape == (0,)
    assert code_of(pcm_to_float32, PCM4[:3], 1).code == ErrorCode.BAD_AUDIO
    x = np.array([0.0, 0.5, -0.5, -1.0], np.float32)
    np.testing.assert_array_equal(pcm_to_float32(float32_to_pcm(x, 1), 1), x)


def test_pcm_to_float32_float32():
    x = np.array([0.0, 0.25, -1.0, 0.999], np.float32)
    payload = x.astype("<f4").tobytes()
    np.testing.assert_array_equal(pcm_to_float32(payload, SampleFormat.FLOAT32), x)
    np.testing.assert_array_equal(pcm_to_float32(float32_to_pcm(x, 2), 2), x)
    for bad in (payload[:-1], payload[:6]):
        assert code_of(pcm_to_float32, bad, 2).code == ErrorCode.BAD_AUDIO
    assert code_of(pcm_to_float32, np.array([np.nan], "<f4").tobytes(), 2).code == ErrorCode.BAD_AUDIO
    assert code_of(pcm_to_float32, payload, 3).code == ErrorCode.BAD_AUDIO


@pytest.mark.parametrize("depth", [1000, 100_000])
def test_deeply_nested_json_is_malformed_not_a_crash(depth):
    from runtime.protocol import ErrorCode, ProtocolError, decode, decode_json

    nested = "[" * depth + "]" * depth
    with pytest.raises(ProtocolError) as err:                  # a text message
        decode_json('{"v": 1, "type": "stats_request", "seq": 3, "x": ' + nested + "}")
    assert err.value.code == ErrorCode.MALFORMED and "nested" in str(err.value)
    body = ('{"client": "c", "version": "1", "encoding": ' + nested + "}").encode()
    head = struct.pack("<4sBBI", b"LSYN", 1, 1, 9) + struct.pack("<I", len(body)) + body
    with pytest.raises(ProtocolError) as err:                  # a binary HELLO's JSON body
        decode(head + struct.pack("<I", zlib.crc32(head)))
    assert err.value.code == ErrorCode.MALFORMED and err.value.seq == 9


@pytest.mark.parametrize("v", ["true", "1.0", '"1"'])
def test_json_version_must_be_the_integer_1(v):
    from runtime.protocol import ErrorCode, ProtocolError, decode_json

    with pytest.raises(ProtocolError) as err:
        decode_json('{"v": ' + v + ', "type": "stats_request", "seq": 3}')
    assert err.value.code == ErrorCode.UNSUPPORTED_VERSION and err.value.seq == 3
