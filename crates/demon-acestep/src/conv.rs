//! Time-major 1-D convolutions for the VAE on the CPU (diffusers `AutoencoderOobleck`'s
//! `Conv1d` / `ConvTranspose1d`, acestep.md §1.9). Activations are `[L, C]` row-major, so the
//! `k` input rows one output row needs (`dilation` 1) are `k·C` *contiguous* values: a whole
//! convolution is one GEMM `[L_out, k·Cin] × [k·Cin, Cout]` whose left operand is a view with
//! overlapping rows (row step `stride·Cin`), with no im2col copy. That is the shape the GEMM
//! kernel runs at full speed; the previous one-GEMM-per-tap form had `K = Cin` (128 on the
//! largest layers) and re-read the output `k` times.
//!
//! - Dilation `d > 1` (the residual units' 3 and 9): the output rows are split into `d` phases
//!   (`t ≡ r mod d`); within a phase the dilated convolution is an undilated one over every
//!   `d`-th input row, so the window rows of each phase are gathered once and the phase is again
//!   one window GEMM writing every `d`-th output row.
//! - Transposed, kernel `k`, stride `s`: output row `q·s + r` sums `x[q − m]·W[r + m·s]`, so with
//!   `g = ⌈k/s⌉` the full output rows `q·s .. q·s + s` are one row of the product
//!   `[x[q−g+1] … x[q]] × B`, `B` `[g·Cin, s·Cout]`: again a window GEMM, whose output rows are
//!   already time-major. The padding is trimmed by where the rows are copied to (the "padding 0
//!   and trim" of acestep.md §1.9).
//! - The Snake activation that precedes every convolution of the Oobleck VAE is applied while the
//!   input window is gathered (one pass, no full-size temporary), and the output is produced in
//!   tiles of rows, spread over the cores, that stay in the L2 cache.
//!
//! The window-GEMM weights are packed once at load ([`PackedMatrix`]); each tile's product runs
//! on its worker's thread with no packing of weights. Every output value is one fixed chain of
//! multiply-adds (`gemm` module docs), so results do not depend on the tiling or the threads.

use candle_core::{CpuStorage, CustomOp1, Layout, Shape, Tensor};

use crate::cpu::{self, Mat, SnakeParams};
use crate::error::{AceStepError, Result};
use crate::gemm::{self, Init, Lhs, Out, PackedMatrix, Precision};

/// Output channels up to which a forward convolution uses vectorised dot products instead of a
/// GEMM (the VAE's last convolution has 2 output channels).
const DOT_MAX_COUT: usize = 4;

/// Scratch space of one worker, reused across tiles.
#[derive(Default)]
pub struct ConvScratch {
    /// Gathered (and Snake-activated) input window.
    win: Vec<f32>,
    /// Window rows reordered phase by phase (dilated convolutions).
    phase: Vec<f32>,
    /// Full (untrimmed) output rows of a transposed convolution; the residual unit's hidden tile.
    full: Vec<f32>,
}

fn sized(v: &mut Vec<f32>, n: usize) -> &mut [f32] {
    if v.len() < n {
        v.resize(n, 0.0);
    }
    &mut v[..n]
}

/// A convolution in time-major layout: `[L, Cin]` → `[L_out, Cout]`.
#[derive(Clone, Debug)]
pub struct TimeConv {
    /// Window-GEMM weight, packed. Forward: `[k·Cin, Cout]`, row `j·Cin + ci` = `W[co, ci, j]`.
    /// Transposed: `[g·Cin, s·Cout]`, row `b·Cin + ci`, column `r·Cout + co` =
    /// `W[ci, co, r + (g − 1 − b)·s]` (0 past the kernel).
    w: PackedMatrix,
    /// Strided and dilated forward convolutions (not in the Oobleck VAE): one `[Cin, Cout]`
    /// weight per tap.
    taps: Vec<PackedMatrix>,
    /// Forward convolutions with at most [`DOT_MAX_COUT`] outputs: the weight as `[Cout, k·Cin]`.
    w_rows: Option<Vec<f32>>,
    bias: Vec<f32>,
    cin: usize,
    cout: usize,
    kernel: usize,
    stride: usize,
    dilation: usize,
    padding: usize,
    transposed: bool,
    /// Transposed: input rows per output row group, `⌈k/s⌉`.
    groups: usize,
}

