//! CPU kernels shared by the VAE and the DiT: a bounds-checked wrapper around the `gemm` crate's
//! f32 matrix product (the kernel candle itself calls), dynamic tiling of an output buffer over
//! the worker threads with per-worker scratch space, and a vectorised Snake activation.
//!
//! Why these exist (measured on the 2-core AVX-512 development machine, `docs/performance.md`):
//! - candle's CPU ops make one pass over memory per elementary operation and allocate every
//!   intermediate; the VAE's largest activations are hundreds of MB, so fused passes over tiles
//!   that stay in the L2 cache are much faster;
//! - `f32::sin` is a scalar libm call (≈8–14 ns per value here); Snake evaluates it ≈800 M times
//!   per 10 s of decoded audio. The polynomial below, compiled for AVX2/AVX-512 through `pulp`'s
//!   runtime dispatch, takes ≈0.6 ns per value;
//! - `gemm` run with one thread per tile keeps both cores busy on shapes where its own threading
//!   does not (few rows, or many small products).

use std::sync::Mutex;

use gemm::{Parallelism, gemm};
use pulp::{Simd, WithSimd};

/// Worker threads used by the kernels: rayon's pool size (`RAYON_NUM_THREADS`, else the number
/// of logical CPUs).
pub fn threads() -> usize {
    rayon::current_num_threads().max(1)
}

/// `true` when a `rows × cols` view with `row_stride` addresses only elements of a slice of
/// `len` (no overflow either).
fn view_fits(len: usize, rows: usize, cols: usize, row_stride: usize) -> bool {
    rows == 0
        || cols == 0
        || (rows - 1)
            .checked_mul(row_stride)
            .and_then(|v| v.checked_add(cols))
            .is_some_and(|end| end <= len)
}

/// A row-major f32 matrix view with unit column stride. Rows may overlap (`row_stride < cols`):
/// that is how a convolution window over a time-major signal is read without an im2col copy.
#[derive(Clone, Copy, Debug)]
pub struct Mat<'a> {
    pub data: &'a [f32],
    pub rows: usize,
    pub cols: usize,
    pub row_stride: usize,
}

impl<'a> Mat<'a> {
    /// A dense `rows × cols` matrix.
    pub fn dense(data: &'a [f32], rows: usize, cols: usize) -> Self {
        Self {
            data,
            rows,
            cols,
            row_stride: cols,
        }
    }

    /// `true` when every element the view addresses lies inside `data`.
    fn in_bounds(&self) -> bool {
        view_fits(self.data.len(), self.rows, self.cols, self.row_stride)
    }
}

/// A mutable row-major f32 matrix view with unit column stride; rows never overlap.
#[derive(Debug)]
pub struct MatMut<'a> {
    pub data: &'a mut [f32],
    pub rows: usize,
    pub cols: usize,
    pub row_stride: usize,
}

impl<'a> MatMut<'a> {
    pub fn dense(data: &'a mut [f32], rows: usize, cols: usize) -> Self {
        Self {
            data,
            rows,
            cols,
            row_stride: cols,
        }
    }

    fn in_bounds(&self) -> bool {
        view_fits(self.data.len(), self.rows, self.cols, self.row_stride)
    }
}

/// How the right-hand side of [`matmul`] is stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rhs {
    /// `[K, N]` row-major.
    KxN,
    /// `[N, K]` row-major, i.e. a PyTorch `Linear` weight used as `Wᵀ`.
    NxK,
}

/// `dst (+)= a · b` on one thread: `a` `[M, K]`, `b` `[K, N]` (or `[N, K]` when `rhs` is
/// [`Rhs::NxK`], given as a dense slice), `dst` `[M, N]`. With `accumulate` the product is added
/// to what `dst` holds (bias, residual), otherwise `dst` is overwritten.
///
/// # Panics
/// When the shapes disagree or a view reaches outside its slice (a programming error inside this
/// crate; user input is validated before it reaches a kernel).
pub fn matmul(dst: MatMut<'_>, a: Mat<'_>, b: &[f32], rhs: Rhs, accumulate: bool) {
    let (k, n) = (a.cols, dst.cols);
    let b = match rhs {
        Rhs::KxN => Mat::dense(b, k, n),
        Rhs::NxK => Mat::dense(b, n, k),
    };
    gemm_view(dst, a, b, rhs, accumulate, 1.0);
}

