//! Model configurations: the DiT and its condition encoder / audio tokenizer (ACE-Step
//! `configuration_acestep_v15.py`, acestep.md §3.2), the Qwen3 text encoder (transformers
//! `Qwen3Config`, acestep.md §1.2) and the Oobleck VAE (diffusers `AutoencoderOobleck`,
//! acestep.md §1.9), with presets for the published sizes so benchmarks can instantiate
//! full-size models without files.
//!
//! Each `config.json` is read through a serde type whose fields are the published keys
//! (`#[serde(default)]`): a key absent from the file takes the value of the published model
//! (the preset), a key derived from another (`head_dim`, `in_channels`, the `encoder_*` widths)
//! follows the key it derives from, and the keys every checkpoint writes (the decoder's sizes)
//! are required. A JSON `null` counts as absent, as transformers writes it.

use std::path::Path;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::{AceStepError, Result};

/// Shape of one stack of pre-norm Qwen3-style encoder layers (lyric, timbre, pooler, detokenizer).
#[derive(Clone, Debug, PartialEq)]
pub struct StackConfig {
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_attention_heads: usize,
    pub num_key_value_heads: usize,
    pub head_dim: usize,
    pub rope_theta: f64,
    pub rms_norm_eps: f64,
    /// Bidirectional band `|i − j| ≤ sliding_window` on even layers.
    pub sliding_window: usize,
}

/// Everything in an ACE-Step 1.5 DiT checkpoint: decoder, condition encoder, audio tokenizer and
/// detokenizer.
#[derive(Clone, Debug, PartialEq)]
pub struct DitConfig {
    /// Decoder width (2048 for 2B, 2560 for XL).
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub num_key_value_heads: usize,
    pub head_dim: usize,
    pub rope_theta: f64,
    pub rms_norm_eps: f64,
    pub sliding_window: usize,
    /// `true` for a sliding-window layer, one entry per decoder layer.
    pub sliding_layers: Vec<bool>,
    /// Input channels of the patch conv: context (hint + mask) followed by the latent.
    pub in_channels: usize,
    /// Latent channels `C` (64).
    pub audio_acoustic_hidden_dim: usize,
    pub patch_size: usize,
    /// Width of the condition encoder and of the packed conditioning (2048 for both sizes).
    pub encoder: StackConfig,
    /// Width of the Qwen3 text encoder's hidden states (1024).
    pub text_hidden_dim: usize,
    /// Channels of the timbre encoder input (the latent channels, 64).
    pub timbre_hidden_dim: usize,
    /// Latent frames fed to the timbre encoder (750 = 30 s).
    pub timbre_fix_frame: usize,
    pub num_lyric_encoder_hidden_layers: usize,
    pub num_timbre_encoder_hidden_layers: usize,
    /// Depth of the tokenizer's attention pooler and of the detokenizer.
    pub num_attention_pooler_hidden_layers: usize,
    /// 25 Hz frames per 5 Hz code.
    pub pool_window_size: usize,
    pub fsq_dim: usize,
    pub fsq_input_levels: Vec<usize>,
    pub fsq_input_num_quantizers: usize,
}

impl DitConfig {
    /// The published 2B turbo configuration (acestep.md §3.2).
    pub fn turbo_2b() -> Self {
        let encoder = StackConfig {
            hidden_size: 2048,
            intermediate_size: 6144,
            num_attention_heads: 16,
            num_key_value_heads: 8,
            head_dim: 128,
            rope_theta: 1_000_000.0,
            rms_norm_eps: 1e-6,
            sliding_window: 128,
        };
        Self {
            hidden_size: 2048,
            intermediate_size: 6144,
            num_hidden_layers: 24,
            num_attention_heads: 16,
            num_key_value_heads: 8,
            head_dim: 128,
            rope_theta: 1_000_000.0,
            rms_norm_eps: 1e-6,
            sliding_window: 128,
            sliding_layers: (0..24).map(|i| i % 2 == 0).collect(),
            in_channels: 192,
            audio_acoustic_hidden_dim: 64,
            patch_size: 2,
            encoder,
            text_hidden_dim: 1024,
            timbre_hidden_dim: 64,
            timbre_fix_frame: 750,
            num_lyric_encoder_hidden_layers: 8,
            num_timbre_encoder_hidden_layers: 4,
            num_attention_pooler_hidden_layers: 2,
            pool_window_size: 5,
            fsq_dim: 2048,
            fsq_input_levels: vec![8, 8, 8, 5, 5, 5],
            fsq_input_num_quantizers: 1,
        }
    }

