//! The sketch's adapter files: the analog of a LoRA file for a model whose "weights" are the
//! prior over its library. A sketch adapter is one `.safetensors` file holding the tensor
//! [`STYLE_PRIOR_TENSOR`], F32 `[STYLE_COUNT]`, the extra prior weight it gives each style (in
//! [`Style::ALL`] order) at strength 1, with the same header metadata and `NAME.json` sidecar
//! as an ACE-Step LoRA (trigger words, recommended strength, group). Loaded by a library
//! (`demon_engine::AdapterFiles`) and installed into the denoiser beside the built-in styles.

use std::collections::BTreeMap;
use std::path::Path;

use candle_core::{DType, Device};
use demon_engine::{AdapterFiles, AdapterMetadata, EngineError, LoadedAdapter, Result};

use crate::style::{STYLE_COUNT, Style};

/// The one tensor of a sketch adapter file.
pub const STYLE_PRIOR_TENSOR: &str = "sketch.style_prior";

/// The largest prior weight a file may give one style (the built-in style adapters go to 2).
pub const MAX_STYLE_PRIOR: f32 = 4.0;

/// What a loaded sketch adapter file holds: extra prior weight per style at strength 1.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct StylePrior(pub [f32; STYLE_COUNT]);

fn bad(path: &Path, why: impl std::fmt::Display) -> EngineError {
    EngineError::param("lora", format!("`{}`: {why}", path.display()))
}

/// Reads sketch adapter files for a library.
#[derive(Clone, Copy, Debug, Default)]
pub struct SketchAdapterFiles;

impl AdapterFiles for SketchAdapterFiles {
    fn describe(&self, path: &Path) -> Result<AdapterMetadata> {
        if path.is_dir() {
            return Err(bad(
                path,
                "a sketch adapter is one .safetensors file, not a folder",
            ));
        }
        demon_engine::describe_file(path, path)
    }

    fn load(&self, path: &Path) -> Result<LoadedAdapter> {
        if path.is_dir() {
            return Err(bad(
                path,
                "a sketch adapter is one .safetensors file, not a folder",
            ));
        }
        let tensors = candle_core::safetensors::load(path, &Device::Cpu)
            .map_err(|e| bad(path, format!("not a readable safetensors file: {e}")))?;
        let t = tensors.get(STYLE_PRIOR_TENSOR).ok_or_else(|| {
            bad(
                path,
                format!(
                    "no tensor `{STYLE_PRIOR_TENSOR}` (a sketch adapter holds F32 [{STYLE_COUNT}])"
                ),
            )
        })?;
        if t.dtype() != DType::F32 || t.dims() != [STYLE_COUNT] {
            return Err(bad(
                path,
                format!(
                    "`{STYLE_PRIOR_TENSOR}` is {:?} {:?}, not F32 [{STYLE_COUNT}]",
                    t.dtype(),
                    t.dims()
                ),
            ));
        }
        let values: Vec<f32> = t.to_vec1()?;
        let mut prior = [0f32; STYLE_COUNT];
        for (i, (slot, v)) in prior.iter_mut().zip(values).enumerate() {
            if !(v.is_finite() && (0.0..=MAX_STYLE_PRIOR).contains(&v)) {
                return Err(bad(
                    path,
                    format!(
                        "`{STYLE_PRIOR_TENSOR}`[{i}] ({}) is {v}, outside [0, {MAX_STYLE_PRIOR}]",
                        Style::ALL[i].name()
                    ),
                ));
            }
            *slot = v;
        }
        Ok(LoadedAdapter::new(path.to_path_buf(), StylePrior(prior)))
    }
}

/// Write a sketch adapter file: `prior` (per style, [`Style::ALL`] order) as
/// [`STYLE_PRIOR_TENSOR`], `metadata` as the header's `__metadata__` strings. The format is
/// plain safetensors, so any safetensors writer makes the same file.
pub fn write_style_adapter(
    path: &Path,
    prior: &StylePrior,
    metadata: &BTreeMap<String, String>,
) -> std::io::Result<()> {
    let bytes = STYLE_COUNT * 4;
    let mut header = serde_json::Map::new();
    if !metadata.is_empty() {
        header.insert("__metadata__".into(), serde_json::to_value(metadata)?);
    }
    header.insert(
        STYLE_PRIOR_TENSOR.into(),
        serde_json::json!({"dtype": "F32", "shape": [STYLE_COUNT], "data_offsets": [0, bytes]}),
    );
    let mut text = serde_json::to_string(&header)?;
    // The data starts 8-byte aligned, as safetensors writers keep it.
    while (8 + text.len()) % 8 != 0 {
        text.push(' ');
    }
    let mut out = (text.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(text.as_bytes());
    for v in prior.0 {
        out.extend_from_slice(&v.to_le_bytes());
    }
    std::fs::write(path, out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_written_adapter_reads_back_and_bad_ones_are_named() {
        let dir = std::env::temp_dir().join(format!("demon-sketch-adapter-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("tekno.safetensors");
        let prior = StylePrior([0.0, 1.5, 0.0, 0.0, 0.25, 0.0]);
        let meta = BTreeMap::from([("trigger_words".to_string(), "warehouse, acid".to_string())]);
        write_style_adapter(&f, &prior, &meta).unwrap();
        let files = SketchAdapterFiles;
        assert_eq!(
            files.describe(&f).unwrap().trigger_words,
            vec!["warehouse", "acid"]
        );
        let loaded: StylePrior = files.load(&f).unwrap().into_payload().unwrap();
        assert_eq!(loaded, prior);
        let e = files.load(&dir).unwrap_err().to_string();
        assert!(e.contains("not a folder"), "{e}");
        write_style_adapter(&f, &StylePrior([0.0, 9.0, 0.0, 0.0, 0.0, 0.0]), &meta).unwrap();
        let e = files.load(&f).unwrap_err().to_string();
        assert!(e.contains("[1] (techno) is 9"), "{e}");
        std::fs::write(&f, b"garbage").unwrap();
        let e = files.load(&f).unwrap_err().to_string();
        assert!(e.contains("tekno.safetensors"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
