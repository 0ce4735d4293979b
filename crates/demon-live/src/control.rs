//! The wire format of control: the `ControlMessage`s every front end sends (WebSocket, REST,
//! MCP, OSC, MIDI, scripts, session files) and the `SourceSpec`s they carry.
//!
//! What the messages set lives in [`crate::controls`] (the knob catalog, `Controls`), where
//! every message is validated before anything changes: a bad message gets an error naming the
//! problem and the state stays as it was.

use std::collections::BTreeMap;

use demon_engine::{AdapterMetadata, CfgMode, CurveSpec, DcwMode, SolverKind, Wavelet};
use serde::{Deserialize, Serialize};

use crate::automation::AutomationLane;
use crate::preset::{Preset, PresetReferences, PresetSource, PromptTask};

/// How fast a change reaches the output (demon.md §8).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PropagationClass {
    /// Read by every in-flight slot at every step: next tick.
    SharedPerStep,
    /// Fixed when a request is submitted: queue wait + S ticks.
    PerSlot,
    /// Model weights (LoRA): the first forward after the change.
    GlobalWeights,
    /// Ring shape (depth, steps): new slots on the next tick, old ones drain.
    Structural,
}

/// Where a source comes from. Files are decoded by the sender; the runner receives audio or a
/// latent, and a recording stores the latent, so replays never depend on files.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum SourceSpec {
    /// No source: text-to-music.
    None,
    /// Song `index` of `style` from the sketch library (sketch backend only).
    Library { style: String, index: u64 },
    /// An audio file, decoded on the sender's side before the message reaches the runner.
    File { path: String },
    /// 48 kHz stereo audio (planar), e.g. an upload.
    Audio {
        name: String,
        channels: Vec<Vec<f32>>,
    },
    /// A latent `[frames][channels]` (little-endian f32, base64).
    Latent {
        name: String,
        frames: usize,
        channels: usize,
        data_b64: String,
    },
}

/// What a separate reference steers: the `timbre` fader's voice or the `structure` fader's
/// rhythm and harmony (DEMON's timbre and structure sources).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReferenceRole {
    Timbre,
    Structure,
}

impl ReferenceRole {
    pub const ALL: [Self; 2] = [Self::Timbre, Self::Structure];

    /// This role's reference in a preset.
    pub fn in_preset(self, references: &PresetReferences) -> &PresetSource {
        match self {
            Self::Timbre => &references.timbre,
            Self::Structure => &references.structure,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Timbre => "timbre",
            Self::Structure => "structure",
        }
    }
}

