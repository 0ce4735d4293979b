//! The shared mutable lane (the paper's mechanism 2, demon.md §7).
//!
//! Parameters consulted at every solver step live here as overrides. The solver resolves each
//! one lane-first, slot-second, at every step of every slot, so a value written between ticks
//! reaches every in-flight slot on the very next tick, whatever the depth. The lane is a plain
//! value: the pipeline holds one snapshot and swaps it whole between ticks, so a tick can never
//! see half an update.

use serde::{Deserialize, Serialize};

use crate::curve::Curve;
use crate::error::{EngineError, Result};
use crate::request::StepCurves;

/// DCW band selection (demon.md §5.8).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DcwMode {
    Low,
    High,
    #[default]
    Double,
    Pix,
}

impl std::str::FromStr for DcwMode {
    type Err = EngineError;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "low" => Ok(Self::Low),
            "high" => Ok(Self::High),
            "double" => Ok(Self::Double),
            "pix" => Ok(Self::Pix),
            o => Err(EngineError::param(
                "dcw_mode",
                format!("unknown mode `{o}` (low, high, double, pix)"),
            )),
        }
    }
}

/// Differential Correction in the Wavelet domain, applied after every step.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DcwSettings {
    pub enabled: bool,
    pub mode: DcwMode,
    /// Low-band scaler (also the only scaler of `low`, `high` and `pix`).
    pub scaler: Curve,
    /// High-band scaler of `double`.
    pub high_scaler: Curve,
}

impl Default for DcwSettings {
    fn default() -> Self {
        Self {
            enabled: true,
            mode: DcwMode::Double,
            scaler: Curve::constant(0.05),
            high_scaler: Curve::constant(0.02),
        }
    }
}

impl DcwSettings {
    pub fn off() -> Self {
        Self {
            enabled: false,
            ..Self::default()
        }
    }

    /// True when a step would change anything.
    pub fn is_active(&self) -> bool {
        if !self.enabled {
            return false;
        }
        match self.mode {
            DcwMode::Double => !self.scaler.is_zero() || !self.high_scaler.is_zero(),
            _ => !self.scaler.is_zero(),
        }
    }

    pub fn validate(&self) -> Result<()> {
        self.scaler.check_range("dcw_scaler", -1.0, 1.0)?;
        self.high_scaler.check_range("dcw_high_scaler", -1.0, 1.0)
    }
}

/// Per-channel gain applied to the model input only (integration never sees it, so it does not
/// compound across steps).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ChannelGain {
    pub gains: Vec<f32>,
}

impl ChannelGain {
    pub fn new(gains: Vec<f32>) -> Result<Self> {
        if let Some((i, g)) = gains
            .iter()
            .enumerate()
            .find(|(_, g)| !(g.is_finite() && (0.0..=4.0).contains(*g)))
        {
            return Err(EngineError::param(
                "channel_gain",
                format!("gain {g} of channel {i} is outside [0, 4]"),
            ));
        }
        Ok(Self { gains })
    }

    pub fn is_identity(&self) -> bool {
        self.gains.iter().all(|g| (*g - 1.0).abs() <= 1e-6)
    }
}

/// Everything every in-flight slot reads at every step.
///
/// **Note: `SharedLane::default()` has DCW on** (double mode, 0.05 low / 0.02 high, DEMON's
/// default), so a default lane changes every step's result. [`SharedLane::neutral`] is the lane
/// that changes nothing (no overrides, no channel gain, DCW off).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct SharedLane {
    /// Overrides of the slot's own per-step curves; `None` falls back to the slot.
    pub curves: StepCurves,
    pub channel_gain: Option<ChannelGain>,
    /// On by default (see the type's note).
    pub dcw: DcwSettings,
}

impl SharedLane {
    /// No overrides, no channel gain and DCW off: every step is the slot's own.
    pub fn neutral() -> Self {
        Self {
            dcw: DcwSettings::off(),
            ..Self::default()
        }
    }

    /// Set (or with `None`, remove) the override for the curve called `name`.
    pub fn set_curve(&mut self, name: &str, value: Option<Curve>) -> Result<()> {
        *self.curves.field_mut(name)? = value;
        self.curves.validate()
    }

    pub fn validate(&self, latent_channels: usize) -> Result<()> {
        self.curves.validate()?;
        self.dcw.validate()?;
        if let Some(g) = &self.channel_gain
            && g.gains.len() != latent_channels
        {
            return Err(EngineError::shape(
                "channel_gain",
                latent_channels,
                g.gains.len(),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The default lane has DCW on; the neutral lane changes nothing.
    #[test]
    fn default_has_dcw_on_and_neutral_has_it_off() {
        assert!(SharedLane::default().dcw.is_active());
        let n = SharedLane::neutral();
        assert!(!n.dcw.is_active());
        assert_eq!(n.curves, StepCurves::default());
        assert!(n.channel_gain.is_none());
    }
}
