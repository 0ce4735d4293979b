// DEMON performer UI. Plain ES module, no dependencies; speaks docs/protocol.md.
//
// Audio: an AudioWorklet (worklet.js) holds the loop buffer and applies the server's frames;
// the main thread forwards each binary frame to it (transferring the ArrayBuffer) and draws the
// waveform from the overview columns the worklet sends back.
// Controls: every knob of the `ready` catalog becomes a fader; changes are sent as control
// messages (coalesced to at most one message per 30 ms); `applied` echoes and `params` updates
// move the faders when another client or the slew limiter changes them.
// Test hooks: window.demon (see the bottom of this file).

const $ = (id) => document.getElementById(id);
const query = new URLSearchParams(location.search);
const TOKEN = query.get('token');
const withToken = (url) => (TOKEN ? `${url}${url.includes('?') ? '&' : '?'}token=${encodeURIComponent(TOKEN)}` : url);

const CURVE_POINTS = 200;
const SEND_INTERVAL_MS = 30;
const TOUCH_HOLD_MS = 800; // ignore server updates of a fader this long after the performer moved it
const BLEND_PRESETS = [0, 0.25, 0.5, 0.75, 1];
const MAX_UPLOAD = 64 * 1024 * 1024;
const GROUPS = {
  gen: ['denoise', 'shift', 'steps', 'depth', 'feedback', 'feedback_depth', 'structure', 'timbre'],
  step: ['velocity_scale', 'sde_denoise', 'ode_noise', 'x0_target_strength', 'guidance', 'apg_momentum', 'cfg_rescale', 'dcw', 'dcw_high'],
};

// ---------------------------------------------------------------- state

const S = {
  ready: null, // the `ready` message
  clientId: null,
  rate: 48000,
  samples: 0,
  songSeconds: 0,
  specs: new Map(), // knob name → catalog entry
  target: {}, // knob values the performer asked for
  effective: {}, // slew-limited values the engine uses
  touched: {}, // knob → time of the last local change
  curves: {}, // curve name → CurveSpec
  automation: {}, // knob name → automation lane { points: [{at_s, value}], interpolation }
  playing: false, // the session's play state
  band: null, // [start_s, end_s]
  pos: 0, // worklet position in source samples
  posAt: 0,
  peaks: null, // Float32Array(2 * columns)
  columns: 0,
  patchedAt: null, // Float64Array(columns): when each overview column was last patched
  leadMs: 0,
  recording: false,
  recStarted: 0,
};

const demon = {
  ready: false,
  clientId: null,
  readyMessage: null,
  slicesReceived: 0, // slices the worklet applied (kinds 1 and 2)
  framesApplied: 0, // all frames the worklet applied (including full buffers)
  framesReceived: 0, // binary frames received from the socket
  lastSliceTick: -1,
  recentSlices: [], // [start, n] of the slices received (the last 10000 or more)
  lastFrame: null,
  lastStats: null,
  lastReply: null,
  lastParams: null,
  errors: [], // every error shown to the performer
  notices: [],
  badFrames: [],
  position: 0, // seconds
  audioState: 'none',
  lateSlices: 0, // slices that landed with the playhead already inside them
  heard: [], // knob-to-ear reports this page sent: {control, agoMs, at}
  knobToEar: {}, // the server's figures per class (stats.knob_to_ear)
  overloaded: false, // the session falls behind real time (stats.realtime)
  realtime: null, // the latest stats.realtime
  references: { timbre: null, structure: null }, // the reference names the page shows
  micSeconds: 0, // the length of the last microphone recording uploaded
  idle: false, // the idle pause holds generation (stats.idle)
  compression: 'none', // how this connection's deltas come (ready.compression)
  compressedBytes: 0, // bytes of the compressed deltas received, and of them decoded
  plainBytes: 0,
  // What the browser's audio path adds after the worklet: the context's base and output
  // latency, and how far the sample leaving the output now trails the one being rendered.
  audioLatency: () => {
    if (!ctx) return null;
    const ts = ctx.getOutputTimestamp ? ctx.getOutputTimestamp() : null;
    return {
      base_ms: 1000 * (ctx.baseLatency || 0),
      output_ms: 1000 * (ctx.outputLatency || 0),
      behind_ms: ts && ts.performanceTime > 0 ? 1000 * (ctx.currentTime - ts.contextTime) : null,
    };
  },
};
window.demon = demon;
// Main-thread tasks over 50 ms (they hold back the slices the page relays to its worklet).
demon.longTasks = { count: 0, maxMs: 0, totalMs: 0 };
try {
  new PerformanceObserver((list) => {
    for (const e of list.getEntries()) {
      demon.longTasks.count++;
      demon.longTasks.totalMs += e.duration;
      demon.longTasks.maxMs = Math.max(demon.longTasks.maxMs, e.duration);
    }
  }).observe({ type: 'longtask', buffered: false });
} catch (_) {
  // no long-task timing in this browser
}

// ---------------------------------------------------------------- log and errors

let toastTimer = 0;
let lastLog = { text: null, li: null, n: 0 };
function log(kind, text) {
  const list = $('log');
  if (text === lastLog.text && lastLog.li && lastLog.li.parentElement === list) {
    // The same message again (a failing tick repeats its notice): count it instead of flooding.
    lastLog.n++;
    lastLog.li.querySelector('.count').textContent = ` ×${lastLog.n}`;
    lastLog.li.querySelector('time').textContent = new Date().toLocaleTimeString();
    return;
  }
  const li = document.createElement('li');
  li.className = kind;
  const t = document.createElement('time');
  t.textContent = new Date().toLocaleTimeString();
  const msg = document.createElement('span');
  msg.className = 'msg';
  msg.textContent = text;
  const count = document.createElement('b');
  count.className = 'count';
  li.append(t, ' ', msg, count);
  lastLog = { text, li, n: 1 };
  list.prepend(li);
  while (list.children.length > 200) list.lastChild.remove();
  if (kind === 'error' || kind === 'notice') {
    const toast = $('toast');
    toast.textContent = text.split('\n')[0]; // the first line (notices may carry a backtrace)
    toast.className = `toast ${kind === 'notice' ? 'notice' : ''}`;
    clearTimeout(toastTimer);
    toastTimer = setTimeout(() => toast.classList.add('hidden'), kind === 'error' ? 7000 : 4000);
  }
}
function showError(text) {
  demon.errors.push(text);
  log('error', text);
}
function showNotice(text) {
  demon.notices.push(text);
  log('notice', text);
}
window.addEventListener('error', (e) => showError(`UI error: ${e.message}`));
window.addEventListener('unhandledrejection', (e) => showError(`UI error: ${e.reason && e.reason.message ? e.reason.message : e.reason}`));

// ---------------------------------------------------------------- audio

let ctx = null;
let node = null;
let gain = null;
let workletReady = false;
let audioFailed = false;
const frameQueue = [];
const checksumWaiters = new Map();
let checksumId = 0;

async function initAudio() {
  if (!window.AudioContext || !window.AudioWorkletNode) {
    audioFailed = true;
    showError('This browser has no AudioWorklet (it needs a secure context: https, or http://localhost / 127.0.0.1). The controls work; playback does not.');
    return;
  }
  try {
    ctx = new AudioContext({ sampleRate: 48000, latencyHint: 'interactive' });
  } catch (_) {
    ctx = new AudioContext({ latencyHint: 'interactive' }); // the worklet resamples
  }
  await ctx.audioWorklet.addModule(withToken('worklet.js'));
  node = new AudioWorkletNode(ctx, 'loop-player', {
    numberOfInputs: 0,
    numberOfOutputs: 1,
    outputChannelCount: [2],
    processorOptions: { sourceRate: S.rate },
  });
  gain = ctx.createGain();
  gain.gain.value = Number($('volume').value);
  node.connect(gain).connect(ctx.destination);
  node.port.onmessage = (e) => onWorklet(e.data);
  ctx.onstatechange = updatePlayButton;
  workletReady = true;
  for (const f of frameQueue.splice(0)) node.port.postMessage({ type: 'frame', buf: f }, [f]);
  updatePlayButton();
}

function toWorklet(msg, transfer) {
  if (node) node.port.postMessage(msg, transfer || []);
}

function onWorklet(m) {
  switch (m.type) {
    case 'frame':
      demon.slicesReceived = m.slices;
      demon.framesApplied = m.frames;
      demon.lateSlices = m.late;
      demon.lastFrame = m;
      if (m.kind === 0) S.fullAt = performance.now();
      // Where the playhead was when a live slice landed: what the adaptive lead learns from
      // (slices of a catch-up, just after a full frame, are not live).
      else if (S.playing && performance.now() - (S.fullAt || 0) > 1000) sendQuiet({ type: 'arrival', tick: m.tick, sample: m.pos });
      if (m.kind !== 0) {
        demon.lastSliceTick = m.tick;
        demon.recentSlices.push([m.start, m.n]);
        if (demon.recentSlices.length > 20000) demon.recentSlices.splice(0, 10000);
      }
      else if (m.len !== S.samples) songLength(m.len); // a source of another length
      $('r-slices').textContent = m.slices;
      break;
    case 'peaks': {
      if (!S.peaks || S.columns !== m.columns) {
        S.columns = m.columns;
        S.peaks = new Float32Array(2 * m.columns);
        S.patchedAt = new Float64Array(m.columns);
      }
      S.peaks.set(m.data, 2 * m.first);
      const now = performance.now();
      for (let c = m.first; c < m.first + m.data.length / 2; c++) S.patchedAt[c] = now;
      dirty.wave = true;
      dirty.curve = true;
      break;
    }
    case 'pos':
      S.pos = m.pos;
      S.posAt = performance.now();
      demon.slicesReceived = m.slices;
      demon.framesApplied = m.frames;
      demon.position = m.pos / S.rate;
      break;
    case 'heard': {
      // The output frame of the first sample played → performance.now() time it leaves the
      // output (getOutputTimestamp maps the two clocks; without it, the context clock and the
      // output latency the context reports).
      const ts = ctx.getOutputTimestamp ? ctx.getOutputTimestamp() : null;
      const sampleS = m.frame / ctx.sampleRate;
      const now = performance.now();
      const playedAt = ts && ts.performanceTime > 0
        ? ts.performanceTime + (sampleS - ts.contextTime) * 1000
        : now + (sampleS - ctx.currentTime + (ctx.outputLatency || ctx.baseLatency || 0)) * 1000;
      const agoMs = now - playedAt;
      for (const control of m.controls || []) {
        sendQuiet({ type: 'heard', control, ago_ms: agoMs });
        demon.heard.push({ control, agoMs, at: now });
      }
      if (demon.heard.length > 1000) demon.heard.splice(0, 500);
      break;
    }
    case 'mark':
    case 'diff':
    case 'compare':
    case 'checksum': {
      const w = checksumWaiters.get(m.id);
      if (w) {
        checksumWaiters.delete(m.id);
        w(m);
      }
      break;
    }
    case 'bad_frame':
      demon.badFrames.push(m.reason);
      showError(`bad audio frame: ${m.reason}`);
      break;
    default:
      break;
  }
}

// Ask the worklet something about its buffer (test hooks): checksum, mark, diff.
function askWorklet(type, extra, transfer) {
  if (!node) return Promise.reject(new Error('no audio worklet'));
  const id = ++checksumId;
  return new Promise((resolve) => {
    checksumWaiters.set(id, resolve);
    toWorklet(Object.assign({ type, id }, extra), transfer);
  });
}
const checksum = (start, n) => askWorklet('checksum', { start, n });

async function setPlaying(on, fromServer = false) {
  S.playing = on;
  toWorklet({ type: 'playing', playing: on });
  // Tell the session first: resume() can wait for a user gesture in some browsers.
  if (!fromServer) control({ type: 'set_playing', playing: on });
  if (ctx) {
    try {
      if (on) await ctx.resume();
      else await ctx.suspend();
    } catch (e) {
      showError(`audio: ${e.message}`);
    }
  }
  updatePlayButton();
}

function updatePlayButton() {
  const b = $('play');
  const audible = S.playing && ctx && ctx.state === 'running';
  demon.audioState = ctx ? ctx.state : 'none';
  b.classList.toggle('on', !!audible);
  b.innerHTML = audible ? '&#9632; Stop' : '&#9654; Play';
  const info = !ctx ? 'no audio' : `audio ${ctx.state} @ ${ctx.sampleRate} Hz${ctx.sampleRate !== S.rate ? ' (resampled)' : ''}`;
  $('audio-info').textContent = `${info}; session ${S.playing ? 'playing' : 'stopped'}`;
}

// ---------------------------------------------------------------- socket and requests

let ws = null;
let nextId = 1;
const pending = new Map(); // id → {t0, what, resolve, reject}
let retryTimer = 0;

