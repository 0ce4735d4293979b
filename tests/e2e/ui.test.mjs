// End-to-end test of the performer's web UI in headless Debian Chromium.
//
// Starts `demon serve` (sketch backend) on a free port, opens the page, and checks through real
// input events that the UI, the worklet and the server agree. Exits non-zero on the first
// failure. Run through tests/e2e/run.sh (or `node ui.test.mjs` after `npm ci`).
//
// Environment: DEMON_BIN (default target/release/demon, then target/debug/demon, then the same
// under $CARGO_TARGET_DIR), CHROMIUM (default /usr/bin/chromium), E2E_TIMEOUT_S (default 170),
// E2E_DEV_ASSETS=1 serves crates/demon-server/web/* from disk instead of the binary (for UI work
// without a rebuild).

import { spawn } from 'node:child_process';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';
import { devProxy } from './dev-proxy.mjs';

const HERE = path.dirname(fileURLToPath(import.meta.url));
const ROOT = path.resolve(HERE, '..', '..');
const T0 = Date.now();
const TIMEOUT_S = Number(process.env.E2E_TIMEOUT_S || 170);
const SONG_SECONDS = 20;

let server = null;
let server2 = null;
let bin = null;
let context = null;
let page = null;
const pageErrors = [];
let serverLog = '';
const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'demon-e2e-'));

function elapsed() {
  return ((Date.now() - T0) / 1000).toFixed(1).padStart(5);
}
function say(text) {
  console.log(`[${elapsed()} s] ${text}`);
}

let passed = 0;
// A 48 kHz 16-bit PCM WAV of `frames` frames; every channel holds `sample(i)` (in [-1, 1]).
function wav16(channels, frames, sample) {
  const bytes = frames * channels * 2;
  const wav = Buffer.alloc(44 + bytes);
  wav.write('RIFF', 0);
  wav.writeUInt32LE(36 + bytes, 4);
  wav.write('WAVEfmt ', 8);
  wav.writeUInt32LE(16, 16);
  wav.writeUInt16LE(1, 20);
  wav.writeUInt16LE(channels, 22);
  wav.writeUInt32LE(48000, 24);
  wav.writeUInt32LE(48000 * channels * 2, 28);
  wav.writeUInt16LE(channels * 2, 32);
  wav.writeUInt16LE(16, 34);
  wav.write('data', 36);
  wav.writeUInt32LE(bytes, 40);
  for (let i = 0; i < frames; i++) {
    const v = Math.round(Math.max(-1, Math.min(1, sample(i))) * 32767);
    for (let c = 0; c < channels; c++) wav.writeInt16LE(v, 44 + 2 * (i * channels + c));
  }
  return wav;
}

// A sketch adapter file (docs/protocol.md, "LoRA library"): one F32 tensor of six style
// weights (house, techno, ambient, funk, lofi, dnb) in a safetensors file, metadata in its header.
function sketchAdapter(file, prior, metadata) {
  const header = { __metadata__: metadata, 'sketch.style_prior': { dtype: 'F32', shape: [6], data_offsets: [0, 24] } };
  let text = JSON.stringify(header);
  while ((8 + text.length) % 8) text += ' ';
  const out = Buffer.alloc(8 + text.length + 24);
  out.writeBigUInt64LE(BigInt(text.length), 0);
  out.write(text, 8, 'utf8');
  prior.forEach((v, i) => out.writeFloatLE(v, 8 + text.length + 4 * i));
  fs.writeFileSync(file, out);
}

async function check(name, fn) {
  const t = Date.now();
  let detail;
  try {
    detail = await fn();
  } catch (e) {
    console.log(`not ok - ${name}\n  ${String(e && e.stack ? e.stack : e).split('\n').join('\n  ')}`);
    throw e;
  }
  passed++;
  say(`ok ${passed} - ${name}${detail ? `: ${detail}` : ''} (${Date.now() - t} ms)`);
}

function assert(cond, msg) {
  if (!cond) throw new Error(`assertion failed: ${msg}`);
}

