//! Prompt → conditioning and the structural context, as demon-engine's `Conditioner`
//! ([`AceStepConditioner`]): the Qwen3 tokenizer and text encoder, the condition encoder (lyrics,
//! timbre, caption), the FSQ tokenizer/detokenizer for structure hints, and the silence latent.
//!
//! Context layout (acestep.md §8 item 3): `[hint (C) | chunk mask (C)]`, `Cc = 2C = 128`.

use candle_core::Tensor;
use demon_engine::{Conditioner, Conditioning, EngineError, Prompt};

use crate::condition::ConditionEncoder;
use crate::config::{DitConfig, TextEncoderConfig};
use crate::error::{AceStepError, Result};
use crate::fsq::{AudioDetokenizer, AudioTokenizer, round_trip};
use crate::nn::TensorSource;
use crate::text::{
    MAX_LYRIC_TOKENS, MAX_TEXT_TOKENS, PromptTokenizer, Task, TextEncoder, format_prompt,
};

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
        crate::threads::apply();
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
