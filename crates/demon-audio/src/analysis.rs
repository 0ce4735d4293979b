//! # Audio analysis: similarity, tempo, key, loudness
//!
//! Measures of a piece of audio that front ends show and prompts carry (DEMON's `AudioInfo`
//! node, demon.md §9: BPM by onset autocorrelation, key, duration; and its LUFS matcher), and
//! similarity measures that tell how much of a source survives a generation.
//!
//! - [`similarity`]: [`envelope_correlation`] and [`chroma_correlation`] between two pieces of
//!   audio, on 25 Hz frames (the latent frame rate).
//!
//! Everything works on any sample rate and channel count (channels are averaged to mono) and
//! is deterministic: the same samples give the same figures on every machine.

pub mod similarity;
mod spectrum;

pub use similarity::{
    CHROMA_FFT_SECONDS, ENVELOPE_FRAME_SECONDS, chroma_correlation, chromagram,
    envelope_correlation, pearson, rms_envelope,
};
