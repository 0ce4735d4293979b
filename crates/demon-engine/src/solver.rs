//! Step kernels of the flow-matching solver (demon.md §4–§6): pure tensor functions on one
//! slot's `[1, T, C]` latents. The pipeline composes them per slot per tick.
//!
//! Conventions: `x_t = t·ε + (1 − t)·x₀`, the model predicts `v ≈ ε − x₀`, so
//! `x̂₀ = x_t − t·v` and an Euler step is `x_{t'} = x_t + (t' − t)·v`.
//! Per-frame values are [`Knob`]s: a scalar, or a `[1, T, 1]` tensor broadcast over channels.

use candle_core::{DType, Device, Tensor};

use crate::curve::Curve;
use crate::error::Result;
use crate::lane::{DcwMode, DcwSettings};
use crate::wavelet::{Wavelet, dwt_forward, dwt_inverse};

/// APG's norm threshold over the time axis.
pub const APG_NORM_THRESHOLD: f64 = 2.5;

/// A resolved per-step value.
#[derive(Clone, Debug)]
pub enum Knob {
    Scalar(f64),
    /// `[1, T, 1]`.
    Frames(Tensor),
}

impl Knob {
    pub fn from_curve(curve: &Curve, frames: usize, device: &Device) -> Result<Self> {
        Ok(match curve {
            Curve::Scalar(v) => Self::Scalar(*v as f64),
            Curve::Frames(_) => Self::Frames(curve.to_tensor(frames, device)?),
        })
    }

    /// `x ⊙ k`.
    pub fn mul(&self, x: &Tensor) -> Result<Tensor> {
        Ok(match self {
            Self::Scalar(s) if *s == 1.0 => x.clone(),
            Self::Scalar(s) => x.affine(*s, 0.0)?,
            Self::Frames(k) => x.broadcast_mul(k)?,
        })
    }

    /// `k·s + b` element-wise (keeps scalars scalar).
    pub fn affine(&self, s: f64, b: f64) -> Result<Knob> {
        Ok(match self {
            Self::Scalar(v) => Self::Scalar(v * s + b),
            Self::Frames(k) => Self::Frames(k.affine(s, b)?),
        })
    }
}

/// `c ⊙ a + (1 − c) ⊙ b`, written so that `c = 1` gives `a` and `c = 0` gives `b` exactly.
pub fn mix(a: &Tensor, b: &Tensor, c: &Knob) -> Result<Tensor> {
    Ok(match c {
        Knob::Scalar(s) if *s == 1.0 => a.clone(),
        Knob::Scalar(s) if *s == 0.0 => b.clone(),
        Knob::Scalar(s) => (a.affine(*s, 0.0)? + b.affine(1.0 - *s, 0.0)?)?,
        Knob::Frames(k) => {
            let one_minus = k.affine(-1.0, 1.0)?;
            (a.broadcast_mul(k)? + b.broadcast_mul(&one_minus)?)?
        }
    })
}

/// `x̂₀ = x − t·v`.
pub fn x0_from_velocity(x: &Tensor, v: &Tensor, t: f32) -> Result<Tensor> {
    Ok((x - v.affine(t as f64, 0.0)?)?)
}

/// Euler step `x + (t' − t)·v`.
pub fn euler(x: &Tensor, v: &Tensor, t: f32, t_next: f32) -> Result<Tensor> {
    Ok((x + v.affine((t_next - t) as f64, 0.0)?)?)
}

/// Re-noise a clean estimate to level `t'`: `t'·ε + (1 − t')·x̂₀`.
pub fn renoise(x0: &Tensor, noise: &Tensor, t_next: f32) -> Result<Tensor> {
    let t = t_next as f64;
    Ok((noise.affine(t, 0.0)? + x0.affine(1.0 - t, 0.0)?)?)
}

/// ODE noise injection `x + ε ⊙ onc · t'` (annealed by the next t).
pub fn inject_noise(x: &Tensor, noise: &Tensor, onc: &Knob, t_next: f32) -> Result<Tensor> {
    let scaled = onc.mul(&noise.affine(t_next as f64, 0.0)?)?;
    Ok((x + scaled)?)
}

