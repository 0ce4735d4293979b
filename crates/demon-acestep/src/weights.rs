//! Weight files: memory-mapped safetensors (single files and sharded `*.index.json`), the two
//! checkpoint layouts (acestep.md §3: the original `acestep-v15-*/` + `vae/` +
//! `Qwen3-Embedding-0.6B/` folders, and the diffusers `model_index.json` pipeline folder), the
//! diffusers → original tensor-name mapping, and the `inspect_weights` report.
//!
//! Inside the crate every tensor is addressed by its *original* ACE-Step name (`decoder.layers.3.
//! self_attn.q_proj.weight`, …); the diffusers names (`layers.3.self_attn.to_q.weight` in
//! `transformer/`) are translated on load, so both layouts feed the same model code and give
//! byte-identical results. Tensors are converted to f32 on load (the 2B checkpoint is BF16).

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::fs::File;
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use memmap2::Mmap;
use safetensors::{Dtype, SafeTensors};
use serde_json::Value;

use crate::config::read_json;
use crate::error::{AceStepError, Result};

/// One tensor's place inside a mapped file.
#[derive(Clone, Debug)]
struct Entry {
    dtype: Dtype,
    shape: Vec<usize>,
    begin: usize,
    end: usize,
}

/// A memory-mapped safetensors file with its header parsed and checked against the file size.
pub struct SafetensorsFile {
    path: PathBuf,
    mmap: Mmap,
    data_start: usize,
    entries: BTreeMap<String, Entry>,
}

