// Unit test of crates/demon-server/web/worklet.js in plain node (no browser): the f16 table
// against an independent bit-level decoder for all 65536 values, and frame application
// (full, slice, delta with wrap-around) against a reference mirror computed like the server's
// (crates/demon-server/src/frames.rs: mirror += f32(f16(new - mirror))).

import fs from 'node:fs';
import path from 'node:path';
import vm from 'node:vm';
import { fileURLToPath } from 'node:url';

const HERE = path.dirname(fileURLToPath(import.meta.url));
const SRC = fs.readFileSync(path.join(HERE, '../../crates/demon-server/web/worklet.js'), 'utf8');

let failures = 0;
function check(name, cond, detail = '') {
  if (cond) console.log(`ok - ${name}${detail ? `: ${detail}` : ''}`);
  else {
    failures++;
    console.log(`not ok - ${name}${detail ? `: ${detail}` : ''}`);
  }
}

// Load the worklet with the AudioWorkletGlobalScope names it uses.
function load(rate = 48000, processor = 'loop-player') {
  const posted = [];
  let Proc = null;
  class AudioWorkletProcessor {
    constructor() {
      this.port = { postMessage: (m) => posted.push(m), onmessage: null };
    }
  }
  const scope = { AudioWorkletProcessor, registerProcessor: (name, cls) => {
    if (name === processor) Proc = cls;
  }, sampleRate: rate, currentFrame: 0, Float32Array, Uint16Array, Uint8Array, Uint32Array, DataView, ArrayBuffer, Math, Number, Object, NaN, Infinity };
  vm.runInNewContext(`${SRC}\n;this.__F16 = F16;`, scope);
  const p = new Proc({ processorOptions: { sourceRate: 48000 } });
  return { p, posted, F16: scope.__F16, send: (m) => p.port.onmessage({ data: m }) };
}

// Independent f16 → f32: rebias the exponent into float32 bits.
function f16ref(h) {
  const s = (h & 0x8000) << 16;
  const e = (h >> 10) & 0x1f;
  const m = h & 0x3ff;
  const dv = new DataView(new ArrayBuffer(4));
  if (e === 0) {
    if (m === 0) dv.setUint32(0, s);
    else {
      // subnormal: normalise
      let mm = m, ee = -1;
      do {
        ee++;
        mm <<= 1;
      } while ((mm & 0x400) === 0);
      dv.setUint32(0, s | ((127 - 15 - ee) << 23) | ((mm & 0x3ff) << 13));
    }
  } else if (e === 31) dv.setUint32(0, s | 0x7f800000 | (m << 13));
  else dv.setUint32(0, s | ((e - 15 + 127) << 23) | (m << 13));
  return dv.getFloat32(0);
}

// f32 → f16 bits, round to nearest even (what `half::f16::from_f32` does).
function toF16(x) {
  const dv = new DataView(new ArrayBuffer(4));
  dv.setFloat32(0, x);
  const b = dv.getUint32(0);
  const sign = (b >>> 16) & 0x8000;
  const exp = (b >>> 23) & 0xff;
  let man = b & 0x7fffff;
  if (exp === 0xff) return sign | 0x7c00 | (man ? 0x200 : 0);
  let e = exp - 127 + 15;
  if (e >= 31) return sign | 0x7c00;
  if (e <= 0) {
    if (e < -10) return sign;
    man |= 0x800000;
    const shift = 14 - e;
    let h = man >>> shift;
    const rem = man & ((1 << shift) - 1), halfway = 1 << (shift - 1);
    if (rem > halfway || (rem === halfway && (h & 1))) h++;
    return sign | h;
  }
  let h = (e << 10) | (man >>> 13);
  const rem = man & 0x1fff;
  if (rem > 0x1000 || (rem === 0x1000 && (h & 1))) h++;
  return sign | h;
}

function frame(kind, start, channels /* [L, R] arrays of f16 bits */, tick = 7) {
  const n = channels[0].length;
  const buf = new ArrayBuffer(28 + n * 4);
  const dv = new DataView(buf);
  dv.setUint8(0, kind);
  dv.setUint8(1, 2);
  dv.setUint32(4, start, true);
  dv.setUint32(8, n, true);
  dv.setUint32(12, tick, true);
  dv.setFloat32(16, 1.5, true);
  dv.setFloat32(20, 2.5, true);
  dv.setUint32(24, 9, true);
  for (let i = 0; i < n; i++) {
    dv.setUint16(28 + 4 * i, channels[0][i], true);
    dv.setUint16(30 + 4 * i, channels[1][i], true);
  }
  return buf;
}

