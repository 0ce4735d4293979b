//! Building blocks shared by every ACE-Step stack, written on candle ops: linear layers, RMSNorm,
//! rotary embeddings with the half-split `rotate_half` layout (Qwen3 /
//! `modeling_acestep_v15_turbo.py`, acestep.md §1.3), grouped-query attention with additive
//! masks, the SwiGLU MLP and the pre-norm encoder layer (lyric, timbre, pooler, detokenizer and,
//! with a causal mask, the Qwen3 text encoder).
//!
//! RMSNorm, softmax and RoPE are candle-nn's fused kernels (one pass each, on the CPU and on CUDA)
//! rather than chains of element-wise ops: on a GPU every op is a kernel launch.
//!
//! Parameters are read through [`Params`], a [`TensorSource`] under a name prefix (a checkpoint,
//! or deterministic random values for full-size benchmarks without files).

use candle_core::{CpuStorage, CustomOp1, DType, Device, Layout, Shape, Tensor};

use std::sync::Arc;

use crate::config::StackConfig;
use crate::error::Result;
use crate::gemm::{self, PackedMatrix, Precision};
pub use crate::params::{Params, RandomSource, TensorSource};

/// The weight of a [`Linear`].
#[derive(Clone, Debug)]
enum Weight {
    /// `[out, in]` as stored by PyTorch, in the product's dtype (off the CPU, bf16/f16 after
    /// [`Linear::set_matmul_dtype`]: the only copy on the device).
    Tensor(Tensor),
    /// Packed for the CPU kernels ([`PackedMatrix`], `[in, out]`): the only copy, so a packed
    /// layer costs no more memory than its tensor did (half with bf16).
    Packed(Arc<PackedMatrix>),
}

/// `y = x·Wᵀ + b` with `W` `[out, in]` as stored by PyTorch.
#[derive(Clone, Debug)]
pub struct Linear {
    weight: Weight,
    device: Device,
    pub bias: Option<Tensor>,
    /// A bf16/f16 copy of a packed (CPU) weight for the composed path's product (the input is
    /// cast down, the GEMM accumulates in f32, the output is cast back). `None`: the weight's own
    /// dtype. Off the CPU the weight tensor itself is converted instead.
    pub low: Option<Tensor>,
}

impl Linear {
    pub fn load(p: &Params<'_>, out_dim: usize, in_dim: usize, bias: bool) -> Result<Self> {
        let weight = p.get("weight", &[out_dim, in_dim])?;
        let bias = if bias {
            Some(p.get("bias", &[out_dim])?)
        } else {
            None
        };
        Ok(Self::new(weight, bias))
    }

    /// A layer from its parts (f32 product).
    pub fn new(weight: Tensor, bias: Option<Tensor>) -> Self {
        Self {
            device: weight.device().clone(),
            weight: Weight::Tensor(weight),
            bias,
            low: None,
        }
    }

    /// The weight `[out, in]` (f32; rebuilt from the packed copy when packed, bf16 widened).
    pub fn weight(&self) -> Result<Tensor> {
        match &self.weight {
            Weight::Tensor(t) => Ok(t.to_dtype(DType::F32)?),
            Weight::Packed(p) => Ok(Tensor::from_vec(p.to_nxk(), (p.n(), p.k()), &self.device)?),
        }
    }

