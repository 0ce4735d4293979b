//! The sketch encoder: audio → musical-parameter latent, by analysis.
//!
//! An approximate inverse of the synthesizer that works on any music: short-time spectra give
//! chroma in three registers (bass, chords, lead), band-wise spectral flux gives drum and note
//! onsets, band energies give levels and brightness, the side/mid ratio gives width. It is a
//! sketch of the input, not a reconstruction: re-encoding a render does not return its latent
//! exactly (renders written by `demon` carry their exact latent beside the audio for that).

use rustfft::{FftPlanner, num_complex::Complex};

use crate::layout::*;

const FFT: usize = 4096;

fn hz_to_pc(hz: f64) -> usize {
    let midi = 69.0 + 12.0 * (hz / 440.0).log2();
    (midi.round() as i64).rem_euclid(12) as usize
}

/// Analyse 48 kHz audio (`channels` planar) into `[T][CHANNELS]`, T = samples / HOP.
#[allow(clippy::needless_range_loop)] // parallel arrays indexed together
pub fn analyze(channels: &[Vec<f32>]) -> Vec<f32> {
    let samples = channels.first().map_or(0, |c| c.len());
    let frames = samples / HOP;
    let mut latent = vec![-1f32; frames * CHANNELS];
    if frames == 0 {
        return latent;
    }
    let mono: Vec<f32> = (0..samples)
        .map(|i| channels.iter().map(|c| c[i]).sum::<f32>() / channels.len() as f32)
        .collect();
    let side: Vec<f32> = if channels.len() >= 2 {
        (0..samples)
            .map(|i| 0.5 * (channels[0][i] - channels[1][i]))
            .collect()
    } else {
        vec![0.0; samples]
    };
    let window: Vec<f32> = (0..FFT)
        .map(|i| 0.5 - 0.5 * (2.0 * std::f32::consts::PI * i as f32 / FFT as f32).cos())
        .collect();
    let fft = FftPlanner::<f32>::new().plan_fft_forward(FFT);
    let bin_hz = SAMPLE_RATE as f64 / FFT as f64;
    let bins = FFT / 2;
    let band =
        |lo: f64, hi: f64| ((lo / bin_hz) as usize).max(1)..((hi / bin_hz) as usize).min(bins);
    let pcs: Vec<usize> = (0..bins)
        .map(|k| hz_to_pc((k.max(1)) as f64 * bin_hz))
        .collect();

    let mut mags = vec![vec![0f32; bins]; frames];
    let mut buf = vec![Complex::new(0f32, 0f32); FFT];
    let mut rms = vec![0f32; frames];
    let mut side_rms = vec![0f32; frames];
    for f in 0..frames {
        let center = f * HOP + HOP / 2;
        for (i, b) in buf.iter_mut().enumerate() {
            let j = center as i64 - (FFT / 2) as i64 + i as i64;
            let x = if j >= 0 && (j as usize) < samples {
                mono[j as usize]
            } else {
                0.0
            };
            *b = Complex::new(x * window[i], 0.0);
        }
        fft.process(&mut buf);
        for k in 0..bins {
            mags[f][k] = buf[k].norm();
        }
        let span = f * HOP..(f + 1) * HOP;
        rms[f] = (mono[span.clone()].iter().map(|x| x * x).sum::<f32>() / HOP as f32).sqrt();
        side_rms[f] = (side[span].iter().map(|x| x * x).sum::<f32>() / HOP as f32).sqrt();
    }
    let peak_rms = rms.iter().cloned().fold(1e-6f32, f32::max);

    let chroma = |m: &[f32], r: std::ops::Range<usize>| -> [f32; 12] {
        let mut c = [0f32; 12];
        for k in r {
            c[pcs[k]] += m[k] * m[k];
        }
        c
    };
    let (bass_band, chord_band, lead_band) =
        (band(30.0, 220.0), band(180.0, 1100.0), band(500.0, 2600.0));
    let flux = |r: std::ops::Range<usize>| -> Vec<f32> {
        (0..frames)
            .map(|f| {
                if f == 0 {
                    return 0.0;
                }
                r.clone()
                    .map(|k| (mags[f][k] - mags[f - 1][k]).max(0.0))
                    .sum::<f32>()
            })
            .collect()
    };
    let onsets = |fl: &[f32], sensitivity: f32| -> Vec<f32> {
        let mean = fl.iter().sum::<f32>() / fl.len().max(1) as f32 + 1e-9;
        (0..fl.len())
            .map(|f| {
                let local_max =
                    (f == 0 || fl[f] >= fl[f - 1]) && (f + 1 >= fl.len() || fl[f] > fl[f + 1]);
                let strength = fl[f] / (mean * sensitivity);
                if local_max && strength > 1.0 {
                    (strength - 1.0).clamp(0.4, 1.0)
                } else {
                    0.0
                }
            })
            .collect()
    };
    let kick = onsets(&flux(band(35.0, 120.0)), 2.5);
    let snare = onsets(&flux(band(1500.0, 5000.0)), 2.5);
    let hat = onsets(&flux(band(7000.0, 16000.0)), 2.0);
    let bass_on = onsets(&flux(bass_band.clone()), 2.0);
    let lead_on = onsets(&flux(lead_band.clone()), 2.2);

    let mut set = |f: usize, ch: usize, v: f32| latent[f * CHANNELS + ch] = v;
    for f in 0..frames {
        let m = &mags[f];
        let loud = rms[f] / peak_rms;
        let cc = chroma(m, chord_band.clone());
        let cmax = cc.iter().cloned().fold(1e-12f32, f32::max);
        for pc in 0..12 {
            set(
                f,
                CHORD + pc,
                if loud > 0.02 {
                    from_unit(((cc[pc] / cmax - 0.25) / 0.5).clamp(0.0, 1.0))
                } else {
                    -1.0
                },
            );
        }
        let bc = chroma(m, bass_band.clone());
        let (bpc, bmax) = bc
            .iter()
            .enumerate()
            .fold((0, 0f32), |a, (i, v)| if *v > a.1 { (i, *v) } else { a });
        let btotal = bc.iter().sum::<f32>() + 1e-12;
        let bass_present = bmax / btotal > 0.25 && loud > 0.05;
        for pc in 0..12 {
            set(f, BASS_PC + pc, flag(bass_present && pc == bpc));
        }
        let lc = chroma(m, lead_band.clone());
        let (lpc, lmax) = lc
            .iter()
            .enumerate()
            .fold((0, 0f32), |a, (i, v)| if *v > a.1 { (i, *v) } else { a });
        let ltotal = lc.iter().sum::<f32>() + 1e-12;
        let lead_present = lmax / ltotal > 0.3 && loud > 0.05;
        for pc in 0..12 {
            set(f, LEAD_PC + pc, flag(lead_present && pc == lpc));
        }
        set(f, LEAD_OCTAVE, 0.0);
        for (voice, s) in [
            (KICK, kick[f]),
            (SNARE, snare[f]),
            (HAT, hat[f]),
            (BASS_ON, bass_on[f]),
            (LEAD_ON, lead_on[f]),
        ] {
            set(f, voice.onset, if s > 0.0 { from_unit(s) } else { -1.0 });
            set(f, voice.phase, 0.0);
        }
        let energy = |r: std::ops::Range<usize>| r.map(|k| m[k] * m[k]).sum::<f32>();
        let total = energy(1..bins) + 1e-12;
        let share = |r: std::ops::Range<usize>| (energy(r) / total).sqrt();
        set(
            f,
            PAD_LEVEL,
            from_unit((share(chord_band.clone()) * loud * 1.5).min(1.0)),
        );
        set(
            f,
            BASS_LEVEL,
            from_unit((share(bass_band.clone()) * loud * 1.5).min(1.0)),
        );
        set(
            f,
            LEAD_LEVEL,
            from_unit((share(lead_band.clone()) * loud * 1.2).min(1.0)),
        );
        set(
            f,
            DRUM_LEVEL,
            from_unit((share(band(3000.0, 16000.0)) * 2.0 + 0.3).min(1.0)),
        );
        let centroid = (1..bins).map(|k| k as f32 * m[k]).sum::<f32>()
            / (1..bins).map(|k| m[k]).sum::<f32>().max(1e-9);
        let bright = ((centroid * bin_hz as f32).log2() - 9.0) / 4.0;
        set(f, PAD_BRIGHT, from_unit(bright.clamp(0.0, 1.0)));
        set(f, BASS_BRIGHT, from_unit((bright * 0.8).clamp(0.0, 1.0)));
        set(f, LEAD_SHAPE, 0.0);
        set(f, STAB_LEVEL, from_unit(0.3));
        set(f, REVERB, from_unit(0.35));
        set(
            f,
            WIDTH,
            from_unit((side_rms[f] / (rms[f] + 1e-6) * 2.0).clamp(0.0, 1.0)),
        );
        set(f, PUMP, -1.0);
    }
    latent
}
