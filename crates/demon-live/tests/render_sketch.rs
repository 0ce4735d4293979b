//! Offline renders on the sketch backend: music in every style, depth-independence, guidance.

use candle_core::Tensor;
use demon_engine::{Audio, BackendSet, CurveSpec, Prompt};
use demon_live::{BackendFacts, RenderSpec, render};
use demon_sketch::layout::{CHANNELS, KICK};
use demon_sketch::{SketchDenoiser, Style};

fn sketch() -> BackendSet {
    demon_sketch::backend()
}

fn spec(prompt: &str, seconds: usize) -> RenderSpec {
    RenderSpec::new(Prompt::tags(prompt), seconds * 25)
}

/// The sketch backend's facts (for setting knobs).
fn facts() -> BackendFacts {
    BackendFacts::of(&mut sketch())
}

fn latent_vec(t: &Tensor) -> Vec<f32> {
    t.flatten_all().unwrap().to_vec1().unwrap()
}

/// Strength of periodicity of the kick channel at `period` frames (autocorrelation, 0..1).
fn periodicity(latent: &[f32], frames: usize, period: f64) -> f64 {
    let k: Vec<f64> = (0..frames)
        .map(|f| ((latent[f * CHANNELS + KICK.onset] + 1.0) / 2.0) as f64)
        .collect();
    let mean = k.iter().sum::<f64>() / frames as f64;
    let c: Vec<f64> = k.iter().map(|v| v - mean).collect();
    let var: f64 = c.iter().map(|v| v * v).sum::<f64>().max(1e-9);
    let lag = period.round() as usize;
    (0..frames - lag).map(|i| c[i] * c[i + lag]).sum::<f64>() / var
}

fn spectral_centroid(a: &Audio) -> f64 {
    // Zero-crossing rate is a cheap proxy for brightness.
    let x = &a.channels[0];
    x.windows(2)
        .filter(|w| (w[0] >= 0.0) != (w[1] >= 0.0))
        .count() as f64
        / x.len() as f64
}

#[test]
fn every_style_renders_music_and_styles_differ() {
    let mut backend = sketch();
    let mut results = Vec::new();
    for style in Style::ALL {
        let takes = render(&mut backend, &spec(style.name(), 20), &mut |_, _| {}).unwrap();
        let take = &takes[0];
        let (rms, peak) = (take.audio.rms(), take.audio.peak());
        println!(
            "{:>14}: rms {rms:.3} peak {peak:.3} zcr {:.4}",
            style.name(),
            spectral_centroid(&take.audio)
        );
        assert_eq!(take.audio.frames(), 20 * 48_000);
        assert!(rms > 0.03, "{style:?} is (nearly) silent: rms {rms}");
        assert!(peak < 0.99, "{style:?} clips: peak {peak}");
        results.push((style, latent_vec(&take.latent), take.audio.clone()));
    }
    // Rhythm at the style's tempo: kicks repeat every beat (house, techno) at 25·60/bpm frames.
    for (style, lat, _) in &results {
        if matches!(style, Style::House | Style::Techno) {
            let beat = 25.0 * 60.0 / style.default_bpm() as f64;
            let p = periodicity(lat, 500, beat * 2.0);
            assert!(p > 0.4, "{style:?} kick periodicity {p}");
        }
    }
    // Styles differ from one another.
    for i in 0..results.len() {
        for j in i + 1..results.len() {
            let (a, b) = (&results[i].1, &results[j].1);
            let d = a.iter().zip(b).map(|(x, y)| (x - y).abs()).sum::<f32>() / a.len() as f32;
            assert!(
                d > 0.15,
                "{:?} and {:?} are too alike: {d}",
                results[i].0,
                results[j].0
            );
        }
    }
}

#[test]
fn takes_are_identical_at_depth_1_and_8() {
    let mut backend = sketch();
    let mut s = spec("funk, E minor", 8);
    let f = facts();
    s.takes = 8;
    s.controls.set_knob("guidance", 2.0, &f).unwrap();
    s.controls
        .set_curve(
            "ode_noise",
            Some(&CurveSpec::parse("ode_noise", "sine:0:0.4:2").unwrap()),
        )
        .unwrap();
    s.controls.set_knob("depth", 1.0, &f).unwrap();
    let a = render(&mut backend, &s, &mut |_, _| {}).unwrap();
    s.controls.set_knob("depth", 8.0, &f).unwrap();
    let b = render(&mut backend, &s, &mut |_, _| {}).unwrap();
    assert_eq!(a.len(), 8);
    for (x, y) in a.iter().zip(&b) {
        assert_eq!(x.seed, y.seed);
        assert_eq!(x.audio, y.audio, "take with seed {}", x.seed);
    }
    // Takes are variations, not copies.
    assert_ne!(a[0].audio, a[1].audio);
}

