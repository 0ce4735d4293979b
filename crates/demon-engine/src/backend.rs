//! The seam between the engine and the models: the `Denoiser`, `Codec` and `Conditioner` traits
//! (architecture.md "The three traits at the seam"), and the plain data they exchange.
//!
//! Backends (the built-in `sketch`, ACE-Step 1.5) implement these; the engine and everything
//! above it never name a backend. Conditioning is carried as tensors, exactly like DEMON's
//! `SlotRequest` carries `encoder_hidden_states`: the engine may blend, pad and batch it without
//! knowing what it means.

use std::sync::atomic::{AtomicU64, Ordering};

use candle_core::{DType, Device, Tensor};
use serde::{Deserialize, Serialize};

use crate::error::{EngineError, Result};

static NEXT_CONDITIONING_ID: AtomicU64 = AtomicU64::new(1);

/// Encoded prompt: what the denoiser cross-attends to.
#[derive(Clone, Debug)]
pub struct Conditioning {
    /// `[1, L, H]` encoder states.
    pub states: Tensor,
    /// `[1, L]` 1.0 for valid positions, 0.0 for padding.
    pub mask: Tensor,
    /// Unique per distinct conditioning value: backends key per-generation caches on it
    /// (for example cross-attention keys and values).
    pub id: u64,
    /// Every position is known to be valid without reading `mask` (see
    /// [`Conditioning::all_valid`]).
    all_valid: bool,
}

impl Conditioning {
    /// Wrap encoder states; every position valid.
    pub fn new(states: Tensor) -> Result<Self> {
        let (b, l, _h) = states.dims3()?;
        if b != 1 {
            return Err(EngineError::shape(
                "conditioning states",
                "[1, L, H]",
                format!("{:?}", states.dims()),
            ));
        }
        let mask = Tensor::ones((1, l), DType::F32, states.device())?;
        let mut c = Self::with_mask(states, mask);
        c.all_valid = true;
        Ok(c)
    }

    /// States with a mask that may hold padding.
    pub fn with_mask(states: Tensor, mask: Tensor) -> Self {
        Self {
            states,
            mask,
            id: NEXT_CONDITIONING_ID.fetch_add(1, Ordering::Relaxed),
            all_valid: false,
        }
    }

    /// New states of `like`'s length with `like`'s mask (and what is known of it).
    pub fn with_mask_of(states: Tensor, like: &Conditioning) -> Self {
        let mut c = Self::with_mask(states, like.mask.clone());
        c.all_valid = like.all_valid;
        c
    }

    /// `true` when every position is known to be valid without reading the mask: built by
    /// [`Conditioning::new`], or a blend whose longer side is such. `false` means the mask may
    /// hold padding; finding out would read it back from the device, which a backend must not do
    /// inside a tick.
    pub fn all_valid(&self) -> bool {
        self.all_valid
    }

