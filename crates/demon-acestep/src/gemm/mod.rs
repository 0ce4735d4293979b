//! Packed-weight matrix products for the CPU forward paths (DiT projections, VAE window
//! convolutions): `C (+)= A · B` where `A` `[M, K]` is an activation (any row stride, rows may
//! overlap) and `B` `[K, N]` a weight packed once, at load, into the layout the microkernels read
//! ([`PackedMatrix`]). Nothing on the forward path re-packs a weight.
//!
//! Why our own kernel (issue 13, `docs/performance.md`): the `gemm` crate packs its right-hand
//! side on every call, and the DiT's per-row 125-row products re-packed every weight 16 times
//! per layer at batch 8 (22 % of the forward). With the weights packed once, a whole batch runs
//! as one product stacked along `M`, split over the threads by tiles of rows × columns.
//!
//! **Determinism.** Every output element is one sequential chain of fused multiply-adds over
//! `k = 0 .. K` (f32), starting from its initial value (zero, the bias, or what `C` holds when
//! accumulating). K blocks store the running sum in `C` and reload it, which is exact. So an
//! element's bits depend only on its row of `A`, its column of `B` and its initial value: not on
//! `M`, the thread split, the tile sizes or the instruction set. The AVX-512, AVX2 and portable
//! f32 kernels give the same bytes (tested), and a row of a batch gives the same bytes in every
//! batch. The bf16 path ([`Precision::Bf16`]) rounds the activations to bf16 and sums pairs
//! of exact products (`vdpbf16ps`); its chain is fixed the same way, so rows are again
//! independent of the batch within one path.
//!
//! Layouts:
//! - f32 `B`: panels of [`NR`] = 32 columns; panel `p` holds `[K][32]` (column `32p + c` at
//!   `k·32 + c`), the last panel zero-padded;
//! - bf16 `B`: panels of 32 columns, `[⌈K/2⌉][32][2]`: the two bf16 values of rows `2q` and
//!   `2q + 1` of a column side by side, as `vdpbf16ps` reads them (`K` zero-padded to even);
//! - `A` is packed per tile and K block into strips of `MR` rows, `[KC][MR]` (bf16: pairs),
//!   the activation packing every blocked GEMM does (cheap: `M·K` moves per product, against
//!   `M·K·N` multiply-adds).

mod kernels;
mod layout;

use std::cell::RefCell;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicUsize, Ordering};

pub use kernels::Isa;
pub use layout::{NR, Precision, bf16_bits, bf16_value};

/// Depth of one K block: a `[KC][32]` f32 micro-panel of `B` is 64 KiB (L2-resident; 512 measured
/// ≈ 10 % faster than 256 and 128 on the development machine's Zen 4, fewer round trips of `C`).
const KC: usize = 512;
/// Strips of `MR` rows per tile: a tile's packed `A` block is `MC·KC` values (≤ 384 KiB, L2).
const STRIPS_PER_TILE: usize = 16;

#[derive(Clone, Debug)]
enum Panels {
    F32(Vec<f32>),
    /// bf16 bit patterns.
    Bf16(Vec<u16>),
}

/// A weight `B` `[K, N]` packed once for the kernels (module docs for the layout).
#[derive(Clone, Debug)]
pub struct PackedMatrix {
    k: usize,
    n: usize,
    panels: Panels,
}

impl PackedMatrix {
    /// Pack `B` given by `at(k, n)`.
    fn pack(k: usize, n: usize, precision: Precision, at: impl Fn(usize, usize) -> f32) -> Self {
        let np = n.div_ceil(NR);
        let panels = match precision {
            Precision::F32 => {
                let mut v = vec![0f32; np * k * NR];
                for p in 0..np {
                    let panel = &mut v[p * k * NR..(p + 1) * k * NR];
                    for kk in 0..k {
                        for c in 0..NR.min(n - p * NR) {
                            panel[kk * NR + c] = at(kk, p * NR + c);
                        }
                    }
                }
                Panels::F32(v)
            }
            Precision::Bf16 => {
                let kp = k.div_ceil(2);
                let mut v = vec![0u16; np * kp * 2 * NR];
                for p in 0..np {
                    let panel = &mut v[p * kp * 2 * NR..(p + 1) * kp * 2 * NR];
                    for kk in 0..k {
                        for c in 0..NR.min(n - p * NR) {
                            panel[(kk / 2) * 2 * NR + 2 * c + kk % 2] =
                                bf16_bits(at(kk, p * NR + c));
                        }
                    }
                }
                Panels::Bf16(v)
            }
        };
        Self { k, n, panels }
    }

