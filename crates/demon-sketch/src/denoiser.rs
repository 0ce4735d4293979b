//! `SketchDenoiser`: the exact (closed-form) optimal denoiser over the composer's library.
//!
//! Under flow matching, `x_t = t·ε + (1 − t)·x₀`. If x₀ is drawn from a finite library
//! {y_j} with prior π_j, the posterior is `p(j | x_t) ∝ π_j · N(x_t; (1 − t)·y_j, t²·I)` and the
//! optimal prediction is `x̂₀ = Σ_j p(j | x_t)·y_j`, `v = (x_t − x̂₀)/t`. The sketch evaluates
//! this per local window of frames: frame f's posterior uses the squared distances of the
//! frames within ±`window` of f only, so different bars can come from different songs (a patch
//! mixture rather than whole-song memorisation). Priors come from the prompt (style
//! probabilities, mood); the context adds a structure affinity `β·⟨context, y_j⟩`.
//!
//! Every row of a batch is computed on its own, on the CPU, in a fixed order: results never
//! depend on the batch.

use std::collections::HashMap;
use std::sync::Arc;

use candle_core::{Device, Tensor};
use demon_engine::{DenoiseBatch, Denoiser, EngineError, Result};

use crate::composer::{Song, SongSpec, compose};
use crate::conditioner::SketchCondition;
use crate::layout::CHANNELS;
use crate::style::Style;

/// Songs per style in the library.
pub const SONGS_PER_STYLE: usize = 6;
/// Half-width of the posterior window in frames (±0.64 s).
pub const WINDOW: usize = 16;
/// Weight of the structure affinity.
const STRUCTURE_BETA: f64 = 0.004;
/// Weight of the mood preferences in the prior (nats per unit).
const MOOD_KAPPA: f64 = 2.5;

type LibraryKey = (u32, u8, bool, usize);

/// The exact denoiser of the sketch library.
pub struct SketchDenoiser {
    device: Device,
    library: HashMap<LibraryKey, Arc<Vec<Song>>>,
    /// Style adapters: extra prior weight per style, whatever the prompt says (the sketch's
    /// analog of LoRA: a change to the model itself, seen by every slot at its next step).
    adapters: [f32; crate::style::STYLE_COUNT],
    /// Distinguishes libraries: two denoisers with different library seeds make different music.
    pub library_seed: u64,
}

impl SketchDenoiser {
    pub fn new(device: Device) -> Self {
        Self {
            device,
            library: HashMap::new(),
            adapters: [0.0; crate::style::STYLE_COUNT],
            library_seed: 0x5ce7c4,
        }
    }

    /// The library for a tempo, key and length (composed once, then cached).
    pub fn library(&mut self, bpm: f32, tonic: u8, minor: bool, frames: usize) -> Arc<Vec<Song>> {
        let key = ((bpm * 100.0).round() as u32, tonic, minor, frames);
        if let Some(l) = self.library.get(&key) {
            return l.clone();
        }
        let library_seed = self.library_seed;
        let songs: Vec<Song> = Style::ALL
            .iter()
            .flat_map(|&style| {
                (0..SONGS_PER_STYLE).map(move |v| SongSpec {
                    style,
                    bpm,
                    tonic,
                    minor,
                    seed: library_seed
                        .wrapping_mul(31)
                        .wrapping_add((style.index() * 100 + v) as u64),
                    frames,
                })
            })
            .map(compose)
            .collect();
        if self.library.len() > 16 {
            self.library.clear();
        }
        let songs = Arc::new(songs);
        self.library.insert(key, songs.clone());
        songs
    }

