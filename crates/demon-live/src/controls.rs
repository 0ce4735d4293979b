//! `Controls`: one typed value for everything a performer sets — knobs, drawn curves, prompts,
//! the source, LoRA strengths, solver, CFG mode, DCW and slew — validated once, when a control
//! arrives.
//!
//! The knob catalog ([`KNOBS`], [`Knob`], [`KnobValues`]) is written once, in the
//! `knob_catalog!` table below: names, ranges, defaults, slew and propagation class come from
//! that one place, and the values are typed fields, so nothing on the tick path looks a knob up
//! by name or formats one (`ch_g{i}`). Curves are parsed from their `CurveSpec` when they arrive
//! and kept evaluated at the current window length ([`Controls::set_frames`] re-evaluates them
//! when the song or window changes); a spec that cannot be evaluated is refused then, never
//! dropped later.
//!
//! The offline render and the live core both hold a `Controls` and turn it into slot requests
//! through the one builder, [`crate::requests`]; the wire format stays `ControlMessage`
//! ([`Controls::apply`] applies one).

use std::collections::BTreeMap;
use std::sync::Arc;

use candle_core::Tensor;
use demon_engine::{
    CfgMode, Curve, CurveSpec, DcwMode, GenerationTask, Prompt, STEP_CURVE_NAMES, SolverKind,
    SourceHints, Wavelet,
};
use serde::Serialize;

use crate::analysis::SourceAnalysis;
use crate::automation::AutomationLane;
use crate::control::{ControlMessage, PropagationClass, ReferenceRole};
use crate::error::{SessionError, SessionResult};
use crate::facts::BackendFacts;

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
    /// What the number counts (`×` for a multiplier, `fraction` for 0..1 amounts).
    pub unit: &'static str,
    pub help: &'static str,
}

/// Defines, from one table, the `Knob` identities, the `KNOBS` catalog in the same order and
/// the `KnobValues` struct with one typed field per knob.
macro_rules! knob_catalog {
    ($( $variant:ident $field:ident [$min:expr, $max:expr] = $default:expr,
        $integer:expr, $slewed:expr, $class:ident, $unit:expr, $help:expr; )*) => {
        /// A knob of the catalog, by identity.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum Knob { $($variant),* }

        /// Every knob a performer can turn, in [`Knob`] order.
        pub const KNOBS: &[KnobSpec] = &[$(KnobSpec {
            name: stringify!($field),
            min: $min,
            max: $max,
            default: $default,
            integer: $integer,
            slewed: $slewed,
            class: PropagationClass::$class,
            unit: $unit,
            help: $help,
        }),*];

        impl Knob {
            /// Every knob, in catalog order.
            pub const ALL: &[Knob] = &[$(Knob::$variant),*];
        }

        /// One value per knob, as typed fields.
        #[derive(Clone, Copy, Debug, PartialEq)]
        pub struct KnobValues { $(pub $field: f64),* }

        impl Default for KnobValues {
            /// The catalog's defaults.
            fn default() -> Self {
                Self { $($field: $default),* }
            }
        }

        impl KnobValues {
            pub fn get(&self, knob: Knob) -> f64 {
                match knob { $(Knob::$variant => self.$field),* }
            }

            pub fn set(&mut self, knob: Knob, value: f64) {
                match knob { $(Knob::$variant => self.$field = value),* }
            }
        }
    };
}