// 1. Every f16 value.
{
  const { F16 } = load();
  let bad = 0;
  for (let h = 0; h < 65536; h++) {
    const a = F16[h], b = f16ref(h);
    if (!(Object.is(a, b) || (Number.isNaN(a) && Number.isNaN(b)))) bad++;
  }
  check('f16 table equals an independent decoder for all 65536 values', bad === 0, `${bad} mismatches`);
  check('f16 spot values', F16[0x3c00] === 1 && F16[0x0001] === 2 ** -24 && F16[0x7bff] === 65504 && F16[0xfc00] === -Infinity && Object.is(F16[0x8000], -0));
}

// 2. Frames against a server-style mirror.
{
  const { p, posted, send } = load();
  const N = 1000;
  let seed = 12345;
  const rnd = () => ((seed = (Math.imul(seed, 1103515245) + 12345) >>> 0) / 2 ** 32) * 2 - 1;
  const truth = [Float32Array.from({ length: N }, () => rnd() * 0.8), Float32Array.from({ length: N }, () => rnd() * 0.8)];
  // Full frame: mirror = f32(f16(value)).
  const fullBits = truth.map((ch) => Array.from(ch, toF16));
  const mirror = fullBits.map((ch) => Float32Array.from(ch, f16ref));
  send({ type: 'frame', buf: frame(0, 0, fullBits, 1) });
  check('full frame replaces the buffer', p.len === N && p.L.every((v, i) => v === mirror[0][i]) && p.R.every((v, i) => v === mirror[1][i]));
  // Many overlapping deltas, some wrapping past the end.
  for (let k = 0; k < 300; k++) {
    const start = (k * 137) % N, n = 50 + (k % 7) * 40;
    const bits = [[], []];
    for (let c = 0; c < 2; c++) {
      for (let i = 0; i < n; i++) {
        const j = (start + i) % N;
        const target = Math.fround(Math.sin(k * 0.37 + i * 0.05 + c) * 0.9);
        const d = toF16(Math.fround(target - mirror[c][j]));
        bits[c].push(d);
        mirror[c][j] = Math.fround(mirror[c][j] + f16ref(d));
      }
    }
    send({ type: 'frame', buf: frame(2, start, bits, 10 + k) });
  }
  const same = p.L.every((v, i) => Object.is(v, mirror[0][i])) && p.R.every((v, i) => Object.is(v, mirror[1][i]));
  check('300 overlapping, wrapping f16 deltas keep the buffer bit-identical to the mirror', same);
  check('slice counter counts deltas', p.slices === 300 && p.frames === 301, `slices ${p.slices}, frames ${p.frames}`);
  // Absolute slice that wraps.
  const sl = [[toF16(0.5), toF16(0.25), toF16(-1)], [toF16(1), toF16(2), toF16(3)]];
  send({ type: 'frame', buf: frame(1, N - 1, sl, 400) });
  check('kind 1 overwrites a wrapping slice', p.L[N - 1] === 0.5 && p.L[0] === 0.25 && p.L[1] === -1 && p.R[1] === 3);
  const last = posted.filter((m) => m.type === 'frame').pop();
  check('frame report carries the header', last.tick === 400 && last.kind === 1 && last.start === N - 1 && last.n === 3 && last.tickMs === 1.5 && last.decodeMs === 2.5 && last.generations === 9);
  // Malformed frames are reported, not applied.
  const before = p.frames;
  send({ type: 'frame', buf: frame(2, 0, [[1, 2], [3, 4]]).slice(0, 30) });
  send({ type: 'frame', buf: new ArrayBuffer(5) });
  const badKind = frame(7, 0, [[1], [2]]);
  send({ type: 'frame', buf: badKind });
  check('short, truncated and unknown frames are rejected', p.frames === before && posted.filter((m) => m.type === 'bad_frame').length === 3);
  // Checksum changes with the content.
  send({ type: 'checksum', id: 1 });
  const c1 = posted.filter((m) => m.type === 'checksum').pop();
  send({ type: 'frame', buf: frame(1, 10, [[toF16(0.125)], [toF16(0.125)]]) });
  send({ type: 'checksum', id: 2 });
  const c2 = posted.filter((m) => m.type === 'checksum').pop();
  check('checksum follows the content', c1.hash !== c2.hash && c1.len === N);
}

