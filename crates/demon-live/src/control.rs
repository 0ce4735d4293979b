//! Controls: the catalog of knobs, the `ControlMessage`s every front end sends, and the state the
//! runner keeps (targets, slew-limited effective values, curves, prompts, source).
//!
//! Every message is validated before anything changes: a bad message gets an error naming the
//! problem and the state stays as it was.

use std::collections::BTreeMap;

use demon_engine::{CfgMode, CurveSpec, DcwMode, STEP_CURVE_NAMES, SolverKind};
use serde::{Deserialize, Serialize};

use crate::error::{SessionError, SessionResult};

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

/// One knob of the catalog.
#[derive(Clone, Debug, Serialize)]
pub struct KnobSpec {
    pub name: &'static str,
    pub min: f64,
    pub max: f64,
    pub default: f64,
    /// Integer-valued knobs round.
    pub integer: bool,
    /// Slew-limited: large jumps are spread over time so sweeps do not click.
    pub slewed: bool,
    pub class: PropagationClass,
    pub help: &'static str,
}

#[allow(clippy::too_many_arguments)] // one row of the knob table, all fields positional
const fn knob(
    name: &'static str,
    min: f64,
    max: f64,
    default: f64,
    integer: bool,
    slewed: bool,
    class: PropagationClass,
    help: &'static str,
) -> KnobSpec {
    KnobSpec {
        name,
        min,
        max,
        default,
        integer,
        slewed,
        class,
        help,
    }
}

use PropagationClass::*;

/// Every knob a performer can turn.
pub const KNOBS: &[KnobSpec] = &[
    knob(
        "denoise",
        0.0,
        1.0,
        0.7,
        false,
        true,
        PerSlot,
        "How far each generation departs from the source (0 = the source, 1 = from noise).",
    ),
    knob(
        "seed",
        0.0,
        4_294_967_295.0,
        42.0,
        true,
        false,
        PerSlot,
        "Noise seed of new generations.",
    ),
    knob(
        "shift",
        1.0,
        6.0,
        3.0,
        false,
        true,
        PerSlot,
        "Flow shift of the timestep schedule.",
    ),
    knob(
        "steps",
        1.0,
        16.0,
        8.0,
        true,
        false,
        Structural,
        "Denoising steps per generation (S).",
    ),
    knob(
        "depth",
        1.0,
        8.0,
        4.0,
        true,
        false,
        Structural,
        "Generations in flight (ring depth D).",
    ),
    knob(
        "feedback",
        0.0,
        1.0,
        0.0,
        false,
        true,
        PerSlot,
        "Mix earlier outputs back into the source.",
    ),
    knob(
        "feedback_depth",
        1.0,
        8.0,
        1.0,
        true,
        false,
        PerSlot,
        "Which earlier output feeds back (1 = the newest).",
    ),
    knob(
        "structure",
        0.0,
        1.0,
        0.0,
        false,
        true,
        PerSlot,
        "How strongly the source's structure steers generation.",
    ),
    knob(
        "timbre",
        0.0,
        1.0,
        0.0,
        false,
        true,
        PerSlot,
        "How strongly the source's timbre steers generation.",
    ),
    knob(
        "blend",
        0.0,
        1.0,
        0.0,
        false,
        true,
        PerSlot,
        "Crossfade from prompt A (0) to prompt B (1).",
    ),
    knob(
        "velocity_scale",
        0.0,
        3.0,
        1.0,
        false,
        true,
        SharedPerStep,
        "Velocity multiplier: below 1 keeps the source, above 1 pushes change.",
    ),
    knob(
        "sde_denoise",
        0.0,
        1.0,
        1.0,
        false,
        true,
        SharedPerStep,
        "SDE source blend: 1 free, 0 pinned to the source (SDE solver).",
    ),
    knob(
        "ode_noise",
        0.0,
        2.0,
        0.0,
        false,
        true,
        SharedPerStep,
        "Noise injected after each Euler step.",
    ),
    knob(
        "x0_target_strength",
        0.0,
        1.0,
        0.0,
        false,
        true,
        SharedPerStep,
        "Pull toward the source in the refinement half.",
    ),
    knob(
        "guidance",
        1.0,
        10.0,
        1.0,
        false,
        true,
        SharedPerStep,
        "APG guidance away from the negative prompt (1 = off).",
    ),
    knob(
        "apg_momentum",
        -1.0,
        1.0,
        -0.75,
        false,
        true,
        SharedPerStep,
        "APG momentum.",
    ),
    knob(
        "cfg_rescale",
        0.0,
        1.0,
        0.0,
        false,
        true,
        SharedPerStep,
        "CFG rescale toward the unguided norm.",
    ),
    knob(
        "dcw",
        0.0,
        0.5,
        0.05,
        false,
        true,
        SharedPerStep,
        "DCW low-band scaler.",
    ),
    knob(
        "dcw_high",
        0.0,
        0.5,
        0.02,
        false,
        true,
        SharedPerStep,
        "DCW high-band scaler.",
    ),
    knob(
        "ch_g0",
        0.0,
        3.0,
        1.0,
        false,
        true,
        SharedPerStep,
        "Gain of latent channels 0-7 on the model input.",
    ),
    knob(
        "ch_g1",
        0.0,
        3.0,
        1.0,
        false,
        true,
        SharedPerStep,
        "Gain of latent channels 8-15.",
    ),
    knob(
        "ch_g2",
        0.0,
        3.0,
        1.0,
        false,
        true,
        SharedPerStep,
        "Gain of latent channels 16-23.",
    ),
    knob(
        "ch_g3",
        0.0,
        3.0,
        1.0,
        false,
        true,
        SharedPerStep,
        "Gain of latent channels 24-31.",
    ),
    knob(
        "ch_g4",
        0.0,
        3.0,
        1.0,
        false,
        true,
        SharedPerStep,
        "Gain of latent channels 32-39.",
    ),
    knob(
        "ch_g5",
        0.0,
        3.0,
        1.0,
        false,
        true,
        SharedPerStep,
        "Gain of latent channels 40-47.",
    ),
    knob(
        "ch_g6",
        0.0,
        3.0,
        1.0,
        false,
        true,
        SharedPerStep,
        "Gain of latent channels 48-55.",
    ),
    knob(
        "ch_g7",
        0.0,
        3.0,
        1.0,
        false,
        true,
        SharedPerStep,
        "Gain of latent channels 56-63.",
    ),
];

