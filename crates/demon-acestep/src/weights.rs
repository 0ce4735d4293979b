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

use crate::config::{DitConfig, TextEncoderConfig, VaeConfig, read_json};
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
    /// The header's `__metadata__` (free-form strings).
    metadata: BTreeMap<String, String>,
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
        let metadata = meta
            .metadata()
            .as_ref()
            .map(|m| m.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
            .unwrap_or_default();
        Ok(Self {
            path: path.to_path_buf(),
            mmap,
            data_start,
            entries,
            metadata,
        })
    }

    /// The header's `__metadata__` strings (empty when it has none).
    pub fn metadata(&self) -> &BTreeMap<String, String> {
        &self.metadata
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

/// Resolved paths of every component of a weights folder. A component the folder does not hold
/// keeps the path where its layout puts it; [`ModelFiles::parts`] says which are present, and
/// opening an absent one is a [`AceStepError::MissingFile`] naming that path.
#[derive(Clone, Debug)]
pub struct ModelFiles {
    pub layout: Layout,
    pub root: PathBuf,
    /// The DiT checkpoint config: original `config.json`, or diffusers `transformer/config.json`.
    pub dit_config: PathBuf,
    /// Original: `model.safetensors` or its index. Diffusers: the transformer weights.
    pub dit_weights: PathBuf,
    /// Diffusers only: condition encoder, audio tokenizer, detokenizer (weights, config), when
    /// present.
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

/// One part of a weights folder, as [`ModelFiles::parts`] reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Part {
    /// `dit`, `condition encoder`, `audio tokenizer`, `audio detokenizer`, `silence latent`,
    /// `text encoder`, `tokenizer` or `vae`.
    pub name: &'static str,
    /// The file that holds it (or would).
    pub path: PathBuf,
    pub present: bool,
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

/// The weights file of `dir`, or where the first stem's single file would be.
fn weight_file_or_default(dir: &Path, stems: &[&str]) -> PathBuf {
    weight_file(dir, stems).unwrap_or_else(|| dir.join(format!("{}.safetensors", stems[0])))
}

fn read_config(path: &Path) -> Option<Value> {
    std::fs::read_to_string(path)
        .ok()
        .and_then(|t| serde_json::from_str::<Value>(&t).ok())
}

fn is_acestep_config(path: &Path) -> bool {
    read_config(path).is_some_and(|v| {
        v.get("model_type").and_then(Value::as_str) == Some("acestep")
            || v.get("architectures")
                .and_then(Value::as_array)
                .is_some_and(|a| {
                    a.iter()
                        .any(|x| x.as_str() == Some("AceStepConditionGenerationModel"))
                })
    })
}

/// A diffusers component config whose `_class_name` is `class`.
fn is_diffusers_class(path: &Path, class: &str) -> bool {
    read_config(path).is_some_and(|v| v.get("_class_name").and_then(Value::as_str) == Some(class))
}

/// Component folders of a diffusers pipeline that exist only in that layout.
const DIFFUSERS_ONLY: [&str; 5] = [
    "transformer",
    "condition_encoder",
    "audio_tokenizer",
    "audio_token_detokenizer",
    "text_encoder",
];

impl ModelFiles {
    /// Detect the layout of `dir` and resolve every component it holds. `variant` picks a DiT
    /// folder of the original layout (`acestep-v15-xl-turbo`); by default `acestep-v15-turbo`,
    /// else the first `acestep-v15-*` folder in name order.
    ///
    /// A folder may hold only some components (a diffusers `transformer/` alone, only `vae/`):
    /// discovery succeeds and each loader asks for what it needs. `dir` may also be a DiT folder
    /// itself (original `acestep-v15-*/` or diffusers `transformer/`): its parent is the root.
    pub fn discover(dir: &Path, variant: Option<&str>) -> Result<Self> {
        if !dir.is_dir() {
            return Err(AceStepError::MissingFile {
                path: dir.to_path_buf(),
                what: "weights folder".into(),
            });
        }
        let parent = || dir.parent().unwrap_or(dir).to_path_buf();
        if dir.join("model_index.json").is_file() {
            return Ok(Self::diffusers(dir, &dir.join("transformer")));
        }
        let own_config = dir.join("config.json");
        if is_acestep_config(&own_config) {
            return Ok(Self::original(&parent(), dir));
        }
        if is_diffusers_class(&own_config, "AceStepTransformer1DModel") {
            return Ok(Self::diffusers(&parent(), dir));
        }
        if let Some(v) = variant {
            let d = dir.join(v);
            if !d.is_dir() {
                return Err(AceStepError::MissingFile {
                    path: d,
                    what: format!("DiT variant `{v}`"),
                });
            }
            return Ok(Self::original(dir, &d));
        }
        let preferred = dir.join("acestep-v15-turbo");
        if preferred.join("config.json").is_file() {
            return Ok(Self::original(dir, &preferred));
        }
        let mut found: Vec<PathBuf> = std::fs::read_dir(dir)
            .map_err(|e| AceStepError::io(dir, e))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| is_acestep_config(&p.join("config.json")))
            .collect();
        found.sort();
        if let Some(d) = found.into_iter().next() {
            return Ok(Self::original(dir, &d));
        }
        if DIFFUSERS_ONLY.iter().any(|c| dir.join(c).is_dir()) {
            return Ok(Self::diffusers(dir, &dir.join("transformer")));
        }
        if dir.join("Qwen3-Embedding-0.6B").is_dir() || dir.join("vae").is_dir() {
            // The VAE folder is the same in both layouts; without a DiT, call it original.
            return Ok(Self::original(dir, &preferred));
        }
        Err(AceStepError::UnknownLayout {
            path: dir.to_path_buf(),
            detail:
                "found neither model_index.json or a diffusers component folder (diffusers layout) \
                     nor an acestep-v15-*/ folder whose config.json has model_type \"acestep\", a \
                     Qwen3-Embedding-0.6B/ or a vae/ folder (original layout)"
                    .into(),
        })
    }

    fn original(root: &Path, dit_dir: &Path) -> Self {
        let te = root.join("Qwen3-Embedding-0.6B");
        let vae = root.join("vae");
        Self {
            layout: Layout::Original,
            root: root.to_path_buf(),
            dit_config: dit_dir.join("config.json"),
            dit_weights: weight_file_or_default(dit_dir, &["model"]),
            condition_encoder: None,
            audio_tokenizer: None,
            audio_detokenizer: None,
            silence_latent: Some(dit_dir.join("silence_latent.pt")),
            tokenizer_json: te.join("tokenizer.json"),
            text_encoder_weights: weight_file_or_default(&te, &["model"]),
            text_encoder_dir: te,
            vae_config: vae.join("config.json"),
            vae_weights: weight_file_or_default(&vae, &["diffusion_pytorch_model", "model"]),
        }
    }

    fn diffusers(root: &Path, transformer: &Path) -> Self {
        let optional = |name: &str| -> Option<(PathBuf, PathBuf)> {
            let d = root.join(name);
            weight_file(&d, &["diffusion_pytorch_model", "model"])
                .map(|w| (w, d.join("config.json")))
        };
        let te = root.join("text_encoder");
        let vae = root.join("vae");
        let tok = [
            root.join("tokenizer/tokenizer.json"),
            te.join("tokenizer.json"),
        ]
        .into_iter()
        .find(|p| p.is_file())
        .unwrap_or_else(|| root.join("tokenizer/tokenizer.json"));
        Self {
            layout: Layout::Diffusers,
            root: root.to_path_buf(),
            dit_config: transformer.join("config.json"),
            dit_weights: weight_file_or_default(transformer, &["diffusion_pytorch_model", "model"]),
            condition_encoder: optional("condition_encoder"),
            audio_tokenizer: optional("audio_tokenizer"),
            audio_detokenizer: optional("audio_token_detokenizer"),
            silence_latent: None,
            text_encoder_weights: weight_file_or_default(
                &te,
                &["model", "diffusion_pytorch_model"],
            ),
            text_encoder_dir: te,
            tokenizer_json: tok,
            vae_config: vae.join("config.json"),
            vae_weights: weight_file_or_default(&vae, &["diffusion_pytorch_model", "model"]),
        }
    }

    /// Every part of the layout with its file and whether the folder holds it. Diffusers' audio
    /// tokenizer/detokenizer and condition encoder are listed under their folders; in the
    /// original layout they live in the DiT checkpoint.
    pub fn parts(&self) -> Vec<Part> {
        let part = |name, path: &Path| Part {
            name,
            path: path.to_path_buf(),
            present: path.is_file(),
        };
        let mut v = vec![part("dit", &self.dit_weights)];
        if self.layout == Layout::Diffusers {
            for (name, folder, c) in [
                (
                    "condition encoder",
                    "condition_encoder",
                    &self.condition_encoder,
                ),
                ("audio tokenizer", "audio_tokenizer", &self.audio_tokenizer),
                (
                    "audio detokenizer",
                    "audio_token_detokenizer",
                    &self.audio_detokenizer,
                ),
            ] {
                v.push(match c {
                    Some((w, _)) => part(name, w),
                    None => Part {
                        name,
                        path: self.root.join(folder),
                        present: false,
                    },
                });
            }
        }
        if let Some(p) = &self.silence_latent {
            v.push(part("silence latent", p));
        }
        v.push(part("text encoder", &self.text_encoder_weights));
        v.push(part("tokenizer", &self.tokenizer_json));
        v.push(part("vae", &self.vae_weights));
        v
    }

    /// `present: …; missing: …` over [`ModelFiles::parts`].
    pub fn summary(&self) -> String {
        let parts = self.parts();
        let names = |present: bool| -> String {
            let n: Vec<&str> = parts
                .iter()
                .filter(|p| p.present == present)
                .map(|p| p.name)
                .collect();
            if n.is_empty() {
                "none".into()
            } else {
                n.join(", ")
            }
        };
        format!("present: {}; missing: {}", names(true), names(false))
    }

    /// An error unless part `name` is present, naming its file and what the folder holds.
    pub fn require(&self, name: &str) -> Result<()> {
        match self.parts().into_iter().find(|p| p.name == name) {
            Some(p) if p.present => Ok(()),
            Some(p) => Err(AceStepError::MissingFile {
                path: p.path,
                what: format!("{name} ({} in {})", self.summary(), self.root.display()),
            }),
            None => Err(AceStepError::MissingFile {
                path: self.root.clone(),
                what: format!("{name} (not part of the {})", self.layout),
            }),
        }
    }

    /// The DiT's configuration. Original: `config.json`. Diffusers: `transformer/config.json`
    /// with `condition_encoder/` and `audio_tokenizer/` configs when present (a DiT-only folder
    /// needs neither, a condition encoder alone needs no transformer); `timbre_fix_frame` is 30 s at the VAE's frame rate when `vae/config.json`
    /// is present, else the published 750.
    pub fn read_dit_config(&self) -> Result<DitConfig> {
        match self.layout {
            Layout::Original => {
                DitConfig::from_original_json(&read_json(&self.dit_config)?, &self.dit_config)
            }
            Layout::Diffusers => {
                let t = if self.dit_config.is_file() || self.condition_encoder.is_none() {
                    Some(read_json(&self.dit_config)?)
                } else {
                    None
                };
                let read = |c: &Option<(PathBuf, PathBuf)>| -> Result<Option<(Value, PathBuf)>> {
                    match c {
                        Some((_, p)) => Ok(Some((read_json(p)?, p.clone()))),
                        None => Ok(None),
                    }
                };
                let cond = read(&self.condition_encoder)?;
                let tok = read(&self.audio_tokenizer)?;
                let fix = if self.vae_config.is_file() {
                    let vae = self.read_vae_config()?;
                    (30.0 * vae.sampling_rate as f64 / vae.hop() as f64).ceil() as usize
                } else {
                    DitConfig::turbo_2b().timbre_fix_frame
                };
                DitConfig::from_diffusers_json(
                    t.as_ref().map(|v| (v, self.dit_config.as_path())),
                    cond.as_ref().map(|(v, p)| (v, p.as_path())),
                    tok.as_ref().map(|(v, p)| (v, p.as_path())),
                    fix,
                )
            }
        }
    }

    /// The VAE's configuration (`vae/config.json`).
    pub fn read_vae_config(&self) -> Result<VaeConfig> {
        VaeConfig::from_json(&read_json(&self.vae_config)?, &self.vae_config)
    }

    /// The text encoder's configuration (`config.json` beside its weights).
    pub fn read_text_encoder_config(&self) -> Result<TextEncoderConfig> {
        let p = self.text_encoder_dir.join("config.json");
        TextEncoderConfig::from_json(&read_json(&p)?, &p)
    }

    /// Open the DiT checkpoint (decoder, condition encoder, tokenizer, detokenizer,
    /// `null_condition_emb`; diffusers: also `silence_latent`) under original names. Diffusers:
    /// whichever of those component folders the folder holds.
    pub fn open_dit(&self, device: &Device) -> Result<ComponentWeights> {
        match self.layout {
            Layout::Original => {
                ComponentWeights::open(&self.dit_weights, device, &|n| Some(n.to_owned()))
            }
            Layout::Diffusers => {
                // The components the folder holds, under one original-name map; the transformer
                // (when present) is the label errors name.
                let mut parts: Vec<ComponentWeights> = Vec::new();
                if self.dit_weights.is_file() || self.condition_encoder.is_none() {
                    parts.push(ComponentWeights::open(&self.dit_weights, device, &|n| {
                        Some(diffusers_to_original("decoder.", n))
                    })?);
                }
                if let Some((p, _)) = &self.condition_encoder {
                    parts.push(ComponentWeights::open(p, device, &|n| {
                        Some(match n {
                            "null_condition_emb" | "silence_latent" => n.to_owned(),
                            _ => diffusers_to_original("encoder.", n),
                        })
                    })?);
                }
                if let Some((p, _)) = &self.audio_tokenizer {
                    parts.push(ComponentWeights::open(p, device, &|n| {
                        Some(diffusers_to_original("tokenizer.", n))
                    })?);
                }
                if let Some((p, _)) = &self.audio_detokenizer {
                    parts.push(ComponentWeights::open(p, device, &|n| {
                        Some(diffusers_to_original("detokenizer.", n))
                    })?);
                }
                let mut parts = parts.into_iter();
                let mut w = parts.next().ok_or_else(|| AceStepError::MissingFile {
                    path: self.dit_weights.clone(),
                    what: "safetensors weights".into(),
                })?;
                for other in parts {
                    w.absorb(other);
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
    /// Extra facts (silence latent shape, DiT size, missing parts and what they disable).
    pub notes: Vec<String>,
    /// The parts of the layout the folder does not hold.
    pub missing: Vec<Part>,
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
/// counts and dtypes, and which parts are missing (a folder holding one component, such as a
/// diffusers `transformer/` alone, is reported, not refused). Fails with a clear error on a
/// folder that does not exist, an unknown layout, or a component file that is there but broken
/// (truncated, bad header).
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
    let parts = files.parts();
    let present = |name: &str| parts.iter().any(|p| p.name == name && p.present);
    match files.layout {
        Layout::Original if present("dit") => {
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
        Layout::Original => {}
        Layout::Diffusers => {
            if present("dit") {
                add(
                    "transformer",
                    &ComponentWeights::open(&files.dit_weights, &device, &all)?,
                    "",
                );
            }
            for (name, c) in [
                ("condition_encoder", &files.condition_encoder),
                ("audio_tokenizer", &files.audio_tokenizer),
                ("audio_detokenizer", &files.audio_detokenizer),
            ] {
                if let Some((p, _)) = c {
                    add(name, &ComponentWeights::open(p, &device, &all)?, "");
                }
            }
        }
    }
    if present("text encoder") {
        add("text_encoder", &files.open_text_encoder(&device)?, "");
    }
    if present("vae") {
        add("vae", &files.open_vae(&device)?, "");
    }
    if let Some(p) = &files.silence_latent
        && p.is_file()
    {
        let s = crate::silence::read_silence_latent(p, None)?;
        notes.push(format!(
            "silence latent {:?} from {}",
            s.dims(),
            p.display()
        ));
    }
    let missing: Vec<Part> = parts.into_iter().filter(|p| !p.present).collect();
    for m in &missing {
        let consequence = match m.name {
            "dit" => "no denoiser",
            "condition encoder" => "no prompt conditioning",
            "audio tokenizer" | "audio detokenizer" => "cover and audio codes unavailable",
            "silence latent" => "no text-to-music context",
            "text encoder" | "tokenizer" => "no prompt encoding",
            "vae" => "no audio encode/decode",
            _ => "",
        };
        notes.push(format!(
            "missing {} at {} ({consequence})",
            m.name,
            m.path.display()
        ));
    }
    Ok(WeightsReport {
        root: dir.to_path_buf(),
        layout: files.layout,
        components,
        notes,
        missing,
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
