//! What one slot generates: `SlotRequest` and its parts (demon.md §2.3).
//!
//! Everything in a request is fixed at submission (propagation class B: queue wait + S ticks).
//! The seven curves in [`StepCurves`] can additionally be overridden for every in-flight slot
//! through the [`crate::SharedLane`] (class A: next tick).

use candle_core::Tensor;
use serde::{Deserialize, Serialize};

use crate::backend::Conditioning;
use crate::curve::Curve;
use crate::error::{EngineError, Result};
use crate::schedule::ScheduleParams;

/// Default APG momentum (ACE-Step's `MomentumBuffer`).
pub const DEFAULT_APG_MOMENTUM: f32 = -0.75;

/// Integration method.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SolverKind {
    /// Deterministic flow-matching Euler.
    #[default]
    Ode,
    /// Re-noise from the predicted clean latent with fresh noise at every step.
    Sde,
}

impl std::str::FromStr for SolverKind {
    type Err = EngineError;
    fn from_str(s: &str) -> Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "ode" => Ok(Self::Ode),
            "sde" => Ok(Self::Sde),
            other => Err(EngineError::param(
                "solver",
                format!("unknown solver `{other}` (ode, sde)"),
            )),
        }
    }
}

/// How the unconditional velocity for guidance is obtained (demon.md §6).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CfgMode {
    /// A negative forward pass at every step (≈ 2× cost).
    Full,
    /// A negative forward pass at the slot's first step only, cached afterwards.
    #[default]
    Initialize,
    /// No negative pass: the slot's initial noise stands in for the unconditional velocity.
    #[serde(rename = "self")]
    SelfNoise,
}

impl std::str::FromStr for CfgMode {
    type Err = EngineError;
    fn from_str(s: &str) -> Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "full" => Ok(Self::Full),
            "initialize" | "init" => Ok(Self::Initialize),
            "self" => Ok(Self::SelfNoise),
            other => Err(EngineError::param(
                "cfg-mode",
                format!("unknown CFG mode `{other}` (full, initialize, self)"),
            )),
        }
    }
}

/// Fraction of the schedule during which a condition is active: `start ≤ i/N < end`.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct StepRange {
    pub start: f32,
    pub end: f32,
}

impl Default for StepRange {
    fn default() -> Self {
        Self {
            start: 0.0,
            end: 1.0,
        }
    }
}

impl StepRange {
    pub fn is_full(&self) -> bool {
        self.start <= 0.0 && self.end >= 1.0
    }

    pub fn contains(&self, step: usize, steps: usize) -> bool {
        let p = step as f32 / steps.max(1) as f32;
        self.start <= p && p < self.end
    }

    pub fn validate(&self) -> Result<()> {
        if !(self.start.is_finite() && self.end.is_finite() && self.start < self.end) {
            return Err(EngineError::param(
                "step_range",
                format!("[{}, {}) is empty or not finite", self.start, self.end),
            ));
        }
        Ok(())
    }
}

/// One conditioning with its compositing metadata (DEMON's `SlotCondition`).
#[derive(Clone, Debug)]
pub struct SlotCondition {
    pub conditioning: Conditioning,
    /// Per-frame weight in the velocity blend `Σ wᵢ·vᵢ / Σ wᵢ`; `None` is 1.
    pub weight: Option<Curve>,
    pub step_range: StepRange,
    /// `[1, T, Cc]` context used with this condition instead of the request's (ACE-Step's
    /// cover task switches both conditioning and context part way through the schedule).
    pub context: Option<Tensor>,
}

impl SlotCondition {
    pub fn new(conditioning: Conditioning) -> Self {
        Self {
            conditioning,
            weight: None,
            step_range: StepRange::default(),
            context: None,
        }
    }

    pub fn weighted(conditioning: Conditioning, weight: Curve) -> Self {
        Self {
            weight: Some(weight),
            ..Self::new(conditioning)
        }
    }

    /// Active only for the schedule fraction `[start, end)`.
    pub fn in_range(conditioning: Conditioning, start: f32, end: f32) -> Self {
        Self {
            step_range: StepRange { start, end },
            ..Self::new(conditioning)
        }
    }

    /// True when this condition changes anything beyond a plain single-condition pass.
    fn is_composite(&self) -> bool {
        self.weight.is_some() || !self.step_range.is_full() || self.context.is_some()
    }
}

/// Two-sided inpainting mask (DEMON's `LatentNoiseMask`): `mask = 1` regenerates a frame,
/// `mask = 0` keeps `original`.
#[derive(Clone, Debug)]
pub struct LatentMask {
    pub mask: Curve,
    /// `[1, T, C]` latent kept where the mask is 0.
    pub original: Tensor,
}

