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

  const bin = findBinary();
  const port = await freePort();
  const base = `http://127.0.0.1:${port}`;
  let pageBase = base;
  if (process.env.E2E_DEV_ASSETS) {
    pageBase = `http://127.0.0.1:${await devProxy(port)}`;
    say(`E2E_DEV_ASSETS: the page comes from ${pageBase}, which serves crates/demon-server/web from disk and forwards the rest`);
  }
  say(`binary ${path.relative(ROOT, bin) || bin}; serving on ${base}`);
  server = spawn(bin, ['serve', '--song-seconds', String(SONG_SECONDS), '--port', String(port), '--no-midi', '--no-osc', '--recordings-dir', path.join(tmp, 'rec')], {
    stdio: ['ignore', 'pipe', 'pipe'],
    env: { ...process.env, XDG_CONFIG_HOME: path.join(tmp, 'config') },
  });
  server.stdout.on('data', (d) => (serverLog += d));
  server.stderr.on('data', (d) => (serverLog += d));
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
    ],
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
  await check('the worklet receives and applies slices', async () => {
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
    return `${a.s} → ${b.s} slices (last at tick ${b.tick}), buffer ${c.len} samples, hash ${c.hash}`;
  });

  // A knob moved with the mouse on its fader: the server's state follows, then the sound. The
  // worklet measures how far the slices move its buffer (RMS against a remembered copy): while
  // nothing changes, re-patches only add f16 rounding noise; after the change they carry new audio.
  const settle = async (what) => {
    // Wait (up to 40 s) for a window of 15 slices that leaves the buffer as it was.
    let last;
    await waitFor(what, async () => {
      await demon(() => window.demon.mark());
      const s = await demon(() => window.demon.slicesReceived);
      await page.waitForFunction((s) => window.demon.slicesReceived >= s + 15, s, { timeout: 20000 });
      last = await demon(() => window.demon.diffSinceMark());
      return last.rms < 1e-3;
    }, 40000, 0);
    return last;
  };
  let knobValue;
  let before;
  let quiet;
  await check('moving the velocity_scale fader with the mouse changes /api/state', async () => {
    quiet = await settle('a quiet loop (slices that only re-patch the same audio)');
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
    return `fader ${old} → ${knobValue}; /api/state targets.velocity_scale = ${got.targets.velocity_scale} (effective ${got.knobs.velocity_scale.toFixed(3)}); readout "${shown}"; latency readout ${await page.locator('#r-latency').textContent()} ms`;
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
    return `band [${band[0].toFixed(2)}, ${band[1].toFixed(2)}] s, worklet at ${p.toFixed(2)} s, then cleared`;
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

  await check('no uncaught errors in the page', async () => {
    assert(pageErrors.length === 0, `page errors: ${pageErrors.join(' | ')}`);
    const errs = await demon(() => window.demon.errors);
    // The only error the performer saw is the one provoked above.
    assert(errs.length === 1 && errs[0].includes('no_such_knob'), `errors shown: ${JSON.stringify(errs)}`);
    return `errors shown to the performer: ${errs.length} (the provoked one)`;
  });

  const shot = path.join(HERE, 'screenshot.png');
  await page.evaluate(() => window.scrollTo(0, 0));
  await page.screenshot({ path: shot });
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