    /// The published XL (5B) turbo configuration: wider, deeper decoder; same encoder.
    pub fn xl_turbo() -> Self {
        Self {
            hidden_size: 2560,
            intermediate_size: 9728,
            num_hidden_layers: 32,
            num_attention_heads: 32,
            num_key_value_heads: 8,
            sliding_layers: (0..32).map(|i| i % 2 == 0).collect(),
            ..Self::turbo_2b()
        }
    }

    /// Context channels `Cc` = hint + chunk mask (128).
    pub fn context_channels(&self) -> usize {
        self.in_channels
            .saturating_sub(self.audio_acoustic_hidden_dim)
    }

    /// Stack config of the decoder's self/cross attention.
    pub fn decoder_stack(&self) -> StackConfig {
        StackConfig {
            hidden_size: self.hidden_size,
            intermediate_size: self.intermediate_size,
            num_attention_heads: self.num_attention_heads,
            num_key_value_heads: self.num_key_value_heads,
            head_dim: self.head_dim,
            rope_theta: self.rope_theta,
            rms_norm_eps: self.rms_norm_eps,
            sliding_window: self.sliding_window,
        }
    }

    /// Product of the FSQ levels: the number of 5 Hz codes (64 000).
    pub fn codebook_size(&self) -> usize {
        self.fsq_input_levels.iter().product()
    }

    /// Reject configurations the forward pass cannot run (zero sizes, inconsistent channels).
    pub fn validate(&self, path: &Path) -> Result<()> {
        let bad = |d: String| Err(AceStepError::config(path, d));
        let nonzero = [
            ("hidden_size", self.hidden_size),
            ("num_attention_heads", self.num_attention_heads),
            ("num_key_value_heads", self.num_key_value_heads),
            ("head_dim", self.head_dim),
            ("patch_size", self.patch_size),
            ("audio_acoustic_hidden_dim", self.audio_acoustic_hidden_dim),
            ("intermediate_size", self.intermediate_size),
            ("encoder hidden_size", self.encoder.hidden_size),
            ("encoder head_dim", self.encoder.head_dim),
            ("encoder intermediate_size", self.encoder.intermediate_size),
            ("text_hidden_dim", self.text_hidden_dim),
            ("timbre_fix_frame", self.timbre_fix_frame),
            (
                "encoder num_attention_heads",
                self.encoder.num_attention_heads,
            ),
            (
                "encoder num_key_value_heads",
                self.encoder.num_key_value_heads,
            ),
            ("pool_window_size", self.pool_window_size),
        ];
        for (name, v) in nonzero {
            if v == 0 {
                return bad(format!("{name} is 0"));
            }
        }
        if !self
            .num_attention_heads
            .is_multiple_of(self.num_key_value_heads)
            || !self
                .encoder
                .num_attention_heads
                .is_multiple_of(self.encoder.num_key_value_heads)
        {
            return bad("attention heads are not a multiple of key/value heads".into());
        }
        if !self.head_dim.is_multiple_of(2) || !self.encoder.head_dim.is_multiple_of(2) {
            return bad("head_dim must be even for RoPE".into());
        }
        if self.in_channels <= self.audio_acoustic_hidden_dim {
            return bad(format!(
                "in_channels {} must exceed audio_acoustic_hidden_dim {}",
                self.in_channels, self.audio_acoustic_hidden_dim
            ));
        }
        if self.sliding_layers.len() != self.num_hidden_layers {
            return bad("layer_types length differs from num_hidden_layers".into());
        }
        if self.fsq_input_levels.is_empty() || self.fsq_input_levels.iter().any(|&l| l < 2) {
            return bad("fsq_input_levels must be non-empty and each level at least 2".into());
        }
        if self.fsq_input_num_quantizers == 0 {
            return bad("fsq_input_num_quantizers is 0".into());
        }
        Ok(())
    }

