//! Per-slot timestep schedules (demon.md §3.1, ComfyUI `BasicScheduler` semantics).
//!
//! Every slot runs exactly `steps` forward passes whatever its denoise strength; denoise only
//! chooses where on the shifted curve the slot starts: `t_start = S / floor(S / denoise)`, raw
//! schedule `linspace(t_start, 0, S + 1)`, then the flow shift `s·t / (1 + (s − 1)·t)`.
//! Denoise ≈ 0 gives the trivial schedule `[0, 0]`, whose single pass returns the source.

use std::collections::HashMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::error::{EngineError, Result};

/// Largest step count the engine accepts (DEMON's node parameters allow 1–50).
pub const MAX_STEPS: usize = 100;
/// Denoise values at or below this produce the identity schedule `[0, 0]`.
pub const DENOISE_EPS: f32 = 1e-6;

/// What determines a schedule.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct ScheduleParams {
    pub steps: usize,
    pub shift: f32,
    pub denoise: f32,
}

impl Default for ScheduleParams {
    fn default() -> Self {
        Self {
            steps: 8,
            shift: 3.0,
            denoise: 1.0,
        }
    }
}

impl ScheduleParams {
    pub fn validate(&self) -> Result<()> {
        if self.steps == 0 || self.steps > MAX_STEPS {
            return Err(EngineError::param(
                "steps",
                format!("{} is outside 1..={MAX_STEPS}", self.steps),
            ));
        }
        if !(self.shift.is_finite() && self.shift > 0.0 && self.shift <= 100.0) {
            return Err(EngineError::param(
                "shift",
                format!("{} is outside (0, 100]", self.shift),
            ));
        }
        if !(self.denoise.is_finite() && (0.0..=1.0).contains(&self.denoise)) {
            return Err(EngineError::param(
                "denoise",
                format!("{} is outside [0, 1]", self.denoise),
            ));
        }
        Ok(())
    }
}

/// A slot's timesteps `t_0 > … > t_S = 0` (length `steps + 1`, or `[0, 0]` for denoise ≈ 0).
#[derive(Clone, Debug, PartialEq)]
pub struct Schedule {
    pub params: ScheduleParams,
    pub timesteps: Vec<f32>,
}

impl Schedule {
    pub fn new(params: ScheduleParams) -> Result<Self> {
        params.validate()?;
        let ScheduleParams {
            steps,
            shift,
            denoise,
        } = params;
        if denoise <= DENOISE_EPS {
            return Ok(Self {
                params,
                timesteps: vec![0.0, 0.0],
            });
        }
        let s = steps as f64;
        // Widen through the shortest decimal form: an f32 of 0.1 must act like the 0.1 a user
        // typed (8 / 0.1 = 80, not 79.99999881 → 79).
        let denoise_f64: f64 = denoise.to_string().parse().unwrap_or(denoise as f64);
        let t_start = if denoise >= 1.0 {
            1.0
        } else {
            s / (s / denoise_f64).floor()
        };
        let shift = shift as f64;
        let timesteps = (0..=steps)
            .map(|k| {
                let t = if k == steps {
                    0.0
                } else {
                    t_start * (1.0 - k as f64 / s)
                };
                let t = if shift == 1.0 {
                    t
                } else {
                    shift * t / (1.0 + (shift - 1.0) * t)
                };
                t as f32
            })
            .collect();
        Ok(Self { params, timesteps })
    }

    /// Number of forward passes (1 for the identity schedule).
    pub fn passes(&self) -> usize {
        self.timesteps.len() - 1
    }

    pub fn t(&self, step: usize) -> f32 {
        self.timesteps[step]
    }

    /// The first (shifted) timestep: the noise share of a partially denoised slot's start.
    pub fn t_start(&self) -> f32 {
        self.timesteps[0]
    }
}

/// Schedules cached per (steps, shift, denoise); slots keep the schedule they were born with.
#[derive(Default, Debug)]
pub struct ScheduleCache {
    map: HashMap<(usize, u32, u32), Arc<Schedule>>,
}

