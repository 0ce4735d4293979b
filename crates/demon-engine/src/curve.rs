//! Scalar-or-per-frame control curves (demon.md §2.3 "curve canonicalization", §5.4).
//!
//! Every solver-side parameter accepts either one value for the whole song or one value per
//! latent frame (25 Hz). Curves arrive from front ends as [`CurveSpec`]s (constant, ramp, sine,
//! pulse, square, raw) and are resampled to the latent length `T` by linear interpolation with
//! aligned corners: the first and last values land exactly on the first and last frames.
//! Non-finite or empty input is rejected here, once, so the solver never sees a NaN.

use std::sync::Arc;

use candle_core::{Device, Tensor};
use serde::{Deserialize, Serialize};

use crate::error::{EngineError, Result};

/// A validated control value: one scalar, or one finite value per frame.
#[derive(Clone, Debug, PartialEq)]
pub enum Curve {
    Scalar(f32),
    Frames(Arc<[f32]>),
}

impl Curve {
    /// A constant curve; `name` is used in the error message.
    pub fn scalar(name: &str, value: f32) -> Result<Self> {
        if !value.is_finite() {
            return Err(EngineError::curve(
                name,
                format!("value {value} is not finite"),
            ));
        }
        Ok(Self::Scalar(value))
    }

    /// A per-frame curve. A single value collapses to a scalar.
    pub fn frames(name: &str, values: Vec<f32>) -> Result<Self> {
        if values.is_empty() {
            return Err(EngineError::curve(name, "curve has no values"));
        }
        if let Some((i, v)) = values.iter().enumerate().find(|(_, v)| !v.is_finite()) {
            return Err(EngineError::curve(
                name,
                format!("value {v} at index {i} is not finite"),
            ));
        }
        if values.len() == 1 {
            return Ok(Self::Scalar(values[0]));
        }
        Ok(Self::Frames(values.into()))
    }

    /// Constant curves never fail; use for defaults known to be finite.
    pub fn constant(value: f32) -> Self {
        debug_assert!(value.is_finite());
        Self::Scalar(value)
    }

    pub fn is_scalar(&self) -> bool {
        matches!(self, Self::Scalar(_))
    }

    /// Number of stored values (1 for a scalar).
    pub fn len(&self) -> usize {
        match self {
            Self::Scalar(_) => 1,
            Self::Frames(v) => v.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        false
    }

    /// True when every value is exactly zero: the solver skips the feature entirely.
    pub fn is_zero(&self) -> bool {
        match self {
            Self::Scalar(v) => *v == 0.0,
            Self::Frames(v) => v.iter().all(|x| *x == 0.0),
        }
    }

    /// True when every value equals `c`.
    pub fn is_constant(&self, c: f32) -> bool {
        match self {
            Self::Scalar(v) => *v == c,
            Self::Frames(v) => v.iter().all(|x| *x == c),
        }
    }

    pub fn min(&self) -> f32 {
        match self {
            Self::Scalar(v) => *v,
            Self::Frames(v) => v.iter().copied().fold(f32::INFINITY, f32::min),
        }
    }

    pub fn max(&self) -> f32 {
        match self {
            Self::Scalar(v) => *v,
            Self::Frames(v) => v.iter().copied().fold(f32::NEG_INFINITY, f32::max),
        }
    }

    /// Value at `frame` of a song of `frames` frames (linear, aligned corners).
    pub fn value_at(&self, frame: usize, frames: usize) -> f32 {
        match self {
            Self::Scalar(v) => *v,
            Self::Frames(v) => sample_aligned(v, frame, frames),
        }
    }

    /// The curve resampled to exactly `frames` values (scalars stay scalars).
    pub fn resampled(&self, frames: usize) -> Curve {
        match self {
            Self::Scalar(v) => Self::Scalar(*v),
            Self::Frames(v) if v.len() == frames => self.clone(),
            Self::Frames(v) => Self::Frames(resample_aligned(v, frames).into()),
        }
    }

    /// Per-frame values at length `frames` (a scalar is repeated).
    pub fn to_frames(&self, frames: usize) -> Vec<f32> {
        match self {
            Self::Scalar(v) => vec![*v; frames],
            Self::Frames(v) => resample_aligned(v, frames),
        }
    }

    /// Element-wise map; the result is validated again.
    pub fn map(&self, name: &str, f: impl Fn(f32) -> f32) -> Result<Curve> {
        match self {
            Self::Scalar(v) => Curve::scalar(name, f(*v)),
            Self::Frames(v) => Curve::frames(name, v.iter().map(|x| f(*x)).collect()),
        }
    }

    /// Clamp into `[lo, hi]`.
    pub fn clamped(&self, lo: f32, hi: f32) -> Curve {
        match self {
            Self::Scalar(v) => Self::Scalar(v.clamp(lo, hi)),
            Self::Frames(v) => Self::Frames(v.iter().map(|x| x.clamp(lo, hi)).collect()),
        }
    }

    /// Reject values outside `[lo, hi]` with an error naming the curve.
    pub fn check_range(&self, name: &str, lo: f32, hi: f32) -> Result<()> {
        let (mn, mx) = (self.min(), self.max());
        if mn < lo || mx > hi {
            return Err(EngineError::curve(
                name,
                format!("values must lie in [{lo}, {hi}], got [{mn}, {mx}]"),
            ));
        }
        Ok(())
    }

    /// `[1, 1, 1]` for a scalar, `[1, T, 1]` for a per-frame curve, as f32 on `device`.
    pub fn to_tensor(&self, frames: usize, device: &Device) -> Result<Tensor> {
        Ok(match self {
            Self::Scalar(v) => Tensor::from_vec(vec![*v], (1, 1, 1), device)?,
            Self::Frames(_) => Tensor::from_vec(self.to_frames(frames), (1, frames, 1), device)?,
        })
    }
}

/// A pointwise operation combining two curves (see [`Curve::combine`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CurveOp {
    Add,
    Multiply,
    Min,
    Max,
}