    /// Parse the original `acestep-v15-*/config.json` (one flat object for all four parts).
    pub fn from_original_json(v: &Value, path: &Path) -> Result<Self> {
        let file: DitFile = parse(v, path)?;
        let cfg = file.into_config(path)?;
        cfg.validate(path)?;
        Ok(cfg)
    }

    /// Assemble from the diffusers component configs that the folder has: `transformer/`,
    /// `condition_encoder/`, `audio_tokenizer/`. Without the condition encoder's config the
    /// encoder stack keeps the published shape at the transformer's `encoder_hidden_size` (only
    /// the condition encoder reads it; a DiT-only model needs nothing else); without the
    /// transformer's, the decoder fields are the published 2B's (only the DiT reads them; the
    /// condition encoder and the FSQ parts need nothing else). `timbre_fix_frame` comes from the
    /// VAE's frame rate (30 s of frames).
    pub fn from_diffusers_json(
        transformer: Option<(&Value, &Path)>,
        condition: Option<(&Value, &Path)>,
        tokenizer: Option<(&Value, &Path)>,
        timbre_fix_frame: usize,
    ) -> Result<Self> {
        let (mut cfg, enc_hidden, label) = match transformer {
            Some((v, p)) => {
                let file: DitFile = parse(v, p)?;
                let enc_hidden = file.encoder_hidden_size;
                (file.into_config(p)?, enc_hidden, p)
            }
            None => {
                let label = condition.or(tokenizer).map_or(Path::new("(none)"), |c| c.1);
                (Self::turbo_2b(), None, label)
            }
        };
        cfg.timbre_fix_frame = timbre_fix_frame;
        if let Some((v, p)) = condition {
            let c: ConditionEncoderFile = parse(v, p)?;
            let encoder = c.stack(p)?;
            if let Some(h) = enc_hidden
                && h != encoder.hidden_size
            {
                return Err(AceStepError::config(
                    label,
                    format!(
                        "encoder_hidden_size {h} differs from the condition encoder's hidden_size {}",
                        encoder.hidden_size
                    ),
                ));
            }
            cfg.encoder = encoder;
            cfg.text_hidden_dim = c.text_hidden_dim;
            cfg.timbre_hidden_dim = c.timbre_hidden_dim.unwrap_or(cfg.audio_acoustic_hidden_dim);
            cfg.num_lyric_encoder_hidden_layers = c.num_lyric_encoder_hidden_layers;
            cfg.num_timbre_encoder_hidden_layers = c.num_timbre_encoder_hidden_layers;
        }
        cfg.fsq_dim = cfg.encoder.hidden_size;
        if let Some((v, p)) = tokenizer {
            let k: AudioTokenizerFile = parse(v, p)?;
            cfg.fsq_input_levels = k.fsq_input_levels;
            cfg.fsq_input_num_quantizers = k.fsq_input_num_quantizers;
            cfg.pool_window_size = k.pool_window_size;
            cfg.num_attention_pooler_hidden_layers = k.num_attention_pooler_hidden_layers;
            cfg.fsq_dim = k.fsq_dim.unwrap_or(cfg.encoder.hidden_size);
        }
        cfg.validate(label)?;
        Ok(cfg)
    }

    /// The original-layout `config.json` for this configuration (used by tests and tools).
    pub fn to_original_json(&self) -> Value {
        serde_json::to_value(DitFile::from_config(self)).unwrap_or(Value::Null)
    }
}

/// How a layer of the decoder attends (`layer_types` entries).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum LayerType {
    SlidingAttention,
    FullAttention,
}

/// `rope_parameters` (transformers ≥ 5 writes the RoPE base there instead of `rope_theta`).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(default)]
struct RopeParameters {
    rope_theta: Option<f64>,
}

/// The RoPE base: `rope_parameters.rope_theta`, else `rope_theta`, else `default`.
fn rope_base(direct: Option<f64>, params: &Option<RopeParameters>, default: f64) -> f64 {
    params
        .as_ref()
        .and_then(|p| p.rope_theta)
        .or(direct)
        .unwrap_or(default)
}