// 3. Playback: loop band and resampling.
{
  const { p, send } = load(44100);
  const N = 4800;
  const ramp = Array.from({ length: N }, (_, i) => toF16(i / N));
  send({ type: 'frame', buf: frame(0, 0, [ramp, ramp]) });
  send({ type: 'band', start: 1000, end: 1200 });
  check('playhead jumps into a band', p.pos === 1000);
  const out = [new Float32Array(128), new Float32Array(128)];
  for (let q = 0; q < 10; q++) p.process([], [out]);
  check('playback stays inside the band', p.pos >= 1000 && p.pos < 1200, `pos ${p.pos.toFixed(1)}`);
  check('resampling steps 48000/44100 source samples per output sample', Math.abs(p.step - 48000 / 44100) < 1e-12);
  send({ type: 'playing', playing: false });
  p.process([], [out]);
  check('silence while stopped', out[0].every((v) => v === 0));
}

// 4. Knob-to-ear: a watched slice reports the output frame of its first played sample, only
// once the frame of its tick is applied, and at once when the playhead is already inside it.
{
  const { p, posted, send } = load(48000);
  const N = 48000;
  const zeros = new Array(N).fill(0);
  send({ type: 'frame', buf: frame(0, 0, [zeros, zeros], 5) });
  const out = [new Float32Array(128), new Float32Array(128)];
  const heard = () => posted.filter((m) => m.type === 'heard');
  // Slice [1000, 1100) of tick 9, watched before its frame arrives: not reported while the
  // playhead passes it (the buffer there is still old audio).
  send({ type: 'watch', controls: [41], start: 1000, n: 100, tick: 9 });
  for (let q = 0; q < 10; q++) p.process([], [out]);
  check('a watch waits for the frame of its tick', heard().length === 0, `pos ${p.pos}`);
  // The frame of tick 9 lands; the playhead (now 1280) comes round to 1000 after N − 280 samples.
  send({ type: 'frame', buf: frame(2, 1000, [zeros.slice(0, 100), zeros.slice(0, 100)], 9) });
  let quanta = 0;
  while (!heard().length && quanta < 1000) {
    p.process([], [out]);
    quanta++;
  }
  const h = heard()[0];
  // currentFrame stays 0 in this scope, so `frame` is the offset inside the quantum: sample
  // 1000 is played N − 1280 + 1000 samples after the frame landed.
  const ahead = N - 1280 + 1000;
  check('the first played sample of the slice is reported once, at its frame', heard().length === 1 && h.controls[0] === 41 && quanta === Math.floor(ahead / 128) + 1 && h.frame === ahead % 128, `after ${quanta} quanta, frame ${h && h.frame}`);
  // Watched with the playhead already inside: reported in the next quantum.
  const at = Math.floor(p.pos);
  send({ type: 'frame', buf: frame(2, at - 10, [zeros.slice(0, 200), zeros.slice(0, 200)], 10) });
  send({ type: 'watch', controls: [42, 43], start: at - 10, n: 200, tick: 10 });
  p.process([], [out]);
  const h2 = heard()[1];
  check('a slice watched with the playhead inside is heard at once', h2 && h2.controls.join() === '42,43');
}

// The microphone recorder: its input's first channel comes back in blocks, the rest at stop.
{
  const { p, posted, send } = load(48000, 'mic-recorder');
  const quantum = (q) => Float32Array.from({ length: 128 }, (_, i) => Math.sin((q * 128 + i) * 0.01));
  const fed = [];
  for (let q = 0; q < 40; q++) {
    const ch = quantum(q);
    fed.push(...ch);
    p.process([[ch, new Float32Array(128).fill(9)]], [[new Float32Array(128)]]);
  }
  const blocks = () => posted.filter((m) => m.type === 'mic');
  check('the recorder posts full blocks while recording', blocks().length === 1 && blocks()[0].data.length === 4096, `${blocks().length} blocks`);
  send({ type: 'stop' });
  const got = blocks().flatMap((m) => [...m.data]);
  check('at stop, the rest follows and every sample of the first channel comes back in order', got.length === fed.length && got.every((v, i) => Object.is(v, Math.fround(fed[i]))), `${got.length} of ${fed.length} samples`);
  check('then it says it stopped and ends', posted.at(-1).type === 'stopped' && p.process([[quantum(0)]], [[new Float32Array(128)]]) === false);
}

if (failures) {
  console.log(`${failures} worklet check(s) failed`);
  process.exit(1);
}
console.log('worklet: all checks passed');
