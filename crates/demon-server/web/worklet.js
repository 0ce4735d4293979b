// DEMON loop player (AudioWorklet).
//
// Holds the song-length loop buffer (planar stereo, at the server's rate) and applies the
// server's binary frames exactly as docs/protocol.md describes:
//   kind 0  replaces the whole buffer,
//   kind 1  overwrites a slice (wrapping at the end of the loop),
//   kind 2  adds float16 deltas to a slice (wrapping).
// The f16 values are decoded exactly (a 65536-entry table built from the IEEE 754 binary16
// definition), so the sum this buffer holds is bit-identical to the server's per-client mirror.
// Float32Array `+=` computes in double and rounds once to single, which equals a single
// precision addition (double has more than 2·24+2 bits), so the additions match as well.
//
// Messages in (port):  {type:'frame', buf}            an audio frame (ArrayBuffer, transferred)
//                      {type:'seek', sample}           move the playhead (source samples)
//                      {type:'band', start, end}       loop band in source samples, or null ends
//                      {type:'playing', playing}       output silence while stopped
//                      {type:'rate', sourceRate}       the server's sample rate (resampled linearly)
//                      {type:'checksum', id, start?, n?}
//                      {type:'mark', id} / {type:'diff', id}   remember the buffer / compare with it
//                      {type:'compare', id, L, R, zones}  compare with other planar channels
//                      {type:'watch', controls, start, n, tick}  report when the playhead first
//                                                      plays [start, start + n) once the frame
//                                                      of `tick` is applied (knob-to-ear)
// (A second processor, 'mic-recorder' at the end of this file, records the microphone.)
// Messages out:        {type:'frame', ...header, slices, frames, late, pos}   after each applied
//                      frame; `late` counts slices that arrived with the playhead inside them,
//                      `pos` is the playhead (source samples) when it arrived
//                      {type:'heard', controls, frame}  a watched slice's first sample played:
//                      `frame` is its output frame on the AudioContext clock (currentFrame)
//                      {type:'peaks', first, data}     waveform columns changed by a frame
//                      {type:'pos', pos, slices, frames}           about every 20 ms
//                      {type:'checksum', id, ...}      reply to a checksum request
//                      {type:'mark'|'diff'|'compare', id, ...}   replies
//                      {type:'bad_frame', reason}      a frame that could not be applied

const F16 = new Float32Array(65536);
for (let h = 0; h < 65536; h++) {
  const sign = h & 0x8000 ? -1 : 1;
  const exp = (h >> 10) & 0x1f;
  const man = h & 0x3ff;
  let v;
  if (exp === 0) v = man * 2 ** -24; // zero and subnormals
  else if (exp === 31) v = man ? NaN : Infinity;
  else v = (1 + man / 1024) * 2 ** (exp - 15);
  F16[h] = sign * v;
}
const LITTLE_ENDIAN = new Uint8Array(new Uint16Array([1]).buffer)[0] === 1;
const HEADER = 28;
const COLUMNS = 1200; // waveform overview resolution
const REPORT_QUANTA = 8; // position report every 8 × 128 frames
const WATCH_QUANTA = 375 * 20; // a watch never played within ~20 s is dropped (a seek away)
// Per-sample step of the one-pole smoothing of the loudness gain: a time constant of 50 ms.
const GAIN_SMOOTHING = 1 - Math.exp(-1 / (0.05 * sampleRate));

class LoopPlayer extends AudioWorkletProcessor {
  constructor(options) {
    super();
    const o = (options && options.processorOptions) || {};
    this.sourceRate = o.sourceRate || 48000;
    this.step = this.sourceRate / sampleRate; // source samples per output sample
    this.L = new Float32Array(0);
    this.R = new Float32Array(0);
    this.len = 0;
    this.pos = 0;
    this.band = null; // [start, end) in source samples
    this.playing = true;
    // The loudness matcher's gain (linear): where it is going and where it is.
    this.gainTarget = 1;
    this.gain = 1;
    this.slices = 0;
    this.frames = 0;
    this.late = 0; // slices that arrived with the playhead already inside them (played stale)
    this.quanta = 0;
    this.appliedTick = -1; // the newest tick of an applied frame
    this.watches = []; // {controls, start, n, tick, since}
    this.peaks = new Float32Array(2 * COLUMNS);
    this.port.onmessage = (e) => this.onMessage(e.data);
  }

