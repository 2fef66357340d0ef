// lipsync-serve browser client.
//
// Audio (microphone or a WAV file) is cut into 40 ms chunks of 24 kHz int16 and streamed as
// AUDIO_CHUNK over the binary protocol of docs/protocol.md; every FRAME that comes back is
// painted as the package's base video frame with the returned face crop pasted on top.
// Plain JS, no build step, no external URLs. Query options: ?token=T, ?autostart=mic.
'use strict';

(() => {
  // ------------------------------------------------------------ protocol constants
  const MAGIC = [0x4c, 0x53, 0x59, 0x4e];              // "LSYN"
  const VERSION = 1;
  const T = { HELLO: 1, CAPABILITIES: 2, AUDIO_CHUNK: 3, FRAME: 5, SWITCH_PACKAGE: 6, STATS: 8, ERROR: 9 };
  const ERROR_NAMES = { 1: 'MALFORMED', 2: 'BAD_CRC', 3: 'UNKNOWN_TYPE', 4: 'UNKNOWN_PACKAGE', 5: 'TOO_BIG',
    6: 'UNSUPPORTED_VERSION', 7: 'BAD_AUDIO', 9: 'INTERNAL' };   // 8 and 10: reserved, never sent
  const RATE = 24000;                                   // Hz, what we send
  const CHUNK_MS = 40;
  const CHUNK = RATE * CHUNK_MS / 1000;                 // 960 samples per AUDIO_CHUNK
  const SLOTS = 500;                                    // audio-buffer strip: a ring of chunk slots
  const IDLE_CLOSE = 4001;                              // close code: the session sent nothing for --idle-timeout
  const CLIENT = { client: 'lipsync-web', version: '0.1.0', encoding: 'binary' };
  // Chunks are numbered 0, 1, 2, ... so that slot = seq % 500 has no gaps; HELLO and
  // SWITCH_PACKAGE take their numbers from a separate range so they never collide with a chunk.
  const CONTROL_SEQ0 = 0x80000000;

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
  // AUDIO_CHUNK: rate, format 1 (int16), empty package name (= the session's package), PCM
  const encodeAudio = (seq, pcm) => message(T.AUDIO_CHUNK, seq, 10 + 2 * pcm.length, (dv, u8, o) => {
    dv.setUint32(o, RATE, true);
    dv.setUint8(o + 4, 1);
    dv.setUint8(o + 5, 0);
    dv.setUint32(o + 6, 2 * pcm.length, true);
    for (let i = 0; i < pcm.length; i++) dv.setInt16(o + 10 + 2 * i, pcm[i], true);
  });

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

  // ------------------------------------------------------------ page elements and state
  const $ = (id) => document.getElementById(id);
  const face = $('face'), ctx = face.getContext('2d');
  const strip = $('strip'), sctx = strip.getContext('2d');
  const select = $('package'), micButton = $('mic'), stopButton = $('stop'), wavInput = $('wav');
  const query = new URLSearchParams(location.search);
  const token = query.get('token');
  const withToken = (path) => (token ? `${path}${path.includes('?') ? '&' : '?'}token=${encodeURIComponent(token)}` : path);

  // State for tests and the curious, kept up to date. lastPainted is what the canvas shows now
  // (lastBounds is the newest FRAME, which may still be decoding); closeSocket is a test hook.
  const api = { framesReceived: 0, errors: 0, dropped: 0, connected: false, connects: 0, lastBounds: null,
    lastBase: null, lastPainted: null, package: null, closeSocket: () => net.ws && net.ws.close() };
  window.lipsync = api;

  const net = { ws: null, ready: false, everConnected: false, backoff: 500, timer: null, controlSeq: CONTROL_SEQ0 };
  let packages = [];                 // from GET /packages
  let pkg = null;                    // the selected package's entry
  let chunkSeq = 0;
  const sentAt = new Map();          // chunk seq -> performance.now() when sent, until its FRAME
  const slots = new Uint8Array(SLOTS);                  // 0 empty, 1 captured, 2 sent, 3 frame received
  const SLOT_COLORS = ['#3a3f47', '#2ecc71', '#f1c40f', '#3498db'];
  const recent = { times: [], latency: [], us: [], idle: [], bgExact: [] };  // rolling windows

  ctx.fillStyle = '#000';            // opaque from the start: a drawn frame never shows through
  ctx.fillRect(0, 0, face.width, face.height);

  function log(text, isError = false) {
    const li = document.createElement('li');
    li.textContent = `${new Date().toLocaleTimeString()}  ${text}`;
    if (isError) li.className = 'error';
    const list = $('log');
    list.prepend(li);
    while (list.children.length > 60) list.lastChild.remove();
  }

  function setStatus(state, text) {
    const el = $('status');
    el.dataset.state = state;
    el.textContent = text || state;
  }

  const push = (arr, value, keep) => { arr.push(value); if (arr.length > keep) arr.shift(); };

  // ------------------------------------------------------------ packages and the base video
  const video = document.createElement('video');       // hidden: only ever drawn onto the canvas
  video.muted = true;
  video.preload = 'auto';
  video.playsInline = true;
  // Seeking state. A seek lands on `target`; how long seeks take decides how far ahead we aim.
  const bg = { loadId: 0, url: null, ready: false, shown: -1, target: -1, seekStart: 0, seekMs: 60, dir: 1, last: -1 };

  video.addEventListener('seeked', () => {
    bg.shown = bg.target;
    bg.seekMs = 0.8 * bg.seekMs + 0.2 * (performance.now() - bg.seekStart);
  });

  async function loadPackages() {
    const res = await fetch(withToken('/packages'));
    if (!res.ok) throw new Error(`GET /packages: HTTP ${res.status}`);
    packages = (await res.json()).filter((p) => !p.error);
    if (!packages.length) throw new Error('the server lists no usable package');
    select.replaceChildren(...packages.map((p) => new Option(`${p.name}  (${p.width}×${p.height}, ${p.frames} frames)`, p.name)));
    const keep = pkg && packages.find((p) => p.name === pkg.name);
    usePackage((keep || packages[0]).name);
  }

  function usePackage(name) {
    pkg = packages.find((p) => p.name === name);
    api.package = name;
    select.value = name;
    if (face.width !== pkg.width || face.height !== pkg.height) {
      face.width = pkg.width;
      face.height = pkg.height;
      ctx.fillStyle = '#000';
      ctx.fillRect(0, 0, face.width, face.height);
    }
    loadVideo(pkg);
  }

  // The video is fetched whole and played from an object URL: seeking a blob never waits on
  // the network, so a seek costs only the decode from the previous keyframe.
  async function loadVideo(p) {
    const id = ++bg.loadId;
    bg.ready = false;
    bg.shown = bg.target = -1;
    try {
      const res = await fetch(withToken(p.video));
      if (!res.ok) throw new Error(`HTTP ${res.status}`);
      const blob = await res.blob();
      if (id !== bg.loadId) return;                      // another package was picked meanwhile
      if (bg.url) URL.revokeObjectURL(bg.url);
      bg.url = URL.createObjectURL(blob);
      video.src = bg.url;
      await new Promise((resolve, reject) => {
        video.addEventListener('loadeddata', resolve, { once: true });
        video.addEventListener('error', () => reject(new Error('the browser cannot decode it')), { once: true });
      });
      if (id !== bg.loadId) return;
      bg.ready = true;
      log(`base video of ${p.name} loaded (${(blob.size / 1e6).toFixed(1)} MB)`);
    } catch (err) {
      if (id === bg.loadId) log(`base video of ${p.name}: ${err.message}; drawing face crops only`, true);
    }
  }

  // Where the ping-pong walk 0..n-1..0 is `k` frames after frame b going in direction dir.
  function pingpongAhead(b, dir, k, n) {
    for (let i = 0; i < k && n > 1; i++) {
      if (b + dir < 0 || b + dir >= n) dir = -dir;
      b += dir;
    }
    return b;
  }

  // Keep the hidden video near the stream's base frame. A seek decodes from the previous
  // keyframe, which can take longer than a frame (40 ms) deep into a long GOP, so we never
  // queue seeks: one at a time, aimed where the stream will be when the seek lands.
  function followBase(base) {
    if (bg.last >= 0 && base !== bg.last) bg.dir = base > bg.last ? 1 : -1;
    bg.last = base;
    if (!bg.ready || video.seeking || bg.shown === base) return;
    const lead = Math.min(8, Math.round(bg.seekMs / CHUNK_MS));
    const ahead = (bg.shown - base) * bg.dir;
    if (bg.shown >= 0 && ahead > 0 && ahead <= lead + 1) return;   // the stream is about to reach it
    bg.target = pingpongAhead(base, bg.dir, lead, pkg.frames);
    bg.seekStart = performance.now();
    video.currentTime = (bg.target + 0.5) / pkg.fps;      // mid-frame: no rounding onto a neighbour
  }

  // ------------------------------------------------------------ drawing frames, in order
  const drawQueue = [];
  let drawing = false;

  function enqueueDraw(frame) {
    // Decoding starts at once (in parallel); painting happens strictly in arrival order.
    frame.bitmap = createImageBitmap(new Blob([frame.jpeg], { type: 'image/jpeg' })).catch(() => null);
    drawQueue.push(frame);
    while (drawQueue.length > 4) {                        // behind: skip the oldest, keep the newest
      drawQueue.shift().bitmap.then((b) => b && b.close());
    }
    if (!drawing) pump();
  }

  async function pump() {
    drawing = true;
    while (drawQueue.length) {
      const frame = drawQueue.shift();
      const bitmap = await frame.bitmap;
      paint(frame, bitmap);
    }
    drawing = false;
  }

  function paint(frame, bitmap) {
    // Background: the base video if it has a frame; otherwise the last painting stays under
    // the crop, so the canvas is never blank once frames arrive.
    if (bg.ready && video.readyState >= 2) {
      ctx.drawImage(video, 0, 0, face.width, face.height);
      push(recent.bgExact, bg.shown === frame.base && !video.seeking ? 1 : 0, 50);
    }
    const [x0, y0, x1, y1] = frame.bounds;
    api.lastPainted = { seq: frame.seq, base: frame.base, bounds: frame.bounds.slice() };
    if (bitmap) {
      ctx.drawImage(bitmap, x0, y0, x1 - x0, y1 - y0);   // the canvas clips bounds outside the frame
      bitmap.close();
    } else {
      log(`frame ${frame.seq}: JPEG does not decode`, true);
    }
  }

  // ------------------------------------------------------------ websocket
  function wsUrl() {
    return withToken(`${location.protocol === 'https:' ? 'wss' : 'ws'}://${location.host}/ws`);
  }

  async function connect() {
    clearTimeout(net.timer);
    setStatus(api.connected ? 'connected' : (net.everConnected ? 'reconnecting' : 'connecting'));
    try {
      if (!packages.length) await loadPackages();
    } catch (err) {
      log(`cannot list packages: ${err.message}`, true);
      return retry();
    }
    const ws = new WebSocket(wsUrl());
    ws.binaryType = 'arraybuffer';
    net.ws = ws;
    ws.onopen = () => {
      ws.send(encodeJson(T.HELLO, net.controlSeq++, CLIENT));
    };
    ws.onmessage = (ev) => {
      if (ws !== net.ws) return;
      if (!(ev.data instanceof ArrayBuffer)) return log('ignored a text message: this client asked for binary', true);
      let msg;
      try {
        msg = decode(ev.data);
      } catch (err) {
        api.errors++;
        return log(`bad message: ${err.message}`, true);
      }
      handle(msg);
    };
    ws.onclose = (ev) => {
      if (ws !== net.ws) return;
      const wasReady = net.ready;
      net.ws = null;
      net.ready = false;
      api.connected = false;
      // chunks still waiting for a frame will never get one from this (gone) session
      for (const seq of sentAt.keys()) slots[seq % SLOTS] = 1;
      api.dropped += sentAt.size;
      sentAt.clear();
      if (ev.code === IDLE_CLOSE) {                       // quiet too long: come back when audio starts
        net.idle = true;
        setStatus('idle', 'idle: disconnected until audio starts');
        log('idle: the server closed the quiet connection; it reconnects when audio starts');
        return;
      }
      // while the server is away each retry fails quietly; the status line shows the countdown
      if (wasReady) log(`connection lost (${ev.code}${ev.reason ? ' ' + ev.reason : ''})`, true);
      retry();
    };
    ws.onerror = () => {};            // onclose follows and handles it
  }

  function retry() {
    const delay = net.backoff;
    net.backoff = Math.min(net.backoff * 2, 5000);        // 0.5 s, 1 s, 2 s, 4 s, 5 s, 5 s ...
    setStatus(net.everConnected ? 'reconnecting' : 'connecting',
      `${net.everConnected ? 'reconnecting' : 'connecting'} in ${(delay / 1000).toFixed(1)} s`);
    clearTimeout(net.timer);
    net.timer = setTimeout(connect, delay);
  }

  function handle(msg) {
    if (msg.type === T.FRAME) return onFrame(msg);
    if (msg.type === T.CAPABILITIES) {
      net.ready = true;
      net.backoff = 500;
      net.everConnected = true;
      api.connected = true;
      api.connects++;
      setStatus('connected');
      const names = msg.body.packages || [];
      log(`connected: server offers ${names.join(', ')}`);
      // A new session starts on the server's default package: restore the selection.
      if (pkg && names.includes(pkg.name)) net.ws.send(encodeSwitch(net.controlSeq++, pkg.name));
      return;
    }
    if (msg.type === T.ERROR) {
      api.errors++;
      const name = ERROR_NAMES[msg.code] || `code ${msg.code}`;
      if (sentAt.delete(msg.seq)) slots[msg.seq % SLOTS] = 1;
      return log(`server error ${name} (seq ${msg.seq}): ${msg.text}`, true);
    }
    if (msg.type === T.STATS) return log(`server stats: ${JSON.stringify(msg.body.stats)}`);
  }

  function onFrame(f) {
    const now = performance.now();
    const sent = sentAt.get(f.seq);
    if (sent !== undefined) {
      push(recent.latency, now - sent, 50);
      sentAt.delete(f.seq);
      // Frames come in chunk order: a chunk before this one still waiting was dropped.
      for (const seq of sentAt.keys()) {
        if (seq >= f.seq) break;                          // Map keeps insertion (= seq) order
        sentAt.delete(seq);
        slots[seq % SLOTS] = 1;
        api.dropped++;
      }
    }
    slots[f.seq % SLOTS] = 3;
    api.framesReceived++;
    api.lastBounds = f.bounds.slice();
    api.lastBase = f.base;
    push(recent.times, now, 200);
    push(recent.us, f.us, 50);
    push(recent.idle, f.status === 1 ? 1 : 0, 100);
    followBase(f.base);
    enqueueDraw(f);
  }

  // ------------------------------------------------------------ audio capture
  // The tap collects the graph's samples and hands them over in blocks. An AudioWorklet runs
  // off the main thread; the ScriptProcessor fallback covers browsers without worklets.
  const TAP_WORKLET = `
    class LipsyncTap extends AudioWorkletProcessor {
      constructor() { super(); this.buf = new Float32Array(512); this.n = 0; }
      process(inputs) {
        const ch = inputs[0] && inputs[0][0];
        if (ch) {
          for (let i = 0; i < ch.length; i++) {
            this.buf[this.n++] = ch[i];
            if (this.n === this.buf.length) {
              this.port.postMessage(this.buf, [this.buf.buffer]);
              this.buf = new Float32Array(512); this.n = 0;
            }
          }
        }
        return true;
      }
    }
    registerProcessor('lipsync-tap', LipsyncTap);`;

  const audio = { ctx: null, tap: null, source: null, stream: null, mode: null,
    pending: new Float32Array(CHUNK), fill: 0, rs: { pos: 0, prev: 0 } };

  async function openContext(nativeRate) {
    if (audio.ctx) audio.ctx.close();
    // Ask for 24 kHz so the browser resamples for us; nativeRate is the fallback for browsers
    // that cannot connect a device of another rate to it (we then resample in resample24k).
    const ac = nativeRate ? new AudioContext() : new AudioContext({ sampleRate: RATE });
    let tap;
    try {
      const url = URL.createObjectURL(new Blob([TAP_WORKLET], { type: 'text/javascript' }));
      await ac.audioWorklet.addModule(url);
      URL.revokeObjectURL(url);
      tap = new AudioWorkletNode(ac, 'lipsync-tap', { numberOfInputs: 1, numberOfOutputs: 1, outputChannelCount: [1],
        channelCount: 1, channelCountMode: 'explicit', channelInterpretation: 'speakers' });   // down-mix to mono
      tap.port.onmessage = (ev) => onSamples(ev.data);
    } catch (err) {
      tap = ac.createScriptProcessor(2048, 1, 1);
      tap.onaudioprocess = (ev) => onSamples(new Float32Array(ev.inputBuffer.getChannelData(0)));
    }
    // A muted path to the destination keeps the tap pulled by the audio clock.
    const mute = ac.createGain();
    mute.gain.value = 0;
    tap.connect(mute).connect(ac.destination);
    audio.ctx = ac;
    audio.tap = tap;
    audio.rs = { pos: 0, prev: 0 };
    if (ac.state !== 'running') await ac.resume().catch(() => {});
    // Without a user gesture (e.g. ?autostart=mic) the browser may keep audio suspended:
    // the first click anywhere on the page starts it.
    if (ac.state !== 'running') {
      log('audio is paused by the browser until you click the page', true);
      document.addEventListener('click', () => ac.resume(), { once: true });
    }
    return ac;
  }

  // Streaming linear-interpolation resampler to 24 kHz, only used on the native-rate fallback.
  // (No anti-alias filter: speech above 12 kHz carries nothing the mouth model uses.)
  function resample24k(x) {
    const step = audio.ctx.sampleRate / RATE;
    if (step === 1) return x;
    const st = audio.rs, out = [];
    let pos = st.pos;                                     // index into x; x[-1] is st.prev
    while (pos < x.length - 1) {
      const i = Math.floor(pos), a = i < 0 ? st.prev : x[i], b = x[i + 1];
      out.push(a + (b - a) * (pos - i));
      pos += step;
    }
    st.pos = pos - x.length;
    st.prev = x[x.length - 1];
    return Float32Array.from(out);
  }

  function onSamples(block) {
    if (!audio.mode || !block.length) return;
    const x = resample24k(block);
    for (let i = 0; i < x.length;) {
      const k = Math.min(CHUNK - audio.fill, x.length - i);
      audio.pending.set(x.subarray(i, i + k), audio.fill);
      audio.fill += k;
      i += k;
      if (audio.fill === CHUNK) {
        sendChunk(audio.pending);
        audio.fill = 0;
      }
    }
  }

  function sendChunk(f32) {
    const pcm = new Int16Array(CHUNK);
    for (let i = 0; i < CHUNK; i++) {
      const s = Math.max(-1, Math.min(1, f32[i]));
      pcm[i] = Math.round(s < 0 ? s * 32768 : s * 32767);
    }
    const seq = chunkSeq++;
    slots[seq % SLOTS] = 1;                               // captured
    if (!net.ready || !net.ws || net.ws.readyState !== WebSocket.OPEN) return;   // offline: stays green
    net.ws.send(encodeAudio(seq, pcm));
    sentAt.set(seq, performance.now());
    slots[seq % SLOTS] = 2;                               // sent
  }

  function stopAudio() {
    if (audio.fill > 0 && audio.mode) {                   // pad the last partial chunk with silence
      audio.pending.fill(0, audio.fill);
      sendChunk(audio.pending);
    }
    audio.fill = 0;
    audio.mode = null;
    if (audio.source) {
      try { audio.source.onended = null; audio.source.stop && audio.source.stop(); } catch (err) { /* not started */ }
      audio.source.disconnect();
      audio.source = null;
    }
    if (audio.stream) audio.stream.getTracks().forEach((t) => t.stop());
    audio.stream = null;
    micButton.classList.remove('active');
    stopButton.disabled = true;
    $('source').textContent = 'audio: off';
  }

  function wake() {                                       // after an idle close: connect again
    if (!net.idle) return;
    net.idle = false;
    net.backoff = 500;
    connect();
  }

  async function startMic() {
    stopAudio();
    wake();
    try {
      const stream = await navigator.mediaDevices.getUserMedia({ audio: { channelCount: 1,
        echoCancellation: false, noiseSuppression: false, autoGainControl: false } });
      let ac = audio.ctx && audio.ctx.sampleRate === RATE ? audio.ctx : await openContext(false);
      let src;
      try {
        src = ac.createMediaStreamSource(stream);
      } catch (err) {                                     // e.g. Firefox: device rate ≠ context rate
        ac = await openContext(true);
        src = ac.createMediaStreamSource(stream);
      }
      src.connect(audio.tap);
      Object.assign(audio, { source: src, stream, mode: 'mic' });
      micButton.classList.add('active');
      stopButton.disabled = false;
      $('source').textContent = `audio: microphone (${ac.sampleRate} Hz)`;
      log('microphone on');
    } catch (err) {
      log(`microphone: ${err.message || err.name}`, true);
    }
  }

  async function playFile(file) {
    stopAudio();
    wake();
    try {
      const ac = audio.ctx || await openContext(false);
      const buffer = await ac.decodeAudioData(await file.arrayBuffer());   // resampled to the context's rate
      const src = ac.createBufferSource();
      src.buffer = buffer;
      src.connect(ac.destination);                        // audible ...
      src.connect(audio.tap);                             // ... and streamed
      src.onended = () => { if (audio.source === src) { stopAudio(); log(`${file.name} finished`); } };
      Object.assign(audio, { source: src, mode: 'file' });
      src.start();
      stopButton.disabled = false;
      $('source').textContent = `audio: ${file.name} (${buffer.duration.toFixed(1)} s)`;
      log(`playing ${file.name}`);
    } catch (err) {
      log(`${file.name}: cannot play it (${err.message || err.name})`, true);
    }
  }

  // ------------------------------------------------------------ readouts and the strip
  function median(values) {
    if (!values.length) return NaN;
    const s = [...values].sort((a, b) => a - b);
    return s[Math.floor(s.length / 2)];
  }
  const mean = (values) => values.reduce((a, b) => a + b, 0) / values.length;

  function drawStrip() {
    // Drawn at the strip's on-screen size: a scaled canvas would smear 500 narrow cells.
    const width = Math.max(SLOTS, Math.round(strip.clientWidth * devicePixelRatio));
    if (strip.width !== width) strip.width = width;
    const x = (i) => Math.round((i * width) / SLOTS);
    sctx.clearRect(0, 0, width, strip.height);
    for (let i = 0; i < SLOTS; i++) {
      sctx.fillStyle = SLOT_COLORS[slots[i]];
      const w = x(i + 1) - x(i);
      sctx.fillRect(x(i), 2, w >= 3 ? w - 1 : w, strip.height - 4);   // a 1 px gap where there is room
    }
    const at = chunkSeq % SLOTS;                          // where the next chunk goes
    sctx.fillStyle = '#ffffff';
    sctx.fillRect(x(at), 0, Math.max(2, x(at + 1) - x(at)), strip.height);
  }

  function updateReadouts() {
    const now = performance.now();
    $('frame-count').textContent = String(api.framesReceived);
    $('fps').textContent = String(recent.times.filter((t) => now - t <= 1000).length);
    $('latency').textContent = recent.latency.length ? `${median(recent.latency).toFixed(0)} ms` : '–';
    $('server-us').textContent = recent.us.length ? `${(mean(recent.us) / 1000).toFixed(1)} ms` : '–';
    $('idle').textContent = recent.idle.length ? `${(100 * mean(recent.idle)).toFixed(0)} %` : '–';
    $('dropped').textContent = `${api.dropped} / ${api.errors}`;
    $('bg-sync').textContent = recent.bgExact.length ? `${(100 * mean(recent.bgExact)).toFixed(0)} % exact` : '–';
    drawStrip();
  }

  // ------------------------------------------------------------ wiring
  select.addEventListener('change', () => {
    usePackage(select.value);
    if (net.ready && net.ws) net.ws.send(encodeSwitch(net.controlSeq++, select.value));
    log(`package ${select.value}`);
  });
  micButton.addEventListener('click', startMic);
  stopButton.addEventListener('click', () => { stopAudio(); log('audio stopped'); });
  wavInput.addEventListener('change', () => { if (wavInput.files[0]) playFile(wavInput.files[0]); });

  setInterval(updateReadouts, 250);
  updateReadouts();
  connect();
  if (query.get('autostart') === 'mic') startMic();
})();
