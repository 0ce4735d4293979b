//! Measuring a codec's receptive field (the paper's mechanism 4, demon.md §9.1).
//!
//! A windowed decode of frames `[a, b)` with `m_before` frames of context before and `m_after`
//! after must reproduce the full decode's samples of `[a, b)`. The smallest such margins are
//! found by decoding windows of growing margin and comparing the kept samples with the full
//! decode of the same latent: a measurement of the codec as it is, not an assumption about its
//! architecture.

use candle_core::Tensor;

use crate::backend::Codec;
use crate::error::{EngineError, Result};

/// Context a windowed decode needs on each side, in latent frames.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ReceptiveField {
    pub before: usize,
    pub after: usize,
}

impl ReceptiveField {
    pub fn symmetric(m: usize) -> Self {
        Self {
            before: m,
            after: m,
        }
    }
    pub fn max(&self) -> usize {
        self.before.max(self.after)
    }
}

/// Largest |a − b| over the samples of two equal-shape channel lists.
pub fn max_abs_diff(a: &[Vec<f32>], b: &[Vec<f32>]) -> f32 {
    a.iter()
        .zip(b)
        .flat_map(|(x, y)| x.iter().zip(y).map(|(p, q)| (p - q).abs()))
        .fold(0.0, f32::max)
}

/// Decode frames `[start − before, start + keep + after)` of `latent` (`[1, T, C]`, clamped at
/// the ends, not wrapped) and return only the samples of `[start, start + keep)`.
pub fn decode_window(
    codec: &mut dyn Codec,
    latent: &Tensor,
    start: usize,
    keep: usize,
    field: ReceptiveField,
) -> Result<Vec<Vec<f32>>> {
    let t = latent.dim(1)?;
    if start + keep > t || keep == 0 {
        return Err(EngineError::param(
            "window",
            format!("[{start}, {}) is outside the {t} frames", start + keep),
        ));
    }
    let lo = start.saturating_sub(field.before);
    let hi = (start + keep + field.after).min(t);
    let kept = start - lo..start - lo + keep;
    Ok(codec
        .decode_kept(&latent.narrow(1, lo, hi - lo)?, lo as i64, kept)?
        .channels)
}

/// Measure the smallest margins at which a windowed decode of `keep` frames equals the full
/// decode within `tolerance` (max abs difference), up to `max_margin`.
///
/// Two measurements, worst case taken:
/// 1. *perturbation*: change one frame of a probe latent and find how far before and after it
///    the decoded audio moves by more than `tolerance` (a frame's reach is exactly the context a
///    window needs on the other side);
/// 2. *verification*: decode windows at `positions` places of every probe with those margins and
///    compare with the full decode; a side that is not yet exact grows until it is.
///
/// The answer depends on what the latent excites (a silent stretch has no tails), so use several
/// probes: [`probe_latents`] gives a dense Gaussian one and two sparse ones, whose isolated
/// events ring for their whole release.
pub fn measure_receptive_field(
    codec: &mut dyn Codec,
    probes: &[Tensor],
    keep: usize,
    positions: usize,
    max_margin: usize,
    tolerance: f32,
) -> Result<ReceptiveField> {
    let hop = codec.hop_samples();
    let mut field = ReceptiveField {
        before: 0,
        after: 0,
    };
    let mut fulls = Vec::with_capacity(probes.len());
    for latent in probes {
        let t = latent.dim(1)?;
        if t < keep + 2 * max_margin + 2 {
            return Err(EngineError::param(
                "probe latent",
                format!(
                    "{t} frames is too short to measure margins up to {max_margin} around {keep} kept frames"
                ),
            ));
        }
        let full = codec.decode(latent, 0)?;
        for k in 1..=positions.max(1) {
            let p = max_margin + (t - 2 * max_margin) * k / (positions.max(1) + 1);
            let reach = perturbation_reach(codec, latent, &full.channels, p, tolerance)?;
            field.before = field.before.max(reach.before.min(max_margin));
            field.after = field.after.max(reach.after.min(max_margin));
        }
        fulls.push(full);
    }
    for (latent, full) in probes.iter().zip(&fulls) {
        let t = latent.dim(1)?;
        let span = t - keep - 2 * max_margin;
        for k in 0..positions.max(1) {
            let start = max_margin + span * (2 * k + 1) / (2 * positions.max(1));
            let truth: Vec<Vec<f32>> = full
                .channels
                .iter()
                .map(|c| c[start * hop..(start + keep) * hop].to_vec())
                .collect();
            let mut exact = |f: ReceptiveField| -> Result<bool> {
                Ok(
                    max_abs_diff(&decode_window(codec, latent, start, keep, f)?, &truth)
                        <= tolerance,
                )
            };
            while !exact(ReceptiveField {
                before: field.before,
                after: max_margin,
            })? {
                if field.before >= max_margin {
                    return Err(EngineError::Backend(format!(
                        "windowed decode does not converge to the full decode within {max_margin} frames of margin"
                    )));
                }
                field.before += 1;
            }
            while !exact(ReceptiveField {
                before: max_margin,
                after: field.after,
            })? {
                if field.after >= max_margin {
                    return Err(EngineError::Backend(format!(
                        "windowed decode does not converge to the full decode within {max_margin} frames of margin"
                    )));
                }
                field.after += 1;
            }
        }
    }
    Ok(field)
}