  onMessage(m) {
    switch (m && m.type) {
      case 'frame':
        this.applyFrame(m.buf);
        break;
      case 'seek':
        if (this.len > 0 && Number.isFinite(m.sample)) {
          this.pos = ((m.sample % this.len) + this.len) % this.len;
          this.enterBand();
        }
        break;
      case 'band':
        if (m.start == null || m.end == null || !(m.end > m.start)) this.band = null;
        else this.band = [Math.max(0, Math.floor(m.start)), Math.min(this.len, Math.floor(m.end))];
        this.enterBand();
        break;
      case 'rate':
        if (m.sourceRate > 0) this.step = m.sourceRate / sampleRate;
        break;
      case 'gain': // the loudness matcher's gain, in dB, reached smoothly over ~50 ms
        this.gainTarget = Math.pow(10, (Number(m.db) || 0) / 20);
        break;
      case 'playing':
        this.playing = !!m.playing;
        break;
      case 'watch':
        if (Number.isFinite(m.start) && m.n > 0) this.watches.push({ controls: m.controls, start: m.start, n: m.n, tick: m.tick, since: this.quanta });
        break;
      case 'mark': // remember the buffer, to measure later how much the slices changed it
        this.markL = this.L.slice();
        this.markR = this.R.slice();
        this.port.postMessage({ type: 'mark', id: m.id, len: this.len });
        break;
      case 'diff':
        this.port.postMessage(Object.assign({ type: 'diff', id: m.id }, this.diff()));
        break;
      case 'compare': // compare with planar channels the caller got elsewhere (the server's loop)
        this.port.postMessage(Object.assign({ type: 'compare', id: m.id }, this.compare(m.L, m.R, m.zones || [])));
        break;
      case 'checksum':
        this.port.postMessage(Object.assign({ type: 'checksum', id: m.id }, this.checksum(m.start, m.n)));
        break;
      default:
        break;
    }
  }

  enterBand() {
    if (this.band && (this.pos < this.band[0] || this.pos >= this.band[1])) this.pos = this.band[0];
  }

  fail(reason) {
    this.port.postMessage({ type: 'bad_frame', reason });
  }

  applyFrame(buf) {
    if (!(buf instanceof ArrayBuffer) || buf.byteLength < HEADER) return this.fail('frame shorter than its 28-byte header');
    const dv = new DataView(buf);
    const kind = dv.getUint8(0);
    const ch = dv.getUint8(1);
    const start = dv.getUint32(4, true);
    const n = dv.getUint32(8, true);
    const head = {
      kind, start, n,
      tick: dv.getUint32(12, true),
      tickMs: dv.getFloat32(16, true),
      decodeMs: dv.getFloat32(20, true),
      generations: dv.getUint32(24, true),
    };
    if (ch < 1 || ch > 2) return this.fail(`frame has ${ch} channels`);
    if (buf.byteLength - HEADER !== n * ch * 2) return this.fail(`frame body is ${buf.byteLength - HEADER} bytes, header says ${n * ch * 2}`);
    let body;
    if (LITTLE_ENDIAN) body = new Uint16Array(buf, HEADER, n * ch);
    else {
      body = new Uint16Array(n * ch);
      for (let k = 0; k < body.length; k++) body[k] = dv.getUint16(HEADER + 2 * k, true);
    }
    const r = ch - 1; // offset of the right channel within a sample (0 for mono)
    if (kind === 0) {
      if (n !== this.len) {
        this.L = new Float32Array(n);
        this.R = new Float32Array(n);
        this.len = n;
        if (this.pos >= n) this.pos = 0;
        if (this.band && this.band[1] > n) this.band = null;
      }
      const L = this.L, R = this.R;
      for (let i = 0, k = 0; i < n; i++, k += ch) {
        L[i] = F16[body[k]];
        R[i] = F16[body[k + r]];
      }
      this.frames++;
      this.updatePeaks(0, n);
    } else if (kind === 1 || kind === 2) {
      if (this.len === 0) return this.fail('a slice arrived before the full buffer');
      const L = this.L, R = this.R, len = this.len;
      let j = start % len;
      if (this.playing && (((Math.floor(this.pos) - j) % len) + len) % len < n) this.late++;
      if (kind === 1) {
        for (let i = 0, k = 0; i < n; i++, k += ch) {
          L[j] = F16[body[k]];
          R[j] = F16[body[k + r]];
          if (++j === len) j = 0;
        }
      } else {
        for (let i = 0, k = 0; i < n; i++, k += ch) {
          L[j] += F16[body[k]];
          R[j] += F16[body[k + r]];
          if (++j === len) j = 0;
        }
      }
      this.frames++;
      this.slices++;
      this.updatePeaks(start % len, n);
    } else {
      return this.fail(`unknown frame kind ${kind}`);
    }
    if (head.tick > this.appliedTick) this.appliedTick = head.tick;
    this.port.postMessage(Object.assign({ type: 'frame', slices: this.slices, frames: this.frames, late: this.late, len: this.len, pos: Math.floor(this.pos) }, head));
  }