    /// `(out, in)`.
    pub fn dims(&self) -> (usize, usize) {
        match &self.weight {
            Weight::Tensor(t) => t.dims2().unwrap_or((0, 0)),
            Weight::Packed(p) => (p.n(), p.k()),
        }
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    /// The packed weight of the CPU kernels, when packed.
    pub fn packed(&self) -> Option<&PackedMatrix> {
        match &self.weight {
            Weight::Packed(p) => Some(p),
            Weight::Tensor(_) => None,
        }
    }

    /// Bytes held by the weight (packed panels, or the tensor's elements).
    pub fn weight_bytes(&self) -> usize {
        match &self.weight {
            Weight::Packed(p) => p.bytes(),
            Weight::Tensor(t) => t.elem_count() * t.dtype().size_in_bytes(),
        }
    }

    /// Pack the weight for the CPU kernels in `precision`, dropping the tensor (CPU only; a
    /// packed layer is repacked from its stored values, so f32 → bf16 → f32 keeps bf16 values).
    pub fn pack(&mut self, precision: Precision) -> Result<()> {
        if !self.device.is_cpu() {
            return Err(crate::error::AceStepError::input(
                "packed weights are for the CPU kernels",
            ));
        }
        let packed = match &self.weight {
            Weight::Packed(p) if p.precision() == precision => return Ok(()),
            Weight::Packed(p) => p.with_precision(precision),
            Weight::Tensor(t) => {
                let (n, k) = t.dims2()?;
                let w: Vec<f32> = demon_engine::host::flat(&t.to_dtype(DType::F32)?)?;
                PackedMatrix::from_nxk(&w, n, k, precision)
            }
        };
        self.weight = Weight::Packed(Arc::new(packed));
        Ok(())
    }

    /// Replace the weight (e.g. after a LoRA merge), refreshing the low-precision or packed copy.
    pub fn set_weight(&mut self, weight: Tensor) -> Result<()> {
        if let Some(low) = &self.low {
            self.low = Some(weight.to_dtype(low.dtype())?);
        }
        let precision = self.packed().map(PackedMatrix::precision);
        let weight = match &self.weight {
            Weight::Tensor(t) if t.dtype() != weight.dtype() => weight.to_dtype(t.dtype())?,
            _ => weight,
        };
        self.weight = Weight::Tensor(weight);
        if let Some(p) = precision {
            self.pack(p)?;
        }
        Ok(())
    }

    /// Run [`Linear::forward`]'s product in `dtype` (`BF16`/`F16`, f32 accumulation), or in f32
    /// (`None` or `F32`). Off the CPU the weight itself is converted, so it is resident once, in
    /// that dtype, and no product casts it (back to f32 it keeps the rounded values). A packed
    /// (CPU) weight gets a low-precision copy for the composed path; the fused CPU kernels read
    /// the packed weight, whose precision [`Linear::pack`] sets.
    pub fn set_matmul_dtype(&mut self, dtype: Option<DType>) -> Result<()> {
        let d = dtype.unwrap_or(DType::F32);
        match &self.weight {
            Weight::Tensor(t) => {
                if t.dtype() != d {
                    self.weight = Weight::Tensor(t.to_dtype(d)?);
                }
                self.low = None;
            }
            Weight::Packed(_) => {
                self.low = if d == DType::F32 {
                    None
                } else {
                    Some(self.weight()?.to_dtype(d)?)
                };
            }
        }
        Ok(())
    }

    /// The dtype the product runs in.
    pub fn matmul_dtype(&self) -> DType {
        match (&self.low, &self.weight) {
            (Some(low), _) => low.dtype(),
            (None, Weight::Tensor(t)) => t.dtype(),
            (None, Weight::Packed(_)) => DType::F32,
        }
    }

    pub fn out_dim(&self) -> usize {
        self.dims().0
    }

    /// `x` is `[..., in]`. Batched inputs run one matrix product per leading index (or, packed,
    /// one product whose rows are independent), so a row's result never depends on the other
    /// rows of the batch.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (weight, input) = match (&self.low, &self.weight) {
            (Some(low), _) => (low, x.to_dtype(low.dtype())?),
            (None, Weight::Tensor(t)) => (t, x.to_dtype(t.dtype())?),
            (None, Weight::Packed(p)) => {
                let y = x
                    .to_dtype(DType::F32)?
                    .contiguous()?
                    .apply_op1_no_bwd(&PackedProduct(p))?;
                return Ok(match &self.bias {
                    Some(b) => y.broadcast_add(b)?,
                    None => y,
                });
            }
        };
        let w = match x.dims() {
            [b1, b2, _, _] => weight.broadcast_left((*b1, *b2))?.t()?,
            [b, _, _] => weight.broadcast_left(*b)?.t()?,
            _ => weight.t()?,
        };
        let y = input.matmul(&w)?.to_dtype(x.dtype())?;
        Ok(match &self.bias {
            Some(b) => y.broadcast_add(b)?,
            None => y,
        })
    }
}

