//! Band-limited resampling by windowed-sinc interpolation (Blackman window, 32 zero crossings
//! each side), polyphase and streaming.
//!
//! The output step is the exact rational `from / to` (reduced by their gcd to `m / l`), so
//! output `i` sits at input position `i·m / l`: `l` distinct fractional phases. The filter of
//! each phase is computed once into a table and normalised to unit gain, and every output
//! sample is one dot product of a table row with contiguous input; the cost is
//! `O(outputs × taps)` multiply-adds with no trigonometry per sample. Rates whose reduced
//! `l` exceeds [`MAX_EXACT_PHASES`] use a table of that many phases, interpolated linearly
//! between the two nearest (the coefficients vary smoothly with the phase, so the error is
//! far below f32 resolution). [`Resampler`] takes the input in pieces of any size and keeps
//! only the taps' worth of history, so a long file is resampled while it decodes.

use std::sync::Arc;

/// Zero crossings of the sinc on each side of the centre (at the lower of the two rates).
const HALF_TAPS: f64 = 32.0;

/// Above this many distinct phases the table is interpolated instead of exact.
pub const MAX_EXACT_PHASES: u64 = 4096;

/// The normalised filter of every phase: `rows × taps` coefficients, row-major.
#[derive(Debug)]
struct Kernel {
    /// Output step `m / l` input samples (the reduced `from / to`).
    l: u64,
    m: u64,
    /// Taps on each side of the centre; a row has `2·width` taps, the first one at input
    /// index `floor(position) + 1 − width`.
    width: usize,
    /// Rows of the table: `l` (exact), or `MAX_EXACT_PHASES + 1` (interpolated, the last row
    /// being phase 1).
    exact: bool,
    table: Vec<f32>,
}

fn gcd(mut a: u64, mut b: u64) -> u64 {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a
}

impl Kernel {
    fn new(from: u32, to: u32) -> Self {
        let g = gcd(from as u64, to as u64).max(1);
        let (l, m) = (to as u64 / g, from as u64 / g);
        let ratio = to as f64 / from as f64;
        // Below the lower Nyquist, with a little room for the transition band.
        let cutoff = ratio.min(1.0) * 0.94;
        let width = (HALF_TAPS / cutoff).ceil() as usize;
        let exact = l <= MAX_EXACT_PHASES;
        let rows = if exact { l } else { MAX_EXACT_PHASES + 1 } as usize;
        let phase_of_row = |r: usize| -> f64 {
            if exact {
                r as f64 / l as f64
            } else {
                r as f64 / MAX_EXACT_PHASES as f64
            }
        };
        let taps = 2 * width;
        let mut table = vec![0f32; rows * taps];
        let mut row = vec![0f64; taps];
        for (r, out) in table.chunks_exact_mut(taps).enumerate() {
            let frac = phase_of_row(r);
            for (j, h) in row.iter_mut().enumerate() {
                // Distance from the output position to tap j's input sample.
                let d = frac + (width as f64 - 1.0 - j as f64);
                *h = windowed_sinc(d, width as f64, cutoff);
            }
            let norm = row.iter().sum::<f64>().max(1e-12);
            for (o, h) in out.iter_mut().zip(&row) {
                *o = (h / norm) as f32;
            }
        }
        Self {
            l,
            m,
            width,
            exact,
            table,
        }
    }

    fn taps(&self) -> usize {
        2 * self.width
    }

    /// Input index (relative to the first input sample) of the first tap of output `i`, and
    /// its fractional phase as the numerator over `l`.
    fn place(&self, i: u64) -> (i64, u64) {
        let pos = i as u128 * self.m as u128;
        let c = (pos / self.l as u128) as i64;
        let phase = (pos % self.l as u128) as u64;
        (c + 1 - self.width as i64, phase)
    }

    /// Output sample at phase `phase` (over `l`) from the `2·width` inputs under its taps.
    fn apply(&self, phase: u64, x: &[f32]) -> f32 {
        let taps = self.taps();
        if self.exact {
            let p = phase as usize;
            return dot(&self.table[p * taps..(p + 1) * taps], x);
        }
        let at = phase as f64 / self.l as f64 * MAX_EXACT_PHASES as f64;
        let q = (at.floor() as usize).min(MAX_EXACT_PHASES as usize - 1);
        let t = (at - q as f64) as f32;
        let a = dot(&self.table[q * taps..(q + 1) * taps], x);
        let b = dot(&self.table[(q + 1) * taps..(q + 2) * taps], x);
        a + t * (b - a)
    }
}

