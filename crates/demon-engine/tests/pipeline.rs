//! Behaviour of the `StreamPipeline` ring: bit-identity across depths, the shared lane's
//! next-tick onset, per-slot versus global schedules, source blending, guidance modes, depth
//! and length changes.

use candle_core::{Device, Tensor};
use demon_engine::testing::{ConstantDenoiser, PointMassDenoiser};
use demon_engine::*;

const C: usize = 4;
const T: usize = 12;

/// A row-independent, nonlinear test model: the exact denoiser of a point mass plus a wobble
/// that depends on the latent, the time and the context, so any mixing of rows would show.
struct WobbleDenoiser {
    device: Device,
    calls: Vec<(usize, Vec<f32>)>,
}

impl Denoiser for WobbleDenoiser {
    fn latent_channels(&self) -> usize {
        C
    }
    fn context_channels(&self) -> usize {
        1
    }
    fn device(&self) -> &Device {
        &self.device
    }
    fn velocity(&mut self, batch: &DenoiseBatch<'_>) -> Result<Tensor> {
        self.calls.push((batch.rows(), batch.t.clone()));
        let mut rows = Vec::new();
        for i in 0..batch.rows() {
            let x = batch.x.narrow(0, i, 1)?;
            let mu = batch.conditions[i].states.mean_all()?.to_scalar::<f32>()? as f64;
            let t = batch.t[i] as f64;
            let ctx = batch.contexts[i].broadcast_as(x.dims())?;
            let base = x.affine(1.0 / t, -mu / t)?;
            let wobble = ((x.sin()? * 0.3)? + (ctx * 0.1)?)?.affine(t, 0.0)?;
            rows.push((base + wobble)?);
        }
        Ok(Tensor::cat(&rows, 0)?)
    }
}

fn wobble() -> WobbleDenoiser {
    WobbleDenoiser {
        device: Device::Cpu,
        calls: Vec::new(),
    }
}

fn ctx(v: f32) -> Tensor {
    Tensor::full(v, (1, T, 1), &Device::Cpu).unwrap()
}

fn latent(seed: u64) -> Tensor {
    rng::normal_tensor(seed, rng::NoiseStream::Custom(9, 0), T, C, &Device::Cpu).unwrap()
}

fn bits(t: &Tensor) -> Vec<u32> {
    t.flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap()
        .iter()
        .map(|x| x.to_bits())
        .collect()
}

fn flat(t: &Tensor) -> Vec<f32> {
    t.flatten_all().unwrap().to_vec1::<f32>().unwrap()
}

/// What a request of the mix exercises in `StreamPipeline`: the guidance modes and the branches
/// of the solver step (`integrate`), classified from the request by the engine's own conditions.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Path {
    CfgFull,
    CfgInitialize,
    CfgSelfNoise,
    /// Euler on the model's velocity (nothing needs x̂₀ yet).
    OdeVelocity,
    /// The same with ODE noise injected after the step.
    OdeVelocityNoise,
    /// Euler on the velocity rebuilt from x̂₀ (guidance, complex features, scalar x0 target).
    OdeFromX0,
    /// The same with ODE noise.
    OdeFromX0Noise,
    /// SDE: x̂₀ re-noised with a fresh draw.
    SdeFresh,
    /// SDE: x̂₀ re-noised with the latent mask's fixed noise.
    SdeMaskNoise,
    /// SDE with the per-frame source blend (mechanism 3).
    SdeSourceBlend,
    X0TargetScalar,
    X0TargetCurve,
    LatentMask,
    /// Several weighted conditions, one active for part of the schedule only.
    MultiCondition,
    VelocityScaleCurve,
    CfgRescale,
    ApgMomentumCurve,
    /// Denoise 0: the step at t = 0 gives back the source untouched.
    SourceReturned,
}

const ALL_PATHS: [Path; 18] = [
    Path::CfgFull,
    Path::CfgInitialize,
    Path::CfgSelfNoise,
    Path::OdeVelocity,
    Path::OdeVelocityNoise,
    Path::OdeFromX0,
    Path::OdeFromX0Noise,
    Path::SdeFresh,
    Path::SdeMaskNoise,
    Path::SdeSourceBlend,
    Path::X0TargetScalar,
    Path::X0TargetCurve,
    Path::LatentMask,
    Path::MultiCondition,
    Path::VelocityScaleCurve,
    Path::CfgRescale,
    Path::ApgMomentumCurve,
    Path::SourceReturned,
];