impl SafetensorsFile {
    /// Map and validate `path`: a header that is not JSON, or data that ends before the offsets
    /// the header promises, is an error naming the file.
    pub fn open(path: &Path) -> Result<Self> {
        if !path.is_file() {
            return Err(AceStepError::MissingFile {
                path: path.to_path_buf(),
                what: "safetensors weights".into(),
            });
        }
        let file = File::open(path).map_err(|e| AceStepError::io(path, e))?;
        let len = file
            .metadata()
            .map_err(|e| AceStepError::io(path, e))?
            .len() as usize;
        if len < 8 {
            return Err(AceStepError::Truncated {
                path: path.to_path_buf(),
                detail: format!("{len} bytes, shorter than the 8-byte safetensors header length"),
            });
        }
        // SAFETY: the file is opened read-only and never written by this process; a concurrent
        // writer could change the bytes under us, which is the usual caveat of every mmap loader
        // (candle, safetensors). The data is copied into owned tensors on load.
        let mmap = unsafe { Mmap::map(&file) }.map_err(|e| AceStepError::io(path, e))?;
        let header_len = u64::from_le_bytes(mmap[..8].try_into().unwrap_or([0; 8])) as usize;
        if header_len > len - 8 {
            return Err(AceStepError::Truncated {
                path: path.to_path_buf(),
                detail: format!("header claims {header_len} bytes but the file has {len}"),
            });
        }
        // Check the data the header promises against the file size first, so a cut-off download
        // is reported as truncated rather than as a malformed header.
        let header: Value = serde_json::from_slice(&mmap[8..8 + header_len]).map_err(|e| {
            AceStepError::invalid(path, format!("safetensors header is not JSON: {e}"))
        })?;
        let promised = header
            .as_object()
            .map(|o| {
                o.values()
                    .filter_map(|v| v.get("data_offsets").and_then(Value::as_array))
                    .filter_map(|a| a.get(1).and_then(Value::as_u64))
                    .max()
                    .unwrap_or(0) as usize
            })
            .unwrap_or(0);
        if promised > len - 8 - header_len {
            return Err(AceStepError::Truncated {
                path: path.to_path_buf(),
                detail: format!(
                    "tensor data needs {promised} bytes after the header, the file has {}",
                    len - 8 - header_len
                ),
            });
        }
        let (n, meta) = SafeTensors::read_metadata(&mmap)
            .map_err(|e| AceStepError::invalid(path, format!("bad safetensors header: {e}")))?;
        let data_start = 8 + n;
        let data_len = len - data_start;
        let mut entries = BTreeMap::new();
        let mut needed = 0usize;
        for (name, info) in meta.tensors() {
            let (begin, end) = info.data_offsets;
            needed = needed.max(end);
            entries.insert(
                name.clone(),
                Entry {
                    dtype: info.dtype,
                    shape: info.shape.clone(),
                    begin,
                    end,
                },
            );
        }
        if needed > data_len {
            return Err(AceStepError::Truncated {
                path: path.to_path_buf(),
                detail: format!(
                    "tensor data needs {needed} bytes after the header, the file has {data_len}"
                ),
            });
        }
        Ok(Self {
            path: path.to_path_buf(),
            mmap,
            data_start,
            entries,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.entries.keys().map(|s| s.as_str())
    }

    pub fn shape(&self, name: &str) -> Option<&[usize]> {
        self.entries.get(name).map(|e| e.shape.as_slice())
    }

    fn dtype(&self, name: &str) -> Option<Dtype> {
        self.entries.get(name).map(|e| e.dtype)
    }

    /// Load tensor `name` as f32.
    pub fn load(&self, name: &str, device: &Device) -> Result<Tensor> {
        let e = self
            .entries
            .get(name)
            .ok_or_else(|| AceStepError::MissingTensor {
                path: self.path.clone(),
                tensor: name.into(),
            })?;
        let bytes = &self.mmap[self.data_start + e.begin..self.data_start + e.end];
        let count: usize = e.shape.iter().product();
        let bad = |d: String| AceStepError::invalid(&self.path, format!("tensor `{name}`: {d}"));
        let values: Vec<f32> = match e.dtype {
            Dtype::F32 => {
                check_len(bytes.len(), count, 4).map_err(bad)?;
                bytes
                    .chunks_exact(4)
                    .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                    .collect()
            }
            Dtype::BF16 => {
                check_len(bytes.len(), count, 2).map_err(bad)?;
                bytes
                    .chunks_exact(2)
                    .map(|c| half::bf16::from_bits(u16::from_le_bytes([c[0], c[1]])).to_f32())
                    .collect()
            }
            Dtype::F16 => {
                check_len(bytes.len(), count, 2).map_err(bad)?;
                bytes
                    .chunks_exact(2)
                    .map(|c| half::f16::from_bits(u16::from_le_bytes([c[0], c[1]])).to_f32())
                    .collect()
            }
            Dtype::F64 => {
                check_len(bytes.len(), count, 8).map_err(bad)?;
                bytes
                    .chunks_exact(8)
                    .map(|c| {
                        f64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]) as f32
                    })
                    .collect()
            }
            other => return Err(bad(format!("unsupported dtype {other:?}"))),
        };
        Ok(Tensor::from_vec(values, e.shape.clone(), device)?)
    }
}

fn check_len(bytes: usize, count: usize, width: usize) -> std::result::Result<(), String> {
    if bytes != count * width {
        return Err(format!(
            "{bytes} bytes for {count} elements of {width} bytes"
        ));
    }
    Ok(())
}

/// The weights of one model component, possibly spread over shards, addressed by original
/// (canonical) tensor names.
pub struct ComponentWeights {
    /// What to name in errors: the single file, or the shard index.
    label: PathBuf,
    files: Vec<SafetensorsFile>,
    /// canonical name → (file index, name stored in the file)
    map: HashMap<String, (usize, String)>,
    device: Device,
}