/// `dst (+)= scale · a · b` on one thread, with `b` a strided view: `[K, N]` for [`Rhs::KxN`],
/// `[N, K]` (used transposed) for [`Rhs::NxK`].
///
/// # Panics
/// As [`matmul`].
pub fn gemm_view(dst: MatMut<'_>, a: Mat<'_>, b: Mat<'_>, rhs: Rhs, accumulate: bool, scale: f32) {
    let (m, k, n) = (a.rows, a.cols, dst.cols);
    let (bk, bn) = match rhs {
        Rhs::KxN => (b.rows, b.cols),
        Rhs::NxK => (b.cols, b.rows),
    };
    assert_eq!(dst.rows, m, "matmul: dst has {} rows, lhs {m}", dst.rows);
    assert_eq!(
        (bk, bn),
        (k, n),
        "matmul: rhs is {bk}×{bn}, expected {k}×{n}"
    );
    assert!(dst.row_stride >= n, "matmul: dst rows overlap");
    assert!(
        a.in_bounds() && b.in_bounds() && dst.in_bounds(),
        "matmul: view out of bounds"
    );
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        if !accumulate {
            for r in 0..m {
                dst.data[r * dst.row_stride..r * dst.row_stride + n].fill(0.0);
            }
        }
        return;
    }
    let (rhs_cs, rhs_rs) = match rhs {
        Rhs::KxN => (1isize, b.row_stride as isize),
        Rhs::NxK => (b.row_stride as isize, 1isize),
    };
    // SAFETY: the asserts above establish that every element gemm addresses is inside its slice:
    // lhs element (i, p) at i·row_stride + p ≤ (m−1)·row_stride + k − 1 < a.data.len(); rhs
    // element (p, j) likewise inside b.data for either layout; dst element (i, j) inside
    // dst.data, whose rows do not overlap (row_stride ≥ n), so gemm only writes distinct
    // elements of the exclusively borrowed dst. The lhs and rhs are shared borrows that cannot
    // alias the mutable dst. `Parallelism::None`: gemm spawns no threads.
    unsafe {
        gemm(
            m,
            n,
            k,
            dst.data.as_mut_ptr(),
            1,
            dst.row_stride as isize,
            accumulate,
            a.data.as_ptr(),
            1,
            a.row_stride as isize,
            b.data.as_ptr(),
            rhs_cs,
            rhs_rs,
            1.0,
            scale,
            false,
            false,
            false,
            Parallelism::None,
        );
    }
}

/// `dst (+)= x · Wᵀ` for a PyTorch-layout weight `w` `[n, k]`, `x` dense `[m, k]`, `dst` dense
/// `[m, n]`, with the rows split over the worker threads (one single-threaded GEMM per part:
/// on the 2-core machine this keeps both cores busy for the 125–750-row products of the DiT,
/// where `gemm`'s own threading often does not). The split depends only on `m`, so a row's
/// result does not depend on anything but its own input.
pub fn linear_rows(
    dst: &mut [f32],
    x: &[f32],
    w: &[f32],
    (m, k, n): (usize, usize, usize),
    accumulate: bool,
) {
    assert_eq!(dst.len(), m * n, "linear_rows: output size");
    assert_eq!(x.len(), m * k, "linear_rows: input size");
    assert_eq!(w.len(), n * k, "linear_rows: weight size");
    let parts = threads().min(m.div_ceil(16)).max(1);
    let per = m.div_ceil(parts).max(1);
    for_each_tile(
        dst,
        per * n,
        || (),
        |i, d, _| {
            let rows = d.len() / n.max(1);
            let a = Mat::dense(&x[i * per * k..(i * per + rows) * k], rows, k);
            matmul(MatMut::dense(d, rows, n), a, w, Rhs::NxK, accumulate);
        },
    );
}

