//! Presets: the whole state a performer sets — prompts, every knob of the catalog, LoRA
//! strengths, drawn curves, automation lanes, solver modes, slew, the source and the timbre and
//! structure references (by reference) and the loop band —
//! as one versioned JSON document (`"preset_version": 1`, docs/protocol.md, "Presets").
//!
//! A preset is the state, not a list of changes: a field left out takes the catalog's default,
//! so loading one preset gives the same state whatever was playing before. This module is the
//! document alone (its fields, parsing with errors that name the field, the version); how a
//! preset is taken from a session's controls and applied to them, found at the end of a
//! recording or read from a file is [`crate::restore`]. Kept apart because the control message
//! that loads a preset carries one: the document must not depend on the controls.
//!
//! The source is saved as the session knows it: a library song, a file path (re-resolved
//! through the media folders by the front end on load) or an upload, which has no file and is
//! reported as not restorable when loaded. The timbre and structure references are saved
//! the same way.

use std::collections::BTreeMap;
use std::path::Path;

use demon_engine::{CfgMode, CurveSpec, DcwMode, SolverKind, Wavelet};
use serde::{Deserialize, Serialize};

use crate::automation::AutomationLane;
use crate::error::{SessionError, SessionResult};

/// The preset format version this build reads and writes.
pub const PRESET_VERSION: u32 = 1;

/// The largest preset document read (curves of points are the large part).
pub const MAX_PRESET_BYTES: usize = 4 << 20;

/// The whole performer-set state of a session.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Preset {
    /// Always [`PRESET_VERSION`]; anything else is refused.
    pub preset_version: u32,
    pub prompts: PresetPrompts,
    /// Knob targets by catalog name (`seed` included); knobs left out take their default.
    pub knobs: BTreeMap<String, f64>,
    /// LoRA strengths by adapter id.
    pub loras: BTreeMap<String, f64>,
    /// Drawn curves by curve name, as their specs.
    pub curves: BTreeMap<String, CurveSpec>,
    /// Knob automation lanes by knob name (`lora:<id>` for LoRA strengths).
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub automation: BTreeMap<String, AutomationLane>,
    pub solver: SolverKind,
    pub cfg_mode: CfgMode,
    pub dcw_enabled: bool,
    pub dcw_mode: DcwMode,
    /// The DCW band split's wavelet; left out when Haar (the default).
    #[serde(skip_serializing_if = "is_haar")]
    pub dcw_wavelet: Wavelet,
    /// Slew rate of slewed knobs in ranges per second.
    pub slew_per_second: f64,
    pub source: PresetSource,
    /// The separate references of the `timbre` and `structure` faders, saved as the source is.
    #[serde(skip_serializing_if = "PresetReferences::is_empty")]
    pub references: PresetReferences,
    /// The loop band in seconds of the song; `None` plays the whole song.
    pub loop_band: Option<PresetLoopBand>,
}

fn is_haar(w: &Wavelet) -> bool {
    *w == Wavelet::Haar
}

/// The prompts with every field a `Prompt` carries that a performer sets.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PresetPrompts {
    /// Prompt A's tags (style words, mood).
    pub prompt: String,
    pub prompt_b: Option<String>,
    pub negative: Option<String>,
    /// The BPM override (`None`: the tempo the prompt or the backend implies).
    pub bpm: Option<f32>,
    pub key: Option<String>,
    pub lyrics: String,
    pub language: Option<String>,
    pub time_signature: Option<u32>,
    /// The task asked for; absent: `auto` (a cover while a source plays).
    #[serde(skip_serializing_if = "PromptTask::is_auto")]
    pub task: PromptTask,
}

/// The task a prompt asks for ([`ControlMessage::SetPrompt`]'s `task`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PromptTask {
    /// Cover while a source plays, text-to-music otherwise.
    #[default]
    Auto,
    TextToMusic,
    Cover,
}

impl PromptTask {
    /// What a prompt's task reads as (`None`: auto; repaint is not a live task).
    pub fn of(task: Option<demon_engine::GenerationTask>) -> Self {
        match task {
            Some(demon_engine::GenerationTask::TextToMusic) => Self::TextToMusic,
            Some(demon_engine::GenerationTask::Cover) => Self::Cover,
            Some(demon_engine::GenerationTask::Repaint) | None => Self::Auto,
        }
    }