/// The paths request `r` takes, by the conditions `StreamPipeline` branches on.
fn paths(r: &SlotRequest) -> Vec<Path> {
    if r.schedule.denoise == 0.0 {
        return vec![Path::SourceReturned];
    }
    let mut out = Vec::new();
    let c = &r.curves;
    let cfg = c.guidance.is_some() && (r.cfg_mode == CfgMode::SelfNoise || !r.negatives.is_empty());
    if cfg {
        out.push(match r.cfg_mode {
            CfgMode::Full => Path::CfgFull,
            CfgMode::Initialize => Path::CfgInitialize,
            CfgMode::SelfNoise => Path::CfgSelfNoise,
        });
        if c.cfg_rescale.is_some() {
            out.push(Path::CfgRescale);
        }
        if c.apg_momentum.is_some() {
            out.push(Path::ApgMomentumCurve);
        }
    }
    let source_blend = c.sde_denoise.is_some() && r.source.is_some();
    let sde = source_blend || r.solver == SolverKind::Sde;
    let scalar_x0 = r.x0_target.is_some() && c.x0_target_strength.is_some();
    let noise = c.ode_noise.is_some();
    if source_blend {
        out.push(Path::SdeSourceBlend);
    } else if sde {
        out.push(match r.latent_mask {
            Some(_) => Path::SdeMaskNoise,
            None => Path::SdeFresh,
        });
    } else {
        // Before the last step; the x0-target scalar switches to x̂₀ in the second half only.
        if cfg || r.has_complex_features() || scalar_x0 {
            out.push([Path::OdeFromX0, Path::OdeFromX0Noise][noise as usize]);
        }
        if !(cfg || r.has_complex_features()) {
            out.push([Path::OdeVelocity, Path::OdeVelocityNoise][noise as usize]);
        }
    }
    if r.x0_target.is_some() {
        if r.x0_target_curve.is_some() {
            out.push(Path::X0TargetCurve);
        } else if scalar_x0 {
            out.push(Path::X0TargetScalar);
        }
    }
    if r.latent_mask.is_some() {
        out.push(Path::LatentMask);
    }
    if r.conditions.len() > 1 {
        out.push(Path::MultiCondition);
    }
    if c.velocity_scale.is_some() {
        out.push(Path::VelocityScaleCurve);
    }
    out
}

fn curve(spec: &str) -> Curve {
    CurveSpec::parse("c", spec)
        .unwrap()
        .to_curve("c", T)
        .unwrap()
}

/// The seed of the request mix (the coverage assertion in the bit-identity test says whether a
/// mix reaches every path; this one does with 48 requests).
const MIX_SEED: u64 = 2025;

/// Request `k` of a seeded random mix: denoise, shift, source, solver, guidance mode, x0 target
/// and the complex features are drawn independently (portable dice from the engine's Philox),
/// so any combination can meet any other in one batch.
fn varied_request(k: u64) -> SlotRequest {
    let dice = |axis: u64, n: usize| -> usize {
        (rng::uniform(MIX_SEED, rng::NoiseStream::Custom(7, k as u32), axis) * n as f64) as usize
    };
    let cond = PointMassDenoiser::conditioning(0.1 * (k % 11) as f32 - 0.5);
    let mut r = SlotRequest::new(cond, ctx((k % 3) as f32), T, 1000 + k);
    r.tag = k;
    if dice(0, 5) != 0 {
        r.source = Some(latent(k));
    }
    r.schedule.denoise = match (&r.source, dice(1, 6)) {
        (Some(_), 0) => 0.0,
        (_, d) => [1.0, 1.0, 0.75, 0.5, 0.3, 1.0][d],
    };
    r.schedule.shift = [3.0, 3.5][dice(2, 2)];
    match dice(3, 4) {
        0 => {}
        1 => r.curves.ode_noise = Some(Curve::constant(0.3)),
        2 => r.solver = SolverKind::Sde,
        _ => {
            r.solver = SolverKind::Sde;
            r.curves.sde_denoise = Some(curve("sine:0:1:2"));
        }
    }
    // Plain requests are drawn twice as often as each feature, so the simple paths stay common.
    if let Some(mode) = [
        None,
        None,
        Some(CfgMode::Full),
        Some(CfgMode::Initialize),
        Some(CfgMode::SelfNoise),
    ][dice(4, 5)]
    {
        r.cfg_mode = mode;
        r.curves.guidance = Some(Curve::constant(2.5));
        if mode != CfgMode::SelfNoise {
            r.negatives
                .push(SlotCondition::new(PointMassDenoiser::conditioning(0.0)));
        }
        if dice(5, 2) == 1 {
            r.curves.cfg_rescale = Some(Curve::constant(0.3));
        }
        if dice(6, 2) == 1 {
            r.curves.apg_momentum = Some(curve("ramp:-0.75:0"));
        }
    }
    match dice(7, 4) {
        0 | 1 => {}
        2 => {
            r.x0_target = Some(latent(k + 50));
            r.curves.x0_target_strength = Some(Curve::constant(0.4));
        }
        _ => {
            r.x0_target = Some(latent(k + 50));
            r.x0_target_curve = Some(curve("ramp:1:0"));
            r.x0_target_gate = 0.3;
        }
    }
    match dice(8, 5) {
        0 | 1 => {}
        2 => r.curves.velocity_scale = Some(curve("ramp:0.5:1.5")),
        3 => {
            r.conditions.push(SlotCondition::weighted(
                PointMassDenoiser::conditioning(0.7),
                curve("square:0:1:1"),
            ));
            r.conditions.push(SlotCondition::in_range(
                PointMassDenoiser::conditioning(-0.3),
                0.5,
                1.0,
            ));
        }
        _ => {
            r.latent_mask = Some(LatentMask {
                mask: curve("ramp:0:1"),
                original: latent(k + 99),
            })
        }
    }
    r
}

