//! The shared mutable lane (the paper's mechanism 2, demon.md §7).
//!
//! Parameters consulted at every solver step live here as overrides. The solver resolves each
//! one lane-first, slot-second, at every step of every slot, so a value written between ticks
//! reaches every in-flight slot on the very next tick, whatever the depth. The lane is a plain
//! value: the pipeline holds one snapshot and swaps it whole between ticks, so a tick can never
//! see half an update.

use candle_core::{Device, Tensor};
use serde::{Deserialize, Serialize};

use crate::curve::Curve;
use crate::error::{EngineError, Result};
use crate::request::StepCurves;
use crate::wavelet::Wavelet;

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
    /// The wavelet of the band split (`"haar"`, `"db2"`…`"db8"`, `"sym2"`…`"sym8"`); absent
    /// on the wire = Haar, DEMON's default.
    pub wavelet: Wavelet,
}

impl Default for DcwSettings {
    fn default() -> Self {
        Self {
            enabled: true,
            mode: DcwMode::Double,
            scaler: Curve::constant(0.05),
            high_scaler: Curve::constant(0.02),
            wavelet: Wavelet::Haar,
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
/// compound across steps), optionally shaped over the song by a per-frame `amount`.
///
/// With an amount `a(f)` the gain of channel `c` at frame `f` is `a(f)·g_c + (1 − a(f))`: the
/// gains where `a = 1`, exactly 1 (the plain input) where `a = 0`. Both ends are exact in f32
/// (`1·g + 0 = g`, `0·g + 1 = 1`), so a frame at amount 0 feeds the model the very same input
/// as no channel gain at all.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ChannelGain {
    pub gains: Vec<f32>,
    /// Per-frame (or scalar) amount in `[0, 1]`; absent = 1 everywhere.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub amount: Option<Curve>,
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
        Ok(Self {
            gains,
            amount: None,
        })
    }

    /// Shape the gains over the song: `amount` per frame in `[0, 1]` (see the type's docs).
    pub fn with_amount(mut self, amount: Curve) -> Result<Self> {
        amount.check_range("channel_gain_amount", 0.0, 1.0)?;
        self.amount = Some(amount);
        Ok(self)
    }

    pub fn is_identity(&self) -> bool {
        self.gains.iter().all(|g| (*g - 1.0).abs() <= 1e-6)
            || self.amount.as_ref().is_some_and(Curve::is_zero)
    }

    /// The gain the model input is multiplied by, for latents of `frames` frames: `[1, 1, C]`
    /// when the amount is absent or a scalar, `[1, T, C]` when it varies per frame.
    pub fn to_tensor(&self, frames: usize, device: &Device) -> Result<Tensor> {
        let c = self.gains.len();
        let mix = |a: f32| -> Vec<f32> { self.gains.iter().map(|g| a * g + (1.0 - a)).collect() };
        Ok(match &self.amount {
            None => Tensor::from_vec(self.gains.clone(), (1, 1, c), device)?,
            Some(Curve::Scalar(a)) => Tensor::from_vec(mix(*a), (1, 1, c), device)?,
            Some(curve) => {
                let values: Vec<f32> = curve.to_frames(frames).into_iter().flat_map(mix).collect();
                Tensor::from_vec(values, (1, frames, c), device)?
            }
        })
    }

    /// DEMON's layout (demon.md §5.7): `groups.len()` equal groups of consecutive channels
    /// (8 groups of 8 for a 64-channel latent; the last group takes any remainder), then the
    /// keystone channels, each `Some(gain)` overwriting its group's value. A gain within 0.01
    /// of 1 is exactly 1, as DEMON builds no entry for it. Keystones past `channels` are an
    /// error; gains must lie in [0, 4].
    pub fn grouped(channels: usize, groups: &[f32], keystones: &[(usize, f32)]) -> Result<Self> {
        if groups.is_empty() || groups.len() > channels.max(1) {
            return Err(EngineError::param(
                "channel_gain",
                format!("{} groups for {channels} channels", groups.len()),
            ));
        }
        let snap = |g: f32| if (g - 1.0).abs() <= 0.01 { 1.0 } else { g };
        let per = channels / groups.len();
        let mut gains: Vec<f32> = (0..channels)
            .map(|c| snap(groups[(c / per.max(1)).min(groups.len() - 1)]))
            .collect();
        for &(ch, g) in keystones {
            let slot = gains.get_mut(ch).ok_or_else(|| {
                EngineError::param(
                    "channel_gain",
                    format!("keystone channel {ch} is outside 0..{channels}"),
                )
            })?;
            *slot = snap(g);
        }
        Self::new(gains)
    }
}

/// DEMON's six keystone channels of the ACE-Step latent (demon.md §5.7: an empirical study
/// found 8 functional groups plus these six).
pub const KEYSTONE_CHANNELS: [usize; 6] = [13, 14, 19, 23, 29, 56];

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
        if let Some(g) = &self.channel_gain {
            if g.gains.len() != latent_channels {
                return Err(EngineError::shape(
                    "channel_gain",
                    latent_channels,
                    g.gains.len(),
                ));
            }
            if let Some(a) = &g.amount {
                a.check_range("channel_gain_amount", 0.0, 1.0)?;
            }
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

    #[test]
    fn grouped_gains_and_keystones() {
        let g = ChannelGain::grouped(64, &[1.0, 2.0, 1.0, 1.0, 1.0, 1.0, 1.0, 0.5], &[]).unwrap();
        assert_eq!(g.gains[7], 1.0);
        assert!(g.gains[8..16].iter().all(|v| *v == 2.0));
        assert!(g.gains[56..].iter().all(|v| *v == 0.5));
        // Keystones overwrite their group; 1.005 snaps to exactly 1.
        let k = ChannelGain::grouped(
            64,
            &[2.0; 8],
            &[(KEYSTONE_CHANNELS[0], 3.0), (KEYSTONE_CHANNELS[5], 1.005)],
        )
        .unwrap();
        assert_eq!(k.gains[13], 3.0);
        assert_eq!(k.gains[56], 1.0);
        assert_eq!(k.gains[14], 2.0);
        assert_eq!(k.gains.iter().filter(|v| **v != 2.0).count(), 2);
        // An identity layout is the identity.
        assert!(
            ChannelGain::grouped(64, &[1.004; 8], &[(13, 0.999)])
                .unwrap()
                .is_identity()
        );
        // Smaller latents: groups share the channels, the last takes the remainder.
        let s = ChannelGain::grouped(10, &[1.0, 2.0, 3.0], &[]).unwrap();
        assert_eq!(
            s.gains,
            vec![1.0, 1.0, 1.0, 2.0, 2.0, 2.0, 3.0, 3.0, 3.0, 3.0]
        );
        // Bad input names the problem.
        let e = ChannelGain::grouped(8, &[1.0; 8], &[(56, 2.0)])
            .unwrap_err()
            .to_string();
        assert!(e.contains("keystone channel 56"), "{e}");
        assert!(ChannelGain::grouped(64, &[5.0; 8], &[]).is_err());
        assert!(ChannelGain::grouped(64, &[f32::NAN; 8], &[]).is_err());
        assert!(ChannelGain::grouped(64, &[], &[]).is_err());
    }
}