/// `x · B` for a packed weight `B` `[K, N]` on the CPU: `[..., K]` → `[..., N]`.
struct PackedProduct<'a>(&'a PackedMatrix);

impl CustomOp1 for PackedProduct<'_> {
    fn name(&self) -> &'static str {
        "packed-linear"
    }

    fn cpu_fwd(
        &self,
        storage: &CpuStorage,
        layout: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let CpuStorage::F32(data) = storage else {
            candle_core::bail!("packed linear: only f32 is supported")
        };
        let (start, end) = layout.contiguous_offsets().ok_or_else(|| {
            candle_core::Error::Msg("packed linear: input is not contiguous".into())
        })?;
        let (k, n) = (self.0.k(), self.0.n());
        let mut dims = layout.shape().dims().to_vec();
        if dims.last() != Some(&k) {
            candle_core::bail!("packed linear: input {dims:?} does not end in {k}");
        }
        let x = &data[start..end];
        let m = x.len() / k.max(1);
        let mut y = vec![0f32; m * n];
        gemm::gemm(
            gemm::Out::dense(&mut y, m, n),
            gemm::Lhs::dense(x, m, k),
            self.0,
            gemm::Init::Zero,
            crate::cpu::threads(),
        );
        if let Some(last) = dims.last_mut() {
            *last = n;
        }
        Ok((CpuStorage::F32(y), Shape::from(dims)))
    }
}

/// RMSNorm over the last dimension: `x / sqrt(mean(x²) + ε) · w`.
#[derive(Clone, Debug)]
pub struct RmsNorm {
    pub weight: Tensor,
    pub eps: f64,
}

impl RmsNorm {
    pub fn load(p: &Params<'_>, dim: usize, eps: f64) -> Result<Self> {
        Ok(Self {
            weight: p.get("weight", &[dim])?,
            eps,
        })
    }

    /// candle-nn's fused RMSNorm (f32 accumulation) over the last dimension of `x`, in `x`'s
    /// dtype.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let w = if self.weight.dtype() == x.dtype() {
            self.weight.clone()
        } else {
            self.weight.to_dtype(x.dtype())?
        };
        Ok(candle_nn::ops::rms_norm(
            &x.contiguous()?,
            &w,
            self.eps as f32,
        )?)
    }
}

/// Rotary tables `[S, D]` for positions `0..len`: `cos`/`sin` of `pos·θ^(−2i/D)`, with the
/// frequency half repeated (`cat([f, f])`). Computed in f32 like the reference.
pub fn rope_tables(
    len: usize,
    head_dim: usize,
    theta: f64,
    device: &Device,
) -> Result<(Tensor, Tensor)> {
    let half = head_dim / 2;
    let inv: Vec<f32> = (0..half)
        .map(|i| 1.0f32 / (theta as f32).powf((2 * i) as f32 / head_dim as f32))
        .collect();
    let mut cos = Vec::with_capacity(len * head_dim);
    let mut sin = Vec::with_capacity(len * head_dim);
    for p in 0..len {
        for _ in 0..2 {
            for f in &inv {
                let a = p as f32 * f;
                cos.push(a.cos());
                sin.push(a.sin());
            }
        }
    }
    Ok((
        Tensor::from_vec(cos, (len, head_dim), device)?,
        Tensor::from_vec(sin, (len, head_dim), device)?,
    ))
}

/// Rotary tables for positions `0..len` in candle-nn's layout: `cos`/`sin` `[S, D/2]` of
/// `pos·θ^(−2i/D)` (the half that [`rope_tables`] repeats), f32.
#[derive(Clone, Debug)]
pub struct Rope {
    pub cos: Tensor,
    pub sin: Tensor,
}

impl Rope {
    pub fn new(len: usize, head_dim: usize, theta: f64, device: &Device) -> Result<Self> {
        let (cos, sin) = rope_tables(len, head_dim, theta, device)?;
        let half = head_dim / 2;
        Ok(Self {
            cos: cos.narrow(1, 0, half)?.contiguous()?,
            sin: sin.narrow(1, 0, half)?.contiguous()?,
        })
    }