impl CurveOp {
    fn apply(self, a: f32, b: f32) -> f32 {
        match self {
            Self::Add => a + b,
            Self::Multiply => a * b,
            Self::Min => a.min(b),
            Self::Max => a.max(b),
        }
    }
}

impl Curve {
    /// `op(self, other)` pointwise. Two scalars give a scalar; otherwise both are resampled
    /// (linear, aligned corners) to the longer one's length first. A non-finite result (an
    /// overflow) is an error naming `name`.
    pub fn combine(&self, name: &str, other: &Curve, op: CurveOp) -> Result<Curve> {
        match (self, other) {
            (Self::Scalar(a), Self::Scalar(b)) => Curve::scalar(name, op.apply(*a, *b)),
            _ => {
                let n = self.len().max(other.len());
                let (a, b) = (self.to_frames(n), other.to_frames(n));
                Curve::frames(
                    name,
                    a.iter().zip(&b).map(|(x, y)| op.apply(*x, *y)).collect(),
                )
            }
        }
    }

    /// `a + (b − a)·t` pointwise (`t = 0` gives `a`, `t = 1` gives `b` exactly), lengths as
    /// in [`Curve::combine`].
    pub fn lerp(name: &str, a: &Curve, b: &Curve, t: &Curve) -> Result<Curve> {
        let one = |x: f32, y: f32, w: f32| {
            if w == 0.0 {
                x
            } else if w == 1.0 {
                y
            } else {
                x + (y - x) * w
            }
        };
        match (a, b, t) {
            (Self::Scalar(x), Self::Scalar(y), Self::Scalar(w)) => {
                Curve::scalar(name, one(*x, *y, *w))
            }
            _ => {
                let n = a.len().max(b.len()).max(t.len());
                let (x, y, w) = (a.to_frames(n), b.to_frames(n), t.to_frames(n));
                Curve::frames(name, (0..n).map(|i| one(x[i], y[i], w[i])).collect())
            }
        }
    }
}

impl Serialize for Curve {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        match self {
            Self::Scalar(v) => s.serialize_f32(*v),
            Self::Frames(v) => v.as_ref().serialize(s),
        }
    }
}

impl<'de> Deserialize<'de> for Curve {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Wire {
            One(f32),
            Many(Vec<f32>),
        }
        let c = match Wire::deserialize(d)? {
            Wire::One(v) => Curve::scalar("curve", v),
            Wire::Many(v) => Curve::frames("curve", v),
        };
        c.map_err(serde::de::Error::custom)
    }
}