// The zstd decoder for compressed deltas (fzstd, bundled under vendor/). The page asks for
// compressed deltas in its upgrade once the decoder is loaded; `?compress=none` in the page's
// address (or a decoder that failed to load) keeps them plain.
let zstd = null;
const zstdLoaded = query.get('compress') === 'none'
  ? Promise.resolve()
  : import(withToken('./vendor/fzstd.mjs'))
    .then((m) => {
      zstd = m;
    })
    .catch((e) => log('info', `no zstd decoder (${e.message}): deltas come uncompressed`));

function connect() {
  const params = new URLSearchParams();
  if (TOKEN) params.set('token', TOKEN);
  if (zstd) params.set('compress', 'zstd');
  const url = `${location.protocol === 'https:' ? 'wss' : 'ws'}://${location.host}/ws${params.size ? `?${params}` : ''}`;
  setConn('connecting…', false);
  ws = new WebSocket(url);
  ws.binaryType = 'arraybuffer';
  ws.onopen = () => setConn('waiting for ready…', false);
  ws.onmessage = (e) => {
    if (typeof e.data === 'string') {
      let m;
      try {
        m = JSON.parse(e.data);
      } catch (err) {
        showError(`server sent bad JSON: ${err.message}`);
        return;
      }
      onJson(m);
    } else onBinary(e.data);
  };
  ws.onclose = () => {
    demon.ready = false;
    setConn('offline', false);
    for (const [, p] of pending) p.reject(new Error('disconnected'));
    pending.clear();
    clearTimeout(retryTimer);
    retryTimer = setTimeout(connect, 1500);
  };
}

function setConn(text, on) {
  const c = $('conn');
  c.textContent = text;
  c.className = `conn ${on ? 'on' : 'off'}`;
}

function describe(obj) {
  if (obj.type === 'control') {
    const m = obj.message;
    return m.name ? `${m.type} ${m.name}` : m.type;
  }
  return obj.type;
}

// Send a request; resolves with the reply, rejects (after showing the error) on an error reply.
function request(obj, { quiet = false } = {}) {
  if (!ws || ws.readyState !== WebSocket.OPEN) {
    if (!quiet) showError(`not connected: ${describe(obj)} was not sent`);
    return Promise.reject(new Error('not connected'));
  }
  const id = nextId++;
  obj.id = id;
  return new Promise((resolve, reject) => {
    pending.set(id, { t0: performance.now(), what: describe(obj), resolve, reject, quiet });
    ws.send(JSON.stringify(obj));
  });
}

// A report the server does not answer (unless it refuses it): nothing to wait for.
function sendQuiet(obj) {
  if (ws && ws.readyState === WebSocket.OPEN) ws.send(JSON.stringify(obj));
}

function control(message, opts) {
  return request({ type: 'control', message }, opts).catch(() => null);
}

// Knob-to-ear per class: the last value and the running median (ms), from the pages' reports.
function showKnobToEar(k) {
  demon.knobToEar = k;
  const fmt = (c) => (k[c] && k[c].count ? `${k[c].last_ms.toFixed(0)}/${k[c].median_ms.toFixed(0)}` : '–');
  const el = $('r-ear');
  el.textContent = `${fmt('shared_lane')} · ${fmt('per_slot')}`;
  el.title = `knob → ear, last / median ms: shared lane ${fmt('shared_lane')}, per slot ${fmt('per_slot')}, prompt ${fmt('prompt')}, source ${fmt('source')}`;
}

// A compressed delta (flag bit 0 of header bytes 2–3) as the plain frame the worklet reads.
function unpackFrame(buf) {
  const flags = new DataView(buf).getUint16(2, true);
  if (!(flags & 1)) return buf;
  if (!zstd) throw new Error('a compressed frame, and no zstd decoder');
  const samples = zstd.decompress(new Uint8Array(buf, 28));
  const out = new Uint8Array(28 + samples.byteLength);
  out.set(new Uint8Array(buf, 0, 28));
  out.set(samples, 28);
  new DataView(out.buffer).setUint16(2, flags & ~1, true);
  demon.compressedBytes += buf.byteLength;
  demon.plainBytes += out.byteLength;
  return out.buffer;
}

function onBinary(raw) {
  demon.framesReceived++;
  let buf = raw;
  if (buf.byteLength >= 28) {
    try {
      buf = unpackFrame(raw);
    } catch (e) {
      // A frame lost is a mirror left: the resync brings a full frame.
      showError(`a compressed audio frame could not be decoded (${e.message}); resyncing`);
      if (ws && ws.readyState === WebSocket.OPEN) ws.send(JSON.stringify({ type: 'resync' }));
      return;
    }
    const dv = new DataView(buf);
    const kind = dv.getUint8(0);
    if (kind !== 0) {
      $('r-tick').textContent = dv.getUint32(12, true);
    }
  }
  // The socket opens after the worklet is up (or has failed), so frames are only queued in the
  // instant between; a delta can never be dropped (the client would leave the server's mirror).
  if (workletReady) node.port.postMessage({ type: 'frame', buf }, [buf]);
  else if (!audioFailed) frameQueue.push(buf);
}

function onJson(m) {
  switch (m.type) {
    case 'ready':
      onReady(m);
      break;
    case 'reply': {
      demon.lastReply = m;
      const p = pending.get(m.id);
      if (p) {
        pending.delete(m.id);
        const rtt = performance.now() - p.t0;
        if (typeof m.latency_ms === 'number') $('r-reply').textContent = `${m.latency_ms.toFixed(1)} / ${rtt.toFixed(0)}`;
        p.resolve(m);
      }
      break;
    }
    case 'error': {
      const p = m.id != null ? pending.get(m.id) : null;
      if (p) pending.delete(m.id);
      if (!p || !p.quiet) showError(`${p ? `${p.what}: ` : ''}${m.error} [${m.code}]`);
      if (p) p.reject(Object.assign(new Error(m.error), { code: m.code }));
      break;
    }
    case 'applied':
      onApplied(m);
      break;
    case 'stats':
      demon.lastStats = m;
      $('r-tick').textContent = m.tick;
      $('r-tickms').textContent = m.tick_ms.toFixed(1);
      $('r-decode').textContent = m.decode_ms.toFixed(1);
      $('r-gen').textContent = m.idle ? 'idle' : m.gen_per_s.toFixed(2);
      $('r-gen').title = m.idle ? 'idle pause: no control for --idle-pause-s seconds, so nothing new is generated and the loop plays what it holds; any control resumes' : 'generations finished per second';
      demon.idle = !!m.idle;
      $('r-lead').textContent = m.lead_ms.toFixed(0);
      $('r-slots').textContent = `${m.active_slots}/${m.queue}`;
      S.leadMs = m.lead_ms;
      showLoad(m.realtime);
      showKnobToEar(m.knob_to_ear || {});
      showLoudness(m.loudness);
      break;
    case 'reflects':
      // The first slice carrying these controls: the worklet says when it first plays it.
      toWorklet({ type: 'watch', controls: m.controls, start: m.start_sample, n: m.samples, tick: m.tick });
      break;
    case 'params':
      demon.lastParams = m;
      onParams(m);
      break;
    case 'state': {
      const p = pending.get(m.id);
      if (p) {
        pending.delete(m.id);
        p.resolve(m);
      }
      break;
    }
    case 'pong': {
      const p = pending.get(m.id);
      if (p) {
        pending.delete(m.id);
        p.resolve(m);
      }
      break;
    }
    case 'notice':
      showNotice(m.message);
      break;
    default:
      log('info', `unhandled message ${m.type}`);
  }
}

// ---------------------------------------------------------------- ready and state

function onReady(m) {
  S.ready = m;
  demon.compression = m.compression || 'none';
  S.clientId = m.client_id;
  S.rate = m.sample_rate;
  S.samples = m.samples;
  S.songSeconds = m.song_seconds;
  S.specs = new Map(m.knobs.map((k) => [k.name, k]));
  toWorklet({ type: 'rate', sourceRate: m.sample_rate });
  buildFaders(m.knobs);
  buildCurveTabs(m.curves || []);
  loadLibrary(m.library || []);
  applyState(m.state || {});
  const st = m.state || {};
  if (st.playhead_seconds != null) toWorklet({ type: 'seek', sample: st.playhead_seconds * S.rate });
  demon.clientId = m.client_id;
  demon.readyMessage = m;
  demon.ready = true;
  setConn(`${m.backend} · client ${m.client_id}`, true);
  $('loop-info').textContent = `${m.song_seconds.toFixed(1)} s · ${m.sample_rate} Hz · ${m.channels} ch`;
  log('info', `connected: ${m.backend} backend, ${m.song_seconds.toFixed(1)} s loop, ${m.knobs.length} knobs, ${(m.curves || []).length} curves`);
  updatePlayButton();
}

// The real-time budget: the load readout turns into the overload indicator while ticks take
// longer than the audio they make, with the depth the session lowered to.
function showLoad(rt) {
  if (!rt) return;
  demon.overloaded = rt.overloaded;
  demon.realtime = rt;
  const box = $('r-load-box');
  // The indicator stays lit while the policy holds the depth below the performer's: the
  // overload itself lasts only the few ticks the first step down takes.
  box.classList.toggle('over', rt.overloaded || rt.depth_cap != null);
  $('r-load-label').textContent = rt.overloaded ? 'overload' : rt.depth_cap != null ? 'capped' : 'load';
  const cap = rt.depth_cap != null ? ` d${rt.depth_cap}` : '';
  $('r-load').textContent = `${(rt.load * 100).toFixed(0)}%${cap}`;
  box.title = `ticks take ${(rt.load * 100).toFixed(0)}% of their ${rt.budget_ms.toFixed(0)} ms budget` +
    (rt.depth_cap != null ? `; depth lowered to ${rt.depth_cap} to keep real time` : '');
}

function songLength(samples) {
  S.samples = samples;
  S.songSeconds = samples / S.rate;
  if (S.band && S.band[1] > S.songSeconds) setBand(null);
  $('loop-info').textContent = `${S.songSeconds.toFixed(2)} s · ${S.rate} Hz · 2 ch`;
  dirty.wave = dirty.curve = true;
}

function applyState(st) {
  const targets = st.targets || {};
  const effective = st.knobs || {};
  for (const [name, spec] of S.specs) {
    const t = targets[name] ?? effective[name] ?? spec.default;
    const e = effective[name] ?? t;
    S.effective[name] = e;
    setKnobUI(name, t, true);
  }
  S.curves = Object.assign({}, st.curves || {});
  S.automation = Object.assign({}, st.automation || {});
  markCurved();
  const setText = (id, v) => {
    if (document.activeElement !== $(id)) $(id).value = v ?? '';
  };
  setText('prompt-a', st.prompt);
  setText('prompt-b', st.prompt_b);
  setText('negative', st.negative);
  negativeHint();
  setText('bpm', st.bpm);
  setText('key', st.key);
  setText('time-signature', st.time_signature);
  setText('lyrics', st.lyrics);
  setText('language', st.language);
  if (document.activeElement !== $('task')) $('task').value = st.task_auto === false ? st.task : 'auto';
  showAnalysis(st.source_analysis);
  if (st.solver) $('solver').value = st.solver;
  if (st.cfg_mode) $('cfg-mode').value = st.cfg_mode;
  if (st.dcw_enabled != null) $('dcw-on').checked = st.dcw_enabled;
  if (st.dcw_mode) $('dcw-mode').value = st.dcw_mode;
  if (st.dcw_wavelet) $('dcw-wavelet').value = st.dcw_wavelet;
  if (st.slew_per_second != null) $('slew').value = st.slew_per_second;
  setSourceName(st.source);
  setReferenceName('timbre', st.timbre_reference);
  setReferenceName('structure', st.structure_reference);
  setBand(st.loop_band || null);
  if (st.playing != null) {
    S.playing = st.playing;
    toWorklet({ type: 'playing', playing: st.playing });
  }
  showUsed(st.used);
  showAdapters(st);
  dirty.curve = true;
}

function setSourceName(name) {
  $('source-name').textContent = name ? `playing: ${name}` : 'no source (text to music)';
}

// ---------------------------------------------------------------- faders

const faders = new Map(); // knob → {el, input, val, eff, learn}
const pendingKnobs = new Map();
let sendTimer = 0;

function decimals(spec) {
  if (spec.integer) return 0;
  const r = spec.max - spec.min;
  return r <= 1.5 ? 3 : r <= 20 ? 2 : 1;
}

// Where a knob's fader goes.
function faderParent(name) {
  if (name === 'blend') return $('blend-slot');
  if (GROUPS.gen.includes(name)) return $('g-gen');
  if (GROUPS.step.includes(name)) return $('g-step');
  if (/^ch_[gk]\d+$/.test(name)) return $('g-ch'); // the eight groups, then the keystones
  if (name.startsWith('lora:')) return $('g-lora');
  return $('g-other');
}