knob_catalog! {
    Denoise denoise [0.0, 1.0] = 0.7, false, true, PerSlot, "fraction",
        "How far each generation departs from the source (0 = the source, 1 = from noise).";
    Seed seed [0.0, 4_294_967_295.0] = 42.0, true, false, PerSlot, "integer",
        "Noise seed of new generations.";
    Shift shift [1.0, 6.0] = 3.0, false, true, PerSlot, "×",
        "Flow shift of the timestep schedule.";
    Steps steps [1.0, 16.0] = 8.0, true, false, Structural, "steps",
        "Denoising steps per generation (S).";
    Depth depth [1.0, 8.0] = 4.0, true, false, Structural, "generations",
        "Generations in flight (ring depth D).";
    Feedback feedback [0.0, 1.0] = 0.0, false, true, PerSlot, "fraction",
        "Mix earlier outputs back into the source.";
    FeedbackDepth feedback_depth [1.0, 8.0] = 1.0, true, false, PerSlot, "generations back",
        "Which earlier output feeds back (1 = the newest).";
    Structure structure [0.0, 1.0] = 0.0, false, true, PerSlot, "fraction",
        "How strongly the source's structure steers generation.";
    Timbre timbre [0.0, 1.0] = 0.0, false, true, PerSlot, "fraction",
        "How strongly the source's timbre steers generation.";
    Blend blend [0.0, 1.0] = 0.0, false, true, PerSlot, "fraction",
        "Crossfade from prompt A (0) to prompt B (1).";
    VelocityScale velocity_scale [0.0, 3.0] = 1.0, false, true, SharedPerStep, "×",
        "Velocity multiplier: below 1 keeps the source, above 1 pushes change.";
    SdeDenoise sde_denoise [0.0, 1.0] = 1.0, false, true, SharedPerStep, "fraction",
        "SDE source blend: 1 free, 0 pinned to the source (SDE solver).";
    OdeNoise ode_noise [0.0, 2.0] = 0.0, false, true, SharedPerStep, "σ per step",
        "Noise injected after each Euler step.";
    X0TargetStrength x0_target_strength [0.0, 1.0] = 0.0, false, true, SharedPerStep, "fraction",
        "Pull toward the source in the refinement half.";
    Guidance guidance [1.0, 10.0] = 1.0, false, true, SharedPerStep, "scale",
        "APG guidance away from the negative prompt (1 = off).";
    ApgMomentum apg_momentum [-1.0, 1.0] = -0.75, false, true, SharedPerStep, "coefficient",
        "APG momentum.";
    CfgRescale cfg_rescale [0.0, 1.0] = 0.0, false, true, SharedPerStep, "fraction",
        "CFG rescale toward the unguided norm.";
    Dcw dcw [0.0, 0.5] = 0.05, false, true, SharedPerStep, "scale",
        "DCW low-band scaler.";
    DcwHigh dcw_high [0.0, 0.5] = 0.02, false, true, SharedPerStep, "scale",
        "DCW high-band scaler.";
    ChG0 ch_g0 [0.0, 3.0] = 1.0, false, true, SharedPerStep, "×",
        "Gain of latent channels 0-7 on the model input.";
    ChG1 ch_g1 [0.0, 3.0] = 1.0, false, true, SharedPerStep, "×",
        "Gain of latent channels 8-15.";
    ChG2 ch_g2 [0.0, 3.0] = 1.0, false, true, SharedPerStep, "×",
        "Gain of latent channels 16-23.";
    ChG3 ch_g3 [0.0, 3.0] = 1.0, false, true, SharedPerStep, "×",
        "Gain of latent channels 24-31.";
    ChG4 ch_g4 [0.0, 3.0] = 1.0, false, true, SharedPerStep, "×",
        "Gain of latent channels 32-39.";
    ChG5 ch_g5 [0.0, 3.0] = 1.0, false, true, SharedPerStep, "×",
        "Gain of latent channels 40-47.";
    ChG6 ch_g6 [0.0, 3.0] = 1.0, false, true, SharedPerStep, "×",
        "Gain of latent channels 48-55.";
    ChG7 ch_g7 [0.0, 3.0] = 1.0, false, true, SharedPerStep, "×",
        "Gain of latent channels 56-63.";
    ChK13 ch_k13 [0.0, 3.0] = 1.0, false, true, SharedPerStep, "×",
        "Gain of keystone channel 13 in place of its group's (1 = the group's).";
    ChK14 ch_k14 [0.0, 3.0] = 1.0, false, true, SharedPerStep, "×",
        "Gain of keystone channel 14 in place of its group's (1 = the group's).";
    ChK19 ch_k19 [0.0, 3.0] = 1.0, false, true, SharedPerStep, "×",
        "Gain of keystone channel 19 in place of its group's (1 = the group's).";
    ChK23 ch_k23 [0.0, 3.0] = 1.0, false, true, SharedPerStep, "×",
        "Gain of keystone channel 23 in place of its group's (1 = the group's).";
    ChK29 ch_k29 [0.0, 3.0] = 1.0, false, true, SharedPerStep, "×",
        "Gain of keystone channel 29 in place of its group's (1 = the group's).";
    ChK56 ch_k56 [0.0, 3.0] = 1.0, false, true, SharedPerStep, "×",
        "Gain of keystone channel 56 in place of its group's (1 = the group's).";
    LoudnessMatch loudness_match [0.0, 1.0] = 0.0, true, false, SharedPerStep, "off/on",
        "Keep what plays at the source's loudness (target_lufs without a source), moving slowly.";
    TargetLufs target_lufs [-40.0, -6.0] = -14.0, false, false, SharedPerStep, "LUFS",
        "Loudness the matcher aims at when no source plays.";
}

impl Knob {
    pub fn spec(self) -> &'static KnobSpec {
        &KNOBS[self as usize]
    }

    pub fn name(self) -> &'static str {
        self.spec().name
    }

    pub fn from_name(name: &str) -> Option<Knob> {
        KNOBS
            .iter()
            .position(|k| k.name == name)
            .map(|i| Knob::ALL[i])
    }
}

impl KnobValues {
    /// DEMON's keystone channels (`demon_engine::KEYSTONE_CHANNELS`) and their gains,
    /// `ch_k13..ch_k56`: a gain other than 1 replaces the channel's group gain.
    pub fn keystone_gains(&self) -> [(usize, f64); 6] {
        let g = [
            self.ch_k13,
            self.ch_k14,
            self.ch_k19,
            self.ch_k23,
            self.ch_k29,
            self.ch_k56,
        ];
        std::array::from_fn(|i| (demon_engine::KEYSTONE_CHANNELS[i], g[i]))
    }

    /// The eight channel-gain groups, `ch_g0..ch_g7`.
    pub fn channel_gains(&self) -> [f64; 8] {
        [
            self.ch_g0, self.ch_g1, self.ch_g2, self.ch_g3, self.ch_g4, self.ch_g5, self.ch_g6,
            self.ch_g7,
        ]
    }
}

impl ControlMessage {
    /// The propagation class of what this message changes (for echoes and metrics).
    pub fn class(&self) -> PropagationClass {
        use PropagationClass::*;
        match self {
            Self::SetKnob { name, .. } => knob_spec(name).map_or(GlobalWeights, |k| k.class),
            Self::SetKnobs { values } => values
                .keys()
                .filter_map(|k| knob_spec(k))
                .map(|k| k.class)
                .next()
                .unwrap_or(SharedPerStep),
            Self::SetCurve { name, .. } => CurveId::from_name(name).map_or(PerSlot, CurveId::class),
            Self::SetAutomation { knob, .. } => knob_spec(knob).map_or(GlobalWeights, |k| k.class),
            Self::SetPrompt { .. }
            | Self::ClearBpm
            | Self::SetSolver { .. }
            | Self::SetCfgMode { .. }
            | Self::SetSource { .. }
            | Self::SetReference { .. } => PerSlot,
            Self::SetDcw { .. } => SharedPerStep,
            Self::SetLora { .. } | Self::InstallLora { .. } => GlobalWeights,
            Self::SetLoopBand { .. }
            | Self::ClearLoopBand
            | Self::Seek { .. }
            | Self::SetPlaying { .. }
            | Self::SetSlew { .. }
            | Self::LoadPreset { .. } => Structural,
        }
    }
}

/// Look a knob up by name (LoRA knobs are `lora:<id>` and handled separately).
pub fn knob_spec(name: &str) -> Option<&'static KnobSpec> {
    Knob::from_name(name).map(Knob::spec)
}

/// Prefix of LoRA strength knobs (defined beside the control messages that name them).
pub use crate::control::LORA_PREFIX;

