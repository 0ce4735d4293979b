//! `StreamPipeline`: the ring of in-flight generations (demon.md §2, the paper's mechanism 1).
//!
//! D slots each own a request, a schedule (from the request's own denoise), a seed, a source,
//! curves and masks. Every tick runs ONE batched `Denoiser` call that advances every active slot
//! by one step (a second call only for guidance negatives), then integrates each slot with the
//! solver kernels. A moving denoise slider is therefore tracked without flushing the ring.
//!
//! Differences from the Python reference, on purpose:
//! - a finished latent is delivered at the end of the tick that completes it (the reference
//!   returned it one tick later, and at most one per tick);
//! - shrinking the depth lets the extra slots drain instead of discarding them;
//! - slots whose latent length differs from the newest request (a source swap to another
//!   length) are drained in their own batched call instead of being dropped;
//! - the state of a tick is committed only after every kernel succeeded, so a failing backend
//!   call leaves the ring exactly as it was.
//!
//! [`ScheduleMode::GlobalReset`] reproduces the StreamDiffusion-style design (one schedule for
//! the whole ring; a denoise change discards all in-flight work) for comparison only.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Instant;

use candle_core::{Device, Tensor};

use crate::backend::{Audio, Codec, DenoiseBatch, Denoiser};
use crate::curve::Curve;
use crate::error::{EngineError, Result};
use crate::lane::SharedLane;
use crate::request::{
    CfgMode, DEFAULT_APG_MOMENTUM, SlotCondition, SlotRequest, SolverKind, StepCurves,
};
use crate::rng::{NoiseStream, normal_tensor};
use crate::schedule::{Schedule, ScheduleCache, ScheduleParams};
use crate::solver::{self, Knob};

/// Largest ring depth.
pub const MAX_DEPTH: usize = 16;

/// Per-slot schedules (DEMON) or one global schedule reset on every change (StreamDiffusion).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ScheduleMode {
    #[default]
    PerSlot,
    GlobalReset,
}

/// A finished generation.
#[derive(Clone, Debug)]
pub struct Finished {
    pub request_id: u64,
    pub tag: u64,
    pub seed: u64,
    /// `[1, T, C]` clean latent.
    pub latent: Tensor,
    pub submitted_tick: u64,
    pub started_tick: u64,
    /// The tick that ran its last step.
    pub finished_tick: u64,
}

/// What one tick did.
#[derive(Clone, Debug, Default)]
pub struct TickReport {
    /// Index of this tick (0-based).
    pub tick: u64,
    pub finished: Vec<Finished>,
    /// Slots advanced this tick.
    pub active_slots: usize,
    /// Rows in the positive (conditional) denoiser calls.
    pub positive_rows: usize,
    /// Rows in the negative (guidance) denoiser calls.
    pub negative_rows: usize,
    /// Denoiser calls made.
    pub denoiser_calls: usize,
    /// Slots started from the queue this tick.
    pub started: usize,
    /// Wall time of this tick inside the `Denoiser` calls, ms. On a GPU this is the time to
    /// queue the work plus whatever the backend waits for (candle runs kernels asynchronously).
    pub denoiser_ms: f64,
    /// Wall time of the engine's own work in this tick (everything but the denoiser calls:
    /// starting slots, model inputs, velocity blending, guidance, the solver step, committing),
    /// ms.
    pub solver_ms: f64,
    /// Wall time of decoding this tick's finished latents, ms: 0 after [`StreamPipeline::tick`]
    /// (the pipeline decodes nothing), set by [`TickReport::decode_finished`]; a runtime that
    /// decodes windows itself may record its own time here.
    pub decode_ms: f64,
}

impl TickReport {
    /// `denoiser_ms + solver_ms + decode_ms`.
    pub fn total_ms(&self) -> f64 {
        self.denoiser_ms + self.solver_ms + self.decode_ms
    }

    /// Decode every latent finished this tick with `codec` (whole latents, in order), adding
    /// the time to [`TickReport::decode_ms`].
    pub fn decode_finished(&mut self, codec: &mut dyn Codec) -> Result<Vec<Audio>> {
        let started = Instant::now();
        let audio = self
            .finished
            .iter()
            .map(|f| codec.decode(&f.latent, 0))
            .collect::<Result<Vec<_>>>()?;
        self.decode_ms += started.elapsed().as_secs_f64() * 1e3;
        Ok(audio)
    }
}

