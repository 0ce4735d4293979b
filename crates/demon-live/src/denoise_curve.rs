//! The denoise curve: how much of its source a re-generation keeps as denoise rises (issue 10,
//! item 4: "how much to change the source" must be a gradual gesture).
//!
//! For each denoise value the source is re-generated through the ordinary offline render (the
//! same ring the live session uses) and the result is compared with the source, as the backend
//! decodes its latent, by two measures that a listener hears as "the same groove" and "the same
//! harmony" (the codec's own round trip, source audio against that decode, is reported beside):
//!
//! - **envelope correlation**: Pearson correlation of the frame RMS envelopes (40 ms frames of the
//!   mono mix), which follows the rhythm;
//! - **chroma correlation**: Pearson correlation of the 12-bin chroma over time (a Hann-windowed
//!   4096-point spectrum per frame, 55 Hz–5 kHz folded onto pitch classes, each frame normalised
//!   to unit sum), which follows the harmony.
//!
//! Both compare audio only, so any backend can be measured, and both are 1 for identical audio.

use candle_core::Tensor;
use demon_engine::{Audio, BackendSet};
use rustfft::{FftPlanner, num_complex::Complex};
use serde::Serialize;

use crate::error::{SessionError, SessionResult};
use crate::facts::BackendFacts;
use crate::render::{RenderSpec, render};

/// Analysis frames per second (the latent rate of both backends).
pub const FRAMES_PER_SECOND: f64 = 25.0;
/// FFT size of the chroma analysis at 48 kHz (scaled with the sample rate).
const CHROMA_FFT_48K: usize = 4096;
/// Pitch range folded into the chroma.
const CHROMA_LO_HZ: f64 = 55.0;
const CHROMA_HI_HZ: f64 = 5000.0;

/// The denoise values of the published curve: 0, 0.1, …, 1.
pub const CURVE_DENOISES: [f32; 11] = [0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0];

/// Pearson correlation of two equally long series; 0 when either is constant.
pub fn pearson(a: &[f64], b: &[f64]) -> f64 {
    let n = a.len().min(b.len());
    if n < 2 {
        return 0.0;
    }
    let (a, b) = (&a[..n], &b[..n]);
    let ma = a.iter().sum::<f64>() / n as f64;
    let mb = b.iter().sum::<f64>() / n as f64;
    let (mut sab, mut saa, mut sbb) = (0.0, 0.0, 0.0);
    for (x, y) in a.iter().zip(b) {
        sab += (x - ma) * (y - mb);
        saa += (x - ma) * (x - ma);
        sbb += (y - mb) * (y - mb);
    }
    if saa <= 1e-300 || sbb <= 1e-300 {
        return 0.0;
    }
    sab / (saa * sbb).sqrt()
}

fn mono(audio: &Audio) -> Vec<f32> {
    let k = audio.channels.len().max(1) as f32;
    (0..audio.frames())
        .map(|i| audio.channels.iter().map(|c| c[i]).sum::<f32>() / k)
        .collect()
}

fn hop_samples(audio: &Audio) -> usize {
    ((audio.sample_rate as f64 / FRAMES_PER_SECOND).round() as usize).max(1)
}

/// RMS of the mono mix per 40 ms frame.
pub fn rms_envelope(audio: &Audio) -> Vec<f64> {
    let hop = hop_samples(audio);
    mono(audio)
        .chunks_exact(hop)
        .map(|c| (c.iter().map(|x| (*x as f64).powi(2)).sum::<f64>() / hop as f64).sqrt())
        .collect()
}