    /// From a row-major `[K, N]` matrix.
    pub fn from_kxn(b: &[f32], k: usize, n: usize, precision: Precision) -> Self {
        assert_eq!(b.len(), k * n, "PackedMatrix::from_kxn: size");
        Self::pack(k, n, precision, |kk, j| b[kk * n + j])
    }

    /// From a row-major `[N, K]` matrix used transposed: a PyTorch `Linear` weight, so that
    /// `x · Wᵀ` is `A · B`.
    pub fn from_nxk(w: &[f32], n: usize, k: usize, precision: Precision) -> Self {
        assert_eq!(w.len(), k * n, "PackedMatrix::from_nxk: size");
        Self::pack(k, n, precision, |kk, j| w[j * k + kk])
    }

    /// Columns side by side: `[K, N₁ + N₂ + …]` from matrices of equal `K` and precision (e.g.
    /// the q, k and v projections as one product). Each part's columns keep their values, so the
    /// product's columns equal the separate products' bit for bit.
    pub fn concat_columns(parts: &[&PackedMatrix]) -> Self {
        let k = parts.first().map_or(0, |p| p.k);
        let precision = parts.first().map_or(Precision::F32, |p| p.precision());
        assert!(
            parts.iter().all(|p| p.k == k && p.precision() == precision),
            "concat_columns: parts differ in K or precision"
        );
        let n: usize = parts.iter().map(|p| p.n).sum();
        let mut offsets = Vec::with_capacity(parts.len());
        let mut acc = 0;
        for p in parts {
            offsets.push(acc);
            acc += p.n;
        }
        let find = |j: usize| {
            let i = offsets.partition_point(|&o| o <= j) - 1;
            (parts[i], j - offsets[i])
        };
        // Values are copied as stored (re-rounding a bf16 value to bf16 is exact).
        Self::pack(k, n, precision, |kk, j| {
            let (p, c) = find(j);
            p.value(kk, c)
        })
    }

    /// Element `(k, n)` of `B` as stored (bf16 widened to f32).
    pub fn value(&self, kk: usize, j: usize) -> f32 {
        let (p, c) = (j / NR, j % NR);
        match &self.panels {
            Panels::F32(v) => v[p * self.k * NR + kk * NR + c],
            Panels::Bf16(v) => {
                let kp = self.k.div_ceil(2);
                bf16_value(v[p * kp * 2 * NR + (kk / 2) * 2 * NR + 2 * c + kk % 2])
            }
        }
    }

    /// The weight back as a row-major `[N, K]` matrix (PyTorch `Linear` layout).
    pub fn to_nxk(&self) -> Vec<f32> {
        let mut w = vec![0f32; self.n * self.k];
        for j in 0..self.n {
            for kk in 0..self.k {
                w[j * self.k + kk] = self.value(kk, j);
            }
        }
        w
    }

    /// The same weight in another precision (f32 → bf16 rounds to nearest even).
    pub fn with_precision(&self, precision: Precision) -> Self {
        if precision == self.precision() {
            return self.clone();
        }
        Self::pack(self.k, self.n, precision, |kk, j| self.value(kk, j))
    }

    pub fn k(&self) -> usize {
        self.k
    }

    pub fn n(&self) -> usize {
        self.n
    }

    pub fn precision(&self) -> Precision {
        match self.panels {
            Panels::F32(_) => Precision::F32,
            Panels::Bf16(_) => Precision::Bf16,
        }
    }

    /// Bytes held by the packed panels (padding included).
    pub fn bytes(&self) -> usize {
        match &self.panels {
            Panels::F32(v) => v.len() * 4,
            Panels::Bf16(v) => v.len() * 2,
        }
    }
}

/// A row-major f32 matrix view with unit column stride; rows may overlap (`row_stride < cols`,
/// a convolution window read in place).
#[derive(Clone, Copy, Debug)]
pub struct Lhs<'a> {
    pub data: &'a [f32],
    pub rows: usize,
    pub cols: usize,
    pub row_stride: usize,
}