/// `acestep-v15-*/config.json` (acestep.md §3.2), also the diffusers `transformer/config.json`
/// (same key names for the decoder; it has none of the encoder keys).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default)]
struct DitFile {
    model_type: Option<String>,
    architectures: Option<Vec<String>>,
    hidden_size: Option<usize>,
    intermediate_size: Option<usize>,
    num_hidden_layers: Option<usize>,
    num_attention_heads: Option<usize>,
    num_key_value_heads: Option<usize>,
    /// Absent: `hidden_size / num_attention_heads`.
    head_dim: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    rope_theta: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    rope_parameters: Option<RopeParameters>,
    rms_norm_eps: f64,
    sliding_window: usize,
    /// Absent: alternating, sliding first.
    layer_types: Option<Vec<LayerType>>,
    /// Absent: context (2·latent) + latent.
    in_channels: Option<usize>,
    audio_acoustic_hidden_dim: usize,
    patch_size: usize,
    /// Absent: the decoder's values.
    encoder_hidden_size: Option<usize>,
    encoder_intermediate_size: Option<usize>,
    encoder_num_attention_heads: Option<usize>,
    encoder_num_key_value_heads: Option<usize>,
    encoder_head_dim: Option<usize>,
    text_hidden_dim: usize,
    /// Absent: the latent channels.
    timbre_hidden_dim: Option<usize>,
    timbre_fix_frame: usize,
    num_lyric_encoder_hidden_layers: usize,
    num_timbre_encoder_hidden_layers: usize,
    num_attention_pooler_hidden_layers: usize,
    pool_window_size: usize,
    fsq_dim: usize,
    fsq_input_levels: Vec<usize>,
    fsq_input_num_quantizers: usize,
}

impl Default for DitFile {
    /// The published 2B turbo values for every key that is not required or derived.
    fn default() -> Self {
        let mut f = Self::from_config(&DitConfig::turbo_2b());
        f.hidden_size = None;
        f.intermediate_size = None;
        f.num_hidden_layers = None;
        f.num_attention_heads = None;
        f.num_key_value_heads = None;
        f.head_dim = None;
        f.rope_theta = None;
        f.layer_types = None;
        f.in_channels = None;
        f.encoder_hidden_size = None;
        f.encoder_intermediate_size = None;
        f.encoder_num_attention_heads = None;
        f.encoder_num_key_value_heads = None;
        f.encoder_head_dim = None;
        f.timbre_hidden_dim = None;
        f
    }
}

impl DitFile {
    fn from_config(c: &DitConfig) -> Self {
        Self {
            model_type: Some("acestep".into()),
            architectures: Some(vec!["AceStepConditionGenerationModel".into()]),
            hidden_size: Some(c.hidden_size),
            intermediate_size: Some(c.intermediate_size),
            num_hidden_layers: Some(c.num_hidden_layers),
            num_attention_heads: Some(c.num_attention_heads),
            num_key_value_heads: Some(c.num_key_value_heads),
            head_dim: Some(c.head_dim),
            rope_theta: Some(c.rope_theta),
            rope_parameters: None,
            rms_norm_eps: c.rms_norm_eps,
            sliding_window: c.sliding_window,
            layer_types: Some(
                c.sliding_layers
                    .iter()
                    .map(|&s| {
                        if s {
                            LayerType::SlidingAttention
                        } else {
                            LayerType::FullAttention
                        }
                    })
                    .collect(),
            ),
            in_channels: Some(c.in_channels),
            audio_acoustic_hidden_dim: c.audio_acoustic_hidden_dim,
            patch_size: c.patch_size,
            encoder_hidden_size: Some(c.encoder.hidden_size),
            encoder_intermediate_size: Some(c.encoder.intermediate_size),
            encoder_num_attention_heads: Some(c.encoder.num_attention_heads),
            encoder_num_key_value_heads: Some(c.encoder.num_key_value_heads),
            encoder_head_dim: Some(c.encoder.head_dim),
            text_hidden_dim: c.text_hidden_dim,
            timbre_hidden_dim: Some(c.timbre_hidden_dim),
            timbre_fix_frame: c.timbre_fix_frame,
            num_lyric_encoder_hidden_layers: c.num_lyric_encoder_hidden_layers,
            num_timbre_encoder_hidden_layers: c.num_timbre_encoder_hidden_layers,
            num_attention_pooler_hidden_layers: c.num_attention_pooler_hidden_layers,
            pool_window_size: c.pool_window_size,
            fsq_dim: c.fsq_dim,
            fsq_input_levels: c.fsq_input_levels.clone(),
            fsq_input_num_quantizers: c.fsq_input_num_quantizers,
        }
    }

