//! Weight adapters (LoRA): the [`Adapters`] trait a model switches them through (propagation
//! class "global weights"), their files as every backend reads them, and what a library needs
//! from a backend to register adapters without loading them and load them beside the ticks.
//!
//! The metadata convention is ACE-Step's (and DEMON's LoRA library): keys in the safetensors
//! header, then a JSON sidecar beside the file, which wins. Reading the keys is pure; the one
//! filesystem look-up here is [`sidecar_path`], the naming convention every backend shares.

use std::any::Any;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::{EngineError, Result};

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

/// Longest trigger word or phrase, and most of them, an adapter may carry (they go into
/// every prompt while it is enabled).
const MAX_TRIGGER_CHARS: usize = 64;
const MAX_TRIGGERS: usize = 16;

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

/// An adapter read from its file, not yet part of the model: made on a loading thread, handed
/// to [`Adapters::install`](crate::Adapters::install) between ticks. What it holds is the
/// backend's own (low-rank factors for ACE-Step, a style prior for the sketch).
pub struct LoadedAdapter {
    pub path: PathBuf,
    payload: Box<dyn Any + Send>,
}

impl LoadedAdapter {
    pub fn new<T: Any + Send>(path: PathBuf, payload: T) -> Self {
        Self {
            path,
            payload: Box::new(payload),
        }
    }

    /// The backend's payload; an error when it was made by another backend's loader.
    pub fn into_payload<T: Any>(self) -> Result<T> {
        self.payload.downcast::<T>().map(|b| *b).map_err(|_| {
            EngineError::param(
                "lora",
                format!(
                    "`{}` was loaded by another backend's adapter loader",
                    self.path.display()
                ),
            )
        })
    }
}

impl std::fmt::Debug for LoadedAdapter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoadedAdapter")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

/// The largest safetensors header [`header_metadata`] reads (the header holds only names,
/// shapes and offsets; 16 MiB is far beyond any real adapter's).
const MAX_HEADER_BYTES: u64 = 16 << 20;

/// The `__metadata__` strings of the safetensors file at `file`, reading only its header
/// (an 8-byte little-endian length, then that much JSON): a library describes every adapter it
/// finds without touching their tensors.
pub fn header_metadata(file: &Path) -> Result<BTreeMap<String, String>> {
    use std::io::Read;
    let bad = |why: String| EngineError::param("lora", format!("`{}`: {why}", file.display()));
    let mut f = std::fs::File::open(file).map_err(|e| bad(format!("cannot open: {e}")))?;
    let mut len = [0u8; 8];
    f.read_exact(&mut len)
        .map_err(|e| bad(format!("not a safetensors file (no header length: {e})")))?;
    let len = u64::from_le_bytes(len);
    if len == 0 || len > MAX_HEADER_BYTES {
        return Err(bad(format!(
            "not a safetensors file (a header of {len} bytes; at most {MAX_HEADER_BYTES})"
        )));
    }
    let mut header = vec![0u8; len as usize];
    f.read_exact(&mut header)
        .map_err(|e| bad(format!("the header is cut short: {e}")))?;
    let header: Value =
        serde_json::from_slice(&header).map_err(|e| bad(format!("the header is not JSON: {e}")))?;
    let Some(meta) = header.get("__metadata__") else {
        return Ok(BTreeMap::new());
    };
    let meta = meta
        .as_object()
        .ok_or_else(|| bad("`__metadata__` is not an object".into()))?;
    meta.iter()
        .map(|(k, v)| match v {
            Value::String(s) => Ok((k.clone(), s.clone())),
            other => Err(bad(format!("`__metadata__.{k}` is {other}, not a string"))),
        })
        .collect()
}

/// What the adapter at `path` says about itself: the header metadata of `weights` (its
/// safetensors file: `path` itself, or the weights file inside a PEFT folder) and the sidecar
/// beside `path`, which wins ([`read_metadata`]).
pub fn describe_file(path: &Path, weights: &Path) -> Result<AdapterMetadata> {
    let bad = |why: String| EngineError::param("lora", format!("`{}`: {why}", path.display()));
    let header = header_metadata(weights)?;
    let sidecar = match sidecar_path(path) {
        Some(p) => {
            let text = std::fs::read_to_string(&p)
                .map_err(|e| bad(format!("cannot read the sidecar `{}`: {e}", p.display())))?;
            Some(
                serde_json::from_str::<Value>(&text)
                    .map_err(|e| bad(format!("the sidecar `{}` is not JSON: {e}", p.display())))?,
            )
        }
        None => None,
    };
    read_metadata(&header, sidecar.as_ref()).map_err(|d| bad(format!("metadata: {d}")))
}

/// How a backend reads its adapter files, shareable with a loading thread (no model in it).
pub trait AdapterFiles: Send + Sync {
    /// What the adapter at `path` (a `.safetensors` file or a PEFT folder) says about itself,
    /// from its header and sidecar, without reading its tensors: cheap enough to run over a
    /// whole library at a rescan.
    fn describe(&self, path: &Path) -> Result<AdapterMetadata>;
    /// Read the adapter's tensors (the slow part), checked as far as the file alone allows.
    fn load(&self, path: &Path) -> Result<LoadedAdapter>;
}