  // Recompute the overview columns touched by [start, start + n) (wrapping) and send them.
  updatePeaks(start, n) {
    const len = this.len;
    if (len === 0) return;
    const per = len / COLUMNS;
    let first, last;
    if (n >= len) {
      first = 0;
      last = COLUMNS - 1;
    } else {
      first = Math.floor(start / per);
      last = Math.floor(((start + n - 1) % len) / per);
    }
    const cols = [];
    if (last >= first) cols.push([first, last]);
    else cols.push([first, COLUMNS - 1], [0, last]); // wrapped
    for (const [a, b] of cols) {
      for (let c = a; c <= b; c++) {
        const s0 = Math.floor(c * per), s1 = Math.min(len, Math.floor((c + 1) * per));
        let lo = 0, hi = 0;
        for (let s = s0; s < s1; s++) {
          const v = 0.5 * (this.L[s] + this.R[s]);
          if (v < lo) lo = v;
          if (v > hi) hi = v;
        }
        this.peaks[2 * c] = lo;
        this.peaks[2 * c + 1] = hi;
      }
      this.port.postMessage({ type: 'peaks', first: a, columns: COLUMNS, data: this.peaks.slice(2 * a, 2 * (b + 1)) });
    }
  }

  // FNV-1a over the float bits of both channels (or of a range), plus simple sums.
  checksum(start, n) {
    const len = this.len;
    const s0 = Number.isFinite(start) ? Math.max(0, Math.min(len, start)) : 0;
    const s1 = Number.isFinite(n) ? Math.min(len, s0 + n) : len;
    const uL = new Uint32Array(this.L.buffer), uR = new Uint32Array(this.R.buffer);
    let h = 0x811c9dc5, sumAbs = 0, peak = 0;
    for (let i = s0; i < s1; i++) {
      h = Math.imul(h ^ uL[i], 16777619);
      h = Math.imul(h ^ uR[i], 16777619);
      const a = Math.abs(this.L[i]) + Math.abs(this.R[i]);
      sumAbs += a;
      if (a > peak) peak = a;
    }
    return { hash: (h >>> 0).toString(16).padStart(8, '0'), sumAbs, peak, len, start: s0, n: s1 - s0 };
  }

  // How far the buffer moved since `mark`: RMS over the whole loop, largest change, and how
  // many samples changed by more than f16 rounding noise (1e-3).
  diff() {
    const len = this.len;
    if (!this.markL || this.markL.length !== len) return { rms: NaN, max: NaN, changed: 0, len };
    let sq = 0, max = 0, changed = 0;
    for (let i = 0; i < len; i++) {
      const a = Math.abs(this.L[i] - this.markL[i]), b = Math.abs(this.R[i] - this.markR[i]);
      sq += a * a + b * b;
      const d = a > b ? a : b;
      if (d > max) max = d;
      if (d > 1e-3) changed++;
    }
    return { rms: Math.sqrt(sq / (2 * Math.max(1, len))), max, changed, len };
  }

