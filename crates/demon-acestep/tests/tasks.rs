//! Task helpers: cover switches conditioning and context at ⌊8·strength⌋ steps (checked against a
//! hand-written Euler loop that switches explicitly), repaint builds the mask channel and the
//! silence-filled region, the structure context lerps silence toward the FSQ hint, and the codec
//! round-trips through the `Codec` trait.

mod common;

use candle_core::{Device, Tensor};
use common::*;
use demon_acestep::{AceStep, Task, tasks};
use demon_engine::{
    Audio, Codec, Conditioner, Curve, DcwSettings, DenoiseBatch, Denoiser, SharedLane,
    StreamPipeline,
};

#[test]
fn cover_switches_conditions_part_way() {
    let m = AceStep::load(&original(), &Device::Cpu).unwrap();
    let (mut den, _, mut cond) = m.into_parts();
    let r = load("reference.safetensors");
    let source = r["fsq_in"].narrow(1, 0, 13).unwrap();
    let noise = r["gen_noise"].clone();
    let prompt = fixture_prompt();

    let mut req = tasks::cover(&mut cond, &prompt, &source, 0.5, 0, 3.0).unwrap();
    assert_eq!(req.conditions.len(), 2);
    assert_eq!(
        (
            req.conditions[0].step_range.start,
            req.conditions[0].step_range.end
        ),
        (0.0, 0.5)
    );
    assert!(req.conditions[1].context.is_some());
    req.source = Some(noise.clone());
    req.initial_noise_curve = Some(Curve::constant(0.0));
    let mut pipe = StreamPipeline::for_denoiser(1, &den).unwrap();
    pipe.set_lane(SharedLane {
        dcw: DcwSettings::off(),
        ..Default::default()
    })
    .unwrap();
    pipe.submit(req).unwrap();
    let got = pipe.flush(&mut den).unwrap().remove(0).latent;

    // The same thing by hand: 4 cover steps, then 4 text2music steps.
    let cover_c = cond.condition_for(&prompt, Task::Cover).unwrap();
    let t2m_c = cond.condition_for(&prompt, Task::Text2Music).unwrap();
    let hint = cond.fsq_hint(&source).unwrap();
    let cover_ctx = cond.context_from(&hint, &[1.0; 13]).unwrap();
    let neutral = cond.context(None, 13, 0.0).unwrap();
    let ts = tasks::turbo_timesteps(3.0).unwrap();
    let mut x = noise;
    for k in 0..8 {
        let (c, ctx) = if k < 4 {
            (&cover_c, &cover_ctx)
        } else {
            (&t2m_c, &neutral)
        };
        let v = den
            .velocity(&DenoiseBatch {
                x: x.clone(),
                t: vec![ts[k]],
                conditions: vec![c],
                contexts: vec![ctx],
                sources: Vec::new(),
            })
            .unwrap();
        let next = if k + 1 < 8 { ts[k + 1] } else { 0.0 };
        x = (&x + (v * (next - ts[k]) as f64).unwrap()).unwrap();
    }
    // The engine integrates composite requests through x̂₀ (same maths, other rounding).
    check(
        "cover via StreamPipeline vs explicit switch",
        &got,
        &x,
        1e-5,
    );

    // Strength 1: cover only; strength below 1/8: text2music only.
    let full = tasks::cover(&mut cond, &prompt, &source, 1.0, 0, 3.0).unwrap();
    assert_eq!(full.conditions.len(), 1);
    assert_eq!(bits(&full.context), bits(&cover_ctx));
    let none = tasks::cover(&mut cond, &prompt, &source, 0.1, 0, 3.0).unwrap();
    assert_eq!(none.conditions.len(), 1);
    assert_eq!(bits(&none.context), bits(&neutral));
    assert!(tasks::cover(&mut cond, &prompt, &source, 1.5, 0, 3.0).is_err());
}

