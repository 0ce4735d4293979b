//! Microkernels of [`super::gemm`]: one `MR × 32` output tile over `kc` steps of K, from a packed
//! strip of `A` (`[kc][MR]`) and a packed panel of `B` (`[kc][32]`, or bf16 pairs
//! `[kc/2][32][2]`). Each output element is one sequential FMA chain (module docs of `gemm`), so
//! every f32 kernel gives the same bits.
//!
//! - AVX-512 (`avx512f`): 12 × 32, 24 accumulators in zmm registers, `B` as two vectors per k and
//!   `A` broadcast; partial tiles by masked loads and stores.
//! - AVX-512 bf16 (`avx512bf16`): 12 × 32 over pairs of k with `vdpbf16ps`.
//! - AVX2 + FMA: 6 × 16 on each half of a panel (12 accumulators in 16 ymm registers).
//! - Portable: 4 × 32 scalar `mul_add` (any CPU; the reference the others are tested against).

#[cfg(target_arch = "x86_64")]
use std::arch::x86_64::*;

use super::layout::{NR, Precision, bf16_value};

/// An instruction set for the kernels, ordered from the least to the most capable.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Isa {
    Portable,
    /// AVX2 with FMA.
    Avx2,
    /// AVX-512 F (with avx512_bf16 used for bf16 weights when present).
    Avx512,
}

const MR_PORTABLE: usize = 4;
#[cfg(target_arch = "x86_64")]
const MR_AVX2: usize = 6;
#[cfg(target_arch = "x86_64")]
const MR_AVX512: usize = 12;

impl Isa {
    /// The best instruction set of this CPU.
    pub fn detect() -> Self {
        #[cfg(target_arch = "x86_64")]
        {
            if is_x86_feature_detected!("avx512f") {
                return Self::Avx512;
            }
            if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
                return Self::Avx2;
            }
        }
        Self::Portable
    }

    /// Every instruction set this CPU can run, portable first.
    pub fn available() -> Vec<Self> {
        [Self::Portable, Self::Avx2, Self::Avx512]
            .into_iter()
            .filter(|i| i.supported())
            .collect()
    }

    pub fn supported(self) -> bool {
        self <= Self::detect()
    }

    /// `vdpbf16ps` is used for bf16 weights.
    pub fn bf16_native(self) -> bool {
        #[cfg(target_arch = "x86_64")]
        {
            self == Self::Avx512 && is_x86_feature_detected!("avx512bf16")
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            false
        }
    }

    /// Rows per strip of packed `A` for weights of `precision`.
    pub fn mr(self, precision: Precision) -> usize {
        #[cfg(target_arch = "x86_64")]
        {
            match (self, precision) {
                (Self::Avx512, Precision::F32) => return MR_AVX512,
                (Self::Avx512, Precision::Bf16) if self.bf16_native() => return MR_AVX512,
                (Self::Avx2, Precision::F32) => return MR_AVX2,
                _ => {}
            }
        }
        let _ = precision;
        MR_PORTABLE
    }

    /// One f32 tile: `C[rows, cols] (+)= A·B` over `kc` steps.
    ///
    /// # Safety
    /// `a` points to `kc · mr(F32)` values, `b` to `kc · 32` (row stride 32), `c` to a block of
    /// `rows ≤ mr` rows (stride `ldc`) of `cols ≤ 32` writable values; `self` is supported.
    #[allow(clippy::too_many_arguments)]
    pub(super) unsafe fn kernel_f32(
        self,
        kc: usize,
        a: *const f32,
        b: *const f32,
        c: *mut f32,
        ldc: usize,
        rows: usize,
        cols: usize,
        load: bool,
    ) {
        // SAFETY: forwarded from the caller; the target features were checked by `supported`.
        unsafe {
            match self {
                #[cfg(target_arch = "x86_64")]
                Self::Avx512 => f32_avx512(kc, a, b, c, ldc, rows, cols, load),
                #[cfg(target_arch = "x86_64")]
                Self::Avx2 => {
                    f32_avx2_half(kc, a, b, c, ldc, rows, cols.min(16), load);
                    if cols > 16 {
                        f32_avx2_half(kc, a, b.add(16), c.add(16), ldc, rows, cols - 16, load);
                    }
                }
                _ => f32_portable(kc, a, b, c, ldc, rows, cols, load),
            }
        }
    }

    /// One bf16 tile over `kcp` pairs of k.
    ///
    /// # Safety
    /// `a` points to `kcp · mr(Bf16)` pairs, `b` to `kcp · 64` bf16 values; `c` as for
    /// [`Isa::kernel_f32`].
    #[allow(clippy::too_many_arguments)]
    pub(super) unsafe fn kernel_bf16(
        self,
        kcp: usize,
        a: *const u32,
        b: *const u16,
        c: *mut f32,
        ldc: usize,
        rows: usize,
        cols: usize,
        load: bool,
    ) {
        // SAFETY: forwarded from the caller; `bf16_native` checked the target features.
        unsafe {
            #[cfg(target_arch = "x86_64")]
            if self.bf16_native() {
                return bf16_avx512(kcp, a, b, c, ldc, rows, cols, load);
            }
            bf16_portable(kcp, a, b, c, ldc, rows, cols, load)
        }
    }
}