    fn into_config(self, path: &Path) -> Result<DitConfig> {
        let hidden = required(self.hidden_size, "hidden_size", path)?;
        let intermediate = required(self.intermediate_size, "intermediate_size", path)?;
        let layers = required(self.num_hidden_layers, "num_hidden_layers", path)?;
        let heads = required(self.num_attention_heads, "num_attention_heads", path)?;
        let kv = required(self.num_key_value_heads, "num_key_value_heads", path)?;
        let head_dim = self.head_dim.unwrap_or(hidden / heads.max(1));
        let rope_theta = rope_base(
            self.rope_theta,
            &self.rope_parameters,
            DitConfig::turbo_2b().rope_theta,
        );
        let sliding_layers = match self.layer_types {
            None => (0..layers).map(|i| i % 2 == 0).collect(),
            Some(types) => {
                if types.len() < layers {
                    return Err(AceStepError::config(
                        path,
                        format!(
                            "`layer_types` has {} entries for {layers} layers",
                            types.len()
                        ),
                    ));
                }
                types
                    .iter()
                    .take(layers)
                    .map(|t| *t == LayerType::SlidingAttention)
                    .collect()
            }
        };
        let latent = self.audio_acoustic_hidden_dim;
        let encoder = StackConfig {
            hidden_size: self.encoder_hidden_size.unwrap_or(hidden),
            intermediate_size: self.encoder_intermediate_size.unwrap_or(intermediate),
            num_attention_heads: self.encoder_num_attention_heads.unwrap_or(heads),
            num_key_value_heads: self.encoder_num_key_value_heads.unwrap_or(kv),
            head_dim: self.encoder_head_dim.unwrap_or(head_dim),
            rope_theta,
            rms_norm_eps: self.rms_norm_eps,
            sliding_window: self.sliding_window,
        };
        Ok(DitConfig {
            hidden_size: hidden,
            intermediate_size: intermediate,
            num_hidden_layers: layers,
            num_attention_heads: heads,
            num_key_value_heads: kv,
            head_dim,
            rope_theta,
            rms_norm_eps: self.rms_norm_eps,
            sliding_window: self.sliding_window,
            sliding_layers,
            in_channels: self.in_channels.unwrap_or(3 * latent),
            audio_acoustic_hidden_dim: latent,
            patch_size: self.patch_size,
            encoder,
            text_hidden_dim: self.text_hidden_dim,
            timbre_hidden_dim: self.timbre_hidden_dim.unwrap_or(latent),
            timbre_fix_frame: self.timbre_fix_frame,
            num_lyric_encoder_hidden_layers: self.num_lyric_encoder_hidden_layers,
            num_timbre_encoder_hidden_layers: self.num_timbre_encoder_hidden_layers,
            num_attention_pooler_hidden_layers: self.num_attention_pooler_hidden_layers,
            pool_window_size: self.pool_window_size,
            fsq_dim: self.fsq_dim,
            fsq_input_levels: self.fsq_input_levels,
            fsq_input_num_quantizers: self.fsq_input_num_quantizers,
        })
    }
}

/// Diffusers `condition_encoder/config.json` (`AceStepConditionEncoder`).
#[derive(Clone, Debug, Deserialize)]
#[serde(default)]
struct ConditionEncoderFile {
    hidden_size: Option<usize>,
    intermediate_size: Option<usize>,
    num_attention_heads: usize,
    num_key_value_heads: usize,
    head_dim: usize,
    rope_theta: Option<f64>,
    rope_parameters: Option<RopeParameters>,
    rms_norm_eps: f64,
    sliding_window: usize,
    text_hidden_dim: usize,
    /// Absent: the latent channels.
    timbre_hidden_dim: Option<usize>,
    num_lyric_encoder_hidden_layers: usize,
    num_timbre_encoder_hidden_layers: usize,
}

