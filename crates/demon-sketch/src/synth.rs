//! The sketch decoder: a small synthesizer that renders the musical-parameter latent to 48 kHz
//! stereo.
//!
//! Voices: a detuned two-octave pad on the chord tones, a plucked bass, a lead, chord stabs, five
//! drum voices, a sidechain pump and a sparse-FIR ("velvet noise") reverb. Every output sample is
//! a pure function of the latent frames around it: oscillators read the *absolute* sample index
//! (the window's `first_frame` places it), envelopes are measured from onsets, releases and the
//! reverb have finite length. So the decoder has a real, finite receptive field, and a window
//! decoded with enough margin is bit-identical to the same samples of a full decode, which is
//! what the windowed decoder relies on.

use std::collections::HashMap;
use std::sync::OnceLock;

use demon_engine::rng::{NoiseStream, fill_normal, uniform};

use crate::layout::*;

const TABLE: usize = 2048;
const SR: f64 = SAMPLE_RATE as f64;
/// Lowest and highest MIDI notes with tables.
const MIDI_LO: usize = 24;
const MIDI_HI: usize = 96;

/// Pad release: how many frames a chord tone rings on after it stops.
pub const PAD_RELEASE_FRAMES: usize = 10;
const PAD_RELEASE_RATIO: f32 = 0.62;
/// Reverb tail length in samples.
const REVERB_LEN: usize = 24_000;
const REVERB_TAPS: usize = 420;
/// Onset amplitudes below this are not played (mixtures leave faint ghosts).
const ONSET_FLOOR: f32 = 0.06;

#[derive(Clone, Copy)]
enum Shape {
    Saw,
    Dark,
    Square,
    Sine,
    Keys,
}

struct Tables {
    /// `[shape][midi - MIDI_LO]` → TABLE + 1 samples (the extra one wraps).
    waves: Vec<Vec<Vec<f32>>>,
    kick: Vec<f32>,
    snare: Vec<f32>,
    hat: Vec<f32>,
    open_hat: Vec<f32>,
    clap: Vec<f32>,
    /// Velvet-noise taps per output channel: (delay, gain).
    reverb: [Vec<(usize, f32)>; 2],
    /// Note envelopes of the bass, lead and stab voices, and the pump's ducking curve.
    bass_env: Vec<f32>,
    lead_env: Vec<f32>,
    stab_env: Vec<f32>,
    pump_env: Vec<f32>,
}

fn midi_hz(m: f64) -> f64 {
    440.0 * libm::pow(2.0, (m - 69.0) / 12.0)
}