impl ComponentWeights {
    /// Open `path` (a `.safetensors` file or a `.safetensors.index.json` shard index), keeping
    /// tensors whose stored name `rename` maps to a canonical name.
    pub fn open(
        path: &Path,
        device: &Device,
        rename: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Self> {
        let files = if path.to_string_lossy().ends_with(".index.json") {
            let index = read_json(path)?;
            let map = index
                .get("weight_map")
                .and_then(Value::as_object)
                .ok_or_else(|| AceStepError::invalid(path, "no `weight_map` object"))?;
            let dir = path.parent().unwrap_or(Path::new("."));
            let mut shards: Vec<String> = map
                .values()
                .filter_map(|v| v.as_str().map(str::to_owned))
                .collect();
            shards.sort();
            shards.dedup();
            if shards.is_empty() {
                return Err(AceStepError::invalid(path, "`weight_map` names no shard"));
            }
            shards
                .iter()
                .map(|s| SafetensorsFile::open(&dir.join(s)))
                .collect::<Result<Vec<_>>>()?
        } else {
            vec![SafetensorsFile::open(path)?]
        };
        let mut map = HashMap::new();
        for (i, f) in files.iter().enumerate() {
            for stored in f.names() {
                if let Some(canonical) = rename(stored) {
                    map.insert(canonical, (i, stored.to_owned()));
                }
            }
        }
        Ok(Self {
            label: path.to_path_buf(),
            files,
            map,
            device: device.clone(),
        })
    }

    /// Merge another component's tensors into this one (the diffusers layout splits one original
    /// checkpoint over four folders).
    pub fn absorb(&mut self, other: ComponentWeights) {
        let offset = self.files.len();
        for (k, (i, s)) in other.map {
            self.map.insert(k, (i + offset, s));
        }
        self.files.extend(other.files);
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    pub fn label(&self) -> &Path {
        &self.label
    }

    pub fn contains(&self, name: &str) -> bool {
        self.map.contains_key(name)
    }

    fn locate(&self, name: &str) -> Result<(&SafetensorsFile, &str)> {
        let (i, stored) = self
            .map
            .get(name)
            .ok_or_else(|| AceStepError::MissingTensor {
                path: self.label.clone(),
                tensor: name.into(),
            })?;
        Ok((&self.files[*i], stored.as_str()))
    }

    /// Load `name` and check it has `shape`.
    pub fn get(&self, name: &str, shape: &[usize]) -> Result<Tensor> {
        let (file, stored) = self.locate(name)?;
        let got = file.shape(stored).unwrap_or(&[]).to_vec();
        if got != shape {
            return Err(AceStepError::ShapeMismatch {
                path: file.path().to_path_buf(),
                tensor: stored.to_owned(),
                expected: shape.to_vec(),
                got,
            });
        }
        file.load(stored, &self.device)
    }

    /// Load `name` whatever its shape.
    pub fn get_any(&self, name: &str) -> Result<Tensor> {
        let (file, stored) = self.locate(name)?;
        file.load(stored, &self.device)
    }

    /// The stored shape of `name`, if present.
    pub fn shape_of(&self, name: &str) -> Option<Vec<usize>> {
        self.locate(name)
            .ok()
            .and_then(|(f, s)| f.shape(s).map(<[usize]>::to_vec))
    }

    /// Parameter count and dtypes over all files (only canonical names starting with `prefix`).
    fn summary(&self, prefix: &str) -> (usize, usize, BTreeMap<String, usize>) {
        let mut params = 0;
        let mut tensors = 0;
        let mut dtypes = BTreeMap::new();
        for (canonical, (i, n)) in &self.map {
            if !canonical.starts_with(prefix) {
                continue;
            }
            let f = &self.files[*i];
            tensors += 1;
            params += f.shape(n).map(|s| s.iter().product::<usize>()).unwrap_or(0);
            if let Some(d) = f.dtype(n) {
                *dtypes.entry(format!("{d:?}")).or_insert(0) += 1;
            }
        }
        (tensors, params, dtypes)
    }
}

/// Which checkpoint layout a folder holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Layout {
    /// `acestep-v15-*/{config.json, model.safetensors(.index.json), silence_latent.pt}`, `vae/`,
    /// `Qwen3-Embedding-0.6B/` (the published Hugging Face repository).
    Original,
    /// A diffusers pipeline folder: `model_index.json`, `transformer/`, `condition_encoder/`, …
    Diffusers,
}

impl fmt::Display for Layout {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Layout::Original => "original ACE-Step layout",
            Layout::Diffusers => "diffusers layout",
        })
    }
}

