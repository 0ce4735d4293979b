//! The procedural composer: deterministic songs in six styles, written straight into the sketch
//! latent (see [`crate::layout`]). Tempo and key come from the prompt's metadata (or the style's
//! defaults); everything else (progression, bass line, drums, melody, arrangement, timbre
//! automation) is drawn from the seed.
//!
//! All songs of one tempo share the same 16th-note grid from frame 0, so bars of different songs
//! line up and the denoiser can take different bars from different songs.

use demon_engine::rng::{NoiseStream, uniform};

use crate::layout::*;
use crate::style::Style;

/// What to compose.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SongSpec {
    pub style: Style,
    pub bpm: f32,
    /// Tonic pitch class (0 = C).
    pub tonic: u8,
    pub minor: bool,
    pub seed: u64,
    /// Latent frames.
    pub frames: usize,
}

/// A composed song: `[frames][CHANNELS]` row-major, plus descriptors the denoiser's prior uses.
#[derive(Clone, Debug)]
pub struct Song {
    pub spec: SongSpec,
    pub latent: Vec<f32>,
    /// Mean pad/bass brightness in [0, 1].
    pub brightness: f32,
    /// Drum onsets per second / 10, capped at 1.
    pub energy: f32,
}

/// Deterministic dice for one song.
struct Dice {
    seed: u64,
    n: u64,
}

impl Dice {
    fn next(&mut self) -> f64 {
        self.n += 1;
        uniform(self.seed, NoiseStream::Custom(77, 0), self.n)
    }
    fn chance(&mut self, p: f64) -> bool {
        self.next() < p
    }
    fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        let i = ((self.next() * items.len() as f64) as usize).min(items.len() - 1);
        items[i]
    }
    fn range(&mut self, lo: f64, hi: f64) -> f64 {
        lo + (hi - lo) * self.next()
    }
}

const MINOR: [u8; 7] = [0, 2, 3, 5, 7, 8, 10];
const MAJOR: [u8; 7] = [0, 2, 4, 5, 7, 9, 11];

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Section {
    Intro,
    Groove,
    Break,
    Drop,
}

/// Per-style musical vocabulary. Patterns are 16 steps of one 4/4 bar; values are velocities.
struct Vocabulary {
    kick: [f32; 16],
    snare: [f32; 16],
    clap: [f32; 16],
    hat: [f32; 16],
    open_hat: [f32; 16],
    bass: [f32; 16],
    stab: [f32; 16],
    /// Probability a 16th step carries a lead note.
    lead_density: f64,
    sevenths: bool,
    bars_per_chord: usize,
    swing: f64,
    pad_level: f32,
    bass_level: f32,
    lead_level: f32,
    stab_level: f32,
    drum_level: f32,
    reverb: f32,
    width: f32,
    pump: f32,
    brightness: (f64, f64),
    arrangement: &'static [Section],
}

fn pat(steps: &[(usize, f32)]) -> [f32; 16] {
    let mut p = [0.0; 16];
    for &(s, v) in steps {
        p[s] = v;
    }
    p
}

