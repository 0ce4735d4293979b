//! Loudness (EBU R128 / ITU-R BS.1770) and matching it: the library half of DEMON's LUFS
//! matcher, which keeps generations at the source's loudness.
//!
//! Measurement is the `ebur128` crate (a Rust port of libebur128): K-weighting, 400 ms gating
//! blocks, the −70 LUFS absolute and −10 LU relative gates. A mono signal counts as played on
//! both speakers ("dual mono"), as BS.1770 says for a mono programme.
//!
//! - [`integrated_lufs`] of a whole piece of audio;
//! - [`LoudnessMeter`], a streaming meter a live session feeds block by block (generation by
//!   generation, or played slice by slice), reading integrated, short-term (3 s) and momentary
//!   (400 ms) loudness at any time;
//! - [`gain_to_target`] / [`match_loudness`]: the gain that takes audio to a target loudness (a
//!   number, or another piece of audio's loudness), bounded and safe on silence.

use demon_engine::Audio;
use ebur128::{Channel, EbuR128, Mode};

/// Largest boost or cut a match applies, in dB: a near-silent generation is not blown up to
/// full loudness (its noise floor would be), and a gain is always finite.
pub const MAX_MATCH_GAIN_DB: f64 = 24.0;

/// Errors of loudness measurement.
#[derive(Debug, thiserror::Error)]
pub enum LoudnessError {
    #[error("loudness meter: {0}")]
    Meter(String),
    #[error(
        "loudness meter for {want_channels} channel(s) at {want_rate} Hz was fed {channels} channel(s) at {rate} Hz"
    )]
    Format {
        want_channels: usize,
        want_rate: u32,
        channels: usize,
        rate: u32,
    },
    #[error("target loudness {0} LUFS is not a finite number in [-70, 0]")]
    Target(f64),
}

fn meter_error(e: ebur128::Error) -> LoudnessError {
    LoudnessError::Meter(e.to_string())
}

/// A streaming EBU R128 meter for one channel layout and rate.
pub struct LoudnessMeter {
    inner: EbuR128,
    channels: usize,
    sample_rate: u32,
}

impl std::fmt::Debug for LoudnessMeter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoudnessMeter")
            .field("channels", &self.channels)
            .field("sample_rate", &self.sample_rate)
            .finish()
    }
}

/// `Some(v)` for a finite loudness, `None` for ebur128's −∞ (nothing above the gates yet).
fn finite(v: f64) -> Option<f64> {
    v.is_finite().then_some(v)
}

impl LoudnessMeter {
    /// A meter for `channels` channels at `sample_rate` Hz (1–64 channels, 16 Hz–2.8 MHz).
    pub fn new(channels: usize, sample_rate: u32) -> Result<Self, LoudnessError> {
        Self::with_mode(channels, sample_rate, Mode::I | Mode::S | Mode::M)
    }

    /// A meter of short-term (3 s) and momentary (400 ms) loudness only, whose memory stays
    /// the same however long it runs (a live session's meter; `integrated_lufs` is `None`).
    pub fn short_term(channels: usize, sample_rate: u32) -> Result<Self, LoudnessError> {
        Self::with_mode(channels, sample_rate, Mode::S | Mode::M)
    }

    fn with_mode(channels: usize, sample_rate: u32, mode: Mode) -> Result<Self, LoudnessError> {
        if channels == 0 || channels > 64 {
            return Err(LoudnessError::Meter(format!(
                "{channels} channels (1..=64 are supported)"
            )));
        }
        let mut inner = EbuR128::new(channels as u32, sample_rate, mode).map_err(meter_error)?;
        if channels == 1 {
            inner
                .set_channel(0, Channel::DualMono)
                .map_err(meter_error)?;
        }
        Ok(Self {
            inner,
            channels,
            sample_rate,
        })
    }

    /// Feed planar channels directly (no `Audio` to build): one slice per channel, of equal
    /// lengths.
    pub fn add_planar(&mut self, planes: &[&[f32]]) -> Result<(), LoudnessError> {
        if planes.len() != self.channels {
            return Err(LoudnessError::Format {
                want_channels: self.channels,
                want_rate: self.sample_rate,
                channels: planes.len(),
                rate: self.sample_rate,
            });
        }
        self.inner
            .add_frames_planar_f32(planes)
            .map_err(meter_error)
    }