/// Everything a front end can ask of a live session. Applied only between ticks.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum ControlMessage {
    SetKnob {
        name: String,
        value: f64,
    },
    SetKnobs {
        values: BTreeMap<String, f64>,
    },
    /// A per-frame curve over the song for a curve parameter; `None` removes it.
    SetCurve {
        name: String,
        curve: Option<CurveSpec>,
    },
    /// An automation lane over the song timeline for a knob (`lora:<id>` for a LoRA strength),
    /// followed by the playhead at every tick boundary; `None` removes it (the knob keeps the
    /// value the lane last gave it). While a lane is on, the knob refuses hand moves.
    SetAutomation {
        knob: String,
        lane: Option<AutomationLane>,
    },
    /// Fields left out stay as they are; an empty `prompt_b` or `negative` removes it.
    SetPrompt {
        #[serde(default)]
        prompt: Option<String>,
        #[serde(default)]
        prompt_b: Option<String>,
        #[serde(default)]
        negative: Option<String>,
        #[serde(default)]
        bpm: Option<f32>,
        #[serde(default)]
        key: Option<String>,
        /// Lyrics ("" removes them).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        lyrics: Option<String>,
        /// Beats per bar (0 removes it).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        time_signature: Option<u32>,
        /// The lyrics' language, e.g. "en" ("" removes it).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        language: Option<String>,
        /// What the conditioning is for; `auto` plays a cover while a source plays and
        /// text-to-music otherwise, as DEMON's live loop does.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        task: Option<PromptTask>,
    },
    /// Remove the BPM override: the tempo is again what the prompt (or the backend) implies.
    ClearBpm,
    SetSolver {
        solver: SolverKind,
    },
    SetCfgMode {
        mode: CfgMode,
    },
    SetDcw {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        enabled: Option<bool>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        mode: Option<DcwMode>,
        /// The band split's wavelet (`haar`, `db2`…`db8`, `sym2`…`sym8`).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        wavelet: Option<Wavelet>,
    },
    SetSource {
        source: SourceSpec,
    },
    /// A separate reference for the `timbre` or `structure` fader instead of the playing
    /// source's own; `none` clears it (the fader follows the source again). Per slot: it
    /// reaches generations submitted after it. A session file records it as a latent.
    SetReference {
        role: ReferenceRole,
        source: SourceSpec,
    },
    /// LoRA strength (0 disables).
    SetLora {
        id: String,
        strength: f64,
    },
    /// Put a library adapter (`crate::lora_library`) into the model, disabled: what a session
    /// file records when an adapter was read beside the ticks, so a replay reads the same file
    /// at the same tick. From a front end it only preloads an adapter the library registered
    /// under this `id` and `path`; `set_lora` loads one on first use by itself.
    InstallLora {
        id: String,
        path: String,
        #[serde(default, skip_serializing_if = "AdapterMetadata::is_empty")]
        metadata: AdapterMetadata,
    },
    SetLoopBand {
        start_s: f64,
        end_s: f64,
    },
    ClearLoopBand,
    Seek {
        seconds: f64,
    },
    SetPlaying {
        playing: bool,
    },
    /// Slew rate of slewed knobs in units per second (0 = no slew limiting).
    SetSlew {
        per_second: f64,
    },
    /// Make the whole performer-set state that of a preset ([`crate::preset`]), all or
    /// nothing. `source` is the preset's source as the runner takes it (audio, a latent, or
    /// `none`), resolved by the front end from `preset.source`; absent, the playing source
    /// stays. `references` are the preset's timbre and structure references resolved the same
    /// way (`none` clears one); a role left out keeps its reference (an upload the server
    /// cannot restore). A session file records the resolved source and references as latents.
    LoadPreset {
        preset: Box<Preset>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        source: Option<SourceSpec>,
        #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
        references: BTreeMap<ReferenceRole, SourceSpec>,
    },
}

/// Prefix of LoRA strength knobs: `lora:<id>` sets adapter `id`'s strength.
pub const LORA_PREFIX: &str = "lora:";

impl ControlMessage {
    /// The adapters this control sets or draws: what must be in the model before it applies.
    pub fn adapter_ids(&self) -> Vec<&str> {
        fn lora(knob: &str) -> Option<&str> {
            knob.strip_prefix(LORA_PREFIX)
        }
        match self {
            Self::SetLora { id, .. } | Self::InstallLora { id, .. } => vec![id.as_str()],
            Self::SetKnob { name, .. } => lora(name).into_iter().collect(),
            Self::SetKnobs { values } => values.keys().filter_map(|k| lora(k)).collect(),
            Self::SetAutomation { knob, .. } => lora(knob).into_iter().collect(),
            Self::LoadPreset { preset, .. } => preset
                .loras
                .keys()
                .map(String::as_str)
                .chain(preset.automation.keys().filter_map(|k| lora(k)))
                .collect(),
            _ => Vec::new(),
        }
    }

    /// Load `preset` with its own source and references, which a front end resolves
    /// (`source` absent, no `references`).
    pub fn load_preset(preset: Preset) -> Self {
        Self::LoadPreset {
            preset: Box::new(preset),
            source: None,
            references: BTreeMap::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_round_trip_as_json() {
        let m = ControlMessage::SetCurve {
            name: "ode_noise".into(),
            curve: Some(CurveSpec::Ramp {
                start: 0.0,
                end: 1.0,
            }),
        };
        let s = serde_json::to_string(&m).unwrap();
        assert_eq!(serde_json::from_str::<ControlMessage>(&s).unwrap(), m);
        assert!(
            serde_json::from_str::<ControlMessage>(r#"{"type":"set_knob","name":"denoise"}"#)
                .is_err()
        );
        assert!(serde_json::from_str::<ControlMessage>(r#"{"type":"explode"}"#).is_err());
        let m: ControlMessage =
            serde_json::from_str(r#"{"type":"set_prompt","prompt":"techno"}"#).unwrap();
        assert!(matches!(
            m,
            ControlMessage::SetPrompt {
                prompt: Some(_),
                prompt_b: None,
                ..
            }
        ));
    }
}
