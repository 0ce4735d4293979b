//! The 5 Hz audio tokenizer and detokenizer (acestep.md §1.7; diffusers `AceStepAudioTokenizer`,
//! `AceStepAudioTokenDetokenizer`, `_AceStepResidualFSQ`).
//!
//! Tokenize: pad T to a multiple of the pool window with silence frames, project 64 → H, pool each
//! window of 5 frames with an attention pooler (a learned token prepended, 2 encoder layers,
//! norm, row 0), then residual FSQ with levels `[8, 8, 8, 5, 5, 5]`: `project_in`, soft clamp
//! `tanh(z/s)·s` with `s = 1 + 1/(L−1)`, round to the symmetric grid `2i/(L−1) − 1`,
//! `project_out`. Detokenize: project, repeat each token 5× plus learned offsets, 2 encoder
//! layers per group, norm, project to 64 channels. The round trip is the cover hint.

use candle_core::{DType, Tensor};

use crate::config::DitConfig;
use crate::error::{AceStepError, Result};
use crate::nn::{EncoderStack, Linear, Params, TensorSource};

/// Finite scalar quantizer (residual, usually one stage).
pub struct Fsq {
    pub project_in: Linear,
    pub project_out: Linear,
    pub levels: Vec<usize>,
    pub num_quantizers: usize,
}

impl Fsq {
    fn basis(&self) -> Vec<i64> {
        let mut b = Vec::with_capacity(self.levels.len());
        let mut acc = 1i64;
        for &l in &self.levels {
            b.push(acc);
            acc *= l as i64;
        }
        b
    }

    /// `[N, dim]` → (quantized `[N, dim]` after `project_out`, indices `[N, num_quantizers]`).
    pub fn quantize(&self, x: &Tensor) -> Result<(Tensor, Vec<Vec<i64>>)> {
        let z: Vec<Vec<f32>> = self.project_in.forward(x)?.to_vec2()?;
        let d = self.levels.len();
        let basis = self.basis();
        let mut out_codes = Vec::with_capacity(z.len() * d);
        let mut indices = Vec::with_capacity(z.len());
        for row in &z {
            // Soft clamp, then residual rounding (in f32, in the reference's order of operations).
            let mut residual: Vec<f32> = row
                .iter()
                .zip(&self.levels)
                .map(|(&v, &l)| {
                    let sc = 1.0f32 + 1.0f32 / (l as f32 - 1.0);
                    (v / sc).tanh() * sc
                })
                .collect();
            let mut total = vec![0.0f32; d];
            let mut row_idx = Vec::with_capacity(self.num_quantizers);
            for q in 0..self.num_quantizers {
                let mut index = 0f32;
                for j in 0..d {
                    let l = self.levels[j] as f32;
                    let scale = l.powi(-(q as i32));
                    let v = (residual[j] / scale).clamp(-1.0, 1.0);
                    let step = 2.0 / (l - 1.0);
                    let bracket = (l - 1.0) * (v + 1.0) / 2.0 + 0.5;
                    let code = step * bracket.floor() - 1.0;
                    let quantized = code * scale;
                    residual[j] -= quantized;
                    total[j] += quantized;
                    index += (code + 1.0) / step * basis[j] as f32;
                }
                row_idx.push(index.round() as i64);
            }
            out_codes.extend(total);
            indices.push(row_idx);
        }
        let codes = Tensor::from_vec(out_codes, (z.len(), d), x.device())?;
        Ok((self.project_out.forward(&codes)?, indices))
    }

    /// Indices `[N][num_quantizers]` → `project_out` of their symmetric codes, `[N, dim]`.
    pub fn dequantize(&self, indices: &[Vec<i64>]) -> Result<Tensor> {
        let d = self.levels.len();
        let basis = self.basis();
        let max: i64 = self.levels.iter().map(|&l| l as i64).product();
        let mut codes = Vec::with_capacity(indices.len() * d);
        for row in indices {
            let mut total = vec![0.0f32; d];
            for (q, &index) in row.iter().enumerate() {
                if !(0..max).contains(&index) {
                    return Err(AceStepError::input(format!(
                        "audio code {index} is outside 0..{max}"
                    )));
                }
                for j in 0..d {
                    let l = self.levels[j] as i64;
                    let level = (index / basis[j]) % l;
                    let code = level as f32 * (2.0 / (l as f32 - 1.0)) - 1.0;
                    total[j] += code * (l as f32).powi(-(q as i32));
                }
            }
            codes.extend(total);
        }
        let device = self.project_out.device();
        let codes = Tensor::from_vec(codes, (indices.len(), d), device)?;
        self.project_out.forward(&codes)
    }
}

/// 25 Hz latents → 5 Hz quantized tokens.
pub struct AudioTokenizer {
    pub audio_acoustic_proj: Linear,
    pub pooler_embed: Linear,
    /// `[1, 1, H]`
    pub special_token: Tensor,
    pub pooler: EncoderStack,
    pub quantizer: Fsq,
    pub pool_window: usize,
}

