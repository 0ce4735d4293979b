//! How alike two pieces of audio are: in loudness over time ([`envelope_correlation`]) and in
//! harmony over time ([`chroma_correlation`]).
//!
//! Both compare 25 Hz frames (40 ms, the latent frame rate) at the same instants of the two
//! signals, over the length of the shorter one, by Pearson correlation: 1 for the same shape,
//! about 0 for unrelated material, −1 for the opposite shape. Gain does not matter (a copy at
//! −12 dB correlates 1 with its original); timing does (a shift by half a beat can turn a
//! groove's envelope correlation negative). Signals may differ in sample rate and channel count.

use demon_engine::Audio;

use super::spectrum::{Spectrogram, fft_len_for, hop_samples, mono};

/// Length of one envelope frame, and the hop of the chromagram: 40 ms (25 Hz).
pub const ENVELOPE_FRAME_SECONDS: f64 = 0.04;
/// Target window length of the chroma STFT (8192 samples at 48 kHz): long enough to resolve
/// semitones down to about 80 Hz.
pub const CHROMA_FFT_SECONDS: f64 = 0.17;
/// Frequencies folded into the chromagram.
pub(crate) const CHROMA_MIN_HZ: f64 = 60.0;
pub(crate) const CHROMA_MAX_HZ: f64 = 5000.0;
/// Frames quieter than this share of the loudest frame's chroma mass count as silent (all 0).
const CHROMA_SILENCE: f32 = 1e-4;

/// Pearson correlation of the first `min(a.len(), b.len())` values of `a` and `b`.
///
/// Returns 0 when there are fewer than two values or when either side does not vary (the
/// correlation is undefined there; 0 says "no evidence of a common shape"). Computed in f64.
pub fn pearson(a: &[f32], b: &[f32]) -> f64 {
    let n = a.len().min(b.len());
    if n < 2 {
        return 0.0;
    }
    let (a, b) = (&a[..n], &b[..n]);
    let mean = |x: &[f32]| x.iter().map(|v| *v as f64).sum::<f64>() / n as f64;
    let (ma, mb) = (mean(a), mean(b));
    let (mut sab, mut saa, mut sbb) = (0f64, 0f64, 0f64);
    for (x, y) in a.iter().zip(b) {
        let (dx, dy) = (*x as f64 - ma, *y as f64 - mb);
        sab += dx * dy;
        saa += dx * dx;
        sbb += dy * dy;
    }
    // Relative to the signal's own scale, so a constant made of rounding noise counts as flat.
    let flat = |s: f64, m: f64| s <= 1e-24 * (n as f64) * (1.0 + m * m);
    if flat(saa, ma) || flat(sbb, mb) {
        return 0.0;
    }
    (sab / (saa.sqrt() * sbb.sqrt())).clamp(-1.0, 1.0)
}

/// RMS of the mono mixdown over consecutive frames of `frame_seconds` (the last frame may be
/// shorter; it is the RMS of the samples it has).
pub fn rms_envelope(audio: &Audio, frame_seconds: f64) -> Vec<f32> {
    let x = mono(audio);
    let hop = hop_samples(audio.sample_rate, frame_seconds);
    x.chunks(hop)
        .map(|c| {
            let e = c.iter().map(|v| (*v as f64) * (*v as f64)).sum::<f64>();
            (e / c.len() as f64).sqrt() as f32
        })
        .collect()
}

/// Pearson correlation of the 40 ms RMS envelopes of `a` and `b` (see the module doc).
pub fn envelope_correlation(a: &Audio, b: &Audio) -> f64 {
    pearson(
        &rms_envelope(a, ENVELOPE_FRAME_SECONDS),
        &rms_envelope(b, ENVELOPE_FRAME_SECONDS),
    )
}

