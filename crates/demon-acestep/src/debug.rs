//! The parity harness behind `demon debug forward`: run one component of a weights folder (either
//! layout) on tensors read from a safetensors file named after the reference forward's arguments,
//! and save the result as tensor `out`. Only the files and configs the component needs are read,
//! so a folder holding just that component works (a diffusers `transformer/` alone for `dit`).
//!
//! | component           | inputs                                                                  | `out` |
//! |---------------------|-------------------------------------------------------------------------|-------|
//! | `text-encoder`      | `input_ids` `[1, L]` (any numeric dtype)                                | `last_hidden_state` `[1, L, H]` |
//! | `condition-encoder` | `text_hidden_states`, `text_attention_mask`, `lyric_hidden_states`, `lyric_attention_mask`, `refer_audio_acoustic_hidden_states_packed` | packed `[1, L, H]` |
//! | `dit`               | `hidden_states`, `timestep`, `timestep_r`, `encoder_hidden_states`, `context_latents` | velocity `[B, T, C]` |
//! | `vae-encode`        | `sample` `[B, channels, N]`                                             | latent mean `[B, C, N/hop]` |
//! | `vae-decode`        | `latents` `[B, C, T]`                                                   | audio `[B, channels, T·hop]` |
//! | `fsq-roundtrip`     | `hidden_states` `[1, T, C]`                                             | hint `[1, T, C]` |

use std::collections::HashMap;
use std::fmt;
use std::path::Path;
use std::str::FromStr;

use candle_core::{Device, Tensor};

use crate::condition::ConditionEncoder;
use crate::dit::Dit;
use crate::error::{AceStepError, Result};
use crate::fsq::{AudioDetokenizer, AudioTokenizer, round_trip};
use crate::silence::read_silence_latent;
use crate::text::TextEncoder;
use crate::vae::{VaeDecoder, VaeEncoder};
use crate::weights::{Layout, ModelFiles, SafetensorsFile};

/// A component `debug_forward` can run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Component {
    TextEncoder,
    ConditionEncoder,
    Dit,
    VaeEncode,
    VaeDecode,
    FsqRoundtrip,
}

impl Component {
    pub const ALL: [Component; 6] = [
        Component::TextEncoder,
        Component::ConditionEncoder,
        Component::Dit,
        Component::VaeEncode,
        Component::VaeDecode,
        Component::FsqRoundtrip,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Component::TextEncoder => "text-encoder",
            Component::ConditionEncoder => "condition-encoder",
            Component::Dit => "dit",
            Component::VaeEncode => "vae-encode",
            Component::VaeDecode => "vae-decode",
            Component::FsqRoundtrip => "fsq-roundtrip",
        }
    }
}