/// Resolved paths of every component of a weights folder.
#[derive(Clone, Debug)]
pub struct ModelFiles {
    pub layout: Layout,
    pub root: PathBuf,
    /// The DiT checkpoint config: original `config.json`, or diffusers `transformer/config.json`.
    pub dit_config: PathBuf,
    /// Original: `model.safetensors` or its index. Diffusers: the transformer weights.
    pub dit_weights: PathBuf,
    /// Diffusers only: condition encoder, audio tokenizer, detokenizer (weights, config).
    pub condition_encoder: Option<(PathBuf, PathBuf)>,
    pub audio_tokenizer: Option<(PathBuf, PathBuf)>,
    pub audio_detokenizer: Option<(PathBuf, PathBuf)>,
    /// Original only: `silence_latent.pt` (diffusers keeps it in the condition encoder).
    pub silence_latent: Option<PathBuf>,
    pub text_encoder_dir: PathBuf,
    pub text_encoder_weights: PathBuf,
    pub tokenizer_json: PathBuf,
    pub vae_config: PathBuf,
    pub vae_weights: PathBuf,
}

/// `{dir}/{stem}.safetensors`, or its shard index.
fn weight_file(dir: &Path, stems: &[&str]) -> Option<PathBuf> {
    for stem in stems {
        let single = dir.join(format!("{stem}.safetensors"));
        if single.is_file() {
            return Some(single);
        }
        let index = dir.join(format!("{stem}.safetensors.index.json"));
        if index.is_file() {
            return Some(index);
        }
    }
    None
}

fn require(p: Option<PathBuf>, dir: &Path, what: &str) -> Result<PathBuf> {
    p.ok_or_else(|| AceStepError::MissingFile {
        path: dir.to_path_buf(),
        what: what.into(),
    })
}

fn is_acestep_config(path: &Path) -> bool {
    std::fs::read_to_string(path)
        .ok()
        .and_then(|t| serde_json::from_str::<Value>(&t).ok())
        .is_some_and(|v| {
            v.get("model_type").and_then(Value::as_str) == Some("acestep")
                || v.get("architectures")
                    .and_then(Value::as_array)
                    .is_some_and(|a| {
                        a.iter()
                            .any(|x| x.as_str() == Some("AceStepConditionGenerationModel"))
                    })
        })
}

impl ModelFiles {
    /// Detect the layout of `dir` and resolve every component. `variant` picks a DiT folder of
    /// the original layout (`acestep-v15-xl-turbo`); by default `acestep-v15-turbo`, else the
    /// first `acestep-v15-*` folder in name order.
    pub fn discover(dir: &Path, variant: Option<&str>) -> Result<Self> {
        if !dir.is_dir() {
            return Err(AceStepError::MissingFile {
                path: dir.to_path_buf(),
                what: "weights folder".into(),
            });
        }
        if dir.join("model_index.json").is_file() {
            return Self::diffusers(dir);
        }
        // A DiT folder given directly: its siblings hold the VAE and the text encoder.
        if dir.join("config.json").is_file() && is_acestep_config(&dir.join("config.json")) {
            let root = dir.parent().unwrap_or(dir).to_path_buf();
            return Self::original(&root, dir);
        }
        let dit_dir = match variant {
            Some(v) => {
                let d = dir.join(v);
                if !d.is_dir() {
                    return Err(AceStepError::MissingFile {
                        path: d,
                        what: format!("DiT variant `{v}`"),
                    });
                }
                d
            }
            None => {
                let preferred = dir.join("acestep-v15-turbo");
                if preferred.join("config.json").is_file() {
                    preferred
                } else {
                    let mut found: Vec<PathBuf> = std::fs::read_dir(dir)
                        .map_err(|e| AceStepError::io(dir, e))?
                        .filter_map(|e| e.ok().map(|e| e.path()))
                        .filter(|p| {
                            p.join("config.json").is_file()
                                && is_acestep_config(&p.join("config.json"))
                        })
                        .collect();
                    found.sort();
                    match found.into_iter().next() {
                        Some(d) => d,
                        None => {
                            return Err(AceStepError::UnknownLayout {
                                path: dir.to_path_buf(),
                                detail: "found neither model_index.json (diffusers layout) nor an acestep-v15-*/ folder \
                                         whose config.json has model_type \"acestep\" (original layout)"
                                    .into(),
                            });
                        }
                    }
                }
            }
        };
        Self::original(dir, &dit_dir)
    }

