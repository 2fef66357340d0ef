"""Hostile messages for the protocol fuzz test and the fuzz benchmark: valid client messages mutated.

``messages(seed, n)`` yields ``n`` websocket payloads (bytes for binary frames,
str for text frames), reproducibly. Mutations: flipped bytes (CRC repaired half
the time, so the decoder's inner checks are reached), truncation, extension,
random bytes, wrong lengths declared inside a body, JSON with wrong types,
huge numbers, deep nesting and unknown fields.
"""

from __future__ import annotations

import json
import random
import struct
import zlib
from typing import Iterator

import numpy as np

from runtime.protocol import (AudioChunk, Hello, SampleFormat, StatsRequest, SwitchPackage, WindowRequest, encode,
                              encode_json, float32_to_pcm)


def _seeds(rng: random.Random) -> list:
    pcm16 = float32_to_pcm(np.zeros(640, np.float32))
    return [
        Hello(seq=1),
        Hello(seq=2, encoding="json"),
        AudioChunk(seq=3, pcm=pcm16),
        AudioChunk(seq=4, pcm=float32_to_pcm(np.zeros(1920, np.float32), SampleFormat.FLOAT32),
                   sample_rate=48_000, sample_format=SampleFormat.FLOAT32, package="anchor"),
        WindowRequest(seq=5, frame_id=3, pcm=float32_to_pcm(np.zeros(10_240, np.float32))),
        SwitchPackage(seq=6, package="face1"),
        StatsRequest(seq=7),
    ]


def _with_crc(body: bytes) -> bytes:
    return body + struct.pack("<I", zlib.crc32(body))


def _mutate_binary(rng: random.Random, data: bytes) -> bytes:
    kind = rng.randrange(6)
    body = bytearray(data[:-4])
    if kind == 0:                                     # flip bytes, CRC left wrong
        out = bytearray(data)
        for _ in range(rng.randint(1, 4)):
            out[rng.randrange(len(out))] ^= 1 << rng.randrange(8)
        return bytes(out)
    if kind == 1:                                     # flip bytes, CRC repaired: reaches the body checks
        for _ in range(rng.randint(1, 4)):
            body[rng.randrange(len(body))] = rng.randrange(256)
        return _with_crc(bytes(body))
    if kind == 2:                                     # truncated (CRC repaired or not)
        cut = bytes(body[:rng.randrange(len(body))])
        return _with_crc(cut) if rng.random() < 0.5 else cut
    if kind == 3:                                     # extended with junk
        return _with_crc(bytes(body) + rng.randbytes(rng.randint(1, 64)))
    if kind == 4:                                     # a declared length made huge
        if len(body) > 14:
            pos = rng.randrange(10, len(body) - 3)
            body[pos:pos + 4] = struct.pack("<I", rng.choice([0xFFFF_FFFF, 1 << 20, len(body) + 1]))
        return _with_crc(bytes(body))
    return rng.randbytes(rng.randint(0, 200))         # noise


def _mutate_json(rng: random.Random, text: str) -> str:
    obj = json.loads(text)
    kind = rng.randrange(7)
    key = rng.choice(list(obj))
    if kind == 0:
        obj[key] = rng.choice([None, True, 1.5, -1, 2**70, "x" * rng.randint(0, 300), [], {}, "\u0000"])
    elif kind == 1:
        del obj[key]
    elif kind == 2:
        obj["unexpected"] = rng.random()
    elif kind == 3:                                   # deep nesting: past any recursion limit
        depth = rng.choice([50, 1000, 5000])
        return text[:-1] + ', "deep": ' + "[" * depth + "]" * depth + "}"
    elif kind == 4:
        return text[:rng.randrange(len(text))]        # cut mid-way
    elif kind == 5:
        obj["v"] = rng.choice([True, 1.0, "1", 2, 0])
    else:
        return json.dumps([obj])                      # not an object
    return json.dumps(obj)


def messages(seed: int, n: int) -> Iterator[bytes | str]:
    """``n`` fuzzed client payloads from ``seed``."""
    rng = random.Random(seed)
    seeds = _seeds(rng)
    binary = [encode(m) for m in seeds]
    text = [encode_json(m) for m in seeds]
    for _ in range(n):
        if rng.random() < 0.6:
            yield _mutate_binary(rng, rng.choice(binary))
        else:
            yield _mutate_json(rng, rng.choice(text))