impl<'a> Lhs<'a> {
    pub fn dense(data: &'a [f32], rows: usize, cols: usize) -> Self {
        Self {
            data,
            rows,
            cols,
            row_stride: cols,
        }
    }
}

/// A mutable row-major f32 output view; rows never overlap (`row_stride ≥ cols`).
#[derive(Debug)]
pub struct Out<'a> {
    pub data: &'a mut [f32],
    pub rows: usize,
    pub cols: usize,
    pub row_stride: usize,
}

impl<'a> Out<'a> {
    pub fn dense(data: &'a mut [f32], rows: usize, cols: usize) -> Self {
        Self {
            data,
            rows,
            cols,
            row_stride: cols,
        }
    }
}

/// What an output element starts from before the products are added.
#[derive(Clone, Copy, Debug)]
pub enum Init<'a> {
    /// `C = A·B`.
    Zero,
    /// `C = bias + A·B` (`bias` `[N]`).
    Bias(&'a [f32]),
    /// `C += A·B`.
    Accumulate,
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

/// The instruction set the kernels use on this machine: the best available, or a lower one named
/// by `DEMON_GEMM_ISA` (`portable`, `avx2`, `avx512`; for comparisons; never raises it above
/// what the CPU has).
pub fn isa() -> Isa {
    static ISA: OnceLock<Isa> = OnceLock::new();
    *ISA.get_or_init(|| {
        let best = Isa::detect();
        match std::env::var("DEMON_GEMM_ISA").ok().as_deref() {
            Some("portable") => Isa::Portable,
            Some("avx2") if best >= Isa::Avx2 => Isa::Avx2,
            _ => best,
        }
    })
}

/// Whether this CPU runs bf16 products natively (`vdpbf16ps`), not through the portable loop.
pub fn native_bf16() -> bool {
    isa().bf16_native()
}

thread_local! {
    /// Packed `A` block of this thread, reused across calls (no allocation per product).
    static PACK_A: RefCell<Vec<u32>> = const { RefCell::new(Vec::new()) };
}

/// `c (+)= a · b` with the work split over up to `threads` workers (tiles of rows × columns,
/// taken dynamically). `threads = 1` runs on the calling thread (inside another parallel loop).
///
/// # Panics
/// When shapes disagree or a view reaches outside its slice (a programming error in this crate:
/// user input is validated before it reaches a kernel).
pub fn gemm(c: Out<'_>, a: Lhs<'_>, b: &PackedMatrix, init: Init<'_>, threads: usize) {
    gemm_with(isa(), c, a, b, init, threads)
}

/// [`gemm`] with an explicit instruction set (tests compare them; `isa` must be supported by
/// this CPU, see [`Isa::available`]).
pub fn gemm_with(
    isa: Isa,
    c: Out<'_>,
    a: Lhs<'_>,
    b: &PackedMatrix,
    init: Init<'_>,
    threads: usize,
) {
    let (m, k, n) = (a.rows, a.cols, c.cols);
    assert!(
        isa.supported(),
        "gemm: {isa:?} is not supported by this CPU"
    );
    assert_eq!(c.rows, m, "gemm: C has {} rows, A {m}", c.rows);
    assert_eq!(
        (b.k, b.n),
        (k, n),
        "gemm: B is {}×{}, expected {k}×{n}",
        b.k,
        b.n
    );
    assert!(c.row_stride >= n, "gemm: output rows overlap");
    assert!(
        view_fits(a.data.len(), m, k, a.row_stride) && view_fits(c.data.len(), m, n, c.row_stride),
        "gemm: view out of bounds"
    );
    if let Init::Bias(bias) = init {
        assert_eq!(bias.len(), n, "gemm: bias length");
    }
    if m == 0 || n == 0 {
        return;
    }
    let mr = isa.mr(b.precision());
    let strips = m.div_ceil(mr);
    let panels = n.div_ceil(NR);
    // Tiles: blocks of rows, and when there are too few of them to keep every worker busy,
    // blocks of columns too (then a block of A is packed once per column block).
    let row_blocks = strips.div_ceil(STRIPS_PER_TILE);
    let want = 2 * threads.max(1);
    let col_blocks = if threads > 1 && row_blocks < want {
        want.div_ceil(row_blocks).min(panels)
    } else {
        1
    };
    let tile_strips = strips.div_ceil(row_blocks);
    let tile_panels = panels.div_ceil(col_blocks);
    let tiles = row_blocks * col_blocks;
    let out = SharedOut {
        ptr: c.data.as_mut_ptr(),
        len: c.data.len(),
        row_stride: c.row_stride,
    };
    let job = Job {
        isa,
        a,
        b,
        init,
        out,
        m,
        n,
        mr,
        tile_strips,
        tile_panels,
        col_blocks,
    };
    let workers = threads.max(1).min(tiles);
    if workers <= 1 {
        for t in 0..tiles {
            job.tile(t);
        }
        return;
    }
    let next = AtomicUsize::new(0);
    let (job, next) = (&job, &next);
    rayon::scope(|s| {
        for _ in 0..workers {
            s.spawn(move |_| {
                loop {
                    let t = next.fetch_add(1, Ordering::Relaxed);
                    if t >= tiles {
                        break;
                    }
                    job.tile(t);
                }
            });
        }
    });
}

/// The output of a product shared by the workers; each tile writes a disjoint block of it.
#[derive(Clone, Copy)]
struct SharedOut {
    ptr: *mut f32,
    len: usize,
    row_stride: usize,
}

// SAFETY: the pointer comes from an exclusive borrow held for the whole product; workers only
// write disjoint tiles (distinct rows × columns) through it.
unsafe impl Send for SharedOut {}
unsafe impl Sync for SharedOut {}

struct Job<'a> {
    isa: Isa,
    a: Lhs<'a>,
    b: &'a PackedMatrix,
    init: Init<'a>,
    out: SharedOut,
    m: usize,
    n: usize,
    mr: usize,
    tile_strips: usize,
    tile_panels: usize,
    col_blocks: usize,
}