/// The seven per-step curves. A request carries its own; the shared lane may override each one
/// for every in-flight slot.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StepCurves {
    /// Velocity multiplier (absent = 1).
    pub velocity_scale: Option<Curve>,
    /// Per-frame source preservation on the SDE path: 1 = free, 0 = pinned to the source.
    pub sde_denoise: Option<Curve>,
    /// Noise injected after each Euler step, scaled by the next t (absent = 0).
    pub ode_noise: Option<Curve>,
    /// Scalar-path blend toward the x0 target in the refinement half (absent = 0).
    pub x0_target_strength: Option<Curve>,
    /// APG guidance scale; its presence enables guidance.
    pub guidance: Option<Curve>,
    /// APG momentum (absent = −0.75).
    pub apg_momentum: Option<Curve>,
    /// CFG rescale in [0, 1] (absent = off).
    pub cfg_rescale: Option<Curve>,
}

/// Names of the shareable per-step curves, as front ends spell them.
pub const STEP_CURVE_NAMES: [&str; 7] = [
    "velocity_scale",
    "sde_denoise",
    "ode_noise",
    "x0_target_strength",
    "guidance",
    "apg_momentum",
    "cfg_rescale",
];

impl StepCurves {
    /// The slot of curve `name` (see [`STEP_CURVE_NAMES`]).
    pub fn field_mut(&mut self, name: &str) -> Result<&mut Option<Curve>> {
        Ok(match name {
            "velocity_scale" => &mut self.velocity_scale,
            "sde_denoise" | "sde_denoise_curve" => &mut self.sde_denoise,
            "ode_noise" | "ode_noise_curve" => &mut self.ode_noise,
            "x0_target_strength" => &mut self.x0_target_strength,
            "guidance" | "guidance_curve" => &mut self.guidance,
            "apg_momentum" => &mut self.apg_momentum,
            "cfg_rescale" | "cfg_rescale_curve" => &mut self.cfg_rescale,
            other => {
                return Err(EngineError::curve(
                    other,
                    format!(
                        "not a per-step curve (one of {})",
                        STEP_CURVE_NAMES.join(", ")
                    ),
                ));
            }
        })
    }

    pub fn field(&self, name: &str) -> Result<&Option<Curve>> {
        Ok(match name {
            "velocity_scale" => &self.velocity_scale,
            "sde_denoise" | "sde_denoise_curve" => &self.sde_denoise,
            "ode_noise" | "ode_noise_curve" => &self.ode_noise,
            "x0_target_strength" => &self.x0_target_strength,
            "guidance" | "guidance_curve" => &self.guidance,
            "apg_momentum" => &self.apg_momentum,
            "cfg_rescale" | "cfg_rescale_curve" => &self.cfg_rescale,
            other => {
                return Err(EngineError::curve(
                    other,
                    format!(
                        "not a per-step curve (one of {})",
                        STEP_CURVE_NAMES.join(", ")
                    ),
                ));
            }
        })
    }

    /// Range checks that keep the solver meaningful.
    pub fn validate(&self) -> Result<()> {
        let check = |name: &str, c: &Option<Curve>, lo: f32, hi: f32| -> Result<()> {
            match c {
                Some(c) => c.check_range(name, lo, hi),
                None => Ok(()),
            }
        };
        check("velocity_scale", &self.velocity_scale, -10.0, 10.0)?;
        check("sde_denoise", &self.sde_denoise, 0.0, 1.0)?;
        check("ode_noise", &self.ode_noise, 0.0, 10.0)?;
        check("x0_target_strength", &self.x0_target_strength, 0.0, 1.0)?;
        check("guidance", &self.guidance, 0.0, 30.0)?;
        check("apg_momentum", &self.apg_momentum, -1.0, 1.0)?;
        check("cfg_rescale", &self.cfg_rescale, 0.0, 1.0)
    }
}

/// One generation: everything a slot needs, fixed when submitted.
#[derive(Clone, Debug)]
pub struct SlotRequest {
    /// Caller's label, returned with the finished latent.
    pub tag: u64,
    /// Latent length T.
    pub frames: usize,
    /// Primary condition first, then extra conditions (multi-prompt blending).
    pub conditions: Vec<SlotCondition>,
    /// Negative conditions for guidance (ignored without guidance).
    pub negatives: Vec<SlotCondition>,
    /// `[1, T, Cc]` structural context.
    pub context: Tensor,
    pub seed: u64,
    /// `[1, T, C]` source latent for partial denoise and SDE source blending.
    pub source: Option<Tensor>,
    pub schedule: ScheduleParams,
    pub solver: SolverKind,
    pub curves: StepCurves,
    /// `[1, T, C]` morph target.
    pub x0_target: Option<Tensor>,
    /// Gated curve-path blend toward the target (overrides the scalar path).
    pub x0_target_curve: Option<Curve>,
    /// Fraction of the schedule before the curve path engages.
    pub x0_target_gate: f32,
    /// Per-frame noise/source mix at initialisation (1 = pure noise).
    pub initial_noise_curve: Option<Curve>,
    pub latent_mask: Option<LatentMask>,
    pub cfg_mode: CfgMode,
}