fn build_tables() -> Tables {
    // Exact sine lookups make every wavetable a sum of table reads: no platform math involved.
    let base: Vec<f64> = (0..TABLE)
        .map(|i| libm::sin(2.0 * std::f64::consts::PI * i as f64 / TABLE as f64))
        .collect();
    let wave = |shape: Shape, midi: usize| -> Vec<f32> {
        let f = midi_hz(midi as f64);
        let max_k = ((20_000.0 / f).floor() as usize).clamp(1, 64);
        let partial = |k: usize| -> f64 {
            let kf = k as f64;
            match shape {
                Shape::Saw => 1.0 / kf,
                Shape::Dark => {
                    if k > 8 {
                        0.0
                    } else {
                        1.0 / (kf * kf)
                    }
                }
                Shape::Square => {
                    if k % 2 == 1 {
                        1.0 / kf
                    } else {
                        0.0
                    }
                }
                Shape::Sine => {
                    if k == 1 {
                        1.0
                    } else {
                        0.0
                    }
                }
                Shape::Keys => match k {
                    1 => 1.0,
                    2 => 0.5,
                    3 => 0.25,
                    4 => 0.18,
                    6 => 0.08,
                    _ => 0.0,
                },
            }
        };
        let mut t = vec![0f64; TABLE];
        for k in 1..=max_k {
            let a = partial(k);
            if a == 0.0 {
                continue;
            }
            for (i, v) in t.iter_mut().enumerate() {
                *v += a * base[(k * i) % TABLE];
            }
        }
        let peak = t.iter().fold(0f64, |m, v| m.max(v.abs())).max(1e-9);
        let mut out: Vec<f32> = t.iter().map(|v| (v / peak) as f32).collect();
        out.push(out[0]);
        out
    };
    let shapes = [
        Shape::Saw,
        Shape::Dark,
        Shape::Square,
        Shape::Sine,
        Shape::Keys,
    ];
    let waves = shapes
        .iter()
        .map(|&s| (MIDI_LO..=MIDI_HI).map(|m| wave(s, m)).collect())
        .collect();

    let noise = |stream: u32, len: usize| -> Vec<f32> {
        let mut v = vec![0f32; len];
        fill_normal(0x5eed, NoiseStream::Custom(stream, 0), &mut v);
        v
    };
    // One-pole filters shape the noise once, at construction.
    let lowpass = |x: &[f32], a: f32| -> Vec<f32> {
        let mut s = 0f32;
        x.iter()
            .map(|v| {
                s += a * (v - s);
                s
            })
            .collect()
    };
    let highpass = |x: &[f32], a: f32| -> Vec<f32> {
        let lp = lowpass(x, a);
        x.iter().zip(&lp).map(|(v, l)| v - l).collect()
    };
    let env = |len: usize, attack_s: f64, decay_s: f64| -> Vec<f32> {
        (0..len)
            .map(|i| {
                let t = i as f64 / SR;
                let a = (t / attack_s).min(1.0);
                let fade = ((len - i) as f64 / (0.01 * SR)).min(1.0);
                (a * libm::exp(-t / decay_s) * fade) as f32
            })
            .collect()
    };

    let kick_len = (0.38 * SR) as usize;
    let kick_env = env(kick_len, 0.002, 0.16);
    let click = lowpass(&noise(1, kick_len), 0.5);
    let kick: Vec<f32> = (0..kick_len)
        .map(|i| {
            let t = i as f64 / SR;
            let (f0, f1, tp) = (170.0, 47.0, 0.028);
            let ph =
                2.0 * std::f64::consts::PI * (f1 * t + (f0 - f1) * tp * (1.0 - libm::exp(-t / tp)));
            let c = if t < 0.004 {
                click[i] as f64 * 0.5 * (1.0 - t / 0.004)
            } else {
                0.0
            };
            (libm::sin(ph) * kick_env[i] as f64 + c) as f32
        })
        .collect();

    let snare_len = (0.3 * SR) as usize;
    let snare_noise = highpass(&lowpass(&noise(2, snare_len), 0.45), 0.06);
    let tone_env = env(snare_len, 0.001, 0.045);
    let noise_env = env(snare_len, 0.001, 0.11);
    let snare: Vec<f32> = (0..snare_len)
        .map(|i| {
            let t = i as f64 / SR;
            let tone = 0.6 * libm::sin(2.0 * std::f64::consts::PI * 185.0 * t)
                + 0.4 * libm::sin(2.0 * std::f64::consts::PI * 330.0 * t);
            (tone * tone_env[i] as f64 * 0.7) as f32 + snare_noise[i] * noise_env[i] * 1.1
        })
        .collect();

    let hat_len = (0.12 * SR) as usize;
    let hat_noise = highpass(&noise(3, hat_len), 0.35);
    let hat_env = env(hat_len, 0.0005, 0.03);
    let hat: Vec<f32> = hat_noise
        .iter()
        .zip(&hat_env)
        .map(|(n, e)| n * e * 0.9)
        .collect();

    let oh_len = (0.45 * SR) as usize;
    let oh_noise = highpass(&noise(4, oh_len), 0.3);
    let oh_env = env(oh_len, 0.001, 0.2);
    let open_hat: Vec<f32> = oh_noise
        .iter()
        .zip(&oh_env)
        .map(|(n, e)| n * e * 0.6)
        .collect();

    let clap_len = (0.32 * SR) as usize;
    let clap_noise = highpass(&lowpass(&noise(5, clap_len), 0.35), 0.08);
    let clap: Vec<f32> = (0..clap_len)
        .map(|i| {
            let t = i as f64 / SR;
            let bursts = [0.0, 0.011, 0.022]
                .iter()
                .map(|b| {
                    if t >= *b {
                        libm::exp(-(t - b) / 0.008)
                    } else {
                        0.0
                    }
                })
                .sum::<f64>();
            let tail = libm::exp(-t / 0.13);
            let fade = ((clap_len - i) as f64 / (0.01 * SR)).min(1.0);
            (clap_noise[i] as f64 * (0.6 * bursts + 0.5 * tail) * fade * 1.2) as f32
        })
        .collect();

    // Velvet noise: one tap per segment at a random offset with a random sign, decaying.
    let reverb = [0u32, 1].map(|ch| {
        let seg = REVERB_LEN / REVERB_TAPS;
        let mut taps: Vec<(usize, f32)> = (0..REVERB_TAPS)
            .map(|k| {
                let off =
                    (uniform(99, NoiseStream::Custom(10, ch), k as u64) * seg as f64) as usize;
                let sign = if uniform(99, NoiseStream::Custom(11, ch), k as u64) < 0.5 {
                    -1.0
                } else {
                    1.0
                };
                let d = (k * seg + off).clamp(240, REVERB_LEN - 1);
                let g = sign * libm::exp(-4.5 * d as f64 / REVERB_LEN as f64);
                (d, g as f32)
            })
            .collect();
        let norm = (taps.iter().map(|(_, g)| (*g as f64).powi(2)).sum::<f64>()).sqrt() as f32;
        for t in &mut taps {
            t.1 *= 0.9 / norm;
        }
        taps
    });

    let note = |attack: f32, decay: f32, sustain: f32, release: f32, seconds: f64| -> Vec<f32> {
        let len = (seconds * SR) as usize;
        (0..len)
            .map(|tau| note_env(tau, attack, decay, sustain, release, len))
            .collect()
    };
    let pump_len = (0.3 * SR) as usize;
    let pump_env = (0..pump_len)
        .map(|tau| {
            (-(tau as f32) / (0.09 * SR as f32)).exp() * ((pump_len - tau) as f32 / 480.0).min(1.0)
        })
        .collect();
    Tables {
        waves,
        kick,
        snare,
        hat,
        open_hat,
        clap,
        reverb,
        bass_env: note(0.004, 0.12, 0.55, 0.45, 0.55),
        lead_env: note(0.008, 0.2, 0.7, 0.6, 0.5),
        stab_env: note(0.002, 0.09, 0.0, 0.25, 0.3),
        pump_env,
    }
}

