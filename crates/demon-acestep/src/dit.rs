//! The ACE-Step 1.5 DiT (`AceStepDiTModel` / diffusers `AceStepTransformer1DModel`, acestep.md
//! §1.8), sized from the config: patch conv in, two timestep embedders (t and t − r), AdaLN with a
//! 6-way table per layer, self-attention with sliding (`|i − j| ≤ window`, even layers) or full
//! window, per-head q/k RMSNorm before RoPE, GQA, ungated cross-attention to the packed
//! conditioning, SwiGLU MLP, adaptive output norm from `temb`, ConvTranspose patch out, odd T
//! zero-padded then cropped.
//!
//! Two implementation choices:
//! - the patch conv (kernel = stride = patch) and the transposed conv are exact reshapes plus a
//!   matrix product, so they run as one GEMM each;
//! - every batch row runs through the network on its own (weights shared). candle folds a batch
//!   that multiplies the same weight into one larger GEMM, and the GEMM may pick another kernel for
//!   another row count; running rows one at a time makes a row's result bit-identical whatever
//!   else is in the batch (the `Denoiser` contract). On a CPU the cost is nil: each row is already
//!   a `[S, H] × [H, N]` product with hundreds of rows.
//! - cross-attention keys/values are computed once per conditioning and cached by the caller's key
//!   (the engine's `Conditioning::id`), as upstream's `EncoderDecoderCache` does across steps.

use std::collections::HashMap;
use std::sync::Arc;

use candle_core::{DType, Device, Tensor};

use crate::config::DitConfig;
use crate::dit_cpu::WorkspaceSlot;
use crate::error::{AceStepError, Result};
use crate::nn::{
    Attention, Linear, MASKED, Mask, Mlp, RmsNorm, TensorSource, attention, rope_tables,
};

/// Width of the sinusoidal timestep features.
const TIME_FEATURES: usize = 256;

/// `linear_1 → SiLU → linear_2` gives `temb`; `time_proj(SiLU(temb))` gives the 6-way AdaLN terms.
pub struct TimeEmbedding {
    pub linear_1: Linear,
    pub linear_2: Linear,
    pub time_proj: Linear,
}

impl TimeEmbedding {
    fn load(src: &dyn TensorSource, name: &str, h: usize) -> Result<Self> {
        Ok(Self {
            linear_1: Linear::load(src, &format!("{name}.linear_1"), h, TIME_FEATURES, true)?,
            linear_2: Linear::load(src, &format!("{name}.linear_2"), h, h, true)?,
            time_proj: Linear::load(src, &format!("{name}.time_proj"), 6 * h, h, true)?,
        })
    }

    /// `t` in `[0, 1]` → (`temb` `[1, H]`, `proj` `[1, 6, H]`).
    fn forward(&self, t: f32, device: &Device) -> Result<(Tensor, Tensor)> {
        let feats = timestep_features(t, device)?;
        let temb = self
            .linear_2
            .forward(&self.linear_1.forward(&feats)?.silu()?)?;
        let h = temb.dim(1)?;
        let proj = self.time_proj.forward(&temb.silu()?)?.reshape((1, 6, h))?;
        Ok((temb, proj))
    }
}

/// Sinusoid of `t·1000`, 256 wide, frequencies `exp(−ln(10000)·i/128)`, laid out `[cos, sin]`
/// (computed in f32 like the reference).
pub fn timestep_features(t: f32, device: &Device) -> Result<Tensor> {
    let half = TIME_FEATURES / 2;
    let arg0 = t * 1000.0;
    let mut v = vec![0f32; TIME_FEATURES];
    for i in 0..half {
        let exponent = -(10000f32).ln() * i as f32 / half as f32;
        let a = arg0 * exponent.exp();
        v[i] = a.cos();
        v[half + i] = a.sin();
    }
    Ok(Tensor::from_vec(v, (1, TIME_FEATURES), device)?)
}

/// One DiT block.
pub struct DitLayer {
    pub self_attn_norm: RmsNorm,
    pub self_attn: Attention,
    pub cross_attn_norm: RmsNorm,
    pub cross_attn: Attention,
    pub mlp_norm: RmsNorm,
    pub mlp: Mlp,
    /// `[1, 6, H]`
    pub scale_shift_table: Tensor,
    pub sliding: bool,
}

