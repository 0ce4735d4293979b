//! Loading a whole ACE-Step 1.5 model: [`AceStepConfig`] (the configs of every part, read from a
//! weights folder of either layout) and [`AceStep`], which builds the three backend objects
//! ([`AceStepDenoiser`], [`AceStepCodec`], [`AceStepConditioner`]) from the files, or with random
//! weights for benchmarks.

use std::path::{Path, PathBuf};

use candle_core::Device;

use crate::codec::AceStepCodec;
use crate::conditioner::AceStepConditioner;
use crate::config::{DitConfig, TextEncoderConfig, VaeConfig};
use crate::denoiser::AceStepDenoiser;
use crate::error::{AceStepError, Result};
use crate::nn::{RandomSource, TensorSource};
use crate::silence::read_silence_latent;
use crate::text::PromptTokenizer;
use crate::weights::{Layout, ModelFiles};

/// Configurations of every part of a model.
#[derive(Clone, Debug, PartialEq)]
pub struct AceStepConfig {
    pub dit: DitConfig,
    pub vae: VaeConfig,
    pub text: TextEncoderConfig,
}

impl AceStepConfig {
    /// `acestep-v15-turbo` (2B) with its VAE and Qwen3-Embedding-0.6B.
    pub fn turbo_2b() -> Self {
        Self {
            dit: DitConfig::turbo_2b(),
            vae: VaeConfig::acestep(),
            text: TextEncoderConfig::qwen3_embedding_0_6b(),
        }
    }

    /// `acestep-v15-xl-turbo` (5B).
    pub fn xl_turbo() -> Self {
        Self {
            dit: DitConfig::xl_turbo(),
            ..Self::turbo_2b()
        }
    }

    /// Read every config of a resolved weights folder and check they agree with each other
    /// (a model of all parts; one part alone needs only its own config:
    /// [`ModelFiles::read_dit_config`] and its siblings).
    pub fn from_files(files: &ModelFiles) -> Result<Self> {
        let vae = files.read_vae_config()?;
        let text = files.read_text_encoder_config()?;
        let dit = files.read_dit_config()?;
        if dit.text_hidden_dim != text.hidden_size {
            return Err(AceStepError::config(
                &files.dit_config,
                format!(
                    "text_hidden_dim {} differs from the text encoder's hidden_size {}",
                    dit.text_hidden_dim, text.hidden_size
                ),
            ));
        }
        if vae.decoder_input_channels != dit.audio_acoustic_hidden_dim {
            return Err(AceStepError::config(
                &files.vae_config,
                format!(
                    "decoder_input_channels {} differs from the DiT's latent channels {}",
                    vae.decoder_input_channels, dit.audio_acoustic_hidden_dim
                ),
            ));
        }
        Ok(Self { dit, vae, text })
    }
}

/// A whole ACE-Step 1.5 model: the three backend objects.
pub struct AceStep {
    pub denoiser: AceStepDenoiser,
    pub codec: AceStepCodec,
    pub conditioner: AceStepConditioner,
    pub config: AceStepConfig,
    /// Where the weights came from (`None` for random weights).
    pub source: Option<(PathBuf, Layout)>,
}

impl AceStep {
    /// Load from `dir`, either layout (detected): the folder holding `acestep-v15-turbo/`,
    /// `vae/` and `Qwen3-Embedding-0.6B/`, a DiT folder itself, or a diffusers pipeline folder.
    /// Weights are memory-mapped, converted to f32 and kept in memory.
    pub fn load(dir: &Path, device: &Device) -> Result<Self> {
        Self::load_variant(dir, None, device)
    }

    /// [`AceStep::load`] choosing the DiT folder of the original layout
    /// (e.g. `Some("acestep-v15-xl-turbo")`).
    pub fn load_variant(dir: &Path, variant: Option<&str>, device: &Device) -> Result<Self> {
        crate::threads::apply();
        let files = ModelFiles::discover(dir, variant)?;
        // Every part first, so a partial folder is refused with what it holds and lacks.
        for part in files.parts() {
            // Without the FSQ parts a model still runs (no cover); everything else is needed.
            if !matches!(part.name, "audio tokenizer" | "audio detokenizer") {
                files.require(part.name)?;
            }
        }
        let config = AceStepConfig::from_files(&files)?;
        let dit_w = files.open_dit(device)?;
        let silence = match &files.silence_latent {
            Some(p) => read_silence_latent(p, Some(config.dit.audio_acoustic_hidden_dim))?,
            None => {
                let n = dit_w
                    .shape_of("silence_latent")
                    .and_then(|s| s.get(1).copied())
                    .ok_or_else(|| AceStepError::MissingTensor {
                        path: dit_w.label().to_path_buf(),
                        tensor: "silence_latent".into(),
                    })?;
                dit_w.get("silence_latent", &[1, n, config.dit.timbre_hidden_dim])?
            }
        };
        let with_fsq = dit_w.contains("tokenizer.audio_acoustic_proj.weight")
            && dit_w.contains("detokenizer.embed_tokens.weight");
        let denoiser = AceStepDenoiser::from_source(&dit_w, &config.dit)?;
        let text_w = files.open_text_encoder(device)?;
        let tokenizer = PromptTokenizer::from_file(&files.tokenizer_json)?;
        let conditioner = AceStepConditioner::from_sources(
            &dit_w,
            &text_w,
            &config.dit,
            &config.text,
            Some(tokenizer),
            silence,
            with_fsq,
        )?;
        drop(dit_w);
        drop(text_w);
        let vae_w = files.open_vae(device)?;
        let with_encoder = vae_w.contains("encoder.conv1.weight_v");
        let codec = AceStepCodec::from_source(&vae_w, &config.vae, with_encoder)?;
        Ok(Self {
            denoiser,
            codec,
            conditioner,
            config,
            source: Some((files.root.clone(), files.layout)),
        })
    }

    /// Every part with random weights (no files): for benchmarks at full size. The silence latent
    /// is random too and there is no tokenizer: prompts become their UTF-8 bytes as token ids.
    pub fn random(config: &AceStepConfig, seed: u64, device: &Device) -> Result<Self> {
        crate::threads::apply();
        let src = RandomSource {
            seed,
            device: device.clone(),
        };
        let silence = src.tensor(
            "silence_latent",
            &[
                1,
                config.dit.timbre_fix_frame,
                config.dit.audio_acoustic_hidden_dim,
            ],
        )?;
        Ok(Self {
            denoiser: AceStepDenoiser::from_source(&src, &config.dit)?,
            codec: AceStepCodec::from_source(&src, &config.vae, true)?,
            conditioner: AceStepConditioner::from_sources(
                &src,
                &src,
                &config.dit,
                &config.text,
                None,
                silence,
                true,
            )?,
            config: config.clone(),
            source: None,
        })
    }

    /// The three backend objects, to hand to the engine and the runtime.
    pub fn into_parts(self) -> (AceStepDenoiser, AceStepCodec, AceStepConditioner) {
        (self.denoiser, self.codec, self.conditioner)
    }
}
