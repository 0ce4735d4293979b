//! The condition encoder (`AceStepConditionEncoder`, acestep.md §1.3–§1.5): the text projector,
//! the lyric encoder (linear + encoder layers + norm over raw Qwen3 token embeddings), the timbre
//! encoder (linear + layers + norm, row 0, over 30 s of reference latents or the silence latent),
//! the packing of `[lyrics | timbre | text]` with valid tokens first, and `null_condition_emb`.

use candle_core::{DType, Tensor};

use crate::config::DitConfig;
use crate::error::{AceStepError, Result};
use crate::nn::{EncoderStack, Linear, Params, TensorSource};

/// The condition encoder's weights (`encoder.*` and `null_condition_emb`).
pub struct ConditionEncoder {
    pub text_projector: Linear,
    pub lyric_embed: Linear,
    pub lyric_encoder: EncoderStack,
    pub timbre_embed: Linear,
    pub timbre_encoder: EncoderStack,
    /// `[1, 1, H]`, broadcast over every position for the unconditional branch.
    pub null_condition_emb: Tensor,
    pub cfg: DitConfig,
}

impl ConditionEncoder {
    pub fn load(src: &dyn TensorSource, cfg: &DitConfig) -> Result<Self> {
        let e = &cfg.encoder;
        let h = e.hidden_size;
        let root = Params::new(src);
        let p = root.pp("encoder");
        let lyric = p.pp("lyric_encoder");
        let timbre = p.pp("timbre_encoder");
        Ok(Self {
            text_projector: Linear::load(&p.pp("text_projector"), h, cfg.text_hidden_dim, false)?,
            lyric_embed: Linear::load(&lyric.pp("embed_tokens"), h, cfg.text_hidden_dim, true)?,
            lyric_encoder: EncoderStack::load(&lyric, e, cfg.num_lyric_encoder_hidden_layers)?,
            timbre_embed: Linear::load(&timbre.pp("embed_tokens"), h, cfg.timbre_hidden_dim, true)?,
            timbre_encoder: EncoderStack::load(&timbre, e, cfg.num_timbre_encoder_hidden_layers)?,
            null_condition_emb: root.get("null_condition_emb", &[1, 1, h])?,
            cfg: cfg.clone(),
        })
    }

    /// Caption hidden states `[B, Lt, text_hidden]` → `[B, Lt, H]`.
    pub fn project_text(&self, text_hidden: &Tensor) -> Result<Tensor> {
        self.text_projector.forward(text_hidden)
    }

    /// Raw lyric token embeddings `[B, Ll, text_hidden]` (+ optional `[B, Ll]` mask) → `[B, Ll, H]`.
    pub fn encode_lyrics(&self, embeds: &Tensor, mask: Option<&Tensor>) -> Result<Tensor> {
        let x = self.lyric_embed.forward(embeds)?;
        self.lyric_encoder.forward(&x, mask)
    }

    /// Reference latents `[N, frames, C]` → timbre tokens `[N, 1, H]` (first row after the norm).
    pub fn encode_timbre(&self, latents: &Tensor) -> Result<Tensor> {
        let x = self.timbre_embed.forward(latents)?;
        Ok(self.timbre_encoder.forward(&x, None)?.narrow(1, 0, 1)?)
    }

    /// The whole encoder at batch 1: `[lyrics | timbre | text]` packed valid-first, and its mask.
    pub fn forward(
        &self,
        text_hidden: &Tensor,
        text_mask: &Tensor,
        lyric_embeds: &Tensor,
        lyric_mask: &Tensor,
        timbre_latents: &Tensor,
    ) -> Result<(Tensor, Tensor)> {
        let text = self.project_text(text_hidden)?;
        let lyrics = self.encode_lyrics(lyric_embeds, Some(lyric_mask))?;
        let timbre = self.encode_timbre(timbre_latents)?;
        let ones = Tensor::ones((1, 1), DType::F32, timbre.device())?;
        let (packed, mask) = pack(&lyrics, &lyric_mask.to_dtype(DType::F32)?, &timbre, &ones)?;
        pack(&packed, &mask, &text, &text_mask.to_dtype(DType::F32)?)
    }
}

/// Concatenate two `[1, L, H]` sequences and stably move valid positions (mask 1) first
/// (upstream `pack_sequences`). Returns the packed states and the new contiguous mask.
pub fn pack(a: &Tensor, mask_a: &Tensor, b: &Tensor, mask_b: &Tensor) -> Result<(Tensor, Tensor)> {
    if a.dim(0)? != 1 || b.dim(0)? != 1 {
        return Err(AceStepError::input("pack works on batch 1"));
    }
    let states = Tensor::cat(&[a, b], 1)?;
    let mask: Vec<f32> = Tensor::cat(&[mask_a, mask_b], 1)?
        .flatten_all()?
        .to_vec1()?;
    let valid: Vec<u32> = (0..mask.len() as u32)
        .filter(|&i| mask[i as usize] > 0.5)
        .collect();
    let invalid = (0..mask.len() as u32).filter(|&i| mask[i as usize] <= 0.5);
    let n_valid = valid.len();
    let order: Vec<u32> = valid.into_iter().chain(invalid).collect();
    let total = order.len();
    let states = if n_valid == total {
        states
    } else {
        states.index_select(&Tensor::from_vec(order, total, states.device())?, 1)?
    };
    let new_mask: Vec<f32> = (0..total)
        .map(|i| if i < n_valid { 1.0 } else { 0.0 })
        .collect();
    Ok((states, Tensor::from_vec(new_mask, (1, total), a.device())?))
}