/// Counters since construction.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PipelineStats {
    pub ticks: u64,
    pub submitted: u64,
    /// Requests pushed out of the full queue (drop-oldest) or made stale by a length change.
    pub dropped_from_queue: u64,
    /// In-flight generations thrown away (only ever by the global-reset mode).
    pub discarded_in_flight: u64,
    pub completed: u64,
}

/// Read-only view of an in-flight slot.
#[derive(Clone, Debug)]
pub struct SlotView<'a> {
    pub request_id: u64,
    pub tag: u64,
    pub step: usize,
    pub passes: usize,
    pub schedule: &'a Schedule,
    /// `[1, T, C]` current state.
    pub latent: &'a Tensor,
    pub started_tick: u64,
}

struct Queued {
    id: u64,
    request: SlotRequest,
    submitted_tick: u64,
}

struct Slot {
    id: u64,
    req: SlotRequest,
    schedule: Arc<Schedule>,
    x: Tensor,
    step: usize,
    momentum: Option<Tensor>,
    initial_noise: Option<Tensor>,
    neg_cached: Option<Tensor>,
    mask_noise: Option<Tensor>,
    mask_knob: Option<Knob>,
    own: ResolvedCurves,
    submitted_tick: u64,
    started_tick: u64,
    /// The initial state holds the clean source (`t₀·ε + (1 − t₀)·source` with t₀ < 1, or the
    /// initial-noise curve's mix): the denoiser is told so through `DenoiseBatch::sources`.
    from_source: bool,
}

/// The seven per-step curves as knobs (converted once).
#[derive(Default, Clone)]
struct ResolvedCurves {
    velocity_scale: Option<Knob>,
    sde_denoise: Option<Knob>,
    ode_noise: Option<Knob>,
    x0_target_strength: Option<Knob>,
    guidance: Option<Knob>,
    apg_momentum: Option<Knob>,
    cfg_rescale: Option<Knob>,
}

impl ResolvedCurves {
    /// Convert; zero noise and zero strength become `None` so the solver skips them.
    fn new(c: &StepCurves, frames: usize, device: &Device) -> Result<Self> {
        let k = |c: &Option<Curve>, drop_zero: bool| -> Result<Option<Knob>> {
            match c {
                Some(c) if drop_zero && c.is_zero() => Ok(None),
                Some(c) => Ok(Some(Knob::from_curve(c, frames, device)?)),
                None => Ok(None),
            }
        };
        Ok(Self {
            velocity_scale: k(&c.velocity_scale, false)?,
            sde_denoise: k(&c.sde_denoise, false)?,
            ode_noise: k(&c.ode_noise, true)?,
            x0_target_strength: k(&c.x0_target_strength, true)?,
            guidance: k(&c.guidance, false)?,
            apg_momentum: k(&c.apg_momentum, false)?,
            cfg_rescale: k(&c.cfg_rescale, true)?,
        })
    }
}

/// Lane overrides with a flag per field: `Some(None)` means "overridden to absent/zero"; and
/// the channel gain as the model input's multiplier at this latent length.
#[derive(Default, Clone)]
struct LaneKnobs {
    set: [bool; 7],
    values: ResolvedCurves,
    /// `[1, 1, C]` or, with a per-frame amount, `[1, T, C]`; `None` for no (identity) gain.
    channel_gain: Option<Tensor>,
}

impl LaneKnobs {
    fn new(lane: &SharedLane, frames: usize, device: &Device) -> Result<Self> {
        let c = &lane.curves;
        let set = [
            c.velocity_scale.is_some(),
            c.sde_denoise.is_some(),
            c.ode_noise.is_some(),
            c.x0_target_strength.is_some(),
            c.guidance.is_some(),
            c.apg_momentum.is_some(),
            c.cfg_rescale.is_some(),
        ];
        let channel_gain = match &lane.channel_gain {
            Some(g) if !g.is_identity() => Some(g.to_tensor(frames, device)?),
            _ => None,
        };
        Ok(Self {
            set,
            values: ResolvedCurves::new(c, frames, device)?,
            channel_gain,
        })
    }

    /// Lane first, then the slot.
    fn resolve(&self, own: &ResolvedCurves) -> ResolvedCurves {
        let pick = |i: usize, lane: &Option<Knob>, slot: &Option<Knob>| {
            if self.set[i] {
                lane.clone()
            } else {
                slot.clone()
            }
        };
        let l = &self.values;
        ResolvedCurves {
            velocity_scale: pick(0, &l.velocity_scale, &own.velocity_scale),
            sde_denoise: pick(1, &l.sde_denoise, &own.sde_denoise),
            ode_noise: pick(2, &l.ode_noise, &own.ode_noise),
            x0_target_strength: pick(3, &l.x0_target_strength, &own.x0_target_strength),
            guidance: pick(4, &l.guidance, &own.guidance),
            apg_momentum: pick(5, &l.apg_momentum, &own.apg_momentum),
            cfg_rescale: pick(6, &l.cfg_rescale, &own.cfg_rescale),
        }
    }
}

