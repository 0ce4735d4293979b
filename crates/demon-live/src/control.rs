//! The wire format of control: the `ControlMessage`s every front end sends (WebSocket, REST,
//! MCP, OSC, MIDI, scripts, session files) and the `SourceSpec`s they carry.
//!
//! What the messages set lives in [`crate::controls`] (the knob catalog, `Controls`), where
//! every message is validated before anything changes: a bad message gets an error naming the
//! problem and the state stays as it was.

use std::collections::BTreeMap;

use demon_engine::{CfgMode, CurveSpec, DcwMode, SolverKind};
use serde::{Deserialize, Serialize};

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
    },
    SetSolver {
        solver: SolverKind,
    },
    SetCfgMode {
        mode: CfgMode,
    },
    SetDcw {
        #[serde(default)]
        enabled: Option<bool>,
        #[serde(default)]
        mode: Option<DcwMode>,
    },
    SetSource {
        source: SourceSpec,
    },
    /// LoRA strength (0 disables).
    SetLora {
        id: String,
        strength: f64,
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
