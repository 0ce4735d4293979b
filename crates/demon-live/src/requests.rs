//! The one builder from [`Controls`] to what the engine runs: a `SlotRequest` (fixed when a
//! generation is submitted) and the `SharedLane` (read by every in-flight slot at every step).
//!
//! The offline render (`render.rs`), the live core (`core/`) and the benchmarks (`bench.rs`) all
//! build their requests here and nowhere else (a test scans the sources for `SlotRequest::new`
//! and `SharedLane` construction outside this module), so a render and a live take of the same
//! controls submit the same requests. The semantics, in one place:
//!
//! - **Conditions.** Prompt A, crossfaded toward its timbre-conditioned variant by the `timbre`
//!   knob when there is a source. With prompt B: a drawn `blend` curve blends the two per frame
//!   (velocity weights `1 − w`, `w`); otherwise the `blend` knob crossfades the conditionings
//!   (`Conditioning::lerp`, from 0.001 up); at 0 prompt B is not used. The blend default is the
//!   catalog's, 0 (front ends may start it elsewhere: `demon render --prompt-b` starts at 0.5).
//! - **Negatives** are always the negative prompt (or the backend's null condition); they act
//!   only while guidance is on.
//! - **Guidance** is on when a `guidance` curve is drawn, or the `guidance` knob is above 1
//!   (1 = off).
//! - **Source.** With a source, the request denoises it by the `denoise` knob (feedback mixes
//!   earlier outputs in) and the source is also the x0 target (so `x0_target_strength`, the
//!   `x0_target` curve, `initial_noise` and `mask` act on it). Without one, generation starts
//!   from noise (`denoise` = 1) and the source-only curves do nothing.
//! - **Shared per-step values** (velocity scale, SDE source curve, ODE noise, x0 strength,
//!   guidance, APG momentum, CFG rescale, channel gain, DCW) go to the lane, never into the
//!   request, so a change reaches every in-flight slot on the next tick. A drawn curve
//!   overrides its knob. `sde_denoise` is in the lane with the SDE solver or when drawn;
//!   ODE noise, x0 strength and CFG rescale only when above 0.

use std::collections::{BTreeMap, VecDeque};

use candle_core::Tensor;
use demon_engine::{
    ChannelGain, Conditioner, Conditioning, Curve, DcwSettings, Denoiser, LatentMask, SharedLane,
    SlotCondition, SlotRequest, SolverKind,
};

use crate::controls::{Controls, CurveId, Prompts};
use crate::error::{SessionError, SessionResult};
use crate::facts::BackendFacts;

/// Conditionings of the current prompts (and, for timbre, of the source).
#[derive(Clone, Debug)]
pub struct Conds {
    pub a: Conditioning,
    /// Prompt A conditioned on the source's timbre (when there is a source).
    pub a_timbre: Option<Conditioning>,
    /// Prompt B and its timbre variant.
    pub b: Option<(Conditioning, Option<Conditioning>)>,
    pub negative: Conditioning,
}

impl Conds {
    /// Condition the prompts; with `timbre_ref` (a source latent `[1, T, C]`) also their
    /// timbre-conditioned variants.
    pub fn prepare(
        conditioner: &mut dyn Conditioner,
        prompts: &Prompts,
        timbre_ref: Option<&Tensor>,
    ) -> SessionResult<Self> {
        let with_timbre = |cond: &mut dyn Conditioner,
                           p: &demon_engine::Prompt|
         -> SessionResult<Option<Conditioning>> {
            match timbre_ref {
                Some(r) => cond
                    .condition_with_timbre(p, r)
                    .map(Some)
                    .map_err(|e| SessionError::engine("timbre", e)),
                None => Ok(None),
            }
        };
        let a = conditioner
            .condition(&prompts.a)
            .map_err(|e| SessionError::engine("prompt", e))?;
        let a_timbre = with_timbre(conditioner, &prompts.a)?;
        let b = match prompts.b_prompt() {
            Some(p) => {
                let c = conditioner
                    .condition(&p)
                    .map_err(|e| SessionError::engine("prompt B", e))?;
                Some((c, with_timbre(conditioner, &p)?))
            }
            None => None,
        };
        let negative = match prompts.negative_prompt() {
            Some(p) => conditioner
                .condition(&p)
                .map_err(|e| SessionError::engine("negative prompt", e))?,
            None => conditioner.null_condition(&a)?,
        };
        Ok(Self {
            a,
            a_timbre,
            b,
            negative,
        })
    }
}