impl AudioTokenizer {
    pub fn load(src: &dyn TensorSource, cfg: &DitConfig) -> Result<Self> {
        let h = cfg.encoder.hidden_size;
        let d = cfg.fsq_input_levels.len();
        let p = Params::new(src).pp("tokenizer");
        let pooler = p.pp("attention_pooler");
        let q = p.pp("quantizer");
        Ok(Self {
            audio_acoustic_proj: Linear::load(
                &p.pp("audio_acoustic_proj"),
                h,
                cfg.audio_acoustic_hidden_dim,
                true,
            )?,
            pooler_embed: Linear::load(&pooler.pp("embed_tokens"), h, h, true)?,
            special_token: pooler.get("special_token", &[1, 1, h])?,
            pooler: EncoderStack::load(
                &pooler,
                &cfg.encoder,
                cfg.num_attention_pooler_hidden_layers,
            )?,
            quantizer: Fsq {
                project_in: Linear::load(&q.pp("project_in"), d, cfg.fsq_dim, true)?,
                project_out: Linear::load(&q.pp("project_out"), cfg.fsq_dim, d, true)?,
                levels: cfg.fsq_input_levels.clone(),
                num_quantizers: cfg.fsq_input_num_quantizers,
            },
            pool_window: cfg.pool_window_size,
        })
    }

    /// `[1, T, C]` latents (padded with `silence` `[1, ≥pad, C]` frames to a multiple of the
    /// window) → (quantized `[1, P, H]`, code indices per token).
    pub fn tokenize(&self, latents: &Tensor, silence: &Tensor) -> Result<(Tensor, Vec<Vec<i64>>)> {
        let (b, t, _) = latents.dims3()?;
        if b != 1 {
            return Err(AceStepError::input("the audio tokenizer runs at batch 1"));
        }
        if t == 0 {
            return Err(AceStepError::input("empty latent"));
        }
        let w = self.pool_window;
        let pad = (w - t % w) % w;
        let x = if pad > 0 {
            let fill = silence.narrow(1, 0, pad)?.to_dtype(DType::F32)?;
            Tensor::cat(&[latents, &fill], 1)?
        } else {
            latents.clone()
        };
        let p = (t + pad) / w;
        let h = self.audio_acoustic_proj.forward(&x)?; // [1, P·W, H]
        let hid = h.dim(2)?;
        let h = self.pooler_embed.forward(&h.reshape((p, w, hid))?)?; // [P, W, H]
        let special = self.special_token.broadcast_as((p, 1, hid))?;
        let seq = Tensor::cat(&[&special, &h], 1)?; // [P, W+1, H]
        let pooled = self
            .pooler
            .forward(&seq, None)?
            .narrow(1, 0, 1)?
            .squeeze(1)?; // [P, H]
        let (q, idx) = self.quantizer.quantize(&pooled)?;
        Ok((q.unsqueeze(0)?, idx))
    }
}

/// 5 Hz tokens → 25 Hz acoustic hint.
pub struct AudioDetokenizer {
    pub embed_tokens: Linear,
    /// `[1, W, H]`
    pub special_tokens: Tensor,
    pub stack: EncoderStack,
    pub proj_out: Linear,
    pub pool_window: usize,
}

impl AudioDetokenizer {
    pub fn load(src: &dyn TensorSource, cfg: &DitConfig) -> Result<Self> {
        let h = cfg.encoder.hidden_size;
        let w = cfg.pool_window_size;
        let p = Params::new(src).pp("detokenizer");
        Ok(Self {
            embed_tokens: Linear::load(&p.pp("embed_tokens"), h, h, true)?,
            special_tokens: p.get("special_tokens", &[1, w, h])?,
            stack: EncoderStack::load(&p, &cfg.encoder, cfg.num_attention_pooler_hidden_layers)?,
            proj_out: Linear::load(&p.pp("proj_out"), cfg.audio_acoustic_hidden_dim, h, true)?,
            pool_window: w,
        })
    }

    /// `[1, P, H]` → `[1, P·W, C]`.
    pub fn forward(&self, tokens: &Tensor) -> Result<Tensor> {
        let (b, p, h) = tokens.dims3()?;
        let w = self.pool_window;
        let x = self.embed_tokens.forward(tokens)?.reshape((b * p, 1, h))?;
        let x = x.broadcast_add(&self.special_tokens)?; // [B·P, W, H]
        let y = self.stack.forward(&x, None)?;
        let y = self.proj_out.forward(&y)?; // [B·P, W, C]
        let c = y.dim(2)?;
        Ok(y.reshape((b, p * w, c))?)
    }
}

/// FSQ round trip of a `[1, T, C]` latent: the cover hint, cropped to T.
pub fn round_trip(
    tok: &AudioTokenizer,
    detok: &AudioDetokenizer,
    latents: &Tensor,
    silence: &Tensor,
) -> Result<Tensor> {
    let t = latents.dim(1)?;
    let (q, _) = tok.tokenize(latents, silence)?;
    Ok(detok.forward(&q)?.narrow(1, 0, t)?)
}