    /// `x·cos + rotate_half(x)·sin` with `rotate_half(x) = [−x₂, x₁]` on `[B, H, S, D]` (one
    /// fused kernel).
    pub fn apply(&self, x: &Tensor) -> Result<Tensor> {
        let (cos, sin) = self.tables(x.dtype())?;
        Ok(candle_nn::rotary_emb::rope(&x.contiguous()?, &cos, &sin)?)
    }

    /// The same on the token-major layout `[B, S, H, D]` (no transpose needed first).
    pub fn apply_thd(&self, x: &Tensor) -> Result<Tensor> {
        let (cos, sin) = self.tables(x.dtype())?;
        Ok(candle_nn::rotary_emb::rope_thd(
            &x.contiguous()?,
            &cos,
            &sin,
        )?)
    }

    fn tables(&self, dtype: DType) -> Result<(Tensor, Tensor)> {
        if self.cos.dtype() == dtype {
            return Ok((self.cos.clone(), self.sin.clone()));
        }
        Ok((self.cos.to_dtype(dtype)?, self.sin.to_dtype(dtype)?))
    }
}

/// Softmax over the last dimension (candle-nn's fused kernel, max-subtracted).
pub fn softmax_last(x: &Tensor) -> Result<Tensor> {
    Ok(candle_nn::ops::softmax_last_dim(&x.contiguous()?)?)
}

/// The additive value that removes a key (torch's `finfo(float32).min`, so a fully masked row
/// degrades to uniform attention exactly as in the reference instead of NaN).
pub const MASKED: f32 = f32::MIN;

/// `[S, L]` additive mask keeping `|i − j| ≤ window` (bidirectional band) and, when `causal`,
/// only `j ≤ i`.
pub fn band_mask(
    s: usize,
    l: usize,
    window: Option<usize>,
    causal: bool,
    device: &Device,
) -> Result<Tensor> {
    let mut v = Vec::with_capacity(s * l);
    for i in 0..s {
        for j in 0..l {
            let keep = (!causal || j <= i) && window.is_none_or(|w| i.abs_diff(j) <= w);
            v.push(if keep { 0.0 } else { MASKED });
        }
    }
    Ok(Tensor::from_vec(v, (s, l), device)?)
}

/// Which keys each query may see.
#[derive(Clone, Copy, Debug)]
pub enum Mask<'a> {
    /// Every key.
    None,
    /// Bidirectional band `|i − j| ≤ window` (the sliding-window layers).
    Band(usize),
    /// `j ≤ i` (the causal text encoder).
    Causal,
    /// An additive mask broadcastable to `[B, 1, S, L]` (`[S, L]` or `[B, 1, S, L]`), for
    /// key padding.
    Additive(&'a Tensor),
}

/// Softmax over the last dimension restricted to a band or a causal triangle, in one pass per
/// row (CPU, f32). Row `r` belongs to query position `r mod q_len`. Excluded keys get exactly 0,
/// which is what the reference's additive `finfo.min` mask produces after `exp`.
struct FusedSoftmax {
    window: Option<usize>,
    causal: bool,
    q_len: usize,
}

impl CustomOp1 for FusedSoftmax {
    fn name(&self) -> &'static str {
        "fused-masked-softmax"
    }

    fn cpu_fwd(
        &self,
        storage: &CpuStorage,
        layout: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let CpuStorage::F32(data) = storage else {
            candle_core::bail!("fused softmax: only f32 is supported")
        };
        let (start, end) = layout.contiguous_offsets().ok_or_else(|| {
            candle_core::Error::Msg("fused softmax: input is not contiguous".into())
        })?;
        let data = &data[start..end];
        let l = layout.shape().dims().last().copied().unwrap_or(0);
        let mut out = vec![0f32; data.len()];
        if l == 0 || data.is_empty() {
            return Ok((CpuStorage::F32(out), layout.shape().clone()));
        }
        let rows = data.len() / l;
        let threads = std::thread::available_parallelism()
            .map_or(1, |n| n.get())
            .min(rows);
        let per = rows.div_ceil(threads.max(1));
        let q_len = self.q_len.max(1);
        std::thread::scope(|scope| {
            for (chunk, (dst, src)) in out
                .chunks_mut(per * l)
                .zip(data.chunks(per * l))
                .enumerate()
            {
                scope.spawn(move || {
                    for (k, (o, x)) in dst.chunks_mut(l).zip(src.chunks(l)).enumerate() {
                        let i = (chunk * per + k) % q_len;
                        let (mut lo, mut hi) = (0, l);
                        if let Some(w) = self.window {
                            lo = i.saturating_sub(w).min(l);
                            hi = (i + w + 1).min(l);
                        }
                        if self.causal {
                            hi = hi.min(i + 1);
                        }
                        if lo >= hi {
                            // No visible key: uniform, as a fully masked reference row.
                            o.iter_mut().for_each(|v| *v = 1.0 / l as f32);
                            continue;
                        }
                        let m = x[lo..hi].iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b));
                        let mut sum = 0f32;
                        for j in lo..hi {
                            let e = (x[j] - m).exp();
                            o[j] = e;
                            sum += e;
                        }
                        for v in &mut o[lo..hi] {
                            *v /= sum;
                        }
                    }
                });
            }
        });
        Ok((CpuStorage::F32(out), layout.shape().clone()))
    }
}