/// The range of LoRA strengths.
pub const LORA_RANGE: (f64, f64) = (0.0, 2.0);

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
        if !(LORA_RANGE.0..=LORA_RANGE.1).contains(&value) {
            return Err(SessionError::bad_value(
                what(),
                format!("{value} is outside [{}, {}]", LORA_RANGE.0, LORA_RANGE.1),
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

/// A per-frame curve a performer can draw, by identity.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum CurveId {
    VelocityScale,
    SdeDenoise,
    OdeNoise,
    X0TargetStrength,
    Guidance,
    ApgMomentum,
    CfgRescale,
    InitialNoise,
    X0Target,
    Blend,
    Mask,
    Dcw,
    DcwHigh,
    ChannelGain,
}

/// Every curve name, in [`CurveId`] order: the seven per-step curves (the shared lane), then
/// the per-slot ones, the DCW scalers and the channel gains' amount over the song.
pub const CURVE_NAMES: [&str; 14] = [
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
    "mask",
    "dcw",
    "dcw_high",
    "channel_gain",
];

impl CurveId {
    pub const ALL: [CurveId; 14] = [
        Self::VelocityScale,
        Self::SdeDenoise,
        Self::OdeNoise,
        Self::X0TargetStrength,
        Self::Guidance,
        Self::ApgMomentum,
        Self::CfgRescale,
        Self::InitialNoise,
        Self::X0Target,
        Self::Blend,
        Self::Mask,
        Self::Dcw,
        Self::DcwHigh,
        Self::ChannelGain,
    ];

    pub fn name(self) -> &'static str {
        CURVE_NAMES[self as usize]
    }

    pub fn from_name(name: &str) -> Option<CurveId> {
        CURVE_NAMES
            .iter()
            .position(|n| *n == name)
            .map(|i| Self::ALL[i])
    }

    /// Read by every in-flight slot at every step (the shared lane), or fixed per request.
    pub fn class(self) -> PropagationClass {
        match self {
            Self::InitialNoise | Self::X0Target | Self::Blend | Self::Mask => {
                PropagationClass::PerSlot
            }
            _ => PropagationClass::SharedPerStep,
        }
    }

    /// Curves that act on the source (and do nothing without one).
    pub fn needs_source(self) -> bool {
        matches!(
            self,
            Self::InitialNoise | Self::X0Target | Self::Mask | Self::X0TargetStrength
        )
    }

    /// Refuse values outside what the solver accepts for this curve.
    fn check(self, curve: &Curve) -> SessionResult<()> {
        let name = self.name();
        match self {
            _ if STEP_CURVE_NAMES.contains(&name) => {
                let mut probe = demon_engine::StepCurves::default();
                *probe.field_mut(name)? = Some(curve.clone());
                Ok(probe.validate()?)
            }
            Self::Dcw | Self::DcwHigh => Ok(curve.check_range(name, -1.0, 1.0)?),
            _ => Ok(curve.check_range(name, 0.0, 1.0)?),
        }
    }
}

/// A drawn curve: the spec as the performer sent it, and its values at the current length.
#[derive(Clone, Debug, PartialEq)]
pub struct DrawnCurve {
    pub spec: CurveSpec,
    pub curve: Curve,
}

/// The prompts: A, an optional B that inherits A's fields with its own tags, and an optional
/// negative (also A's fields with its own tags). `a` holds every `Prompt` field (lyrics,
/// language, time signature) although the wire protocol sets only tags, bpm and key today.
#[derive(Clone, Debug, PartialEq)]
pub struct Prompts {
    pub a: Prompt,
    pub b: Option<String>,
    pub negative: Option<String>,
}

impl Prompts {
    pub fn new(a: Prompt) -> Self {
        Self {
            a,
            b: None,
            negative: None,
        }
    }

    /// Prompt B as a whole prompt (A's fields, B's tags).
    pub fn b_prompt(&self) -> Option<Prompt> {
        self.b.as_ref().map(|t| self.with_tags(t))
    }

    /// The negative prompt as a whole prompt (A's fields, its own tags).
    pub fn negative_prompt(&self) -> Option<Prompt> {
        self.negative.as_ref().map(|t| self.with_tags(t))
    }

    fn with_tags(&self, tags: &str) -> Prompt {
        Prompt {
            tags: tags.to_string(),
            ..self.a.clone()
        }
    }

    pub fn validate(&self) -> SessionResult<()> {
        self.a.validate()?;
        Ok(())
    }
}

/// The session's source: a latent `[1, T, C]` with the name it is shown by.
#[derive(Clone, Debug)]
pub struct SourceRef {
    pub name: String,
    pub latent: Tensor,
    /// Bumped whenever the source changes, so caches keyed on it expire.
    pub version: u64,
}

impl PartialEq for SourceRef {
    /// Same name, version and latent values (a latent that cannot be read compares unequal).
    fn eq(&self, other: &Self) -> bool {
        let values = |t: &Tensor| -> Option<Vec<u32>> {
            let v: Vec<f32> = t.flatten_all().and_then(|f| f.to_vec1()).ok()?;
            Some(v.into_iter().map(f32::to_bits).collect())
        };
        self.name == other.name
            && self.version == other.version
            && self.latent.dims() == other.latent.dims()
            && values(&self.latent).is_some_and(|a| Some(a) == values(&other.latent))
    }
}

/// A LoRA strength: what was asked and what the model uses now (slew-limited), and the
/// adapter's trigger words (from its metadata), in the prompts while the target is above 0.
#[derive(Clone, Debug, PartialEq)]
struct Strength {
    target: f64,
    effective: f64,
    triggers: Vec<String>,
}

/// What applying a control changed, beyond the values themselves: the session reacts to
/// these (conditionings rebuilt, the ring resized).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Changed {
    pub prompts: bool,
    pub depth: Option<usize>,
}

/// What following the automation lanes at a tick boundary changed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LaneMoves {
    /// Some knob's target moved (front ends are told, as of a hand move).
    pub targets: bool,
    /// A LoRA lane switched an adapter with trigger words on or off.
    pub prompts: bool,
}