/// Linear interpolation with aligned corners: output frame `i` of `frames` reads the source at
/// position `i * (n - 1) / (frames - 1)`.
pub fn resample_aligned(src: &[f32], frames: usize) -> Vec<f32> {
    (0..frames)
        .map(|i| sample_aligned(src, i, frames))
        .collect()
}

fn sample_aligned(src: &[f32], i: usize, frames: usize) -> f32 {
    let n = src.len();
    if n == 0 {
        return 0.0;
    }
    if n == 1 || frames <= 1 {
        return src[0];
    }
    let pos = i as f64 * (n - 1) as f64 / (frames - 1) as f64;
    let lo = (pos.floor() as usize).min(n - 1);
    let hi = (lo + 1).min(n - 1);
    let w = (pos - lo as f64) as f32;
    if w == 0.0 {
        src[lo]
    } else {
        src[lo] + (src[hi] - src[lo]) * w
    }
}

/// Curves as front ends describe them (JSON `{"type": ...}` or the CLI's `kind:args` text).
///
/// Periodic shapes are laid over the normalised song position τ ∈ [0, 1] (frame `i` of `T` has
/// τ = i / (T − 1)) and repeat `cycles` times over the song.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum CurveSpec {
    Constant {
        value: f32,
    },
    Ramp {
        start: f32,
        end: f32,
    },
    Sine {
        #[serde(default)]
        min: f32,
        #[serde(default = "one")]
        max: f32,
        #[serde(default = "one")]
        cycles: f32,
        #[serde(default)]
        phase: f32,
    },
    /// Triangular bumps: each cycle rises and falls within the first `duty` of its period.
    Pulse {
        #[serde(default)]
        min: f32,
        #[serde(default = "one")]
        max: f32,
        #[serde(default = "one")]
        cycles: f32,
        #[serde(default = "quarter")]
        duty: f32,
    },
    Square {
        #[serde(default)]
        min: f32,
        #[serde(default = "one")]
        max: f32,
        #[serde(default = "one")]
        cycles: f32,
        #[serde(default = "half")]
        duty: f32,
    },
    Raw {
        values: Vec<f32>,
    },
    /// `a + b`.
    Add {
        a: Box<CurveSpec>,
        b: Box<CurveSpec>,
    },
    /// `a · b`.
    Multiply {
        a: Box<CurveSpec>,
        b: Box<CurveSpec>,
    },
    /// `min(a, b)`.
    Min {
        a: Box<CurveSpec>,
        b: Box<CurveSpec>,
    },
    /// `max(a, b)`.
    Max {
        a: Box<CurveSpec>,
        b: Box<CurveSpec>,
    },
    /// `a + (b − a)·t`.
    Lerp {
        a: Box<CurveSpec>,
        b: Box<CurveSpec>,
        t: Box<CurveSpec>,
    },
}

/// Deepest nesting of curve maths a spec may have (a leaf shape is depth 1).
pub const MAX_CURVE_DEPTH: usize = 8;

fn one() -> f32 {
    1.0
}
fn half() -> f32 {
    0.5
}
fn quarter() -> f32 {
    0.25
}

