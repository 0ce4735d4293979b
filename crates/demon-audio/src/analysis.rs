//! # Audio analysis: similarity, tempo, key, loudness
//!
//! Measures of a piece of audio that front ends show and prompts carry (DEMON's `AudioInfo`
//! node, demon.md §9: BPM by onset autocorrelation, key, duration; and its LUFS matcher), and
//! similarity measures that tell how much of a source survives a generation.
//!
//! - [`similarity`]: [`envelope_correlation`] and [`chroma_correlation`] between two pieces of
//!   audio, on 25 Hz frames (the latent frame rate).
//! - [`tempo`]: BPM by onset-strength autocorrelation, with a stated octave policy.
//! - [`key`]: key by chroma: the diatonic scale, then its tonic by the Krumhansl–Kessler
//!   profiles and the bass.
//! - [`loudness`]: integrated LUFS (EBU R128), a streaming meter, and loudness matching.
//! - [`analyze`]: all of it at once, as [`AudioInfo`].
//!
//! Everything works on any sample rate and channel count (channels are averaged to mono) and
//! is deterministic: the same samples give the same figures on every machine.

pub mod key;
pub mod loudness;
pub mod similarity;
mod spectrum;
pub mod tempo;

pub use key::{Key, KeyEstimate, estimate_key};
pub use loudness::{
    LoudnessError, LoudnessMatch, LoudnessMeter, gain_to_target, integrated_lufs, match_loudness,
    match_loudness_to,
};
pub use similarity::{
    CHROMA_FFT_SECONDS, ENVELOPE_FRAME_SECONDS, chroma_correlation, chromagram,
    envelope_correlation, pearson, rms_envelope,
};
pub use tempo::{TempoEstimate, estimate_tempo};

use demon_engine::Audio;

/// What [`analyze`] found about a piece of audio (DEMON's `AudioInfo`).
#[derive(Clone, Debug, PartialEq)]
pub struct AudioInfo {
    pub duration_seconds: f64,
    pub sample_rate: u32,
    pub channels: usize,
    /// `None` when there is no pulse (see [`tempo`]).
    pub bpm: Option<TempoEstimate>,
    /// `None` when there is no pitched content.
    pub key: Option<KeyEstimate>,
    /// `None` for silence.
    pub integrated_lufs: Option<f64>,
    pub peak: f32,
}

/// Tempo, key, duration and loudness of `audio`.
pub fn analyze(audio: &Audio) -> AudioInfo {
    AudioInfo {
        duration_seconds: audio.seconds(),
        sample_rate: audio.sample_rate,
        channels: audio.channels.len(),
        bpm: estimate_tempo(audio),
        key: estimate_key(audio),
        integrated_lufs: integrated_lufs(audio),
        peak: audio.peak(),
    }
}