impl Default for ConditionEncoderFile {
    fn default() -> Self {
        let c = DitConfig::turbo_2b();
        Self {
            hidden_size: None,
            intermediate_size: None,
            num_attention_heads: c.encoder.num_attention_heads,
            num_key_value_heads: c.encoder.num_key_value_heads,
            head_dim: c.encoder.head_dim,
            rope_theta: None,
            rope_parameters: None,
            rms_norm_eps: c.encoder.rms_norm_eps,
            sliding_window: c.encoder.sliding_window,
            text_hidden_dim: c.text_hidden_dim,
            timbre_hidden_dim: None,
            num_lyric_encoder_hidden_layers: c.num_lyric_encoder_hidden_layers,
            num_timbre_encoder_hidden_layers: c.num_timbre_encoder_hidden_layers,
        }
    }
}

impl ConditionEncoderFile {
    fn stack(&self, path: &Path) -> Result<StackConfig> {
        Ok(StackConfig {
            hidden_size: required(self.hidden_size, "hidden_size", path)?,
            intermediate_size: required(self.intermediate_size, "intermediate_size", path)?,
            num_attention_heads: self.num_attention_heads,
            num_key_value_heads: self.num_key_value_heads,
            head_dim: self.head_dim,
            rope_theta: rope_base(
                self.rope_theta,
                &self.rope_parameters,
                DitConfig::turbo_2b().encoder.rope_theta,
            ),
            rms_norm_eps: self.rms_norm_eps,
            sliding_window: self.sliding_window,
        })
    }
}

/// Diffusers `audio_tokenizer/config.json` (`AceStepAudioTokenizer`): the FSQ keys.
#[derive(Clone, Debug, Deserialize)]
#[serde(default)]
struct AudioTokenizerFile {
    fsq_input_levels: Vec<usize>,
    fsq_input_num_quantizers: usize,
    pool_window_size: usize,
    num_attention_pooler_hidden_layers: usize,
    /// Absent: the encoder width.
    fsq_dim: Option<usize>,
}

impl Default for AudioTokenizerFile {
    fn default() -> Self {
        let c = DitConfig::turbo_2b();
        Self {
            fsq_input_levels: c.fsq_input_levels,
            fsq_input_num_quantizers: c.fsq_input_num_quantizers,
            pool_window_size: c.pool_window_size,
            num_attention_pooler_hidden_layers: c.num_attention_pooler_hidden_layers,
            fsq_dim: None,
        }
    }
}

/// The Qwen3 text encoder (`Qwen3-Embedding-0.6B`: 28 layers, 1024 wide, 16/8 heads of 128).
#[derive(Clone, Debug, PartialEq)]
pub struct TextEncoderConfig {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub num_key_value_heads: usize,
    pub head_dim: usize,
    pub rope_theta: f64,
    pub rms_norm_eps: f64,
}

impl TextEncoderConfig {
    /// `Qwen3-Embedding-0.6B`.
    pub fn qwen3_embedding_0_6b() -> Self {
        Self {
            vocab_size: 151_669,
            hidden_size: 1024,
            intermediate_size: 3072,
            num_hidden_layers: 28,
            num_attention_heads: 16,
            num_key_value_heads: 8,
            head_dim: 128,
            rope_theta: 1_000_000.0,
            rms_norm_eps: 1e-6,
        }
    }

    pub fn from_json(v: &Value, path: &Path) -> Result<Self> {
        let f: TextEncoderFile = parse(v, path)?;
        let hidden = required(f.hidden_size, "hidden_size", path)?;
        let heads = required(f.num_attention_heads, "num_attention_heads", path)?;
        let cfg = Self {
            vocab_size: required(f.vocab_size, "vocab_size", path)?,
            hidden_size: hidden,
            intermediate_size: required(f.intermediate_size, "intermediate_size", path)?,
            num_hidden_layers: required(f.num_hidden_layers, "num_hidden_layers", path)?,
            num_attention_heads: heads,
            num_key_value_heads: f.num_key_value_heads.unwrap_or(heads),
            head_dim: f.head_dim.unwrap_or(hidden / heads.max(1)),
            rope_theta: rope_base(
                f.rope_theta,
                &f.rope_parameters,
                Self::qwen3_embedding_0_6b().rope_theta,
            ),
            rms_norm_eps: f.rms_norm_eps,
        };
        if cfg.num_attention_heads == 0
            || cfg.num_key_value_heads == 0
            || cfg.head_dim == 0
            || cfg.hidden_size == 0
            || cfg.vocab_size == 0
            || !cfg
                .num_attention_heads
                .is_multiple_of(cfg.num_key_value_heads)
            || !cfg.head_dim.is_multiple_of(2)
        {
            return Err(AceStepError::config(
                path,
                "inconsistent attention head configuration",
            ));
        }
        Ok(cfg)
    }

