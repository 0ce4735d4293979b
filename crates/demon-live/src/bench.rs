//! `demon bench`: measured figures, never assumed ones.
//!
//! - real-time ratio of an offline render (60 s songs at depth 4 by default);
//! - tick time and generations per second at D = 1, 2, 4, 8 in steady state, one submission per
//!   tick as the live session does;
//! - engine overhead: the share of a tick spent outside the model;
//! - propagation: how many ticks a change takes to reach the output, per control class,
//!   measured by running the same submissions through three rings — one that never changes,
//!   one changed mid-run, one that had the new value from the start — and comparing what they
//!   finish, seed by seed (onset: the first output that differs from the unchanged ring;
//!   convergence: the first output equal to the ring that always had the new value);
//! - windowed versus full decode time on the same latent, per keep window.
//!
//! Every request is built from `Controls` by the one builder ([`crate::requests`]), as the live
//! session builds them.

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

use candle_core::Tensor;
use demon_engine::{
    BackendSet, Codec, DenoiseBatch, Denoiser, Prompt, ReceptiveField, SharedLane, StreamPipeline,
    decode_window, measure_receptive_field, probe_latent, probe_latents,
};
use serde::Serialize;

use crate::controls::{Controls, LORA_PREFIX};
use crate::error::{SessionError, SessionResult};
use crate::facts::BackendFacts;
use crate::render::{RenderSpec, render};
use crate::requests::{self, Conds, Inputs};

/// Wraps a denoiser and accumulates the time spent inside it.
pub struct TimedDenoiser<'a> {
    pub inner: &'a mut dyn Denoiser,
    pub spent: Duration,
    pub calls: usize,
}

impl Denoiser for TimedDenoiser<'_> {
    fn latent_channels(&self) -> usize {
        self.inner.latent_channels()
    }
    fn context_channels(&self) -> usize {
        self.inner.context_channels()
    }
    fn device(&self) -> &candle_core::Device {
        self.inner.device()
    }
    /// On a GPU the call only queues kernels: the device is synchronised before (so the time
    /// excludes earlier queued work) and after (so it includes the model's own), which makes
    /// `spent` the model's device time. A no-op on the CPU.
    fn velocity(&mut self, batch: &DenoiseBatch<'_>) -> demon_engine::Result<Tensor> {
        let device = self.inner.device().clone();
        device.synchronize()?;
        let t0 = Instant::now();
        let v = self.inner.velocity(batch)?;
        device.synchronize()?;
        self.spent += t0.elapsed();
        self.calls += 1;
        Ok(v)
    }
    fn name(&self) -> &str {
        self.inner.name()
    }
}

/// What to measure.
#[derive(Clone, Debug)]
pub struct BenchConfig {
    pub seconds: f64,
    pub steps: usize,
    pub depths: Vec<usize>,
    pub measure_ticks: usize,
    pub keep_windows_s: Vec<f64>,
    pub render_takes: usize,
    pub render_depth: usize,
    pub prompt: Prompt,
    /// Which measurements to run: "render", "ticks", "propagation", "decode".
    pub sections: Vec<String>,
    /// Song length of the propagation measurements, in seconds.
    pub propagation_seconds: f64,
    /// Ring depth of the per-class propagation rows.
    pub propagation_depth: usize,
}

impl Default for BenchConfig {
    fn default() -> Self {
        Self {
            seconds: 60.0,
            steps: 8,
            depths: vec![1, 2, 4, 8],
            measure_ticks: 32,
            keep_windows_s: vec![3.0, 0.36],
            render_takes: 4,
            render_depth: 4,
            prompt: Prompt::tags("house"),
            sections: ["render", "ticks", "propagation", "decode"]
                .map(String::from)
                .to_vec(),
            propagation_seconds: 10.0,
            propagation_depth: 4,
        }
    }
}

/// Onset and convergence of one control class, in ticks and milliseconds, measured at every
/// phase of the ring's S-tick cycle (a change can land anywhere in it).
#[derive(Clone, Debug, Serialize)]
pub struct Propagation {
    /// Worst case over the phases: ticks from the change to the first output that differs
    /// from a ring that never changed.
    pub onset_ticks: Option<u64>,
    /// Worst case over the phases: ticks from the change to the first output equal to a ring
    /// that had the new value from the start.
    pub convergence_ticks: Option<u64>,
    pub onset_ticks_mean: Option<f64>,
    pub convergence_ticks_mean: Option<f64>,
    pub onset_ticks_min: Option<u64>,
    pub convergence_ticks_min: Option<u64>,
    /// The worst cases at the measured tick time of depth 4 (when the ticks section ran).
    pub onset_ms: Option<f64>,
    pub convergence_ms: Option<f64>,
    /// Phases measured.
    pub phases: usize,
    /// What was changed, and anything that kept the class from being measured.
    pub note: String,
}