/// Everything a performer sets, validated. Two `Controls` are equal when every value, curve,
/// prompt and the source are.
#[derive(Clone, Debug, PartialEq)]
pub struct Controls {
    target: KnobValues,
    effective: KnobValues,
    /// Units of a knob's range per second; 0 disables slew limiting.
    slew_per_second: f64,
    loras: BTreeMap<String, Strength>,
    curves: BTreeMap<CurveId, DrawnCurve>,
    /// Knob automation lanes by knob name (`lora:<id>` for LoRA strengths), checked when set;
    /// the live core follows them at every tick boundary ([`Controls::follow_lanes`]).
    lanes: BTreeMap<String, AutomationLane>,
    /// Length the curves are evaluated at (the generation window, in latent frames).
    frames: usize,
    pub prompts: Prompts,
    pub solver: SolverKind,
    pub cfg_mode: CfgMode,
    pub dcw_enabled: bool,
    pub dcw_mode: DcwMode,
    /// The wavelet of DCW's band split.
    pub dcw_wavelet: Wavelet,
    source: Option<SourceRef>,
    /// Separate references of the timbre and structure faders (`None`: the source's own).
    timbre_reference: Option<SourceRef>,
    structure_reference: Option<SourceRef>,
    /// Bumped whenever the source or a reference changes, so caches keyed on it expire.
    source_version: u64,
    /// What was measured on the source (tempo, key, loudness), when it was analysed.
    source_analysis: Option<Arc<SourceAnalysis>>,
}

impl Controls {
    /// The catalog's defaults for a window of `frames` latent frames.
    pub fn new(prompt: Prompt, frames: usize) -> Self {
        Self {
            target: KnobValues::default(),
            effective: KnobValues::default(),
            slew_per_second: 4.0,
            loras: BTreeMap::new(),
            curves: BTreeMap::new(),
            lanes: BTreeMap::new(),
            frames: frames.max(1),
            prompts: Prompts::new(prompt),
            solver: SolverKind::Ode,
            cfg_mode: CfgMode::Initialize,
            dcw_enabled: true,
            dcw_mode: DcwMode::Double,
            dcw_wavelet: Wavelet::Haar,
            source: None,
            timbre_reference: None,
            structure_reference: None,
            source_version: 0,
            source_analysis: None,
        }
    }

    /// Every control value back to the catalog's defaults (knobs, LoRA strengths, curves,
    /// prompts, solver modes, slew), keeping the source and the window length: a preset is
    /// applied on top of this, so fields it leaves out are the defaults.
    pub fn reset_values(&mut self) {
        let fresh = Controls::new(Prompt::default(), self.frames);
        *self = Controls {
            source: self.source.take(),
            timbre_reference: self.timbre_reference.take(),
            structure_reference: self.structure_reference.take(),
            source_version: self.source_version,
            source_analysis: self.source_analysis.take(),
            ..fresh
        };
    }

    /// Effective knob values (slew-limited toward the targets): what requests are built from.
    pub fn knobs(&self) -> &KnobValues {
        &self.effective
    }

    /// What the performer asked for.
    pub fn targets(&self) -> &KnobValues {
        &self.target
    }

    pub fn slew_per_second(&self) -> f64 {
        self.slew_per_second
    }

    pub fn seed(&self) -> u64 {
        self.effective.seed as u64
    }

    pub fn steps(&self) -> usize {
        self.effective.steps as usize
    }

    pub fn depth(&self) -> usize {
        self.effective.depth as usize
    }

    /// A drawn curve, at the current window length.
    pub fn curve(&self, id: CurveId) -> Option<&Curve> {
        self.curves.get(&id).map(|d| &d.curve)
    }

    pub fn curves(&self) -> impl Iterator<Item = (CurveId, &DrawnCurve)> {
        self.curves.iter().map(|(k, v)| (*k, v))
    }

    /// The window length curves are evaluated at.
    pub fn frames(&self) -> usize {
        self.frames
    }

    pub fn source(&self) -> Option<&SourceRef> {
        self.source.as_ref()
    }

    /// The separate reference set for `role`, if any.
    pub fn reference(&self, role: ReferenceRole) -> Option<&SourceRef> {
        match role {
            ReferenceRole::Timbre => self.timbre_reference.as_ref(),
            ReferenceRole::Structure => self.structure_reference.as_ref(),
        }
    }

    /// What the `timbre` fader steers toward: its reference, else the source.
    pub fn timbre_latent(&self) -> Option<&Tensor> {
        self.reference(ReferenceRole::Timbre)
            .or(self.source())
            .map(|s| &s.latent)
    }

    /// The trigger words of the enabled adapters (target above 0), in adapter order, each
    /// once: DEMON prepends them to the prompt while an adapter plays.
    pub fn trigger_words(&self) -> Vec<&str> {
        let mut out: Vec<&str> = Vec::new();
        for s in self.loras.values().filter(|s| s.target > 0.0) {
            for w in &s.triggers {
                if !out.contains(&w.as_str()) {
                    out.push(w);
                }
            }
        }
        out
    }

    /// What was measured on the source, when it was analysed.
    pub fn source_analysis(&self) -> Option<&SourceAnalysis> {
        self.source_analysis.as_deref()
    }

    /// The prompts as the conditioner is given them. The trigger words of the enabled adapters
    /// come first in prompts A and B. While a source plays, prompt A carries
    /// the source's measured tempo and key as hints for what it leaves open, and a prompt that
    /// names no task asks for a cover (DEMON's live loop plays ACE-Step's cover task whenever
    /// a source plays). `prompts` itself stays what the performer set: presets save that.
    pub fn conditioning_prompts(&self) -> Prompts {
        let mut p = self.prompts.clone();
        let triggers = self.trigger_words();
        if !triggers.is_empty() {
            let words = triggers.join(", ");
            let with = |tags: &str| -> String {
                if tags.trim().is_empty() {
                    words.clone()
                } else {
                    format!("{words}, {tags}")
                }
            };
            let (a, b) = (with(&p.a.tags), p.b.as_deref().map(&with));
            (p.a.tags, p.b) = (a, b);
        }
        if self.source.is_some() {
            p.a.task.get_or_insert(GenerationTask::Cover);
            p.a.hints = self
                .source_analysis
                .as_ref()
                .map(|a| a.hints())
                .filter(|h| h != &SourceHints::default());
        }
        p
    }

    /// Changes whenever the source or a reference does (a cache key).
    pub fn source_version(&self) -> u64 {
        self.source_version
    }

