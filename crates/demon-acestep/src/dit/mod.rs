//! The ACE-Step 1.5 DiT (`AceStepDiTModel` / diffusers `AceStepTransformer1DModel`, acestep.md
//! §1.8), sized from the config: patch conv in, two timestep embedders (t and t − r), AdaLN with a
//! 6-way table per layer, self-attention with sliding (`|i − j| ≤ window`, even layers) or full
//! window, per-head q/k RMSNorm before RoPE, GQA, ungated cross-attention to the packed
//! conditioning, SwiGLU MLP, adaptive output norm from `temb`, ConvTranspose patch out, odd T
//! zero-padded then cropped.
//!
//! The rooms: [`layers`] holds the parameters and what both forwards share, [`composed`] the
//! forward as candle ops (any device), [`cpu`] the fused CPU forward, [`cache`] the
//! cross-attention keys/values by conditioning content; this module is the model that owns the
//! parameters and the cache and picks a forward per device. The children never import this
//! module, so there is no cycle.
//!
//! Implementation choices:
//! - the patch conv (kernel = stride = patch) and the transposed conv are exact reshapes plus a
//!   matrix product, so they run as one GEMM each;
//! - a row's result is bit-identical whatever else is in the batch (the `Denoiser` contract). On
//!   the CPU the whole batch runs as one product per projection (`[B·S, H] × [H, N]`) from weights
//!   packed once at load, whose every output is one fixed multiply-add chain whatever the row
//!   count (`gemm` module). Elsewhere the batch runs through the composed ops as one
//!   strided-batched product per projection (one GEMM per row inside one call): the rows stay
//!   independent, and their bits match the row alone as long as cuBLAS keeps its kernel choice
//!   for another batch count (`tests/gpu.rs` measures it; docs/performance.md).
//! - cross-attention keys/values are computed once per conditioning and cached (least recently
//!   used evicted), as upstream's `EncoderDecoderCache` does across steps: by content on the
//!   fused CPU path, by the caller's id (the engine's `Conditioning::id`) elsewhere, where hashing
//!   the content would read it back from the device.

pub mod cache;
pub mod composed;
pub mod cpu;
pub mod layers;

use std::sync::Arc;

use candle_core::{DType, Device, Tensor};

pub use cache::CrossKvCache;
pub use cpu::Workspace;
pub use layers::{CrossKv, DitLayer, DitWeights, Row, TimeEmbedding, timestep_features};

use crate::config::DitConfig;
use crate::error::{AceStepError, Result};
use crate::nn::{Linear, TensorSource};

/// The decoder: its parameters and the cross-attention cache of the conditionings it has seen.
pub struct Dit {
    pub weights: DitWeights,
    cache: CrossKvCache,
    /// Run the composed (GPU) path on the CPU too.
    composed_on_cpu: bool,
}

impl Dit {
    pub fn load(src: &dyn TensorSource, cfg: &DitConfig) -> Result<Self> {
        Ok(Self {
            weights: DitWeights::load(src, cfg)?,
            cache: CrossKvCache::default(),
            composed_on_cpu: false,
        })
    }

    /// Whether rows run through the fused CPU kernels ([`cpu`]); otherwise through the composed
    /// candle ops ([`composed`]), the path of every other device.
    pub fn fused(&self) -> bool {
        self.device().is_cpu() && !self.composed_on_cpu
    }

    /// Run the composed path (the one a GPU runs) on the CPU as well: for tests of that path and
    /// comparisons on a machine without a GPU. Clears the cross K/V cache (the two paths keep
    /// keys/values differently).
    pub fn set_composed(&mut self, on: bool) {
        self.composed_on_cpu = on;
        self.clear_cache();
    }

    pub fn config(&self) -> &DitConfig {
        &self.weights.cfg
    }

    pub fn device(&self) -> &Device {
        self.weights.device()
    }

    /// The linear layer of module `name` (original naming, e.g.
    /// `decoder.layers.3.cross_attn.v_proj`), for LoRA merging. The caller must
    /// [`Dit::clear_cache`] after changing a weight the cross K/V depend on.
    pub fn linear_mut(&mut self, name: &str) -> Option<&mut Linear> {
        self.weights.linear_mut(name)
    }

