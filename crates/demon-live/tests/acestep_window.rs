//! Windowed decode with the Oobleck VAE (the tiny random-weight fixture of demon-acestep):
//! at the measured receptive field the kept samples equal the full decode.

use candle_core::Device;
use demon_engine::{
    Codec, decode_window, measure_receptive_field, probe_latents, receptive::max_abs_diff,
};

#[test]
fn oobleck_windows_match_the_full_decode_at_the_measured_margin() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../demon-acestep/tests/fixtures/weights/original");
    let model = demon_acestep::AceStep::load(&dir, &Device::Cpu).unwrap();
    let (_, mut codec, _) = model.into_parts();
    let c = codec.latent_channels();
    let probes = probe_latents(120, c, &Device::Cpu).unwrap();
    let field = measure_receptive_field(&mut codec, &probes, 9, 3, 40, 1e-6).unwrap();
    println!("Oobleck (tiny fixture) receptive field: {field:?}");
    assert!(
        field.before > 0 && field.after > 0,
        "a non-causal decoder needs context on both sides: {field:?}"
    );
    // Fresh latents, windows of several sizes anywhere: exact to 1e-5.
    let latent = demon_engine::rng::normal_tensor(
        77,
        demon_engine::rng::NoiseStream::Custom(5, 5),
        200,
        c,
        &Device::Cpu,
    )
    .unwrap();
    let full = codec.decode(&latent, 0).unwrap();
    let hop = codec.hop_samples();
    let mut worst = 0f32;
    for start in [0usize, 13, 60, 101, 170] {
        for keep in [1usize, 9, 25] {
            if start + keep > 200 {
                continue;
            }
            let w = decode_window(&mut codec, &latent, start, keep, field).unwrap();
            let truth: Vec<Vec<f32>> = full
                .channels
                .iter()
                .map(|ch| ch[start * hop..(start + keep) * hop].to_vec())
                .collect();
            let d = max_abs_diff(&w, &truth);
            worst = worst.max(d);
            assert!(d <= 1e-5, "start {start} keep {keep}: {d}");
        }
    }
    println!("max abs diff of windowed vs full decode: {worst:e}");
}