/// # Safety
/// As [`Isa::kernel_f32`] with `mr = 4`.
#[allow(clippy::too_many_arguments)]
unsafe fn f32_portable(
    kc: usize,
    a: *const f32,
    b: *const f32,
    c: *mut f32,
    ldc: usize,
    rows: usize,
    cols: usize,
    load: bool,
) {
    const MR: usize = MR_PORTABLE;
    // SAFETY: the caller guarantees the extents of `a`, `b` and the output block.
    let (a, b) = unsafe {
        (
            std::slice::from_raw_parts(a, kc * MR),
            std::slice::from_raw_parts(b, kc * NR),
        )
    };
    let mut acc = [[0f32; NR]; MR];
    if load {
        for (i, row) in acc.iter_mut().enumerate().take(rows) {
            // SAFETY: row i < rows, columns < cols of the output block.
            let src = unsafe { std::slice::from_raw_parts(c.add(i * ldc), cols) };
            row[..cols].copy_from_slice(src);
        }
    }
    for (ak, bk) in a.chunks_exact(MR).zip(b.chunks_exact(NR)) {
        for (row, &av) in acc.iter_mut().zip(ak) {
            for (v, &bv) in row.iter_mut().zip(bk) {
                *v = av.mul_add(bv, *v);
            }
        }
    }
    for (i, row) in acc.iter().enumerate().take(rows) {
        // SAFETY: as above, writable.
        let dst = unsafe { std::slice::from_raw_parts_mut(c.add(i * ldc), cols) };
        dst.copy_from_slice(&row[..cols]);
    }
}