impl ScheduleCache {
    /// Fetch or build. The cache is bounded: a performer sweeping denoise continuously creates
    /// a new key per value, so it is cleared when it grows past a few hundred entries.
    pub fn get(&mut self, params: ScheduleParams) -> Result<Arc<Schedule>> {
        let key = (
            params.steps,
            params.shift.to_bits(),
            params.denoise.to_bits(),
        );
        if let Some(s) = self.map.get(&key) {
            return Ok(s.clone());
        }
        let s = Arc::new(Schedule::new(params)?);
        if self.map.len() >= 512 {
            self.map.clear();
        }
        self.map.insert(key, s.clone());
        Ok(s)
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sched(denoise: f32, shift: f32) -> Vec<f32> {
        Schedule::new(ScheduleParams {
            steps: 8,
            shift,
            denoise,
        })
        .unwrap()
        .timesteps
    }

    /// The worked examples of demon.md §3.1, to 4 decimals.
    #[test]
    fn reproduces_the_reference_table() {
        let table: [(f32, f32, [f32; 9]); 6] = [
            (
                1.0,
                3.0,
                [1.0, 0.9545, 0.9, 0.8333, 0.75, 0.6429, 0.5, 0.3, 0.0],
            ),
            (
                1.0,
                3.5,
                [
                    1.0, 0.9608, 0.9130, 0.8537, 0.7778, 0.6774, 0.5385, 0.3333, 0.0,
                ],
            ),
            (
                0.75,
                3.0,
                [
                    0.9231, 0.8750, 0.8182, 0.75, 0.6667, 0.5625, 0.4286, 0.25, 0.0,
                ],
            ),
            (
                0.5,
                3.0,
                [0.75, 0.7, 0.6429, 0.5769, 0.5, 0.4091, 0.3, 0.1667, 0.0],
            ),
            (
                0.3,
                3.0,
                [
                    0.5714, 0.5250, 0.4737, 0.4167, 0.3529, 0.2812, 0.2, 0.1071, 0.0,
                ],
            ),
            (
                0.1,
                3.0,
                [
                    0.25, 0.2234, 0.1957, 0.1667, 0.1364, 0.1047, 0.0714, 0.0366, 0.0,
                ],
            ),
        ];
        for (denoise, shift, want) in table {
            let got = sched(denoise, shift);
            assert_eq!(got.len(), 9);
            for (g, w) in got.iter().zip(want) {
                assert_eq!(
                    format!("{g:.4}"),
                    format!("{w:.4}"),
                    "denoise {denoise} shift {shift}: got {got:?}, want {want:?}"
                );
            }
        }
    }

    #[test]
    fn always_s_passes_and_identity_for_zero_denoise() {
        for d in [0.05f32, 0.2, 0.33, 0.9, 1.0] {
            let s = Schedule::new(ScheduleParams {
                steps: 8,
                shift: 3.0,
                denoise: d,
            })
            .unwrap();
            assert_eq!(s.passes(), 8);
            assert!(s.timesteps.windows(2).all(|w| w[0] > w[1]));
            assert_eq!(*s.timesteps.last().unwrap(), 0.0);
        }
        assert_eq!(sched(0.0, 3.0), vec![0.0, 0.0]);
        assert_eq!(sched(1e-7, 3.0), vec![0.0, 0.0]);
        // Shift 1 is the raw linspace.
        assert_eq!(sched(1.0, 1.0)[4], 0.5);
    }

    #[test]
    fn rejects_bad_params() {
        for p in [
            ScheduleParams {
                steps: 0,
                ..Default::default()
            },
            ScheduleParams {
                steps: 1000,
                ..Default::default()
            },
            ScheduleParams {
                shift: f32::NAN,
                ..Default::default()
            },
            ScheduleParams {
                shift: 0.0,
                ..Default::default()
            },
            ScheduleParams {
                denoise: 1.5,
                ..Default::default()
            },
            ScheduleParams {
                denoise: f32::NAN,
                ..Default::default()
            },
        ] {
            assert!(Schedule::new(p).is_err(), "{p:?}");
        }
    }

    #[test]
    fn cache_returns_the_same_schedule() {
        let mut c = ScheduleCache::default();
        let a = c.get(ScheduleParams::default()).unwrap();
        let b = c.get(ScheduleParams::default()).unwrap();
        assert!(Arc::ptr_eq(&a, &b));
        assert_eq!(c.len(), 1);
    }
}