    /// A meter for the layout of `audio`.
    pub fn for_audio(audio: &Audio) -> Result<Self, LoudnessError> {
        Self::new(audio.channels.len(), audio.sample_rate)
    }

    /// Feed a block (any length). It must have the meter's channel count and rate.
    pub fn add(&mut self, audio: &Audio) -> Result<(), LoudnessError> {
        if audio.channels.len() != self.channels || audio.sample_rate != self.sample_rate {
            return Err(LoudnessError::Format {
                want_channels: self.channels,
                want_rate: self.sample_rate,
                channels: audio.channels.len(),
                rate: audio.sample_rate,
            });
        }
        let planes: Vec<&[f32]> = audio.channels.iter().map(|c| c.as_slice()).collect();
        self.inner
            .add_frames_planar_f32(&planes)
            .map_err(meter_error)
    }

    /// Integrated (gated) loudness of everything fed since the start or the last reset, in
    /// LUFS; `None` while nothing has passed the gates (silence, or under 400 ms fed).
    pub fn integrated_lufs(&self) -> Option<f64> {
        self.inner.loudness_global().ok().and_then(finite)
    }

    /// Loudness of the last 3 s.
    pub fn short_term_lufs(&self) -> Option<f64> {
        self.inner.loudness_shortterm().ok().and_then(finite)
    }

    /// Loudness of the last 400 ms.
    pub fn momentary_lufs(&self) -> Option<f64> {
        self.inner.loudness_momentary().ok().and_then(finite)
    }

    /// Forget everything fed so far.
    pub fn reset(&mut self) {
        self.inner.reset();
    }
}

/// Integrated loudness of `audio` in LUFS; `None` for silence, audio shorter than one 400 ms
/// gating block, or a layout the meter does not take.
pub fn integrated_lufs(audio: &Audio) -> Option<f64> {
    let mut m = LoudnessMeter::for_audio(audio).ok()?;
    m.add(audio).ok()?;
    m.integrated_lufs()
}

/// The linear gain that takes audio measured at `current_lufs` to `target_lufs`.
///
/// Loudness scales as 20·log10 of the gain, so the gain is `10^((target − current)/20)`,
/// bounded to ±[`MAX_MATCH_GAIN_DB`]. Silence (`None`) gets 1: there is nothing to match.
pub fn gain_to_target(current_lufs: Option<f64>, target_lufs: f64) -> Result<f64, LoudnessError> {
    check_target(target_lufs)?;
    Ok(match current_lufs {
        Some(c) if c.is_finite() => {
            let db = (target_lufs - c).clamp(-MAX_MATCH_GAIN_DB, MAX_MATCH_GAIN_DB);
            10f64.powf(db / 20.0)
        }
        _ => 1.0,
    })
}

fn check_target(target_lufs: f64) -> Result<(), LoudnessError> {
    if target_lufs.is_finite() && (-70.0..=0.0).contains(&target_lufs) {
        Ok(())
    } else {
        Err(LoudnessError::Target(target_lufs))
    }
}

/// What a loudness match did.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LoudnessMatch {
    /// Loudness before, `None` for silence.
    pub before_lufs: Option<f64>,
    /// Linear gain applied (1 for silence).
    pub gain: f64,
}

/// Measure `audio` and scale it in place to `target_lufs` (see [`gain_to_target`]). Peaks are
/// not limited: a caller writing 16-bit files checks the peak afterwards.
pub fn match_loudness(audio: &mut Audio, target_lufs: f64) -> Result<LoudnessMatch, LoudnessError> {
    let before_lufs = integrated_lufs(audio);
    let gain = gain_to_target(before_lufs, target_lufs)?;
    if gain != 1.0 {
        let g = gain as f32;
        audio.channels.iter_mut().flatten().for_each(|x| *x *= g);
    }
    Ok(LoudnessMatch { before_lufs, gain })
}