/// # Safety
/// As [`Isa::kernel_bf16`] with `mr = 4`.
#[allow(clippy::too_many_arguments)]
unsafe fn bf16_portable(
    kcp: usize,
    a: *const u32,
    b: *const u16,
    c: *mut f32,
    ldc: usize,
    rows: usize,
    cols: usize,
    load: bool,
) {
    const MR: usize = MR_PORTABLE;
    // SAFETY: the caller guarantees the extents.
    let (a, b) = unsafe {
        (
            std::slice::from_raw_parts(a, kcp * MR),
            std::slice::from_raw_parts(b, kcp * 2 * NR),
        )
    };
    let mut acc = [[0f32; NR]; MR];
    if load {
        for (i, row) in acc.iter_mut().enumerate().take(rows) {
            // SAFETY: inside the output block.
            let src = unsafe { std::slice::from_raw_parts(c.add(i * ldc), cols) };
            row[..cols].copy_from_slice(src);
        }
    }
    for (aq, bq) in a.chunks_exact(MR).zip(b.chunks_exact(2 * NR)) {
        for (row, &ap) in acc.iter_mut().zip(aq) {
            let (a0, a1) = (bf16_value(ap as u16), bf16_value((ap >> 16) as u16));
            for (v, bp) in row.iter_mut().zip(bq.chunks_exact(2)) {
                // The products of two bf16 values are exact in f32, so each step is one rounded
                // addition, as `vdpbf16ps` does (odd element first).
                *v = a1.mul_add(bf16_value(bp[1]), *v);
                *v = a0.mul_add(bf16_value(bp[0]), *v);
            }
        }
    }
    for (i, row) in acc.iter().enumerate().take(rows) {
        // SAFETY: inside the output block, writable.
        let dst = unsafe { std::slice::from_raw_parts_mut(c.add(i * ldc), cols) };
        dst.copy_from_slice(&row[..cols]);
    }
}

#[cfg(target_arch = "x86_64")]
fn col_masks(cols: usize) -> (__mmask16, __mmask16) {
    let m = |n: usize| -> __mmask16 {
        if n >= 16 {
            0xFFFF
        } else {
            ((1u32 << n) - 1) as __mmask16
        }
    };
    (m(cols), m(cols.saturating_sub(16)))
}

/// # Safety
/// As [`Isa::kernel_f32`] with `mr = 12`; the CPU has avx512f.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[allow(clippy::too_many_arguments)]
unsafe fn f32_avx512(
    kc: usize,
    a: *const f32,
    b: *const f32,
    c: *mut f32,
    ldc: usize,
    rows: usize,
    cols: usize,
    load: bool,
) {
    const MR: usize = MR_AVX512;
    let (m0, m1) = col_masks(cols);
    let mut acc = [[_mm512_setzero_ps(); 2]; MR];
    // SAFETY (this block and the loops below): every address is inside the extents the caller
    // guarantees; masked lanes are not accessed. Loops over MR have constant bounds so the
    // accumulators stay in registers.
    unsafe {
        if load {
            for (i, row) in acc.iter_mut().enumerate() {
                if i < rows {
                    row[0] = _mm512_maskz_loadu_ps(m0, c.add(i * ldc));
                    row[1] = _mm512_maskz_loadu_ps(m1, c.add(i * ldc + 16));
                }
            }
        }
        let (mut ap, mut bp) = (a, b);
        for _ in 0..kc {
            let b0 = _mm512_loadu_ps(bp);
            let b1 = _mm512_loadu_ps(bp.add(16));
            for (i, row) in acc.iter_mut().enumerate() {
                let av = _mm512_set1_ps(*ap.add(i));
                row[0] = _mm512_fmadd_ps(av, b0, row[0]);
                row[1] = _mm512_fmadd_ps(av, b1, row[1]);
            }
            ap = ap.add(MR);
            bp = bp.add(NR);
        }
        for (i, row) in acc.iter().enumerate() {
            if i < rows {
                _mm512_mask_storeu_ps(c.add(i * ldc), m0, row[0]);
                _mm512_mask_storeu_ps(c.add(i * ldc + 16), m1, row[1]);
            }
        }
    }
}

