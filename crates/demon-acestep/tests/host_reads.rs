//! No host round trip inside a tick (issue #14): ticks of the streaming pipeline with ACE-Step's
//! composed DiT path (the one a GPU runs), run here on the CPU device, read no tensor value back
//! (`demon_engine::host` counts every read the engine and the backend make), and the tick-path
//! sources read through nothing but those counted functions. The same ticks through the fused
//! CPU path give the same latents within float tolerance, so the batched composed path computes
//! the same thing.

mod common;

use candle_core::{Device, Tensor};
use common::*;
use demon_acestep::AceStep;
use demon_acestep::dit::composed::profile::tensor_serial;
use demon_engine::{
    Conditioner, Conditioning, Curve, DcwMode, DcwSettings, Finished, Prompt, SharedLane,
    SlotCondition, SlotRequest, StreamPipeline, Wavelet, host,
};

/// The files whose code runs inside `StreamPipeline::tick` with ACE-Step as the denoiser.
const TICK_PATH: [&str; 15] = [
    "demon-engine/src/pipeline.rs",
    "demon-engine/src/solver.rs",
    "demon-engine/src/wavelet.rs",
    "demon-engine/src/backend.rs",
    "demon-engine/src/lane.rs",
    "demon-engine/src/curve.rs",
    "demon-engine/src/schedule.rs",
    "demon-engine/src/rng.rs",
    "demon-engine/src/request.rs",
    "demon-acestep/src/denoiser.rs",
    "demon-acestep/src/nn.rs",
    "demon-acestep/src/dit/mod.rs",
    "demon-acestep/src/dit/cache.rs",
    "demon-acestep/src/dit/layers.rs",
    "demon-acestep/src/dit/composed.rs",
];

/// Three slots that take every branch of the tick that reads tensors on the way: a plain one, a
/// guided one (APG with CFG rescale, negatives from the null condition), one with a latent mask,
/// and one whose conditioning has padding (a crossfade with a zero-padded prompt: the masked
/// cross-attention); DCW (db4) and ODE noise on the lane.
fn requests(cond: &mut dyn Conditioner, frames: usize) -> Vec<SlotRequest> {
    let a = cond.condition(&fixture_prompt()).unwrap();
    let b = cond.condition(&Prompt::tags("dark ambient drone")).unwrap();
    let ctx = cond.context(None, frames, 0.0).unwrap();
    let mut plain = SlotRequest::new(a.clone(), ctx.clone(), frames, 1);
    plain.schedule.steps = 3;
    let mut guided = SlotRequest::new(b.clone(), ctx.clone(), frames, 2);
    guided.schedule.steps = 3;
    guided.negatives = vec![SlotCondition::new(cond.null_condition(&b).unwrap())];
    guided.curves.guidance = Some(Curve::constant(3.0));
    guided.curves.cfg_rescale = Some(Curve::constant(0.5));
    // `b` zero-padded by three positions, as a caller's mask: the masked cross-attention.
    let (_, l, h) = b.states.dims3().unwrap();
    let states = b.states.pad_with_zeros(1, 0, 3).unwrap();
    let keep: Vec<f32> = (0..l + 3).map(|i| if i < l { 1.0 } else { 0.0 }).collect();
    let mask = Tensor::from_vec(keep, (1, l + 3), &Device::Cpu).unwrap();
    let padded = Conditioning::with_mask(states, mask);
    assert!(!padded.all_valid() && padded.hidden() == h);
    let blend = Conditioning::lerp(
        &padded,
        &Conditioning::new(b.states.narrow(1, 0, 2).unwrap()).unwrap(),
        0.3,
    )
    .unwrap();
    assert!(!blend.all_valid());
    let mut blended = SlotRequest::new(blend, ctx.clone(), frames, 3);
    blended.schedule.steps = 3;
    let mut masked = SlotRequest::new(a, ctx, frames, 4);
    masked.schedule.steps = 3;
    masked.latent_mask = Some(demon_engine::LatentMask {
        mask: Curve::frames("mask", (0..frames).map(|i| (i % 2) as f32).collect()).unwrap(),
        original: Tensor::zeros((1, frames, 8), candle_core::DType::F32, &Device::Cpu).unwrap(),
    });
    // `plain` and `masked` share a conditioning around `guided`: one batch with a group of rows
    // that is not a contiguous range.
    vec![plain, guided, masked, blended]
}