function buildFaders(knobs) {
  for (const id of ['g-gen', 'g-step', 'g-ch', 'g-lora', 'g-other']) $(id).replaceChildren();
  $('blend-slot').replaceChildren();
  faders.clear();
  for (const spec of knobs) {
    if (spec.name === 'seed') continue; // a number field with a "new seed" button
    faderParent(spec.name).append(makeFader(spec));
  }
  $('other-title').classList.toggle('hidden', $('g-other').children.length === 0);
  refreshMidiMarks();
}

// Knobs added since the handshake (an adapter loaded from the library): a fader each, and a
// lane tab; the faders already there keep their state.
async function refreshKnobs() {
  let knobs;
  try {
    const r = await fetch(withToken('/api/knobs'));
    if (!r.ok) throw new Error(`${r.status} ${await r.text()}`);
    knobs = await r.json();
  } catch (e) {
    log('error', `could not read the knob list: ${e.message}`);
    return;
  }
  let added = 0;
  for (const spec of knobs) {
    if (S.specs.has(spec.name)) continue;
    S.specs.set(spec.name, spec);
    if (spec.name === 'seed') continue;
    faderParent(spec.name).append(makeFader(spec));
    setKnobUI(spec.name, S.target[spec.name] ?? spec.default, true);
    added++;
  }
  if (!added) return;
  $('other-title').classList.toggle('hidden', $('g-other').children.length === 0);
  refreshMidiMarks();
  buildCurveTabs((S.ready && S.ready.curves) || []);
}

function makeFader(spec) {
  const el = document.createElement('div');
  el.className = 'fader';
  el.dataset.knob = spec.name;
  el.title = `${spec.help}\nrange ${spec.min} … ${spec.max}, default ${spec.default}${spec.slewed ? ', slew-limited' : ''}; ${spec.class.replace(/_/g, ' ')}`;
  const name = document.createElement('span');
  name.className = 'name';
  name.textContent = spec.name.replace(/^lora:/, '').replace(/^ch_g(\d)$/, 'g$1').replace(/^ch_k(\d+)$/, 'k$1');
  const val = document.createElement('input');
  val.className = 'val';
  val.type = 'text';
  val.inputMode = 'decimal';
  val.setAttribute('aria-label', `${spec.name} value`);
  const learn = document.createElement('button');
  learn.className = 'learn';
  learn.textContent = 'L';
  learn.title = 'MIDI learn: then move a controller';
  learn.dataset.learn = spec.name;
  const track = document.createElement('div');
  track.className = 'track';
  const input = document.createElement('input');
  input.type = 'range';
  input.min = spec.min;
  input.max = spec.max;
  input.step = spec.integer ? 1 : (spec.max - spec.min) / 1000;
  input.value = spec.default;
  input.name = spec.name;
  input.setAttribute('aria-label', spec.name);
  const eff = document.createElement('div');
  eff.className = 'eff';
  track.append(input, eff);
  el.append(name, val, learn, track);

  input.addEventListener('input', () => userKnob(spec.name, Number(input.value), false));
  input.addEventListener('change', () => userKnob(spec.name, Number(input.value), true));
  input.addEventListener('dblclick', () => userKnob(spec.name, spec.default, true));
  input.addEventListener('keydown', (e) => {
    const r = spec.max - spec.min;
    let v = null;
    if (e.shiftKey && (e.key === 'ArrowRight' || e.key === 'ArrowUp')) v = Number(input.value) + r / 10;
    if (e.shiftKey && (e.key === 'ArrowLeft' || e.key === 'ArrowDown')) v = Number(input.value) - r / 10;
    if (v !== null) {
      e.preventDefault();
      userKnob(spec.name, v, true);
    }
  });
  val.addEventListener('change', () => {
    const v = Number(val.value);
    if (!Number.isFinite(v)) {
      showError(`${spec.name}: "${val.value}" is not a number`);
      setKnobUI(spec.name, S.target[spec.name], true);
      return;
    }
    const applied = clampKnob(spec.name, v);
    if (applied !== v) showNotice(`${spec.name}: ${v} is outside ${spec.min} … ${spec.max}; set to ${applied}`);
    // Out of the field first, so it shows the value sent; the server's next echo shows the
    // value it applied.
    val.blur();
    userKnob(spec.name, v, true);
    S.touched[spec.name] = 0;
  });
  val.addEventListener('keydown', (e) => {
    if (e.key === 'Escape') {
      setKnobUI(spec.name, S.target[spec.name], true);
      val.blur();
    }
  });
  el.addEventListener('mouseenter', () => ($('help').textContent = `${spec.name}: ${spec.help}  [${spec.min} … ${spec.max}]`));
  faders.set(spec.name, { el, input, val, eff, learn, spec });
  return el;
}

function clampKnob(name, v) {
  const spec = S.specs.get(name);
  if (!spec) return v;
  v = Math.min(spec.max, Math.max(spec.min, v));
  return spec.integer ? Math.round(v) : v;
}

// A change made by the performer (fader, field, key, MIDI): show it and send it.
function userKnob(name, value, flush) {
  if (S.automation[name]) {
    // The server refuses hand moves of an automated knob; say so here instead of sending one.
    showNotice(`${name} follows its automation lane: clear the lane to move it by hand`);
    setKnobUI(name, S.target[name], true);
    return;
  }
  const v = clampKnob(name, value);
  S.touched[name] = performance.now();
  setKnobUI(name, v, true);
  pendingKnobs.set(name, v);
  if (flush) flushKnobs();
  else if (!sendTimer) sendTimer = setTimeout(flushKnobs, SEND_INTERVAL_MS);
}

// One knob message in flight at a time: the server applies controls between ticks, so values
// that pile up while one is on its way are coalesced and only the latest of each is sent.
let knobsInFlight = false;
function flushKnobs() {
  clearTimeout(sendTimer);
  sendTimer = 0;
  if (pendingKnobs.size === 0 || knobsInFlight) return;
  const values = Object.fromEntries(pendingKnobs);
  pendingKnobs.clear();
  const names = Object.keys(values);
  const message = names.length === 1 ? { type: 'set_knob', name: names[0], value: values[names[0]] } : { type: 'set_knobs', values };
  knobsInFlight = true;
  control(message).finally(() => {
    knobsInFlight = false;
    if (pendingKnobs.size) flushKnobs();
  });
}

// Show a knob value (target) without sending it.
function setKnobUI(name, value, force) {
  if (!force && performance.now() - (S.touched[name] || 0) < TOUCH_HOLD_MS) return;
  const before = S.target[name];
  S.target[name] = value;
  // A library entry shows its adapter's strength (on 0.80 / off): whichever of the echoes, the
  // knob list and the state arrives last, the entry follows the fader.
  if (name.startsWith('lora:') && before !== value) renderLibraryEntry(name.slice(5));
  if (name === 'guidance') negativeHint();
  if (name === 'seed') {
    if (document.activeElement !== $('seed')) $('seed').value = value;
    return;
  }
  const f = faders.get(name);
  if (!f) return;
  const spec = f.spec;
  if (Number(f.input.value) !== value) f.input.value = value;
  const frac = (value - spec.min) / (spec.max - spec.min || 1);
  f.input.style.setProperty('--fill', `${(frac * 100).toFixed(2)}%`);
  if (document.activeElement !== f.val) f.val.value = Number(value).toFixed(decimals(spec));
  setEffectiveUI(name, S.effective[name] ?? value);
}

function setEffectiveUI(name, value) {
  S.effective[name] = value;
  const f = faders.get(name);
  if (!f) return;
  const frac = Math.min(1, Math.max(0, (value - f.spec.min) / (f.spec.max - f.spec.min || 1)));
  if (f.el.parentElement && f.el.parentElement.id === 'g-ch') f.eff.style.height = `${(frac * 100).toFixed(1)}%`;
  else f.eff.style.width = `${(frac * 100).toFixed(1)}%`;
}

function onParams(m) {
  for (const [name, v] of Object.entries(m.effective || {})) setEffectiveUI(name, v);
  for (const [name, v] of Object.entries(m.target || {})) {
    if (S.target[name] !== v && !pendingKnobs.has(name)) setKnobUI(name, v, false);
  }
}

// ---------------------------------------------------------------- echoes

function onApplied(m) {
  const msg = m.message || {};
  const mine = m.origin === S.clientId;
  switch (msg.type) {
    case 'set_knob':
      if (!mine) setKnobUI(msg.name, msg.value, false);
      // An adapter switched on or off adds or removes its trigger words.
      if (String(msg.name).startsWith('lora:')) refreshUsed();
      break;
    case 'set_knobs':
      if (!mine) for (const [k, v] of Object.entries(msg.values || {})) setKnobUI(k, v, false);
      break;
    case 'set_lora': {
      // Sent by the library's buttons (this page's too) and other clients, never by a fader.
      const knob = `lora:${msg.id}`;
      if (S.specs.has(knob)) setKnobUI(knob, msg.strength, mine);
      else refreshKnobs().then(() => setKnobUI(knob, msg.strength, true));
      refreshUsed();
      break;
    }
    case 'install_lora':
      // A library adapter is in the model now (whoever asked): its fader appears.
      refreshKnobs();
      refreshUsed();
      break;
    case 'set_curve':
      if (msg.curve) S.curves[msg.name] = msg.curve;
      else delete S.curves[msg.name];
      markCurved();
      dirty.curve = true;
      break;
    case 'set_automation':
      if (msg.lane) S.automation[msg.knob] = msg.lane;
      else delete S.automation[msg.knob];
      markCurved();
      dirty.curve = true;
      break;
    case 'set_prompt': {
      const put = (id, v) => {
        if (v != null && document.activeElement !== $(id)) $(id).value = v;
      };
      put('prompt-a', msg.prompt);
      put('prompt-b', msg.prompt_b);
      put('negative', msg.negative);
      negativeHint();
      put('bpm', msg.bpm);
      put('key', msg.key);
      put('time-signature', msg.time_signature === 0 ? '' : msg.time_signature);
      put('lyrics', msg.lyrics);
      put('language', msg.language);
      put('task', msg.task);
      refreshUsed();
      break;
    }
    case 'clear_bpm':
      if (document.activeElement !== $('bpm')) $('bpm').value = '';
      refreshUsed();
      break;
    case 'load_preset':
      refreshUsed();
      break;
    case 'set_reference': {
      const r = msg.source || {};
      setReferenceName(msg.role, r.kind === 'none' ? null : r.name || (r.kind === 'library' ? `library:${r.style}:${r.index}` : r.path || r.kind));
      break;
    }
    case 'set_solver':
      $('solver').value = msg.solver;
      break;
    case 'set_cfg_mode':
      $('cfg-mode').value = msg.mode;
      break;
    case 'set_dcw':
      if (msg.enabled != null) $('dcw-on').checked = msg.enabled;
      if (msg.mode) $('dcw-mode').value = msg.mode;
      if (msg.wavelet) $('dcw-wavelet').value = msg.wavelet;
      break;
    case 'set_source': {
      const s = msg.source || {};
      setSourceName(s.kind === 'none' ? null : s.name || (s.kind === 'library' ? `library:${s.style}:${s.index}` : s.path || s.kind));
      // The source's analysis (and the tempo and key it lends the prompt) came with it.
      refreshUsed();
      break;
    }
    case 'set_loop_band':
      setBand([msg.start_s, msg.end_s]);
      break;
    case 'clear_loop_band':
      setBand(null);
      break;
    case 'seek':
      if (!mine) toWorklet({ type: 'seek', sample: msg.seconds * S.rate });
      break;
    case 'set_playing':
      if (!mine) setPlaying(msg.playing, true);
      break;
    case 'set_slew':
      $('slew').value = msg.per_second;
      break;
    default:
      break;
  }
  if (!mine) log('info', `client ${m.origin}: ${msg.type}${msg.name ? ` ${msg.name}` : ''}`);
}

// ---------------------------------------------------------------- prompt, engine, source

function sendPrompt() {
  const message = {
    type: 'set_prompt',
    prompt: $('prompt-a').value,
    prompt_b: $('prompt-b').value,
    negative: $('negative').value,
    key: $('key').value,
    lyrics: $('lyrics').value,
    language: $('language').value,
    task: $('task').value,
  };
  const ts = $('time-signature').value.trim();
  if (ts !== '') {
    const t = Number(ts);
    if (!Number.isInteger(t) || t < 1 || t > 16) return showError(`time signature "${ts}" is not a whole number of beats from 1 to 16`);
    message.time_signature = t;
  } else {
    message.time_signature = 0;
  }
  const bpm = $('bpm').value.trim();
  if (bpm !== '') {
    const b = Number(bpm);
    if (!Number.isFinite(b)) return showError(`bpm "${bpm}" is not a number`);
    message.bpm = b;
  }
  control(message).then((r) => r && log('info', 'prompt applied'));
}

