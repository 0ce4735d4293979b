//! Short-time spectra shared by the analysis measures: mono mixdown, Hann-windowed magnitude
//! frames on a hop given in seconds, so that two signals at different rates give frames at the
//! same instants.

use demon_engine::Audio;
use rustfft::{FftPlanner, num_complex::Complex};

/// The average of all channels.
pub(crate) fn mono(audio: &Audio) -> Vec<f32> {
    let n = audio.channels.len().max(1) as f32;
    (0..audio.frames())
        .map(|i| audio.channels.iter().map(|c| c[i]).sum::<f32>() / n)
        .collect()
}

/// Samples per hop of `seconds` at `rate` (at least 1).
pub(crate) fn hop_samples(rate: u32, seconds: f64) -> usize {
    ((rate as f64 * seconds).round() as usize).max(1)
}

/// Magnitude spectra `[frames][fft_len / 2 + 1]` of `x`, frame `f` centred on sample
/// `f · hop` (the signal is zero outside its span, as with librosa's `center=True` and zero
/// padding), `frames = ⌈len / hop⌉`.
pub(crate) struct Spectrogram {
    pub bin_hz: f64,
    pub frames: Vec<Vec<f32>>,
}

impl Spectrogram {
    pub(crate) fn new(x: &[f32], rate: u32, fft_len: usize, hop: usize) -> Self {
        let n_frames = x.len().div_ceil(hop.max(1));
        let window: Vec<f32> = (0..fft_len)
            .map(|i| {
                0.5 - 0.5 * (2.0 * std::f64::consts::PI * i as f64 / fft_len as f64).cos() as f32
            })
            .collect();
        let fft = FftPlanner::<f32>::new().plan_fft_forward(fft_len);
        let mut buf = vec![Complex::new(0f32, 0f32); fft_len];
        let bins = fft_len / 2 + 1;
        let frames = (0..n_frames)
            .map(|f| {
                let start = (f * hop) as i64 - (fft_len / 2) as i64;
                for (i, b) in buf.iter_mut().enumerate() {
                    let j = start + i as i64;
                    let s = if j >= 0 && (j as usize) < x.len() {
                        x[j as usize]
                    } else {
                        0.0
                    };
                    *b = Complex::new(s * window[i], 0.0);
                }
                fft.process(&mut buf);
                buf[..bins].iter().map(|c| c.norm()).collect()
            })
            .collect();
        Self {
            bin_hz: rate as f64 / fft_len as f64,
            frames,
        }
    }
}

/// The power of two closest (in log terms, rounding up at the midpoint) to `seconds` at `rate`.
pub(crate) fn fft_len_for(rate: u32, seconds: f64) -> usize {
    let want = (rate as f64 * seconds).max(16.0);
    let exp = want.log2().round() as u32;
    1usize << exp.clamp(4, 16)
}