    /// `x̂₀` for one row: `x` and `context` are `[T][CHANNELS]`.
    pub fn posterior_mean(
        &mut self,
        x: &[f32],
        t: f32,
        cond: &SketchCondition,
        context: Option<&[f32]>,
    ) -> Vec<f32> {
        let frames = x.len() / CHANNELS;
        let songs = self.library(cond.bpm, cond.tonic, cond.minor, frames);
        let a = (1.0 - t) as f64;
        let inv = 1.0 / (2.0 * (t as f64).max(1e-4).powi(2));
        // Log prior per song; songs of styles the prompt excludes are skipped entirely.
        let priors: Vec<Option<f64>> = songs
            .iter()
            .map(|s| {
                let i = s.spec.style.index();
                let w = cond.style_weights[i] as f64 + self.adapters[i] as f64;
                if w <= 0.0 {
                    return None;
                }
                let mood = cond.brightness as f64 * (s.brightness as f64 - 0.5)
                    + cond.energy as f64 * (s.energy as f64 - 0.5);
                Some((w / SONGS_PER_STYLE as f64).ln() + MOOD_KAPPA * mood)
            })
            .collect();
        let live: Vec<usize> = (0..songs.len()).filter(|&j| priors[j].is_some()).collect();
        // Windowed log-likelihoods via prefix sums of per-frame scores.
        let mut logits = vec![0f64; live.len() * frames];
        let mut prefix = vec![0f64; frames + 1];
        for (k, &j) in live.iter().enumerate() {
            let y = &songs[j].latent;
            for f in 0..frames {
                let row = f * CHANNELS;
                let mut d = 0f32;
                let mut h = 0f32;
                for c in 0..CHANNELS {
                    let e = x[row + c] - a as f32 * y[row + c];
                    d += e * e;
                }
                if let Some(ctx) = context {
                    for c in 0..CHANNELS {
                        h += ctx[row + c] * y[row + c];
                    }
                }
                prefix[f + 1] = prefix[f] - d as f64 * inv + STRUCTURE_BETA * h as f64;
            }
            let prior = priors[j].unwrap_or(f64::NEG_INFINITY);
            for f in 0..frames {
                let lo = f.saturating_sub(WINDOW);
                let hi = (f + WINDOW + 1).min(frames);
                logits[k * frames + f] = prior + prefix[hi] - prefix[lo];
            }
        }
        let mut x0 = vec![0f32; x.len()];
        let mut w = vec![0f64; live.len()];
        for f in 0..frames {
            let m = (0..live.len())
                .map(|k| logits[k * frames + f])
                .fold(f64::NEG_INFINITY, f64::max);
            let mut z = 0f64;
            for k in 0..live.len() {
                w[k] = (logits[k * frames + f] - m).exp();
                z += w[k];
            }
            let row = f * CHANNELS;
            for (k, &j) in live.iter().enumerate() {
                let wk = (w[k] / z) as f32;
                if wk < 1e-7 {
                    continue;
                }
                let y = &songs[j].latent[row..row + CHANNELS];
                for c in 0..CHANNELS {
                    x0[row + c] += wk * y[c];
                }
            }
        }
        x0
    }
}

impl Default for SketchDenoiser {
    fn default() -> Self {
        Self::new(Device::Cpu)
    }
}

impl Denoiser for SketchDenoiser {
    fn latent_channels(&self) -> usize {
        CHANNELS
    }
    fn context_channels(&self) -> usize {
        CHANNELS
    }
    fn device(&self) -> &Device {
        &self.device
    }

    fn velocity(&mut self, batch: &DenoiseBatch<'_>) -> Result<Tensor> {
        let (b, frames, c) = batch.x.dims3()?;
        if c != CHANNELS
            || batch.t.len() != b
            || batch.conditions.len() != b
            || batch.contexts.len() != b
        {
            return Err(EngineError::shape(
                "sketch batch",
                format!("[B, T, {CHANNELS}] with B rows of t/conditions/contexts"),
                format!("{:?}", batch.x.dims()),
            ));
        }
        let xs: Vec<f32> = batch.x.to_device(&Device::Cpu)?.flatten_all()?.to_vec1()?;
        let mut out = Vec::with_capacity(xs.len());
        for i in 0..b {
            let x = &xs[i * frames * CHANNELS..(i + 1) * frames * CHANNELS];
            let states: Vec<f32> = batch.conditions[i]
                .states
                .to_device(&Device::Cpu)?
                .flatten_all()?
                .to_vec1()?;
            let cond = SketchCondition::from_states(&states)?;
            let ctx: Vec<f32> = batch.contexts[i]
                .to_device(&Device::Cpu)?
                .flatten_all()?
                .to_vec1()?;
            let ctx = (ctx.len() == x.len() && ctx.iter().any(|v| *v != 0.0)).then_some(ctx);
            let t = batch.t[i].max(1e-4);
            let x0 = self.posterior_mean(x, t, &cond, ctx.as_deref());
            out.extend(x.iter().zip(&x0).map(|(xv, x0v)| (xv - x0v) / t));
        }
        Ok(Tensor::from_vec(out, (b, frames, CHANNELS), &self.device)?)
    }

    fn name(&self) -> &str {
        "sketch"
    }

    fn adapters(&mut self) -> Option<&mut dyn demon_engine::Adapters> {
        Some(self)
    }
}

/// Adapter ids are the style names with `_` for spaces (`house`, `hip_hop`, `drum_and_bass`).
fn adapter_id(style: Style) -> String {
    style.name().replace(' ', "_")
}

impl demon_engine::Adapters for SketchDenoiser {
    fn list(&self) -> Vec<demon_engine::AdapterInfo> {
        Style::ALL
            .iter()
            .map(|s| demon_engine::AdapterInfo {
                id: adapter_id(*s),
                strength: self.adapters[s.index()],
                rank: 0,
                targets: SONGS_PER_STYLE,
            })
            .collect()
    }

    fn set_strength(&mut self, id: &str, strength: f32) -> Result<()> {
        if !(strength.is_finite() && (0.0..=2.0).contains(&strength)) {
            return Err(EngineError::param(
                "lora",
                format!("strength {strength} is outside [0, 2]"),
            ));
        }
        let style = Style::ALL
            .iter()
            .find(|s| adapter_id(**s) == id)
            .ok_or_else(|| EngineError::param("lora", format!("no sketch adapter `{id}` (house, techno, ambient, hip_hop, funk, drum_and_bass)")))?;
        self.adapters[style.index()] = strength;
        Ok(())
    }
}
