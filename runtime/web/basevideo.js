// Base frames for the browser client: frame b of a package, exactly, on demand.
//
// A FRAME names the base frame its face crop was rendered for. Pasting the crop on any other
// frame (a neighbour the <video> element happened to be showing) shows a seam, so the page
// decodes the package's video.mp4 itself:
//
//   * the MP4 sample table (moov/trak/stbl) is read with HTTP Range requests: the file is never
//     downloaded whole, and the first frame can be drawn after the moov box and one GOP;
//   * a GOP (key frame up to the next key frame; video.mp4 has one at least every 10 frames) is
//     fetched with one Range request and decoded with WebCodecs' VideoDecoder;
//   * decoded frames are cached per GOP, least recently used out first.
//
// WebCodecs exists only in secure contexts (https://, or http:// on 127.0.0.1 / localhost). Where
// it is missing, or the file is not H.264 in MP4, open() returns a SeekingSource that seeks a
// hidden <video> element instead; its frames are not guaranteed exact and say so (exact: false).
//
// window.LipsyncBase.open(url, {fps, frames}) -> Promise<source>, where source has
//   frame(b)  -> {image, exact} to draw now, or null while frame b is not decoded yet
//   want(b)   start fetching and decoding frame b's GOP (cheap if it is cached or on its way)
//   close()   release the decoder and every decoded frame
//   kind      'webcodecs' or 'video-element'; failed: why decoding stopped (then use seeking())
//   stats     {kind, bytes, fileBytes, decoded, why}
// and window.LipsyncBase.seeking(url, fps, why) makes the fallback directly.
'use strict';

