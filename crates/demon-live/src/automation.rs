//! Knob automation lanes (issue 12, item 3): a knob's value drawn over the song timeline and
//! played back by the playhead, as DEMON's automation for strength, hint, feedback, shift and
//! LoRA strength. The drawn per-frame curves ([`crate::controls::CurveId`]) shape one
//! generation along its window; a lane instead moves a knob as the loop plays, read at each
//! tick boundary from the playhead, so a replay (which replays the playhead) follows it exactly.
//!
//! A lane is a list of points `(at_s, value)` in song seconds, strictly increasing in time,
//! and an interpolation between them: `step` holds a point's value until the next point,
//! `linear` ramps, `smooth` eases with `3u² − 2u³` (no overshoot, so a lane never leaves the
//! range its points are in). Before the first point the lane holds the first value, after the
//! last the last value; at the loop's end the playhead wraps to 0 and the lane with it.

use serde::{Deserialize, Serialize};

use crate::error::{SessionError, SessionResult};

/// The most points one lane may carry (a drawn gesture at one point per pixel of a wide screen).
pub const MAX_LANE_POINTS: usize = 4096;

/// How a lane moves between two points.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LaneInterpolation {
    /// Hold each point's value until the next point.
    Step,
    /// A straight ramp between points.
    #[default]
    Linear,
    /// An eased ramp (`3u² − 2u³`): flat at every point, no overshoot.
    Smooth,
}

/// One point of a lane: the knob's value at `at_s` seconds into the song.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LanePoint {
    pub at_s: f64,
    pub value: f64,
}

/// A knob's automation over the song timeline (the wire and preset form).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AutomationLane {
    pub points: Vec<LanePoint>,
    #[serde(default)]
    pub interpolation: LaneInterpolation,
}

impl AutomationLane {
    /// Check the points' shape (count, finite times in increasing order, finite values).
    /// Values are checked against the knob's range by the caller, which knows the knob.
    pub fn check_shape(&self, knob: &str) -> SessionResult<()> {
        let what = || format!("automation lane of `{knob}`");
        if self.points.is_empty() {
            return Err(SessionError::bad_value(
                what(),
                "has no points (clear a lane with `lane: null`)",
            ));
        }
        if self.points.len() > MAX_LANE_POINTS {
            return Err(SessionError::bad_value(
                what(),
                format!(
                    "has {} points; at most {MAX_LANE_POINTS}",
                    self.points.len()
                ),
            ));
        }
        let mut last = f64::NEG_INFINITY;
        for (i, p) in self.points.iter().enumerate() {
            if !(p.at_s.is_finite() && p.at_s >= 0.0) {
                return Err(SessionError::bad_value(
                    what(),
                    format!("point {i}: at_s {} is not a time in the song", p.at_s),
                ));
            }
            if p.at_s <= last {
                return Err(SessionError::bad_value(
                    what(),
                    format!(
                        "point {i}: at_s {} does not come after the point before ({last})",
                        p.at_s
                    ),
                ));
            }
            if !p.value.is_finite() {
                return Err(SessionError::bad_value(
                    what(),
                    format!("point {i}: value {} is not a finite number", p.value),
                ));
            }
            last = p.at_s;
        }
        Ok(())
    }