/// Grouped-query attention. `q` `[B, H, S, D]`, `k`/`v` `[B, KV, L, D]`. Returns `[B, S, H·D]`.
///
/// Query heads are grouped with their key/value head (`h / (H/KV)`, torch's `repeat_interleave`
/// convention) by reshaping the queries rather than copying keys and values. Band and causal
/// masks run in a fused softmax on the CPU instead of materialising an additive mask.
pub fn attention(q: &Tensor, k: &Tensor, v: &Tensor, mask: Mask<'_>, scale: f64) -> Result<Tensor> {
    let (b, h, s, d) = q.dims4()?;
    let kv = k.dim(1)?;
    let l = k.dim(2)?;
    let rep = h / kv;
    let qg = q.contiguous()?.reshape((b, kv, rep * s, d))?;
    let scores = (qg.matmul(&k.t()?)? * scale)?; // [B, KV, rep·S, L]
    let fused = |window: Option<usize>, causal: bool| -> Result<Tensor> {
        if scores.device().is_cpu() && scores.dtype() == DType::F32 {
            Ok(scores.contiguous()?.apply_op1_no_bwd(&FusedSoftmax {
                window,
                causal,
                q_len: s,
            })?)
        } else if window.is_none() && !causal {
            softmax_last(&scores)
        } else {
            let m = band_mask(s, l, window, causal, scores.device())?.reshape((1, 1, 1, s, l))?;
            softmax_last(
                &scores
                    .reshape((b, kv, rep, s, l))?
                    .broadcast_add(&m)?
                    .reshape((b, kv, rep * s, l))?,
            )
        }
    };
    let probs = match mask {
        Mask::None => fused(None, false)?,
        Mask::Band(w) => fused(Some(w), false)?,
        Mask::Causal => fused(None, true)?,
        Mask::Additive(m) => {
            let m = match m.rank() {
                2 => m.reshape((1, 1, 1, s, l))?,
                4 => m.unsqueeze(2)?,
                _ => m.clone(),
            };
            softmax_last(
                &scores
                    .reshape((b, kv, rep, s, l))?
                    .broadcast_add(&m)?
                    .reshape((b, kv, rep * s, l))?,
            )?
        }
    };
    let out = probs.matmul(&v.contiguous()?)?; // [B, KV, rep·S, D]
    Ok(out
        .reshape((b, h, s, d))?
        .transpose(1, 2)?
        .reshape((b, s, h * d))?)
}

/// Attention projections with per-head q/k RMSNorm (ACE-Step and Qwen3 attention).
#[derive(Clone, Debug)]
pub struct Attention {
    pub q_proj: Linear,
    pub k_proj: Linear,
    pub v_proj: Linear,
    pub o_proj: Linear,
    pub q_norm: RmsNorm,
    pub k_norm: RmsNorm,
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
}