impl Job<'_> {
    /// Tile `t`: rows of strip block `t / col_blocks`, columns of panel block `t % col_blocks`.
    fn tile(&self, t: usize) {
        let (rb, cb) = (t / self.col_blocks, t % self.col_blocks);
        let r0 = rb * self.tile_strips * self.mr;
        let r1 = (r0 + self.tile_strips * self.mr).min(self.m);
        let j0 = cb * self.tile_panels * NR;
        let j1 = (j0 + self.tile_panels * NR).min(self.n);
        if r0 >= r1 || j0 >= j1 {
            return;
        }
        let (k, rs) = (self.a.cols, self.out.row_stride);
        // Initial values: the bias is written first and then accumulated onto.
        let load_first = match self.init {
            Init::Zero => false,
            Init::Accumulate => true,
            Init::Bias(bias) => {
                for r in r0..r1 {
                    // SAFETY: row r, columns j0..j1 lie inside the output (checked by `gemm`) and
                    // belong to this tile only.
                    let row = unsafe {
                        std::slice::from_raw_parts_mut(self.out.ptr.add(r * rs + j0), j1 - j0)
                    };
                    row.copy_from_slice(&bias[j0..j1]);
                }
                true
            }
        };
        if k == 0 {
            if !load_first {
                for r in r0..r1 {
                    // SAFETY: as above.
                    unsafe {
                        std::slice::from_raw_parts_mut(self.out.ptr.add(r * rs + j0), j1 - j0)
                    }
                    .fill(0.0);
                }
            }
            return;
        }
        debug_assert!((r1 - 1) * rs + j1 <= self.out.len);
        PACK_A.with(|buf| {
            let mut buf = buf.borrow_mut();
            let strips = (r1 - r0).div_ceil(self.mr);
            let need = strips * self.mr * KC;
            if buf.len() < need {
                buf.resize(need, 0);
            }
            let mut k0 = 0;
            while k0 < k {
                let kc = KC.min(k - k0);
                let load = load_first || k0 > 0;
                match &self.b.panels {
                    Panels::F32(bp) => {
                        let ap = pack_a_f32(&mut buf, self.a, r0, r1, k0, kc, self.mr);
                        for j in (j0..j1).step_by(NR) {
                            let panel = &bp[(j / NR) * k * NR + k0 * NR..];
                            for (s, strip) in ap.chunks_exact(self.mr * kc).enumerate() {
                                let r = r0 + s * self.mr;
                                let rows = self.mr.min(r1 - r);
                                let cols = NR.min(j1 - j);
                                // SAFETY: the strip holds kc·MR packed values, the panel kc·32 from
                                // k0 on; the output block rows r..r+rows, columns j..j+cols is in
                                // bounds (checked by `gemm`) and this tile's alone.
                                unsafe {
                                    self.isa.kernel_f32(
                                        kc,
                                        strip.as_ptr(),
                                        panel.as_ptr(),
                                        self.out.ptr.add(r * rs + j),
                                        rs,
                                        rows,
                                        cols,
                                        load,
                                    )
                                };
                            }
                        }
                    }
                    Panels::Bf16(bp) => {
                        let kp = k.div_ceil(2);
                        let kcp = kc.div_ceil(2);
                        let ap = pack_a_bf16(&mut buf, self.a, r0, r1, k0, kc, self.mr);
                        for j in (j0..j1).step_by(NR) {
                            let panel = &bp[(j / NR) * kp * 2 * NR + (k0 / 2) * 2 * NR..];
                            for (s, strip) in ap.chunks_exact(self.mr * kcp).enumerate() {
                                let r = r0 + s * self.mr;
                                let rows = self.mr.min(r1 - r);
                                let cols = NR.min(j1 - j);
                                // SAFETY: as for f32, with kcp pairs per strip row and panel.
                                unsafe {
                                    self.isa.kernel_bf16(
                                        kcp,
                                        strip.as_ptr(),
                                        panel.as_ptr(),
                                        self.out.ptr.add(r * rs + j),
                                        rs,
                                        rows,
                                        cols,
                                        load,
                                    )
                                };
                            }
                        }
                    }
                }
                k0 += kc;
            }
        });
    }
}