    /// Run the decoder layers' and the condition embedder's matrix products in `dtype` (`BF16`
    /// or `F16` with f32 accumulation, from weight copies; `None`/`F32`: f32). Meant for GPUs;
    /// on the CPU the fused path reads the packed weights and ignores this
    /// ([`Dit::set_cpu_precision`]). Clears the cross K/V
    /// cache (the keys/values change with the precision).
    pub fn set_matmul_dtype(&mut self, dtype: Option<DType>) -> Result<()> {
        self.weights.set_matmul_dtype(dtype)?;
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

    /// Keep the cross K/V of at most `conditionings` conditionings (64 by default), evicting
    /// the least recently used.
    pub fn set_cache_capacity(&mut self, conditionings: usize) {
        self.cache.set_capacity(conditionings);
    }

    /// Cross K/V of `states` `[1, L, H_enc]` with optional `[1, L]` mask, without caching.
    /// Off the fused path the mask is never read (pass `None` when it is known to hold no
    /// padding).
    pub fn cross_kv(&self, states: &Tensor, mask: Option<&Tensor>) -> Result<CrossKv> {
        self.weights.cross_kv(states, mask, self.fused())
    }

    /// Cached cross K/V of the conditioning `states`/`mask` (computed on the first use of that
    /// content). `id` is the caller's identity of the value (the engine's `Conditioning::id`):
    /// the content is hashed once per id, and two ids of equal content share one entry. At most
    /// [`Dit::set_cache_capacity`] conditionings are kept, the least recently used evicted.
    pub fn cached_cross_kv(
        &mut self,
        id: u64,
        states: &Tensor,
        mask: Option<&Tensor>,
    ) -> Result<Arc<CrossKv>> {
        let fused = self.fused();
        let weights = &self.weights;
        self.cache.get_or_compute(id, states, mask, fused, || {
            weights.cross_kv(states, mask, fused)
        })
    }

    /// One row: `x` `[1, T, C]`, context `[1, T, Cc]`, timestep `t`, `t − r`, cross K/V →
    /// velocity `[1, T, C]`. On the CPU this runs the fused kernels of [`cpu`] in a fresh
    /// workspace; [`Dit::forward_row_with`] reuses one.
    pub fn forward_row(
        &self,
        x: &Tensor,
        context: &Tensor,
        t: f32,
        t_minus_r: f32,
        kv: &CrossKv,
    ) -> Result<Tensor> {
        self.forward_row_with(&mut Workspace::default(), x, context, t, t_minus_r, kv)
    }

    /// [`Dit::forward_row`] with the CPU buffers of `ws` (kept by the caller between steps;
    /// unused on other devices, where the composed candle ops run).
    pub fn forward_row_with(
        &self,
        ws: &mut Workspace,
        x: &Tensor,
        context: &Tensor,
        t: f32,
        t_minus_r: f32,
        kv: &CrossKv,
    ) -> Result<Tensor> {
        if self.fused() {
            return cpu::forward_row(&self.weights, ws, x, context, t, t_minus_r, kv);
        }
        composed::forward_row(&self.weights, x, context, t, t_minus_r, kv)
    }

    /// A batch of rows of equal length → velocity `[B, T, C]`, with the CPU buffers of `ws`. On
    /// the CPU one fused forward runs every projection once over all rows ([`cpu`]); row `i` of
    /// the result is bit-identical to [`Dit::forward_row`] of row `i` alone. Elsewhere the batch
    /// runs through the composed ops as one ([`Dit::forward_batch_composed`], fresh tables).
    pub fn forward_batch_with(&self, ws: &mut Workspace, rows: &[Row<'_>]) -> Result<Tensor> {
        if self.fused() {
            return cpu::forward_batch(&self.weights, ws, rows);
        }
        composed::forward_batch(&self.weights, &mut composed::Tables::default(), rows)
    }

    /// A batch of rows of one length through the composed ops in one go (the GPU path; see
    /// [`composed`]), reusing `tables` between calls → velocity `[B, T, C]`.
    pub fn forward_batch_composed(
        &self,
        tables: &mut composed::Tables,
        rows: &[Row<'_>],
    ) -> Result<Tensor> {
        composed::forward_batch(&self.weights, tables, rows)
    }

    /// Keep the CPU kernels' weights in `precision` (f32 at load; bf16 halves their memory and
    /// uses `vdpbf16ps` where the CPU has avx512_bf16). Repacks every linear layer from its stored
    /// values and clears the cross K/V cache. An error off the CPU (see
    /// [`Dit::set_matmul_dtype`] for GPUs).
    pub fn set_cpu_precision(&mut self, precision: crate::gemm::Precision) -> Result<()> {
        if !self.device().is_cpu() {
            return Err(AceStepError::input(
                "the CPU precision is for the CPU kernels; this DiT is on another device",
            ));
        }
        self.weights.pack(precision)?;
        self.clear_cache();
        Ok(())
    }

    /// The precision of the CPU kernels' weights (`None` off the CPU).
    pub fn cpu_precision(&self) -> Option<crate::gemm::Precision> {
        self.weights.cpu_precision()
    }

    /// Bytes held by the linear layers' weights (the packed panels on the CPU).
    pub fn linear_weight_bytes(&mut self) -> usize {
        self.weights.linear_weight_bytes()
    }

    /// [`Dit::forward_row`] as composed candle ops on any device (the reference the CPU kernels
    /// are tested against).
    pub fn forward_row_candle(
        &self,
        x: &Tensor,
        context: &Tensor,
        t: f32,
        t_minus_r: f32,
        kv: &CrossKv,
    ) -> Result<Tensor> {
        composed::forward_row(&self.weights, x, context, t, t_minus_r, kv)
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
        let mut ws = Workspace::default();
        let mut rows = Vec::with_capacity(b);
        for i in 0..b {
            let kv = self.cross_kv(&states[i], None)?;
            rows.push(self.forward_row_with(
                &mut ws,
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