/// The frames `[offset, offset + frames)` of the source, if there is one.
pub fn source_chunk(
    controls: &Controls,
    chunk_offset: usize,
    frames: usize,
) -> SessionResult<Option<Tensor>> {
    Ok(match controls.source() {
        Some(s) => Some(s.latent.narrow(1, chunk_offset, frames)?),
        None => None,
    })
}

/// The frames `[offset, offset + frames)` of a reference of any length, looped (a reference
/// shorter than the song repeats, as a drum loop would).
fn looped_chunk(latent: &Tensor, offset: usize, frames: usize) -> SessionResult<Tensor> {
    let n = latent.dim(1)?;
    if n == 0 {
        return Err(SessionError::bad_value("reference", "an empty latent"));
    }
    if offset + frames <= n {
        return Ok(latent.narrow(1, offset, frames)?);
    }
    let index: Vec<u32> = (0..frames).map(|i| ((offset + i) % n) as u32).collect();
    let index = Tensor::from_vec(index, frames, latent.device())?;
    Ok(latent.index_select(&index, 1)?)
}

/// The structural context `[1, T, Cc]` of a window: the structure of the `structure`
/// reference (looped), else of the source, at the `structure` knob's strength (0 without
/// either).
pub fn structure_context(
    conditioner: &mut dyn Conditioner,
    controls: &Controls,
    chunk_offset: usize,
    frames: usize,
) -> SessionResult<Tensor> {
    let chunk = match controls.reference(crate::control::ReferenceRole::Structure) {
        Some(r) => Some(looped_chunk(&r.latent, chunk_offset, frames)?),
        None => source_chunk(controls, chunk_offset, frames)?,
    };
    let strength = if chunk.is_some() {
        controls.knobs().structure as f32
    } else {
        0.0
    };
    Ok(conditioner.context(chunk.as_ref(), frames, strength)?)
}

/// What a request is built from besides the controls: backend work done beforehand (and
/// cached by the live core) and where the request belongs.
pub struct Inputs<'a> {
    pub conds: &'a Conds,
    /// The window's structural context ([`structure_context`]).
    pub context: &'a Tensor,
    /// Earlier outputs of this window, newest first (feedback taps them).
    pub history: &'a VecDeque<Tensor>,
    /// First song frame of the window.
    pub chunk_offset: usize,
    /// The caller's label, returned with the finished latent.
    pub tag: u64,
    /// Take number: the seed is the `seed` knob plus this.
    pub take: u64,
}

/// The shared lane from the controls (see the module documentation for the rules).
pub fn build_lane(controls: &Controls, facts: &BackendFacts) -> SessionResult<SharedLane> {
    let k = controls.knobs();
    let pick = |id: CurveId, scalar: Option<f32>| -> Option<Curve> {
        controls
            .curve(id)
            .cloned()
            .or_else(|| scalar.map(Curve::constant))
    };
    let above = |v: f64, floor: f32| -> Option<f32> { ((v as f32) > floor).then_some(v as f32) };
    let mut lane = SharedLane::default();
    lane.curves.velocity_scale = pick(CurveId::VelocityScale, Some(k.velocity_scale as f32));
    lane.curves.sde_denoise =
        if controls.solver == SolverKind::Sde || controls.curve(CurveId::SdeDenoise).is_some() {
            pick(CurveId::SdeDenoise, Some(k.sde_denoise as f32))
        } else {
            None
        };
    lane.curves.ode_noise = pick(CurveId::OdeNoise, above(k.ode_noise, 0.0));
    lane.curves.x0_target_strength =
        pick(CurveId::X0TargetStrength, above(k.x0_target_strength, 0.0));
    lane.curves.guidance = pick(CurveId::Guidance, above(k.guidance, 1.0));
    lane.curves.apg_momentum = pick(CurveId::ApgMomentum, Some(k.apg_momentum as f32));
    lane.curves.cfg_rescale = pick(CurveId::CfgRescale, above(k.cfg_rescale, 0.0));
    // DEMON's layout (the engine's `ChannelGain::grouped`): eight groups, then the keystones
    // the latent has; a keystone at 1 follows its group, as DEMON builds no entry for it.
    let c = facts.latent_channels;
    let groups = k.channel_gains().map(|g| g as f32);
    let keystones: Vec<(usize, f32)> = k
        .keystone_gains()
        .into_iter()
        .filter(|&(ch, g)| ch < c && (g - 1.0).abs() > 0.01)
        .map(|(ch, g)| (ch, g as f32))
        .collect();
    // A latent of fewer channels than groups shares the first groups' gains.
    let groups = &groups[..groups.len().min(c.max(1))];
    // The `channel_gain` curve shapes the gains over the song (0 = none, 1 = all of them).
    lane.channel_gain = match ChannelGain::grouped(c, groups, &keystones)
        .ok()
        .filter(|g| !g.is_identity())
    {
        Some(gain) => match controls.curve(CurveId::ChannelGain) {
            Some(amount) => Some(gain.with_amount(amount.clone())?),
            None => Some(gain),
        },
        None => None,
    };
    lane.dcw = DcwSettings {
        enabled: controls.dcw_enabled,
        mode: controls.dcw_mode,
        wavelet: controls.dcw_wavelet,
        scaler: pick(CurveId::Dcw, Some(k.dcw as f32)).unwrap_or(Curve::constant(0.0)),
        high_scaler: pick(CurveId::DcwHigh, Some(k.dcw_high as f32))
            .unwrap_or(Curve::constant(0.0)),
    };
    lane.validate(c)?;
    Ok(lane)
}

