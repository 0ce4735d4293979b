//! Model configurations: the DiT and its condition encoder / audio tokenizer (ACE-Step
//! `configuration_acestep_v15.py`, acestep.md §3.2), the Qwen3 text encoder (transformers
//! `Qwen3Config`, acestep.md §1.2) and the Oobleck VAE (diffusers `AutoencoderOobleck`,
//! acestep.md §1.9). They are parsed from either checkpoint layout, and there are presets for
//! the published sizes so benchmarks can instantiate full-size models without files.

use std::path::Path;

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

    /// Parse the original `acestep-v15-*/config.json` (one flat object for all four parts).
    pub fn from_original_json(v: &Value, path: &Path) -> Result<Self> {
        let j = Json { v, path };
        let hidden = j.usize("hidden_size")?;
        let layers = j.usize("num_hidden_layers")?;
        let heads = j.usize("num_attention_heads")?;
        let kv = j.usize("num_key_value_heads")?;
        let head_dim = j.usize_or("head_dim", hidden / heads.max(1))?;
        let rope_theta = j.rope_theta()?;
        let eps = j.f64_or("rms_norm_eps", 1e-6)?;
        let window = j.usize_or("sliding_window", 128)?;
        let encoder = StackConfig {
            hidden_size: j.usize_or("encoder_hidden_size", hidden)?,
            intermediate_size: j
                .usize_or("encoder_intermediate_size", j.usize("intermediate_size")?)?,
            num_attention_heads: j.usize_or("encoder_num_attention_heads", heads)?,
            num_key_value_heads: j.usize_or("encoder_num_key_value_heads", kv)?,
            head_dim: j.usize_or("encoder_head_dim", head_dim)?,
            rope_theta,
            rms_norm_eps: eps,
            sliding_window: window,
        };
        let latent = j.usize_or("audio_acoustic_hidden_dim", 64)?;
        let cfg = Self {
            hidden_size: hidden,
            intermediate_size: j.usize("intermediate_size")?,
            num_hidden_layers: layers,
            num_attention_heads: heads,
            num_key_value_heads: kv,
            head_dim,
            rope_theta,
            rms_norm_eps: eps,
            sliding_window: window,
            sliding_layers: j.layer_types(layers)?,
            in_channels: j.usize_or("in_channels", 3 * latent)?,
            audio_acoustic_hidden_dim: latent,
            patch_size: j.usize_or("patch_size", 2)?,
            encoder,
            text_hidden_dim: j.usize_or("text_hidden_dim", 1024)?,
            timbre_hidden_dim: j.usize_or("timbre_hidden_dim", latent)?,
            timbre_fix_frame: j.usize_or("timbre_fix_frame", 750)?,
            num_lyric_encoder_hidden_layers: j.usize_or("num_lyric_encoder_hidden_layers", 8)?,
            num_timbre_encoder_hidden_layers: j.usize_or("num_timbre_encoder_hidden_layers", 4)?,
            num_attention_pooler_hidden_layers: j
                .usize_or("num_attention_pooler_hidden_layers", 2)?,
            pool_window_size: j.usize_or("pool_window_size", 5)?,
            fsq_dim: j.usize_or("fsq_dim", 2048)?,
            fsq_input_levels: j.usize_list_or("fsq_input_levels", &[8, 8, 8, 5, 5, 5])?,
            fsq_input_num_quantizers: j.usize_or("fsq_input_num_quantizers", 1)?,
        };
        cfg.validate(path)?;
        Ok(cfg)
    }

    /// Assemble from the diffusers component configs (`transformer/`, `condition_encoder/`,
    /// `audio_tokenizer/`). `timbre_fix_frame` comes from the VAE's frame rate (30 s of frames).
    pub fn from_diffusers_json(
        transformer: (&Value, &Path),
        condition: (&Value, &Path),
        tokenizer: Option<(&Value, &Path)>,
        timbre_fix_frame: usize,
    ) -> Result<Self> {
        let t = Json {
            v: transformer.0,
            path: transformer.1,
        };
        let c = Json {
            v: condition.0,
            path: condition.1,
        };
        let hidden = t.usize("hidden_size")?;
        let layers = t.usize("num_hidden_layers")?;
        let heads = t.usize("num_attention_heads")?;
        let head_dim = t.usize_or("head_dim", hidden / heads.max(1))?;
        let latent = t.usize_or("audio_acoustic_hidden_dim", 64)?;
        let enc_heads = c.usize_or("num_attention_heads", 16)?;
        let encoder = StackConfig {
            hidden_size: c.usize("hidden_size")?,
            intermediate_size: c.usize("intermediate_size")?,
            num_attention_heads: enc_heads,
            num_key_value_heads: c.usize_or("num_key_value_heads", 8)?,
            head_dim: c.usize_or("head_dim", 128)?,
            rope_theta: c.rope_theta()?,
            rms_norm_eps: c.f64_or("rms_norm_eps", 1e-6)?,
            sliding_window: c.usize_or("sliding_window", 128)?,
        };
        let t_enc_hidden = t.usize_or("encoder_hidden_size", hidden)?;
        if t_enc_hidden != encoder.hidden_size {
            return Err(AceStepError::config(
                transformer.1,
                format!(
                    "encoder_hidden_size {t_enc_hidden} differs from the condition encoder's hidden_size {}",
                    encoder.hidden_size
                ),
            ));
        }
        let (levels, nq, window, pooler_layers) = match tokenizer {
            Some((v, p)) => {
                let k = Json { v, path: p };
                (
                    k.usize_list_or("fsq_input_levels", &[8, 8, 8, 5, 5, 5])?,
                    k.usize_or("fsq_input_num_quantizers", 1)?,
                    k.usize_or("pool_window_size", 5)?,
                    k.usize_or("num_attention_pooler_hidden_layers", 2)?,
                )
            }
            None => (vec![8, 8, 8, 5, 5, 5], 1, 5, 2),
        };
        let fsq_dim = match tokenizer {
            Some((v, p)) => Json { v, path: p }.usize_or("fsq_dim", encoder.hidden_size)?,
            None => encoder.hidden_size,
        };
        let cfg = Self {
            hidden_size: hidden,
            intermediate_size: t.usize("intermediate_size")?,
            num_hidden_layers: layers,
            num_attention_heads: heads,
            num_key_value_heads: t.usize_or("num_key_value_heads", 8)?,
            head_dim,
            rope_theta: t.rope_theta()?,
            rms_norm_eps: t.f64_or("rms_norm_eps", 1e-6)?,
            sliding_window: t.usize_or("sliding_window", 128)?,
            sliding_layers: t.layer_types(layers)?,
            in_channels: t.usize_or("in_channels", 3 * latent)?,
            audio_acoustic_hidden_dim: latent,
            patch_size: t.usize_or("patch_size", 2)?,
            encoder,
            text_hidden_dim: c.usize_or("text_hidden_dim", 1024)?,
            timbre_hidden_dim: c.usize_or("timbre_hidden_dim", latent)?,
            timbre_fix_frame,
            num_lyric_encoder_hidden_layers: c.usize_or("num_lyric_encoder_hidden_layers", 8)?,
            num_timbre_encoder_hidden_layers: c.usize_or("num_timbre_encoder_hidden_layers", 4)?,
            num_attention_pooler_hidden_layers: pooler_layers,
            pool_window_size: window,
            fsq_dim,
            fsq_input_levels: levels,
            fsq_input_num_quantizers: nq,
        };
        cfg.validate(transformer.1)?;
        Ok(cfg)
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

    /// The original-layout `config.json` for this configuration (used by tests and tools).
    pub fn to_original_json(&self) -> Value {
        serde_json::json!({
            "model_type": "acestep",
            "architectures": ["AceStepConditionGenerationModel"],
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.num_hidden_layers,
            "num_attention_heads": self.num_attention_heads,
            "num_key_value_heads": self.num_key_value_heads,
            "head_dim": self.head_dim,
            "rope_theta": self.rope_theta,
            "rms_norm_eps": self.rms_norm_eps,
            "sliding_window": self.sliding_window,
            "layer_types": self.sliding_layers.iter().map(|s| if *s { "sliding_attention" } else { "full_attention" }).collect::<Vec<_>>(),
            "in_channels": self.in_channels,
            "audio_acoustic_hidden_dim": self.audio_acoustic_hidden_dim,
            "patch_size": self.patch_size,
            "encoder_hidden_size": self.encoder.hidden_size,
            "encoder_intermediate_size": self.encoder.intermediate_size,
            "encoder_num_attention_heads": self.encoder.num_attention_heads,
            "encoder_num_key_value_heads": self.encoder.num_key_value_heads,
            "text_hidden_dim": self.text_hidden_dim,
            "timbre_hidden_dim": self.timbre_hidden_dim,
            "timbre_fix_frame": self.timbre_fix_frame,
            "num_lyric_encoder_hidden_layers": self.num_lyric_encoder_hidden_layers,
            "num_timbre_encoder_hidden_layers": self.num_timbre_encoder_hidden_layers,
            "num_attention_pooler_hidden_layers": self.num_attention_pooler_hidden_layers,
            "pool_window_size": self.pool_window_size,
            "fsq_dim": self.fsq_dim,
            "fsq_input_levels": self.fsq_input_levels,
            "fsq_input_num_quantizers": self.fsq_input_num_quantizers,
        })
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
        let j = Json { v, path };
        let hidden = j.usize("hidden_size")?;
        let heads = j.usize("num_attention_heads")?;
        let cfg = Self {
            vocab_size: j.usize("vocab_size")?,
            hidden_size: hidden,
            intermediate_size: j.usize("intermediate_size")?,
            num_hidden_layers: j.usize("num_hidden_layers")?,
            num_attention_heads: heads,
            num_key_value_heads: j.usize_or("num_key_value_heads", heads)?,
            head_dim: j.usize_or("head_dim", hidden / heads.max(1))?,
            rope_theta: j.rope_theta()?,
            rms_norm_eps: j.f64_or("rms_norm_eps", 1e-6)?,
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

/// The Oobleck VAE (`vae/config.json`).
#[derive(Clone, Debug, PartialEq)]
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

    pub fn from_json(v: &Value, path: &Path) -> Result<Self> {
        let j = Json { v, path };
        let cfg = Self {
            encoder_hidden_size: j.usize_or("encoder_hidden_size", 128)?,
            downsampling_ratios: j.usize_list_or("downsampling_ratios", &[2, 4, 4, 8, 8])?,
            channel_multiples: j.usize_list_or("channel_multiples", &[1, 2, 4, 8, 16])?,
            decoder_channels: j.usize_or("decoder_channels", 128)?,
            decoder_input_channels: j.usize_or("decoder_input_channels", 64)?,
            audio_channels: j.usize_or("audio_channels", 2)?,
            sampling_rate: j.usize_or("sampling_rate", 44_100)? as u32,
        };
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

/// Typed access to a JSON config object, with errors naming the file and the key.
pub(crate) struct Json<'a> {
    pub v: &'a Value,
    pub path: &'a Path,
}

impl Json<'_> {
    fn err(&self, key: &str, what: &str) -> AceStepError {
        AceStepError::config(self.path, format!("`{key}` {what}"))
    }

    pub fn usize(&self, key: &str) -> Result<usize> {
        match self.v.get(key) {
            Some(x) => x
                .as_u64()
                .map(|u| u as usize)
                .ok_or_else(|| self.err(key, "is not a non-negative integer")),
            None => Err(self.err(key, "is missing")),
        }
    }

    pub fn usize_or(&self, key: &str, default: usize) -> Result<usize> {
        match self.v.get(key) {
            None | Some(Value::Null) => Ok(default),
            Some(_) => self.usize(key),
        }
    }

    pub fn f64_or(&self, key: &str, default: f64) -> Result<f64> {
        match self.v.get(key) {
            None | Some(Value::Null) => Ok(default),
            Some(x) => x.as_f64().ok_or_else(|| self.err(key, "is not a number")),
        }
    }

    /// `rope_theta`, or `rope_parameters.rope_theta` (transformers ≥ 5 writes the latter).
    pub fn rope_theta(&self) -> Result<f64> {
        if let Some(p) = self.v.get("rope_parameters").filter(|p| p.is_object())
            && let Some(t) = p.get("rope_theta")
        {
            return t
                .as_f64()
                .ok_or_else(|| self.err("rope_parameters.rope_theta", "is not a number"));
        }
        self.f64_or("rope_theta", 1_000_000.0)
    }

    pub fn usize_list_or(&self, key: &str, default: &[usize]) -> Result<Vec<usize>> {
        match self.v.get(key) {
            None | Some(Value::Null) => Ok(default.to_vec()),
            Some(Value::Array(a)) => a
                .iter()
                .map(|x| {
                    x.as_u64()
                        .map(|u| u as usize)
                        .ok_or_else(|| self.err(key, "has a non-integer entry"))
                })
                .collect(),
            Some(_) => Err(self.err(key, "is not a list")),
        }
    }

    /// `layer_types` as sliding flags; absent means alternating, sliding first.
    pub fn layer_types(&self, layers: usize) -> Result<Vec<bool>> {
        match self.v.get("layer_types") {
            None | Some(Value::Null) => Ok((0..layers).map(|i| i % 2 == 0).collect()),
            Some(Value::Array(a)) => {
                if a.len() < layers {
                    return Err(self.err(
                        "layer_types",
                        &format!("has {} entries for {layers} layers", a.len()),
                    ));
                }
                a.iter()
                    .take(layers)
                    .map(|x| match x.as_str() {
                        Some("sliding_attention") => Ok(true),
                        Some("full_attention") => Ok(false),
                        _ => Err(self.err(
                            "layer_types",
                            "has an entry that is neither sliding_attention nor full_attention",
                        )),
                    })
                    .collect()
            }
            Some(_) => Err(self.err("layer_types", "is not a list")),
        }
    }
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
