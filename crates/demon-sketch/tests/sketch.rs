//! The sketch backend's codec, denoiser and conditioner.

use candle_core::{Device, Tensor};
use demon_engine::{
    Codec, Conditioner, DenoiseBatch, Denoiser, Prompt, ReceptiveField, decode_window,
    measure_receptive_field, probe_latents, receptive::max_abs_diff,
};
use demon_sketch::composer::{SongSpec, compose};
use demon_sketch::layout::{CHANNELS, HOP};
use demon_sketch::synth::{DESIGN_MARGIN_AFTER, DESIGN_MARGIN_BEFORE};
use demon_sketch::{SketchCodec, SketchConditioner, SketchDenoiser, Style};

fn song_latent(style: Style, frames: usize, seed: u64) -> Tensor {
    let s = compose(SongSpec {
        style,
        bpm: style.default_bpm(),
        tonic: 2,
        minor: true,
        seed,
        frames,
    });
    Tensor::from_vec(s.latent, (1, frames, CHANNELS), &Device::Cpu).unwrap()
}

#[test]
fn windowed_decode_is_exact_at_the_measured_receptive_field() {
    let mut codec = SketchCodec::default();
    let probes = probe_latents(200, CHANNELS, &Device::Cpu).unwrap();
    let field = measure_receptive_field(&mut codec, &probes, 9, 6, 40, 1e-6).unwrap();
    println!("sketch receptive field {field:?}");
    assert!(
        field.before <= DESIGN_MARGIN_BEFORE && field.after <= DESIGN_MARGIN_AFTER,
        "{field:?}"
    );
    assert!(
        field.before >= 10,
        "release and reverb tails reach back: {field:?}"
    );
    // At the measured field, windows of any size anywhere in real songs are exact.
    for style in Style::ALL {
        let latent = song_latent(style, 240, 5);
        let full = codec.decode(&latent, 0).unwrap();
        for start in [0usize, 40, 97, 150, 231] {
            for keep in [1usize, 9, 75] {
                if start + keep > 240 {
                    continue;
                }
                let w = decode_window(&mut codec, &latent, start, keep, field).unwrap();
                let truth: Vec<Vec<f32>> = full
                    .channels
                    .iter()
                    .map(|c| c[start * HOP..(start + keep) * HOP].to_vec())
                    .collect();
                assert!(
                    max_abs_diff(&w, &truth) <= 1e-5,
                    "{style:?} start {start} keep {keep}"
                );
            }
        }
    }
    // One frame less context before is no longer identical on the probes it was measured with
    // (the release and reverb tails reach that far, if faintly): the field is tight.
    let short = ReceptiveField {
        before: field.before - 1,
        after: field.after,
    };
    let mut errs = Vec::new();
    for probe in &probes {
        let full = codec.decode(probe, 0).unwrap();
        for s in (40..160).step_by(6) {
            let w = decode_window(&mut codec, probe, s, 9, short).unwrap();
            let truth: Vec<Vec<f32>> = full
                .channels
                .iter()
                .map(|c| c[s * HOP..(s + 9) * HOP].to_vec())
                .collect();
            errs.push(max_abs_diff(&w, &truth));
        }
    }
    assert!(errs.iter().any(|e| *e > 0.0), "{errs:?}");
}

#[test]
fn decode_rejects_bad_latents_and_encode_checks_rates() {
    let mut codec = SketchCodec::default();
    let bad = Tensor::zeros((1, 4, 3), candle_core::DType::F32, &Device::Cpu).unwrap();
    assert!(codec.decode(&bad, 0).is_err());
    let nan = Tensor::from_vec(vec![f32::NAN; CHANNELS], (1, 1, CHANNELS), &Device::Cpu).unwrap();
    assert!(
        codec
            .decode(&nan, 0)
            .unwrap_err()
            .to_string()
            .contains("non-finite")
    );
    let audio = demon_engine::Audio::silence(44_100, 2, 44_100);
    assert!(
        codec
            .encode(&audio)
            .unwrap_err()
            .to_string()
            .contains("48000")
    );
    let short = demon_engine::Audio::silence(48_000, 2, 100);
    assert!(codec.encode(&short).is_err());
}

#[test]
fn analysis_finds_the_rhythm_and_harmony_of_a_render() {
    let mut codec = SketchCodec::default();
    let latent = song_latent(Style::House, 250, 3);
    let audio = codec.decode(&latent, 0).unwrap();
    let back = codec.encode(&audio).unwrap();
    assert_eq!(back.dims(), latent.dims());
    let a: Vec<f32> = latent.flatten_all().unwrap().to_vec1().unwrap();
    let b: Vec<f32> = back.flatten_all().unwrap().to_vec1().unwrap();
    // Kick onsets: most found within one frame.
    let kick = demon_sketch::layout::KICK.onset;
    let truth: Vec<usize> = (0..250).filter(|f| a[f * CHANNELS + kick] > 0.0).collect();
    let found: Vec<usize> = (0..250).filter(|f| b[f * CHANNELS + kick] > -1.0).collect();
    let hits = truth
        .iter()
        .filter(|t| found.iter().any(|f| f.abs_diff(**t) <= 1))
        .count();
    assert!(
        hits * 10 >= truth.len() * 6,
        "kicks found {hits}/{} ({found:?})",
        truth.len()
    );
    // Chord tones: the analysed chroma agrees with the written chords on most frames.
    let mut agree = 0;
    let mut total = 0;
    for f in 20..230 {
        for pc in 0..12 {
            let want = a[f * CHANNELS + pc] > 0.0;
            if want {
                total += 1;
                if b[f * CHANNELS + pc] > -0.5 {
                    agree += 1;
                }
            }
        }
    }
    assert!(
        agree * 10 >= total * 6,
        "chord tones recovered {agree}/{total}"
    );
}