    /// LoRA strengths as (id, effective, target): a fader slewing has them apart.
    pub fn lora_strengths(&self) -> impl Iterator<Item = (&str, f64, f64)> {
        self.loras
            .iter()
            .map(|(k, v)| (k.as_str(), v.effective, v.target))
    }

    /// Set a knob by name (catalog knobs and `lora:<id>`), validated against the catalog and,
    /// for LoRA strengths, the backend's adapters. Unslewed knobs jump at once. A knob that
    /// follows an automation lane is refused: the lane would take it back at the next tick.
    pub fn set_knob(
        &mut self,
        name: &str,
        value: f64,
        facts: &BackendFacts,
    ) -> SessionResult<Changed> {
        self.check_not_automated(name)?;
        self.store_knob(name, value, facts)
    }

    fn check_not_automated(&self, name: &str) -> SessionResult<()> {
        if self.lanes.contains_key(name) {
            return Err(SessionError::bad_value(
                format!("knob `{name}`"),
                "it follows an automation lane; clear the lane (set_automation with `lane: null`) to move it by hand",
            ));
        }
        Ok(())
    }

    /// [`Self::set_knob`] without the automation check (what a lane itself sets).
    fn store_knob(
        &mut self,
        name: &str,
        value: f64,
        facts: &BackendFacts,
    ) -> SessionResult<Changed> {
        let v = check_knob(name, value)?;
        let Some(id) = name.strip_prefix(LORA_PREFIX) else {
            return Ok(self.set_checked(name, v));
        };
        facts.check_adapter(id)?;
        let triggers = facts.adapter_triggers.get(id).cloned().unwrap_or_default();
        let was_on = self.loras.get(id).is_some_and(|s| s.target > 0.0);
        let mut changed = self.set_checked(name, v);
        if let Some(s) = self.loras.get_mut(id) {
            // Enabling or disabling an adapter with trigger words changes the prompts.
            changed.prompts |= !triggers.is_empty() && was_on != (v > 0.0);
            s.triggers = triggers;
        }
        Ok(changed)
    }

    /// Set an already validated value.
    fn set_checked(&mut self, name: &str, v: f64) -> Changed {
        let jump = self.slew_per_second <= 0.0;
        if let Some(id) = name.strip_prefix(LORA_PREFIX) {
            let s = self.loras.entry(id.to_string()).or_insert(Strength {
                target: v,
                effective: v,
                triggers: Vec::new(),
            });
            s.target = v;
            if jump {
                s.effective = v;
            }
            return Changed::default();
        }
        let Some(knob) = Knob::from_name(name) else {
            return Changed::default();
        };
        self.target.set(knob, v);
        if jump || !knob.spec().slewed {
            self.effective.set(knob, v);
        }
        Changed {
            depth: (knob == Knob::Depth).then_some(v as usize),
            ..Default::default()
        }
    }

    /// Set a knob's target and effective value at once (initial configurations).
    pub fn init_knob(&mut self, name: &str, value: f64, facts: &BackendFacts) -> SessionResult<()> {
        let v = check_knob(name, value)?;
        if let Some(id) = name.strip_prefix(LORA_PREFIX) {
            facts.check_adapter(id)?;
            self.loras.insert(
                id.to_string(),
                Strength {
                    target: v,
                    effective: v,
                    triggers: facts.adapter_triggers.get(id).cloned().unwrap_or_default(),
                },
            );
        } else if let Some(k) = Knob::from_name(name) {
            self.target.set(k, v);
            self.effective.set(k, v);
        }
        Ok(())
    }

    /// Slew rate in ranges per second (0 = no slew limiting).
    pub fn set_slew(&mut self, per_second: f64) -> SessionResult<()> {
        if !(per_second.is_finite() && (0.0..=1000.0).contains(&per_second)) {
            return Err(SessionError::bad_value(
                "slew rate",
                format!("{per_second} is outside [0, 1000] per second"),
            ));
        }
        self.slew_per_second = per_second;
        Ok(())
    }

    /// Turn slew limiting off (every knob jumps to the value set; renders).
    pub fn set_slew_off(&mut self) {
        self.slew_per_second = 0.0;
    }

    /// Draw (or with `None`, remove) a curve; parsed and range-checked here, once.
    pub fn set_curve(&mut self, name: &str, spec: Option<&CurveSpec>) -> SessionResult<()> {
        let id = CurveId::from_name(name).ok_or_else(|| SessionError::UnknownCurve {
            name: name.to_string(),
            known: CURVE_NAMES.join(", "),
        })?;
        match spec {
            Some(spec) => {
                let curve = spec.to_curve(name, self.frames)?;
                id.check(&curve)?;
                self.curves.insert(
                    id,
                    DrawnCurve {
                        spec: spec.clone(),
                        curve,
                    },
                );
            }
            None => {
                self.curves.remove(&id);
            }
        }
        Ok(())
    }

    /// Put an automation lane on a knob (or with `None`, take it off; the knob keeps the value
    /// the lane last gave it). Any knob of the catalog but the ring's shape (`depth`, `steps`)
    /// and any adapter's `lora:<id>`; every point's value is checked against the knob's range.
    pub fn set_lane(
        &mut self,
        knob: &str,
        lane: Option<&AutomationLane>,
        facts: &BackendFacts,
    ) -> SessionResult<()> {
        let what = || format!("automation lane of `{knob}`");
        if let Some(id) = knob.strip_prefix(LORA_PREFIX) {
            facts.check_adapter(id)?;
        } else {
            let spec = knob_spec(knob).ok_or_else(|| SessionError::UnknownKnob {
                name: knob.to_string(),
            })?;
            if spec.class == PropagationClass::Structural {
                return Err(SessionError::bad_value(
                    what(),
                    format!("`{knob}` reshapes the ring and cannot follow a lane"),
                ));
            }
        }
        let Some(lane) = lane else {
            self.lanes.remove(knob);
            return Ok(());
        };
        lane.check_shape(knob)?;
        for (i, p) in lane.points.iter().enumerate() {
            check_knob(knob, p.value).map_err(|e| {
                SessionError::bad_value(format!("{} point {i}", what()), e.to_string())
            })?;
        }
        self.lanes.insert(knob.to_string(), lane.clone());
        Ok(())
    }

