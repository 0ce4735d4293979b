//! `SketchDenoiser`: the exact (closed-form) optimal denoiser of the sketch's data model.
//!
//! Under flow matching, `x_t = t·ε + a·x₀` with `a = 1 − t`, and the optimal prediction is the
//! posterior mean `x̂₀ = E[x₀ | x_t]`, `v = (x_t − x̂₀)/t`. The data model has two forms:
//!
//! - **Library model** (a row that starts from noise). x₀ is one of the composer's library songs
//!   {y_j} with prior π_j: `p(j | x_t) ∝ π_j · N(x_t; a·y_j, t²·I)`, `x̂₀ = Σ_j p(j | x_t)·y_j`.
//! - **Source-edit model** (a row that starts from a source `s`, `DenoiseBatch::sources`). x₀ is
//!   the source in which each cell (one of [`PART_COUNT`] parts of the frame, chords, bass,
//!   lead, drums, stabs, space, over [`CELL_FRAMES`] frames) is independently rewritten, with
//!   prior probability q = [`REWRITE_PRIOR`], by the same cell of one library song y_j. Given j
//!   the cells are independent, so
//!   `p(j | x_t) ∝ π_j · Π_c [(1 − q)·N(x_c; a·s_c, t²) + q·N(x_c; a·y_jc, t²)]` and
//!   `x̂₀_c = Σ_j p(j | x_t)·[s_c + ρ_jc·(y_jc − s_c)]`, where `ρ_jc = q·N(x_c; a·y_jc, t²) /
//!   [(1 − q)·N(x_c; a·s_c, t²) + q·N(x_c; a·y_jc, t²)]` is the posterior probability that cell
//!   c was rewritten. A cell is rewritten only once the noise hides how it differs from the
//!   library, so small denoise keeps the source's own groove, harmony and tempo, and each step
//!   of denoise hands more cells to the prompt's library: similarity to the source falls
//!   gradually (`demon bench --only denoise_curve`). Without this the source, unless it is a
//!   library song, is no component of the mixture and even denoise 0.05 snaps to the library.
//!
//! Both are evaluated per local window: frame f's posterior over j uses the frames within
//! ±[`WINDOW`] of f only, so different bars can come from different songs (a patch mixture
//! rather than whole-song memorisation). Priors come from the prompt (style probabilities,
//! mood) and the style adapters; the context adds a structure affinity `β·⟨context, y_j⟩`
//! per frame; a timbre in the conditioning moves every library song's voice channels toward
//! the reference's (the library played with that voice).
//!
//! Every row of a batch is computed on its own, on the CPU, in a fixed order: results never
//! depend on the batch.

use std::collections::HashMap;
use std::sync::Arc;

use candle_core::{Device, Tensor};
use demon_engine::{DenoiseBatch, Denoiser, EngineError, Result};

use crate::adapters::StylePrior;
use crate::composer::{Song, SongSpec, compose};
use crate::conditioner::{SketchCondition, TIMBRE_CHANNELS, Timbre};
use crate::layout::CHANNELS;
use crate::style::Style;

/// Songs per style in the library.
pub const SONGS_PER_STYLE: usize = 6;
/// Half-width of the posterior window in frames (±0.64 s).
pub const WINDOW: usize = 16;
/// Weight of the structure affinity, nats per unit of `⟨context, y⟩` in a frame: at strength 1
/// a window's choice of song follows the reference's rhythm and harmony firmly (tens of nats),
/// at small strengths it only leans.
const STRUCTURE_BETA: f64 = 0.02;
/// Weight of the mood preferences in the prior (nats per unit).
const MOOD_KAPPA: f64 = 2.5;
/// Source-edit model: prior probability that a cell of the source is rewritten by the library.
/// With [`CELL_FRAMES`] it sets the shape of the denoise curve (`demon bench --only
/// denoise_curve`): higher rewrites sooner and leaves less of the source near denoise 1.
pub const REWRITE_PRIOR: f64 = 0.8;