fn run_all(depth: usize, requests: &[SlotRequest], lane: &SharedLane) -> Vec<(u64, Vec<u32>)> {
    let mut d = wobble();
    let mut p = StreamPipeline::for_denoiser(depth, &d).unwrap();
    p.set_lane(lane.clone()).unwrap();
    let mut out = Vec::new();
    for r in requests {
        // Never overflow the queue: streaming must complete every submission.
        while p.queue_len() >= depth {
            out.extend(p.tick(&mut d).unwrap().finished);
        }
        p.submit(r.clone()).unwrap();
    }
    out.extend(p.flush(&mut d).unwrap());
    let mut v: Vec<(u64, Vec<u32>)> = out.iter().map(|f| (f.tag, bits(&f.latent))).collect();
    v.sort_by_key(|(tag, _)| *tag);
    v
}

#[test]
fn streaming_is_bit_identical_to_batch_at_every_depth() {
    let requests: Vec<SlotRequest> = (0..48).map(varied_request).collect();
    // The mix reaches every guidance mode and every branch of the solver step.
    let mut seen: Vec<Path> = requests.iter().flat_map(paths).collect();
    seen.sort();
    seen.dedup();
    let missing: Vec<&Path> = ALL_PATHS.iter().filter(|p| !seen.contains(p)).collect();
    assert!(missing.is_empty(), "the mix never takes {missing:?}");
    for lane in [
        SharedLane::default(),
        SharedLane {
            dcw: DcwSettings::off(),
            ..Default::default()
        },
    ] {
        let reference = run_all(1, &requests, &lane);
        assert_eq!(reference.len(), requests.len());
        for depth in 2..=8 {
            let got = run_all(depth, &requests, &lane);
            assert_eq!(got.len(), requests.len(), "depth {depth}");
            for (a, b) in reference.iter().zip(&got) {
                assert_eq!(a.0, b.0);
                assert!(a.1 == b.1, "request {} differs at depth {depth}", a.0);
            }
        }
    }
}

#[test]
fn one_batched_call_per_tick_and_throughput_d_over_s() {
    let mut d = wobble();
    let mut p = StreamPipeline::for_denoiser(4, &d).unwrap();
    let mut finished = 0;
    for k in 0..40 {
        let mut r = SlotRequest::new(PointMassDenoiser::conditioning(0.2), ctx(0.0), T, k);
        r.tag = k;
        p.submit(r).unwrap();
        let rep = p.tick(&mut d).unwrap();
        assert_eq!(rep.denoiser_calls, 1, "one call per tick");
        assert_eq!(rep.positive_rows, rep.active_slots);
        finished += rep.finished.len();
    }
    // Steady state: D/S = 4/8 per tick; the first output ends tick S−1.
    assert_eq!(d.calls.len(), 40);
    assert!(d.calls.iter().skip(4).all(|(b, _)| *b == 4));
    assert_eq!(finished, (40 - 7) * 4 / 8 + 1);
}

