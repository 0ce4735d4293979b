//! # demon-audio: audio files in and out
//!
//! Sources arrive as WAV, FLAC, MP3, OGG/Vorbis or AIFF at any sample rate and channel count;
//! [`load`] decodes them (symphonia), mixes them to stereo and resamples them to the engine's
//! 48 kHz with a windowed-sinc resampler. [`wav`] writes renders, optionally carrying the exact
//! latent they were decoded from, so a render used again as a source is bit-exact, and streams
//! recordings crash-safely ([`WavWriter`]).
//!
//! Every failure names the file and the problem; nothing here panics on user input.

pub mod analysis;
pub mod load;
pub mod resample;
pub mod wav;

pub use load::{
    DecodedAudio, LoadLimits, StereoBuilder, decode_bytes, decode_bytes_stereo, load_file,
    load_file_stereo,
};
pub use wav::{
    EmbeddedLatent, WavFormat, WavInfo, WavWriter, parse_wav_info, read_embedded_latent,
    read_wav_info, wav_bytes, wav_bytes_with_info, wav_header, wav_sample_bytes, write_wav,
    write_wav_with_info,
};

use std::path::PathBuf;

/// Errors of audio I/O.
#[derive(Debug, thiserror::Error)]
pub enum AudioError {
    #[error("cannot read `{path}`: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("`{path}` is not a supported audio file ({reason}); use WAV, FLAC, MP3, OGG or AIFF")]
    Unsupported { path: PathBuf, reason: String },
    #[error("`{path}` could not be decoded: {reason}")]
    Decode { path: PathBuf, reason: String },
    #[error("`{path}` contains no audio")]
    Empty { path: PathBuf },
    #[error("`{path}` is too long: {seconds:.1} s (limit {limit:.0} s)")]
    TooLong {
        path: PathBuf,
        seconds: f64,
        limit: f64,
    },
    #[error("`{path}` holds too much audio: {samples} samples over all channels (limit {limit})")]
    TooManySamples {
        path: PathBuf,
        samples: u64,
        limit: u64,
    },
    #[error("cannot write `{path}`: {reason}")]
    Write { path: PathBuf, reason: String },
}

pub type Result<T, E = AudioError> = std::result::Result<T, E>;