/// # Safety
/// As [`Isa::kernel_bf16`] with `mr = 12`; the CPU has avx512f and avx512bf16.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bf16")]
#[allow(clippy::too_many_arguments)]
unsafe fn bf16_avx512(
    kcp: usize,
    a: *const u32,
    b: *const u16,
    c: *mut f32,
    ldc: usize,
    rows: usize,
    cols: usize,
    load: bool,
) {
    const MR: usize = MR_AVX512;
    let (m0, m1) = col_masks(cols);
    let mut acc = [[_mm512_setzero_ps(); 2]; MR];
    // SAFETY: as in `f32_avx512`; `__m512bh` and `__m512i` are both 64 plain bytes.
    unsafe {
        if load {
            for (i, row) in acc.iter_mut().enumerate() {
                if i < rows {
                    row[0] = _mm512_maskz_loadu_ps(m0, c.add(i * ldc));
                    row[1] = _mm512_maskz_loadu_ps(m1, c.add(i * ldc + 16));
                }
            }
        }
        let (mut ap, mut bp) = (a, b);
        for _ in 0..kcp {
            let b0: __m512bh = std::mem::transmute(_mm512_loadu_si512(bp.cast()));
            let b1: __m512bh = std::mem::transmute(_mm512_loadu_si512(bp.add(32).cast()));
            for (i, row) in acc.iter_mut().enumerate() {
                let av: __m512bh = std::mem::transmute(_mm512_set1_epi32(*ap.add(i) as i32));
                row[0] = _mm512_dpbf16_ps(row[0], av, b0);
                row[1] = _mm512_dpbf16_ps(row[1], av, b1);
            }
            ap = ap.add(MR);
            bp = bp.add(2 * NR);
        }
        for (i, row) in acc.iter().enumerate() {
            if i < rows {
                _mm512_mask_storeu_ps(c.add(i * ldc), m0, row[0]);
                _mm512_mask_storeu_ps(c.add(i * ldc + 16), m1, row[1]);
            }
        }
    }
}

/// Sixteen columns (one half of a panel, row stride 32) of a 6-row tile.
///
/// # Safety
/// As [`Isa::kernel_f32`] with `mr = 6` and `cols ≤ 16`; the CPU has AVX2 and FMA.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
#[allow(clippy::too_many_arguments)]
unsafe fn f32_avx2_half(
    kc: usize,
    a: *const f32,
    b: *const f32,
    c: *mut f32,
    ldc: usize,
    rows: usize,
    cols: usize,
    load: bool,
) {
    const MR: usize = MR_AVX2;
    let mut acc = [[_mm256_setzero_ps(); 2]; MR];
    let mut tmp = [0f32; 16];
    // SAFETY: as in `f32_avx512`; partial rows go through `tmp`.
    unsafe {
        if load {
            for (i, row) in acc.iter_mut().enumerate() {
                if i < rows {
                    let src = c.add(i * ldc);
                    if cols == 16 {
                        row[0] = _mm256_loadu_ps(src);
                        row[1] = _mm256_loadu_ps(src.add(8));
                    } else {
                        tmp = [0.0; 16];
                        std::ptr::copy_nonoverlapping(src, tmp.as_mut_ptr(), cols);
                        row[0] = _mm256_loadu_ps(tmp.as_ptr());
                        row[1] = _mm256_loadu_ps(tmp.as_ptr().add(8));
                    }
                }
            }
        }
        let (mut ap, mut bp) = (a, b);
        for _ in 0..kc {
            let b0 = _mm256_loadu_ps(bp);
            let b1 = _mm256_loadu_ps(bp.add(8));
            for (i, row) in acc.iter_mut().enumerate() {
                let av = _mm256_set1_ps(*ap.add(i));
                row[0] = _mm256_fmadd_ps(av, b0, row[0]);
                row[1] = _mm256_fmadd_ps(av, b1, row[1]);
            }
            ap = ap.add(MR);
            bp = bp.add(NR);
        }
        for (i, row) in acc.iter().enumerate() {
            if i < rows {
                let dst = c.add(i * ldc);
                if cols == 16 {
                    _mm256_storeu_ps(dst, row[0]);
                    _mm256_storeu_ps(dst.add(8), row[1]);
                } else {
                    _mm256_storeu_ps(tmp.as_mut_ptr(), row[0]);
                    _mm256_storeu_ps(tmp.as_mut_ptr().add(8), row[1]);
                    std::ptr::copy_nonoverlapping(tmp.as_ptr(), dst, cols);
                }
            }
        }
    }
}