/// Cross-attention keys and values of one conditioning for every layer.
pub struct CrossKv {
    /// Per layer `(K, V)`, each `[1, KV, L, D]`.
    pub layers: Vec<(Tensor, Tensor)>,
    /// `[1, 1, 1, L]` additive key mask when the conditioning has padding.
    pub mask: Option<Tensor>,
}

/// The decoder.
pub struct Dit {
    /// Patch conv as a matrix `[H, patch·in]` (input ordered frame-major within a patch).
    pub proj_in: Linear,
    pub time_embed: TimeEmbedding,
    pub time_embed_r: TimeEmbedding,
    pub condition_embedder: Linear,
    pub layers: Vec<DitLayer>,
    pub norm_out: RmsNorm,
    /// Transposed patch conv as a matrix `[patch·C, H]`.
    pub proj_out: Linear,
    /// `[1, 2, H]`
    pub scale_shift_table: Tensor,
    pub cfg: DitConfig,
    cache: HashMap<u64, Arc<CrossKv>>,
    /// Buffers of the CPU row forward, reused between calls.
    pub(crate) workspace: WorkspaceSlot,
}

impl Dit {
    pub fn load(src: &dyn TensorSource, cfg: &DitConfig) -> Result<Self> {
        let h = cfg.hidden_size;
        let p = cfg.patch_size;
        let cin = cfg.in_channels;
        let c = cfg.audio_acoustic_hidden_dim;
        let stack = cfg.decoder_stack();
        // Conv1d weight [H, in, p] → [H, p, in] → [H, p·in], matching patches reshaped frame-major.
        let w_in = src.tensor("decoder.proj_in.1.weight", &[h, cin, p])?;
        let proj_in = Linear::new(
            w_in.permute((0, 2, 1))?
                .contiguous()?
                .reshape((h, p * cin))?,
            Some(src.tensor("decoder.proj_in.1.bias", &[h])?),
        );
        // ConvTranspose1d weight [H, C, p] → [p, C, H] → [p·C, H]; bias repeated per frame.
        let w_out = src.tensor("decoder.proj_out.1.weight", &[h, c, p])?;
        let b_out = src.tensor("decoder.proj_out.1.bias", &[c])?;
        let proj_out = Linear::new(
            w_out
                .permute((2, 1, 0))?
                .contiguous()?
                .reshape((p * c, h))?,
            Some(b_out.unsqueeze(0)?.repeat((p, 1))?.reshape(p * c)?),
        );
        let mut layers = Vec::with_capacity(cfg.num_hidden_layers);
        for i in 0..cfg.num_hidden_layers {
            let n = format!("decoder.layers.{i}");
            layers.push(DitLayer {
                self_attn_norm: RmsNorm::load(
                    src,
                    &format!("{n}.self_attn_norm"),
                    h,
                    cfg.rms_norm_eps,
                )?,
                self_attn: Attention::load(src, &format!("{n}.self_attn"), &stack, h, h)?,
                cross_attn_norm: RmsNorm::load(
                    src,
                    &format!("{n}.cross_attn_norm"),
                    h,
                    cfg.rms_norm_eps,
                )?,
                cross_attn: Attention::load(src, &format!("{n}.cross_attn"), &stack, h, h)?,
                mlp_norm: RmsNorm::load(src, &format!("{n}.mlp_norm"), h, cfg.rms_norm_eps)?,
                mlp: Mlp::load(src, &format!("{n}.mlp"), h, cfg.intermediate_size)?,
                scale_shift_table: src.tensor(&format!("{n}.scale_shift_table"), &[1, 6, h])?,
                sliding: cfg.sliding_layers.get(i).copied().unwrap_or(i % 2 == 0),
            });
        }
        Ok(Self {
            proj_in,
            time_embed: TimeEmbedding::load(src, "decoder.time_embed", h)?,
            time_embed_r: TimeEmbedding::load(src, "decoder.time_embed_r", h)?,
            condition_embedder: Linear::load(
                src,
                "decoder.condition_embedder",
                h,
                cfg.encoder.hidden_size,
                true,
            )?,
            layers,
            norm_out: RmsNorm::load(src, "decoder.norm_out", h, cfg.rms_norm_eps)?,
            proj_out,
            scale_shift_table: src.tensor("decoder.scale_shift_table", &[1, 2, h])?,
            cfg: cfg.clone(),
            cache: HashMap::new(),
            workspace: WorkspaceSlot::default(),
        })
    }