impl Attention {
    /// `hidden` is the query input width; `kv_in` the key/value input width.
    pub fn load(p: &Params<'_>, cfg: &StackConfig, hidden: usize, kv_in: usize) -> Result<Self> {
        let (h, kv, d) = (
            cfg.num_attention_heads,
            cfg.num_key_value_heads,
            cfg.head_dim,
        );
        Ok(Self {
            q_proj: Linear::load(&p.pp("q_proj"), h * d, hidden, false)?,
            k_proj: Linear::load(&p.pp("k_proj"), kv * d, kv_in, false)?,
            v_proj: Linear::load(&p.pp("v_proj"), kv * d, kv_in, false)?,
            o_proj: Linear::load(&p.pp("o_proj"), hidden, h * d, false)?,
            q_norm: RmsNorm::load(&p.pp("q_norm"), d, cfg.rms_norm_eps)?,
            k_norm: RmsNorm::load(&p.pp("k_norm"), d, cfg.rms_norm_eps)?,
            heads: h,
            kv_heads: kv,
            head_dim: d,
        })
    }

    /// `[B, S, in]` → `[B, heads, S, D]` after projection and per-head RMSNorm.
    fn heads_of(&self, proj: &Linear, norm: &RmsNorm, x: &Tensor, heads: usize) -> Result<Tensor> {
        let (b, s, _) = x.dims3()?;
        let y = proj.forward(x)?.reshape((b, s, heads, self.head_dim))?;
        Ok(norm.forward(&y)?.transpose(1, 2)?.contiguous()?)
    }

    pub fn queries(&self, x: &Tensor) -> Result<Tensor> {
        self.heads_of(&self.q_proj, &self.q_norm, x, self.heads)
    }

    /// Normalised keys and values `[B, KV, L, D]` of `x` (no RoPE).
    pub fn keys_values(&self, x: &Tensor) -> Result<(Tensor, Tensor)> {
        let (b, l, _) = x.dims3()?;
        let k = self.heads_of(&self.k_proj, &self.k_norm, x, self.kv_heads)?;
        let v = self
            .v_proj
            .forward(x)?
            .reshape((b, l, self.kv_heads, self.head_dim))?
            .transpose(1, 2)?
            .contiguous()?;
        Ok((k, v))
    }

    /// Self-attention with RoPE under `mask`.
    pub fn self_attention(&self, x: &Tensor, rope: &Rope, mask: Mask<'_>) -> Result<Tensor> {
        let q = rope.apply(&self.queries(x)?)?;
        let (k, v) = self.keys_values(x)?;
        let k = rope.apply(&k)?;
        let o = attention(&q, &k, &v, mask, 1.0 / (self.head_dim as f64).sqrt())?;
        self.o_proj.forward(&o)
    }
}

/// SwiGLU MLP: `down(silu(gate(x)) · up(x))`.
#[derive(Clone, Debug)]
pub struct Mlp {
    pub gate_proj: Linear,
    pub up_proj: Linear,
    pub down_proj: Linear,
}

impl Mlp {
    pub fn load(p: &Params<'_>, hidden: usize, inter: usize) -> Result<Self> {
        Ok(Self {
            gate_proj: Linear::load(&p.pp("gate_proj"), inter, hidden, false)?,
            up_proj: Linear::load(&p.pp("up_proj"), inter, hidden, false)?,
            down_proj: Linear::load(&p.pp("down_proj"), hidden, inter, false)?,
        })
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let g = self.gate_proj.forward(x)?.silu()?;
        self.down_proj.forward(&(g * self.up_proj.forward(x)?)?)
    }
}

/// Pre-norm Qwen3-style layer: `h = x + Attn(norm(x))`, `out = h + MLP(norm(h))`.
#[derive(Clone, Debug)]
pub struct EncoderLayer {
    pub input_layernorm: RmsNorm,
    pub self_attn: Attention,
    pub post_attention_layernorm: RmsNorm,
    pub mlp: Mlp,
}

impl EncoderLayer {
    pub fn load(p: &Params<'_>, cfg: &StackConfig) -> Result<Self> {
        let h = cfg.hidden_size;
        let eps = cfg.rms_norm_eps;
        Ok(Self {
            input_layernorm: RmsNorm::load(&p.pp("input_layernorm"), h, eps)?,
            self_attn: Attention::load(&p.pp("self_attn"), cfg, h, h)?,
            post_attention_layernorm: RmsNorm::load(&p.pp("post_attention_layernorm"), h, eps)?,
            mlp: Mlp::load(&p.pp("mlp"), h, cfg.intermediate_size)?,
        })
    }