fn tables() -> &'static Tables {
    static T: OnceLock<Tables> = OnceLock::new();
    T.get_or_init(build_tables)
}

/// Cheap access to the frames of a `[N][CHANNELS]` latent.
struct Frames<'a> {
    v: &'a [f32],
    n: usize,
}

impl Frames<'_> {
    #[inline]
    fn at(&self, f: usize, ch: usize) -> f32 {
        self.v[f * CHANNELS + ch]
    }
    /// The value at frame `f + 1`, held at the last frame.
    #[inline]
    fn next(&self, f: usize, ch: usize) -> f32 {
        self.at((f + 1).min(self.n - 1), ch)
    }
}

/// An onset found in the latent, in samples from the window start.
#[derive(Clone, Copy)]
struct Event {
    at: usize,
    amp: f32,
    frame: usize,
}

fn events(fr: &Frames, voice: OnsetVoice) -> Vec<Event> {
    (0..fr.n)
        .filter_map(|f| {
            let amp = unit(fr.at(f, voice.onset));
            if amp < ONSET_FLOOR {
                return None;
            }
            let offset = ((unit(fr.at(f, voice.phase)) * HOP as f32) as usize).min(HOP - 1);
            Some(Event {
                at: f * HOP + offset,
                amp: amp * amp.sqrt(),
                frame: f,
            })
        })
        .collect()
}

/// One frame (`HOP` samples) of a wavetable oscillator whose phase comes from the absolute
/// sample index: what a voice reads before its amplitude ramp.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
struct OscFrame {
    shape: u8,
    midi_bits: u64,
    detune_bits: u64,
    /// Absolute index of the frame's first sample.
    abs0: i64,
}

impl OscFrame {
    fn new(shape: Shape, midi: f64, detune: f64, abs0: i64) -> Self {
        Self {
            shape: shape as u8,
            midi_bits: midi.to_bits(),
            detune_bits: detune.to_bits(),
            abs0,
        }
    }