/// Split `out` into tiles of `tile_len` values and run `f(tile_index, tile, scratch)` on every
/// tile, spread over [`threads`] workers that each take the next free tile (so a core slowed by
/// another process does not hold the others up). Each worker builds its scratch once with
/// `init`. Tiles are disjoint, and what a tile computes does not depend on which worker runs it,
/// so results are deterministic.
pub fn for_each_tile<S, I, F>(out: &mut [f32], tile_len: usize, init: I, f: F)
where
    I: Fn() -> S + Sync,
    F: Fn(usize, &mut [f32], &mut S) + Sync,
{
    let tile_len = tile_len.max(1);
    let tiles = out.len().div_ceil(tile_len);
    let workers = threads().min(tiles);
    if workers <= 1 {
        let mut s = init();
        for (i, t) in out.chunks_mut(tile_len).enumerate() {
            f(i, t, &mut s);
        }
        return;
    }
    let queue = Mutex::new(out.chunks_mut(tile_len).enumerate());
    let (queue, init, f) = (&queue, &init, &f);
    rayon::scope(|scope| {
        for _ in 0..workers {
            scope.spawn(move |_| {
                let mut s = init();
                loop {
                    // A poisoned lock only means another worker panicked; that panic propagates
                    // out of the scope anyway.
                    let next = queue.lock().unwrap_or_else(|e| e.into_inner()).next();
                    match next {
                        Some((i, t)) => f(i, t, &mut s),
                        None => break,
                    }
                }
            });
        }
    });
}

/// Run `f(offset, part)` on about [`threads`] consecutive pieces of `out`, each a whole number
/// of `unit`-long rows, in parallel; `offset` is the index of the piece's first value in `out`.
pub fn for_each_part<F>(out: &mut [f32], unit: usize, f: F)
where
    F: Fn(usize, &mut [f32]) + Sync,
{
    let unit = unit.max(1);
    let rows = out.len() / unit;
    let per = rows.div_ceil(threads()).max(1) * unit;
    for_each_tile(out, per, || (), |i, t, _| f(i * per, t));
}

/// `sin(z)²`: reduced by multiples of π (the square has period π, so the sign of the reduced
/// sine does not matter), then an odd Taylor polynomial to degree 13 on [−π/2, π/2]. Absolute
/// error ≤ 3e−7 for |z| < 1000 (checked against f64 in the tests); branch-free so it
/// vectorises.
#[inline(always)]
pub fn sin_squared(z: f32) -> f32 {
    // π split so that k·P1 and k·P2 are exact for |k| < 2¹⁶ (Cody–Waite reduction).
    const P1: f32 = 3.140625;
    const P2: f32 = 9.675_026e-4;
    const P3: f32 = 1.509_958e-7;
    let k = (z * std::f32::consts::FRAC_1_PI).round_ties_even();
    let r = ((z - k * P1) - k * P2) - k * P3;
    let r2 = r * r;
    let q = (((((r2 * (1.0 / 6_227_020_800.0) - 1.0 / 39_916_800.0) * r2 + 1.0 / 362_880.0) * r2
        - 1.0 / 5040.0)
        * r2
        + 1.0 / 120.0)
        * r2
        - 1.0 / 6.0)
        * r2;
    let s = r + r * q;
    s * s
}

/// Snake `x + inv_beta·sin²(alpha·x)` of one value.
#[inline(always)]
pub fn snake_value(x: f32, alpha: f32, inv_beta: f32) -> f32 {
    x + inv_beta * sin_squared(alpha * x)
}

/// Per-channel Snake parameters, `α = exp(alpha)` and `1/(β + 1e−9)` with `β = exp(beta)`.
#[derive(Clone, Debug)]
pub struct SnakeParams {
    pub alpha: Vec<f32>,
    pub inv_beta: Vec<f32>,
}

impl SnakeParams {
    pub fn channels(&self) -> usize {
        self.alpha.len()
    }

