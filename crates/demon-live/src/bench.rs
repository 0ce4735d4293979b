//! `demon bench`: measured figures, never assumed ones.
//!
//! - real-time ratio of an offline render (60 s songs at depth 4 by default);
//! - tick time and generations per second at D = 1, 2, 4, 8 in steady state, one submission per
//!   tick as the live session does;
//! - engine overhead: the share of a tick spent outside the model;
//! - propagation: how many ticks a change takes to reach the output, per control class,
//!   measured by running two identical pipelines and changing the control in one of them;
//! - windowed versus full decode time on the same latent, per keep window.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use candle_core::Tensor;
use demon_engine::{
    BackendSet, Codec, Curve, DenoiseBatch, Denoiser, EngineError, Prompt, ReceptiveField,
    SharedLane, SlotRequest, StreamPipeline, decode_window, measure_receptive_field, probe_latent,
    probe_latents,
};
use serde::Serialize;

use crate::render::{RenderError, RenderSpec, render};

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
        }
    }
}

/// Onset and convergence of one control class, in ticks and milliseconds.
#[derive(Clone, Debug, Serialize)]
pub struct Propagation {
    pub onset_ticks: Option<u64>,
    pub convergence_ticks: Option<u64>,
    pub onset_ms: Option<f64>,
    pub convergence_ms: Option<f64>,
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
    /// Per control class, at the default live depth (4).
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

/// A request like the live session makes: prompt, context, per-slot seed.
fn live_request(
    backend: &mut BackendSet,
    prompt: &Prompt,
    frames: usize,
    steps: usize,
    seed: u64,
) -> Result<SlotRequest, RenderError> {
    let cond = backend.conditioner.condition(prompt)?;
    let ctx = backend.conditioner.context(None, frames, 0.0)?;
    let mut r = SlotRequest::new(cond, ctx, frames, seed);
    r.schedule.steps = steps;
    Ok(r)
}

/// Steady-state tick time, throughput and model share at `depth`.
fn steady_state(
    backend: &mut BackendSet,
    cfg: &BenchConfig,
    depth: usize,
) -> Result<(f64, f64, f64), RenderError> {
    let frames = (cfg.seconds * 25.0).round() as usize;
    let template = live_request(backend, &cfg.prompt, frames, cfg.steps, 0)?;
    let mut pipe = StreamPipeline::for_denoiser(depth, backend.denoiser.as_ref())?;
    let mut timed = TimedDenoiser {
        inner: backend.denoiser.as_mut(),
        spent: Duration::ZERO,
        calls: 0,
    };
    let mut seed = 0;
    let mut submit_tick =
        |pipe: &mut StreamPipeline, timed: &mut TimedDenoiser| -> Result<usize, RenderError> {
            let mut r = template.clone();
            r.seed = seed;
            seed += 1;
            pipe.submit(r)?;
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

fn latents_differ(a: &StreamPipeline, b: &StreamPipeline) -> Result<(usize, usize), RenderError> {
    let mut differ = 0;
    let mut total = 0;
    for (x, y) in a.slots().zip(b.slots()) {
        total += 1;
        let d = (x.latent - y.latent)?
            .abs()?
            .max_all()?
            .to_scalar::<f32>()?;
        if d > 0.0 {
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
) -> Result<(u64, f64), RenderError> {
    let frames = 250;
    let template = live_request(backend, &cfg.prompt, frames, cfg.steps, 0)?;
    let mut a = StreamPipeline::for_denoiser(depth, backend.denoiser.as_ref())?;
    let mut b = StreamPipeline::for_denoiser(depth, backend.denoiser.as_ref())?;
    let den = backend.denoiser.as_mut();
    let mut seed = 0;
    let mut step = |a: &mut StreamPipeline,
                    b: &mut StreamPipeline,
                    den: &mut dyn Denoiser|
     -> Result<(), RenderError> {
        let mut r = template.clone();
        r.seed = seed;
        seed += 1;
        a.submit(r.clone())?;
        b.submit(r)?;
        a.tick(den)?;
        b.tick(den)?;
        Ok(())
    };
    for _ in 0..(cfg.steps + depth) {
        step(&mut a, &mut b, den)?;
    }
    let mut lane = SharedLane::default();
    lane.set_curve("velocity_scale", Some(Curve::constant(1.5)))?;
    b.set_lane(lane)?;
    for k in 1..=(4 * cfg.steps as u64) {
        step(&mut a, &mut b, den)?;
        let (differ, total) = latents_differ(&a, &b)?;
        if differ > 0 {
            return Ok((k, differ as f64 / total.max(1) as f64));
        }
    }
    Err(EngineError::Backend("the shared-lane change never reached a slot".into()).into())
}

/// Ticks from a denoise change until the first output generated with the new value, and the
/// queue wait inside that figure (ticks from the change until a slot starts a request that
/// carries it), for a change made at tick `phase` of the ring's S-tick cycle.
fn per_slot_convergence(
    backend: &mut BackendSet,
    cfg: &BenchConfig,
    depth: usize,
    phase: usize,
) -> Result<(u64, u64), RenderError> {
    let frames = 250;
    let template = live_request(backend, &cfg.prompt, frames, cfg.steps, 0)?;
    let mut pipe = StreamPipeline::for_denoiser(depth, backend.denoiser.as_ref())?;
    let den = backend.denoiser.as_mut();
    let source = probe_latent(frames, den.latent_channels(), 3, den.device())?.affine(0.5, 0.0)?;
    let mut seed = 0u64;
    let mut request = |denoise: f32| {
        let mut r = template.clone();
        r.seed = seed;
        r.tag = seed;
        seed += 1;
        r.source = Some(source.clone());
        r.schedule.denoise = denoise;
        r
    };
    for _ in 0..(cfg.steps + depth) * 2 + phase {
        pipe.submit(request(0.9))?;
        pipe.tick(den)?;
    }
    let change_tick = pipe.ticks();
    for k in 1..=(8 * cfg.steps as u64 + 64) {
        pipe.submit(request(0.5))?;
        let rep = pipe.tick(den)?;
        if let Some(f) = rep
            .finished
            .iter()
            .find(|f| f.submitted_tick >= change_tick)
        {
            return Ok((k, f.started_tick - change_tick));
        }
    }
    Err(EngineError::Backend("no output ever reflected the submission-time change".into()).into())
}

/// Full versus windowed decode of the same latent.
fn decode_costs(
    codec: &mut dyn Codec,
    latent: &Tensor,
    field: ReceptiveField,
    keeps_s: &[f64],
) -> Result<(f64, BTreeMap<String, f64>), RenderError> {
    // Warm once; repeat only what is quick (a full-size VAE decode takes a minute on a CPU).
    let time =
        |f: &mut dyn FnMut() -> Result<(), RenderError>, reps: usize| -> Result<f64, RenderError> {
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
    let full_ms = time(
        &mut || codec.decode(latent, 0).map(|_| ()).map_err(Into::into),
        3,
    )?;
    let t = latent.dim(1)?;
    let mut out = BTreeMap::new();
    for &k in keeps_s {
        let keep = ((k * 25.0).round() as usize).clamp(1, t);
        let start = (t - keep) / 2;
        let ms = time(
            &mut || {
                decode_window(codec, latent, start, keep, field)
                    .map(|_| ())
                    .map_err(Into::into)
            },
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
) -> Result<BenchReport, RenderError> {
    let frames = (cfg.seconds * 25.0).round() as usize;
    let wants = |s: &str| cfg.sections.iter().any(|x| x == s);
    for s in &cfg.sections {
        if !["render", "ticks", "propagation", "decode"].contains(&s.as_str()) {
            return Err(RenderError::Invalid(format!(
                "unknown bench section `{s}` (render, ticks, propagation, decode)"
            )));
        }
    }
    let spec = RenderSpec {
        prompt: cfg.prompt.clone(),
        frames,
        steps: cfg.steps,
        depth: cfg.render_depth,
        takes: cfg.render_takes,
        ..Default::default()
    };
    let mut render_realtime_ratio = None;
    let mut decode_latent = None;
    if wants("render") {
        log(&format!(
            "render: {} takes of {:.0} s at depth {}",
            cfg.render_takes, cfg.seconds, cfg.render_depth
        ));
        // Warm caches (library, tables) so the figure is the steady cost.
        render(
            backend,
            &RenderSpec {
                frames: 50,
                takes: 1,
                ..spec.clone()
            },
            None,
            &mut |_, _| {},
        )?;
        let t0 = Instant::now();
        let takes = render(backend, &spec, None, &mut |_, _| {})?;
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
    for &d in [1usize, 4, 8].iter().filter(|_| wants("propagation")) {
        log(&format!("propagation at depth {d}"));
        let (o, c) = shared_lane_onset(backend, cfg, d)?;
        onset.insert(d.to_string(), o);
        coverage.insert(d.to_string(), c);
        // The answer depends on where in the ring's cycle the change lands: average all phases.
        let runs = (0..cfg.steps)
            .map(|p| per_slot_convergence(backend, cfg, d, p))
            .collect::<Result<Vec<_>, _>>()?;
        for (k, w) in &runs {
            if *k != w + cfg.steps as u64 {
                return Err(EngineError::Backend(format!(
                    "convergence {k} is not queue wait {w} + S"
                ))
                .into());
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
    let tick4 = tick_ms.get("4").copied();
    let ms = |ticks: Option<u64>| match (ticks, tick4) {
        (Some(t), Some(ms)) => Some(t as f64 * ms),
        _ => None,
    };
    let mut propagation = BTreeMap::new();
    let shared4 = onset.get("4").copied();
    propagation.insert(
        "shared_per_step".to_string(),
        Propagation {
            onset_ticks: shared4,
            convergence_ticks: shared4.map(|o| o + cfg.steps as u64 - 1),
            onset_ms: ms(shared4),
            convergence_ms: ms(shared4.map(|o| o + cfg.steps as u64 - 1)),
            note: "velocity scale, SDE source curve, ODE noise, x0 strength, guidance, APG momentum, CFG rescale, channel gain, DCW: every in-flight slot on the next tick; a latent whose whole trajectory saw the value arrives S−1 ticks later".into(),
        },
    );
    let conv4 = conv.get("4").map(|c| c.round() as u64);
    propagation.insert(
        "per_slot_submission".to_string(),
        Propagation {
            onset_ticks: conv4,
            convergence_ticks: conv4,
            onset_ms: ms(conv4),
            convergence_ms: ms(conv4),
            note: "denoise, seed, source, prompt, blend, structure, shift, CFG mode: queue wait + S ticks".into(),
        },
    );
    propagation.insert(
        "global_weights".to_string(),
        Propagation {
            onset_ticks: Some(1),
            convergence_ticks: Some(cfg.steps as u64),
            onset_ms: ms(Some(1)),
            convergence_ms: ms(Some(cfg.steps as u64)),
            note: "LoRA enable/strength: applied between ticks, so the first forward after the swap uses it (onset 1 tick); every slot fully generated with it after S ticks. The sketch backend has no LoRA; these are the runtime's guarantees, measured on ACE-Step by `demon bench --backend acestep`".into(),
        },
    );
    propagation.insert(
        "structural".to_string(),
        Propagation {
            onset_ticks: Some(1),
            convergence_ticks: Some(cfg.steps as u64),
            onset_ms: ms(Some(1)),
            convergence_ms: ms(Some(cfg.steps as u64)),
            note: "steps, depth, source length: new slots start on the next tick; in-flight slots drain (never discarded), so output at the new structure arrives after S ticks".into(),
        },
    );

    let (mut field, mut full_decode_ms, mut windowed_decode_ms, mut windowed_decode_speedup) =
        (None, None, BTreeMap::new(), BTreeMap::new());
    if wants("decode") {
        log("receptive field and decode");
        let c = backend.codec.latent_channels();
        let probes = probe_latents(120, c, backend.codec.device())?;
        let f = measure_receptive_field(backend.codec.as_mut(), &probes, 9, 3, 48, 1e-6)?;
        let latent = match decode_latent {
            Some(l) => l,
            None => probe_latent(frames, c, 9, backend.codec.device())?,
        };
        let (full, windowed) =
            decode_costs(backend.codec.as_mut(), &latent, f, &cfg.keep_windows_s)?;
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
        propagation,
        receptive_field_frames: field,
        full_decode_ms,
        windowed_decode_ms,
        windowed_decode_speedup,
    })
}