impl SlotRequest {
    /// A plain text-to-latent request whose latent length is the context's: `context` is
    /// `[1, T, Cc]`, and `frames = T`.
    pub fn from_context(conditioning: Conditioning, context: Tensor, seed: u64) -> Result<Self> {
        let frames = match context.dims() {
            [1, t, _] if *t > 0 => *t,
            d => {
                return Err(EngineError::shape(
                    "context",
                    "[1, T, Cc] with T > 0",
                    format!("{d:?}"),
                ));
            }
        };
        Ok(Self::new(conditioning, context, frames, seed))
    }

    /// A plain text-to-latent request of `frames` latent frames; `frames` must be the context's
    /// length (checked by [`SlotRequest::validate`]). [`SlotRequest::from_context`] takes it from
    /// the context instead.
    pub fn new(conditioning: Conditioning, context: Tensor, frames: usize, seed: u64) -> Self {
        Self {
            tag: 0,
            frames,
            conditions: vec![SlotCondition::new(conditioning)],
            negatives: Vec::new(),
            context,
            seed,
            source: None,
            schedule: ScheduleParams::default(),
            solver: SolverKind::Ode,
            curves: StepCurves::default(),
            x0_target: None,
            x0_target_curve: None,
            x0_target_gate: 0.0,
            initial_noise_curve: None,
            latent_mask: None,
            cfg_mode: CfgMode::default(),
        }
    }

    /// The clean source: the explicit source, else the mask's original.
    pub fn clean_source(&self) -> Option<&Tensor> {
        self.source
            .as_ref()
            .or(self.latent_mask.as_ref().map(|m| &m.original))
    }

    /// DEMON's "complex features": such slots always integrate through x̂₀.
    pub fn has_complex_features(&self) -> bool {
        self.latent_mask.is_some()
            || self.conditions.len() > 1
            || self.conditions.first().is_some_and(|c| c.is_composite())
            || (self.x0_target.is_some() && self.x0_target_curve.is_some())
    }

    /// Check shapes and ranges against the latent geometry.
    pub fn validate(&self, latent_channels: usize, context_channels: usize) -> Result<()> {
        if self.frames == 0 {
            return Err(EngineError::param("frames", "latent length is zero"));
        }
        if self.conditions.is_empty() {
            return Err(EngineError::param(
                "conditions",
                "a request needs at least one condition",
            ));
        }
        self.schedule.validate()?;
        self.curves.validate()?;
        let latent = |what: &str, t: &Tensor| -> Result<()> {
            let want = [1, self.frames, latent_channels];
            if t.dims() != want {
                return Err(EngineError::shape(
                    what,
                    format!("{want:?}"),
                    format!("{:?}", t.dims()),
                ));
            }
            Ok(())
        };
        if let Some(s) = &self.source {
            latent("source latent", s)?;
        }
        if let Some(s) = &self.x0_target {
            latent("x0 target", s)?;
        }
        if let Some(m) = &self.latent_mask {
            latent("mask original", &m.original)?;
            m.mask.check_range("latent_mask", 0.0, 1.0)?;
        }
        let want_ctx = [1, self.frames, context_channels];
        if self.context.dims() != want_ctx {
            return Err(EngineError::shape(
                "context",
                format!("{want_ctx:?}"),
                format!("{:?}", self.context.dims()),
            ));
        }
        for c in self.conditions.iter().chain(&self.negatives) {
            c.step_range.validate()?;
            if let Some(ctx) = &c.context
                && ctx.dims() != want_ctx
            {
                return Err(EngineError::shape(
                    "condition context",
                    format!("{want_ctx:?}"),
                    format!("{:?}", ctx.dims()),
                ));
            }
            if let Some(w) = &c.weight {
                w.check_range("condition weight", 0.0, 1e6)?;
            }
        }
        if let Some(c) = &self.x0_target_curve {
            c.check_range("x0_target_curve", 0.0, 1.0)?;
        }
        if let Some(c) = &self.initial_noise_curve {
            c.check_range("initial_noise_curve", 0.0, 1.0)?;
        }
        if !(self.x0_target_gate.is_finite() && (0.0..=1.0).contains(&self.x0_target_gate)) {
            return Err(EngineError::param(
                "x0_target_gate",
                format!("{} is outside [0, 1]", self.x0_target_gate),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use candle_core::{DType, Device};

    use super::*;

    #[test]
    fn from_context_takes_the_frames_from_the_context() {
        let cond =
            Conditioning::new(Tensor::ones((1, 2, 3), DType::F32, &Device::Cpu).unwrap()).unwrap();
        let ctx = Tensor::zeros((1, 17, 5), DType::F32, &Device::Cpu).unwrap();
        let r = SlotRequest::from_context(cond.clone(), ctx, 9).unwrap();
        assert_eq!((r.frames, r.seed), (17, 9));
        r.validate(4, 5).unwrap();
        for bad in [(2, 17, 5), (1, 0, 5)] {
            let ctx = Tensor::zeros(bad, DType::F32, &Device::Cpu).unwrap();
            assert!(
                SlotRequest::from_context(cond.clone(), ctx, 0).is_err(),
                "{bad:?}"
            );
        }
    }
}