function setBand(band) {
  S.band = band;
  if (band) {
    toWorklet({ type: 'band', start: band[0] * S.rate, end: band[1] * S.rate });
    $('band-info').textContent = `band ${band[0].toFixed(2)} – ${band[1].toFixed(2)} s`;
  } else {
    toWorklet({ type: 'band', start: null, end: null });
    $('band-info').textContent = 'no loop band';
  }
  dirty.wave = true;
}

let library = [];
async function loadLibrary(fromReady) {
  let list = fromReady;
  try {
    const r = await fetch(withToken('/api/library'));
    if (r.ok) list = await r.json();
  } catch (_) {
    /* use the list from `ready` */
  }
  library = list
    .map((s) => {
      const m = /^library:(.+):(\d+)$/.exec(s);
      return m ? { id: s, style: m[1], index: Number(m[2]) } : null;
    })
    .filter(Boolean);
  const sel = $('library');
  sel.replaceChildren(new Option(library.length ? 'library…' : 'no library', ''));
  let group = null;
  for (const item of library) {
    if (!group || group.label !== item.style.replace(/_/g, ' ')) {
      group = document.createElement('optgroup');
      group.label = item.style.replace(/_/g, ' ');
      sel.append(group);
    }
    group.append(new Option(`${item.style.replace(/_/g, ' ')} #${item.index}`, item.id));
  }
  $('load-library').disabled = library.length === 0;
  for (const role of REF_ROLES) {
    const rs = $(`ref-${role}-library`);
    if (!rs) continue;
    rs.replaceChildren(new Option(library.length ? 'library…' : 'no library', ''));
    for (const g of sel.querySelectorAll('optgroup')) rs.append(g.cloneNode(true));
  }
}

function loadLibrarySource() {
  const item = library.find((x) => x.id === $('library').value);
  if (!item) return showError('choose a library song first');
  control({ type: 'set_source', source: { kind: 'library', style: item.style, index: item.index } }).then((r) => r && log('info', `source: ${item.id}`));
}

let lastUpload = null; // the last upload the server accepted (its preview comes back after a rejected one)
async function uploadFile(file) {
  if (!file) return;
  if (file.size > MAX_UPLOAD) return showError(`${file.name} is ${(file.size / 1048576).toFixed(1)} MiB; uploads are limited to 64 MiB`);
  const bytes = await file.arrayBuffer();
  $('upload-info').textContent = `${file.name}: decoding preview…`;
  drawUploadWave(bytes.slice(0), file.name);
  if (!ws || ws.readyState !== WebSocket.OPEN) return showError('not connected: upload not sent');
  $('upload-info').textContent = `${file.name}: uploading ${(bytes.byteLength / 1024).toFixed(0)} KiB…`;
  const done = sendUpload(bytes, file.name, null);
  try {
    const r = await done;
    $('upload-info').textContent = `${file.name}: now the source`;
    lastUpload = { bytes, name: file.name };
    log('info', `uploaded ${r.source}`);
  } catch (e) {
    $('upload-info').textContent = `${file.name}: rejected${lastUpload ? `; ${lastUpload.name} stays` : ''}`;
    if (lastUpload) drawUploadWave(lastUpload.bytes.slice(0), lastUpload.name);
  }
}

// An `upload` request and its one binary frame: the new source, or with `role` the timbre
// or structure reference. Resolves with the reply; rejects (after showing the error) on a
// refusal or when not connected.
function sendUpload(bytes, name, role) {
  if (!ws || ws.readyState !== WebSocket.OPEN) {
    showError(`not connected: ${name} was not uploaded`);
    return Promise.reject(new Error('not connected'));
  }
  const done = request(role ? { type: 'upload', name, role } : { type: 'upload', name });
  ws.send(bytes);
  return done;
}

// ---------------------------------------------------------------- references

// The timbre and structure faders steer toward a separate reference instead of the source's
// own (issue 12, item 1): a library song, an uploaded file, a file in the server's media
// folders, or up to MIC_MAX_S of the microphone, recorded here and uploaded as a WAV.
const REF_ROLES = ['timbre', 'structure'];
const MIC_MAX_S = 60;
let mic = null; // the recording in progress: {role, stream, src, rec, sink, chunks, frames, rate, timer, t0}

function setReferenceName(role, name) {
  const el = $(`ref-${role}-name`);
  if (el) el.textContent = name ? `reference: ${name}` : "the source's own";
  demon.references[role] = name || null;
}

function setReference(role, source, what) {
  return control({ type: 'set_reference', role, source }).then((r) => r && log('info', `${role} reference: ${what}`));
}

async function uploadReference(role, file) {
  if (!file) return;
  if (file.size > MAX_UPLOAD) return showError(`${file.name} is ${(file.size / 1048576).toFixed(1)} MiB; uploads are limited to 64 MiB`);
  const bytes = await file.arrayBuffer();
  $(`ref-${role}-name`).textContent = `${file.name}: uploading…`;
  try {
    const r = await sendUpload(bytes, file.name, role);
    log('info', `${role} reference: ${r.source || file.name}`);
  } catch (_) {
    refreshUsed(); // the name the reference keeps
  }
}

// Mono 16-bit PCM WAV of `samples` (Float32Array) at `rate` Hz.
function wavBytes(samples, rate) {
  const buf = new ArrayBuffer(44 + samples.length * 2);
  const dv = new DataView(buf);
  const text = (at, t) => [...t].forEach((c, i) => dv.setUint8(at + i, c.charCodeAt(0)));
  text(0, 'RIFF');
  dv.setUint32(4, 36 + samples.length * 2, true);
  text(8, 'WAVEfmt ');
  dv.setUint32(16, 16, true);
  dv.setUint16(20, 1, true);
  dv.setUint16(22, 1, true);
  dv.setUint32(24, rate, true);
  dv.setUint32(28, rate * 2, true);
  dv.setUint16(32, 2, true);
  dv.setUint16(34, 16, true);
  text(36, 'data');
  dv.setUint32(40, samples.length * 2, true);
  for (let i = 0; i < samples.length; i++) {
    const v = Math.max(-1, Math.min(1, samples[i]));
    dv.setInt16(44 + 2 * i, Math.round(v * 32767), true);
  }
  return buf;
}

async function toggleMic(role) {
  if (mic) return stopMic(); // whichever role's mic is pressed, the recording goes to its own role
  if (!navigator.mediaDevices || !navigator.mediaDevices.getUserMedia) return showError('this browser gives no microphone here (it needs https or localhost)');
  if (!ctx || !workletReady) return showError('start the audio first (the microphone is recorded through its AudioContext)');
  let stream;
  try {
    stream = await navigator.mediaDevices.getUserMedia({ audio: { echoCancellation: false, noiseSuppression: false, autoGainControl: false } });
  } catch (e) {
    return showError(`microphone: ${e.message || e.name}`);
  }
  const src = ctx.createMediaStreamSource(stream);
  const rec = new AudioWorkletNode(ctx, 'mic-recorder', { numberOfInputs: 1, numberOfOutputs: 1, outputChannelCount: [1] });
  // Pulled by the graph through a silent gain, so the recorder runs without being heard.
  const sink = ctx.createGain();
  sink.gain.value = 0;
  src.connect(rec).connect(sink).connect(ctx.destination);
  mic = { role, stream, src, rec, sink, chunks: [], frames: 0, rate: ctx.sampleRate, t0: performance.now(), timer: 0 };
  const m = mic;
  rec.port.onmessage = (e) => {
    if (e.data.type === 'mic') {
      m.chunks.push(e.data.data);
      m.frames += e.data.data.length;
      if (m.frames >= MIC_MAX_S * m.rate && mic === m) stopMic();
    } else if (e.data.type === 'stopped') m.done && m.done();
  };
  const btn = $(`ref-${role}-mic`);
  btn.classList.add('on');
  m.timer = setInterval(() => (btn.textContent = `stop ${((performance.now() - m.t0) / 1000).toFixed(0)} s`), 250);
  log('info', `${role} reference: recording the microphone (up to ${MIC_MAX_S} s; press again to stop)`);
}

// Stop the microphone recording and upload it as its role's reference.
async function stopMic() {
  const m = mic;
  if (!m) return;
  mic = null;
  clearInterval(m.timer);
  const btn = $(`ref-${m.role}-mic`);
  btn.classList.remove('on');
  btn.textContent = 'mic';
  const stopped = new Promise((resolve) => (m.done = resolve));
  m.rec.port.postMessage({ type: 'stop' });
  await Promise.race([stopped, new Promise((r) => setTimeout(r, 500))]);
  m.src.disconnect();
  m.rec.disconnect();
  m.sink.disconnect();
  for (const t of m.stream.getTracks()) t.stop();
  const n = Math.min(m.frames, MIC_MAX_S * m.rate);
  if (n < m.rate / 4) return showError('microphone: under ¼ s recorded, nothing uploaded');
  const all = new Float32Array(n);
  let at = 0;
  for (const c of m.chunks) {
    const take = Math.min(c.length, n - at);
    all.set(c.subarray(0, take), at);
    at += take;
  }
  const name = `microphone-${new Date().toISOString().slice(11, 19).replace(/:/g, '')}.wav`;
  demon.micSeconds = n / m.rate;
  $(`ref-${m.role}-name`).textContent = `${name}: uploading…`;
  try {
    const r = await sendUpload(wavBytes(all, m.rate), name, m.role);
    log('info', `${m.role} reference: ${r.source || name} (${(n / m.rate).toFixed(1)} s of microphone)`);
  } catch (_) {
    refreshUsed();
  }
}

function buildReferenceRows() {
  const host = $('ref-rows');
  host.replaceChildren();
  for (const role of REF_ROLES) {
    const row = document.createElement('div');
    row.className = 'ref-row';
    row.innerHTML = `<div class="row"><b>${role}</b> <span class="dim" id="ref-${role}-name">the source's own</span></div>
      <div class="row">
        <select id="ref-${role}-library" title="A library song as the ${role} reference"><option value="">library…</option></select>
        <label class="file"><input id="ref-${role}-upload" type="file" accept="audio/*,.wav,.flac,.mp3,.ogg">upload…</label>
        <input id="ref-${role}-path" type="text" class="ref-path" placeholder="media file" title="A file in the server's media folders (--media-dir), as a path; Enter sets it">
        <button id="ref-${role}-mic" title="Record up to ${MIC_MAX_S} s of the microphone as the ${role} reference; press again to stop and upload">mic</button>
        <button id="ref-${role}-clear" title="No ${role} reference: the ${role} fader follows the source again">clear</button>
      </div>`;
    host.append(row);
    $(`ref-${role}-library`).addEventListener('change', (e) => {
      const item = library.find((x) => x.id === e.target.value);
      if (item) setReference(role, { kind: 'library', style: item.style, index: item.index }, item.id);
      e.target.value = '';
    });
    $(`ref-${role}-upload`).addEventListener('change', (e) => {
      uploadReference(role, e.target.files[0]);
      e.target.value = '';
    });
    $(`ref-${role}-path`).addEventListener('keydown', (e) => {
      if (e.key !== 'Enter') return;
      e.preventDefault();
      const path = e.target.value.trim();
      if (path) setReference(role, { kind: 'file', path }, path);
    });
    $(`ref-${role}-mic`).addEventListener('click', () => toggleMic(role));
    $(`ref-${role}-clear`).addEventListener('click', () => setReference(role, { kind: 'none' }, 'cleared'));
    // A file dropped on the row is that role's reference, not the source.
    row.addEventListener('dragover', (e) => {
      e.preventDefault();
      row.classList.add('drop');
    });
    row.addEventListener('dragleave', () => row.classList.remove('drop'));
    row.addEventListener('drop', (e) => {
      e.preventDefault();
      e.stopPropagation();
      row.classList.remove('drop');
      if (e.dataTransfer.files.length) uploadReference(role, e.dataTransfer.files[0]);
    });
  }
}

function uploadHint() {
  const cv = $('upload-wave');
  const g = sizeCanvas(cv);
  g.clearRect(0, 0, cv.width, cv.height);
  g.fillStyle = '#7d8491';
  g.font = `${10 * devicePixelRatio}px monospace`;
  g.fillText('drop an audio file on this panel, or choose one: its waveform shows here', 6 * devicePixelRatio, cv.height / 2 + 3 * devicePixelRatio);
}