    pub(crate) fn stack(&self) -> StackConfig {
        StackConfig {
            hidden_size: self.hidden_size,
            intermediate_size: self.intermediate_size,
            num_attention_heads: self.num_attention_heads,
            num_key_value_heads: self.num_key_value_heads,
            head_dim: self.head_dim,
            rope_theta: self.rope_theta,
            rms_norm_eps: self.rms_norm_eps,
            sliding_window: usize::MAX,
        }
    }
}

/// A Qwen3 `config.json` (transformers `Qwen3Config`): the keys the text encoder reads.
#[derive(Clone, Debug, Deserialize)]
#[serde(default)]
struct TextEncoderFile {
    vocab_size: Option<usize>,
    hidden_size: Option<usize>,
    intermediate_size: Option<usize>,
    num_hidden_layers: Option<usize>,
    num_attention_heads: Option<usize>,
    /// Absent: `num_attention_heads` (no grouping).
    num_key_value_heads: Option<usize>,
    /// Absent: `hidden_size / num_attention_heads`.
    head_dim: Option<usize>,
    rope_theta: Option<f64>,
    rope_parameters: Option<RopeParameters>,
    rms_norm_eps: f64,
}

impl Default for TextEncoderFile {
    fn default() -> Self {
        Self {
            vocab_size: None,
            hidden_size: None,
            intermediate_size: None,
            num_hidden_layers: None,
            num_attention_heads: None,
            num_key_value_heads: None,
            head_dim: None,
            rope_theta: None,
            rope_parameters: None,
            rms_norm_eps: TextEncoderConfig::qwen3_embedding_0_6b().rms_norm_eps,
        }
    }
}

/// The Oobleck VAE (`vae/config.json`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default = "VaeConfig::oobleck_class_defaults")]
pub struct VaeConfig {
    pub encoder_hidden_size: usize,
    /// Encoder strides; the decoder runs them reversed.
    pub downsampling_ratios: Vec<usize>,
    pub channel_multiples: Vec<usize>,
    pub decoder_channels: usize,
    /// Latent channels (64).
    pub decoder_input_channels: usize,
    pub audio_channels: usize,
    pub sampling_rate: u32,
}

impl VaeConfig {
    /// ACE-Step 1.5's VAE: 48 kHz stereo, hop 1920 (25 Hz), 64 latent channels.
    pub fn acestep() -> Self {
        Self {
            encoder_hidden_size: 128,
            downsampling_ratios: vec![2, 4, 4, 6, 10],
            channel_multiples: vec![1, 2, 4, 8, 16],
            decoder_channels: 128,
            decoder_input_channels: 64,
            audio_channels: 2,
            sampling_rate: 48_000,
        }
    }

    /// Audio samples per latent frame.
    pub fn hop(&self) -> usize {
        self.downsampling_ratios.iter().product()
    }

    /// The defaults of diffusers' `AutoencoderOobleck` class, which a `vae/config.json` omits
    /// keys of (not ACE-Step's values: those are [`VaeConfig::acestep`]).
    pub fn oobleck_class_defaults() -> Self {
        Self {
            encoder_hidden_size: 128,
            downsampling_ratios: vec![2, 4, 4, 8, 8],
            channel_multiples: vec![1, 2, 4, 8, 16],
            decoder_channels: 128,
            decoder_input_channels: 64,
            audio_channels: 2,
            sampling_rate: 44_100,
        }
    }

    pub fn from_json(v: &Value, path: &Path) -> Result<Self> {
        let cfg: Self = parse(v, path)?;
        if cfg.downsampling_ratios.is_empty()
            || cfg.downsampling_ratios.len() != cfg.channel_multiples.len()
            || cfg.downsampling_ratios.contains(&0)
        {
            return Err(AceStepError::config(
                path,
                "downsampling_ratios and channel_multiples must be non-empty, equally long and non-zero",
            ));
        }
        if cfg.encoder_hidden_size == 0
            || cfg.decoder_channels == 0
            || cfg.audio_channels == 0
            || cfg.decoder_input_channels == 0
            || cfg.channel_multiples.contains(&0)
        {
            return Err(AceStepError::config(path, "zero channel count"));
        }
        Ok(cfg)
    }
}