/// The ring buffer of in-flight generations.
pub struct StreamPipeline {
    device: Device,
    latent_channels: usize,
    context_channels: usize,
    mode: ScheduleMode,
    target_depth: usize,
    slots: Vec<Slot>,
    queue: VecDeque<Queued>,
    lane: SharedLane,
    lane_knobs: HashMap<usize, LaneKnobs>,
    schedules: ScheduleCache,
    global_schedule: Option<ScheduleParams>,
    newest_frames: Option<usize>,
    next_id: u64,
    stats: PipelineStats,
}

impl StreamPipeline {
    /// A ring of `depth` slots for latents with `latent_channels` channels and contexts with
    /// `context_channels` channels, living on `device`.
    pub fn new(
        depth: usize,
        latent_channels: usize,
        context_channels: usize,
        device: Device,
    ) -> Result<Self> {
        check_depth(depth)?;
        Ok(Self {
            device,
            latent_channels,
            context_channels,
            mode: ScheduleMode::PerSlot,
            target_depth: depth,
            slots: Vec::new(),
            queue: VecDeque::new(),
            lane: SharedLane::default(),
            lane_knobs: HashMap::new(),
            schedules: ScheduleCache::default(),
            global_schedule: None,
            newest_frames: None,
            next_id: 1,
            stats: PipelineStats::default(),
        })
    }

    /// A ring sized for `denoiser`.
    pub fn for_denoiser(depth: usize, denoiser: &dyn Denoiser) -> Result<Self> {
        Self::new(
            depth,
            denoiser.latent_channels(),
            denoiser.context_channels(),
            denoiser.device().clone(),
        )
    }

    /// Switch between per-slot schedules and the global-reset comparison mode.
    pub fn with_mode(mut self, mode: ScheduleMode) -> Self {
        self.mode = mode;
        self
    }

    pub fn mode(&self) -> ScheduleMode {
        self.mode
    }

    pub fn depth(&self) -> usize {
        self.target_depth
    }

    pub fn active_slots(&self) -> usize {
        self.slots.len()
    }

    pub fn queue_len(&self) -> usize {
        self.queue.len()
    }

    pub fn is_idle(&self) -> bool {
        self.slots.is_empty() && self.queue.is_empty()
    }

    pub fn stats(&self) -> PipelineStats {
        self.stats
    }

    pub fn ticks(&self) -> u64 {
        self.stats.ticks
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    pub fn lane(&self) -> &SharedLane {
        &self.lane
    }

    /// In-flight slots, oldest first.
    pub fn slots(&self) -> impl Iterator<Item = SlotView<'_>> {
        self.slots.iter().map(|s| SlotView {
            request_id: s.id,
            tag: s.req.tag,
            step: s.step,
            passes: s.schedule.passes(),
            schedule: &s.schedule,
            latent: &s.x,
            started_tick: s.started_tick,
        })
    }

    /// Replace the shared lane; every in-flight slot reads it from the next tick on.
    pub fn set_lane(&mut self, lane: SharedLane) -> Result<()> {
        lane.validate(self.latent_channels)?;
        self.lane = lane;
        self.lane_knobs.clear();
        Ok(())
    }

    /// Resize the ring. Growing adds empty slots; shrinking stops refilling until the extra
    /// slots have drained: in-flight work is never discarded.
    pub fn set_depth(&mut self, depth: usize) -> Result<()> {
        check_depth(depth)?;
        self.target_depth = depth;
        while self.queue.len() > depth {
            self.queue.pop_front();
            self.stats.dropped_from_queue += 1;
        }
        Ok(())
    }