async function drawUploadWave(bytes, name) {
  const cv = $('upload-wave');
  const g = sizeCanvas(cv);
  const { width: w, height: h } = cv;
  g.clearRect(0, 0, w, h);
  try {
    const dc = ctx || new OfflineAudioContext(2, 1, 48000);
    const audio = await dc.decodeAudioData(bytes);
    const chans = [];
    for (let c = 0; c < audio.numberOfChannels; c++) chans.push(audio.getChannelData(c));
    const n = audio.length;
    g.fillStyle = '#ffb347';
    for (let x = 0; x < w; x++) {
      const a = Math.floor((x * n) / w), b = Math.max(a + 1, Math.floor(((x + 1) * n) / w));
      let lo = 0, hi = 0;
      for (let i = a; i < b && i < n; i++) {
        let v = 0;
        for (const ch of chans) v += ch[i];
        v /= chans.length;
        if (v < lo) lo = v;
        if (v > hi) hi = v;
      }
      g.fillRect(x, h / 2 - hi * (h / 2), 1, Math.max(1, (hi - lo) * (h / 2)));
    }
    g.fillStyle = '#7d8491';
    g.font = `${10 * devicePixelRatio}px monospace`;
    g.fillText(`${name} · ${audio.duration.toFixed(1)} s · ${audio.numberOfChannels} ch · ${audio.sampleRate} Hz`, 4, 12 * devicePixelRatio);
  } catch (_) {
    g.fillStyle = '#7d8491';
    g.font = `${10 * devicePixelRatio}px monospace`;
    g.fillText(`${name}: the browser cannot preview this file (the server decodes it)`, 4, 12 * devicePixelRatio);
  }
}

// ---------------------------------------------------------------- recording

async function toggleRecord() {
  if (!S.recording) {
    try {
      const r = await request({ type: 'record', action: 'start' });
      S.recording = true;
      S.recStarted = performance.now();
      $('download').classList.add('hidden');
      log('info', `recording ${r.recording}`);
    } catch (_) {
      return;
    }
  } else {
    try {
      const r = await request({ type: 'record', action: 'stop' });
      S.recording = false;
      if (r.url) {
        const a = $('download');
        a.href = withToken(r.url);
        a.download = r.url.split('/').pop();
        a.textContent = `download WAV (${r.seconds.toFixed(1)} s)`;
        a.classList.remove('hidden');
        demon.lastRecording = r.url;
        a.click();
        log('info', `recorded ${r.seconds.toFixed(1)} s: ${r.url}`);
      } else showNotice('the recording was empty');
    } catch (_) {
      S.recording = false;
    }
  }
  $('rec').classList.toggle('on', S.recording);
  if (!S.recording) $('rec').innerHTML = '&#9679; Rec';
}

// ---------------------------------------------------------------- canvases

const dirty = { wave: true, curve: true, hover: false };

function sizeCanvas(cv) {
  const dpr = devicePixelRatio || 1;
  const w = Math.max(1, Math.round(cv.clientWidth * dpr));
  const h = Math.max(1, Math.round(cv.clientHeight * dpr));
  if (cv.width !== w || cv.height !== h) {
    cv.width = w;
    cv.height = h;
  }
  return cv.getContext('2d');
}

function currentPos() {
  // The worklet reports about every 20 ms; extrapolate in between while audio runs.
  let p = S.pos;
  if (ctx && ctx.state === 'running' && S.playing && S.samples) {
    p += ((performance.now() - S.posAt) / 1000) * S.rate;
    const lo = S.band ? S.band[0] * S.rate : 0, hi = S.band ? S.band[1] * S.rate : S.samples;
    if (p >= hi) p = lo + ((p - hi) % Math.max(1, hi - lo));
  }
  return p;
}

function drawWave() {
  const cv = $('wave');
  const g = sizeCanvas(cv);
  const { width: w, height: h } = cv;
  g.fillStyle = '#0a0b0e';
  g.fillRect(0, 0, w, h);
  const songS = S.songSeconds || 1;
  const x = (s) => (s / songS) * w;
  // seconds grid
  g.fillStyle = '#1a1d24';
  const stepS = songS > 120 ? 10 : songS > 30 ? 5 : 1;
  for (let s = 0; s < songS; s += stepS) g.fillRect(Math.round(x(s)), 0, 1, h);
  if (S.band) {
    g.fillStyle = '#ffb34722';
    g.fillRect(x(S.band[0]), 0, x(S.band[1]) - x(S.band[0]), h);
    g.fillStyle = '#ffb347';
    g.fillRect(x(S.band[0]), 0, 1, h);
    g.fillRect(x(S.band[1]) - 1, 0, 1, h);
  }
  if (drag && drag.band) {
    g.fillStyle = '#3fd0c933';
    g.fillRect(Math.min(drag.x0, drag.x1), 0, Math.abs(drag.x1 - drag.x0), h);
  }
  if (S.peaks) {
    const now = performance.now();
    const cols = S.columns;
    for (let px = 0; px < w; px++) {
      const c0 = Math.floor((px * cols) / w), c1 = Math.max(c0 + 1, Math.floor(((px + 1) * cols) / w));
      let lo = 0, hi = 0, fresh = 0;
      for (let c = c0; c < c1 && c < cols; c++) {
        if (S.peaks[2 * c] < lo) lo = S.peaks[2 * c];
        if (S.peaks[2 * c + 1] > hi) hi = S.peaks[2 * c + 1];
        fresh = Math.max(fresh, 1 - (now - S.patchedAt[c]) / 700);
      }
      g.fillStyle = fresh > 0 ? `rgb(${255}, ${Math.round(91 + 130 * (1 - fresh))}, ${Math.round(55 + 120 * (1 - fresh))})` : '#c9854a';
      const y0 = h / 2 - hi * (h / 2) * 0.95, y1 = h / 2 - lo * (h / 2) * 0.95;
      g.fillRect(px, y0, 1, Math.max(1, y1 - y0));
      if (fresh > 0) dirty.wave = true; // keep fading the flash of fresh patches
    }
  }
  if (hoverX != null) {
    g.fillStyle = '#7d8491';
    g.font = `${10 * devicePixelRatio}px monospace`;
    g.fillText(`${((hoverX / w) * songS).toFixed(2)} s`, Math.min(hoverX + 4, w - 50 * devicePixelRatio), 12 * devicePixelRatio);
  }
}

let drag = null;
let hoverX = null;
function setupWave() {
  const cv = $('wave');
  const px = (e) => (e.offsetX / cv.clientWidth) * cv.width;
  cv.addEventListener('pointerdown', (e) => {
    cv.setPointerCapture(e.pointerId);
    drag = { x0: px(e), x1: px(e), band: false };
  });
  cv.addEventListener('pointermove', (e) => {
    hoverX = px(e);
    dirty.hover = true;
    if (drag) {
      drag.x1 = px(e);
      drag.band = Math.abs(drag.x1 - drag.x0) > 4 * devicePixelRatio;
    }
  });
  cv.addEventListener('pointerleave', () => {
    hoverX = null;
    dirty.wave = true;
  });
  cv.addEventListener('pointerup', (e) => {
    if (!drag) return;
    const w = cv.width;
    const t = (v) => Math.min(S.songSeconds, Math.max(0, (v / w) * S.songSeconds));
    if (drag.band) {
      const a = t(Math.min(drag.x0, drag.x1)), b = t(Math.max(drag.x0, drag.x1));
      bandControl({ type: 'set_loop_band', start_s: a, end_s: b }, [a, b]);
    } else {
      const s = t(drag.x0);
      toWorklet({ type: 'seek', sample: s * S.rate });
      S.pos = s * S.rate;
      S.posAt = performance.now();
      // Until the seek's reply, the session's state may not have it yet (see syncPlayhead).
      S.localSeekAt = S.posAt;
      S.seekPending = true;
      control({ type: 'seek', seconds: s }).then(() => {
        S.seekPending = false;
        S.localSeekAt = performance.now();
      });
    }
    drag = null;
  });
}

// ---------------------------------------------------------------- curves

let curveSel = null;
let curveKind = 'curve'; // 'curve': a per-frame curve; 'lane': a knob's automation lane
let draft = null; // Float32Array while drawing
let lastIdx = -1;
// Knobs offered as automation tabs (DEMON automates these; any knob but depth and steps can
// carry a lane through the API), and every adapter's strength.
const LANE_KNOBS = ['denoise', 'structure', 'timbre', 'feedback', 'shift', 'blend', 'guidance'];
const LANE_POINTS = 65;

function curveRange(name) {
  const spec = S.specs.get(name);
  return spec ? [spec.min, spec.max] : [0, 1];
}

function buildCurveTabs(names) {
  const tabs = $('curve-tabs');
  tabs.replaceChildren();
  for (const n of names) {
    const b = document.createElement('button');
    b.textContent = n;
    b.dataset.curve = n;
    b.addEventListener('click', () => selectCurve(n, 'curve'));
    tabs.append(b);
  }
  const lanes = $('lane-tabs');
  for (const b of [...lanes.querySelectorAll('button')]) b.remove();
  const knobs = [...LANE_KNOBS.filter((k) => S.specs.has(k)), ...[...S.specs.keys()].filter((k) => k.startsWith('lora:'))];
  for (const k of knobs) {
    const b = document.createElement('button');
    b.textContent = k;
    b.dataset.lane = k;
    b.addEventListener('click', () => selectCurve(k, 'lane'));
    lanes.append(b);
  }
  const keep = curveKind === 'curve' ? names.includes(curveSel) : knobs.includes(curveSel);
  if (keep) selectCurve(curveSel, curveKind);
  else selectCurve(names[0] || null, 'curve');
}

function selectCurve(name, kind) {
  curveSel = name;
  curveKind = kind || 'curve';
  for (const b of $('curve-tabs').children) b.classList.toggle('sel', curveKind === 'curve' && b.dataset.curve === name);
  for (const b of $('lane-tabs').querySelectorAll('button')) b.classList.toggle('sel', curveKind === 'lane' && b.dataset.lane === name);
  if (curveKind === 'lane' && S.automation[name]) $('lane-interp').value = S.automation[name].interpolation || 'linear';
  markCurved();
  dirty.curve = true;
}

function markCurved() {
  for (const b of $('curve-tabs').children) b.classList.toggle('active', !!S.curves[b.dataset.curve]);
  for (const b of $('lane-tabs').querySelectorAll('button')) b.classList.toggle('active', !!S.automation[b.dataset.lane]);
  for (const [name, f] of faders) {
    f.el.classList.toggle('curved', !!S.curves[name]);
    f.el.classList.toggle('automated', !!S.automation[name]);
  }
  if (curveSel) {
    const [lo, hi] = curveRange(curveSel);
    if (curveKind === 'lane') {
      const l = S.automation[curveSel];
      $('curve-info').textContent = `automate ${curveSel} [${lo} … ${hi}]: ${l ? `${l.interpolation || 'linear'} lane of ${l.points.length} points (the playhead moves the knob)` : 'no lane (the knob is moved by hand)'}`;
    } else {
      const c = S.curves[curveSel];
      $('curve-info').textContent = `${curveSel} [${lo} … ${hi}]: ${c ? `${c.type} curve` : 'no curve (the knob applies)'}`;
    }
  }
}

// A lane's value at `t` seconds (as the server does, demon-live automation.rs).
function laneValueAt(lane, t) {
  const p = lane.points || [];
  if (!p.length) return 0;
  let next = 0;
  while (next < p.length && p[next].at_s <= t) next++;
  if (next === 0) return p[0].value;
  const a = p[next - 1], b = p[next];
  if (!b) return a.value;
  const u = Math.min(1, Math.max(0, (t - a.at_s) / (b.at_s - a.at_s)));
  const w = lane.interpolation === 'step' ? 0 : lane.interpolation === 'smooth' ? u * u * (3 - 2 * u) : u;
  return a.value + (b.value - a.value) * w;
}

function evalLane(lane, n) {
  const out = new Float32Array(n);
  const song = S.songSeconds || 1;
  for (let i = 0; i < n; i++) out[i] = laneValueAt(lane, (song * i) / Math.max(1, n - 1));
  return out;
}

// What the canvas shows for the selected tab: its drawn curve or its lane, at `n` points.
function selectedValues(n) {
  if (curveKind === 'lane') return S.automation[curveSel] ? evalLane(S.automation[curveSel], n) : null;
  return S.curves[curveSel] ? evalCurve(S.curves[curveSel], n) : null;
}

// `values` over the whole song as a lane of LANE_POINTS points.
function laneOf(values) {
  const song = S.songSeconds || 1;
  const points = [];
  for (let i = 0; i < LANE_POINTS; i++) {
    const x = i / (LANE_POINTS - 1);
    const v = values[Math.round(x * (values.length - 1))];
    points.push({ at_s: Math.round(x * song * 1e4) / 1e4, value: clampKnob(curveSel, Math.round(v * 1e4) / 1e4) });
  }
  return { points, interpolation: $('lane-interp').value };
}

function sendLane(knob, lane) {
  control({ type: 'set_automation', knob, lane }).then((r) => {
    if (!r) return;
    if (lane) S.automation[knob] = lane;
    else delete S.automation[knob];
    markCurved();
    dirty.curve = true;
  });
  dirty.curve = true;
}