    pub fn is_auto(&self) -> bool {
        *self == Self::Auto
    }

    /// The task a prompt carries: `None` leaves it to the session (`Auto`).
    pub fn task(self) -> Option<demon_engine::GenerationTask> {
        match self {
            Self::Auto => None,
            Self::TextToMusic => Some(demon_engine::GenerationTask::TextToMusic),
            Self::Cover => Some(demon_engine::GenerationTask::Cover),
        }
    }
}

/// A loop band in seconds.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PresetLoopBand {
    pub start_s: f64,
    pub end_s: f64,
}

/// The references of the `timbre` and `structure` faders (`none`: the fader follows the
/// source's own). Kept apart from the control's role type so that the document does not
/// depend on the control messages (which carry a preset).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PresetReferences {
    pub timbre: PresetSource,
    pub structure: PresetSource,
}

impl PresetReferences {
    pub fn is_empty(&self) -> bool {
        self.timbre == PresetSource::None && self.structure == PresetSource::None
    }
}

/// Where the preset's source comes from, as the session knows it.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum PresetSource {
    /// No source (text-to-music).
    #[default]
    None,
    /// Song `index` of `style` of the backend's library.
    Library { style: String, index: u64 },
    /// A file on the server, re-resolved through the media folders when loaded.
    File { path: String },
    /// An upload: it has no file, so loading reports it as not restorable and keeps the source
    /// that plays.
    Upload { name: String },
}

impl PresetSource {
    /// The reference of a source the session shows as `name`: `library:STYLE:N` is a library
    /// song, an absolute path a file (file sources reach the session by their canonical path),
    /// anything else an upload.
    pub fn from_name(name: Option<&str>) -> Self {
        let Some(name) = name else {
            return Self::None;
        };
        if let Some(rest) = name.strip_prefix("library:") {
            let mut parts = rest.splitn(2, ':');
            let style = parts.next().unwrap_or("").to_string();
            if let Some(index) = parts.next().map_or(Some(0), |n| n.parse().ok()) {
                return Self::Library { style, index };
            }
        }
        if Path::new(name).is_absolute() {
            return Self::File {
                path: name.to_string(),
            };
        }
        Self::Upload {
            name: name.to_string(),
        }
    }
}

impl Preset {
    /// Parse a preset document; errors name the field (`prompts.bpm: invalid type ...`,
    /// `unknown field ...`). Values are checked when the preset is applied.
    pub fn from_json(text: &[u8]) -> SessionResult<Self> {
        if text.len() > MAX_PRESET_BYTES {
            return Err(SessionError::bad_value(
                "preset",
                format!("longer than {MAX_PRESET_BYTES} bytes"),
            ));
        }
        let de = &mut serde_json::Deserializer::from_slice(text);
        let preset: Preset = serde_path_to_error::deserialize(de).map_err(|e| {
            let path = e.path().to_string();
            let field = if path == "." {
                "preset".into()
            } else {
                format!("preset field `{path}`")
            };
            SessionError::bad_value(field, e.into_inner().to_string())
        })?;
        preset.check_version()?;
        Ok(preset)
    }

    /// Pretty JSON, as `GET /api/preset` and the UI's "Save preset" give it.
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_default()
    }

    pub(crate) fn check_version(&self) -> SessionResult<()> {
        if self.preset_version != PRESET_VERSION {
            return Err(SessionError::bad_value(
                "preset field `preset_version`",
                format!(
                    "{} is not a supported version (missing, or not {PRESET_VERSION})",
                    self.preset_version
                ),
            ));
        }
        Ok(())
    }

    /// The loop band in seconds, checked as numbers (the live core checks it against the song).
    pub fn checked_loop_band(&self) -> SessionResult<Option<(f64, f64)>> {
        let Some(b) = self.loop_band else {
            return Ok(None);
        };
        if !(b.start_s.is_finite()
            && b.end_s.is_finite()
            && b.start_s >= 0.0
            && b.end_s > b.start_s)
        {
            return Err(SessionError::bad_value(
                "preset field `loop_band`",
                format!("[{}, {}] s is not a range of times", b.start_s, b.end_s),
            ));
        }
        Ok(Some((b.start_s, b.end_s)))
    }
}
