//! Regression guard for the CPU kernels (issue #6): one full-size 2B DiT layer (sliding and full
//! attention) for a 10 s song, and one full-size Oobleck decoder block for 1 s of audio, with
//! random weights. Run: `cargo bench -p demon-acestep --bench layers`; compare against the
//! figures in docs/performance.md. Throughput is reported in FLOPs of the FLOP-count functions of
//! `demon_acestep::bench` (so criterion prints GFLOP/s... as "elements/s").

use std::hint::black_box;
use std::time::Duration;

use candle_core::{Device, Tensor};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use demon_acestep::DitConfig;
use demon_acestep::bench::dit_step_flops;
use demon_acestep::dit::{Dit, Workspace};
use demon_acestep::nn::{Params, RandomSource};
use demon_acestep::vae::DecoderBlock;

fn dit_layer(c: &mut Criterion) {
    let dev = Device::Cpu;
    let frames = 250; // 10 s at 25 Hz → 125 patches
    let enc_len = 400;
    let mut g = c.benchmark_group("dit_layer_2b_10s");
    g.sample_size(10).measurement_time(Duration::from_secs(10));
    for sliding in [true, false] {
        let cfg = DitConfig {
            num_hidden_layers: 1,
            sliding_layers: vec![sliding],
            ..DitConfig::turbo_2b()
        };
        let src = RandomSource {
            seed: 1,
            device: dev.clone(),
        };
        let dit = Dit::load(&src, &cfg).expect("random DiT");
        let states = Tensor::randn(0f32, 1.0, (1, enc_len, 2048), &dev).expect("states");
        let kv = dit.cross_kv(&states, None).expect("cross K/V");
        let x = Tensor::randn(0f32, 1.0, (1, frames, 64), &dev).expect("x");
        let ctx = Tensor::randn(0f32, 1.0, (1, frames, 128), &dev).expect("context");
        g.throughput(Throughput::Elements(
            dit_step_flops(&cfg, frames, enc_len) as u64
        ));
        let name = if sliding { "sliding" } else { "full" };
        // One workspace for every iteration, as the denoiser keeps one from step to step.
        let mut ws = Workspace::default();
        g.bench_function(name, |b| {
            b.iter(|| {
                black_box(
                    dit.forward_row_with(&mut ws, &x, &ctx, 0.75, 0.0, &kv)
                        .expect("forward"),
                )
            })
        });
    }
    g.finish();
}

fn vae_block(c: &mut Criterion) {
    // decoder.block.3 of the published VAE: 256 → 128 channels, stride 4, at 6000 input rows
    // (1 s of audio leaves that block at 24 000 rows).
    let (cin, cout, s, l) = (256usize, 128usize, 4usize, 6000usize);
    let src = RandomSource {
        seed: 2,
        device: Device::Cpu,
    };
    let scope = Params::new(&src).pp("decoder").pp("block").pp(3);
    let block = DecoderBlock::load(&scope, (cin, cout), s, true).expect("block");
    let x: Vec<f32> = (0..l * cin)
        .map(|i| ((i % 97) as f32 - 48.0) / 48.0)
        .collect();
    let flops = 2.0 * (cin * cout * 2 * s * l) as f64
        + 3.0 * (2.0 * (cout * cout * 7 * l * s) as f64 + 2.0 * (cout * cout * l * s) as f64);
    let mut g = c.benchmark_group("vae_block3_1s");
    g.sample_size(10).measurement_time(Duration::from_secs(10));
    g.throughput(Throughput::Elements(flops as u64));
    let (mut a, mut b) = (Vec::new(), Vec::new());
    g.bench_function("decode", |bch| {
        bch.iter(|| {
            a.clear();
            a.extend_from_slice(&x);
            black_box(block.forward_time(&mut a, &mut b, l).expect("block"))
        })
    });
    g.finish();
}

criterion_group!(benches, dit_layer, vae_block);
criterion_main!(benches);