    /// `dst = snake(src)` for time-major rows `[n, C]` (`dst.len() == src.len()`, a multiple
    /// of C). Vectorised for the best instruction set of this CPU.
    pub fn apply(&self, dst: &mut [f32], src: &[f32]) {
        pulp::Arch::new().dispatch(SnakeRows { dst, src, p: self });
    }

    /// In place on time-major rows `[n, C]`.
    pub fn apply_in_place(&self, x: &mut [f32]) {
        pulp::Arch::new().dispatch(SnakeInPlace { x, p: self });
    }
}

/// `dst = snake(src)` with one `alpha`/`inv_beta` for every value (a channel-major row).
pub fn snake_channel(dst: &mut [f32], src: &[f32], alpha: f32, inv_beta: f32) {
    pulp::Arch::new().dispatch(SnakeChannel {
        dst,
        src,
        alpha,
        inv_beta,
    });
}

struct SnakeChannel<'a> {
    dst: &'a mut [f32],
    src: &'a [f32],
    alpha: f32,
    inv_beta: f32,
}

impl WithSimd for SnakeChannel<'_> {
    type Output = ();
    #[inline(always)]
    fn with_simd<S: Simd>(self, _simd: S) {
        for (o, &x) in self.dst.iter_mut().zip(self.src) {
            *o = snake_value(x, self.alpha, self.inv_beta);
        }
    }
}

struct SnakeRows<'a> {
    dst: &'a mut [f32],
    src: &'a [f32],
    p: &'a SnakeParams,
}

impl WithSimd for SnakeRows<'_> {
    type Output = ();
    // Inlined into pulp's target-feature wrapper, so the loops below are auto-vectorised for
    // AVX2 or AVX-512 when the CPU has them.
    #[inline(always)]
    fn with_simd<S: Simd>(self, _simd: S) {
        let c = self.p.channels();
        for (d, s) in self.dst.chunks_exact_mut(c).zip(self.src.chunks_exact(c)) {
            for (((o, &x), &a), &ib) in d.iter_mut().zip(s).zip(&self.p.alpha).zip(&self.p.inv_beta)
            {
                *o = snake_value(x, a, ib);
            }
        }
    }
}

struct SnakeInPlace<'a> {
    x: &'a mut [f32],
    p: &'a SnakeParams,
}

impl WithSimd for SnakeInPlace<'_> {
    type Output = ();
    #[inline(always)]
    fn with_simd<S: Simd>(self, _simd: S) {
        let c = self.p.channels();
        for row in self.x.chunks_exact_mut(c) {
            for ((v, &a), &ib) in row.iter_mut().zip(&self.p.alpha).zip(&self.p.inv_beta) {
                *v = snake_value(*v, a, ib);
            }
        }
    }
}

/// `out[m][n] += Σ_k a[m][k]·w[n][k]` for a handful of outputs `n` (a GEMM with N this small
/// wastes most of a SIMD microkernel): one vectorised dot product per output value. `a` rows may
/// overlap (a convolution window).
pub fn dot_rows(out: &mut [f32], n: usize, a: Mat<'_>, w: &[f32]) {
    assert!(a.in_bounds(), "dot_rows: view out of bounds");
    assert_eq!(out.len(), a.rows * n, "dot_rows: output size");
    assert_eq!(w.len(), a.cols * n, "dot_rows: weight size");
    pulp::Arch::new().dispatch(DotRows { out, n, a, w });
}

struct DotRows<'a> {
    out: &'a mut [f32],
    n: usize,
    a: Mat<'a>,
    w: &'a [f32],
}

impl WithSimd for DotRows<'_> {
    type Output = ();
    #[inline(always)]
    fn with_simd<S: Simd>(self, _simd: S) {
        let k = self.a.cols;
        for (m, o) in self.out.chunks_exact_mut(self.n).enumerate() {
            let row = &self.a.data[m * self.a.row_stride..m * self.a.row_stride + k];
            for (j, v) in o.iter_mut().enumerate() {
                *v += dot(row, &self.w[j * k..(j + 1) * k]);
            }
        }
    }
}