    pub fn forward(&self, x: &Tensor, rope: &Rope, mask: Mask<'_>) -> Result<Tensor> {
        let h =
            (x + self
                .self_attn
                .self_attention(&self.input_layernorm.forward(x)?, rope, mask)?)?;
        Ok((&h
            + self
                .mlp
                .forward(&self.post_attention_layernorm.forward(&h)?)?)?)
    }
}

/// A stack of encoder layers with alternating sliding (even index) / full attention, a final
/// RMSNorm, and bidirectional attention with an optional key padding mask.
#[derive(Clone, Debug)]
pub struct EncoderStack {
    pub layers: Vec<EncoderLayer>,
    pub norm: RmsNorm,
    pub cfg: StackConfig,
}

impl EncoderStack {
    /// `layers.{0..depth}` and `norm` of scope `p`.
    pub fn load(p: &Params<'_>, cfg: &StackConfig, depth: usize) -> Result<Self> {
        let layers = (0..depth)
            .map(|i| EncoderLayer::load(&p.pp("layers").pp(i), cfg))
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            layers,
            norm: RmsNorm::load(&p.pp("norm"), cfg.hidden_size, cfg.rms_norm_eps)?,
            cfg: cfg.clone(),
        })
    }

    /// `x` `[B, L, H]`; `key_mask` `[B, L]` (1 valid, 0 padding) or `None`. Returns the normed
    /// `[B, L, H]`.
    pub fn forward(&self, x: &Tensor, key_mask: Option<&Tensor>) -> Result<Tensor> {
        let (b, l, _) = x.dims3()?;
        let dev = x.device();
        let rope = Rope::new(l, self.cfg.head_dim, self.cfg.rope_theta, dev)?;
        let pad = match key_mask {
            Some(m) => {
                // [B, 1, 1, L]: 0 where valid, MASKED where padding.
                let keep = m.to_dtype(DType::F32)?.reshape((b, 1, 1, l))?;
                Some(((keep.affine(-1.0, 1.0)?) * (MASKED as f64))?)
            }
            None => None,
        };
        // With padding, the band and the key mask are combined into one additive mask; without,
        // the band runs in the fused softmax.
        let window = self.cfg.sliding_window;
        let sliding_pad = match &pad {
            Some(p) => Some(
                p.broadcast_add(
                    &band_mask(l, l, Some(window), false, dev)?.reshape((1, 1, l, l))?,
                )?
                .clamp(MASKED, 0.0)?,
            ),
            None => None,
        };
        let mut h = x.clone();
        for (i, layer) in self.layers.iter().enumerate() {
            let mask = match (i % 2 == 0, &sliding_pad, &pad) {
                (true, Some(m), _) => Mask::Additive(m),
                (true, None, _) => Mask::Band(window),
                (false, _, Some(p)) => Mask::Additive(p),
                (false, _, None) => Mask::None,
            };
            h = layer.forward(&h, &rope, mask)?;
        }
        self.norm.forward(&h)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::max_abs_diff;

    /// The fused band/causal softmax equals the additive-mask reference formulation.
    #[test]
    fn fused_softmax_matches_the_additive_mask() {
        let dev = Device::Cpu;
        let (b, kv, rep, s, l, d) = (2, 2, 3, 9, 9, 4);
        let q = Tensor::randn(0f32, 1.0, (b, kv * rep, s, d), &dev).unwrap();
        let k = Tensor::randn(0f32, 1.0, (b, kv, l, d), &dev).unwrap();
        let v = Tensor::randn(0f32, 1.0, (b, kv, l, d), &dev).unwrap();
        for (fused, window, causal) in [
            (Mask::Band(2), Some(2), false),
            (Mask::Causal, None, true),
            (Mask::Band(0), Some(0), false),
        ] {
            let m = band_mask(s, l, window, causal, &dev).unwrap();
            let want = attention(&q, &k, &v, Mask::Additive(&m), 0.5).unwrap();
            let got = attention(&q, &k, &v, fused, 0.5).unwrap();
            let diff = max_abs_diff(&got, &want);
            assert!(diff < 1e-6, "{fused:?}: {diff}");
        }
    }
}