    fn original(root: &Path, dit_dir: &Path) -> Result<Self> {
        let dit_weights = require(
            weight_file(dit_dir, &["model"]),
            dit_dir,
            "model.safetensors (or model.safetensors.index.json)",
        )?;
        let silence = dit_dir.join("silence_latent.pt");
        if !silence.is_file() {
            return Err(AceStepError::MissingFile {
                path: silence,
                what: "silence latent".into(),
            });
        }
        let te = root.join("Qwen3-Embedding-0.6B");
        let te_weights = require(
            weight_file(&te, &["model"]),
            &te,
            "Qwen3-Embedding-0.6B/model.safetensors",
        )?;
        let vae = root.join("vae");
        let vae_weights = require(
            weight_file(&vae, &["diffusion_pytorch_model", "model"]),
            &vae,
            "vae/diffusion_pytorch_model.safetensors",
        )?;
        Ok(Self {
            layout: Layout::Original,
            root: root.to_path_buf(),
            dit_config: dit_dir.join("config.json"),
            dit_weights,
            condition_encoder: None,
            audio_tokenizer: None,
            audio_detokenizer: None,
            silence_latent: Some(silence),
            tokenizer_json: te.join("tokenizer.json"),
            text_encoder_dir: te.clone(),
            text_encoder_weights: te_weights,
            vae_config: vae.join("config.json"),
            vae_weights,
        })
    }

    fn diffusers(root: &Path) -> Result<Self> {
        let comp = |name: &str, stems: &[&str]| -> Result<(PathBuf, PathBuf)> {
            let d = root.join(name);
            let w = require(weight_file(&d, stems), &d, &format!("{name}/ weights"))?;
            Ok((w, d.join("config.json")))
        };
        let optional = |name: &str| -> Option<(PathBuf, PathBuf)> {
            let d = root.join(name);
            weight_file(&d, &["diffusion_pytorch_model", "model"])
                .map(|w| (w, d.join("config.json")))
        };
        let (dit_weights, dit_config) = comp("transformer", &["diffusion_pytorch_model", "model"])?;
        let condition = comp("condition_encoder", &["diffusion_pytorch_model", "model"])?;
        let (te_weights, _) = comp("text_encoder", &["model", "diffusion_pytorch_model"])?;
        let (vae_weights, vae_config) = comp("vae", &["diffusion_pytorch_model", "model"])?;
        let tok = [
            root.join("tokenizer/tokenizer.json"),
            root.join("text_encoder/tokenizer.json"),
        ]
        .into_iter()
        .find(|p| p.is_file())
        .unwrap_or_else(|| root.join("tokenizer/tokenizer.json"));
        Ok(Self {
            layout: Layout::Diffusers,
            root: root.to_path_buf(),
            dit_config,
            dit_weights,
            condition_encoder: Some(condition),
            audio_tokenizer: optional("audio_tokenizer"),
            audio_detokenizer: optional("audio_token_detokenizer"),
            silence_latent: None,
            text_encoder_dir: root.join("text_encoder"),
            text_encoder_weights: te_weights,
            tokenizer_json: tok,
            vae_config,
            vae_weights,
        })
    }