// The selected tab's shape from the buttons (ramp, sine), as a curve or as a lane.
// A shape button's curve, combined with what is drawn now by the curve-maths menu
// (set replaces it; add, multiply, min and max combine the two).
function sendShape(shape) {
  if (!curveSel) return;
  const op = $('curve-op').value;
  const current = curveKind === 'lane' ? null : S.curves[curveSel];
  const spec = op !== 'set' && current ? { type: op, a: current, b: shape } : shape;
  if (curveKind === 'lane') sendLane(curveSel, laneOf(evalCurve(spec, CURVE_POINTS)));
  else sendCurve(curveSel, spec);
}

// Evaluate a curve spec at `n` points over the song (as the server does, demon-engine curve.rs).
function evalCurve(spec, n) {
  const out = new Float32Array(n);
  const tau = (i) => (n <= 1 ? 0 : i / (n - 1));
  const per = (min, max, f) => {
    for (let i = 0; i < n; i++) out[i] = min + (max - min) * f(tau(i));
  };
  const frac = (x) => x - Math.floor(x);
  switch (spec.type) {
    case 'constant':
      out.fill(spec.value);
      break;
    case 'ramp':
      per(spec.start, spec.end, (x) => x);
      break;
    case 'sine':
      per(spec.min ?? 0, spec.max ?? 1, (x) => 0.5 + 0.5 * Math.sin(2 * Math.PI * ((spec.cycles ?? 1) * x + (spec.phase ?? 0))));
      break;
    case 'pulse': {
      const c = spec.cycles ?? 1, d = spec.duty ?? 0.25;
      per(spec.min ?? 0, spec.max ?? 1, (x) => {
        const ph = frac(c * x);
        return ph >= d ? 0 : 1 - Math.abs((2 * ph) / d - 1);
      });
      break;
    }
    case 'square': {
      const c = spec.cycles ?? 1, d = spec.duty ?? 0.5;
      per(spec.min ?? 0, spec.max ?? 1, (x) => (frac(c * x) < d ? 1 : 0));
      break;
    }
    case 'raw': {
      const v = spec.values || [];
      for (let i = 0; i < n; i++) {
        if (v.length === 0) break;
        if (v.length === 1 || n <= 1) {
          out[i] = v[0];
          continue;
        }
        const p = (i * (v.length - 1)) / (n - 1);
        const a = Math.min(v.length - 1, Math.floor(p)), b = Math.min(v.length - 1, a + 1);
        out[i] = v[a] + (v[b] - v[a]) * (p - a);
      }
      break;
    }
    case 'add':
    case 'multiply':
    case 'min':
    case 'max': {
      const a = evalCurve(spec.a, n), b = evalCurve(spec.b, n);
      const op = { add: (x, y) => x + y, multiply: (x, y) => x * y, min: Math.min, max: Math.max }[spec.type];
      for (let i = 0; i < n; i++) out[i] = op(a[i], b[i]);
      break;
    }
    case 'lerp': {
      const a = evalCurve(spec.a, n), b = evalCurve(spec.b, n), t = evalCurve(spec.t, n);
      for (let i = 0; i < n; i++) out[i] = a[i] + (b[i] - a[i]) * t[i];
      break;
    }
    default:
      break;
  }
  return out;
}

function knobOrMid(name) {
  if (S.target[name] != null) return S.target[name];
  const [lo, hi] = curveRange(name);
  return name === 'initial_noise' ? hi : (lo + hi) / 2;
}

function drawCurve() {
  const cv = $('curve');
  const g = sizeCanvas(cv);
  const { width: w, height: h } = cv;
  g.fillStyle = '#0a0b0e';
  g.fillRect(0, 0, w, h);
  if (!curveSel) return;
  const [lo, hi] = curveRange(curveSel);
  const yOf = (v) => h - 6 - ((v - lo) / (hi - lo || 1)) * (h - 12);
  // faint waveform for orientation
  if (S.peaks) {
    g.fillStyle = '#ffffff10';
    for (let px = 0; px < w; px++) {
      const c = Math.floor((px * S.columns) / w);
      const a = S.peaks[2 * c], b = S.peaks[2 * c + 1];
      g.fillRect(px, h / 2 - b * h * 0.45, 1, Math.max(1, (b - a) * h * 0.45));
    }
  }
  if (S.band) {
    g.fillStyle = '#ffb34714';
    const songS = S.songSeconds || 1;
    g.fillRect((S.band[0] / songS) * w, 0, ((S.band[1] - S.band[0]) / songS) * w, h);
  }
  // range lines
  g.fillStyle = '#272b34';
  g.fillRect(0, yOf(lo), w, 1);
  g.fillRect(0, yOf(hi), w, 1);
  g.font = `${10 * devicePixelRatio}px monospace`;
  g.fillStyle = '#7d8491';
  g.fillText(String(hi), 3, yOf(hi) + 11 * devicePixelRatio);
  g.fillText(String(lo), 3, yOf(lo) - 3);
  // the knob's value (what applies without a curve)
  const kv = S.target[curveSel];
  if (kv != null) {
    g.setLineDash([4, 4]);
    g.strokeStyle = '#3fd0c966';
    g.beginPath();
    g.moveTo(0, yOf(kv));
    g.lineTo(w, yOf(kv));
    g.stroke();
    g.setLineDash([]);
  }
  const values = draft || selectedValues(CURVE_POINTS);
  if (values) {
    g.strokeStyle = draft ? '#ffb347' : '#ff5b37';
    g.lineWidth = 2 * devicePixelRatio;
    g.beginPath();
    for (let i = 0; i < values.length; i++) {
      const X = (i / (values.length - 1)) * w;
      if (i === 0) g.moveTo(X, yOf(values[i]));
      else g.lineTo(X, yOf(values[i]));
    }
    g.stroke();
    g.lineWidth = 1;
  } else {
    g.fillStyle = '#7d8491';
    g.fillText('draw here', w / 2 - 25 * devicePixelRatio, h / 2);
  }
}

function setupCurve() {
  const cv = $('curve');
  const at = (e) => {
    const [lo, hi] = curveRange(curveSel);
    const fx = Math.min(1, Math.max(0, e.offsetX / cv.clientWidth));
    const fy = Math.min(1, Math.max(0, (cv.clientHeight - e.offsetY - 3) / (cv.clientHeight - 6)));
    return [Math.round(fx * (CURVE_POINTS - 1)), lo + fy * (hi - lo)];
  };
  const paint = (e) => {
    const [i, v] = at(e);
    if (lastIdx < 0) draft[i] = v;
    else {
      const a = Math.min(lastIdx, i), b = Math.max(lastIdx, i);
      const va = lastIdx < i ? draft[lastIdx] : v, vb = lastIdx < i ? v : draft[lastIdx];
      for (let k = a; k <= b; k++) draft[k] = b === a ? v : va + ((vb - va) * (k - a)) / (b - a);
    }
    lastIdx = i;
    dirty.curve = true;
  };
  cv.addEventListener('pointerdown', (e) => {
    if (!curveSel) return;
    cv.setPointerCapture(e.pointerId);
    draft = selectedValues(CURVE_POINTS) || new Float32Array(CURVE_POINTS).fill(knobOrMid(curveSel));
    lastIdx = -1;
    paint(e);
  });
  cv.addEventListener('pointermove', (e) => {
    if (draft) paint(e);
  });
  const finish = () => {
    if (!draft) return;
    const values = Array.from(draft, (v) => Math.round(v * 1e4) / 1e4);
    draft = null;
    lastIdx = -1;
    if (curveKind === 'lane') sendLane(curveSel, laneOf(values));
    else sendCurve(curveSel, { type: 'raw', values });
  };
  cv.addEventListener('pointerup', finish);
  cv.addEventListener('pointercancel', finish);
}

function sendCurve(name, curve) {
  control({ type: 'set_curve', name, curve }).then((r) => {
    if (!r) return;
    if (curve) S.curves[name] = curve;
    else delete S.curves[name];
    markCurved();
    dirty.curve = true;
  });
  dirty.curve = true;
}

// ---------------------------------------------------------------- MIDI (Web MIDI in this browser)

const MIDI_KEY = 'demon.midi.v1';
let midiMap = {}; // "ch/cc" → knob
let midiLearn = null; // knob being learned
let midiAccess = null;
try {
  midiMap = JSON.parse(localStorage.getItem(MIDI_KEY) || '{}') || {};
} catch (_) {
  midiMap = {};
}

function saveMidi() {
  try {
    localStorage.setItem(MIDI_KEY, JSON.stringify(midiMap));
  } catch (_) {
    /* private mode */
  }
  refreshMidiMarks();
}

function refreshMidiMarks() {
  const mapped = new Set(Object.values(midiMap));
  for (const b of document.querySelectorAll('button.learn')) {
    b.classList.toggle('mapped', mapped.has(b.dataset.learn));
    b.classList.toggle('on', b.dataset.learn === midiLearn);
  }
  for (const [name, f] of faders) f.el.classList.toggle('learning', name === midiLearn);
  const ul = $('midi-map');
  ul.replaceChildren();
  for (const [k, knob] of Object.entries(midiMap)) {
    const li = document.createElement('li');
    const [ch, cc] = k.split('/');
    li.textContent = `ch ${Number(ch) + 1} CC ${cc}`;
    const b = document.createElement('b');
    b.textContent = knob;
    li.append(b);
    ul.append(li);
  }
}

async function enableMidi(quiet) {
  if (!navigator.requestMIDIAccess) {
    $('midi-status').textContent = 'this browser has no Web MIDI';
    return;
  }
  try {
    midiAccess = await navigator.requestMIDIAccess();
  } catch (e) {
    $('midi-status').textContent = `Web MIDI refused: ${e.message}`;
    if (!quiet) showNotice(`Web MIDI: ${e.message}`);
    return;
  }
  const hook = () => {
    let n = 0;
    for (const input of midiAccess.inputs.values()) {
      input.onmidimessage = onMidi;
      n++;
    }
    $('midi-status').textContent = `Web MIDI on: ${n} input${n === 1 ? '' : 's'}`;
  };
  midiAccess.onstatechange = hook;
  hook();
  $('midi-enable').disabled = true;
}

function onMidi(e) {
  const [status, cc, value] = e.data;
  if ((status & 0xf0) !== 0xb0) return;
  const key = `${status & 0x0f}/${cc}`;
  if (midiLearn) {
    for (const [k, v] of Object.entries(midiMap)) if (v === midiLearn) delete midiMap[k];
    midiMap[key] = midiLearn;
    log('info', `MIDI ch ${(status & 0x0f) + 1} CC ${cc} → ${midiLearn}`);
    midiLearn = null;
    saveMidi();
    return;
  }
  const knob = midiMap[key];
  if (!knob) return;
  const spec = S.specs.get(knob);
  if (!spec) return;
  if (knob === 'seed') return setSeed(Math.round((value / 127) * 127));
  userKnob(knob, spec.min + (value / 127) * (spec.max - spec.min), false);
}

function startLearn(knob) {
  if (midiLearn === knob) {
    midiLearn = null;
    refreshMidiMarks();
    return;
  }
  midiLearn = knob;
  refreshMidiMarks();
  if (!midiAccess) enableMidi(true);
  request({ type: 'midi_learn', knob })
    .then((r) => {
      const st = r.midi;
      log('info', `server MIDI learn armed for ${knob}${st ? ` (${typeof st === 'string' ? st : JSON.stringify(st)})` : ''}`);
    })
    .catch(() => {});
}

// ---------------------------------------------------------------- keyboard

function typing(el) {
  if (!el) return false;
  // A focused dropdown keeps its arrows and Enter, not the letter and Space shortcuts.
  if (el.tagName === 'TEXTAREA') return true;
  if (el.tagName === 'INPUT') return !['range', 'checkbox', 'button', 'file'].includes(el.type);
  return false;
}

function onKey(e) {
  if (e.ctrlKey || e.metaKey || e.altKey) return;
  const el = document.activeElement;
  if (e.key === 'Escape') {
    if (midiLearn) {
      midiLearn = null;
      refreshMidiMarks();
    }
    if (el && el !== document.body) el.blur();
    return;
  }
  if (typing(el)) {
    // Enter sends the prompts from any of their fields but the lyrics (lines of their own).
    if (e.key === 'Enter' && el.closest('#prompt-panel') && el.tagName !== 'SELECT' && el.id !== 'lyrics' && !e.shiftKey) {
      e.preventDefault();
      sendPrompt();
    }
    return;
  }
  if (e.key === ' ') {
    e.preventDefault();
    setPlaying(!(S.playing && ctx && ctx.state === 'running'));
    return;
  }
  const preset = '12345'.indexOf(e.key);
  if (preset >= 0 && e.key.length === 1) {
    e.preventDefault();
    userKnob('blend', BLEND_PRESETS[preset], true);
    return;
  }
  const action = { n: newSeed, r: toggleRecord, c: clearBand, m: toggleMute }[e.key.toLowerCase()];
  if (action) {
    // Not also a dropdown's type-ahead.
    e.preventDefault();
    action();
  }
}

