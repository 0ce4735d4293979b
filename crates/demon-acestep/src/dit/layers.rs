//! The DiT's parameters (`AceStepDiTModel` / diffusers `AceStepTransformer1DModel`, acestep.md
//! §1.8): the patch conv in and out as matrices, the two timestep embedders (t and t − r), the
//! layers (AdaLN table, self- and cross-attention with per-head q/k norms, SwiGLU MLP), the output
//! norm and table, loaded under the original checkpoint names; and what both forward passes
//! share: the timestep terms, the input checks and the cross-attention keys/values of a
//! conditioning.

use candle_core::{DType, Device, Tensor};

use crate::config::DitConfig;
use crate::error::{AceStepError, Result};
use crate::gemm::{PackedMatrix, Precision};
use crate::nn::{Attention, Linear, MASKED, Mlp, Params, RmsNorm, TensorSource};

/// Width of the sinusoidal timestep features.
const TIME_FEATURES: usize = 256;

/// `linear_1 → SiLU → linear_2` gives `temb`; `time_proj(SiLU(temb))` gives the 6-way AdaLN terms.
pub struct TimeEmbedding {
    pub linear_1: Linear,
    pub linear_2: Linear,
    pub time_proj: Linear,
}

impl TimeEmbedding {
    fn load(p: &Params<'_>, h: usize) -> Result<Self> {
        Ok(Self {
            linear_1: Linear::load(&p.pp("linear_1"), h, TIME_FEATURES, true)?,
            linear_2: Linear::load(&p.pp("linear_2"), h, h, true)?,
            time_proj: Linear::load(&p.pp("time_proj"), 6 * h, h, true)?,
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

/// One row of a batch: `x` `[1, T, C]`, context `[1, T, Cc]`, timestep `t`, `t − r`, cross K/V.
#[derive(Clone, Copy)]
pub struct Row<'a> {
    pub x: &'a Tensor,
    pub context: &'a Tensor,
    pub t: f32,
    pub t_minus_r: f32,
    pub kv: &'a CrossKv,
}

/// Cross-attention keys and values of one conditioning for every layer.
pub struct CrossKv {
    /// Per layer `(K, V)`, each `[1, KV, L, D]`.
    pub layers: Vec<(Tensor, Tensor)>,
    /// `[1, 1, 1, L]` additive key mask when the conditioning has padding.
    pub mask: Option<Tensor>,
}

/// Every parameter of the decoder.
pub struct DitWeights {
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
}

impl DitWeights {
    /// The `decoder.*` tensors of `src`.
    pub fn load(src: &dyn TensorSource, cfg: &DitConfig) -> Result<Self> {
        let h = cfg.hidden_size;
        let p = cfg.patch_size;
        let cin = cfg.in_channels;
        let c = cfg.audio_acoustic_hidden_dim;
        let eps = cfg.rms_norm_eps;
        let stack = cfg.decoder_stack();
        let dec = Params::new(src).pp("decoder");
        // Conv1d weight [H, in, p] → [H, p, in] → [H, p·in], matching patches reshaped frame-major.
        let patch_in = dec.pp("proj_in").pp(1);
        let w_in = patch_in.get("weight", &[h, cin, p])?;
        let proj_in = Linear::new(
            w_in.permute((0, 2, 1))?
                .contiguous()?
                .reshape((h, p * cin))?,
            Some(patch_in.get("bias", &[h])?),
        );
        // ConvTranspose1d weight [H, C, p] → [p, C, H] → [p·C, H]; bias repeated per frame.
        let patch_out = dec.pp("proj_out").pp(1);
        let w_out = patch_out.get("weight", &[h, c, p])?;
        let b_out = patch_out.get("bias", &[c])?;
        let proj_out = Linear::new(
            w_out
                .permute((2, 1, 0))?
                .contiguous()?
                .reshape((p * c, h))?,
            Some(b_out.unsqueeze(0)?.repeat((p, 1))?.reshape(p * c)?),
        );
        let mut layers = Vec::with_capacity(cfg.num_hidden_layers);
        for i in 0..cfg.num_hidden_layers {
            let l = dec.pp("layers").pp(i);
            layers.push(DitLayer {
                self_attn_norm: RmsNorm::load(&l.pp("self_attn_norm"), h, eps)?,
                self_attn: Attention::load(&l.pp("self_attn"), &stack, h, h)?,
                cross_attn_norm: RmsNorm::load(&l.pp("cross_attn_norm"), h, eps)?,
                cross_attn: Attention::load(&l.pp("cross_attn"), &stack, h, h)?,
                mlp_norm: RmsNorm::load(&l.pp("mlp_norm"), h, eps)?,
                mlp: Mlp::load(&l.pp("mlp"), h, cfg.intermediate_size)?,
                scale_shift_table: l.get("scale_shift_table", &[1, 6, h])?,
                sliding: cfg.sliding_layers.get(i).copied().unwrap_or(i % 2 == 0),
            });
        }
        let mut weights = Self {
            proj_in,
            time_embed: TimeEmbedding::load(&dec.pp("time_embed"), h)?,
            time_embed_r: TimeEmbedding::load(&dec.pp("time_embed_r"), h)?,
            condition_embedder: Linear::load(
                &dec.pp("condition_embedder"),
                h,
                cfg.encoder.hidden_size,
                true,
            )?,
            layers,
            norm_out: RmsNorm::load(&dec.pp("norm_out"), h, eps)?,
            proj_out,
            scale_shift_table: dec.get("scale_shift_table", &[1, 2, h])?,
            cfg: cfg.clone(),
        };
        // On the CPU every projection is packed for the kernels once, here; the packed copy
        // replaces the tensor.
        if weights.device().is_cpu() {
            weights.pack(Precision::F32)?;
        }
        Ok(weights)
    }

    pub fn device(&self) -> &Device {
        self.scale_shift_table.device()
    }

    /// Every linear layer: patch convs, condition embedder, timestep embedders, projections.
    fn linears_mut(&mut self) -> Vec<&mut Linear> {
        let mut v: Vec<&mut Linear> = vec![
            &mut self.proj_in,
            &mut self.proj_out,
            &mut self.condition_embedder,
        ];
        for te in [&mut self.time_embed, &mut self.time_embed_r] {
            v.extend([&mut te.linear_1, &mut te.linear_2, &mut te.time_proj]);
        }
        for layer in &mut self.layers {
            for attn in [&mut layer.self_attn, &mut layer.cross_attn] {
                v.extend([
                    &mut attn.q_proj,
                    &mut attn.k_proj,
                    &mut attn.v_proj,
                    &mut attn.o_proj,
                ]);
            }
            v.extend([
                &mut layer.mlp.gate_proj,
                &mut layer.mlp.up_proj,
                &mut layer.mlp.down_proj,
            ]);
        }
        v
    }

    /// Pack every linear layer for the CPU kernels in `precision` (CPU only; see
    /// [`Linear::pack`]).
    pub fn pack(&mut self, precision: Precision) -> Result<()> {
        for lin in self.linears_mut() {
            lin.pack(precision)?;
        }
        Ok(())
    }

    /// The precision of the packed weights (`None` when not packed: off the CPU).
    pub fn cpu_precision(&self) -> Option<Precision> {
        self.proj_in.packed().map(PackedMatrix::precision)
    }

    /// Bytes held by the linear layers' weights (the packed panels on the CPU).
    pub fn linear_weight_bytes(&mut self) -> usize {
        self.linears_mut().iter().map(|l| l.weight_bytes()).sum()
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
    /// on the CPU the fused path always multiplies in f32 and ignores this.
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
        Ok(())
    }

    /// The dtype of the decoder layers' products (`F32` unless [`DitWeights::set_matmul_dtype`]
    /// chose another).
    pub fn matmul_dtype(&self) -> DType {
        self.layers
            .first()
            .map_or(DType::F32, |l| l.self_attn.q_proj.matmul_dtype())
    }

    /// Cross K/V of `states` `[1, L, H_enc]` with optional `[1, L]` mask, without caching.
    ///
    /// With `drop_unpadded` (the fused CPU path) the mask is read once and dropped when it has no
    /// padding; otherwise it is kept as given without reading it (a read would stall a GPU), and
    /// the caller passes `None` when it knows there is no padding. Off the CPU the keys and values
    /// are stored in the products' dtype, ready for the composed attention.
    pub fn cross_kv(
        &self,
        states: &Tensor,
        mask: Option<&Tensor>,
        drop_unpadded: bool,
    ) -> Result<CrossKv> {
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
        let dtype = if states.device().is_cpu() {
            DType::F32
        } else {
            self.matmul_dtype()
        };
        let layers = self
            .layers
            .iter()
            .map(|layer| {
                let (k, v) = layer.cross_attn.keys_values(&enc)?;
                Ok((k.to_dtype(dtype)?, v.to_dtype(dtype)?))
            })
            .collect::<Result<Vec<_>>>()?;
        // The reference never masks the DiT's cross-attention (its conditioning has no padding at
        // batch 1); padding only appears here when a blended conditioning was zero-padded, and then
        // the padded keys are excluded so the result does not depend on the padding.
        let padded = match mask {
            None => false,
            Some(m) if drop_unpadded => {
                demon_engine::host::to_scalar::<f32>(&m.min_all()?.to_dtype(DType::F32)?)? < 0.5
            }
            Some(_) => true,
        };
        let mask = match mask {
            Some(m) if padded => {
                let keep = m.to_dtype(DType::F32)?.reshape((1, 1, 1, l))?;
                Some((keep.affine(-1.0, 1.0)? * (MASKED as f64))?)
            }
            _ => None,
        };
        Ok(CrossKv { layers, mask })
    }

    /// The timestep terms of both embedders, summed: (`temb` `[1, H]`, `proj` `[1, 6, H]`).
    pub fn time_terms(&self, t: f32, t_minus_r: f32) -> Result<(Tensor, Tensor)> {
        let dev = self.device();
        let (temb_t, proj_t) = self.time_embed.forward(t, dev)?;
        let (temb_r, proj_r) = self.time_embed_r.forward(t_minus_r, dev)?;
        Ok(((temb_t + temb_r)?, (proj_t + proj_r)?))
    }

    /// Check one row's inputs against the configuration and `kv` against this network.
    pub fn check_row(&self, x: &Tensor, context: &Tensor, kv: &CrossKv) -> Result<()> {
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
}
