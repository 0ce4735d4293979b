//! Musical key: first the scale (which seven notes the music uses), then its tonic (which of
//! the scale's two keys, major or the relative minor, the music rests on).
//!
//! Chroma is taken from the sustained part of the sound only (each STFT bin median-filtered
//! over 0.68 s, which removes drums), in two registers, each averaged over its non-silent
//! frames (every frame scaled to a peak of 1, so a loud passage does not outvote the rest):
//!
//! - the **harmony** register, C3 (130 Hz) to 2 kHz: chords and melody. The register below is
//!   left to the bass, where a 0.34 s window cannot resolve semitones and the bass line would
//!   smear the chord tones; above 2 kHz overtones dominate, and they add the fifth and the major
//!   third above every note (they pulled the earlier whole-range chroma a fifth sharp: A major
//!   read as E major).
//! - the **bass** register, 55–128 Hz, with a 0.68 s window (1.5 Hz bins).
//!
//! 1. **Scale.** The harmony chroma is correlated with the 12 rotations of a flat diatonic
//!    template (1 on the seven notes); the best names the collection. This uses what the notes
//!    *are*, not how often the tonic sounds, so a progression that dwells on its dominant
//!    (I–V–V–IV–V–I) still shows the subdominant's natural fourth degree, which the dominant key
//!    lacks.
//! 2. **Tonic.** A major key and its relative minor (C major, A minor) share that collection
//!    and differ only in emphasis. Each is scored by its Krumhansl–Kessler probe-tone profile
//!    fit (Krumhansl 1990, *Cognitive Foundations of Musical Pitch*, ch. 4: the mean of the
//!    harmony's and the bass's correlations with the rotated profile), plus half the share of
//!    the bass chroma on its tonic (relative to the bass's strongest note): a bass line returns
//!    to the tonic, and the relative major's tonic is only the third of the minor tonic chord.
//!    An Aeolian loop i–VI–III–VII has every chord of the relative major too; its bass on the
//!    minor tonic is what names it.
//!
//! A missing or flat bass (no bass line) has no vote; a harmony register with no pitched
//! content falls back to the whole range (60 Hz–5 kHz). The estimate reports the other key of
//! the scale as the runner-up. Everything is deterministic. Music outside the diatonic
//! collections (blues, modal mixture, a key change) is fitted to the nearest one.

use std::fmt;

use demon_engine::Audio;

use super::similarity::{
    CHROMA_FFT_SECONDS, CHROMA_MAX_HZ, CHROMA_MIN_HZ, harmonic_chroma_mass, normalise_frames,
    pearson,
};

/// Krumhansl–Kessler major-key profile, from the tonic up in semitones.
pub const KK_MAJOR: [f32; 12] = [
    6.35, 2.23, 3.48, 2.33, 4.38, 4.09, 2.52, 5.19, 2.39, 3.66, 2.29, 2.88,
];
/// Krumhansl–Kessler minor-key profile.
pub const KK_MINOR: [f32; 12] = [
    6.33, 2.68, 3.52, 5.38, 2.60, 3.53, 2.54, 4.75, 3.98, 2.69, 3.34, 3.17,
];

const NAMES: [&str; 12] = [
    "C", "C#", "D", "D#", "E", "F", "F#", "G", "G#", "A", "A#", "B",
];

/// A key: tonic pitch class (0 = C) and mode.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Key {
    pub tonic: u8,
    pub minor: bool,
}

impl Key {
    /// Its relative key (A minor ↔ C major).
    pub fn relative(self) -> Key {
        if self.minor {
            Key {
                tonic: (self.tonic + 3) % 12,
                minor: false,
            }
        } else {
            Key {
                tonic: (self.tonic + 9) % 12,
                minor: true,
            }
        }
    }
}

impl fmt::Display for Key {
    /// `A minor`, `F# major` (sharps, as the prompt parsers read them).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mode = if self.minor { "minor" } else { "major" };
        write!(f, "{} {mode}", NAMES[self.tonic as usize % 12])
    }
}

