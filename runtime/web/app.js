// lipsync-serve browser client.
//
// Audio (microphone or a WAV file) is cut into 40 ms chunks of 24 kHz int16 and streamed as
// AUDIO_CHUNK over the binary protocol of docs/protocol.md (protocol.js). Every FRAME that comes back carries
// the seq of the chunk it belongs to and the base frame it was rendered for; the page draws that
// exact base frame (basevideo.js) and blends the face crop onto it with a feathered edge.
//
// Timing (docs/serving.md, "The browser page"): a WAV file is heard through a jitter buffer, a
// delay on the WebAudio clock, and frame k is painted while chunk k is being heard. From the
// microphone nothing is played back; frames are painted as soon as they are ready.
// Plain JS, no build step, no external URLs. Query options: ?token=T, ?autostart=mic, ?delay=MS.
'use strict';

(() => {
  // ------------------------------------------------------------ constants
  const { T, ERROR_NAMES, encodeJson, encodeSwitch, encodeAudio, decode } = window.LipsyncProtocol;
  const RATE = 24000;                                   // Hz, what we send
  const CHUNK_MS = 40;
  const CHUNK = RATE * CHUNK_MS / 1000;                 // 960 samples per AUDIO_CHUNK
  const SLOTS = 500;                                    // audio-buffer strip: a ring of chunk slots
  const IDLE_CLOSE = 4001;                              // close code: the session sent nothing for --idle-timeout
  const CLIENT = { client: 'lipsync-web', version: '0.1.0', encoding: 'binary' };
  // Chunks are numbered 0, 1, 2, ... so that slot = seq % 500 has no gaps; HELLO and
  // SWITCH_PACKAGE take their numbers from a separate range so they never collide with a chunk.
  const CONTROL_SEQ0 = 0x80000000;

  // ------------------------------------------------------------ page elements and state
  const $ = (id) => document.getElementById(id);
  const face = $('face'), ctx = face.getContext('2d');
  const strip = $('strip'), sctx = strip.getContext('2d');
  const select = $('package'), micButton = $('mic'), stopButton = $('stop'), wavInput = $('wav');
  const query = new URLSearchParams(location.search);
  const token = query.get('token');
  const withToken = (path) => (token ? `${path}${path.includes('?') ? '&' : '?'}token=${encodeURIComponent(token)}` : path);

  // The jitter buffer of WAV playback: the file is heard `delay` ms after it starts streaming,
  // so each frame has that long to come back. It starts at startMs; when `critical` of the last
  // `window` frames came too late it grows by stepMs (a short pause in the sound), up to maxMs;
  // the next file starts from what this one needed (slowest frame's lead + marginMs).
  // ?delay=MS sets the starting delay (e.g. more for a slow network).
  const JITTER = { startMs: 240, minMs: 160, maxMs: 1000, stepMs: 80, window: 25, critical: 3, marginMs: 60 };
  if (Number.isFinite(Number(query.get('delay'))) && query.get('delay') !== null) {
    JITTER.startMs = Math.min(JITTER.maxMs, Math.max(0, Math.round(Number(query.get('delay')))));
  }
  const FEATHER = 0.06;              // the crop's edge fades in over 6 % of its size (20 px of 328)
  const MAX_WAITING = 60;            // frames held for painting, at most (2.4 s)

  // State for tests and the curious, kept up to date. lastPainted is what the canvas shows now;
  // closeSocket is a test hook; sync() sums up timing and base-frame exactness.
  const api = { framesReceived: 0, framesPainted: 0, exactPainted: 0, errors: 0, dropped: 0, late: 0, skipped: 0,
    connected: false, connects: 0, lastBounds: null, lastBase: null, lastPainted: null, package: null,
    offsets: [], firstPaintMs: null, delayMs: JITTER.startMs,
    closeSocket: () => net.ws && net.ws.close(),
    base: () => base && base.stats,
    sync: () => ({ offsets: api.offsets.slice(), painted: api.framesPainted, exact: api.exactPainted, late: api.late,
      skipped: api.skipped, delayMs: api.delayMs, firstPaintMs: api.firstPaintMs, playing: play.mode }) };
  window.lipsync = api;

  const net = { ws: null, ready: false, everConnected: false, backoff: 500, timer: null, controlSeq: CONTROL_SEQ0 };
  let packages = [];                 // from GET /packages
  let pkg = null;                    // the selected package's entry
  let chunkSeq = 0;
  const sentAt = new Map();          // chunk seq -> performance.now() when sent, until its FRAME
  const slots = new Uint8Array(SLOTS);                  // 0 empty, 1 captured, 2 sent, 3 frame received
  const SLOT_COLORS = ['#3a3f47', '#2ecc71', '#f1c40f', '#3498db'];
  const recent = { times: [], latency: [], us: [], idle: [], exact: [], offset: [] };  // rolling windows

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

  // ------------------------------------------------------------ packages and their base frames
  let base = null;                   // window.LipsyncBase source of the selected package
  let baseLoad = 0;
  const walk = { last: -1, dir: 1 }; // the direction of the server's ping-pong walk, for read-ahead

  async function loadPackages() {
    const res = await fetch(withToken('/packages'));
    if (!res.ok) throw new Error(`GET /packages: HTTP ${res.status}`);
    packages = (await res.json()).filter((p) => !p.error);
    if (!packages.length) throw new Error('the server lists no usable package');
    select.replaceChildren(...packages.map((p) => new Option(`${p.name}  (${p.width}×${p.height}, ${p.frames} frames)`, p.name)));
    $('picker').hidden = packages.length < 2;
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
    for (const f of waiting.values()) drop(f, false);   // rendered for the other package
    walk.last = -1;
    loadBase(pkg);
  }

  async function loadBase(p) {
    const id = ++baseLoad;
    if (base) base.close();
    base = null;
    const source = await window.LipsyncBase.open(withToken(p.video), { fps: p.fps });
    if (id !== baseLoad) return source.close();           // another package was picked meanwhile
    base = source;
    base.want(0);
    if (source.kind === 'webcodecs') log(`base video of ${p.name}: exact frames, decoded as needed (WebCodecs)`);
    else log(`base video of ${p.name}: frames may be off by one: ${source.why}`, true);
  }

  // A decoder that failed mid-stream: go on with the seeking <video> rather than show nothing.
  function checkBase() {
    if (base && base.kind === 'webcodecs' && base.failed) {
      log(`base video: ${base.failed}; falling back to seeking a <video> element`, true);
      base.close();
      base = window.LipsyncBase.seeking(withToken(pkg.video), pkg.fps, base.failed);
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

  function readAhead(b) {
    if (walk.last >= 0 && b !== walk.last) walk.dir = b > walk.last ? 1 : -1;
    walk.last = b;
    if (!base || base.kind !== 'webcodecs') return;     // a seeking <video> is aimed at what is due
    base.want(b);
    base.want(pingpongAhead(b, walk.dir, 10, pkg.frames));   // the next GOP, before it is needed
  }

  // ------------------------------------------------------------ compositing
  // The crop is blended onto its exact base frame through a mask that fades its edge in, so
  // no line shows where it ends. Masks are made once per crop size.
  const scratch = document.createElement('canvas'), sx = scratch.getContext('2d');
  const masks = new Map();

  function featherMask(w, h) {
    const key = `${w}x${h}`;
    if (masks.has(key)) return masks.get(key);
    const c = document.createElement('canvas');
    c.width = w;
    c.height = h;
    const cx = c.getContext('2d'), img = cx.createImageData(w, h);
    const ramp = (i, n) => {                              // smoothstep from the edge inwards
      const t = Math.min(1, Math.min(i + 0.5, n - i - 0.5) / Math.max(1, FEATHER * n));
      return t * t * (3 - 2 * t);
    };
    for (let y = 0; y < h; y++) {
      const ay = ramp(y, h);
      for (let x = 0; x < w; x++) img.data[4 * (y * w + x) + 3] = Math.round(255 * Math.min(ay, ramp(x, w)));
    }
    cx.putImageData(img, 0, 0);
    masks.set(key, c);
    return c;
  }

  function feathered(img) {
    const w = img.width, h = img.height;
    if (scratch.width !== w || scratch.height !== h) {
      scratch.width = w;
      scratch.height = h;
    }
    sx.globalCompositeOperation = 'copy';
    sx.drawImage(img, 0, 0);
    sx.globalCompositeOperation = 'destination-in';
    sx.drawImage(featherMask(w, h), 0, 0);
    sx.globalCompositeOperation = 'source-over';
    return scratch;
  }

  // b: {image, exact} from the base source, or null when there is none to draw (the last
  // painting then stays under the crop).
  function paint(f, b, now) {
    if (b) ctx.drawImage(b.image, 0, 0, face.width, face.height);
    const [x0, y0, x1, y1] = f.bounds;
    ctx.drawImage(feathered(f.img), x0, y0, x1 - x0, y1 - y0);   // the canvas clips what overhangs
    f.img.close();
    f.img = null;
    const exact = Boolean(b && b.exact);
    api.framesPainted++;
    api.exactPainted += exact ? 1 : 0;
    push(recent.exact, exact ? 1 : 0, 100);
    push(recent.times, now, 200);
    if (f.sent !== undefined) push(recent.latency, now - f.sent + CHUNK_MS, 100);   // chunk filling included
    api.lastPainted = { seq: f.seq, base: f.base, bounds: f.bounds.slice(), exact };
  }

  // ------------------------------------------------------------ frames on the audio clock
  // FRAME seq = the seq of its AUDIO_CHUNK. While a file plays, chunk k of it (seq play.seq0 + k)
  // is heard from play.tA + k * 40 ms on the AudioContext's clock, and its frame is painted then.
  const waiting = new Map();         // seq -> FRAME not painted yet, in seq order
  let play = { mode: null };

  // The AudioContext time being heard now: getOutputTimestamp maps the context clock onto
  // performance.now(), output latency included.
  function heardTime(now) {
    const ac = audio.ctx;
    const ts = ac.getOutputTimestamp ? ac.getOutputTimestamp() : null;
    if (ts && ts.performanceTime > 0) return ts.contextTime + (now - ts.performanceTime) / 1000;
    return ac.currentTime - (ac.outputLatency || ac.baseLatency || 0);
  }

  function drop(f, late) {
    waiting.delete(f.seq);
    if (f.img) f.img.close();
    f.img = null;
    if (late) {
      api.late++;
      outcome(true);
    }
  }

  function onFrameWaiting(f, now) {
    f.arrived = now;
    f.img = null;
    createImageBitmap(new Blob([f.jpeg], { type: 'image/jpeg' })).then((img) => {
      if (waiting.get(f.seq) === f) f.img = img;
      else img.close();
    }, () => {
      log(`frame ${f.seq}: JPEG does not decode`, true);
      drop(f, false);
    });
    readAhead(f.base);
    if (play.mode === 'file') {
      const k = f.seq - play.seq0;
      if (k < 0) return;                                  // from before this file
      const lead = k * CHUNK_MS - 1000 * (heardTime(now) - play.tA);     // ms until it is due
      push(play.leads, lead, 500);
      if (lead < -CHUNK_MS) {                             // its 40 ms were heard already: never shown late
        drop(f, true);
        return;
      }
    }
    waiting.set(f.seq, f);
    for (const old of waiting.values()) {
      if (waiting.size <= MAX_WAITING) break;
      drop(old, false);
      api.skipped++;
    }
  }

  function tick() {
    requestAnimationFrame(tick);
    if (!waiting.size) return;
    checkBase();
    const now = performance.now();
    if (play.mode === 'file') paintDue(now);
    else paintReady(now);
  }

  function paintDue(now) {
    const pos = 1000 * (heardTime(now) - play.tA);      // ms of the file heard so far
    if (pos < 0) return;                                  // the jitter buffer is filling
    const due = play.seq0 + Math.floor(pos / CHUNK_MS);
    for (const f of waiting.values()) {
      if (f.seq >= due) break;
      drop(f, f.seq >= play.seq0);                        // its 40 ms are over unpainted
    }
    const f = waiting.get(due);
    if (!f) return;
    if (base) base.want(f.base);
    const b = base && base.frame(f.base);
    if (!f.img || !b) return;                             // try again next animation frame
    paint(f, b, now);
    waiting.delete(due);
    const offset = pos - (due - play.seq0) * CHUNK_MS;    // lips after sound, in ms
    push(api.offsets, offset, 5000);
    push(recent.offset, offset, 100);
    if (api.firstPaintMs === null) api.firstPaintMs = now - play.pressedAt;
    outcome(false);
  }

  // Microphone (nothing is played back) and no audio: paint the newest frame that is ready,
  // in order; a frame that is not ready after 200 ms is passed over.
  function paintReady(now) {
    let pick = null, pickBase = null;
    for (const f of waiting.values()) {
      if (pick === null && base) base.want(f.base);
      const b = f.img && base && base.frame(f.base);
      if (f.img && (b || now - f.arrived > 500)) {                  // no base for 0.5 s: paint the crop anyway
        pick = f;
        pickBase = b || null;
      } else if (now - f.arrived < 200) {
        break;
      }
    }
    if (!pick) return;
    for (const f of waiting.values()) {
      if (f.seq >= pick.seq) break;
      drop(f, false);
      api.skipped++;
    }
    paint(pick, pickBase, now);
    waiting.delete(pick.seq);
  }

  function outcome(late) {
    if (play.mode !== 'file') return;
    push(play.outcomes, late ? 1 : 0, JITTER.window);
    const lateCount = play.outcomes.reduce((a, b) => a + b, 0);
    if (late && lateCount >= JITTER.critical && play.delayMs < JITTER.maxMs) {
      rebuffer(Math.min(JITTER.stepMs, JITTER.maxMs - play.delayMs));
      play.outcomes = [];
    }
  }

  // Hear the rest of the file `ms` later: the sound pauses that long and frames get more time.
  function rebuffer(ms) {
    const ac = audio.ctx, at = ac.currentTime + 0.03;
    const pos = Math.max(0, at - play.tA);
    const old = play.ear;
    old.onended = null;
    old.stop(at);
    play.tA += ms / 1000;
    play.ear = earSource(play.buffer);
    play.ear.start(Math.max(at, play.tA + pos), pos);
    play.delayMs += ms;
    api.delayMs = play.delayMs;
    log(`frames came late: the jitter buffer grows to ${play.delayMs} ms`);
  }

  // the next file starts with the delay this one needed: its slowest frame's lead, plus a margin
  function learnDelay() {
    if (play.mode !== 'file' || play.leads.length < 25) return;
    const sorted = [...play.leads].sort((a, b) => a - b);
    const need = play.delayMs - sorted[Math.floor(0.02 * sorted.length)] + JITTER.marginMs;
    JITTER.learnedMs = Math.min(JITTER.maxMs, Math.max(JITTER.minMs, Math.ceil(need / CHUNK_MS) * CHUNK_MS));
  }

  function earSource(buffer) {
    const src = audio.ctx.createBufferSource();
    src.buffer = buffer;
    src.connect(audio.ctx.destination);
    src.onended = () => {
      if (play.ear !== src) return;
      log(`${play.file} finished`);
      endPlay();
    };
    return src;
  }

  function endPlay() {
    if (play.mode !== 'file') return;
    learnDelay();
    if (play.ear) {
      play.ear.onended = null;
      try { play.ear.stop(); } catch (err) { /* not started */ }
      play.ear.disconnect();
    }
    play = { mode: null };
    for (const f of waiting.values()) drop(f, false);
    stopButton.disabled = audio.mode === null;
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
    f.sent = sentAt.get(f.seq);
    if (f.sent !== undefined) {
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
    push(recent.us, f.us, 50);
    push(recent.idle, f.status === 1 ? 1 : 0, 100);
    onFrameWaiting(f, now);
  }

  // ------------------------------------------------------------ audio capture
  // The tap collects the graph's samples and hands them over in blocks, each with the context
  // time of its first sample. An AudioWorklet runs off the main thread; the ScriptProcessor
  // fallback covers browsers without worklets.
  const TAP_WORKLET = `
    class LipsyncTap extends AudioWorkletProcessor {
      constructor() { super(); this.buf = new Float32Array(512); this.n = 0; this.t = 0; }
      process(inputs) {
        const ch = inputs[0] && inputs[0][0];
        if (ch) {
          for (let i = 0; i < ch.length; i++) {
            if (this.n === 0) this.t = currentTime + i / sampleRate;
            this.buf[this.n++] = ch[i];
            if (this.n === this.buf.length) {
              this.port.postMessage({ x: this.buf, t: this.t }, [this.buf.buffer]);
              this.buf = new Float32Array(512); this.n = 0;
            }
          }
        }
        return true;
      }
    }
    registerProcessor('lipsync-tap', LipsyncTap);`;

  // mode: what is being captured ('mic', 'file' or null); t0: context time a file starts at
  const audio = { ctx: null, tap: null, source: null, stream: null, mode: null, t0: 0,
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
      tap.port.onmessage = (ev) => onSamples(ev.data.x, ev.data.t);
    } catch (err) {
      tap = ac.createScriptProcessor(2048, 1, 1);
      tap.onaudioprocess = (ev) => onSamples(new Float32Array(ev.inputBuffer.getChannelData(0)), ev.playbackTime);
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

  function onSamples(block, time) {
    if (!audio.mode || !block.length) return;
    let x = block;
    if (audio.mode === 'file' && time !== undefined) {   // chunk 0 starts exactly where the file does
      const skip = Math.round((audio.t0 - time) * audio.ctx.sampleRate);
      if (skip >= x.length) return;
      if (skip > 0) x = x.subarray(skip);
    }
    x = resample24k(x);
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
    net.ws.send(encodeAudio(seq, pcm, RATE));
    sentAt.set(seq, performance.now());
    slots[seq % SLOTS] = 2;                               // sent
  }

  // Capture ends: the last partial chunk goes out padded with silence.
  function stopCapture() {
    if (audio.fill > 0 && audio.mode) {
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
  }

  function stopAudio() {
    stopCapture();
    endPlay();
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
      $('source').textContent = 'audio: microphone, not played back: the lips follow as soon as frames arrive';
      log(`microphone on (${ac.sampleRate} Hz)`);
    } catch (err) {
      log(`microphone: ${err.message || err.name}`, true);
    }
  }

  // A file is streamed from t0 and heard from tA = t0 + the jitter buffer's delay: two sources
  // of one buffer on one clock, so chunk k is heard exactly at tA + k * 40 ms.
  async function playFile(file) {
    const pressedAt = performance.now();
    stopAudio();
    wake();
    try {
      const ac = audio.ctx && audio.ctx.sampleRate === RATE ? audio.ctx : await openContext(false);
      const buffer = await ac.decodeAudioData(await file.arrayBuffer());   // resampled to the context's rate
      const delayMs = JITTER.learnedMs || JITTER.startMs;
      const t0 = ac.currentTime + 0.02;
      const tap = ac.createBufferSource();
      tap.buffer = buffer;
      tap.connect(audio.tap);
      tap.onended = () => { if (audio.source === tap) stopCapture(); };
      Object.assign(audio, { source: tap, mode: 'file', t0, fill: 0 });
      play = { mode: 'file', file: file.name, buffer, seq0: chunkSeq, tA: t0 + delayMs / 1000, delayMs, pressedAt,
        outcomes: [], leads: [], ear: null };
      api.delayMs = delayMs;
      api.firstPaintMs = null;
      api.offsets = [];
      tap.start(t0);
      play.ear = earSource(buffer);
      play.ear.start(play.tA);
      stopButton.disabled = false;
      $('source').textContent = `audio: ${file.name} (${buffer.duration.toFixed(1)} s), heard ${delayMs} ms after it streams`;
      log(`playing ${file.name}; jitter buffer ${delayMs} ms`);
    } catch (err) {
      log(`${file.name}: cannot play it (${err.message || err.name})`, true);
    }
  }

  // ------------------------------------------------------------ readouts and the strip
  function quantile(values, q) {
    if (!values.length) return NaN;
    const s = [...values].sort((a, b) => a - b);
    return s[Math.min(s.length - 1, Math.floor(q * s.length))];
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
    const ms = (v) => `${v.toFixed(0)} ms`;
    $('frame-count').textContent = `${api.framesReceived} / ${api.framesPainted}`;
    $('fps').textContent = String(recent.times.filter((t) => now - t <= 1000).length);
    $('offset').textContent = play.mode === 'file' && recent.offset.length
      ? `${ms(quantile(recent.offset, 0.5))} (p95 ${ms(quantile(recent.offset, 0.95))})`
      : (audio.mode === 'mic' ? 'not played back' : '–');
    $('latency').textContent = recent.latency.length ? ms(quantile(recent.latency, 0.5)) : '–';
    $('buffer').textContent = play.mode === 'file' ? `${play.delayMs} ms, ${api.late} late` : `${api.late} late`;
    $('server-us').textContent = recent.us.length ? `${(mean(recent.us) / 1000).toFixed(1)} ms` : '–';
    $('idle').textContent = recent.idle.length ? `${(100 * mean(recent.idle)).toFixed(0)} %` : '–';
    $('dropped').textContent = `${api.dropped + api.skipped} / ${api.errors}`;
    const why = base && base.kind !== 'webcodecs' ? ' (approximate)' : '';
    $('bg-sync').textContent = recent.exact.length ? `${(100 * mean(recent.exact)).toFixed(0)} % exact${why}` : '–';
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
  requestAnimationFrame(tick);
  connect();
  if (query.get('autostart') === 'mic') startMic();
})();