    /// Queue a request. The queue holds at most `depth` requests; a full queue drops its
    /// oldest entry so fresh parameters are never stuck behind stale ones. Returns the id the
    /// finished latent will carry.
    pub fn submit(&mut self, request: SlotRequest) -> Result<u64> {
        request.validate(self.latent_channels, self.context_channels)?;
        if self.newest_frames.is_some_and(|f| f != request.frames) {
            let before = self.queue.len();
            self.queue.retain(|q| q.request.frames == request.frames);
            self.stats.dropped_from_queue += (before - self.queue.len()) as u64;
        }
        self.newest_frames = Some(request.frames);
        if self.mode == ScheduleMode::GlobalReset {
            let p = request.schedule;
            if self.global_schedule.is_some_and(|g| g != p) {
                self.stats.discarded_in_flight += self.slots.len() as u64;
                self.stats.dropped_from_queue += self.queue.len() as u64;
                self.slots.clear();
                self.queue.clear();
            }
            self.global_schedule = Some(p);
        }
        while self.queue.len() >= self.target_depth {
            self.queue.pop_front();
            self.stats.dropped_from_queue += 1;
        }
        let id = self.next_id;
        self.next_id += 1;
        self.queue.push_back(Queued {
            id,
            request,
            submitted_tick: self.stats.ticks,
        });
        self.stats.submitted += 1;
        Ok(id)
    }

    /// Run ticks until nothing is queued or in flight; returns everything that finished.
    pub fn flush(&mut self, denoiser: &mut dyn Denoiser) -> Result<Vec<Finished>> {
        let mut out = Vec::new();
        let bound = (self.queue.len() + self.slots.len() + 1) * (crate::schedule::MAX_STEPS + 2);
        for _ in 0..bound {
            if self.is_idle() {
                break;
            }
            out.extend(self.tick(denoiser)?.finished);
        }
        Ok(out)
    }

    /// One tick: refill empty slots from the queue, one batched forward pass per latent length
    /// (plus one for negatives when guidance needs it), integrate every slot, deliver finished
    /// latents.
    pub fn tick(&mut self, denoiser: &mut dyn Denoiser) -> Result<TickReport> {
        let started = Instant::now();
        let mut report = TickReport {
            tick: self.stats.ticks,
            ..Default::default()
        };
        report.started = self.refill()?;
        report.active_slots = self.slots.len();

        // Group slots by latent length: normally one group; two while a length change drains.
        let mut groups: Vec<(usize, Vec<usize>)> = Vec::new();
        for (i, s) in self.slots.iter().enumerate() {
            match groups.iter_mut().find(|(f, _)| *f == s.req.frames) {
                Some((_, idx)) => idx.push(i),
                None => groups.push((s.req.frames, vec![i])),
            }
        }
        let mut updates: Vec<(usize, SlotUpdate)> = Vec::with_capacity(self.slots.len());
        for (frames, idx) in &groups {
            let lane = match self.lane_knobs.get(frames) {
                Some(l) => l.clone(),
                None => {
                    let l = LaneKnobs::new(&self.lane, *frames, &self.device)?;
                    self.lane_knobs.insert(*frames, l.clone());
                    l
                }
            };
            let ups = self.advance_group(denoiser, idx, &lane, &mut report)?;
            updates.extend(idx.iter().copied().zip(ups));
        }

        // Commit only now: a failure above leaves every slot untouched.
        for (i, u) in updates {
            let s = &mut self.slots[i];
            s.x = u.x;
            s.momentum = u.momentum;
            if u.neg_cached.is_some() {
                s.neg_cached = u.neg_cached;
            }
            s.step += 1;
        }
        let tick = self.stats.ticks;
        let mut i = 0;
        while i < self.slots.len() {
            if self.slots[i].step >= self.slots[i].schedule.passes() {
                let s = self.slots.remove(i);
                report.finished.push(Finished {
                    request_id: s.id,
                    tag: s.req.tag,
                    seed: s.req.seed,
                    latent: s.x,
                    submitted_tick: s.submitted_tick,
                    started_tick: s.started_tick,
                    finished_tick: tick,
                });
            } else {
                i += 1;
            }
        }
        self.stats.completed += report.finished.len() as u64;
        self.stats.ticks += 1;
        report.solver_ms = (started.elapsed().as_secs_f64() * 1e3 - report.denoiser_ms).max(0.0);
        Ok(report)
    }

    fn refill(&mut self) -> Result<usize> {
        let mut started = 0;
        while self.slots.len() < self.target_depth {
            let Some(q) = self.queue.pop_front() else {
                break;
            };
            let slot = self.init_slot(q)?;
            self.slots.push(slot);
            started += 1;
        }
        Ok(started)
    }