impl fmt::Display for Component {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Component {
    type Err = AceStepError;
    fn from_str(s: &str) -> Result<Self> {
        Component::ALL
            .into_iter()
            .find(|c| c.as_str() == s)
            .ok_or_else(|| {
                let names: Vec<&str> = Component::ALL.iter().map(|c| c.as_str()).collect();
                AceStepError::input(format!(
                    "unknown component `{s}` (one of {})",
                    names.join(", ")
                ))
            })
    }
}

struct Inputs {
    path: std::path::PathBuf,
    tensors: HashMap<String, Tensor>,
}

impl Inputs {
    fn get(&self, name: &str) -> Result<&Tensor> {
        self.tensors
            .get(name)
            .ok_or_else(|| AceStepError::MissingTensor {
                path: self.path.clone(),
                tensor: name.into(),
            })
    }
}

/// Run `component` of the model in `weights_dir` on `inputs` and write `out` to `out_path`.
/// Returns the output tensor too.
pub fn debug_forward(
    component: Component,
    weights_dir: &Path,
    inputs: &Path,
    out_path: &Path,
) -> Result<Tensor> {
    let dev = Device::Cpu;
    let file = SafetensorsFile::open(inputs)?;
    let names: Vec<String> = file.names().map(str::to_owned).collect();
    let mut tensors = HashMap::new();
    for n in names {
        let t = file.load(&n, &dev)?;
        tensors.insert(n, t);
    }
    let inp = Inputs {
        path: inputs.to_path_buf(),
        tensors,
    };
    let files = ModelFiles::discover(weights_dir, None)?;
    let out = match component {
        Component::TextEncoder => {
            let ids: Vec<u32> = inp
                .get("input_ids")?
                .flatten_all()?
                .to_vec1::<f32>()?
                .into_iter()
                .map(|v| v.max(0.0) as u32)
                .collect();
            files.require("text encoder")?;
            let cfg = files.read_text_encoder_config()?;
            TextEncoder::load(&files.open_text_encoder(&dev)?, &cfg)?.forward(&ids)?
        }
        Component::ConditionEncoder => {
            let need = match files.layout {
                Layout::Original => "dit",
                Layout::Diffusers => "condition encoder",
            };
            files.require(need)?;
            let ce = ConditionEncoder::load(&files.open_dit(&dev)?, &files.read_dit_config()?)?;
            let (states, _) = ce.forward(
                inp.get("text_hidden_states")?,
                inp.get("text_attention_mask")?,
                inp.get("lyric_hidden_states")?,
                inp.get("lyric_attention_mask")?,
                inp.get("refer_audio_acoustic_hidden_states_packed")?,
            )?;
            states
        }
        Component::Dit => {
            files.require("dit")?;
            let dit = Dit::load(&files.open_dit(&dev)?, &files.read_dit_config()?)?;
            let x = inp.get("hidden_states")?;
            let b = x.dim(0)?;
            let per_row = |name: &str| -> Result<Vec<f32>> {
                let v: Vec<f32> = inp.get(name)?.flatten_all()?.to_vec1()?;
                match v.len() {
                    1 => Ok(vec![v[0]; b]),
                    n if n == b => Ok(v),
                    n => Err(AceStepError::input(format!(
                        "`{name}` has {n} values for batch {b}"
                    ))),
                }
            };
            let t = per_row("timestep")?;
            let r = per_row("timestep_r")?;
            let enc = inp.get("encoder_hidden_states")?;
            let states = (0..b)
                .map(|i| enc.narrow(0, i, 1))
                .collect::<candle_core::Result<Vec<_>>>()?;
            dit.forward(x, &t, &r, &states, inp.get("context_latents")?)?
        }
        Component::VaeEncode => {
            files.require("vae")?;
            let cfg = files.read_vae_config()?;
            VaeEncoder::load(&files.open_vae(&dev)?, &cfg)?.forward(inp.get("sample")?)?
        }
        Component::VaeDecode => {
            files.require("vae")?;
            let cfg = files.read_vae_config()?;
            VaeDecoder::load(&files.open_vae(&dev)?, &cfg)?.forward(inp.get("latents")?)?
        }
        Component::FsqRoundtrip => {
            match files.layout {
                Layout::Original => files.require("dit")?,
                Layout::Diffusers => {
                    for part in ["audio tokenizer", "audio detokenizer", "condition encoder"] {
                        files.require(part)?;
                    }
                }
            }
            let cfg = files.read_dit_config()?;
            let w = files.open_dit(&dev)?;
            let silence = match &files.silence_latent {
                Some(p) => read_silence_latent(p, Some(cfg.audio_acoustic_hidden_dim))?,
                None => w.get_any("silence_latent")?,
            };
            let tok = AudioTokenizer::load(&w, &cfg)?;
            let detok = AudioDetokenizer::load(&w, &cfg)?;
            round_trip(&tok, &detok, inp.get("hidden_states")?, &silence)?
        }
    };
    let mut map = HashMap::new();
    map.insert("out".to_string(), out.contiguous()?);
    candle_core::safetensors::save(&map, out_path).map_err(|e| match e {
        candle_core::Error::Io(io) => AceStepError::io(out_path, io),
        other => AceStepError::invalid(out_path, other.to_string()),
    })?;
    Ok(out)
}
