//! The DiT as demon-engine's `Denoiser` ([`AceStepDenoiser`]), with LoRA management: adapters
//! are merged into the DiT's linear weights from in-memory copies of the base weights, so a
//! strength change or a toggle never re-reads the checkpoint, and exposed to the engine through
//! its `Adapters` trait.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{Device, Tensor};
use demon_engine::{DenoiseBatch, Denoiser, EngineError};

use crate::config::DitConfig;
use crate::dit::composed::Tables;
use crate::dit::{Dit, Row, Workspace};
use crate::error::{AceStepError, Result};
use crate::lora::{LoraAdapter, LoraInfo, LoraScaling, LoraSlot, merged_weight};
use crate::nn::{RandomSource, TensorSource};
use crate::weights::ModelFiles;

/// The DiT as a `demon_engine::Denoiser`, with LoRA management.
pub struct AceStepDenoiser {
    dit: Dit,
    /// Buffers of the CPU row forward, reused from step to step.
    workspace: Workspace,
    /// What the composed (GPU) forward keeps between steps.
    tables: Tables,
    device: Device,
    loras: Vec<Option<LoraSlot>>,
    /// Unmerged weights of every module any adapter has touched.
    base: HashMap<String, Tensor>,
    /// Merges done by `set_lora`.
    merges: u64,
    /// How adapter factors loaded from now on are scaled.
    lora_scaling: LoraScaling,
}

impl AceStepDenoiser {
    /// Build from any parameter source.
    pub fn from_source(src: &dyn TensorSource, cfg: &DitConfig) -> Result<Self> {
        crate::threads::apply();
        let dit = Dit::load(src, cfg)?;
        Ok(Self {
            device: src.device().clone(),
            dit,
            workspace: Workspace::default(),
            tables: Tables::default(),
            loras: Vec::new(),
            base: HashMap::new(),
            merges: 0,
            lora_scaling: LoraScaling::default(),
        })
    }

