//! The kernels against each other and against a float64 reference.

use super::*;

/// Deterministic values in [−1, 1).
fn values(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect()
}

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

/// `[m, n]` product of a (possibly overlapping) view and `w` `[n, k]`, in f64.
fn reference(a: Lhs<'_>, w: &[f32], n: usize, bias: Option<&[f32]>) -> Vec<f64> {
    let k = a.cols;
    let mut out = vec![0f64; a.rows * n];
    for i in 0..a.rows {
        for j in 0..n {
            let mut s = bias.map_or(0.0, |b| b[j] as f64);
            for kk in 0..k {
                s += a.data[i * a.row_stride + kk] as f64 * w[j * k + kk] as f64;
            }
            out[i * n + j] = s;
        }
    }
    out
}

fn run(
    isa: Isa,
    a: Lhs<'_>,
    b: &PackedMatrix,
    init: Init<'_>,
    start: &[f32],
    threads: usize,
) -> Vec<f32> {
    let mut c = start.to_vec();
    gemm_with(isa, Out::dense(&mut c, a.rows, b.n()), a, b, init, threads);
    c
}

/// Every instruction set gives the portable kernel's bytes, for every init mode, ragged shapes
/// (M not a multiple of any MR, N not a multiple of 32, K over several K blocks) and 1 or 2
/// threads; and the bytes are close to a float64 reference.
#[test]
fn every_isa_gives_the_portable_bytes() {
    for (m, k, n) in [
        (1, 3, 1),
        (13, 70, 33),
        (37, 600, 70),
        (125, 257, 96),
        (5, 512, 300),
    ] {
        let w = values(n * k, 1);
        let x = values(m * k, 2);
        let bias = values(n, 3);
        let start = values(m * n, 4);
        let b = PackedMatrix::from_nxk(&w, n, k, Precision::F32);
        let a = Lhs::dense(&x, m, k);
        for (name, init) in [
            ("zero", Init::Zero),
            ("bias", Init::Bias(&bias)),
            ("accumulate", Init::Accumulate),
        ] {
            let want = run(Isa::Portable, a, &b, init, &start, 1);
            let r = reference(
                a,
                &w,
                n,
                match init {
                    Init::Bias(b) => Some(b),
                    _ => None,
                },
            );
            for (i, (&g, &r)) in want.iter().zip(&r).enumerate() {
                let r = if matches!(init, Init::Accumulate) {
                    r + start[i] as f64
                } else {
                    r
                };
                assert!(
                    (g as f64 - r).abs() <= 1e-5 * (k as f64).sqrt(),
                    "{m}×{k}×{n} {name} [{i}]: {g} vs {r}"
                );
            }
            for isa in Isa::available() {
                for threads in [1, 2, 3] {
                    let got = run(isa, a, &b, init, &start, threads);
                    assert_eq!(
                        bits(&got),
                        bits(&want),
                        "{isa:?} {m}×{k}×{n} {name} threads {threads}"
                    );
                }
            }
        }
    }
}

/// A row's bytes do not depend on how many rows are multiplied with it, nor on the threads.
#[test]
fn rows_are_independent_of_m() {
    let (k, n) = (300, 200);
    let w = values(n * k, 5);
    let x = values(1000 * k, 6);
    let bias = values(n, 7);
    for precision in [Precision::F32, Precision::Bf16] {
        let b = PackedMatrix::from_nxk(&w, n, k, precision);
        for isa in Isa::available() {
            let full = run(
                isa,
                Lhs::dense(&x, 1000, k),
                &b,
                Init::Bias(&bias),
                &vec![0.0; 1000 * n],
                2,
            );
            for (r0, m) in [
                (0usize, 1usize),
                (7, 1),
                (125, 125),
                (500, 250),
                (999, 1),
                (3, 13),
            ] {
                let part = run(
                    isa,
                    Lhs::dense(&x[r0 * k..(r0 + m) * k], m, k),
                    &b,
                    Init::Bias(&bias),
                    &vec![0.0; m * n],
                    1,
                );
                assert_eq!(
                    bits(&part),
                    bits(&full[r0 * n..(r0 + m) * n]),
                    "{precision:?} {isa:?} rows {r0}+{m}"
                );
            }
        }
    }
}