/// The parts of a frame that the source-edit model keeps or rewrites as a whole: pad chords
/// (with the pad's level and brightness), bass, lead, drums (with their level and the pump),
/// stabs, and the space (reverb, width).
pub const PART_COUNT: usize = 6;
/// Frames per cell of the source-edit model (80 ms): a cell is one part over this many frames.
/// Longer cells hold the source to higher noise levels (their differences are larger).
pub const CELL_FRAMES: usize = 2;
/// The part of each latent channel.
pub const PART_OF: [u8; CHANNELS] = part_map();

const fn part_map() -> [u8; CHANNELS] {
    use crate::layout::*;
    let mut m = [0u8; CHANNELS];
    let mut c = 0;
    while c < CHANNELS {
        m[c] = if c < BASS_PC || c == PAD_LEVEL || c == PAD_BRIGHT {
            0
        } else if c < LEAD_PC
            || c == BASS_ON.onset
            || c == BASS_ON.phase
            || c == BASS_LEVEL
            || c == BASS_BRIGHT
        {
            1
        } else if c <= LEAD_OCTAVE
            || c == LEAD_ON.onset
            || c == LEAD_ON.phase
            || c == LEAD_LEVEL
            || c == LEAD_SHAPE
        {
            2
        } else if (c >= KICK.onset && c <= CLAP.phase) || c == DRUM_LEVEL || c == PUMP {
            3
        } else if c == STAB.onset || c == STAB.phase || c == STAB_LEVEL {
            4
        } else {
            5
        };
        c += 1;
    }
    m
}

type LibraryKey = (u32, u8, bool, usize);

/// An adapter installed from a file: its prior per style, scaled by its strength.
struct FileAdapter {
    id: String,
    prior: StylePrior,
    strength: f32,
    metadata: demon_engine::AdapterMetadata,
}

/// The exact denoiser of the sketch library.
pub struct SketchDenoiser {
    device: Device,
    library: HashMap<LibraryKey, Arc<Vec<Song>>>,
    /// Style adapters: extra prior weight per style, whatever the prompt says (the sketch's
    /// analog of LoRA: a change to the model itself, seen by every slot at its next step).
    adapters: [f32; crate::style::STYLE_COUNT],
    /// Adapters installed from files (`crate::adapters`), each with its strength.
    file_adapters: Vec<FileAdapter>,
    /// Distinguishes libraries: two denoisers with different library seeds make different music.
    pub library_seed: u64,
}

impl SketchDenoiser {
    pub fn new(device: Device) -> Self {
        Self {
            device,
            library: HashMap::new(),
            adapters: [0.0; crate::style::STYLE_COUNT],
            file_adapters: Vec::new(),
            library_seed: 0x5ce7c4,
        }
    }