/// `[frames][12]` chroma, each frame normalised to unit sum (silent frames stay zero).
pub fn chroma(audio: &Audio) -> Vec<[f64; 12]> {
    let hop = hop_samples(audio);
    let x = mono(audio);
    let frames = x.len() / hop;
    let fft_len = (CHROMA_FFT_48K as f64 * audio.sample_rate as f64 / 48_000.0)
        .round()
        .max(256.0) as usize;
    let fft = FftPlanner::<f32>::new().plan_fft_forward(fft_len);
    let window: Vec<f32> = (0..fft_len)
        .map(|i| 0.5 - 0.5 * (2.0 * std::f32::consts::PI * i as f32 / fft_len as f32).cos())
        .collect();
    let bin_hz = audio.sample_rate as f64 / fft_len as f64;
    let bins: Vec<(usize, usize)> = (1..fft_len / 2)
        .filter_map(|k| {
            let hz = k as f64 * bin_hz;
            (CHROMA_LO_HZ..=CHROMA_HI_HZ).contains(&hz).then(|| {
                let midi = 69.0 + 12.0 * (hz / 440.0).log2();
                (k, (midi.round() as i64).rem_euclid(12) as usize)
            })
        })
        .collect();
    let mut buf = vec![Complex::new(0f32, 0f32); fft_len];
    (0..frames)
        .map(|f| {
            let center = (f * hop + hop / 2) as i64;
            for (i, b) in buf.iter_mut().enumerate() {
                let j = center - (fft_len / 2) as i64 + i as i64;
                let v = if j >= 0 && (j as usize) < x.len() {
                    x[j as usize]
                } else {
                    0.0
                };
                *b = Complex::new(v * window[i], 0.0);
            }
            fft.process(&mut buf);
            let mut c = [0f64; 12];
            for &(k, pc) in &bins {
                c[pc] += buf[k].norm_sqr() as f64;
            }
            let total: f64 = c.iter().sum();
            if total > 1e-12 {
                c.iter_mut().for_each(|v| *v /= total);
            } else {
                c = [0.0; 12];
            }
            c
        })
        .collect()
}

/// Correlation of the frame RMS envelopes of `a` and `b` (same sample rate; the shorter length).
pub fn envelope_correlation(a: &Audio, b: &Audio) -> f64 {
    pearson(&rms_envelope(a), &rms_envelope(b))
}

/// Correlation of the 12-bin chroma of `a` and `b` over time (the shorter length).
pub fn chroma_correlation(a: &Audio, b: &Audio) -> f64 {
    let (ca, cb) = (chroma(a), chroma(b));
    let n = ca.len().min(cb.len());
    let flat = |c: &[[f64; 12]]| c[..n].iter().flatten().copied().collect::<Vec<f64>>();
    pearson(&flat(&ca), &flat(&cb))
}

/// One point of the curve: the mean over the takes (seeds) rendered at this denoise.
#[derive(Clone, Debug, Serialize)]
pub struct CurvePoint {
    pub denoise: f32,
    pub envelope_correlation: f64,
    pub chroma_correlation: f64,
}

/// The curve of one source.
#[derive(Clone, Debug, Serialize)]
pub struct DenoiseCurve {
    pub source: String,
    /// Correlations of the backend's own decode of the source latent with the source audio
    /// (the codec's round trip; 1 for a latent the backend made itself). The curve compares
    /// with that decode, the source as the model hears it.
    pub codec_envelope_correlation: f64,
    pub codec_chroma_correlation: f64,
    pub points: Vec<CurvePoint>,
}

/// Slack for "never rises": one take's correlation with its source moves by about ±0.01 with
/// the generation itself (the render of "funk" rises 0.010 from denoise 0.6 to 0.7 since the
/// source's measured tempo conditions it), which is noise, not a denoise that stops being
/// gradual.
const MONOTONE_SLACK: f64 = 0.02;

impl DenoiseCurve {
    /// True when neither measure rises from one denoise value to the next.
    pub fn is_monotone(&self) -> bool {
        self.points.windows(2).all(|w| {
            w[1].envelope_correlation <= w[0].envelope_correlation + MONOTONE_SLACK
                && w[1].chroma_correlation <= w[0].chroma_correlation + MONOTONE_SLACK
        })
    }

    /// The point measured at `denoise`, if any.
    pub fn at(&self, denoise: f32) -> Option<&CurvePoint> {
        self.points
            .iter()
            .find(|p| (p.denoise - denoise).abs() < 1e-6)
    }
}

/// A source to measure: its latent `[1, T, C]` and the audio it came from.
pub struct CurveSource {
    pub name: String,
    pub latent: Tensor,
    pub audio: Audio,
}

/// The render settings of every re-generation (`demon render`'s defaults otherwise): a
/// serialisable description, turned into a [`RenderSpec`] per source and point.
#[derive(Clone, Debug, Serialize)]
pub struct CurveRender {
    pub prompt: demon_engine::Prompt,
    pub steps: usize,
    pub shift: f32,
    /// First seed; takes use `seed..seed + takes − 1`.
    pub seed: u64,
    pub depth: usize,
    pub solver: demon_engine::SolverKind,
    pub takes: usize,
}