    /// Open the DiT checkpoint (decoder, condition encoder, tokenizer, detokenizer,
    /// `null_condition_emb`; diffusers: also `silence_latent`) under original names.
    pub fn open_dit(&self, device: &Device) -> Result<ComponentWeights> {
        match self.layout {
            Layout::Original => {
                ComponentWeights::open(&self.dit_weights, device, &|n| Some(n.to_owned()))
            }
            Layout::Diffusers => {
                let mut w = ComponentWeights::open(&self.dit_weights, device, &|n| {
                    Some(diffusers_to_original("decoder.", n))
                })?;
                if let Some((p, _)) = &self.condition_encoder {
                    w.absorb(ComponentWeights::open(p, device, &|n| {
                        Some(match n {
                            "null_condition_emb" | "silence_latent" => n.to_owned(),
                            _ => diffusers_to_original("encoder.", n),
                        })
                    })?);
                }
                if let Some((p, _)) = &self.audio_tokenizer {
                    w.absorb(ComponentWeights::open(p, device, &|n| {
                        Some(diffusers_to_original("tokenizer.", n))
                    })?);
                }
                if let Some((p, _)) = &self.audio_detokenizer {
                    w.absorb(ComponentWeights::open(p, device, &|n| {
                        Some(diffusers_to_original("detokenizer.", n))
                    })?);
                }
                Ok(w)
            }
        }
    }

    /// Open the Qwen3 text encoder; a `model.` prefix (full `Qwen3ForCausalLM`-style files) is
    /// stripped and an `lm_head` ignored.
    pub fn open_text_encoder(&self, device: &Device) -> Result<ComponentWeights> {
        ComponentWeights::open(&self.text_encoder_weights, device, &|n| {
            if n.starts_with("lm_head.") {
                return None;
            }
            Some(n.strip_prefix("model.").unwrap_or(n).to_owned())
        })
    }

    pub fn open_vae(&self, device: &Device) -> Result<ComponentWeights> {
        ComponentWeights::open(&self.vae_weights, device, &|n| Some(n.to_owned()))
    }
}

/// Translate a diffusers tensor name of an ACE-Step component to the original checkpoint's name.
pub fn diffusers_to_original(prefix: &str, name: &str) -> String {
    let mut parts: Vec<&str> = name.split('.').collect();
    let mut out: Vec<String> = Vec::with_capacity(parts.len() + 1);
    let mut i = 0;
    while i < parts.len() {
        let p = parts[i];
        let mapped = match p {
            "to_q" => "q_proj",
            "to_k" => "k_proj",
            "to_v" => "v_proj",
            "norm_q" => "q_norm",
            "norm_k" => "k_norm",
            "proj_in_conv" => "proj_in.1",
            "proj_out_conv" => "proj_out.1",
            "to_out" if parts.get(i + 1) == Some(&"0") => {
                i += 1;
                "o_proj"
            }
            other => other,
        };
        out.push(mapped.to_owned());
        i += 1;
    }
    parts.clear();
    format!("{prefix}{}", out.join("."))
}

/// What `inspect_weights` found in one component.
#[derive(Clone, Debug)]
pub struct ComponentReport {
    pub name: String,
    pub path: PathBuf,
    pub tensors: usize,
    pub parameters: usize,
    /// dtype name → tensor count.
    pub dtypes: BTreeMap<String, usize>,
}

/// Result of [`inspect_weights`]: layout, and per component its tensors, parameters and dtypes.
#[derive(Clone, Debug)]
pub struct WeightsReport {
    pub root: PathBuf,
    pub layout: Layout,
    pub components: Vec<ComponentReport>,
    /// Extra facts (silence latent shape, DiT size, missing optional parts).
    pub notes: Vec<String>,
}

impl fmt::Display for WeightsReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "weights: {}", self.root.display())?;
        writeln!(f, "layout:  {}", self.layout)?;
        let mut total = 0;
        for c in &self.components {
            total += c.parameters;
            let dtypes: Vec<String> = c.dtypes.iter().map(|(d, n)| format!("{d}×{n}")).collect();
            writeln!(
                f,
                "  {:<18} {:>14} params  {:>5} tensors  [{}]  {}",
                c.name,
                group_thousands(c.parameters),
                c.tensors,
                dtypes.join(", "),
                c.path.display()
            )?;
        }
        writeln!(f, "  {:<18} {:>14} params", "total", group_thousands(total))?;
        for n in &self.notes {
            writeln!(f, "  note: {n}")?;
        }
        Ok(())
    }
}