#[test]
fn queue_is_capped_at_depth_and_drops_the_oldest() {
    let d = wobble();
    let mut p = StreamPipeline::for_denoiser(3, &d).unwrap();
    let mut ids = Vec::new();
    for k in 0..5 {
        ids.push(
            p.submit(SlotRequest::new(
                PointMassDenoiser::conditioning(0.0),
                ctx(0.0),
                T,
                k,
            ))
            .unwrap(),
        );
    }
    assert_eq!(p.queue_len(), 3);
    assert_eq!(p.stats().dropped_from_queue, 2);
    let mut d = d;
    let done = p.flush(&mut d).unwrap();
    let got: Vec<u64> = done.iter().map(|f| f.request_id).collect();
    assert_eq!(got, ids[2..].to_vec(), "the two oldest were dropped");
}

/// Mechanism 2: a velocity-scale change written between two ticks is used by every in-flight
/// slot's very next step, at D = 1, 4 and 8.
#[test]
fn shared_lane_reaches_every_slot_on_the_next_tick() {
    for depth in [1usize, 4, 8] {
        let mut d = ConstantDenoiser {
            value: 1.0,
            channels: C,
            device: Device::Cpu,
        };
        let mut p = StreamPipeline::new(depth, C, 0, Device::Cpu).unwrap();
        let lane = SharedLane {
            dcw: DcwSettings::off(),
            ..Default::default()
        };
        p.set_lane(lane.clone()).unwrap();
        let empty_ctx = Tensor::zeros((1, T, 0), candle_core::DType::F32, &Device::Cpu).unwrap();
        let submit = |p: &mut StreamPipeline, k: u64| {
            let mut r = SlotRequest::new(
                PointMassDenoiser::conditioning(0.0),
                empty_ctx.clone(),
                T,
                k,
            );
            r.schedule.steps = 16;
            p.submit(r).unwrap();
        };
        for k in 0..(depth as u64 + 3) {
            submit(&mut p, k);
            p.tick(&mut d).unwrap();
        }
        assert_eq!(p.active_slots(), depth);
        let measure = |p: &mut StreamPipeline, d: &mut ConstantDenoiser| -> Vec<f32> {
            let before: Vec<(u64, Vec<f32>, f32, f32)> = p
                .slots()
                .map(|s| {
                    (
                        s.request_id,
                        flat(s.latent),
                        s.schedule.t(s.step),
                        s.schedule.t(s.step + 1),
                    )
                })
                .collect();
            p.tick(d).unwrap();
            let after: Vec<(u64, Vec<f32>)> =
                p.slots().map(|s| (s.request_id, flat(s.latent))).collect();
            before
                .iter()
                .filter_map(|(id, x0, t, tn)| {
                    let x1 = &after.iter().find(|(i, _)| i == id)?.1;
                    Some((x1[0] - x0[0]) / (tn - t))
                })
                .collect()
        };
        // With 16 steps no slot finishes while measured: every one of the D is seen.
        let old = measure(&mut p, &mut d);
        assert_eq!(old.len(), depth, "in-flight slots observed");
        assert!(old.iter().all(|vs| (vs - 1.0).abs() < 1e-4), "{old:?}");
        let mut lane2 = lane.clone();
        lane2
            .set_curve("velocity_scale", Some(Curve::constant(2.0)))
            .unwrap();
        p.set_lane(lane2).unwrap();
        let new = measure(&mut p, &mut d);
        assert_eq!(
            new.len(),
            depth,
            "in-flight slots observed after the change"
        );
        assert!(
            new.iter().all(|vs| (vs - 2.0).abs() < 1e-4),
            "depth {depth}: {new:?}"
        );
    }
}

/// Mechanism 1: with the denoise slider moving on every submission, per-slot schedules
/// complete every submission; the StreamDiffusion-style global reset completes almost none.
#[test]
fn per_slot_completes_every_submission_global_reset_does_not() {
    let run = |mode: ScheduleMode| -> (usize, PipelineStats) {
        let mut d = PointMassDenoiser::new(C, 0);
        let mut p = StreamPipeline::new(8, C, 0, Device::Cpu)
            .unwrap()
            .with_mode(mode);
        let empty = Tensor::zeros((1, T, 0), candle_core::DType::F32, &Device::Cpu).unwrap();
        let mut done = 0;
        for k in 0..60u64 {
            let mut r = SlotRequest::new(PointMassDenoiser::conditioning(0.3), empty.clone(), T, k);
            r.schedule.denoise = 0.3 + 0.7 * (k as f32 / 59.0);
            r.source = Some(latent(k));
            p.submit(r).unwrap();
            done += p.tick(&mut d).unwrap().finished.len();
        }
        done += p.flush(&mut d).unwrap().len();
        (done, p.stats())
    };
    let (per_slot, s1) = run(ScheduleMode::PerSlot);
    let (global, s2) = run(ScheduleMode::GlobalReset);
    println!("per-slot completed {per_slot}/60; global reset completed {global}/60");
    assert_eq!(per_slot, 60);
    assert_eq!(s1.discarded_in_flight, 0);
    assert!(global <= 2, "global reset completed {global}");
    assert!(s2.discarded_in_flight > 0);
}