    /// The lane's value `at_s` seconds into the song. The points must have passed
    /// [`Self::check_shape`] (not empty, increasing).
    pub fn value_at(&self, at_s: f64) -> f64 {
        let points = &self.points;
        let Some(first) = points.first() else {
            return 0.0;
        };
        // The first point after `at_s`; the one before it is where the lane comes from.
        let next = points.partition_point(|p| p.at_s <= at_s);
        if next == 0 {
            return first.value;
        }
        let a = points[next - 1];
        let Some(&b) = points.get(next) else {
            return a.value;
        };
        let u = ((at_s - a.at_s) / (b.at_s - a.at_s)).clamp(0.0, 1.0);
        let w = match self.interpolation {
            LaneInterpolation::Step => 0.0,
            LaneInterpolation::Linear => u,
            LaneInterpolation::Smooth => u * u * (3.0 - 2.0 * u),
        };
        // Clamped to the two points: rounding must never step outside the knob's range, where
        // the value would be refused at a tick boundary.
        (a.value + (b.value - a.value) * w).clamp(a.value.min(b.value), a.value.max(b.value))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lane(interpolation: LaneInterpolation) -> AutomationLane {
        AutomationLane {
            points: vec![
                LanePoint {
                    at_s: 1.0,
                    value: 0.2,
                },
                LanePoint {
                    at_s: 3.0,
                    value: 0.6,
                },
                LanePoint {
                    at_s: 4.0,
                    value: 0.0,
                },
            ],
            interpolation,
        }
    }

    #[test]
    fn each_interpolation_gives_its_values_and_holds_outside_the_points() {
        let step = lane(LaneInterpolation::Step);
        let linear = lane(LaneInterpolation::Linear);
        let smooth = lane(LaneInterpolation::Smooth);
        for l in [&step, &linear, &smooth] {
            assert_eq!(l.value_at(0.0), 0.2, "before the first point");
            assert_eq!(l.value_at(1.0), 0.2);
            assert_eq!(l.value_at(3.0), 0.6, "exactly on a point");
            assert_eq!(l.value_at(4.0), 0.0);
            assert_eq!(l.value_at(60.0), 0.0, "after the last point");
        }
        assert_eq!(step.value_at(2.999), 0.2);
        assert_eq!(step.value_at(3.5), 0.6);
        assert!((linear.value_at(2.0) - 0.4).abs() < 1e-12);
        assert!((linear.value_at(1.5) - 0.3).abs() < 1e-12);
        assert!((linear.value_at(3.5) - 0.3).abs() < 1e-12);
        // Smooth: the midpoint is the linear one, a quarter in is eased (5/32 of the way).
        assert!((smooth.value_at(2.0) - 0.4).abs() < 1e-12);
        assert!((smooth.value_at(1.5) - (0.2 + 0.4 * 5.0 / 32.0)).abs() < 1e-12);
        // No overshoot: every value lies between its two points.
        for i in 0..=400 {
            let t = i as f64 * 0.0125;
            let v = smooth.value_at(t);
            assert!((0.0..=0.6).contains(&v), "{t}: {v}");
        }
    }

    #[test]
    fn a_bad_lane_is_refused_naming_the_point() {
        let ok = lane(LaneInterpolation::Linear);
        assert!(ok.check_shape("denoise").is_ok());
        let with = |f: &dyn Fn(&mut AutomationLane)| {
            let mut l = ok.clone();
            f(&mut l);
            l.check_shape("denoise").unwrap_err().to_string()
        };
        assert!(with(&|l| l.points.clear()).contains("no points"));
        assert!(with(&|l| l.points[1].at_s = 1.0).contains("point 1"));
        assert!(with(&|l| l.points[2].at_s = 2.0).contains("does not come after"));
        assert!(with(&|l| l.points[0].at_s = -1.0).contains("not a time"));
        assert!(with(&|l| l.points[0].at_s = f64::NAN).contains("point 0"));
        assert!(with(&|l| l.points[2].value = f64::INFINITY).contains("not a finite"));
        let many = with(&|l| {
            l.points = (0..=MAX_LANE_POINTS)
                .map(|i| LanePoint {
                    at_s: i as f64,
                    value: 0.5,
                })
                .collect()
        });
        assert!(many.contains("at most 4096"), "{many}");
    }

    #[test]
    fn lanes_round_trip_as_json_and_default_to_linear() {
        let l: AutomationLane =
            serde_json::from_str(r#"{"points":[{"at_s":0,"value":0.5}]}"#).unwrap();
        assert_eq!(l.interpolation, LaneInterpolation::Linear);
        let s = serde_json::to_string(&lane(LaneInterpolation::Smooth)).unwrap();
        assert_eq!(
            serde_json::from_str::<AutomationLane>(&s).unwrap(),
            lane(LaneInterpolation::Smooth)
        );
        assert!(
            serde_json::from_str::<AutomationLane>(r#"{"points":[{"at_s":0,"value":0.5,"x":1}]}"#)
                .is_err()
        );
    }
}