    pub fn len(&self) -> usize {
        self.states.dim(1).unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn hidden(&self) -> usize {
        self.states.dim(2).unwrap_or(0)
    }

    /// `(1 − w)·a + w·b`, zero-padding the shorter sequence (DEMON's `ConditioningBlend`, the
    /// streaming prompt crossfade); the mask is the element-wise maximum.
    pub fn lerp(a: &Conditioning, b: &Conditioning, w: f32) -> Result<Conditioning> {
        if !w.is_finite() {
            return Err(EngineError::param("blend", "weight is not finite"));
        }
        if w <= 0.0 {
            return Ok(a.clone());
        }
        if w >= 1.0 {
            return Ok(b.clone());
        }
        if a.hidden() != b.hidden() {
            return Err(EngineError::shape(
                "conditioning width",
                a.hidden(),
                b.hidden(),
            ));
        }
        let l = a.len().max(b.len());
        let (sa, ma) = a.padded_to(l)?;
        let (sb, mb) = b.padded_to(l)?;
        let states = ((sa * (1.0 - w as f64))? + (sb * w as f64)?)?;
        let mask = ma.maximum(&mb)?;
        let mut c = Conditioning::with_mask(states, mask);
        // The maximum is all ones when either side is all valid over the whole length.
        c.all_valid = (a.all_valid && a.len() == l) || (b.all_valid && b.len() == l);
        Ok(c)
    }

    /// States and mask zero-padded to length `l`.
    pub fn padded_to(&self, l: usize) -> Result<(Tensor, Tensor)> {
        let n = self.len();
        if n == l {
            return Ok((self.states.clone(), self.mask.clone()));
        }
        if n > l {
            return Err(EngineError::shape(
                "conditioning length",
                format!("<= {l}"),
                n,
            ));
        }
        Ok((
            self.states.pad_with_zeros(1, 0, l - n)?,
            self.mask.pad_with_zeros(1, 0, l - n)?,
        ))
    }
}

/// One batched denoiser call: `B` rows that share the latent length `T`.
pub struct DenoiseBatch<'a> {
    /// `[B, T, C]` model input (mask pre-blend and channel gain already applied).
    pub x: Tensor,
    /// Flow-matching time of each row, `t ∈ [0, 1]` (1 = pure noise).
    pub t: Vec<f32>,
    /// The conditioning of each row.
    pub conditions: Vec<&'a Conditioning>,
    /// `[1, T, Cc]` structural context of each row (for ACE-Step: hint ‖ chunk mask).
    pub contexts: Vec<&'a Tensor>,
    /// `[1, T, C]` clean source latent each row's trajectory started from (partial denoising:
    /// `x_{t₀} = t₀·ε + (1 − t₀)·source`), `None` for a row that started from pure noise. Models
    /// may use it as data (the sketch's source-edit mixture; ACE-Step's cover input); most
    /// ignore it. Empty means no row has a source (callers that build batches by hand).
    pub sources: Vec<Option<&'a Tensor>>,
}

impl DenoiseBatch<'_> {
    pub fn rows(&self) -> usize {
        self.t.len()
    }

    /// The source of row `i`, if it has one.
    pub fn source(&self, i: usize) -> Option<&Tensor> {
        self.sources.get(i).copied().flatten()
    }
}

/// The model: predicts the flow-matching velocity `v ≈ ε − x₀` for every row.
///
/// Contract: row `i` of the result depends only on row `i` of the input (its latent, time,
/// conditioning and context), never on which other rows share the batch. This is what makes
/// streaming output bit-identical to one-at-a-time output.
pub trait Denoiser: Send {
    /// Latent channels `C`.
    fn latent_channels(&self) -> usize;
    /// Context channels `Cc` expected in [`DenoiseBatch::contexts`].
    fn context_channels(&self) -> usize;
    /// The device the model lives on; the engine keeps its state there too.
    fn device(&self) -> &Device;
    /// `[B, T, C]` velocities.
    fn velocity(&mut self, batch: &DenoiseBatch<'_>) -> Result<Tensor>;
    /// A short name for logs and benchmarks.
    fn name(&self) -> &str {
        "denoiser"
    }
    /// Weight adapters (LoRA) this model can switch without reloading, if any.
    fn adapters(&mut self) -> Option<&mut dyn crate::adapter::Adapters> {
        None
    }
}

/// Planar audio: one `Vec<f32>` per channel, all the same length.
#[derive(Clone, Debug, PartialEq)]
pub struct Audio {
    pub sample_rate: u32,
    pub channels: Vec<Vec<f32>>,
}

impl Audio {
    pub fn new(sample_rate: u32, channels: Vec<Vec<f32>>) -> Result<Self> {
        if channels.is_empty() {
            return Err(EngineError::param("audio", "no channels"));
        }
        let n = channels[0].len();
        if channels.iter().any(|c| c.len() != n) {
            return Err(EngineError::param(
                "audio",
                "channels have different lengths",
            ));
        }
        Ok(Self {
            sample_rate,
            channels,
        })
    }

    pub fn silence(sample_rate: u32, channels: usize, frames: usize) -> Self {
        Self {
            sample_rate,
            channels: vec![vec![0.0; frames]; channels],
        }
    }

    /// Samples per channel.
    pub fn frames(&self) -> usize {
        self.channels.first().map_or(0, |c| c.len())
    }

    pub fn seconds(&self) -> f64 {
        self.frames() as f64 / self.sample_rate.max(1) as f64
    }

    /// Interleaved samples (`L R L R …`).
    pub fn interleaved(&self) -> Vec<f32> {
        let n = self.frames();
        let c = self.channels.len();
        let mut out = Vec::with_capacity(n * c);
        for i in 0..n {
            for ch in &self.channels {
                out.push(ch[i]);
            }
        }
        out
    }