/// The whole report; field names are the JSON keys.
#[derive(Clone, Debug, Serialize)]
pub struct BenchReport {
    pub backend: String,
    pub song_seconds: f64,
    pub steps: usize,
    /// Audio seconds rendered per wall second (offline render of `render_takes` songs).
    pub render_realtime_ratio: Option<f64>,
    pub render_takes: usize,
    pub render_depth: usize,
    /// Mean wall time per tick, keyed by depth.
    pub tick_ms: BTreeMap<String, f64>,
    /// Finished generations per second in steady state, keyed by depth.
    pub gen_per_s: BTreeMap<String, f64>,
    /// Time in the model per tick, keyed by depth.
    pub model_ms: BTreeMap<String, f64>,
    /// Share of the tick outside the model at the largest depth measured (`None` when the
    /// ticks section did not run).
    pub engine_overhead_share: Option<f64>,
    pub engine_overhead_share_by_depth: BTreeMap<String, f64>,
    /// Ticks from a shared-lane change to the first in-flight slot that uses it, keyed by depth.
    pub shared_lane_onset_ticks: BTreeMap<String, u64>,
    /// Share of the in-flight slots that used a shared-lane change on that first tick.
    pub shared_lane_onset_coverage: BTreeMap<String, f64>,
    /// Ticks from a submission-time change (denoise) until the first output generated with it,
    /// keyed by depth: queue wait + S, averaged over the S phases of the ring's cycle.
    pub per_slot_convergence_ticks: BTreeMap<String, f64>,
    pub per_slot_convergence_ticks_min: BTreeMap<String, u64>,
    pub per_slot_convergence_ticks_max: BTreeMap<String, u64>,
    /// The queue-wait part of `per_slot_convergence_ticks` (mean over phases).
    pub per_slot_queue_wait_ticks: BTreeMap<String, f64>,
    /// Per control class, at `propagation_depth` (4 by default).
    pub propagation: BTreeMap<String, Propagation>,
    pub receptive_field_frames: Option<ReceptiveField>,
    pub full_decode_ms: Option<f64>,
    /// Windowed decode time per tick, keyed by keep window in seconds.
    pub windowed_decode_ms: BTreeMap<String, f64>,
    /// Full decode time / windowed decode time, keyed by keep window in seconds.
    pub windowed_decode_speedup: BTreeMap<String, f64>,
}

fn key_f(x: f64) -> String {
    let s = format!("{x}");
    s.trim_end_matches(".0").to_string()
}

fn failed(what: impl Into<String>) -> SessionError {
    SessionError::Backend(what.into())
}

/// Controls like a live session's with `steps`, and no slew (so a change is one value).
fn bench_controls(
    prompt: &Prompt,
    frames: usize,
    steps: usize,
    facts: &BackendFacts,
) -> SessionResult<Controls> {
    let mut c = Controls::new(prompt.clone(), frames);
    c.set_slew(0.0)?;
    c.set_knob("steps", steps as f64, facts)?;
    Ok(c)
}

/// Builds the k-th request of a run from controls, as the live session does every tick.
struct Requests {
    conds: Conds,
    context: Tensor,
    history: VecDeque<Tensor>,
    frames: usize,
}

impl Requests {
    fn new(backend: &mut BackendSet, controls: &Controls, frames: usize) -> SessionResult<Self> {
        Ok(Self {
            conds: Conds::prepare(
                backend.conditioner.as_mut(),
                &controls.conditioning_prompts(),
                controls.timbre_latent(),
            )?,
            context: requests::structure_context(
                backend.conditioner.as_mut(),
                controls,
                0,
                frames,
            )?,
            history: VecDeque::new(),
            frames,
        })
    }

    fn build(
        &self,
        controls: &Controls,
        facts: &BackendFacts,
        k: u64,
    ) -> SessionResult<(demon_engine::SlotRequest, SharedLane)> {
        requests::build(
            controls,
            facts,
            self.frames,
            &Inputs {
                conds: &self.conds,
                context: &self.context,
                history: &self.history,
                chunk_offset: 0,
                tag: k,
                take: k,
            },
        )
    }
}