    pub fn device(&self) -> &Device {
        self.scale_shift_table.device()
    }

    /// The linear layer of module `name` (original naming, e.g.
    /// `decoder.layers.3.cross_attn.v_proj`), for LoRA merging.
    pub fn linear_mut(&mut self, name: &str) -> Option<&mut Linear> {
        if name == "decoder.condition_embedder" {
            return Some(&mut self.condition_embedder);
        }
        let rest = name.strip_prefix("decoder.layers.")?;
        let (idx, tail) = rest.split_once('.')?;
        let layer = self.layers.get_mut(idx.parse::<usize>().ok()?)?;
        let (block, proj) = tail.split_once('.')?;
        let attn = match block {
            "self_attn" => &mut layer.self_attn,
            "cross_attn" => &mut layer.cross_attn,
            "mlp" => {
                return match proj {
                    "gate_proj" => Some(&mut layer.mlp.gate_proj),
                    "up_proj" => Some(&mut layer.mlp.up_proj),
                    "down_proj" => Some(&mut layer.mlp.down_proj),
                    _ => None,
                };
            }
            _ => return None,
        };
        match proj {
            "q_proj" => Some(&mut attn.q_proj),
            "k_proj" => Some(&mut attn.k_proj),
            "v_proj" => Some(&mut attn.v_proj),
            "o_proj" => Some(&mut attn.o_proj),
            _ => None,
        }
    }

    /// Run the decoder layers' and the condition embedder's matrix products in `dtype` (`BF16`
    /// or `F16` with f32 accumulation, from weight copies; `None`/`F32`: f32). Meant for GPUs;
    /// on the CPU the fused path always multiplies in f32 and ignores this. Clears the cross K/V
    /// cache (the keys/values change with the precision).
    pub fn set_matmul_dtype(&mut self, dtype: Option<DType>) -> Result<()> {
        self.condition_embedder.set_matmul_dtype(dtype)?;
        for layer in &mut self.layers {
            for attn in [&mut layer.self_attn, &mut layer.cross_attn] {
                for lin in [
                    &mut attn.q_proj,
                    &mut attn.k_proj,
                    &mut attn.v_proj,
                    &mut attn.o_proj,
                ] {
                    lin.set_matmul_dtype(dtype)?;
                }
            }
            for lin in [
                &mut layer.mlp.gate_proj,
                &mut layer.mlp.up_proj,
                &mut layer.mlp.down_proj,
            ] {
                lin.set_matmul_dtype(dtype)?;
            }
        }
        self.clear_cache();
        Ok(())
    }

    /// Forget every cached cross-attention K/V (after a weight change such as a LoRA update).
    pub fn clear_cache(&mut self) {
        self.cache.clear();
    }

    /// Number of conditionings whose cross-attention K/V are cached.
    pub fn cached_conditionings(&self) -> usize {
        self.cache.len()
    }

    /// Cross K/V of `states` `[1, L, H_enc]` with optional `[1, L]` mask, without caching.
    pub fn cross_kv(&self, states: &Tensor, mask: Option<&Tensor>) -> Result<CrossKv> {
        let (b, l, he) = states.dims3()?;
        if b != 1 || he != self.cfg.encoder.hidden_size {
            return Err(AceStepError::input(format!(
                "conditioning states must be [1, L, {}], got {:?}",
                self.cfg.encoder.hidden_size,
                states.dims()
            )));
        }
        if l == 0 {
            return Err(AceStepError::input("empty conditioning"));
        }
        let enc = self.condition_embedder.forward(states)?;
        let layers = self
            .layers
            .iter()
            .map(|layer| layer.cross_attn.keys_values(&enc))
            .collect::<Result<Vec<_>>>()?;
        // The reference never masks the DiT's cross-attention (its conditioning has no padding at
        // batch 1); padding only appears here when a blended conditioning was zero-padded, and then
        // the padded keys are excluded so the result does not depend on the padding.
        let mask = match mask {
            Some(m) if m.min_all()?.to_scalar::<f32>()? < 0.5 => {
                let keep = m.to_dtype(DType::F32)?.reshape((1, 1, 1, l))?;
                Some((keep.affine(-1.0, 1.0)? * (MASKED as f64))?)
            }
            _ => None,
        };
        Ok(CrossKv { layers, mask })
    }