/// Chroma mass per pitch class (0 = C) of each 40 ms frame, not normalised: the magnitude of
/// every STFT bin between 60 Hz and 5 kHz goes to its nearest equal-tempered pitch class
/// (A = 440 Hz), weighted by cos²(π·d) where `d` is its distance from that semitone, so bins
/// between two semitones count little; each class's weights sum to 1, so white noise has a
/// flat expected chroma.
pub(crate) fn chroma_mass(audio: &Audio) -> Vec<[f32; 12]> {
    let (spec, folding) =
        chroma_spectrogram(audio, CHROMA_MIN_HZ, CHROMA_MAX_HZ, CHROMA_FFT_SECONDS);
    spec.frames.iter().map(|m| fold(m, &folding)).collect()
}

/// [`chroma_mass`] of the sustained part of the sound only, between `min_hz` and `max_hz`,
/// from an STFT window of about `fft_seconds` (a power of two; longer windows resolve
/// semitones lower down): each bin's magnitude is replaced by its median over
/// ±[`HARMONIC_HALF_FRAMES`] frames (0.68 s), which keeps held notes and removes drum hits and
/// other short events (the harmonic half of median-filtering harmonic/percussive separation,
/// Fitzgerald 2010).
pub(crate) fn harmonic_chroma_mass(
    audio: &Audio,
    min_hz: f64,
    max_hz: f64,
    fft_seconds: f64,
) -> Vec<[f32; 12]> {
    let (spec, folding) = chroma_spectrogram(audio, min_hz, max_hz, fft_seconds);
    let n = spec.frames.len();
    let top = folding.iter().map(|(k, _, _)| *k + 1).max().unwrap_or(0);
    let mut window = Vec::with_capacity(2 * HARMONIC_HALF_FRAMES + 1);
    let mut held = vec![vec![0f32; top]; n];
    for k in 0..top {
        for (t, out) in held.iter_mut().enumerate() {
            let (lo, hi) = (
                t.saturating_sub(HARMONIC_HALF_FRAMES),
                (t + HARMONIC_HALF_FRAMES + 1).min(n),
            );
            window.clear();
            window.extend(spec.frames[lo..hi].iter().map(|m| m[k]));
            let mid = window.len() / 2;
            out[k] = *window.select_nth_unstable_by(mid, f32::total_cmp).1;
        }
    }
    // Soft mask H²/(H² + P²) against the median across ±HARMONIC_HALF_FRAMES bins: a dense
    // kick survives the median over time but is broad in frequency, a held note is narrow.
    spec.frames
        .iter()
        .zip(&held)
        .map(|(m, h)| {
            let kept: Vec<f32> = (0..top)
                .map(|k| {
                    let (lo, hi) = (
                        k.saturating_sub(HARMONIC_HALF_FRAMES),
                        (k + HARMONIC_HALF_FRAMES + 1).min(m.len()),
                    );
                    let mut w: Vec<f32> = m[lo..hi].to_vec();
                    let mid = w.len() / 2;
                    let p = *w.select_nth_unstable_by(mid, f32::total_cmp).1;
                    let (h2, p2) = (h[k] * h[k], p * p);
                    if h2 + p2 > 0.0 {
                        m[k] * h2 / (h2 + p2)
                    } else {
                        0.0
                    }
                })
                .collect();
            fold(&kept, &folding)
        })
        .collect()
}

/// Frames either side of the harmonic median filter.
const HARMONIC_HALF_FRAMES: usize = 8;

