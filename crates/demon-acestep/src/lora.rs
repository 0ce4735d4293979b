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

/// Longest trigger word or phrase, and most of them, an adapter may carry (they go into
/// every prompt while it is enabled).
const MAX_TRIGGER_CHARS: usize = 64;
const MAX_TRIGGERS: usize = 16;

/// The sidecar of an adapter at `path`: `NAME.json` beside a file `NAME.safetensors`, and for a
/// PEFT folder `DIR` either `DIR/metadata.json` or `DIR.json` beside it.
pub fn sidecar_path(path: &Path) -> Option<PathBuf> {
    let candidates = if path.is_dir() {
        vec![path.join("metadata.json"), path.with_extension("json")]
    } else {
        vec![path.with_extension("json")]
    };
    candidates.into_iter().find(|p| p.is_file())
}

/// What an adapter says about itself: the keys `trigger_words` (a list, or one string of
/// comma-separated words), `trigger_word` / `primary_trigger` (one phrase, put first),
/// `recommended_strength`, `group` (or `genre`), `base_model` (or `base_model_scale`) and
/// `description`, read from the safetensors header metadata (`header`; strings, and
/// `modelspec.trigger_phrase` / `modelspec.description` of the ModelSpec convention too) and
/// then from the sidecar JSON (`sidecar`), which wins. Anything else is ignored; a present key
/// of the wrong type or size is an error naming it.
pub fn read_metadata(
    header: &BTreeMap<String, String>,
    sidecar: Option<&Value>,
) -> std::result::Result<AdapterMetadata, String> {
    fn words(v: &Value, key: &str) -> std::result::Result<Vec<String>, String> {
        let list: Vec<String> = match v {
            Value::String(s) => s.split(',').map(str::to_string).collect(),
            Value::Array(a) => a
                .iter()
                .map(|x| {
                    x.as_str()
                        .map(str::to_string)
                        .ok_or_else(|| format!("`{key}` must hold strings, not {x}"))
                })
                .collect::<std::result::Result<_, _>>()?,
            other => return Err(format!("`{key}` must be a string or a list, not {other}")),
        };
        Ok(list
            .into_iter()
            .map(|w| w.trim().to_string())
            .filter(|w| !w.is_empty())
            .collect())
    }
    fn text(v: &Value, key: &str) -> std::result::Result<String, String> {
        match v {
            Value::String(s) => Ok(s.trim().to_string()),
            Value::Number(n) => Ok(n.to_string()),
            other => Err(format!("`{key}` must be a string, not {other}")),
        }
    }
    let mut m = AdapterMetadata::default();
    let mut primary: Option<String> = None;
    let header_json: Vec<(String, Value)> = header
        .iter()
        .map(|(k, v)| {
            let key = k.strip_prefix("modelspec.").unwrap_or(k);
            let key = match key {
                "trigger_phrase" => "trigger_words",
                other => other,
            };
            // Header values are strings; a list may be written as JSON in one.
            let value = if key == "trigger_words" && v.trim_start().starts_with('[') {
                serde_json::from_str(v).unwrap_or_else(|_| Value::String(v.clone()))
            } else {
                Value::String(v.clone())
            };
            (key.to_string(), value)
        })
        .collect();
    let side: Vec<(String, Value)> = match sidecar {
        None => Vec::new(),
        Some(Value::Object(o)) => o.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
        Some(other) => return Err(format!("the sidecar must be a JSON object, not {other}")),
    };
    for (key, v) in header_json.iter().chain(side.iter()) {
        match key.as_str() {
            "trigger_words" => m.trigger_words = words(v, key)?,
            "trigger_word" | "primary_trigger" => primary = Some(text(v, key)?),
            "recommended_strength" => {
                let s = match v {
                    Value::Number(n) => n.as_f64(),
                    Value::String(s) => s.trim().parse::<f64>().ok(),
                    _ => None,
                }
                .filter(|s| s.is_finite() && (0.0..=2.0).contains(s))
                .ok_or_else(|| format!("`recommended_strength` {v} is not a number in 0..=2"))?;
                m.recommended_strength = Some(s as f32);
            }
            "group" | "genre" => m.group = Some(text(v, key)?).filter(|g| !g.is_empty()),
            "base_model" | "base_model_scale" => {
                m.base_model = Some(text(v, key)?).filter(|b| !b.is_empty())
            }
            "description" => m.description = Some(text(v, key)?).filter(|d| !d.is_empty()),
            _ => {}
        }
    }
    if let Some(p) = primary.filter(|p| !p.is_empty()) {
        m.trigger_words.retain(|w| w != &p);
        m.trigger_words.insert(0, p);
    }
    if m.trigger_words.len() > MAX_TRIGGERS {
        return Err(format!(
            "{} trigger words (at most {MAX_TRIGGERS})",
            m.trigger_words.len()
        ));
    }
    if let Some(w) = m
        .trigger_words
        .iter()
        .find(|w| w.chars().count() > MAX_TRIGGER_CHARS)
    {
        return Err(format!(
            "trigger word `{w}` is longer than {MAX_TRIGGER_CHARS} characters"
        ));
    }
    Ok(m)
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

impl LoraAdapter {
    /// Load a PEFT folder or a single `.safetensors` file.
    pub fn load(path: &Path, device: &Device) -> Result<Self> {
        let lora_err = |d: String| AceStepError::Lora {
            path: path.to_path_buf(),
            detail: d,
        };
        let (file, config) = if path.is_dir() {
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
        };
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
            let scale = if rslora { al / rank.sqrt() } else { al / rank };
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
    pub strength: f32,
    pub enabled: bool,
}

/// What a front end shows for an adapter.
#[derive(Clone, Debug, PartialEq)]
pub struct LoraInfo {
    pub id: usize,
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

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn header(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn metadata_comes_from_the_header_and_the_sidecar_wins() {
        let h = header(&[
            ("modelspec.trigger_phrase", "lofi, tape hiss"),
            ("recommended_strength", "0.7"),
            ("group", "chill"),
            ("ss_network_dim", "16"),
        ]);
        let m = read_metadata(&h, None).unwrap();
        assert_eq!(m.trigger_words, vec!["lofi", "tape hiss"]);
        assert_eq!(m.recommended_strength, Some(0.7));
        assert_eq!(m.group.as_deref(), Some("chill"));
        let side = json!({
            "trigger_words": ["dusty drums", "lofi"],
            "primary_trigger": "lofi",
            "genre": "hip hop",
            "base_model_scale": "2B",
        });
        let m = read_metadata(&h, Some(&side)).unwrap();
        assert_eq!(
            m.trigger_words,
            vec!["lofi", "dusty drums"],
            "primary first, once"
        );
        assert_eq!(m.group.as_deref(), Some("hip hop"));
        assert_eq!(m.base_model.as_deref(), Some("2B"));
        assert_eq!(m.recommended_strength, Some(0.7), "kept from the header");
        // A JSON list written into a header string reads as a list.
        let m = read_metadata(&header(&[("trigger_words", r#"["a, b", "c"]"#)]), None).unwrap();
        assert_eq!(m.trigger_words, vec!["a, b", "c"]);
        assert!(read_metadata(&BTreeMap::new(), None).unwrap().is_empty());
    }

    #[test]
    fn bad_metadata_is_named() {
        let none = BTreeMap::new();
        for (side, want) in [
            (
                json!({"recommended_strength": "loud"}),
                "recommended_strength",
            ),
            (json!({"recommended_strength": 9.0}), "recommended_strength"),
            (json!({"trigger_words": [1, 2]}), "trigger_words"),
            (json!({"trigger_words": {"a": 1}}), "trigger_words"),
            (json!(["not", "an", "object"]), "object"),
            (json!({"trigger_words": vec!["w"; 17]}), "at most 16"),
            (json!({"trigger_words": ["x".repeat(65)]}), "longer than 64"),
        ] {
            let e = read_metadata(&none, Some(&side)).unwrap_err();
            assert!(e.contains(want), "{side}: {e}");
        }
    }
}