    /// Cached cross K/V for conditioning `key` (computed on first use). The cache keeps at most
    /// 64 conditionings; older entries are dropped wholesale when it overflows.
    pub fn cached_cross_kv(
        &mut self,
        key: u64,
        states: &Tensor,
        mask: Option<&Tensor>,
    ) -> Result<Arc<CrossKv>> {
        if let Some(kv) = self.cache.get(&key) {
            return Ok(kv.clone());
        }
        let kv = Arc::new(self.cross_kv(states, mask)?);
        if self.cache.len() >= 64 {
            self.cache.clear();
        }
        self.cache.insert(key, kv.clone());
        Ok(kv)
    }

    /// One row: `x` `[1, T, C]`, context `[1, T, Cc]`, timestep `t`, `t − r`, cross K/V →
    /// velocity `[1, T, C]`. On the CPU this runs the fused kernels of `dit_cpu.rs`; elsewhere
    /// (and in [`Dit::forward_row_candle`]) composed candle ops.
    pub fn forward_row(
        &self,
        x: &Tensor,
        context: &Tensor,
        t: f32,
        t_minus_r: f32,
        kv: &CrossKv,
    ) -> Result<Tensor> {
        self.check_row(x, context, kv)?;
        if self.device().is_cpu() {
            return self.forward_row_cpu(x, context, t, t_minus_r, kv);
        }
        self.forward_row_candle(x, context, t, t_minus_r, kv)
    }

    /// The timestep terms of both embedders, summed: (`temb` `[1, H]`, `proj` `[1, 6, H]`).
    pub(crate) fn time_terms(&self, t: f32, t_minus_r: f32) -> Result<(Tensor, Tensor)> {
        let dev = self.device();
        let (temb_t, proj_t) = self.time_embed.forward(t, dev)?;
        let (temb_r, proj_r) = self.time_embed_r.forward(t_minus_r, dev)?;
        Ok(((temb_t + temb_r)?, (proj_t + proj_r)?))
    }

    fn check_row(&self, x: &Tensor, context: &Tensor, kv: &CrossKv) -> Result<()> {
        let cfg = &self.cfg;
        let (b, frames, c) = x.dims3()?;
        let cc = context.dim(2)?;
        if b != 1
            || c != cfg.audio_acoustic_hidden_dim
            || cc + c != cfg.in_channels
            || context.dim(1)? != frames
        {
            return Err(AceStepError::input(format!(
                "DiT row expects x [1, T, {}] and context [1, T, {}], got {:?} and {:?}",
                cfg.audio_acoustic_hidden_dim,
                cfg.context_channels(),
                x.dims(),
                context.dims()
            )));
        }
        if frames == 0 {
            return Err(AceStepError::input("DiT row has no frames"));
        }
        if kv.layers.len() != self.layers.len() {
            return Err(AceStepError::input(
                "cross K/V computed for a different DiT",
            ));
        }
        Ok(())
    }