/// How many frames after (`before`: the context a later window needs) and before (`after`)
/// frame `p` a change of that frame alone changes the decoded audio by more than `tolerance`.
pub fn perturbation_reach(
    codec: &mut dyn Codec,
    latent: &Tensor,
    base_audio: &[Vec<f32>],
    p: usize,
    tolerance: f32,
) -> Result<ReceptiveField> {
    let (_, t, c) = latent.dims3()?;
    let hop = codec.hop_samples();
    let bump = Tensor::full(2.0f32, (1, 1, c), latent.device())?;
    let mut parts = Vec::new();
    if p > 0 {
        parts.push(latent.narrow(1, 0, p)?);
    }
    parts.push(bump);
    if p + 1 < t {
        parts.push(latent.narrow(1, p + 1, t - p - 1)?);
    }
    let perturbed = Tensor::cat(&parts, 1)?;
    let audio = codec.decode(&perturbed, 0)?;
    let mut first = None;
    let mut last = None;
    for (a, b) in audio.channels.iter().zip(base_audio) {
        for (i, (x, y)) in a.iter().zip(b).enumerate() {
            if (x - y).abs() > tolerance {
                first = Some(first.map_or(i, |f: usize| f.min(i)));
                last = Some(last.map_or(i, |l: usize| l.max(i)));
            }
        }
    }
    Ok(match (first, last) {
        (Some(f), Some(l)) => ReceptiveField {
            before: (l / hop).saturating_sub(p),
            after: p.saturating_sub(f / hop),
        },
        _ => ReceptiveField {
            before: 0,
            after: 0,
        },
    })
}

/// A seeded standard-normal latent `[1, frames, channels]`: the default receptive-field probe.
pub fn probe_latent(
    frames: usize,
    channels: usize,
    seed: u64,
    device: &candle_core::Device,
) -> Result<Tensor> {
    crate::rng::normal_tensor(
        seed,
        crate::rng::NoiseStream::Custom(0xf1e1d, 0),
        frames,
        channels,
        device,
    )
}

/// The standard probe set: a dense Gaussian latent, and two sparse ones (shifted down by 1.5
/// and 2.5 standard deviations). Dense probes keep every path busy; sparse ones leave long
/// silences after isolated events, which is where release-style tails (a note ringing on after
/// it stopped) reach furthest.
pub fn probe_latents(
    frames: usize,
    channels: usize,
    device: &candle_core::Device,
) -> Result<Vec<Tensor>> {
    [(1u64, 0.0f64), (2, -1.5), (3, -2.5)]
        .iter()
        .map(
            |(seed, shift)| Ok(probe_latent(frames, channels, *seed, device)?.affine(1.0, *shift)?),
        )
        .collect()
}