/// Multi-condition velocity: `Σ wᵢ ⊙ vᵢ / max(Σ wᵢ, 1e−8)`; `None` weights are 1.
pub fn blend_velocities(parts: &[(Tensor, Option<Knob>)]) -> Result<Tensor> {
    if parts.len() == 1 && parts[0].1.is_none() {
        return Ok(parts[0].0.clone());
    }
    let mut num: Option<Tensor> = None;
    let mut den: Option<Knob> = None;
    for (v, w) in parts {
        let w = w.clone().unwrap_or(Knob::Scalar(1.0));
        let term = w.mul(v)?;
        num = Some(match num {
            None => term,
            Some(n) => (n + term)?,
        });
        den = Some(match (den, &w) {
            (None, w) => w.clone(),
            (Some(Knob::Scalar(a)), Knob::Scalar(b)) => Knob::Scalar(a + b),
            (Some(Knob::Scalar(a)), Knob::Frames(b)) => Knob::Frames(b.affine(1.0, a)?),
            (Some(Knob::Frames(a)), Knob::Scalar(b)) => Knob::Frames(a.affine(1.0, *b)?),
            (Some(Knob::Frames(a)), Knob::Frames(b)) => Knob::Frames((a + b)?),
        });
    }
    let (num, den) = match (num, den) {
        (Some(n), Some(d)) => (n, d),
        _ => {
            return Err(crate::EngineError::param(
                "conditions",
                "no velocity to blend",
            ));
        }
    };
    Ok(match den {
        Knob::Scalar(d) => num.affine(1.0 / d.max(1e-8), 0.0)?,
        Knob::Frames(d) => num.broadcast_div(&d.clamp(1e-8f32, f32::MAX)?)?,
    })
}

/// Euclidean norm over the time axis (dim 1) of `[B, T, C]`, keeping dims: `[B, 1, C]`.
fn norm_over_time(x: &Tensor) -> Result<Tensor> {
    Ok(x.sqr()?.sum_keepdim(1)?.sqrt()?)
}

/// APG guidance (ACE-Step's `apg_forward`, dims = time axis) for one slot.
///
/// `momentum_buffer` is the slot's running average; it is updated in place. Guidance `g` and
/// momentum `m` may be per-frame. Returns `v_pos + (g − 1)·d⊥`, where `d` is the momentum-
/// accumulated, norm-clipped `v_pos − v_neg` and `d⊥` its part orthogonal to `v_pos`
/// (projection computed in f64).
pub fn apg(
    v_pos: &Tensor,
    v_neg: &Tensor,
    guidance: &Knob,
    momentum: &Knob,
    momentum_buffer: &mut Option<Tensor>,
) -> Result<Tensor> {
    let diff = (v_pos - v_neg)?;
    let running = match momentum_buffer.as_ref() {
        None => diff,
        Some(prev) => (diff + momentum.mul(prev)?)?,
    };
    *momentum_buffer = Some(running.clone());
    let norm = norm_over_time(&running)?;
    let scale = norm
        .recip()?
        .affine(APG_NORM_THRESHOLD, 0.0)?
        .clamp(0f32, 1f32)?;
    let d = running.broadcast_mul(&scale)?;

    let d64 = d.to_dtype(DType::F64)?;
    let v64 = v_pos.to_dtype(DType::F64)?;
    let vn = norm_over_time(&v64)?.clamp(1e-12f64, f64::MAX)?;
    let unit = v64.broadcast_div(&vn)?;
    let par = (&d64 * &unit)?.sum_keepdim(1)?.broadcast_mul(&unit)?;
    let orth = (d64 - par)?.to_dtype(v_pos.dtype())?;
    let g_minus_1 = guidance.affine(1.0, -1.0)?;
    Ok((v_pos + g_minus_1.mul(&orth)?)?)
}