fn single(req: SlotRequest, lane: SharedLane) -> Tensor {
    let mut d = wobble();
    let mut p = StreamPipeline::for_denoiser(1, &d).unwrap();
    p.set_lane(lane).unwrap();
    p.submit(req).unwrap();
    let mut f = p.flush(&mut d).unwrap();
    assert_eq!(f.len(), 1);
    f.remove(0).latent
}

/// Mechanism 3.
#[test]
fn per_frame_source_blending() {
    let src = latent(7);
    let base = |curve: Option<Curve>, solver: SolverKind| {
        let mut r = SlotRequest::new(PointMassDenoiser::conditioning(0.9), ctx(0.0), T, 5);
        r.source = Some(src.clone());
        r.solver = solver;
        r.curves.sde_denoise = curve;
        r
    };
    // Frames where the curve is 0 come out as the source, with DCW on (the default).
    let mut v = vec![1.0f32; T];
    for f in [0, 3, 4, 11] {
        v[f] = 0.0;
    }
    let out = flat(&single(
        base(
            Some(Curve::frames("sdc", v.clone()).unwrap()),
            SolverKind::Ode,
        ),
        SharedLane::default(),
    ));
    let s = flat(&src);
    for f in 0..T {
        let row = &out[f * C..(f + 1) * C];
        let srow = &s[f * C..(f + 1) * C];
        if v[f] == 0.0 {
            assert_eq!(row, srow, "frame {f} pinned to the source");
        } else {
            assert!(
                row.iter().zip(srow).any(|(a, b)| (a - b).abs() > 1e-3),
                "frame {f} generated"
            );
        }
    }
    // A curve of 1 everywhere is the plain SDE path.
    for lane in [
        SharedLane::default(),
        SharedLane {
            dcw: DcwSettings::off(),
            ..Default::default()
        },
    ] {
        let a = single(
            base(Some(Curve::constant(1.0)), SolverKind::Ode),
            lane.clone(),
        );
        let b = single(base(None, SolverKind::Sde), lane);
        assert_eq!(bits(&a), bits(&b));
    }
}

#[test]
fn denoise_zero_returns_the_source() {
    let src = latent(3);
    let mut r = SlotRequest::new(PointMassDenoiser::conditioning(0.9), ctx(1.0), T, 5);
    r.source = Some(src.clone());
    r.schedule.denoise = 0.0;
    let mut d = wobble();
    let mut p = StreamPipeline::for_denoiser(2, &d).unwrap();
    p.submit(r).unwrap();
    let out = p.flush(&mut d).unwrap();
    assert_eq!(bits(&out[0].latent), bits(&src));
    assert!(d.calls.is_empty(), "the t = 0 pass needs no model call");
}

#[test]
fn denoise_one_ode_reaches_the_point_mass_exactly() {
    // With the exact denoiser of a point mass, Euler ODE lands on it.
    let mut d = PointMassDenoiser::new(C, 0);
    let mut p = StreamPipeline::new(1, C, 0, Device::Cpu).unwrap();
    p.set_lane(SharedLane {
        dcw: DcwSettings::off(),
        ..Default::default()
    })
    .unwrap();
    let empty = Tensor::zeros((1, T, 0), candle_core::DType::F32, &Device::Cpu).unwrap();
    p.submit(SlotRequest::new(
        PointMassDenoiser::conditioning(0.25),
        empty,
        T,
        1,
    ))
    .unwrap();
    let out = flat(&p.flush(&mut d).unwrap()[0].latent);
    assert!(out.iter().all(|x| (x - 0.25).abs() < 1e-5), "{out:?}");
}