/// The chroma STFT of `audio` (window about `fft_seconds`) and its bin → (pitch class,
/// weight) folding.
fn chroma_spectrogram(
    audio: &Audio,
    min_hz: f64,
    max_hz: f64,
    fft_seconds: f64,
) -> (Spectrogram, Vec<(usize, usize, f32)>) {
    let rate = audio.sample_rate;
    let x = mono(audio);
    let spec = Spectrogram::new(
        &x,
        rate,
        fft_len_for(rate, fft_seconds),
        hop_samples(rate, ENVELOPE_FRAME_SECONDS),
    );
    let top = (max_hz.min(rate as f64 / 2.0) / spec.bin_hz) as usize;
    let bins: Vec<(usize, usize, f32)> = (1..=top)
        .filter_map(|k| {
            let hz = k as f64 * spec.bin_hz;
            if hz < min_hz {
                return None;
            }
            let midi = 69.0 + 12.0 * (hz / 440.0).log2();
            let nearest = midi.round();
            let d = midi - nearest;
            let w = (std::f64::consts::PI * d).cos().powi(2) as f32;
            Some((k, (nearest as i64).rem_euclid(12) as usize, w))
        })
        .collect();
    // Linear bins fall unevenly on the 12 pitch classes; without this, every broadband sound
    // would share one fixed chroma pattern and two unrelated noises would correlate.
    let mut per_class = [0f32; 12];
    for &(_, pc, w) in &bins {
        per_class[pc] += w;
    }
    let folding = bins
        .into_iter()
        .map(|(k, pc, w)| (k, pc, w / per_class[pc].max(1e-12)))
        .collect();
    (spec, folding)
}

fn fold(magnitudes: &[f32], folding: &[(usize, usize, f32)]) -> [f32; 12] {
    let mut c = [0f32; 12];
    for &(k, pc, w) in folding {
        c[pc] += w * magnitudes[k];
    }
    c
}

/// Each frame scaled so its largest bin is 1; frames with less than [`CHROMA_SILENCE`] of the
/// loudest frame's mass are all 0.
pub(crate) fn normalise_frames(mass: Vec<[f32; 12]>) -> Vec<[f32; 12]> {
    let loudest = mass
        .iter()
        .map(|c| c.iter().sum::<f32>())
        .fold(0f32, f32::max);
    mass.into_iter()
        .map(|c| {
            let total: f32 = c.iter().sum();
            let peak = c.iter().copied().fold(0f32, f32::max);
            if loudest <= 0.0 || total <= CHROMA_SILENCE * loudest || peak <= 0.0 {
                [0f32; 12]
            } else {
                c.map(|v| v / peak)
            }
        })
        .collect()
}

/// The chromagram of `audio`: one 12-bin chroma vector (0 = C) per 40 ms frame, each scaled so
/// its largest bin is 1; silent frames are all 0.
pub fn chromagram(audio: &Audio) -> Vec<[f32; 12]> {
    normalise_frames(chroma_mass(audio))
}

/// Pearson correlation of the chromagrams of `a` and `b`, all 12 bins of all common frames
/// taken together (see the module doc). Octave changes keep it (chroma folds octaves);
/// transpositions by other intervals lower it.
pub fn chroma_correlation(a: &Audio, b: &Audio) -> f64 {
    let (ca, cb) = (chromagram(a), chromagram(b));
    let n = ca.len().min(cb.len());
    let flat = |c: &[[f32; 12]]| c[..n].iter().flatten().copied().collect::<Vec<f32>>();
    pearson(&flat(&ca), &flat(&cb))
}

#[cfg(test)]
mod tests {
    use super::*;

    const RATE: u32 = 48_000;

    /// A deterministic uniform generator in [−1, 1) (SplitMix64), so tests need no RNG crate.
    pub(crate) fn noise(seed: u64, n: usize) -> Vec<f32> {
        let mut s = seed;
        (0..n)
            .map(|_| {
                s = s.wrapping_add(0x9E37_79B9_7F4A_7C15);
                let mut z = s;
                z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
                z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
                z ^= z >> 31;
                ((z >> 11) as f64 / (1u64 << 53) as f64 * 2.0 - 1.0) as f32
            })
            .collect()
    }

    fn audio(x: Vec<f32>, rate: u32) -> Audio {
        Audio::new(rate, vec![x]).unwrap()
    }

    /// Noise under a slow sine envelope `0.55 + 0.45·sin(2π·hz·(t − delay))`.
    fn am_noise(seed: u64, seconds: f64, hz: f64, delay: f64) -> Audio {
        let n = (seconds * RATE as f64) as usize;
        let x = noise(seed, n)
            .into_iter()
            .enumerate()
            .map(|(i, v)| {
                let t = i as f64 / RATE as f64 - delay;
                v * (0.55 + 0.45 * (2.0 * std::f64::consts::PI * hz * t).sin()) as f32
            })
            .collect();
        audio(x, RATE)
    }