/// What [`estimate_key`] found.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct KeyEstimate {
    pub key: Key,
    /// The key's profile fit, in [−1, 1]: the correlation of the harmony register's average
    /// chroma with its Krumhansl–Kessler profile (averaged with the bass register's when there
    /// is a bass line).
    pub correlation: f64,
    /// The other key of the same scale (the relative major or minor) and its profile fit.
    pub runner_up: Key,
    pub runner_up_correlation: f64,
}

/// Correlations of a 12-bin chroma profile (0 = C) with all 24 keys: index `tonic` for major,
/// `12 + tonic` for minor.
pub fn key_correlations(chroma: &[f32; 12]) -> [f64; 24] {
    correlations(chroma, &KK_MAJOR, &KK_MINOR)
}

/// Scale-membership templates: 1 on the seven notes of the major scale and of the natural
/// minor scale, from the tonic up. A key and its relative share one collection.
const MAJOR_SCALE: [f32; 12] = [1., 0., 1., 0., 1., 1., 0., 1., 0., 1., 0., 1.];
const MINOR_SCALE: [f32; 12] = [1., 0., 1., 1., 0., 1., 0., 1., 1., 0., 1., 0.];

/// The harmony register: from C3 (just above the bass) to 2 kHz.
const HARMONY_MIN_HZ: f64 = 130.0;
const HARMONY_MAX_HZ: f64 = 2000.0;
/// STFT window of the harmony chroma: 0.34 s resolves semitones down to C3.
const HARMONY_FFT_SECONDS: f64 = 0.34;
/// The bass register: A1 to just below C3, where the bass line's fundamentals sit.
const BASS_MIN_HZ: f64 = 55.0;
const BASS_MAX_HZ: f64 = 128.0;
/// STFT window of the bass chroma: 0.68 s (1.5 Hz bins; a semitone at A1 is 3.3 Hz wide).
const BASS_FFT_SECONDS: f64 = 0.68;
/// Weight of the bass's dwelling on a key's tonic (its share of the bass chroma, 0..1).
const BASS_TONIC_WEIGHT: f64 = 0.5;

/// Correlations of `chroma` with the 24 rotations of a (major, minor) pair of profiles.
fn correlations(chroma: &[f32; 12], major: &[f32; 12], minor: &[f32; 12]) -> [f64; 24] {
    let mut out = [0f64; 24];
    for tonic in 0..12 {
        for (m, profile) in [(0, major), (12, minor)] {
            let rotated: Vec<f32> = (0..12).map(|pc| profile[(pc + 12 - tonic) % 12]).collect();
            out[tonic + m] = pearson(chroma, &rotated);
        }
    }
    out
}

/// Mean of the non-silent frames of a chromagram, or `None` when all are silent.
fn mean_chroma(frames: &[[f32; 12]]) -> Option<[f32; 12]> {
    let voiced: Vec<&[f32; 12]> = frames
        .iter()
        .filter(|c| c.iter().any(|v| *v > 0.0))
        .collect();
    if voiced.is_empty() {
        return None;
    }
    let mut mean = [0f32; 12];
    for c in &voiced {
        for (m, v) in mean.iter_mut().zip(c.iter()) {
            *m += v / voiced.len() as f32;
        }
    }
    Some(mean)
}

/// Mean peak-normalised harmonic chroma of one register.
fn register_chroma(audio: &Audio, min_hz: f64, max_hz: f64, fft_seconds: f64) -> Option<[f32; 12]> {
    mean_chroma(&normalise_frames(harmonic_chroma_mass(
        audio,
        min_hz,
        max_hz,
        fft_seconds,
    )))
}

/// The three votes of [`estimate_key`] for all 24 keys (index `tonic`, or `12 + tonic` for
/// minor): scale fit, profile fit, bass on the tonic. `None` without pitched harmony.
fn key_votes(audio: &Audio) -> Option<([f64; 24], [f64; 24], [f64; 24])> {
    let harmony = register_chroma(audio, HARMONY_MIN_HZ, HARMONY_MAX_HZ, HARMONY_FFT_SECONDS)
        .or_else(|| register_chroma(audio, CHROMA_MIN_HZ, CHROMA_MAX_HZ, CHROMA_FFT_SECONDS))?;
    let scale = correlations(&harmony, &MAJOR_SCALE, &MINOR_SCALE);
    let mut profile = key_correlations(&harmony);
    let mut bass_tonic = [0f64; 24];
    let bass = register_chroma(audio, BASS_MIN_HZ, BASS_MAX_HZ, BASS_FFT_SECONDS);
    // A bass register that is silent or flat (no bass line) has no vote.
    if let Some(bass) = bass.filter(|b| {
        let mean = b.iter().sum::<f32>() / 12.0;
        b.iter().any(|v| (v - mean).abs() > 1e-3 * mean.max(1e-12))
    }) {
        let peak = bass.iter().copied().fold(0f32, f32::max) as f64;
        for (i, (p, b)) in profile.iter_mut().zip(key_correlations(&bass)).enumerate() {
            *p = 0.5 * (*p + b);
            bass_tonic[i] = bass[i % 12] as f64 / peak;
        }
    }
    Some((scale, profile, bass_tonic))
}

