//! Full-size cost of ACE-Step 1.5 on this CPU, with random weights (no files):
//! one DiT step of the 2B turbo model for a 60 s and a 10 s song, the same for the XL turbo model
//! (extrapolated from a 2- and a 4-layer instance when the 5B f32 model does not fit in memory),
//! and a 10 s Oobleck VAE decode. Prints wall time, peak RSS, achieved GFLOP/s and the machine's
//! measured f32 matmul GFLOP/s.
//!
//! Run: `cargo run --release -p demon-acestep --example fullsize`

use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use demon_acestep::{AceStep, AceStepCodec, AceStepConfig, AceStepDenoiser, DitConfig, VaeConfig};
use demon_engine::{Conditioning, DenoiseBatch, Denoiser};

/// Peak resident set size since the last reset, in GiB (Linux `VmHWM`).
fn peak_rss_gib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|kb| kb.parse::<f64>().ok())
        .map_or(f64::NAN, |kb| kb / (1024.0 * 1024.0))
}

/// Reset the peak RSS counter (Linux ≥ 4.0) so each model reports its own peak.
fn reset_peak() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

fn mem_available_gib() -> f64 {
    let info = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    info.lines()
        .find(|l| l.starts_with("MemAvailable:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|kb| kb.parse::<f64>().ok())
        .map_or(0.0, |kb| kb / (1024.0 * 1024.0))
}

/// Best of a few runs of a large f32 matmul `[m, k] × [k, n]`, in GFLOP/s.
fn matmul_gflops(dev: &Device, m: usize, k: usize, n: usize) -> candle_core::Result<f64> {
    let a = Tensor::randn(0f32, 1.0, (m, k), dev)?;
    let b = Tensor::randn(0f32, 1.0, (k, n), dev)?;
    let _ = a.matmul(&b)?; // warm-up
    let mut best = f64::MAX;
    for _ in 0..4 {
        let t = Instant::now();
        let c = a.matmul(&b)?;
        let _ = c.dims();
        best = best.min(t.elapsed().as_secs_f64());
    }
    Ok(2.0 * (m * k * n) as f64 / best / 1e9)
}

/// FLOPs executed by one DiT step (multiply-add = 2). Attention scores are computed densely
/// (the sliding window is a mask), so both layer kinds cost `S²`.
fn dit_step_flops(cfg: &DitConfig, frames: usize, enc_len: usize) -> f64 {
    let s = frames.div_ceil(cfg.patch_size) as f64;
    let h = cfg.hidden_size as f64;
    let q = (cfg.num_attention_heads * cfg.head_dim) as f64;
    let kv = (cfg.num_key_value_heads * cfg.head_dim) as f64;
    let i = cfg.intermediate_size as f64;
    let l = enc_len as f64;
    let self_proj = 2.0 * s * (h * q + 2.0 * h * kv + q * h);
    let self_core = 4.0 * s * s * q;
    let cross = 2.0 * s * (h * q + q * h) + 4.0 * s * l * q;
    let mlp = 2.0 * s * 3.0 * h * i;
    let per_layer = self_proj + self_core + cross + mlp;
    let io = 2.0 * s * (cfg.patch_size * cfg.in_channels) as f64 * h
        + 2.0 * s * h * (cfg.patch_size * cfg.audio_acoustic_hidden_dim) as f64;
    per_layer * cfg.num_hidden_layers as f64 + io
}

/// FLOPs of a VAE decode of `frames` latent frames (convolutions only; Snake is a few
/// element-wise operations per value).
fn vae_decode_flops(cfg: &VaeConfig, frames: usize) -> f64 {
    let ch = cfg.decoder_channels as f64;
    let mut mults = vec![1usize];
    mults.extend(&cfg.channel_multiples);
    let n = cfg.downsampling_ratios.len();
    let mut len = frames as f64;
    let top = ch * mults[n] as f64;
    let mut f = 2.0 * top * cfg.decoder_input_channels as f64 * 7.0 * len;
    for (b, &s) in cfg.downsampling_ratios.iter().rev().enumerate() {
        let cin = ch * mults[n - b] as f64;
        let cout = ch * mults[n - b - 1] as f64;
        // Transposed conv: every input sample meets every kernel tap.
        f += 2.0 * cin * cout * (2 * s) as f64 * len;
        len *= s as f64;
        // Three residual units: kernel-7 conv + kernel-1 conv.
        f += 3.0 * (2.0 * cout * cout * 7.0 * len + 2.0 * cout * cout * len);
    }
    f + 2.0 * ch * cfg.audio_channels as f64 * 7.0 * len
}

/// Time one denoiser step (cross-attention K/V already cached, as in steady state) after a
/// first call that fills the cache. Returns (first call s, step s).
fn time_step(
    den: &mut AceStepDenoiser,
    frames: usize,
    cond: &Conditioning,
    dev: &Device,
) -> candle_core::Result<(f64, f64)> {
    let c = den.config().audio_acoustic_hidden_dim;
    let x = Tensor::randn(0f32, 1.0, (1, frames, c), dev)?;
    let ctx = Tensor::randn(0f32, 1.0, (1, frames, den.context_channels()), dev)?;
    let batch = DenoiseBatch {
        x,
        t: vec![0.75],
        conditions: vec![cond],
        contexts: vec![&ctx],
    };
    let t0 = Instant::now();
    den.velocity(&batch)
        .map_err(|e| candle_core::Error::Msg(e.to_string()))?;
    let first = t0.elapsed().as_secs_f64();
    let t1 = Instant::now();
    den.velocity(&batch)
        .map_err(|e| candle_core::Error::Msg(e.to_string()))?;
    Ok((first, t1.elapsed().as_secs_f64()))
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dev = Device::Cpu;
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!("ACE-Step 1.5 full-size cost on this CPU ({threads} threads, f32, random weights)");
    // Square power-of-two, square non-power-of-two, and the XL MLP's shape at 60 s.
    let mut mm = 0f64;
    for (m, k, n) in [(2048, 2048, 2048), (3000, 3000, 3000), (750, 2560, 9728)] {
        let g = matmul_gflops(&dev, m, k, n)?;
        println!("f32 matmul (candle) {m}×{k}×{n}: {g:.1} GFLOP/s");
        mm = mm.max(g);
    }
    println!("machine f32 matmul rate (best of the above): {mm:.1} GFLOP/s\n");
    let enc_len = 400; // packed conditioning length used in acestep.md §7
    let cond_states = |h: usize| -> candle_core::Result<Conditioning> {
        Conditioning::new(Tensor::randn(0f32, 1.0, (1, enc_len, h), &dev)?)
            .map_err(|e| candle_core::Error::Msg(e.to_string()))
    };

    // ---- 2B turbo, full size: the whole model (DiT, condition encoder, FSQ, Qwen3 text encoder,
    // VAE) when memory allows, else the DiT alone.
    reset_peak();
    let cfg = DitConfig::turbo_2b();
    let t = Instant::now();
    let mut den = if mem_available_gib() > 16.0 {
        let model = AceStep::random(&AceStepConfig::turbo_2b(), 1, &dev)?;
        println!(
            "2B turbo, complete model (DiT + condition encoder + FSQ + Qwen3-Embedding-0.6B + VAE): instantiated in {:.1} s, \
             peak RSS {:.2} GiB",
            t.elapsed().as_secs_f64(),
            peak_rss_gib()
        );
        let (den, _codec, mut cond) = model.into_parts();
        // Conditioning of a typical prompt: 100 caption tokens, 300 lyric tokens.
        let text: Vec<u32> = (0..100).map(|i| (i * 37 % 150_000) as u32).collect();
        let lyrics: Vec<u32> = (0..300).map(|i| (i * 91 % 150_000) as u32).collect();
        let t = Instant::now();
        let _ = cond.encode_ids(&text, &lyrics)?;
        println!(
            "  prompt encoding (Qwen3 text encoder on 100 tokens, lyric encoder on 300, timbre from the silence latent): {:.2} s",
            t.elapsed().as_secs_f64()
        );
        den
    } else {
        let den = AceStepDenoiser::random(&cfg, 1, &dev)?;
        println!(
            "2B turbo DiT (alone: not enough free memory for the whole model): instantiated in {:.1} s",
            t.elapsed().as_secs_f64()
        );
        den
    };
    let cond = cond_states(cfg.encoder.hidden_size)?;
    for (label, frames) in [("60 s", 1500usize), ("10 s", 250)] {
        let (first, step) = time_step(&mut den, frames, &cond, &dev)?;
        let flops = dit_step_flops(&cfg, frames, enc_len);
        println!(
            "  one step, {label} song (T={frames}): {step:.2} s ({:.1} TFLOP, {:.1} GFLOP/s = {:.0}% of matmul); \
             first call incl. cross K/V {first:.2} s; 8 steps ≈ {:.1} s; peak RSS {:.2} GiB",
            flops / 1e12,
            flops / step / 1e9,
            100.0 * flops / step / 1e9 / mm,
            8.0 * step,
            peak_rss_gib()
        );
    }
    drop(den);

    // ---- XL turbo DiT.
    let xl = DitConfig::xl_turbo();
    let params_per_layer = {
        let h = xl.hidden_size;
        let q = xl.num_attention_heads * xl.head_dim;
        let kv = xl.num_key_value_heads * xl.head_dim;
        2 * (h * q + 2 * h * kv + q * h) + 3 * h * xl.intermediate_size
    };
    let xl_gib = (params_per_layer * xl.num_hidden_layers) as f64 * 4.0 / (1u64 << 30) as f64;
    let avail = mem_available_gib();
    println!(
        "\nXL turbo DiT: {} layers need ≈{xl_gib:.1} GiB of f32 weights; {avail:.1} GiB available",
        xl.num_hidden_layers
    );
    if xl_gib + 4.0 < avail {
        reset_peak();
        let t = Instant::now();
        let mut den = AceStepDenoiser::random(&xl, 2, &dev)?;
        println!(
            "  DiT instantiated in {:.1} s, peak RSS {:.2} GiB",
            t.elapsed().as_secs_f64(),
            peak_rss_gib()
        );
        let cond = cond_states(xl.encoder.hidden_size)?;
        for (label, frames) in [("60 s", 1500usize), ("10 s", 250)] {
            let (_, step) = time_step(&mut den, frames, &cond, &dev)?;
            let flops = dit_step_flops(&xl, frames, enc_len);
            println!(
                "  one step, {label} (T={frames}): {step:.2} s ({:.1} TFLOP, {:.1} GFLOP/s = {:.0}% of matmul); 8 steps ≈ {:.1} s; \
                 peak RSS {:.2} GiB",
                flops / 1e12,
                flops / step / 1e9,
                100.0 * flops / step / 1e9 / mm,
                8.0 * step,
                peak_rss_gib()
            );
        }
    } else {
        println!(
            "  does not fit next to everything else in memory: measuring 2- and 4-layer instances and extrapolating to 32 layers"
        );
        let cond = cond_states(xl.encoder.hidden_size)?;
        for (label, frames) in [("60 s", 1500usize), ("10 s", 250)] {
            let mut times = Vec::new();
            for layers in [2usize, 4] {
                reset_peak();
                let small = DitConfig {
                    num_hidden_layers: layers,
                    sliding_layers: (0..layers).map(|i| i % 2 == 0).collect(),
                    ..xl.clone()
                };
                let mut den = AceStepDenoiser::random(&small, 2, &dev)?;
                let (_, step) = time_step(&mut den, frames, &cond, &dev)?;
                times.push((step, peak_rss_gib()));
            }
            let per_layer = (times[1].0 - times[0].0) / 2.0;
            let fixed = times[0].0 - 2.0 * per_layer;
            let step = fixed + per_layer * xl.num_hidden_layers as f64;
            let flops = dit_step_flops(&xl, frames, enc_len);
            println!(
                "  one step, {label} (T={frames}): ≈{step:.2} s extrapolated ({:.2} s per layer; 2/4-layer runs {:.2}/{:.2} s, \
                 peak RSS {:.2}/{:.2} GiB); {:.1} TFLOP, ≈{:.1} GFLOP/s; 8 steps ≈ {:.1} s",
                per_layer,
                times[0].0,
                times[1].0,
                times[0].1,
                times[1].1,
                flops / 1e12,
                flops / step / 1e9,
                8.0 * step
            );
        }
    }

    // ---- Oobleck VAE decode, 10 s.
    reset_peak();
    let vcfg = VaeConfig::acestep();
    let codec = AceStepCodec::random(&vcfg, 3, &dev, false)?;
    let frames = 250;
    let lat = Tensor::randn(0f32, 1.0, (1, vcfg.decoder_input_channels, frames), &dev)?
        .to_dtype(DType::F32)?;
    let t = Instant::now();
    let audio = codec.decode_raw(&lat)?;
    let secs = t.elapsed().as_secs_f64();
    let flops = vae_decode_flops(&vcfg, frames);
    println!(
        "\nOobleck VAE decode, 10 s ({frames} frames → {:?}): {secs:.2} s ({:.2} TFLOP, {:.1} GFLOP/s = {:.0}% of matmul); \
         peak RSS {:.2} GiB",
        audio.dims(),
        flops / 1e12,
        flops / secs / 1e9,
        100.0 * flops / secs / 1e9 / mm,
        peak_rss_gib()
    );
    Ok(())
}