/// While a LoRA fader slews, its strength is merged into the model's weights at most once per
/// this many ticks (200 ms at 25 ticks per second): a merge is a pass over every module the
/// adapter touches (docs/performance.md, *LoRA strength changes*), which a tick cannot afford
/// each time. The value the fader slews to, and 0, are merged as soon as they are reached.
pub const LORA_MERGE_INTERVAL_TICKS: u64 = 5;

/// What the model's adapters hold: per adapter id, the strength merged and the tick it was.
pub type AppliedAdapters = BTreeMap<String, (f64, u64)>;

/// LoRA strengths from the controls onto the model's adapters at `tick`, for those that differ
/// from `applied` (updated), no more often than [`LORA_MERGE_INTERVAL_TICKS`] while a fader
/// slews. Global weights change only here, between ticks; the rate depends only on ticks, so a
/// replay merges at the same ticks.
pub fn push_adapters(
    controls: &Controls,
    denoiser: &mut dyn Denoiser,
    applied: &mut AppliedAdapters,
    tick: u64,
) -> SessionResult<()> {
    for (id, v, target) in controls.lora_strengths() {
        let due = match applied.get(id) {
            None => true,
            Some((held, _)) if *held == v => false,
            Some((_, at)) => v == target || v == 0.0 || tick >= at + LORA_MERGE_INTERVAL_TICKS,
        };
        if due {
            if let Some(a) = denoiser.adapters() {
                a.set_strength(id, v as f32)
                    .map_err(|e| SessionError::engine(&format!("LoRA `{id}`"), e))?;
            }
            applied.insert(id.to_string(), (v, tick));
        }
    }
    Ok(())
}