    /// The table-interpolated samples of the frame.
    fn fill(&self, out: &mut [f32]) {
        let (midi, detune) = (
            f64::from_bits(self.midi_bits),
            f64::from_bits(self.detune_bits),
        );
        let m = (midi.round() as usize).clamp(MIDI_LO, MIDI_HI);
        let t = &tables().waves[self.shape as usize][m - MIDI_LO];
        let inc = midi_hz(midi) * detune / SR;
        // The frame's start phase comes from the absolute sample index (f64), so it never
        // depends on where a decode window began; within the frame an f32 accumulator is exact
        // enough.
        let mut ph = ((self.abs0 as f64 * inc).rem_euclid(1.0) * TABLE as f64) as f32;
        let inc = (inc * TABLE as f64) as f32;
        for o in out.iter_mut() {
            let j = (ph as usize).min(TABLE - 1);
            let fr = ph - j as f32;
            *o = t[j] + (t[j + 1] - t[j]) * fr;
            ph += inc;
            if ph >= TABLE as f32 {
                ph -= TABLE as f32;
            }
        }
    }
}

/// Oscillator frames kept from one decode to the next. A live session decodes a short window
/// every tick, and the window moves by about a frame: nearly every oscillator frame it needs
/// was read by the decode before (the frames depend on pitch and absolute position only, not
/// on the latent), so reading them again is a copy instead of a table walk. Frames the last
/// decode did not use are dropped, so the cache holds one window's worth.
#[derive(Default)]
pub struct OscCache {
    frames: HashMap<OscFrame, (u64, Box<[f32]>)>,
    pass: u64,
}

impl OscCache {
    /// Windows up to this many frames use the cache (a full-song decode would fill it with
    /// frames no later window reads).
    pub const MAX_WINDOW_FRAMES: usize = 96;

    /// How many oscillator frames it holds.
    pub fn len(&self) -> usize {
        self.frames.len()
    }

    pub fn is_empty(&self) -> bool {
        self.frames.is_empty()
    }
}

/// Where a render reads its oscillator frames: the cache, or a scratch buffer filled afresh.
struct Oscillators<'c> {
    cache: Option<&'c mut OscCache>,
    scratch: [Vec<f32>; 2],
}

impl<'c> Oscillators<'c> {
    fn new(mut cache: Option<&'c mut OscCache>) -> Self {
        if let Some(c) = cache.as_deref_mut() {
            c.pass += 1;
        }
        Self {
            cache,
            scratch: [vec![0f32; HOP], vec![0f32; HOP]],
        }
    }

    fn ensure(cache: &mut OscCache, key: OscFrame) {
        let pass = cache.pass;
        cache
            .frames
            .entry(key)
            .and_modify(|e| e.0 = pass)
            .or_insert_with(|| {
                let mut v = vec![0f32; HOP].into_boxed_slice();
                key.fill(&mut v);
                (pass, v)
            });
    }

    /// Add `amp(i)·osc` over the `HOP` samples of `out`, `amp` ramping linearly over `a`; with
    /// `mix`, also a second waveform at the same pitch and phase with its own ramp.
    fn add(
        &mut self,
        out: &mut [f32],
        key: OscFrame,
        a: (f32, f32),
        mix: Option<(Shape, (f32, f32))>,
    ) {
        let key_b = mix.map(|(shape, _)| OscFrame {
            shape: shape as u8,
            ..key
        });
        let (ra, rb): (&[f32], Option<&[f32]>) = match self.cache.as_deref_mut() {
            Some(cache) => {
                Self::ensure(cache, key);
                if let Some(k) = key_b {
                    Self::ensure(cache, k);
                }
                (&cache.frames[&key].1, key_b.map(|k| &*cache.frames[&k].1))
            }
            None => {
                let [sa, sb] = &mut self.scratch;
                key.fill(sa);
                if let Some(k) = key_b {
                    k.fill(sb);
                }
                (&sa[..], key_b.map(|_| &sb[..]))
            }
        };
        let n = out.len() as f32;
        let da = (a.1 - a.0) / n;
        match rb.zip(mix) {
            Some((rb, (_, b))) => {
                let db = (b.1 - b.0) / n;
                for (i, o) in out.iter_mut().enumerate() {
                    let v = ra[i] * (a.0 + da * i as f32) + rb[i] * (b.0 + db * i as f32);
                    *o += v;
                }
            }
            None => {
                for (i, o) in out.iter_mut().enumerate() {
                    *o += ra[i] * (a.0 + da * i as f32);
                }
            }
        }
    }

