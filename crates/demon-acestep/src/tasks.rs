//! ACE-Step task helpers (acestep.md §2.2, §2.5, §2.6): build demon-engine `SlotRequest`s for
//! text-to-music, cover (FSQ-round-trip hint, `audio_cover_strength` as a step-range switch of
//! conditioning and context) and repaint (chunk-mask channel plus a silence-filled region), and
//! the turbo timestep tables, which are the engine's own schedules at denoise 1.

use candle_core::Tensor;
use demon_engine::{
    Curve, LatentMask, Prompt, Schedule, ScheduleParams, SlotCondition, SlotRequest,
};

use crate::conditioner::AceStepConditioner;
use crate::error::{AceStepError, Result};
use crate::text::Task;

/// Turbo checkpoints run exactly this many steps.
pub const TURBO_STEPS: usize = 8;

/// Upstream rounds `shift` to the nearest of the distilled values {1, 2, 3}.
pub fn turbo_shift(shift: f32) -> f32 {
    [1.0f32, 2.0, 3.0]
        .into_iter()
        .min_by(|a, b| (a - shift).abs().total_cmp(&(b - shift).abs()))
        .unwrap_or(3.0)
}

/// Turbo schedule parameters (8 steps, full denoise, shift snapped to {1, 2, 3}).
pub fn turbo_params(shift: f32) -> ScheduleParams {
    ScheduleParams {
        steps: TURBO_STEPS,
        shift: turbo_shift(shift),
        denoise: 1.0,
    }
}

/// The 8 timesteps `t₀…t₇` of the turbo table for `shift` (the last step jumps to x̂₀).
pub fn turbo_timesteps(shift: f32) -> Result<Vec<f32>> {
    let s = Schedule::new(turbo_params(shift)).map_err(|e| AceStepError::input(e.to_string()))?;
    Ok(s.timesteps[..TURBO_STEPS].to_vec())
}

fn check_latent(c: &AceStepConditioner, latent: &Tensor) -> Result<usize> {
    let ch = c.config().audio_acoustic_hidden_dim;
    match latent.dims() {
        [1, t, cc] if *cc == ch && *t > 0 => Ok(*t),
        d => Err(AceStepError::input(format!(
            "source latent must be [1, T, {ch}], got {d:?}"
        ))),
    }
}

/// Text-to-music: text2music conditioning, neutral context `[silence | 1]`, turbo schedule.
pub fn text_to_music(
    c: &mut AceStepConditioner,
    prompt: &Prompt,
    frames: usize,
    seed: u64,
    shift: f32,
) -> Result<SlotRequest> {
    if frames == 0 {
        return Err(AceStepError::input("latent length is zero"));
    }
    let cond = c.condition_for(prompt, Task::Text2Music)?;
    let ctx = c.context_from(&c.silence(frames)?, &vec![1.0; frames])?;
    let mut req = SlotRequest::from_context(cond, ctx, seed)?;
    req.schedule = turbo_params(shift);
    Ok(req)
}

/// Cover: the steps before `⌊8·cover_strength⌋` use the cover instruction and the context
/// `[fsq_hint(source) | 1]`; the remaining steps switch to the text2music conditioning and the
/// neutral context (upstream `audio_cover_strength`; the engine re-keys the cross-attention
/// cache because the conditioning id changes).
pub fn cover(
    c: &mut AceStepConditioner,
    prompt: &Prompt,
    source: &Tensor,
    cover_strength: f32,
    seed: u64,
    shift: f32,
) -> Result<SlotRequest> {
    let frames = check_latent(c, source)?;
    if !(cover_strength.is_finite() && (0.0..=1.0).contains(&cover_strength)) {
        return Err(AceStepError::input(format!(
            "audio_cover_strength {cover_strength} is outside [0, 1]"
        )));
    }
    let ones = vec![1.0; frames];
    let neutral = c.context_from(&c.silence(frames)?, &ones)?;
    let t2m = c.condition_for(prompt, Task::Text2Music)?;
    // Upstream: cover_steps = int(steps · strength); steps [0, cover_steps) use the cover set.
    let cover_steps = (TURBO_STEPS as f32 * cover_strength).floor() as usize;
    let mut req = if cover_steps == 0 {
        SlotRequest::new(t2m, neutral, frames, seed)
    } else {
        let hint = c.fsq_hint(source)?;
        let cover_ctx = c.context_from(&hint, &ones)?;
        let cover_cond = c.condition_for(prompt, Task::Cover)?;
        let mut req = SlotRequest::new(cover_cond.clone(), cover_ctx, frames, seed);
        if cover_steps < TURBO_STEPS {
            let switch = cover_steps as f32 / TURBO_STEPS as f32;
            req.conditions = vec![SlotCondition::in_range(cover_cond, 0.0, switch), {
                let mut s = SlotCondition::in_range(t2m, switch, 1.0);
                s.context = Some(neutral);
                s
            }];
        }
        req
    };
    req.schedule = turbo_params(shift);
    Ok(req)
}

/// Repaint frames `region` (`[start, end)`) of `source`: the context keeps the source outside the region
/// and silence inside, with the chunk mask 1 inside and 0 outside (upstream repaint). With
/// `pin_outside`, the engine's two-sided latent mask also keeps the frames outside the region
/// exactly equal to the source in the result.
pub fn repaint(
    c: &mut AceStepConditioner,
    prompt: &Prompt,
    source: &Tensor,
    region: std::ops::Range<usize>,
    pin_outside: bool,
    seed: u64,
    shift: f32,
) -> Result<SlotRequest> {
    let frames = check_latent(c, source)?;
    let (start, end) = (region.start, region.end);
    if start >= end || end > frames {
        return Err(AceStepError::input(format!(
            "repaint region [{start}, {end}) is empty or outside 0..{frames}"
        )));
    }
    let mask: Vec<f32> = (0..frames)
        .map(|i| if (start..end).contains(&i) { 1.0 } else { 0.0 })
        .collect();
    let silence = c.silence(frames)?;
    let region = silence.narrow(1, start, end - start)?;
    let mut parts = Vec::new();
    if start > 0 {
        parts.push(source.narrow(1, 0, start)?);
    }
    parts.push(region);
    if end < frames {
        parts.push(source.narrow(1, end, frames - end)?);
    }
    let src = Tensor::cat(&parts, 1)?;
    let ctx = c.context_from(&src, &mask)?;
    let cond = c.condition_for(prompt, Task::Repaint)?;
    let mut req = SlotRequest::from_context(cond, ctx, seed)?;
    req.schedule = turbo_params(shift);
    if pin_outside {
        let curve =
            Curve::frames("repaint mask", mask).map_err(|e| AceStepError::input(e.to_string()))?;
        req.latent_mask = Some(LatentMask {
            mask: curve,
            original: source.clone(),
        });
    }
    Ok(req)
}