/// The key of `audio`, or `None` when it has no pitched content (silence, or a flat chroma).
///
/// See the module doc: the scale whose notes the harmony register fits best, then of its two
/// keys (major, and the relative minor) the one with the higher profile fit plus
/// [`BASS_TONIC_WEIGHT`] times the bass's share on its tonic. The runner-up is the other key
/// of that scale.
pub fn estimate_key(audio: &Audio) -> Option<KeyEstimate> {
    let (scale, profile, bass_tonic) = key_votes(audio)?;
    // The scale: its major key's index (the relative minor's is `12 + (major + 9) % 12`, the
    // same scale fit).
    let major = (0..12)
        .max_by(|a, b| scale[*a].total_cmp(&scale[*b]).then(b.cmp(a)))
        .expect("12 keys");
    let minor = 12 + (major + 9) % 12;
    let tonic_score = |i: usize| profile[i] + BASS_TONIC_WEIGHT * bass_tonic[i];
    let (first, second) = if tonic_score(minor) > tonic_score(major) {
        (minor, major)
    } else {
        (major, minor)
    };
    if scale[first] <= 0.0 || profile[first] <= 0.0 {
        return None;
    }
    let key_of = |i: usize| Key {
        tonic: (i % 12) as u8,
        minor: i >= 12,
    };
    Some(KeyEstimate {
        key: key_of(first),
        correlation: profile[first],
        runner_up: key_of(second),
        runner_up_correlation: profile[second],
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const RATE: u32 = 48_000;

    /// Chords (triads of harmonic tones, 1 s each) given as MIDI roots and qualities.
    fn chords(progression: &[(i32, bool)], repeats: usize) -> Audio {
        let per = RATE as usize;
        let mut x = Vec::new();
        for _ in 0..repeats {
            for &(root, minor) in progression {
                let third = if minor { 3 } else { 4 };
                let notes = [root - 12, root, root + third, root + 7];
                for i in 0..per {
                    let t = i as f64 / RATE as f64;
                    let env = (t / 0.01).min(1.0) * (-t * 1.5).exp();
                    let s: f64 = notes
                        .iter()
                        .map(|m| {
                            let hz = 440.0 * 2f64.powf((*m - 69) as f64 / 12.0);
                            (1..=3)
                                .map(|h| {
                                    (2.0 * std::f64::consts::PI * hz * h as f64 * t).sin()
                                        / h as f64
                                })
                                .sum::<f64>()
                        })
                        .sum();
                    x.push((0.1 * env * s) as f32);
                }
            }
        }
        Audio::new(RATE, vec![x]).unwrap()
    }

    /// Chords of harmonic tones given as (MIDI root, minor, beats), at 2 beats a second, each
    /// over a bass note on its root two octaves down (below C3).
    fn song(progression: &[(i32, bool, usize)], repeats: usize) -> Audio {
        let beat = RATE as usize / 2;
        let mut x = Vec::new();
        let tone = |m: i32, t: f64| -> f64 {
            let hz = 440.0 * 2f64.powf((m - 69) as f64 / 12.0);
            (1..=4)
                .map(|h| (2.0 * std::f64::consts::PI * hz * h as f64 * t).sin() / h as f64)
                .sum()
        };
        for _ in 0..repeats {
            for &(root, minor, beats) in progression {
                let third = if minor { 3 } else { 4 };
                let notes = [root, root + third, root + 7];
                for i in 0..beat * beats {
                    let t = i as f64 / RATE as f64;
                    let tb = (i % beat) as f64 / RATE as f64;
                    let env = (t / 0.02).min(1.0) * (-t * 0.5).exp();
                    let pluck = (tb / 0.005).min(1.0) * (-tb * 3.0).exp();
                    let s: f64 = notes.iter().map(|m| tone(*m, t)).sum::<f64>() * env
                        + 1.5 * pluck * tone(root - 24, t);
                    x.push((0.05 * s) as f32);
                }
            }
        }
        Audio::new(RATE, vec![x]).unwrap()
    }

    #[test]
    fn a_profile_finds_its_own_key() {
        // The profiles themselves, rotated: every key is recovered with correlation 1.
        for tonic in 0..12u8 {
            for (minor, p) in [(false, KK_MAJOR), (true, KK_MINOR)] {
                let c: [f32; 12] = std::array::from_fn(|pc| p[(pc + 12 - tonic as usize) % 12]);
                let s = key_correlations(&c);
                let i = tonic as usize + if minor { 12 } else { 0 };
                assert!((s[i] - 1.0).abs() < 1e-6);
                assert!(s.iter().enumerate().all(|(j, v)| j == i || *v < 0.99));
            }
        }
    }

    #[test]
    fn cadences_in_major_and_minor() {
        // I–IV–V–I in G major; i–iv–V–i in D minor (harmonic minor's major V).
        let g = estimate_key(&chords(
            &[(67, false), (72, false), (74, false), (67, false)],
            3,
        ))
        .unwrap();
        assert_eq!(
            g.key,
            Key {
                tonic: 7,
                minor: false
            },
            "{g:?}"
        );
        let d = estimate_key(&chords(
            &[(62, true), (67, true), (69, false), (62, true)],
            3,
        ))
        .unwrap();
        assert_eq!(
            d.key,
            Key {
                tonic: 2,
                minor: true
            },
            "{d:?}"
        );
        assert_eq!(d.key.to_string(), "D minor");
        assert_eq!(
            Key {
                tonic: 9,
                minor: true
            }
            .relative()
            .to_string(),
            "C major"
        );
    }

    fn key(tonic: u8, minor: bool) -> Key {
        Key { tonic, minor }
    }

    #[test]
    fn a_minor_loop_is_not_its_relative_major() {
        // i–VI–III–VII (Am F C G) and i–iv–v–i (Am Dm Em Am), a bar each, natural minor: every
        // note is also C major's. The bass dwells on A; Krumhansl–Kessler on the whole range
        // (the estimator before this one) named C major and A major.
        let aeolian = song(
            &[
                (69, true, 4),
                (65, false, 4),
                (72, false, 4),
                (67, false, 4),
            ],
            3,
        );
        let e = estimate_key(&aeolian).unwrap();
        assert_eq!(e.key, key(9, true), "{e:?}");
        assert_eq!(e.runner_up, key(0, false), "{e:?}");
        let minor_v = song(
            &[(69, true, 4), (62, true, 4), (64, true, 4), (69, true, 4)],
            3,
        );
        let e = estimate_key(&minor_v).unwrap();
        assert_eq!(e.key, key(9, true), "{e:?}");
    }

    #[test]
    fn a_dominant_heavy_progression_keeps_its_tonic() {
        // I–V–V–IV–V–I in A major: E major sounds longest, but D (not D#) says A major; the
        // earlier estimator named E major.
        let a = song(
            &[
                (69, false, 4),
                (64, false, 4),
                (64, false, 2),
                (62, false, 2),
                (64, false, 4),
                (69, false, 4),
            ],
            3,
        );
        let e = estimate_key(&a).unwrap();
        assert_eq!(e.key, key(9, false), "{e:?}");
        // I–V–vi–IV in C major stays major (its relative minor's chord is on the bass too).
        let c = song(
            &[
                (60, false, 4),
                (67, false, 4),
                (69, true, 4),
                (65, false, 4),
            ],
            3,
        );
        assert_eq!(estimate_key(&c).unwrap().key, key(0, false));
    }

    #[test]
    fn no_key_in_silence() {
        assert_eq!(estimate_key(&Audio::silence(RATE, 2, RATE as usize)), None);
    }
}