fn lane() -> SharedLane {
    let mut lane = SharedLane {
        dcw: DcwSettings {
            enabled: true,
            mode: DcwMode::Double,
            scaler: Curve::constant(0.1),
            high_scaler: Curve::constant(0.05),
            // Longer than Haar: the padded band split.
            wavelet: Wavelet::Db4,
        },
        ..SharedLane::default()
    };
    lane.curves.ode_noise = Some(Curve::constant(0.05));
    lane
}

/// Run the requests through a depth-3 ring until done; returns the finished latents by tag
/// order and the host reads made inside the ticks.
fn run(composed: bool) -> (Vec<Finished>, u64, usize) {
    let model = AceStep::load(&original(), &Device::Cpu).unwrap();
    let (mut den, _codec, mut cond) = model.into_parts();
    den.set_composed(composed);
    let frames = 13;
    let mut pipe = StreamPipeline::for_denoiser(3, &den).unwrap();
    pipe.set_lane(lane()).unwrap();
    let mut reqs = requests(&mut cond, frames);
    for (i, r) in reqs.iter_mut().enumerate() {
        r.tag = i as u64;
    }
    // The first three start together; the fourth waits for a free slot.
    for r in reqs.drain(..3) {
        pipe.submit(r).unwrap();
    }
    let mut finished = Vec::new();
    let (mut reads, mut ops, mut ticks) = (0, 0, 0);
    while !pipe.is_idle() {
        let (r0, o0) = (host::reads(), tensor_serial());
        let report = pipe.tick(&mut den).unwrap();
        reads += host::reads() - r0;
        ops += tensor_serial() - o0;
        ticks += 1;
        finished.extend(report.finished);
        if !reqs.is_empty() {
            let r = reqs.remove(0);
            pipe.submit(r).unwrap();
        }
        assert!(ticks < 100, "the ring never drained");
    }
    finished.sort_by_key(|f| f.tag);
    (finished, reads, ops / ticks.max(1))
}

#[test]
fn ticks_of_the_gpu_path_read_nothing_back_and_match_the_cpu_path() {
    let (composed, reads, ops_per_tick) = run(true);
    println!("composed path: {ops_per_tick} tensor ops per tick (views included)");
    assert_eq!(reads, 0, "host reads inside ticks of the composed path");
    assert_eq!(composed.len(), 4);
    let (fused, _, _) = run(false);
    assert_eq!(fused.len(), 4);
    for (a, b) in composed.iter().zip(&fused) {
        assert_eq!(a.tag, b.tag);
        let d = max_abs_diff(&a.latent, &b.latent);
        let scale = b
            .latent
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        println!(
            "tag {}: composed vs fused max abs diff {d:.2e} (scale {scale:.2e})",
            a.tag
        );
        assert!(d <= 1e-4 * scale.max(1.0), "tag {}: {d}", a.tag);
    }
}

/// Every read of a tensor value in the tick-path sources (outside their tests) goes through
/// `demon_engine::host`, so the counter above sees it.
#[test]
fn tick_path_sources_read_only_through_the_counter() {
    let crates = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let raw = [
        ".to_vec1",
        ".to_vec2",
        ".to_vec3",
        ".to_scalar",
        "to_device(&Device::Cpu",
        "to_device(&candle_core::Device::Cpu",
    ];
    let mut found = Vec::new();
    for file in TICK_PATH {
        let text = std::fs::read_to_string(crates.join(file)).unwrap();
        for (n, line) in text.lines().enumerate() {
            if line.trim_start().starts_with("#[cfg(test)]") {
                break;
            }
            if line.trim_start().starts_with("//") {
                continue;
            }
            if raw.iter().any(|r| line.contains(r)) {
                found.push(format!("{file}:{}: {}", n + 1, line.trim()));
            }
        }
    }
    assert!(
        found.is_empty(),
        "uncounted host reads:\n{}",
        found.join("\n")
    );
}