    /// The automation lanes by knob name.
    pub fn lanes(&self) -> &BTreeMap<String, AutomationLane> {
        &self.lanes
    }

    /// Set every automated knob's target to its lane's value `at_s` seconds into the song (the
    /// playhead at a tick boundary). Slewed knobs then slew toward it as from a hand.
    pub fn follow_lanes(&mut self, at_s: f64, facts: &BackendFacts) -> SessionResult<LaneMoves> {
        let mut moves = LaneMoves::default();
        if self.lanes.is_empty() {
            return Ok(moves);
        }
        // Taken out while the knobs are set (and put back whatever happens): no copy per tick.
        let lanes = std::mem::take(&mut self.lanes);
        let mut result = Ok(());
        for (name, lane) in &lanes {
            let before = self.target_value(name);
            match self.store_knob(name, lane.value_at(at_s), facts) {
                Ok(c) => {
                    moves.prompts |= c.prompts;
                    moves.targets |= self.target_value(name) != before;
                }
                Err(e) => {
                    result = Err(e);
                    break;
                }
            }
        }
        self.lanes = lanes;
        result.map(|()| moves)
    }

    /// A knob's target by name (`lora:<id>` included); `None` for a LoRA never set.
    fn target_value(&self, name: &str) -> Option<f64> {
        match name.strip_prefix(LORA_PREFIX) {
            Some(id) => self.loras.get(id).map(|s| s.target),
            None => Knob::from_name(name).map(|k| self.target.get(k)),
        }
    }

    /// Evaluate every drawn curve at a new window length.
    pub fn set_frames(&mut self, frames: usize) -> SessionResult<()> {
        let frames = frames.max(1);
        if frames == self.frames {
            return Ok(());
        }
        let mut curves = self.curves.clone();
        for (id, d) in curves.iter_mut() {
            d.curve = d.spec.to_curve(id.name(), frames)?;
        }
        self.curves = curves;
        self.frames = frames;
        Ok(())
    }

    /// What was measured on the source [`set_source`](Self::set_source) made.
    pub fn set_source_analysis(&mut self, analysis: Option<SourceAnalysis>) {
        self.source_analysis = analysis.map(Arc::new);
    }

    /// Make `latent` (`[1, T, C]`, any length) the reference of `role`, or remove it.
    pub fn set_reference(&mut self, role: ReferenceRole, reference: Option<(String, Tensor)>) {
        self.source_version += 1;
        let r = reference.map(|(name, latent)| SourceRef {
            name,
            latent,
            version: self.source_version,
        });
        match role {
            ReferenceRole::Timbre => self.timbre_reference = r,
            ReferenceRole::Structure => self.structure_reference = r,
        }
    }

    /// Make `latent` (`[1, T, C]`) the source, or remove it (its analysis goes with it).
    pub fn set_source(&mut self, source: Option<(String, Tensor)>) {
        self.source_version += 1;
        self.source_analysis = None;
        self.source = source.map(|(name, latent)| SourceRef {
            name,
            latent,
            version: self.source_version,
        });
    }

    /// Apply one control message (the wire format). Every value is checked before anything
    /// changes: on error the controls are as they were. Messages that act on the session
    /// rather than on a control value (sources, the loop band, seek, play) are refused here;
    /// the live core handles them.
    pub fn apply(&mut self, msg: &ControlMessage, facts: &BackendFacts) -> SessionResult<Changed> {
        match msg {
            ControlMessage::SetKnob { name, value } => self.set_knob(name, *value, facts),
            ControlMessage::SetKnobs { values } => {
                let checked = values
                    .iter()
                    .map(|(k, v)| {
                        self.check_not_automated(k)?;
                        let v = check_knob(k, *v)?;
                        if let Some(id) = k.strip_prefix(LORA_PREFIX) {
                            facts.check_adapter(id)?;
                        }
                        Ok((k, v))
                    })
                    .collect::<SessionResult<Vec<_>>>()?;
                let mut changed = Changed::default();
                for (k, v) in checked {
                    // LoRA strengths through `store_knob`, so enabling one with trigger words
                    // changes the prompts as `set_lora` does.
                    let c = if k.starts_with(LORA_PREFIX) {
                        self.store_knob(k, v, facts)?
                    } else {
                        self.set_checked(k, v)
                    };
                    changed.depth = c.depth.or(changed.depth);
                    changed.prompts |= c.prompts;
                }
                Ok(changed)
            }
            ControlMessage::SetLora { id, strength } => {
                self.set_knob(&format!("{LORA_PREFIX}{id}"), *strength, facts)
            }
            ControlMessage::SetCurve { name, curve } => {
                self.set_curve(name, curve.as_ref())?;
                Ok(Changed::default())
            }
            ControlMessage::SetAutomation { knob, lane } => {
                self.set_lane(knob, lane.as_ref(), facts)?;
                Ok(Changed::default())
            }
            ControlMessage::SetPrompt {
                prompt,
                prompt_b,
                negative,
                bpm,
                key,
                lyrics,
                time_signature,
                language,
                task,
            } => {
                let mut p = self.prompts.clone();
                if let Some(t) = prompt {
                    p.a.tags = t.clone();
                }
                if let Some(l) = lyrics {
                    p.a.lyrics = l.clone();
                }
                if let Some(ts) = time_signature {
                    p.a.time_signature = (*ts != 0).then_some(*ts);
                }
                if let Some(l) = language {
                    p.a.language = (!l.trim().is_empty()).then(|| l.trim().to_string());
                }
                if let Some(t) = task {
                    p.a.task = t.task();
                }
                if let Some(b) = bpm {
                    p.a.bpm = Some(*b);
                }
                if let Some(k) = key {
                    p.a.key = (!k.is_empty()).then(|| k.clone());
                }
                if let Some(b) = prompt_b {
                    p.b = (!b.trim().is_empty()).then(|| b.clone());
                }
                if let Some(n) = negative {
                    p.negative = (!n.trim().is_empty()).then(|| n.clone());
                }
                p.validate()?;
                self.prompts = p;
                Ok(Changed {
                    prompts: true,
                    ..Default::default()
                })
            }
            ControlMessage::ClearBpm => {
                self.prompts.a.bpm = None;
                Ok(Changed {
                    prompts: true,
                    ..Default::default()
                })
            }
            ControlMessage::SetSolver { solver } => {
                self.solver = *solver;
                Ok(Changed::default())
            }
            ControlMessage::SetCfgMode { mode } => {
                self.cfg_mode = *mode;
                Ok(Changed::default())
            }
            ControlMessage::SetDcw {
                enabled,
                mode,
                wavelet,
            } => {
                if let Some(e) = enabled {
                    self.dcw_enabled = *e;
                }
                if let Some(m) = mode {
                    self.dcw_mode = *m;
                }
                if let Some(w) = wavelet {
                    self.dcw_wavelet = *w;
                }
                Ok(Changed::default())
            }
            ControlMessage::SetSlew { per_second } => {
                self.set_slew(*per_second)?;
                Ok(Changed::default())
            }
            ControlMessage::SetSource { .. }
            | ControlMessage::SetReference { .. }
            | ControlMessage::SetLoopBand { .. }
            | ControlMessage::ClearLoopBand
            | ControlMessage::Seek { .. }
            | ControlMessage::SetPlaying { .. }
            | ControlMessage::InstallLora { .. }
            | ControlMessage::LoadPreset { .. } => Err(SessionError::bad_value(
                "control",
                "sources, references, presets, adapter installs, the loop band, seek and play act on a live session, not on a control value",
            )),
        }
    }