fn vocabulary(style: Style, d: &mut Dice) -> Vocabulary {
    use Section::*;
    let all16 = |v: f32, accent: f32| {
        let mut p = [v; 16];
        for s in (0..16).step_by(4) {
            p[s] = accent;
        }
        p
    };
    match style {
        Style::House => Vocabulary {
            kick: pat(&[(0, 1.0), (4, 1.0), (8, 1.0), (12, 1.0)]),
            snare: [0.0; 16],
            clap: pat(&[(4, 0.9), (12, 0.9)]),
            hat: pat(&[
                (1, 0.3),
                (3, 0.35),
                (5, 0.3),
                (7, 0.35),
                (9, 0.3),
                (11, 0.35),
                (13, 0.3),
                (15, 0.4),
            ]),
            open_hat: pat(&[(2, 0.8), (6, 0.8), (10, 0.8), (14, 0.8)]),
            bass: pat(&[(2, 1.0), (6, 0.9), (10, 1.0), (14, 0.9)]),
            stab: if d.chance(0.5) {
                pat(&[(3, 0.9), (6, 0.7), (11, 0.9)])
            } else {
                pat(&[(2, 0.8), (10, 0.8)])
            },
            lead_density: 0.22,
            sevenths: true,
            bars_per_chord: 1,
            swing: 0.0,
            pad_level: 0.45,
            bass_level: 0.8,
            lead_level: 0.45,
            stab_level: 0.7,
            drum_level: 0.85,
            reverb: 0.35,
            width: 0.6,
            pump: 0.7,
            brightness: (0.35, 0.8),
            arrangement: &[Intro, Groove, Groove, Break, Drop, Drop, Groove, Break],
        },
        Style::Techno => Vocabulary {
            kick: pat(&[(0, 1.0), (4, 1.0), (8, 1.0), (12, 1.0)]),
            snare: [0.0; 16],
            clap: if d.chance(0.6) {
                pat(&[(4, 0.7), (12, 0.7)])
            } else {
                pat(&[(12, 0.6)])
            },
            hat: all16(0.35, 0.2),
            open_hat: pat(&[(2, 0.75), (6, 0.75), (10, 0.75), (14, 0.75)]),
            bass: pat(&[
                (1, 0.8),
                (2, 0.9),
                (3, 0.7),
                (5, 0.8),
                (6, 0.9),
                (7, 0.7),
                (9, 0.8),
                (10, 0.9),
                (11, 0.7),
                (13, 0.8),
                (14, 0.9),
                (15, 0.7),
            ]),
            stab: pat(&[(3, 0.7), (10, 0.6)]),
            lead_density: 0.55,
            sevenths: false,
            bars_per_chord: 2,
            swing: 0.0,
            pad_level: 0.3,
            bass_level: 0.75,
            lead_level: 0.4,
            stab_level: 0.45,
            drum_level: 0.95,
            reverb: 0.3,
            width: 0.45,
            pump: 0.5,
            brightness: (0.15, 0.7),
            arrangement: &[Intro, Groove, Drop, Drop, Break, Groove, Drop, Drop],
        },
        Style::Ambient => Vocabulary {
            kick: if d.chance(0.5) {
                pat(&[(0, 0.5)])
            } else {
                [0.0; 16]
            },
            snare: [0.0; 16],
            clap: [0.0; 16],
            hat: if d.chance(0.5) {
                pat(&[(6, 0.15), (14, 0.15)])
            } else {
                [0.0; 16]
            },
            open_hat: [0.0; 16],
            bass: pat(&[(0, 0.7)]),
            stab: [0.0; 16],
            lead_density: 0.08,
            sevenths: true,
            bars_per_chord: 2,
            swing: 0.0,
            pad_level: 0.85,
            bass_level: 0.5,
            lead_level: 0.35,
            stab_level: 0.0,
            drum_level: 0.4,
            reverb: 0.9,
            width: 0.95,
            pump: 0.0,
            brightness: (0.1, 0.5),
            arrangement: &[Intro, Groove, Break, Groove],
        },
        Style::HipHop => Vocabulary {
            kick: pat(&[(0, 1.0), (7, 0.7), (10, 0.9)]),
            snare: pat(&[(4, 1.0), (12, 1.0)]),
            clap: [0.0; 16],
            hat: pat(&[
                (0, 0.45),
                (2, 0.3),
                (4, 0.45),
                (6, 0.3),
                (8, 0.45),
                (10, 0.3),
                (12, 0.45),
                (14, 0.35),
            ]),
            open_hat: pat(&[(14, 0.4)]),
            bass: pat(&[(0, 1.0), (7, 0.7), (10, 0.9)]),
            stab: pat(&[(0, 0.7), (6, 0.6), (11, 0.5)]),
            lead_density: 0.12,
            sevenths: true,
            bars_per_chord: 1,
            swing: 0.18,
            pad_level: 0.35,
            bass_level: 0.85,
            lead_level: 0.4,
            stab_level: 0.75,
            drum_level: 0.9,
            reverb: 0.3,
            width: 0.5,
            pump: 0.1,
            brightness: (0.1, 0.45),
            arrangement: &[Intro, Groove, Groove, Drop, Break, Groove],
        },
        Style::Funk => Vocabulary {
            kick: pat(&[(0, 1.0), (3, 0.6), (6, 0.8), (10, 0.9)]),
            snare: pat(&[(4, 1.0), (7, 0.25), (9, 0.25), (12, 1.0), (15, 0.3)]),
            clap: [0.0; 16],
            hat: all16(0.3, 0.5),
            open_hat: pat(&[(14, 0.5)]),
            bass: pat(&[
                (0, 1.0),
                (3, 0.7),
                (6, 0.8),
                (8, 0.6),
                (10, 0.9),
                (13, 0.7),
                (15, 0.6),
            ]),
            stab: pat(&[(2, 0.8), (5, 0.6), (9, 0.8), (13, 0.7)]),
            lead_density: 0.3,
            sevenths: true,
            bars_per_chord: 1,
            swing: 0.1,
            pad_level: 0.25,
            bass_level: 0.9,
            lead_level: 0.5,
            stab_level: 0.8,
            drum_level: 0.85,
            reverb: 0.25,
            width: 0.55,
            pump: 0.0,
            brightness: (0.5, 0.9),
            arrangement: &[Intro, Groove, Drop, Groove, Break, Drop],
        },
        Style::DrumAndBass => Vocabulary {
            kick: pat(&[(0, 1.0), (10, 0.95)]),
            snare: pat(&[(4, 1.0), (12, 1.0), (15, 0.2)]),
            clap: [0.0; 16],
            hat: pat(&[
                (0, 0.3),
                (2, 0.45),
                (4, 0.3),
                (6, 0.45),
                (8, 0.3),
                (10, 0.45),
                (12, 0.3),
                (14, 0.45),
            ]),
            open_hat: pat(&[(6, 0.35)]),
            bass: pat(&[(0, 1.0), (10, 0.9)]),
            stab: [0.0; 16],
            lead_density: 0.1,
            sevenths: true,
            bars_per_chord: 2,
            swing: 0.0,
            pad_level: 0.6,
            bass_level: 0.9,
            lead_level: 0.4,
            stab_level: 0.0,
            drum_level: 0.9,
            reverb: 0.55,
            width: 0.7,
            pump: 0.2,
            brightness: (0.2, 0.6),
            arrangement: &[Intro, Drop, Drop, Break, Drop, Groove],
        },
    }
}