    /// Slot initialisation (demon.md §3.3).
    fn init_slot(&mut self, q: Queued) -> Result<Slot> {
        let req = q.request;
        let params = match (self.mode, self.global_schedule) {
            (ScheduleMode::GlobalReset, Some(g)) => g,
            _ => req.schedule,
        };
        let schedule = self.schedules.get(params)?;
        let (t, c) = (req.frames, self.latent_channels);
        let noise = normal_tensor(req.seed, NoiseStream::Initial, t, c, &self.device)?;
        let (x, from_source) = match (req.clean_source(), &req.initial_noise_curve) {
            (Some(src), Some(curve)) => (
                solver::mix(&noise, src, &Knob::from_curve(curve, t, &self.device)?)?,
                true,
            ),
            (Some(src), None) if params.denoise < 1.0 => (
                solver::renoise(src, &noise, schedule.t_start())?,
                // At t₀ = 1 (a denoise that rounds to the full schedule) the state is pure noise.
                schedule.t_start() < 1.0,
            ),
            _ => (noise.clone(), false),
        };
        let mask_noise = match &req.latent_mask {
            Some(_) => Some(normal_tensor(
                req.seed,
                NoiseStream::Mask,
                t,
                c,
                &self.device,
            )?),
            None => None,
        };
        let mask_knob = match &req.latent_mask {
            Some(m) => Some(Knob::from_curve(&m.mask, t, &self.device)?),
            None => None,
        };
        let own = ResolvedCurves::new(&req.curves, t, &self.device)?;
        Ok(Slot {
            id: q.id,
            initial_noise: (req.cfg_mode == CfgMode::SelfNoise).then_some(noise),
            req,
            schedule,
            x,
            step: 0,
            momentum: None,
            neg_cached: None,
            mask_noise,
            mask_knob,
            own,
            submitted_tick: q.submitted_tick,
            started_tick: self.stats.ticks,
            from_source,
        })
    }

    fn advance_group(
        &self,
        denoiser: &mut dyn Denoiser,
        idx: &[usize],
        lane: &LaneKnobs,
        report: &mut TickReport,
    ) -> Result<Vec<SlotUpdate>> {
        // 1. Pre-forward: integration base, model input, active conditions, guidance needs.
        let mut pre: Vec<PreStep> = Vec::with_capacity(idx.len());
        for &i in idx {
            let s = &self.slots[i];
            let t = s.schedule.t(s.step);
            let curves = lane.resolve(&s.own);
            let x_base = match (&s.req.latent_mask, &s.mask_knob, &s.mask_noise) {
                (Some(m), Some(k), Some(n)) => {
                    let noised = solver::renoise(&m.original, n, t)?;
                    solver::mix(&s.x, &noised, k)?
                }
                _ => s.x.clone(),
            };
            let x_model = match &lane.channel_gain {
                Some(g) => x_base.broadcast_mul(g)?,
                None => x_base.clone(),
            };
            let passes = s.schedule.passes();
            let positives = active_conditions(&s.req.conditions, s.step, passes);
            let cfg = curves.guidance.is_some()
                && (s.req.cfg_mode == CfgMode::SelfNoise || !s.req.negatives.is_empty());
            let negatives = if cfg
                && match s.req.cfg_mode {
                    CfgMode::Full => true,
                    CfgMode::Initialize => s.neg_cached.is_none(),
                    CfgMode::SelfNoise => false,
                } {
                active_conditions(&s.req.negatives, s.step, passes)
            } else {
                Vec::new()
            };
            pre.push(PreStep {
                t,
                x_base,
                x_model,
                positives,
                negatives,
                cfg,
                curves,
            });
        }

        // 2. One batched positive pass, one batched negative pass if any slot needs it.
        let pos_rows: Vec<(usize, usize)> = pre
            .iter()
            .enumerate()
            .flat_map(|(k, p)| p.positives.iter().map(move |&c| (k, c)))
            .collect();
        let v_pos = self.forward(denoiser, idx, &pre, &pos_rows, false, report)?;
        let neg_rows: Vec<(usize, usize)> = pre
            .iter()
            .enumerate()
            .flat_map(|(k, p)| p.negatives.iter().map(move |&c| (k, c)))
            .collect();
        let v_neg = self.forward(denoiser, idx, &pre, &neg_rows, true, report)?;
        report.positive_rows += pos_rows.len();
        report.negative_rows += neg_rows.len();

        // 3. Per slot: assemble the velocity, guidance, then integrate.
        let mut out = Vec::with_capacity(idx.len());
        for (k, &i) in idx.iter().enumerate() {
            let s = &self.slots[i];
            let p = &pre[k];
            let blend = |rows: &[(usize, usize)], vs: &[Tensor], conds: &[SlotCondition]| {
                let parts: Vec<(Tensor, Option<Knob>)> = rows
                    .iter()
                    .zip(vs)
                    .filter(|((slot, _), _)| *slot == k)
                    .map(|((_, c), v)| {
                        let w = conds[*c]
                            .weight
                            .as_ref()
                            .map(|w| Knob::from_curve(w, s.req.frames, &self.device))
                            .transpose()?;
                        Ok((v.clone(), w))
                    })
                    .collect::<Result<_>>()?;
                solver::blend_velocities(&parts)
            };
            let v_pos_slot = blend(&pos_rows, &v_pos, &s.req.conditions)?;
            let mut momentum = s.momentum.clone();
            let mut neg_cached = None;
            let v = if p.cfg {
                let v_neg_slot = if s.req.cfg_mode == CfgMode::SelfNoise {
                    s.initial_noise.clone()
                } else if !p.negatives.is_empty() {
                    let v = blend(&neg_rows, &v_neg, &s.req.negatives)?;
                    if s.req.cfg_mode == CfgMode::Initialize {
                        neg_cached = Some(v.clone());
                    }
                    Some(v)
                } else {
                    s.neg_cached.clone()
                };
                match v_neg_slot {
                    Some(vn) => {
                        let g = p.curves.guidance.clone().unwrap_or(Knob::Scalar(1.0));
                        let m = p
                            .curves
                            .apg_momentum
                            .clone()
                            .unwrap_or(Knob::Scalar(DEFAULT_APG_MOMENTUM as f64));
                        let vg = solver::apg(&v_pos_slot, &vn, &g, &m, &mut momentum)?;
                        match &p.curves.cfg_rescale {
                            Some(r) => solver::cfg_rescale(&vg, &v_pos_slot, r)?,
                            None => vg,
                        }
                    }
                    None => v_pos_slot,
                }
            } else {
                v_pos_slot
            };
            let x = self.integrate(s, p, &v)?;
            out.push(SlotUpdate {
                x,
                momentum,
                neg_cached,
            });
        }
        Ok(out)
    }