    /// Move every effective value toward its target by at most `slew · dt` of the knob's range
    /// (LoRA strengths: of [0, 2]). Returns true if anything changed.
    pub fn advance(&mut self, dt_seconds: f64) -> bool {
        let slew = self.slew_per_second;
        let step = |range: f64, cur: f64, target: f64| -> f64 {
            let step = if slew <= 0.0 {
                f64::INFINITY
            } else {
                slew * dt_seconds * range.max(1e-9)
            };
            if (target - cur).abs() <= step {
                target
            } else {
                cur + step * (target - cur).signum()
            }
        };
        let mut changed = false;
        for &k in Knob::ALL {
            let (cur, target) = (self.effective.get(k), self.target.get(k));
            if cur != target {
                let spec = k.spec();
                self.effective
                    .set(k, step(spec.max - spec.min, cur, target));
                changed = true;
            }
        }
        for s in self.loras.values_mut() {
            if s.effective != s.target {
                s.effective = step(LORA_RANGE.1 - LORA_RANGE.0, s.effective, s.target);
                changed = true;
            }
        }
        changed
    }

    /// Effective knob values by name, LoRA strengths as `lora:<id>` (for status and echoes).
    pub fn knob_map(&self) -> BTreeMap<String, f64> {
        self.map(&self.effective, |s| s.effective)
    }

    /// Target knob values by name.
    pub fn target_map(&self) -> BTreeMap<String, f64> {
        self.map(&self.target, |s| s.target)
    }

    fn map(&self, values: &KnobValues, lora: impl Fn(&Strength) -> f64) -> BTreeMap<String, f64> {
        let mut m: BTreeMap<String, f64> = Knob::ALL
            .iter()
            .map(|&k| (k.name().to_string(), values.get(k)))
            .collect();
        for (id, s) in &self.loras {
            m.insert(format!("{LORA_PREFIX}{id}"), lora(s));
        }
        m
    }

    /// Drawn curves by name, as their specs.
    pub fn curve_specs(&self) -> BTreeMap<String, CurveSpec> {
        self.curves
            .iter()
            .map(|(id, d)| (id.name().to_string(), d.spec.clone()))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::facts::test_facts as facts;

    #[test]
    fn the_catalog_and_the_typed_fields_agree() {
        assert_eq!(Knob::ALL.len(), KNOBS.len());
        let defaults = KnobValues::default();
        for (i, &k) in Knob::ALL.iter().enumerate() {
            assert_eq!(k as usize, i);
            assert_eq!(Knob::from_name(k.name()), Some(k));
            assert_eq!(defaults.get(k), k.spec().default, "{}", k.name());
            let mut v = defaults;
            v.set(k, 0.123);
            assert_eq!(v.get(k), 0.123);
        }
        assert_eq!(defaults.channel_gains(), [1.0; 8]);
        for (i, id) in CurveId::ALL.iter().enumerate() {
            assert_eq!(*id as usize, i);
            assert_eq!(CurveId::from_name(id.name()), Some(*id));
        }
    }

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
        let f = facts();
        let mut c = Controls::new(Prompt::tags("house"), 100);
        c.set_slew(2.0).unwrap();
        c.set_knob("denoise", 0.1, &f).unwrap();
        assert_eq!(c.knobs().denoise, 0.7, "slewed knobs start where they were");
        c.advance(0.04); // 2 ranges/s · 0.04 s = 0.08 of the range
        assert!((c.knobs().denoise - 0.62).abs() < 1e-12);
        for _ in 0..20 {
            c.advance(0.04);
        }
        assert_eq!(c.knobs().denoise, 0.1);
        c.set_knob("seed", 7.0, &f).unwrap();
        assert_eq!(c.seed(), 7, "discrete knobs jump");
        // A LoRA strength starts where it is first set, then slews over [0, 2].
        c.set_knob("lora:funk", 1.0, &f).unwrap();
        assert_eq!(
            c.lora_strengths()
                .map(|(id, e, _)| (id, e))
                .collect::<Vec<_>>(),
            [("funk", 1.0)]
        );
        c.set_knob("lora:funk", 0.0, &f).unwrap();
        c.advance(0.1);
        assert!((c.lora_strengths().next().unwrap().1 - 0.6).abs() < 1e-12);
        let mut c = Controls::new(Prompt::tags("house"), 100);
        c.set_slew(0.0).unwrap();
        c.set_knob("denoise", 0.2, &f).unwrap();
        assert_eq!(c.knobs().denoise, 0.2);
    }

