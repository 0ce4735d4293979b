//! The packed-weight GEMM (`demon_acestep::gemm`) against the per-row `gemm`-crate products it
//! replaced, on the DiT's projection shapes: the 20 M side-by-side model (hidden 512, MLP 1536)
//! at batch 8 (M = 1000 patch rows) and one 2B MLP projection for a 60 s song (M = 750).
//! Run: `cargo bench -p demon-acestep --bench gemm` (FLOP/s are printed as "elements/s").

use std::hint::black_box;
use std::time::Duration;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use demon_acestep::cpu;
use demon_acestep::gemm::{self, Init, Lhs, Out, PackedMatrix, Precision};

fn values(n: usize, seed: u32) -> Vec<f32> {
    (0..n)
        .map(|i| (((i as u32).wrapping_mul(2_654_435_761) ^ seed) % 2001) as f32 / 1000.0 - 1.0)
        .collect()
}

fn projections(c: &mut Criterion) {
    let threads = cpu::threads();
    // (name, rows per batch row, batch rows, K, N)
    let shapes = [
        ("20m_b8_qkv_512x512", 125usize, 8usize, 512usize, 512usize),
        ("20m_b8_mlp_up_512x1536", 125, 8, 512, 1536),
        ("20m_b8_mlp_down_1536x512", 125, 8, 1536, 512),
        ("2b_60s_mlp_up_2048x6144", 750, 1, 2048, 6144),
    ];
    for (name, rows, batch, k, n) in shapes {
        let m = rows * batch;
        let w = values(n * k, 1);
        let x = values(m * k, 2);
        let mut y = vec![0f32; m * n];
        let mut g = c.benchmark_group(name);
        g.sample_size(10).measurement_time(Duration::from_secs(6));
        g.throughput(Throughput::Elements(2 * (m * k * n) as u64));
        g.bench_function("gemm_crate_per_row", |b| {
            b.iter(|| {
                for r in 0..batch {
                    cpu::linear_rows(
                        &mut y[r * rows * n..(r + 1) * rows * n],
                        &x[r * rows * k..(r + 1) * rows * k],
                        &w,
                        (rows, k, n),
                        false,
                    );
                }
                black_box(&y);
            })
        });
        for precision in [Precision::F32, Precision::Bf16] {
            let p = PackedMatrix::from_nxk(&w, n, k, precision);
            g.bench_function(format!("packed_{}", precision.name()), |b| {
                b.iter(|| {
                    gemm::gemm(
                        Out::dense(&mut y, m, n),
                        Lhs::dense(&x, m, k),
                        &p,
                        Init::Zero,
                        threads,
                    );
                    black_box(&y);
                })
            });
        }
        g.finish();
    }
}

criterion_group!(benches, projections);
criterion_main!(benches);