fn group_thousands(n: usize) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, ch) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(' ');
        }
        out.push(ch);
    }
    out
}

/// Inspect a weights folder without building any model: layout, components found, parameter
/// counts and dtypes. Fails with a clear error on a missing, truncated or unknown layout.
pub fn inspect_weights(dir: &Path) -> Result<WeightsReport> {
    let files = ModelFiles::discover(dir, None)?;
    let device = Device::Cpu;
    let mut components = Vec::new();
    let mut notes = Vec::new();
    // Counts per component; `prefix` selects one part of the original single DiT checkpoint.
    let mut add = |name: &str, w: &ComponentWeights, prefix: &str| {
        let (tensors, parameters, dtypes) = w.summary(prefix);
        if tensors > 0 {
            components.push(ComponentReport {
                name: name.into(),
                path: w.label().to_path_buf(),
                tensors,
                parameters,
                dtypes,
            });
        }
    };
    let all = |n: &str| Some(n.to_owned());
    match files.layout {
        Layout::Original => {
            let w = files.open_dit(&device)?;
            add("dit decoder", &w, "decoder.");
            add("condition encoder", &w, "encoder.");
            add("audio tokenizer", &w, "tokenizer.");
            add("audio detokenizer", &w, "detokenizer.");
            add("null condition", &w, "null_condition_emb");
            if !w.contains("tokenizer.audio_acoustic_proj.weight")
                || !w.contains("detokenizer.embed_tokens.weight")
            {
                notes.push(
                    "audio tokenizer/detokenizer not found (cover and audio codes unavailable)"
                        .into(),
                );
            }
        }
        Layout::Diffusers => {
            add(
                "transformer",
                &ComponentWeights::open(&files.dit_weights, &device, &all)?,
                "",
            );
            for (name, c) in [
                ("condition_encoder", &files.condition_encoder),
                ("audio_tokenizer", &files.audio_tokenizer),
                ("audio_detokenizer", &files.audio_detokenizer),
            ] {
                match c {
                    Some((p, _)) => add(name, &ComponentWeights::open(p, &device, &all)?, ""),
                    None => notes.push(format!(
                        "{name} not found (cover and audio codes unavailable)"
                    )),
                }
            }
        }
    }
    add("text_encoder", &files.open_text_encoder(&device)?, "");
    add("vae", &files.open_vae(&device)?, "");
    if let Some(p) = &files.silence_latent {
        let s = crate::silence::read_silence_latent(p, None)?;
        notes.push(format!(
            "silence latent {:?} from {}",
            s.dims(),
            p.display()
        ));
    }
    if !files.tokenizer_json.is_file() {
        notes.push(format!(
            "tokenizer.json not found at {}",
            files.tokenizer_json.display()
        ));
    }
    Ok(WeightsReport {
        root: dir.to_path_buf(),
        layout: files.layout,
        components,
        notes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn diffusers_names_map_to_original() {
        assert_eq!(
            diffusers_to_original("decoder.", "layers.3.cross_attn.to_out.0.weight"),
            "decoder.layers.3.cross_attn.o_proj.weight"
        );
        assert_eq!(
            diffusers_to_original("decoder.", "proj_in_conv.bias"),
            "decoder.proj_in.1.bias"
        );
        assert_eq!(
            diffusers_to_original("encoder.", "lyric_encoder.layers.0.self_attn.norm_q.weight"),
            "encoder.lyric_encoder.layers.0.self_attn.q_norm.weight"
        );
        assert_eq!(
            diffusers_to_original("tokenizer.", "quantizer.project_in.weight"),
            "tokenizer.quantizer.project_in.weight"
        );
        assert_eq!(group_thousands(1234567), "1 234 567");
    }
}