/// Blackman-windowed sinc at distance `d` input samples, zero from `width` on.
fn windowed_sinc(d: f64, width: f64, cutoff: f64) -> f64 {
    let wpos = d / width;
    if wpos.abs() >= 1.0 {
        return 0.0;
    }
    let arg = std::f64::consts::PI * d * cutoff;
    let sinc = if arg.abs() < 1e-12 {
        1.0
    } else {
        libm::sin(arg) / arg
    };
    let ph = std::f64::consts::PI * (wpos + 1.0);
    let win = 0.42 - 0.5 * libm::cos(ph) + 0.08 * libm::cos(2.0 * ph);
    sinc * win
}

/// `Σ a·b`, in eight independent lanes so the compiler can vectorise it.
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut lanes = [0f32; 8];
    let (ac, bc) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: f32 = ac
        .remainder()
        .iter()
        .zip(bc.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for (x, y) in ac.zip(bc) {
        for k in 0..8 {
            lanes[k] += x[k] * y[k];
        }
    }
    lanes.iter().sum::<f32>() + tail
}

/// One channel resampled as it arrives: [`push`](Self::push) pieces of input, then
/// [`finish`](Self::finish). The output equals [`resample`] of the whole input, whatever the
/// pieces; memory is the filter table and one filter's width of input.
#[derive(Debug)]
pub struct Resampler {
    /// `None` when the rates are equal (samples pass through).
    kernel: Option<Arc<Kernel>>,
    ratio: f64,
    /// Input samples from index `buf_start` on (negative indices are the zeros before the
    /// first sample).
    buf: Vec<f32>,
    buf_start: i64,
    /// Input samples pushed so far.
    taken: u64,
    /// Index of the next output sample.
    next_out: u64,
}

impl Resampler {
    pub fn new(from: u32, to: u32) -> Self {
        let kernel = (from != to && from > 0 && to > 0).then(|| Arc::new(Kernel::new(from, to)));
        Self::with_kernel(kernel, to as f64 / from.max(1) as f64)
    }

    /// A resampler sharing this one's filter table (for another channel), at the start.
    pub fn another(&self) -> Self {
        Self::with_kernel(self.kernel.clone(), self.ratio)
    }

    fn with_kernel(kernel: Option<Arc<Kernel>>, ratio: f64) -> Self {
        let width = kernel.as_ref().map_or(0, |k| k.width);
        Self {
            kernel,
            ratio,
            buf: vec![0.0; width],
            buf_start: -(width as i64),
            taken: 0,
            next_out: 0,
        }
    }

    /// Output samples for `input` (appended to `out`) as far as the input so far allows.
    pub fn push(&mut self, input: &[f32], out: &mut Vec<f32>) {
        self.taken += input.len() as u64;
        let Some(k) = self.kernel.clone() else {
            out.extend_from_slice(input);
            return;
        };
        self.buf.extend_from_slice(input);
        self.emit(&k, u64::MAX, out);
    }

    /// The remaining output (the input's end padded with zeros); the total is
    /// `round(inputs × to / from)` samples.
    pub fn finish(mut self, out: &mut Vec<f32>) {
        let Some(k) = self.kernel.clone() else {
            return;
        };
        let total = (self.taken as f64 * self.ratio).round() as u64;
        if self.next_out >= total {
            return;
        }
        let (lo, _) = k.place(total - 1);
        let need = (lo + k.taps() as i64 - self.buf_start).max(0) as usize;
        if self.buf.len() < need {
            self.buf.resize(need, 0.0);
        }
        self.emit(&k, total, out);
    }

    /// Outputs below `limit` while their taps lie inside the buffer, then drop the input no
    /// later output needs.
    fn emit(&mut self, k: &Kernel, limit: u64, out: &mut Vec<f32>) {
        let taps = k.taps();
        let end = self.buf_start + self.buf.len() as i64;
        while self.next_out < limit {
            let (lo, phase) = k.place(self.next_out);
            if lo + taps as i64 > end {
                break;
            }
            let at = (lo - self.buf_start) as usize;
            out.push(k.apply(phase, &self.buf[at..at + taps]));
            self.next_out += 1;
        }
        let (lo, _) = k.place(self.next_out);
        let drop = (lo - self.buf_start).clamp(0, self.buf.len() as i64) as usize;
        self.buf.drain(..drop);
        self.buf_start += drop as i64;
    }
}