    /// Largest absolute sample value.
    pub fn peak(&self) -> f32 {
        self.channels
            .iter()
            .flatten()
            .fold(0.0f32, |m, x| m.max(x.abs()))
    }

    /// Root mean square over all channels.
    pub fn rms(&self) -> f32 {
        let n = self.channels.iter().map(|c| c.len()).sum::<usize>().max(1);
        let s: f64 = self
            .channels
            .iter()
            .flatten()
            .map(|x| (*x as f64).powi(2))
            .sum();
        (s / n as f64).sqrt() as f32
    }
}

/// `kept` must be a range of the `n` frames of a decode window.
pub fn check_kept(kept: &std::ops::Range<usize>, n: usize) -> Result<()> {
    if kept.start > kept.end || kept.end > n {
        return Err(EngineError::param(
            "kept frames",
            format!("{kept:?} is outside the {n} frames of the window"),
        ));
    }
    Ok(())
}

/// Audio ⇄ latent. `encode` gives `[1, T, C]`; `decode` takes any window of frames.
pub trait Codec: Send {
    fn sample_rate(&self) -> u32;
    /// Audio samples per latent frame (1920 at 48 kHz / 25 Hz).
    fn hop_samples(&self) -> usize;
    fn latent_channels(&self) -> usize;
    fn audio_channels(&self) -> usize;
    fn device(&self) -> &Device;
    /// `[1, T, C]` latent of `audio` (any length; trailing samples short of a frame dropped).
    fn encode(&mut self, audio: &Audio) -> Result<Tensor>;
    /// Audio of the latent window `[1, N, C]`, `N · hop` samples long. `first_frame` is the
    /// absolute index of the window's first frame: codecs whose output depends on absolute
    /// position (the sketch synthesizer's oscillator phases) use it; convolutional codecs
    /// ignore it.
    fn decode(&mut self, latent: &Tensor, first_frame: i64) -> Result<Audio>;
    /// The audio of the frames `kept` of the window `[1, N, C]` only, `kept.len() · hop`
    /// samples: what a windowed decode keeps out of its context. Equals those samples of
    /// [`Codec::decode`]; a codec that can skip the work no kept sample hears overrides it
    /// (the sketch synthesizer does), the default decodes the whole window and trims.
    fn decode_kept(
        &mut self,
        latent: &Tensor,
        first_frame: i64,
        kept: std::ops::Range<usize>,
    ) -> Result<Audio> {
        check_kept(&kept, latent.dim(1)?)?;
        let audio = self.decode(latent, first_frame)?;
        let hop = self.hop_samples();
        let channels = audio
            .channels
            .iter()
            .map(|c| c[kept.start * hop..kept.end * hop].to_vec())
            .collect();
        Audio::new(audio.sample_rate, channels)
    }
    fn name(&self) -> &str {
        "codec"
    }
    /// A second, independent instance that gives the same results, when making one is cheap
    /// (no weights to copy). Live sessions use it to encode and decode a new source beside
    /// the tick loop, so a long source does not stop the ticks; `None` (the default) means
    /// sources are prepared between ticks on the one instance.
    fn fork(&self) -> Option<Box<dyn Codec>> {
        None
    }
}

/// What a generation does with its source, for backends whose conditioning depends on it
/// (ACE-Step writes another instruction into the prompt for each task, acestep.md §1.2).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GenerationTask {
    /// A new song from the text (the source, if any, is only blended by the engine).
    #[default]
    TextToMusic,
    /// A new rendition of the source's structure (DEMON's live loop plays this task, with
    /// `[Instrumental]` lyrics, whenever a source is playing).
    Cover,
    /// Regenerate a region of the source.
    Repaint,
}

/// What a conditioner made of a prompt: the style, tempo and key it actually uses, and the
/// words it did not understand (a prompt that falls back says so instead of playing something
/// else silently). Backends that read prompts as free text (ACE-Step) have nothing to report.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct PromptUse {
    /// The style played, in the backend's words ("house", "a mix of every style").
    pub style: String,
    /// The tempo used, in BPM.
    pub bpm: Option<f32>,
    /// The key used ("A minor").
    pub key: Option<String>,
    /// Set when part of the prompt was not understood: a sentence naming the words and what
    /// was used instead.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fallback: Option<String>,
}