/// A key every checkpoint of this kind writes.
fn required(v: Option<usize>, key: &str, path: &Path) -> Result<usize> {
    v.ok_or_else(|| AceStepError::config(path, format!("`{key}` is missing")))
}

/// Deserialize a config object, `null` values counting as absent; errors name the file and the
/// key.
fn parse<T: DeserializeOwned>(v: &Value, path: &Path) -> Result<T> {
    let v = match v {
        Value::Object(map) => Value::Object(
            map.iter()
                .filter(|(_, x)| !x.is_null())
                .map(|(k, x)| (k.clone(), x.clone()))
                .collect(),
        ),
        _ => return Err(AceStepError::config(path, "not a JSON object")),
    };
    serde_path_to_error::deserialize(&v).map_err(|e| {
        let key = e.path().to_string();
        AceStepError::config(path, format!("`{key}`: {}", e.inner()))
    })
}

/// Read and parse a JSON file, with errors naming it.
pub(crate) fn read_json(path: &Path) -> Result<Value> {
    if !path.is_file() {
        return Err(AceStepError::MissingFile {
            path: path.to_path_buf(),
            what: "JSON config".into(),
        });
    }
    let text = std::fs::read_to_string(path).map_err(|e| AceStepError::io(path, e))?;
    serde_json::from_str(&text).map_err(|e| AceStepError::invalid(path, format!("bad JSON: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every preset survives a trip through its `config.json`.
    #[test]
    fn presets_round_trip_through_config_json() {
        let p = Path::new("config.json");
        for cfg in [DitConfig::turbo_2b(), DitConfig::xl_turbo()] {
            let back = DitConfig::from_original_json(&cfg.to_original_json(), p).unwrap();
            assert_eq!(back, cfg);
        }
    }

    /// Absent keys take the published values, derived keys follow their source, required keys
    /// are required, and a wrong type names the key.
    #[test]
    fn defaults_derivations_and_errors() {
        let p = Path::new("config.json");
        let v = serde_json::json!({
            "hidden_size": 64, "intermediate_size": 96, "num_hidden_layers": 2,
            "num_attention_heads": 4, "num_key_value_heads": 2, "sliding_window": null,
            "rope_parameters": {"rope_theta": 10000.0}
        });
        let c = DitConfig::from_original_json(&v, p).unwrap();
        let turbo = DitConfig::turbo_2b();
        assert_eq!(c.head_dim, 16);
        assert_eq!(c.encoder.hidden_size, 64);
        assert_eq!(c.encoder.intermediate_size, 96);
        assert_eq!(c.sliding_window, turbo.sliding_window);
        assert_eq!(c.rope_theta, 10000.0);
        assert_eq!(c.sliding_layers, vec![true, false]);
        assert_eq!(c.in_channels, 3 * turbo.audio_acoustic_hidden_dim);
        assert_eq!(c.fsq_input_levels, turbo.fsq_input_levels);
        let mut missing = v.clone();
        missing.as_object_mut().unwrap().remove("num_hidden_layers");
        let e = DitConfig::from_original_json(&missing, p).unwrap_err();
        assert!(
            e.to_string().contains("`num_hidden_layers` is missing"),
            "{e}"
        );
        let mut wrong = v.clone();
        wrong["patch_size"] = serde_json::json!("two");
        let e = DitConfig::from_original_json(&wrong, p).unwrap_err();
        assert!(e.to_string().contains("patch_size"), "{e}");
        let mut bad_layer = v;
        bad_layer["layer_types"] = serde_json::json!(["sliding_attention", "dense"]);
        let e = DitConfig::from_original_json(&bad_layer, p).unwrap_err();
        assert!(e.to_string().contains("layer_types"), "{e}");
    }

    #[test]
    fn vae_keys_absent_from_the_file_take_the_class_defaults() {
        let c = VaeConfig::from_json(&serde_json::json!({"sampling_rate": 48000}), Path::new("v"))
            .unwrap();
        assert_eq!(c.sampling_rate, 48_000);
        assert_eq!(c.downsampling_ratios, vec![2, 4, 4, 8, 8]);
    }
}
