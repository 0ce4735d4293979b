//! bf16 CPU weights against f32 on a random full-size DiT (issue 13: parity within 2e-2 relative
//! to the output scale). One row of a `SECONDS`-long song (default 10) through the fused CPU
//! forward with f32 weights, then the same row with the weights repacked to bf16.
//!
//! ```text
//! cargo run --release -p demon-acestep --example bf16_parity -- [turbo-2b|xl-turbo] [SECONDS]
//! ```

use std::time::Instant;

use anyhow::Result;
use candle_core::{Device, Tensor};
use demon_acestep::AceStepDenoiser;
use demon_acestep::bench::ModelSize;
use demon_acestep::gemm::Precision;
use demon_engine::{Conditioning, DenoiseBatch, Denoiser};

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let size: ModelSize = args.first().map_or("turbo-2b", String::as_str).parse()?;
    let seconds: usize = args.get(1).map_or(Ok(10), |s| s.parse())?;
    let dev = Device::Cpu;
    let mut den = AceStepDenoiser::random(&size.dit_config(), 0, &dev)?;
    let cfg = den.config().clone();
    let frames = seconds * 25;
    let x = Tensor::randn(0f32, 1.0, (1, frames, cfg.audio_acoustic_hidden_dim), &dev)?;
    let ctx = Tensor::randn(0f32, 1.0, (1, frames, den.context_channels()), &dev)?;
    let cond = Conditioning::new(Tensor::randn(
        0f32,
        1.0,
        (1, 400, cfg.encoder.hidden_size),
        &dev,
    )?)?;
    let run = |den: &mut AceStepDenoiser| -> Result<(Tensor, f64)> {
        let batch = DenoiseBatch {
            x: x.clone(),
            t: vec![0.8],
            conditions: vec![&cond],
            contexts: vec![&ctx],
            sources: Vec::new(),
        };
        den.velocity(&batch)?; // warm-up (cross K/V, workspace)
        let t = Instant::now();
        let v = den.velocity(&batch)?;
        Ok((v, t.elapsed().as_secs_f64()))
    };
    let f32_bytes = den.linear_weight_bytes();
    let (want, f32_s) = run(&mut den)?;
    den.set_cpu_precision(Precision::Bf16)?;
    let bf16_bytes = den.linear_weight_bytes();
    let (got, bf16_s) = run(&mut den)?;
    let scale = want.abs()?.max_all()?.to_scalar::<f32>()?;
    let diff = (&got - &want)?.abs()?.max_all()?.to_scalar::<f32>()?;
    println!(
        "{} {seconds} s, batch 1: max |bf16 − f32| = {diff:.4e}, output scale {scale:.4e}, relative {:.3e} (bound 2e-2)",
        size.key(),
        diff / scale
    );
    println!(
        "step: f32 {:.0} ms, bf16 {:.0} ms (×{:.2}); weights f32 {:.2} GiB, bf16 {:.2} GiB",
        f32_s * 1e3,
        bf16_s * 1e3,
        f32_s / bf16_s,
        f32_bytes as f64 / (1u64 << 30) as f64,
        bf16_bytes as f64 / (1u64 << 30) as f64
    );
    if diff > 2e-2 * scale {
        anyhow::bail!("bf16 is outside 2e-2 of f32");
    }
    Ok(())
}