/// Dot product with 16 independent partial sums (vectorisable without reassociating a single
/// chain; the summation order is fixed, so results are deterministic).
#[inline(always)]
fn dot(a: &[f32], b: &[f32]) -> f32 {
    const L: usize = 16;
    let mut acc = [0f32; L];
    let (ac, ar) = a.split_at(a.len() / L * L);
    let (bc, br) = b.split_at(ac.len());
    for (x, y) in ac.chunks_exact(L).zip(bc.chunks_exact(L)) {
        for i in 0..L {
            acc[i] += x[i] * y[i];
        }
    }
    let mut s = 0f32;
    for (x, y) in ar.iter().zip(br) {
        s += x * y;
    }
    acc.iter().sum::<f32>() + s
}

/// `eˣ` for the softmax and SiLU: `2ⁿ·e^r` with `n = round(x·log₂e)`, `|r| ≤ ln2/2`, and a
/// degree-7 Taylor polynomial (relative error < 1e−8 before rounding); 0 below −87.3 (where f32
/// leaves the normal range; the true value is < 1.2e−38) and clamped at 88.7. Branch-free.
#[inline(always)]
pub fn exp_approx(x: f32) -> f32 {
    const LN2_HI: f32 = 0.693_145_75;
    const LN2_LO: f32 = 1.428_606_8e-6;
    let xc = x.clamp(-87.3, 88.7);
    let n = (xc * std::f32::consts::LOG2_E).round_ties_even();
    let r = (xc - n * LN2_HI) - n * LN2_LO;
    let p = 1.0
        + r * (1.0
            + r * (0.5
                + r * (1.0 / 6.0
                    + r * (1.0 / 24.0
                        + r * (1.0 / 120.0 + r * (1.0 / 720.0 + r * (1.0 / 5040.0)))))));
    let scale = f32::from_bits(((n as i32 + 127) as u32) << 23);
    if x < -87.3 { 0.0 } else { p * scale }
}

/// Sum with 16 independent partial sums (vectorisable; fixed order, so deterministic).
#[inline(always)]
fn sum16(a: &[f32], f: impl Fn(f32) -> f32) -> f32 {
    const L: usize = 16;
    let mut acc = [0f32; L];
    let (ac, ar) = a.split_at(a.len() / L * L);
    for x in ac.chunks_exact(L) {
        for i in 0..L {
            acc[i] += f(x[i]);
        }
    }
    let mut s = 0f32;
    for &x in ar {
        s += f(x);
    }
    acc.iter().sum::<f32>() + s
}

/// Row-wise softmax of attention scores in place: `rows` `[n, cols]` for query positions
/// `q0 .. q0 + n` against keys `k0 .. k0 + cols`. With `window`, only keys with `|i − j| ≤ w`
/// take part and every other entry becomes exactly 0 (what the reference's `finfo.min` additive
/// mask gives after `exp`); `bias` (indexed by key) is added first (key padding).
pub struct Softmax<'a> {
    pub rows: &'a mut [f32],
    pub cols: usize,
    pub q0: usize,
    pub k0: usize,
    pub window: Option<usize>,
    pub bias: Option<&'a [f32]>,
}

impl Softmax<'_> {
    pub fn run(self) {
        pulp::Arch::new().dispatch(self);
    }
}

impl WithSimd for Softmax<'_> {
    type Output = ();
    #[inline(always)]
    fn with_simd<S: Simd>(self, _simd: S) {
        let cols = self.cols;
        if cols == 0 {
            return;
        }
        for (r, row) in self.rows.chunks_exact_mut(cols).enumerate() {
            let i = self.q0 + r;
            let (mut lo, mut hi) = (0, cols);
            if let Some(w) = self.window {
                lo = (i.saturating_sub(w)).saturating_sub(self.k0).min(cols);
                hi = (i + w + 1).saturating_sub(self.k0).min(cols);
            }
            if lo >= hi {
                // No visible key: uniform, as a fully masked reference row.
                row.fill(1.0 / cols as f32);
                continue;
            }
            row[..lo].fill(0.0);
            row[hi..].fill(0.0);
            let band = &mut row[lo..hi];
            if let Some(b) = self.bias {
                for (v, &bv) in band.iter_mut().zip(&b[self.k0 + lo..self.k0 + hi]) {
                    *v += bv;
                }
            }
            let m = band.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b));
            for v in band.iter_mut() {
                *v = exp_approx(*v - m);
            }
            let inv = 1.0 / sum16(band, |v| v);
            for v in band.iter_mut() {
                *v *= inv;
            }
        }
    }
}