/// Overlapping input rows (a convolution window read in place) and a strided output.
#[test]
fn overlapping_rows_and_strided_output() {
    let (cin, taps, rows, n) = (5, 7, 40, 20);
    let win = values((rows + taps - 1) * cin, 8);
    let k = taps * cin;
    let a = Lhs {
        data: &win,
        rows,
        cols: k,
        row_stride: cin,
    };
    let w = values(n * k, 9);
    let b = PackedMatrix::from_nxk(&w, n, k, Precision::F32);
    let r = reference(a, &w, n, None);
    for isa in Isa::available() {
        let stride = n + 3;
        let mut c = vec![7f32; rows * stride];
        gemm_with(
            isa,
            Out {
                data: &mut c,
                rows,
                cols: n,
                row_stride: stride,
            },
            a,
            &b,
            Init::Zero,
            2,
        );
        for i in 0..rows {
            for j in 0..n {
                assert!(
                    (c[i * stride + j] as f64 - r[i * n + j]).abs() < 1e-4,
                    "{isa:?} ({i}, {j})"
                );
            }
            assert_eq!(
                &c[i * stride + n..(i + 1) * stride],
                &[7.0; 3],
                "{isa:?}: padding touched"
            );
        }
    }
}

/// bf16 weights: the native and portable kernels agree closely, and both are within the bf16
/// rounding of the f32 product (relative to the output's scale).
#[test]
fn bf16_is_close_to_f32() {
    for (m, k, n) in [(13, 70, 33), (125, 513, 96)] {
        let w = values(n * k, 10);
        let x = values(m * k, 11);
        let bias = values(n, 12);
        let a = Lhs::dense(&x, m, k);
        let f = PackedMatrix::from_nxk(&w, n, k, Precision::F32);
        let h = f.with_precision(Precision::Bf16);
        assert_eq!(
            h.bytes() * 2,
            f.bytes() + if k % 2 == 1 { f.bytes() / k } else { 0 }
        );
        let zero = vec![0f32; m * n];
        let want = run(Isa::Portable, a, &f, Init::Bias(&bias), &zero, 1);
        let scale = want.iter().fold(0f32, |s, v| s.max(v.abs()));
        let portable = run(Isa::Portable, a, &h, Init::Bias(&bias), &zero, 1);
        for isa in Isa::available() {
            let got = run(isa, a, &h, Init::Bias(&bias), &zero, 2);
            for i in 0..m * n {
                assert!(
                    (got[i] - want[i]).abs() <= 2e-2 * scale,
                    "{isa:?} {m}×{k}×{n} [{i}]: {} vs {}",
                    got[i],
                    want[i]
                );
                assert!(
                    (got[i] - portable[i]).abs() <= 1e-5 * scale,
                    "{isa:?} vs portable [{i}]"
                );
            }
        }
    }
}

/// Packing keeps every value; side-by-side columns give the separate products' bytes.
#[test]
fn packing_round_trips_and_concatenates() {
    let (k, n1, n2) = (67, 40, 33);
    let w1 = values(n1 * k, 13);
    let w2 = values(n2 * k, 14);
    let p1 = PackedMatrix::from_nxk(&w1, n1, k, Precision::F32);
    let p2 = PackedMatrix::from_nxk(&w2, n2, k, Precision::F32);
    assert_eq!(p1.to_nxk(), w1);
    let kxn: Vec<f32> = (0..k * n1).map(|i| w1[(i % n1) * k + i / n1]).collect();
    assert_eq!(
        PackedMatrix::from_kxn(&kxn, k, n1, Precision::F32).to_nxk(),
        w1
    );
    let h = p1.with_precision(Precision::Bf16);
    for (g, w) in h.to_nxk().iter().zip(&w1) {
        assert_eq!(*g, bf16_value(bf16_bits(*w)));
    }
    let both = PackedMatrix::concat_columns(&[&p1, &p2]);
    assert_eq!((both.k(), both.n()), (k, n1 + n2));
    let x = values(9 * k, 15);
    let a = Lhs::dense(&x, 9, k);
    for isa in Isa::available() {
        let c = run(isa, a, &both, Init::Zero, &vec![0.0; 9 * (n1 + n2)], 2);
        let c1 = run(isa, a, &p1, Init::Zero, &vec![0.0; 9 * n1], 1);
        let c2 = run(isa, a, &p2, Init::Zero, &vec![0.0; 9 * n2], 1);
        for i in 0..9 {
            assert_eq!(
                bits(&c[i * (n1 + n2)..i * (n1 + n2) + n1]),
                bits(&c1[i * n1..(i + 1) * n1])
            );
            assert_eq!(
                bits(&c[i * (n1 + n2) + n1..(i + 1) * (n1 + n2)]),
                bits(&c2[i * n2..(i + 1) * n2])
            );
        }
    }
}