impl TimeConv {
    /// From a Conv1d weight `[Cout, Cin, k]`.
    pub fn conv(
        weight: &Tensor,
        bias: Option<&Tensor>,
        stride: usize,
        dilation: usize,
        padding: usize,
    ) -> Result<Self> {
        let (cout, cin, k) = weight.dims3()?;
        if k == 0 || stride == 0 || dilation == 0 {
            return Err(AceStepError::input(
                "convolution with a zero kernel, stride or dilation",
            ));
        }
        let wv: Vec<f32> = weight.flatten_all()?.to_vec1()?;
        let at = |co: usize, ci: usize, j: usize| wv[(co * cin + ci) * k + j];
        let mut w = Vec::with_capacity(k * cin * cout);
        for j in 0..k {
            for ci in 0..cin {
                for co in 0..cout {
                    w.push(at(co, ci, j));
                }
            }
        }
        let taps = if stride > 1 && dilation > 1 {
            w.chunks_exact(cin * cout)
                .map(|t| PackedMatrix::from_kxn(t, cin, cout, Precision::F32))
                .collect()
        } else {
            Vec::new()
        };
        let w_rows = (cout <= DOT_MAX_COUT && dilation == 1).then(|| {
            let mut r = Vec::with_capacity(k * cin * cout);
            for co in 0..cout {
                for j in 0..k {
                    for ci in 0..cin {
                        r.push(at(co, ci, j));
                    }
                }
            }
            r
        });
        Ok(Self {
            w: PackedMatrix::from_kxn(&w, k * cin, cout, Precision::F32),
            taps,
            w_rows,
            bias: bias_vec(bias, cout)?,
            cin,
            cout,
            kernel: k,
            stride,
            dilation,
            padding,
            transposed: false,
            groups: 1,
        })
    }

    /// From a ConvTranspose1d weight `[Cin, Cout, k]` (dilation 1, output padding 0).
    pub fn conv_transpose(
        weight: &Tensor,
        bias: Option<&Tensor>,
        stride: usize,
        padding: usize,
    ) -> Result<Self> {
        let (cin, cout, k) = weight.dims3()?;
        if k == 0 || stride == 0 {
            return Err(AceStepError::input(
                "transposed convolution with a zero kernel or stride",
            ));
        }
        let wv: Vec<f32> = weight.flatten_all()?.to_vec1()?;
        let s = stride;
        let g = k.div_ceil(s);
        let n = s * cout;
        let mut w = vec![0f32; g * cin * n];
        for b in 0..g {
            for ci in 0..cin {
                for r in 0..s {
                    let j = r + (g - 1 - b) * s;
                    if j >= k {
                        continue;
                    }
                    for co in 0..cout {
                        w[(b * cin + ci) * n + r * cout + co] = wv[(ci * cout + co) * k + j];
                    }
                }
            }
        }
        Ok(Self {
            w: PackedMatrix::from_kxn(&w, g * cin, n, Precision::F32),
            taps: Vec::new(),
            w_rows: None,
            bias: bias_vec(bias, cout)?,
            cin,
            cout,
            kernel: k,
            stride,
            dilation: 1,
            padding,
            transposed: true,
            groups: g,
        })
    }

    pub fn in_channels(&self) -> usize {
        self.cin
    }

    pub fn out_channels(&self) -> usize {
        self.cout
    }