/// CFG rescale (Lin et al.): pull the guided velocity's norm over time toward `v_pos`'s,
/// `r ⊙ (k·v_g) + (1 − r) ⊙ v_g` with `k = ‖v_pos‖ / ‖v_g‖`.
pub fn cfg_rescale(v_guided: &Tensor, v_pos: &Tensor, rescale: &Knob) -> Result<Tensor> {
    let np = norm_over_time(v_pos)?;
    let ng = norm_over_time(v_guided)?.clamp(1e-12f32, f32::MAX)?;
    let k = (np / ng)?;
    let rescaled = v_guided.broadcast_mul(&k)?;
    mix(&rescaled, v_guided, rescale)
}

/// One-level Haar analysis along time of `[1, T, C]`: `(low, high)`, each `[1, ⌈T/2⌉, 1, C]`.
/// Odd lengths are zero-padded, as `pytorch_wavelets` does in "zero" mode.
pub fn haar_forward(x: &Tensor) -> Result<(Tensor, Tensor)> {
    let (b, t, c) = x.dims3()?;
    let x = if t % 2 == 1 {
        x.pad_with_zeros(1, 0, 1)?
    } else {
        x.clone()
    };
    let half = t.div_ceil(2);
    let x = x.reshape((b, half, 2, c))?;
    let a = x.narrow(2, 0, 1)?;
    let bb = x.narrow(2, 1, 1)?;
    let r = std::f64::consts::FRAC_1_SQRT_2;
    Ok(((&a + &bb)?.affine(r, 0.0)?, (&a - &bb)?.affine(r, 0.0)?))
}

/// Inverse of [`haar_forward`], trimmed to `t` frames.
pub fn haar_inverse(low: &Tensor, high: &Tensor, t: usize) -> Result<Tensor> {
    let (b, half, _, c) = low.dims4()?;
    let r = std::f64::consts::FRAC_1_SQRT_2;
    let a = (low + high)?.affine(r, 0.0)?;
    let bb = (low - high)?.affine(r, 0.0)?;
    let x = Tensor::cat(&[a, bb], 2)?.reshape((b, half * 2, c))?;
    Ok(x.narrow(1, 0, t)?)
}

