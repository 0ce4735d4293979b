//! Windowed decode with the full-size Oobleck VAE (random weights, no files): the measured
//! receptive field, exactness of windows at that margin, and decode cost per tick, windowed
//! versus full, for a song of `SECONDS` (default 60).
//!
//! `cargo run --release -p demon-live --example oobleck_window [SECONDS]`

use std::time::Instant;

use candle_core::Device;
use demon_engine::{
    Codec, decode_window, measure_receptive_field, probe_latents, receptive::max_abs_diff,
};

fn main() {
    let seconds: usize = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(60);
    let cfg = demon_acestep::VaeConfig::acestep();
    let mut codec =
        demon_acestep::AceStepCodec::random(&cfg, 1, &Device::Cpu, false).expect("random Oobleck");
    let c = codec.latent_channels();
    let hop = codec.hop_samples();
    println!("Oobleck VAE at full size (random weights): {c} latent channels, hop {hop}");

    let t0 = Instant::now();
    let probes = probe_latents(64, c, &Device::Cpu).expect("probes");
    let field = measure_receptive_field(&mut codec, &probes[..1], 9, 2, 24, 1e-6).expect("measure");
    println!(
        "receptive field {field:?} (measured in {:.0} s)",
        t0.elapsed().as_secs_f64()
    );

    let latent = demon_engine::rng::normal_tensor(
        5,
        demon_engine::rng::NoiseStream::Custom(1, 1),
        80,
        c,
        &Device::Cpu,
    )
    .expect("latent");
    let full = codec.decode(&latent, 0).expect("decode");
    let mut worst = 0f32;
    for (start, keep) in [(30usize, 9usize), (41, 1), (35, 12)] {
        let w = decode_window(&mut codec, &latent, start, keep, field).expect("window");
        let truth: Vec<Vec<f32>> = full
            .channels
            .iter()
            .map(|ch| ch[start * hop..(start + keep) * hop].to_vec())
            .collect();
        worst = worst.max(max_abs_diff(&w, &truth));
    }
    println!("windowed vs full decode inside the kept region: max abs diff {worst:e}");

    let frames = seconds * 25;
    let song = demon_engine::rng::normal_tensor(
        6,
        demon_engine::rng::NoiseStream::Custom(1, 2),
        frames,
        c,
        &Device::Cpu,
    )
    .expect("song");
    let t0 = Instant::now();
    codec.decode(&song, 0).expect("full decode");
    let full_s = t0.elapsed().as_secs_f64();
    println!("full decode of {seconds} s: {full_s:.2} s");
    for keep_s in [3.0f64, 0.36] {
        let keep = (keep_s * 25.0).round() as usize;
        let start = frames / 2;
        let t0 = Instant::now();
        decode_window(&mut codec, &song, start, keep, field).expect("window");
        let w = t0.elapsed().as_secs_f64();
        println!(
            "keep {keep_s} s (+{}/{} frames margin): {w:.2} s, {:.1}x faster than the full decode",
            field.before,
            field.after,
            full_s / w
        );
    }
}