/// RMSNorm of every row of `src` `[n, C]` into `dst`: `x / sqrt(mean(x²) + ε) · w`, then with
/// `modulation = (scale, shift)` the AdaLN `· (1 + scale) + shift`.
pub struct RmsRows<'a> {
    pub dst: &'a mut [f32],
    pub src: &'a [f32],
    pub weight: &'a [f32],
    pub eps: f32,
    /// `(1 + scale, shift)`, each `[C]`.
    pub modulation: Option<(&'a [f32], &'a [f32])>,
}

impl RmsRows<'_> {
    pub fn run(self) {
        pulp::Arch::new().dispatch(self);
    }
}

impl WithSimd for RmsRows<'_> {
    type Output = ();
    #[inline(always)]
    fn with_simd<S: Simd>(self, _simd: S) {
        let c = self.weight.len();
        for (o, x) in self.dst.chunks_exact_mut(c).zip(self.src.chunks_exact(c)) {
            let inv = 1.0 / (sum16(x, |v| v * v) / c as f32 + self.eps).sqrt();
            for ((o, &x), &w) in o.iter_mut().zip(x).zip(self.weight) {
                *o = x * inv * w;
            }
            if let Some((scale1, shift)) = self.modulation {
                for ((o, &s), &b) in o.iter_mut().zip(scale1).zip(shift) {
                    *o = *o * s + b;
                }
            }
        }
    }
}

/// Per-head RMSNorm (weight `[D]`) of `x` `[n, heads·D]` in place, then, with `rope`, rotary
/// embedding `x·cos + rotate_half(x)·sin` (`rotate_half(x) = [−x₂, x₁]`) with tables `[n, D]`.
pub struct HeadNormRope<'a> {
    pub x: &'a mut [f32],
    pub heads: usize,
    pub head_dim: usize,
    pub weight: &'a [f32],
    pub eps: f32,
    pub rope: Option<(&'a [f32], &'a [f32])>,
}

impl HeadNormRope<'_> {
    pub fn run(self) {
        pulp::Arch::new().dispatch(self);
    }
}

impl WithSimd for HeadNormRope<'_> {
    type Output = ();
    #[inline(always)]
    fn with_simd<S: Simd>(self, _simd: S) {
        let d = self.head_dim;
        let half = d / 2;
        let mut tmp = vec![0f32; d];
        for (r, row) in self.x.chunks_exact_mut(self.heads * d).enumerate() {
            for head in row.chunks_exact_mut(d) {
                let inv = 1.0 / (sum16(head, |v| v * v) / d as f32 + self.eps).sqrt();
                for (v, &w) in head.iter_mut().zip(self.weight) {
                    *v = *v * inv * w;
                }
                if let Some((cos, sin)) = self.rope {
                    let (c, s) = (&cos[r * d..(r + 1) * d], &sin[r * d..(r + 1) * d]);
                    tmp.copy_from_slice(head);
                    for i in 0..half {
                        head[i] = tmp[i] * c[i] - tmp[i + half] * s[i];
                    }
                    for i in half..d {
                        head[i] = tmp[i] * c[i] + tmp[i - half] * s[i];
                    }
                }
            }
        }
    }
}

/// `g = silu(g) · u` element-wise (the SwiGLU MLP's gate).
pub fn silu_mul(g: &mut [f32], u: &[f32]) {
    struct Op<'a>(&'a mut [f32], &'a [f32]);
    impl WithSimd for Op<'_> {
        type Output = ();
        #[inline(always)]
        fn with_simd<S: Simd>(self, _simd: S) {
            for (g, &u) in self.0.iter_mut().zip(self.1) {
                *g = *g / (1.0 + exp_approx(-*g)) * u;
            }
        }
    }
    pulp::Arch::new().dispatch(Op(g, u));
}