async function waitFor(what, fn, timeoutMs = 20000, everyMs = 100) {
  const end = Date.now() + timeoutMs;
  let last;
  for (;;) {
    try {
      last = await fn();
      if (last) return last;
    } catch (e) {
      last = e;
    }
    if (Date.now() > end) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}${last instanceof Error ? ` (last error: ${last.message})` : ''}`);
    await new Promise((r) => setTimeout(r, everyMs));
  }
}

function findBinary() {
  const candidates = [];
  if (process.env.DEMON_BIN) candidates.push(process.env.DEMON_BIN);
  else {
    candidates.push(path.join(ROOT, 'target/release/demon'), path.join(ROOT, 'target/debug/demon'));
    if (process.env.CARGO_TARGET_DIR) {
      candidates.push(path.join(process.env.CARGO_TARGET_DIR, 'release/demon'), path.join(process.env.CARGO_TARGET_DIR, 'debug/demon'));
    }
  }
  const bin = candidates.find((p) => fs.existsSync(p));
  if (!bin) throw new Error(`no demon binary (tried ${candidates.join(', ')}); build it with: cargo build --release -p demon-cli`);
  return bin;
}

function freePort() {
  return new Promise((resolve, reject) => {
    const s = net.createServer();
    s.on('error', reject);
    s.listen(0, '127.0.0.1', () => {
      const { port } = s.address();
      s.close(() => resolve(port));
    });
  });
}

async function cleanup() {
  if (context) await context.close().catch(() => {});
  context = null;
  if (server2 && server2.exitCode === null) server2.kill('SIGKILL');
  if (server && server.exitCode === null) {
    server.kill('SIGTERM');
    await new Promise((r) => {
      const t = setTimeout(() => {
        if (server.exitCode === null) server.kill('SIGKILL');
        r();
      }, 3000);
      server.once('exit', () => {
        clearTimeout(t);
        r();
      });
    });
  }
  fs.rmSync(tmp, { recursive: true, force: true });
}

async function main() {
  const watchdog = setTimeout(() => {
    console.log(`not ok - the whole test took longer than ${TIMEOUT_S} s`);
    cleanup().finally(() => process.exit(1));
  }, TIMEOUT_S * 1000);

  bin = findBinary();
  const port = await freePort();
  const base = `http://127.0.0.1:${port}`;
  let pageBase = base;
  if (process.env.E2E_DEV_ASSETS) {
    pageBase = `http://127.0.0.1:${await devProxy(port)}`;
    say(`E2E_DEV_ASSETS: the page comes from ${pageBase}, which serves crates/demon-server/web from disk and forwards the rest`);
  }
  say(`binary ${path.relative(ROOT, bin) || bin}; serving on ${base}`);
  // A LoRA folder with one group of one adapter; the library check copies another in.
  const loraDir = path.join(tmp, 'loras');
  fs.mkdirSync(path.join(loraDir, 'dark'), { recursive: true });
  sketchAdapter(path.join(loraDir, 'dark', 'warehouse.safetensors'), [0, 3, 0, 0, 0, 0], { recommended_strength: '0.8' });
  fs.writeFileSync(path.join(loraDir, 'dark', 'warehouse.json'), JSON.stringify({ trigger_words: ['techno', 'zorblax'] }));
  server = spawn(bin, ['serve', '--song-seconds', String(SONG_SECONDS), '--port', String(port), '--no-midi', '--no-osc', '--recordings-dir', path.join(tmp, 'rec'), '--lora-dir', loraDir], {
    stdio: ['ignore', 'pipe', 'pipe'],
    env: { ...process.env, XDG_CONFIG_HOME: path.join(tmp, 'config') },
  });
  server.stdout.on('data', (d) => (serverLog += d));
  server.stderr.on('data', (d) => {
    serverLog += d;
    // E2E_SERVER_LOG=FILE: the server's stderr as it comes, stamped with the run's clock (what
    // the degrade policy did when, beside the checks' own lines).
    if (process.env.E2E_SERVER_LOG) fs.appendFileSync(process.env.E2E_SERVER_LOG, String(d).split('\n').filter(Boolean).map((l) => `[${elapsed()}] ${l}\n`).join(''));
  });
  server.on('exit', (code, sig) => {
    if (context) console.log(`server exited early (code ${code}, signal ${sig})`);
  });

  const api = async (p, init) => {
    const r = await fetch(base + p, init);
    const body = await r.text();
    let json = null;
    try {
      json = JSON.parse(body);
    } catch (_) {
      /* not JSON */
    }
    return { status: r.status, json, body };
  };
  const state = async () => (await api('/api/state')).json;

  await check('server starts and answers /api/health', async () => {
    const h = await waitFor('the server', async () => {
      if (server.exitCode !== null) throw Object.assign(new Error(`server exited with ${server.exitCode}:\n${serverLog}`), { fatal: true });
      const r = await api('/api/health').catch(() => null);
      return r && r.status === 200 && r.json && r.json.ok ? r.json : null;
    }, 90000, 250);
    return `backend ${h.backend}, tick ${h.tick}`;
  });

  const userDataDir = path.join(tmp, 'profile');
  context = await chromium.launchPersistentContext(userDataDir, {
    executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
    headless: true,
    viewport: { width: 1360, height: 900 },
    acceptDownloads: true,
    args: [
      '--headless=new',
      '--no-sandbox',
      '--disable-gpu',
      '--disable-quic',
      '--no-first-run',
      '--disable-background-networking',
      '--disable-component-update',
      '--disable-sync',
      '--autoplay-policy=no-user-gesture-required',
      // A fake microphone (a beeping tone) that needs no prompt: the references check records it.
      '--use-fake-device-for-media-stream',
      '--use-fake-ui-for-media-stream',
    ],
    permissions: ['microphone'],
  });
  page = context.pages()[0] || (await context.newPage());
  page.on('pageerror', (e) => pageErrors.push(e.message));
  page.on('console', (m) => {
    if (m.type() === 'error') pageErrors.push(`console: ${m.text()}`);
  });
  const demon = (expr) => page.evaluate(expr);

  await check('page loads and receives `ready` with the knob catalog', async () => {
    await page.goto(pageBase + '/');
    await page.waitForFunction(() => window.demon && window.demon.ready, null, { timeout: 30000 });
    await page.waitForFunction(() => document.querySelectorAll('#library option[value^="library:"]').length > 0, null, { timeout: 10000 });
    const r = await demon(() => ({
      knobs: window.demon.readyMessage.knobs.map((k) => k.name),
      curves: window.demon.readyMessage.curves,
      faders: [...document.querySelectorAll('.fader[data-knob]')].map((f) => f.dataset.knob),
      tabs: [...document.querySelectorAll('#curve-tabs button')].map((b) => b.dataset.curve),
      library: document.querySelectorAll('#library option[value^="library:"]').length,
      conn: document.getElementById('conn').textContent,
    }));
    const catalog = (await api('/api/knobs')).json.map((k) => k.name);
    assert(r.knobs.join() === catalog.join(), `ready knobs ${r.knobs} equal /api/knobs ${catalog}`);
    for (const k of catalog) if (k !== 'seed') assert(r.faders.includes(k), `a fader for ${k}`);
    assert(r.faders.some((k) => k.startsWith('lora:')), 'LoRA faders for the sketch adapters');
    assert(r.curves.length > 0 && r.tabs.join() === r.curves.join(), `a curve tab per curve (${r.tabs})`);
    const lib = (await api('/api/library')).json;
    assert(r.library === lib.length && lib.length > 0, `library menu has ${r.library} of ${lib.length} songs`);
    return `${r.faders.length} faders (${r.faders.filter((k) => k.startsWith('lora:')).length} LoRA), ${r.tabs.length} curves, ${r.library} library songs; "${r.conn}"`;
  });

  await check('audio runs: the AudioContext is running and the worklet playhead moves', async () => {
    const st = await demon(() => window.demon.audioState);
    if (st !== 'running') await page.click('#play');
    await page.waitForFunction(() => window.demon.audioState === 'running' || document.querySelector('#play').classList.contains('on'), null, { timeout: 10000 });
    const p0 = await demon(() => window.demon.position);
    const p1 = await waitFor('the playhead to move', async () => {
      const p = await demon(() => window.demon.position);
      return p !== p0 ? p : null;
    }, 10000);
    const rate = await demon(() => window.demon.state().rate);
    return `context ${await demon(() => window.demon.audioState)}, ${rate} Hz source, playhead ${p0.toFixed(3)} → ${p1.toFixed(3)} s`;
  });

  let s0;
  await check('the worklet receives and applies slices (zstd-compressed deltas)', async () => {
    const a = await demon(() => ({ s: window.demon.slicesReceived, f: window.demon.framesApplied, r: window.demon.framesReceived }));
    assert(a.f >= 1, `the full buffer was applied (framesApplied ${a.f})`);
    const b = await waitFor('slices', async () => {
      const x = await demon(() => ({ s: window.demon.slicesReceived, tick: window.demon.lastSliceTick, bad: window.demon.badFrames.length }));
      return x.s >= a.s + 5 ? x : null;
    }, 30000);
    assert(b.bad === 0, 'no bad frames');
    s0 = b.s;
    const c = await demon(() => window.demon.checksum());
    assert(c.len === SONG_SECONDS * 48000, `buffer holds the song (${c.len} samples)`);
    assert(c.peak > 0, 'the buffer is not silent');
    // The page asked for zstd deltas in its upgrade and decodes them with the bundled fzstd.
    const z = await demon(() => ({ mode: window.demon.compression, packed: window.demon.compressedBytes, plain: window.demon.plainBytes }));
    assert(z.mode === 'zstd' && z.packed > 0 && z.plain > z.packed, `zstd deltas negotiated and decoded (${JSON.stringify(z)})`);
    return `${a.s} → ${b.s} slices (last at tick ${b.tick}), buffer ${c.len} samples, hash ${c.hash}; deltas zstd: ${z.packed} bytes for ${z.plain} (${(z.plain / z.packed).toFixed(1)}× smaller)`;
  });

  // A knob moved with the mouse on its fader: the server's state follows, then the sound. The
  // worklet measures how far the slices move its buffer (RMS against a remembered copy): while
  // nothing changes, re-patches only add f16 rounding noise; after the change they carry new audio.
  const settle = async (what, timeoutMs = 40000) => {
    // Wait for a window of 15 slices that leaves the buffer as it was.
    let last;
    await waitFor(what, async () => {
      await demon(() => window.demon.mark());
      const s = await demon(() => window.demon.slicesReceived);
      await page.waitForFunction((s) => window.demon.slicesReceived >= s + 15, s, { timeout: 20000 });
      last = await demon(() => window.demon.diffSinceMark());
      return last.rms < 1e-3;
    }, timeoutMs, 0);
    return last;
  };
  let knobValue;
  let before;
  let quiet;
  await check("the worklet's buffer equals the server's loop (/api/loop.wav) to f16 precision", async () => {
    quiet = await settle('a quiet loop (slices that only re-patch the same audio)');
    const c = await demon(() => window.demon.compareWithServer());
    assert(c.otherLen === c.len, `same length (${c.len} vs ${c.otherLen})`);
    // f16 keeps 11 significant bits: |error| <= 2^-12 relative; samples here stay below 2.
    assert(c.max <= 2 ** -10 && c.over === 0, `largest difference ${c.max} within f16 rounding`);
    return `quiet loop (15 slices moved it by RMS ${quiet.rms.toExponential(2)}); worklet vs server: RMS ${c.rms.toExponential(2)}, max ${c.max.toExponential(2)} over ${c.len} samples (fetch ${c.fetchMs.toFixed(0)} ms)`;
  });

  await check('moving the velocity_scale fader with the mouse changes /api/state', async () => {
    const st = await state();
    const old = st.targets.velocity_scale;
    const slider = page.locator('.fader[data-knob="velocity_scale"] input[type=range]');
    await slider.scrollIntoViewIfNeeded();
    const box = await slider.boundingBox();
    await demon(() => window.demon.mark());
    before = await demon(() => ({ tick: window.demon.lastSliceTick, s: window.demon.slicesReceived }));
    before.c = await demon(() => window.demon.checksum());
    await page.mouse.move(box.x + box.width * 0.5, box.y + box.height / 2);
    await page.mouse.down();
    await page.mouse.move(box.x + box.width * 0.7, box.y + box.height / 2, { steps: 4 });
    await page.mouse.move(box.x + box.width * 0.92, box.y + box.height / 2, { steps: 4 });
    await page.mouse.up();
    knobValue = Number(await slider.inputValue());
    assert(Math.abs(knobValue - old) > 1, `the fader moved far (${old} → ${knobValue})`);
    const got = await waitFor('/api/state to show the new velocity_scale', async () => {
      const s = await state();
      return Math.abs(s.targets.velocity_scale - knobValue) < 1e-9 ? s : null;
    }, 10000);
    const shown = await page.locator('.fader[data-knob="velocity_scale"] .val').inputValue();
    return `fader ${old} → ${knobValue}; /api/state targets.velocity_scale = ${got.targets.velocity_scale} (effective ${got.knobs.velocity_scale.toFixed(3)}); readout "${shown}"; latency readout ${await page.locator('#r-reply').textContent()} ms`;
  });

  await check('the slices that follow the change carry new audio', async () => {
    const after = await waitFor('new slices after the change', async () => {
      const x = await demon(() => ({ s: window.demon.slicesReceived, tick: window.demon.lastSliceTick }));
      return x.s >= before.s + 20 && x.tick > before.tick ? x : null;
    }, 30000);
    const d = await demon(() => window.demon.diffSinceMark());
    const c = await demon(() => window.demon.checksum());
    assert(c.hash !== before.c.hash, `buffer checksum changed (${before.c.hash} → ${c.hash})`);
    assert(d.rms > 20 * quiet.rms && d.rms > 1e-3, `the buffer moved far more than while quiet (RMS ${d.rms.toExponential(2)} vs ${quiet.rms.toExponential(2)})`);
    assert(d.changed > 0.02 * d.len, `a good part of the loop changed (${d.changed} of ${d.len} samples)`);
    const eff = (await state()).knobs.velocity_scale;
    assert(Math.abs(eff - knobValue) < 1e-6, `the slew-limited value reached the target (${eff})`);
    return `${after.s - before.s} slices, tick ${before.tick} → ${after.tick}; buffer RMS change ${d.rms.toExponential(2)} (quiet loop: ${quiet.rms.toExponential(2)}), ${d.changed} of ${d.len} samples changed; hash ${before.c.hash} → ${c.hash}`;
  });

  await check("after the change (session paused), the worklet's buffer equals the server's loop, patch crossfades included", async () => {
    // The slices since the change carried large deltas: an error in applying them (f16 decode,
    // a dropped or misplaced slice, a wrong wrap) would show far above f16 rounding. Stopping
    // the session freezes both copies, so they can be compared at one instant.
    //
    // The server blends each new window into its loop with 25 ms crossfades at both edges
    // (LoopBuffer::patch) and sends clients that crossfaded content, so the crossfade zones of
    // patches must match too; they are counted apart so a failure says where it is.
    await page.click('#play');
    await waitFor('the session stopped', async () => !(await state()).playing, 10000);
    let quiet;
    await waitFor('no more slices while stopped', async () => {
      await demon(() => window.demon.mark());
      const a = await demon(() => window.demon.slicesReceived);
      await new Promise((r) => setTimeout(r, 800));
      quiet = await demon(() => window.demon.diffSinceMark());
      return (await demon(() => window.demon.slicesReceived)) === a && quiet.rms === 0;
    }, 20000, 0);
    const slices = await demon(() => window.demon.recentSlices);
    const len = SONG_SECONDS * 48000;
    const zones = [];
    for (const [start, n] of slices) {
      const xf = Math.max(1, Math.min(1200, Math.floor(n / 4))); // LoopBuffer::patch's fade
      zones.push([start, start + xf], [start + n - xf, start + n]);
    }
    const c = await page.evaluate((z) => window.demon.compareWithServer(z), zones);
    assert(c.zoneSamples > 0, 'the crossfade zones reached the worklet');
    await page.click('#play');
    await waitFor('playing again', async () => (await state()).playing && (await demon(() => window.demon.audioState)) === 'running', 10000);
    const near = c.runs.length ? slices.filter(([a]) => Math.abs(a - c.runs[0][0]) < 40000).map(([a]) => a) : [];
    const where = `stretches [start, length, in a crossfade zone] ${JSON.stringify(c.runs)}; slices received starting near the first: ${near.join(' ')}; ${slices.length} slices, ${await demon(() => window.demon.framesReceived)} frames`;
    assert(c.otherLen === c.len && c.len === len, `same length (${c.len} vs ${c.otherLen})`);
    assert(c.max <= 2 ** -10 && c.over === 0, `outside crossfade zones the largest difference ${c.max} is within f16 rounding (${c.over} samples off by more than 1e-3; ${where})`);
    assert(c.zoneMax <= 2 ** -10 && c.zoneOver === 0, `inside the crossfade zones too the largest difference ${c.zoneMax} is within f16 rounding (${c.zoneOver} samples off by more than 1e-3; ${where})`);
    return `${slices.length} slices so far; outside the ${c.zoneSamples} samples of patch crossfade zones: RMS ${c.rms.toExponential(2)}, max ${c.max.toExponential(2)} over ${c.len - c.zoneSamples} samples; inside them: max ${c.zoneMax.toExponential(2)}`;
  });

  // Knob-to-ear latency (issue 10): control received by the server → first sample this page's
  // playhead plays that reflects it. The server names the first slice that carries each
  // control (`reflects`); the worklet reports when it first plays a sample of it; the page sends
  // `heard` and the server measures on its own clock (docs/protocol.md). N moves per class.
  await check('knob-to-ear per class, measured by the page (figures against the depth-4 acceptance), every control heard, no late slice', async () => {
    const N = 12;
    // Depth 4 as the knob says: the degrade policy may hold it lower for a while on a loaded
    // machine and gives it back one step per second of room. Wait for it a while; on a machine
    // too loaded for depth 4 the figures are measured at the depth that runs, and say so.
    await waitFor('depth 4 running (not capped by the degrade policy)', async () => (await state()).depth === 4, 30000).catch(() => null);
    const st0 = await state();
    assert(st0.targets.depth === 4 && st0.adaptive_lead, `the depth knob at 4 and serve's adaptive lead (${st0.targets.depth}, ${st0.adaptive_lead})`);
    // Let the lead settle from its 0.5 s start (or from a stall before this check, which can
    // hold it up to its 3 s ceiling for the ~10 s the stall stays among the needs): no change
    // over 1.5 s, under a second, or whatever it is after 45 s.
    let leads = [];
    const settleFrom = Date.now();
    await waitFor('the adaptive lead to settle', async () => {
      const a = (await state()).lead_ms;
      await new Promise((r) => setTimeout(r, 1500));
      const b = (await state()).lead_ms;
      leads.push(b);
      return a === b && (b < 1000 || Date.now() - settleFrom > 45000);
    }, 60000, 0);
    const late0 = await demon(() => window.demon.lateSlices);
    const long0 = await demon(() => ({ ...window.demon.longTasks }));
    const heard0 = await demon(() => window.demon.heard.length);
    const measure = async (cls, knob, values, gapMs) => {
      const got = [];
      const at = [];
      for (const value of values) {
        const before = ((await state()).knob_to_ear[cls] || { count: 0 }).count;
        const r = await page.evaluate((m) => window.demon.request({ type: "control", message: m }), { type: "set_knob", name: knob, value });
        assert(r && r.ok, `${knob} = ${value} applied (${JSON.stringify(r)})`);
        const k = await waitFor(`the page to hear ${knob} = ${value}`, async () => {
          const e = (await state()).knob_to_ear[cls];
          return e && e.count > before ? e : null;
        }, 10000);
        const d = (await state()).depth;
        got.push(k.last_ms);
        at.push(d);
        depths.push(d);
        await new Promise((r) => setTimeout(r, gapMs));
      }
      const quantiles = (xs) => {
        const sorted = [...xs].sort((a, b) => a - b);
        const q = (p) => sorted[Math.min(sorted.length, Math.max(1, Math.ceil(p * sorted.length))) - 1];
        return { median: q(0.5), p90: q(0.9) };
      };
      // The acceptance is at depth 4: the moves measured while the degrade policy held the
      // depth lower (a machine too loaded for depth 4) are reported but not held to it.
      const at4 = got.filter((_, i) => at[i] === 4);
      return { got, at, ...quantiles(got), n4: at4.length, at4: at4.length ? quantiles(at4) : null };
    };
    const depths = [];
    const lane = await measure('shared_lane', 'velocity_scale', Array.from({ length: N }, (_, i) => (i % 2 ? 1.4 : 0.7)), 400);
    const stMid = await state();
    const slot = await measure('per_slot', 'seed', Array.from({ length: N }, (_, i) => 1000 + 17 * i), 300);
    const st1 = await state();
    const late = (await demon(() => window.demon.lateSlices)) - late0;
    const heard = (await demon(() => window.demon.heard.length)) - heard0;
    const steps = st1.targets.steps, tickMs = 1000 * 1920 / 48000;
    const queue = Math.max(stMid.queue, st1.queue);
    const slotBound = (queue + steps) * tickMs + 250;
    const f = (x) => x.toFixed(0);
    const by = (m) => m.got.map((x, i) => `${f(x)}@${m.at[i]}`).join(' ');
    const four = (m) => (m.at4 ? `at depth 4 (${m.n4} of ${N}): median ${f(m.at4.median)} ms, p90 ${f(m.at4.p90)} ms` : 'none at depth 4');
    const lat = await demon(() => window.demon.audioLatency());
    const long1 = await demon(() => ({ ...window.demon.longTasks }));
    const longTasks = `; main-thread tasks over 50 ms meanwhile: ${long1.count - long0.count} (${(long1.totalMs - long0.totalMs).toFixed(0)} ms in all, longest ${long1.maxMs.toFixed(0)} ms so far)`;
    const audioPath = lat ? `; the browser's audio path: base ${lat.base_ms.toFixed(1)} ms, output ${lat.output_ms.toFixed(1)} ms, output trails rendering by ${lat.behind_ms == null ? '?' : lat.behind_ms.toFixed(1)} ms` : '';
    const detail = `shared lane: median ${f(lane.median)} ms, p90 ${f(lane.p90)} ms, ${four(lane)} [ms@depth: ${by(lane)}]; per slot: median ${f(slot.median)} ms, p90 ${f(slot.p90)} ms, ${four(slot)} (bound (queue ${queue} + S ${steps}) × ${tickMs} ms + 250 = ${f(slotBound)} ms) [${by(slot)}]; lead ${st1.lead_ms} ms (settled after ${leads.join(' → ')}); late slices ${late}; ${heard} heard reports from this page; depth running ${Math.min(...depths)}..${Math.max(...depths)}${audioPath}${longTasks}`;
    say(`knob-to-ear: ${detail}`);
    assert(heard >= 2 * N, `the page reported every control it heard (${heard} of ${2 * N})`);
    assert(late === 0, `no slice landed behind the playhead (${late})`);
    // Timing is measured, not asserted (a figure, like `demon bench`'s; a shared 2-core test
    // machine decides it as much as the code does): the check says how the figures compare
    // with the acceptance (shared lane ≤ 250 ms median, per slot ≤ queue + S ticks + 250 ms,
    // at depth 4), and asserts what does not depend on timing: every control heard, no late slice.
    const cmp = (name, m, bound) => (m.n4 >= N / 2
      ? `${name} at depth 4 ${m.at4.median <= bound ? 'within' : 'OVER'} ${f(bound)} ms`
      : `${name} not measured at depth 4 (${m.n4} of ${N} moves; the degrade policy lowered the depth on this machine)`);
    const verdict = `${cmp('shared lane', lane, 250)}; ${cmp('per slot', slot, slotBound)}`;
    say(`knob-to-ear against the acceptance: ${verdict}`);
    return `${detail}; ${verdict}`;
  });

  await check('keyboard: End and Shift+← on the focused denoise fader', async () => {
    const slider = page.locator('.fader[data-knob="denoise"] input[type=range]');
    await slider.focus();
    await page.keyboard.press('End');
    await waitFor('denoise = 1 in /api/state', async () => (await state()).targets.denoise === 1, 10000);
    await page.keyboard.press('Shift+ArrowLeft');
    const s = await waitFor('denoise = 0.9 in /api/state', async () => {
      const x = await state();
      return Math.abs(x.targets.denoise - 0.9) < 1e-9 ? x : null;
    }, 10000);
    return `denoise → 1 → ${s.targets.denoise}`;
  });

  await check('LoRA fader: End on the focused lora:funk fader sets the adapter strength', async () => {
    const slider = page.locator('.fader[data-knob="lora:funk"] input[type=range]');
    await slider.scrollIntoViewIfNeeded();
    await slider.focus();
    await page.keyboard.press('End');
    const st = await waitFor('lora:funk = 2 in /api/state', async () => {
      const x = await state();
      return x.targets['lora:funk'] === 2 ? x : null;
    }, 10000);
    await page.keyboard.press('Home');
    await waitFor('lora:funk = 0', async () => (await state()).targets['lora:funk'] === 0, 10000);
    return `lora:funk → 2 → 0 (adapters: ${st.adapters.map((a) => a.id).join(', ')})`;
  });

  await check('LoRA library: the panel lists the folder grouped, search filters, rescan finds a copied file, load brings its fader and trigger words, off disables it', async () => {
    const entry = (id) => page.locator(`#lora-groups li[data-lora="${id}"]`);
    await entry('warehouse').waitFor({ timeout: 10000 });
    const group = await entry('warehouse').evaluate((li) => li.closest('details').dataset.group);
    assert(group === 'dark', `grouped under its folder (${group})`);
    assert((await entry('warehouse').getAttribute('data-status')) === 'registered', 'registered, not loaded');
    await page.fill('#lora-search', 'nothing-like-this');
    await waitFor('the search hides it', async () => (await entry('warehouse').count()) === 0, 5000);
    await page.fill('#lora-search', 'zorblax'); // a trigger word finds it
    await entry('warehouse').waitFor({ timeout: 5000 });
    await page.fill('#lora-search', '');

    sketchAdapter(path.join(loraDir, 'tape.safetensors'), [0, 0, 0, 0, 3, 0], { trigger_words: 'tape hiss' });
    await page.click('#lora-rescan');
    await entry('tape').waitFor({ timeout: 10000 });
    const tapeGroup = await entry('tape').evaluate((li) => li.closest('details').dataset.group);

    const t0 = Date.now();
    await page.click('#lora-groups button[data-lora-action="warehouse"]');
    await page.locator('.fader[data-knob="lora:warehouse"]').waitFor({ timeout: 30000 });
    const st = await waitFor('warehouse loaded and enabled', async () => {
      const x = await state();
      const e = (x.lora_library || []).find((l) => l.id === 'warehouse');
      return e && e.status === 'loaded' && x.targets['lora:warehouse'] === 0.8 ? x : null;
    }, 10000);
    const loadS = (Date.now() - t0) / 1000;
    assert(st.trigger_words.join() === 'techno,zorblax', `trigger words in the prompt (${st.trigger_words})`);
    assert(st.used && st.used.style.includes('techno'), `the conditioning hears techno (${JSON.stringify(st.used)})`);
    await waitFor('the entry says on', async () => (await entry('warehouse').getAttribute('data-status')) === 'loaded' && (await entry('warehouse').locator('.status').textContent()).startsWith('on'), 10000);
    const laneTab = await page.locator('#lane-tabs button[data-lane="lora:warehouse"]').count();
    assert(laneTab === 1, 'an automation tab for the new adapter');

    await page.click('#lora-groups button[data-lora-action="warehouse"]'); // off
    await waitFor('lora:warehouse = 0', async () => {
      const x = await state();
      return x.targets['lora:warehouse'] === 0 && (x.trigger_words || []).length === 0;
    }, 10000);
    return `warehouse in "dark", tape in "${tapeGroup}" after rescan; loaded and on in ${loadS.toFixed(1)} s (fader, lane tab, trigger words ${st.trigger_words.join(', ')}), then off`;
  });

  await check('echo: a change from another client (REST) moves the fader', async () => {
    const r = await api('/api/control', { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ type: 'set_knob', name: 'guidance', value: 4.5 }) });
    assert(r.status === 200 && r.json.ok, `REST control accepted (${r.body})`);
    const step = Number(await page.locator('.fader[data-knob="guidance"] input[type=range]').getAttribute('step'));
    const v = await waitFor('the guidance fader at 4.5', async () => {
      const x = await page.locator('.fader[data-knob="guidance"] input[type=range]').inputValue();
      return Math.abs(Number(x) - 4.5) <= step ? x : null;
    }, 10000);
    const shown = await page.locator('.fader[data-knob="guidance"] .val').inputValue();
    assert(shown === '4.50', `the readout shows 4.50 (${shown})`);
    return `guidance fader at ${v} (step ${step}), readout "${shown}"`;
  });

  await check('a bad control (unknown knob) shows an error and slices keep coming', async () => {
    const s1 = await demon(() => window.demon.slicesReceived);
    await demon(() => window.demon.send({ type: 'control', id: 'bad-1', message: { type: 'set_knob', name: 'no_such_knob', value: 1 } }));
    const text = await waitFor('the error in the page', async () => {
      const t = await page.locator('#log li.error .msg').first().textContent().catch(() => null);
      return t && t.includes('no_such_knob') ? t : null;
    }, 10000);
    assert(await page.locator('#toast').isVisible(), 'the error toast is visible');
    const s2 = await waitFor('slices after the error', async () => {
      const x = await demon(() => window.demon.slicesReceived);
      return x >= s1 + 5 ? x : null;
    }, 30000);
    assert(await demon(() => window.demon.ready), 'still connected');
    return `shown: "${text}"; slices ${s1} → ${s2}`;
  });

  await check('curve drawing: a drawn velocity_scale curve reaches /api/state, clear removes it', async () => {
    await page.click('#curve-tabs button[data-curve="velocity_scale"]');
    const cv = page.locator('#curve');
    await cv.scrollIntoViewIfNeeded();
    const box = await cv.boundingBox();
    await page.mouse.move(box.x + 2, box.y + box.height * 0.8);
    await page.mouse.down();
    for (let i = 1; i <= 10; i++) await page.mouse.move(box.x + (box.width - 4) * (i / 10), box.y + box.height * (0.8 - 0.6 * (i / 10)), { steps: 3 });
    await page.mouse.up();
    const s = await waitFor('a raw velocity_scale curve in /api/state', async () => {
      const x = await state();
      const c = x.curves && x.curves.velocity_scale;
      return c && c.type === 'raw' ? c : null;
    }, 10000);
    assert(s.values.length === 200, `200 points (${s.values.length})`);
    assert(s.values[199] > s.values[0] + 1, `the curve rises (${s.values[0]} → ${s.values[199]})`);
    await page.click('#curve-clear');
    await waitFor('the curve removed', async () => !((await state()).curves || {}).velocity_scale, 10000);
    return `raw curve ${s.values[0].toFixed(2)} → ${s.values[199].toFixed(2)} (200 points), then cleared`;
  });

  // Issue 12, item 3: a knob automation lane drawn on the curve canvas; the playhead moves the
  // knob along it, the fader follows and refuses the hand, clear gives it back.
  await check('automation: a drawn denoise lane reaches /api/state, the playhead moves the knob along it, clear removes it', async () => {
    await page.click('#lane-tabs button[data-lane="denoise"]');
    await page.selectOption('#lane-interp', 'smooth');
    const cv = page.locator('#curve');
    await cv.scrollIntoViewIfNeeded();
    const box = await cv.boundingBox();
    // A falling line: high denoise at the song's start, low at its end.
    await page.mouse.move(box.x + 2, box.y + box.height * 0.1);
    await page.mouse.down();
    for (let i = 1; i <= 10; i++) await page.mouse.move(box.x + (box.width - 4) * (i / 10), box.y + box.height * (0.1 + 0.8 * (i / 10)), { steps: 3 });
    await page.mouse.up();
    const lane = await waitFor('a denoise lane in /api/state', async () => {
      const x = await state();
      return x.automation && x.automation.denoise ? x.automation.denoise : null;
    }, 10000);
    const pts = lane.points;
    assert(lane.interpolation === 'smooth', `the menu's interpolation (${lane.interpolation})`);
    assert(pts.length === 65 && pts[0].at_s === 0 && Math.abs(pts[64].at_s - SONG_SECONDS) < 1e-3, `65 points over the song (${pts.length}, ${pts[0].at_s} … ${pts[pts.length - 1].at_s})`);
    assert(pts[0].value > pts[64].value + 0.5, `the lane falls (${pts[0].value} → ${pts[64].value})`);
    // The knob's target is the lane's value at the playhead: seen at two playheads apart.
    const seen = [];
    await waitFor('the knob following the lane at two places of the song', async () => {
      const x = await state();
      seen.push([x.playhead_seconds, x.targets.denoise]);
      const vs = seen.map((p) => p[1]);
      return Math.max(...vs) - Math.min(...vs) > 0.2 ? true : null;
    }, 20000, 250);
    assert(await page.locator('.fader[data-knob="denoise"].automated').count() === 1, 'the denoise fader is marked automated');
    // A hand move is not sent: the page says why.
    const before = (await state()).automation.denoise;
    await page.locator('.fader[data-knob="denoise"] input[type=range]').focus();
    await page.keyboard.press('Home');
    const notices = await demon(() => window.demon.notices.slice());
    assert(notices.some((n) => n.includes('denoise follows its automation lane')), `a notice (${JSON.stringify(notices.slice(-3))})`);
    assert(JSON.stringify((await state()).automation.denoise) === JSON.stringify(before), 'the lane stays');
    await page.click('#lane-tabs button[data-lane="denoise"]');
    await page.click('#curve-clear');
    await waitFor('the lane removed', async () => !((await state()).automation || {}).denoise, 10000);
    await waitFor('the fader unmarked', async () => (await page.locator('.fader[data-knob="denoise"].automated').count()) === 0, 5000);
    const range = seen.map((p) => p[1]);
    return `smooth lane of ${pts.length} points, ${pts[0].value.toFixed(2)} → ${pts[64].value.toFixed(2)}; the knob moved ${Math.min(...range).toFixed(2)} … ${Math.max(...range).toFixed(2)} over ${seen.length} samples; hand move refused with a notice; cleared`;
  });

  await check('loop band: dragging on the waveform sets it, the worklet plays inside it, C clears it', async () => {
    const wave = page.locator('#wave');
    await wave.scrollIntoViewIfNeeded();
    const box = await wave.boundingBox();
    await page.mouse.move(box.x + box.width * 0.25, box.y + box.height / 2);
    await page.mouse.down();
    await page.mouse.move(box.x + box.width * 0.5, box.y + box.height / 2, { steps: 5 });
    await page.mouse.up();
    const band = await waitFor('a loop band in /api/state', async () => (await state()).loop_band, 10000);
    assert(Math.abs(band[0] - 5) < 0.2 && Math.abs(band[1] - 10) < 0.2, `band ≈ [5, 10] s (${band})`);
    const p = await waitFor('the worklet playhead inside the band', async () => {
      const x = await demon(() => window.demon.position);
      return x >= band[0] - 0.05 && x <= band[1] + 0.05 ? x : null;
    }, 5000);
    await page.locator('body').click({ position: { x: 5, y: 5 } }).catch(() => {});
    await page.evaluate(() => document.activeElement && document.activeElement.blur());
    await page.keyboard.press('c');
    await waitFor('the band cleared', async () => (await state()).loop_band === null, 10000);
    // A click (no drag) seeks both the worklet and the session.
    await page.mouse.click(box.x + box.width * 0.75, box.y + box.height / 2);
    const seek = await waitFor('the session playhead near 15 s', async () => {
      const x = (await state()).playhead_seconds;
      return x >= 14.8 && x < 17.5 ? x : null;
    }, 5000, 50);
    // The worklet reports its playhead a few times a second: wait for a report after the jump.
    const wp = await waitFor('the worklet playhead near 15 s too', async () => {
      const x = await demon(() => window.demon.position);
      return x >= 14.8 && x < 17.5 ? x : null;
    }, 3000, 50);
    return `band [${band[0].toFixed(2)}, ${band[1].toFixed(2)}] s, worklet at ${p.toFixed(2)} s, then cleared; click at 75 % → session ${seek.toFixed(2)} s, worklet ${wp.toFixed(2)} s`;
  });

  await check('record and download a WAV', async () => {
    await page.click('#rec');
    await waitFor('recording', async () => page.locator('#rec.on').count(), 5000);
    await new Promise((r) => setTimeout(r, 1200));
    await page.click('#rec');
    const href = await waitFor('the download link', async () => {
      const a = page.locator('#download:not(.hidden)');
      return (await a.count()) ? a.getAttribute('href') : null;
    }, 10000);
    const r = await fetch(new URL(href, base));
    const bytes = new Uint8Array(await r.arrayBuffer());
    const magic = String.fromCharCode(...bytes.slice(0, 4)) + String.fromCharCode(...bytes.slice(8, 12));
    assert(r.status === 200 && magic === 'RIFFWAVE', `a WAV file (${r.status}, ${magic})`);
    return `${href}: ${bytes.length} bytes`;
  });

  await check('prompts: Enter sends A and B, key 3 sets the blend to ½', async () => {
    await page.fill('#prompt-a', 'deep techno, rolling bass');
    await page.fill('#prompt-b', 'ambient pads');
    await page.focus('#prompt-a');
    await page.keyboard.press('Enter');
    const st = await waitFor('the prompts in /api/state', async () => {
      const x = await state();
      return x.prompt === 'deep techno, rolling bass' && x.prompt_b === 'ambient pads' ? x : null;
    }, 10000);
    await page.evaluate(() => document.activeElement && document.activeElement.blur());
    await page.keyboard.press('3');
    const b = await waitFor('blend 0.5', async () => ((await state()).targets.blend === 0.5 ? 0.5 : null), 10000);
    return `prompt "${st.prompt}", prompt_b "${st.prompt_b}", blend ${b}`;
  });

  await check('Space stops and restarts the session and the audio', async () => {
    await page.keyboard.press('Space');
    await waitFor('stopped', async () => !(await state()).playing && (await demon(() => window.demon.audioState)) === 'suspended', 10000);
    await page.keyboard.press('Space');
    await waitFor('playing', async () => (await state()).playing && (await demon(() => window.demon.audioState)) === 'running', 10000);
    const s1 = await demon(() => window.demon.slicesReceived);
    await waitFor('slices after restarting', async () => (await demon(() => window.demon.slicesReceived)) >= s1 + 3, 20000);
    return 'playing → stopped (context suspended) → playing (running), slices flow again';
  });

  await check('source: a library song, then an uploaded WAV (waveform drawn), then a bad upload is refused', async () => {
    await page.selectOption('#library', 'library:funk:1');
    await page.click('#load-library');
    const lib = await waitFor('the library source', async () => {
      const x = (await state()).source;
      return x && x.includes('funk') ? x : null;
    }, 20000);
    // Issue 12, item 5: the page shows what was measured on the source.
    const measured = await waitFor('the source analysis', async () => {
      const t = await page.locator('#source-analysis').textContent();
      return t.includes('BPM') && t.includes('LUFS') ? t : null;
    }, 10000);
    const a = (await state()).source_analysis;
    assert(a && measured.includes(a.bpm.toFixed(1)), `the page shows the state's tempo (${measured}; ${JSON.stringify(a)})`);
    // A song-length WAV (48 kHz stereo 16-bit): plucked notes of an arpeggio, so the loop keeps
    // its length (a shorter source would shorten the song).
    const wav = wav16(2, SONG_SECONDS * 48000, (i) => {
      const note = Math.floor(i / 12000), t = (i % 12000) / 48000;
      const f = 110 * 2 ** ([0, 3, 7, 10, 12, 10, 7, 3][note % 8] / 12);
      return Math.sin(2 * Math.PI * f * t) * Math.exp(-t * 6) * 0.49;
    });
    await page.setInputFiles('#upload', { name: 'tone.wav', mimeType: 'audio/wav', buffer: wav });
    await waitFor('the upload as the source', async () => (await state()).source === 'tone.wav', 30000);
    const info = await waitFor('the upload message', async () => {
      const t = await page.locator('#upload-info').textContent();
      return t.includes('now the source') ? t : null;
    }, 10000);
    const lit = await page.evaluate(() => {
      const cv = document.getElementById('upload-wave');
      const d = cv.getContext('2d').getImageData(0, 0, cv.width, cv.height).data;
      let n = 0;
      for (let i = 0; i < d.length; i += 4) if (d[i] > 200 && d[i + 1] > 120 && d[i + 2] < 120) n++; // the orange trace
      return n;
    });
    assert(lit > 1000, `the upload's waveform is drawn (${lit} orange pixels)`);
    const s1 = await demon(() => window.demon.slicesReceived);
    await page.setInputFiles('#upload', { name: 'junk.wav', mimeType: 'audio/wav', buffer: Buffer.from('this is not audio at all, just text pretending to be a wav file') });
    const err = await waitFor('the bad upload error', async () => {
      const t = await page.locator('#log li.error .msg').first().textContent();
      return t.includes('bad_upload') ? t : null;
    }, 10000);
    assert((await state()).source === 'tone.wav', 'the old source stays');
    await waitFor('slices after the bad upload', async () => (await demon(() => window.demon.slicesReceived)) >= s1 + 3, 20000);
    return `library → ${lib} (${measured}); upload → tone.wav ("${info}", ${lit} waveform pixels); junk.wav → "${err}"`;
  });

  await check('references: an uploaded WAV becomes the timbre reference, the microphone the structure one; a preset saves them, clear removes them', async () => {
    const source = (await state()).source;
    // A 2 s mono WAV of a chord.
    const wav = wav16(1, 2 * 48000, (i) => [220, 277.2, 329.6].reduce((a, f) => a + Math.sin((2 * Math.PI * f * i) / 48000), 0) * 0.12);
    await page.setInputFiles('#ref-timbre-upload', { name: 'voice.wav', mimeType: 'audio/wav', buffer: wav });
    await waitFor('the upload as the timbre reference', async () => (await state()).timbre_reference === 'voice.wav', 30000);
    await waitFor('the page naming it', async () => (await page.locator('#ref-timbre-name').textContent()).includes('voice.wav'), 10000);
    assert((await state()).source === source, `the source stays (${(await state()).source})`);
    // The microphone (Chromium's fake device): about 1.5 s recorded in the page, uploaded as a WAV.
    await page.click('#ref-structure-mic');
    await page.waitForTimeout(1500);
    await page.click('#ref-structure-mic');
    const mic = await waitFor('the microphone as the structure reference', async () => {
      const r = (await state()).structure_reference;
      return r && r.startsWith('microphone-') ? r : null;
    }, 30000);
    const micSeconds = await demon(() => window.demon.micSeconds);
    assert(micSeconds > 0.8 && micSeconds < 5, `the recording is about as long as the press (${micSeconds} s)`);
    const preset = (await api('/api/preset')).json;
    assert(JSON.stringify(preset.references) === JSON.stringify({ timbre: { kind: 'upload', name: 'voice.wav' }, structure: { kind: 'upload', name: mic } }), `the preset saves both (${JSON.stringify(preset.references)})`);
    await page.click('#ref-timbre-clear');
    await page.click('#ref-structure-clear');
    await waitFor('both cleared', async () => {
      const st = await state();
      return st.timbre_reference == null && st.structure_reference == null;
    }, 10000);
    const shown = await waitFor('the page showing the source again', async () => {
      const t = await page.locator('#ref-timbre-name').textContent();
      return t.includes("source's own") ? t : null;
    }, 10000);
    return `timbre ← voice.wav, structure ← ${mic} (${micSeconds.toFixed(2)} s of microphone), preset references saved, cleared ("${shown}")`;
  });

  await check('the DCW wavelet menu sets the wavelet, and the state says so', async () => {
    await page.selectOption('#dcw-wavelet', 'db4');
    await waitFor('db4 in the state', async () => (await state()).dcw_wavelet === 'db4', 10000);
    await page.selectOption('#dcw-wavelet', 'haar');
    await waitFor('haar again', async () => (await state()).dcw_wavelet === 'haar', 10000);
    return 'db4, then haar';
  });

  await check('MIDI learn: L arms the server and the browser; a CC then drives the knob', async () => {
    await page.click('.fader[data-knob="feedback"] button.learn');
    await waitFor('the server learn reply', async () => {
      const t = await page.locator('#log li .msg').allTextContents();
      return t.some((x) => x.includes('server MIDI learn armed for feedback'));
    }, 10000);
    await demon(() => window.demon.midiMessage([0xb3, 21, 10])); // channel 4, CC 21: learned
    const map = await demon(() => window.demon.midiMappings());
    assert(map['3/21'] === 'feedback', `mapping ch 4 CC 21 → feedback (${JSON.stringify(map)})`);
    const saved = await page.evaluate(() => localStorage.getItem('demon.midi.v1'));
    assert(saved && saved.includes('feedback'), 'saved in localStorage');
    await demon(() => window.demon.midiMessage([0xb3, 21, 127]));
    await waitFor('feedback = 1 from the CC', async () => (await state()).targets.feedback === 1, 10000);
    return `mapping ${JSON.stringify(map)} saved; CC 127 → feedback 1`;
  });

  await check('curve presets: sine on guidance, curve maths (min with a ramp), and a loop band for the picture', async () => {
    await page.click('#curve-tabs button[data-curve="guidance"]');
    await page.click('#curve-sine');
    const c = await waitFor('a sine guidance curve', async () => ((await state()).curves || {}).guidance, 10000);
    assert(c.type === 'sine' && c.cycles === 4 && c.min === 1 && c.max === 10, `sine spec (${JSON.stringify(c)})`);
    // Curve maths: with "min" chosen, a ramp combines with the sine instead of replacing it.
    await page.selectOption('#curve-op', 'min');
    await page.click('#curve-ramp-down');
    const m = await waitFor('min(sine, ramp) as the guidance curve', async () => {
      const x = ((await state()).curves || {}).guidance;
      return x && x.type === 'min' ? x : null;
    }, 10000);
    assert(m.a.type === 'sine' && m.b.type === 'ramp' && m.b.start === 10 && m.b.end === 1, `min of the sine and the ramp (${JSON.stringify(m)})`);
    await page.selectOption('#curve-op', 'set');
    const r = await api('/api/control', { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ type: 'set_loop_band', start_s: 6, end_s: 14 }) });
    assert(r.status === 200, 'band set over REST');
    await waitFor('the band shown', async () => (await page.locator('#band-info').textContent()).includes('6.00'), 10000);
    return `guidance ${JSON.stringify(c)}, then min with a ramp: ${JSON.stringify(m)}; band 6–14 s echoed into the page`;
  });

  const post = (message) => api('/api/control', { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(message) });

  await check('a focused dropdown does not swallow shortcuts: N on the solver menu makes a new seed', async () => {
    const seed0 = (await state()).targets.seed;
    const solver0 = await page.inputValue('#solver');
    await page.focus('#solver');
    await page.keyboard.press('n');
    const seed1 = await waitFor('a new seed', async () => {
      const s = (await state()).targets.seed;
      return s !== seed0 ? s : null;
    }, 10000);
    assert((await page.inputValue('#solver')) === solver0, 'the menu kept its choice (no type-ahead)');
    await page.locator('#solver').blur();
    return `seed ${seed0} → ${seed1}, solver still ${solver0}`;
  });

  await check('a typed value out of range shows the value applied, with a notice', async () => {
    const val = page.locator('.fader[data-knob="denoise"] .val');
    await val.fill('5');
    await val.press('Enter');
    await waitFor('denoise 1 in /api/state', async () => (await state()).targets.denoise === 1, 10000);
    const shown = await waitFor('the field showing 1', async () => {
      const v = await val.inputValue();
      return Number(v) === 1 ? v : null;
    }, 10000);
    const notices = await demon(() => window.demon.notices.slice());
    assert(notices.some((n) => n.includes('denoise: 5 is outside 0 … 1; set to 1')), `a notice (${JSON.stringify(notices)})`);
    return `typed 5, field shows ${shown}`;
  });

  await check('the negative prompt says it needs guidance above 1', async () => {
    assert((await post({ type: 'set_knob', name: 'guidance', value: 1 })).status === 200, 'guidance 1');
    await page.fill('#negative', 'distortion');
    await waitFor('the hint shown at guidance 1', () => page.isVisible('#negative-hint'), 10000);
    assert((await post({ type: 'set_knob', name: 'guidance', value: 3 })).status === 200, 'guidance 3');
    await waitFor('the hint hidden at guidance 3', async () => !(await page.isVisible('#negative-hint')), 10000);
    await page.fill('#negative', '');
    await page.locator('#negative').blur();
    return await page.locator('#negative').getAttribute('placeholder');
  });

  await check('the OSC rejected-message counter shows /api/health', async () => {
    const h = (await api('/api/health')).json;
    const shown = await waitFor('the counter', async () => {
      const t = (await page.textContent('#r-osc')).trim();
      return t !== '' ? t : null;
    }, 10000);
    assert(Number(shown) === h.osc_rejected_messages, `${shown} = ${h.osc_rejected_messages}`);
    return `osc rejected ${shown}`;
  });

  await check('loudness: the LUFS meter moves, and the matcher shows its gain toward target_lufs', async () => {
    const read = () => page.evaluate(() => ({ text: document.getElementById('r-lufs').textContent, bar: document.getElementById('r-lufs-bar').style.width, momentary: document.getElementById('r-lufs-box').dataset.momentary }));
    const seen = new Set();
    await waitFor('the momentary meter to move', async () => {
      const r = await read();
      if (r.momentary) seen.add(r.momentary);
      return seen.size >= 3 ? r : null;
    }, 20000);
    const before = await read();
    assert(/^-?\d/.test(before.text) && parseFloat(before.bar) > 0, `a short-term figure and a bar (${JSON.stringify(before)})`);
    const post = (message) => api('/api/control', { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(message) });
    const set = (name, value) => post({ type: 'set_knob', name, value });
    // With a source the matcher aims at the source's loudness; without one, at target_lufs.
    await post({ type: 'set_source', source: { kind: 'none' } });
    await waitFor('no source', async () => (await state()).source === null, 20000);
    await set('target_lufs', -40);
    await set('loudness_match', 1);
    const matched = await waitFor('the matcher\'s gain', async () => {
      const x = (await state()).loudness;
      const r = await read();
      return x.matching && x.gain_db < -1 && r.text.includes('dB') ? { x, r } : null;
    }, 20000);
    await set('loudness_match', 0);
    return `meter ${before.text} LUFS (bar ${before.bar}, ${seen.size} momentary values seen); matching toward ${matched.x.target_lufs}: gain ${matched.x.gain_db.toFixed(1)} dB, shown "${matched.r.text}"`;
  });

  await check('phone layout: every visible control is at least 40 px tall (buttons 40 px wide)', async () => {
    const phone = await context.newPage();
    try {
      await phone.setViewportSize({ width: 390, height: 844 });
      await phone.goto(pageBase + '/');
      await phone.waitForFunction(() => window.demon && window.demon.ready && document.querySelectorAll('.fader[data-knob]').length > 0, null, { timeout: 30000 });
      const small = await phone.evaluate(() =>
        [...document.querySelectorAll('button, select, input, textarea, label.file')]
          .filter((el) => el.offsetParent !== null && getComputedStyle(el).opacity !== '0')
          .map((el) => ({ el, r: el.getBoundingClientRect() }))
          .filter(({ el, r }) => r.height < 39.5 || (el.tagName === 'BUTTON' && r.width < 39.5))
          .map(({ el, r }) => `${el.tagName.toLowerCase()}#${el.id || el.name || el.className} ${r.width.toFixed(0)}×${r.height.toFixed(0)}`),
      );
      assert(small.length === 0, `controls under 40 px: ${small.join(', ')}`);
      const n = await phone.evaluate(() => document.querySelectorAll('button, select, input, textarea').length);
      return `${n} controls checked at 390×844`;
    } finally {
      await phone.close();
    }
  });

  // A WAV of `seconds` (48 kHz stereo 16-bit) of plucked notes.
  const plucks = (seconds) =>
    wav16(2, Math.round(seconds * 48000), (i) => {
      const t = (i % 6000) / 48000;
      return Math.sin(2 * Math.PI * 220 * t) * Math.exp(-t * 8) * 0.366;
    });

  await check('two pages open, a 6.4 s upload: both show 6.4 s and play the new buffer without resync', async () => {
    const other = await context.newPage();
    other.on('pageerror', (e) => pageErrors.push(`second page: ${e.message}`));
    await other.goto(pageBase + '/');
    await other.waitForFunction(() => window.demon && window.demon.ready && window.demon.slicesReceived >= 3, null, { timeout: 30000 });
    const pages = [page, other];
    const before = await Promise.all(pages.map((p) => p.evaluate(() => window.demon.framesApplied)));
    await page.setInputFiles('#upload', { name: 'short.wav', mimeType: 'audio/wav', buffer: plucks(6.4) });
    await waitFor('the 6.4 s upload as the source', async () => {
      const st = await state();
      return st.source === 'short.wav' && Math.abs(st.song_seconds - 6.4) < 1e-6;
    }, 30000);
    const seen = [];
    for (const [i, p] of pages.entries()) {
      const r = await waitFor(`page ${i + 1} following the new length`, async () => {
        const x = await p.evaluate(() => ({
          label: document.getElementById('loop-info').textContent,
          len: window.demon.lastFrame && window.demon.lastFrame.len,
          slices: window.demon.slicesReceived,
          frames: window.demon.framesApplied,
        }));
        return x.label.startsWith('6.40 s') && x.len === 6.4 * 48000 ? x : null;
      }, 20000);
      // The player goes on with the new loop: more slices, all inside it.
      await waitFor(`slices on page ${i + 1} after the change`, async () => (await p.evaluate(() => window.demon.slicesReceived)) >= r.slices + 3, 20000);
      const inside = await p.evaluate(() => window.demon.recentSlices.slice(-3).every(([s]) => s < 6.4 * 48000));
      assert(inside, `page ${i + 1}: slices start inside the 6.4 s loop`);
      seen.push(`page ${i + 1}: "${r.label}", worklet ${r.len} samples, ${r.frames - before[i]} frames since`);
    }
    await other.close();
    return seen.join('; ');
  });

  await check('real time: at depth 8 and 16 steps the load is shown (overload indicator when over), a 10 s recording lasts 10 s', async () => {
    for (const [name, value] of [['steps', 16], ['depth', 8]]) {
      const r = await api('/api/control', { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ type: 'set_knob', name, value }) });
      assert(r.status === 200, `${name} = ${value}: ${r.body}`);
    }
    const late0 = await demon(() => window.demon.lateSlices);
    const long0 = await demon(() => ({ ...window.demon.longTasks }));
    const oldHref = await page.locator('#download').getAttribute('href');
    let maxLoad = 0, overSeen = false, overloadSaid = false, capMin = null, samples = 0;
    // The load, the cap and the page's indicator, from the moment the depth went up (the policy
    // steps down within a few ticks of an overload, so sampling only later would miss it).
    const sample = async () => {
      const h = (await api('/api/health')).json.realtime;
      const ui = await page.evaluate(() => ({
        rt: window.demon.realtime,
        over: document.getElementById('r-load-box').classList.contains('over'),
        label: document.getElementById('r-load-label').textContent,
      }));
      assert(h && h.budget_ms === 40, `/api/health has the budget (${JSON.stringify(h)})`);
      if (ui.rt) {
        const lit = ui.rt.overloaded || ui.rt.depth_cap != null;
        const label = ui.rt.overloaded ? 'overload' : ui.rt.depth_cap != null ? 'capped' : 'load';
        assert(ui.over === lit && ui.label === label, `the indicator shows the page's latest stats (${JSON.stringify(ui)})`);
      }
      // The page's stats come a moment after /api/health's (the socket's stats, at most every
      // 250 ms), so either one saying over budget or capped is the session having been so.
      for (const rt of [h, ui.rt]) {
        if (!rt) continue;
        maxLoad = Math.max(maxLoad, rt.load);
        overloadSaid = overloadSaid || rt.overloaded;
        if (rt.depth_cap != null) capMin = capMin == null ? rt.depth_cap : Math.min(capMin, rt.depth_cap);
      }
      overSeen = overSeen || ui.over;
      samples++;
    };
    await sample();
    await page.click('#rec');
    await waitFor('recording', async () => page.locator('#rec.on').count(), 5000);
    const t0 = Date.now();
    while (Date.now() - t0 < 10000) {
      await sample();
      await new Promise((r) => setTimeout(r, 200));
    }
    await page.click('#rec');
    const wall = (Date.now() - t0) / 1000;
    const href = await waitFor('the download link', async () => {
      const a = page.locator('#download:not(.hidden)');
      const h = (await a.count()) ? await a.getAttribute('href') : null;
      return h && h !== oldHref ? h : null;
    }, 10000);
    const bytes = Buffer.from(await (await fetch(new URL(href, base))).arrayBuffer());
    let off = 12, seconds = null;
    while (off + 8 <= bytes.length) {
      const id = bytes.toString('ascii', off, off + 4), size = bytes.readUInt32LE(off + 4);
      if (id === 'data') {
        seconds = size / (bytes.readUInt16LE(22) * 2) / bytes.readUInt32LE(24);
        break;
      }
      off += 8 + size + (size & 1);
    }
    const late = (await demon(() => window.demon.lateSlices)) - late0;
    const st = await state();
    for (const [name, value] of [['steps', 8], ['depth', 4]]) {
      await api('/api/control', { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ type: 'set_knob', name, value }) });
    }
    say(`real time: max load ${maxLoad.toFixed(2)}, overload indicator ${overSeen ? 'shown' : 'not needed'}, lowest depth cap ${capMin ?? 'none'}, late slices ${late}, recording ${seconds && seconds.toFixed(3)} s over ${wall.toFixed(3)} s of wall clock (${samples} samples; state depth ${st.depth}, knob ${st.targets.depth})`);
    // Overloaded, the runner falls behind the clock until the degrade policy has lowered the
    // depth, then catches up by running ticks back to back: a recording spans what the session
    // played, which differs from the wall clock by the lag at its start and end (a few ticks on
    // a loaded 2-core machine). Before the policy, a 5.15 s recording came out 2.48 s long.
    assert(seconds != null && Math.abs(seconds - wall) <= 0.3, `the recording (${seconds} s) lasts what was played (${wall} s of wall clock, ± the runner's lag: 0.3 s)`);
    assert(!overSeen || overloadSaid || maxLoad > 1 || capMin != null, 'the indicator showed only over budget or with the depth capped');
    assert(capMin == null || overSeen, `the depth was capped at ${capMin} and the page showed it`);
    return `max load ${maxLoad.toFixed(2)}, indicator ${overSeen ? 'shown' : 'not needed'}, lowest cap ${capMin ?? 'none'}, late slices ${late}, recording ${seconds.toFixed(3)} s / wall ${wall.toFixed(3)} s`;
  });

  await check('with --token: the page opened as /?token=T works, requests without it get 401', async () => {
    const port2 = await freePort();
    const token = 'e2e-token-0123456789';
    const base2 = `http://127.0.0.1:${port2}`;
    let log2 = '';
    server2 = spawn(bin, ['serve', '--song-seconds', '4', '--port', String(port2), '--no-midi', '--no-osc', '--token', token, '--recordings-dir', path.join(tmp, 'rec2')], {
      stdio: ['ignore', 'pipe', 'pipe'],
      env: { ...process.env, XDG_CONFIG_HOME: path.join(tmp, 'config2') },
    });
    server2.stdout.on('data', (d) => (log2 += d));
    server2.stderr.on('data', (d) => (log2 += d));
    await waitFor('the second server', async () => {
      if (server2.exitCode !== null) throw new Error(`second server exited: ${log2}`);
      const r = await fetch(`${base2}/api/health?token=${token}`).catch(() => null);
      return r && r.status === 200;
    }, 90000, 250);
    for (const p of ['/', '/app.js', '/worklet.js', '/style.css', '/api/state']) {
      const r = await fetch(base2 + p);
      assert(r.status === 401, `${p} without the token: ${r.status}`);
    }
    const page2 = await context.newPage();
    page2.on('pageerror', (e) => pageErrors.push(`token page: ${e.message}`));
    await page2.goto(`${base2}/?token=${token}`);
    await page2.waitForFunction(() => window.demon && window.demon.ready, null, { timeout: 30000 });
    await page2.waitForFunction(() => window.demon.slicesReceived >= 3, null, { timeout: 30000 });
    const r = await page2.evaluate(() => ({
      styled: getComputedStyle(document.body).backgroundColor,
      slices: window.demon.slicesReceived,
      errors: window.demon.errors,
      library: document.querySelectorAll('#library option[value^="library:"]').length,
    }));
    assert(r.styled === 'rgb(12, 13, 16)', `the stylesheet loaded with the token (${r.styled})`);
    assert(r.errors.length === 0, `no errors (${r.errors})`);
    await page2.close();
    server2.kill('SIGTERM');
    return `401 without the token for /, assets and REST; with it: styled page, ${r.slices} slices, ${r.library} library songs`;
  });

  await check('no uncaught errors in the page', async () => {
    assert(pageErrors.length === 0, `page errors: ${pageErrors.join(' | ')}`);
    const errs = await demon(() => window.demon.errors);
    // The performer saw exactly the errors provoked above.
    assert(errs.length === 2 && errs[0].includes('no_such_knob') && errs[1].includes('bad_upload'), `errors shown: ${JSON.stringify(errs)}`);
    return `errors shown to the performer: ${errs.length} (the provoked ones)`;
  });

  const shot = path.join(HERE, 'screenshot.png');
  await page.evaluate(() => window.scrollTo(0, 0));
  await new Promise((r) => setTimeout(r, 400)); // let the canvases repaint
  await page.screenshot({ path: shot, fullPage: true });
  say(`screenshot: ${path.relative(ROOT, shot)}`);

  clearTimeout(watchdog);
  await cleanup();
  say(`all ${passed} checks passed`);
}

main().catch(async (e) => {
  console.log(`FAILED: ${e && e.message ? e.message : e}`);
  if (pageErrors.length) console.log(`--- page errors ---\n${pageErrors.join('\n')}`);
  if (page) {
    const msgs = await page.evaluate(() => [...document.querySelectorAll('#log li')].slice(0, 20).map((li) => li.textContent)).catch(() => []);
    if (msgs.length) console.log(`--- page messages (newest first) ---\n${msgs.join('\n')}`);
  }
  if (serverLog) console.log(`--- server output (last 3000 chars) ---\n${serverLog.slice(-3000)}`);
  await cleanup();
  process.exit(1);
});