// ---------------------------------------------------------------- small actions

function setSeed(v) {
  if (!Number.isFinite(v)) return showError('seed must be a number');
  const s = Math.min(4294967295, Math.max(0, Math.round(v)));
  S.touched.seed = performance.now();
  $('seed').value = s;
  S.target.seed = s;
  pendingKnobs.set('seed', s);
  flushKnobs();
}

function newSeed() {
  const a = new Uint32Array(1);
  crypto.getRandomValues(a);
  setSeed(a[0]);
}

function clearBand() {
  bandControl({ type: 'clear_loop_band' }, null);
}

// The band is the performer's gesture: the page plays it at once and puts the old one back if
// the server refuses. Waiting for the reply (which comes at the session's next tick boundary)
// left the worklet on the old band for a moment, so a seek right after a clear wrapped back
// into it.
function bandControl(message, band) {
  const before = S.band;
  setBand(band);
  control(message).then((r) => {
    if (!r) setBand(before);
  });
}

let unmuted = 0.9;
function toggleMute() {
  const v = $('volume');
  if (Number(v.value) > 0) {
    unmuted = Number(v.value);
    v.value = 0;
  } else v.value = unmuted || 0.9;
  v.dispatchEvent(new Event('input'));
}

// Presets (docs/protocol.md, "Presets"): the whole state as a JSON download, loaded back by
// POST /api/preset from a file chosen or dropped anywhere on the page.
async function savePreset() {
  try {
    const r = await fetch(withToken('/api/preset'));
    if (!r.ok) return showError(`save preset: ${(await r.json()).error || r.status}`);
    const url = URL.createObjectURL(new Blob([await r.text()], { type: 'application/json' }));
    const a = document.createElement('a');
    a.href = url;
    a.download = `demon-preset-${new Date().toISOString().replace(/[:.]/g, '-')}.json`;
    a.click();
    setTimeout(() => URL.revokeObjectURL(url), 1000);
  } catch (e) {
    showError(`save preset: ${e.message}`);
  }
}

async function loadPresetFile(file) {
  if (!file) return;
  try {
    const r = await fetch(withToken('/api/preset'), {
      method: 'POST',
      headers: { 'Content-Type': 'application/json' },
      body: await file.text(),
    });
    const reply = await r.json();
    if (!r.ok || !reply.ok) return showError(`preset ${file.name}: ${reply.error || r.status}`);
    log('info', `loaded preset ${file.name}`);
    for (const w of reply.warnings || []) showError(`preset ${file.name}: ${w}`);
  } catch (e) {
    showError(`preset ${file.name}: ${e.message}`);
  }
}

// What the backend plays for prompt A (state.used, docs/protocol.md "What is used").
function showUsed(used) {
  const el = $('prompt-used');
  if (!used) {
    el.textContent = '';
    return;
  }
  const parts = [`playing ${used.style}`, used.bpm != null ? `${used.bpm.toFixed(0)} bpm` : null, used.key, `seed ${used.seed}`];
  el.textContent = parts.filter(Boolean).join(' · ') + (used.fallback ? ` — ${used.fallback}` : '');
  el.classList.toggle('fallback', !!used.fallback);
}

// The loudness meter (stats.loudness, docs/protocol.md "Loudness"), and the matcher's gain,
// which this page applies to its own copy of the loop as the server does to what it plays.
function showLoudness(l) {
  if (!l) return;
  const st = l.short_term_lufs, mo = l.momentary_lufs;
  const gain = l.gain_db || 0;
  $('r-lufs').textContent = st == null ? '–' : `${st.toFixed(1)}${Math.abs(gain) >= 0.05 ? ` ${gain > 0 ? '+' : ''}${gain.toFixed(1)} dB` : ''}`;
  // −60 LUFS empty … 0 LUFS full.
  const fill = mo == null ? 0 : Math.max(0, Math.min(1, (mo + 60) / 60));
  $('r-lufs-bar').style.width = `${(100 * fill).toFixed(1)}%`;
  $('r-lufs-box').dataset.momentary = mo == null ? '' : mo.toFixed(1);
  if (S.gainDb !== gain) {
    S.gainDb = gain;
    toWorklet({ type: 'gain', db: gain });
  }
}

// How many adapters, and the trigger words the enabled ones add to the prompts.
function showAdapters(st) {
  const ad = st.adapters || [];
  const words = st.trigger_words || [];
  const folders = (S.ready && S.ready.lora_folders) || [];
  showLibrary(st, folders);
  $('lora-info').textContent = ad.length
    ? `${ad.length} loaded${words.length ? ` · in the prompt: ${words.join(', ')}` : ''}`
    : folders.length
      ? 'none loaded: load one from the library'
      : 'none (start with --lora-dir DIR for a library)';
}

// ---------------------------------------------------------------- LoRA library

// The library as the last state described it (state.lora_library), the adapters' strengths,
// the adapters this page asked to load and is waiting for, and the groups the performer closed.
const loraUi = { entries: [], strengths: new Map(), asked: new Set(), closed: new Set() };

function showLibrary(st, folders) {
  loraUi.entries = st.lora_library || [];
  loraUi.strengths = new Map((st.adapters || []).map((a) => [a.id, a.strength]));
  $('lora-library').classList.toggle('hidden', folders.length === 0 && loraUi.entries.length === 0);
  const count = (status) => loraUi.entries.filter((e) => e.status === status).length;
  $('lora-library-info').textContent = `${loraUi.entries.length} in ${folders.length || 'no'} folder${folders.length === 1 ? '' : 's'}` +
    `${count('loaded') ? ` · ${count('loaded')} loaded` : ''}${count('failed') ? ` · ${count('failed')} failed` : ''}`;
  $('lora-library-info').title = folders.join('\n');
  renderLibrary();
}

// The strength an adapter's "on" gives it: what its files recommend, else 1.
const recommended = (e) => (e.metadata && e.metadata.recommended_strength != null ? e.metadata.recommended_strength : 1);

function renderLibrary() {
  const root = $('lora-groups');
  const q = $('lora-search').value.trim().toLowerCase();
  const groups = new Map();
  for (const e of loraUi.entries) {
    const md = e.metadata || {};
    const text = [e.id, e.group, ...(md.trigger_words || []), md.description || '', md.base_model || ''].join(' ').toLowerCase();
    if (q && !text.includes(q)) continue;
    if (!groups.has(e.group)) groups.set(e.group, []);
    groups.get(e.group).push(e);
  }
  root.replaceChildren();
  for (const [group, entries] of [...groups].sort(([a], [b]) => a.localeCompare(b))) {
    const det = document.createElement('details');
    det.dataset.group = group;
    det.open = q !== '' || !loraUi.closed.has(group);
    det.addEventListener('toggle', () => {
      if (q) return; // a search opens every group it finds something in
      if (det.open) loraUi.closed.delete(group);
      else loraUi.closed.add(group);
    });
    const sum = document.createElement('summary');
    sum.textContent = `${group} (${entries.length})`;
    const ul = document.createElement('ul');
    for (const e of entries) ul.append(libraryEntry(e));
    det.append(sum, ul);
    root.append(det);
  }
  if (!groups.size) {
    const p = document.createElement('div');
    p.className = 'dim';
    p.textContent = loraUi.entries.length ? `nothing matches “${q}”` : 'no adapter files in the folders: copy some in and rescan';
    root.append(p);
  }
}

// One entry again, in place (a fader drag must not rebuild a thousand entries per move).
function renderLibraryEntry(id) {
  const e = loraUi.entries.find((x) => x.id === id);
  const li = [...$('lora-groups').querySelectorAll('li.lora-entry')].find((x) => x.dataset.lora === id);
  if (e && li) li.replaceWith(libraryEntry(e));
}

function libraryEntry(e) {
  const md = e.metadata || {};
  const status = e.status === 'registered' && loraUi.asked.has(e.id) ? 'loading' : e.status;
  const strength = S.target[`lora:${e.id}`] ?? loraUi.strengths.get(e.id) ?? 0;
  const li = document.createElement('li');
  li.className = 'lora-entry';
  li.dataset.lora = e.id;
  li.dataset.status = status;
  li.title = [e.path, md.description, status === 'failed' ? e.error : null].filter(Boolean).join('\n');
  const name = document.createElement('span');
  name.className = 'name';
  name.textContent = md.base_model ? `${e.id} · ${md.base_model}` : e.id;
  const badge = document.createElement('span');
  badge.className = 'status';
  badge.textContent = status === 'loaded' ? (strength > 0 ? `on ${Number(strength).toFixed(2)}` : 'off') : status;
  const b = document.createElement('button');
  b.dataset.loraAction = e.id;
  if (status === 'loaded') {
    b.textContent = strength > 0 ? 'off' : 'on';
    b.title = strength > 0 ? 'Disable (strength 0; it stays loaded)' : `Enable at ${recommended(e)}`;
    b.addEventListener('click', () => setLibraryLora(e, strength > 0 ? 0 : recommended(e)));
  } else if (status === 'registered') {
    b.textContent = 'load';
    b.title = `Load it beside the ticks and enable it at ${recommended(e)}`;
    b.addEventListener('click', () => setLibraryLora(e, recommended(e)));
  } else {
    b.textContent = status === 'loading' ? 'loading…' : 'failed';
    b.disabled = true;
  }
  const words = document.createElement('div');
  words.className = 'words';
  words.textContent = (md.trigger_words || []).length ? `adds: ${md.trigger_words.join(', ')}` : md.description || '';
  li.append(name, badge, b, words);
  return li;
}

// Enable (loading first, when it is only registered) or disable a library adapter.
async function setLibraryLora(e, strength) {
  const loading = e.status === 'registered';
  if (loading) {
    loraUi.asked.add(e.id);
    renderLibrary();
    log('info', `loading LoRA ${e.id} …`);
  }
  const r = await control({ type: 'set_lora', id: e.id, strength });
  loraUi.asked.delete(e.id);
  if (r && loading) log('info', `LoRA ${e.id} loaded, at ${strength}`);
  // The echoes of install_lora and set_lora bring the fader and the new state; a refused one
  // has none, and the entry shows what the server says now (failed, with its error).
  if (!r) refreshUsed();
}

async function rescanLoras() {
  const b = $('lora-rescan');
  b.disabled = true;
  try {
    const r = await request({ type: 'rescan_loras' });
    const parts = [`${r.total} adapters`];
    if (r.added.length) parts.push(`new: ${r.added.join(', ')}`);
    if (r.removed.length) parts.push(`gone: ${r.removed.join(', ')}`);
    log('info', `LoRA rescan: ${parts.join(' · ')}`);
    if (r.problems.length) showNotice(`LoRA rescan: ${r.problems.join('; ')}`);
  } catch {
    // the error is shown by request()
  } finally {
    b.disabled = false;
  }
  refreshUsed();
}

// What was measured on the source (state.source_analysis, docs/protocol.md "Analysis").
function showAnalysis(a) {
  const el = $('source-analysis');
  if (!a) {
    el.textContent = '';
    return;
  }
  const parts = [
    a.bpm != null ? `${a.bpm.toFixed(1)} BPM` : 'no clear beat',
    a.key || 'no clear key',
    a.integrated_lufs != null ? `${a.integrated_lufs.toFixed(1)} LUFS` : 'silent',
    `${a.duration_seconds.toFixed(1)} s`,
  ];
  el.textContent = `measured: ${parts.join(' · ')}`;
}

// A prompt or source change (this page's or another's) changes what is used: read the state
// again.
function refreshUsed() {
  request({ type: 'get_state' }, { quiet: true })
    .then((m) => {
      if (!m.state) return;
      showUsed(m.state.used);
      showAnalysis(m.state.source_analysis);
      showAdapters(m.state);
      setReferenceName('timbre', m.state.timbre_reference);
      setReferenceName('structure', m.state.structure_reference);
    })
    .catch(() => null);
}

function clearBpm() {
  $('bpm').value = '';
  control({ type: 'clear_bpm' });
}

// The server captures the state now; the next pad played on its MIDI input recalls it.
function presetToPad() {
  request({ type: 'midi_learn', action: 'preset' })
    .then((r) => log('info', `preset captured: play a pad on the server's MIDI input to store it there (${r.midi})`))
    .catch(() => {});
}

const isPresetFile = (f) => f && (f.name.toLowerCase().endsWith('.json') || f.type === 'application/json');