    /// The DiT of the weights folder `dir` alone, reading only its config and weights: a whole
    /// model folder of either layout, an original DiT folder (`acestep-v15-*/`), or a diffusers
    /// `transformer/` folder by itself (no condition-encoder config needed).
    pub fn load(dir: &Path, device: &Device) -> Result<Self> {
        let files = ModelFiles::discover(dir, None)?;
        files.require("dit")?;
        Self::from_source(&files.open_dit(device)?, &files.read_dit_config()?)
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

    /// Keep the cross-attention K/V of at most `conditionings` conditionings (64 by default),
    /// the least recently used evicted first.
    pub fn set_cache_capacity(&mut self, conditionings: usize) {
        self.dit.set_cache_capacity(conditionings);
    }

    pub fn config(&self) -> &DitConfig {
        self.dit.config()
    }

    /// The CPU kernels' weight precision, f32 (the default) or bf16 ([`Dit::set_cpu_precision`]).
    /// Adapters merge into the weights at this precision.
    pub fn set_cpu_precision(&mut self, precision: crate::gemm::Precision) -> Result<()> {
        self.dit.set_cpu_precision(precision)
    }

    /// Run the composed path, the one a GPU runs, on the CPU too ([`Dit::set_composed`]).
    pub fn set_composed(&mut self, on: bool) {
        self.dit.set_composed(on);
    }

    /// Bytes held by the DiT's linear-layer weights (the packed panels on the CPU).
    pub fn linear_weight_bytes(&mut self) -> usize {
        self.dit.linear_weight_bytes()
    }

    /// Load an adapter (PEFT folder or single file) at `strength` and merge it. Returns its id.
    pub fn add_lora(&mut self, path: &Path, strength: f32) -> Result<usize> {
        check_strength(path, strength)?;
        let adapter = LoraAdapter::load_scaled(path, &self.device, self.lora_scaling)?;
        self.add_lora_adapter(adapter, strength)
    }

    /// Add an adapter already in memory (loaded from a file, or made by a benchmark) at
    /// `strength`, checked against the DiT's modules, and merge it. Returns its id.
    pub fn add_lora_adapter(&mut self, adapter: LoraAdapter, strength: f32) -> Result<usize> {
        self.check_lora(&adapter)?;
        check_strength(&adapter.path, strength)?;
        self.loras.push(Some(LoraSlot {
            adapter,
            name: None,
            strength,
            enabled: true,
        }));
        self.apply_loras()?;
        Ok(self.loras.len() - 1)
    }

    /// How adapter factors loaded from now on (`add_lora`, [`files`](demon_engine::Adapters::files))
    /// are scaled: PEFT's α/r (the default) or DEMON's unscaled factors.
    pub fn set_lora_scaling(&mut self, scaling: LoraScaling) {
        self.lora_scaling = scaling;
    }

    /// Whether every module of `adapter` exists in this DiT with the factors' shapes.
    fn check_lora(&mut self, adapter: &LoraAdapter) -> Result<()> {
        let path = adapter.path.as_path();
        for (name, m) in &adapter.modules {
            let Some(lin) = self.dit.linear_mut(name) else {
                return Err(AceStepError::Lora {
                    path: path.to_path_buf(),
                    detail: format!("module `{name}` does not exist in this DiT"),
                });
            };
            let (out, inp) = lin.dims();
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
        Ok(())
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

    /// Set an adapter's strength and whether it is enabled with one merge (none when neither
    /// changes): a fader move costs one pass over the touched modules, not one per field.
    pub fn set_lora(&mut self, id: usize, strength: f32, enabled: bool) -> Result<()> {
        let path = self.slot(id)?.adapter.path.clone();
        check_strength(&path, strength)?;
        let slot = self.slot(id)?;
        if slot.strength == strength && slot.enabled == enabled {
            return Ok(());
        }
        (slot.strength, slot.enabled) = (strength, enabled);
        self.merges += 1;
        self.apply_loras()
    }

    /// How many times [`set_lora`](Self::set_lora) re-merged the weights (for tests and
    /// benchmarks of the merge rate).
    pub fn lora_merges(&self) -> u64 {
        self.merges
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
                    name: s.name.clone(),
                    path: s.adapter.path.clone(),
                    modules: s.adapter.modules.len(),
                    strength: s.strength,
                    enabled: s.enabled,
                    metadata: s.adapter.metadata.clone(),
                })
            })
            .collect()
    }

    /// `(out, in)` of the linear layer of module `name` (original naming), if it exists.
    pub fn linear_dims(&mut self, name: &str) -> Option<(usize, usize)> {
        self.dit.linear_mut(name).map(|l| l.dims())
    }

    /// Current (merged) weight of a module, for tests and inspection.
    pub fn module_weight(&mut self, name: &str) -> Option<Tensor> {
        self.dit
            .linear_mut(name)
            .map(|l| l.weight())
            .transpose()
            .ok()
            .flatten()
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
                        .map(|l| l.weight())
                        .transpose()?
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
        self.dit.config().audio_acoustic_hidden_dim
    }

    fn context_channels(&self) -> usize {
        self.dit.config().context_channels()
    }

    fn device(&self) -> &Device {
        &self.device
    }

    /// The rows run as one batch through the DiT: on the CPU the fused kernels (one product per
    /// projection; each row's result is bit-identical to that row alone), elsewhere the composed
    /// ops (`dit/composed.rs`; see `dit/mod.rs` on row independence). Each row's cross K/V come
    /// from the DiT's cache (by content on the CPU, where `Conditioning::id` spares re-hashing
    /// it; by `Conditioning::id` elsewhere). Turbo inference feeds `r = t`, so the second time
    /// embedder sees 0. Nothing is read back from a GPU.
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
        let mut kvs = Vec::with_capacity(b);
        let mut xs = Vec::with_capacity(b);
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
            let mask = (!cond.all_valid()).then_some(&cond.mask);
            kvs.push(self.dit.cached_cross_kv(cond.id, &cond.states, mask)?);
            xs.push(batch.x.narrow(0, i, 1)?);
        }
        let rows: Vec<Row<'_>> = (0..b)
            .map(|i| Row {
                x: &xs[i],
                context: batch.contexts[i],
                t: batch.t[i],
                t_minus_r: 0.0,
                kv: &kvs[i],
            })
            .collect();
        if self.dit.fused() {
            return Ok(self.dit.forward_batch_with(&mut self.workspace, &rows)?);
        }
        Ok(self.dit.forward_batch_composed(&mut self.tables, &rows)?)
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
        if let Some(name) = &info.name {
            return name.clone();
        }
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
            .any(|o| o.name.is_none() && o.path.file_stem() == info.path.file_stem());
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
                metadata: l.metadata.clone(),
            })
            .collect()
    }

    fn set_strength(&mut self, id: &str, strength: f32) -> demon_engine::Result<()> {
        let info = self
            .loras()
            .into_iter()
            .find(|l| self.adapter_name(l) == id)
            .ok_or_else(|| EngineError::param("lora", format!("no adapter `{id}`")))?;
        // Disabled keeps the last strength, so enabling again without a value is that one.
        if strength <= 0.0 {
            self.set_lora(info.id, info.strength, false)?;
        } else {
            self.set_lora(info.id, strength, true)?;
        }
        Ok(())
    }

    fn files(&self) -> Option<std::sync::Arc<dyn demon_engine::AdapterFiles>> {
        Some(std::sync::Arc::new(crate::lora::AceStepAdapterFiles {
            device: self.device.clone(),
            scaling: self.lora_scaling,
        }))
    }

    /// Checked against the DiT's modules, then kept disabled: nothing is merged until a
    /// strength enables it (a disabled adapter leaves every weight as it was).
    fn install(
        &mut self,
        id: &str,
        metadata: demon_engine::AdapterMetadata,
        adapter: demon_engine::LoadedAdapter,
    ) -> demon_engine::Result<()> {
        if self.loras().iter().any(|l| self.adapter_name(l) == id) {
            return Err(EngineError::param(
                "lora",
                format!("an adapter `{id}` is already loaded"),
            ));
        }
        let mut adapter: LoraAdapter = adapter.into_payload()?;
        self.check_lora(&adapter)?;
        adapter.metadata = metadata;
        self.loras.push(Some(LoraSlot {
            adapter,
            name: Some(id.to_string()),
            strength: 1.0,
            enabled: false,
        }));
        Ok(())
    }
}