impl Default for CurveRender {
    fn default() -> Self {
        Self {
            prompt: demon_engine::Prompt::tags("house"),
            steps: 8,
            shift: 3.0,
            seed: 42,
            depth: 4,
            solver: demon_engine::SolverKind::Ode,
            takes: 1,
        }
    }
}

impl CurveRender {
    /// The render of `frames` latent frames with these settings, from `source` (name, latent
    /// `[1, T, C]`) when given; the denoise is the caller's (1 without a source).
    pub fn spec(
        &self,
        backend: &mut BackendSet,
        frames: usize,
        source: Option<(&str, &Tensor)>,
    ) -> SessionResult<RenderSpec> {
        let facts = BackendFacts::of(backend);
        let mut spec = RenderSpec::new(self.prompt.clone(), frames);
        spec.takes = self.takes;
        let c = &mut spec.controls;
        c.set_knob("steps", self.steps as f64, &facts)?;
        c.set_knob("shift", self.shift as f64, &facts)?;
        c.set_knob("seed", self.seed as f64, &facts)?;
        c.set_knob("depth", self.depth as f64, &facts)?;
        c.solver = self.solver;
        c.set_source(source.map(|(name, latent)| (name.to_string(), latent.clone())));
        Ok(spec)
    }
}

/// How the curves are measured.
#[derive(Clone, Debug, Serialize)]
pub struct CurveConfig {
    /// Prompt, steps, shift, solver, depth, first seed and takes of every re-generation (its
    /// frames and denoise are set per source and point).
    pub spec: CurveRender,
    /// Source length in latent frames.
    pub frames: usize,
    pub denoises: Vec<f32>,
}

impl Default for CurveConfig {
    /// The published curve: `demon render`'s defaults ("house", 8 steps, shift 3, ODE) over
    /// 10 s sources, three seeds per point.
    fn default() -> Self {
        Self {
            spec: CurveRender {
                takes: 3,
                ..Default::default()
            },
            frames: 250,
            denoises: CURVE_DENOISES.to_vec(),
        }
    }
}

/// The report of `demon bench --only denoise_curve`.
#[derive(Clone, Debug, Serialize)]
pub struct CurveReport {
    pub config: CurveConfig,
    pub curves: Vec<DenoiseCurve>,
}

/// The standard non-library source: a render of another prompt and seed from noise, re-encoded
/// from its audio (so the latent is the codec's reading of that audio, not the model's own).
pub fn rendered_source(
    backend: &mut BackendSet,
    prompt: &str,
    seed: u64,
    frames: usize,
) -> SessionResult<CurveSource> {
    let settings = CurveRender {
        prompt: demon_engine::Prompt::tags(prompt),
        seed,
        takes: 1,
        ..Default::default()
    };
    let spec = settings.spec(backend, frames, None)?;
    let audio = render(backend, &spec, &mut |_, _| {})?
        .into_iter()
        .next()
        .ok_or_else(|| SessionError::bad_value("render", "the render produced no take"))?
        .audio;
    let latent = backend.codec.encode(&audio)?;
    Ok(CurveSource {
        name: format!("render of \"{prompt}\" seed {seed}, re-encoded"),
        latent,
        audio,
    })
}

/// A recording (any rate, already at the codec's rate) cut to `frames` and encoded.
pub fn recorded_source(
    backend: &mut BackendSet,
    name: &str,
    audio: &Audio,
    frames: usize,
) -> SessionResult<CurveSource> {
    let samples = frames * backend.codec.hop_samples();
    if audio.sample_rate != backend.codec.sample_rate() || audio.frames() < samples {
        return Err(SessionError::bad_source(
            name,
            format!(
                "must be at least {samples} samples at {} Hz (got {} at {} Hz)",
                backend.codec.sample_rate(),
                audio.frames(),
                audio.sample_rate
            ),
        ));
    }
    let audio = Audio::new(
        audio.sample_rate,
        audio
            .channels
            .iter()
            .map(|c| c[..samples].to_vec())
            .collect(),
    )?;
    let latent = backend.codec.encode(&audio)?;
    Ok(CurveSource {
        name: name.to_string(),
        latent,
        audio,
    })
}

/// A latent the backend made itself (a library song): its audio is its decode.
pub fn latent_source(
    backend: &mut BackendSet,
    name: &str,
    latent: Tensor,
) -> SessionResult<CurveSource> {
    let audio = backend.codec.decode(&latent, 0)?;
    Ok(CurveSource {
        name: name.to_string(),
        latent,
        audio,
    })
}

