//! LoRA adapters for the DiT (acestep.md §4): PEFT folders (`adapter_config.json` +
//! `adapter_model.safetensors`, keys `base_model.model.layers.N.….lora_A/B(.default).weight`, with
//! original or diffusers module names) and the common single-file variants (ComfyUI
//! `diffusion_model.` prefix, `lora_down`/`lora_up` with a per-module `.alpha`).
//!
//! Merging is `W = W₀ + Σ strength·(alpha/r)·B·A` over the enabled adapters. The base weights
//! `W₀` of every touched module are kept in memory, so changing a strength, toggling or swapping
//! an adapter recomputes the merge from memory and never reads the checkpoint again.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use demon_engine::AdapterMetadata;
use serde_json::Value;

use crate::config::read_json;
use crate::error::{AceStepError, Result};
use crate::weights::{SafetensorsFile, diffusers_to_original};

pub use demon_engine::adapter::{read_metadata, sidecar_path};

/// One low-rank update: `delta = scale · B·A`, `A` `[r, in]`, `B` `[out, r]`.
#[derive(Clone, Debug)]
pub struct LoraModule {
    pub a: Tensor,
    pub b: Tensor,
    /// `alpha / r` (or `alpha / √r` for rsLoRA).
    pub scale: f64,
}

/// A loaded adapter, keyed by the original module name (`decoder.layers.0.self_attn.q_proj`).
#[derive(Clone, Debug)]
pub struct LoraAdapter {
    pub path: PathBuf,
    pub modules: BTreeMap<String, LoraModule>,
    /// What its files say about it ([`read_metadata`]).
    pub metadata: AdapterMetadata,
}

/// Where a key of an adapter file points and what it holds.
enum Part {
    A,
    B,
    Alpha,
}

/// Split an adapter key into (original module name, part); `None` for keys that are not LoRA
/// factors (e.g. DoRA magnitudes are rejected separately).
fn parse_key(key: &str) -> Option<(String, Part)> {
    let (module, part) = [
        (".lora_A.default.weight", Part::A),
        (".lora_B.default.weight", Part::B),
        (".lora_A.weight", Part::A),
        (".lora_B.weight", Part::B),
        (".lora_down.weight", Part::A),
        (".lora_up.weight", Part::B),
        (".alpha", Part::Alpha),
    ]
    .into_iter()
    .find_map(|(suffix, part)| key.strip_suffix(suffix).map(|m| (m, part)))?;
    let mut m = module;
    for prefix in [
        "base_model.model.",
        "diffusion_model.",
        "model.",
        "transformer.",
    ] {
        m = m.strip_prefix(prefix).unwrap_or(m);
    }
    let m = m.strip_prefix("decoder.").unwrap_or(m);
    Some((diffusers_to_original("decoder.", m), part))
}

/// How an adapter's factors are scaled before its strength multiplies them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum LoraScaling {
    /// PEFT's: `delta = strength · (α / r) · B·A` (`α / √r` for rsLoRA), α from the tensor,
    /// then `adapter_config.json`, else `r` (scale 1). A strength of 1 is the adapter as
    /// trained.
    #[default]
    AlphaOverRank,
    /// DEMON's: `delta = strength · B·A`, whatever α says, so strengths written for the
    /// reference carry over.
    Unscaled,
}

/// The safetensors file of the adapter at `path` (the file itself, or the weights inside a
/// PEFT folder) and the folder's `adapter_config.json`, if any.
pub fn adapter_weights(path: &Path) -> Result<(PathBuf, Option<Value>)> {
    Ok(if path.is_dir() {
        let cfg_path = path.join("adapter_config.json");
        let config = if cfg_path.is_file() {
            Some(read_json(&cfg_path)?)
        } else {
            None
        };
        let f = [
            "adapter_model.safetensors",
            "pytorch_lora_weights.safetensors",
        ]
        .iter()
        .map(|n| path.join(n))
        .find(|p| p.is_file())
        .ok_or_else(|| AceStepError::MissingFile {
            path: path.join("adapter_model.safetensors"),
            what: "LoRA adapter weights".into(),
        })?;
        (f, config)
    } else {
        (path.to_path_buf(), None)
    })
}

/// How ACE-Step reads adapter files for a library (`demon_engine::AdapterFiles`): the metadata
/// from the header and sidecar alone, the factors onto `device`, scaled by `scaling`.
pub struct AceStepAdapterFiles {
    pub device: Device,
    pub scaling: LoraScaling,
}

impl demon_engine::AdapterFiles for AceStepAdapterFiles {
    fn describe(&self, path: &Path) -> demon_engine::Result<AdapterMetadata> {
        let (weights, _) = adapter_weights(path).map_err(demon_engine::EngineError::from)?;
        demon_engine::describe_file(path, &weights)
    }

    fn load(&self, path: &Path) -> demon_engine::Result<demon_engine::LoadedAdapter> {
        let adapter = LoraAdapter::load_scaled(path, &self.device, self.scaling)?;
        Ok(demon_engine::LoadedAdapter::new(
            path.to_path_buf(),
            adapter,
        ))
    }
}