impl CurveSpec {
    /// Parse the CLI form: `0.7`, `const:0.7`, `ramp:A:B`, `sine:MIN:MAX:CYCLES[:PHASE]`,
    /// `pulse:MIN:MAX:CYCLES[:DUTY]`, `square:MIN:MAX:CYCLES[:DUTY]`, `raw:v1,v2,...`, or a JSON
    /// object.
    pub fn parse(name: &str, text: &str) -> Result<Self> {
        let text = text.trim();
        if text.is_empty() {
            return Err(EngineError::curve(name, "empty curve spec"));
        }
        if text.starts_with('{') {
            let spec: CurveSpec = serde_json::from_str(text)
                .map_err(|e| EngineError::curve(name, format!("bad JSON curve spec: {e}")))?;
            spec.validate(name)?;
            return Ok(spec);
        }
        let num = |s: &str| -> Result<f32> {
            let v: f32 = s
                .trim()
                .parse()
                .map_err(|_| EngineError::curve(name, format!("`{s}` is not a number")))?;
            if !v.is_finite() {
                return Err(EngineError::curve(name, format!("value {s} is not finite")));
            }
            Ok(v)
        };
        if let Ok(v) = text.parse::<f32>() {
            if !v.is_finite() {
                return Err(EngineError::curve(
                    name,
                    format!("value {text} is not finite"),
                ));
            }
            return Ok(Self::Constant { value: v });
        }
        let (kind, rest) = text.split_once(':').ok_or_else(|| {
            EngineError::curve(
                name,
                format!(
                    "`{text}` is neither a number nor KIND:ARGS \
                     (const, ramp, sine, pulse, square, raw)"
                ),
            )
        })?;
        let args: Vec<&str> = rest.split(':').collect();
        let need = |lo: usize, hi: usize| -> Result<()> {
            if args.len() < lo || args.len() > hi {
                return Err(EngineError::curve(
                    name,
                    format!("`{kind}` takes {lo}..={hi} arguments, got {}", args.len()),
                ));
            }
            Ok(())
        };
        let spec = match kind {
            "const" | "constant" => {
                need(1, 1)?;
                Self::Constant {
                    value: num(args[0])?,
                }
            }
            "ramp" => {
                need(2, 2)?;
                Self::Ramp {
                    start: num(args[0])?,
                    end: num(args[1])?,
                }
            }
            "sine" => {
                need(3, 4)?;
                Self::Sine {
                    min: num(args[0])?,
                    max: num(args[1])?,
                    cycles: num(args[2])?,
                    phase: if args.len() > 3 { num(args[3])? } else { 0.0 },
                }
            }
            "pulse" => {
                need(3, 4)?;
                Self::Pulse {
                    min: num(args[0])?,
                    max: num(args[1])?,
                    cycles: num(args[2])?,
                    duty: if args.len() > 3 { num(args[3])? } else { 0.25 },
                }
            }
            "square" => {
                need(3, 4)?;
                Self::Square {
                    min: num(args[0])?,
                    max: num(args[1])?,
                    cycles: num(args[2])?,
                    duty: if args.len() > 3 { num(args[3])? } else { 0.5 },
                }
            }
            "raw" => {
                let values = rest
                    .split(',')
                    .filter(|s| !s.trim().is_empty())
                    .map(num)
                    .collect::<Result<Vec<_>>>()?;
                Self::Raw { values }
            }
            other => {
                return Err(EngineError::curve(
                    name,
                    format!("unknown curve kind `{other}` (const, ramp, sine, pulse, square, raw)"),
                ));
            }
        };
        spec.validate(name)?;
        Ok(spec)
    }

    /// Nesting depth: 1 for a shape, 1 + the deepest operand for curve maths.
    pub fn depth(&self) -> usize {
        match self {
            Self::Add { a, b }
            | Self::Multiply { a, b }
            | Self::Min { a, b }
            | Self::Max { a, b } => 1 + a.depth().max(b.depth()),
            Self::Lerp { a, b, t } => 1 + a.depth().max(b.depth()).max(t.depth()),
            _ => 1,
        }
    }

    /// Check every number is finite, every shape parameter is in range and curve maths nests
    /// at most [`MAX_CURVE_DEPTH`] deep.
    pub fn validate(&self, name: &str) -> Result<()> {
        let depth = self.depth();
        if depth > MAX_CURVE_DEPTH {
            return Err(EngineError::curve(
                name,
                format!("curve maths nests {depth} deep (at most {MAX_CURVE_DEPTH})"),
            ));
        }
        self.validate_node(name)
    }

    fn validate_node(&self, name: &str) -> Result<()> {
        let finite = |what: &str, v: f32| -> Result<()> {
            if v.is_finite() {
                Ok(())
            } else {
                Err(EngineError::curve(
                    name,
                    format!("{what} = {v} is not finite"),
                ))
            }
        };
        match self {
            Self::Constant { value } => finite("value", *value),
            Self::Ramp { start, end } => {
                finite("start", *start)?;
                finite("end", *end)
            }
            Self::Sine {
                min,
                max,
                cycles,
                phase,
            } => {
                finite("min", *min)?;
                finite("max", *max)?;
                finite("phase", *phase)?;
                check_cycles(name, *cycles)
            }
            Self::Pulse {
                min,
                max,
                cycles,
                duty,
            }
            | Self::Square {
                min,
                max,
                cycles,
                duty,
            } => {
                finite("min", *min)?;
                finite("max", *max)?;
                check_cycles(name, *cycles)?;
                if !(duty.is_finite() && *duty > 0.0 && *duty <= 1.0) {
                    return Err(EngineError::curve(
                        name,
                        format!("duty {duty} must be in (0, 1]"),
                    ));
                }
                Ok(())
            }
            Self::Add { a, b }
            | Self::Multiply { a, b }
            | Self::Min { a, b }
            | Self::Max { a, b } => {
                a.validate_node(name)?;
                b.validate_node(name)
            }
            Self::Lerp { a, b, t } => {
                a.validate_node(name)?;
                b.validate_node(name)?;
                t.validate_node(name)
            }
            Self::Raw { values } => {
                if values.is_empty() {
                    return Err(EngineError::curve(name, "raw curve has no values"));
                }
                if let Some((i, v)) = values.iter().enumerate().find(|(_, v)| !v.is_finite()) {
                    return Err(EngineError::curve(
                        name,
                        format!("value {v} at index {i} is not finite"),
                    ));
                }
                Ok(())
            }
        }
    }