    /// Drop the frames this render did not read.
    fn finish(self) {
        if let Some(cache) = self.cache {
            let pass = cache.pass;
            cache.frames.retain(|_, e| e.0 == pass);
        }
    }
}

/// Envelope of an onset-triggered voice at `tau` samples after the onset.
#[inline]
fn note_env(tau: usize, attack: f32, decay: f32, sustain: f32, release: f32, len: usize) -> f32 {
    let t = tau as f32 / SR as f32;
    let a = (t / attack).min(1.0);
    let d = sustain + (1.0 - sustain) * (-t / decay).exp();
    let r = (-t / release).exp();
    let fade = ((len - tau) as f32 / 480.0).min(1.0);
    a * d * r * fade
}

/// Per-sample envelope of an onset voice: the loudest of the notes still ringing.
fn onset_envelope(evs: &[Event], samples: usize, shape: &[f32]) -> Vec<f32> {
    let mut env = vec![0f32; samples];
    for e in evs {
        let n = shape.len().min(samples.saturating_sub(e.at));
        for (s, v) in env[e.at..e.at + n].iter_mut().zip(&shape[..n]) {
            let v = e.amp * v;
            if v > *s {
                *s = v;
            }
        }
    }
    env
}

/// Frames before a kept region whose audio-rate signals a kept sample can reach: the reverb's
/// tail, and two frames more for the send's one-pole low-pass, started at rest there, to reach
/// the same state as a decode that started earlier (it forgets at 0.65 per sample, so 3840
/// samples leave nothing of the difference).
const SEND_REACH_FRAMES: usize = REVERB_LEN.div_ceil(HOP) + 2;

/// Render `n` frames of latent (`[n][CHANNELS]`) whose first frame has absolute index
/// `first_frame`. Returns left and right channels, `n · HOP` samples each.
pub fn render(latent: &[f32], first_frame: i64) -> [Vec<f32>; 2] {
    render_kept(latent, first_frame, 0..latent.len() / CHANNELS, None)
}

