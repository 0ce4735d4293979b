//! The ACE-Step 1.5 backend objects: [`AceStepDenoiser`] (the DiT, with LoRA management),
//! [`AceStepCodec`] (the Oobleck VAE) and [`AceStepConditioner`] (tokenizer, text encoder,
//! condition encoder, FSQ tokenizer/detokenizer, silence latent), implementing demon-engine's
//! `Denoiser`, `Codec` and `Conditioner`; and [`AceStep`], which loads all three from a weights
//! folder of either layout or instantiates them with random weights for benchmarks.
//!
//! Context layout (acestep.md §8 item 3): `[hint (C) | chunk mask (C)]`, `Cc = 2C = 128`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use demon_engine::{
    Audio, Codec, Conditioner, Conditioning, DenoiseBatch, Denoiser, EngineError, Prompt,
};

use crate::condition::ConditionEncoder;
use crate::config::{DitConfig, TextEncoderConfig, VaeConfig, read_json};
use crate::dit::Dit;
use crate::error::{AceStepError, Result};
use crate::fsq::{AudioDetokenizer, AudioTokenizer, round_trip};
use crate::lora::{LoraAdapter, LoraInfo, LoraSlot, merged_weight};
use crate::nn::{RandomSource, TensorSource};
use crate::silence::read_silence_latent;
use crate::text::{
    MAX_LYRIC_TOKENS, MAX_TEXT_TOKENS, PromptTokenizer, Task, TextEncoder, format_prompt,
};
use crate::vae::{VaeDecoder, VaeEncoder};
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

    /// Read every config of a resolved weights folder.
    pub fn from_files(files: &ModelFiles) -> Result<Self> {
        let vae = VaeConfig::from_json(&read_json(&files.vae_config)?, &files.vae_config)?;
        let te_cfg_path = files.text_encoder_dir.join("config.json");
        let text = TextEncoderConfig::from_json(&read_json(&te_cfg_path)?, &te_cfg_path)?;
        let dit = match files.layout {
            Layout::Original => {
                DitConfig::from_original_json(&read_json(&files.dit_config)?, &files.dit_config)?
            }
            Layout::Diffusers => {
                let t = read_json(&files.dit_config)?;
                let (_, cpath) =
                    files
                        .condition_encoder
                        .as_ref()
                        .ok_or_else(|| AceStepError::MissingFile {
                            path: files.root.join("condition_encoder"),
                            what: "condition encoder".into(),
                        })?;
                let c = read_json(cpath)?;
                let tok = match &files.audio_tokenizer {
                    Some((_, p)) => Some((read_json(p)?, p.clone())),
                    None => None,
                };
                // 30 s of latent frames at the VAE's frame rate (750 at 48 kHz / 1920).
                let fix = (30.0 * vae.sampling_rate as f64 / vae.hop() as f64).ceil() as usize;
                DitConfig::from_diffusers_json(
                    (&t, &files.dit_config),
                    (&c, cpath),
                    tok.as_ref().map(|(v, p)| (v, p.as_path())),
                    fix,
                )?
            }
        };
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

/// The DiT as a `demon_engine::Denoiser`, with LoRA management.
pub struct AceStepDenoiser {
    dit: Dit,
    device: Device,
    loras: Vec<Option<LoraSlot>>,
    /// Unmerged weights of every module any adapter has touched.
    base: HashMap<String, Tensor>,
}

impl AceStepDenoiser {
    /// Build from any parameter source.
    pub fn from_source(src: &dyn TensorSource, cfg: &DitConfig) -> Result<Self> {
        let dit = Dit::load(src, cfg)?;
        Ok(Self {
            device: src.device().clone(),
            dit,
            loras: Vec::new(),
            base: HashMap::new(),
        })
    }

    /// Random weights (benchmarks): no file is read.
    pub fn random(cfg: &DitConfig, seed: u64, device: &Device) -> Result<Self> {
        Self::from_source(
            &RandomSource {
                seed,
                device: device.clone(),
            },
            cfg,
        )
    }

    pub fn dit(&self) -> &Dit {
        &self.dit
    }

    /// GPU mixed precision: the DiT's matrix products in `BF16`/`F16` (f32 accumulation; norms,
    /// softmax and the residual stream stay f32), or f32 with `None`. See [`Dit::set_matmul_dtype`].
    pub fn set_matmul_dtype(&mut self, dtype: Option<candle_core::DType>) -> Result<()> {
        self.dit.set_matmul_dtype(dtype)
    }

    pub fn config(&self) -> &DitConfig {
        &self.dit.cfg
    }

    /// Load an adapter (PEFT folder or single file) at `strength` and merge it. Returns its id.
    pub fn add_lora(&mut self, path: &Path, strength: f32) -> Result<usize> {
        check_strength(path, strength)?;
        let adapter = LoraAdapter::load(path, &self.device)?;
        for (name, m) in &adapter.modules {
            let Some(lin) = self.dit.linear_mut(name) else {
                return Err(AceStepError::Lora {
                    path: path.to_path_buf(),
                    detail: format!("module `{name}` does not exist in this DiT"),
                });
            };
            let (out, inp) = lin.weight.dims2()?;
            let (r, a_in) = m.a.dims2()?;
            let (b_out, _) = m.b.dims2()?;
            if a_in != inp || b_out != out {
                return Err(AceStepError::Lora {
                    path: path.to_path_buf(),
                    detail: format!(
                        "module `{name}`: lora_B·lora_A is [{b_out}, {a_in}] (rank {r}) but the weight is [{out}, {inp}]"
                    ),
                });
            }
        }
        self.loras.push(Some(LoraSlot {
            adapter,
            strength,
            enabled: true,
        }));
        self.apply_loras()?;
        Ok(self.loras.len() - 1)
    }

    fn slot(&mut self, id: usize) -> Result<&mut LoraSlot> {
        self.loras
            .get_mut(id)
            .and_then(Option::as_mut)
            .ok_or_else(|| AceStepError::input(format!("no LoRA adapter with id {id}")))
    }

    /// Change an adapter's strength (re-merged from the in-memory base weights).
    pub fn set_lora_strength(&mut self, id: usize, strength: f32) -> Result<()> {
        let path = self.slot(id)?.adapter.path.clone();
        check_strength(&path, strength)?;
        self.slot(id)?.strength = strength;
        self.apply_loras()
    }

    pub fn set_lora_enabled(&mut self, id: usize, enabled: bool) -> Result<()> {
        self.slot(id)?.enabled = enabled;
        self.apply_loras()
    }

    /// Remove an adapter; its modules return to their base weights.
    pub fn remove_lora(&mut self, id: usize) -> Result<()> {
        self.slot(id)?;
        self.loras[id] = None;
        self.apply_loras()
    }

    pub fn loras(&self) -> Vec<LoraInfo> {
        self.loras
            .iter()
            .enumerate()
            .filter_map(|(id, s)| {
                s.as_ref().map(|s| LoraInfo {
                    id,
                    path: s.adapter.path.clone(),
                    modules: s.adapter.modules.len(),
                    strength: s.strength,
                    enabled: s.enabled,
                })
            })
            .collect()
    }

    /// Current (merged) weight of a module, for tests and inspection.
    pub fn module_weight(&mut self, name: &str) -> Option<Tensor> {
        self.dit.linear_mut(name).map(|l| l.weight.clone())
    }

    /// Recompute every touched module from its base weight and the enabled adapters.
    fn apply_loras(&mut self) -> Result<()> {
        let live: Vec<&LoraSlot> = self.loras.iter().flatten().collect();
        let mut touched: Vec<String> = self.base.keys().cloned().collect();
        for s in &live {
            touched.extend(s.adapter.modules.keys().cloned());
        }
        touched.sort();
        touched.dedup();
        let mut merged = Vec::with_capacity(touched.len());
        for name in &touched {
            let base = match self.base.get(name) {
                Some(b) => b.clone(),
                None => {
                    let w = self
                        .dit
                        .linear_mut(name)
                        .map(|l| l.weight.clone())
                        .ok_or_else(|| AceStepError::input(format!("module `{name}` vanished")))?;
                    self.base.insert(name.clone(), w.clone());
                    w
                }
            };
            let parts: Vec<_> = live
                .iter()
                .filter(|s| s.enabled)
                .filter_map(|s| s.adapter.modules.get(name).map(|m| (m, s.strength)))
                .collect();
            merged.push((name.clone(), merged_weight(&base, &parts)?));
        }
        for (name, w) in merged {
            if let Some(l) = self.dit.linear_mut(&name) {
                l.set_weight(w)?;
            }
        }
        // Cross-attention K/V depend on the (possibly adapted) k/v projections.
        self.dit.clear_cache();
        Ok(())
    }
}

fn check_strength(path: &Path, s: f32) -> Result<()> {
    if !(s.is_finite() && (-10.0..=10.0).contains(&s)) {
        return Err(AceStepError::Lora {
            path: path.to_path_buf(),
            detail: format!("strength {s} is outside [-10, 10]"),
        });
    }
    Ok(())
}

impl Denoiser for AceStepDenoiser {
    fn latent_channels(&self) -> usize {
        self.dit.cfg.audio_acoustic_hidden_dim
    }

    fn context_channels(&self) -> usize {
        self.dit.cfg.context_channels()
    }

    fn device(&self) -> &Device {
        &self.device
    }

    /// Each row runs alone through the DiT (see `dit.rs`), with its conditioning's cross K/V
    /// taken from the cache keyed by `Conditioning::id`. Turbo inference feeds `r = t`, so the
    /// second time embedder sees 0.
    fn velocity(&mut self, batch: &DenoiseBatch<'_>) -> demon_engine::Result<Tensor> {
        let b = batch.rows();
        let (bx, frames, c) = batch.x.dims3()?;
        if bx != b || batch.conditions.len() != b || batch.contexts.len() != b {
            return Err(EngineError::shape(
                "denoise batch rows",
                b,
                format!(
                    "x {bx}, {} conditions, {} contexts",
                    batch.conditions.len(),
                    batch.contexts.len()
                ),
            ));
        }
        if c != self.latent_channels() {
            return Err(EngineError::shape(
                "latent channels",
                self.latent_channels(),
                c,
            ));
        }
        let mut rows = Vec::with_capacity(b);
        for i in 0..b {
            let cond = batch.conditions[i];
            let ctx = batch.contexts[i];
            if ctx.dims() != [1, frames, self.context_channels()] {
                return Err(EngineError::shape(
                    "context",
                    format!("[1, {frames}, {}]", self.context_channels()),
                    format!("{:?}", ctx.dims()),
                ));
            }
            let kv = self
                .dit
                .cached_cross_kv(cond.id, &cond.states, Some(&cond.mask))?;
            let x = batch.x.narrow(0, i, 1)?;
            rows.push(self.dit.forward_row(&x, ctx, batch.t[i], 0.0, &kv)?);
        }
        Ok(Tensor::cat(&rows, 0)?)
    }

    fn name(&self) -> &str {
        "acestep-dit"
    }

    fn adapters(&mut self) -> Option<&mut dyn demon_engine::Adapters> {
        Some(self)
    }
}

impl AceStepDenoiser {
    /// The name an adapter is addressed by: its file or folder stem, made unique with `#id`.
    fn adapter_name(&self, info: &LoraInfo) -> String {
        let stem = info
            .path
            .file_stem()
            .and_then(|s| s.to_str())
            .unwrap_or("lora")
            .to_string();
        let clash = self
            .loras()
            .iter()
            .filter(|o| o.id != info.id)
            .any(|o| o.path.file_stem() == info.path.file_stem());
        if clash {
            format!("{stem}#{}", info.id)
        } else {
            stem
        }
    }
}

impl demon_engine::Adapters for AceStepDenoiser {
    fn list(&self) -> Vec<demon_engine::AdapterInfo> {
        self.loras()
            .iter()
            .map(|l| demon_engine::AdapterInfo {
                id: self.adapter_name(l),
                strength: if l.enabled { l.strength } else { 0.0 },
                rank: 0,
                targets: l.modules,
            })
            .collect()
    }

    fn set_strength(&mut self, id: &str, strength: f32) -> demon_engine::Result<()> {
        let info = self
            .loras()
            .into_iter()
            .find(|l| self.adapter_name(l) == id)
            .ok_or_else(|| EngineError::param("lora", format!("no adapter `{id}`")))?;
        if strength <= 0.0 {
            self.set_lora_enabled(info.id, false)?;
        } else {
            self.set_lora_strength(info.id, strength)?;
            self.set_lora_enabled(info.id, true)?;
        }
        Ok(())
    }
}

/// The Oobleck VAE as a `demon_engine::Codec`.
pub struct AceStepCodec {
    decoder: VaeDecoder,
    encoder: Option<VaeEncoder>,
    cfg: VaeConfig,
    device: Device,
    /// Decode windows longer than this many frames in tiles (bounds memory).
    pub tile_frames: usize,
    /// Frames of context decoded and discarded on each side of a tile.
    pub tile_overlap: usize,
}

impl AceStepCodec {
    pub fn from_source(
        src: &dyn TensorSource,
        cfg: &VaeConfig,
        with_encoder: bool,
    ) -> Result<Self> {
        Ok(Self {
            decoder: VaeDecoder::load(src, cfg)?,
            encoder: if with_encoder {
                Some(VaeEncoder::load(src, cfg)?)
            } else {
                None
            },
            cfg: cfg.clone(),
            device: src.device().clone(),
            tile_frames: 512,
            tile_overlap: 64,
        })
    }

    pub fn random(cfg: &VaeConfig, seed: u64, device: &Device, with_encoder: bool) -> Result<Self> {
        Self::from_source(
            &RandomSource {
                seed,
                device: device.clone(),
            },
            cfg,
            with_encoder,
        )
    }

    pub fn config(&self) -> &VaeConfig {
        &self.cfg
    }

    /// Decoder forward on `[B, C, T]` latents (no tiling): `[B, channels, T·hop]`.
    pub fn decode_raw(&self, latents: &Tensor) -> Result<Tensor> {
        self.decoder.forward(latents)
    }

    /// Encoder mean on `[B, channels, N]` audio: `[B, C, N/hop]`.
    pub fn encode_raw(&self, audio: &Tensor) -> Result<Tensor> {
        self.encoder
            .as_ref()
            .ok_or_else(|| AceStepError::input("this codec was built without the VAE encoder"))?
            .forward(audio)
    }

    /// `[1, C, N]` latents → `[1, channels, N·hop]`, in tiles of `tile_frames` with
    /// `tile_overlap` frames of discarded context on each side when N is larger.
    pub fn decode_tiled(&self, latents: &Tensor) -> Result<Tensor> {
        let n = latents.dim(2)?;
        if n <= self.tile_frames || self.tile_frames <= 2 * self.tile_overlap {
            return self.decoder.forward(latents);
        }
        let hop = self.cfg.hop();
        let core = self.tile_frames - 2 * self.tile_overlap;
        let mut parts = Vec::new();
        let mut s = 0;
        while s < n {
            let e = (s + core).min(n);
            let a = s.saturating_sub(self.tile_overlap);
            let b = (e + self.tile_overlap).min(n);
            let audio = self.decoder.forward(&latents.narrow(2, a, b - a)?)?;
            parts.push(audio.narrow(2, (s - a) * hop, (e - s) * hop)?);
            s = e;
        }
        Ok(Tensor::cat(&parts, 2)?)
    }
}

impl Codec for AceStepCodec {
    fn sample_rate(&self) -> u32 {
        self.cfg.sampling_rate
    }

    fn hop_samples(&self) -> usize {
        self.cfg.hop()
    }

    fn latent_channels(&self) -> usize {
        self.cfg.decoder_input_channels
    }

    fn audio_channels(&self) -> usize {
        self.cfg.audio_channels
    }

    fn device(&self) -> &Device {
        &self.device
    }

    /// Mono is duplicated to every channel; samples are clamped to [−1, 1]; the audio must be at
    /// the VAE's sample rate (resampling belongs to the caller).
    fn encode(&mut self, audio: &Audio) -> demon_engine::Result<Tensor> {
        if audio.sample_rate != self.cfg.sampling_rate {
            return Err(EngineError::param(
                "audio",
                format!(
                    "sample rate {} Hz, the VAE needs {} Hz",
                    audio.sample_rate, self.cfg.sampling_rate
                ),
            ));
        }
        let want = self.cfg.audio_channels;
        let chans: Vec<&Vec<f32>> = match audio.channels.len() {
            n if n == want => audio.channels.iter().collect(),
            1 => vec![&audio.channels[0]; want],
            n => {
                return Err(EngineError::param(
                    "audio",
                    format!("{n} channels, the VAE takes {want} (or mono)"),
                ));
            }
        };
        let hop = self.cfg.hop();
        let frames = audio.frames() / hop;
        if frames == 0 {
            return Err(EngineError::param(
                "audio",
                format!("shorter than one latent frame ({hop} samples)"),
            ));
        }
        let n = frames * hop;
        let mut data = Vec::with_capacity(want * n);
        for ch in chans {
            data.extend(ch[..n].iter().map(|x| {
                if x.is_finite() {
                    x.clamp(-1.0, 1.0)
                } else {
                    0.0
                }
            }));
        }
        let x = Tensor::from_vec(data, (1, want, n), &self.device)?;
        let z = self.encode_raw(&x)?;
        Ok(z.transpose(1, 2)?.contiguous()?)
    }

    fn decode(&mut self, latent: &Tensor, _first_frame: i64) -> demon_engine::Result<Audio> {
        let (b, _n, c) = latent.dims3()?;
        if b != 1 || c != self.cfg.decoder_input_channels {
            return Err(EngineError::shape(
                "latent window",
                format!("[1, N, {}]", self.cfg.decoder_input_channels),
                format!("{:?}", latent.dims()),
            ));
        }
        let audio = self.decode_tiled(&latent.transpose(1, 2)?.contiguous()?)?;
        let channels: Vec<Vec<f32>> = audio.squeeze(0)?.to_vec2()?;
        Audio::new(self.cfg.sampling_rate, channels)
    }

    fn name(&self) -> &str {
        "oobleck-vae"
    }
}

/// Prompt → conditioning (tokenizer, Qwen3 text encoder, condition encoder) and the structural
/// context (silence latent, FSQ hints) as a `demon_engine::Conditioner`.
pub struct AceStepConditioner {
    tokenizer: Option<PromptTokenizer>,
    text_encoder: TextEncoder,
    encoder: ConditionEncoder,
    audio_tokenizer: Option<AudioTokenizer>,
    detokenizer: Option<AudioDetokenizer>,
    /// `[1, N, C]` time-major silence latent.
    silence: Tensor,
    /// Timbre token `[1, 1, H]` in use: the silence latent's (computed once) or a reference's.
    timbre: Option<Tensor>,
    /// Task whose instruction `Conditioner::condition` writes into the prompt.
    pub task: Task,
    cfg: DitConfig,
}

impl AceStepConditioner {
    /// Build from parameter sources. `dit_src` holds `encoder.*`, `tokenizer.*`, `detokenizer.*`
    /// and `null_condition_emb`; the FSQ parts are optional (no cover without them).
    pub fn from_sources(
        dit_src: &dyn TensorSource,
        text_src: &dyn TensorSource,
        cfg: &DitConfig,
        text_cfg: &TextEncoderConfig,
        tokenizer: Option<PromptTokenizer>,
        silence: Tensor,
        with_fsq: bool,
    ) -> Result<Self> {
        let silence = silence.to_device(dit_src.device())?;
        if silence.rank() != 3
            || silence.dim(2)? != cfg.audio_acoustic_hidden_dim
            || silence.dim(1)? == 0
        {
            return Err(AceStepError::input(format!(
                "silence latent must be [1, N, {}], got {:?}",
                cfg.audio_acoustic_hidden_dim,
                silence.dims()
            )));
        }
        Ok(Self {
            tokenizer,
            text_encoder: TextEncoder::load(text_src, text_cfg)?,
            encoder: ConditionEncoder::load(dit_src, cfg)?,
            audio_tokenizer: if with_fsq {
                Some(AudioTokenizer::load(dit_src, cfg)?)
            } else {
                None
            },
            detokenizer: if with_fsq {
                Some(AudioDetokenizer::load(dit_src, cfg)?)
            } else {
                None
            },
            silence,
            timbre: None,
            task: Task::Text2Music,
            cfg: cfg.clone(),
        })
    }

    pub fn config(&self) -> &DitConfig {
        &self.cfg
    }

    pub fn text_encoder(&self) -> &TextEncoder {
        &self.text_encoder
    }

    pub fn condition_encoder(&self) -> &ConditionEncoder {
        &self.encoder
    }

    pub fn audio_tokenizer(&self) -> Option<&AudioTokenizer> {
        self.audio_tokenizer.as_ref()
    }

    pub fn detokenizer(&self) -> Option<&AudioDetokenizer> {
        self.detokenizer.as_ref()
    }

    /// `silence_latent[:frames]` `[1, frames, C]`, tiled when the file is shorter.
    pub fn silence(&self, frames: usize) -> Result<Tensor> {
        let n = self.silence.dim(1)?;
        if frames <= n {
            return Ok(self.silence.narrow(1, 0, frames)?);
        }
        let reps = frames.div_ceil(n);
        Ok(self.silence.repeat((1, reps, 1))?.narrow(1, 0, frames)?)
    }

    /// The timbre token in use (the silence latent's unless a reference was set).
    pub fn timbre_token(&mut self) -> Result<Tensor> {
        if let Some(t) = &self.timbre {
            return Ok(t.clone());
        }
        let t = self
            .encoder
            .encode_timbre(&self.silence(self.cfg.timbre_fix_frame)?)?;
        self.timbre = Some(t.clone());
        Ok(t)
    }

    /// Use the timbre of reference latents `[1, T, C]` (first 30 s, repeated when shorter), or
    /// go back to the silence latent's with `None`.
    pub fn set_reference_timbre(&mut self, latent: Option<&Tensor>) -> Result<()> {
        self.timbre = match latent {
            None => None,
            Some(l) => {
                let (b, t, c) = l.dims3()?;
                if b != 1 || t == 0 || c != self.cfg.timbre_hidden_dim {
                    return Err(AceStepError::input(format!(
                        "reference latent must be [1, T, {}]",
                        self.cfg.timbre_hidden_dim
                    )));
                }
                let fix = self.cfg.timbre_fix_frame;
                let x = if t >= fix {
                    l.narrow(1, 0, fix)?
                } else {
                    l.repeat((1, fix.div_ceil(t), 1))?.narrow(1, 0, fix)?
                };
                Some(self.encoder.encode_timbre(&x)?)
            }
        };
        Ok(())
    }

    /// Token ids of the caption and lyric prompts for `prompt` under `task`. A random-weight
    /// model has no tokenizer: its ids are the prompt's UTF-8 bytes (valid for any vocabulary),
    /// so benchmarks and smoke runs go through the whole conditioning path; the result means
    /// nothing, as the weights mean nothing.
    pub fn tokenize(&self, prompt: &Prompt, task: Task) -> Result<(Vec<u32>, Vec<u32>)> {
        let (text, lyrics) = format_prompt(prompt, task);
        let Some(tok) = self.tokenizer.as_ref() else {
            let bytes = |s: &str, max: usize| -> Vec<u32> {
                let v: Vec<u32> = s.bytes().take(max).map(u32::from).collect();
                if v.is_empty() { vec![0] } else { v }
            };
            return Ok((
                bytes(&text, MAX_TEXT_TOKENS),
                bytes(&lyrics, MAX_LYRIC_TOKENS),
            ));
        };
        Ok((
            tok.encode(&text, MAX_TEXT_TOKENS)?,
            tok.encode(&lyrics, MAX_LYRIC_TOKENS)?,
        ))
    }

    /// Packed `[lyrics | timbre | text]` states `[1, L, H]` from token ids.
    pub fn encode_ids(&mut self, text_ids: &[u32], lyric_ids: &[u32]) -> Result<Tensor> {
        let text_hidden = self.text_encoder.forward(text_ids)?;
        let lyric_embeds = self.text_encoder.embed(lyric_ids)?;
        let lyrics = self.encoder.encode_lyrics(&lyric_embeds, None)?;
        let timbre = self.timbre_token()?;
        let text = self.encoder.project_text(&text_hidden)?;
        Ok(Tensor::cat(&[&lyrics, &timbre, &text], 1)?)
    }

    /// Encode `prompt` with the instruction of `task`.
    pub fn condition_for(&mut self, prompt: &Prompt, task: Task) -> Result<Conditioning> {
        prompt
            .validate()
            .map_err(|e| AceStepError::input(e.to_string()))?;
        let (t, l) = self.tokenize(prompt, task)?;
        let states = self.encode_ids(&t, &l)?;
        Conditioning::new(states).map_err(|e| AceStepError::input(e.to_string()))
    }

    /// FSQ round trip of a `[1, T, C]` latent (the cover hint), `[1, T, C]`.
    pub fn fsq_hint(&self, latent: &Tensor) -> Result<Tensor> {
        let (tok, detok) = match (&self.audio_tokenizer, &self.detokenizer) {
            (Some(a), Some(b)) => (a, b),
            _ => {
                return Err(AceStepError::input(
                    "these weights have no audio tokenizer/detokenizer (cover unavailable)",
                ));
            }
        };
        round_trip(tok, detok, latent, &self.silence)
    }

    /// 25 Hz hint `[1, frames, C]` from 5 Hz audio codes (e.g. from the 5 Hz LM): symmetric FSQ
    /// decode, detokenizer, then cropped or padded with silence to `frames` (acestep.md §1.6).
    pub fn hint_from_codes(&self, codes: &[i64], frames: usize) -> Result<Tensor> {
        let (tok, detok) = match (&self.audio_tokenizer, &self.detokenizer) {
            (Some(a), Some(b)) => (a, b),
            _ => {
                return Err(AceStepError::input(
                    "these weights have no audio tokenizer/detokenizer",
                ));
            }
        };
        if codes.is_empty() || frames == 0 {
            return Err(AceStepError::input("no audio codes or zero frames"));
        }
        let rows: Vec<Vec<i64>> = codes.iter().map(|&c| vec![c]).collect();
        let q = tok.quantizer.dequantize(&rows)?.unsqueeze(0)?;
        let hint = detok.forward(&q)?;
        let n = hint.dim(1)?;
        if n >= frames {
            return Ok(hint.narrow(1, 0, frames)?);
        }
        let fill = self.silence(frames)?.narrow(1, n, frames - n)?;
        Ok(Tensor::cat(&[&hint, &fill], 1)?)
    }

    /// Context `[1, T, 2C]` = `[src | mask]`, `mask` per frame (1 = generate) broadcast over C.
    pub fn context_from(&self, src: &Tensor, mask: &[f32]) -> Result<Tensor> {
        let (b, t, c) = src.dims3()?;
        if b != 1 || c != self.cfg.audio_acoustic_hidden_dim || mask.len() != t {
            return Err(AceStepError::input(format!(
                "context source must be [1, T, {}] with T mask values, got {:?} and {}",
                self.cfg.audio_acoustic_hidden_dim,
                src.dims(),
                mask.len()
            )));
        }
        let m =
            Tensor::from_vec(mask.to_vec(), (1, t, 1), src.device())?.broadcast_as((1, t, c))?;
        Ok(Tensor::cat(&[src, &m.contiguous()?], 2)?)
    }
}

impl Conditioner for AceStepConditioner {
    fn condition(&mut self, prompt: &Prompt) -> demon_engine::Result<Conditioning> {
        Ok(self.condition_for(prompt, self.task)?)
    }

    /// The timbre token from `reference` (its first 30 s) instead of the silence latent.
    fn condition_with_timbre(
        &mut self,
        prompt: &Prompt,
        reference: &Tensor,
    ) -> demon_engine::Result<Conditioning> {
        let saved = self.timbre.clone();
        self.set_reference_timbre(Some(reference))?;
        let c = self.condition_for(prompt, self.task);
        self.timbre = saved;
        Ok(c?)
    }

    /// `null_condition_emb` broadcast over `like`'s positions, with `like`'s mask.
    fn null_condition(&mut self, like: &Conditioning) -> demon_engine::Result<Conditioning> {
        let (_, l, h) = like.states.dims3()?;
        let states = self
            .encoder
            .null_condition_emb
            .broadcast_as((1, l, h))?
            .contiguous()?;
        Ok(Conditioning::with_mask(states, like.mask.clone()))
    }

    fn context_channels(&self) -> usize {
        self.cfg.context_channels()
    }

    /// `[lerp(silence[:T], fsq_hint(structure), strength) | ones]`; `None` gives the neutral
    /// `[silence[:T] | ones]`.
    fn context(
        &mut self,
        structure: Option<&Tensor>,
        frames: usize,
        strength: f32,
    ) -> demon_engine::Result<Tensor> {
        if frames == 0 {
            return Err(EngineError::param("frames", "latent length is zero"));
        }
        if !(strength.is_finite() && (0.0..=1.0).contains(&strength)) {
            return Err(EngineError::param(
                "structure strength",
                format!("{strength} is outside [0, 1]"),
            ));
        }
        let silence = self.silence(frames)?;
        let src = match structure {
            Some(s) if strength > 0.0 => {
                if s.dims() != [1, frames, self.cfg.audio_acoustic_hidden_dim] {
                    return Err(EngineError::shape(
                        "structure latent",
                        format!("[1, {frames}, {}]", self.cfg.audio_acoustic_hidden_dim),
                        format!("{:?}", s.dims()),
                    ));
                }
                let hint = self.fsq_hint(s)?;
                if strength >= 1.0 {
                    hint
                } else {
                    ((silence * (1.0 - strength as f64))? + (hint * strength as f64)?)?
                }
            }
            _ => silence,
        };
        Ok(self.context_from(&src, &vec![1.0; frames])?)
    }

    fn name(&self) -> &str {
        "acestep-conditioner"
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
        let files = ModelFiles::discover(dir, variant)?;
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