/// DCW post-correction of a step's output `x_next` against the clean estimate `y = x − v·t`
/// at the step's current time `t`.
///
/// The wavelet transform is linear, so the band corrections are computed on `d = x_next − y` and
/// only the correction is transformed back: `x_next + IDWT(kₗ·dₗ, kₕ·dₕ)`. This equals
/// correcting the bands of `x_next` directly, but where the correction is zero `x_next` comes
/// back bit for bit (no analysis/synthesis rounding).
pub fn dcw(x_next: &Tensor, y: &Tensor, t: f32, dcw: &DcwSettings) -> Result<Tensor> {
    if !dcw.is_active() {
        return Ok(x_next.clone());
    }
    let device = x_next.device();
    let frames = x_next.dim(1)?;
    let t = t as f64;
    let d = (x_next - y)?;
    if dcw.mode == DcwMode::Pix {
        let s = Knob::from_curve(&dcw.scaler, frames, device)?;
        return Ok((x_next + s.mul(&d)?)?);
    }
    // Haar keeps its own kernels so the default stays bit-identical to earlier releases.
    let (dl, dh) = match dcw.wavelet {
        Wavelet::Haar => haar_forward(&d)?,
        w => dwt_forward(&d, w)?,
    };
    let band = dl.dim(1)?;
    let scaled = |curve: &Curve, s: f64| -> Result<Knob> {
        Ok(match curve {
            Curve::Scalar(v) => Knob::Scalar(*v as f64 * s),
            Curve::Frames(_) => {
                let v: Vec<f32> = curve
                    .to_frames(band)
                    .iter()
                    .map(|x| (*x as f64 * s) as f32)
                    .collect();
                Knob::Frames(Tensor::from_vec(v, (1, band, 1, 1), device)?)
            }
        })
    };
    let (low, high) = match dcw.mode {
        DcwMode::Low => (scaled(&dcw.scaler, t)?, Knob::Scalar(0.0)),
        DcwMode::High => (Knob::Scalar(0.0), scaled(&dcw.scaler, 1.0 - t)?),
        DcwMode::Double => (scaled(&dcw.scaler, t)?, scaled(&dcw.high_scaler, 1.0 - t)?),
        DcwMode::Pix => unreachable!("handled above"),
    };
    let (cl, ch) = (low.mul(&dl)?, high.mul(&dh)?);
    let corr = match dcw.wavelet {
        Wavelet::Haar => haar_inverse(&cl, &ch, frames)?,
        w => dwt_inverse(&cl, &ch, frames, w)?,
    };
    Ok((x_next + corr)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t3(v: &[f32], t: usize, c: usize) -> Tensor {
        Tensor::from_vec(v.to_vec(), (1, t, c), &Device::Cpu).unwrap()
    }

    fn flat(x: &Tensor) -> Vec<f32> {
        x.flatten_all().unwrap().to_vec1().unwrap()
    }

    fn close(a: &[f32], b: &[f32], tol: f32) {
        assert_eq!(a.len(), b.len());
        for (x, y) in a.iter().zip(b) {
            assert!((x - y).abs() <= tol, "{a:?} vs {b:?}");
        }
    }

    #[test]
    fn apg_hand_computed() {
        // v_pos = (3, 4) over time, v_neg = (4, −3): d = (−1, 7), ‖d‖ = √50 → clipped to 2.5.
        let vp = t3(&[3.0, 4.0], 2, 1);
        let vn = t3(&[4.0, -3.0], 2, 1);
        let mut buf = None;
        let out = apg(&vp, &vn, &Knob::Scalar(2.0), &Knob::Scalar(-0.75), &mut buf).unwrap();
        let s = 2.5 / 50f64.sqrt();
        let d = [-s, 7.0 * s];
        let dot = d[0] * 0.6 + d[1] * 0.8;
        let orth = [d[0] - dot * 0.6, d[1] - dot * 0.8];
        close(
            &flat(&out),
            &[(3.0 + orth[0]) as f32, (4.0 + orth[1]) as f32],
            1e-5,
        );
        // The buffer keeps the unclipped running difference.
        close(&flat(buf.as_ref().unwrap()), &[-1.0, 7.0], 0.0);

        // Second step: running = d + m·prev = (−1, 7) − 0.75·(−1, 7) = (−0.25, 1.75), norm < 2.5.
        let out2 = apg(&vp, &vn, &Knob::Scalar(3.0), &Knob::Scalar(-0.75), &mut buf).unwrap();
        let d = [-0.25f64, 1.75];
        let dot = d[0] * 0.6 + d[1] * 0.8;
        let orth = [d[0] - dot * 0.6, d[1] - dot * 0.8];
        close(
            &flat(&out2),
            &[(3.0 + 2.0 * orth[0]) as f32, (4.0 + 2.0 * orth[1]) as f32],
            1e-5,
        );

        // Guidance 1 is the identity; norms are per channel.
        let vp = t3(&[1.0, 0.0, 0.0, 1.0], 2, 2);
        let vn = t3(&[0.0, 5.0, 1.0, 0.0], 2, 2);
        let out = apg(&vp, &vn, &Knob::Scalar(1.0), &Knob::Scalar(0.0), &mut None).unwrap();
        assert_eq!(flat(&out), flat(&vp));
    }

    #[test]
    fn apg_per_frame_guidance() {
        let vp = t3(&[1.0, 0.0], 2, 1);
        let vn = t3(&[0.0, 1.0], 2, 1);
        let g = Knob::Frames(t3(&[1.0, 3.0], 2, 1));
        let out = apg(&vp, &vn, &g, &Knob::Scalar(0.0), &mut None).unwrap();
        // d = (1, −1), ‖d‖ = √2 < 2.5; unit(vp) = (1, 0); d⊥ = (0, −1).
        close(&flat(&out), &[1.0, -2.0], 1e-6);
    }

    #[test]
    fn cfg_rescale_hand_computed() {
        let vg = t3(&[6.0, 8.0], 2, 1); // norm 10
        let vp = t3(&[3.0, 4.0], 2, 1); // norm 5
        close(
            &flat(&cfg_rescale(&vg, &vp, &Knob::Scalar(1.0)).unwrap()),
            &[3.0, 4.0],
            1e-6,
        );
        close(
            &flat(&cfg_rescale(&vg, &vp, &Knob::Scalar(0.0)).unwrap()),
            &[6.0, 8.0],
            0.0,
        );
        close(
            &flat(&cfg_rescale(&vg, &vp, &Knob::Scalar(0.5)).unwrap()),
            &[4.5, 6.0],
            1e-6,
        );
    }

    #[test]
    fn haar_round_trip_and_bands() {
        let x = t3(&[1.0, 3.0, 5.0, 9.0, 2.0], 5, 1);
        let (l, h) = haar_forward(&x).unwrap();
        let r = std::f32::consts::FRAC_1_SQRT_2;
        close(&flat(&l), &[4.0 * r, 14.0 * r, 2.0 * r], 1e-6);
        close(&flat(&h), &[-2.0 * r, -4.0 * r, 2.0 * r], 1e-6);
        let back = haar_inverse(&l, &h, 5).unwrap();
        close(&flat(&back), &flat(&x), 1e-6);
    }

    #[test]
    fn dcw_hand_computed() {
        let x = t3(&[1.0, 3.0], 2, 1);
        let y = t3(&[0.0, 0.0], 2, 1);
        let r = std::f64::consts::FRAC_1_SQRT_2;
        // low band L = 4r, H = −2r; t = 0.5: L += 0.5·0.1·L, H += 0.5·0.2·H.
        let s = DcwSettings {
            enabled: true,
            mode: DcwMode::Double,
            scaler: Curve::constant(0.1),
            high_scaler: Curve::constant(0.2),
            wavelet: Wavelet::Haar,
        };
        let out = flat(&dcw(&x, &y, 0.5, &s).unwrap());
        let (l, h) = (4.0 * r * 1.05, -2.0 * r * 1.1);
        close(&out, &[((l + h) * r) as f32, ((l - h) * r) as f32], 1e-6);
        // pix: x + s·(x − y).
        let s = DcwSettings {
            mode: DcwMode::Pix,
            ..s
        };
        close(&flat(&dcw(&x, &y, 0.5, &s).unwrap()), &[1.1, 3.3], 1e-6);
        // disabled or zero: identity.
        assert_eq!(
            flat(&dcw(&x, &y, 0.5, &DcwSettings::off()).unwrap()),
            vec![1.0, 3.0]
        );
        // per-frame scaler on the low band: band length 1 takes the curve's value there.
        let s = DcwSettings {
            enabled: true,
            mode: DcwMode::Low,
            scaler: Curve::frames("s", vec![0.2, 0.2]).unwrap(),
            high_scaler: Curve::constant(0.0),
            wavelet: Wavelet::Haar,
        };
        let out = flat(&dcw(&x, &y, 1.0, &s).unwrap());
        let (l, h) = (4.0 * r * 1.2, -2.0 * r);
        close(&out, &[((l + h) * r) as f32, ((l - h) * r) as f32], 1e-6);
    }

    #[test]
    fn mix_is_exact_at_the_ends() {
        let a = t3(&[0.1, 0.2, 0.3], 3, 1);
        let b = t3(&[7.0, 8.0, 9.0], 3, 1);
        let c = Knob::Frames(t3(&[1.0, 0.0, 0.5], 3, 1));
        let m = flat(&mix(&a, &b, &c).unwrap());
        assert_eq!(m[0], 0.1);
        assert_eq!(m[1], 8.0);
        assert!((m[2] - 4.65).abs() < 1e-6);
    }

    #[test]
    fn velocity_blend_weights() {
        let v1 = t3(&[1.0, 1.0], 2, 1);
        let v2 = t3(&[3.0, 3.0], 2, 1);
        let w1 = Knob::Frames(t3(&[1.0, 0.0], 2, 1));
        let w2 = Knob::Frames(t3(&[0.0, 1.0], 2, 1));
        let v = blend_velocities(&[(v1.clone(), Some(w1)), (v2.clone(), Some(w2))]).unwrap();
        assert_eq!(flat(&v), vec![1.0, 3.0]);
        let v = blend_velocities(&[(v1, None), (v2, None)]).unwrap();
        assert_eq!(flat(&v), vec![2.0, 2.0]);
    }
}