function wirePresets() {
  $('bpm-clear').addEventListener('click', clearBpm);
  $('preset-save').addEventListener('click', savePreset);
  $('preset-pad').addEventListener('click', presetToPad);
  $('preset-load').addEventListener('change', (e) => {
    loadPresetFile(e.target.files[0]);
    e.target.value = '';
  });
  // Capture phase: a .json dropped on the source panel is a preset, not an upload.
  window.addEventListener('dragover', (e) => e.preventDefault());
  window.addEventListener('drop', (e) => {
    const f = e.dataTransfer && e.dataTransfer.files[0];
    e.preventDefault();
    if (!isPresetFile(f)) return;
    e.stopPropagation();
    $('source-panel').classList.remove('drop');
    loadPresetFile(f);
  }, true);
}

function wire() {
  wirePresets();
  $('play').addEventListener('click', () => setPlaying(!(S.playing && ctx && ctx.state === 'running')));
  $('rec').addEventListener('click', toggleRecord);
  $('volume').addEventListener('input', () => {
    if (gain) gain.gain.setTargetAtTime(Number($('volume').value), ctx.currentTime, 0.01);
  });
  $('clear-band').addEventListener('click', clearBand);
  $('resync').addEventListener('click', () => ws && ws.readyState === WebSocket.OPEN && ws.send(JSON.stringify({ type: 'resync' })));
  $('apply-prompt').addEventListener('click', sendPrompt);
  $('lora-search').addEventListener('input', renderLibrary);
  $('lora-rescan').addEventListener('click', rescanLoras);
  for (let i = 0; i < BLEND_PRESETS.length; i++) {
    const b = document.createElement('button');
    b.textContent = ['A', '¼', '½', '¾', 'B'][i];
    b.title = `blend ${BLEND_PRESETS[i]} (key ${i + 1})`;
    b.addEventListener('click', () => userKnob('blend', BLEND_PRESETS[i], true));
    $('blend-presets').append(b);
  }
  $('negative').addEventListener('input', negativeHint);
  $('solver').addEventListener('change', () => control({ type: 'set_solver', solver: $('solver').value }));
  $('cfg-mode').addEventListener('change', () => control({ type: 'set_cfg_mode', mode: $('cfg-mode').value }));
  $('dcw-on').addEventListener('change', () => control({ type: 'set_dcw', enabled: $('dcw-on').checked }));
  $('dcw-mode').addEventListener('change', () => control({ type: 'set_dcw', mode: $('dcw-mode').value }));
  $('dcw-wavelet').addEventListener('change', () => control({ type: 'set_dcw', wavelet: $('dcw-wavelet').value }));
  $('slew').addEventListener('change', () => {
    const v = Number($('slew').value);
    if (!Number.isFinite(v)) return showError('slew must be a number');
    control({ type: 'set_slew', per_second: v });
  });
  $('seed').addEventListener('change', () => setSeed(Number($('seed').value)));
  $('new-seed').addEventListener('click', newSeed);
  $('load-library').addEventListener('click', loadLibrarySource);
  $('library').addEventListener('dblclick', loadLibrarySource);
  $('source-none').addEventListener('click', () => control({ type: 'set_source', source: { kind: 'none' } }));
  $('upload').addEventListener('change', (e) => {
    uploadFile(e.target.files[0]);
    e.target.value = '';
  });
  const drop = $('source-panel');
  drop.addEventListener('dragover', (e) => {
    e.preventDefault();
    drop.classList.add('drop');
  });
  drop.addEventListener('dragleave', () => drop.classList.remove('drop'));
  drop.addEventListener('drop', (e) => {
    e.preventDefault();
    drop.classList.remove('drop');
    if (e.dataTransfer.files.length) uploadFile(e.dataTransfer.files[0]);
  });
  uploadHint();
  buildReferenceRows();
  $('curve-clear').addEventListener('click', () => curveSel && (curveKind === 'lane' ? sendLane(curveSel, null) : sendCurve(curveSel, null)));
  $('curve-ramp-up').addEventListener('click', () => {
    const [lo, hi] = curveRange(curveSel);
    sendShape({ type: 'ramp', start: lo, end: hi });
  });
  $('curve-ramp-down').addEventListener('click', () => {
    const [lo, hi] = curveRange(curveSel);
    sendShape({ type: 'ramp', start: hi, end: lo });
  });
  $('curve-sine').addEventListener('click', () => {
    const [lo, hi] = curveRange(curveSel);
    sendShape({ type: 'sine', min: lo, max: hi, cycles: 4, phase: 0 });
  });
  // A lane's interpolation changes with the menu at once; a curve has none.
  $('lane-interp').addEventListener('change', () => {
    const l = curveKind === 'lane' && S.automation[curveSel];
    if (l) sendLane(curveSel, { points: l.points, interpolation: $('lane-interp').value });
  });
  $('midi-enable').addEventListener('click', () => enableMidi(false));
  $('midi-clear').addEventListener('click', () => {
    midiMap = {};
    saveMidi();
  });
  // Learn buttons (faders are rebuilt on every `ready`, so delegate).
  document.addEventListener('click', (e) => {
    const b = e.target.closest('button.learn');
    if (b) startLearn(b.dataset.learn);
  });
  document.addEventListener('keydown', onKey);
  for (const el of document.querySelectorAll('[title]')) {
    el.addEventListener('mouseenter', () => ($('help').textContent = el.title));
  }
  setupWave();
  setupCurve();
}

// ---------------------------------------------------------------- loops

// Canvases are redrawn only when their content changes (and at most 10 / 4 times a second);
// the playheads are thin overlays moved by CSS transforms, which costs next to nothing.
const lastDraw = { wave: 0, curve: 0, pos: 0, ph: 0 };
const widths = new Map(); // canvas wrapper → CSS width (read once per resize, not per frame)
const resizer = new ResizeObserver((entries) => {
  for (const e of entries) widths.set(e.target, e.contentRect.width);
  dirty.wave = dirty.curve = true;
});
for (const w of document.querySelectorAll('.canvas-wrap')) resizer.observe(w);
let lastPosText = '';
function frame(now) {
  requestAnimationFrame(frame);
  if (document.hidden) return;
  if ((dirty.wave && now - lastDraw.wave >= 100) || drag || (hoverX != null && dirty.hover)) {
    dirty.wave = false;
    dirty.hover = false;
    lastDraw.wave = now;
    drawWave();
  }
  if (dirty.curve && (draft || now - lastDraw.curve >= 250)) {
    dirty.curve = false;
    lastDraw.curve = now;
    drawCurve();
  }
  if (now - lastDraw.ph < 30) return; // playheads at ~30 fps
  lastDraw.ph = now;
  const songS = S.songSeconds || 1;
  const p = currentPos() / S.rate;
  const place = (el, s) => {
    const x = ((s / songS) * (widths.get(el.parentElement) || 0)).toFixed(1);
    if (el.dataset.x !== x) {
      el.dataset.x = x;
      el.style.transform = `translateX(${x}px)`;
    }
  };
  place($('wave-ph'), p);
  place($('wave-lead'), (p + S.leadMs / 1000) % songS);
  place($('curve-ph'), p);
  if (now - lastDraw.pos >= 100) {
    lastDraw.pos = now;
    const t = `${p.toFixed(2)} s`;
    if (t !== lastPosText) $('pos').textContent = lastPosText = t;
    if (S.recording) $('rec').textContent = `● Rec ${((performance.now() - S.recStarted) / 1000).toFixed(0)} s`;
  }
}

// Keep the local playhead on the server's: the engine decodes ahead of *its* playhead.
async function syncPlayhead() {
  if (!demon.ready || !S.playing || !node || !S.samples) return;
  const t0 = performance.now();
  let st;
  try {
    st = (await request({ type: 'get_state' }, { quiet: true })).state;
  } catch (_) {
    return;
  }
  // A seek of this page not yet answered, or answered while the request was out: the state may
  // predate it (the server answers state at once while the seek waits for its tick boundary),
  // and would pull the playhead back.
  if (!st || S.seekPending || (S.localSeekAt || 0) >= t0) return;
  const half = (performance.now() - t0) / 2000;
  const server = (st.playhead_seconds + (st.playing ? half : 0)) * S.rate;
  const len = S.samples;
  let d = Math.abs(currentPos() - server) % len;
  d = Math.min(d, len - d);
  if (d > 0.25 * S.rate) toWorklet({ type: 'seek', sample: server });
  if (st.playing !== S.playing) setPlaying(st.playing, true);
}

// A 16-bit PCM or 32-bit float WAV into planar stereo Float32Arrays (for the hooks below).
function parseWav(buf) {
  const dv = new DataView(buf);
  const tag = (o) => String.fromCharCode(dv.getUint8(o), dv.getUint8(o + 1), dv.getUint8(o + 2), dv.getUint8(o + 3));
  if (tag(0) !== 'RIFF' || tag(8) !== 'WAVE') throw new Error('not a WAV file');
  let fmt = null;
  for (let o = 12; o + 8 <= buf.byteLength; ) {
    const id = tag(o), size = dv.getUint32(o + 4, true), body = o + 8;
    if (id === 'fmt ') fmt = { format: dv.getUint16(body, true), channels: dv.getUint16(body + 2, true), bits: dv.getUint16(body + 14, true) };
    if (id === 'data' && fmt) {
      const ch = fmt.channels, bytes = fmt.bits / 8, n = Math.floor(size / (ch * bytes));
      const L = new Float32Array(n), R = new Float32Array(n);
      for (let i = 0; i < n; i++) {
        const at = (c) => body + (i * ch + Math.min(c, ch - 1)) * bytes;
        if (fmt.bits === 32) {
          L[i] = dv.getFloat32(at(0), true);
          R[i] = dv.getFloat32(at(1), true);
        } else {
          L[i] = dv.getInt16(at(0), true) / 32768;
          R[i] = dv.getInt16(at(1), true) / 32768;
        }
      }
      return { L, R };
    }
    o = body + size + (size & 1);
  }
  throw new Error('WAV without a data chunk');
}

// ---------------------------------------------------------------- test hooks

Object.assign(demon, {
  checksum,
  mark: () => askWorklet('mark'),
  // Compare the worklet's buffer with the server's loop right now (GET /api/loop.wav, float WAV).
  // `zones`: sample ranges counted apart (see worklet.js).
  async compareWithServer(zones = []) {
    const t0 = performance.now();
    const r = await fetch(withToken('/api/loop.wav'));
    if (!r.ok) throw new Error(`/api/loop.wav: ${r.status}`);
    const { L, R } = parseWav(await r.arrayBuffer());
    const fetchMs = performance.now() - t0;
    return Object.assign(await askWorklet('compare', { L, R, zones }, [L.buffer, R.buffer]), { fetchMs });
  },
  diffSinceMark: () => askWorklet('diff'),
  // Drive a knob through its fader, as a performer would (input + change events).
  setKnob(name, value) {
    const f = faders.get(name);
    if (!f) throw new Error(`no fader for ${name}`);
    f.input.value = value;
    f.input.dispatchEvent(new Event('input', { bubbles: true }));
    f.input.dispatchEvent(new Event('change', { bubbles: true }));
    return Number(f.input.value);
  },
  knobValue: (name) => S.target[name],
  effectiveValue: (name) => S.effective[name],
  send(obj) {
    ws.send(typeof obj === 'string' ? obj : JSON.stringify(obj));
  },
  request,
  state: () => S,
  audioContext: () => ctx,
  // A MIDI message as Web MIDI would deliver it (tests; also handy without a controller).
  midiMessage: (bytes) => onMidi({ data: Uint8Array.from(bytes) }),
  midiMappings: () => Object.assign({}, midiMap),
});

// The negative prompt only acts with guidance above 1: say so while it would not.
function negativeHint() {
  const idle = $('negative').value.trim() !== '' && !(S.target.guidance > 1);
  $('negative-hint').classList.toggle('hidden', !idle);
}

// OSC messages the server could not use, and values it clamped (GET /api/health).
async function pollOscCounters() {
  try {
    const r = await fetch(withToken('/api/health'));
    if (!r.ok) return;
    const h = await r.json();
    $('r-osc').textContent = String(h.osc_rejected_messages || 0);
    $('r-osc-box').title = `OSC: ${h.osc_rejected_messages || 0} messages rejected (malformed, unknown address or refused by the session), ${h.osc_clamped_values || 0} values clamped into range`;
  } catch (_) {
    /* the connection indicator already says the server is away */
  }
}

wire();
initAudio()
  .catch((e) => {
    audioFailed = true;
    showError(`audio: ${e.message}`);
  })
  .finally(async () => {
    await zstdLoaded;
    connect();
    requestAnimationFrame(frame);
    setInterval(syncPlayhead, 3000);
    pollOscCounters();
    setInterval(pollOscCounters, 2000);
  });
if (navigator.permissions && navigator.permissions.query && Object.keys(midiMap).length) {
  navigator.permissions.query({ name: 'midi' }).then((p) => p.state === 'granted' && enableMidi(true), () => {});
}