/// The slot request and the shared lane for a window of `frames` latent frames.
pub fn build(
    controls: &Controls,
    facts: &BackendFacts,
    frames: usize,
    inputs: &Inputs,
) -> SessionResult<(SlotRequest, SharedLane)> {
    let lane = build_lane(controls, facts)?;
    let t = frames;
    let k = controls.knobs();
    let conds = inputs.conds;
    let timbre = k.timbre as f32;
    let blend = k.blend as f32;
    let with_timbre =
        |plain: &Conditioning, tim: &Option<Conditioning>| -> SessionResult<Conditioning> {
            match tim {
                Some(tc) if timbre > 0.001 => Ok(Conditioning::lerp(plain, tc, timbre.min(1.0))?),
                _ => Ok(plain.clone()),
            }
        };
    let ca = with_timbre(&conds.a, &conds.a_timbre)?;
    let conditions = match (&conds.b, controls.curve(CurveId::Blend)) {
        (Some((b, bt)), Some(curve)) => {
            let cb = with_timbre(b, bt)?;
            let w = curve.clamped(0.0, 1.0);
            let wa = w.map("blend", |x| 1.0 - x)?;
            vec![
                SlotCondition::weighted(ca, wa),
                SlotCondition::weighted(cb, w),
            ]
        }
        (Some((b, bt)), None) if blend > 0.001 => {
            let cb = with_timbre(b, bt)?;
            vec![SlotCondition::new(Conditioning::lerp(
                &ca,
                &cb,
                blend.min(1.0),
            )?)]
        }
        _ => vec![SlotCondition::new(ca)],
    };
    let src_chunk = source_chunk(controls, inputs.chunk_offset, t)?;
    let seed = controls.seed().wrapping_add(inputs.take);
    let mut r = SlotRequest::new(
        conditions[0].conditioning.clone(),
        inputs.context.clone(),
        t,
        seed,
    );
    r.conditions = conditions;
    r.tag = inputs.tag;
    r.schedule.steps = controls.steps();
    r.schedule.shift = k.shift as f32;
    r.solver = controls.solver;
    r.cfg_mode = controls.cfg_mode;
    r.negatives = vec![SlotCondition::new(conds.negative.clone())];
    // Feedback: earlier outputs mixed into the source (or standing in for a missing one).
    let feedback = k.feedback as f32;
    let tap = (k.feedback_depth as usize).clamp(1, 8) - 1;
    let tap_latent = inputs
        .history
        .get(tap)
        .filter(|h| h.dims() == [1, t, facts.latent_channels]);
    let fed = match (feedback > 0.0, tap_latent) {
        (true, Some(h)) => match &src_chunk {
            Some(s) => {
                Some((s * (1.0 - feedback as f64)).and_then(|a| a + (h * feedback as f64)?)?)
            }
            None => Some(h.clone()),
        },
        _ => src_chunk.clone(),
    };
    r.schedule.denoise = if fed.is_some() { k.denoise as f32 } else { 1.0 };
    r.source = fed;
    if let Some(src) = &src_chunk {
        r.initial_noise_curve = controls
            .curve(CurveId::InitialNoise)
            .map(|c| c.clamped(0.0, 1.0));
        r.x0_target_curve = controls
            .curve(CurveId::X0Target)
            .map(|c| c.clamped(0.0, 1.0));
        r.latent_mask = controls.curve(CurveId::Mask).map(|m| LatentMask {
            mask: m.clamped(0.0, 1.0),
            original: src.clone(),
        });
    }
    r.x0_target = src_chunk;
    Ok((r, lane))
}

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use candle_core::{Device, Tensor};
    use demon_engine::{
        AdapterInfo, Adapters, DenoiseBatch, Denoiser, Prompt, Result as EngineResult,
    };
    use demon_sketch::SketchDenoiser;

    use super::{AppliedAdapters, LORA_MERGE_INTERVAL_TICKS, build_lane, push_adapters};
    use crate::controls::CurveId;
    use crate::{BackendFacts, Controls};

    /// The sketch denoiser, counting the strength changes that reach its adapters.
    struct Counting {
        inner: SketchDenoiser,
        merges: Arc<AtomicUsize>,
    }

    impl Denoiser for Counting {
        fn latent_channels(&self) -> usize {
            self.inner.latent_channels()
        }
        fn context_channels(&self) -> usize {
            self.inner.context_channels()
        }
        fn device(&self) -> &Device {
            self.inner.device()
        }
        fn velocity(&mut self, batch: &DenoiseBatch<'_>) -> EngineResult<Tensor> {
            self.inner.velocity(batch)
        }
        fn adapters(&mut self) -> Option<&mut dyn Adapters> {
            Some(self)
        }
    }

    impl Adapters for Counting {
        fn list(&self) -> Vec<AdapterInfo> {
            self.inner.list()
        }
        fn set_strength(&mut self, id: &str, strength: f32) -> EngineResult<()> {
            self.merges.fetch_add(1, Ordering::Relaxed);
            self.inner.set_strength(id, strength)
        }
    }

    /// The keystone knobs replace their channel's group gain (and a keystone at 1 follows the
    /// group); the `channel_gain` curve becomes the gains' amount per frame, range-checked
    /// when drawn; without any gain the curve changes nothing.
    #[test]
    fn keystones_and_the_channel_gain_curve_reach_the_lane() {
        let mut backend = demon_sketch::backend_with(Box::new(SketchDenoiser::new(Device::Cpu)));
        let facts = BackendFacts::of(&mut backend);
        let mut c = Controls::new(Prompt::tags("house"), 100);
        c.set_slew_off();
        let ramp = demon_engine::CurveSpec::parse("channel_gain", "ramp:0:1").unwrap();
        c.set_curve("channel_gain", Some(&ramp)).unwrap();
        assert_eq!(
            build_lane(&c, &facts).unwrap().channel_gain,
            None,
            "no gain, no curve"
        );

        c.set_knob("ch_g1", 2.0, &facts).unwrap();
        c.set_knob("ch_k13", 0.5, &facts).unwrap();
        c.set_knob("ch_k56", 1.0, &facts).unwrap();
        let gain = build_lane(&c, &facts).unwrap().channel_gain.unwrap();
        let mut expected = vec![1.0f32; 64];
        expected[8..16].fill(2.0);
        expected[13] = 0.5;
        assert_eq!(gain.gains, expected);
        let amount = gain.amount.expect("the drawn curve is the amount");
        assert_eq!(amount, c.curve(CurveId::ChannelGain).unwrap().clone());

        c.set_knob("ch_k56", 3.0, &facts).unwrap();
        let gain = build_lane(&c, &facts).unwrap().channel_gain.unwrap();
        assert_eq!((gain.gains[56], gain.gains[55]), (3.0, 1.0));

        let too_much = demon_engine::CurveSpec::parse("channel_gain", "ramp:0:2").unwrap();
        let err = c
            .set_curve("channel_gain", Some(&too_much))
            .unwrap_err()
            .to_string();
        assert!(err.contains("channel_gain"), "{err}");
    }

    /// A slewing LoRA fader reaches the model at most once per interval, and its target as
    /// soon as the slew arrives: 3 merges for a 0 → 1 move over 13 ticks, not 13.
    #[test]
    fn a_slewing_lora_fader_merges_at_a_capped_rate() {
        let merges = Arc::new(AtomicUsize::new(0));
        let d = Device::Cpu;
        let mut backend = demon_sketch::backend_with(Box::new(Counting {
            inner: SketchDenoiser::new(d),
            merges: merges.clone(),
        }));
        let facts = BackendFacts::of(&mut backend);
        let mut c = Controls::new(Prompt::tags("house"), 100);
        // 1 range (0..2) per second at 25 ticks per second: 0.08 a tick, 13 ticks from 0 to 1.
        c.set_slew(1.0).unwrap();
        c.set_knob("lora:funk", 0.0, &facts).unwrap();
        let mut applied = AppliedAdapters::new();
        push_adapters(&c, backend.denoiser.as_mut(), &mut applied, 0).unwrap();
        assert_eq!(
            merges.load(Ordering::Relaxed),
            1,
            "the first strength is merged"
        );
        c.set_knob("lora:funk", 1.0, &facts).unwrap();
        let mut at = Vec::new();
        for tick in 1..30u64 {
            c.advance(0.04);
            let before = merges.load(Ordering::Relaxed);
            push_adapters(&c, backend.denoiser.as_mut(), &mut applied, tick).unwrap();
            if merges.load(Ordering::Relaxed) > before {
                at.push(tick);
            }
        }
        // Every 5 ticks while it moves (0.4, 0.8), then at once when 1.0 is reached.
        let every = LORA_MERGE_INTERVAL_TICKS;
        assert_eq!(at, vec![every, 2 * every, 13], "merged at ticks {at:?}");
        assert_eq!(applied["funk"].0, 1.0, "the target is what the model holds");
        let listed = backend.denoiser.adapters().unwrap().list();
        let funk = listed.iter().find(|a| a.id == "funk").unwrap();
        assert_eq!(funk.strength, 1.0);
    }

    /// Every `.rs` file under `dir`, with its text.
    fn sources(dir: &Path, out: &mut Vec<(String, String)>) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                sources(&p, out);
            } else if p.extension().is_some_and(|x| x == "rs")
                && let Ok(text) = std::fs::read_to_string(&p)
            {
                out.push((p.display().to_string(), text));
            }
        }
    }

    /// Renders, the live core, the benchmarks and the front ends reach the engine's requests
    /// only through this builder: no other source of the runtime, CLI or server constructs a
    /// `SlotRequest` or fills a `SharedLane`, so neither path can bypass `Controls`.
    #[test]
    fn requests_and_lanes_are_built_here_only() {
        let crates = Path::new(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .expect("crates directory");
        let mut files = Vec::new();
        for c in ["demon-live", "demon-cli", "demon-server"] {
            sources(&crates.join(c).join("src"), &mut files);
        }
        assert!(
            files.iter().any(|(p, _)| p.ends_with("render.rs")),
            "the scan found the sources"
        );
        let constructions = [
            "SlotRequest::new(",
            "SlotRequest::from_context(",
            "SlotRequest {",
            "SharedLane {",
        ];
        // A line that writes a lane or request field (`lane.dcw = …`, `r.schedule.x = …`).
        let writes_field = |line: &str| {
            let l = line.trim_start();
            let lhs = l.split(" = ").next().unwrap_or("");
            l.contains(" = ")
                && (lhs.starts_with("lane.")
                    || lhs.contains(".schedule.")
                    || lhs.contains(".curves."))
        };
        let offenders: Vec<String> = files
            .iter()
            .filter(|(p, _)| !p.ends_with("requests.rs"))
            .flat_map(|(p, text)| {
                let built = constructions
                    .iter()
                    .filter(|c| text.contains(*c))
                    .map(move |c| format!("{p}: {c}"));
                let written = text
                    .lines()
                    .filter(|l| writes_field(l))
                    .map(move |l| format!("{p}: {}", l.trim()));
                built.chain(written)
            })
            .collect();
        assert!(
            offenders.is_empty(),
            "built outside requests.rs: {offenders:?}"
        );
    }
}