/// An adapter the model knows.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AdapterInfo {
    pub id: String,
    /// Current strength (0 = disabled).
    pub strength: f32,
    pub rank: usize,
    /// Parameters the adapter touches.
    pub targets: usize,
    /// What the adapter's files say about it (trigger words, recommended strength, group).
    #[serde(default, skip_serializing_if = "AdapterMetadata::is_empty")]
    pub metadata: AdapterMetadata,
}

/// What an adapter says about itself (an ACE-Step LoRA's safetensors header metadata and its
/// `NAME.json` sidecar): the words that call up what it was trained on, which a front end
/// prepends to the prompt while the adapter is enabled; the strength it is meant for; the group
/// a library shows it in; the model size it was trained for.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct AdapterMetadata {
    pub trigger_words: Vec<String>,
    pub recommended_strength: Option<f32>,
    pub group: Option<String>,
    /// "2B", "XL", as the file says.
    pub base_model: Option<String>,
    pub description: Option<String>,
}

impl AdapterMetadata {
    pub fn is_empty(&self) -> bool {
        self == &Self::default()
    }
}

/// Hot-swappable weight adapters (propagation class "global weights": the first forward after a
/// change uses it). Changing a strength must never re-read base weights from disk.
pub trait Adapters {
    fn list(&self) -> Vec<AdapterInfo>;
    /// Set the strength of adapter `id`; 0 disables it.
    fn set_strength(&mut self, id: &str, strength: f32) -> Result<()>;
    /// How this backend reads adapter files, for a library that registers them without loading
    /// and loads them beside the ticks; `None`: adapters cannot be added at run time.
    fn files(&self) -> Option<std::sync::Arc<dyn AdapterFiles>> {
        None
    }
    /// Add an adapter made by [`files`](Self::files)`().load`, addressed as `id`, disabled
    /// (strength 0) until [`set_strength`](Self::set_strength) enables it. `metadata` is what
    /// the library read from its files (its trigger words go into the prompts).
    fn install(
        &mut self,
        id: &str,
        metadata: AdapterMetadata,
        adapter: LoadedAdapter,
    ) -> Result<()> {
        let _ = (metadata, adapter);
        Err(EngineError::param(
            "lora",
            format!("this model cannot add the adapter `{id}` at run time"),
        ))
    }
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

    /// A safetensors file of one F32 tensor with `header` as its JSON header.
    fn safetensors(dir: &Path, name: &str, header: &str) -> PathBuf {
        let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
        bytes.extend_from_slice(header.as_bytes());
        bytes.extend_from_slice(&1.0f32.to_le_bytes());
        let p = dir.join(name);
        std::fs::write(&p, bytes).unwrap();
        p
    }

    #[test]
    fn header_metadata_reads_only_the_header_and_the_sidecar_wins() {
        let dir = std::env::temp_dir().join(format!("demon-adapter-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let tensor = r#""x":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}"#;
        let f = safetensors(
            &dir,
            "dusty.safetensors",
            &format!(
                r#"{{"__metadata__":{{"trigger_words":"lofi, tape","group":"chill"}},{tensor}}}"#
            ),
        );
        let m = describe_file(&f, &f).unwrap();
        assert_eq!(m.trigger_words, vec!["lofi", "tape"]);
        assert_eq!(m.group.as_deref(), Some("chill"));
        std::fs::write(
            dir.join("dusty.json"),
            r#"{"group": "dust", "recommended_strength": 0.5}"#,
        )
        .unwrap();
        let m = describe_file(&f, &f).unwrap();
        assert_eq!(m.group.as_deref(), Some("dust"));
        assert_eq!(m.recommended_strength, Some(0.5));
        assert_eq!(
            m.trigger_words,
            vec!["lofi", "tape"],
            "kept from the header"
        );
        let plain = safetensors(&dir, "plain.safetensors", &format!("{{{tensor}}}"));
        assert!(describe_file(&plain, &plain).unwrap().is_empty());
        // Broken files and sidecars are named.
        std::fs::write(dir.join("short.safetensors"), [1u8, 2]).unwrap();
        let e = header_metadata(&dir.join("short.safetensors"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("short.safetensors") && e.contains("not a safetensors"),
            "{e}"
        );
        let huge = dir.join("huge.safetensors");
        std::fs::write(&huge, u64::MAX.to_le_bytes()).unwrap();
        assert!(
            header_metadata(&huge)
                .unwrap_err()
                .to_string()
                .contains("header of")
        );
        let odd = safetensors(&dir, "odd.safetensors", r#"{"__metadata__":{"n":3}}"#);
        assert!(
            header_metadata(&odd)
                .unwrap_err()
                .to_string()
                .contains("`__metadata__.n`")
        );
        std::fs::write(dir.join("plain.json"), "{not json").unwrap();
        let e = describe_file(&plain, &plain).unwrap_err().to_string();
        assert!(e.contains("plain.json") && e.contains("not JSON"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
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