/// Per-frame curves a performer can draw: the seven per-step curves plus per-slot ones.
pub const CURVE_NAMES: [&str; 10] = [
    "velocity_scale",
    "sde_denoise",
    "ode_noise",
    "x0_target_strength",
    "guidance",
    "apg_momentum",
    "cfg_rescale",
    "initial_noise",
    "x0_target",
    "blend",
];

/// Look a knob up by name (LoRA knobs are `lora:<id>` and handled separately).
pub fn knob_spec(name: &str) -> Option<&'static KnobSpec> {
    KNOBS.iter().find(|k| k.name == name)
}

/// Prefix of LoRA strength knobs.
pub const LORA_PREFIX: &str = "lora:";

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

impl ControlMessage {
    /// The propagation class of what this message changes (for echoes and metrics).
    pub fn class(&self) -> PropagationClass {
        match self {
            Self::SetKnob { name, .. } => knob_spec(name).map_or(GlobalWeights, |k| k.class),
            Self::SetKnobs { values } => values
                .keys()
                .filter_map(|k| knob_spec(k))
                .map(|k| k.class)
                .next()
                .unwrap_or(SharedPerStep),
            Self::SetCurve { name, .. } => {
                if STEP_CURVE_NAMES.contains(&name.as_str()) {
                    SharedPerStep
                } else {
                    PerSlot
                }
            }
            Self::SetPrompt { .. }
            | Self::SetSolver { .. }
            | Self::SetCfgMode { .. }
            | Self::SetSource { .. } => PerSlot,
            Self::SetDcw { .. } => SharedPerStep,
            Self::SetLora { .. } => GlobalWeights,
            Self::SetLoopBand { .. }
            | Self::ClearLoopBand
            | Self::Seek { .. }
            | Self::SetPlaying { .. }
            | Self::SetSlew { .. } => Structural,
        }
    }
}

/// Validate a knob value; returns the value to store (rounded for integer knobs).
pub fn check_knob(name: &str, value: f64) -> SessionResult<f64> {
    let what = || format!("knob `{name}`");
    if !value.is_finite() {
        return Err(SessionError::bad_value(
            what(),
            format!("value {value} is not a finite number"),
        ));
    }
    if let Some(id) = name.strip_prefix(LORA_PREFIX) {
        if id.is_empty() {
            return Err(SessionError::bad_value(what(), "missing adapter id"));
        }
        if !(0.0..=2.0).contains(&value) {
            return Err(SessionError::bad_value(
                what(),
                format!("{value} is outside [0, 2]"),
            ));
        }
        return Ok(value);
    }
    let spec = knob_spec(name).ok_or_else(|| SessionError::UnknownKnob {
        name: name.to_string(),
    })?;
    if value < spec.min || value > spec.max {
        return Err(SessionError::bad_value(
            what(),
            format!("{value} is outside [{}, {}]", spec.min, spec.max),
        ));
    }
    Ok(if spec.integer { value.round() } else { value })
}