/// Fraction of frames whose nearest library song (within the prompt's tempo/key library) has
/// `style`.
fn share_of_style(latent: &[f32], frames: usize, style: Style, bpm: f32) -> f64 {
    let mut den = SketchDenoiser::default();
    let lib = den.library(bpm, 9, true, frames);
    let mut n = 0;
    for f in 0..frames {
        let row = &latent[f * CHANNELS..(f + 1) * CHANNELS];
        let best = lib
            .iter()
            .min_by(|a, b| {
                let da: f32 = a.latent[f * CHANNELS..(f + 1) * CHANNELS]
                    .iter()
                    .zip(row)
                    .map(|(p, q)| (p - q).powi(2))
                    .sum();
                let db: f32 = b.latent[f * CHANNELS..(f + 1) * CHANNELS]
                    .iter()
                    .zip(row)
                    .map(|(p, q)| (p - q).powi(2))
                    .sum();
                da.total_cmp(&db)
            })
            .unwrap();
        if best.spec.style == style {
            n += 1;
        }
    }
    n as f64 / frames as f64
}

#[test]
fn negative_prompt_with_guidance_steers_away() {
    let mut backend = sketch();
    let mut base = spec("house techno, A minor, 126 bpm", 12);
    base.takes = 6;
    let plain = render(&mut backend, &base, &mut |_, _| {}).unwrap();
    let mut guided = base.clone();
    guided.controls.prompts.negative = Some("techno".into());
    guided.controls.set_knob("guidance", 4.0, &facts()).unwrap();
    guided.controls.cfg_mode = demon_engine::CfgMode::Full;
    let steered = render(&mut backend, &guided, &mut |_, _| {}).unwrap();
    let techno_share = |takes: &[demon_live::RenderedTake]| {
        takes
            .iter()
            .map(|t| share_of_style(&latent_vec(&t.latent), 300, Style::Techno, 126.0))
            .sum::<f64>()
            / takes.len() as f64
    };
    let (p, g) = (techno_share(&plain), techno_share(&steered));
    println!("techno share: plain {p:.3}, guided away from techno {g:.3}");
    assert!(
        g < p - 0.1,
        "guidance did not steer away: plain {p:.3}, guided {g:.3}"
    );
}

#[test]
fn a_per_frame_blend_changes_style_over_time() {
    let mut backend = sketch();
    let mut s = spec("ambient, A minor, 120 bpm", 16);
    // Prompt B takes prompt A's fields (its tempo, 120) with its own tags.
    s.controls.prompts.a.bpm = Some(120.0);
    s.controls.prompts.b = Some("techno".into());
    // B (techno) for the first half, then A.
    let square = CurveSpec::parse("blend", "square:0:1:1").unwrap();
    s.controls.set_curve("blend", Some(&square)).unwrap();
    s.takes = 3;
    let takes = render(&mut backend, &s, &mut |_, _| {}).unwrap();
    for t in &takes {
        let lat = latent_vec(&t.latent);
        let first = share_of_style(&lat[..200 * CHANNELS], 200, Style::Ambient, 120.0);
        let second = share_of_style(&lat[200 * CHANNELS..], 200, Style::Ambient, 120.0);
        assert!(
            second > first + 0.3,
            "ambient share first half {first:.2}, second half {second:.2}"
        );
    }
}

/// Bad render specs are refused before any work, naming the problem; bad control values are
/// refused when they are set (validated once, as live), with the same kind of message.
#[test]
fn render_specs_reject_bad_input() {
    let mut backend = sketch();
    let f = facts();
    let house = || RenderSpec::new(Prompt::tags("house"), 25 * 20);
    let mut cases: Vec<(RenderSpec, &str)> = Vec::new();
    let mut s = house();
    s.frames = 0;
    cases.push((s, "zero"));
    let mut s = house();
    s.frames = 25 * 100_000;
    cases.push((s, "limit"));
    let mut s = house();
    s.takes = 0;
    cases.push((s, "takes"));
    let mut s = house();
    s.controls
        .set_curve("mask", Some(&CurveSpec::Constant { value: 1.0 }))
        .unwrap();
    cases.push((s, "needs a source"));
    let mut s = house();
    s.controls.prompts.negative = Some("techno".into());
    cases.push((s, "guidance"));
    for (s, needle) in cases {
        let e = match render(&mut backend, &s, &mut |_, _| {}) {
            Ok(_) => panic!("accepted a bad spec ({needle})"),
            Err(e) => e.to_string(),
        };
        assert!(e.contains(needle), "`{e}` should mention `{needle}`");
    }
    // Bad values never reach a render: the controls refuse them and stay as they were.
    let mut c = house().controls;
    let before = (c.target_map(), c.curve_specs());
    let refused = [
        c.set_knob("denoise", 2.0, &f).map(|_| ()),
        c.set_knob("guidance", f64::NAN, &f).map(|_| ()),
        c.set_curve(
            "velocity_scale",
            Some(&CurveSpec::Raw {
                values: vec![0.5, f32::NAN],
            }),
        ),
        c.set_curve("wobble", Some(&CurveSpec::Constant { value: 1.0 })),
    ];
    for (r, needle) in refused
        .into_iter()
        .zip(["denoise", "guidance", "velocity_scale", "wobble"])
    {
        let e = r.expect_err(needle).to_string();
        assert!(e.contains(needle), "`{e}` should mention `{needle}`");
    }
    assert_eq!(before, (c.target_map(), c.curve_specs()));
}
