//! One whole 8-step turbo generation (shift 3, injected noise) through demon-engine's
//! `StreamPipeline`, from the prompt text to the final latent, against the reference
//! `AceStepPipeline(..., output_type="latent")`. Also: conditioning from the prompt text.

mod common;

use candle_core::Device;
use common::*;
use demon_acestep::{AceStep, Task, tasks};
use demon_engine::{Conditioner, Curve, DcwSettings, SharedLane, StreamPipeline};

#[test]
fn prompt_to_conditioning_matches_the_reference() {
    let mut m = AceStep::load(&original(), &Device::Cpu).unwrap();
    let r = load("reference.safetensors");
    let cond = m
        .conditioner
        .condition_for(&fixture_prompt(), Task::Text2Music)
        .unwrap();
    check(
        "conditioning from prompt text",
        &cond.states,
        &r["encoder_hidden_states"],
        1e-4,
    );
    // The trait method uses the conditioner's task (text2music by default).
    let c2 = m.conditioner.condition(&fixture_prompt()).unwrap();
    assert_eq!(bits(&c2.states), bits(&cond.states));
    // Null condition: null_condition_emb broadcast to the same shape.
    let null = m.conditioner.null_condition(&cond).unwrap();
    assert_eq!(null.states.dims(), cond.states.dims());
}

#[test]
fn eight_step_turbo_generation_through_stream_pipeline() {
    let m = AceStep::load(&original(), &Device::Cpu).unwrap();
    let (mut denoiser, _codec, mut conditioner) = m.into_parts();
    let r = load("reference.safetensors");
    let noise = &r["gen_noise"];
    let frames = noise.dim(1).unwrap();

    let mut req =
        tasks::text_to_music(&mut conditioner, &fixture_prompt(), frames, 0, 3.0).unwrap();
    // Inject the reference noise: a source with an all-zero initial noise curve starts the slot
    // at exactly the source.
    req.source = Some(noise.clone());
    req.initial_noise_curve = Some(Curve::constant(0.0));
    let mut pipe = StreamPipeline::for_denoiser(1, &denoiser).unwrap();
    // The engine's lane enables DEMON's DCW correction by default; the reference has none.
    pipe.set_lane(SharedLane {
        dcw: DcwSettings::off(),
        ..Default::default()
    })
    .unwrap();
    pipe.submit(req).unwrap();
    let done = pipe.flush(&mut denoiser).unwrap();
    assert_eq!(done.len(), 1);
    // 8 Euler steps of f32 error accumulation through a 4-layer DiT whose outputs reach ~8:
    // measured ~1e-5; bound 1e-4.
    check(
        "8-step turbo generation (StreamPipeline)",
        &done[0].latent,
        &r["gen_latent"],
        1e-4,
    );
}

#[test]
fn turbo_tables_match_the_reference_schedule() {
    let r = load("reference.safetensors");
    let want: Vec<f32> = r["gen_timesteps"].to_vec1().unwrap();
    let got = tasks::turbo_timesteps(3.0).unwrap();
    for (g, w) in got.iter().zip(&want) {
        assert!((g - w).abs() < 1e-6, "{got:?} vs {want:?}");
    }
    // acestep.md §2.2, to 4 decimals.
    let tables: [(f32, [f32; 8]); 3] = [
        (1.0, [1.0, 0.875, 0.75, 0.625, 0.5, 0.375, 0.25, 0.125]),
        (
            2.0,
            [1.0, 0.9333, 0.8571, 0.7692, 0.6667, 0.5455, 0.4, 0.2222],
        ),
        (3.0, [1.0, 0.9545, 0.9, 0.8333, 0.75, 0.6429, 0.5, 0.3]),
    ];
    for (shift, table) in tables {
        let got = tasks::turbo_timesteps(shift).unwrap();
        let got: Vec<String> = got.iter().map(|v| format!("{v:.4}")).collect();
        let want: Vec<String> = table.iter().map(|v| format!("{v:.4}")).collect();
        assert_eq!(got, want, "shift {shift}");
    }
    // Shift snaps to the nearest distilled value.
    assert_eq!(
        tasks::turbo_timesteps(2.6).unwrap(),
        tasks::turbo_timesteps(3.0).unwrap()
    );
    assert_eq!(
        tasks::turbo_timesteps(0.2).unwrap(),
        tasks::turbo_timesteps(1.0).unwrap()
    );
}