    /// A melody of harmonic tones (fundamental and 3 overtones), one note per `note_s`, with a
    /// 10 ms attack and an exponential decay, transposed by `semitones`.
    fn melody(midis: &[i32], semitones: i32, note_s: f64, rate: u32) -> Audio {
        let per = (note_s * rate as f64) as usize;
        let mut x = Vec::with_capacity(per * midis.len());
        for &m in midis {
            let hz = 440.0 * 2f64.powf((m + semitones - 69) as f64 / 12.0);
            for i in 0..per {
                let t = i as f64 / rate as f64;
                let env = (t / 0.01).min(1.0) * (-t * 3.0).exp();
                let s: f64 = (1..=4)
                    .map(|h| (2.0 * std::f64::consts::PI * hz * h as f64 * t).sin() / h as f64)
                    .sum();
                x.push((0.3 * env * s) as f32);
            }
        }
        audio(x, rate)
    }

    const TUNE: [i32; 12] = [60, 64, 67, 62, 65, 69, 71, 59, 62, 57, 64, 66];

    #[test]
    fn pearson_known_values() {
        assert!((pearson(&[1.0, 2.0, 3.0], &[2.0, 4.0, 6.0]) - 1.0).abs() < 1e-12);
        assert!((pearson(&[1.0, 2.0, 3.0], &[3.0, 2.0, 1.0]) + 1.0).abs() < 1e-12);
        // x = (1, 2, 3, 4), y = (1, 3, 2, 4): cov 4, var 5 and 5 → 0.8.
        assert!((pearson(&[1.0, 2.0, 3.0, 4.0], &[1.0, 3.0, 2.0, 4.0]) - 0.8).abs() < 1e-12);
        // Flat or too short: 0. Only the common prefix counts.
        assert_eq!(pearson(&[1.0, 1.0, 1.0], &[1.0, 2.0, 3.0]), 0.0);
        assert_eq!(pearson(&[1.0], &[2.0]), 0.0);
        assert!((pearson(&[1.0, 2.0, 3.0], &[1.0, 2.0, 3.0, -50.0]) - 1.0).abs() < 1e-12);
    }

    #[test]
    fn envelope_frames_are_40_ms_at_any_rate() {
        // 1 s of a constant 0.5 at 48 kHz and at 44.1 kHz: 25 frames of RMS 0.5 each.
        for rate in [48_000, 44_100] {
            let env = rms_envelope(&audio(vec![0.5; rate as usize], rate), 0.04);
            assert_eq!(env.len(), 25);
            assert!(env.iter().all(|v| (v - 0.5).abs() < 1e-6));
        }
        // Stereo is averaged: L = 1, R = −1 cancel.
        let st = Audio::new(RATE, vec![vec![1.0; 4800], vec![-1.0; 4800]]).unwrap();
        assert!(rms_envelope(&st, 0.04).iter().all(|v| *v == 0.0));
    }

    #[test]
    fn envelope_identity_gain_and_independent_noise() {
        let a = am_noise(1, 10.0, 1.0, 0.0);
        assert!((envelope_correlation(&a, &a) - 1.0).abs() < 1e-9);
        let quieter =
            Audio::new(RATE, vec![a.channels[0].iter().map(|v| v * 0.25).collect()]).unwrap();
        assert!((envelope_correlation(&a, &quieter) - 1.0).abs() < 1e-6);
        // Two independent white noises: envelopes are unrelated (250 frames: σ ≈ 0.063).
        let n1 = audio(noise(7, 10 * RATE as usize), RATE);
        let n2 = audio(noise(8, 10 * RATE as usize), RATE);
        let r = envelope_correlation(&n1, &n2);
        assert!(r.abs() < 0.2, "independent noise correlates {r}");
        // Silence has no shape: 0 by convention.
        let silent = audio(vec![0.0; RATE as usize], RATE);
        assert_eq!(envelope_correlation(&silent, &a), 0.0);
    }