/// What a performer asks for.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Prompt {
    /// Caption / style tags, e.g. "deep house, warm pads".
    pub tags: String,
    pub lyrics: String,
    pub bpm: Option<f32>,
    /// e.g. "A minor", "F# major".
    pub key: Option<String>,
    pub time_signature: Option<u32>,
    pub language: Option<String>,
    /// Song length the prompt describes.
    pub duration_s: Option<f32>,
    /// The task the conditioning is for; `None` leaves it to the conditioner (ACE-Step's
    /// conditioner has its own default, text-to-music). A front end that plays a source sets
    /// `Cover` (DEMON's live loop does).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub task: Option<GenerationTask>,
    /// What an analysis of the playing source found. A conditioner uses a hint only where the
    /// prompt itself names nothing (neither the field nor the words), so the tempo and key the
    /// performer asks for always win over what was measured.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hints: Option<SourceHints>,
}

/// Tempo and key measured on a source, offered to a conditioner for the fields a prompt leaves
/// open (DEMON's `AudioInfo` feeding the prompt's metadata).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct SourceHints {
    pub bpm: Option<f32>,
    /// e.g. "A minor".
    pub key: Option<String>,
}

impl SourceHints {
    pub fn bpm(prompt: &Prompt) -> Option<f32> {
        prompt.hints.as_ref().and_then(|h| h.bpm)
    }

    pub fn key(prompt: &Prompt) -> Option<&str> {
        prompt.hints.as_ref().and_then(|h| h.key.as_deref())
    }
}

impl Prompt {
    pub fn tags(tags: impl Into<String>) -> Self {
        Self {
            tags: tags.into(),
            ..Default::default()
        }
    }

    /// Check user-controlled fields.
    pub fn validate(&self) -> Result<()> {
        if let Some(b) = self.bpm
            && !(b.is_finite() && (20.0..=400.0).contains(&b))
        {
            return Err(EngineError::param(
                "bpm",
                format!("{b} is outside 20..=400"),
            ));
        }
        if let Some(ts) = self.time_signature
            && !(1..=16).contains(&ts)
        {
            return Err(EngineError::param(
                "time_signature",
                format!("{ts} is outside 1..=16"),
            ));
        }
        if self.tags.len() > 4096 {
            return Err(EngineError::param("prompt", "tags longer than 4096 bytes"));
        }
        if self.lyrics.len() > 65536 {
            return Err(EngineError::param("lyrics", "longer than 65536 bytes"));
        }
        if let Some(l) = &self.language
            && l.len() > 64
        {
            return Err(EngineError::param("language", "longer than 64 bytes"));
        }
        if let Some(k) = &self.key
            && k.len() > 64
        {
            return Err(EngineError::param("key", "longer than 64 bytes"));
        }
        Ok(())
    }
}

/// Prompt → conditioning, and the structural context the denoiser reads beside it.
pub trait Conditioner: Send {
    /// Encode a prompt.
    fn condition(&mut self, prompt: &Prompt) -> Result<Conditioning>;
    /// Encode a prompt with the timbre of `reference` (a `[1, T, C]` latent of any length, a
    /// separate reference or the playing source). Backends without a timbre input return the
    /// plain conditioning.
    fn condition_with_timbre(
        &mut self,
        prompt: &Prompt,
        reference: &Tensor,
    ) -> Result<Conditioning> {
        let _ = reference;
        self.condition(prompt)
    }
    /// The unconditional embedding used as the negative when no negative prompt is given.
    fn null_condition(&mut self, like: &Conditioning) -> Result<Conditioning>;
    /// Channels of the context tensor.
    fn context_channels(&self) -> usize;
    /// `[1, frames, Cc]` context: the neutral context lerped toward the structure of `structure`
    /// by `strength ∈ [0, 1]`; `None` gives the neutral context. `structure` is a `[1, T, C]`
    /// latent (the playing source, or a separate structure reference); backends say what they do
    /// when `T ≠ frames` (ACE-Step crops it or pads it with silence, as upstream does with a
    /// cover hint).
    fn context(
        &mut self,
        structure: Option<&Tensor>,
        frames: usize,
        strength: f32,
    ) -> Result<Tensor>;
    fn name(&self) -> &str {
        "conditioner"
    }
    /// What this conditioner makes of `prompt` (style, tempo, key, words it did not
    /// understand), for UIs and replies; `None` when it has nothing to say (free-text
    /// encoders). Never fails: a prompt `condition` refuses has no use to report.
    fn prompt_use(&self, prompt: &Prompt) -> Option<PromptUse> {
        let _ = prompt;
        None
    }
}