fn progression(minor: bool, d: &mut Dice) -> [usize; 4] {
    if minor {
        d.pick(&[
            [0, 5, 2, 6],
            [0, 3, 6, 2],
            [0, 6, 5, 6],
            [0, 3, 4, 0],
            [0, 5, 3, 4],
            [0, 2, 3, 5],
        ])
    } else {
        d.pick(&[
            [0, 4, 5, 3],
            [1, 4, 0, 5],
            [0, 5, 3, 4],
            [3, 4, 2, 5],
            [0, 3, 0, 4],
            [0, 2, 3, 4],
        ])
    }
}

/// Pitch classes of the chord on scale degree `degree` (triad, or seventh chord).
fn chord_pcs(tonic: u8, minor: bool, degree: usize, seventh: bool) -> Vec<u8> {
    let scale = if minor { &MINOR } else { &MAJOR };
    let n = if seventh { 4 } else { 3 };
    (0..n)
        .map(|k| (tonic + scale[(degree + 2 * k) % 7]) % 12)
        .collect()
}

/// Writes one song into a latent.
struct Writer {
    frames: usize,
    latent: Vec<f32>,
}

impl Writer {
    fn set(&mut self, frame: usize, ch: usize, v: f32) {
        if frame < self.frames {
            self.latent[frame * CHANNELS + ch] = v;
        }
    }
    fn get(&self, frame: usize, ch: usize) -> f32 {
        self.latent[frame * CHANNELS + ch]
    }
    /// An onset at absolute time `seconds` with velocity `vel`.
    fn onset(&mut self, voice: OnsetVoice, seconds: f64, vel: f32) {
        let pos = seconds * FPS;
        let frame = pos.floor() as usize;
        if frame >= self.frames || vel <= 0.0 {
            return;
        }
        let v = from_unit(vel);
        if v > self.get(frame, voice.onset) {
            self.set(frame, voice.onset, v);
            self.set(frame, voice.phase, from_unit((pos - frame as f64) as f32));
        }
    }
    /// One-hot pitch class over `frames` frames starting at `from`.
    fn hold_pc(&mut self, base: usize, pc: u8, from: usize, to: usize) {
        for f in from..to.min(self.frames) {
            for k in 0..12 {
                self.set(f, base + k, flag(k as u8 == pc));
            }
        }
    }
}