/// Knob values: what the performer asked for (`target`) and what the engine uses now
/// (`effective`, slew-limited toward the target).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct KnobState {
    pub target: BTreeMap<String, f64>,
    pub effective: BTreeMap<String, f64>,
    /// Units per second; 0 disables slew limiting.
    pub slew_per_second: f64,
}

impl Default for KnobState {
    fn default() -> Self {
        let values: BTreeMap<String, f64> = KNOBS
            .iter()
            .map(|k| (k.name.to_string(), k.default))
            .collect();
        Self {
            target: values.clone(),
            effective: values,
            slew_per_second: 4.0,
        }
    }
}

impl KnobState {
    pub fn get(&self, name: &str) -> f64 {
        self.effective
            .get(name)
            .copied()
            .or_else(|| knob_spec(name).map(|k| k.default))
            .unwrap_or(0.0)
    }

    /// Set a target (already validated). Unslewed knobs jump at once.
    pub fn set(&mut self, name: &str, value: f64) {
        self.target.insert(name.to_string(), value);
        let slewed = knob_spec(name).is_none_or(|k| k.slewed);
        if !slewed || self.slew_per_second <= 0.0 {
            self.effective.insert(name.to_string(), value);
        } else {
            self.effective.entry(name.to_string()).or_insert(value);
        }
    }

    /// Move every effective value toward its target by at most `slew · dt` (scaled to the knob's
    /// range). Returns true if anything changed.
    pub fn advance(&mut self, dt_seconds: f64) -> bool {
        let mut changed = false;
        for (name, &target) in &self.target {
            let cur = self.effective.get(name).copied().unwrap_or(target);
            if cur == target {
                continue;
            }
            let range = knob_spec(name).map_or(2.0, |k| k.max - k.min).max(1e-9);
            let step = if self.slew_per_second <= 0.0 {
                f64::INFINITY
            } else {
                self.slew_per_second * dt_seconds * range / 1.0
            };
            let next = if (target - cur).abs() <= step {
                target
            } else {
                cur + step * (target - cur).signum()
            };
            self.effective.insert(name.clone(), next);
            changed = true;
        }
        changed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn knob_validation() {
        assert_eq!(check_knob("denoise", 0.5), Ok(0.5));
        assert_eq!(check_knob("steps", 7.6), Ok(8.0));
        let e = check_knob("denoise", f64::NAN).unwrap_err();
        assert_eq!(e.code(), "bad_value");
        assert!(e.to_string().contains("not a finite"), "{e}");
        let e = check_knob("depth", 9.0).unwrap_err();
        assert_eq!(e.to_string(), "knob `depth`: 9 is outside [1, 8]");
        assert!(check_knob("steps", 0.0).is_err());
        let e = check_knob("wobble", 1.0).unwrap_err();
        assert_eq!(e.code(), "unknown_knob");
        assert!(e.to_string().contains("unknown knob"), "{e}");
        assert!(check_knob("lora:", 1.0).is_err());
        assert_eq!(check_knob("lora:funk", 1.2), Ok(1.2));
    }

    #[test]
    fn slew_limits_large_jumps() {
        let mut s = KnobState {
            slew_per_second: 2.0,
            ..Default::default()
        };
        s.set("denoise", 0.1);
        assert_eq!(s.get("denoise"), 0.7, "slewed knobs start where they were");
        s.advance(0.04); // 2 ranges/s · 0.04 s = 0.08 of the range
        assert!((s.get("denoise") - 0.62).abs() < 1e-12);
        for _ in 0..20 {
            s.advance(0.04);
        }
        assert_eq!(s.get("denoise"), 0.1);
        s.set("seed", 7.0);
        assert_eq!(s.get("seed"), 7.0, "discrete knobs jump");
        let mut s = KnobState {
            slew_per_second: 0.0,
            ..Default::default()
        };
        s.set("denoise", 0.2);
        assert_eq!(s.get("denoise"), 0.2);
    }

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