    /// One batched denoiser call over `(slot, condition)` rows; rows at `t = 0` are skipped
    /// (their velocity is multiplied by zero everywhere) and get zeros.
    fn forward(
        &self,
        denoiser: &mut dyn Denoiser,
        idx: &[usize],
        pre: &[PreStep],
        rows: &[(usize, usize)],
        negative: bool,
        report: &mut TickReport,
    ) -> Result<Vec<Tensor>> {
        let live: Vec<usize> = (0..rows.len())
            .filter(|&r| pre[rows[r].0].t > 0.0)
            .collect();
        let mut out: Vec<Option<Tensor>> = vec![None; rows.len()];
        if !live.is_empty() {
            let xs: Vec<&Tensor> = live.iter().map(|&r| &pre[rows[r].0].x_model).collect();
            let x = Tensor::cat(&xs, 0)?;
            let mut conditions = Vec::with_capacity(live.len());
            let mut contexts = Vec::with_capacity(live.len());
            let mut t = Vec::with_capacity(live.len());
            let mut sources = Vec::with_capacity(live.len());
            for &r in &live {
                let (k, c) = rows[r];
                let s = &self.slots[idx[k]];
                let conds = if negative {
                    &s.req.negatives
                } else {
                    &s.req.conditions
                };
                conditions.push(&conds[c].conditioning);
                contexts.push(conds[c].context.as_ref().unwrap_or(&s.req.context));
                t.push(pre[k].t);
                sources.push(s.req.clean_source().filter(|_| s.from_source));
            }
            let batch = DenoiseBatch {
                x,
                t,
                conditions,
                contexts,
                sources,
            };
            let call = Instant::now();
            let v = denoiser.velocity(&batch)?;
            report.denoiser_ms += call.elapsed().as_secs_f64() * 1e3;
            let want = [live.len(), batch.x.dim(1)?, self.latent_channels];
            if v.dims() != want {
                return Err(EngineError::shape(
                    format!("{} output", denoiser.name()),
                    format!("{want:?}"),
                    format!("{:?}", v.dims()),
                ));
            }
            report.denoiser_calls += 1;
            for (j, &r) in live.iter().enumerate() {
                out[r] = Some(v.narrow(0, j, 1)?);
            }
        }
        out.into_iter()
            .enumerate()
            .map(|(r, v)| match v {
                Some(v) => Ok(v),
                None => Ok(pre[rows[r].0].x_model.zeros_like()?),
            })
            .collect()
    }