    /// Evaluate at latent length `frames` (≥ 1).
    pub fn to_curve(&self, name: &str, frames: usize) -> Result<Curve> {
        self.validate(name)?;
        if frames == 0 {
            return Err(EngineError::curve(name, "latent length is zero"));
        }
        self.evaluate(name, frames)
    }

    fn evaluate(&self, name: &str, frames: usize) -> Result<Curve> {
        let pair = |a: &CurveSpec, b: &CurveSpec, op: CurveOp| -> Result<Curve> {
            a.evaluate(name, frames)?
                .combine(name, &b.evaluate(name, frames)?, op)
        };
        let tau = |i: usize| -> f64 {
            if frames <= 1 {
                0.0
            } else {
                i as f64 / (frames - 1) as f64
            }
        };
        let periodic = |min: f32, max: f32, f: &dyn Fn(f64) -> f64| -> Vec<f32> {
            (0..frames)
                .map(|i| (min as f64 + (max as f64 - min as f64) * f(tau(i))) as f32)
                .collect()
        };
        let values = match self {
            Self::Constant { value } => return Curve::scalar(name, *value),
            Self::Ramp { start, end } => periodic(*start, *end, &|x| x),
            Self::Sine {
                min,
                max,
                cycles,
                phase,
            } => {
                let (c, p) = (*cycles as f64, *phase as f64);
                periodic(*min, *max, &move |x| {
                    0.5 + 0.5 * libm::sin(2.0 * std::f64::consts::PI * (c * x + p))
                })
            }
            Self::Pulse {
                min,
                max,
                cycles,
                duty,
            } => {
                let (c, d) = (*cycles as f64, *duty as f64);
                periodic(*min, *max, &move |x| {
                    let ph = (c * x).rem_euclid(1.0);
                    if ph >= d {
                        0.0
                    } else {
                        1.0 - (2.0 * ph / d - 1.0).abs()
                    }
                })
            }
            Self::Square {
                min,
                max,
                cycles,
                duty,
            } => {
                let (c, d) = (*cycles as f64, *duty as f64);
                periodic(*min, *max, &move |x| {
                    if (c * x).rem_euclid(1.0) < d {
                        1.0
                    } else {
                        0.0
                    }
                })
            }
            Self::Raw { values } => resample_aligned(values, frames),
            Self::Add { a, b } => return pair(a, b, CurveOp::Add),
            Self::Multiply { a, b } => return pair(a, b, CurveOp::Multiply),
            Self::Min { a, b } => return pair(a, b, CurveOp::Min),
            Self::Max { a, b } => return pair(a, b, CurveOp::Max),
            Self::Lerp { a, b, t } => {
                return Curve::lerp(
                    name,
                    &a.evaluate(name, frames)?,
                    &b.evaluate(name, frames)?,
                    &t.evaluate(name, frames)?,
                );
            }
        };
        Curve::frames(name, values)
    }
}