    /// `x` `[L, Cin]` → `[L_out, Cout]` (a candle tensor on the CPU).
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (_, c) = x.dims2()?;
        if c != self.cin {
            return Err(AceStepError::input(format!(
                "conv expects {} channels, got {c}",
                self.cin
            )));
        }
        Ok(x.contiguous()?.apply_op1_no_bwd(self)?)
    }

    /// Output length for `l` input rows, `None` when the input is too short.
    pub fn out_len(&self, l: usize) -> Option<usize> {
        if self.transposed {
            // Full length (L − 1)·s + k, trimmed by the padding on both sides.
            ((l.checked_sub(1)?) * self.stride + self.kernel).checked_sub(2 * self.padding)
        } else {
            let span = self.dilation * (self.kernel - 1) + 1;
            (l + 2 * self.padding)
                .checked_sub(span)
                .map(|r| r / self.stride + 1)
        }
    }

    /// Output rows per tile: about 128 K values of the wider side per tile (L2-resident), at
    /// least 64 rows; then evened out so every worker gets the same number of tiles.
    pub fn tile_rows(&self, l_out: usize) -> usize {
        let width = self.cin.max(self.cout).max(1);
        let gemm_rows = ((1usize << 17) / width).max(64);
        let rows = if self.transposed {
            gemm_rows * self.stride
        } else {
            gemm_rows
        };
        balanced_rows(l_out, rows, if self.transposed { self.stride } else { 1 })
    }

    /// The whole output for time-major `x` `[l, Cin]`, Snake-activated first when `snake` is
    /// given, written into `out` (resized to `L_out·Cout`). Returns `L_out`.
    pub fn forward_into(
        &self,
        x: &[f32],
        l: usize,
        snake: Option<&SnakeParams>,
        out: &mut Vec<f32>,
    ) -> Result<usize> {
        if x.len() != l * self.cin {
            return Err(AceStepError::input(format!(
                "conv input has {} values, expected {l}×{}",
                x.len(),
                self.cin
            )));
        }
        let l_out = self
            .out_len(l)
            .ok_or_else(|| AceStepError::input(format!("input of {l} frames is too short")))?;
        set_len(out, l_out * self.cout);
        let rows = self.tile_rows(l_out);
        cpu::for_each_tile(
            out,
            rows * self.cout,
            ConvScratch::default,
            |i, dst, scr| self.tile(x, l, i * rows, dst, snake, scr),
        );
        Ok(l_out)
    }

    /// Output rows `t0 .. t0 + dst.len()/Cout` into `dst`.
    pub fn tile(
        &self,
        x: &[f32],
        l: usize,
        t0: usize,
        dst: &mut [f32],
        snake: Option<&SnakeParams>,
        scr: &mut ConvScratch,
    ) {
        if self.transposed {
            self.tile_transposed(x, l, t0, dst, snake, scr);
        } else {
            self.tile_forward(x, l, t0, dst, snake, scr);
        }
    }

    fn tile_forward(
        &self,
        x: &[f32],
        l: usize,
        t0: usize,
        dst: &mut [f32],
        snake: Option<&SnakeParams>,
        scr: &mut ConvScratch,
    ) {
        let (cin, cout, k, s, d) = (self.cin, self.cout, self.kernel, self.stride, self.dilation);
        let rows = dst.len() / cout;
        if rows == 0 {
            return;
        }
        // Input rows t0·s − p ..= (t0 + rows − 1)·s − p + (k − 1)·d.
        let count = (rows - 1) * s + (k - 1) * d + 1;
        let start = (t0 * s) as isize - self.padding as isize;
        let win = sized(&mut scr.win, count * cin);
        gather(x, l, cin, start, win, snake);
        if d == 1 {
            let a = Mat {
                data: win,
                rows,
                cols: k * cin,
                row_stride: s * cin,
            };
            match &self.w_rows {
                Some(wr) => {
                    fill_rows(dst, &self.bias);
                    cpu::dot_rows(dst, cout, a, wr)
                }
                None => gemm::gemm(
                    Out::dense(dst, rows, cout),
                    lhs(a),
                    &self.w,
                    Init::Bias(&self.bias),
                    1,
                ),
            }
        } else if s == 1 {
            // Phase r holds window rows r, r + d, r + 2d, …: output rows t0 + r + d·u read
            // phase rows u .. u + k.
            fill_rows(dst, &self.bias);
            let phase = sized(&mut scr.phase, count * cin);
            let mut off = 0;
            for r in 0..d.min(rows) {
                let u = (rows - r).div_ceil(d);
                let n_rows = u + k - 1;
                for v in 0..n_rows {
                    let src = (r + d * v) * cin;
                    phase[off + v * cin..off + (v + 1) * cin].copy_from_slice(&win[src..src + cin]);
                }
                let a = Lhs {
                    data: &phase[off..off + n_rows * cin],
                    rows: u,
                    cols: k * cin,
                    row_stride: cin,
                };
                let out = Out {
                    data: &mut dst[r * cout..],
                    rows: u,
                    cols: cout,
                    row_stride: d * cout,
                };
                gemm::gemm(out, a, &self.w, Init::Accumulate, 1);
                off += n_rows * cin;
            }
        } else {
            // Strided and dilated (not in the Oobleck VAE): one GEMM per tap.
            fill_rows(dst, &self.bias);
            for (j, w) in self.taps.iter().enumerate() {
                let a = Lhs {
                    data: &win[j * d * cin..],
                    rows,
                    cols: cin,
                    row_stride: s * cin,
                };
                gemm::gemm(Out::dense(dst, rows, cout), a, w, Init::Accumulate, 1);
            }
        }
    }

    fn tile_transposed(
        &self,
        x: &[f32],
        l: usize,
        f0: usize,
        dst: &mut [f32],
        snake: Option<&SnakeParams>,
        scr: &mut ConvScratch,
    ) {
        let (cin, cout, s, g) = (self.cin, self.cout, self.stride, self.groups);
        let rows = dst.len() / cout;
        if rows == 0 {
            return;
        }
        // Full (untrimmed) output rows F = f + p; row F is column block F mod s of product row
        // q = F / s, which reads input rows q − g + 1 ..= q.
        let first = f0 + self.padding;
        let (qa, qb) = (first / s, (first + rows - 1) / s);
        let m = qb - qa + 1;
        let win = sized(&mut scr.win, (m + g - 1) * cin);
        gather(x, l, cin, qa as isize - (g as isize - 1), win, snake);
        let n = s * cout;
        let full = sized(&mut scr.full, m * n);
        fill_rows(full, &self.bias);
        let a = Lhs {
            data: win,
            rows: m,
            cols: g * cin,
            row_stride: cin,
        };
        gemm::gemm(Out::dense(full, m, n), a, &self.w, Init::Accumulate, 1);
        let off = (first - qa * s) * cout;
        dst.copy_from_slice(&full[off..off + rows * cout]);
    }
}

