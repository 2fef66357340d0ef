// The binary protocol of docs/protocol.md, for the browser: CRC32, the messages this page
// sends (HELLO, SWITCH_PACKAGE, AUDIO_CHUNK) and a decoder for what the server sends (FRAME,
// CAPABILITIES, STATS, ERROR). Sans I/O, like runtime/protocol.py; tests/runtime/test_browser.py
// checks it against the golden bytes of the spec.
//
// window.LipsyncProtocol = { MAGIC, VERSION, T, ERROR_NAMES, crc32, encodeJson, encodeSwitch,
//                            encodeAudio, decode }
'use strict';

(() => {
  // ------------------------------------------------------------ constants
  const MAGIC = [0x4c, 0x53, 0x59, 0x4e];              // "LSYN"
  const VERSION = 1;
  const T = { HELLO: 1, CAPABILITIES: 2, AUDIO_CHUNK: 3, FRAME: 5, SWITCH_PACKAGE: 6, STATS: 8, ERROR: 9 };
  const ERROR_NAMES = { 1: 'MALFORMED', 2: 'BAD_CRC', 3: 'UNKNOWN_TYPE', 4: 'UNKNOWN_PACKAGE', 5: 'TOO_BIG',
    6: 'UNSUPPORTED_VERSION', 7: 'BAD_AUDIO', 9: 'INTERNAL' };   // 8 and 10: reserved, never sent

  // ------------------------------------------------------------ CRC32 (zlib's, table driven)
  const CRC_TABLE = new Uint32Array(256);
  for (let n = 0; n < 256; n++) {
    let c = n;
    for (let k = 0; k < 8; k++) c = c & 1 ? 0xEDB88320 ^ (c >>> 1) : c >>> 1;
    CRC_TABLE[n] = c >>> 0;
  }
  function crc32(bytes, end) {
    let c = 0xFFFFFFFF;
    for (let i = 0; i < end; i++) c = CRC_TABLE[(c ^ bytes[i]) & 0xFF] ^ (c >>> 8);
    return (c ^ 0xFFFFFFFF) >>> 0;
  }

  // ------------------------------------------------------------ encode / decode
  const utf8 = new TextEncoder();
  const utf8d = new TextDecoder('utf-8', { fatal: true });

  // header (10 bytes) + body (bodyLen bytes, written by fill) + CRC32 of everything before it
  function message(type, seq, bodyLen, fill) {
    const buf = new ArrayBuffer(14 + bodyLen);
    const dv = new DataView(buf), u8 = new Uint8Array(buf);
    u8.set(MAGIC, 0);
    dv.setUint8(4, VERSION);
    dv.setUint8(5, type);
    dv.setUint32(6, seq >>> 0, true);
    fill(dv, u8, 10);
    dv.setUint32(10 + bodyLen, crc32(u8, 10 + bodyLen), true);
    return buf;
  }
  const encodeJson = (type, seq, obj) => {
    const b = utf8.encode(JSON.stringify(obj));
    return message(type, seq, 4 + b.length, (dv, u8, o) => { dv.setUint32(o, b.length, true); u8.set(b, o + 4); });
  };
  const encodeSwitch = (seq, name) => {
    const b = utf8.encode(name);
    return message(T.SWITCH_PACKAGE, seq, 1 + b.length, (dv, u8, o) => { dv.setUint8(o, b.length); u8.set(b, o + 1); });
  };
  // AUDIO_CHUNK: rate, format 1 (int16), package name ('' = the session's package), PCM (Int16Array)
  function encodeAudio(seq, pcm, rate, pkg = '') {
    const name = utf8.encode(pkg);
    return message(T.AUDIO_CHUNK, seq, 10 + name.length + 2 * pcm.length, (dv, u8, o) => {
      dv.setUint32(o, rate, true);
      dv.setUint8(o + 4, 1);
      dv.setUint8(o + 5, name.length);
      u8.set(name, o + 6);
      const at = o + 6 + name.length;
      dv.setUint32(at, 2 * pcm.length, true);
      for (let i = 0; i < pcm.length; i++) dv.setInt16(at + 4 + 2 * i, pcm[i], true);
    });
  }

  function decode(buf) {
    const u8 = new Uint8Array(buf), dv = new DataView(buf), n = u8.length;
    if (n < 14 || MAGIC.some((m, i) => u8[i] !== m)) throw new Error(`not a protocol message (${n} bytes)`);
    if (u8[4] !== VERSION) throw new Error(`protocol version ${u8[4]}; this client speaks ${VERSION}`);
    if (dv.getUint32(n - 4, true) !== crc32(u8, n - 4)) throw new Error(`CRC32 mismatch on a ${n}-byte message`);
    const type = u8[5], seq = dv.getUint32(6, true), end = n - 4;
    let o = 10;
    const take = (k) => {
      if (o + k > end) throw new Error(`message type ${type} is cut short`);
      const at = o; o += k; return at;
    };
    let msg;
    if (type === T.FRAME) {
      const at = take(29);
      msg = { type, seq, status: u8[at], base: dv.getUint32(at + 1, true), us: dv.getUint32(at + 5, true),
        bounds: [0, 1, 2, 3].map((i) => dv.getInt32(at + 9 + 4 * i, true)) };
      const len = dv.getUint32(at + 25, true);
      msg.jpeg = u8.subarray(take(len), o);
    } else if (type === T.CAPABILITIES || type === T.STATS) {
      const len = dv.getUint32(take(4), true);
      msg = { type, seq, body: JSON.parse(utf8d.decode(u8.subarray(take(len), o))) };
    } else if (type === T.ERROR) {
      const at = take(4);
      const code = dv.getUint16(at, true), len = dv.getUint16(at + 2, true);
      msg = { type, seq, code, text: utf8d.decode(u8.subarray(take(len), o)) };
    } else {
      throw new Error(`unexpected message type ${type} from the server`);
    }
    if (o !== end) throw new Error(`message type ${type} has ${end - o} stray bytes before its CRC`);
    return msg;
  }

  window.LipsyncProtocol = { MAGIC, VERSION, T, ERROR_NAMES, crc32, encodeJson, encodeSwitch, encodeAudio, decode };
})();
