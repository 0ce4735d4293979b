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

/// `decode_kept` computes the voices, the mix and the reverb only where a kept sample hears
/// them; what it gives is the full decode's samples, bit for bit, wherever the kept frames
/// sit in the window (at its start, just in, and deep in with a long context before them),
/// and an out-of-range request is refused.
#[test]
fn decode_kept_equals_the_full_decode_bit_for_bit() {
    let mut codec = SketchCodec::default();
    for style in Style::ALL {
        let latent = song_latent(style, 120, 9);
        let full = codec.decode(&latent, 37).unwrap();
        for kept in [
            0..9,
            0..120,
            3..12,
            14..23,
            15..24,
            16..25,
            25..34,
            40..120,
            111..120,
        ] {
            let part = codec.decode_kept(&latent, 37, kept.clone()).unwrap();
            for (ch, (p, f)) in part.channels.iter().zip(&full.channels).enumerate() {
                let truth = &f[kept.start * HOP..kept.end * HOP];
                assert_eq!(p.len(), truth.len(), "{style:?} {kept:?}");
                let differ = p
                    .iter()
                    .zip(truth)
                    .filter(|(a, b)| a.to_bits() != b.to_bits())
                    .count();
                assert_eq!(
                    differ, 0,
                    "{style:?} {kept:?} channel {ch}: {differ} samples differ"
                );
            }
        }
    }
    // Sliding windows, as a live session decodes them: the codec that keeps the oscillator
    // frames of the window before gives what a render without the cache gives, bit for bit, and holds no
    // more than about one window of frames.
    let latent = song_latent(Style::ALL[0], 160, 4);
    let (mut warm, mut most) = (SketchCodec::default(), 0);
    for lo in (0..120).step_by(3) {
        let window = latent.narrow(1, lo, 35).unwrap();
        let a = warm.decode_kept(&window, lo as i64, 25..34).unwrap();
        let values: Vec<f32> = window.flatten_all().unwrap().to_vec1().unwrap();
        let b = demon_sketch::synth::render_kept(&values, lo as i64, 25..34, None);
        assert!(
            a.channels
                .iter()
                .flatten()
                .zip(b.iter().flatten())
                .all(|(x, y)| x.to_bits() == y.to_bits()),
            "window at {lo}"
        );
        most = most.max(warm.cached_oscillator_frames());
    }
    assert!(most > 0 && most < 35 * 200, "{most} oscillator frames held");
    let err = codec
        .decode_kept(&song_latent(Style::ALL[0], 10, 1), 0, 5..11)
        .unwrap_err();
    assert!(err.to_string().contains("kept frames"), "{err}");
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
    sources: &[Option<Tensor>],
) {
    let alone: Vec<Vec<u32>> = (0..xs.len())
        .map(|i| {
            let b = DenoiseBatch {
                x: xs[i].clone(),
                t: vec![ts[i]],
                conditions: vec![&conds[i]],
                contexts: vec![ctx],
                sources: vec![sources[i].as_ref()],
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
            sources: sources[..n].iter().map(|s| s.as_ref()).collect(),
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
    rows_alone_vs_batched(&mut den, &xs, &ts, &conds, &ctx, &vec![None; 8]);
    // Rows that started from a source (the source-edit model) mixed with rows that did not, and
    // timbre-carrying conditionings: still row-independent.
    let source = song_latent(Style::Funk, t, 1234);
    let sources: Vec<Option<Tensor>> = (0..8)
        .map(|i| (i % 3 != 0).then(|| source.clone()))
        .collect();
    let voiced: Vec<_> = conds
        .iter()
        .enumerate()
        .map(|(i, c)| {
            if i % 2 == 0 {
                return c.clone();
            }
            let v: Vec<f32> = c.states.flatten_all().unwrap().to_vec1().unwrap();
            let mut sc = demon_sketch::SketchCondition::from_states(&v).unwrap();
            let reference: Vec<f32> = song_latent(Style::Ambient, 40, 9)
                .flatten_all()
                .unwrap()
                .to_vec1()
                .unwrap();
            let mut tim = demon_sketch::conditioner::Timbre::of_latent(&reference).unwrap();
            tim.weight = 0.6;
            sc.timbre = Some(tim);
            sc.to_conditioning(&Device::Cpu).unwrap()
        })
        .collect();
    let structure = cond
        .context(Some(&song_latent(Style::Techno, 30, 4)), t, 0.7)
        .unwrap();
    rows_alone_vs_batched(&mut den, &xs, &ts, &voiced, &structure, &sources);
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

/// The source-edit posterior mean, by brute force: every library song and every rewrite mask.
#[test]
fn source_edit_denoiser_is_the_exact_posterior_mean() {
    use demon_sketch::denoiser::{CELL_FRAMES, PART_COUNT, PART_OF, REWRITE_PRIOR};
    let mut den = SketchDenoiser::default();
    let cond = SketchConditioner::default()
        .read(&Prompt::tags("house"))
        .unwrap();
    assert_eq!((cond.brightness, cond.energy), (0.0, 0.0));
    // Two cells of frames: every frame's window holds the whole latent, so the windowed
    // posterior is the posterior of the whole model.
    let frames = 2 * CELL_FRAMES;
    let lib = den.library(cond.bpm, cond.tonic, cond.minor, frames);
    let songs: Vec<&Vec<f32>> = lib
        .iter()
        .filter(|s| s.spec.style == Style::House)
        .map(|s| &s.latent)
        .collect();
    let src: Vec<f32> = song_latent(Style::Techno, frames, 77)
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap();
    let cells = (frames / CELL_FRAMES) * PART_COUNT;
    let cell = |f: usize, c: usize| (f / CELL_FRAMES) * PART_COUNT + PART_OF[c] as usize;
    for (t, seed) in [(0.3f32, 1u64), (0.6, 2), (0.85, 3)] {
        let mut noise = vec![0f32; src.len()];
        demon_engine::rng::fill_normal(seed, demon_engine::rng::NoiseStream::Initial, &mut noise);
        // A state between the source and a library song, so that both kinds of cell matter.
        let x: Vec<f32> = (0..src.len())
            .map(|i| (1.0 - t) * (0.5 * src[i] + 0.5 * songs[2][i]) + t * noise[i])
            .collect();
        let got = den.posterior_mean_from(&x, t, &cond, None, Some(&src));
        let a = 1.0 - t as f64;
        let mut num = vec![0f64; src.len()];
        let mut logs = Vec::new();
        let mut outs = Vec::new();
        for y in &songs {
            for mask in 0u32..1 << cells {
                let rewritten = |f: usize, c: usize| mask >> cell(f, c) & 1 == 1;
                let x0: Vec<f64> = (0..src.len())
                    .map(|i| {
                        let (f, c) = (i / CHANNELS, i % CHANNELS);
                        (if rewritten(f, c) { y[i] } else { src[i] }) as f64
                    })
                    .collect();
                let d: f64 = (0..src.len())
                    .map(|i| (x[i] as f64 - a * x0[i]).powi(2))
                    .sum();
                let k = mask.count_ones() as f64;
                logs.push(
                    (1.0 / songs.len() as f64).ln()
                        + k * REWRITE_PRIOR.ln()
                        + (cells as f64 - k) * (1.0 - REWRITE_PRIOR).ln()
                        - d / (2.0 * (t as f64).powi(2)),
                );
                outs.push(x0);
            }
        }
        let m = logs.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        let z: f64 = logs.iter().map(|l| (l - m).exp()).sum();
        for (l, x0) in logs.iter().zip(&outs) {
            let w = (l - m).exp() / z;
            for i in 0..num.len() {
                num[i] += w * x0[i];
            }
        }
        let err = got
            .iter()
            .zip(&num)
            .map(|(g, n)| (*g as f64 - n).abs())
            .fold(0f64, f64::max);
        assert!(err < 1e-5, "t {t}: max error {err}");
    }
}

#[test]
fn source_edit_keeps_the_source_at_small_noise_and_is_the_prior_mean_at_full_noise() {
    use demon_sketch::denoiser::REWRITE_PRIOR;
    let mut den = SketchDenoiser::default();
    let cond = SketchConditioner::default()
        .read(&Prompt::tags("house"))
        .unwrap();
    let frames = 100;
    // A song no library holds (another seed), at another tempo than the prompt's.
    let src: Vec<f32> = compose(SongSpec {
        style: Style::Funk,
        bpm: 103.0,
        tonic: 4,
        minor: false,
        seed: 999,
        frames,
    })
    .latent;
    let mut noise = vec![0f32; src.len()];
    demon_engine::rng::fill_normal(5, demon_engine::rng::NoiseStream::Initial, &mut noise);
    let t = 0.02f32;
    let x: Vec<f32> = src
        .iter()
        .zip(&noise)
        .map(|(s, n)| (1.0 - t) * s + t * n)
        .collect();
    let keep = den.posterior_mean_from(&x, t, &cond, None, Some(&src));
    let err = keep
        .iter()
        .zip(&src)
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    assert!(
        err < 0.02,
        "the source is not kept at t = {t}: max error {err}"
    );
    // The library model alone throws it away.
    let lib_only = den.posterior_mean(&x, t, &cond, None);
    let err = lib_only
        .iter()
        .zip(&src)
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    assert!(err > 1.0, "{err}");
    // At t = 1 nothing is known: Σ_j π_j·[(1 − q)·s + q·y_j].
    let prior = den.posterior_mean_from(&vec![0.0; src.len()], 1.0, &cond, None, Some(&src));
    let lib = den.library(cond.bpm, cond.tonic, cond.minor, frames);
    let house: Vec<&Vec<f32>> = lib
        .iter()
        .filter(|s| s.spec.style == Style::House)
        .map(|s| &s.latent)
        .collect();
    let q = REWRITE_PRIOR as f32;
    let err = (0..src.len())
        .map(|i| {
            let mean = house.iter().map(|y| y[i]).sum::<f32>() / house.len() as f32;
            (prior[i] - ((1.0 - q) * src[i] + q * mean)).abs()
        })
        .fold(0f32, f32::max);
    assert!(err < 1e-5, "prior mean error {err}");
}

/// Mean of channel `c` over the frames of a `[1, T, C]` latent.
fn channel_mean(latent: &Tensor, c: usize) -> f32 {
    let v: Vec<f32> = latent.flatten_all().unwrap().to_vec1().unwrap();
    let frames = v.len() / CHANNELS;
    (0..frames).map(|f| v[f * CHANNELS + c]).sum::<f32>() / frames as f32
}

/// Generate one song from noise through the engine; returns its latent's bits.
fn generate(
    den: &mut SketchDenoiser,
    cond: &demon_engine::Conditioning,
    ctx: &Tensor,
    frames: usize,
) -> Tensor {
    let mut pipe = demon_engine::StreamPipeline::for_denoiser(1, den).unwrap();
    pipe.submit(demon_engine::SlotRequest::new(
        cond.clone(),
        ctx.clone(),
        frames,
        21,
    ))
    .unwrap();
    loop {
        if let Some(f) = pipe.tick(den).unwrap().finished.into_iter().next() {
            return f.latent;
        }
    }
}

fn bits(t: &Tensor) -> Vec<u32> {
    t.flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap()
        .iter()
        .map(|v| v.to_bits())
        .collect()
}

#[test]
fn a_timbre_reference_lends_its_voice_and_weight_zero_is_the_plain_prompt() {
    use demon_sketch::conditioner::TIMBRE_CHANNELS;
    use demon_sketch::layout::{LEAD_SHAPE, PAD_BRIGHT, REVERB};
    let mut den = SketchDenoiser::default();
    let mut cond = SketchConditioner::default();
    let frames = 150;
    let prompt = Prompt::tags("techno");
    let plain = cond.condition(&prompt).unwrap();
    // A reference whose voice differs clearly: an ambient song (soft sine lead, long reverb).
    let reference = song_latent(Style::Ambient, 90, 3);
    let voiced = cond.condition_with_timbre(&prompt, &reference).unwrap();
    let ctx = cond.context(None, frames, 0.0).unwrap();
    let base = generate(&mut den, &plain, &ctx, frames);
    let full = generate(&mut den, &voiced, &ctx, frames);
    assert_ne!(bits(&base), bits(&full), "the timbre changes nothing");
    // The voice channels move to the reference's means; notes and rhythm stay the prompt's.
    for c in [LEAD_SHAPE, PAD_BRIGHT, REVERB] {
        let (b, f, r) = (
            channel_mean(&base, c),
            channel_mean(&full, c),
            channel_mean(&reference, c),
        );
        assert!(
            (f - r).abs() < 0.05 + 0.1 * (b - r).abs(),
            "channel {c}: plain {b}, with timbre {f}, reference {r}"
        );
    }
    // Halfway on the fader: halfway there.
    let half = demon_engine::Conditioning::lerp(&plain, &voiced, 0.5).unwrap();
    let mid = generate(&mut den, &half, &ctx, frames);
    for c in TIMBRE_CHANNELS {
        let (b, m, f) = (
            channel_mean(&base, c),
            channel_mean(&mid, c),
            channel_mean(&full, c),
        );
        assert!(
            (m - 0.5 * (b + f)).abs() < 0.05 + 0.1 * (f - b).abs(),
            "channel {c}: {b} → {m} → {f}"
        );
    }
    // Strength 0 is the plain prompt, byte for byte.
    let zero = demon_engine::Conditioning::lerp(&plain, &voiced, 0.0).unwrap();
    assert_eq!(bits(&generate(&mut den, &zero, &ctx, frames)), bits(&base));
    // Bad references are refused with the shape named.
    let bad = Tensor::zeros((1, 5, 3), candle_core::DType::F32, &Device::Cpu).unwrap();
    let e = cond.condition_with_timbre(&prompt, &bad).unwrap_err();
    assert!(e.to_string().contains("timbre reference"), "{e}");
}

#[test]
fn a_structure_reference_lends_rhythm_and_harmony_and_strength_zero_is_none() {
    use demon_sketch::conditioner::STRUCTURE_CHANNELS;
    use demon_sketch::layout::{KICK, REVERB};
    let mut den = SketchDenoiser::default();
    let mut cond = SketchConditioner::default();
    let frames = 150;
    let plain = cond.condition(&Prompt::tags("house techno")).unwrap();
    // A separate, shorter reference (not the playing source): it loops over the song.
    let reference = song_latent(Style::Techno, 50, 8);
    let ctx = cond.context(Some(&reference), frames, 1.0).unwrap();
    assert_eq!(ctx.dims(), [1, frames, CHANNELS]);
    let r: Vec<f32> = reference.flatten_all().unwrap().to_vec1().unwrap();
    let c: Vec<f32> = ctx.flatten_all().unwrap().to_vec1().unwrap();
    for f in [0usize, 49, 50, 123] {
        assert_eq!(
            c[f * CHANNELS + KICK.onset],
            r[(f % 50) * CHANNELS + KICK.onset]
        );
        assert_eq!(c[f * CHANNELS + REVERB], 0.0, "timbre is no structure");
    }
    assert!(STRUCTURE_CHANNELS.contains(&KICK.onset) && !STRUCTURE_CHANNELS.contains(&REVERB));
    let none = cond.context(None, frames, 0.0).unwrap();
    let base = generate(&mut den, &plain, &none, frames);
    let guided = generate(&mut den, &plain, &ctx, frames);
    assert_ne!(bits(&base), bits(&guided), "the structure changes nothing");
    // The result agrees more with the reference's rhythm and harmony with it than without.
    let agreement = |latent: &Tensor| {
        let v: Vec<f32> = latent.flatten_all().unwrap().to_vec1().unwrap();
        v.iter().zip(&c).map(|(a, b)| a * b).sum::<f32>()
    };
    let kicks = |latent: &Tensor| {
        let v: Vec<f32> = latent.flatten_all().unwrap().to_vec1().unwrap();
        (0..frames)
            .filter(|f| {
                (v[f * CHANNELS + KICK.onset] > 0.0) == (c[f * CHANNELS + KICK.onset] > 0.0)
            })
            .count()
    };
    println!(
        "agreement {} → {}, kicks {} → {}",
        agreement(&base),
        agreement(&guided),
        kicks(&base),
        kicks(&guided)
    );
    assert!(agreement(&guided) > agreement(&base));
    // Strength 0 is no reference, byte for byte.
    let zero = cond.context(Some(&reference), frames, 0.0).unwrap();
    assert_eq!(
        bits(&generate(&mut den, &plain, &zero, frames)),
        bits(&base)
    );
    assert!(cond.context(Some(&reference), frames, 1.5).is_err());
    let bad = Tensor::zeros((1, 0, CHANNELS), candle_core::DType::F32, &Device::Cpu).unwrap();
    assert!(cond.context(Some(&bad), frames, 0.5).is_err());
}