    #[test]
    fn a_bad_control_changes_nothing() {
        let f = facts();
        let mut c = Controls::new(Prompt::tags("house"), 100);
        let before = (c.target_map(), c.curve_specs(), c.prompts.clone());
        let bad = [
            ControlMessage::SetKnobs {
                values: [("denoise".to_string(), 0.2), ("depth".to_string(), 99.0)].into(),
            },
            ControlMessage::SetKnob {
                name: "lora:polka".into(),
                value: 1.0,
            },
            ControlMessage::SetCurve {
                name: "sde_denoise".into(),
                curve: Some(CurveSpec::Constant { value: 5.0 }),
            },
            ControlMessage::SetCurve {
                name: "wobble".into(),
                curve: None,
            },
            ControlMessage::SetPrompt {
                prompt: Some("techno".into()),
                prompt_b: None,
                negative: None,
                bpm: Some(1e6),
                key: None,
                lyrics: None,
                time_signature: None,
                language: None,
                task: None,
            },
            ControlMessage::SetSlew { per_second: -1.0 },
            ControlMessage::Seek { seconds: 1.0 },
        ];
        let codes: Vec<&str> = bad
            .iter()
            .map(|m| c.apply(m, &f).unwrap_err().code())
            .collect();
        assert_eq!(
            codes,
            [
                "bad_value",
                "not_found",
                "bad_value",
                "unknown_curve",
                "bad_value",
                "bad_value",
                "bad_value"
            ]
        );
        assert_eq!(before, (c.target_map(), c.curve_specs(), c.prompts.clone()));
    }

    #[test]
    fn trigger_words_join_the_prompts_while_their_adapter_is_enabled() {
        let mut f = facts();
        f.adapter_triggers
            .insert("funk".into(), vec!["slap bass".into(), "funky".into()]);
        let mut c = Controls::new(Prompt::tags("house"), 100);
        c.prompts.b = Some("techno".into());
        assert_eq!(c.conditioning_prompts().a.tags, "house");
        let on = c.set_knob("lora:funk", 0.8, &f).unwrap();
        assert!(on.prompts, "enabling changes the prompts");
        let p = c.conditioning_prompts();
        assert_eq!(p.a.tags, "slap bass, funky, house");
        assert_eq!(p.b.as_deref(), Some("slap bass, funky, techno"));
        assert_eq!(c.prompts.a.tags, "house", "what the performer set stays");
        // A strength change while enabled needs no new conditioning; disabling does.
        assert!(!c.set_knob("lora:funk", 1.2, &f).unwrap().prompts);
        assert!(c.set_knob("lora:funk", 0.0, &f).unwrap().prompts);
        assert_eq!(c.conditioning_prompts().a.tags, "house");
        // An adapter without trigger words never touches the prompts.
        f.adapter_triggers.clear();
        assert!(!c.set_knob("lora:funk", 1.0, &f).unwrap().prompts);
        assert_eq!(c.conditioning_prompts().a.tags, "house");
    }

    #[test]
    fn a_lora_lane_switches_its_trigger_words_as_it_crosses_zero() {
        use crate::automation::{AutomationLane, LaneInterpolation, LanePoint};
        let mut f = facts();
        f.adapter_triggers
            .insert("funk".into(), vec!["slap bass".into()]);
        let mut c = Controls::new(Prompt::tags("house"), 100);
        let lane = AutomationLane {
            points: vec![
                LanePoint {
                    at_s: 0.0,
                    value: 0.0,
                },
                LanePoint {
                    at_s: 1.0,
                    value: 0.8,
                },
            ],
            interpolation: LaneInterpolation::Step,
        };
        c.set_lane("lora:funk", Some(&lane), &f).unwrap();
        let off = c.follow_lanes(0.5, &f).unwrap();
        assert!(off.targets, "an adapter never set now has a strength");
        assert!(!off.prompts);
        assert_eq!(c.conditioning_prompts().a.tags, "house");
        let on = c.follow_lanes(1.5, &f).unwrap();
        assert_eq!((on.targets, on.prompts), (true, true));
        assert_eq!(c.conditioning_prompts().a.tags, "slap bass, house");
        // Same place, nothing moves; the hand is refused while the lane is on.
        assert_eq!(c.follow_lanes(1.6, &f).unwrap(), LaneMoves::default());
        assert!(c.set_knob("lora:funk", 0.2, &f).is_err());
        let back = c.follow_lanes(0.2, &f).unwrap();
        assert_eq!((back.targets, back.prompts), (true, true));
        assert_eq!(c.conditioning_prompts().a.tags, "house");
        c.set_lane("lora:funk", None, &f).unwrap();
        assert!(c.set_knob("lora:funk", 0.2, &f).is_ok());
    }

    #[test]
    fn a_bpm_override_can_be_cleared() {
        let f = facts();
        let mut c = Controls::new(Prompt::tags("house"), 10);
        let set = ControlMessage::SetPrompt {
            prompt: None,
            prompt_b: None,
            negative: None,
            bpm: Some(128.0),
            key: None,
            lyrics: None,
            time_signature: None,
            language: None,
            task: None,
        };
        c.apply(&set, &f).unwrap();
        assert_eq!(c.prompts.a.bpm, Some(128.0));
        let changed = c.apply(&ControlMessage::ClearBpm, &f).unwrap();
        assert!(
            changed.prompts,
            "the conditioning is rebuilt at the implied tempo"
        );
        assert_eq!(c.prompts.a.bpm, None);
        assert_eq!(c.prompts.a.tags, "house");
    }

    #[test]
    fn curves_are_evaluated_once_and_again_at_a_new_length() {
        let mut c = Controls::new(Prompt::tags("house"), 5);
        let ramp = CurveSpec::Ramp {
            start: 0.0,
            end: 1.0,
        };
        c.set_curve("blend", Some(&ramp)).unwrap();
        assert_eq!(c.curve(CurveId::Blend).unwrap().to_frames(5).len(), 5);
        assert_eq!(c.curve(CurveId::Blend).unwrap().len(), 5);
        c.set_frames(9).unwrap();
        assert_eq!(c.curve(CurveId::Blend).unwrap().len(), 9);
        assert_eq!(c.curve_specs()["blend"], ramp);
        c.set_curve("blend", None).unwrap();
        assert!(c.curve(CurveId::Blend).is_none());
    }
}