(() => {
  const HEAD_BYTES = 64 * 1024;        // the first read: ftyp + moov of a short package's video.mp4
  const MAX_GOP_BYTES = 16 << 20;       // a GOP bigger than this is not a package's video.mp4
  const CACHE_GOPS = 6;                 // decoded GOPs kept (60 frames at the spec's GOP of 10)

  // ------------------------------------------------------------ HTTP Range reads of one URL
  class RangeReader {
    constructor(url) {
      this.url = url;
      this.size = null;                 // total bytes, from Content-Range
      this.bytes = 0;                   // bytes received so far
      this.whole = null;                // the server ignored Range and sent the whole file
    }

    // bytes [start, end) of the file, or fewer where the file ends first
    async read(start, end) {
      const out = new Uint8Array(end - start);
      let got = 0;
      while (start + got < end) {
        if (this.whole) {
          const part = this.whole.subarray(start + got, end);
          out.set(part, got);
          return out.subarray(0, got + part.length);
        }
        const res = await fetch(this.url, { headers: { Range: `bytes=${start + got}-${end - 1}` } });
        if (res.status === 416) break;                    // past the end
        if (res.status === 200) {
          this.whole = new Uint8Array(await res.arrayBuffer());
          this.size = this.whole.length;
          this.bytes += this.size;
          continue;
        }
        if (res.status !== 206) throw new Error(`HTTP ${res.status} for bytes ${start + got}-${end - 1}`);
        const total = /\/(\d+)\s*$/.exec(res.headers.get('Content-Range') || '');
        if (total) this.size = Number(total[1]);
        const part = new Uint8Array(await res.arrayBuffer());
        if (!part.length) break;
        this.bytes += part.length;
        out.set(part.subarray(0, end - start - got), got);      // a server may answer less: ask again
        got += part.length;
        if (this.size !== null && start + got >= this.size) break;
      }
      return out.subarray(0, Math.min(got, end - start));
    }
  }

  // ------------------------------------------------------------ MP4 boxes (ISO/IEC 14496-12)
  const fourcc = (u8, o) => String.fromCharCode(u8[o], u8[o + 1], u8[o + 2], u8[o + 3]);
  const view = (u8) => new DataView(u8.buffer, u8.byteOffset, u8.byteLength);

  // the boxes in u8[start, end): [{type, start (of the payload), end}]
  function boxes(u8, start, end) {
    const dv = view(u8), out = [];
    for (let o = start; o + 8 <= end;) {
      let size = dv.getUint32(o), header = 8;
      if (size === 1) {
        size = Number(dv.getBigUint64(o + 8));
        header = 16;
      } else if (size === 0) {
        size = end - o;
      }
      if (size < header || o + size > end) throw new Error(`damaged MP4: box '${fourcc(u8, o + 4)}' at ${o}`);
      out.push({ type: fourcc(u8, o + 4), start: o + header, end: o + size });
      o += size;
    }
    return out;
  }
  const child = (u8, box, type) => (box && boxes(u8, box.start, box.end).find((b) => b.type === type)) || null;

  // The moov box, found by walking the top-level box headers (one small read per box after
  // the first 64 KiB). Returns {u8, box} with box offsets into u8.
  async function readMoov(reader) {
    const head = await reader.read(0, HEAD_BYTES);
    for (let o = 0, n = 0; n < 100; n++) {
      const hdr = o + 16 <= head.length ? head.subarray(o, o + 16) : await reader.read(o, o + 16);
      if (hdr.length < 8) break;
      const dv = view(hdr);
      let size = dv.getUint32(0), header = 8;
      if (size === 1) {
        size = Number(dv.getBigUint64(8));
        header = 16;
      } else if (size === 0) {
        size = (reader.size ?? o + 8) - o;
      }
      if (size < header) break;
      if (fourcc(hdr, 4) === 'moov') {
        const u8 = o + size <= head.length ? head.subarray(o, o + size) : await reader.read(o, o + size);
        if (u8.length < size) throw new Error('the file ends inside its moov box');
        return { u8, box: { start: header, end: size } };
      }
      o += size;
      if (reader.size !== null && o >= reader.size) break;
    }
    throw new Error('no moov box: not an MP4 file');
  }

  // The video track's sample table: per sample (decode order) its file offset, size, whether
  // it is a key frame and which frame (presentation order) it shows.
  function sampleTable(u8, moov) {
    const dv = view(u8);
    const u32 = (o) => dv.getUint32(o);
    for (const trak of boxes(u8, moov.start, moov.end).filter((b) => b.type === 'trak')) {
      const mdia = child(u8, trak, 'mdia');
      const hdlr = child(u8, mdia, 'hdlr');
      if (!hdlr || fourcc(u8, hdlr.start + 8) !== 'vide') continue;
      const stbl = child(u8, child(u8, mdia, 'minf'), 'stbl');
      const need = (type) => {
        const b = child(u8, stbl, type);
        if (!b) throw new Error(`the video track has no '${type}' box`);
        return b;
      };

      const stsd = need('stsd');
      const entry = boxes(u8, stsd.start + 8, stsd.end)[0];
      if (!entry || (entry.type !== 'avc1' && entry.type !== 'avc3')) {
        throw new Error(`the video is '${entry && entry.type}', and this page decodes H.264 (avc1) only`);
      }
      const width = dv.getUint16(entry.start + 24), height = dv.getUint16(entry.start + 26);
      const avcC = child(u8, { start: entry.start + 78, end: entry.end }, 'avcC');
      if (!avcC) throw new Error('the H.264 track has no avcC box');
      const description = u8.slice(avcC.start, avcC.end);
      const hex = (v) => v.toString(16).padStart(2, '0');
      const codec = `avc1.${hex(description[1])}${hex(description[2])}${hex(description[3])}`;

      const stsz = need('stsz');
      const fixed = u32(stsz.start + 4), n = u32(stsz.start + 8);
      const size = new Uint32Array(n);
      for (let i = 0; i < n; i++) size[i] = fixed || u32(stsz.start + 12 + 4 * i);

      const co64 = child(u8, stbl, 'co64'), stco = co64 || need('stco');
      const chunks = u32(stco.start + 4);
      const chunkAt = (c) => (co64 ? Number(dv.getBigUint64(stco.start + 8 + 8 * c)) : u32(stco.start + 8 + 4 * c));
      const offset = new Float64Array(n);
      const stsc = need('stsc'), runs = u32(stsc.start + 4);
      for (let r = 0, s = 0; r < runs; r++) {
        const at = stsc.start + 8 + 12 * r;
        const first = u32(at) - 1, perChunk = u32(at + 4);
        const last = r + 1 < runs ? u32(at + 12) - 1 : chunks;
        for (let c = first; c < last && s < n; c++) {
          let off = chunkAt(c);
          for (let k = 0; k < perChunk && s < n; k++, s++) {
            offset[s] = off;
            off += size[s];
          }
        }
      }

      const pts = new Float64Array(n);                  // decode time + composition offset
      const stts = need('stts');
      for (let e = 0, s = 0, t = 0, m = u32(stts.start + 4); e < m; e++) {
        const count = u32(stts.start + 8 + 8 * e), delta = u32(stts.start + 12 + 8 * e);
        for (let k = 0; k < count && s < n; k++, s++, t += delta) pts[s] = t;
      }
      const ctts = child(u8, stbl, 'ctts');
      if (ctts) {
        for (let e = 0, s = 0, m = u32(ctts.start + 4); e < m; e++) {
          const count = u32(ctts.start + 8 + 8 * e), shift = dv.getInt32(ctts.start + 12 + 8 * e);
          for (let k = 0; k < count && s < n; k++, s++) pts[s] += shift;
        }
      }
      const key = new Uint8Array(n);
      const stss = child(u8, stbl, 'stss');
      if (stss) {
        for (let e = 0, m = u32(stss.start + 4); e < m; e++) key[u32(stss.start + 8 + 4 * e) - 1] = 1;
      } else {
        key.fill(1);
      }
      key[0] = 1;

      // frame f of the video is the f-th sample in presentation order
      const order = Array.from({ length: n }, (_, i) => i).sort((a, b) => pts[a] - pts[b]);
      const frameOf = new Uint32Array(n), sampleOf = new Uint32Array(n);
      order.forEach((s, f) => { frameOf[s] = f; sampleOf[f] = s; });
      return { codec, description, width, height, n, offset, size, key, frameOf, sampleOf };
    }
    throw new Error('the MP4 has no video track');
  }

  // ------------------------------------------------------------ exact frames with WebCodecs
  class DecodedSource {
    constructor(reader, table) {
      this.kind = 'webcodecs';
      this.reader = reader;
      this.t = table;
      this.cache = new Map();           // GOP (its key sample) -> {frames: Map(frame -> VideoFrame), used}
      this.pending = new Set();         // GOPs queued or decoding
      this.queue = Promise.resolve();   // decodes run one after another on one decoder
      this.collecting = null;           // the frame map of the GOP being decoded
      this.decoded = 0;
      this.failed = null;
      this.closed = false;
      this.decoder = this.newDecoder();
    }

    get stats() {
      return { kind: this.kind, bytes: this.reader.bytes, fileBytes: this.reader.size, decoded: this.decoded,
        why: this.failed };
    }

    newDecoder() {
      const dec = new VideoDecoder({
        output: (vf) => {
          const f = Math.round(vf.timestamp / 1000);
          if (this.collecting && !this.closed) {
            this.collecting.set(f, vf);
            this.decoded++;
          } else {
            vf.close();
          }
        },
        error: (err) => { this.failed = `decoder: ${err.message}`; },
      });
      dec.configure({ codec: this.t.codec, codedWidth: this.t.width, codedHeight: this.t.height,
        description: this.t.description, optimizeForLatency: true });
      return dec;
    }

    // the key sample that starts the GOP holding frame f, and the key sample after it
    gop(f) {
      const { key, sampleOf, n } = this.t;
      let s = sampleOf[Math.max(0, Math.min(n - 1, f))];
      while (s > 0 && !key[s]) s--;
      let end = s + 1;
      while (end < n && !key[end]) end++;
      return [s, end];
    }

    frame(f) {
      const entry = this.cache.get(this.gop(f)[0]);
      const vf = entry && entry.frames.get(f);
      if (!vf) return null;
      entry.used = performance.now();
      return { image: vf, exact: true };
    }

    want(f) {
      if (this.closed || f < 0 || f >= this.t.n) return;
      const [g, end] = this.gop(f);
      if (this.cache.has(g) || this.pending.has(g)) return;
      this.pending.add(g);
      this.queue = this.queue.then(() => this.decodeGop(g, end)).catch((err) => {
        this.failed = err.message;
        console.warn(`lipsync base video: GOP at sample ${g}: ${err.message}`);
      }).finally(() => this.pending.delete(g));
    }

    async decodeGop(g, end) {
      if (this.closed) return;
      const { offset, size, key, frameOf } = this.t;
      let lo = Infinity, hi = 0;
      for (let s = g; s < end; s++) {
        lo = Math.min(lo, offset[s]);
        hi = Math.max(hi, offset[s] + size[s]);
      }
      if (hi - lo > MAX_GOP_BYTES) throw new Error(`a GOP of ${((hi - lo) / 1e6).toFixed(0)} MB is too big to fetch`);
      const bytes = await this.reader.read(lo, hi);
      if (bytes.length < hi - lo) throw new Error('the file ends inside a GOP');
      if (this.closed) return;
      if (this.decoder.state === 'closed') this.decoder = this.newDecoder();   // after a decode error
      const entry = { frames: new Map(), used: performance.now() };
      this.collecting = entry.frames;
      try {
        for (let s = g; s < end; s++) {
          this.decoder.decode(new EncodedVideoChunk({ type: key[s] ? 'key' : 'delta', timestamp: frameOf[s] * 1000,
            data: bytes.subarray(offset[s] - lo, offset[s] - lo + size[s]) }));
        }
        await this.decoder.flush();
      } finally {
        this.collecting = null;
      }
      if (this.closed) {
        entry.frames.forEach((vf) => vf.close());
        return;
      }
      this.cache.set(g, entry);
      this.evict();
    }

    evict() {
      while (this.cache.size > CACHE_GOPS) {
        let oldest = null;
        for (const [g, e] of this.cache) if (!oldest || e.used < oldest[1].used) oldest = [g, e];
        oldest[1].frames.forEach((vf) => vf.close());
        this.cache.delete(oldest[0]);
      }
    }

    close() {
      this.closed = true;
      this.cache.forEach((e) => e.frames.forEach((vf) => vf.close()));
      this.cache.clear();
      if (this.decoder.state !== 'closed') this.decoder.close();
    }
  }

  // ------------------------------------------------------------ fallback: a seeking <video>
  // One seek at a time, aimed at the newest wanted frame; frame(b) returns whatever the element
  // shows, exact only when that is frame b.
  class SeekingSource {
    constructor(url, fps, why) {
      this.kind = 'video-element';
      this.why = why;
      this.fps = fps;
      this.shown = -1;
      this.target = -1;
      this.next = -1;
      this.ready = false;
      const v = this.video = document.createElement('video');
      v.muted = true;
      v.preload = 'auto';
      v.playsInline = true;
      v.addEventListener('loadeddata', () => { this.ready = true; this.seek(); });
      v.addEventListener('seeked', () => { this.shown = this.target; this.seek(); });
      v.src = url;                                        // the element streams it with Range requests
    }

    get stats() { return { kind: this.kind, bytes: null, fileBytes: null, decoded: null, why: this.why }; }

    seek() {
      if (!this.ready || this.video.seeking || this.next < 0 || this.next === this.shown) return;
      this.target = this.next;
      this.video.currentTime = (this.target + 0.5) / this.fps;      // mid-frame: no rounding onto a neighbour
    }

    want(f) { this.next = f; this.seek(); }

    frame(f) {
      if (!this.ready || this.video.readyState < 2) return null;
      return { image: this.video, exact: this.shown === f && !this.video.seeking };
    }

    close() { this.video.removeAttribute('src'); this.video.load(); }
  }

  async function open(url, { fps }) {
    if (typeof VideoDecoder === 'undefined') {
      return new SeekingSource(url, fps, isSecureContext ? 'this browser has no WebCodecs'
        : 'WebCodecs needs a secure page (https://, or http://127.0.0.1)');
    }
    try {
      const reader = new RangeReader(url);
      const moov = await readMoov(reader);
      const table = sampleTable(moov.u8, moov.box);
      const support = await VideoDecoder.isConfigSupported({ codec: table.codec, codedWidth: table.width,
        codedHeight: table.height, description: table.description });
      if (!support.supported) throw new Error(`this browser cannot decode ${table.codec}`);
      return new DecodedSource(reader, table);
    } catch (err) {
      return new SeekingSource(url, fps, err.message);
    }
  }

  window.LipsyncBase = { open, seeking: (url, fps, why) => new SeekingSource(url, fps, why) };
})();