    #[test]
    fn envelope_time_shifts() {
        // The envelope is a 1 Hz sine: a shift of a whole period keeps it, half a period
        // inverts it, a quarter makes it orthogonal (independent noise carriers each time).
        let a = am_noise(1, 10.0, 1.0, 0.0);
        let whole = envelope_correlation(&a, &am_noise(2, 10.0, 1.0, 1.0));
        let half = envelope_correlation(&a, &am_noise(3, 10.0, 1.0, 0.5));
        let quarter = envelope_correlation(&a, &am_noise(4, 10.0, 1.0, 0.25));
        assert!(whole > 0.95, "whole period: {whole}");
        assert!(half < -0.95, "half period: {half}");
        assert!(quarter.abs() < 0.1, "quarter period: {quarter}");
        // Same samples on another rate grid give the same envelope shape.
        let slow = Audio::new(
            44_100,
            vec![crate::resample::resample(&a.channels[0], RATE, 44_100)],
        )
        .unwrap();
        assert!(envelope_correlation(&a, &slow) > 0.99);
    }

    #[test]
    fn chroma_of_a_pure_tone_is_its_pitch_class() {
        // A4 (440 Hz) alone: bin 9 (A) holds the peak and nearly all the mass.
        let a = melody(&[69], 0, 1.0, RATE);
        let c = chromagram(&a);
        let mid = c[c.len() / 2];
        assert_eq!(mid[9], 1.0);
        let others: f32 = mid
            .iter()
            .enumerate()
            .filter(|(i, _)| *i != 9)
            .map(|(_, v)| *v)
            .sum();
        // The overtones of A are A, E (3rd harmonic) and A: E carries some mass, others ~0.
        assert!(mid[4] > 0.05 && others - mid[4] < 0.1, "{mid:?}");
        // Silence gives zero frames.
        let silent = audio(vec![0.0; RATE as usize], RATE);
        assert!(
            chromagram(&silent)
                .iter()
                .all(|c| c.iter().all(|v| *v == 0.0))
        );
    }

    #[test]
    fn chroma_identity_octave_and_transpositions() {
        let a = melody(&TUNE, 0, 0.5, RATE);
        assert!((chroma_correlation(&a, &a) - 1.0).abs() < 1e-9);
        // An octave up keeps every pitch class.
        let octave = chroma_correlation(&a, &melody(&TUNE, 12, 0.5, RATE));
        assert!(octave > 0.95, "octave: {octave}");
        // A semitone or a tritone away shares little; the envelope does not notice at all.
        for k in [1, 6] {
            let b = melody(&TUNE, k, 0.5, RATE);
            let r = chroma_correlation(&a, &b);
            assert!(r < 0.3, "transposed by {k}: chroma {r}");
            let e = envelope_correlation(&a, &b);
            assert!(e > 0.9, "transposed by {k}: envelope {e}");
        }
        // The same tune at 44.1 kHz has the same chroma.
        let other_rate = chroma_correlation(&a, &melody(&TUNE, 0, 0.5, 44_100));
        assert!(other_rate > 0.95, "44.1 kHz: {other_rate}");
    }

    #[test]
    fn chroma_time_shift_and_noise() {
        // Shifting the tune by one note (it does not repeat) breaks the alignment.
        let a = melody(&TUNE, 0, 0.5, RATE);
        let mut rotated = TUNE;
        rotated.rotate_left(1);
        let r = chroma_correlation(&a, &melody(&rotated, 0, 0.5, RATE));
        assert!(r < 0.3, "shifted by a note: {r}");
        // Independent noises: no harmonic relation.
        let n1 = audio(noise(11, 6 * RATE as usize), RATE);
        let n2 = audio(noise(12, 6 * RATE as usize), RATE);
        let r = chroma_correlation(&n1, &n2);
        assert!(r.abs() < 0.15, "noise: {r}");
    }
}