    /// The prior weight the adapters add to style `i`: the built-in style adapter's strength
    /// and every file adapter's prior at its strength.
    fn style_extra(&self, i: usize) -> f64 {
        self.adapters[i] as f64
            + self
                .file_adapters
                .iter()
                .map(|a| a.strength as f64 * a.prior.0[i] as f64)
                .sum::<f64>()
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

    /// Song `index` (0..[`SONGS_PER_STYLE`]) of `style` in the library at the tempo and key of
    /// `cond`, as a `[1, frames, C]` latent: a source the library model holds exactly.
    pub fn library_song(
        &mut self,
        cond: &SketchCondition,
        style: Style,
        index: usize,
        frames: usize,
    ) -> Result<Tensor> {
        if index >= SONGS_PER_STYLE || frames == 0 {
            return Err(EngineError::param(
                "library song",
                format!("song {index} of {frames} frames (songs 0..{SONGS_PER_STYLE}, frames ≥ 1)"),
            ));
        }
        let songs = self.library(cond.bpm, cond.tonic, cond.minor, frames);
        let song = songs
            .iter()
            .filter(|s| s.spec.style == style)
            .nth(index)
            .ok_or_else(|| {
                EngineError::Backend(format!("the library has no {style:?} #{index}"))
            })?;
        Ok(Tensor::from_vec(
            song.latent.clone(),
            (1, frames, CHANNELS),
            &self.device,
        )?)
    }

    /// `x̂₀` for one row of the library model: `x` and `context` are `[T][CHANNELS]`.
    pub fn posterior_mean(
        &mut self,
        x: &[f32],
        t: f32,
        cond: &SketchCondition,
        context: Option<&[f32]>,
    ) -> Vec<f32> {
        self.posterior_mean_from(x, t, cond, context, None)
    }

    /// `x̂₀` for one row; with `source` (`[T][CHANNELS]`, the clean latent the row started
    /// from) under the source-edit model, without it under the library model.
    pub fn posterior_mean_from(
        &mut self,
        x: &[f32],
        t: f32,
        cond: &SketchCondition,
        context: Option<&[f32]>,
        source: Option<&[f32]>,
    ) -> Vec<f32> {
        let frames = x.len() / CHANNELS;
        let songs = self.library(cond.bpm, cond.tonic, cond.minor, frames);
        // Log prior per song; songs of styles the prompt excludes are skipped entirely.
        let priors: Vec<Option<f64>> = songs
            .iter()
            .map(|s| {
                let i = s.spec.style.index();
                let w = cond.style_weights[i] as f64 + self.style_extra(i);
                if w <= 0.0 {
                    return None;
                }
                let mood = cond.brightness as f64 * (s.brightness as f64 - 0.5)
                    + cond.energy as f64 * (s.energy as f64 - 0.5);
                Some((w / SONGS_PER_STYLE as f64).ln() + MOOD_KAPPA * mood)
            })
            .collect();
        let live: Vec<(usize, f64)> = priors
            .iter()
            .enumerate()
            .filter_map(|(j, p)| p.map(|p| (j, p)))
            .collect();
        // A timbre moves each song's voice channels toward the reference's by its weight
        // (keeping the song's own movement around its mean): the library played with that voice.
        let voiced: Option<Vec<Vec<f32>>> = cond.timbre.as_ref().map(|tim| {
            live.iter()
                .map(|&(j, _)| voiced_latent(&songs[j].latent, tim))
                .collect()
        });
        let songs: Vec<&[f32]> = match &voiced {
            Some(v) => v.iter().map(|y| &y[..]).collect(),
            None => live.iter().map(|&(j, _)| &songs[j].latent[..]).collect(),
        };
        let priors: Vec<f64> = live.iter().map(|&(_, p)| p).collect();
        match source {
            Some(src) if src.len() == x.len() => {
                source_edit_mean(x, t, &songs, &priors, context, src)
            }
            _ => library_mean(x, t, &songs, &priors, context),
        }
    }
}

/// `y` (`[T][CHANNELS]`) with each timbre channel shifted by `weight · (voice − its time mean)`,
/// clamped to the latent range.
fn voiced_latent(y: &[f32], timbre: &Timbre) -> Vec<f32> {
    let frames = y.len() / CHANNELS;
    let mut out = y.to_vec();
    for (&c, &target) in TIMBRE_CHANNELS.iter().zip(&timbre.voice) {
        let mean = (0..frames).map(|f| y[f * CHANNELS + c] as f64).sum::<f64>() / frames as f64;
        let shift = timbre.weight * (target - mean as f32);
        for f in 0..frames {
            let v = &mut out[f * CHANNELS + c];
            *v = (*v + shift).clamp(-1.0, 1.0);
        }
    }
    out
}

/// Per-frame structure affinity `⟨context, y⟩` of one frame.
#[inline]
fn affinity(context: Option<&[f32]>, y: &[f32], row: usize) -> f32 {
    let mut h = 0f32;
    if let Some(ctx) = context {
        for c in 0..CHANNELS {
            h += ctx[row + c] * y[row + c];
        }
    }
    h
}

/// Frame `f`'s window posterior over the songs from the per-frame score prefix sums
/// (`logits[k·frames + f]` = prior + the window's summed scores), normalised into `w`.
fn window_weights(logits: &[f64], songs: usize, frames: usize, f: usize, w: &mut [f64]) {
    let m = (0..songs)
        .map(|k| logits[k * frames + f])
        .fold(f64::NEG_INFINITY, f64::max);
    let mut z = 0f64;
    for k in 0..songs {
        w[k] = (logits[k * frames + f] - m).exp();
        z += w[k];
    }
    for v in w.iter_mut() {
        *v /= z;
    }
}

/// `out[i]` = `prior` + the sum of the scores (as `prefix` sums) of units `i ± half`.
fn window_logits(prefix: &[f64], prior: f64, half: usize, out: &mut [f64]) {
    let n = out.len();
    for (i, o) in out.iter_mut().enumerate() {
        let lo = i.saturating_sub(half);
        let hi = (i + half + 1).min(n);
        *o = prior + prefix[hi] - prefix[lo];
    }
}

/// The library model: x₀ is one of the library songs (per window), `x̂₀ = Σ_j p(j | x_t)·y_j`.
fn library_mean(
    x: &[f32],
    t: f32,
    songs: &[&[f32]],
    priors: &[f64],
    context: Option<&[f32]>,
) -> Vec<f32> {
    let frames = x.len() / CHANNELS;
    let a = (1.0 - t) as f64;
    let inv = 1.0 / (2.0 * (t as f64).max(1e-4).powi(2));
    // Windowed log-likelihoods via prefix sums of per-frame scores.
    let mut logits = vec![0f64; songs.len() * frames];
    let mut prefix = vec![0f64; frames + 1];
    for (k, y) in songs.iter().enumerate() {
        for f in 0..frames {
            let row = f * CHANNELS;
            let mut d = 0f32;
            for c in 0..CHANNELS {
                let e = x[row + c] - a as f32 * y[row + c];
                d += e * e;
            }
            let h = affinity(context, y, row);
            prefix[f + 1] = prefix[f] - d as f64 * inv + STRUCTURE_BETA * h as f64;
        }
        window_logits(
            &prefix,
            priors[k],
            WINDOW,
            &mut logits[k * frames..(k + 1) * frames],
        );
    }
    let mut x0 = vec![0f32; x.len()];
    let mut w = vec![0f64; songs.len()];
    for f in 0..frames {
        window_weights(&logits, songs.len(), frames, f, &mut w);
        let row = f * CHANNELS;
        for (k, y) in songs.iter().enumerate() {
            let wk = w[k] as f32;
            if wk < 1e-7 {
                continue;
            }
            let y = &y[row..row + CHANNELS];
            for c in 0..CHANNELS {
                x0[row + c] += wk * y[c];
            }
        }
    }
    x0
}

/// The source-edit model (module docs): `x̂₀_c = Σ_j p(j | x_t)·[s_c + ρ_jc·(y_jc − s_c)]`.
fn source_edit_mean(
    x: &[f32],
    t: f32,
    songs: &[&[f32]],
    priors: &[f64],
    context: Option<&[f32]>,
    src: &[f32],
) -> Vec<f32> {
    let frames = x.len() / CHANNELS;
    let a = (1.0 - t) as f64;
    let inv = 1.0 / (2.0 * (t as f64).max(1e-4).powi(2));
    let cf = CELL_FRAMES;
    let (log_keep, log_rewrite) = ((1.0 - REWRITE_PRIOR).ln(), REWRITE_PRIOR.ln());
    let blocks = frames.div_ceil(cf);
    let cells = blocks * PART_COUNT;
    // Squared distance of x_t to the noised source, per cell.
    let mut d_src = vec![0f64; cells];
    for f in 0..frames {
        let row = f * CHANNELS;
        let base = (f / cf) * PART_COUNT;
        for c in 0..CHANNELS {
            let e = x[row + c] as f64 - a * src[row + c] as f64;
            d_src[base + PART_OF[c] as usize] += e * e;
        }
    }
    let mut rewrite = vec![0f32; songs.len() * cells];
    let mut logits = vec![0f64; songs.len() * blocks];
    let mut prefix = vec![0f64; blocks + 1];
    let mut d = vec![0f64; cells];
    let mut h = vec![0f64; blocks];
    for (k, y) in songs.iter().enumerate() {
        d.fill(0.0);
        h.fill(0.0);
        for f in 0..frames {
            let row = f * CHANNELS;
            let base = (f / cf) * PART_COUNT;
            for c in 0..CHANNELS {
                let e = x[row + c] as f64 - a * y[row + c] as f64;
                d[base + PART_OF[c] as usize] += e * e;
            }
            h[f / cf] += affinity(context, y, row) as f64;
        }
        for b in 0..blocks {
            let mut score = 0f64;
            for g in 0..PART_COUNT {
                let i = b * PART_COUNT + g;
                let keep = log_keep - d_src[i] * inv;
                let new = log_rewrite - d[i] * inv;
                let m = keep.max(new);
                let cell = m + ((keep - m).exp() + (new - m).exp()).ln();
                rewrite[k * cells + i] = (new - cell).exp() as f32;
                score += cell;
            }
            prefix[b + 1] = prefix[b] + score + STRUCTURE_BETA * h[b];
        }
        let out = &mut logits[k * blocks..(k + 1) * blocks];
        window_logits(&prefix, priors[k], WINDOW / cf, out);
    }
    let mut x0 = vec![0f32; x.len()];
    let mut w = vec![0f64; songs.len()];
    let mut acc = [0f64; CHANNELS];
    for f in 0..frames {
        let b = f / cf;
        window_weights(&logits, songs.len(), blocks, b, &mut w);
        let row = f * CHANNELS;
        acc.fill(0.0);
        for (k, y) in songs.iter().enumerate() {
            let rho = &rewrite[k * cells + b * PART_COUNT..k * cells + (b + 1) * PART_COUNT];
            for (c, a) in acc.iter_mut().enumerate() {
                let wr = w[k] * rho[PART_OF[c] as usize] as f64;
                *a += wr * (y[row + c] - src[row + c]) as f64;
            }
        }
        for c in 0..CHANNELS {
            x0[row + c] = (src[row + c] as f64 + acc[c]) as f32;
        }
    }
    x0
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
            || !(batch.sources.is_empty() || batch.sources.len() == b)
        {
            return Err(EngineError::shape(
                "sketch batch",
                format!("[B, T, {CHANNELS}] with B rows of t/conditions/contexts (and sources)"),
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
            let src: Option<Vec<f32>> = match batch.source(i) {
                Some(s) if s.dims() == [1, frames, CHANNELS] => {
                    Some(s.to_device(&Device::Cpu)?.flatten_all()?.to_vec1()?)
                }
                Some(s) => {
                    return Err(EngineError::shape(
                        "sketch source",
                        format!("[1, {frames}, {CHANNELS}]"),
                        format!("{:?}", s.dims()),
                    ));
                }
                None => None,
            };
            let t = batch.t[i].max(1e-4);
            let x0 = self.posterior_mean_from(x, t, &cond, ctx.as_deref(), src.as_deref());
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
                metadata: Default::default(),
            })
            .chain(
                self.file_adapters
                    .iter()
                    .map(|a| demon_engine::AdapterInfo {
                        id: a.id.clone(),
                        strength: a.strength,
                        rank: 0,
                        targets: a.prior.0.iter().filter(|w| **w > 0.0).count(),
                        metadata: a.metadata.clone(),
                    }),
            )
            .collect()
    }

    fn set_strength(&mut self, id: &str, strength: f32) -> Result<()> {
        if !(strength.is_finite() && (0.0..=2.0).contains(&strength)) {
            return Err(EngineError::param(
                "lora",
                format!("strength {strength} is outside [0, 2]"),
            ));
        }
        if let Some(a) = self.file_adapters.iter_mut().find(|a| a.id == id) {
            a.strength = strength;
            return Ok(());
        }
        let style = Style::ALL
            .iter()
            .find(|s| adapter_id(**s) == id)
            .ok_or_else(|| EngineError::param("lora", format!("no sketch adapter `{id}` (house, techno, ambient, hip_hop, funk, drum_and_bass, or one loaded from a file)")))?;
        self.adapters[style.index()] = strength;
        Ok(())
    }

    fn files(&self) -> Option<Arc<dyn demon_engine::AdapterFiles>> {
        Some(Arc::new(crate::adapters::SketchAdapterFiles))
    }

    fn install(
        &mut self,
        id: &str,
        metadata: demon_engine::AdapterMetadata,
        adapter: demon_engine::LoadedAdapter,
    ) -> Result<()> {
        if self.list().iter().any(|a| a.id == id) {
            return Err(EngineError::param(
                "lora",
                format!("an adapter `{id}` is already loaded"),
            ));
        }
        let prior: StylePrior = adapter.into_payload()?;
        self.file_adapters.push(FileAdapter {
            id: id.to_string(),
            prior,
            strength: 0.0,
            metadata,
        });
        Ok(())
    }
}