  // Compare with other planar channels. Samples inside `zones` ([start, end) ranges, wrapping)
  // are counted apart (zoneOver, zoneMax); `runs` lists the first stretches that differ.
  compare(L2, R2, zones) {
    const len = this.len;
    if (!L2 || !R2 || L2.length !== len || R2.length !== len) return { rms: NaN, max: NaN, over: NaN, len, otherLen: L2 ? L2.length : 0 };
    const mask = new Uint8Array(len);
    for (const [a, b] of zones) for (let i = a; i < b; i++) mask[((i % len) + len) % len] = 1;
    let sq = 0, inner = 0, max = 0, over = 0, zoneOver = 0, zoneMax = 0;
    const runs = []; // [start, length, inZone] of stretches that differ by more than 1e-3 (first 16)
    let run = null;
    for (let i = 0; i < len; i++) {
      const a = Math.abs(this.L[i] - L2[i]), b = Math.abs(this.R[i] - R2[i]);
      const d = a > b ? a : b;
      if (mask[i]) {
        if (d > zoneMax) zoneMax = d;
        if (d > 1e-3) zoneOver++;
      } else {
        sq += a * a + b * b;
        inner++;
        if (d > max) max = d;
        if (d > 1e-3) over++;
      }
      if (d > 1e-3) {
        if (run && i - (run[0] + run[1]) < 64) run[1] = i + 1 - run[0];
        else if (runs.length < 16) runs.push((run = [i, 1, mask[i]]));
        else run = null;
      }
    }
    return { rms: Math.sqrt(sq / (2 * Math.max(1, inner))), max, over, zoneMax, zoneOver, zoneSamples: len - inner, runs, len, otherLen: len };
  }

  process(inputs, outputs) {
    const out = outputs[0];
    const oL = out[0], oR = out[1] || out[0];
    const frames = oL.length;
    const len = this.len;
    if (len === 0 || !this.playing) {
      oL.fill(0);
      if (oR !== oL) oR.fill(0);
    } else {
      const L = this.L, R = this.R, step = this.step;
      const lo = this.band ? this.band[0] : 0;
      const hi = this.band ? this.band[1] : len;
      let p = this.pos;
      if (p < lo || p >= hi) p = lo;
      // Watches whose slice is in the buffer: the first sample of it this quantum plays.
      const watches = this.watches, applied = this.appliedTick;
      const gt = this.gainTarget;
      let g = this.gain;
      for (let i = 0; i < frames; i++) {
        const i0 = p | 0;
        for (let k = watches.length - 1; k >= 0; k--) {
          const w = watches[k];
          if (w.tick <= applied && (((i0 - w.start) % len) + len) % len < w.n) {
            this.port.postMessage({ type: 'heard', controls: w.controls, frame: currentFrame + i });
            watches.splice(k, 1);
          }
        }
        const f = p - i0;
        let i1 = i0 + 1;
        if (i1 >= hi) i1 = lo;
        // One-pole smoothing toward the matcher's gain (~50 ms), so a new gain never clicks.
        g += (gt - g) * GAIN_SMOOTHING;
        oL[i] = (L[i0] + (L[i1] - L[i0]) * f) * g;
        oR[i] = (R[i0] + (R[i1] - R[i0]) * f) * g;
        p += step;
        if (p >= hi) p = lo + ((p - hi) % (hi - lo));
      }
      this.pos = p;
      this.gain = g;
    }
    if (this.watches.length && this.quanta - this.watches[0].since > WATCH_QUANTA) this.watches.shift();
    if (++this.quanta % REPORT_QUANTA === 0) {
      this.port.postMessage({ type: 'pos', pos: this.pos, slices: this.slices, frames: this.frames });
    }
    return true;
  }
}

registerProcessor('loop-player', LoopPlayer);

// Microphone recorder: the page connects a microphone stream to it and gets its first
// channel back in blocks of MIC_BLOCK frames ({type:'mic', data: Float32Array}, transferred),
// to upload as a timbre or structure reference. Its output is silence.
const MIC_BLOCK = 4096;

class MicRecorder extends AudioWorkletProcessor {
  constructor() {
    super();
    this.block = new Float32Array(MIC_BLOCK);
    this.fill = 0;
    this.stopped = false;
    this.port.onmessage = (e) => {
      if (e.data && e.data.type === 'stop') {
        this.flush();
        this.stopped = true;
        this.port.postMessage({ type: 'stopped' });
      }
    };
  }

  flush() {
    if (this.fill === 0) return;
    const out = this.block.slice(0, this.fill);
    this.port.postMessage({ type: 'mic', data: out }, [out.buffer]);
    this.fill = 0;
  }

  process(inputs) {
    if (this.stopped) return false;
    const ch = inputs[0] && inputs[0][0];
    if (ch) {
      for (let i = 0; i < ch.length; i++) {
        this.block[this.fill++] = ch[i];
        if (this.fill === MIC_BLOCK) this.flush();
      }
    }
    return true;
  }
}

registerProcessor('mic-recorder', MicRecorder);