/// x0-target paths against hand computation with a constant velocity.
#[test]
fn x0_target_scalar_and_curve_paths() {
    let dev = Device::Cpu;
    let empty = Tensor::zeros((1, 2, 0), candle_core::DType::F32, &dev).unwrap();
    let target = Tensor::full(10f32, (1, 2, 1), &dev).unwrap();
    let run = |r: SlotRequest| -> Vec<Vec<f32>> {
        let mut d = ConstantDenoiser {
            value: 1.0,
            channels: 1,
            device: Device::Cpu,
        };
        let mut p = StreamPipeline::new(1, 1, 0, Device::Cpu).unwrap();
        p.set_lane(SharedLane {
            dcw: DcwSettings::off(),
            ..Default::default()
        })
        .unwrap();
        p.submit(r).unwrap();
        let mut states = Vec::new();
        while !p.is_idle() {
            let rep = p.tick(&mut d).unwrap();
            if let Some(f) = rep.finished.first() {
                states.push(flat(&f.latent));
            } else {
                states.push(flat(p.slots().next().unwrap().latent));
            }
        }
        states
    };
    let noise0 = flat(&rng::normal_tensor(1, rng::NoiseStream::Initial, 2, 1, &dev).unwrap());
    let sched = Schedule::new(ScheduleParams {
        steps: 4,
        shift: 1.0,
        denoise: 1.0,
    })
    .unwrap()
    .timesteps;
    assert_eq!(sched, vec![1.0, 0.75, 0.5, 0.25, 0.0]);

    // Scalar path: α = 0.5, active from step floor(4/2) = 2 on.
    let mut r = SlotRequest::new(PointMassDenoiser::conditioning(0.0), empty.clone(), 2, 1);
    r.schedule = ScheduleParams {
        steps: 4,
        shift: 1.0,
        denoise: 1.0,
    };
    r.x0_target = Some(target.clone());
    r.curves.x0_target_strength = Some(Curve::constant(0.5));
    let states = run(r);
    let mut x = noise0[0] as f64;
    for (i, got) in states.iter().enumerate() {
        let (t, tn) = (sched[i] as f64, sched[i + 1] as f64);
        if i < 2 {
            x += (tn - t) * 1.0;
        } else {
            let x0 = 0.5 * (x - t) + 0.5 * 10.0;
            x = if tn <= 0.0 {
                x0
            } else {
                x + (tn - t) * (x - x0) / t
            };
        }
        assert!(
            (got[0] as f64 - x).abs() < 1e-5,
            "step {i}: {} vs {x}",
            got[0]
        );
    }

    // Curve path with gate 0.5: g = max(0, p − 0.5)/0.5 with p = i/3; per-frame curve (1, 0).
    let mut r = SlotRequest::new(PointMassDenoiser::conditioning(0.0), empty, 2, 1);
    r.schedule = ScheduleParams {
        steps: 4,
        shift: 1.0,
        denoise: 1.0,
    };
    r.x0_target = Some(target);
    r.x0_target_curve = Some(Curve::frames("c", vec![1.0, 0.0]).unwrap());
    r.x0_target_gate = 0.5;
    let states = run(r);
    let mut x = [noise0[0] as f64, noise0[1] as f64];
    for (i, got) in states.iter().enumerate() {
        let (t, tn) = (sched[i] as f64, sched[i + 1] as f64);
        let g = ((i as f64 / 3.0) - 0.5).max(0.0) / 0.5;
        for f in 0..2 {
            let c = [1.0, 0.0][f] * g;
            let x0 = (1.0 - c) * (x[f] - t) + c * 10.0;
            x[f] = if tn <= 0.0 {
                x0
            } else {
                x[f] + (tn - t) * (x[f] - x0) / t
            };
            assert!((got[f] as f64 - x[f]).abs() < 1e-5, "step {i} frame {f}");
        }
    }
}

#[test]
fn guidance_modes_make_the_right_negative_passes() {
    for (mode, neg_rows) in [
        (CfgMode::Full, 8),
        (CfgMode::Initialize, 1),
        (CfgMode::SelfNoise, 0),
    ] {
        let mut d = wobble();
        let mut p = StreamPipeline::for_denoiser(1, &d).unwrap();
        let mut r = SlotRequest::new(PointMassDenoiser::conditioning(0.4), ctx(0.0), T, 1);
        r.curves.guidance = Some(Curve::constant(3.0));
        r.negatives
            .push(SlotCondition::new(PointMassDenoiser::conditioning(-0.4)));
        r.cfg_mode = mode;
        p.submit(r.clone()).unwrap();
        let mut negs = 0;
        let mut out = None;
        while !p.is_idle() {
            let rep = p.tick(&mut d).unwrap();
            negs += rep.negative_rows;
            if let Some(f) = rep.finished.into_iter().next() {
                out = Some(f.latent);
            }
        }
        assert_eq!(negs, neg_rows, "{mode:?}");
        // Guidance changes the result compared with no guidance.
        r.curves.guidance = None;
        let plain = single(r, SharedLane::default());
        assert_ne!(bits(&out.unwrap()), bits(&plain), "{mode:?}");
    }
}