/// Compose one song.
pub fn compose(spec: SongSpec) -> Song {
    let mut d = Dice {
        seed: spec.seed ^ ((spec.style.index() as u64) << 56),
        n: 0,
    };
    let v = vocabulary(spec.style, &mut d);
    let frames = spec.frames;
    let mut w = Writer {
        frames,
        latent: vec![-1.0; frames * CHANNELS],
    };

    let step_s = 60.0 / spec.bpm as f64 / 4.0;
    let bar_s = step_s * 16.0;
    let seconds = frames as f64 / FPS;
    let bars = (seconds / bar_s).ceil() as usize + 1;
    let prog = progression(spec.minor, &mut d);
    let scale = if spec.minor { MINOR } else { MAJOR };
    // Sections of 4 bars (8 for slow music) following the style's arrangement from a seeded start.
    let section_bars = if bar_s > 2.6 { 4 } else { 8 };
    let arr_start = (d.next() * v.arrangement.len() as f64) as usize;
    let section_of =
        |bar: usize| v.arrangement[(arr_start + bar / section_bars) % v.arrangement.len()];
    let brightness_base = d.range(v.brightness.0, v.brightness.1);
    let lead_octave = d.range(-0.6, 0.6) as f32;
    let lead_shape = d.range(-1.0, 1.0) as f32;
    let bass_bright = d.range(0.1, 0.7) as f32;
    let swing_of = |step: usize| if step % 2 == 1 { v.swing * step_s } else { 0.0 };
    let time_of =
        |bar: usize, step: usize| bar as f64 * bar_s + step as f64 * step_s + swing_of(step);
    let frame_of = |t: f64| (t * FPS).floor().max(0.0) as usize;
    let human = |d: &mut Dice, vel: f32| (vel * d.range(0.85, 1.0) as f32).min(1.0);

    // A one-bar lead motif of scale offsets relative to the chord root, reused with variation.
    let motif: Vec<(usize, i32, f32)> = (0..16)
        .filter_map(|s| {
            let p = if s % 4 == 0 {
                v.lead_density * 1.6
            } else {
                v.lead_density
            };
            if d.chance(p.min(0.95)) {
                Some((
                    s,
                    d.pick(&[0, 2, 4, 4, 2, 0, 7, 5, 3, 1]),
                    d.range(0.6, 1.0) as f32,
                ))
            } else {
                None
            }
        })
        .collect();

    let mut drum_hits = 0usize;
    for bar in 0..bars {
        let section = section_of(bar);
        let chord_deg = prog[(bar / v.bars_per_chord) % 4];
        let chord = chord_pcs(spec.tonic, spec.minor, chord_deg, v.sevenths);
        let root = chord[0];
        let (f0, f1) = (
            frame_of(bar as f64 * bar_s),
            frame_of((bar + 1) as f64 * bar_s),
        );
        let in_section = (bar % section_bars) as f32 / section_bars as f32;
        let last_bar_of_section = bar % section_bars == section_bars - 1;

        // Continuous channels for the whole bar.
        let (pad, bass_lvl, lead_lvl, stab_lvl, drums, bright_add) = match section {
            Section::Intro => (
                v.pad_level * 0.7,
                v.bass_level * 0.6,
                0.0,
                v.stab_level * 0.5,
                v.drum_level * 0.8,
                -0.15,
            ),
            Section::Groove => (
                v.pad_level,
                v.bass_level,
                v.lead_level * 0.6,
                v.stab_level,
                v.drum_level,
                0.0,
            ),
            Section::Break => (
                (v.pad_level * 1.3).min(1.0),
                v.bass_level * 0.5,
                v.lead_level,
                v.stab_level * 0.4,
                v.drum_level * 0.5,
                -0.2 + 0.5 * in_section,
            ),
            Section::Drop => (
                v.pad_level * 0.9,
                v.bass_level,
                v.lead_level,
                v.stab_level,
                v.drum_level,
                0.15,
            ),
        };
        for f in f0..f1.min(frames) {
            let frac = (f - f0) as f32 / (f1 - f0).max(1) as f32;
            let bright = (brightness_base as f32 + bright_add + 0.1 * frac).clamp(0.0, 1.0);
            w.set(f, PAD_LEVEL, from_unit(pad));
            w.set(f, BASS_LEVEL, from_unit(bass_lvl));
            w.set(f, LEAD_LEVEL, from_unit(lead_lvl));
            w.set(f, STAB_LEVEL, from_unit(stab_lvl));
            w.set(f, DRUM_LEVEL, from_unit(drums));
            w.set(f, PAD_BRIGHT, from_unit(bright));
            w.set(f, BASS_BRIGHT, from_unit(bass_bright));
            w.set(f, LEAD_SHAPE, lead_shape);
            w.set(f, LEAD_OCTAVE, lead_octave);
            w.set(
                f,
                REVERB,
                from_unit(if section == Section::Break {
                    (v.reverb + 0.2).min(1.0)
                } else {
                    v.reverb
                }),
            );
            w.set(f, WIDTH, from_unit(v.width));
            w.set(
                f,
                PUMP,
                from_unit(if section == Section::Break {
                    0.0
                } else {
                    v.pump
                }),
            );
            for k in 0..12u8 {
                w.set(f, CHORD + k as usize, flag(chord.contains(&k)));
            }
        }

        // Drums.
        let kick_on = section != Section::Break;
        for s in 0..16 {
            let t = time_of(bar, s);
            let fill = last_bar_of_section && s >= 12 && section != Section::Intro;
            if kick_on && v.kick[s] > 0.0 {
                w.onset(KICK, t, human(&mut d, v.kick[s]));
                drum_hits += 1;
            }
            let snare = if fill && s >= 13 && d.chance(0.6) {
                0.6
            } else {
                v.snare[s]
            };
            if snare > 0.0 && section != Section::Intro {
                w.onset(SNARE, t, human(&mut d, snare));
                drum_hits += 1;
            }
            if v.clap[s] > 0.0 && section != Section::Intro {
                w.onset(CLAP, t, human(&mut d, v.clap[s]));
                drum_hits += 1;
            }
            if v.hat[s] > 0.0 && (section != Section::Break || s % 4 == 2) {
                w.onset(HAT, t, human(&mut d, v.hat[s]));
                drum_hits += 1;
            }
            if v.open_hat[s] > 0.0 && matches!(section, Section::Groove | Section::Drop) {
                w.onset(OPEN_HAT, t, human(&mut d, v.open_hat[s]));
                drum_hits += 1;
            }
        }

        // Bass: notes on the pattern, pitch = root, sometimes the fifth or the next chord's root.
        let next_root = chord_pcs(
            spec.tonic,
            spec.minor,
            prog[((bar + 1) / v.bars_per_chord) % 4],
            false,
        )[0];
        let bass_steps: Vec<usize> = (0..16).filter(|&s| v.bass[s] > 0.0).collect();
        for (i, &s) in bass_steps.iter().enumerate() {
            if section == Section::Intro && s % 4 != 2 && s != 0 {
                continue;
            }
            let pc = if s >= 12 && d.chance(0.3) {
                next_root
            } else if d.chance(0.15) {
                (root + 7) % 12
            } else {
                root
            };
            let t = time_of(bar, s);
            let end = bass_steps
                .get(i + 1)
                .map(|&n| time_of(bar, n))
                .unwrap_or((bar + 1) as f64 * bar_s);
            w.onset(BASS_ON, t, human(&mut d, v.bass[s]));
            w.hold_pc(BASS_PC, pc, frame_of(t), frame_of(end) + 1);
        }
        if bass_steps.is_empty() {
            w.hold_pc(BASS_PC, root, f0, f1);
        }

        // Chord stabs.
        if section != Section::Break {
            for s in 0..16 {
                if v.stab[s] > 0.0 {
                    w.onset(STAB, time_of(bar, s), human(&mut d, v.stab[s]));
                }
            }
        }

        // Lead: the motif, transposed onto the bar's chord, varied every other bar.
        if matches!(section, Section::Break | Section::Drop | Section::Groove) && lead_lvl > 0.0 {
            let root_deg = chord_deg as i32;
            let mut notes: Vec<(usize, u8, f32)> = Vec::with_capacity(motif.len());
            for &(s, off, vel) in &motif {
                if bar % 2 == 1 && d.chance(0.25) {
                    continue;
                }
                let off = if bar % 4 == 3 && d.chance(0.4) {
                    off + d.pick(&[-1, 1, 2])
                } else {
                    off
                };
                let deg = (root_deg + off).rem_euclid(7) as usize;
                notes.push((s, (spec.tonic + scale[deg]) % 12, vel));
            }
            for (i, &(s, pc, vel)) in notes.iter().enumerate() {
                let t = time_of(bar, s);
                let end = notes
                    .get(i + 1)
                    .map(|n| time_of(bar, n.0))
                    .unwrap_or((bar + 1) as f64 * bar_s);
                w.onset(LEAD_ON, t, human(&mut d, vel));
                w.hold_pc(LEAD_PC, pc, frame_of(t), frame_of(end) + 1);
            }
        }
    }

    // Phase channels carry the grid phase wherever no onset sits, so mixing songs never smears
    // timing (all songs of one tempo share the grid).
    for voice in [BASS_ON, LEAD_ON, KICK, SNARE, HAT, OPEN_HAT, CLAP, STAB] {
        let mut grid_phase = vec![None; frames];
        for step in 0..((seconds / step_s).ceil() as usize + 1) {
            let t = step as f64 * step_s + swing_of(step % 16);
            let pos = t * FPS;
            let f = pos.floor() as usize;
            if f < frames && grid_phase[f].is_none() {
                grid_phase[f] = Some((pos - f as f64) as f32);
            }
        }
        for (f, gp) in grid_phase.iter().enumerate() {
            if w.get(f, voice.onset) <= -1.0 {
                w.set(f, voice.phase, from_unit(gp.unwrap_or(0.0)));
            }
        }
    }

    let mean =
        |ch: usize| (0..frames).map(|f| unit(w.get(f, ch))).sum::<f32>() / frames.max(1) as f32;
    Song {
        spec,
        brightness: 0.5 * (mean(PAD_BRIGHT) + mean(BASS_BRIGHT)),
        energy: ((drum_hits as f64 / seconds.max(1e-3)) / 10.0).min(1.0) as f32,
        latent: w.latent,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(style: Style) -> SongSpec {
        SongSpec {
            style,
            bpm: style.default_bpm(),
            tonic: 9,
            minor: true,
            seed: 3,
            frames: 500,
        }
    }

    #[test]
    fn deterministic_and_in_range() {
        for s in Style::ALL {
            let a = compose(spec(s));
            let b = compose(spec(s));
            assert_eq!(a.latent, b.latent);
            assert!(a.latent.iter().all(|v| (-1.0..=1.0).contains(v)), "{s:?}");
            assert_eq!(a.latent.len(), 500 * CHANNELS);
        }
        assert_ne!(
            compose(spec(Style::House)).latent,
            compose(SongSpec {
                seed: 4,
                ..spec(Style::House)
            })
            .latent
        );
    }

    #[test]
    fn house_has_four_on_the_floor_at_its_tempo() {
        let s = compose(SongSpec {
            seed: 11,
            ..spec(Style::House)
        });
        let kicks: Vec<usize> = (0..500)
            .filter(|f| s.latent[f * CHANNELS + KICK.onset] > 0.0)
            .collect();
        // 124 bpm: a beat every 0.4839 s = 12.1 frames.
        let gaps: Vec<usize> = kicks.windows(2).map(|w| w[1] - w[0]).collect();
        assert!(
            gaps.iter().filter(|g| **g == 12 || **g == 13).count() * 10 >= gaps.len() * 8,
            "{gaps:?}"
        );
    }

    #[test]
    fn chords_stay_in_key() {
        let s = compose(spec(Style::Funk));
        let scale: Vec<u8> = MINOR.iter().map(|d| (9 + d) % 12).collect();
        for f in 0..500 {
            for k in 0..12u8 {
                if s.latent[f * CHANNELS + CHORD + k as usize] > 0.0 {
                    assert!(scale.contains(&k), "frame {f} pc {k}");
                }
            }
        }
    }
}
