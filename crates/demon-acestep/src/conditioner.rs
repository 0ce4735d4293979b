//! Prompt → conditioning and the structural context, as demon-engine's `Conditioner`
//! ([`AceStepConditioner`]): the Qwen3 tokenizer and text encoder, the condition encoder (lyrics,
//! timbre, caption), the FSQ tokenizer/detokenizer for structure hints, and the silence latent.
//!
//! Context layout (acestep.md §8 item 3): `[hint (C) | chunk mask (C)]`, `Cc = 2C = 128`.
//!
//! References: the timbre token comes from a reference latent of its own (upstream's
//! `refer_audio`, §1.4), the structure context from the FSQ hint of another (§2.5); either may be
//! the playing source or a separate piece of audio, of any length. The prompt's bpm, key, time
//! signature, duration, lyrics and language go into the caption and lyric prompts (§1.2–§1.3), and
//! its task (`Prompt::task`, else [`AceStepConditioner::task`]) picks the instruction.

use candle_core::Tensor;
use demon_engine::{Conditioner, Conditioning, EngineError, Prompt};

use crate::dit::cache::ContentKey;

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
    /// Task whose instruction `Conditioner::condition` writes into the prompt when the prompt
    /// names none (`Prompt::task`).
    pub task: Task,
    /// The last structure reference's FSQ hint, `[1, T, C]`, by content (a hint costs a
    /// tokenizer and a detokenizer pass; a live session asks for the same one every submission).
    hint_memo: Option<(ContentKey, Tensor)>,
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
            hint_memo: None,
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

    /// Use the timbre of the reference latent `[1, T, C]` (any length; see
    /// [`AceStepConditioner::timbre_input`]), or go back to the silence latent's with `None`.
    pub fn set_reference_timbre(&mut self, latent: Option<&Tensor>) -> Result<()> {
        self.timbre = match latent {
            None => None,
            Some(l) => Some(self.encoder.encode_timbre(&self.timbre_input(l)?)?),
        };
        Ok(())
    }

    /// The timbre encoder's input `[1, timbre_fix_frame, C]` (30 s) from a reference `[1, T, C]`:
    /// upstream repeats the clip to at least 30 s and joins three 10 s slices from its front,
    /// middle and back, drawn at random; here the slices are fixed (the start of the front third,
    /// the centre of the middle third, the end of the back third), so a reference always gives
    /// the same token. Exactly 30 s gives the clip itself.
    pub fn timbre_input(&self, latent: &Tensor) -> Result<Tensor> {
        let (b, t, c) = latent.dims3()?;
        if b != 1 || t == 0 || c != self.cfg.timbre_hidden_dim {
            return Err(AceStepError::input(format!(
                "reference latent must be [1, T, {}] with T > 0, got {:?}",
                self.cfg.timbre_hidden_dim,
                latent.dims()
            )));
        }
        let fix = self.cfg.timbre_fix_frame;
        let x = if t >= fix {
            latent.clone()
        } else {
            latent.repeat((1, fix.div_ceil(t), 1))?
        };
        let n = x.dim(1)?;
        let seg = fix / 3;
        let last = fix - 2 * seg;
        let third = n / 3;
        let front = x.narrow(1, 0, seg)?;
        // n ≥ fix, so each third holds at least one slice.
        let middle = x.narrow(1, third + (third - seg) / 2, seg)?;
        let back = x.narrow(1, n - last, last)?;
        Ok(Tensor::cat(&[&front, &middle, &back], 1)?)
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

    /// The structure hint `[1, frames, C]` of a reference latent `[1, T, C]` of any length: the
    /// FSQ round trip of its first `frames` frames, padded with silence when it is shorter
    /// (upstream crops or pads a cover hint the same way). The last reference's hint is kept, so
    /// asking again for the same one costs nothing.
    pub fn structure_hint(&mut self, latent: &Tensor, frames: usize) -> Result<Tensor> {
        let c = self.cfg.audio_acoustic_hidden_dim;
        let t = match latent.dims() {
            [1, t, cc] if *cc == c && *t > 0 => *t,
            d => {
                return Err(AceStepError::input(format!(
                    "structure latent must be [1, T, {c}] with T > 0, got {d:?}"
                )));
            }
        };
        if frames == 0 {
            return Err(AceStepError::input("latent length is zero"));
        }
        let used = latent.narrow(1, 0, t.min(frames))?;
        let key = ContentKey::of(&used, None)?;
        if let Some((k, hint)) = &self.hint_memo
            && *k == key
            && hint.dim(1)? == frames
        {
            return Ok(hint.clone());
        }
        let mut hint = self.fsq_hint(&used)?;
        if t < frames {
            let fill = self.silence(frames)?.narrow(1, t, frames - t)?;
            hint = Tensor::cat(&[&hint, &fill], 1)?;
        }
        self.hint_memo = Some((key, hint.clone()));
        Ok(hint)
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
    /// The prompt's task when it names one, else [`AceStepConditioner::task`].
    fn condition(&mut self, prompt: &Prompt) -> demon_engine::Result<Conditioning> {
        let task = prompt.task.map(Task::from).unwrap_or(self.task);
        Ok(self.condition_for(prompt, task)?)
    }

    /// The timbre token of `reference` (any length, [`AceStepConditioner::timbre_input`])
    /// instead of the one in use; the one in use is kept for later calls.
    fn condition_with_timbre(
        &mut self,
        prompt: &Prompt,
        reference: &Tensor,
    ) -> demon_engine::Result<Conditioning> {
        let task = prompt.task.map(Task::from).unwrap_or(self.task);
        let saved = self.timbre.clone();
        self.set_reference_timbre(Some(reference))?;
        let c = self.condition_for(prompt, task);
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
        Ok(Conditioning::with_mask_of(states, like))
    }

    fn context_channels(&self) -> usize {
        self.cfg.context_channels()
    }

    /// `[lerp(silence[:T], hint, strength) | ones]` with the hint of
    /// [`AceStepConditioner::structure_hint`] (a structure of any length); `None` gives the
    /// neutral `[silence[:T] | ones]`.
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
                let hint = self.structure_hint(s, frames)?;
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