/// Re-generate `source` at every denoise of `cfg` and compare each take's audio with the
/// backend's decode of the source latent (the denoise-0 output).
pub fn denoise_curve(
    backend: &mut BackendSet,
    source: &CurveSource,
    cfg: &CurveConfig,
) -> SessionResult<DenoiseCurve> {
    let frames = source.latent.dim(1)?;
    let heard = backend.codec.decode(&source.latent, 0)?;
    // The source is analysed once here (as `render::plan` would for every denoise value).
    let analysis = crate::analysis::SourceAnalysis::of(&heard);
    let mut points = Vec::with_capacity(cfg.denoises.len());
    for &d in &cfg.denoises {
        let mut spec = cfg
            .spec
            .spec(backend, frames, Some((&source.name, &source.latent)))?;
        spec.controls.set_source_analysis(Some(analysis.clone()));
        spec.controls
            .set_knob("denoise", d as f64, &BackendFacts::of(backend))?;
        let takes = render(backend, &spec, &mut |_, _| {})?;
        let k = takes.len().max(1) as f64;
        let (mut env, mut chr) = (0.0, 0.0);
        for take in &takes {
            env += envelope_correlation(&heard, &take.audio);
            chr += chroma_correlation(&heard, &take.audio);
        }
        points.push(CurvePoint {
            denoise: d,
            envelope_correlation: env / k,
            chroma_correlation: chr / k,
        });
    }
    Ok(DenoiseCurve {
        source: source.name.clone(),
        codec_envelope_correlation: envelope_correlation(&source.audio, &heard),
        codec_chroma_correlation: chroma_correlation(&source.audio, &heard),
        points,
    })
}

/// Every source's curve.
pub fn run(
    backend: &mut BackendSet,
    sources: &[CurveSource],
    cfg: &CurveConfig,
    log: &mut dyn FnMut(&str),
) -> SessionResult<CurveReport> {
    let curves = sources
        .iter()
        .map(|s| {
            log(&format!("denoise curve: {}", s.name));
            denoise_curve(backend, s, cfg)
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(CurveReport {
        config: cfg.clone(),
        curves,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tone(hz: f64, seconds: f64, am_hz: f64) -> Audio {
        let n = (48_000.0 * seconds) as usize;
        let x: Vec<f32> = (0..n)
            .map(|i| {
                let t = i as f64 / 48_000.0;
                let env = 0.5 + 0.5 * (2.0 * std::f64::consts::PI * am_hz * t).sin();
                (env * (2.0 * std::f64::consts::PI * hz * t).sin() * 0.5) as f32
            })
            .collect();
        Audio::new(48_000, vec![x.clone(), x]).unwrap()
    }

    #[test]
    fn identical_audio_correlates_fully_and_measures_tell_rhythm_from_pitch() {
        let a = tone(440.0, 4.0, 2.0);
        assert!((envelope_correlation(&a, &a) - 1.0).abs() < 1e-9);
        assert!((chroma_correlation(&a, &a) - 1.0).abs() < 1e-9);
        // Same pitch class an octave up, same rhythm: both measures stay high.
        let octave = tone(880.0, 4.0, 2.0);
        assert!(envelope_correlation(&a, &octave) > 0.99);
        assert!(chroma_correlation(&a, &octave) > 0.9);
        // Another pitch class (D#), same rhythm: the envelope agrees, the chroma does not.
        let tritone = tone(622.25, 4.0, 2.0);
        assert!(envelope_correlation(&a, &tritone) > 0.99);
        assert!(chroma_correlation(&a, &tritone) < 0.2);
        // Same pitch, another rhythm: the chroma agrees, the envelope does not.
        let other = tone(440.0, 4.0, 3.1);
        assert!(envelope_correlation(&a, &other).abs() < 0.3);
        assert!(chroma_correlation(&a, &other) > 0.9);
    }

    #[test]
    fn pearson_handles_constants_and_lengths() {
        assert_eq!(pearson(&[1.0, 1.0, 1.0], &[1.0, 2.0, 3.0]), 0.0);
        assert!((pearson(&[1.0, 2.0, 3.0, 9.0], &[2.0, 4.0, 6.0]) - 1.0).abs() < 1e-12);
        assert!((pearson(&[1.0, 2.0, 3.0], &[3.0, 2.0, 1.0]) + 1.0).abs() < 1e-12);
    }
}