#[test]
fn repaint_context_and_structure_context() {
    let m = AceStep::load(&original(), &Device::Cpu).unwrap();
    let (_, _, mut cond) = m.into_parts();
    let source = load("reference.safetensors")["fsq_in"]
        .narrow(1, 0, 12)
        .unwrap();
    let req = tasks::repaint(&mut cond, &fixture_prompt(), &source, 3..7, true, 1, 3.0).unwrap();
    let ctx: Vec<Vec<f32>> = req.context.squeeze(0).unwrap().to_vec2().unwrap();
    let src: Vec<Vec<f32>> = source.squeeze(0).unwrap().to_vec2().unwrap();
    let sil: Vec<Vec<f32>> = cond
        .silence(12)
        .unwrap()
        .squeeze(0)
        .unwrap()
        .to_vec2()
        .unwrap();
    for (i, row) in ctx.iter().enumerate() {
        let inside = (3..7).contains(&i);
        assert_eq!(
            &row[..8],
            if inside { &sil[i][..] } else { &src[i][..] },
            "frame {i}"
        );
        assert!(
            row[8..]
                .iter()
                .all(|&m| m == if inside { 1.0 } else { 0.0 }),
            "mask frame {i}"
        );
    }
    assert!(req.latent_mask.is_some());
    assert!(tasks::repaint(&mut cond, &fixture_prompt(), &source, 7..7, false, 1, 3.0).is_err());
    assert!(tasks::repaint(&mut cond, &fixture_prompt(), &source, 0..13, false, 1, 3.0).is_err());

    // Structure context: strength 0 is the neutral context, 1 the FSQ hint, between a lerp.
    let neutral = cond.context(None, 12, 0.5).unwrap();
    assert_eq!(
        bits(&cond.context(Some(&source), 12, 0.0).unwrap()),
        bits(&neutral)
    );
    let hint = cond.fsq_hint(&source).unwrap();
    let one = cond.context(Some(&source), 12, 1.0).unwrap();
    assert_eq!(bits(&one.narrow(2, 0, 8).unwrap()), bits(&hint));
    let half = cond.context(Some(&source), 12, 0.5).unwrap();
    let want = ((cond.silence(12).unwrap() * 0.5).unwrap() + (hint * 0.5).unwrap()).unwrap();
    assert!(max_abs_diff(&half.narrow(2, 0, 8).unwrap(), &want) < 1e-6);
    assert!(cond.context(Some(&source), 12, 1.5).is_err());
    // A structure of another length than the song (a separate reference, issue 12) is cropped
    // (or padded with silence) to the song's frames instead of refused.
    let cropped = cond.context(Some(&source), 11, 1.0).unwrap();
    assert_eq!(cropped.dims(), &[1, 11, 16]);
    assert_eq!(
        bits(&cropped.narrow(2, 0, 8).unwrap()),
        bits(&cond.fsq_hint(&source.narrow(1, 0, 11).unwrap()).unwrap())
    );
    // Audio codes (5 Hz) → hint: the reference detokenizer output of the same codes.
    let r = load("reference.safetensors");
    let codes: Vec<i64> = ids(&r["fsq_indices"]).into_iter().map(i64::from).collect();
    check(
        "hint from audio codes",
        &cond.hint_from_codes(&codes, 25).unwrap(),
        &r["fsq_hint"],
        1e-4,
    );
    let padded = cond.hint_from_codes(&codes, 30).unwrap();
    assert_eq!(
        bits(&padded.narrow(1, 25, 5).unwrap()),
        bits(&cond.silence(30).unwrap().narrow(1, 25, 5).unwrap())
    );
    assert!(cond.hint_from_codes(&[64_000], 5).is_err());
    // The silence latent tiles past its end.
    assert_eq!(cond.silence(40_000).unwrap().dims(), &[1, 40_000, 8]);
}

#[test]
fn codec_trait_round_trip() {
    let m = AceStep::load(&original(), &Device::Cpu).unwrap();
    let (_, mut codec, _) = m.into_parts();
    assert_eq!(
        (
            codec.sample_rate(),
            codec.hop_samples(),
            codec.latent_channels(),
            codec.audio_channels()
        ),
        (300, 12, 8, 2)
    );
    let lat = load("vae_decode_inputs.safetensors")["latents"].clone(); // [1, 8, 10]
    let audio = codec.decode(&lat.transpose(1, 2).unwrap(), 0).unwrap();
    assert_eq!(audio.frames(), 120);
    let raw = codec.decode_raw(&lat).unwrap();
    assert_eq!(
        audio.channels,
        raw.squeeze(0).unwrap().to_vec2::<f32>().unwrap()
    );
    // encode: trailing samples short of a frame are dropped; mono is duplicated.
    let enc_in = load("vae_encode_inputs.safetensors")["sample"].clone(); // [1, 2, 240]
    let mut chans: Vec<Vec<f32>> = enc_in.squeeze(0).unwrap().to_vec2().unwrap();
    for c in &mut chans {
        c.extend([0.1; 5]);
    }
    let z = codec.encode(&Audio::new(300, chans).unwrap()).unwrap();
    check(
        "codec encode via trait",
        &z,
        &load("reference.safetensors")["vae_encoded_mean"]
            .transpose(1, 2)
            .unwrap(),
        1e-4,
    );
    let mono = codec
        .encode(&Audio::new(300, vec![vec![0.2; 48]]).unwrap())
        .unwrap();
    assert_eq!(mono.dims(), &[1, 4, 8]);
    assert!(
        codec
            .encode(&Audio::new(48_000, vec![vec![0.0; 480]]).unwrap())
            .is_err()
    );
    assert!(
        codec
            .encode(&Audio::new(300, vec![vec![0.0; 5]]).unwrap())
            .is_err()
    );
    // Tiled decode keeps the length and, with generous overlap, stays close to a full decode.
    let long = Tensor::randn(0f32, 0.5, (1, 8, 40), &Device::Cpu).unwrap();
    codec.tile_frames = 16;
    codec.tile_overlap = 4;
    let tiled = codec.decode_tiled(&long).unwrap();
    let full = codec.decode_raw(&long).unwrap();
    assert_eq!(tiled.dims(), full.dims());
}