#[test]
fn shrinking_depth_drains_in_flight_work() {
    let mut d = wobble();
    let mut p = StreamPipeline::for_denoiser(8, &d).unwrap();
    let mut done = 0;
    for k in 0..8 {
        p.submit(varied_request(k)).unwrap();
        done += p.tick(&mut d).unwrap().finished.len();
    }
    let in_flight = p.active_slots();
    p.set_depth(2).unwrap();
    done += p.flush(&mut d).unwrap().len();
    assert_eq!(done, 8, "{in_flight} slots were in flight");
    assert_eq!(p.stats().discarded_in_flight, 0);
    // After draining, the ring runs at the new depth.
    for k in 0..4 {
        p.submit(varied_request(k)).unwrap();
        let rep = p.tick(&mut d).unwrap();
        assert!(rep.active_slots <= 2);
    }
    assert!(p.set_depth(0).is_err());
    assert!(p.set_depth(MAX_DEPTH + 1).is_err());
}

#[test]
fn source_length_change_drains_old_slots_and_drops_stale_requests() {
    let mut d = wobble();
    let mut p = StreamPipeline::for_denoiser(4, &d).unwrap();
    for k in 0..3 {
        p.submit(SlotRequest::new(
            PointMassDenoiser::conditioning(0.0),
            ctx(0.0),
            T,
            k,
        ))
        .unwrap();
    }
    p.tick(&mut d).unwrap();
    p.submit(SlotRequest::new(
        PointMassDenoiser::conditioning(0.0),
        ctx(0.0),
        T,
        9,
    ))
    .unwrap();
    // A request of another length: the queued T-long request is stale and dropped.
    let t2 = T + 4;
    let r = SlotRequest::new(
        PointMassDenoiser::conditioning(0.0),
        Tensor::zeros((1, t2, 1), candle_core::DType::F32, &Device::Cpu).unwrap(),
        t2,
        10,
    );
    p.submit(r).unwrap();
    assert_eq!(p.queue_len(), 1);
    let done = p.flush(&mut d).unwrap();
    let lens: Vec<usize> = done.iter().map(|f| f.latent.dim(1).unwrap()).collect();
    assert_eq!(
        lens.iter().filter(|l| **l == T).count(),
        3,
        "in-flight old-length slots finish"
    );
    assert_eq!(lens.iter().filter(|l| **l == t2).count(), 1);
    // While both lengths were in flight, each length had its own batched call.
    assert!(d.calls.iter().any(|(b, _)| *b == 1));
}

#[test]
fn a_failing_denoiser_leaves_the_ring_untouched() {
    struct Failing;
    impl Denoiser for Failing {
        fn latent_channels(&self) -> usize {
            C
        }
        fn context_channels(&self) -> usize {
            1
        }
        fn device(&self) -> &Device {
            &Device::Cpu
        }
        fn velocity(&mut self, _: &DenoiseBatch<'_>) -> Result<Tensor> {
            Err(EngineError::Backend("boom".into()))
        }
    }
    let mut d = wobble();
    let mut p = StreamPipeline::for_denoiser(2, &d).unwrap();
    p.submit(varied_request(1)).unwrap();
    p.tick(&mut d).unwrap();
    let before: Vec<(usize, Vec<u32>)> = p.slots().map(|s| (s.step, bits(s.latent))).collect();
    assert!(p.tick(&mut Failing).is_err());
    let after: Vec<(usize, Vec<u32>)> = p.slots().map(|s| (s.step, bits(s.latent))).collect();
    assert_eq!(before, after);
    assert!(p.tick(&mut d).is_ok());
}

#[test]
fn bad_requests_are_rejected_with_named_errors() {
    let d = wobble();
    let mut p = StreamPipeline::for_denoiser(2, &d).unwrap();
    let mut r = SlotRequest::new(PointMassDenoiser::conditioning(0.0), ctx(0.0), T, 1);
    r.source = Some(Tensor::zeros((1, T + 1, C), candle_core::DType::F32, &Device::Cpu).unwrap());
    let e = p.submit(r).unwrap_err().to_string();
    assert!(e.contains("source latent"), "{e}");
    let mut r = SlotRequest::new(PointMassDenoiser::conditioning(0.0), ctx(0.0), T, 1);
    r.curves.sde_denoise = Some(Curve::constant(1.5));
    let e = p.submit(r).unwrap_err().to_string();
    assert!(e.contains("sde_denoise"), "{e}");
    let mut r = SlotRequest::new(PointMassDenoiser::conditioning(0.0), ctx(0.0), T, 1);
    r.schedule.steps = 0;
    assert!(p.submit(r).unwrap_err().to_string().contains("steps"));
    assert_eq!(p.queue_len(), 0);
}