/// `x += a · gate` row-wise (`gate` `[C]`, `x`/`a` `[n, C]`): the gated residual of AdaLN.
pub fn add_gated(x: &mut [f32], a: &[f32], gate: &[f32]) {
    struct Op<'a>(&'a mut [f32], &'a [f32], &'a [f32]);
    impl WithSimd for Op<'_> {
        type Output = ();
        #[inline(always)]
        fn with_simd<S: Simd>(self, _simd: S) {
            let c = self.2.len();
            for (x, a) in self.0.chunks_exact_mut(c).zip(self.1.chunks_exact(c)) {
                for ((x, &a), &g) in x.iter_mut().zip(a).zip(self.2) {
                    *x += a * g;
                }
            }
        }
    }
    pulp::Arch::new().dispatch(Op(x, a, gate));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sin_squared_is_accurate() {
        let mut worst = 0f64;
        for i in 0..400_000 {
            let z = (i as f32 - 200_000.0) * 5e-3;
            let want = (z as f64).sin().powi(2);
            worst = worst.max((sin_squared(z) as f64 - want).abs());
        }
        assert!(worst < 3e-7, "max error {worst:e}");
        let p = SnakeParams {
            alpha: vec![0.5, 2.0, 7.0],
            inv_beta: vec![1.0, 0.3, 4.0],
        };
        let x: Vec<f32> = (0..300).map(|i| (i as f32 * 0.173).sin() * 4.0).collect();
        let mut y = vec![0f32; x.len()];
        p.apply(&mut y, &x);
        for (i, (&a, &b)) in x.iter().zip(&y).enumerate() {
            let c = i % 3;
            let want = a + p.inv_beta[c] * (p.alpha[c] * a).sin().powi(2);
            assert!((b - want).abs() < 2e-6, "{i}: {b} vs {want}");
        }
        let mut z = x.clone();
        p.apply_in_place(&mut z);
        assert_eq!(z, y);
    }

    #[test]
    fn matmul_with_overlapping_rows_and_dot_rows() {
        // a window view: row i = data[i..i + 3]
        let data: Vec<f32> = (0..10).map(|v| v as f32).collect();
        let a = Mat {
            data: &data,
            rows: 8,
            cols: 3,
            row_stride: 1,
        };
        let w = [1.0f32, 0.0, 2.0, 0.5, 1.0, -1.0]; // [K=3, N=2]
        let mut out = vec![1f32; 16];
        matmul(MatMut::dense(&mut out, 8, 2), a, &w, Rhs::KxN, true);
        for i in 0..8 {
            let x = [i as f32, i as f32 + 1.0, i as f32 + 2.0];
            assert_eq!(out[2 * i], 1.0 + x[0] + 2.0 * x[1] + x[2]);
            assert_eq!(out[2 * i + 1], 1.0 + 0.5 * x[1] - x[2]);
        }
        let wt = [1.0f32, 2.0, 1.0, 0.0, 0.5, -1.0]; // [N=2, K=3]
        let mut out2 = vec![1f32; 16];
        dot_rows(&mut out2, 2, a, &wt);
        assert_eq!(out, out2);
        let mut out3 = vec![0f32; 16];
        matmul(MatMut::dense(&mut out3, 8, 2), a, &wt, Rhs::NxK, false);
        for (x, y) in out3.iter().zip(&out) {
            assert_eq!(x + 1.0, *y);
        }
    }

    #[test]
    fn tiles_cover_the_output_once() {
        let mut v = vec![0f32; 1003];
        for_each_tile(
            &mut v,
            10,
            || 0usize,
            |i, t, calls| {
                *calls += 1;
                for (j, x) in t.iter_mut().enumerate() {
                    *x += (i * 10 + j) as f32;
                }
            },
        );
        for (i, x) in v.iter().enumerate() {
            assert_eq!(*x, i as f32);
        }
    }
}