/// Rows `r0..r1`, columns `k0..k0+kc` of `a` into strips of `mr` rows, `[kc][mr]` each, zero
/// rows past `r1`. Returns the packed values (as f32).
fn pack_a_f32<'b>(
    buf: &'b mut [u32],
    a: Lhs<'_>,
    r0: usize,
    r1: usize,
    k0: usize,
    kc: usize,
    mr: usize,
) -> &'b [f32] {
    let strips = (r1 - r0).div_ceil(mr);
    let len = strips * mr * kc;
    // SAFETY: u32 and f32 have the same size and alignment, and every bit pattern is a valid f32.
    let out: &mut [f32] =
        unsafe { std::slice::from_raw_parts_mut(buf.as_mut_ptr().cast::<f32>(), len) };
    for s in 0..strips {
        let dst = &mut out[s * mr * kc..(s + 1) * mr * kc];
        for i in 0..mr {
            let r = r0 + s * mr + i;
            if r < r1 {
                let row = &a.data[r * a.row_stride + k0..r * a.row_stride + k0 + kc];
                for (kk, &v) in row.iter().enumerate() {
                    dst[kk * mr + i] = v;
                }
            } else {
                for kk in 0..kc {
                    dst[kk * mr + i] = 0.0;
                }
            }
        }
    }
    out
}

/// As [`pack_a_f32`] in bf16 pairs: strip element `(q, i)` holds columns `k0 + 2q` (low half)
/// and `k0 + 2q + 1` (high half, zero past `kc`) of row `i`, rounded to bf16.
fn pack_a_bf16<'b>(
    buf: &'b mut [u32],
    a: Lhs<'_>,
    r0: usize,
    r1: usize,
    k0: usize,
    kc: usize,
    mr: usize,
) -> &'b [u32] {
    let strips = (r1 - r0).div_ceil(mr);
    let kcp = kc.div_ceil(2);
    let len = strips * mr * kcp;
    let out = &mut buf[..len];
    for s in 0..strips {
        let dst = &mut out[s * mr * kcp..(s + 1) * mr * kcp];
        for i in 0..mr {
            let r = r0 + s * mr + i;
            if r < r1 {
                let row = &a.data[r * a.row_stride + k0..r * a.row_stride + k0 + kc];
                let (pairs, rest) = row.split_at(kc / 2 * 2);
                for (q, p) in pairs.chunks_exact(2).enumerate() {
                    dst[q * mr + i] = bf16_bits(p[0]) as u32 | (bf16_bits(p[1]) as u32) << 16;
                }
                if let Some(&v) = rest.first() {
                    dst[(kcp - 1) * mr + i] = bf16_bits(v) as u32;
                }
            } else {
                for q in 0..kcp {
                    dst[q * mr + i] = 0;
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests;