    /// The solver step of §5.5 for one slot.
    fn integrate(&self, s: &Slot, p: &PreStep, v: &Tensor) -> Result<Tensor> {
        let req = &s.req;
        let (t, t_next) = (p.t, s.schedule.t(s.step + 1));
        let passes = s.schedule.passes();
        let frames = req.frames;
        let c = &p.curves;
        let x = &p.x_base;
        let vs = c.velocity_scale.clone().unwrap_or(Knob::Scalar(1.0));
        let sde_curve = match (&c.sde_denoise, &req.source) {
            (Some(sdc), Some(src)) => Some((sdc, src)),
            _ => None,
        };
        let use_sde = sde_curve.is_some() || req.solver == SolverKind::Sde;
        let scalar_x0 = req.x0_target.is_some()
            && c.x0_target_strength.is_some()
            && req.x0_target_curve.is_none()
            && s.step >= passes / 2
            && t > 0.0;
        let curve_x0 = req.x0_target.is_some() && req.x0_target_curve.is_some();
        let needs_x0 = req.has_complex_features() || p.cfg || scalar_x0 || use_sde || t_next <= 0.0;
        let noise = |stream: NoiseStream| {
            normal_tensor(req.seed, stream, frames, self.latent_channels, &self.device)
        };
        let step = s.step as u32;

        let x_next = if !needs_x0 {
            let mut xn = solver::euler(x, &vs.mul(v)?, t, t_next)?;
            if let Some(onc) = &c.ode_noise {
                xn = solver::inject_noise(&xn, &noise(NoiseStream::Ode(step))?, onc, t_next)?;
            }
            xn
        } else {
            let mut x0 = solver::x0_from_velocity(x, &vs.mul(v)?, t)?;
            if let (Some(m), Some(k)) = (&req.latent_mask, &s.mask_knob) {
                x0 = solver::mix(&x0, &m.original, k)?;
            }
            if let (true, Some(target), Some(curve)) =
                (curve_x0, &req.x0_target, &req.x0_target_curve)
            {
                let progress = s.step as f32 / (passes.saturating_sub(1)).max(1) as f32;
                let gate0 = req.x0_target_gate;
                let g = (progress - gate0).max(0.0) / (1.0 - gate0).max(1e-6);
                if g > 0.0 {
                    let k = Knob::from_curve(curve, frames, &self.device)?.affine(g as f64, 0.0)?;
                    x0 = solver::mix(target, &x0, &k)?;
                }
            } else if let (true, Some(target), Some(alpha)) =
                (scalar_x0, &req.x0_target, &c.x0_target_strength)
            {
                x0 = solver::mix(target, &x0, alpha)?;
            }
            if t_next <= 0.0 {
                match sde_curve {
                    Some((sdc, src)) => solver::mix(&x0, src, sdc)?,
                    None => x0,
                }
            } else if let Some((sdc, src)) = sde_curve {
                // Mechanism 3: one shared draw re-noises a per-frame mix of x̂₀ and the source.
                let blended = solver::mix(&x0, src, sdc)?;
                solver::renoise(&blended, &noise(NoiseStream::Sde(step))?, t_next)?
            } else if use_sde {
                let n = match &s.mask_noise {
                    Some(n) => n.clone(),
                    None => noise(NoiseStream::Sde(step))?,
                };
                solver::renoise(&x0, &n, t_next)?
            } else {
                let vb = (x - &x0)?.affine(1.0 / t as f64, 0.0)?;
                let mut xn = solver::euler(x, &vb, t, t_next)?;
                if let Some(onc) = &c.ode_noise {
                    xn = solver::inject_noise(&xn, &noise(NoiseStream::Ode(step))?, onc, t_next)?;
                }
                xn
            }
        };

        if !self.lane.dcw.is_active() {
            return Ok(x_next);
        }
        let y = solver::x0_from_velocity(x, v, t)?;
        let corrected = solver::dcw(&x_next, &y, t, &self.lane.dcw)?;
        // DCW never moves frames that the source-blend curve pins to the source or that the
        // latent mask keeps: those must come out as exactly the source.
        let mut out = corrected;
        if let Some((sdc, _)) = sde_curve {
            out = solver::mix(&out, &x_next, sdc)?;
        }
        if let Some(k) = &s.mask_knob {
            out = solver::mix(&out, &x_next, k)?;
        }
        Ok(out)
    }
}