/// The samples of frames `kept` (within the `n` frames of `latent`) of what [`render`] gives
/// for the whole latent: `kept.len() · HOP` per channel, bit-identical to those samples of
/// the full render when `kept` starts at 0 or at least [`SEND_REACH_FRAMES`] in. A windowed
/// decode keeps a few frames out of a window of context; the voices, the mix and the reverb
/// are computed only where a kept sample can hear them, not over the whole context (the
/// context's onsets and envelopes still are, from the latent, which is cheap).
///
/// `cache` keeps oscillator frames for the next call (windows up to
/// [`OscCache::MAX_WINDOW_FRAMES`] use it); the samples are the same with or without it.
#[allow(clippy::needless_range_loop)] // parallel arrays indexed together
pub fn render_kept(
    latent: &[f32],
    first_frame: i64,
    kept: std::ops::Range<usize>,
    cache: Option<&mut OscCache>,
) -> [Vec<f32>; 2] {
    let n = latent.len() / CHANNELS;
    let start = kept.start.min(n);
    let kept = start..kept.end.clamp(start, n);
    if n == 0 || kept.is_empty() {
        return [Vec::new(), Vec::new()];
    }
    let samples = n * HOP;
    // Audio-rate work starts at frame `from`; nothing after the kept frames is needed either.
    let from = kept.start.saturating_sub(SEND_REACH_FRAMES);
    let (from_s, kept_s) = (from * HOP, kept.start * HOP..kept.end * HOP);
    let upto = kept.end;
    let t = tables();
    let fr = Frames { v: latent, n };
    let abs = |f: usize| (first_frame + f as i64) * HOP as i64;
    let mut tonal = [vec![0f32; samples], vec![0f32; samples]];
    let mut lead_bus = vec![0f32; samples];
    let mut send = vec![0f32; samples];
    let mut scratch = vec![0f32; HOP];
    let mut oscs = Oscillators::new(cache.filter(|_| n <= OscCache::MAX_WINDOW_FRAMES));

    // Pad: chord tones with a release that rings over the following frames.
    let mut pad_env = vec![[0f32; 12]; n];
    for f in 0..n {
        let level = unit(fr.at(f, PAD_LEVEL));
        for pc in 0..12 {
            let mut e = 0f32;
            let mut r = 1f32;
            for k in 0..=PAD_RELEASE_FRAMES.min(f) {
                let a = unit(fr.at(f - k, CHORD + pc));
                e = e.max(a * a * r);
                r *= PAD_RELEASE_RATIO;
            }
            pad_env[f][pc] = e * level;
        }
    }
    for f in from..upto {
        let (b0, b1) = (unit(fr.at(f, PAD_BRIGHT)), unit(fr.next(f, PAD_BRIGHT)));
        let (w0, w1) = (unit(fr.at(f, WIDTH)), unit(fr.next(f, WIDTH)));
        let span = f * HOP..(f + 1) * HOP;
        for pc in 0..12 {
            let (e0, e1) = (pad_env[f][pc], pad_env[(f + 1).min(n - 1)][pc]);
            if e0 <= 1e-5 && e1 <= 1e-5 {
                continue;
            }
            for (octave, weight) in [(48.0, 0.55f32), (60.0, 0.45)] {
                let midi = octave + pc as f64;
                for (ch, det) in [(0usize, 0.9983f64), (1, 1.0017)] {
                    scratch.fill(0.0);
                    oscs.add(
                        &mut scratch,
                        OscFrame::new(Shape::Dark, midi, det, abs(f)),
                        (e0 * weight * (1.0 - b0), e1 * weight * (1.0 - b1)),
                        Some((Shape::Saw, (e0 * weight * b0, e1 * weight * b1))),
                    );
                    // Mid/side width: the detuned pair spreads as WIDTH grows.
                    let other = 1 - ch;
                    let dw = (w1 - w0) / HOP as f32;
                    let (head, tail) = tonal.split_at_mut(1);
                    let (this, that) = if ch == 0 {
                        (&mut head[0], &mut tail[0])
                    } else {
                        (&mut tail[0], &mut head[0])
                    };
                    let _ = other;
                    for (i, s) in scratch.iter().enumerate() {
                        let w = w0 + dw * i as f32;
                        let j = span.start + i;
                        this[j] += s * (0.5 + 0.5 * w) * 0.16;
                        that[j] += s * (0.5 - 0.5 * w) * 0.16;
                    }
                }
            }
        }
    }
    let pad_mono: Vec<f32> = tonal[0]
        .iter()
        .zip(&tonal[1])
        .map(|(l, r)| 0.5 * (l + r))
        .collect();

    // Bass: pitch classes held in the latent, articulated by the bass onsets.
    let bass_env = onset_envelope(&events(&fr, BASS_ON), samples, &t.bass_env);
    let mut bass = vec![0f32; samples];
    for f in from..upto {
        let (l0, l1) = (unit(fr.at(f, BASS_LEVEL)), unit(fr.next(f, BASS_LEVEL)));
        let (br0, br1) = (unit(fr.at(f, BASS_BRIGHT)), unit(fr.next(f, BASS_BRIGHT)));
        for pc in 0..12 {
            let (a0, a1) = (unit(fr.at(f, BASS_PC + pc)), unit(fr.next(f, BASS_PC + pc)));
            if a0 <= 1e-4 && a1 <= 1e-4 {
                continue;
            }
            let midi = 36.0 + pc as f64;
            let out_span = &mut bass[f * HOP..(f + 1) * HOP];
            oscs.add(
                out_span,
                OscFrame::new(Shape::Sine, midi, 1.0, abs(f)),
                (a0 * l0 * 0.7, a1 * l1 * 0.7),
                None,
            );
            oscs.add(
                out_span,
                OscFrame::new(Shape::Dark, midi, 1.0, abs(f)),
                (a0 * l0 * 0.5 * (1.0 - br0), a1 * l1 * 0.5 * (1.0 - br1)),
                None,
            );
            oscs.add(
                out_span,
                OscFrame::new(Shape::Saw, midi, 1.0, abs(f)),
                (a0 * l0 * 0.35 * br0, a1 * l1 * 0.35 * br1),
                None,
            );
        }
    }
    for (b, e) in bass.iter_mut().zip(&bass_env) {
        *b *= e;
    }

    // Lead: two registers crossfaded by the octave channel, three waveforms by the shape channel.
    let lead_env = onset_envelope(&events(&fr, LEAD_ON), samples, &t.lead_env);
    for f in from..upto {
        let (l0, l1) = (unit(fr.at(f, LEAD_LEVEL)), unit(fr.next(f, LEAD_LEVEL)));
        if l0 <= 1e-4 && l1 <= 1e-4 {
            continue;
        }
        let (o0, o1) = (unit(fr.at(f, LEAD_OCTAVE)), unit(fr.next(f, LEAD_OCTAVE)));
        let (s0, s1) = (
            fr.at(f, LEAD_SHAPE).clamp(-1.0, 1.0),
            fr.next(f, LEAD_SHAPE).clamp(-1.0, 1.0),
        );
        let mixes = |s: f32| [(-s).max(0.0), 1.0 - s.abs(), s.max(0.0)];
        let (m0, m1) = (mixes(s0), mixes(s1));
        for pc in 0..12 {
            let (a0, a1) = (unit(fr.at(f, LEAD_PC + pc)), unit(fr.next(f, LEAD_PC + pc)));
            if a0 <= 1e-4 && a1 <= 1e-4 {
                continue;
            }
            for (reg, r0, r1) in [(72.0, 1.0 - o0, 1.0 - o1), (84.0, o0, o1)] {
                for (k, shape) in [Shape::Sine, Shape::Square, Shape::Saw]
                    .into_iter()
                    .enumerate()
                {
                    let (g0, g1) = (a0 * l0 * r0 * m0[k] * 0.22, a1 * l1 * r1 * m1[k] * 0.22);
                    if g0 <= 1e-6 && g1 <= 1e-6 {
                        continue;
                    }
                    oscs.add(
                        &mut lead_bus[f * HOP..(f + 1) * HOP],
                        OscFrame::new(shape, reg + pc as f64, 1.0, abs(f)),
                        (g0, g1),
                        None,
                    );
                }
            }
        }
    }
    for (b, e) in lead_bus.iter_mut().zip(&lead_env) {
        *b *= e;
    }

    // Stabs: the chord tones, plucked.
    let stab_env = onset_envelope(&events(&fr, STAB), samples, &t.stab_env);
    let mut stab = vec![0f32; samples];
    for f in from..upto {
        let (l0, l1) = (unit(fr.at(f, STAB_LEVEL)), unit(fr.next(f, STAB_LEVEL)));
        if l0 <= 1e-4 && l1 <= 1e-4 {
            continue;
        }
        for pc in 0..12 {
            let (a0, a1) = (unit(fr.at(f, CHORD + pc)), unit(fr.next(f, CHORD + pc)));
            if a0 <= 1e-4 && a1 <= 1e-4 {
                continue;
            }
            oscs.add(
                &mut stab[f * HOP..(f + 1) * HOP],
                OscFrame::new(Shape::Keys, 60.0 + pc as f64, 1.0, abs(f)),
                (a0 * a0 * l0 * 0.2, a1 * a1 * l1 * 0.2),
                None,
            );
        }
    }
    for (b, e) in stab.iter_mut().zip(&stab_env) {
        *b *= e;
    }

    oscs.finish();

    // Drums: fixed waveforms placed at their onsets.
    let mut drums = [vec![0f32; samples], vec![0f32; samples]];
    let mut pump = vec![0f32; samples];
    let drum_level: Vec<f32> = (0..n).map(|f| unit(fr.at(f, DRUM_LEVEL))).collect();
    let voices: [(OnsetVoice, &Vec<f32>, f32, f32); 5] = [
        (KICK, &t.kick, 0.5, 1.0),
        (SNARE, &t.snare, 0.5, 0.55),
        (HAT, &t.hat, 0.62, 0.35),
        (OPEN_HAT, &t.open_hat, 0.4, 0.3),
        (CLAP, &t.clap, 0.5, 0.5),
    ];
    let mut drum_send = vec![0f32; samples];
    for (voice, wave, pan, gain) in voices {
        for e in events(&fr, voice) {
            let g = e.amp * gain * drum_level[e.frame];
            let end = (e.at + wave.len()).min(kept_s.end);
            for j in e.at.max(from_s)..end {
                let s = wave[j - e.at] * g;
                drums[0][j] += s * (1.0 - pan) * 2.0 * 0.5;
                drums[1][j] += s * pan * 2.0 * 0.5;
                if voice == SNARE || voice == CLAP {
                    drum_send[j] += s * 0.35;
                }
            }
            if voice == KICK {
                let n = t.pump_env.len().min(samples - e.at);
                for (s, v) in pump[e.at..e.at + n].iter_mut().zip(&t.pump_env[..n]) {
                    *s = s.max(e.amp * v);
                }
            }
        }
    }

    // Sidechain pump on the tonal bus, then the reverb send.
    for f in from..upto {
        let (p0, p1) = (unit(fr.at(f, PUMP)), unit(fr.next(f, PUMP)));
        let (r0, r1) = (unit(fr.at(f, REVERB)), unit(fr.next(f, REVERB)));
        for i in 0..HOP {
            let j = f * HOP + i;
            let a = i as f32 / HOP as f32;
            let depth = p0 + (p1 - p0) * a;
            let duck = 1.0 - 0.75 * depth * pump[j];
            let b = bass[j] * duck;
            let st = stab[j] * duck;
            let pad_l = tonal[0][j] * duck;
            let pad_r = tonal[1][j] * duck;
            let ld = lead_bus[j];
            tonal[0][j] = pad_l + b + st * 0.9 + ld * 0.8;
            tonal[1][j] = pad_r + b + st * 1.1 + ld * 1.2 * 0.85;
            let rev = r0 + (r1 - r0) * a;
            send[j] = rev * (pad_mono[j] * duck * 1.2 + st * 0.8 + ld * 0.9 + drum_send[j]);
        }
    }
    // Darken the send a little: a one-pole low-pass forgets its past to the last bit within a
    // few thousand samples, well inside the reverb's own reach.
    let mut s = 0f32;
    for v in send[from_s..kept_s.end].iter_mut() {
        s += 0.35 * (*v - s);
        *v = s;
    }
    // The reverb at the kept samples only: wet[j] = Σ g · send[j − d] (taps whose source lies
    // before `from_s` read the zeros there, which a full render's reverb does not reach either).
    let kept_n = kept_s.len();
    let mut wet = [vec![0f32; kept_n], vec![0f32; kept_n]];
    for ch in 0..2 {
        for &(d, g) in &t.reverb[ch] {
            // Output j = kept_s.start + i reads send[j − d], which exists for j ≥ d.
            if d >= kept_s.end {
                continue;
            }
            let first = d.saturating_sub(kept_s.start);
            let src0 = kept_s.start + first - d;
            let (dst, src) = (&mut wet[ch][first..], &send[src0..src0 + kept_n - first]);
            for (o, x) in dst.iter_mut().zip(src) {
                *o += g * x;
            }
        }
    }

    let mut out = [vec![0f32; kept_n], vec![0f32; kept_n]];
    for ch in 0..2 {
        for (i, j) in kept_s.clone().enumerate() {
            let x = (tonal[ch][j] + drums[ch][j] + wet[ch][i] * 0.55) * 0.85;
            out[ch][i] = soft_clip(x);
        }
    }
    out
}

/// A gentle saturator: linear below ±0.5, approaching ±0.98.
#[inline]
fn soft_clip(x: f32) -> f32 {
    let a = x.abs();
    if a <= 0.5 {
        x
    } else {
        let y = 0.5 + 0.48 * libm::tanhf((a - 0.5) / 0.48);
        y.copysign(x)
    }
}

/// Frames of context the decoder needs before and after a kept region for exact output: the
/// longest ring (pad release, note and drum tails) plus the reverb, and one frame of
/// interpolation after. The codec measures the real figure by perturbation; this bound is what
/// the design promises and is checked in tests.
pub const DESIGN_MARGIN_BEFORE: usize = 29;
pub const DESIGN_MARGIN_AFTER: usize = 1;