/// Steady-state tick time, throughput and model share at `depth`.
fn steady_state(
    backend: &mut BackendSet,
    cfg: &BenchConfig,
    depth: usize,
) -> SessionResult<(f64, f64, f64)> {
    let facts = BackendFacts::of(backend);
    let frames = facts.frames(cfg.seconds);
    let controls = bench_controls(&cfg.prompt, frames, cfg.steps, &facts)?;
    let reqs = Requests::new(backend, &controls, frames)?;
    let mut pipe = StreamPipeline::for_denoiser(depth, backend.denoiser.as_ref())?;
    pipe.set_lane(requests::build_lane(&controls, &facts)?)?;
    let mut timed = TimedDenoiser {
        inner: backend.denoiser.as_mut(),
        spent: Duration::ZERO,
        calls: 0,
    };
    let mut k = 0;
    let mut submit_tick =
        |pipe: &mut StreamPipeline, timed: &mut TimedDenoiser| -> SessionResult<usize> {
            pipe.submit(reqs.build(&controls, &facts, k)?.0)?;
            k += 1;
            Ok(pipe.tick(timed)?.finished.len())
        };
    // One submission per tick: after max(S, D) ticks every slot that can be busy is busy (at
    // most min(D, S) are, since a generation lasts S ticks).
    for _ in 0..cfg.steps.max(depth) {
        submit_tick(&mut pipe, &mut timed)?;
    }
    timed.spent = Duration::ZERO;
    let t0 = Instant::now();
    let mut done = 0;
    // Whole bursts: with D < S completions come in bursts of D every S ticks.
    let ticks = cfg.measure_ticks.div_ceil(cfg.steps).max(1) * cfg.steps;
    for _ in 0..ticks {
        done += submit_tick(&mut pipe, &mut timed)?;
    }
    // Queued GPU work belongs to the measured ticks.
    pipe.device().synchronize()?;
    let wall = t0.elapsed().as_secs_f64();
    let tick_ms = wall * 1000.0 / ticks as f64;
    let model_ms = timed.spent.as_secs_f64() * 1000.0 / ticks as f64;
    Ok((tick_ms, done as f64 / wall, model_ms))
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> SessionResult<f32> {
    Ok((a - b)?.abs()?.max_all()?.to_scalar::<f32>()?)
}

fn latents_differ(a: &StreamPipeline, b: &StreamPipeline) -> SessionResult<(usize, usize)> {
    let mut differ = 0;
    let mut total = 0;
    for (x, y) in a.slots().zip(b.slots()) {
        total += 1;
        if max_abs_diff(x.latent, y.latent)? > 0.0 {
            differ += 1;
        }
    }
    Ok((differ, total))
}

/// Ticks until a shared-lane change shows in any in-flight slot, and the share it reached.
fn shared_lane_onset(
    backend: &mut BackendSet,
    cfg: &BenchConfig,
    depth: usize,
) -> SessionResult<(u64, f64)> {
    let facts = BackendFacts::of(backend);
    let frames = facts.frames(cfg.propagation_seconds);
    let before = bench_controls(&cfg.prompt, frames, cfg.steps, &facts)?;
    let mut after = before.clone();
    after.set_knob("velocity_scale", 1.5, &facts)?;
    let reqs = Requests::new(backend, &before, frames)?;
    let mut a = StreamPipeline::for_denoiser(depth, backend.denoiser.as_ref())?;
    let mut b = StreamPipeline::for_denoiser(depth, backend.denoiser.as_ref())?;
    let lane = requests::build_lane(&before, &facts)?;
    a.set_lane(lane.clone())?;
    b.set_lane(lane)?;
    let den = backend.denoiser.as_mut();
    let mut k = 0;
    let mut step = |a: &mut StreamPipeline,
                    b: &mut StreamPipeline,
                    den: &mut dyn Denoiser|
     -> SessionResult<()> {
        let r = reqs.build(&before, &facts, k)?.0;
        k += 1;
        a.submit(r.clone())?;
        b.submit(r)?;
        a.tick(den)?;
        b.tick(den)?;
        Ok(())
    };
    for _ in 0..(cfg.steps + depth) {
        step(&mut a, &mut b, den)?;
    }
    b.set_lane(requests::build_lane(&after, &facts)?)?;
    for k in 1..=(4 * cfg.steps as u64) {
        step(&mut a, &mut b, den)?;
        let (differ, total) = latents_differ(&a, &b)?;
        if differ > 0 {
            return Ok((k, differ as f64 / total.max(1) as f64));
        }
    }
    Err(failed("the shared-lane change never reached a slot"))
}

/// Ticks from a denoise change until the first output generated with the new value, and the
/// queue wait inside that figure (ticks from the change until a slot starts a request that
/// carries it), for a change made at tick `phase` of the ring's S-tick cycle.
fn per_slot_convergence(
    backend: &mut BackendSet,
    cfg: &BenchConfig,
    depth: usize,
    phase: usize,
) -> SessionResult<(u64, u64)> {
    let facts = BackendFacts::of(backend);
    let frames = facts.frames(cfg.propagation_seconds);
    let source =
        probe_latent(frames, facts.latent_channels, 3, backend.codec.device())?.affine(0.5, 0.0)?;
    let mut before = bench_controls(&cfg.prompt, frames, cfg.steps, &facts)?;
    before.set_source(Some(("probe".into(), source)));
    before.set_knob("denoise", 0.9, &facts)?;
    let mut after = before.clone();
    after.set_knob("denoise", 0.5, &facts)?;
    let reqs = Requests::new(backend, &before, frames)?;
    let mut pipe = StreamPipeline::for_denoiser(depth, backend.denoiser.as_ref())?;
    pipe.set_lane(requests::build_lane(&before, &facts)?)?;
    let den = backend.denoiser.as_mut();
    let mut k = 0;
    for _ in 0..(cfg.steps + depth) * 2 + phase {
        pipe.submit(reqs.build(&before, &facts, k)?.0)?;
        k += 1;
        pipe.tick(den)?;
    }
    let change_tick = pipe.ticks();
    for n in 1..=(8 * cfg.steps as u64 + 64) {
        pipe.submit(reqs.build(&after, &facts, k)?.0)?;
        k += 1;
        let rep = pipe.tick(den)?;
        if let Some(f) = rep
            .finished
            .iter()
            .find(|f| f.submitted_tick >= change_tick)
        {
            return Ok((n, f.started_tick - change_tick));
        }
    }
    Err(failed(
        "no output ever reflected the submission-time change",
    ))
}

/// LoRA strengths of `controls` on the (shared) denoiser, set whatever it held before.
fn set_adapters(controls: &Controls, den: &mut dyn Denoiser) -> SessionResult<()> {
    requests::push_adapters(controls, den, &mut BTreeMap::new(), 0)
}

/// A ring driven by controls as the live session drives its own: one request per tick built
/// from the controls, the lane swapped when it changes, the adapters set before the forward.
struct Ring {
    pipe: StreamPipeline,
    controls: Controls,
    lane: SharedLane,
}

impl Ring {
    fn new(den: &dyn Denoiser, controls: Controls) -> SessionResult<Self> {
        Ok(Self {
            pipe: StreamPipeline::for_denoiser(controls.depth(), den)?,
            controls,
            lane: SharedLane::default(),
        })
    }

    /// Submit the `k`-th request and run one tick.
    fn tick(
        &mut self,
        reqs: &Requests,
        facts: &BackendFacts,
        den: &mut dyn Denoiser,
        k: u64,
    ) -> SessionResult<demon_engine::TickReport> {
        if self.controls.depth() != self.pipe.depth() {
            self.pipe.set_depth(self.controls.depth())?;
        }
        let (r, lane) = reqs.build(&self.controls, facts, k)?;
        if lane != self.lane {
            self.pipe.set_lane(lane.clone())?;
            self.lane = lane;
        }
        set_adapters(&self.controls, den)?;
        self.pipe.submit(r)?;
        Ok(self.pipe.tick(den)?)
    }
}

/// What request `k` becomes when generated entirely under `controls` (outputs depend only on
/// the request, the lane and the weights, never on timing or depth), for every `k` in `ks`.
fn reference_outputs(
    reqs: &Requests,
    facts: &BackendFacts,
    controls: &Controls,
    den: &mut dyn Denoiser,
    ks: &[u64],
) -> SessionResult<BTreeMap<u64, Tensor>> {
    let mut pipe = StreamPipeline::for_denoiser(demon_engine::MAX_DEPTH, den)?;
    pipe.set_lane(requests::build_lane(controls, facts)?)?;
    set_adapters(controls, den)?;
    let mut out = BTreeMap::new();
    for &k in ks {
        while pipe.queue_len() >= pipe.depth() {
            out.extend(
                pipe.tick(den)?
                    .finished
                    .into_iter()
                    .map(|f| (f.tag, f.latent)),
            );
        }
        pipe.submit(reqs.build(controls, facts, k)?.0)?;
    }
    out.extend(pipe.flush(den)?.into_iter().map(|f| (f.tag, f.latent)));
    Ok(out)
}

/// Onset and convergence, in ticks after the change, of a change from `before` to `after`
/// applied before tick `warm_up` of a ring; `ticks_after` ticks run after it. Onset: the first
/// output that differs from what its request gives under `before`; convergence: the first
/// output from which on every output equals what its request gives under `after`.
fn trial(
    backend: &mut BackendSet,
    facts: &BackendFacts,
    before: &Controls,
    after: &Controls,
    warm_up: usize,
    ticks_after: usize,
) -> SessionResult<(Option<u64>, Option<u64>)> {
    let reqs = Requests::new(backend, before, before.frames())?;
    let den = backend.denoiser.as_mut();
    let mut ring = Ring::new(den, before.clone())?;
    let mut outputs = Vec::new();
    for t in 0..(warm_up + ticks_after) {
        let since = t as i64 - warm_up as i64 + 1;
        if since == 1 {
            ring.controls = after.clone();
        }
        for f in ring.tick(&reqs, facts, den, t as u64)?.finished {
            if since >= 1 {
                outputs.push((since as u64, f.tag, f.latent));
            }
        }
    }
    let ks: Vec<u64> = outputs.iter().map(|o| o.1).collect();
    let old = reference_outputs(&reqs, facts, before, den, &ks)?;
    let new = reference_outputs(&reqs, facts, after, den, &ks)?;
    // Leave the model as it was before the change.
    set_adapters(before, den)?;
    let mut onset = None;
    let mut convergence = None;
    for (since, k, latent) in &outputs {
        let missing = || failed(format!("no reference output for request {k}"));
        if onset.is_none() && max_abs_diff(old.get(k).ok_or_else(missing)?, latent)? > 0.0 {
            onset = Some(*since);
        }
        let same = max_abs_diff(new.get(k).ok_or_else(missing)?, latent)? == 0.0;
        convergence = match (same, convergence) {
            (true, None) => Some(*since),
            (false, _) => None, // not settled yet
            (true, c) => c,
        };
    }
    Ok((onset, convergence))
}

/// A depth change alters no output (the ring is bit-identical at every depth), only how many
/// slots run: onset is the first tick the count differs from an unchanged ring, convergence
/// the first tick from which it equals a ring that had the new depth from the start.
fn depth_trial(
    backend: &mut BackendSet,
    facts: &BackendFacts,
    before: &Controls,
    after: &Controls,
    warm_up: usize,
    ticks_after: usize,
) -> SessionResult<(Option<u64>, Option<u64>)> {
    let reqs = Requests::new(backend, before, before.frames())?;
    let den = backend.denoiser.as_mut();
    let mut rings = [
        Ring::new(den, before.clone())?,
        Ring::new(den, before.clone())?,
        Ring::new(den, after.clone())?,
    ];
    let mut active = [Vec::new(), Vec::new(), Vec::new()];
    for t in 0..(warm_up + ticks_after) {
        if t == warm_up {
            rings[1].controls = after.clone();
        }
        for (ring, counts) in rings.iter_mut().zip(active.iter_mut()) {
            let rep = ring.tick(&reqs, facts, den, t as u64)?;
            if t >= warm_up {
                counts.push(rep.active_slots);
            }
        }
    }
    let [a, b, c] = &active;
    let onset = (0..b.len()).find(|&i| b[i] != a[i]);
    let settled = (0..b.len()).find(|&i| b[i..] == c[i..]);
    Ok((onset.map(|i| i as u64 + 1), settled.map(|i| i as u64 + 1)))
}

/// Onset and convergence of every propagation class at `cfg.propagation_depth`, over the S
/// phases of the ring's cycle.
pub fn propagation(
    backend: &mut BackendSet,
    cfg: &BenchConfig,
    tick_ms: Option<f64>,
) -> SessionResult<BTreeMap<String, Propagation>> {
    let facts = BackendFacts::of(backend);
    let frames = facts.frames(cfg.propagation_seconds).max(1);
    let depth = cfg.propagation_depth;
    let s = cfg.steps;
    let mut base = bench_controls(&cfg.prompt, frames, s, &facts)?;
    base.set_knob("depth", depth as f64, &facts)?;
    let source =
        probe_latent(frames, facts.latent_channels, 3, backend.codec.device())?.affine(0.5, 0.0)?;
    let mut with_source = base.clone();
    with_source.set_source(Some(("probe".into(), source)));
    with_source.set_knob("denoise", 0.9, &facts)?;
    // An adapter for a style the prompt already asks for can change nothing (on the sketch it
    // scales every live song's prior alike), so prefer one the prompt does not name.
    let tags = cfg.prompt.tags.to_lowercase();
    let adapter = facts.adapters.as_ref().and_then(|a| {
        a.iter()
            .find(|id| !tags.contains(id.to_lowercase().as_str()))
            .or(a.first())
            .cloned()
    });
    let mut with_adapter = base.clone();
    if let Some(id) = &adapter {
        with_adapter.init_knob(&format!("{LORA_PREFIX}{id}"), 0.0, &facts)?;
    }
    let new_steps = if s > 2 { s - 2 } else { s + 2 };
    let new_depth = if depth < demon_engine::MAX_DEPTH {
        (2 * depth).min(demon_engine::MAX_DEPTH)
    } else {
        depth / 2
    };
    let changed = |c: &Controls, name: &str, v: f64| -> SessionResult<Controls> {
        let mut c = c.clone();
        c.set_knob(name, v, &facts)?;
        Ok(c)
    };
    let mut cases: Vec<(&str, Controls, Option<Controls>, bool, String)> = vec![
        (
            "shared_per_step",
            base.clone(),
            Some(changed(&base, "velocity_scale", 1.5)?),
            false,
            "velocity scale 1 → 1.5 (the shared lane; every per-step control goes the same way)"
                .into(),
        ),
        (
            "per_slot_submission",
            with_source.clone(),
            Some(changed(&with_source, "denoise", 0.5)?),
            false,
            "denoise 0.9 → 0.5 with a source (fixed when a request is submitted)".into(),
        ),
        (
            "structural",
            base.clone(),
            Some(changed(&base, "steps", new_steps as f64)?),
            false,
            format!(
                "steps {s} → {new_steps} (new requests get the new schedule; in-flight slots drain)"
            ),
        ),
        (
            "structural_depth",
            base.clone(),
            Some(changed(&base, "depth", new_depth as f64)?),
            true,
            format!(
                "depth {depth} → {new_depth}, measured on the slots running per tick (depth never changes what a slot computes)"
            ),
        ),
    ];
    match &adapter {
        Some(id) => {
            let after = changed(&with_adapter, &format!("{LORA_PREFIX}{id}"), 1.0)?;
            cases.push((
                "global_weights",
                with_adapter,
                Some(after),
                false,
                format!("LoRA `{id}` strength 0 → 1 (the model's weights, between ticks)"),
            ));
        }
        None => cases.push((
            "global_weights",
            base.clone(),
            None,
            false,
            format!("not measured: the {} backend has no adapters", facts.name),
        )),
    }
    let mut out = BTreeMap::new();
    for (class, controls, change, by_active, note) in cases {
        let mut onsets = Vec::new();
        let mut convs = Vec::new();
        if let Some(after) = &change {
            for phase in 0..s {
                let warm_up = 2 * (s + depth) + phase;
                let ticks_after = 6 * s.max(new_steps) + 4 * depth;
                let measure = if by_active { depth_trial } else { trial };
                let (o, c) = measure(backend, &facts, &controls, after, warm_up, ticks_after)?;
                onsets.push(o.ok_or_else(|| failed(format!("{class}: no output ever changed")))?);
                convs
                    .push(c.ok_or_else(|| failed(format!("{class}: the output never converged")))?);
            }
        }
        let mean =
            |v: &[u64]| (!v.is_empty()).then(|| v.iter().sum::<u64>() as f64 / v.len() as f64);
        let (onset, conv) = (onsets.iter().max().copied(), convs.iter().max().copied());
        let ms = |t: Option<u64>| t.zip(tick_ms).map(|(t, ms)| t as f64 * ms);
        out.insert(
            class.to_string(),
            Propagation {
                onset_ticks: onset,
                convergence_ticks: conv,
                onset_ticks_mean: mean(&onsets),
                convergence_ticks_mean: mean(&convs),
                onset_ticks_min: onsets.iter().min().copied(),
                convergence_ticks_min: convs.iter().min().copied(),
                onset_ms: ms(onset),
                convergence_ms: ms(conv),
                phases: onsets.len(),
                note,
            },
        );
    }
    Ok(out)
}

/// Full versus windowed decode of the same latent.
fn decode_costs(
    codec: &mut dyn Codec,
    latent: &Tensor,
    field: ReceptiveField,
    keeps_s: &[f64],
    facts: &BackendFacts,
) -> SessionResult<(f64, BTreeMap<String, f64>)> {
    // Warm once; repeat only what is quick (a full-size VAE decode takes a minute on a CPU).
    let time = |f: &mut dyn FnMut() -> SessionResult<()>, reps: usize| -> SessionResult<f64> {
        let t0 = Instant::now();
        f()?;
        let first = t0.elapsed().as_secs_f64();
        if first > 2.0 {
            return Ok(first * 1000.0);
        }
        let t0 = Instant::now();
        for _ in 0..reps {
            f()?;
        }
        Ok(t0.elapsed().as_secs_f64() * 1000.0 / reps as f64)
    };
    let full_ms = time(&mut || Ok(codec.decode(latent, 0).map(|_| ())?), 3)?;
    let t = latent.dim(1)?;
    let mut out = BTreeMap::new();
    for &k in keeps_s {
        let keep = facts.frames(k).clamp(1, t);
        let start = (t - keep) / 2;
        let ms = time(
            &mut || Ok(decode_window(codec, latent, start, keep, field).map(|_| ())?),
            10,
        )?;
        out.insert(key_f(k), ms);
    }
    Ok((full_ms, out))
}

/// Run every measurement.
pub fn run(
    backend: &mut BackendSet,
    cfg: &BenchConfig,
    log: &mut dyn FnMut(&str),
) -> SessionResult<BenchReport> {
    let facts = BackendFacts::of(backend);
    let frames = facts.frames(cfg.seconds);
    let wants = |s: &str| cfg.sections.iter().any(|x| x == s);
    for s in &cfg.sections {
        if !["render", "ticks", "propagation", "decode"].contains(&s.as_str()) {
            return Err(SessionError::bad_value(
                "bench section",
                format!("unknown bench section `{s}` (render, ticks, propagation, decode)"),
            ));
        }
    }
    let mut spec = RenderSpec::new(cfg.prompt.clone(), frames);
    spec.controls.set_knob("steps", cfg.steps as f64, &facts)?;
    spec.controls
        .set_knob("depth", cfg.render_depth as f64, &facts)?;
    spec.takes = cfg.render_takes;
    let mut render_realtime_ratio = None;
    let mut decode_latent = None;
    if wants("render") {
        log(&format!(
            "render: {} takes of {:.0} s at depth {}",
            cfg.render_takes, cfg.seconds, cfg.render_depth
        ));
        // Warm caches (library, tables) so the figure is the steady cost.
        let mut warm = spec.clone();
        warm.frames = facts.frames(2.0);
        warm.takes = 1;
        render(backend, &warm, &mut |_, _| {})?;
        let t0 = Instant::now();
        let takes = render(backend, &spec, &mut |_, _| {})?;
        render_realtime_ratio = Some(cfg.seconds * takes.len() as f64 / t0.elapsed().as_secs_f64());
        decode_latent = takes.into_iter().next().map(|t| t.latent);
    }

    let (mut tick_ms, mut gen_per_s, mut model_ms, mut overhead) = (
        BTreeMap::new(),
        BTreeMap::new(),
        BTreeMap::new(),
        BTreeMap::new(),
    );
    for &d in cfg.depths.iter().filter(|_| wants("ticks")) {
        log(&format!("steady state at depth {d}"));
        let (tick, gps, model) = steady_state(backend, cfg, d)?;
        tick_ms.insert(d.to_string(), tick);
        gen_per_s.insert(d.to_string(), gps);
        model_ms.insert(d.to_string(), model);
        overhead.insert(d.to_string(), ((tick - model) / tick).clamp(0.0, 1.0));
    }
    let max_d = cfg.depths.iter().max().copied().unwrap_or(1).to_string();
    let engine_overhead_share = overhead.get(&max_d).copied();

    let (mut onset, mut coverage, mut conv, mut wait) = (
        BTreeMap::new(),
        BTreeMap::new(),
        BTreeMap::new(),
        BTreeMap::new(),
    );
    let (mut conv_min, mut conv_max) = (BTreeMap::new(), BTreeMap::new());
    let mut propagation_rows = BTreeMap::new();
    if wants("propagation") {
        for d in [1usize, 4, 8] {
            log(&format!("propagation at depth {d}"));
            let (o, c) = shared_lane_onset(backend, cfg, d)?;
            onset.insert(d.to_string(), o);
            coverage.insert(d.to_string(), c);
            // The answer depends on where in the ring's cycle the change lands: average all
            // phases.
            let runs = (0..cfg.steps)
                .map(|p| per_slot_convergence(backend, cfg, d, p))
                .collect::<SessionResult<Vec<_>>>()?;
            for (k, w) in &runs {
                if *k != w + cfg.steps as u64 {
                    return Err(failed(format!("convergence {k} is not queue wait {w} + S")));
                }
            }
            let mean = |f: &dyn Fn(&(u64, u64)) -> u64| {
                runs.iter().map(f).sum::<u64>() as f64 / runs.len() as f64
            };
            conv.insert(d.to_string(), mean(&|r| r.0));
            conv_max.insert(d.to_string(), runs.iter().map(|r| r.0).max().unwrap_or(0));
            conv_min.insert(d.to_string(), runs.iter().map(|r| r.0).min().unwrap_or(0));
            wait.insert(d.to_string(), mean(&|r| r.1));
        }
        log(&format!(
            "propagation per control class at depth {}",
            cfg.propagation_depth
        ));
        propagation_rows = propagation(backend, cfg, tick_ms.get("4").copied())?;
    }

    let (mut field, mut full_decode_ms, mut windowed_decode_ms, mut windowed_decode_speedup) =
        (None, None, BTreeMap::new(), BTreeMap::new());
    if wants("decode") {
        log("receptive field and decode");
        let c = facts.latent_channels;
        let probes = probe_latents(120, c, backend.codec.device())?;
        let f = measure_receptive_field(backend.codec.as_mut(), &probes, 9, 3, 48, 1e-6)?;
        let latent = match decode_latent {
            Some(l) => l,
            None => probe_latent(frames, c, 9, backend.codec.device())?,
        };
        let (full, windowed) = decode_costs(
            backend.codec.as_mut(),
            &latent,
            f,
            &cfg.keep_windows_s,
            &facts,
        )?;
        windowed_decode_speedup = windowed
            .iter()
            .map(|(k, v)| (k.clone(), full / v))
            .collect();
        windowed_decode_ms = windowed;
        full_decode_ms = Some(full);
        field = Some(f);
    }

    Ok(BenchReport {
        backend: backend.name.clone(),
        song_seconds: cfg.seconds,
        steps: cfg.steps,
        render_realtime_ratio,
        render_takes: cfg.render_takes,
        render_depth: cfg.render_depth,
        tick_ms,
        gen_per_s,
        model_ms,
        engine_overhead_share,
        engine_overhead_share_by_depth: overhead,
        shared_lane_onset_ticks: onset,
        shared_lane_onset_coverage: coverage,
        per_slot_convergence_ticks: conv,
        per_slot_convergence_ticks_min: conv_min,
        per_slot_convergence_ticks_max: conv_max,
        per_slot_queue_wait_ticks: wait,
        propagation: propagation_rows,
        receptive_field_frames: field,
        full_decode_ms,
        windowed_decode_ms,
        windowed_decode_speedup,
    })
}

/// Knob-to-ear of one class for a simulated client (`crate::latency::simulated_ms`).
#[derive(Clone, Debug, Serialize)]
pub struct SimulatedEar {
    /// Controls measured.
    pub trials: usize,
    pub median_ms: f64,
    pub p90_ms: f64,
    pub max_ms: f64,
    /// Ticks from the control to the slice that first carries it (median).
    pub ticks_to_slice_median: f64,
    /// Slices that would have landed with the simulated playhead inside them.
    pub late: usize,
    /// The adaptive lead when the trials ran.
    pub lead_ms: f64,
    pub note: String,
}

/// Knob-to-ear per class with a simulated client that plays exactly at the server's playhead,
/// paced to the tick clock: a live core at `propagation_depth` with the adaptive lead (as
/// `demon serve` runs it, fed by the measured tick and decode times), a control received half a
/// tick before each trial's tick boundary, the same accounting as live (which slice first
/// carries it), and the time the simulated playhead reaches that slice. Trials are spread over
/// the phases of the ring's S-tick cycle.
pub fn knob_to_ear(
    backend: BackendSet,
    cfg: &BenchConfig,
    trials: usize,
    log: &mut dyn FnMut(&str),
) -> SessionResult<BTreeMap<String, SimulatedEar>> {
    use crate::control::ControlMessage;
    use crate::core::{LiveCore, SessionConfig};
    use crate::latency::{EarClass, simulated_ms};
    let config = SessionConfig {
        prompt: cfg.prompt.tags.clone(),
        song_seconds: cfg.propagation_seconds,
        adaptive_lead: true,
        knobs: [
            ("steps".to_string(), cfg.steps as f64),
            ("depth".to_string(), cfg.propagation_depth as f64),
        ]
        .into(),
        ..SessionConfig::default()
    };
    let spt = config.samples_per_tick as u64;
    let mut core = LiveCore::new(config, backend)?;
    let sr = core.sample_rate();
    let span = core.buffer().len() as u64;
    // Fill the ring and let the lead settle on this machine's tick and decode times.
    let warm = 4 * cfg.steps as u64 + 200;
    log(&format!(
        "knob-to-ear (simulated client) at depth {}: {warm} warm-up ticks",
        cfg.propagation_depth
    ));
    for _ in 0..warm {
        core.tick(None)?;
    }
    let classes = [
        (EarClass::SharedLane, "velocity_scale"),
        (EarClass::PerSlot, "seed"),
    ];
    let mut out = BTreeMap::new();
    let mut id = 0u64;
    for (class, knob) in classes {
        let (mut ms, mut ticks, mut late) = (Vec::new(), Vec::new(), 0usize);
        for trial in 0..trials {
            // Spread the trials over the phases of the cycle.
            for _ in 0..trial % cfg.steps.max(1) {
                core.tick(None)?;
            }
            let value = match class {
                EarClass::SharedLane if trial % 2 == 0 => 0.7,
                EarClass::SharedLane => 1.4,
                _ => 1000.0 + trial as f64,
            };
            let msg = ControlMessage::SetKnob {
                name: knob.into(),
                value,
            };
            core.apply(&msg)?;
            id += 1;
            core.track_control(id, &msg, Instant::now());
            let applied_tick = core.tick_index();
            let received_sample = applied_tick * spt - spt / 2;
            let mut found = None;
            for _ in 0..(4 * cfg.steps + 64) {
                let o = core.tick(None)?;
                if let Some(r) = o.reflected.iter().find(|r| r.id == id) {
                    found = Some((o.tick, o.playhead, r.start_sample));
                    break;
                }
            }
            let Some((tick, playhead, start)) = found else {
                return Err(failed(format!(
                    "{knob} = {value}: no slice carried it within {} ticks",
                    4 * cfg.steps + 64
                )));
            };
            let (m, was_late) = simulated_ms(received_sample, tick, spt, playhead, start, span, sr);
            ms.push(m);
            ticks.push((tick - applied_tick) as f64);
            late += was_late as usize;
        }
        ms.sort_by(f64::total_cmp);
        ticks.sort_by(f64::total_cmp);
        out.insert(
            class.name().to_string(),
            SimulatedEar {
                trials,
                median_ms: crate::lead::quantile(&ms, 0.5),
                p90_ms: crate::lead::quantile(&ms, 0.9),
                max_ms: ms.last().copied().unwrap_or(0.0),
                ticks_to_slice_median: crate::lead::quantile(&ticks, 0.5),
                late,
                lead_ms: core.facts().frames_ms(core.lead_frames() as usize),
                note: format!(
                    "{knob} moved {trials} times; received half a tick before the boundary"
                ),
            },
        );
    }
    Ok(out)
}