    /// [`Dit::forward_row`] as composed candle ops (any device; the reference the CPU kernels
    /// are tested against).
    pub fn forward_row_candle(
        &self,
        x: &Tensor,
        context: &Tensor,
        t: f32,
        t_minus_r: f32,
        kv: &CrossKv,
    ) -> Result<Tensor> {
        self.check_row(x, context, kv)?;
        let cfg = &self.cfg;
        let dev = self.device().clone();
        let (_, frames, c) = x.dims3()?;
        let p = cfg.patch_size;
        let (temb, proj) = self.time_terms(t, t_minus_r)?; // [1, H], [1, 6, H]

        // [context | x], zero-pad T to a multiple of the patch, patchify.
        let mut hs = Tensor::cat(&[context, x], 2)?;
        let padded = frames.div_ceil(p) * p;
        if padded != frames {
            hs = hs.pad_with_zeros(1, 0, padded - frames)?;
        }
        let s = padded / p;
        let mut hs = self
            .proj_in
            .forward(&hs.reshape((1, s, p * cfg.in_channels))?)?; // [1, S, H]

        let rope = rope_tables(s, cfg.head_dim, cfg.rope_theta, &dev)?;
        let scale = 1.0 / (cfg.head_dim as f64).sqrt();
        for (layer, (k, v)) in self.layers.iter().zip(&kv.layers) {
            let m = layer.scale_shift_table.broadcast_add(&proj)?; // [1, 6, H]
            let part = |i: usize| m.narrow(1, i, 1);
            let (shift, sc, gate) = (part(0)?, part(1)?, part(2)?);
            let (c_shift, c_sc, c_gate) = (part(3)?, part(4)?, part(5)?);

            let n = adaln(&layer.self_attn_norm, &hs, &sc, &shift)?;
            let mask = if layer.sliding {
                Mask::Band(cfg.sliding_window)
            } else {
                Mask::None
            };
            let a = layer.self_attn.self_attention(&n, &rope, mask)?;
            hs = (&hs + a.broadcast_mul(&gate)?)?;

            let n = layer.cross_attn_norm.forward(&hs)?;
            let q = layer.cross_attn.queries(&n)?;
            let cross_mask = match &kv.mask {
                Some(m) => Mask::Additive(m),
                None => Mask::None,
            };
            let o = attention(&q, k, v, cross_mask, scale)?;
            hs = (&hs + layer.cross_attn.o_proj.forward(&o)?)?;

            let n = adaln(&layer.mlp_norm, &hs, &c_sc, &c_shift)?;
            hs = (&hs + layer.mlp.forward(&n)?.broadcast_mul(&c_gate)?)?;
        }

        let m = self.scale_shift_table.broadcast_add(&temb.unsqueeze(1)?)?; // [1, 2, H]
        let (shift, sc) = (m.narrow(1, 0, 1)?, m.narrow(1, 1, 1)?);
        let n = adaln(&self.norm_out, &hs, &sc, &shift)?;
        let y = self.proj_out.forward(&n)?; // [1, S, p·C]
        Ok(y.reshape((1, s * p, c))?.narrow(1, 0, frames)?)
    }

    /// Batched forward in the reference's argument layout: `x` `[B, T, C]`, `t`/`r` per row,
    /// per-row conditioning states `[1, L_i, H_enc]`, `context` `[B, T, Cc]`.
    pub fn forward(
        &self,
        x: &Tensor,
        t: &[f32],
        r: &[f32],
        states: &[Tensor],
        context: &Tensor,
    ) -> Result<Tensor> {
        let b = x.dim(0)?;
        if t.len() != b || r.len() != b || states.len() != b || context.dim(0)? != b {
            return Err(AceStepError::input(
                "batch sizes of x, timestep, timestep_r, states and context differ",
            ));
        }
        let mut rows = Vec::with_capacity(b);
        for i in 0..b {
            let kv = self.cross_kv(&states[i], None)?;
            rows.push(self.forward_row(
                &x.narrow(0, i, 1)?,
                &context.narrow(0, i, 1)?,
                t[i],
                t[i] - r[i],
                &kv,
            )?);
        }
        Ok(Tensor::cat(&rows, 0)?)
    }
}

/// `RMSNorm(x)·(1 + scale) + shift` with `[1, 1, H]` modulation terms.
fn adaln(norm: &RmsNorm, x: &Tensor, scale: &Tensor, shift: &Tensor) -> Result<Tensor> {
    let n = norm.forward(x)?;
    Ok(n.broadcast_mul(&(scale + 1.0)?)?.broadcast_add(shift)?)
}