#[allow(clippy::needless_range_loop)] // parallel arrays indexed together
fn rows_alone_vs_batched(
    den: &mut SketchDenoiser,
    xs: &[Tensor],
    ts: &[f32],
    conds: &[demon_engine::Conditioning],
    ctx: &Tensor,
) {
    let alone: Vec<Vec<u32>> = (0..xs.len())
        .map(|i| {
            let b = DenoiseBatch {
                x: xs[i].clone(),
                t: vec![ts[i]],
                conditions: vec![&conds[i]],
                contexts: vec![ctx],
            };
            den.velocity(&b)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap()
                .iter()
                .map(|v| v.to_bits())
                .collect()
        })
        .collect();
    for n in 1..=xs.len() {
        let x = Tensor::cat(&xs[..n].iter().collect::<Vec<_>>(), 0).unwrap();
        let b = DenoiseBatch {
            x,
            t: ts[..n].to_vec(),
            conditions: conds[..n].iter().collect(),
            contexts: vec![ctx; n],
        };
        let v = den.velocity(&b).unwrap();
        for i in 0..n {
            let row: Vec<u32> = v
                .narrow(0, i, 1)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap()
                .iter()
                .map(|v| v.to_bits())
                .collect();
            assert!(row == alone[i], "row {i} differs in a batch of {n}");
        }
    }
}

#[test]
fn denoiser_rows_are_independent_of_the_batch() {
    let mut den = SketchDenoiser::default();
    let mut cond = SketchConditioner::default();
    let t = 100;
    let conds: Vec<_> = [
        "house",
        "techno",
        "ambient",
        "funk",
        "hip hop",
        "drum and bass",
        "house techno",
        "jazz",
    ]
    .iter()
    .map(|p| {
        cond.condition(&Prompt {
            tags: p.to_string(),
            bpm: Some(120.0),
            ..Default::default()
        })
        .unwrap()
    })
    .collect();
    let xs: Vec<Tensor> = (0..8)
        .map(|i| {
            demon_engine::rng::normal_tensor(
                i,
                demon_engine::rng::NoiseStream::Initial,
                t,
                CHANNELS,
                &Device::Cpu,
            )
            .unwrap()
        })
        .collect();
    let ts = [1.0, 0.9, 0.75, 0.5, 0.3, 0.1, 0.05, 0.6];
    let ctx = cond.context(None, t, 0.0).unwrap();
    rows_alone_vs_batched(&mut den, &xs, &ts, &conds, &ctx);
}

#[test]
fn denoiser_is_the_exact_posterior_mean() {
    let mut den = SketchDenoiser::default();
    let cond = SketchConditioner::default();
    let c = cond
        .read(&Prompt {
            tags: "techno".into(),
            ..Default::default()
        })
        .unwrap();
    let lib = den.library(c.bpm, c.tonic, c.minor, 80);
    let techno: Vec<&demon_sketch::composer::Song> = lib
        .iter()
        .filter(|s| s.spec.style == Style::Techno)
        .collect();
    assert_eq!(techno.len(), demon_sketch::denoiser::SONGS_PER_STYLE);
    // Near t = 0 the posterior collapses onto the library song the noisy latent came from.
    let y = &techno[2].latent;
    let t = 0.05f32;
    let mut noise = vec![0f32; y.len()];
    demon_engine::rng::fill_normal(3, demon_engine::rng::NoiseStream::Initial, &mut noise);
    let x: Vec<f32> = y
        .iter()
        .zip(&noise)
        .map(|(y, n)| (1.0 - t) * y + t * n)
        .collect();
    let x0 = den.posterior_mean(&x, t, &c, None);
    let err = x0
        .iter()
        .zip(y.iter())
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    assert!(err < 1e-3, "max error {err}");
    // At t = 1 nothing is known: the prediction is the prior mean of the prompted style.
    let x0 = den.posterior_mean(&vec![0.0; y.len()], 1.0, &c, None);
    let mean: Vec<f32> = (0..y.len())
        .map(|i| techno.iter().map(|s| s.latent[i]).sum::<f32>() / techno.len() as f32)
        .collect();
    let err = x0
        .iter()
        .zip(&mean)
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    assert!(err < 1e-4, "prior mean error {err}");
}

#[test]
fn prompts_select_styles_and_metadata() {
    let mut cond = SketchConditioner::default();
    let c = cond
        .read(&Prompt {
            tags: "liquid drum and bass, dark".into(),
            ..Default::default()
        })
        .unwrap();
    assert_eq!(c.dominant_style(), Style::DrumAndBass);
    assert_eq!(c.bpm, 174.0);
    assert!(c.brightness < 0.0);
    let c = cond
        .read(&Prompt {
            tags: "funk".into(),
            bpm: Some(101.0),
            key: Some("E major".into()),
            ..Default::default()
        })
        .unwrap();
    assert_eq!((c.bpm, c.tonic, c.minor), (101.0, 4, false));
    assert!(
        cond.condition(&Prompt {
            tags: "house".into(),
            key: Some("Q minor".into()),
            ..Default::default()
        })
        .is_err()
    );
    assert!(
        cond.condition(&Prompt {
            tags: "house".into(),
            bpm: Some(f32::NAN),
            ..Default::default()
        })
        .is_err()
    );
    // Conditionings round-trip through their tensor form.
    let conditioning = c.to_conditioning(&Device::Cpu).unwrap();
    let v: Vec<f32> = conditioning
        .states
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap();
    assert_eq!(demon_sketch::SketchCondition::from_states(&v).unwrap(), c);
}
