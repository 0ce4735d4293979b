//! Band-limited resampling by windowed-sinc interpolation (Blackman window, 32 zero crossings
//! each side). Deterministic and exact enough for source material; not a real-time path.

const HALF_TAPS: i64 = 32;

/// Resample one channel from `from` Hz to `to` Hz.
pub fn resample(x: &[f32], from: u32, to: u32) -> Vec<f32> {
    if from == to || x.is_empty() {
        return x.to_vec();
    }
    let ratio = to as f64 / from as f64;
    let out_len = ((x.len() as f64) * ratio).round() as usize;
    // Below the lower Nyquist, with a little room for the transition band.
    let cutoff = ratio.min(1.0) * 0.94;
    let step = 1.0 / ratio;
    let width = (HALF_TAPS as f64 / cutoff).ceil() as i64;
    (0..out_len)
        .map(|i| {
            let center = i as f64 * step;
            let c = center.floor() as i64;
            let mut acc = 0f64;
            let mut norm = 0f64;
            for k in (c - width + 1)..=(c + width) {
                let d = center - k as f64;
                let wpos = d / width as f64;
                if wpos.abs() >= 1.0 {
                    continue;
                }
                let arg = std::f64::consts::PI * d * cutoff;
                let sinc = if arg.abs() < 1e-12 {
                    1.0
                } else {
                    libm::sin(arg) / arg
                };
                let ph = std::f64::consts::PI * (wpos + 1.0);
                let win = 0.42 - 0.5 * libm::cos(ph) + 0.08 * libm::cos(2.0 * ph);
                let h = sinc * win;
                norm += h;
                if k >= 0 && (k as usize) < x.len() {
                    acc += h * x[k as usize] as f64;
                }
            }
            (acc / norm.max(1e-12)) as f32
        })
        .collect()
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
}
