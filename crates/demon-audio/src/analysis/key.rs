//! Musical key by correlating the average chroma with key profiles (Krumhansl–Schmuckler
//! key finding, with the Krumhansl–Kessler probe-tone profiles; Krumhansl 1990, *Cognitive
//! Foundations of Musical Pitch*, ch. 4).
//!
//! The chroma is taken from the sustained part of the sound only (each STFT bin median-filtered
//! over 0.68 s, which removes drums: a kick's pitch sweep would otherwise colour every song's
//! chroma alike). The average of its frames (each scaled to a peak of 1, silent frames left out,
//! so a loud passage does not outvote the rest) is correlated with each of the 24 rotated
//! profiles; the best correlation names the key. Relative keys (A minor / C major)
//! share their notes and differ only in weighting, so their two scores are often close: the
//! estimate reports the runner-up too.

use std::fmt;

use demon_engine::Audio;

use super::similarity::{
    CHROMA_MAX_HZ, CHROMA_MIN_HZ, harmonic_chroma_mass, normalise_frames, pearson,
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
    /// Correlation of the average chroma with the key's profile, in [−1, 1].
    pub correlation: f64,
    /// The second-best key and its correlation.
    pub runner_up: Key,
    pub runner_up_correlation: f64,
}

/// Correlations of a 12-bin chroma profile (0 = C) with all 24 keys: index `tonic` for major,
/// `12 + tonic` for minor.
pub fn key_correlations(chroma: &[f32; 12]) -> [f64; 24] {
    let mut out = [0f64; 24];
    for tonic in 0..12 {
        for (minor, profile) in [(false, &KK_MAJOR), (true, &KK_MINOR)] {
            // Profile rotated so its tonic sits on pitch class `tonic`.
            let rotated: Vec<f32> = (0..12).map(|pc| profile[(pc + 12 - tonic) % 12]).collect();
            out[tonic + if minor { 12 } else { 0 }] = pearson(chroma, &rotated);
        }
    }
    out
}

/// Upper edge of the bass register whose chroma votes separately (chord roots, mostly).
const BASS_MAX_HZ: f64 = 250.0;

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

/// The key of `audio`, or `None` when it has no pitched content (silence, or a flat chroma).
///
/// Two votes are added: the correlation of the whole range's average chroma (60 Hz–5 kHz)
/// with each key profile, and that of the bass register's (60–250 Hz), where the chord roots
/// sit and the tonic is usually the most frequent; a relative major and minor share their
/// notes, and the bass is what tells them apart.
pub fn estimate_key(audio: &Audio) -> Option<KeyEstimate> {
    let full = mean_chroma(&normalise_frames(harmonic_chroma_mass(
        audio,
        CHROMA_MIN_HZ,
        CHROMA_MAX_HZ,
    )))?;
    let mut scores = key_correlations(&full);
    if let Some(bass) = mean_chroma(&normalise_frames(harmonic_chroma_mass(
        audio,
        CHROMA_MIN_HZ,
        BASS_MAX_HZ,
    ))) {
        for (s, b) in scores.iter_mut().zip(key_correlations(&bass)) {
            *s = 0.5 * (*s + b);
        }
    }
    let mut order: Vec<usize> = (0..24).collect();
    order.sort_by(|a, b| scores[*b].total_cmp(&scores[*a]).then(a.cmp(b)));
    let key_of = |i: usize| Key {
        tonic: (i % 12) as u8,
        minor: i >= 12,
    };
    let (first, second) = (order[0], order[1]);
    if scores[first] <= 0.0 {
        return None;
    }
    Some(KeyEstimate {
        key: key_of(first),
        correlation: scores[first],
        runner_up: key_of(second),
        runner_up_correlation: scores[second],
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

    #[test]
    fn no_key_in_silence() {
        assert_eq!(estimate_key(&Audio::silence(RATE, 2, RATE as usize)), None);
    }
}