struct PreStep {
    t: f32,
    /// Integration base (mask pre-blend applied).
    x_base: Tensor,
    /// What the model sees (channel gain applied).
    x_model: Tensor,
    positives: Vec<usize>,
    negatives: Vec<usize>,
    cfg: bool,
    curves: ResolvedCurves,
}

struct SlotUpdate {
    x: Tensor,
    momentum: Option<Tensor>,
    neg_cached: Option<Tensor>,
}

/// Conditions active at `step` of `passes`; the first one when none is.
fn active_conditions(conds: &[SlotCondition], step: usize, passes: usize) -> Vec<usize> {
    let active: Vec<usize> = conds
        .iter()
        .enumerate()
        .filter(|(_, c)| c.step_range.contains(step, passes))
        .map(|(i, _)| i)
        .collect();
    if active.is_empty() && !conds.is_empty() {
        vec![0]
    } else {
        active
    }
}

fn check_depth(depth: usize) -> Result<()> {
    if depth == 0 || depth > MAX_DEPTH {
        return Err(EngineError::param(
            "depth",
            format!("{depth} is outside 1..={MAX_DEPTH}"),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::backend::Conditioning;
    use crate::testing::PointMassDenoiser;

    /// A point-mass denoiser that takes at least `delay` per call.
    struct Slow {
        inner: PointMassDenoiser,
        delay: Duration,
    }

    impl Denoiser for Slow {
        fn latent_channels(&self) -> usize {
            self.inner.latent_channels()
        }
        fn context_channels(&self) -> usize {
            self.inner.context_channels()
        }
        fn device(&self) -> &Device {
            self.inner.device()
        }
        fn velocity(&mut self, batch: &DenoiseBatch<'_>) -> Result<Tensor> {
            std::thread::sleep(self.delay);
            self.inner.velocity(batch)
        }
    }

    /// A codec that takes at least `delay` per decode and returns silence.
    struct SlowCodec {
        delay: Duration,
        device: Device,
    }

    impl Codec for SlowCodec {
        fn sample_rate(&self) -> u32 {
            100
        }
        fn hop_samples(&self) -> usize {
            2
        }
        fn latent_channels(&self) -> usize {
            4
        }
        fn audio_channels(&self) -> usize {
            1
        }
        fn device(&self) -> &Device {
            &self.device
        }
        fn encode(&mut self, _audio: &Audio) -> Result<Tensor> {
            Err(EngineError::param(
                "audio",
                "this test codec does not encode",
            ))
        }
        fn decode(&mut self, latent: &Tensor, _first_frame: i64) -> Result<Audio> {
            std::thread::sleep(self.delay);
            Ok(Audio::silence(100, 1, latent.dim(1)? * 2))
        }
    }

    /// The report splits a tick's time into the denoiser calls and the engine's own work, and
    /// `decode_finished` adds the decode of the finished latents.
    #[test]
    fn tick_report_carries_the_ticks_own_timings() {
        let delay = Duration::from_millis(20);
        let mut den = Slow {
            inner: PointMassDenoiser::new(4, 0),
            delay,
        };
        let mut p = StreamPipeline::new(1, 4, 0, Device::Cpu).unwrap();
        let ctx = Tensor::zeros((1, 6, 0), candle_core::DType::F32, &Device::Cpu).unwrap();
        let cond: Conditioning = PointMassDenoiser::conditioning(0.5);
        let mut req = SlotRequest::from_context(cond, ctx, 3).unwrap();
        req.schedule.steps = 2;
        p.submit(req).unwrap();
        let mut codec = SlowCodec {
            delay,
            device: Device::Cpu,
        };
        let mut reports = Vec::new();
        while reports.iter().all(|r: &TickReport| r.finished.is_empty()) {
            let mut r = p.tick(&mut den).unwrap();
            assert!(
                r.denoiser_ms >= 20.0 * r.denoiser_calls as f64,
                "{} ms for {} calls",
                r.denoiser_ms,
                r.denoiser_calls
            );
            assert!(r.solver_ms >= 0.0 && r.decode_ms == 0.0);
            let audio = r.decode_finished(&mut codec).unwrap();
            assert_eq!(audio.len(), r.finished.len());
            if !r.finished.is_empty() {
                assert!(r.decode_ms >= 20.0, "{} ms", r.decode_ms);
                assert_eq!(audio[0].frames(), 12);
            }
            assert_eq!(r.total_ms(), r.denoiser_ms + r.solver_ms + r.decode_ms);
            reports.push(r);
        }
        assert!(reports.iter().any(|r| r.denoiser_calls > 0));
    }
}