/// Resample one channel from `from` Hz to `to` Hz.
pub fn resample(x: &[f32], from: u32, to: u32) -> Vec<f32> {
    if from == to || x.is_empty() {
        return x.to_vec();
    }
    let mut r = Resampler::new(from, to);
    let mut out = Vec::with_capacity((x.len() as f64 * to as f64 / from as f64).round() as usize);
    r.push(x, &mut out);
    r.finish(&mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[allow(clippy::needless_range_loop)] // parallel arrays indexed together
    fn keeps_a_low_sine_and_the_length() {
        let from = 44_100;
        let x: Vec<f32> = (0..44_100)
            .map(|i| (2.0 * std::f32::consts::PI * 440.0 * i as f32 / from as f32).sin())
            .collect();
        let y = resample(&x, from, 48_000);
        assert_eq!(y.len(), 48_000);
        // Away from the edges the output is the same sine sampled at 48 kHz.
        for i in 1000..47_000 {
            let want = (2.0 * std::f64::consts::PI * 440.0 * i as f64 / 48_000.0).sin() as f32;
            assert!((y[i] - want).abs() < 2e-3, "sample {i}: {} vs {want}", y[i]);
        }
    }

    #[test]
    fn identity_when_rates_match() {
        let x = vec![0.1, -0.2, 0.3];
        assert_eq!(resample(&x, 48_000, 48_000), x);
    }

    /// The filter evaluated directly at every output position (trigonometry per tap, f64):
    /// what the tables must reproduce.
    fn direct(x: &[f32], from: u32, to: u32) -> Vec<f32> {
        let ratio = to as f64 / from as f64;
        let out_len = (x.len() as f64 * ratio).round() as usize;
        let cutoff = ratio.min(1.0) * 0.94;
        let width = (HALF_TAPS / cutoff).ceil() as i64;
        (0..out_len)
            .map(|i| {
                let center = i as f64 / ratio;
                let c = center.floor() as i64;
                let (mut acc, mut norm) = (0f64, 0f64);
                for k in (c - width + 1)..=(c + width) {
                    let h = windowed_sinc(center - k as f64, width as f64, cutoff);
                    norm += h;
                    if k >= 0 && (k as usize) < x.len() {
                        acc += h * x[k as usize] as f64;
                    }
                }
                (acc / norm.max(1e-12)) as f32
            })
            .collect()
    }

    fn noise(n: usize, seed: u64) -> Vec<f32> {
        let mut s = seed;
        (0..n)
            .map(|_| {
                s = s
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                ((s >> 40) as f32 / (1u64 << 24) as f32) * 1.6 - 0.8
            })
            .collect()
    }

    #[test]
    fn tables_match_the_filter_evaluated_directly() {
        // Exact phases (up, down, large factors) and an interpolated table (47 999 → 48 000
        // has 48 000 phases).
        for (from, to) in [
            (44_100, 48_000),
            (48_000, 44_100),
            (384_000, 48_000),
            (8_000, 48_000),
            (22_050, 48_000),
            (47_999, 48_000),
            (96_001, 48_000),
        ] {
            let x = noise(3_000, from as u64);
            let (got, want) = (resample(&x, from, to), direct(&x, from, to));
            assert_eq!(got.len(), want.len(), "{from} → {to}");
            let worst = got
                .iter()
                .zip(&want)
                .map(|(a, b)| (a - b).abs())
                .fold(0f32, f32::max);
            assert!(worst < 2e-5, "{from} → {to}: off by {worst}");
        }
    }

    #[test]
    fn streaming_in_any_pieces_gives_the_same_samples() {
        for (from, to) in [
            (44_100, 48_000),
            (384_000, 48_000),
            (8_000, 48_000),
            (47_999, 48_000),
        ] {
            let x = noise(20_000, 7);
            let whole = resample(&x, from, to);
            for piece in [1, 7, 333, 4096, 19_999] {
                let mut r = Resampler::new(from, to);
                let mut out = Vec::new();
                for p in x.chunks(piece) {
                    r.push(p, &mut out);
                }
                r.finish(&mut out);
                assert_eq!(out, whole, "{from} → {to} in pieces of {piece}");
            }
            // Another channel sharing the table starts afresh.
            let mut a = Resampler::new(from, to);
            let mut first = Vec::new();
            a.push(&x[..5_000], &mut first);
            let mut b = a.another();
            let mut out = Vec::new();
            b.push(&x, &mut out);
            b.finish(&mut out);
            assert_eq!(out, whole);
        }
    }

    #[test]
    fn inputs_shorter_than_the_filter_keep_the_length() {
        for n in [1, 2, 5, 40] {
            let x = noise(n, 3);
            for (from, to) in [(8_000, 48_000), (384_000, 48_000), (44_100, 48_000)] {
                let (got, want) = (resample(&x, from, to), direct(&x, from, to));
                assert_eq!(got.len(), want.len(), "{n} samples {from} → {to}");
                for (a, b) in got.iter().zip(&want) {
                    assert!(
                        (a - b).abs() < 2e-5,
                        "{n} samples {from} → {to}: {a} vs {b}"
                    );
                }
            }
        }
    }
}