impl LoraAdapter {
    /// Load a PEFT folder or a single `.safetensors` file, scaled by α/r.
    pub fn load(path: &Path, device: &Device) -> Result<Self> {
        Self::load_scaled(path, device, LoraScaling::AlphaOverRank)
    }

    /// Load a PEFT folder or a single `.safetensors` file, scaled as `scaling` says.
    pub fn load_scaled(path: &Path, device: &Device, scaling: LoraScaling) -> Result<Self> {
        let lora_err = |d: String| AceStepError::Lora {
            path: path.to_path_buf(),
            detail: d,
        };
        let (file, config) = adapter_weights(path)?;
        let st = SafetensorsFile::open(&file)?;
        let cfg_alpha = config
            .as_ref()
            .and_then(|c| c.get("lora_alpha"))
            .and_then(Value::as_f64);
        let rslora = config
            .as_ref()
            .and_then(|c| c.get("use_rslora"))
            .and_then(Value::as_bool)
            .unwrap_or(false);
        if config
            .as_ref()
            .and_then(|c| c.get("use_dora"))
            .and_then(Value::as_bool)
            .unwrap_or(false)
        {
            return Err(lora_err("DoRA adapters are not supported".into()));
        }

        let mut a: HashMap<String, Tensor> = HashMap::new();
        let mut b: HashMap<String, Tensor> = HashMap::new();
        let mut alpha: HashMap<String, f64> = HashMap::new();
        let names: Vec<String> = st.names().map(str::to_owned).collect();
        for key in names {
            let Some((module, part)) = parse_key(&key) else {
                if key.contains("lokr_") || key.contains("dora_scale") || key.contains("hada_") {
                    return Err(lora_err(format!(
                        "tensor `{key}`: LoKr/LoHa/DoRA adapters are not supported"
                    )));
                }
                continue;
            };
            let t = st.load(&key, device)?;
            match part {
                Part::A => {
                    a.insert(module, t);
                }
                Part::B => {
                    b.insert(module, t);
                }
                Part::Alpha => {
                    alpha.insert(
                        module,
                        t.flatten_all()?
                            .to_vec1::<f32>()?
                            .first()
                            .copied()
                            .unwrap_or(0.0) as f64,
                    );
                }
            }
        }
        let mut modules = BTreeMap::new();
        for (name, a_t) in a {
            let b_t = b.remove(&name).ok_or_else(|| {
                lora_err(format!("module `{name}` has lora_A/down but no lora_B/up"))
            })?;
            let (r, _) = a_t
                .dims2()
                .map_err(|_| lora_err(format!("module `{name}`: lora_A is not a matrix")))?;
            let (_, rb) = b_t
                .dims2()
                .map_err(|_| lora_err(format!("module `{name}`: lora_B is not a matrix")))?;
            if r != rb || r == 0 {
                return Err(lora_err(format!(
                    "module `{name}`: rank of lora_A ({r}) and lora_B ({rb}) differ"
                )));
            }
            // The factors' own rank, which is the config's `r` (or its `rank_pattern` entry).
            let rank = r as f64;
            let al = alpha.get(&name).copied().or(cfg_alpha).unwrap_or(rank);
            let scale = match scaling {
                LoraScaling::Unscaled => 1.0,
                LoraScaling::AlphaOverRank if rslora => al / rank.sqrt(),
                LoraScaling::AlphaOverRank => al / rank,
            };
            modules.insert(
                name,
                LoraModule {
                    a: a_t,
                    b: b_t,
                    scale,
                },
            );
        }
        if let Some(orphan) = b.keys().next() {
            return Err(lora_err(format!(
                "module `{orphan}` has lora_B/up but no lora_A/down"
            )));
        }
        if modules.is_empty() {
            return Err(lora_err(format!(
                "no LoRA factors found in {}",
                file.display()
            )));
        }
        let sidecar = match sidecar_path(path) {
            Some(p) => Some(read_json(&p)?),
            None => None,
        };
        let metadata = read_metadata(st.metadata(), sidecar.as_ref())
            .map_err(|d| lora_err(format!("metadata: {d}")))?;
        Ok(Self {
            path: path.to_path_buf(),
            modules,
            metadata,
        })
    }
}

/// One adapter slot of the denoiser.
#[derive(Clone, Debug)]
pub struct LoraSlot {
    pub adapter: LoraAdapter,
    /// The id a library gave it (else it is addressed by its file stem).
    pub name: Option<String>,
    pub strength: f32,
    pub enabled: bool,
}

/// What a front end shows for an adapter.
#[derive(Clone, Debug, PartialEq)]
pub struct LoraInfo {
    pub id: usize,
    /// The id a library gave it, if any.
    pub name: Option<String>,
    pub path: PathBuf,
    pub modules: usize,
    pub strength: f32,
    pub enabled: bool,
    pub metadata: AdapterMetadata,
}

/// `W₀ + Σ strength·scale·B·A` for one module.
pub fn merged_weight(base: &Tensor, parts: &[(&LoraModule, f32)]) -> Result<Tensor> {
    let mut w = base.clone();
    for (m, strength) in parts {
        if *strength == 0.0 {
            continue;
        }
        let delta = m.b.matmul(&m.a)?;
        w = (w + (delta * (m.scale * *strength as f64))?)?;
    }
    Ok(w)
}