fn lhs(m: Mat<'_>) -> Lhs<'_> {
    Lhs {
        data: m.data,
        rows: m.rows,
        cols: m.cols,
        row_stride: m.row_stride,
    }
}

impl TimeConv {
    /// Bytes of the packed weights (and the dot-product copy) of this convolution.
    pub fn weight_bytes(&self) -> usize {
        self.w.bytes()
            + self.taps.iter().map(PackedMatrix::bytes).sum::<usize>()
            + self.w_rows.as_ref().map_or(0, |w| w.len() * 4)
    }
}

/// `rows` rounded so that the number of tiles is a multiple of the worker count (each worker
/// gets the same share) and, when `align` > 1, a multiple of `align`.
pub fn balanced_rows(l_out: usize, rows: usize, align: usize) -> usize {
    let workers = cpu::threads();
    let tiles = l_out.div_ceil(rows.max(1)).max(1).div_ceil(workers) * workers;
    let r = l_out.div_ceil(tiles).max(1);
    r.div_ceil(align.max(1)) * align.max(1)
}

/// Resize without rewriting what is kept (every value is overwritten by the tiles).
pub fn set_len(v: &mut Vec<f32>, n: usize) {
    if v.len() < n {
        v.resize(n, 0.0);
    } else {
        v.truncate(n);
    }
}

/// Every row of `dst` (`[n, C]`) set to `row` (`[C]`).
pub fn fill_rows(dst: &mut [f32], row: &[f32]) {
    for r in dst.chunks_exact_mut(row.len().max(1)) {
        r.copy_from_slice(row);
    }
}

/// Rows `start .. start + out.len()/C` of time-major `x` (`[l, C]`), zero outside `0..l`, through
/// `snake` when given.
fn gather(
    x: &[f32],
    l: usize,
    c: usize,
    start: isize,
    out: &mut [f32],
    snake: Option<&SnakeParams>,
) {
    let count = out.len() / c.max(1);
    let lo = start.clamp(0, l as isize) as usize;
    let hi = (start + count as isize).clamp(0, l as isize) as usize;
    let head = (lo as isize - start).clamp(0, count as isize) as usize;
    let n = hi.saturating_sub(lo);
    out[..head * c].fill(0.0);
    out[(head + n) * c..].fill(0.0);
    let (dst, src) = (&mut out[head * c..(head + n) * c], &x[lo * c..hi * c]);
    match snake {
        Some(p) => p.apply(dst, src),
        None => dst.copy_from_slice(src),
    }
}

fn bias_vec(bias: Option<&Tensor>, cout: usize) -> Result<Vec<f32>> {
    Ok(match bias {
        Some(b) => b.flatten_all()?.to_vec1()?,
        None => vec![0.0; cout],
    })
}

impl CustomOp1 for TimeConv {
    fn name(&self) -> &'static str {
        "time-major-conv1d"
    }

    fn cpu_fwd(
        &self,
        storage: &CpuStorage,
        layout: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let CpuStorage::F32(data) = storage else {
            candle_core::bail!("time-major conv: only f32 is supported")
        };
        let (start, end) = layout.contiguous_offsets().ok_or_else(|| {
            candle_core::Error::Msg("time-major conv: input is not contiguous".into())
        })?;
        let x = &data[start..end];
        let l = x.len() / self.cin.max(1);
        let mut out = Vec::new();
        let l_out = self
            .forward_into(x, l, None, &mut out)
            .map_err(|e| candle_core::Error::Msg(format!("time-major conv: {e}")))?;
        Ok((CpuStorage::F32(out), Shape::from((l_out, self.cout))))
    }
}