fn check_cycles(name: &str, cycles: f32) -> Result<()> {
    if !(cycles.is_finite() && (0.0..=10_000.0).contains(&cycles)) {
        return Err(EngineError::curve(
            name,
            format!("cycles {cycles} must be in [0, 10000]"),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_nan_inf_and_empty() {
        assert!(Curve::scalar("vs", f32::NAN).is_err());
        assert!(Curve::frames("vs", vec![]).is_err());
        let e = Curve::frames("vs", vec![0.0, f32::INFINITY])
            .unwrap_err()
            .to_string();
        assert!(e.contains("vs") && e.contains("index 1"), "{e}");
        assert!(CurveSpec::parse("x", "raw:1,nan").is_err());
        assert!(CurveSpec::parse("x", "").is_err());
        assert!(CurveSpec::parse("x", "raw:").is_err());
        assert!(CurveSpec::parse("x", "wobble:1").is_err());
        assert!(CurveSpec::parse("x", "inf").is_err());
        assert!(CurveSpec::parse("x", r#"{"type":"raw","values":[]}"#).is_err());
        assert!(CurveSpec::parse("x", r#"{"type":"ramp","start":0}"#).is_err());
    }

    #[test]
    fn aligned_resampling_hits_both_corners() {
        let r = resample_aligned(&[0.0, 1.0], 5);
        assert_eq!(r, vec![0.0, 0.25, 0.5, 0.75, 1.0]);
        let r = resample_aligned(&[0.0, 10.0, 20.0, 30.0], 3);
        assert_eq!(r, vec![0.0, 15.0, 30.0]);
        assert_eq!(resample_aligned(&[3.0], 4), vec![3.0; 4]);
    }

    #[test]
    fn specs_evaluate_exactly() {
        let c = CurveSpec::parse("c", "ramp:0:1")
            .unwrap()
            .to_curve("c", 3)
            .unwrap();
        assert_eq!(c.to_frames(3), vec![0.0, 0.5, 1.0]);
        let c = CurveSpec::parse("c", "0.7")
            .unwrap()
            .to_curve("c", 10)
            .unwrap();
        assert_eq!(c, Curve::Scalar(0.7));
        let c = CurveSpec::parse("c", "square:0:1:2")
            .unwrap()
            .to_curve("c", 9)
            .unwrap();
        assert_eq!(
            c.to_frames(9),
            vec![1.0, 1.0, 0.0, 0.0, 1.0, 1.0, 0.0, 0.0, 1.0]
        );
        let c = CurveSpec::parse("c", "sine:0:2:1:0.25")
            .unwrap()
            .to_curve("c", 3)
            .unwrap();
        let f = c.to_frames(3);
        assert!((f[0] - 2.0).abs() < 1e-6 && f[1].abs() < 1e-6 && (f[2] - 2.0).abs() < 1e-6);
        let c = CurveSpec::parse("c", "pulse:0:1:1:1")
            .unwrap()
            .to_curve("c", 5)
            .unwrap();
        assert_eq!(c.to_frames(5), vec![0.0, 0.5, 1.0, 0.5, 0.0]);
        let json = r#"{"type":"raw","values":[0,1]}"#;
        let c = CurveSpec::parse("c", json)
            .unwrap()
            .to_curve("c", 3)
            .unwrap();
        assert_eq!(c.to_frames(3), vec![0.0, 0.5, 1.0]);
    }

    #[test]
    fn serde_round_trip() {
        let c = Curve::frames("c", vec![0.0, 0.5]).unwrap();
        let s = serde_json::to_string(&c).unwrap();
        assert_eq!(serde_json::from_str::<Curve>(&s).unwrap(), c);
        assert!(serde_json::from_str::<Curve>("[]").is_err());
        let spec = CurveSpec::Sine {
            min: 0.0,
            max: 1.0,
            cycles: 2.0,
            phase: 0.0,
        };
        let s = serde_json::to_string(&spec).unwrap();
        assert_eq!(serde_json::from_str::<CurveSpec>(&s).unwrap(), spec);
    }

    #[test]
    fn curve_maths_on_resolved_curves() {
        let ramp = Curve::frames("c", vec![0.0, 1.0]).unwrap();
        let three = Curve::frames("c", vec![2.0, 0.0, 2.0]).unwrap();
        assert_eq!(
            Curve::constant(0.5)
                .combine("c", &Curve::constant(2.0), CurveOp::Multiply)
                .unwrap(),
            Curve::Scalar(1.0)
        );
        // Different lengths meet at the longer one: the ramp becomes (0, 0.5, 1).
        let sum = ramp.combine("c", &three, CurveOp::Add).unwrap();
        assert_eq!(sum.to_frames(3), vec![2.0, 0.5, 3.0]);
        let mn = ramp.combine("c", &three, CurveOp::Min).unwrap();
        assert_eq!(mn.to_frames(3), vec![0.0, 0.0, 1.0]);
        let mx = ramp
            .combine("c", &Curve::constant(0.25), CurveOp::Max)
            .unwrap();
        assert_eq!(mx.to_frames(2), vec![0.25, 1.0]);
        let l = Curve::lerp("c", &Curve::constant(1.0), &three, &ramp).unwrap();
        assert_eq!(l.to_frames(3), vec![1.0, 0.5, 2.0]);
        // Overflow is caught, with the curve's name.
        let big = Curve::constant(f32::MAX);
        let e = big
            .combine("vs", &big, CurveOp::Add)
            .unwrap_err()
            .to_string();
        assert!(e.contains("vs") && e.contains("not finite"), "{e}");
    }

    #[test]
    fn curve_maths_specs_on_the_wire() {
        let json = r#"{"type":"add","a":{"type":"ramp","start":0,"end":1},
                       "b":{"type":"multiply","a":{"type":"constant","value":2},
                            "b":{"type":"raw","values":[1,0,1]}}}"#;
        let spec = CurveSpec::parse("c", json).unwrap();
        assert_eq!(spec.depth(), 3);
        assert_eq!(
            spec.to_curve("c", 3).unwrap().to_frames(3),
            vec![2.0, 0.5, 3.0]
        );
        let s = serde_json::to_string(&spec).unwrap();
        assert_eq!(serde_json::from_str::<CurveSpec>(&s).unwrap(), spec);
        let lerp = r#"{"type":"lerp","a":{"type":"constant","value":0},
                       "b":{"type":"constant","value":10},"t":{"type":"ramp","start":0,"end":1}}"#;
        let c = CurveSpec::parse("c", lerp)
            .unwrap()
            .to_curve("c", 5)
            .unwrap();
        assert_eq!(c.to_frames(5), vec![0.0, 2.5, 5.0, 7.5, 10.0]);
        let clip = r#"{"type":"min","a":{"type":"sine","min":0,"max":2},"b":{"type":"constant","value":1}}"#;
        let c = CurveSpec::parse("c", clip)
            .unwrap()
            .to_curve("c", 9)
            .unwrap();
        assert!(c.max() <= 1.0 && c.min() >= 0.0);
        assert_eq!(
            CurveSpec::parse("c", r#"{"type":"max","a":{"type":"constant","value":3},"b":{"type":"constant","value":4}}"#)
                .unwrap()
                .to_curve("c", 10)
                .unwrap(),
            Curve::Scalar(4.0)
        );
    }

    #[test]
    fn curve_maths_is_validated() {
        // A bad leaf anywhere is found, with the curve's name.
        let bad =
            r#"{"type":"add","a":{"type":"constant","value":1},"b":{"type":"raw","values":[]}}"#;
        let e = CurveSpec::parse("gain", bad).unwrap_err().to_string();
        assert!(e.contains("gain") && e.contains("no values"), "{e}");
        let bad = r#"{"type":"lerp","a":{"type":"constant","value":1},"b":{"type":"constant","value":1},
                      "t":{"type":"pulse","duty":0}}"#;
        assert!(CurveSpec::parse("c", bad).is_err());
        // A missing operand or an unknown field is a parse error.
        assert!(
            CurveSpec::parse("c", r#"{"type":"add","a":{"type":"constant","value":1}}"#).is_err()
        );
        assert!(
            CurveSpec::parse(
                "c",
                r#"{"type":"add","a":{"type":"constant","value":1},"b":{"type":"constant","value":1},"c":1}"#
            )
            .is_err()
        );
        // Nesting is bounded.
        let mut spec = CurveSpec::Constant { value: 1.0 };
        for _ in 1..MAX_CURVE_DEPTH {
            spec = CurveSpec::Add {
                a: Box::new(spec),
                b: Box::new(CurveSpec::Constant { value: 0.0 }),
            };
        }
        assert!(spec.to_curve("c", 4).is_ok());
        let deeper = CurveSpec::Multiply {
            a: Box::new(spec),
            b: Box::new(CurveSpec::Constant { value: 1.0 }),
        };
        let e = deeper.to_curve("c", 4).unwrap_err().to_string();
        assert!(e.contains("nests 9 deep"), "{e}");
        let json = serde_json::to_string(&deeper).unwrap();
        assert!(CurveSpec::parse("c", &json).is_err());
    }
}