/// The three halves of a backend, owned together by whoever drives the engine (the offline
/// renderer, the live session's runner thread). The engine itself never names a backend.
pub struct BackendSet {
    pub name: String,
    pub denoiser: Box<dyn Denoiser>,
    pub codec: Box<dyn Codec>,
    pub conditioner: Box<dyn Conditioner>,
}

impl BackendSet {
    /// Check that the three parts agree on the latent geometry.
    pub fn validate(&self) -> Result<()> {
        if self.denoiser.latent_channels() != self.codec.latent_channels() {
            return Err(EngineError::shape(
                "backend latent channels (denoiser vs codec)",
                self.denoiser.latent_channels(),
                self.codec.latent_channels(),
            ));
        }
        if self.denoiser.context_channels() != self.conditioner.context_channels() {
            return Err(EngineError::shape(
                "backend context channels (denoiser vs conditioner)",
                self.denoiser.context_channels(),
                self.conditioner.context_channels(),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What is known of a mask without reading it: `new` is all valid, a mask given by the
    /// caller may pad, a blend is all valid when its longer side is, and `with_mask_of` keeps
    /// what is known.
    #[test]
    fn all_valid_follows_construction_and_blends() {
        let d = Device::Cpu;
        let ones = |l: usize| Tensor::ones((1, l, 3), DType::F32, &d).unwrap();
        let given = |l: usize| {
            Conditioning::with_mask(ones(l), Tensor::ones((1, l), DType::F32, &d).unwrap())
        };
        let a = Conditioning::new(ones(2)).unwrap();
        let b = Conditioning::new(ones(3)).unwrap();
        assert!(a.all_valid() && b.all_valid());
        assert!(!given(2).all_valid());
        // The shorter side is padded, but the longer one covers every position.
        let ab = Conditioning::lerp(&a, &b, 0.5).unwrap();
        assert!(ab.all_valid());
        assert_eq!(ab.mask.to_vec2::<f32>().unwrap(), vec![vec![1.0; 3]]);
        assert!(Conditioning::lerp(&given(2), &a, 0.5).unwrap().all_valid());
        assert!(!Conditioning::lerp(&a, &given(3), 0.5).unwrap().all_valid());
        assert!(
            !Conditioning::lerp(&given(2), &given(2), 0.5)
                .unwrap()
                .all_valid()
        );
        // The ends of a blend are the sides themselves.
        assert!(!Conditioning::lerp(&given(2), &b, 0.0).unwrap().all_valid());
        assert!(Conditioning::with_mask_of(ones(2), &a).all_valid());
        assert!(!Conditioning::with_mask_of(ones(2), &given(2)).all_valid());
    }

    #[test]
    fn conditioning_lerp_pads_and_blends() {
        let d = Device::Cpu;
        let a = Conditioning::new(Tensor::ones((1, 2, 3), DType::F32, &d).unwrap()).unwrap();
        let b = Conditioning::new(Tensor::full(3f32, (1, 3, 3), &d).unwrap()).unwrap();
        let c = Conditioning::lerp(&a, &b, 0.5).unwrap();
        let v = c.states.to_vec3::<f32>().unwrap();
        assert_eq!(v[0][0], vec![2.0; 3]);
        assert_eq!(v[0][2], vec![1.5; 3]);
        assert_eq!(c.mask.to_vec2::<f32>().unwrap(), vec![vec![1.0; 3]]);
        assert_ne!(c.id, a.id);
        assert_eq!(Conditioning::lerp(&a, &b, 0.0).unwrap().id, a.id);
        assert!(Conditioning::lerp(&a, &b, f32::NAN).is_err());
    }

    #[test]
    fn audio_helpers() {
        let a = Audio::new(48_000, vec![vec![0.5, -1.0], vec![0.0, 0.25]]).unwrap();
        assert_eq!(a.interleaved(), vec![0.5, 0.0, -1.0, 0.25]);
        assert_eq!(a.peak(), 1.0);
        assert!(Audio::new(48_000, vec![vec![0.0], vec![]]).is_err());
    }
}