#[test]
fn channel_gain_scales_only_the_model_input() {
    let mut lane = SharedLane {
        dcw: DcwSettings::off(),
        ..Default::default()
    };
    // A request of the mix that runs the model (denoise > 0).
    let r = (0..)
        .map(varied_request)
        .find(|r| r.schedule.denoise > 0.0)
        .unwrap();
    let plain = single(r.clone(), lane.clone());
    lane.channel_gain = Some(ChannelGain::new(vec![1.0, 2.0, 1.0, 0.5]).unwrap());
    let gained = single(r.clone(), lane);
    assert_ne!(bits(&plain), bits(&gained));
    // Identity gain is exactly the plain path.
    let mut lane = SharedLane {
        dcw: DcwSettings::off(),
        ..Default::default()
    };
    lane.channel_gain = Some(ChannelGain::new(vec![1.0; C]).unwrap());
    assert_eq!(bits(&single(r, lane)), bits(&plain));
    assert!(ChannelGain::new(vec![f32::NAN]).is_err());
}

/// Per-frame channel gain: an amount curve shapes the gain over the song. The test model is
/// frame-local (every frame's velocity depends on that frame alone), so frames at amount 0 come
/// out bit for bit as with no gain, frames at amount 1 bit for bit as with the plain gains, and
/// the rest differ from both; streaming stays bit-identical to one-at-a-time at every depth.
#[test]
fn per_frame_channel_gain_is_exact_where_the_amount_is_zero_or_one() {
    let gains = vec![1.0, 2.0, 0.25, 0.5];
    let lane_with = |g: Option<ChannelGain>| SharedLane {
        dcw: DcwSettings::off(),
        channel_gain: g,
        ..Default::default()
    };
    // Frames 0-3 at 0, 4-7 at 1, 8-11 in between (a raw curve of exactly T values).
    let amount: Vec<f32> = (0..T)
        .map(|f| match f {
            0..4 => 0.0,
            4..8 => 1.0,
            _ => 0.5,
        })
        .collect();
    let shaped = ChannelGain::new(gains.clone())
        .unwrap()
        .with_amount(Curve::frames("amount", amount).unwrap())
        .unwrap();
    let mut r = SlotRequest::new(PointMassDenoiser::conditioning(0.3), ctx(0.5), T, 77);
    r.source = Some(latent(3));
    r.schedule.denoise = 0.75;
    let frames = |t: &Tensor, a: usize, b: usize| bits(&t.narrow(1, a, b - a).unwrap());
    let plain = single(r.clone(), lane_with(None));
    let full = single(
        r.clone(),
        lane_with(Some(ChannelGain::new(gains.clone()).unwrap())),
    );
    let got = single(r.clone(), lane_with(Some(shaped.clone())));
    assert_eq!(frames(&got, 0, 4), frames(&plain, 0, 4));
    assert_eq!(frames(&got, 4, 8), frames(&full, 4, 8));
    assert_ne!(frames(&got, 8, 12), frames(&plain, 8, 12));
    assert_ne!(frames(&got, 8, 12), frames(&full, 8, 12));
    // A scalar amount of 1 is the plain gains; of 0, no gain at all.
    let scalar = |a: f32| {
        ChannelGain::new(gains.clone())
            .unwrap()
            .with_amount(Curve::constant(a))
            .unwrap()
    };
    assert_eq!(
        bits(&single(r.clone(), lane_with(Some(scalar(1.0))))),
        bits(&full)
    );
    assert!(scalar(0.0).is_identity());
    assert_eq!(
        bits(&single(r.clone(), lane_with(Some(scalar(0.0))))),
        bits(&plain)
    );
    // Out-of-range amounts are refused with the parameter named.
    let e = ChannelGain::new(gains.clone())
        .unwrap()
        .with_amount(Curve::constant(1.5))
        .unwrap_err()
        .to_string();
    assert!(e.contains("channel_gain_amount"), "{e}");
    // Streaming = one at a time with the shaped gain on the lane.
    let requests: Vec<SlotRequest> = (0..24).map(varied_request).collect();
    let lane = lane_with(Some(shaped));
    let reference = run_all(1, &requests, &lane);
    for depth in [3, 8] {
        assert_eq!(run_all(depth, &requests, &lane), reference, "depth {depth}");
    }
}
