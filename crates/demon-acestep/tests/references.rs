//! Timbre and structure from references of their own, and the prompt fields, on the fixture model
//! (issue 12 items 1 and 6, the ACE-Step half): a timbre reference and a structure reference each
//! change a whole generation through `StreamPipeline`, and going back to no reference restores the
//! previous output byte for byte; every prompt field (bpm, key, time signature, duration, lyrics,
//! language, task) changes the encoded conditioning.

mod common;

use candle_core::{Device, Tensor};
use common::*;
use demon_acestep::{AceStep, AceStepConditioner, AceStepDenoiser, Task, tasks};
use demon_engine::{
    Conditioner, Conditioning, GenerationTask, Prompt, SharedLane, SlotRequest, StreamPipeline,
};

/// A `[1, frames, 8]` latent of seeded noise (the fixture's latent channels).
fn latent(seed: u64, frames: usize) -> Tensor {
    demon_engine::rng::normal_tensor(
        seed,
        demon_engine::rng::NoiseStream::Initial,
        frames,
        8,
        &Device::Cpu,
    )
    .unwrap()
}

/// The final latent of one 8-step turbo generation of `cond` with `context`.
fn generate(den: &mut AceStepDenoiser, cond: Conditioning, context: Tensor) -> Vec<u32> {
    let mut req = SlotRequest::from_context(cond, context, 7).unwrap();
    req.schedule = tasks::turbo_params(3.0);
    let mut pipe = StreamPipeline::for_denoiser(1, den).unwrap();
    pipe.set_lane(SharedLane::neutral()).unwrap();
    pipe.submit(req).unwrap();
    let done = pipe.flush(den).unwrap();
    bits(&done[0].latent)
}

fn model() -> (AceStepDenoiser, AceStepConditioner) {
    let (den, _, cond) = AceStep::load(&original(), &Device::Cpu)
        .unwrap()
        .into_parts();
    (den, cond)
}

#[test]
fn a_timbre_reference_changes_the_output_and_clearing_it_restores_it() {
    let (mut den, mut c) = model();
    let frames = 20;
    let prompt = fixture_prompt();
    let neutral = c.context(None, frames, 0.0).unwrap();
    let plain = c.condition(&prompt).unwrap();
    let before = generate(&mut den, plain.clone(), neutral.clone());

    // A separate reference, longer than 30 s of frames and of another length than the song.
    let reference = latent(11, 900);
    let with = c.condition_with_timbre(&prompt, &reference).unwrap();
    assert_ne!(bits(&with.states), bits(&plain.states));
    assert_ne!(generate(&mut den, with, neutral.clone()), before);

    // The reference was for that conditioning only: the next plain one is the old one.
    let again = c.condition(&prompt).unwrap();
    assert_eq!(bits(&again.states), bits(&plain.states));
    assert_eq!(generate(&mut den, again, neutral.clone()), before);

    // Set as the conditioner's timbre, then cleared: the same.
    c.set_reference_timbre(Some(&latent(12, 100))).unwrap();
    let set = c.condition(&prompt).unwrap();
    assert_ne!(bits(&set.states), bits(&plain.states));
    c.set_reference_timbre(None).unwrap();
    let cleared = c.condition(&prompt).unwrap();
    assert_eq!(generate(&mut den, cleared, neutral), before);
}

#[test]
fn a_structure_reference_changes_the_output_and_clearing_it_restores_it() {
    let (mut den, mut c) = model();
    let frames = 20;
    let cond = c.condition(&fixture_prompt()).unwrap();
    let neutral = c.context(None, frames, 0.0).unwrap();
    let before = generate(&mut den, cond.clone(), neutral.clone());
    // References shorter and longer than the song.
    for len in [13, 31] {
        let reference = latent(20 + len as u64, len);
        let ctx = c.context(Some(&reference), frames, 1.0).unwrap();
        assert_eq!(ctx.dims(), neutral.dims());
        assert_ne!(bits(&ctx), bits(&neutral));
        // The hint part is the reference's FSQ hint over its frames, then silence.
        let hint = c.structure_hint(&reference, frames).unwrap();
        let n = len.min(frames);
        assert_eq!(
            bits(&hint.narrow(1, 0, n).unwrap()),
            bits(&c.fsq_hint(&reference.narrow(1, 0, n).unwrap()).unwrap())
        );
        if len < frames {
            assert_eq!(
                bits(&hint.narrow(1, len, frames - len).unwrap()),
                bits(
                    &c.silence(frames)
                        .unwrap()
                        .narrow(1, len, frames - len)
                        .unwrap()
                )
            );
        }
        let half = c.context(Some(&reference), frames, 0.5).unwrap();
        assert_ne!(bits(&half), bits(&ctx));
        assert_ne!(generate(&mut den, cond.clone(), ctx), before);
        // Strength 0, or no reference, is the neutral context again.
        assert_eq!(
            bits(&c.context(Some(&reference), frames, 0.0).unwrap()),
            bits(&neutral)
        );
    }
    let cleared = c.context(None, frames, 1.0).unwrap();
    assert_eq!(generate(&mut den, cond, cleared), before);
}

#[test]
fn every_prompt_field_changes_the_conditioning() {
    let (_, mut c) = model();
    let base = Prompt {
        tags: "deep house, warm pads".into(),
        lyrics: "[Instrumental]".into(),
        bpm: Some(124.0),
        key: Some("A minor".into()),
        time_signature: Some(4),
        language: Some("en".into()),
        duration_s: Some(30.0),
        task: None,
        hints: None,
    };
    let states = |c: &mut AceStepConditioner, p: &Prompt| bits(&c.condition(p).unwrap().states);
    let reference = states(&mut c, &base);
    let variants = [
        Prompt {
            bpm: Some(90.0),
            ..base.clone()
        },
        Prompt {
            key: Some("F# major".into()),
            ..base.clone()
        },
        Prompt {
            time_signature: Some(3),
            ..base.clone()
        },
        Prompt {
            duration_s: Some(60.0),
            ..base.clone()
        },
        Prompt {
            lyrics: "[verse]\nla la la".into(),
            ..base.clone()
        },
        Prompt {
            language: Some("ja".into()),
            ..base.clone()
        },
        Prompt {
            task: Some(GenerationTask::Cover),
            ..base.clone()
        },
        Prompt {
            tags: "techno, dark".into(),
            ..base.clone()
        },
    ];
    for v in &variants {
        assert_ne!(states(&mut c, v), reference, "{v:?}");
    }
    // The prompt's task decides over the conditioner's own; without one the conditioner's rules.
    let cover = Prompt {
        task: Some(GenerationTask::Cover),
        ..base.clone()
    };
    assert_eq!(
        states(&mut c, &cover),
        bits(&c.condition_for(&base, Task::Cover).unwrap().states)
    );
    c.task = Task::Cover;
    assert_eq!(states(&mut c, &base), states(&mut c, &cover));
    let t2m = Prompt {
        task: Some(GenerationTask::TextToMusic),
        ..base.clone()
    };
    assert_eq!(states(&mut c, &t2m), reference);
}