/// The Oobleck residual unit, `x + conv2(snake2(conv1(snake1(x))))` (conv1 kernel 7 with
/// dilation d, conv2 kernel 1), fused per tile of rows: the Snake-activated window, the hidden
/// activation and its Snake stay in the worker's cache, and the 1×1 convolution accumulates onto
/// `x + bias` in the output tile.
#[derive(Clone, Debug)]
pub struct FusedResidual {
    pub snake1: SnakeParams,
    pub conv1: TimeConv,
    pub snake2: SnakeParams,
    pub conv2: TimeConv,
}

impl FusedResidual {
    /// `x` `[l, C]` → `out` `[l, C]` (resized).
    pub fn forward_into(&self, x: &[f32], l: usize, out: &mut Vec<f32>) -> Result<()> {
        let c = self.conv1.cin;
        if x.len() != l * c
            || self.conv1.cout != c
            || self.conv2.cin != c
            || self.conv2.cout != c
            || self.conv2.kernel != 1
            || self.conv1.out_len(l) != Some(l)
        {
            return Err(AceStepError::input("residual unit: shapes do not line up"));
        }
        set_len(out, l * c);
        let rows = self.conv1.tile_rows(l);
        cpu::for_each_tile(out, rows * c, ConvScratch::default, |i, dst, scr| {
            let t0 = i * rows;
            let n = dst.len() / c;
            let mut hidden = std::mem::take(&mut scr.full);
            let h = sized(&mut hidden, n * c);
            self.conv1
                .tile_forward(x, l, t0, h, Some(&self.snake1), scr);
            self.snake2.apply_in_place(h);
            // out = x + b2 + snake2(h)·W2
            for (o, (xr, b)) in dst.chunks_exact_mut(c).zip(
                x[t0 * c..(t0 + n) * c]
                    .chunks_exact(c)
                    .zip(std::iter::repeat(&self.conv2.bias)),
            ) {
                for ((o, &xv), &bv) in o.iter_mut().zip(xr).zip(b) {
                    *o = xv + bv;
                }
            }
            gemm::gemm(
                Out::dense(dst, n, c),
                Lhs::dense(h, n, c),
                &self.conv2.w,
                Init::Accumulate,
                1,
            );
            scr.full = hidden;
        });
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::max_abs_diff;
    use candle_core::Device;

    /// Time-major convolutions equal candle's channel-major `conv1d` / `conv_transpose1d`, on
    /// lengths that span several tiles and with 1..6 output channels (dot-product path).
    #[test]
    fn matches_candle_convolutions() {
        let d = Device::Cpu;
        for (cin, l) in [(5usize, 40usize), (3, 3000)] {
            let x = Tensor::randn(0f32, 1.0, (1, cin, l), &d).unwrap();
            let xt = x.squeeze(0).unwrap().t().unwrap().contiguous().unwrap();
            for cout in [6usize, 2] {
                for (k, stride, dil, pad) in [
                    (7, 1, 1, 3),
                    (7, 1, 9, 27),
                    (7, 1, 3, 9),
                    (1, 1, 1, 0),
                    (3, 1, 1, 1),
                    (8, 4, 1, 2),
                    (12, 6, 1, 3),
                    (3, 2, 2, 1),
                ] {
                    let w = Tensor::randn(0f32, 1.0, (cout, cin, k), &d).unwrap();
                    let b = Tensor::randn(0f32, 1.0, cout, &d).unwrap();
                    let want = x
                        .conv1d(&w, pad, stride, dil, 1)
                        .unwrap()
                        .broadcast_add(&b.reshape((1, cout, 1)).unwrap())
                        .unwrap();
                    let got = TimeConv::conv(&w, Some(&b), stride, dil, pad)
                        .unwrap()
                        .forward(&xt)
                        .unwrap();
                    let got = got.t().unwrap().unsqueeze(0).unwrap();
                    let what = format!("l {l} cout {cout} k {k} s {stride} d {dil}");
                    assert_eq!(got.dims(), want.dims(), "{what}");
                    assert!(max_abs_diff(&got, &want) < 1e-4, "{what}");
                }
            }
            for (s, k, pad) in [
                (2, 4, 1),
                (4, 8, 2),
                (6, 12, 3),
                (10, 20, 5),
                (3, 4, 0),
                (2, 7, 1),
            ] {
                let w = Tensor::randn(0f32, 1.0, (cin, 3, k), &d).unwrap();
                let b = Tensor::randn(0f32, 1.0, 3, &d).unwrap();
                let want = x
                    .conv_transpose1d(&w, pad, 0, s, 1, 1)
                    .unwrap()
                    .broadcast_add(&b.reshape((1, 3, 1)).unwrap())
                    .unwrap();
                let got = TimeConv::conv_transpose(&w, Some(&b), s, pad)
                    .unwrap()
                    .forward(&xt)
                    .unwrap();
                let got = got.t().unwrap().unsqueeze(0).unwrap();
                assert_eq!(got.dims(), want.dims(), "l {l} stride {s} k {k}");
                assert!(max_abs_diff(&got, &want) < 1e-4, "l {l} stride {s} k {k}");
            }
        }
    }
}