/// Scale `audio` in place to the loudness of `reference` (a source); nothing changes when
/// either is silent.
pub fn match_loudness_to(
    audio: &mut Audio,
    reference: &Audio,
) -> Result<LoudnessMatch, LoudnessError> {
    match integrated_lufs(reference) {
        Some(target) => match_loudness(audio, target.max(-70.0)),
        None => Ok(LoudnessMatch {
            before_lufs: integrated_lufs(audio),
            gain: 1.0,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RATE: u32 = 48_000;

    fn sine(hz: f64, amp: f64, seconds: f64, channels: usize) -> Audio {
        let x: Vec<f32> = (0..(seconds * RATE as f64) as usize)
            .map(|i| {
                (amp * (2.0 * std::f64::consts::PI * hz * i as f64 / RATE as f64).sin()) as f32
            })
            .collect();
        Audio::new(RATE, vec![x; channels]).unwrap()
    }

    #[test]
    fn reference_tone_reads_its_published_loudness() {
        // EBU Tech 3341, test 1: a 1 kHz sine at −23 dBFS on both channels of a stereo
        // programme reads −23.0 LUFS (±0.1).
        let amp = 10f64.powf(-23.0 / 20.0);
        let l = integrated_lufs(&sine(1000.0, amp, 20.0, 2)).unwrap();
        assert!((l - -23.0).abs() < 0.1, "{l}");
        // Mono counts as dual mono: the same tone in one channel reads the same.
        let m = integrated_lufs(&sine(1000.0, amp, 20.0, 1)).unwrap();
        assert!((m - l).abs() < 0.05, "mono {m} vs stereo {l}");
        // Halving the amplitude lowers it by 6.02 LU.
        let h = integrated_lufs(&sine(1000.0, amp / 2.0, 20.0, 2)).unwrap();
        assert!((l - h - 6.0206).abs() < 0.02, "{l} {h}");
    }

    #[test]
    fn silence_and_short_audio_have_no_loudness() {
        assert_eq!(
            integrated_lufs(&Audio::silence(RATE, 2, 5 * RATE as usize)),
            None
        );
        assert_eq!(integrated_lufs(&sine(1000.0, 0.1, 0.2, 2)), None);
        // Matching silence is a no-op, not a division by zero.
        let mut s = Audio::silence(RATE, 2, RATE as usize);
        let m = match_loudness(&mut s, -14.0).unwrap();
        assert_eq!(
            m,
            LoudnessMatch {
                before_lufs: None,
                gain: 1.0
            }
        );
        assert!(s.channels.iter().flatten().all(|v| *v == 0.0));
    }

    #[test]
    fn matching_reaches_the_target_and_is_bounded() {
        let mut a = sine(440.0, 0.05, 8.0, 2);
        let m = match_loudness(&mut a, -18.0).unwrap();
        let after = integrated_lufs(&a).unwrap();
        assert!((after - -18.0).abs() < 0.05, "{after} ({m:?})");
        // To another piece's loudness.
        let reference = sine(200.0, 0.3, 8.0, 2);
        let mut b = sine(3000.0, 0.05, 8.0, 2);
        match_loudness_to(&mut b, &reference).unwrap();
        let (lb, lr) = (
            integrated_lufs(&b).unwrap(),
            integrated_lufs(&reference).unwrap(),
        );
        assert!((lb - lr).abs() < 0.05, "{lb} vs {lr}");
        // A very quiet input gets at most +24 dB.
        let g = gain_to_target(Some(-69.0), -10.0).unwrap();
        assert!((20.0 * g.log10() - MAX_MATCH_GAIN_DB).abs() < 1e-9);
        assert!(gain_to_target(Some(-20.0), f64::NAN).is_err());
        assert!(gain_to_target(Some(-20.0), 3.0).is_err());
    }

    #[test]
    fn streaming_meter_equals_one_shot() {
        let a = sine(500.0, 0.2, 6.0, 2);
        let mut m = LoudnessMeter::for_audio(&a).unwrap();
        // Fed in uneven blocks, as generations or played slices arrive.
        let mut start = 0;
        for len in [1000usize, 47_000, 3, 90_000, 1_000_000] {
            let end = (start + len).min(a.frames());
            let block = Audio::new(
                RATE,
                a.channels.iter().map(|c| c[start..end].to_vec()).collect(),
            )
            .unwrap();
            m.add(&block).unwrap();
            start = end;
        }
        let whole = integrated_lufs(&a).unwrap();
        assert!((m.integrated_lufs().unwrap() - whole).abs() < 1e-9);
        assert!(m.short_term_lufs().is_some() && m.momentary_lufs().is_some());
        // A block of another layout is refused with a clear error, and nothing is lost.
        let e = m.add(&sine(500.0, 0.2, 1.0, 1)).unwrap_err().to_string();
        assert!(e.contains("1 channel(s)"), "{e}");
        assert!((m.integrated_lufs().unwrap() - whole).abs() < 1e-9);
        m.reset();
        assert_eq!(m.integrated_lufs(), None);
    }
}
